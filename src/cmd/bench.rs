//! `tandem bench …`: benchmarks that print tables with ratios against a baseline
//! measured in the same run.

use std::process::ExitCode;

/// `tandem bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Failure detection: power-off to node_dead, and false verdicts under a CPU hog.
    Detection(crate::bench::detection::Args),
}

/// Runs a benchmark.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Detection(args) => crate::bench::detection::run(args)?,
    }
    Ok(ExitCode::SUCCESS)
}
