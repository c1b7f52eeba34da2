//! Scenario tests of the coordinator, and the property that nothing but a device's
//! success or an operator's confirmation makes a node count as fenced.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tandem_config::{FenceAgent, FenceDevice};

use crate::action::FenceAction;
use crate::coordinator::{Command, Coordinator, CoordinatorConfig, FenceState, RequestError};
use crate::result::{FenceRecord, FenceResult, Origin, Outcome};

/// Tests need one real `Instant` as time zero; every later time is derived from it.
#[allow(clippy::disallowed_methods)]
fn start() -> Instant {
    Instant::now()
}

fn dev(name: &str, level: u32, agent: FenceAgent) -> FenceDevice {
    FenceDevice {
        name: name.into(),
        agent,
        params: BTreeMap::new(),
        plugs: BTreeMap::new(),
        run_on: vec![],
        level,
        timeout: Duration::from_secs(20),
    }
}

fn agent(name: &str, level: u32) -> FenceDevice {
    dev(name, level, FenceAgent::FenceAgents("fence_x".into()))
}

fn coord(devices: Vec<FenceDevice>, t0: Instant) -> Coordinator {
    let mut cfg = CoordinatorConfig::with_devices(devices);
    cfg.local_node = Some("ox2".into());
    cfg.priority_delay = Duration::from_secs(5);
    cfg.max_rounds = 2;
    cfg.backoff_initial = Duration::from_secs(2);
    cfg.failed_cooldown = Duration::from_secs(60);
    Coordinator::new(cfg, 42, t0, 1_700_000_000_000)
}

fn result(device: &str, target: &str, outcome: Outcome) -> FenceResult {
    FenceResult {
        device: device.into(),
        action: FenceAction::Off,
        target: Some(target.into()),
        outcome,
        stdout: String::new(),
        duration_ms: 3,
    }
}

fn failed() -> Outcome {
    Outcome::Failed {
        exit: Some(1),
        output: "unreachable".into(),
    }
}

/// The next RunDevice command: (id, device).
fn next_run(c: &mut Coordinator) -> Option<(u64, String)> {
    while let Some(cmd) = c.poll_command() {
        if let Command::RunDevice { id, device, .. } = cmd {
            return Some((id, device));
        }
    }
    None
}

#[test]
fn undelayed_request_runs_level_one_at_once_and_success_fences() {
    let t0 = start();
    let mut c = coord(vec![agent("pdu", 1)], t0);
    assert_eq!(c.state("ox1"), FenceState::NotNeeded);
    c.request("ox1", "peer died", false, t0).expect("request");
    assert_eq!(c.state("ox1"), FenceState::InProgress);
    let (id, d) = next_run(&mut c).expect("run");
    assert_eq!(d, "pdu");
    c.device_result(id, result("pdu", "ox1", Outcome::Success), t0);
    assert_eq!(c.state("ox1"), FenceState::FencedOk);
    // The result goes to the peer and the history.
    assert!(matches!(c.poll_command(), Some(Command::SendToPeer(r)) if r.outcome.is_success()));
    assert_eq!(c.history().len(), 1);
    // A repeated request does not fence again.
    c.request("ox1", "peer died", false, t0).expect("request");
    assert!(next_run(&mut c).is_none());
    // Back with a new incarnation: nothing needed any more.
    c.node_returned_with_new_incarnation("ox1");
    assert_eq!(c.state("ox1"), FenceState::NotNeeded);
}

#[test]
fn delayed_request_waits_the_priority_delay_unless_cut_short() {
    let t0 = start();
    let mut c = coord(vec![agent("pdu", 1)], t0);
    c.request("ox1", "partition", true, t0).expect("request");
    assert_eq!(c.state("ox1"), FenceState::Required);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    c.tick(t0 + Duration::from_secs(4));
    assert!(next_run(&mut c).is_none(), "no attempt during the delay");
    c.tick(t0 + Duration::from_secs(5));
    assert!(next_run(&mut c).is_some());
    assert_eq!(c.state("ox1"), FenceState::InProgress);

    // An undelayed request (this node now holds groups) cuts a pending delay short.
    let mut c = coord(vec![agent("pdu", 1)], t0);
    c.request("ox1", "partition", true, t0).expect("request");
    c.request("ox1", "partition", false, t0 + Duration::from_secs(1))
        .expect("request");
    assert!(next_run(&mut c).is_some());
}

