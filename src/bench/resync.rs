//! `tandem bench resync`: what a resync moves and how fast, on a replicated disk whose
//! secondary was disconnected while the primary wrote a known fraction of it.
//!
//! Each run: a lab with disk r0 (protocol C, `resource-only`), a full initial sync, the
//! secondary disconnected (`tandem disk disconnect`), fio writing 1 MiB blocks spread
//! evenly over the primary's `/dev/tandem/r0` (`rw=write:SKIP`, direct I/O) until the
//! fraction is dirtied, then `tandem disk connect`: the bytes the sync source moved
//! (`resync_moved_bytes`) against the bytes dirtied (the bitmap's `out_of_sync_bytes`
//! before the reconnect), and the time from the reconnect to both copies in sync. With
//! a configured `rate`, the achieved rate against the limit.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::demo::setup::{self, DEVICE};
use crate::labcluster::{LabCluster, Timing};
use tandem_config::DiskFencing;

/// `tandem bench resync` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Disk size in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Dirtied fractions, in percent of the disk, without a rate limit.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub percents: Vec<u64>,
    /// Rate limits to check, in MiB/s (each with `--rate-percent` of the disk dirtied).
    #[arg(long, value_delimiter = ',', default_value = "5,50")]
    pub rates_mib: Vec<u64>,
    /// The fraction dirtied for the rate runs, in percent.
    #[arg(long, default_value_t = 10)]
    pub rate_percent: u64,
    /// Disk size of the rate runs, in MiB (their initial full sync runs at the limit).
    #[arg(long, default_value_t = 256)]
    pub rate_size_mib: u64,
}

struct Run {
    dirtied: u64,
    moved: u64,
    seconds: f64,
}

/// Runs the benchmark and prints its tables.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.size_mib < 16
        || args
            .percents
            .iter()
            .chain([&args.rate_percent])
            .any(|p| *p == 0 || *p > 100)
    {
        bail!("--size-mib must be at least 16 and every percentage within 1..=100");
    }
    let mut free = Vec::new();
    {
        let mut lab = DiskLab::up(args.size_mib, None)?;
        for &p in &args.percents {
            free.push((p, lab.resync_after_dirtying(p)?));
        }
        lab.down()?;
    }
    let mut limited = Vec::new();
    for &rate in &args.rates_mib {
        let mut lab = DiskLab::up(args.rate_size_mib, Some(rate))?;
        limited.push((rate, lab.resync_after_dirtying(args.rate_percent)?));
        lab.down()?;
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "Resync of a {} MiB disk after the primary wrote alone (no rate limit)",
        args.size_mib
    );
    println!("| dirtied | dirtied MiB | moved MiB | moved / dirtied | seconds | MiB/s  |");
    println!("|---------|-------------|-----------|-----------------|---------|--------|");
    for (p, r) in &free {
        println!(
            "| {:>6}% | {:>11.1} | {:>9.1} | {:>15.3} | {:>7.2} | {:>6.1} |",
            p,
            mib(r.dirtied),
            mib(r.moved),
            r.moved as f64 / r.dirtied.max(1) as f64,
            r.seconds,
            mib(r.moved) / r.seconds.max(0.001)
        );
    }
    println!();
    println!(
        "Resync rate against the configured limit ({}% of the disk dirtied)",
        args.rate_percent
    );
    println!("| limit MiB/s | moved MiB | seconds | achieved MiB/s | achieved / limit |");
    println!("|-------------|-----------|---------|----------------|------------------|");
    for (rate, r) in &limited {
        let achieved = mib(r.moved) / r.seconds.max(0.001);
        println!(
            "| {:>11} | {:>9.1} | {:>7.2} | {:>14.2} | {:>16.3} |",
            rate,
            mib(r.moved),
            r.seconds,
            achieved,
            achieved / *rate as f64
        );
    }
    println!("targets: moved ≤ 1.05 × dirtied; achieved rate within ±5 % of the limit");
    Ok(())
}

/// A lab with r0 connected and in sync, primary on ox1.
struct DiskLab {
    cluster: LabCluster,
    size_mib: u64,
}

