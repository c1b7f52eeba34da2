//! LSB init scripts (`/etc/init.d/NAME start|stop|status`) and Heartbeat's own
//! `/etc/ha.d/resource.d` scripts (`NAME arg1 arg2 … start|stop|status`).
//!
//! LSB exit codes are mapped as Pacemaker maps them: for start/stop 0–7 mean what the
//! OCF codes mean and anything above is a generic error; for `status`, 0 is running,
//! 1, 2 and 3 are "not running" (dead with a pid file, dead with a lock file, stopped),
//! 150 is "not installed", 151 "insufficient privilege", anything else a generic error.
//!
//! Heartbeat scripts' `status` exit codes were never specified; Heartbeat's lrmd
//! (`raexechb`) read the *text*: output matching `*stopped*` or `*not*running*`
//! (case-insensitive) means stopped, else `*running*` (case-insensitive) or `*OK*`
//! (case-sensitive) means running, and anything else means stopped. tandem reads it
//! the same way.
//!
//! A script named bare is looked up as Heartbeat's `ResourceManager` looked it up:
//! `/etc/ha.d/resource.d/NAME` first, then `/etc/init.d/NAME`. One found in resource.d
//! follows the resource.d convention whatever the configuration says; one found in
//! init.d follows the configured one. The lookup happens at every action, so a script
//! installed after the daemon started is found.
//!
//! Stopping a stopped service must succeed: a failed `stop` is confirmed with `status`,
//! and if the service reports stopped the stop counts as done.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::RunOptions;
use crate::exec::{self, CommandSpec};
use crate::ocf::result_from_run;
use crate::result::{Action, ActionResult, ExecStatus, OcfExit};

/// Calling convention of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptStyle {
    /// An LSB init script: exit codes per LSB.
    Lsb,
    /// A Heartbeat `resource.d` script: `status` read as text.
    Heartbeat,
}

/// One script-based resource.
#[derive(Debug, Clone)]
pub struct ScriptAgent {
    /// Where the script may be, in search order, each with the convention a script
    /// found there follows: an absolute path alone, or a bare name in the Heartbeat
    /// resource directory and then in the init directory.
    pub candidates: Vec<(PathBuf, ScriptStyle)>,
    /// Arguments placed before the action (Heartbeat's `Script::arg1::arg2`).
    pub args: Vec<String>,
}

/// Pacemaker's mapping of an LSB exit code for a non-status action.
pub fn lsb_action_exit(code: i32) -> OcfExit {
    if (0..=7).contains(&code) {
        OcfExit::from_code(code)
    } else {
        OcfExit::Generic
    }
}

/// Pacemaker's mapping of an LSB `status` exit code.
pub fn lsb_status_exit(code: i32) -> OcfExit {
    match code {
        0 => OcfExit::Success,
        1..=3 => OcfExit::NotRunning,
        150 => OcfExit::NotInstalled,
        151 => OcfExit::Perm,
        _ => OcfExit::Generic,
    }
}

/// Heartbeat's (cluster-glue `raexechb`) reading of a resource.d script's `status`
/// output: true = running.
pub fn heartbeat_status_running(output: &str) -> bool {
    let lower = output.to_lowercase();
    if lower.contains("stopped") || glob_not_running(&lower) {
        return false;
    }
    lower.contains("running") || output.contains("OK")
}

/// `*not*running*`: "not" followed, anywhere later, by "running".
fn glob_not_running(lower: &str) -> bool {
    lower
        .find("not")
        .is_some_and(|i| lower[i + 3..].contains("running"))
}

impl ScriptAgent {
    /// The agent for `script` (a bare name or an absolute path) with `args`:
    /// `heartbeat` is the configured convention of a script found in `init_dir`.
    pub fn new(
        script: &str,
        args: Vec<String>,
        heartbeat: bool,
        heartbeat_dir: &Path,
        init_dir: &Path,
    ) -> ScriptAgent {
        let configured = if heartbeat {
            ScriptStyle::Heartbeat
        } else {
            ScriptStyle::Lsb
        };
        let candidates = if Path::new(script).is_absolute() {
            vec![(PathBuf::from(script), configured)]
        } else {
            vec![
                (heartbeat_dir.join(script), ScriptStyle::Heartbeat),
                (init_dir.join(script), configured),
            ]
        };
        ScriptAgent { candidates, args }
    }

    /// The script to run and how to read it: the first candidate that exists.
    pub fn locate(&self) -> Option<(&Path, ScriptStyle)> {
        self.candidates
            .iter()
            .find(|(p, _)| p.is_file())
            .map(|(p, s)| (p.as_path(), *s))
    }

    /// Where the script was looked for, for messages.
    pub fn searched(&self) -> String {
        let paths: Vec<String> = self
            .candidates
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        paths.join(" or ")
    }

    /// The command line for `verb` (`start`, `stop`, `status`) of the script at `path`.
    pub fn command(&self, path: &Path, verb: &str) -> Vec<String> {
        let mut v = vec![path.display().to_string()];
        v.extend(self.args.iter().cloned());
        v.push(verb.to_string());
        v
    }

