//! `tandem bench disk-idle`: what a connected, idle disk pair costs the machine.
//!
//! Two disk drivers run in this process on loopback (backing files of 32 MiB, internal
//! metadata), connect, finish their initial sync, and are then left alone for the
//! measured time: the CPU time this process spends (user + system, all threads, from
//! `/proc/self/stat`) and the context switches of its threads (`/proc/self/task/*/status`)
//! say how often an idle disk wakes. Nothing else runs in the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_disk::core::{Config, ConnState, DiskState};
use tandem_disk::driver::{DriverConfig, DriverHandle, start};
use tandem_disk::meta::{MetaLocation, MetaStore};

use super::fio::process_cpu_time;

/// `tandem bench disk-idle` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds to measure the idle pair.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Directory for the two backing files.
    #[arg(long, default_value = "/var/tmp/tandem-disk-idle")]
    pub work_dir: PathBuf,
}

/// Runs the measurement and prints it.
pub fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("create {}", args.work_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let result = runtime.block_on(measure(&args));
    let _ = std::fs::remove_dir_all(&args.work_dir);
    let (cpu, switches) = result?;
    let s = args.seconds as f64;
    println!(
        "idle connected disk pair, {} s: CPU {:.1} ms/s ({:.2} % of one core), {:.1} context switches/s",
        args.seconds,
        cpu.as_secs_f64() * 1000.0 / s,
        cpu.as_secs_f64() * 100.0 / s,
        switches as f64 / s
    );
    Ok(())
}

async fn measure(args: &Args) -> anyhow::Result<(Duration, u64)> {
    let port =
        || -> anyhow::Result<SocketAddr> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?) };
    let (pa, pb) = (port()?, port()?);
    let a = node(&args.work_dir, "a", 1, pa, pb).await?;
    let b = node(&args.work_dir, "b", 2, pb, pa).await?;
    wait(&a, |c, _| c == ConnState::Connected).await?;
    a.promote(true).await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    for n in [&a, &b] {
        wait(n, |c, d| {
            c == ConnState::Connected && d == DiskState::UpToDate
        })
        .await?;
    }
    let pid = std::process::id();
    let (cpu0, sw0) = (process_cpu_time(pid), context_switches());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (cpu1, sw1) = (process_cpu_time(pid), context_switches());
    let connected = a.status().await?.connection == ConnState::Connected;
    a.shutdown().await?;
    b.shutdown().await?;
    if !connected {
        bail!("the pair lost its link while idle");
    }
    let cpu = cpu1
        .zip(cpu0)
        .map(|(b, a)| b - a)
        .context("read /proc/self/stat")?;
    Ok((cpu, switches_between(&sw0, &sw1)))
}

async fn node(
    dir: &Path,
    name: &str,
    node_id: u64,
    listen: SocketAddr,
    peer: SocketAddr,
) -> anyhow::Result<DriverHandle> {
    let backing = dir.join(format!("{name}.img"));
    std::fs::File::create(&backing)?.set_len(32 << 20)?;
    MetaStore::create(&backing, &MetaLocation::Internal, 61, node_id, false)?;
    let cfg = DriverConfig {
        backing,
        meta: MetaLocation::Internal,
        listen,
        peer,
        secret: b"idle benchmark secret".to_vec(),
        connect_interval: Duration::from_secs(1),
        core: Config::default(),
    };
    Ok(start(cfg).await?)
}

async fn wait(
    node: &DriverHandle,
    ok: impl Fn(ConnState, DiskState) -> bool,
) -> anyhow::Result<()> {
    for _ in 0..600 {
        let s = node.status().await?;
        if ok(s.connection, s.disk_state) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the pair did not connect and sync in 30 s")
}

/// Context switches (voluntary and involuntary) of each thread of this process so far,
/// by thread id: a thread that exits between two samples (the blocking pool lets idle
/// threads go) must not make the difference negative.
fn context_switches() -> HashMap<String, u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return HashMap::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let n = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            Some((t.file_name().to_string_lossy().into_owned(), n))
        })
        .collect()
}

/// The switches between two samples, thread by thread (new threads count from zero).
fn switches_between(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> u64 {
    after
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}
