//! Whatever the peer sends — well-formed messages about groups, resources, disks and
//! nodes this node does not know, absurd times and ids, fence records that do not
//! decode, or bytes that are no message at all — the controller never panics, drops
//! and counts what does not decode, keeps its state bounded, and still answers
//! `tandem status`. (Cluster messages are authenticated by membership, so this is about
//! a peer of another version or a bug, not an attacker; the fuzz target
//! `crates/controller/fuzz` runs the same with libFuzzer.)

mod harness;

use std::time::Duration;

use harness::*;
use proptest::prelude::*;
use tandem_controller::controller::REQUESTS_KEPT;
use tandem_controller::messages::Reported;
use tandem_controller::{Input, Operator, PeerMessage};
use tandem_membership::Event;
use tandem_policy::{RequestKind, Scope};

#[derive(Debug, Clone)]
enum Step {
    Says(PeerMessage),
    Garbage(Vec<u8>),
    Tick(u64),
    Standby,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("g".to_string()),
        Just("ip".to_string()),
        Just("svc".to_string()),
        Just("a".to_string()),
        Just("b".to_string()),
        "[a-z0-9]{0,12}",
        "\\PC{0,40}",
    ]
}

fn reported() -> impl Strategy<Value = Reported> {
    let state = prop_oneof![
        Just("started".to_string()),
        Just("stopped".to_string()),
        Just("failed-stop".to_string()),
        Just("starting".to_string()),
        "[a-z-]{0,16}",
    ];
    (state, "[smtx ]{0,8}").prop_map(|(state, failures)| Reported { state, failures })
}

fn kind() -> impl Strategy<Value = RequestKind> {
    prop_oneof![Just(RequestKind::Standby), Just(RequestKind::Takeover)]
}

fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![Just(Scope::All), Just(Scope::Local), Just(Scope::Foreign)]
}

fn message() -> impl Strategy<Value = PeerMessage> {
    prop_oneof![
        (
            name(),
            prop::collection::btree_map(name(), reported(), 0..4)
        )
            .prop_map(|(group, resources)| PeerMessage::Report { group, resources }),
        Just(PeerMessage::AskReport),
        name().prop_map(|group| PeerMessage::Released { group }),
        (name(), any::<u64>()).prop_map(|(group, id)| PeerMessage::Claim { group, id }),
        (name(), any::<u64>(), any::<bool>())
            .prop_map(|(group, id, granted)| { PeerMessage::ClaimAnswer { group, id, granted } }),
        "\\PC{0,60}".prop_map(|reason| PeerMessage::FenceMe { reason }),
        (name(), kind(), scope(), any::<u64>()).prop_map(|(node, kind, scope, at_ms)| {
            PeerMessage::Request {
                node,
                kind,
                scope,
                at_ms,
            }
        }),
        (any::<bool>(), any::<u64>())
            .prop_map(|(on, at_ms)| PeerMessage::Maintenance { on, at_ms }),
        "\\PC{0,80}".prop_map(|record| PeerMessage::Fence { record }),
        any::<bool>().prop_map(|ok| PeerMessage::Ping { ok }),
        Just(PeerMessage::Goodbye),
        (name(), any::<u64>()).prop_map(|(disk, request)| PeerMessage::Outdate { disk, request }),
        (name(), any::<u64>(), prop::option::of("\\PC{0,40}")).prop_map(
            |(disk, request, error)| PeerMessage::Outdated {
                disk,
                request,
                error,
            }
        ),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => message().prop_map(Step::Says),
        2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Step::Garbage),
        2 => (1u64..3_000).prop_map(Step::Tick),
        1 => Just(Step::Standby),
    ]
}

/// Runs `steps` against node `local` with the peer up; returns how many payloads did
/// not decode.
fn run(local: &str, steps: &[Step]) -> (Shell, u64) {
    let mut s = Shell::on(local, CONFIG);
    s.peer_up();
    let mut undecodable = 0;
    for step in steps {
        match step {
            Step::Says(m) => {
                s.peer_says(m.clone());
            }
            Step::Garbage(bytes) => {
                if PeerMessage::decode(bytes).is_none() {
                    undecodable += 1;
                }
                s.feed(Input::Membership(Event::Message {
                    from: s.peer_id,
                    payload: bytes.clone(),
                }));
            }
            Step::Tick(ms) => {
                s.advance(Duration::from_millis(*ms));
            }
            Step::Standby => {
                let now = s.now;
                let _ =
                    s.c.operator(now, Operator::Request(RequestKind::Standby, Scope::All));
                s.drain();
            }
        }
    }
    (s, undecodable)
}

fn fence_records_that_do_not_decode(steps: &[Step]) -> u64 {
    steps
        .iter()
        .filter(|s| matches!(s, Step::Says(PeerMessage::Fence { record }) if tandem_fencing::FenceRecord::from_json(record.as_bytes()).is_err()))
        .count() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn whatever_the_peer_sends_the_controller_stays_whole(
        local in prop_oneof![Just("a"), Just("b")],
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let (s, undecodable) = run(local, &steps);
        let status = s.c.status();
        // Only configured groups are shown, requests stay bounded.
        prop_assert_eq!(status["groups"].as_array().map(Vec::len), Some(1));
        let requests = status["requests"].as_array().map_or(0, Vec::len);
        prop_assert!(requests <= REQUESTS_KEPT, "{} requests kept", requests);
        // Every payload that is no message, and every fence record inside one that does
        // not decode, is counted.
        let dropped = status["counters"]["dropped_messages"]["peer"].as_u64();
        prop_assert_eq!(dropped, Some(undecodable + fence_records_that_do_not_decode(&steps)));
    }
}

#[test]
fn a_payload_that_is_no_message_is_dropped_and_counted() {
    let mut s = Shell::new(CONFIG);
    s.idle_cluster();
    let before = s.c.status();
    for garbage in [
        &b""[..],
        b"{",
        b"\xff\xfe",
        b"{\"m\":\"report\",\"group\":7}",
    ] {
        let cmds = s.feed(Input::Membership(Event::Message {
            from: s.peer_id,
            payload: garbage.to_vec(),
        }));
        assert!(
            runs(&cmds).is_empty(),
            "a malformed message made the node act: {cmds:?}"
        );
    }
    let after = s.c.status();
    assert_eq!(after["counters"]["dropped_messages"]["peer"], 4);
    assert_eq!(after["groups"], before["groups"]);
    // A well-formed message changes nothing in the count.
    s.peer_says(PeerMessage::Ping { ok: true });
    assert_eq!(s.c.status()["counters"]["dropped_messages"]["peer"], 4);
}
