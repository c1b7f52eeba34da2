//! The scenarios that change how the cluster is run rather than what fails in it:
//! PartitionHeal (every cluster path cut and healed before fencing completes, with a
//! fence device that fails and with manual fencing), Reattach (maintenance on, both
//! daemons restarted, maintenance off) and FailbackOn (`auto_failback = "on"`).
//!
//! ```text
//!  PartitionHeal: switch unplugged → cut hb + lan → both fence, both fail → heal
//!                 → whole, holder kept the group, standby works
//!                 reconfigure (agent = "manual") → cut → both wait for a confirm → heal
//!                 → whole, nobody fenced, standby works
//! ```

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::catalog::{fence_outcomes, fences, first_ack_after, operator_move, secs, wait_owner};
use super::cluster::{DataCluster, NODES, RECOVERY_TIMEOUT, TIMING, peer};
use crate::clock::wall_ms;
use crate::demo::interrupt;
use crate::labconfig::{LAB_SWITCH, LabConfig};
use tandem_config::{AutoFailback, FenceAgent};

/// How the fence of a partition is kept from completing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fencer {
    /// The lab's power switch unplugged: every attempt fails.
    Unplugged,
    /// `agent = "manual"`: waits for `tandem fence confirm`, which nobody runs.
    Manual,
}

/// The fencing state `by` holds for `target` (`in-progress`, `failed`, …).
fn fence_state(dc: &DataCluster, by: &str, target: &str) -> Option<String> {
    dc.cluster.status(by)?["fencing"]["states"][target]
        .as_str()
        .map(str::to_owned)
}

/// Fence attempts of `target` by `by` since `since_ms` that did not succeed.
fn failed_fences(dc: &DataCluster, by: &str, target: &str, since_ms: u64) -> usize {
    fence_outcomes(dc, by, target, since_ms)
        .iter()
        .filter(|k| *k != "success")
        .count()
}

/// Replaces the lab switch with a manual fence device (nothing runs; a fence waits
/// for `tandem fence confirm NODE` up to the device's timeout).
fn manual_fencing(config: &mut LabConfig) {
    let device = config.fence_device_mut(LAB_SWITCH);
    device.agent = FenceAgent::Manual;
    device.params.clear();
}

/// Cuts every cluster path between the owner and its peer, waits until both have
/// tried to fence and neither could, heals, and checks what follows: nobody fenced
/// and powered off, nobody serving twice, the cluster whole again, standby working.
fn partition_then_heal(dc: &mut DataCluster, fencer: Fencer) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let p = peer(&a);
    let t0 = wall_ms();
    if fencer == Fencer::Unplugged {
        dc.unplug_switch();
    }
    dc.cut("hb", &[])?;
    dc.cut("lan", &[p])?;
    // Both fence (the peer after fencing_delay), and neither completes.
    let what = match fencer {
        Fencer::Unplugged => "both nodes to fail a fence of the other",
        Fencer::Manual => "both nodes to wait for a manual fence",
    };
    interrupt::wait(Duration::from_secs(30), what, || {
        Ok(NODES.iter().all(|n| match fencer {
            Fencer::Unplugged => failed_fences(dc, n, peer(n), t0) > 0,
            Fencer::Manual => fence_state(dc, n, peer(n)).as_deref() == Some("in-progress"),
        }))
    })?;
    let fencing_seen = wall_ms() - t0;
    let states: Vec<String> = NODES
        .iter()
        .map(|n| {
            format!(
                "{n}: {}",
                fence_state(dc, n, peer(n)).unwrap_or_else(|| "?".into())
            )
        })
        .collect();
    let pi = NODES.iter().position(|n| *n == p).unwrap_or(0);
    if dc.sampler.now()[pi].any() {
        bail!(
            "{p} serves during the partition without having fenced {a}: {:?}",
            dc.sampler.now()[pi]
        );
    }
    dc.cluster.lab.heal(None, &[])?;
    let healed = wall_ms();
    let owner = dc.wait_healthy(RECOVERY_TIMEOUT).with_context(|| {
        format!("the cluster whole after a partition healed before fencing completed ({fencer:?})")
    })?;
    let whole = wall_ms() - healed;
    // The switch back in: a fence still pending from the partition would land now.
    dc.plug_switch()?;
    interrupt::sleep(TIMING.deadtime * 3)?;
    for n in NODES {
        if !dc.cluster.lab.is_powered(n)? || fences(dc, n, peer(n), t0) > 0 {
            bail!(
                "{} was fenced after the partition healed ({fencer:?})",
                peer(n)
            );
        }
    }
    let owner_now = dc.wait_healthy(RECOVERY_TIMEOUT)?;
    if owner_now != owner {
        bail!("the group moved from {owner} to {owner_now} after the heal");
    }
    let ack = first_ack_after(dc, healed, Duration::from_secs(30))?;
    // Operator commands work again (both nodes once waited for each other's report
    // for ever and ignored standby).
    let standby = operator_move(dc, "standby", &owner, peer(&owner))
        .context("tandem standby after the heal")?;
    Ok(format!(
        "{}: both fenced in vain after {} ({}), healed: whole after {}, group on {owner} (holder was {a}), first ack +{}; {standby}",
        match fencer {
            Fencer::Unplugged => "switch unplugged",
            Fencer::Manual => "manual fencing",
        },
        secs(fencing_seen),
        states.join(", "),
        secs(whole),
        secs(ack - healed),
    ))
}

