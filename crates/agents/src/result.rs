//! The result model: "did the action run" ([`ExecStatus`]) kept apart from "what did the
//! agent say" ([`OcfExit`]), after Pacemaker's `include/crm/common/results.h`.

use std::fmt;
use std::time::Duration;

/// An action a resource agent is asked to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Bring the resource up; idempotent (starting a running resource succeeds).
    Start,
    /// Take the resource down; idempotent (stopping a stopped resource succeeds).
    Stop,
    /// Ask whether the resource runs: [`OcfExit::Success`] = running,
    /// [`OcfExit::NotRunning`] = cleanly stopped, anything else = failed.
    Monitor,
    /// Print the agent's OCF meta-data XML (OCF agents only).
    MetaData,
    /// Check the parameters without touching the resource (OCF agents that have it).
    ValidateAll,
}

impl Action {
    /// The action's name as agents see it on their command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Monitor => "monitor",
            Action::MetaData => "meta-data",
            Action::ValidateAll => "validate-all",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the action ran to completion, independent of what the agent answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    /// The agent ran and exited; its answer is in [`ActionResult::exit`].
    Done,
    /// The action outlived its timeout; the agent (and its process group) was killed.
    Timeout,
    /// The agent (script, binary, unit manager) is not present on this node.
    NotInstalled,
    /// The action could not be carried out (spawn failure, killed by a signal, a system
    /// call failed); the text says what happened.
    Error(String),
    /// The caller cancelled the action before it finished; the agent was killed.
    Cancelled,
}

/// An OCF exit code, the one vocabulary every agent type's answer is mapped into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OcfExit {
    /// 0 `OCF_SUCCESS`: done / running.
    Success,
    /// 1 `OCF_ERR_GENERIC`.
    Generic,
    /// 2 `OCF_ERR_ARGS`: the configuration is invalid on this node.
    Args,
    /// 3 `OCF_ERR_UNIMPLEMENTED`: the action is not implemented.
    Unimplemented,
    /// 4 `OCF_ERR_PERM`: insufficient privileges.
    Perm,
    /// 5 `OCF_ERR_INSTALLED`: something the agent needs is missing on this node.
    NotInstalled,
    /// 6 `OCF_ERR_CONFIGURED`: the configuration is invalid everywhere.
    NotConfigured,
    /// 7 `OCF_NOT_RUNNING`: cleanly stopped.
    NotRunning,
    /// 8 `OCF_RUNNING_PROMOTED` (formerly `OCF_RUNNING_MASTER`).
    RunningPromoted,
    /// 9 `OCF_FAILED_PROMOTED` (formerly `OCF_FAILED_MASTER`).
    FailedPromoted,
    /// 190 `OCF_DEGRADED`: running, but degraded (OCF 1.1).
    Degraded,
    /// 191 `OCF_DEGRADED_PROMOTED` (OCF 1.1).
    DegradedPromoted,
    /// Any other code (OCF reserves 10–99 and leaves 150–199 to agents).
    Other(i32),
}

/// Pacemaker's recovery classes for an unexpected exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Transient: restart the resource in place (or move it after the threshold).
    Soft,
    /// Specific to this node: move the resource and do not retry it here.
    Hard,
    /// Common to every node (bad configuration): stop it and start it nowhere.
    Fatal,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Soft => "soft",
            Severity::Hard => "hard",
            Severity::Fatal => "fatal",
        })
    }
}

impl OcfExit {
    /// The exit code for a process exit status.
    pub fn from_code(code: i32) -> OcfExit {
        match code {
            0 => OcfExit::Success,
            1 => OcfExit::Generic,
            2 => OcfExit::Args,
            3 => OcfExit::Unimplemented,
            4 => OcfExit::Perm,
            5 => OcfExit::NotInstalled,
            6 => OcfExit::NotConfigured,
            7 => OcfExit::NotRunning,
            8 => OcfExit::RunningPromoted,
            9 => OcfExit::FailedPromoted,
            190 => OcfExit::Degraded,
            191 => OcfExit::DegradedPromoted,
            other => OcfExit::Other(other),
        }
    }

