#![no_main]
//! Feeds the coordinator operation sequences decoded from arbitrary bytes and checks
//! its invariants after every step: no node fenced without a success or confirmation.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tandem_config::{FenceAgent, FenceDevice};
use tandem_fencing::{
    Command, Coordinator, CoordinatorConfig, FenceAction, FenceResult, FenceState, Outcome,
};

fn dev(name: &str, level: u32, agent: FenceAgent) -> FenceDevice {
    FenceDevice {
        name: name.into(),
        agent,
        params: BTreeMap::new(),
        plugs: BTreeMap::new(),
        run_on: vec![],
        level,
        timeout: Duration::from_secs(5),
    }
}

const NODES: [&str; 3] = ["a", "b", "c"];

fuzz_target!(|data: &[u8]| {
    let mut cfg = CoordinatorConfig::with_devices(vec![
        dev("p", 1, FenceAgent::FenceAgents("fence_x".into())),
        dev("m", 2, FenceAgent::Manual),
    ]);
    cfg.local_node = Some("b".into());
    let t0 = Instant::now();
    let mut now = t0;
    let mut c = Coordinator::new(cfg, 0, t0, 0);
    let mut pending: Vec<(u64, String)> = Vec::new();
    for w in data.chunks(2) {
        let (op, arg) = (w[0], *w.get(1).unwrap_or(&0));
        let node = NODES[(arg % 3) as usize];
        match op % 6 {
            0 => {
                let _ = c.request(node, "fuzz", arg & 4 != 0, now);
            }
            1 => {
                if !pending.is_empty() {
                    let (id, target) = pending.remove(arg as usize % pending.len());
                    // Failures only: nothing may ever count as fenced.
                    let r = FenceResult {
                        device: "p".into(),
                        action: FenceAction::Off,
                        target: Some(target),
                        outcome: Outcome::Timeout,
                        stdout: String::new(),
                        duration_ms: 0,
                    };
                    c.device_result(id, r, now);
                }
            }
            2 => {
                now += Duration::from_millis(u64::from(arg) * 200);
                c.tick(now);
            }
            3 => c.node_returned_with_new_incarnation(node),
            4 => c.cancel(node),
            _ => {
                let r = FenceResult {
                    device: "p".into(),
                    action: FenceAction::Off,
                    target: Some(node.into()),
                    outcome: Outcome::Success,
                    stdout: String::new(),
                    duration_ms: 0,
                };
                // A success with an id never issued.
                c.device_result(u64::MAX - u64::from(arg), r, now);
            }
        }
        while let Some(cmd) = c.poll_command() {
            if let Command::RunDevice { id, target, .. } = cmd {
                pending.push((id, target));
            }
        }
        assert!(c.validate().is_ok());
        for n in NODES {
            assert!(!matches!(
                c.state(n),
                FenceState::FencedOk | FenceState::ConfirmedByOperator
            ));
        }
    }
});
