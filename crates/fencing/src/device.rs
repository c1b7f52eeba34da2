//! How a configured device becomes a program invocation: pure, no I/O.
//!
//! - fence-agents: the program gets `name=value` lines on stdin: `action=`, `port=` (the
//!   node's plug), `nodename=` (the node), then the device's parameters (FenceAgentAPI;
//!   agents ignore names they do not know, and Debian's python agents also accept their
//!   long option names, e.g. `ip`, `username`, `password`, which the ha.cf importer
//!   writes).
//! - Heartbeat `external/NAME`: `PLUGIN_DIR/NAME ACTION [NODE]`, the device's
//!   parameters in the environment (as Heartbeat's `external` module passed them).
//! - manual: nothing runs; the coordinator waits for an operator.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tandem_config::{FenceAgent, FenceDevice};

use crate::action::FenceAction;

/// Where Heartbeat installs its `external/*` stonith plugins.
pub const EXTERNAL_PLUGIN_DIR: &str = "/usr/lib/stonith/plugins/external";

/// Where Debian's `fence-agents` installs its programs, searched in order.
pub const FENCE_AGENT_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// Where programs are found. The defaults are the Debian locations; tests and the lab
/// point them elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramPaths {
    /// Directories searched for `fence_*` programs.
    pub fence_agent_dirs: Vec<PathBuf>,
    /// The directory holding Heartbeat `external/*` plugins.
    pub external_dir: PathBuf,
    /// A fence-agents name run as a given command line instead of being searched, e.g.
    /// `fence_tandem_lab` → `[/usr/sbin/tandem, lab-fence-agent]`.
    pub overrides: BTreeMap<String, Vec<OsString>>,
}

impl Default for ProgramPaths {
    fn default() -> Self {
        ProgramPaths {
            fence_agent_dirs: FENCE_AGENT_DIRS.iter().map(PathBuf::from).collect(),
            external_dir: PathBuf::from(EXTERNAL_PLUGIN_DIR),
            overrides: BTreeMap::new(),
        }
    }
}

/// A prepared invocation of a device's program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The program and its arguments; `None` when it was not found anywhere.
    pub argv: Option<Vec<OsString>>,
    /// What was looked for (for "not installed" messages).
    pub wanted: String,
    /// Bytes written to its stdin.
    pub stdin: Vec<u8>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// The plug a device uses for `node`: its plug map, else the node's own name
/// (Heartbeat matched outlets by host name).
pub fn plug_for<'a>(dev: &'a FenceDevice, node: &'a str) -> &'a str {
    dev.plugs.get(node).map(String::as_str).unwrap_or(node)
}

/// Whether a parameter name/value can be written as one `name=value` line, as the
/// FenceAgentAPI requires (no newline, no `=` or space in the name).
fn line_safe(name: &str, value: &str) -> bool {
    !name.is_empty()
        && !name.contains(['=', '\n', '\r', ' ', '\t', '\0'])
        && !value.contains(['\n', '\r', '\0'])
}

