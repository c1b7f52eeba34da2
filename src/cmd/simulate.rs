//! `tandem simulate FILE`: plans a case file (configuration + `[view]`) with the same
//! planner the daemon runs, and prints the one-screen summary (or the transition as
//! JSON). The golden files under `testdata/policy/` are exactly this output.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::Global;

/// `tandem simulate` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A case file: a native cluster configuration plus `[view]` tables
    /// (see docs/policy.md and testdata/policy/).
    pub file: PathBuf,
    /// Print the transition as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tandem simulate`. Exit status 2 if the plan breaks a safety rule (a planner
/// bug: please report it with the case file).
pub fn run(_global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("read case file {}", args.file.display()))?;
    let name = args.file.display().to_string();
    // The case error already names the file, line and column.
    let case = tandem_policy::case::load(&name, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let transition = tandem_policy::plan(&case.config, &case.view);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&transition)?);
    } else {
        print!(
            "{}",
            tandem_policy::render::summary(&case.config, &case.view, &transition)
        );
    }
    if let Err(v) = tandem_policy::check(&case.config, &case.view, &transition) {
        eprintln!("tandem: SAFETY VIOLATION in this plan: {v}");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
