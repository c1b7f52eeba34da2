//! tandem's resource agents: what starts, stops and watches each resource of a group.
//!
//! ```text
//!   tandem_config::Resource ──► Agent::new ──► Agent
//!                                               │ run(Action, RunOptions)
//!            ┌───────────────┬──────────────────┼────────────────┬──────────────┐
//!            ▼               ▼                  ▼                ▼              ▼
//!     ipaddr (netlink,  filesystem (mount,   ocf (OCF_ROOT/  lsb / Heartbeat  systemd
//!     GARP / NA)        umount, holders)     resource.d)     resource.d       (systemctl)
//!            └───────────────┴──────────────────┴────────────────┴──────────────┘
//!                                               ▼
//!          ActionResult { exec_status: did it run?, exit: what the agent said (OCF),
//!                         reason, duration, output }
//! ```
//!
//! What it decides: how each agent type's answer maps onto OCF exit codes (and, through
//! [`OcfExit::severity`], onto Pacemaker's soft / hard / fatal recovery classes), and
//! when an action has run too long (then its whole process group is killed).
//! What it is given: a resource from the configuration, an action, a timeout, an
//! optional [`Cancel`] handle. What it hands back: an [`ActionResult`]. It never decides
//! what to do next — restarting, moving or fencing is the policy's job.
//!
//! Every call blocks the calling thread until the action ends or times out; the daemon
//! runs it on a worker thread (`tokio::task::spawn_blocking` or a plain thread). Actions
//! run in the network and mount namespaces of the calling thread.
//!
//! The configuration check ([`check_resource`]) runs OCF agents' `meta-data` so that an
//! unknown agent or a missing required parameter is reported before any failover.
#![warn(missing_docs)]

pub mod exec;
pub mod filesystem;
pub mod ipaddr;
pub mod lsb;
pub mod ocf;
pub mod result;
pub mod systemd;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tandem_config::{Resource, ResourceKind};

pub use exec::Cancel;
pub use filesystem::FilesystemAgent;
pub use ipaddr::IpAddrAgent;
pub use lsb::{ScriptAgent, ScriptStyle};
pub use ocf::{MetaData, OcfAgent};
pub use result::{Action, ActionResult, ExecStatus, OcfExit, Outcome, Severity};
pub use systemd::SystemdAgent;

/// The one place this crate reads the clock (action deadlines and durations).
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Per-call settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long the action may take; past it the agent is killed and the result is
    /// `ExecStatus::Timeout`.
    pub timeout: Duration,
    /// The monitor interval (`OCF_RESKEY_CRM_meta_interval`); zero for one-shot actions.
    pub interval: Duration,
    /// Cancels the action early.
    pub cancel: Option<Cancel>,
}

impl RunOptions {
    /// A one-shot action with this timeout.
    pub fn new(timeout: Duration) -> RunOptions {
        RunOptions {
            timeout,
            interval: Duration::ZERO,
            cancel: None,
        }
    }
}

/// Where agents are looked up; [`Paths::default`] is the standard layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `OCF_ROOT` (`/usr/lib/ocf`).
    pub ocf_root: PathBuf,
    /// LSB init scripts (`/etc/init.d`).
    pub init_dir: PathBuf,
    /// Heartbeat resource scripts (`/etc/ha.d/resource.d`).
    pub heartbeat_dir: PathBuf,
    /// Present when systemd runs (`/run/systemd/system`).
    pub systemd_run_dir: PathBuf,
    /// The `systemctl` binary.
    pub systemctl: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            ocf_root: std::env::var_os("OCF_ROOT")
                .map_or_else(|| "/usr/lib/ocf".into(), PathBuf::from),
            init_dir: "/etc/init.d".into(),
            heartbeat_dir: "/etc/ha.d/resource.d".into(),
            systemd_run_dir: "/run/systemd/system".into(),
            systemctl: "systemctl".into(),
        }
    }
}

/// Why an agent cannot be built for a resource.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgentError {
    /// The resource type is run by another component.
    #[error("resource {0}: type `{1}` is not run by tandem-agents ({2})")]
    NotHere(String, &'static str, &'static str),
}