    /// The numeric code.
    pub fn code(self) -> i32 {
        match self {
            OcfExit::Success => 0,
            OcfExit::Generic => 1,
            OcfExit::Args => 2,
            OcfExit::Unimplemented => 3,
            OcfExit::Perm => 4,
            OcfExit::NotInstalled => 5,
            OcfExit::NotConfigured => 6,
            OcfExit::NotRunning => 7,
            OcfExit::RunningPromoted => 8,
            OcfExit::FailedPromoted => 9,
            OcfExit::Degraded => 190,
            OcfExit::DegradedPromoted => 191,
            OcfExit::Other(c) => c,
        }
    }

    /// The OCF symbolic name.
    pub fn name(self) -> &'static str {
        match self {
            OcfExit::Success => "OCF_SUCCESS",
            OcfExit::Generic => "OCF_ERR_GENERIC",
            OcfExit::Args => "OCF_ERR_ARGS",
            OcfExit::Unimplemented => "OCF_ERR_UNIMPLEMENTED",
            OcfExit::Perm => "OCF_ERR_PERM",
            OcfExit::NotInstalled => "OCF_ERR_INSTALLED",
            OcfExit::NotConfigured => "OCF_ERR_CONFIGURED",
            OcfExit::NotRunning => "OCF_NOT_RUNNING",
            OcfExit::RunningPromoted => "OCF_RUNNING_PROMOTED",
            OcfExit::FailedPromoted => "OCF_FAILED_PROMOTED",
            OcfExit::Degraded => "OCF_DEGRADED",
            OcfExit::DegradedPromoted => "OCF_DEGRADED_PROMOTED",
            OcfExit::Other(_) => "other",
        }
    }

    /// How Pacemaker recovers when this code was *not* the expected one: 2–5 are hard
    /// (move away, don't retry here), 6 is fatal (start nowhere), everything else —
    /// including 0 or 7 when another answer was expected — is soft (restart in place).
    pub fn severity(self) -> Severity {
        match self {
            OcfExit::Args | OcfExit::Unimplemented | OcfExit::Perm | OcfExit::NotInstalled => {
                Severity::Hard
            }
            OcfExit::NotConfigured => Severity::Fatal,
            _ => Severity::Soft,
        }
    }
}

impl fmt::Display for OcfExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.name())
    }
}

/// What one action did: whether it ran, what the agent answered, why, and how long it
/// took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionResult {
    /// Whether the action ran to completion.
    pub exec_status: ExecStatus,
    /// The agent's answer, mapped to OCF; `None` unless `exec_status` is `Done`.
    pub exit: Option<OcfExit>,
    /// A one-line human explanation (the agent's `ocf-exit-reason:`, a system error, or
    /// how a legacy answer was read).
    pub reason: String,
    /// Wall time the action took.
    pub duration: Duration,
    /// The tail of the agent's output (stdout then stderr), bounded, for logs.
    pub output: String,
}

/// How a result should be read for the action that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The action did what was asked (for monitor: the resource runs).
    Ok,
    /// Monitor only: the resource is cleanly stopped.
    NotRunning,
    /// The action failed; recover with this class.
    Failed(Severity),
    /// The caller cancelled it; nothing to recover.
    Cancelled,
}

impl ActionResult {
    /// A completed action with an agent answer.
    pub fn done(exit: OcfExit, reason: impl Into<String>, duration: Duration) -> Self {
        ActionResult {
            exec_status: ExecStatus::Done,
            exit: Some(exit),
            reason: reason.into(),
            duration,
            output: String::new(),
        }
    }

    /// An action that did not complete (`exec_status` other than `Done`).
    pub fn not_done(
        exec_status: ExecStatus,
        reason: impl Into<String>,
        duration: Duration,
    ) -> Self {
        ActionResult {
            exec_status,
            exit: None,
            reason: reason.into(),
            duration,
            output: String::new(),
        }
    }

