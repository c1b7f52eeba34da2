//! `tandem demo --stack whitepaper`: the Open-Xchange whitepaper's own cluster (§4.3)
//! in the lab — its haresources, ha.cf and drbd.conf imported as written, four
//! replicated disks, OpenLDAP, saslauthd, PostgreSQL, Cyrus IMAP and Postfix started
//! through Debian's init scripts, and a stand-in for Open-Xchange — with clients
//! writing through the virtual IP while ox1 loses power.
//!
//! ```text
//!  group ox (home ox1, auto_failback off), in haresources' order:
//!  IPaddr 192.168.1.160 → r1 → /var/lib/ldap → ldap (slapd) → saslauthd
//!    → r0 → /var/lib/pgsql → postgresql → r2, r3 → /var/lib/imap, /var/spool/imap
//!    → cyrus (cyrus-imapd) → postfix → openexchange (the stand-in)
//! ```
//!
//! Steps: the packages are checked (a clear list of what is missing); the lab is built
//! with each node's own configuration and data directories (hosts.rs); the seed's files
//! are imported and §4.3's bootstrap run (bootstrap.rs); the cluster starts the group
//! on ox1; five clients write (clients.rs, the stand-in in standin.rs); ox1 loses
//! power; the group's timeline is printed and every acknowledged item looked up on ox2
//! (checks.rs); ox1 returns, resyncs the changes of all four disks and stays
//! secondary; with `--failback` the group moves back and the checks run again.

pub mod bootstrap;
pub mod checks;
pub mod clients;
pub mod hosts;
mod mail;
pub mod standin;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::demo::client::Client;
use crate::demo::interrupt;
use crate::demo::setup::{VIP, owner, say, step};
use crate::labcluster::{LabCluster, Timing};

/// The clients, by the names the timeline and the checks use.
const CLIENTS: [&str; 5] = ["ldap", "pg", "smtp", "imap", "ox"];

/// How long a failover or a move may take on a loaded machine: deadtime, the fencing
/// delay, the fence, four promotions and mounts, six services' init scripts.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(180);

/// Debian packages the stack needs, with a file each installs.
const NEEDED: [(&str, &str); 9] = [
    ("slapd", "/usr/sbin/slapd"),
    ("ldap-utils", "/usr/bin/ldapadd"),
    ("sasl2-bin", "/usr/sbin/saslauthd"),
    ("postgresql", "/usr/bin/pg_createcluster"),
    ("cyrus-imapd", "/usr/sbin/cyrmaster"),
    ("cyrus-common", "/usr/lib/cyrus/bin/makedirs"),
    ("postfix", "/usr/sbin/postfix"),
    ("e2fsprogs", "/sbin/mkfs.ext4"),
    (
        "resource-agents",
        "/usr/lib/ocf/resource.d/heartbeat/IPaddr2",
    ),
];

