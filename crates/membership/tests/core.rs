//! Scenario tests of the membership core, driven by hand (the simulator in `tandem-sim`
//! covers the randomized cases).

use std::time::{Duration, Instant};

use tandem_membership::{
    ConfigError, DropReason, Event, FailReason, LinkConfig, Membership, MembershipConfig,
    NodeConfig, NodeState, PacketKey, RetransmitConfig, SendError, Transmit, Verdict,
};

const KEEPALIVE: Duration = Duration::from_millis(100);
const DEADTIME: Duration = Duration::from_millis(500);
const WARNTIME: Duration = Duration::from_millis(250);
const INITDEAD: Duration = Duration::from_millis(1000);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(local: u32) -> MembershipConfig {
    MembershipConfig {
        cluster_id: 0xC0FFEE,
        local_node: local,
        nodes: vec![
            NodeConfig {
                id: 1,
                name: "ox1".into(),
            },
            NodeConfig {
                id: 2,
                name: "ox2".into(),
            },
        ],
        links: vec![
            LinkConfig {
                id: 0,
                name: "eth1".into(),
            },
            LinkConfig {
                id: 1,
                name: "ttyS0".into(),
            },
        ],
        keepalive: KEEPALIVE,
        deadtime: DEADTIME,
        warntime: WARNTIME,
        initdead: INITDEAD,
        key: PacketKey::from_bytes([3; 32]),
        config_digest: [1; 32],
        retransmit: RetransmitConfig::for_keepalive(KEEPALIVE),
    }
}

/// Two cores and a hand-driven network: `step` moves time, fires due timers and
/// delivers what was sent on the links that are not cut.
struct Pair {
    t0: Instant,
    now: Duration,
    a: Membership,
    b: Membership,
    cut: [bool; 2],
    events_a: Vec<Event>,
    events_b: Vec<Event>,
    /// Every packet a sent, for replay tests.
    sent_by_a: Vec<Transmit>,
}

impl Pair {
    fn new() -> Self {
        #[allow(clippy::disallowed_methods)] // a test's origin of time; only offsets matter
        let t0 = Instant::now();
        Pair {
            t0,
            now: Duration::ZERO,
            a: Membership::new(config(1), 7, t0).unwrap(),
            b: Membership::new(config(2), 9, t0).unwrap(),
            cut: [false; 2],
            events_a: vec![],
            events_b: vec![],
            sent_by_a: vec![],
        }
    }

    fn at(&self) -> Instant {
        self.t0 + self.now
    }

    /// Exchanges packets until quiet (zero network delay).
    fn flush(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                self.sent_by_a.push(t.clone());
                if !self.cut[t.link as usize] {
                    self.b.handle_packet(t.link, &t.bytes, self.t0 + self.now);
                }
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                if !self.cut[t.link as usize] {
                    self.a.handle_packet(t.link, &t.bytes, self.t0 + self.now);
                }
            }
            if !moved {
                break;
            }
        }
        while let Some(e) = self.a.poll_event() {
            self.events_a.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.events_b.push(e);
        }
        self.a.validate().unwrap();
        self.b.validate().unwrap();
    }

    /// Runs for `d`, firing each core's timers exactly when due.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        self.flush();
        loop {
            let next = [
                self.a.poll_timeout().unwrap(),
                self.b.poll_timeout().unwrap(),
            ]
            .into_iter()
            .min()
            .unwrap()
                - self.t0;
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.at();
            if self.a.poll_timeout().unwrap() <= now {
                self.a.handle_timeout(now);
            }
            if self.b.poll_timeout().unwrap() <= now {
                self.b.handle_timeout(now);
            }
            self.flush();
        }
        self.now = end;
    }
}

fn find(events: &[Event], f: impl Fn(&Event) -> bool) -> Option<&Event> {
    events.iter().find(|e| f(e))
}

#[test]
fn nodes_come_up_on_both_links() {
    let mut p = Pair::new();
    p.run(ms(50));
    assert!(p.events_a.contains(&Event::NodeUp {
        node: 2,
        incarnation: 9
    }));
    assert!(p.events_a.contains(&Event::LinkUp { node: 2, link: 0 }));
    assert!(p.events_a.contains(&Event::LinkUp { node: 2, link: 1 }));
    assert!(p.events_b.contains(&Event::NodeUp {
        node: 1,
        incarnation: 7
    }));
    let json = serde_json::to_value(p.a.status(p.at())).unwrap();
    assert_eq!(json["nodes"][1]["name"], "ox2");
    assert_eq!(json["nodes"][1]["state"], "up");
    assert_eq!(json["nodes"][1]["incarnation"], 9);
    assert_eq!(json["nodes"][1]["links"][1]["name"], "ttyS0");
    assert_eq!(json["nodes"][1]["links"][1]["up"], true);
    assert_eq!(json["links"][0]["drops"]["bad_mac"], 0);
    assert_eq!(json["nodes"][1]["config_matches"], true);
}

