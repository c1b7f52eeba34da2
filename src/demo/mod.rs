//! `tandem demo`: the whitepaper's cluster failing over with its data, on this machine.
//!
//! ```text
//!  client ──lan 192.168.1.0/24── VIP 192.168.1.160 ── ox1 (home) / ox2
//!  ox1 ══hb 192.168.180.0/24══ ox2   heartbeats (hb ucast + lan bcast) and r0's link
//!  group ox:  r0 (disk, protocol C) → ext4 on /dev/tandem/r0 → service → VIP
//! ```
//!
//! The lab is built, the disk bootstrapped as the whitepaper's §4.3 does it (setup.rs),
//! the cluster started with the group; the client writes numbered records through the
//! VIP; ox1, the active node, loses power mid-load; the timeline is printed as it
//! happens (timeline.rs); then every record the client saw acknowledged is looked up on
//! the survivor: `acknowledged N, lost 0`, or a non-zero exit. The lab is taken down at
//! the end, on any error and on Ctrl-C (interrupt.rs), and the demo checks that nothing
//! of it is left.

pub(crate) mod client;
pub(crate) mod interrupt;
mod postgres;
pub mod records;
pub(crate) mod service;
pub(crate) mod setup;
mod timeline;
pub mod whitepaper;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::labcluster::{LabCluster, Timing};
use service::Service;
use setup::{GROUP, VIP, say};

/// `tandem demo` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The data service: tandem's records service, or Debian's PostgreSQL.
    #[arg(long, value_enum, default_value = "records", conflicts_with = "stack")]
    pub service: service::Kind,
    /// Heartbeat interval in milliseconds (the whitepaper stack keeps its own lab
    /// timing: 200 ms).
    #[arg(long, default_value_t = 200, conflicts_with = "stack")]
    pub keepalive_ms: u64,
    /// Deadtime in milliseconds (the whitepaper stack: 2 s).
    #[arg(long, default_value_t = 1000, conflicts_with = "stack")]
    pub deadtime_ms: u64,
    /// Without the witness (a third machine that gives the survivor the vote to fence
    /// at once): the survivor then waits the fencing delay (5 s), as Heartbeat's and
    /// Pacemaker's two-node clusters do. (The whitepaper stack runs the seed's cluster,
    /// which has none, unless --witness.)
    #[arg(long, conflicts_with = "stack")]
    pub no_witness: bool,
    /// With --stack whitepaper: add a witness to the seed's cluster (a third host
    /// running `tandem witness`, `[witness]` in the imported configuration), so the
    /// survivor fences at once instead of after the 5 s fencing delay.
    #[arg(long, requires = "stack")]
    pub witness: bool,
    /// Run a whole stack instead of one service: `whitepaper` is the Open-Xchange
    /// whitepaper's cluster (OpenLDAP, saslauthd, PostgreSQL, Cyrus, Postfix and an
    /// Open-Xchange stand-in on four replicated disks; docs/whitepaper-stack.md).
    #[arg(long, value_enum)]
    pub stack: Option<Stack>,
    /// With --stack: once ox1 is back and in sync, move the group back to it and check
    /// the data again.
    #[arg(long, requires = "stack")]
    pub failback: bool,
}

/// The stacks `tandem demo --stack` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stack {
    /// The whitepaper's §4.3 cluster.
    Whitepaper,
}

/// How long the failover may take before the demo calls it failed: deadtime, the
/// fencing delay (5 s, without a witness), the fence, the promotion, a journal replay, a service's
/// recovery — seconds each at most, on a loaded machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the demo; an error if any step failed or any acknowledged record is missing.
pub fn run(args: Args) -> anyhow::Result<()> {
    interrupt::install()?;
    if let Some(Stack::Whitepaper) = args.stack {
        return whitepaper::run(args.failback, args.witness);
    }
    if args.deadtime_ms <= 2 * args.keepalive_ms {
        bail!(
            "--deadtime-ms ({}) must be more than twice --keepalive-ms ({})",
            args.deadtime_ms,
            args.keepalive_ms
        );
    }
    let service = Service::new(args.service)?;
    let timing = Timing {
        keepalive: Duration::from_millis(args.keepalive_ms),
        deadtime: Duration::from_millis(args.deadtime_ms),
    };
    let cluster = if args.no_witness {
        say("building the lab: ox1, ox2 and a client; networks lan (public) and hb (dedicated)");
        LabCluster::up_with_lab(timing, "required", setup::disk_tables)?
    } else {
        say(
            "building the lab: ox1, ox2, a client and the witness quorum; networks lan (public) and hb (dedicated)",
        );
        LabCluster::up_with_witness(timing, "required", setup::disk_tables)?
    };
    let name = cluster.lab.name().to_string();
    say(&format!(
        "lab {name}: namespaces tl-{name}-*, files under /var/lib/tandem-lab/{name} and /run/tandem-lab/{name}"
    ));
    let result = failover(cluster, &service);
    // The lab is down by now, whatever happened: check that it left nothing.
    let left = leftovers(&name);
    match (result, left.is_empty()) {
        (Ok(()), true) => {
            say(&format!(
                "lab {name} taken down: no namespace, mount, loop device or file left"
            ));
            Ok(())
        }
        (Ok(()), false) => bail!("the lab's teardown left: {}", left.join("; ")),
        (Err(e), true) => Err(e),
        (Err(e), false) => Err(e.context(format!("and the teardown left: {}", left.join("; ")))),
    }
}