/// A clear error naming every missing package.
fn check_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(_, f)| !std::path::Path::new(f).exists())
        .map(|(p, _)| *p)
        .collect();
    if !missing.is_empty() {
        bail!(
            "the whitepaper stack needs Debian packages that are not installed: {} (scripts/install-deps installs them without starting any service on this machine)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Runs the demo; an error if any step failed or any acknowledged item is missing.
/// With `witness`, the lab has a third host running `tandem witness` and the imported
/// configuration a `[witness]`: the survivor fences at once instead of after the
/// fencing delay.
pub fn run(failback: bool, witness: bool) -> anyhow::Result<()> {
    check_packages()?;
    let timing = Timing {
        keepalive: Duration::from_millis(200),
        deadtime: Duration::from_secs(2),
    };
    let machines = if witness {
        "ox1, ox2, a client and the witness quorum"
    } else {
        "ox1, ox2 and a client"
    };
    say(&format!(
        "building the lab: {machines}; networks lan (public) and hb (dedicated); each node with its own /etc/ldap, /etc/postfix, /etc/cyrus, /var/lib/*, /var/spool/* and /run"
    ));
    let mut dirs = vec!["/run"];
    dirs.extend_from_slice(hosts::PRIVATE_DIRS);
    let cluster =
        LabCluster::up_with_private_dirs(timing, "required", &dirs, witness, |_, _| Ok(()))?;
    let name = cluster.lab.name().to_string();
    say(&format!(
        "lab {name}: namespaces tl-{name}-*, files under /var/lib/tandem-lab/{name} and /run/tandem-lab/{name}"
    ));
    let result = stack(cluster, failback);
    let left = crate::demo::leftovers(&name);
    match (result, left.is_empty()) {
        (Ok(()), true) => {
            say(&format!("lab {name} taken down: nothing left"));
            Ok(())
        }
        (Ok(()), false) => bail!("the lab's teardown left: {}", left.join("; ")),
        (Err(e), true) => Err(e),
        (Err(e), false) => Err(e.context(format!("and the teardown left: {}", left.join("; ")))),
    }
}

fn stack(mut cluster: LabCluster, failback: bool) -> anyhow::Result<()> {
    let switch = cluster
        .lab
        .power_switch()
        .context("start the lab's power switch")?;
    let result = steps(&mut cluster, failback);
    if result.is_err() {
        // What the daemons said last, before the lab (and their logs) go.
        for node in ["ox1", "ox2"] {
            let log = cluster.lab.data_dir().join(format!("{node}.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- the last lines of {node}'s daemon log:");
            for l in &lines[lines.len().saturating_sub(25)..] {
                eprintln!("{l}");
            }
        }
    }
    if let Err(e) = &result
        && std::env::var_os("TANDEM_DEMO_KEEP_LAB").is_some()
    {
        // For debugging the stack: the lab stays up while this process lives (its
        // hosts' disks and power switch are served from here), until Ctrl-C.
        eprintln!(
            "demo failed: {e:#}\nTANDEM_DEMO_KEEP_LAB: lab {} stays up for inspection (TANDEM_LAB={} tandem lab exec HOST -- …); Ctrl-C takes it down",
            cluster.lab.name(),
            cluster.lab.name()
        );
        while !interrupt::interrupted() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    result?;
    drop(switch);
    let report = cluster.down()?;
    if !report.is_empty() {
        bail!("the lab's teardown reported: {}", report.join("; "));
    }
    Ok(())
}

fn steps(cluster: &mut LabCluster, failback: bool) -> anyhow::Result<()> {
    for node in ["ox1", "ox2"] {
        hosts::configure(cluster, node)?;
    }
    say(
        "each node's own service configuration written (/etc/default, cn=config, imapd.conf, cyrus.conf, main.cf, /etc/ha.d/resource.d/{ldap,cyrus,openexchange})",
    );
    bootstrap::create_backing(cluster)?;
    bootstrap::import(cluster)?;
    bootstrap::disks_and_data(cluster)?;
    let resources = group_resources(cluster)?;
    say(&format!(
        "the cluster with group ox: {}",
        resources.join(" → ")
    ));
    if cluster.has_witness() {
        say("quorum: tandem witness");
        cluster.start_witness()?;
    }
    let t0 = crate::clock::wall_ms();
    cluster.start_daemon("ox1", &[])?;
    cluster.start_daemon("ox2", &[])?;
    interrupt::wait(FAILOVER_TIMEOUT, "the group on ox1", || {
        Ok(owner(cluster, "ox1")?.as_deref() == Some("ox1"))
    })?;
    say(&format!(
        "group ox started on ox1 in {} ms",
        crate::clock::wall_ms() - t0
    ));
    bootstrap::wait_all_in_sync(cluster, Duration::from_secs(60))?;

    let mut clients = start_clients(cluster)?;
    interrupt::wait(
        Duration::from_secs(90),
        "every client's first items",
        || Ok(clients.values().all(|c| c.acked_count() >= 5)),
    )
    .map_err(|e| {
        let reasons: Vec<String> = clients
            .iter()
            .filter(|(_, c)| c.acked_count() < 5)
            .map(|(n, c)| {
                let why = c.last_failure().unwrap_or_else(|| "no answer yet".into());
                format!("{n}: {} acknowledged, last failure: {why}", c.acked_count())
            })
            .collect();
        e.context(reasons.join("; "))
    })?;
    interrupt::sleep(Duration::from_secs(2))?;
    say(&format!(
        "clients through {VIP}: {}; now ox1 loses power",
        counts(&clients)
    ));
    // Each disk's generations on both nodes before the power-off: what a resync
    // decision is explained from, should one surprise.
    let mut gens_before = Vec::new();
    for node in ["ox1", "ox2"] {
        for (disk, _, _) in bootstrap::DISKS {
            let g = bootstrap::disk_status(cluster, node, disk)
                .map(|s| s["generations"].to_string())
                .unwrap_or_default();
            gens_before.push(format!("{node} {disk} {g}"));
        }
    }
    let off_ms = crate::clock::wall_ms();
    cluster.lab.power_off("ox1").context("power off ox1")?;
    cluster.forget_daemon("ox1");
    println!("\ntimeline (ms after ox1's power-off; times from ox2's status and the clients)");
    println!("        0 ms  ox1 loses power (its unflushed disk writes are lost)");
    let disks: Vec<&str> = bootstrap::DISKS.iter().map(|(d, _, _)| *d).collect();
    let mut timeline =
        checks::Timeline::start(off_ms, "ox1", "ox2", &resources, &disks, &CLIENTS, true);
    follow(cluster, &mut timeline, &clients, "ox2")?;
    print_recovery(&timeline, &resources);
    check_data(cluster, &clients, "ox2")?;

    say("ox1 returns: powered on, its daemon started");
    let back_ms = crate::clock::wall_ms();
    cluster.lab.power_on("ox1").context("power on ox1")?;
    cluster.start_daemon("ox1", &[])?;
    bootstrap::wait_all_in_sync(cluster, Duration::from_secs(180))?;
    say(&format!(
        "all four disks in sync again {} ms after ox1's power-on:",
        crate::clock::wall_ms() - back_ms
    ));
    for (disk, mib, _) in bootstrap::DISKS {
        let s = bootstrap::disk_status(cluster, "ox1", disk).unwrap_or_default();
        let moved = s["resync_moved_bytes"].as_u64().unwrap_or(0);
        let decision = decision_name(&s["last_decision"]);
        step(&format!(
            "{disk}: {} KiB of {} KiB resynced to ox1 ({decision}: what ox2 changed alone and ox1's activity-log extents), ox1 {}",
            moved >> 10,
            mib << 10,
            s["role"].as_str().unwrap_or("?")
        ));
        let size = s["size_bytes"].as_u64().unwrap_or(mib << 20);
        if moved >= size {
            bail!("{disk}: all {size} bytes were resynced, not only what changed");
        }
        if !decision.starts_with("bitmap_sync") {
            let now = bootstrap::disk_status(cluster, "ox2", disk).unwrap_or_default();
            bail!(
                "{disk}: {decision} when ox1 returned, not a resync of only what changed (generations now: ox1 {}, ox2 {}; before the power-off: {})",
                s["generations"],
                now["generations"],
                gens_before.join("; ")
            );
        }
        if s["role"] != "secondary" {
            bail!(
                "{disk} on ox1 is {} after its return: expected secondary",
                s["role"]
            );
        }
    }
    interrupt::sleep(Duration::from_secs(2))?;
    match owner(cluster, "ox2")?.as_deref() {
        Some("ox2") => say("auto_failback off: the group stays on ox2, ox1 is secondary"),
        other => bail!("the group moved when ox1 returned (owner {other:?}; auto_failback off)"),
    }

    if failback {
        say("--failback: tandem takeover on ox1 (Heartbeat's hb_takeover)");
        let move_ms = crate::clock::wall_ms();
        cluster.tandem("ox1", &["takeover"])?;
        let mut timeline =
            checks::Timeline::start(move_ms, "ox2", "ox1", &resources, &disks, &CLIENTS, false);
        println!("\ntimeline of the move (ms after the takeover command; times from ox1's status)");
        follow(cluster, &mut timeline, &clients, "ox1")?;
        check_data(cluster, &clients, "ox1")?;
    }
    for c in clients.values_mut() {
        c.stop()?;
    }
    Ok(())
}

/// A resync decision as `tandem disk status --json` reports it, in one word:
/// `no_sync`, `bitmap_sync(target)`, `full_sync(source)`, ….
fn decision_name(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(d) => format!("{k}({d})"),
                other => format!("{k}({other})"),
            })
            .collect(),
        _ => "none".into(),
    }
}

/// The group's resources in order, from the configuration.
fn group_resources(cluster: &LabCluster) -> anyhow::Result<Vec<String>> {
    let status = cluster.tandem("ox1", &["config", "show"])?;
    Ok(status
        .split("[[group.resource]]")
        .skip(1)
        .filter_map(|block| {
            block
                .lines()
                .find_map(|l| l.strip_prefix("name = "))
                .map(|n| n.trim_matches('"').to_string())
        })
        .collect())
}

fn start_clients(cluster: &LabCluster) -> anyhow::Result<BTreeMap<&'static str, Client>> {
    let tandem = cluster.tandem_binary();
    let mut clients = BTreeMap::new();
    for name in CLIENTS {
        let mut cmd = std::process::Command::new(tandem);
        cmd.arg("demo-records");
        if name == "pg" {
            let psql = format!("/usr/lib/postgresql/{}/bin/psql", bootstrap::pg_version()?);
            cmd.args([
                "pg-client",
                "--host",
                VIP,
                "--psql",
                &psql,
                "--interval-ms",
                "50",
            ]);
        } else {
            cmd.args([
                "stack-client",
                "--kind",
                name,
                "--vip",
                VIP,
                "--interval-ms",
                "50",
            ]);
        }
        clients.insert(
            name,
            Client::spawn(cluster, cmd).with_context(|| format!("start the {name} client"))?,
        );
    }
    Ok(clients)
}

