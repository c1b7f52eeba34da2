//! The lab: whole clusters inside one Linux host, built from network, mount and PID
//! namespaces, cgroups and bridges, for tests, demos and benchmarks.
//!
//! What it is given: a [`Topology`] (hosts, networks, addresses). What it builds:
//!
//! ```text
//!  machine namespace (nothing of the lab's network here)
//!  ┌──────────────────────────── switch netns tl-NAME-sw ───────────────────────────┐
//!  │  bridge br-lan ── ports ox1-lan ox2-lan client-lan    nft table bridge        │
//!  │  bridge br-hb  ── ports ox1-hb  ox2-hb                tandem_lab (partitions)  │
//!  └────────┬──────────────┬──────────────┬──────────────────────────────────────────┘
//!       veth│          veth│          veth│
//!  ┌────────▼───────┐ ┌────▼───────────┐ ┌▼───────────────┐
//!  │ host ox1       │ │ host ox2       │ │ host client    │  each: netns tl-NAME-HOST,
//!  │ eth0 lan .20   │ │ eth0 lan .10   │ │ eth0 lan .50   │  mount + PID namespace held
//!  │ eth1 hb  .20   │ │ eth1 hb  .10   │ │                │  by its init (PID 1), cgroup
//!  └────────────────┘ └────────────────┘ └────────────────┘  tandem-lab/tl-NAME/HOST
//! ```
//!
//! What it hands back: a [`Lab`] handle that runs processes inside hosts
//! ([`Lab::spawn`], [`Lab::output`], [`Lab::run`]), and plays the power switch and the
//! network operator: [`Lab::power_off`] (every process killed *and reaped*, links down,
//! mounts gone), [`Lab::power_on`] (a cold boot), [`Lab::freeze`] / [`Lab::thaw`],
//! [`Lab::partition`] / [`Lab::heal`]. Hosts may have a *lossy disk*
//! ([`Lab::host_disk_dir`]): a FUSE layer that keeps every write in its own cache until
//! `fsync`, and drops what is unflushed when the host loses power. State lives in `/run/tandem-lab/NAME/state.json`
//! so separate `tandem lab` invocations share one lab, and [`down_all`] removes what a
//! killed run left behind.
#![warn(missing_docs)]

mod disk;
mod lab;
mod reaper;
mod switch;
mod sys;
pub mod topology;

pub use disk::{DiskFlush, DiskStatus};
pub use lab::{
    DATA_ROOT, DiskServer, HostProcess, HostStatus, InterfaceStatus, Lab, LabOptions, LabStatus,
    Neighbor, NetStatus, Partition, STATE_ROOT, TeardownReport, down, down_all, lab_owner,
    list_labs, require_root, serve_disks,
};
pub use switch::{PowerSwitch, SwitchRequest, switch_request, switch_socket};
pub use topology::{Attachment, HostSpec, NetSpec, Topology};

/// Everything that can go wrong in the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab needs root: namespaces, cgroups, mounts.
    #[error("the lab needs root (namespaces, cgroups, mounts); running as uid {0}")]
    NotRoot(u32),
    /// The topology (file, flags) is invalid.
    #[error("topology: {0}")]
    Topology(String),
    /// A lab name is invalid.
    #[error("lab name {0:?}: expected 1 to 12 characters a-z or 0-9")]
    BadName(String),
    /// No such lab.
    #[error("no lab named {0:?} is up (see `tandem lab status --all`)")]
    NoSuchLab(String),
    /// The lab exists already.
    #[error("a lab named {0:?} exists already (take it down with `tandem lab down {0}`)")]
    Exists(String),
    /// Several labs exist and none was named.
    #[error("{0}")]
    Ambiguous(String),
    /// Unknown host.
    #[error("lab {lab:?} has no host {host:?}")]
    UnknownHost {
        /// Lab name.
        lab: String,
        /// Host asked for.
        host: String,
    },
    /// Unknown network, or a host that is not on it.
    #[error("lab {lab:?}: {detail}")]
    UnknownNet {
        /// Lab name.
        lab: String,
        /// What is wrong.
        detail: String,
    },
    /// The host is powered off.
    #[error("host {0:?} is powered off")]
    PoweredOff(String),
    /// The host is frozen (a process moved into it would hang before exec).
    #[error("host {0:?} is frozen (thaw it first)")]
    Frozen(String),
    /// An external command failed.
    #[error("`{cmd}` failed: {detail}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Waiting for the kernel took too long.
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        ms: u64,
    },
    /// A host's init could not boot.
    #[error("booting the host failed at {0}")]
    Boot(String),
    /// The state file is unreadable.
    #[error("state file {path}: {detail}")]
    State {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The host has no lossy disk (see `lossy_disk` in the topology).
    #[error("lab {lab:?}: host {host:?} has no lossy disk (set lossy_disk = true for it)")]
    NoDisk {
        /// Lab name.
        lab: String,
        /// Host asked for.
        host: String,
    },
    /// A lossy disk could not do what was asked (its server is gone, a flush failed).
    #[error("{detail}")]
    Disk {
        /// What failed, and where.
        detail: String,
    },
    /// Power-off killed every process but some were not reaped by their parents.
    #[error("power-off of {host:?}: processes killed but not reaped by their parents: {detail}")]
    Unreaped {
        /// Host.
        host: String,
        /// The zombies and their parents.
        detail: String,
    },
}
