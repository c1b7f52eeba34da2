//! Feeds arbitrary payloads to a controller as cluster messages from its peer (one per
//! line; a line starting with `~` lets time pass instead): whatever decodes or not, the
//! controller must never panic, and must still render its status.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tandem_controller::{Controller, Input};
use tandem_membership::Event;

/// The controller tests' cluster: two nodes, one group, no fencing.
const CONFIG: &str = include_str!("../../tests/harness/config.toml");

const PEER: u32 = 2;

fuzz_target!(|data: &[u8]| {
    let (config, _) = tandem_config::Config::parse_str("t.toml", CONFIG).expect("config");
    let mut now = Instant::now();
    let mut c =
        Controller::new(Arc::new(config), "a", PEER, now, 1_000_000, 7).expect("controller");
    c.handle(
        now,
        Input::Membership(Event::NodeUp {
            node: PEER,
            incarnation: 1,
        }),
    );
    for line in data.split(|b| *b == b'\n') {
        if line.first() == Some(&b'~') {
            now += Duration::from_millis(100 * line.len() as u64);
            c.handle(now, Input::Tick);
        } else {
            let payload = line.to_vec();
            c.handle(
                now,
                Input::Membership(Event::Message {
                    from: PEER,
                    payload,
                }),
            );
        }
        while c.poll_command().is_some() {}
    }
    let _ = c.status();
});
