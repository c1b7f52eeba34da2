//! `tandem bench detection`: how fast a dead node is detected, and whether load causes
//! false verdicts.
//!
//! Part 1 powers the peer off hard (every process killed at once, its links down) many
//! times and measures, from the moment of power-off to the survivor's `node_dead`
//! event, the time detection took. The protocol's promise is
//! `deadtime - keepalive ≤ t ≤ deadtime + keepalive`.
//!
//! Part 2 runs a CPU hog (stress-ng, two workers per core) on both hosts while both
//! daemons run, and counts false `node_dead` events — once with the daemons' real-time
//! heartbeat thread and, as the baseline measured in the same run, once with
//! `--no-realtime` (an ordinary thread, as most HA stacks run it).

use std::time::Duration;

use anyhow::Context;

use crate::labcluster::{LabCluster, Timing};

/// `tandem bench detection` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hard power-offs to measure.
    #[arg(long, default_value_t = 30)]
    pub power_offs: u32,
    /// Seconds of CPU hog per run (one run with real-time heartbeats, one without).
    #[arg(long, default_value_t = 300)]
    pub hog_seconds: u64,
    /// Heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub keepalive_ms: u64,
    /// Deadtime, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub deadtime_ms: u64,
}

/// Runs the benchmark and prints its tables.
pub fn run(args: Args) -> anyhow::Result<()> {
    let timing = Timing {
        keepalive: Duration::from_millis(args.keepalive_ms),
        deadtime: Duration::from_millis(args.deadtime_ms),
    };
    let detections = power_offs(timing, args.power_offs)?;
    print_detection_table(timing, &detections);
    if args.hog_seconds > 0 {
        let hog = Duration::from_secs(args.hog_seconds);
        let realtime = false_deads_under_hog(timing, hog, true)?;
        let ordinary = false_deads_under_hog(timing, hog, false)?;
        println!();
        println!(
            "False dead verdicts during {} s of stress-ng --cpu {} on both hosts",
            hog.as_secs(),
            2 * cores()
        );
        println!("| heartbeat thread               | false node_dead | late heartbeats |");
        println!("|--------------------------------|-----------------|-----------------|");
        println!(
            "| SCHED_RR + mlockall (tandem)   | {:>15} | {:>15} |",
            realtime.0, realtime.1
        );
        println!(
            "| ordinary thread (baseline)     | {:>15} | {:>15} |",
            ordinary.0, ordinary.1
        );
    }
    Ok(())
}

/// Detection times in milliseconds, one per power-off.
fn power_offs(timing: Timing, count: u32) -> anyhow::Result<Vec<i64>> {
    let mut cluster = LabCluster::up(timing)?;
    let mut detections = Vec::new();
    for round in 0..count {
        cluster.start_daemon("ox1", &[])?;
        cluster.start_daemon("ox2", &[])?;
        cluster.wait_peer_state("ox1", "ox2", "up", Duration::from_secs(10))?;
        cluster.wait_peer_state("ox2", "ox1", "up", Duration::from_secs(10))?;
        // Let a few heartbeats flow so the cut lands at a random phase of the keepalive.
        std::thread::sleep(timing.keepalive * (3 + round % 5));
        let before = cluster.events("ox1", "node_dead").len();
        let off_ms = crate::clock::wall_ms();
        cluster.lab.power_off("ox2").context("power off ox2")?;
        let deadline = crate::clock::now() + timing.deadtime * 10;
        let dead = loop {
            let events = cluster.events("ox1", "node_dead");
            if events.len() > before {
                break events[before].clone();
            }
            anyhow::ensure!(
                crate::clock::now() < deadline,
                "round {round}: ox1 never declared ox2 dead"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let detected_ms = dead["time_ms"].as_u64().context("event time")? as i64;
        detections.push(detected_ms - off_ms as i64);
        eprintln!(
            "power-off {}/{count}: detected after {} ms",
            round + 1,
            detected_ms - off_ms as i64
        );
        cluster.lab.power_on("ox2")?;
        // ox1 keeps running; restart it too so each round starts from a clean pair.
        cluster.lab.power_off("ox1")?;
        cluster.lab.power_on("ox1")?;
    }
    Ok(detections)
}

fn print_detection_table(timing: Timing, detections: &[i64]) {
    let mut sorted = detections.to_vec();
    sorted.sort_unstable();
    let pct = |p: f64| {
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(i).copied().unwrap_or(0)
    };
    let bound = (timing.deadtime + timing.keepalive).as_millis() as i64;
    println!(
        "Detection of a hard power-off (keepalive {} ms, deadtime {} ms, {} power-offs)",
        timing.keepalive.as_millis(),
        timing.deadtime.as_millis(),
        sorted.len()
    );
    println!("| statistic | ms | ratio to deadtime + keepalive ({bound} ms) |");
    println!("|-----------|----|-----------------------------------|");
    for (name, v) in [
        ("min", pct(0.0)),
        ("p50", pct(0.5)),
        ("p99", pct(0.99)),
        ("max", pct(1.0)),
    ] {
        println!("| {name:<9} | {v:>4} | {:>5.2} |", v as f64 / bound as f64);
    }
}

/// (false node_dead events, late heartbeats) counted on both nodes during a hog.
fn false_deads_under_hog(
    timing: Timing,
    hog: Duration,
    realtime: bool,
) -> anyhow::Result<(usize, usize)> {
    let mut cluster = LabCluster::up(timing)?;
    let extra: &[&str] = if realtime { &[] } else { &["--no-realtime"] };
    cluster.start_daemon("ox1", extra)?;
    cluster.start_daemon("ox2", extra)?;
    cluster.wait_peer_state("ox1", "ox2", "up", Duration::from_secs(10))?;
    cluster.wait_peer_state("ox2", "ox1", "up", Duration::from_secs(10))?;
    let workers = (2 * cores()).to_string();
    let seconds = format!("{}s", hog.as_secs());
    let mut hogs = Vec::new();
    for host in ["ox1", "ox2"] {
        let mut cmd = std::process::Command::new("stress-ng");
        cmd.args(["--cpu", &workers, "--timeout", &seconds, "--quiet"]);
        cmd.stdout(std::process::Stdio::null());
        hogs.push(cluster.lab.spawn(host, cmd).context("start stress-ng")?);
    }
    for h in &hogs {
        h.wait()?;
    }
    let count = |kind| cluster.events("ox1", kind).len() + cluster.events("ox2", kind).len();
    Ok((count("node_dead"), count("node_late")))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
