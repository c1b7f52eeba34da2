//! The scenarios, named after Pacemaker's and Heartbeat's CTS. Each starts from a whole
//! cluster (the group on one node, r0 in sync, the client writing), injects its fault,
//! asserts what must happen while it lasts, and undoes it; the common audit
//! (audit.rs) follows. Each returns a line of what it saw, for the report.

use std::time::Duration;

use anyhow::{Context, bail};

use super::cluster::{DataCluster, NODES, RECOVERY_TIMEOUT, TIMING, peer};
use super::heal;
use crate::clock::wall_ms;
use crate::demo::interrupt;

/// A scenario's body.
pub type Body = fn(&mut DataCluster) -> anyhow::Result<String>;

/// One scenario of the catalog.
pub struct Scenario {
    /// Its name (CTS's spelling; matched case-insensitively).
    pub name: &'static str,
    /// What it does; `None`: not implemented yet (asking for it is refused).
    pub body: Option<Body>,
    /// Needs a cluster no operator request was ever made on: requests stand until
    /// replaced, and a standing `takeover` or `standby` moves the group when a node
    /// returns, whatever `auto_failback` says.
    pub fresh: bool,
    /// Changes the cluster's configuration: the cluster is taken down after it.
    pub discard: bool,
    /// One line for `--list`.
    pub what: &'static str,
}

const fn s(name: &'static str, body: Option<Body>, what: &'static str) -> Scenario {
    Scenario {
        name,
        body,
        fresh: false,
        discard: false,
        what,
    }
}

const fn fresh(name: &'static str, body: Body, what: &'static str) -> Scenario {
    Scenario {
        name,
        body: Some(body),
        fresh: true,
        discard: false,
        what,
    }
}

/// A scenario that reconfigures the cluster (both daemons restarted with the new
/// configuration, so no operator request stands): the cluster is discarded after it.
const fn own(name: &'static str, body: Body, what: &'static str) -> Scenario {
    Scenario {
        name,
        body: Some(body),
        fresh: false,
        discard: true,
        what,
    }
}

/// Every scenario of the issue, in the order a full run takes them.
pub const SCENARIOS: &[Scenario] = &[
    s(
        "Standby",
        Some(standby),
        "standby on the owner: the group moves, nobody is fenced",
    ),
    s(
        "Takeover",
        Some(takeover),
        "takeover on the peer: the group moves, nobody is fenced",
    ),
    s(
        "PowerOff",
        Some(power_off),
        "the owner loses power: the peer fences it and takes over",
    ),
    s(
        "DaemonKill",
        Some(agent_kill),
        "SIGKILL of the owner's daemon: the peer fences the owner and takes over",
    ),
    s(
        "ResourceRecover",
        Some(resource_recover),
        "the service process killed: restarted in place",
    ),
    s(
        "Freeze",
        Some(freeze),
        "the owner frozen past deadtime: fenced; after the thaw it serves nothing",
    ),
    s(
        "SplitBrain",
        Some(split_brain),
        "both heartbeat paths cut: the owner fences the peer and keeps serving",
    ),
    s(
        "LinkFail",
        Some(link_fail),
        "one heartbeat path (lan) cut: nothing moves, nobody is fenced",
    ),
    s(
        "ReplicationLinkFail",
        Some(replication_link_fail),
        "the replication network (hb) cut: nothing moves, writes wait net_timeout then go on, resync after",
    ),
    fresh(
        "DiskResync",
        disk_resync,
        "the primary loses power, returns as secondary and resyncs only what changed",
    ),
    fresh(
        "Failback",
        failback_off,
        "auto_failback off: the home node returns from a power cut, the group stays",
    ),
    s(
        "RestartQuickly",
        Some(restart_quickly),
        "the owner's daemon stopped and started within 1 s",
    ),
    s(
        "PowerOffBoth",
        Some(power_off_both),
        "both nodes lose power, then return: the cluster starts by itself with every acknowledged write",
    ),
    s(
        "StopOneByOne",
        Some(stop_one_by_one),
        "daemons stopped cleanly one after the other: nothing serves; started together",
    ),
    s(
        "SimulStop",
        Some(simul_stop),
        "both daemons stopped at once: nothing serves; started together",
    ),
    s(
        "StartOneByOne",
        Some(start_one_by_one),
        "both daemons stopped; the home node started, the peer a moment later",
    ),
    s(
        "SimulStart",
        Some(simul_start),
        "both daemons stopped one by one, then started at the same moment",
    ),
    s(
        "RestartOneByOne",
        Some(restart_one_by_one),
        "each daemon stopped and started in turn",
    ),
    own(
        "FailbackOn",
        heal::failback_on,
        "auto_failback on: the home node returns from a power cut, the group moves back cleanly",
    ),
    s(
        "Reattach",
        Some(heal::reattach),
        "maintenance on, restart both daemons, maintenance off: nothing restarts",
    ),
    own(
        "PartitionHeal",
        heal::partition_heal,
        "every cluster path cut, healed before fencing completes (a failing device, then manual fencing)",
    ),
];