fn counts(clients: &BTreeMap<&str, Client>) -> String {
    let parts: Vec<String> = clients
        .iter()
        .map(|(n, c)| format!("{n} {}", c.acked_count()))
        .collect();
    format!("acknowledged so far {}", parts.join(", "))
}

/// Follows `node`'s status until the timeline is complete.
fn follow(
    cluster: &LabCluster,
    timeline: &mut checks::Timeline,
    clients: &BTreeMap<&str, Client>,
    node: &str,
) -> anyhow::Result<()> {
    let waited = interrupt::wait(FAILOVER_TIMEOUT, "the group's move", || {
        let outcomes: Vec<(&str, Vec<crate::demo::client::Outcome>)> =
            clients.iter().map(|(n, c)| (*n, c.outcomes())).collect();
        timeline.update(cluster.status(node).as_ref(), &outcomes);
        owner(cluster, node)?;
        Ok(timeline.complete())
    });
    waited.map_err(|e| {
        if interrupt::interrupted() {
            return e;
        }
        let reasons: Vec<String> = clients
            .iter()
            .filter_map(|(n, c)| Some(format!("{n}: {}", c.last_failure()?)))
            .collect();
        diagnose(cluster, node);
        e.context(format!(
            "steps not seen: {}; the clients' last failures: {}",
            timeline.missing().join(", "),
            reasons.join("; ")
        ))
    })
}

