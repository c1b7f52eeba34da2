//! systemd units through `systemctl`, where systemd is the init system.
//!
//! Detection follows `sd_booted(3)`: systemd runs when `/run/systemd/system` exists.
//! Where it does not (containers, this build machine), every action returns
//! `ExecStatus::NotInstalled` with that reason — the resource cannot run on this node,
//! which Pacemaker treats as a hard error (move elsewhere).
//!
//! `start`/`stop` run `systemctl start|stop UNIT`, which wait for the job to finish;
//! `monitor` runs `systemctl is-active UNIT` and reads its one-word answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::RunOptions;
use crate::exec::{self, CommandSpec};
use crate::ocf::result_from_run;
use crate::result::{Action, ActionResult, ExecStatus, OcfExit};

/// One unit.
#[derive(Debug, Clone)]
pub struct SystemdAgent {
    /// Unit name, e.g. `postgresql.service`.
    pub unit: String,
    /// The directory whose presence means "systemd runs" (`/run/systemd/system`).
    pub run_dir: PathBuf,
    /// The `systemctl` binary.
    pub systemctl: PathBuf,
}

/// True when systemd is the running init system (`sd_booted` semantics).
pub fn systemd_running(run_dir: &Path) -> bool {
    run_dir.is_dir()
}

/// The `systemctl` arguments for an action; `None` for actions units do not have.
pub fn systemctl_args(action: Action, unit: &str) -> Option<Vec<String>> {
    let verb = match action {
        Action::Start => "start",
        Action::Stop => "stop",
        Action::Monitor => "is-active",
        Action::MetaData | Action::ValidateAll => return None,
    };
    // `--` keeps a unit name starting with '-' from being read as an option.
    Some(vec![verb.to_string(), "--".to_string(), unit.to_string()])
}

/// Reads `systemctl is-active` output: `active`/`reloading` = running,
/// `inactive`/`failed`/`dead` = stopped (a failed unit is not running and needs no stop),
/// `activating`/`deactivating` = in transition (a generic, soft error for a monitor).
pub fn is_active_exit(stdout: &str) -> (OcfExit, String) {
    let word = stdout.lines().next().unwrap_or("").trim();
    match word {
        "active" | "reloading" | "refreshing" => (OcfExit::Success, format!("unit is {word}")),
        "inactive" | "failed" | "dead" | "maintenance" => {
            (OcfExit::NotRunning, format!("unit is {word}"))
        }
        "activating" | "deactivating" => {
            (OcfExit::Generic, format!("unit is {word} (in transition)"))
        }
        "" => (
            OcfExit::Generic,
            "systemctl is-active printed nothing".to_string(),
        ),
        other => (
            OcfExit::Generic,
            format!("unexpected is-active answer {other:?}"),
        ),
    }
}

/// The `systemctl show` arguments that print a unit's load state (`loaded`,
/// `not-found`, `masked`, …), for the configuration check.
pub fn load_state_args(unit: &str) -> Vec<String> {
    ["show", "--property=LoadState", "--value", "--", unit]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Reads `systemctl show --property=LoadState --value`: `Some(problem)` when the unit
/// cannot be started here.
pub fn load_state_problem(stdout: &str) -> Option<String> {
    match stdout.lines().next().unwrap_or("").trim() {
        "loaded" => None,
        "not-found" => Some("unit not found".to_string()),
        "masked" => Some("unit is masked".to_string()),
        "" => Some("systemctl printed no load state".to_string()),
        other => Some(format!("unit load state is {other}")),
    }
}

/// True when a unit name is acceptable to pass to systemctl.
pub fn valid_unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 255
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
}

impl SystemdAgent {
    /// Config check where systemd runs: `Some(problem)` when the unit cannot be loaded.
    pub fn check_unit(&self) -> Option<String> {
        let spec = CommandSpec {
            program: self.systemctl.clone(),
            args: load_state_args(&self.unit)
                .into_iter()
                .map(Into::into)
                .collect(),
            env: Vec::new(),
        };
        let run = exec::run(&spec, Duration::from_secs(10), None);
        match run.end {
            exec::ProcessEnd::Exited(_) => load_state_problem(&run.stdout),
            other => Some(format!("systemctl show failed: {other:?}")),
        }
    }