/// The agent of one resource.
#[derive(Debug, Clone)]
pub enum Agent {
    /// Built-in service address.
    IpAddr(IpAddrAgent),
    /// Built-in mount.
    Filesystem(FilesystemAgent),
    /// OCF agent.
    Ocf(OcfAgent),
    /// LSB init script or Heartbeat resource.d script.
    Script(ScriptAgent),
    /// systemd unit.
    Systemd(SystemdAgent),
}

impl Agent {
    /// The agent for `resource` (`disk` resources belong to the disk component).
    pub fn new(resource: &Resource, paths: &Paths) -> Result<Agent, AgentError> {
        Ok(match &resource.kind {
            ResourceKind::IpAddr {
                address,
                prefix_len,
                interface,
                broadcast,
                garp_count,
                garp_interval,
            } => Agent::IpAddr(IpAddrAgent {
                address: *address,
                prefix_len: *prefix_len,
                interface: interface.clone(),
                broadcast: *broadcast,
                garp_count: *garp_count,
                garp_interval: *garp_interval,
            }),
            ResourceKind::Filesystem {
                device,
                directory,
                fstype,
                options,
            } => Agent::Filesystem(FilesystemAgent {
                device: device.clone(),
                directory: directory.clone(),
                fstype: fstype.clone(),
                options: options.clone(),
            }),
            ResourceKind::Ocf {
                provider,
                agent,
                params,
            } => Agent::Ocf(OcfAgent {
                instance: resource.name.clone(),
                provider: provider.clone(),
                agent: agent.clone(),
                params: params.clone(),
                ocf_root: paths.ocf_root.clone(),
            }),
            ResourceKind::Lsb {
                script,
                args,
                heartbeat,
            } => Agent::Script(ScriptAgent::new(
                script,
                args.clone(),
                *heartbeat,
                &paths.heartbeat_dir,
                &paths.init_dir,
            )),
            ResourceKind::Systemd { unit } => Agent::Systemd(SystemdAgent {
                unit: unit.clone(),
                run_dir: paths.systemd_run_dir.clone(),
                systemctl: paths.systemctl.clone(),
            }),
            ResourceKind::Disk { .. } => {
                return Err(AgentError::NotHere(
                    resource.name.clone(),
                    "disk",
                    "promote/demote is tandem-disk's",
                ));
            }
        })
    }

    /// Runs `action`, blocking until it ends, times out or is cancelled.
    pub fn run(&self, action: Action, opts: &RunOptions) -> ActionResult {
        match self {
            Agent::IpAddr(a) => a.run(action, opts),
            Agent::Filesystem(a) => a.run(action, opts),
            Agent::Ocf(a) => a.run(action, opts),
            Agent::Script(a) => a.run(action, opts),
            Agent::Systemd(a) => a.run(action, opts),
        }
    }
}

/// One finding of the configuration check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckIssue {
    /// The resource concerned.
    pub resource: String,
    /// Errors stop the configuration from loading; warnings are shown.
    pub error: bool,
    /// What is wrong.
    pub message: String,
}