#[test]
fn silence_on_every_link_declares_dead_exactly_at_deadtime() {
    let mut p = Pair::new();
    p.run(ms(1000));
    // The last packet from b arrives at 1000 ms (heartbeats go at 0, 100, ... ms).
    p.cut = [true, true];
    let cut_at = p.now;
    p.run(ms(2000));
    let dead_at = p
        .events_a
        .iter()
        .position(|e| matches!(e, Event::NodeDead { node: 2, .. }))
        .expect("b declared dead");
    // Each link went down before the node did.
    let link_downs = p.events_a[..dead_at]
        .iter()
        .filter(|e| matches!(e, Event::LinkDown { node: 2, .. }))
        .count();
    assert_eq!(link_downs, 2);
    let st = p.a.status(p.at());
    let b = &st.nodes[1];
    assert_eq!(b.state, NodeState::Dead);
    // Heard last at cut_at; declared at cut_at + deadtime; status says how long ago.
    assert_eq!(
        b.last_heard_ms_ago,
        Some((p.now - cut_at).as_millis() as u64)
    );
    assert!(b.links.iter().all(|l| !l.up));
}

#[test]
fn dead_is_declared_at_last_packet_plus_deadtime() {
    let mut p = Pair::new();
    p.run(ms(1000));
    p.cut = [true, true];
    // Step in 10 ms increments to find the verdict time.
    let mut t = Duration::ZERO;
    while !p
        .events_a
        .iter()
        .any(|e| matches!(e, Event::NodeDead { .. }))
    {
        p.run(ms(10));
        t += ms(10);
        assert!(t <= DEADTIME + KEEPALIVE, "not dead after {t:?}");
    }
    assert!(t >= DEADTIME, "declared dead after only {t:?}");
}

#[test]
fn one_link_cut_keeps_node_up_and_shows_link_down() {
    let mut p = Pair::new();
    p.run(ms(500));
    p.cut = [true, false];
    p.run(ms(3000));
    assert!(find(&p.events_a, |e| matches!(e, Event::NodeDead { .. })).is_none());
    assert!(p.events_a.contains(&Event::LinkDown { node: 2, link: 0 }));
    let st = p.a.status(p.at());
    assert_eq!(st.nodes[1].state, NodeState::Up);
    assert!(!st.nodes[1].links[0].up);
    assert!(st.nodes[1].links[1].up);
    p.cut = [false, false];
    p.run(ms(200));
    assert_eq!(
        p.events_a
            .iter()
            .filter(|e| **e == Event::LinkUp { node: 2, link: 0 })
            .count(),
        2
    );
}

#[test]
fn late_heartbeat_is_reported_with_its_gap() {
    let mut p = Pair::new();
    p.run(ms(500));
    p.cut = [true, true];
    p.run(ms(300));
    p.cut = [false, false];
    p.run(ms(100));
    let Some(Event::NodeLate { node: 2, gap }) =
        find(&p.events_a, |e| matches!(e, Event::NodeLate { .. }))
    else {
        panic!("no late event: {:?}", p.events_a);
    };
    assert!(*gap >= WARNTIME && *gap < DEADTIME, "gap {gap:?}");
    assert!(find(&p.events_a, |e| matches!(e, Event::NodeDead { .. })).is_none());
    assert_eq!(p.a.status(p.at()).nodes[1].late_count, 1);
}

#[test]
fn never_heard_node_is_unknown_until_initdead() {
    let mut p = Pair::new();
    p.cut = [true, true];
    p.run(INITDEAD - ms(1));
    assert_eq!(p.a.node_state(2), Some(NodeState::Unknown));
    assert!(p.events_a.is_empty());
    p.run(ms(1));
    assert_eq!(p.a.node_state(2), Some(NodeState::Dead));
    assert_eq!(
        p.events_a,
        vec![Event::NodeDead {
            node: 2,
            incarnation: None
        }]
    );
    // Heard later: a plain join, not a return from a partition.
    p.cut = [false, false];
    p.run(ms(100));
    assert!(p.events_a.contains(&Event::NodeUp {
        node: 2,
        incarnation: 9
    }));
    assert!(
        find(&p.events_a, |e| matches!(
            e,
            Event::NodeReturnedAfterPartition { .. }
        ))
        .is_none()
    );
}