/// When a step is missing: what the back-ends answer on `node` itself and through the
/// address, and what their processes and logs say, on stderr.
fn diagnose(cluster: &LabCluster, node: &str) {
    let probes: [(&str, &str); 6] = [
        (
            node,
            "testsaslauthd -u demo -p demo-secret -f /run/saslauthd/mux",
        ),
        (node, "ldapwhoami -x -H ldap://127.0.0.1 -o nettimeout=2"),
        (
            node,
            "ps -eo pid,stat,etime,args | grep -E 'cyr|imapd|lmtpd|sasl|slapd|master' | grep -v grep",
        ),
        (
            node,
            "ss -ltnp; ls -la /run/cyrus /run/cyrus-lmtp /run/saslauthd /var/lib/imap",
        ),
        (node, "tail -n 20 /var/log/postfix.log"),
        ("client", "ip neigh; ip addr"),
    ];
    eprintln!("--- diagnosis on {node}:");
    for (host, cmd) in probes {
        let out = cluster.lab.run(host, &["sh", "-c", cmd]);
        eprintln!(
            "[{host}] $ {cmd}\n{}",
            out.unwrap_or_else(|e| format!("{e:#}"))
        );
    }
    let tandem = cluster.tandem_binary().display().to_string();
    for kind in ["imap", "ox"] {
        let cmd = format!(
            "timeout 5 {tandem} demo-records stack-client --kind {kind} --vip {VIP} --interval-ms 1000 | tail -n 3; true"
        );
        let out = cluster.lab.run("client", &["sh", "-c", &cmd]);
        eprintln!(
            "[client] the {kind} client for 5 s:\n{}",
            out.unwrap_or_else(|e| format!("{e:#}"))
        );
    }
}

/// Per-service recovery: ms from the power-off to each resource's start, and to each
/// client's first success.
fn print_recovery(timeline: &checks::Timeline, resources: &[String]) {
    println!("\nrecovery after the power-off (ms): ");
    for r in resources {
        if let Some(t) = timeline.at(&format!("start {r}")) {
            println!("  {r:<22} {t:>7}");
        }
    }
    for c in CLIENTS {
        if let Some(t) = timeline.at(&format!("client {c}")) {
            println!("  client {c:<15} {t:>7}");
        }
    }
}

/// Every item the clients were told was stored (a snapshot taken before reading) is
/// looked up on the node running the group.
fn check_data(
    cluster: &LabCluster,
    clients: &BTreeMap<&str, Client>,
    node: &str,
) -> anyhow::Result<()> {
    let acked: BTreeMap<&str, BTreeSet<u64>> = clients
        .iter()
        .map(|(n, c)| (*n, c.acks().iter().map(|o| o.record).collect()))
        .collect();
    let stored = checks::stored(cluster)?;
    println!("\ndata check on {node} (read through {VIP}):");
    let lost = checks::compare(&acked, &stored, node);
    if acked.values().any(BTreeSet::is_empty) {
        bail!("a client had nothing acknowledged");
    }
    if lost > 0 {
        bail!("{lost} acknowledged items missing on {node}");
    }
    println!("  every acknowledged item is on {node}: lost 0");
    Ok(())
}