#[test]
fn level_one_failure_moves_to_level_two() {
    let t0 = start();
    let mut c = coord(vec![agent("ipmi", 2), agent("pdu", 1)], t0);
    c.request("ox1", "peer died", false, t0).expect("request");
    let (id, d) = next_run(&mut c).expect("run");
    assert_eq!(
        d, "pdu",
        "the lowest level goes first, whatever the file order"
    );
    c.device_result(id, result("pdu", "ox1", failed()), t0);
    assert_eq!(c.state("ox1"), FenceState::InProgress);
    let (id, d) = next_run(&mut c).expect("run");
    assert_eq!(d, "ipmi");
    c.device_result(id, result("ipmi", "ox1", Outcome::Success), t0);
    assert_eq!(c.state("ox1"), FenceState::FencedOk);
}

#[test]
fn a_level_needs_every_device_to_succeed() {
    let t0 = start();
    let mut c = coord(
        vec![agent("psu-a", 1), agent("psu-b", 1), agent("ipmi", 2)],
        t0,
    );
    c.request("ox1", "peer died", false, t0).expect("request");
    let (id, d) = next_run(&mut c).expect("run");
    assert_eq!(d, "psu-a");
    c.device_result(id, result("psu-a", "ox1", Outcome::Success), t0);
    assert_eq!(
        c.state("ox1"),
        FenceState::InProgress,
        "one of two supplies is not enough"
    );
    let (id, d) = next_run(&mut c).expect("run");
    assert_eq!(d, "psu-b");
    c.device_result(id, result("psu-b", "ox1", Outcome::Timeout), t0);
    let (_, d) = next_run(&mut c).expect("run");
    assert_eq!(d, "ipmi");
}

#[test]
fn failed_rounds_back_off_then_fail_then_rearm_after_cooldown() {
    let t0 = start();
    let mut c = coord(vec![agent("pdu", 1)], t0);
    c.request("ox1", "peer died", false, t0).expect("request");
    let (id, _) = next_run(&mut c).expect("run");
    c.device_result(id, result("pdu", "ox1", Outcome::Timeout), t0);
    // Round 1 failed: backoff of 1..=2 s (equal jitter of 2 s).
    assert_eq!(c.state("ox1"), FenceState::InProgress);
    let at = c.poll_timeout().expect("backoff armed");
    let wait = at - t0;
    assert!(
        wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
        "{wait:?}"
    );
    c.tick(at - Duration::from_millis(1));
    assert!(next_run(&mut c).is_none());
    c.tick(at);
    let (id, _) = next_run(&mut c).expect("round 2");
    c.device_result(id, result("pdu", "ox1", failed()), at);
    assert_eq!(c.state("ox1"), FenceState::Failed, "max_rounds = 2");
    assert!(next_run(&mut c).is_none());
    // After the cooldown a new series starts by itself: a repaired device ends it.
    c.tick(at + Duration::from_secs(60));
    assert_eq!(c.state("ox1"), FenceState::InProgress);
    let (id, _) = next_run(&mut c).expect("new series");
    c.device_result(
        id,
        result("pdu", "ox1", Outcome::Success),
        at + Duration::from_secs(61),
    );
    assert_eq!(c.state("ox1"), FenceState::FencedOk);
    let failures = c
        .history()
        .records()
        .filter(|r| !r.outcome.is_success())
        .count();
    assert_eq!(failures, 2, "every attempt is in the history");
}

#[test]
fn jitter_is_reproducible_from_the_seed() {
    let t0 = start();
    let backoff = |seed: u64| {
        let mut cfg = CoordinatorConfig::with_devices(vec![agent("pdu", 1)]);
        cfg.backoff_initial = Duration::from_secs(8);
        let mut c = Coordinator::new(cfg, seed, t0, 0);
        c.request("ox1", "r", false, t0).expect("request");
        let (id, _) = next_run(&mut c).expect("run");
        c.device_result(id, result("pdu", "ox1", failed()), t0);
        c.poll_timeout().expect("armed") - t0
    };
    assert_eq!(backoff(7), backoff(7));
    let spread: BTreeSet<Duration> = (0..20).map(backoff).collect();
    assert!(spread.len() > 1, "jitter varies with the seed");
}