/// How long the configuration check lets an OCF agent print its meta-data.
pub const META_DATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a resource definition against this node: an OCF agent that does not exist,
/// meta-data that does not parse, or a missing required parameter is an error; a script
/// that is missing is an error; what cannot be checked here (systemd not running, an
/// interface or file-system type absent on this node) is a warning.
pub fn check_resource(resource: &Resource, paths: &Paths) -> Vec<CheckIssue> {
    let mut out = Vec::new();
    let mut push = |error: bool, message: String| {
        out.push(CheckIssue {
            resource: resource.name.clone(),
            error,
            message,
        });
    };
    let agent = match Agent::new(resource, paths) {
        Ok(a) => a,
        Err(_) => return out, // disk resources are checked by the disk component
    };
    match &agent {
        Agent::Ocf(a) => {
            if !ocf::is_plain_name(&a.provider) || !ocf::is_plain_name(&a.agent) {
                push(
                    true,
                    format!("invalid OCF agent name ocf:{}:{}", a.provider, a.agent),
                );
                return out;
            }
            let path = a.path();
            if !is_executable(&path) {
                push(
                    true,
                    format!(
                        "unknown OCF agent ocf:{}:{} (no executable {})",
                        a.provider,
                        a.agent,
                        path.display()
                    ),
                );
                return out;
            }
            let (r, xml) = a.run_with_stdout(Action::MetaData, &RunOptions::new(META_DATA_TIMEOUT));
            if !r.is_success() {
                push(
                    true,
                    format!("ocf:{}:{} meta-data failed: {r}", a.provider, a.agent),
                );
                return out;
            }
            match MetaData::parse(&xml) {
                Ok(md) => {
                    let (errors, warnings) = md.check_params(&a.params);
                    for e in errors {
                        push(true, format!("ocf:{}:{}: {e}", a.provider, a.agent));
                    }
                    for w in warnings {
                        push(false, format!("ocf:{}:{}: {w}", a.provider, a.agent));
                    }
                }
                Err(e) => push(true, format!("ocf:{}:{}: {e}", a.provider, a.agent)),
            }
        }
        Agent::Script(s) => {
            // A warning, not an error: the configuration is shared by every node and is
            // often checked where the services are not installed (an admin host, a
            // node being prepared); the start on a node without it fails anyway.
            match s.locate() {
                None => push(
                    false,
                    format!("script {} does not exist on this node", s.searched()),
                ),
                Some((path, _)) if !is_executable(path) => push(
                    false,
                    format!("script {} is not executable on this node", path.display()),
                ),
                Some(_) => {}
            }
        }
        Agent::Systemd(s) => {
            if !systemd::valid_unit_name(&s.unit) {
                push(true, format!("invalid systemd unit name {:?}", s.unit));
            } else if !systemd::systemd_running(&s.run_dir) {
                push(
                    false,
                    format!(
                        "systemd does not run on this host; unit {} not checked",
                        s.unit
                    ),
                );
            }
        }
        Agent::Filesystem(f) => {
            let r = f.run(
                Action::ValidateAll,
                &RunOptions::new(Duration::from_secs(1)),
            );
            if !r.is_success() {
                push(true, r.reason);
            } else {
                match fstype_support(&f.fstype) {
                    FsSupport::Kernel => {}
                    FsSupport::Module => push(
                        false,
                        format!(
                            "file-system type {} is not loaded on this node (its module is there: it loads at the first mount)",
                            f.fstype
                        ),
                    ),
                    FsSupport::Missing => {
                        let why = tandem_config::removed_fstype(&f.fstype).map_or_else(
                            || {
                                "this kernel has neither the file system nor a module for it"
                                    .to_string()
                            },
                            str::to_string,
                        );
                        push(
                            true,
                            format!(
                                "file-system type {} cannot be mounted here: {why}; use ext4 (mkfs.ext4 {} on the disk's primary, copy the data, then fstype = \"ext4\")",
                                f.fstype, f.device
                            ),
                        );
                    }
                }
            }
        }
        Agent::IpAddr(i) => {
            let r = i.run(
                Action::ValidateAll,
                &RunOptions::new(Duration::from_secs(1)),
            );
            if !r.is_success() {
                push(true, r.reason);
            }
        }
    }
    out
}

/// Checks every resource of every group ([`check_resource`] for each).
pub fn check_config(config: &tandem_config::Config, paths: &Paths) -> Vec<CheckIssue> {
    config
        .groups
        .iter()
        .flat_map(|g| g.resources.iter())
        .flat_map(|r| check_resource(r, paths))
        .collect()
}

/// Runs an OCF agent's `meta-data` and parses it.
pub fn ocf_meta_data(a: &OcfAgent) -> Result<MetaData, String> {
    let (r, xml) = a.run_with_stdout(Action::MetaData, &RunOptions::new(META_DATA_TIMEOUT));
    if !r.is_success() {
        return Err(format!("{} meta-data: {r}", a.path().display()));
    }
    MetaData::parse(&xml).map_err(|e| e.to_string())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this node can mount a file-system type.
enum FsSupport {
    /// In /proc/filesystems.
    Kernel,
    /// A module for it exists under /lib/modules/RELEASE/kernel/fs.
    Module,
    /// Neither.
    Missing,
}

fn fstype_support(fstype: &str) -> FsSupport {
    // `auto` probes at mount time; nothing to check.
    if fstype == "auto" {
        return FsSupport::Kernel;
    }
    let loaded = std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().last() == Some(fstype))
    });
    if loaded {
        return FsSupport::Kernel;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = Path::new("/lib/modules")
        .join(release.trim())
        .join("kernel/fs")
        .join(fstype);
    if !release.trim().is_empty() && dir.is_dir() {
        FsSupport::Module
    } else {
        FsSupport::Missing
    }
}
