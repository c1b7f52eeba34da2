//! Drives two membership cores with an operation sequence decoded from the fuzzer's
//! bytes (advance time, deliver/drop/duplicate/corrupt packets, send messages, link
//! hints, restart). The cores must never panic and `validate()` must hold after every
//! operation.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tandem_membership::{
    LinkConfig, Membership, MembershipConfig, NodeConfig, PacketKey, RetransmitConfig,
};

fn config(local: u32) -> MembershipConfig {
    let keepalive = Duration::from_millis(100);
    MembershipConfig {
        cluster_id: 1,
        local_node: local,
        nodes: vec![
            NodeConfig { id: 1, name: "a".into() },
            NodeConfig { id: 2, name: "b".into() },
        ],
        links: vec![
            LinkConfig { id: 0, name: "l0".into() },
            LinkConfig { id: 1, name: "l1".into() },
        ],
        keepalive,
        deadtime: Duration::from_millis(500),
        warntime: Duration::from_millis(250),
        initdead: Duration::from_millis(1000),
        key: PacketKey::from_bytes([1; 32]),
        config_digest: [0; 32],
        retransmit: RetransmitConfig::for_keepalive(keepalive),
    }
}

fuzz_target!(|data: &[u8]| {
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let mut now = t0;
    let mut cores = [
        Membership::new(config(1), 1, t0).unwrap(),
        Membership::new(config(2), 1, t0).unwrap(),
    ];
    let mut incarnations = [1u64, 1];
    let mut in_flight: Vec<(usize, u16, Vec<u8>)> = Vec::new();
    for op in data.chunks(2) {
        let (code, arg) = (op[0], *op.get(1).unwrap_or(&0));
        let who = (code & 1) as usize;
        match code >> 1 & 7 {
            0 => now += Duration::from_millis(arg as u64 * 4),
            1 => cores[who].handle_timeout(now),
            2 if !in_flight.is_empty() => {
                let (to, link, bytes) = in_flight.remove(arg as usize % in_flight.len());
                cores[to].handle_packet(link, &bytes, now);
            }
            3 if !in_flight.is_empty() => {
                let i = arg as usize % in_flight.len();
                let (to, link, mut bytes) = in_flight[i].clone();
                if let Some(b) = bytes.get_mut(arg as usize % 97) {
                    *b ^= code;
                }
                cores[to].handle_packet(link, &bytes, now);
            }
            4 => {
                let _ = cores[who].send_message((1 - who) as u32 + 1, vec![arg; arg as usize], now);
            }
            5 => cores[who].link_down((arg & 1) as u16, now),
            6 => cores[who].link_up((arg & 1) as u16, now),
            7 => {
                incarnations[who] += 1;
                cores[who] = Membership::new(config(who as u32 + 1), incarnations[who], now).unwrap();
            }
            _ => {}
        }
        for (i, c) in cores.iter_mut().enumerate() {
            while let Some(t) = c.poll_transmit() {
                if in_flight.len() < 256 {
                    in_flight.push((1 - i, t.link, t.bytes));
                }
            }
            while c.poll_event().is_some() {}
            c.validate().unwrap();
        }
    }
});