#[test]
fn stale_unknown_and_mismatched_results_never_fence() {
    let t0 = start();
    let mut c = coord(vec![agent("pdu", 1), agent("ipmi", 2)], t0);
    c.request("ox1", "peer died", false, t0).expect("request");
    let (id, _) = next_run(&mut c).expect("run");
    c.device_result(id + 100, result("pdu", "ox1", Outcome::Success), t0);
    assert_eq!(c.state("ox1"), FenceState::InProgress, "unknown id");
    // A success for another node is a failure of this attempt.
    c.device_result(id, result("pdu", "ox9", Outcome::Success), t0);
    assert_ne!(c.state("ox1"), FenceState::FencedOk);
    // The replaced attempt's id is stale now.
    c.device_result(id, result("pdu", "ox1", Outcome::Success), t0);
    assert_ne!(c.state("ox1"), FenceState::FencedOk);
    // A successful `status` is not a fence.
    let (id, _) = next_run(&mut c).expect("level 2");
    let mut st = result("ipmi", "ox1", Outcome::Success);
    st.action = FenceAction::Status;
    c.device_result(id, st, t0);
    assert_ne!(c.state("ox1"), FenceState::FencedOk);
}

#[test]
fn lost_results_count_as_failures() {
    let t0 = start();
    let mut c = coord(vec![agent("pdu", 1)], t0);
    c.request("ox1", "peer died", false, t0).expect("request");
    next_run(&mut c).expect("run");
    let deadline = c.poll_timeout().expect("deadline");
    assert_eq!(
        deadline,
        t0 + Duration::from_secs(30),
        "timeout 20 s + grace 10 s"
    );
    c.tick(deadline);
    assert_eq!(c.state("ox1"), FenceState::InProgress, "backing off");
    let last = c.history().records().last().expect("record");
    assert_eq!(last.origin, Origin::Coordinator);
    assert!(!last.outcome.is_success());
}

#[test]
fn manual_device_waits_for_the_operator_then_moves_on() {
    let t0 = start();
    let mut c = coord(
        vec![dev("meatware", 1, FenceAgent::Manual), agent("pdu", 2)],
        t0,
    );
    c.request("ox1", "peer died", false, t0).expect("request");
    assert!(
        next_run(&mut c).is_none(),
        "nothing runs for a manual device"
    );
    assert!(c.awaits_operator("ox1"));
    assert_eq!(c.state("ox1"), FenceState::InProgress);
    // Nobody came within the device timeout: the next level is tried.
    c.tick(t0 + Duration::from_secs(20));
    let (_, d) = next_run(&mut c).expect("level 2");
    assert_eq!(d, "pdu");
    // The operator may still confirm while the switch runs.
    c.operator_confirmed("ox1", t0 + Duration::from_secs(21));
    assert_eq!(c.state("ox1"), FenceState::ConfirmedByOperator);
    assert!(c.state("ox1").is_down());
}

#[test]
fn no_device_means_required_until_an_operator_confirms() {
    let t0 = start();
    let mut c = coord(vec![], t0);
    c.request("ox1", "peer died", false, t0).expect("request");
    assert_eq!(c.state("ox1"), FenceState::Required);
    c.tick(t0 + Duration::from_secs(3600));
    assert_eq!(c.state("ox1"), FenceState::Required);
    c.operator_confirmed("ox1", t0 + Duration::from_secs(3601));
    assert_eq!(c.state("ox1"), FenceState::ConfirmedByOperator);
    let r = c.history().records().last().expect("record");
    assert_eq!(
        (r.origin, r.device.as_str()),
        (Origin::Operator, "operator")
    );
}

#[test]
fn run_on_limits_devices_and_a_node_never_fences_itself() {
    let t0 = start();
    let mut only_ox1 = agent("ox1-only", 1);
    only_ox1.run_on = vec!["ox1".into()];
    let mut c = coord(vec![only_ox1, agent("pdu", 2)], t0);
    assert_eq!(
        c.request("ox2", "x", false, t0),
        Err(RequestError::SelfFence("ox2".into()))
    );
    c.request("ox1", "peer died", false, t0).expect("request");
    let (_, d) = next_run(&mut c).expect("run");
    assert_eq!(d, "pdu", "ox2 may not run ox1-only");
}

