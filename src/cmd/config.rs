//! `tandem config …`: check the native file, import Heartbeat/DRBD files.

use std::process::ExitCode;

use crate::Global;

/// `tandem config` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate the native configuration file (syntax and semantics).
    Check,
}

/// Runs a `tandem config` subcommand.
pub fn run(_global: &Global, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check => anyhow::bail!("not yet implemented"),
    }
}