/// Prepares the invocation of `dev` for `action` on `target`, or `None` for a manual
/// device (nothing to run). Parameters that cannot be written on one line are dropped
/// (the config loader should have refused them).
pub fn prepare(
    dev: &FenceDevice,
    action: FenceAction,
    target: Option<&str>,
    paths: &ProgramPaths,
) -> Option<Invocation> {
    match &dev.agent {
        FenceAgent::Manual => None,
        FenceAgent::FenceAgents(name) => {
            let mut stdin = String::new();
            stdin.push_str(&format!("action={}\n", action.fence_agents_name()));
            if let Some(node) = target.filter(|_| action.has_target()) {
                let plug = plug_for(dev, node);
                if line_safe("port", plug) && line_safe("nodename", node) {
                    stdin.push_str(&format!("port={plug}\nnodename={node}\n"));
                }
            }
            for (k, v) in &dev.params {
                // The action and plug are ours to set: a parameter must not override them.
                let reserved = matches!(
                    k.as_str(),
                    "action" | "option" | "port" | "plug" | "nodename"
                );
                if !reserved && line_safe(k, v) {
                    stdin.push_str(&format!("{k}={v}\n"));
                }
            }
            Some(Invocation {
                argv: find_fence_agent(name, paths),
                wanted: name.clone(),
                stdin: stdin.into_bytes(),
                env: Vec::new(),
            })
        }
        FenceAgent::External(name) => {
            let path = paths.external_dir.join(name);
            let argv =
                (!name.contains('/') && !name.is_empty() && is_executable(&path)).then(|| {
                    let mut a = vec![path.clone().into_os_string(), action.external_name().into()];
                    if let Some(node) = target.filter(|_| {
                        matches!(
                            action,
                            FenceAction::Off | FenceAction::On | FenceAction::Reboot
                        )
                    }) {
                        a.push(plug_for(dev, node).into());
                    }
                    a
                });
            let env = dev
                .params
                .iter()
                .filter(|(k, v)| !k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some(Invocation {
                argv,
                wanted: path.display().to_string(),
                stdin: Vec::new(),
                env,
            })
        }
    }
}

fn find_fence_agent(name: &str, paths: &ProgramPaths) -> Option<Vec<OsString>> {
    if let Some(argv) = paths.overrides.get(name) {
        return (!argv.is_empty()).then(|| argv.clone());
    }
    if name.starts_with('/') {
        // An absolute path names the program itself (an agent outside the standard
        // directories).
        let path = Path::new(name);
        return is_executable(path).then(|| vec![path.as_os_str().to_owned()]);
    }
    if name.is_empty() || name.contains('/') {
        return None;
    }
    paths
        .fence_agent_dirs
        .iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .map(|p| vec![p.into_os_string()])
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dev(agent: FenceAgent) -> FenceDevice {
        FenceDevice {
            name: "pdu".into(),
            agent,
            params: BTreeMap::from([
                ("ipaddr".to_string(), "10.0.0.5".to_string()),
                ("login".to_string(), "apc".to_string()),
                ("action".to_string(), "on".to_string()),
                ("bad\nname".to_string(), "x".to_string()),
            ]),
            plugs: BTreeMap::from([("ox1".to_string(), "3".to_string())]),
            run_on: vec![],
            level: 1,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn fence_agents_stdin_carries_action_plug_and_params_but_not_overrides() {
        let d = dev(FenceAgent::FenceAgents("fence_dummy".into()));
        let inv = prepare(&d, FenceAction::Off, Some("ox1"), &ProgramPaths::default())
            .expect("not manual");
        let text = String::from_utf8(inv.stdin).expect("utf8");
        assert_eq!(
            text,
            "action=off\nport=3\nnodename=ox1\nipaddr=10.0.0.5\nlogin=apc\n"
        );
        // A node without a plug entry uses its own name.
        let inv = prepare(
            &d,
            FenceAction::Status,
            Some("ox2"),
            &ProgramPaths::default(),
        )
        .expect("not manual");
        assert!(String::from_utf8_lossy(&inv.stdin).contains("port=ox2\n"));
        // Device-wide actions carry no plug.
        let inv = prepare(
            &d,
            FenceAction::Monitor,
            Some("ox2"),
            &ProgramPaths::default(),
        )
        .expect("not manual");
        assert!(!String::from_utf8_lossy(&inv.stdin).contains("port="));
    }

    #[test]
    fn external_gets_heartbeat_names_and_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("ssh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let paths = ProgramPaths {
            external_dir: dir.path().to_path_buf(),
            ..ProgramPaths::default()
        };
        let d = dev(FenceAgent::External("ssh".into()));
        let inv = prepare(&d, FenceAction::Reboot, Some("ox1"), &paths).expect("not manual");
        let argv = inv.argv.expect("found");
        assert_eq!(argv[1], "reset");
        assert_eq!(argv[2], "3");
        assert!(inv.env.contains(&("ipaddr".into(), "10.0.0.5".into())));
        let inv = prepare(&d, FenceAction::List, Some("ox1"), &paths).expect("not manual");
        assert_eq!(inv.argv.expect("found")[1..], ["gethosts"]);
        let missing = dev(FenceAgent::External("nope".into()));
        assert!(
            prepare(&missing, FenceAction::Off, Some("ox1"), &paths)
                .expect("not manual")
                .argv
                .is_none()
        );
    }

    #[test]
    fn manual_runs_nothing() {
        assert!(
            prepare(
                &dev(FenceAgent::Manual),
                FenceAction::Off,
                Some("ox1"),
                &ProgramPaths::default()
            )
            .is_none()
        );
    }
}
