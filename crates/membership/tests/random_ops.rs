//! The `core_ops` fuzz target's operation sequences, drawn from a seeded generator so
//! CI exercises them without a nightly toolchain: two cores, time moving in steps,
//! packets delivered, dropped, duplicated, reordered or corrupted, messages, link hints
//! and restarts. Nothing may panic and `validate()` must hold after every operation.

use std::time::{Duration, Instant};

use tandem_membership::{
    LinkConfig, Membership, MembershipConfig, NodeConfig, PacketKey, RetransmitConfig,
};

fn config(local: u32) -> MembershipConfig {
    let keepalive = Duration::from_millis(100);
    MembershipConfig {
        cluster_id: 1,
        local_node: local,
        nodes: vec![
            NodeConfig {
                id: 1,
                name: "a".into(),
            },
            NodeConfig {
                id: 2,
                name: "b".into(),
            },
        ],
        links: vec![
            LinkConfig {
                id: 0,
                name: "l0".into(),
            },
            LinkConfig {
                id: 1,
                name: "l1".into(),
            },
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

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
fn random_operation_sequences_keep_cores_valid() {
    #[allow(clippy::disallowed_methods)] // origin of the test's time; only offsets matter
    let t0 = Instant::now();
    for seed in 1..=300u64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut now = t0;
        let mut incarnations = [1u64, 1];
        let mut cores = [
            Membership::new(config(1), 1, t0).unwrap(),
            Membership::new(config(2), 1, t0).unwrap(),
        ];
        let mut in_flight: Vec<(usize, u16, Vec<u8>)> = Vec::new();
        for step in 0..600 {
            let who = (next(&mut s) % 2) as usize;
            let arg = next(&mut s);
            match next(&mut s) % 10 {
                0 | 1 => now += Duration::from_millis(arg % 400),
                2 => cores[who].handle_timeout(now),
                3..=5 if !in_flight.is_empty() => {
                    let (to, link, bytes) = in_flight.remove(arg as usize % in_flight.len());
                    cores[to].handle_packet(link, &bytes, now);
                }
                6 if !in_flight.is_empty() => {
                    let (to, link, mut bytes) = in_flight[arg as usize % in_flight.len()].clone();
                    let at = (arg >> 20) as usize % bytes.len();
                    bytes[at] ^= 1 << (arg % 8);
                    cores[to].handle_packet(link ^ (arg >> 40) as u16 & 1, &bytes, now);
                }
                7 => {
                    let len = (arg % 64) as usize;
                    let _ = cores[who].send_message((1 - who) as u32 + 1, vec![7; len], now);
                }
                8 => {
                    if arg % 2 == 0 {
                        cores[who].link_down((arg >> 8) as u16 & 1, now);
                    } else {
                        cores[who].link_up((arg >> 8) as u16 & 1, now);
                    }
                }
                9 if arg % 20 == 0 => {
                    incarnations[who] += 1;
                    cores[who] =
                        Membership::new(config(who as u32 + 1), incarnations[who], now).unwrap();
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
                if let Err(e) = c.validate() {
                    panic!("seed {seed} step {step}: node {} invalid: {e}", i + 1);
                }
            }
        }
    }
}