#[test]
fn heal_after_dead_with_same_incarnation_is_returned_after_partition() {
    let mut p = Pair::new();
    p.run(ms(300));
    p.cut = [true, true];
    p.run(ms(1000));
    assert_eq!(p.a.node_state(2), Some(NodeState::Dead));
    p.events_a.clear();
    p.cut = [false, false];
    p.run(ms(100));
    let i = p
        .events_a
        .iter()
        .position(|e| {
            *e == Event::NodeReturnedAfterPartition {
                node: 2,
                incarnation: 9,
            }
        })
        .expect("returned event");
    assert_eq!(
        p.events_a[i + 1],
        Event::NodeUp {
            node: 2,
            incarnation: 9
        }
    );
}

#[test]
fn new_incarnation_is_restart_even_without_dead() {
    let mut p = Pair::new();
    p.run(ms(300));
    // b restarts quickly, well within deadtime.
    p.b = Membership::new(config(2), 10, p.at()).unwrap();
    p.run(ms(100));
    assert!(p.events_a.contains(&Event::NodeRestarted {
        node: 2,
        incarnation: 10,
        previous: 9
    }));
    assert!(find(&p.events_a, |e| matches!(e, Event::NodeDead { .. })).is_none());
}

#[test]
fn forged_replayed_and_foreign_packets_are_dropped_and_counted() {
    let mut p = Pair::new();
    p.run(ms(300));
    let t = p.sent_by_a.last().unwrap().clone();
    let now = p.at();
    let before = p.b.status(now).nodes[0].links.clone();
    // Replay of a packet b already accepted.
    assert_eq!(
        p.b.handle_packet(t.link, &t.bytes, now),
        Verdict::Dropped(DropReason::Replay)
    );
    // Same packet moved to the other link.
    let other = 1 - t.link;
    assert_eq!(
        p.b.handle_packet(other, &t.bytes, now),
        Verdict::Dropped(DropReason::WrongLink)
    );
    // Other key, other cluster, unknown node, b's own packet.
    let mut forger_cfg = config(1);
    forger_cfg.key = PacketKey::from_bytes([4; 32]);
    let mut forger = Membership::new(forger_cfg, 7, now).unwrap();
    forger.handle_timeout(now);
    let f = forger.poll_transmit().unwrap();
    assert_eq!(
        p.b.handle_packet(f.link, &f.bytes, now),
        Verdict::Dropped(DropReason::BadMac)
    );
    let mut other_cluster = config(1);
    other_cluster.cluster_id = 1;
    let mut oc = Membership::new(other_cluster, 7, now).unwrap();
    oc.handle_timeout(now);
    let f = oc.poll_transmit().unwrap();
    assert_eq!(
        p.b.handle_packet(f.link, &f.bytes, now),
        Verdict::Dropped(DropReason::OtherCluster)
    );
    let mut stranger_cfg = config(3);
    stranger_cfg.nodes.push(NodeConfig {
        id: 3,
        name: "mallory".into(),
    });
    let mut stranger = Membership::new(stranger_cfg, 1, now).unwrap();
    stranger.handle_timeout(now);
    let f = stranger.poll_transmit().unwrap();
    assert_eq!(
        p.b.handle_packet(f.link, &f.bytes, now),
        Verdict::Dropped(DropReason::UnknownNode)
    );
    p.b.handle_timeout(p.b.poll_timeout().unwrap());
    let own = p.b.poll_transmit().unwrap();
    assert_eq!(
        p.b.handle_packet(own.link, &own.bytes, now),
        Verdict::Dropped(DropReason::OwnPacket)
    );
    // Truncated, oversized, garbage.
    assert_eq!(
        p.b.handle_packet(0, &t.bytes[..t.bytes.len() - 1], now),
        Verdict::Dropped(DropReason::Truncated)
    );
    assert_eq!(
        p.b.handle_packet(0, &[0u8; 2000], now),
        Verdict::Dropped(DropReason::Oversized)
    );
    assert_eq!(
        p.b.handle_packet(0, b"hello", now),
        Verdict::Dropped(DropReason::Malformed)
    );
    let st = p.b.status(now);
    let drops = |l: usize, r: DropReason| st.links[l].drops.get(r);
    assert_eq!(drops(t.link as usize, DropReason::Replay), 1);
    assert_eq!(drops(other as usize, DropReason::WrongLink), 1);
    assert_eq!(drops(0, DropReason::BadMac), 1);
    assert_eq!(drops(0, DropReason::OtherCluster), 1);
    assert_eq!(drops(0, DropReason::UnknownNode), 1);
    assert_eq!(drops(0, DropReason::Truncated), 1);
    assert_eq!(drops(0, DropReason::Oversized), 1);
    // None of that counted as a sign of life from ox1.
    let after = &st.nodes[0].links;
    for (x, y) in before.iter().zip(after) {
        assert_eq!(x.packets, y.packets);
    }
}

