//! What the controller counts and tells for operations: the counters `/metrics` shows.

mod harness;

use std::time::Duration;

use harness::*;
use tandem_controller::{Command, Input};
use tandem_fencing::{FenceAction, FenceResult, Outcome};

/// The device run the controller asked for last: (id, device, target).
fn last_fence(cmds: &[Command]) -> (u64, String, String) {
    cmds.iter()
        .rev()
        .find_map(|c| match c {
            Command::RunFenceDevice(tandem_fencing::Command::RunDevice {
                id,
                device,
                target,
                ..
            }) => Some((*id, device.clone(), target.clone())),
            _ => None,
        })
        .expect("a fence device run")
}

fn fence_done(s: &mut Shell, outcome: Outcome) -> Vec<Command> {
    let (id, device, target) = last_fence(&s.seen);
    s.feed(Input::FenceDone {
        id,
        result: FenceResult {
            device,
            action: FenceAction::Reboot,
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
