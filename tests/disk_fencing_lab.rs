//! Disk fencing for real (issue: "a replicated disk loses acknowledged writes when its
//! replication network fails before its primary"). Two agents in the whitepaper lab, the
//! group `data` (home ox1) promoting r0 (protocol C), fencing through the lab's power
//! switch. The replication link runs over `hb`; heartbeats over `hb` and `lan`.
//!
//! The sequence that lost data: once r0 is in sync, only the replication network is
//! cut; ox1 acknowledges a 4 MiB write + flush; then ox1 loses power; ox2 fences it and
//! its group starts. Under `resource-and-stonith` (the default for a disk in a group)
//! and `resource-only` the write is acknowledged only after ox2's copy is durably
//! outdated, and ox2 then refuses to promote it: nothing acknowledged is served
//! missing. Under `dont-care` the same sequence loses the write — the reason for the
//! default.

mod common;

use std::process::Command;
use std::time::Duration;

use common::disks::{Cluster, Heartbeats, URI, as_is};
use common::{wait_for, wall_ms};
use serde_json::Value;
use tandem_config::DiskFencing;
use tandem_disk::meta::{MetaLocation, MetaStore};
use tandem_testkit::root_or_skip;

const SECOND: Duration = Duration::from_secs(1);

/// The write the sequence acknowledges while the replication network is cut.
const WRITE: &str = "write -P 0x5a 4M 4M";

/// Starts `qemu-io` in `node` with `cmds` (write, then flush) in the background.
fn spawn_qemu_io(c: &Cluster, node: &str, cmds: &[&str]) -> tandem_lab::HostProcess {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    cmd.arg(URI);
    c.lab.spawn(node, cmd).expect("spawn qemu-io")
}

/// ox2's superblock flags as its backing file holds them (read beside the daemon).
fn ox2_outdated_on_disk(c: &Cluster) -> bool {
    let (_, meta) = MetaStore::open(
        &c.lab.data_dir().join("ox2-r0.img"),
        &MetaLocation::Internal,
    )
    .expect("ox2's metadata");
    meta.flags.outdated
}

/// Cuts `hb` (the replication link; heartbeats go on over `lan`), has ox1 acknowledge
/// [`WRITE`] plus a flush, and returns whether ox2's copy was durably outdated by the
/// time the acknowledgement came.
fn write_with_the_replication_network_cut(c: &mut Cluster) -> bool {
    c.qemu_io("ox1", "write -P 0x11 0 1M");
    c.wait_in_sync(30);
    c.lab.partition("hb", &[]).expect("cut hb");
    let writer = spawn_qemu_io(c, "ox1", &[WRITE, "flush"]);
    let status = wait_for(Duration::from_secs(60), "the write to finish", || {
        writer.try_wait().expect("qemu-io")
    });
    let outdated_at_ack = ox2_outdated_on_disk(c);
    assert!(status.success(), "the write failed: {status}");
    outdated_at_ack
}

