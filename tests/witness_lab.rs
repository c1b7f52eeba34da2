//! The witness for real: a third lab host `quorum` on both cluster networks runs
//! `tandem witness`; ox1 and ox2 fence through the lab's power switch with a
//! `fencing_delay` of 8 s, long enough to tell a fence the witness allowed at once from
//! one that waited. A sampler fails each test if both nodes ever hold the service
//! address at once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Cluster, Opts, Sampler};
use common::wait_for;
use serde_json::Value;
use tandem_config::FencingPolicy;
use tandem_testkit::root_or_skip;

const FENCING_DELAY_MS: u64 = 8_000;

fn opts() -> Opts {
    Opts {
        fencing: FencingPolicy::Required,
        edit: Arc::new(|c| {
            c.lab_switch().cluster_mut().fencing_delay = Duration::from_millis(FENCING_DELAY_MS);
        }),
        witness: true,
        ..Opts::default()
    }
}

/// When `node` declared `peer` dead (its event history), and when it fenced it.
fn dead_and_fenced_ms(c: &Cluster, node: &str, peer: &str) -> Option<(u64, u64)> {
    let s = c.status(node)?;
    let dead = s["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["event"] == "node_dead" && e["node"] == peer)?["time_ms"]
        .as_u64()?;
    let fenced = s["fencing"]["history"]
        .as_array()?
        .iter()
        .find(|r| r["target"] == peer && r["outcome"]["kind"] == "success")?["at_unix_ms"]
        .as_u64()?;
    Some((dead, fenced))
}

fn vote(c: &Cluster, node: &str) -> Value {
    c.status(node)
        .map(|s| s["witness"]["vote"].clone())
        .unwrap_or(Value::Null)
}

/// Waits until both nodes hear the witness.
fn wait_witness_heard(c: &Cluster) {
    for node in ["ox1", "ox2"] {
        wait_for(Duration::from_secs(20), "the witness heard", || {
            let s = c.status(node)?;
            (s["witness"]["heard"] == true).then_some(())
        });
    }
}

#[test]
fn with_the_witness_a_powered_off_active_node_is_fenced_without_the_delay() {
    if !root_or_skip("witness: power-off") {
        return;
    }
    let mut c = Cluster::start(opts());
    c.wait_owner("ox2", "ox1");
    wait_witness_heard(&c);
    let sampler = Sampler::start(c.lab.name());
    c.lab.power_off("ox1").unwrap();
    c.wait_owner("ox2", "ox2");
    let (dead, fenced) =
        dead_and_fenced_ms(&c, "ox2", "ox1").expect("ox2 declared ox1 dead and fenced it");
    assert!(
        fenced.saturating_sub(dead) < FENCING_DELAY_MS,
        "the fence waited {} ms after the dead verdict: the witness's vote should skip the {FENCING_DELAY_MS} ms delay",
        fenced.saturating_sub(dead)
    );
    assert_eq!(vote(&c, "ox2"), "granted");
    assert!(c.client_connects());
    sampler.finish();
}

#[test]
fn an_active_node_cut_from_peer_and_witness_stops_and_the_passive_takes_over() {
    if !root_or_skip("witness: active isolated") {
        return;
    }
    let mut c = Cluster::start(opts());
    c.wait_owner("ox2", "ox1");
    wait_witness_heard(&c);
    let sampler = Sampler::start(c.lab.name());
    // ox1 alone on both networks: it hears neither ox2 nor the witness.
    c.lab.partition("hb", &["ox1"]).unwrap();
    c.lab.partition("lan", &["ox1"]).unwrap();
    wait_for(Duration::from_secs(30), "ox1 powered off by ox2", || {
        (!c.lab.is_powered("ox1").ok()?).then_some(())
    });
    c.lab.heal(None, &[]).unwrap();
    c.wait_owner("ox2", "ox2");
    assert!(
        c.lab.is_powered("ox2").unwrap(),
        "the node with the vote was fenced"
    );
    let (dead, fenced) = dead_and_fenced_ms(&c, "ox2", "ox1").expect("ox2 fenced ox1");
    assert!(fenced.saturating_sub(dead) < FENCING_DELAY_MS);
    assert!(c.client_connects());
    sampler.finish();
}

#[test]
fn a_passive_node_cut_from_peer_and_witness_moves_nothing_and_is_fenced() {
    if !root_or_skip("witness: passive isolated") {
        return;
    }
    let mut c = Cluster::start(opts());
    c.wait_owner("ox2", "ox1");
    wait_witness_heard(&c);
    let sampler = Sampler::start(c.lab.name());
    c.lab.partition("hb", &["ox2"]).unwrap();
    c.lab.partition("lan", &["ox2"]).unwrap();
    wait_for(Duration::from_secs(30), "ox2 powered off by ox1", || {
        (!c.lab.is_powered("ox2").ok()?).then_some(())
    });
    c.lab.heal(None, &[]).unwrap();
    assert!(
        c.lab.is_powered("ox1").unwrap(),
        "the serving node was fenced"
    );
    c.wait_owner("ox1", "ox1");
    assert!(c.client_connects());
    sampler.finish();
}

#[test]
fn with_the_witness_down_fencing_waits_its_delay_as_without_one() {
    if !root_or_skip("witness: down") {
        return;
    }
    let mut c = Cluster::start(opts());
    c.wait_owner("ox2", "ox1");
    wait_witness_heard(&c);
    c.kill_witness();
    wait_for(Duration::from_secs(20), "the witness declared dead", || {
        let s = c.status("ox2")?;
        (s["witness"]["heard"] == false).then_some(())
    });
    // Longer than deadtime since the witness was lost: the peer's loss is not "both
    // together".
    std::thread::sleep(Duration::from_secs(2));
    let sampler = Sampler::start(c.lab.name());
    c.lab.power_off("ox1").unwrap();
    c.wait_owner("ox2", "ox2");
    let (dead, fenced) = dead_and_fenced_ms(&c, "ox2", "ox1").expect("ox2 fenced ox1");
    assert!(
        fenced.saturating_sub(dead) >= FENCING_DELAY_MS - 500,
        "without the witness the passive node must wait fencing_delay; it fenced {} ms after the verdict",
        fenced.saturating_sub(dead)
    );
    assert_eq!(vote(&c, "ox2"), "none");
    sampler.finish();
}