    fn spec(&self, path: &Path, verb: &str) -> CommandSpec {
        let mut args: Vec<OsString> = self.args.iter().map(OsString::from).collect();
        args.push(verb.into());
        CommandSpec {
            program: path.to_path_buf(),
            args,
            env: Vec::new(),
        }
    }

    fn invoke(&self, verb: &str, opts: &RunOptions) -> ActionResult {
        let Some((path, style)) = self.locate() else {
            return ActionResult::not_done(
                ExecStatus::NotInstalled,
                format!("no script {}", self.searched()),
                std::time::Duration::ZERO,
            );
        };
        let spec = self.spec(path, verb);
        let run = exec::run(&spec, opts.timeout, opts.cancel.as_ref());
        match (verb, style) {
            ("status", ScriptStyle::Heartbeat) => {
                let mut r = result_from_run(&run, &spec.program, |_| OcfExit::Success);
                if r.exec_status == ExecStatus::Done {
                    // Heartbeat's lrmd read the script's stdout only.
                    let text = run.stdout.clone();
                    let running = heartbeat_status_running(&text);
                    r.exit = Some(if running {
                        OcfExit::Success
                    } else {
                        OcfExit::NotRunning
                    });
                    r.reason = format!(
                        "status output {:?} read as {}",
                        text.trim().chars().take(80).collect::<String>(),
                        if running { "running" } else { "stopped" }
                    );
                }
                r
            }
            ("status", ScriptStyle::Lsb) => result_from_run(&run, &spec.program, lsb_status_exit),
            _ => result_from_run(&run, &spec.program, lsb_action_exit),
        }
    }

    /// Runs one action.
    pub fn run(&self, action: Action, opts: &RunOptions) -> ActionResult {
        match action {
            Action::Start => self.invoke("start", opts),
            Action::Monitor => self.invoke("status", opts),
            Action::Stop => {
                let r = self.invoke("stop", opts);
                if r.exec_status != ExecStatus::Done || r.is_success() {
                    return r;
                }
                // Many scripts answer "stop" on a stopped service with 1 or 7. LSB says
                // that is success; confirm with status before accepting it.
                if r.exit == Some(OcfExit::NotRunning) {
                    let mut ok = r.clone();
                    ok.exit = Some(OcfExit::Success);
                    ok.reason = "stop answered 7 (not running): already stopped".into();
                    return ok;
                }
                let status = self.invoke("status", opts);
                if status.exec_status == ExecStatus::Done
                    && status.exit == Some(OcfExit::NotRunning)
                {
                    let mut ok = r.clone();
                    ok.exit = Some(OcfExit::Success);
                    ok.reason = format!(
                        "stop answered {} but status reports the service stopped",
                        r.exit.map_or(-1, OcfExit::code)
                    );
                    ok.duration += status.duration;
                    return ok;
                }
                r
            }
            Action::MetaData | Action::ValidateAll => ActionResult::done(
                OcfExit::Unimplemented,
                format!("init and Heartbeat scripts have no {action} action"),
                std::time::Duration::ZERO,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsb_status_codes_map_as_pacemaker_maps_them() {
        assert_eq!(lsb_status_exit(0), OcfExit::Success);
        for stopped in 1..=3 {
            assert_eq!(lsb_status_exit(stopped), OcfExit::NotRunning);
        }
        assert_eq!(lsb_status_exit(4), OcfExit::Generic);
        assert_eq!(lsb_status_exit(150), OcfExit::NotInstalled);
        assert_eq!(lsb_status_exit(151), OcfExit::Perm);
        assert_eq!(lsb_action_exit(6), OcfExit::NotConfigured);
        assert_eq!(lsb_action_exit(8), OcfExit::Generic);
        assert_eq!(lsb_action_exit(-1), OcfExit::Generic);
    }

    #[test]
    fn heartbeat_status_text_rule() {
        assert!(heartbeat_status_running("slapd is running."));
        assert!(heartbeat_status_running("Status: OK"));
        assert!(heartbeat_status_running("RUNNING"));
        assert!(!heartbeat_status_running("Status: ok")); // "OK" is case-sensitive
        assert!(!heartbeat_status_running("slapd is not running"));
        assert!(!heartbeat_status_running("NOT Running"));
        assert!(!heartbeat_status_running("stopped (but OK)"));
        assert!(!heartbeat_status_running(""));
        assert!(!heartbeat_status_running("unknown"));
    }

    #[test]
    fn heartbeat_arguments_come_before_the_action() {
        let a = ScriptAgent::new(
            "/etc/ha.d/resource.d/IPaddr",
            vec!["10.0.0.1/24".into(), "eth0".into()],
            true,
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
        );
        assert_eq!(
            a.command(Path::new("/etc/ha.d/resource.d/IPaddr"), "status"),
            [
                "/etc/ha.d/resource.d/IPaddr",
                "10.0.0.1/24",
                "eth0",
                "status"
            ]
        );
    }
}
