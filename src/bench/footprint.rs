//! `tandem bench footprint`: what an idle daemon costs — resident memory and CPU over
//! a window — with two links at keepalive 100 ms, and with a connected replicated disk
//! (primary on ox1, in sync, no I/O). keepalived idling in the same lab (VRRP at 0.1 s
//! over the same network) is the baseline measured in the same run.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_lab::{Lab, Topology};

use crate::demo::setup;
use crate::labcluster::{LabCluster, Timing};
use crate::labconfig;

/// `tandem bench footprint` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each idle daemon is watched.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

/// Targets (issue: idle daemon ≤ 20 MiB RSS and ≤ 0.5 % of one core).
const RSS_TARGET_KIB: u64 = 20 * 1024;
const CPU_TARGET_PERCENT: f64 = 0.5;

/// RSS now (KiB) and CPU time so far (clock ticks) of a process, from /proc.
fn sample(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    Ok((rss, ticks))
}

/// RSS now (KiB) and CPU time so far (clock ticks) of several processes together.
fn sample_all(pids: &[u32]) -> anyhow::Result<(u64, u64)> {
    pids.iter().try_fold((0, 0), |(rss, ticks), pid| {
        let (r, t) = sample(*pid)?;
        Ok((rss + r, ticks + t))
    })
}

/// (max RSS KiB, CPU % of one core) of `pids` together over `window`.
fn watch(pids: &[u32], window: Duration) -> anyhow::Result<(u64, f64)> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (mut rss, t0) = sample_all(pids)?;
    let start = crate::clock::now();
    while crate::clock::now() < start + window {
        std::thread::sleep(Duration::from_secs(1));
        rss = rss.max(sample_all(pids)?.0);
    }
    let (_, t1) = sample_all(pids)?;
    let secs = (crate::clock::now() - start).as_secs_f64();
    Ok((rss, (t1 - t0) as f64 / hz / secs * 100.0))
}

/// Runs the benchmark and prints its table.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let window = Duration::from_secs(args.seconds);
    let timing = Timing {
        keepalive: Duration::from_millis(100),
        deadtime: Duration::from_millis(500),
    };
    let idle = idle_daemon(timing, window)?;
    let disk = daemon_with_disk(timing, window)?;
    let baseline = idle_keepalived(window)?;
    println!(
        "Idle footprint over {} s (2026 lab; keepalive 100 ms on two links)",
        args.seconds
    );
    println!(
        "| daemon                                                | max RSS MiB | CPU % of a core | RSS ratio | CPU ratio |"
    );
    println!(
        "|-------------------------------------------------------|-------------|-----------------|-----------|-----------|"
    );
    let row = |name: &str, (rss, cpu): (u64, f64)| {
        println!(
            "| {name:<53} | {:>11.1} | {cpu:>15.2} | {:>9.2} | {:>9.2} |",
            rss as f64 / 1024.0,
            rss as f64 / baseline.0.max(1) as f64,
            cpu / baseline.1.max(0.01),
        );
    };
    row("tandem daemon, idle, one group", idle);
    row(
        "tandem daemon + disk service, connected disk (primary)",
        disk,
    );
    row("keepalived (VRRP 0.1 s), baseline", baseline);
    println!(
        "targets for the idle daemon: ≤ {} MiB RSS ({}), ≤ {CPU_TARGET_PERCENT} % CPU ({})",
        RSS_TARGET_KIB / 1024,
        if idle.0 <= RSS_TARGET_KIB {
            "met"
        } else {
            "NOT met"
        },
        if idle.1 <= CPU_TARGET_PERCENT {
            "met"
        } else {
            "NOT met"
        },
    );
    Ok(())
}

fn idle_daemon(timing: Timing, window: Duration) -> anyhow::Result<(u64, f64)> {
    let mut cluster = LabCluster::up_with(timing, "none", |c| {
        let mut vip = labconfig::ipaddr("vip", Ipv4Addr::new(192, 168, 1, 160), 24, "eth0");
        vip.monitor_interval = Some(Duration::from_secs(10));
        c.group("g", "ox1", vec![vip]);
    })?;
    cluster.start_daemon("ox1", &[])?;
    cluster.start_daemon("ox2", &[])?;
    cluster.wait_peer_state("ox1", "ox2", "up", Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_secs(3));
    let pid = cluster.daemon_pid("ox1").context("ox1's daemon")?;
    let figures = watch(&[pid], window)?;
    cluster.down()?;
    Ok(figures)
}

fn daemon_with_disk(timing: Timing, window: Duration) -> anyhow::Result<(u64, f64)> {
    let mut cluster = LabCluster::up_with_lab(timing, "required", setup::disk_tables)?;
    setup::create_backing(&cluster, 64)?;
    for node in ["ox1", "ox2"] {
        cluster.tandem(node, &["disk", "create-md", "r0", "--node", node])?;
    }
    cluster.start_daemon("ox1", &[])?;
    cluster.start_daemon("ox2", &[])?;
    for node in ["ox1", "ox2"] {
        let deadline = crate::clock::now() + Duration::from_secs(30);
        while setup::disk_status(&cluster, node).is_none() {
            if crate::clock::now() > deadline {
                bail!("{node}'s daemon does not answer");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.tandem(node, &["disk", "up", "r0"])?;
    }
    std::thread::sleep(Duration::from_secs(2));
    cluster.tandem("ox1", &["disk", "primary", "--force", "r0"])?;
    setup::wait_in_sync(&cluster, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = cluster.daemon_pid("ox1").context("ox1's daemon")?;
    let pids = super::daemon_and_children(pid);
    if pids.len() != 2 {
        bail!("ox1's daemon should have one child, its disk service: {pids:?}");
    }
    let figures = watch(&pids, window)?;
    let _ = cluster.tandem("ox1", &["disk", "secondary", "r0"]);
    cluster.down()?;
    Ok(figures)
}

fn idle_keepalived(window: Duration) -> anyhow::Result<(u64, f64)> {
    let lab = Lab::up_auto(Topology::whitepaper())?;
    let dir = lab.data_dir();
    let mut daemons = Vec::new();
    for (host, own, peer, priority) in [
        ("ox1", "192.168.180.20", "192.168.180.10", 150u8),
        ("ox2", "192.168.180.10", "192.168.180.20", 100),
    ] {
        let conf = dir.join(format!("keepalived-{host}.conf"));
        std::fs::write(
            &conf,
            crate::bench::failover::keepalived_conf(own, peer, priority, 100),
        )?;
        daemons.push(lab.spawn(
            host,
            crate::bench::failover::keepalived_command(&conf, host),
        )?);
    }
    std::thread::sleep(Duration::from_secs(3));
    // keepalived forks its VRRP child: the busy one is the child of the first.
    let parent = daemons[0].pid();
    let pid = super::daemon_and_children(parent)
        .get(1)
        .copied()
        .unwrap_or(parent);
    let (rss_child, cpu_child) = watch(&[pid], window)?;
    let (rss_parent, _) = sample(parent)?;
    drop(daemons);
    lab.down()?;
    Ok((rss_child + rss_parent, cpu_child))
}
