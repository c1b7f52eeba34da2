//! `tandem bench …`: measurements that print tables (never timed tests).

pub mod detection;
pub mod disk_idle;
pub mod failover;
pub mod fio;
pub mod footprint;
pub mod nbd;
pub mod replication;
pub mod resync;

/// A daemon and its children — its disk service, when its node has disks: what a
/// benchmark counts as the daemon's memory and CPU.
pub(crate) fn daemon_and_children(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}