/// Everything from the bootstrap to the data check; the lab goes down when this
/// returns, by `LabCluster::down` or, on an error, by its drop.
fn failover(mut cluster: LabCluster, service: &Service) -> anyhow::Result<()> {
    let switch = cluster
        .lab
        .power_switch()
        .context("start the lab's power switch")?;
    setup::create_backing(&cluster, service.disk_mib())?;
    setup::bootstrap(&mut cluster, service)?;
    let mount = setup::mount_point(&cluster);

    let word = service.record_word();
    let mut client = client::Client::start(&cluster, service)?;
    interrupt::wait(Duration::from_secs(30), "the client's first writes", || {
        Ok(client.acked_count() >= 20)
    })?;
    say(&format!(
        "group {GROUP} runs on ox1; the client writes numbered {word}s through {VIP}"
    ));
    interrupt::sleep(Duration::from_secs(1))?;
    say(&format!(
        "{} {word}s acknowledged so far; now ox1, the active node, loses power",
        client.acked_count()
    ));

    let off_ms = crate::clock::wall_ms();
    cluster.lab.power_off("ox1").context("power off ox1")?;
    // Every process of ox1 is dead and reaped from here on: an answer the client reads
    // later is the survivor's (one read before may still be ox1's, in flight).
    let dead_ms = crate::clock::wall_ms();
    cluster.forget_daemon("ox1");
    let service_resource = match service {
        Service::Records => "records",
        Service::Postgres(_) => "postgresql",
    };
    let mut timeline = timeline::Timeline::start(
        off_ms,
        dead_ms,
        "ox1",
        "ox2",
        service_resource,
        service.label(),
        word,
    );
    let waited = interrupt::wait(FAILOVER_TIMEOUT, "the failover", || {
        let status = cluster.status("ox2");
        timeline.update(status.as_ref(), &client.outcomes());
        // A failed group ends the wait at once (owner() says why).
        setup::owner(&cluster, "ox2")?;
        Ok(timeline.complete())
    });
    if let Err(e) = waited {
        if interrupt::interrupted() {
            return Err(e);
        }
        let missing: Vec<String> = timeline
            .missing()
            .iter()
            .map(|s| format!("{s:?}"))
            .collect();
        return Err(e.context(format!("steps not seen: {}", missing.join(", "))));
    }
    // A little more load on the survivor, then the client stops.
    interrupt::sleep(Duration::from_secs(1))?;
    client.stop()?;
    let outcomes = client.outcomes();
    let summary = client::summarize(&outcomes, dead_ms);
    println!();
    if let (Some(a), Some(b)) = (summary.last_before, summary.first_after) {
        println!(
            "outage seen by the client: {} ms, from its last acknowledged {word} before the power-off to its first after ({} failed attempts in between)",
            b - a,
            summary.failed
        );
    }
    let wrong_order = timeline.out_of_order();
    if !wrong_order.is_empty() {
        bail!("steps out of order: {wrong_order:?}");
    }

    let (stored, unreadable) = service.stored(&cluster, "ox2", &mount)?;
    let lost: Vec<u64> = summary.acked.difference(&stored).copied().collect();
    println!(
        "data check on ox2: {} {word}s stored; every acknowledged {word} looked up",
        stored.len()
    );
    println!("acknowledged {}, lost {}", summary.acked.len(), lost.len());
    if unreadable > 0 {
        bail!("{unreadable} stored lines are not records");
    }
    if summary.acked.is_empty() {
        bail!("the client had no {word} acknowledged");
    }
    if !lost.is_empty() {
        bail!(
            "acknowledged {word}s missing on the survivor: {}",
            preview(&lost)
        );
    }
    drop(switch);
    let report = cluster.down()?;
    if !report.is_empty() {
        bail!("the lab's teardown reported: {}", report.join("; "));
    }
    Ok(())
}

fn preview(numbers: &[u64]) -> String {
    let shown: Vec<String> = numbers.iter().take(20).map(u64::to_string).collect();
    if numbers.len() > shown.len() {
        format!("{} … ({} in all)", shown.join(" "), numbers.len())
    } else {
        shown.join(" ")
    }
}

/// What a lab named `name` could leave on this machine: its network namespaces, its
/// state and data directories, mounts below them, loop devices backed by its files
/// (tandem local devices name their FUSE file after a backing path: `!` for `/`), and
/// its cgroup.
pub(crate) fn leftovers(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    let prefix = format!("tl-{name}-");
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) {
            left.push(format!("network namespace {n}"));
        }
    }
    let dirs = [
        format!("/var/lib/tandem-lab/{name}"),
        format!("/run/tandem-lab/{name}"),
    ];
    for d in &dirs {
        if Path::new(d).exists() {
            left.push(format!("directory {d}"));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mountinfo.lines() {
        if dirs
            .iter()
            .any(|d| l.contains(&format!("{d}/")) || l.contains(&format!("{d} ")))
        {
            left.push(format!("mount {l}"));
        }
    }
    let bang = format!("!tandem-lab!{name}!");
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if backing.contains(&bang) || dirs.iter().any(|d| backing.starts_with(&format!("{d}/"))) {
            left.push(format!(
                "loop device /dev/{} ({})",
                e.file_name().to_string_lossy(),
                backing.trim()
            ));
        }
    }
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let cg = format!("{root}/tandem-lab/tl-{name}");
        if Path::new(&cg).exists() {
            left.push(format!("cgroup {cg}"));
        }
    }
    left
}