    /// Runs one action.
    pub fn run(&self, action: Action, opts: &RunOptions) -> ActionResult {
        if !systemd_running(&self.run_dir) {
            return ActionResult::not_done(
                ExecStatus::NotInstalled,
                format!(
                    "systemd is not the init system on this host ({} is missing); unit {} cannot be managed here",
                    self.run_dir.display(),
                    self.unit
                ),
                Duration::ZERO,
            );
        }
        if !valid_unit_name(&self.unit) {
            return ActionResult::done(
                OcfExit::NotConfigured,
                format!("invalid unit name {:?}", self.unit),
                Duration::ZERO,
            );
        }
        let Some(args) = systemctl_args(action, &self.unit) else {
            return ActionResult::done(
                OcfExit::Unimplemented,
                format!("systemd units have no {action} action"),
                Duration::ZERO,
            );
        };
        let spec = CommandSpec {
            program: self.systemctl.clone(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        };
        let run = exec::run(&spec, opts.timeout, opts.cancel.as_ref());
        let mut r = result_from_run(&run, &spec.program, crate::lsb::lsb_action_exit);
        if r.exec_status == ExecStatus::Done && action == Action::Monitor {
            let (exit, reason) = is_active_exit(&run.stdout);
            r.exit = Some(exit);
            r.reason = reason;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert_eq!(
            systemctl_args(Action::Start, "pg.service").unwrap(),
            ["start", "--", "pg.service"]
        );
        assert_eq!(
            systemctl_args(Action::Stop, "pg.service").unwrap(),
            ["stop", "--", "pg.service"]
        );
        assert_eq!(
            systemctl_args(Action::Monitor, "pg.service").unwrap(),
            ["is-active", "--", "pg.service"]
        );
        assert_eq!(systemctl_args(Action::MetaData, "pg.service"), None);
    }

    #[test]
    fn is_active_answers() {
        assert_eq!(is_active_exit("active\n").0, OcfExit::Success);
        assert_eq!(is_active_exit("reloading\n").0, OcfExit::Success);
        assert_eq!(is_active_exit("inactive\n").0, OcfExit::NotRunning);
        assert_eq!(is_active_exit("failed\n").0, OcfExit::NotRunning);
        assert_eq!(is_active_exit("activating\n").0, OcfExit::Generic);
        assert_eq!(is_active_exit("").0, OcfExit::Generic);
        assert_eq!(is_active_exit("\u{0}garbage").0, OcfExit::Generic);
    }

    #[test]
    fn load_state() {
        assert_eq!(
            load_state_args("a.service"),
            ["show", "--property=LoadState", "--value", "--", "a.service"]
        );
        assert_eq!(load_state_problem("loaded\n"), None);
        assert!(
            load_state_problem("not-found\n")
                .unwrap()
                .contains("not found")
        );
        assert!(load_state_problem("masked").is_some());
        assert!(load_state_problem("").is_some());
    }

    #[test]
    fn unit_names() {
        assert!(valid_unit_name("postgresql@15-main.service"));
        assert!(!valid_unit_name("a b"));
        assert!(!valid_unit_name(""));
        assert!(!valid_unit_name("x;rm"));
    }

    #[test]
    fn without_systemd_every_action_is_not_installed() {
        let a = SystemdAgent {
            unit: "x.service".into(),
            run_dir: "/nonexistent/run/systemd/system".into(),
            systemctl: "/bin/false".into(),
        };
        let r = a.run(Action::Start, &RunOptions::new(Duration::from_secs(1)));
        assert_eq!(r.exec_status, ExecStatus::NotInstalled);
        assert!(
            r.reason.contains("systemd is not the init system"),
            "{}",
            r.reason
        );
    }
}
