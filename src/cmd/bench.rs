//! `tandem bench …`: benchmarks that print tables with ratios against a baseline
//! measured in the same run.

use std::process::ExitCode;

/// `tandem bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Failure detection: power-off to node_dead, and false verdicts under a CPU hog.
    Detection(crate::bench::detection::Args),
    /// VIP outage after a power-off: tandem (fencing, witness) against keepalived.
    Failover(crate::bench::failover::Args),
    /// Idle daemon's memory and CPU, against keepalived idling in the same lab.
    Footprint(crate::bench::footprint::Args),
    /// Bytes a resync moves against the bytes dirtied, and its rate against the limit.
    Resync(crate::bench::resync::Args),
    /// What a connected, idle disk pair costs: CPU time and wakeups (no lab, no root).
    DiskIdle(crate::bench::disk_idle::Args),
    /// The NBD server against qemu-nbd and nbdkit (no lab, no root).
    Nbd(crate::bench::nbd::Args),
    /// Replicated disk over NBD (protocol C, A, local) against qemu-nbd and nbdkit.
    Replication(crate::bench::replication::Args),
}

/// Runs a benchmark.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Detection(args) => crate::bench::detection::run(args)?,
        Command::DiskIdle(args) => crate::bench::disk_idle::run(args)?,
        Command::Nbd(args) => crate::bench::nbd::run(args)?,
        Command::Replication(args) => crate::bench::replication::run(args)?,
        Command::Failover(args) => crate::bench::failover::run(args)?,
        Command::Footprint(args) => crate::bench::footprint::run(args)?,
        Command::Resync(args) => crate::bench::resync::run(args)?,
    }
    Ok(ExitCode::SUCCESS)
}