impl DiskLab {
    fn up(size_mib: u64, rate_mib: Option<u64>) -> anyhow::Result<DiskLab> {
        let timing = Timing {
            keepalive: Duration::from_millis(200),
            deadtime: Duration::from_millis(1000),
        };
        let mut cluster = LabCluster::up_with_lab(timing, "none", |lab, c| {
            setup::disk_tables(lab, c)?;
            c.disk_fencing("r0", DiskFencing::ResourceOnly)
                .disk_mut("r0")
                .rate_bytes_per_s = rate_mib.map(|r| r << 20);
            Ok(())
        })?;
        setup::create_backing(&cluster, size_mib)?;
        for node in ["ox1", "ox2"] {
            cluster.tandem(node, &["disk", "create-md", "r0", "--node", node])?;
        }
        cluster.start_daemon("ox1", &[])?;
        cluster.start_daemon("ox2", &[])?;
        for node in ["ox1", "ox2"] {
            wait(Duration::from_secs(30), &format!("{node}'s daemon"), || {
                Ok(setup::disk_status(&cluster, node).is_some())
            })?;
            cluster.tandem(node, &["disk", "up", "r0"])?;
        }
        wait(Duration::from_secs(30), "r0 connected", || {
            Ok(setup::disk_status(&cluster, "ox1").is_some_and(|s| s["connection"] == "connected"))
        })?;
        cluster.tandem("ox1", &["disk", "primary", "--force", "r0"])?;
        // The initial full sync runs at the configured rate: allow for it.
        let full = Duration::from_secs(60 + rate_mib.map_or(0, |r| size_mib / r.max(1) * 2));
        setup::wait_in_sync(&cluster, full)?;
        Ok(DiskLab { cluster, size_mib })
    }

    fn status(&self, node: &str) -> anyhow::Result<Value> {
        setup::disk_status(&self.cluster, node).with_context(|| format!("r0's status on {node}"))
    }

    fn resync_after_dirtying(&mut self, percent: u64) -> anyhow::Result<Run> {
        self.cluster.tandem("ox2", &["disk", "disconnect", "r0"])?;
        wait(Duration::from_secs(30), "r0 disconnected on ox1", || {
            Ok(self.status("ox1")?["connection"] != "connected")
        })?;
        // 1 MiB written, then (100/percent - 1) MiB skipped, over the whole disk.
        let skip = 100 / percent - 1;
        let rw = if skip == 0 {
            "write".to_string()
        } else {
            format!("write:{skip}M")
        };
        self.cluster
            .lab
            .run(
                "ox1",
                &[
                    "fio",
                    "--name=dirty",
                    &format!("--filename={DEVICE}"),
                    &format!("--rw={rw}"),
                    "--bs=1M",
                    "--direct=1",
                    "--ioengine=libaio",
                    "--iodepth=8",
                    &format!("--size={}M", self.size_mib),
                    "--output-format=terse",
                ],
            )
            .context("fio on ox1")?;
        let before = self.status("ox1")?;
        let dirtied = before["out_of_sync_bytes"]
            .as_u64()
            .context("out_of_sync_bytes")?;
        let moved_before = before["resync_moved_bytes"].as_u64().unwrap_or(0);
        let start = crate::clock::now();
        self.cluster.tandem("ox2", &["disk", "connect", "r0"])?;
        setup::wait_in_sync(&self.cluster, Duration::from_secs(600))?;
        let seconds = (crate::clock::now() - start).as_secs_f64();
        let moved = self.status("ox1")?["resync_moved_bytes"]
            .as_u64()
            .unwrap_or(0)
            - moved_before;
        Ok(Run {
            dirtied,
            moved,
            seconds,
        })
    }

    fn down(self) -> anyhow::Result<()> {
        let _ = self.cluster.tandem("ox1", &["disk", "secondary", "r0"]);
        let problems = self.cluster.down()?;
        if !problems.is_empty() {
            bail!("the lab's teardown: {}", problems.join("; "));
        }
        Ok(())
    }
}

fn wait(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = crate::clock::now() + timeout;
    loop {
        if f().unwrap_or(false) {
            return Ok(());
        }
        if crate::clock::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