#[test]
fn peer_success_counts_only_while_a_fence_is_wanted() {
    let t0 = start();
    let mut c = coord(vec![agent("pdu", 1)], t0);
    let peer_rec = |target: &str, outcome: Outcome| FenceRecord {
        at_unix_ms: 1,
        executor: "ox3".into(),
        target: target.into(),
        device: "pdu".into(),
        action: FenceAction::Off,
        outcome,
        duration_ms: 1,
        origin: Origin::Local,
        reason: "r".into(),
    };
    // Old news about a node nobody wants fenced: history only.
    c.peer_reported(peer_rec("ox1", Outcome::Success), t0);
    assert_eq!(c.state("ox1"), FenceState::NotNeeded);
    assert_eq!(
        c.history().records().last().map(|r| r.origin),
        Some(Origin::Peer)
    );
    c.request("ox1", "peer died", true, t0).expect("request");
    c.peer_reported(peer_rec("ox1", failed()), t0);
    assert_eq!(c.state("ox1"), FenceState::Required);
    c.peer_reported(peer_rec("ox1", Outcome::Success), t0);
    assert_eq!(c.state("ox1"), FenceState::FencedOk);
}

#[test]
fn cancel_drops_a_pending_fence_but_keeps_a_done_one() {
    let t0 = start();
    let mut c = coord(vec![agent("pdu", 1)], t0);
    c.request("ox1", "peer died", true, t0).expect("request");
    c.cancel("ox1");
    assert_eq!(c.state("ox1"), FenceState::NotNeeded);
    c.operator_confirmed("ox1", t0);
    c.cancel("ox1");
    assert_eq!(c.state("ox1"), FenceState::ConfirmedByOperator);
}

#[test]
fn history_serializes_to_json() {
    let t0 = start();
    let mut c = coord(vec![agent("pdu", 1)], t0);
    c.request("ox1", "peer died", false, t0).expect("request");
    let (id, _) = next_run(&mut c).expect("run");
    c.device_result(
        id,
        result("pdu", "ox1", failed()),
        t0 + Duration::from_millis(1500),
    );
    let j = c.history().to_json();
    let r = &j[0];
    assert_eq!(r["target"], "ox1");
    assert_eq!(r["device"], "pdu");
    assert_eq!(r["action"], "off");
    assert_eq!(r["outcome"]["kind"], "failed");
    assert_eq!(r["outcome"]["exit"], 1);
    assert_eq!(r["executor"], "ox2");
    assert_eq!(r["at_unix_ms"], 1_700_000_001_500u64);
}

// ---------------------------------------------------------------------- property

#[derive(Debug, Clone)]
enum Op {
    Request {
        node: usize,
        delayed: bool,
    },
    /// Answer a pending RunDevice (index into the outstanding list) or a made-up id.
    Result {
        pick: usize,
        outcome: u8,
        forged_id: Option<u64>,
    },
    Tick {
        ms: u64,
    },
    Returned {
        node: usize,
    },
    Cancel {
        node: usize,
    },
    PeerFailure {
        node: usize,
    },
    Confirm {
        node: usize,
    },
    PeerSuccess {
        node: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3, any::<bool>()).prop_map(|(node, delayed)| Op::Request { node, delayed }),
        (0usize..4, 0u8..6, proptest::option::of(0u64..40)).prop_map(
            |(pick, outcome, forged_id)| Op::Result {
                pick,
                outcome,
                forged_id
            }
        ),
        (0u64..40_000).prop_map(|ms| Op::Tick { ms }),
        (0usize..3).prop_map(|node| Op::Returned { node }),
        (0usize..3).prop_map(|node| Op::Cancel { node }),
        (0usize..3).prop_map(|node| Op::PeerFailure { node }),
        (0usize..3).prop_map(|node| Op::Confirm { node }),
        (0usize..3).prop_map(|node| Op::PeerSuccess { node }),
    ]
}

const NODES: [&str; 3] = ["ox1", "ox2", "ox3"];