/// ox1 loses power; ox2 declares it dead and fences it. Returns ox2's roles seen every
/// 100 ms for `watch`.
fn power_off_ox1_and_watch_ox2(c: &mut Cluster, watch: Duration) -> Vec<String> {
    c.lab.power_off("ox1").expect("power off ox1");
    wait_for(Duration::from_secs(30), "ox2 to fence ox1", || {
        let h = c.tandem("ox2", &["fence", "history"]);
        h.contains("ox1").then_some(())
    });
    let mut roles = Vec::new();
    let end = wall_ms() + watch.as_millis() as u64;
    while wall_ms() < end {
        if let Some(s) = c.status("ox2") {
            roles.push(s["role"].as_str().unwrap_or("?").to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    roles
}

/// The outdated copy is not promoted by the group, nor by an operator without --force;
/// --force promotes it and says what it discards.
fn ox2_refuses_its_outdated_copy(c: &mut Cluster) {
    let roles = power_off_ox1_and_watch_ox2(c, Duration::from_secs(8));
    assert!(
        roles.iter().all(|r| r == "secondary"),
        "ox2 served its outdated copy: {roles:?}"
    );
    let s = c.status("ox2").unwrap();
    assert_eq!(s["disk_state"], "outdated", "{s}");
    let st: Value = serde_json::from_str(&c.tandem("ox2", &["status", "--json"])).unwrap();
    let r0 = &st["groups"][0]["resources"][0];
    assert_eq!(r0["disk"], "r0", "{st}");
    assert_eq!(
        r0["last_action"]["ok"], false,
        "the group's promotion failed: {st}"
    );
    assert!(
        r0["last_action"]["result"]
            .as_str()
            .is_some_and(|r| r.contains("Outdated")),
        "{st}"
    );
    let refused = c
        .tandem_result("ox2", &["disk", "primary", "r0"])
        .expect_err("an operator promotion of a group's disk without --force");
    assert!(refused.contains("belongs to group data"), "{refused}");
    c.tandem("ox2", &["disk", "primary", "--force", "r0"]);
    assert!(
        c.log("ox2")
            .contains("forced primary: this copy was outdated"),
        "--force says what it discards"
    );
}

#[test]
fn resource_and_stonith_outdates_the_peer_before_acknowledging_and_it_is_never_promoted() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let (mut c, _switch) = Cluster::fenced_with_disk_group_on(as_is, Heartbeats::HbAndLan, SECOND);
    assert!(
        write_with_the_replication_network_cut(&mut c),
        "acknowledged before ox2's copy was outdated"
    );
    let s = c.status("ox1").unwrap();
    assert_eq!(s["peer_outdated"], true, "{s}");
    assert!(c.log("ox2").contains("outdated at the peer's request"));
    ox2_refuses_its_outdated_copy(&mut c);
}

#[test]
fn resource_only_outdates_a_reachable_peer_and_it_is_never_promoted() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let (mut c, _switch) = Cluster::fenced_with_disk_group_on(
        |c| {
            c.disk_fencing("r0", DiskFencing::ResourceOnly);
        },
        Heartbeats::HbAndLan,
        SECOND,
    );
    assert!(
        write_with_the_replication_network_cut(&mut c),
        "acknowledged before ox2's copy was outdated"
    );
    ox2_refuses_its_outdated_copy(&mut c);
}

/// The unsafe policy, kept for those who choose it: the same sequence serves a copy
/// without the acknowledged write. (This is what every configuration did before disk
/// fencing; the test shows the lab sequence really exercises the loss.)
#[test]
fn dont_care_loses_the_acknowledged_write() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let (mut c, _switch) = Cluster::fenced_with_disk_group_on(
        |c| {
            c.disk_fencing("r0", DiskFencing::DontCare);
        },
        Heartbeats::HbAndLan,
        SECOND,
    );
    assert!(!write_with_the_replication_network_cut(&mut c));
    c.lab.power_off("ox1").expect("power off ox1");
    c.wait_state("ox2", "primary through the group", 60, |s| {
        s["role"] == "primary"
    });
    c.qemu_io("ox2", "read -P 0x11 0 1M");
    let lost = c.qemu_io_result("ox2", "read -P 0x5a 4M 4M");
    assert!(
        lost.is_err()
            || lost
                .as_deref()
                .is_ok_and(|o| o.contains("Pattern verification failed")),
        "under dont-care the acknowledged write was expected lost: {lost:?}"
    );
}

/// Every cluster path cut: the primary's I/O is suspended — the write neither fails nor
/// is acknowledged — until the peer is fenced; then it completes. ox1 holds the group,
/// so it fences first (ox2 waits its fencing delay).
#[test]
fn a_primary_cut_off_on_every_path_suspends_io_until_the_peer_is_fenced() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let (mut c, _switch) = Cluster::fenced_with_disk_group_on(
        |c| c.disk_mut("r0").net_timeout = SECOND,
        Heartbeats::HbAndLan,
        Duration::from_secs(3),
    );
    c.qemu_io("ox1", "write -P 0x11 0 1M");
    c.wait_in_sync(30);
    c.lab.partition("hb", &[]).expect("cut hb");
    c.lab.partition("lan", &[]).expect("cut lan");
    let writer = spawn_qemu_io(&c, "ox1", &[WRITE, "flush"]);
    let mut suspended_seen = None;
    let status = wait_for(Duration::from_secs(60), "the write to finish", || {
        if suspended_seen.is_none()
            && let Ok(out) = c.tandem_result("ox1", &["status", "--json"])
            && let Ok(st) = serde_json::from_str::<Value>(&out)
            && let Some(s) = st["groups"][0]["suspended"]
                .as_array()
                .and_then(|a| a.first())
        {
            suspended_seen = Some(s.clone());
        }
        writer.try_wait().expect("qemu-io")
    });
    let acked_at = wall_ms();
    assert!(status.success(), "a suspended write failed: {status}");
    let seen = suspended_seen.expect("status never showed the group's disk suspended");
    assert_eq!(seen["disk"], "r0", "{seen}");
    assert_eq!(
        seen["reason"], "waiting for the peer to be outdated or fenced",
        "{seen}"
    );
    let history: Value =
        serde_json::from_str(&c.tandem("ox1", &["fence", "history", "--json"])).unwrap();
    let fenced_at = history["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["target"] == "ox2" && r["outcome"]["kind"] == "success")
        .filter_map(|r| r["at_unix_ms"].as_u64())
        .min()
        .unwrap_or_else(|| panic!("ox2 was not fenced by ox1: {history}"));
    assert!(
        acked_at >= fenced_at,
        "acknowledged at {acked_at}, before ox2 was fenced at {fenced_at}"
    );
    let s = c.status("ox1").unwrap();
    assert_eq!(s["role"], "primary", "{s}");
    assert!(s["suspended"].is_null(), "{s}");
    c.qemu_io("ox1", "read -P 0x5a 4M 4M");
}