#[test]
fn old_incarnation_is_dropped_after_restart() {
    let mut p = Pair::new();
    p.run(ms(300));
    let old = p.sent_by_a.last().unwrap().clone();
    p.a = Membership::new(config(1), 8, p.at()).unwrap();
    p.run(ms(100));
    assert!(p.events_b.contains(&Event::NodeRestarted {
        node: 1,
        incarnation: 8,
        previous: 7
    }));
    assert_eq!(
        p.b.handle_packet(old.link, &old.bytes, p.at()),
        Verdict::Dropped(DropReason::OldIncarnation)
    );
}

#[test]
fn random_bytes_change_nothing() {
    let mut p = Pair::new();
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let now = p.at();
    let real = {
        p.a.handle_timeout(now);
        p.a.poll_transmit().unwrap().bytes
    };
    for i in 0..50_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            (0..next() % 200).map(|_| next() as u8).collect()
        } else {
            let mut b = real.clone();
            let at = next() as usize % b.len();
            b[at] ^= 1 + (next() % 255) as u8;
            b
        };
        assert!(matches!(
            p.b.handle_packet((next() % 2) as u16, &bytes, now),
            Verdict::Dropped(_)
        ));
    }
    assert_eq!(p.b.node_state(1), Some(NodeState::Unknown));
    assert!(p.b.poll_event().is_none());
    p.b.validate().unwrap();
}

#[test]
fn message_over_two_links_is_delivered_once_and_acked() {
    let mut p = Pair::new();
    p.run(ms(50));
    let id = p.a.send_message(2, b"standby".to_vec(), p.at()).unwrap();
    p.flush();
    let delivered: Vec<_> = p
        .events_b
        .iter()
        .filter(|e| matches!(e, Event::Message { .. }))
        .collect();
    assert_eq!(
        delivered,
        vec![&Event::Message {
            from: 1,
            payload: b"standby".to_vec()
        }]
    );
    assert!(p.events_a.contains(&Event::MessageAcked { to: 2, id }));
    // The second copy was a duplicate at the message layer, not a packet drop.
    let st = p.b.status(p.at());
    assert_eq!(st.links.iter().map(|l| l.drops.total()).sum::<u64>(), 0);
}