/// The scenarios CI runs (quick, and the ones data safety rests on).
pub const QUICK: &[&str] = &[
    "Standby",
    "PowerOff",
    "DaemonKill",
    "ResourceRecover",
    "Freeze",
    "SplitBrain",
    "LinkFail",
    "ReplicationLinkFail",
    "RestartQuickly",
    "PowerOffBoth",
    "Reattach",
    // Last: its cluster (auto_failback on) is taken down after it, not rebuilt.
    "FailbackOn",
];

/// The canonical spelling of a scenario's name (matched case-insensitively).
pub fn lookup(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

// ---------------------------------------------------------------- helpers

/// Waits until `by` sees the group started on `owner`.
pub(super) fn wait_owner(
    dc: &DataCluster,
    by: &str,
    owner: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    interrupt::wait(
        timeout,
        &format!("{by} to see the group on {owner}"),
        || Ok(dc.owner_seen_by(by)?.as_deref() == Some(owner)),
    )
}

/// Wall ms of the client's first acknowledgement after `t_ms`, waiting for it.
pub(super) fn first_ack_after(
    dc: &DataCluster,
    t_ms: u64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let mut at = None;
    interrupt::wait(timeout, "the client's next acknowledged record", || {
        at = dc
            .client
            .outcomes()
            .iter()
            .find(|o| o.ack && o.at_ms > t_ms)
            .map(|o| o.at_ms);
        Ok(at.is_some())
    })?;
    at.context("no acknowledgement")
}

/// The outcomes (`success`, `failed`, `timeout`, …) of `by`'s fences of `target` since
/// `since_ms`, oldest first.
pub(super) fn fence_outcomes(
    dc: &DataCluster,
    by: &str,
    target: &str,
    since_ms: u64,
) -> Vec<String> {
    dc.cluster
        .status(by)
        .and_then(|s| s["fencing"]["history"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            r["target"] == target && r["at_unix_ms"].as_u64().is_some_and(|t| t >= since_ms)
        })
        .map(|r| r["outcome"]["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Successful fences of `target` in `by`'s history since `since_ms`.
pub(super) fn fences(dc: &DataCluster, by: &str, target: &str, since_ms: u64) -> usize {
    fence_outcomes(dc, by, target, since_ms)
        .iter()
        .filter(|k| *k == "success")
        .count()
}

pub(super) fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// A clean move by an operator command on `on`; nobody may be fenced.
pub(super) fn operator_move(
    dc: &mut DataCluster,
    command: &str,
    on: &str,
    to: &str,
) -> anyhow::Result<String> {
    let t0 = wall_ms();
    dc.cluster.tandem(on, &[command])?;
    wait_owner(dc, peer(to), to, Duration::from_secs(60))?;
    wait_owner(dc, to, to, Duration::from_secs(60))?;
    let moved = wall_ms() - t0;
    first_ack_after(dc, wall_ms(), Duration::from_secs(30))?;
    for n in NODES {
        if fences(dc, n, peer(n), t0) > 0 {
            bail!("a clean {command} fenced {}", peer(n));
        }
    }
    Ok(format!(
        "{command} on {on}: group on {to} in {}, client outage {}; nobody fenced",
        secs(moved),
        secs(dc.outage_since(t0))
    ))
}

/// The owner is gone (power, daemon, freeze): the peer must fence it and take over.
/// What the client saw.
fn peer_fences_and_takes_over(dc: &DataCluster, gone: &str, t0: u64) -> anyhow::Result<String> {
    let survivor = peer(gone);
    wait_owner(dc, survivor, survivor, RECOVERY_TIMEOUT)?;
    let took = wall_ms() - t0;
    if fences(dc, survivor, gone, t0) == 0 {
        bail!("{survivor} took over without fencing {gone}");
    }
    first_ack_after(dc, wall_ms(), Duration::from_secs(30))?;
    Ok(format!(
        "{survivor} fenced {gone}, group on {survivor} after {}, client outage {}",
        secs(took),
        secs(dc.outage_since(t0))
    ))
}

// ---------------------------------------------------------------- scenarios

fn standby(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    operator_move(dc, "standby", &a, peer(&a))
}

fn takeover(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    operator_move(dc, "takeover", peer(&a), peer(&a))
}

fn power_off(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let t0 = wall_ms();
    dc.power_off(&a)?;
    let seen = peer_fences_and_takes_over(dc, &a, t0)?;
    dc.restore()?;
    Ok(format!("{a} off: {seen}"))
}

fn agent_kill(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let t0 = wall_ms();
    dc.kill_daemon(&a)?;
    let seen = peer_fences_and_takes_over(dc, &a, t0)?;
    if dc.cluster.lab.is_powered(&a)? {
        bail!("{a} is still powered after {} fenced it", peer(&a));
    }
    dc.restore()?;
    Ok(format!("{a}'s daemon SIGKILLed: {seen}"))
}

fn resource_recover(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let before = dc.service_pids(&a);
    if before.is_empty() {
        bail!("no service process on {a}");
    }
    let t0 = wall_ms();
    for pid in &before {
        // SAFETY: kill(2) on a PID this scenario just read from the host's cgroup.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let mut after = Vec::new();
    interrupt::wait(RECOVERY_TIMEOUT, "the service restarted", || {
        after = dc.service_pids(&a);
        Ok(!after.is_empty() && after.iter().all(|p| !before.contains(p)))
    })?;
    wait_owner(dc, &a, &a, RECOVERY_TIMEOUT)?;
    let ack = first_ack_after(dc, t0, Duration::from_secs(30))?;
    if dc.active(RECOVERY_TIMEOUT)? != a {
        bail!("the group left {a} after one service failure");
    }
    Ok(format!(
        "service pid {before:?} killed on {a}: restarted in place as {after:?}, first ack after {}",
        secs(ack - t0)
    ))
}

fn freeze(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let t0 = wall_ms();
    dc.freeze(&a)?;
    let seen = peer_fences_and_takes_over(dc, &a, t0)?;
    dc.thaw(&a)?;
    // After the thaw, for a while: the old owner serves nothing.
    let idx = NODES.iter().position(|n| *n == a).unwrap_or(0);
    let until = wall_ms() + 2000;
    while wall_ms() < until {
        if dc.sampler.now()[idx].any() {
            bail!(
                "{a} serves again after the thaw: {:?}",
                dc.sampler.now()[idx]
            );
        }
        interrupt::sleep(Duration::from_millis(100))?;
    }
    dc.restore()?;
    Ok(format!("{a} frozen: {seen}; serves nothing after the thaw"))
}

fn split_brain(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let p = peer(&a);
    let t0 = wall_ms();
    dc.cut("hb", &[])?;
    dc.cut("lan", &[p])?;
    interrupt::wait(RECOVERY_TIMEOUT, &format!("{a} to fence {p}"), || {
        Ok(fences(dc, &a, p, t0) > 0)
    })?;
    let fenced = wall_ms() - t0;
    if !dc.cluster.lab.is_powered(&a)? {
        bail!("{p} fenced the owner {a}: the node serving must win the race");
    }
    wait_owner(dc, &a, &a, RECOVERY_TIMEOUT)?;
    let ack = first_ack_after(dc, wall_ms(), Duration::from_secs(30))?;
    dc.restore()?;
    Ok(format!(
        "hb and lan cut between {a} and {p}: {a} fenced {p} after {}, kept the group (ack at +{})",
        secs(fenced),
        secs(ack - t0)
    ))
}

/// Cuts `net` (all of it, or `hosts` from it), holds it for `hold`, and checks that
/// nothing moved and nobody was fenced; the owner, the acknowledgements during the
/// cut and the client's longest outage.
fn hold_cut(
    dc: &mut DataCluster,
    net: &str,
    hosts: &[&str],
    hold: Duration,
) -> anyhow::Result<(String, usize, u64)> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let t0 = wall_ms();
    let acked_before = dc.client.acked_count();
    dc.cut(net, hosts)?;
    interrupt::sleep(hold)?;
    let acked_during = dc.client.acked_count() - acked_before;
    let outage = dc.outage_since(t0);
    for n in NODES {
        if !dc.cluster.lab.is_powered(n)? || fences(dc, n, peer(n), t0) > 0 {
            bail!("{} was fenced while only {net} was cut", peer(n));
        }
        wait_owner(dc, n, &a, Duration::from_secs(5))
            .with_context(|| format!("the group moved while only {net} was cut"))?;
    }
    dc.restore()?;
    Ok((a, acked_during, outage))
}

fn link_fail(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let p = peer(&a);
    let hold = TIMING.deadtime * 4;
    let (a, acked, outage) = hold_cut(dc, "lan", &[p], hold)?;
    Ok(format!(
        "lan cut for {p} for {}: group stayed on {a}, nobody fenced, {acked} acks meanwhile (longest gap {})",
        secs(hold.as_millis() as u64),
        secs(outage)
    ))
}

/// r0's replication link timeout (`disk.net_timeout`, DRBD's 6 s default): writes
/// wait that long for a peer that stopped answering before it is outdated.
const NET_TIMEOUT: Duration = Duration::from_secs(6);

fn replication_link_fail(dc: &mut DataCluster) -> anyhow::Result<String> {
    let hold = NET_TIMEOUT + Duration::from_secs(4);
    let (a, acked, outage) = hold_cut(dc, "hb", &[], hold)?;
    if acked == 0 {
        bail!("no write was acknowledged while the replication link was down");
    }
    Ok(format!(
        "hb (replication + one heartbeat path) cut for {}: group stayed on {a}, nobody fenced; writes held {} (net_timeout, then the peer outdated over lan), {acked} acks in all",
        secs(hold.as_millis() as u64),
        secs(outage)
    ))
}

/// Bytes the last resync moved, as the node that received them counts them (a new
/// daemon's counter: the node just came back).
fn resynced(dc: &DataCluster, node: &str) -> u64 {
    dc.disk(node)
        .and_then(|d| d["resync_moved_bytes"].as_u64())
        .unwrap_or(0)
}

/// Powers `node` off, lets the client write on, powers it back; waits for the
/// cluster to be whole. The owner, when `node` returned, and the returning node's
/// resync decision and bytes moved.
fn off_write_back(dc: &mut DataCluster, node: &str) -> anyhow::Result<(String, u64, String, u64)> {
    let t0 = wall_ms();
    dc.power_off(node)?;
    wait_owner(dc, peer(node), peer(node), RECOVERY_TIMEOUT)?;
    let acked = dc.client.acked_count();
    interrupt::wait(
        Duration::from_secs(30),
        "writes while a node is away",
        || Ok(dc.client.acked_count() >= acked + 50),
    )?;
    let back = wall_ms() - t0;
    dc.restore()?;
    let owner = dc.wait_healthy(RECOVERY_TIMEOUT)?;
    let decision = dc
        .disk(node)
        .map(|d| d["last_decision"].to_string())
        .unwrap_or_default();
    Ok((owner, back, decision, resynced(dc, node)))
}

fn disk_resync(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let p = peer(&a);
    let size = super::audit::data_bytes(dc, p)?;
    // The secondary away: only the blocks written meanwhile come back to it.
    let (_, _, decision, moved) = off_write_back(dc, p)?;
    if moved == 0 || moved * 2 > size {
        bail!(
            "{p} (secondary) came back and resynced {moved} of {size} bytes ({decision}): expected only what changed"
        );
    }
    let secondary = format!(
        "{p} (secondary) off and back: {} KiB resynced ({decision})",
        moved >> 10
    );
    // The primary away: it returns as secondary; its activity log's extents (writes
    // its lost cache may have held) come back from the peer too.
    let (owner, back, decision, moved) = off_write_back(dc, &a)?;
    if owner != p {
        bail!("the group moved back to {owner} when {a} returned (auto_failback off)");
    }
    if !decision.contains("bitmap") || moved == 0 {
        bail!(
            "{a} (primary) came back with a {decision} resync of {moved} bytes: expected a bitmap resync"
        );
    }
    Ok(format!(
        "{secondary}; {a} (primary) off and back after {} as secondary: {} KiB of {} KiB resynced ({decision}: the changes and its activity log's 4 MiB extents)",
        secs(back),
        moved >> 10,
        size >> 10
    ))
}

fn failback_off(dc: &mut DataCluster) -> anyhow::Result<String> {
    // A fresh cluster: the group on its home node, no operator request standing.
    let home = "ox1";
    if dc.active(RECOVERY_TIMEOUT)? != home {
        bail!("the group does not run on its home node {home} in a fresh cluster");
    }
    let other = peer(home);
    dc.power_off(home)?;
    wait_owner(dc, other, other, RECOVERY_TIMEOUT)?;
    dc.restore()?;
    dc.wait_healthy(RECOVERY_TIMEOUT)?;
    interrupt::sleep(TIMING.deadtime * 3)?;
    for n in NODES {
        wait_owner(dc, n, other, Duration::from_secs(5))
            .context("the group moved back to its home node with auto_failback off")?;
    }
    Ok(format!(
        "{home} (home) off and back: the group stayed on {other}"
    ))
}

fn restart_quickly(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    dc.cluster.stop_daemon(&a)?;
    let stopped = crate::clock::now();
    dc.cluster.start_daemon(&a, &[])?;
    let gap = stopped.elapsed();
    if gap > Duration::from_secs(1) {
        bail!("the restart took {gap:?}, more than 1 s");
    }
    let owner = dc.wait_healthy(RECOVERY_TIMEOUT)?;
    Ok(format!(
        "{a}'s daemon stopped and started again {} ms later; group on {owner}",
        gap.as_millis()
    ))
}

fn power_off_both(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let p = peer(&a);
    dc.power_off(&a)?;
    dc.power_off(p)?;
    let acked = dc.client.acked_count();
    interrupt::sleep(Duration::from_secs(1))?;
    let t0 = wall_ms();
    dc.boot(p)?;
    dc.boot(&a)?;
    let owner = dc.wait_healthy(RECOVERY_TIMEOUT).context(
        "after both nodes lost power, the cluster neither started by itself nor said what to decide",
    )?;
    let (_, lost) = dc.lost_records(&owner)?;
    if !lost.is_empty() {
        bail!("{} acknowledged records lost: {lost:?}", lost.len());
    }
    Ok(format!(
        "{a} then {p} off ({acked} acked before), both back: the cluster started by itself, group on {owner} after {}",
        secs(wall_ms() - t0)
    ))
}

/// Stops both daemons cleanly (one by one, or at once) and checks that nothing
/// serves; then starts them (one by one: the home node, the peer a moment later, within
/// its startup grace; or at once) and waits for the cluster to be whole.
fn stop_start(
    dc: &mut DataCluster,
    stop_at_once: bool,
    start_at_once: bool,
) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let p = peer(&a);
    if stop_at_once {
        dc.cluster.signal_daemon(p, libc::SIGTERM)?;
        dc.cluster.signal_daemon(&a, libc::SIGTERM)?;
    }
    dc.cluster.stop_daemon(p)?;
    dc.cluster.stop_daemon(&a)?;
    for (n, h) in NODES.iter().zip(dc.sampler.now()) {
        if h.any() {
            bail!("{n} still serves with its daemon stopped: {h:?}");
        }
    }
    let t0 = wall_ms();
    let home = "ox1";
    dc.cluster.start_daemon(home, &[])?;
    if !start_at_once {
        interrupt::wait(Duration::from_secs(10), "the home node's daemon", || {
            Ok(dc.cluster.status(home).is_some())
        })?;
        interrupt::sleep(TIMING.deadtime / 2)?;
    }
    dc.cluster.start_daemon(peer(home), &[])?;
    let owner = dc.wait_healthy(RECOVERY_TIMEOUT)?;
    for n in NODES {
        if fences(dc, n, peer(n), t0) > 0 {
            bail!("{n} fenced {} at a clean start", peer(n));
        }
    }
    Ok(format!(
        "{} stopped: nothing served; {} started: group on {owner} after {}, nobody fenced",
        if stop_at_once {
            format!("{a} and {p} at once")
        } else {
            format!("{p} then {a}")
        },
        if start_at_once {
            "both at once".to_string()
        } else {
            format!("{home} then {}", peer(home))
        },
        secs(wall_ms() - t0)
    ))
}

fn stop_one_by_one(dc: &mut DataCluster) -> anyhow::Result<String> {
    stop_start(dc, false, true)
}

fn simul_stop(dc: &mut DataCluster) -> anyhow::Result<String> {
    stop_start(dc, true, true)
}

fn start_one_by_one(dc: &mut DataCluster) -> anyhow::Result<String> {
    stop_start(dc, true, false)
}

fn simul_start(dc: &mut DataCluster) -> anyhow::Result<String> {
    stop_start(dc, false, true)
}

fn restart_one_by_one(dc: &mut DataCluster) -> anyhow::Result<String> {
    let mut seen = Vec::new();
    for n in NODES {
        dc.cluster.stop_daemon(n)?;
        dc.cluster.start_daemon(n, &[])?;
        let owner = dc.wait_healthy(RECOVERY_TIMEOUT)?;
        seen.push(format!("{n} restarted: group on {owner}"));
    }
    Ok(seen.join("; "))
}