/// PartitionHeal: a fence device that fails, then manual fencing.
pub fn partition_heal(dc: &mut DataCluster) -> anyhow::Result<String> {
    let failing = partition_then_heal(dc, Fencer::Unplugged)?;
    dc.reconfigure(manual_fencing)
        .context("restart with manual fencing")?;
    let manual = partition_then_heal(dc, Fencer::Manual)?;
    Ok(format!("{failing}; then {manual}"))
}

/// The resource actions (other than monitors and probes) `node` ran since `since_ms`.
fn actions_since(dc: &DataCluster, node: &str, since_ms: u64) -> Vec<Value> {
    dc.cluster
        .status(node)
        .and_then(|s| s["actions"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| {
            a["time_ms"].as_u64().is_some_and(|t| t >= since_ms)
                && !matches!(a["action"].as_str(), Some("monitor" | "probe"))
        })
        .collect()
}

fn brief(actions: &[Value]) -> String {
    actions
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["action"].as_str().unwrap_or("?"),
                a["resource"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reattach: maintenance on, both daemons restarted, maintenance off: nothing restarts.
pub fn reattach(dc: &mut DataCluster) -> anyhow::Result<String> {
    let a = dc.active(RECOVERY_TIMEOUT)?;
    let pids = dc.service_pids(&a);
    dc.cluster.tandem(&a, &["maintenance", "on"])?;
    interrupt::wait(Duration::from_secs(10), "maintenance on both nodes", || {
        Ok(NODES.iter().all(|n| {
            dc.cluster
                .status(n)
                .is_some_and(|s| s["maintenance"] == true)
        }))
    })?;
    let t0 = wall_ms();
    dc.cluster.stop_daemon(peer(&a))?;
    dc.cluster.stop_daemon(&a)?;
    let during = dc.service_pids(&a);
    for n in NODES {
        dc.cluster.start_daemon(n, &[])?;
    }
    let mut kept = Vec::new();
    interrupt::wait(Duration::from_secs(30), "both daemons to answer", || {
        kept = NODES
            .iter()
            .filter_map(|n| dc.cluster.status(n).map(|s| s["maintenance"] == true))
            .collect();
        Ok(kept.len() == 2)
    })?;
    dc.cluster.tandem(&a, &["maintenance", "off"])?;
    let owner = dc.wait_healthy(RECOVERY_TIMEOUT)?;
    interrupt::sleep(TIMING.deadtime * 3)?;
    let after = dc.service_pids(&owner);
    let ran: Vec<(String, Vec<Value>)> = NODES
        .iter()
        .map(|n| (n.to_string(), actions_since(dc, n, t0)))
        .collect();
    let restarted: Vec<String> = ran
        .iter()
        .filter(|(_, acts)| {
            acts.iter()
                .any(|x| matches!(x["action"].as_str(), Some("start" | "stop")))
        })
        .map(|(n, acts)| format!("{n}: {}", brief(acts)))
        .collect();
    if owner != a
        || after != pids
        || pids.is_empty()
        || !restarted.is_empty()
        || kept != [true, true]
    {
        bail!(
            "resources restarted or maintenance lost: owner {a} → {owner}; service pid {pids:?}, {during:?} while the daemons were stopped, {after:?} after; maintenance as the new daemons came up (ox1, ox2): {kept:?}; actions since the restart: {}",
            restarted.join("; ")
        );
    }
    if during != pids {
        bail!("the service did not run while both daemons were stopped: {during:?}");
    }
    for n in NODES {
        let log = std::fs::read_to_string(dc.cluster.lab.data_dir().join(format!("{n}.log")))
            .unwrap_or_default();
        if !log.contains("attached to the running disk service") {
            bail!("{n}'s new daemon did not attach to the disk service left running");
        }
        if log.contains("differs from this daemon's") {
            bail!("{n}: the attach warned of a changed [[disk]] configuration that did not change");
        }
    }
    Ok(format!(
        "maintenance on, both daemons restarted (came up in maintenance), maintenance off: group stayed on {owner}, service pid {after:?} unchanged and running while the daemons were down, no start or stop"
    ))
}

/// FailbackOn: `auto_failback = "on"`; the home node off and back: the group returns,
/// stopped on the peer before it starts at home.
pub fn failback_on(dc: &mut DataCluster) -> anyhow::Result<String> {
    let home = "ox1";
    let other = peer(home);
    let owner = dc
        .reconfigure(|c| c.cluster_mut().auto_failback = AutoFailback::On)
        .context("restart with auto_failback on")?;
    if owner != home {
        bail!("with auto_failback on the group runs on {owner}, not on its home {home}");
    }
    dc.power_off(home)?;
    wait_owner(dc, other, other, RECOVERY_TIMEOUT)?;
    let back = wall_ms();
    dc.restore()?;
    dc.wait_owner(home, RECOVERY_TIMEOUT)
        .context("the group back on its home node (auto_failback on)")?;
    let moved = wall_ms() - back;
    dc.wait_healthy(RECOVERY_TIMEOUT)?;
    let stops = actions_since(dc, other, back);
    let starts = actions_since(dc, home, back);
    let last_stop = stops
        .iter()
        .filter(|x| x["action"] == "stop")
        .filter_map(|x| x["time_ms"].as_u64())
        .max();
    let first_start = starts
        .iter()
        .filter(|x| x["action"] == "start")
        .filter_map(|x| x["time_ms"].as_u64())
        .min();
    let failed: Vec<&Value> = stops
        .iter()
        .chain(&starts)
        .filter(|x| x["ok"] != true)
        .collect();
    match (last_stop, first_start) {
        (Some(s), Some(t)) if s <= t && failed.is_empty() => {}
        _ => bail!(
            "the failback was not a clean stop on {other} then start on {home}: {other}: {}; {home}: {}",
            brief(&stops),
            brief(&starts)
        ),
    }
    if fences(dc, home, other, back) > 0 {
        bail!("{home} fenced {other} on its return");
    }
    first_ack_after(dc, wall_ms(), Duration::from_secs(30))?;
    Ok(format!(
        "{home} (home) off, group on {other}; {home} back: {other} stopped ({}), then {home} started ({}), group home {} after the power-on, client outage {}",
        brief(&stops),
        brief(&starts),
        secs(moved),
        secs(dc.outage_since(back))
    ))
}
