//! `tandem lab …`: lab clusters in network namespaces.

use std::process::ExitCode;

use crate::Global;

/// `tandem lab` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs a `tandem lab` subcommand.
pub fn run(_global: &Global, _args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet implemented")
}
