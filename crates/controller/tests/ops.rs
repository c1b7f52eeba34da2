//! What the controller counts and tells for operations: the counters `/metrics` shows.

mod harness;

use std::time::Duration;

use harness::*;
use tandem_controller::{Command, Input};
use tandem_fencing::{FenceAction, FenceResult, Outcome};

/// The device run the controller asked for last: (id, device, target, action).
fn last_fence(cmds: &[Command]) -> (u64, String, String, FenceAction) {
    cmds.iter()
        .rev()
        .find_map(|c| match c {
            Command::RunFenceDevice(tandem_fencing::Command::RunDevice {
                id,
                device,
                target,
                action,
                ..
            }) => Some((*id, device.clone(), target.clone(), *action)),
            _ => None,
        })
        .expect("a fence device run")
}

fn fence_done(s: &mut Shell, outcome: Outcome) -> Vec<Command> {
    let (id, device, target, action) = last_fence(&s.seen);
    s.feed(Input::FenceDone {
        id,
        result: FenceResult {
            device,
            action,
            target: Some(target),
            outcome,
            stdout: String::new(),
            duration_ms: 5,
        },
    })
}

/// b loses a (which ran the group): a failed device run, then a retried one that
/// succeeds; the counters say so, and status carries them.
#[test]
fn counters_count_transitions_and_each_fence_attempt_and_result() {
    let mut s = Shell::on("b", &witness_config(false));
    s.idle_cluster();
    let before = s.c.status()["counters"]["transitions"].as_u64().unwrap();
    assert!(before >= 1, "the probes were a transition");
    // The probes' transition finished: its duration is in the histogram.
    let durations = &s.c.status()["counters"]["transition_seconds"];
    assert!(durations["count"].as_u64().unwrap() >= 1, "{durations}");
    let buckets = durations["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 10);
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0][1].as_u64() <= w[1][1].as_u64()),
        "{durations}"
    );
    s.peer_dead();
    s.advance(Duration::from_secs(6));
    fence_done(&mut s, Outcome::Timeout);
    for _ in 0..100 {
        if s.seen
            .iter()
            .filter(|c| matches!(c, Command::RunFenceDevice(_)))
            .count()
            >= 2
        {
            break;
        }
        s.advance(Duration::from_millis(500));
    }
    assert_eq!(
        fences(&s.seen),
        2,
        "retried after the timeout: {:?}",
        s.c.status()["fencing"]
    );
    fence_done(&mut s, Outcome::Success);
    let counters = &s.c.status()["counters"];
    assert_eq!(
        counters["fence"],
        serde_json::json!([{"target": "a", "device": "sw", "attempts": 2,
                            "results": {"success": 1, "timeout": 1}}]),
        "{counters}"
    );
    assert!(
        counters["transitions"].as_u64().unwrap() > before,
        "the fence's transition: {counters}"
    );
}

fn notices(cmds: &[Command]) -> Vec<(&'static str, Option<String>, Option<String>, String)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Notify(n) => {
                Some((n.event, n.node.clone(), n.group.clone(), n.detail.clone()))
            }
            _ => None,
        })
        .collect()
}

/// a starts its group (group_started there); b loses a, fences it and takes the group
/// over: b tells node_dead, fenced, group_started and group_moved (from a), once each.
#[test]
fn a_failover_is_told_as_node_dead_fenced_and_group_moved_once_each() {
    let some = |s: &str| Some(s.to_string());
    let mut a = Shell::new(CONFIG);
    a.started_here();
    assert_eq!(
        notices(&a.seen),
        [
            ("node_up", some("b"), None, String::new()),
            ("group_started", some("a"), some("g"), String::new())
        ],
        "the probes' first look is no news; the start is"
    );

    let mut b = Shell::on("b", &witness_config(false));
    b.idle_cluster();
    b.peer_says(tandem_controller::PeerMessage::Report {
        group: "g".into(),
        resources: [("ip", "started"), ("svc", "started")]
            .into_iter()
            .map(|(r, s)| {
                let state = s.to_string();
                let failures = String::new();
                (
                    r.to_string(),
                    tandem_controller::messages::Reported { state, failures },
                )
            })
            .collect(),
    });
    b.peer_dead();
    b.advance(Duration::from_secs(6));
    fence_done(&mut b, Outcome::Success);
    for _ in 0..20 {
        b.advance(Duration::from_millis(500));
        if runs(&b.seen).contains(&(tandem_controller::Op::Start, "ip".into())) {
            break;
        }
    }
    b.done(tandem_controller::Op::Start, "ip", ok());
    b.done(tandem_controller::Op::Start, "svc", ok());
    let told = notices(&b.seen);
    let events: Vec<&str> = told.iter().map(|n| n.0).collect();
    assert_eq!(
        events,
        [
            "node_up",
            "node_dead",
            "fenced",
            "group_started",
            "group_moved"
        ],
        "{told:?}"
    );
    assert_eq!(told[1].1, some("a"));
    assert_eq!(
        told[4],
        ("group_moved", some("b"), some("g"), "from a".into())
    );
}
