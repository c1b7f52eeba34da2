use super::*;

/// Tests need one real `Instant` as time zero; every later time is derived from it.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

const TIE: Duration = Duration::from_secs(2);

fn arbiter(stored: Option<Grant>) -> (Arbiter, Instant) {
    let now = t0();
    let mut a = Arbiter::new(["ox1".into(), "ox2".into()], TIE, stored);
    a.node_up("ox1", 11, now);
    a.node_up("ox2", 22, now);
    (a, now)
}

fn ask(a: &mut Arbiter, from: &str, holds_groups: bool, request: u64, now: Instant) {
    let peer = if from == "ox1" { "ox2" } else { "ox1" };
    a.message(
        from,
        WitnessMessage::VoteRequest {
            peer: peer.into(),
            holds_groups,
            request,
        },
        now,
    );
}

/// The answers sent, as (node, request, granted); checks that every grant was
/// persisted before the answer that carries it.
fn answers(a: &mut Arbiter) -> Vec<(String, u64, bool)> {
    let mut out = Vec::new();
    let mut persisted: Option<Option<Grant>> = None;
    while let Some(c) = a.poll_command() {
        match c {
            ArbiterCommand::Persist(g) => persisted = Some(g),
            ArbiterCommand::Send {
                to,
                message:
                    WitnessMessage::VoteAnswer {
                        request, granted, ..
                    },
            } => {
                if granted {
                    let g = persisted.clone().flatten().or(a.grant().cloned());
                    assert!(
                        g.is_some_and(|g| g.winner == to),
                        "grant to {to} answered before it was persisted"
                    );
                }
                out.push((to, request, granted));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[test]
fn a_node_that_lost_a_peer_the_witness_no_longer_hears_gets_the_vote_at_once() {
    let (mut a, now) = arbiter(None);
    a.node_dead("ox1", now);
    ask(&mut a, "ox2", false, 1, now);
    assert_eq!(answers(&mut a), vec![("ox2".into(), 1, true)]);
    let g = a.grant().unwrap();
    assert_eq!(
        (g.winner.as_str(), g.loser.as_str(), g.loser_incarnation),
        ("ox2", "ox1", 11)
    );
}

#[test]
fn one_grant_per_loss_of_contact_and_the_winner_may_ask_again() {
    let (mut a, now) = arbiter(None);
    a.node_dead("ox1", now);
    ask(&mut a, "ox2", false, 1, now);
    answers(&mut a);
    // ox1 is heard again with the same incarnation (a partition, not a reboot) and asks.
    a.node_up("ox1", 11, now);
    ask(&mut a, "ox1", true, 5, now);
    assert_eq!(answers(&mut a), vec![("ox1".into(), 5, false)]);
    // The winner's answer was lost: it asks again and is granted again.
    ask(&mut a, "ox2", false, 2, now);
    assert_eq!(answers(&mut a), vec![("ox2".into(), 2, true)]);
}

#[test]
fn cut_from_each_other_only_the_node_holding_groups_wins() {
    let (mut a, now) = arbiter(None);
    // The passive node asks first: it waits, as the serving node may ask too.
    ask(&mut a, "ox2", false, 1, now);
    assert!(answers(&mut a).is_empty());
    ask(&mut a, "ox1", true, 9, now);
    let mut got = answers(&mut a);
    got.sort();
    assert_eq!(got, vec![("ox1".into(), 9, true), ("ox2".into(), 1, false)]);
}

#[test]
fn a_requester_holding_groups_wins_at_once_and_the_other_is_refused_later() {
    let (mut a, now) = arbiter(None);
    ask(&mut a, "ox1", true, 3, now);
    assert_eq!(answers(&mut a), vec![("ox1".into(), 3, true)]);
    ask(&mut a, "ox2", false, 4, now);
    assert_eq!(answers(&mut a), vec![("ox2".into(), 4, false)]);
}

#[test]
fn a_tie_goes_to_the_node_listed_first() {
    let (mut a, now) = arbiter(None);
    ask(&mut a, "ox2", false, 1, now);
    ask(&mut a, "ox1", false, 2, now);
    let mut got = answers(&mut a);
    got.sort();
    assert_eq!(got, vec![("ox1".into(), 2, true), ("ox2".into(), 1, false)]);
}

#[test]
fn a_lone_asker_the_peer_of_which_is_still_heard_is_refused_after_the_tie_wait() {
    let (mut a, now) = arbiter(None);
    ask(&mut a, "ox2", false, 1, now);
    assert_eq!(a.poll_timeout(), Some(now + TIE));
    a.tick(now + TIE / 2);
    assert!(answers(&mut a).is_empty());
    a.tick(now + TIE);
    assert_eq!(answers(&mut a), vec![("ox2".into(), 1, false)]);
    assert!(a.grant().is_none(), "a refusal grants nothing");
    // The peer then dies for the witness too: the next request is granted.
    a.node_dead("ox1", now + TIE);
    ask(&mut a, "ox2", false, 2, now + TIE);
    assert_eq!(answers(&mut a), vec![("ox2".into(), 2, true)]);
}

#[test]
fn a_waiting_request_is_granted_when_the_peer_dies_for_the_witness_too() {
    let (mut a, now) = arbiter(None);
    ask(&mut a, "ox2", false, 1, now);
    a.node_dead("ox1", now + TIE / 4);
    assert_eq!(answers(&mut a), vec![("ox2".into(), 1, true)]);
}

#[test]
fn a_grant_ends_with_the_winners_release_or_the_losers_reboot() {
    let (mut a, now) = arbiter(None);
    a.node_dead("ox1", now);
    ask(&mut a, "ox2", false, 1, now);
    answers(&mut a);
    // Only the winner can release it.
    a.message("ox1", WitnessMessage::Release { peer: "ox2".into() }, now);
    assert!(a.grant().is_some());
    a.message("ox2", WitnessMessage::Release { peer: "ox1".into() }, now);
    assert!(a.grant().is_none());
    assert_eq!(a.poll_command(), Some(ArbiterCommand::Persist(None)));

    a.node_dead("ox1", now);
    ask(&mut a, "ox2", false, 2, now);
    answers(&mut a);
    a.node_up("ox1", 12, now);
    assert!(
        a.grant().is_none(),
        "the loser rebooted: that loss of contact is over"
    );
}

#[test]
fn a_restarted_witness_keeps_its_grant() {
    let (mut a, now) = arbiter(None);
    a.node_dead("ox1", now);
    ask(&mut a, "ox2", false, 1, now);
    answers(&mut a);
    let stored = Grant::decode(&a.grant().unwrap().encode()).unwrap();
    // The witness restarts; it hears ox1 first (the partition healed on its side).
    let (mut b, now) = arbiter(Some(stored));
    ask(&mut b, "ox1", true, 8, now);
    assert_eq!(answers(&mut b), vec![("ox1".into(), 8, false)]);
    ask(&mut b, "ox2", false, 3, now);
    assert_eq!(answers(&mut b), vec![("ox2".into(), 3, true)]);
}

#[test]
fn requests_from_strangers_or_about_oneself_change_nothing() {
    let (mut a, now) = arbiter(None);
    a.node_dead("ox1", now);
    a.message(
        "mallory",
        WitnessMessage::VoteRequest {
            peer: "ox1".into(),
            holds_groups: true,
            request: 1,
        },
        now,
    );
    a.message(
        "ox2",
        WitnessMessage::VoteRequest {
            peer: "ox2".into(),
            holds_groups: true,
            request: 2,
        },
        now,
    );
    assert_eq!(answers(&mut a), vec![("ox2".into(), 2, false)]);
    assert!(a.grant().is_none());
}

#[test]
fn a_stored_grant_that_cannot_be_read_is_an_error() {
    assert!(Grant::decode(b"").is_err());
    assert!(Grant::decode(b"{\"winner\":\"ox1\"}").is_err());
    assert!(Grant::decode(&vec![b' '; 5000]).is_err());
    // A grant naming no node, or one no message could carry (found by the fuzz target:
    // serde reads a struct from an array too, so a short stored form could hold a name
    // that made the grant's own encoding longer than any grant).
    let long = "x".repeat(2000);
    for (winner, loser) in [("", "ox2"), ("ox1", long.as_str())] {
        let stored = format!(
            r#"{{"winner":"{winner}","loser":"{loser}","loser_incarnation":1,"granted_unix_ms":1}}"#
        );
        assert!(Grant::decode(stored.as_bytes()).is_err(), "{stored}");
    }
}
