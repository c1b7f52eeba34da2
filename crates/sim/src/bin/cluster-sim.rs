//! `cluster-sim`: runs the whole-cluster simulator over many seeds and prints what was
//! run, the faults injected by kind and the violations (tandem_sim::cluster).
//!
//! ```text
//! cluster-sim [--seeds N] [--from S] [--seed S] [--witness on|off]
//!             [--unsafe dont-care|no-fencing|witness-grants-both]
//!             [--fault-secs T] [--calm-secs T] [--json]
//! ```
//! Odd seeds run with a witness, even seeds without, unless `--witness` says.
//! Exits 1 if any seed broke an invariant (each failure prints its seed and last
//! steps; `--seed S` replays one exactly).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use tandem_sim::cluster::{Options, Unsafe, run_seed};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut seeds = 100u64;
    let mut from = 0u64;
    let mut one = None;
    let mut json = false;
    let mut opts = Options::default();
    while let Some(a) = args.next() {
        let mut value = |what: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{what} needs a number")))
        };
        match a.as_str() {
            "--seeds" => seeds = value("--seeds"),
            "--from" => from = value("--from"),
            "--seed" => one = Some(value("--seed")),
            "--fault-secs" => opts.fault_time = Duration::from_secs(value("--fault-secs")),
            "--calm-secs" => opts.calm_time = Duration::from_secs(value("--calm-secs")),
            "--json" => json = true,
            "--unsafe" => {
                opts.unsafe_variant = match args.next().as_deref() {
                    Some("dont-care") => Unsafe::DiskDontCare,
                    Some("no-fencing") => Unsafe::NoFencing,
                    Some("witness-grants-both") => Unsafe::WitnessGrantsBoth,
                    _ => usage("--unsafe takes dont-care, no-fencing or witness-grants-both"),
                }
            }
            "--witness" => {
                opts.witness = match args.next().as_deref() {
                    Some("on") => Some(true),
                    Some("off") => Some(false),
                    _ => usage("--witness takes on or off"),
                }
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let range: Vec<u64> = match one {
        Some(s) => vec![s],
        None => (from..from + seeds).collect(),
    };
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut steps, mut fences, mut promotions, mut writes) = (0u64, 0u64, 0u64, 0u64);
    let (mut with_witness, mut grants, mut takeovers) = (0u64, 0u64, 0u64);
    let mut violations = Vec::new();
    for &seed in &range {
        match run_seed(seed, &opts) {
            Ok(s) => {
                steps += s.steps;
                fences += s.fences;
                promotions += s.promotions;
                writes += s.writes_acked;
                with_witness += u64::from(s.witness);
                grants += s.grants;
                takeovers += s.witness_takeovers;
                for (k, v) in s.faults {
                    *faults.entry(k).or_default() += v;
                }
            }
            Err(e) => {
                eprintln!("{e}\n");
                violations.push(seed);
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "seeds": range.len(), "steps": steps, "faults": faults, "fences": fences,
                "promotions": promotions, "writes_acked": writes, "violations": violations,
                "seeds_with_witness": with_witness, "witness_grants": grants,
                "witness_takeovers": takeovers,
            })
        );
    } else {
        println!(
            "seeds {} ({}..), steps {steps}, fences {fences}, promotions {promotions}, acknowledged writes {writes}",
            range.len(),
            range.first().copied().unwrap_or(0)
        );
        println!(
            "with a witness: {with_witness} seeds, {grants} votes granted, {takeovers} takeovers (each after a vote or a confirmed fence)"
        );
        let f: Vec<String> = faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("faults: {}", f.join(", "));
        println!("violations: {} {violations:?}", violations.len());
    }
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "cluster-sim: {why}\nusage: cluster-sim [--seeds N] [--from S] [--seed S] [--witness on|off] [--unsafe dont-care|no-fencing|witness-grants-both] [--fault-secs T] [--calm-secs T] [--json]"
    );
    std::process::exit(2)
}