#[test]
fn messages_queued_before_first_contact_are_sent_on_node_up() {
    let mut p = Pair::new();
    let now = p.at();
    for i in 0..5u8 {
        p.a.send_message(2, vec![i], now).unwrap();
    }
    p.run(ms(200));
    let got: Vec<_> = p
        .events_b
        .iter()
        .filter_map(|e| match e {
            Event::Message { payload, .. } => Some(payload[0]),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}

#[test]
fn lost_message_is_retransmitted_and_unacked_one_fails() {
    let mut p = Pair::new();
    p.run(ms(50));
    p.cut = [true, true];
    let id =
        p.a.send_message(2, b"fence result".to_vec(), p.at())
            .unwrap();
    p.run(ms(150));
    p.cut = [false, false];
    p.run(ms(400));
    assert_eq!(
        p.events_b
            .iter()
            .filter(|e| matches!(e, Event::Message { .. }))
            .count(),
        1
    );
    assert!(p.events_a.contains(&Event::MessageAcked { to: 2, id }));
    // Now cut for good: the next message fails when b is declared dead.
    p.cut = [true, true];
    let id2 = p.a.send_message(2, b"again".to_vec(), p.at()).unwrap();
    p.run(ms(2000));
    assert!(p.events_a.contains(&Event::MessageFailed {
        to: 2,
        id: id2,
        reason: FailReason::NodeDead
    }));
    assert_eq!(
        p.a.send_message(2, b"x".to_vec(), p.at()),
        Err(SendError::NodeDead(2))
    );
}

#[test]
fn retransmit_limit_abandons_stream_and_next_epoch_works() {
    let mut p = Pair::new();
    p.run(ms(50));
    // Drop only messages from a to b (heartbeats still flow, so b stays up).
    let now = p.at();
    let id = p.a.send_message(2, b"lost".to_vec(), now).unwrap();
    let mut t = now;
    let mut fails = vec![];
    // Backoff 50, 100, 200, then 400 ms (capped): ten transmissions take about 2.8 s.
    for _ in 0..1000 {
        t += ms(5);
        p.a.handle_timeout(t);
        p.b.handle_timeout(t);
        while let Some(x) = p.a.poll_transmit() {
            if x.bytes[5] != 2 {
                p.b.handle_packet(x.link, &x.bytes, t);
            }
        }
        while let Some(x) = p.b.poll_transmit() {
            p.a.handle_packet(x.link, &x.bytes, t);
        }
        while let Some(e) = p.a.poll_event() {
            if let Event::MessageFailed { .. } = e {
                fails.push(e);
            }
        }
        p.a.validate().unwrap();
    }
    assert_eq!(
        fails,
        vec![Event::MessageFailed {
            to: 2,
            id,
            reason: FailReason::RetransmitLimit
        }]
    );
    assert_eq!(p.a.node_state(2), Some(NodeState::Up));
    p.now = t - p.t0;
    p.events_b.clear();
    p.a.send_message(2, b"next".to_vec(), p.at()).unwrap();
    p.flush();
    assert!(p.events_b.contains(&Event::Message {
        from: 1,
        payload: b"next".to_vec()
    }));
}

#[test]
fn link_down_hint_stops_sending_on_it() {
    let mut p = Pair::new();
    p.run(ms(200));
    p.a.link_down(1, p.at());
    p.flush();
    assert!(p.events_a.contains(&Event::LinkDown { node: 2, link: 1 }));
    p.sent_by_a.clear();
    p.run(ms(300));
    assert!(p.sent_by_a.iter().all(|t| t.link == 0));
    p.a.link_up(1, p.at());
    p.flush();
    assert!(p.sent_by_a.iter().any(|t| t.link == 1));
}

#[test]
fn time_going_backwards_is_treated_as_standing_still() {
    let mut p = Pair::new();
    p.run(ms(300));
    let now = p.at();
    p.a.handle_timeout(now - ms(200));
    p.a.validate().unwrap();
    assert_eq!(p.a.node_state(2), Some(NodeState::Up));
}

#[test]
fn bad_configurations_are_refused() {
    let t0 = {
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    };
    let mut c = config(1);
    c.deadtime = KEEPALIVE * 2;
    assert!(matches!(
        Membership::new(c, 1, t0),
        Err(ConfigError::DeadtimeTooShort { .. })
    ));
    let mut c = config(1);
    c.initdead = DEADTIME - ms(1);
    assert!(matches!(
        Membership::new(c, 1, t0),
        Err(ConfigError::InitdeadTooShort { .. })
    ));
    let mut c = config(1);
    c.warntime = DEADTIME;
    assert!(matches!(
        Membership::new(c, 1, t0),
        Err(ConfigError::BadWarntime { .. })
    ));
    let c = config(5);
    assert!(matches!(
        Membership::new(c, 1, t0),
        Err(ConfigError::LocalNodeMissing(5))
    ));
    assert!(matches!(
        Membership::new(config(1), 0, t0),
        Err(ConfigError::ZeroIncarnation)
    ));
    let mut c = config(1);
    c.links[1].id = 0;
    assert!(matches!(
        Membership::new(c, 1, t0),
        Err(ConfigError::DuplicateLink(0))
    ));
}

#[test]
fn status_shows_what_the_peer_hears_of_us() {
    let mut p = Pair::new();
    p.run(ms(300));
    let st = p.a.status(p.at());
    assert_eq!(st.nodes[1].hears_us, Some(true));
    assert!(st.nodes[1].links.iter().all(|l| l.hears_us == Some(true)));
    // a stops sending on link 1: after deadtime b no longer hears a there, and says so.
    p.a.link_down(1, p.at());
    p.run(DEADTIME + KEEPALIVE * 2);
    let st = p.a.status(p.at());
    assert_eq!(st.nodes[1].hears_us, Some(true));
    assert_eq!(st.nodes[1].links[0].hears_us, Some(true));
    assert_eq!(st.nodes[1].links[1].hears_us, Some(false));
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["nodes"][1]["links"][1]["hears_us"], false);
}