fn run_ops(ops: &[Op], allow_success: bool) -> Result<(), TestCaseError> {
    let t0 = start();
    let mut now = t0;
    let mut c = coord(
        vec![
            agent("pdu", 1),
            agent("ipmi", 2),
            dev("meatware", 3, FenceAgent::Manual),
        ],
        t0,
    );
    // RunDevice commands not answered yet: (id, device, target).
    let mut outstanding: Vec<(u64, String, String)> = Vec::new();
    // Evidence per node since its last reset: a success for an attempt issued for it
    // (or from the peer while wanted), or an operator confirmation.
    let mut evidence: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for o in ops {
        match o {
            Op::Request { node, delayed } => {
                let _ = c.request(NODES[*node], "test", *delayed, now);
            }
            Op::Result {
                pick,
                outcome,
                forged_id,
            } => {
                let success = allow_success && *outcome == 0;
                let oc = match outcome {
                    0 if success => Outcome::Success,
                    0 | 1 => failed(),
                    2 => Outcome::Timeout,
                    3 => Outcome::NotInstalled,
                    4 => Outcome::Failed {
                        exit: None,
                        output: String::new(),
                    },
                    _ => Outcome::Error { detail: "x".into() },
                };
                if let Some(id) = forged_id {
                    // A made-up id answered with a failure, or a success about a node
                    // that no attempt was for: must never fence anything.
                    let oc = if oc.is_success() { failed() } else { oc };
                    c.device_result(*id, result("pdu", "ox1", oc), now);
                } else if !outstanding.is_empty() {
                    let (id, device, target) = outstanding.remove(pick % outstanding.len());
                    if success {
                        let node = NODES.iter().find(|n| **n == target).copied().unwrap_or("?");
                        evidence.entry(node).or_default().0 = true;
                    }
                    c.device_result(id, result(&device, &target, oc), now);
                }
            }
            Op::Tick { ms } => {
                now += Duration::from_millis(*ms);
                c.tick(now);
            }
            Op::Returned { node } => {
                c.node_returned_with_new_incarnation(NODES[*node]);
                evidence.remove(NODES[*node]);
                outstanding.retain(|(_, _, t)| t != NODES[*node]);
            }
            Op::Cancel { node } => c.cancel(NODES[*node]),
            Op::PeerFailure { node } => c.peer_reported(
                FenceRecord {
                    at_unix_ms: 0,
                    executor: "ox3".into(),
                    target: NODES[*node].into(),
                    device: "pdu".into(),
                    action: FenceAction::Off,
                    outcome: Outcome::Timeout,
                    duration_ms: 0,
                    origin: Origin::Local,
                    reason: String::new(),
                },
                now,
            ),
            Op::Confirm { node } => {
                if allow_success {
                    c.operator_confirmed(NODES[*node], now);
                    evidence.entry(NODES[*node]).or_default().1 = true;
                }
            }
            Op::PeerSuccess { node } => {
                if allow_success {
                    let mut r =
                        c.history()
                            .records()
                            .next()
                            .cloned()
                            .unwrap_or_else(|| FenceRecord {
                                at_unix_ms: 0,
                                executor: "ox3".into(),
                                target: String::new(),
                                device: "pdu".into(),
                                action: FenceAction::Off,
                                outcome: Outcome::Success,
                                duration_ms: 0,
                                origin: Origin::Local,
                                reason: String::new(),
                            });
                    r.target = NODES[*node].into();
                    r.outcome = Outcome::Success;
                    r.action = FenceAction::Off;
                    r.origin = Origin::Local;
                    c.peer_reported(r, now);
                    evidence.entry(NODES[*node]).or_default().0 = true;
                }
            }
        }
        while let Some(cmd) = c.poll_command() {
            if let Command::RunDevice {
                id, device, target, ..
            } = cmd
            {
                outstanding.push((id, device, target));
            }
        }
        c.validate().map_err(TestCaseError::fail)?;
        for n in NODES {
            let (dev_ok, op_ok) = evidence.get(n).copied().unwrap_or_default();
            match c.state(n) {
                FenceState::FencedOk => prop_assert!(dev_ok, "{n} fenced without a success"),
                FenceState::ConfirmedByOperator => {
                    prop_assert!(op_ok, "{n} confirmed without an operator")
                }
                _ => {}
            }
            prop_assert!(
                n != "ox2" || c.state(n) == FenceState::NotNeeded,
                "self-fence"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Without any success or confirmation in the inputs, no node is ever fenced.
    #[test]
    fn never_fenced_without_success_or_confirmation(ops in proptest::collection::vec(op(), 0..60)) {
        run_ops(&ops, false)?;
    }

    /// With successes and confirmations mixed in, every fenced/confirmed state is backed
    /// by one since the node's last return; and the internal invariants hold throughout.
    #[test]
    fn fenced_states_are_backed_by_evidence(ops in proptest::collection::vec(op(), 0..60)) {
        run_ops(&ops, true)?;
    }
}
