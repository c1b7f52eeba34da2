//! `tandem lab scenarios` and `tandem lab chaos`: named failure scenarios after
//! Pacemaker's and Heartbeat's CTS, and seeded random faults, on the data demo's
//! cluster with its client writing through the VIP all along.
//!
//! ```text
//!  build (cluster.rs: the demo's lab, r0, ext4, records, VIP; client; dual-active watch)
//!    └─ for each round of --repeat, each scenario (catalog.rs):
//!         fault → what must happen while it lasts → undo → audit (audit.rs)
//!  report: scenario, result, time, what was seen and audited; exit 1 if any failed
//! ```
//!
//! A failed scenario is reported with its error and the daemons' log tails are kept
//! (the lab itself always comes down); the next scenario runs on a fresh cluster.

mod audit;
mod catalog;
mod chaos;
mod cluster;
mod heal;
mod sampler;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context, bail};

pub use chaos::{ChaosArgs, run as chaos};
use cluster::DataCluster;

use crate::demo::interrupt;

/// `tandem lab scenarios` arguments.
#[derive(Debug, clap::Args)]
pub struct ScenarioArgs {
    /// Scenarios to run, in this order (case-insensitive); none: every implemented one.
    names: Vec<String>,
    /// Run the list this many times.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// The quick set that CI runs (the ones data safety rests on).
    #[arg(long, conflicts_with = "names")]
    quick: bool,
    /// List the scenarios, what each does and whether it is implemented; run nothing.
    #[arg(long)]
    list: bool,
}

/// One line of the report.
struct Row {
    name: &'static str,
    round: u32,
    ok: bool,
    scenario_ms: u64,
    audit_ms: u64,
    seen: String,
    audited: String,
}