    /// True when the action ran and the agent answered `OCF_SUCCESS`.
    pub fn is_success(&self) -> bool {
        self.exec_status == ExecStatus::Done && self.exit == Some(OcfExit::Success)
    }

    /// Reads the result for `action`, as Pacemaker does with its expected result:
    /// start/stop/validate/meta-data expect 0; monitor expects 0 (running) or 7 (stopped)
    /// and reports which. A timeout or a failure to run is soft, an agent that is not
    /// installed is hard, as in Pacemaker's executor.
    pub fn outcome(&self, action: Action) -> Outcome {
        match &self.exec_status {
            ExecStatus::Cancelled => Outcome::Cancelled,
            ExecStatus::Timeout | ExecStatus::Error(_) => Outcome::Failed(Severity::Soft),
            ExecStatus::NotInstalled => Outcome::Failed(Severity::Hard),
            ExecStatus::Done => {
                let exit = self.exit.unwrap_or(OcfExit::Generic);
                match (action, exit) {
                    (_, OcfExit::Success) => Outcome::Ok,
                    (Action::Monitor, OcfExit::Degraded | OcfExit::RunningPromoted) => Outcome::Ok,
                    (Action::Monitor, OcfExit::DegradedPromoted) => Outcome::Ok,
                    (Action::Monitor, OcfExit::NotRunning) => Outcome::NotRunning,
                    (_, e) => Outcome::Failed(e.severity()),
                }
            }
        }
    }
}

impl fmt::Display for ActionResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.exec_status, self.exit) {
            (ExecStatus::Done, Some(e)) => write!(f, "exit {e}")?,
            (ExecStatus::Done, None) => write!(f, "done")?,
            (ExecStatus::Timeout, _) => write!(f, "timed out")?,
            (ExecStatus::NotInstalled, _) => write!(f, "not installed")?,
            (ExecStatus::Error(e), _) => write!(f, "error: {e}")?,
            (ExecStatus::Cancelled, _) => write!(f, "cancelled")?,
        }
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        write!(f, " after {} ms", self.duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_classify_as_pacemaker_does() {
        for code in -3..260 {
            assert_eq!(OcfExit::from_code(code).code(), code);
        }
        assert_eq!(OcfExit::from_code(1).severity(), Severity::Soft);
        for hard in 2..=5 {
            assert_eq!(
                OcfExit::from_code(hard).severity(),
                Severity::Hard,
                "{hard}"
            );
        }
        assert_eq!(OcfExit::from_code(6).severity(), Severity::Fatal);
        for soft in [0, 7, 8, 9, 42, 150] {
            assert_eq!(
                OcfExit::from_code(soft).severity(),
                Severity::Soft,
                "{soft}"
            );
        }
    }

    #[test]
    fn monitor_reads_seven_as_stopped_but_start_reads_it_as_failure() {
        let r = ActionResult::done(OcfExit::NotRunning, "", Duration::ZERO);
        assert_eq!(r.outcome(Action::Monitor), Outcome::NotRunning);
        assert_eq!(r.outcome(Action::Start), Outcome::Failed(Severity::Soft));
        let r = ActionResult::done(OcfExit::NotConfigured, "", Duration::ZERO);
        assert_eq!(r.outcome(Action::Start), Outcome::Failed(Severity::Fatal));
    }

    #[test]
    fn exec_status_is_kept_apart_from_the_exit_code() {
        let t = ActionResult::not_done(ExecStatus::Timeout, "killed", Duration::from_secs(1));
        assert_eq!(t.exit, None);
        assert!(!t.is_success());
        assert_eq!(t.outcome(Action::Stop), Outcome::Failed(Severity::Soft));
        let n = ActionResult::not_done(ExecStatus::NotInstalled, "", Duration::ZERO);
        assert_eq!(n.outcome(Action::Start), Outcome::Failed(Severity::Hard));
    }
}