/// Runs `tandem lab scenarios`.
pub fn scenarios(args: ScenarioArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        for sc in catalog::SCENARIOS {
            let state = if sc.body.is_some() {
                ""
            } else {
                "  (not implemented)"
            };
            say(&format!("{:<20} {}{state}", sc.name, sc.what));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let chosen = choose(&args)?;
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    tandem_lab::require_root()?;
    interrupt::install()?;
    let mut rows = Vec::new();
    // The cluster, and whether a scenario ran on it (operator requests may stand).
    let mut dc: Option<(DataCluster, bool)> = None;
    for round in 1..=args.repeat {
        for (sc, body) in &chosen {
            interrupt::check()?;
            let cluster = match dc.take() {
                Some((c, used)) if used && sc.fresh => {
                    say(&format!("{} needs a fresh cluster", sc.name));
                    teardown(c)?;
                    build()?
                }
                Some((c, _)) => c,
                None => build()?,
            };
            let (row, cluster) = run_one(cluster, sc.name, *body, round);
            print_row(&row);
            rows.push(row);
            dc = match cluster {
                Some(c) if sc.discard => {
                    say(&format!(
                        "{} changed the configuration: its cluster is taken down",
                        sc.name
                    ));
                    teardown(c)?;
                    None
                }
                c => c.map(|c| (c, true)),
            };
        }
    }
    if let Some((c, _)) = dc {
        teardown(c)?;
    }
    report(&rows);
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        say(&format!("{failed} of {} scenarios failed", rows.len()));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The scenarios asked for; an error naming any that is unknown or not implemented.
fn choose(args: &ScenarioArgs) -> anyhow::Result<Vec<(&'static catalog::Scenario, catalog::Body)>> {
    let implemented: Vec<&str> = catalog::SCENARIOS
        .iter()
        .filter(|s| s.body.is_some())
        .map(|s| s.name)
        .collect();
    let names: Vec<String> = if args.quick {
        catalog::QUICK.iter().map(|s| s.to_string()).collect()
    } else if args.names.is_empty() {
        implemented.iter().map(|s| s.to_string()).collect()
    } else {
        args.names.clone()
    };
    let mut chosen = Vec::new();
    for n in &names {
        match catalog::lookup(n) {
            None => bail!(
                "no scenario named {n:?}; implemented: {}",
                implemented.join(", ")
            ),
            Some(sc) => match sc.body {
                None => bail!(
                    "scenario {} ({}) is not implemented yet; implemented: {}",
                    sc.name,
                    sc.what,
                    implemented.join(", ")
                ),
                Some(body) => chosen.push((sc, body)),
            },
        }
    }
    Ok(chosen)
}

fn build() -> anyhow::Result<DataCluster> {
    say("building the data cluster: ox1, ox2, client; r0 → ext4 → records → VIP; client writing");
    let t0 = crate::clock::now();
    let dc = DataCluster::build()?;
    say(&format!(
        "lab {} ready in {:.1} s",
        dc.name(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(dc)
}

/// Runs one scenario and its audit; the cluster back, unless it failed (then it is
/// taken down, its daemons' logs kept).
fn run_one(
    mut dc: DataCluster,
    name: &'static str,
    body: catalog::Body,
    round: u32,
) -> (Row, Option<DataCluster>) {
    say(&format!("scenario {name} (round {round})"));
    let dual_before = dc.sampler.counts().dual();
    let t0 = crate::clock::now();
    let seen = body(&mut dc);
    let scenario_ms = t0.elapsed().as_millis() as u64;
    let t1 = crate::clock::now();
    let audited = match &seen {
        Ok(_) => audit::audit(&mut dc, true).and_then(|a| {
            let dual = dc.sampler.counts().dual() - dual_before;
            if dual > 0 {
                bail!("{dual} samples with two nodes serving");
            }
            Ok(a)
        }),
        Err(_) => Err(anyhow::anyhow!("not audited")),
    };
    let audit_ms = t1.elapsed().as_millis() as u64;
    let ok = seen.is_ok() && audited.is_ok();
    let text = |r: &anyhow::Result<String>| match r {
        Ok(s) => s.clone(),
        Err(e) => format!("FAILED: {e:#}"),
    };
    let row = Row {
        name,
        round,
        ok,
        scenario_ms,
        audit_ms,
        seen: text(&seen),
        audited: text(&audited),
    };
    if ok {
        return (row, Some(dc));
    }
    keep_logs(&dc, name);
    if let Err(e) = teardown(dc) {
        say(&format!("teardown after {name}: {e:#}"));
    }
    (row, None)
}

/// Copies the daemons' logs out of the lab (its teardown removes them).
fn keep_logs(dc: &DataCluster, name: &str) {
    let dir = std::env::temp_dir()
        .join("tandem-scenarios")
        .join(format!("{}-{name}", dc.name()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for node in cluster::NODES {
        let from = dc.cluster.lab.data_dir().join(format!("{node}.log"));
        let _ = std::fs::copy(&from, dir.join(format!("{node}.log")));
    }
    say(&format!("daemon logs kept in {}", dir.display()));
}

fn teardown(dc: DataCluster) -> anyhow::Result<()> {
    let problems = dc.down().context("take the lab down")?;
    if !problems.is_empty() {
        bail!("the lab's teardown reported: {}", problems.join("; "));
    }
    Ok(())
}

fn print_row(r: &Row) {
    say(&format!(
        "{} {} in {:.1} s (audit {:.1} s)\n    seen:    {}\n    audited: {}",
        r.name,
        if r.ok { "passed" } else { "FAILED" },
        r.scenario_ms as f64 / 1000.0,
        r.audit_ms as f64 / 1000.0,
        r.seen,
        r.audited
    ));
}

fn report(rows: &[Row]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n| scenario | round | result | time | audit | what was seen | what was audited |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} s | {:.1} s | {} | {} |",
            r.name,
            r.round,
            if r.ok { "pass" } else { "FAIL" },
            r.scenario_ms as f64 / 1000.0,
            r.audit_ms as f64 / 1000.0,
            r.seen.replace('|', "/"),
            r.audited.replace('|', "/")
        );
    }
}

/// A line of the run's narration.
fn say(what: &str) {
    let _ = writeln!(std::io::stdout(), "scenarios: {what}");
}
