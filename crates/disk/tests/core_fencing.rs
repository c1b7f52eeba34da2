//! Disk fencing in the core, one behaviour each: a primary that loses its link never
//! acknowledges a write that a promotable peer lacks; the peer's outdated mark is
//! durable, refuses promotion and is cleared only by a resync; a secondary that leaves
//! on purpose outdates itself so its peer need not fence it.

mod pair;

use bytes::Bytes;
use pair::{Pair, meta};
use tandem_disk::core::generation::Generations;
use tandem_disk::core::{
    AdminError, Config, ConnState, Core, DiskFencing, DiskState, Input, MetaWrite, Output,
    Protocol, Role, SuperblockUpdate,
};
use tandem_testkit::at;

fn policy(fencing: DiskFencing) -> Config {
    Config {
        fencing,
        ..Config::default()
    }
}

/// A synced protocol C pair with node 0 primary, the cluster's answers left to the test.
fn synced(fencing: DiskFencing) -> Pair {
    let mut p = Pair::synced(policy(fencing));
    p.answer_fence_peer = false;
    p
}

/// Cuts the link under both nodes (the replication network fails), frames in flight
/// lost.
fn cut(p: &mut Pair) {
    p.link = false;
    p.wire = [Default::default(), Default::default()];
    p.input(0, Input::Disconnected);
    p.input(1, Input::Disconnected);
}

/// Node 0's writes `reqs`: issued and sent, its local copy written, the peer's ack not
/// yet back (frames stay on the wire).
fn write_unacked(p: &mut Pair, reqs: &[u64]) {
    for &r in reqs {
        p.write(r, r * 4096, 4096, r as u8);
    }
    p.complete_ios(0);
}

/// Completes node `i`'s I/O until `ticket` is durable; the superblocks written on the way.
fn superblocks_until_durable(p: &mut Pair, i: usize, ticket: u64) -> Vec<SuperblockUpdate> {
    let mut written = Vec::new();
    while !p.n[i].core.metadata_durable(ticket) {
        match p.complete_one(i) {
            Some(Output::PersistMeta {
                write: MetaWrite::Superblock(s),
                ..
            }) => written.push(s),
            Some(_) => {}
            None => panic!("the metadata write never came"),
        }
    }
    written
}

fn suspended_ms(p: &Pair, i: usize) -> Option<u64> {
    p.n[i].core.status().suspended_ms
}

#[test]
fn resource_and_stonith_holds_every_write_until_the_peer_is_outdated() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    write_unacked(&mut p, &[1]);
    assert!(!p.acked(0, 1), "protocol C waits for the peer");
    cut(&mut p);
    // The link is gone: the write in flight is not acknowledged on its local copy, a
    // new write and a flush wait, nothing fails, and the cluster is asked to act.
    assert_eq!(p.fence_peer_asked[0], 1);
    assert!(p.n[0].core.suspended());
    p.write(2, 8 * 4096, 4096, 2);
    p.input(0, Input::Flush { req: 3 });
    for _ in 0..50 {
        p.now += 100;
        p.input(0, Input::Tick);
        p.complete_ios(0);
    }
    assert!(p.n[0].done.is_empty(), "{:?}", p.n[0].done);
    assert_eq!(suspended_ms(&p, 0), Some(5000));
    let r = p.n[0].core.status().report();
    assert_eq!(
        r.suspended.map(|s| s.reason),
        Some("waiting for the peer to be outdated or fenced")
    );
    // Still suspended after 5 s: the request is repeated.
    assert_eq!(p.fence_peer_asked[0], 2);
    // The peer is outdated (over the cluster's other paths): durable first, then said.
    let ticket = p.n[1].core.outdate(at(p.now)).unwrap();
    p.collect(1);
    assert!(!p.n[1].core.metadata_durable(ticket));
    let written = superblocks_until_durable(&mut p, 1, ticket);
    assert!(
        written.last().is_some_and(|s| s.flags.outdated),
        "the outdated mark goes to the superblock: {written:?}"
    );
    assert_eq!(p.n[1].core.disk_state(), DiskState::Outdated);
    p.n[0].core.peer_outdated(at(p.now));
    p.collect(0);
    p.settle();
    for r in [1, 2, 3] {
        assert!(
            p.acked(0, r),
            "request {r} completes once the peer is outdated"
        );
    }
    assert_eq!(suspended_ms(&p, 0), None);
    assert!(p.n[0].core.status().peer_outdated);
    // Written alone from here on: acknowledged at once (locally durable under C).
    p.write(4, 16 * 4096, 4096, 4);
    p.settle();
    assert!(p.acked(0, 4));
    assert_eq!(
        p.fence_peer_asked[0], 2,
        "no new request once the peer is outdated"
    );
}

#[test]
fn resource_and_stonith_resumes_when_the_peer_is_fenced_and_not_before() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    write_unacked(&mut p, &[1]);
    cut(&mut p);
    // The peer cannot be reached: that is not enough under resource-and-stonith.
    p.n[0].core.peer_unreachable(at(p.now));
    p.collect(0);
    p.settle();
    assert!(!p.acked(0, 1));
    assert!(p.n[0].core.suspended());
    assert_eq!(
        p.n[0].core.promote(at(p.now), false),
        Ok(()),
        "already primary: nothing to do"
    );
    p.n[0].core.peer_fenced(at(p.now));
    p.collect(0);
    p.settle();
    assert!(p.acked(0, 1));
    assert!(!p.n[0].core.suspended());
}

#[test]
fn resource_only_goes_on_alone_when_the_peer_is_unreachable() {
    let mut p = synced(DiskFencing::ResourceOnly);
    write_unacked(&mut p, &[1]);
    cut(&mut p);
    assert!(
        p.n[0].core.suspended(),
        "it still tries to outdate the peer first"
    );
    p.n[0].core.peer_unreachable(at(p.now));
    p.collect(0);
    p.settle();
    assert!(p.acked(0, 1));
    assert!(!p.n[0].core.status().peer_outdated);
}

#[test]
fn dont_care_acknowledges_alone_at_once() {
    let mut p = synced(DiskFencing::DontCare);
    write_unacked(&mut p, &[1]);
    cut(&mut p);
    p.settle();
    assert!(p.acked(0, 1));
    assert_eq!(p.fence_peer_asked[0], 0);
}

#[test]
fn a_link_that_returns_ends_the_suspension_only_once_the_peer_is_whole() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    write_unacked(&mut p, &[1]);
    cut(&mut p);
    p.write(2, 8 * 4096, 4096, 2);
    // The link comes back before the cluster answered: handshake, bitmap resync of the
    // held write's blocks, and only then the acknowledgements.
    p.connect();
    let mut saw_resync_with_acks_held = false;
    for _ in 0..10_000 {
        let mut any = false;
        for i in 0..2 {
            any |= p.complete_ios(i);
            any |= p.deliver(i);
        }
        if p.n[0].core.connection() == ConnState::SyncSource {
            saw_resync_with_acks_held |= !p.acked(0, 1) && !p.acked(0, 2);
            assert!(!p.acked(0, 1), "acknowledged before the peer held it");
        }
        if !any {
            p.now += 10;
            p.input(0, Input::Tick);
            p.input(1, Input::Tick);
        }
        if p.acked(0, 2) {
            break;
        }
    }
    assert!(saw_resync_with_acks_held);
    assert!(p.acked(0, 1) && p.acked(0, 2));
    p.settle();
    assert_eq!(p.n[0].disk, p.n[1].disk);
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
}

#[test]
fn an_outdated_copy_is_promoted_only_with_force_and_the_mark_survives_a_restart() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    cut(&mut p);
    let ticket = p.n[1].core.outdate(at(p.now)).unwrap();
    p.collect(1);
    let flags = *superblocks_until_durable(&mut p, 1, ticket)
        .last()
        .expect("a superblock write");
    assert_eq!(
        p.n[1].core.promote(at(p.now), false),
        Err(AdminError::NotUpToDate(DiskState::Outdated))
    );
    // The node restarts from what the superblock says: still outdated.
    let mut m = meta(2);
    m.generations = flags.generations;
    m.flags = flags.flags;
    let mut again = Core::new(policy(DiskFencing::ResourceAndStonith), m, 2, at(p.now));
    assert_eq!(again.disk_state(), DiskState::Outdated);
    assert_eq!(
        again.promote(at(p.now), false),
        Err(AdminError::NotUpToDate(DiskState::Outdated))
    );
    assert!(
        again.promote(at(p.now), true).is_ok(),
        "--force is the way past"
    );
    assert_eq!(again.role(), Role::Primary);
}

#[test]
fn a_primary_refuses_to_be_outdated() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    assert_eq!(p.n[0].core.outdate(at(p.now)), Err(AdminError::IsPrimary));
}

#[test]
fn promotion_alone_needs_the_peer_outdated_or_fenced() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    p.n[0].core.demote(at(p.now)).unwrap();
    p.collect(0);
    p.settle();
    cut(&mut p);
    assert_eq!(
        p.n[1].core.promote(at(p.now), false),
        Err(AdminError::PeerNotOutdated)
    );
    // resource-only: an unreachable peer is enough, knowingly.
    p.n[1].core.peer_unreachable(at(p.now));
    assert_eq!(
        p.n[1].core.promote(at(p.now), false),
        Err(AdminError::PeerNotOutdated),
        "not under resource-and-stonith"
    );
    p.n[1].core.peer_fenced(at(p.now));
    p.collect(1);
    assert_eq!(p.n[1].core.promote(at(p.now), false), Ok(()));

    let mut q = synced(DiskFencing::ResourceOnly);
    q.n[0].core.demote(at(q.now)).unwrap();
    q.collect(0);
    q.settle();
    cut(&mut q);
    assert_eq!(
        q.n[1].core.promote(at(q.now), false),
        Err(AdminError::PeerNotOutdated)
    );
    q.n[1].core.peer_unreachable(at(q.now));
    assert_eq!(q.n[1].core.promote(at(q.now), false), Ok(()));
}

#[test]
fn the_outdated_mark_is_cleared_by_the_resync_that_makes_the_copy_whole() {
    let mut p = Pair::synced(policy(DiskFencing::ResourceAndStonith));
    // The harness plays the cluster: the primary's link loss outdates node 1.
    cut(&mut p);
    p.settle();
    assert_eq!(p.n[1].core.disk_state(), DiskState::Outdated);
    p.write(1, 0, 4096, 7);
    p.settle();
    assert!(p.acked(0, 1));
    p.n[0].core.connect(at(p.now), false);
    p.n[1].core.connect(at(p.now), false);
    p.connect();
    p.settle();
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    assert_eq!(p.n[0].disk, p.n[1].disk);
    assert!(!p.n[0].core.status().peer_outdated);
    // The next link loss asks again.
    let asked = p.fence_peer_asked[0];
    cut(&mut p);
    assert_eq!(p.fence_peer_asked[0], asked + 1);
}

#[test]
fn a_secondary_that_leaves_outdates_itself_so_its_peer_need_not_fence_it() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    let ticket = p.n[1].core.leave(at(p.now));
    p.collect(1);
    p.settle();
    assert!(p.n[1].core.metadata_durable(ticket));
    assert_eq!(p.n[1].core.disk_state(), DiskState::Outdated);
    assert!(p.n[0].core.status().peer_outdated, "the primary heard it");
    cut(&mut p);
    assert_eq!(p.fence_peer_asked[0], 0);
    p.write(1, 0, 4096, 1);
    p.settle();
    assert!(p.acked(0, 1));
}

#[test]
fn an_admin_disconnect_of_a_secondary_outdates_it_before_the_link_goes() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    p.n[1].core.disconnect(at(p.now));
    p.collect(1);
    p.settle();
    assert_eq!(p.n[1].core.connection(), ConnState::StandAlone);
    assert_eq!(p.n[1].core.disk_state(), DiskState::Outdated);
    assert!(p.n[0].core.status().peer_outdated);
    assert!(!p.n[0].core.suspended());
}

/// The peer said "outdated" only for a mark that is durable: a state report built while
/// the superblock write is still in flight says `consistent`.
#[test]
fn outdated_is_reported_to_the_peer_only_once_durable() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    cut(&mut p);
    p.n[1].core.outdate(at(p.now)).unwrap();
    p.collect(1);
    p.n[1].core.connect(at(p.now), false);
    p.link = true;
    p.input(1, Input::Connected);
    let state = p.wire[0].iter().find_map(|f| match f {
        tandem_wire::frame::Frame::State(s) => Some(s.disk),
        _ => None,
    });
    assert_eq!(
        state,
        Some(3),
        "consistent (3) while the outdated mark is not yet durable"
    );
}

/// A crashed primary whose peer had been outdated (or fenced) before it acknowledged
/// anything alone holds every acknowledged write: it may be promoted without --force.
/// Heard only after the crash, the same news proves nothing (the crash may have cost
/// this copy acknowledged writes the outdated peer holds): promotion stays refused.
#[test]
fn a_crashed_primary_may_be_promoted_only_if_its_peer_was_outdated_before_the_crash() {
    for (outdated_before, outdated_after) in [(false, false), (true, false), (false, true)] {
        let mut m = meta(1);
        m.generations = Generations {
            current: 0x1234_5678,
            bitmap: 0x2222,
            history: [0, 0],
        };
        m.flags.consistent = true;
        m.flags.was_primary = true;
        m.flags.peer_outdated = outdated_before;
        let cfg = Config {
            protocol: Protocol::C,
            ..policy(DiskFencing::ResourceAndStonith)
        };
        let mut core = Core::new(cfg, m, 1, at(0));
        if outdated_after {
            core.peer_outdated(at(0));
        }
        let r = core.promote(at(0), false);
        if outdated_before {
            assert_eq!(r, Ok(()));
        } else {
            assert_eq!(
                r,
                Err(AdminError::CrashedPrimary),
                "outdated before the crash: {outdated_before}, after: {outdated_after}"
            );
        }
    }
}

/// The frames a suspended primary sends while it waits: none carry data.
#[test]
fn a_suspended_primary_sends_no_data() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    cut(&mut p);
    p.write(1, 0, 4096, 1);
    let mut outputs = Vec::new();
    while let Some(o) = p.n[0].core.poll_output() {
        outputs.push(o);
    }
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::WriteLocal { .. } | Output::Send(_))),
        "{outputs:?}"
    );
    let _ = Bytes::new();
}

/// DiskFencing the peer does not make a copy newer: a node that has not seen its peer since
/// it started (`Consistent`) and then fences it refuses promotion without --force, and
/// says why; an up-to-date copy may go on.
#[test]
fn a_copy_alone_since_its_start_is_not_promoted_by_fencing_its_peer() {
    let mut m = meta(1);
    m.generations = Generations {
        current: 0x4444,
        bitmap: 0,
        history: [0, 0],
    };
    m.flags.consistent = true;
    let mut core = Core::new(policy(DiskFencing::ResourceAndStonith), m, 1, at(0));
    core.connect(at(0), false);
    assert_eq!(core.disk_state(), DiskState::Consistent);
    assert_eq!(core.promote(at(0), false), Err(AdminError::PeerNotOutdated));
    core.peer_fenced(at(0));
    assert_eq!(core.promote(at(0), false), Err(AdminError::MayBeStale));
    assert!(!core.status().peer_outdated, "not recorded as outdated");
    assert_eq!(core.promote(at(0), true), Ok(()), "--force goes on");
}

/// Node 0's write `req` to 4 KiB block `block`, acknowledged under protocol C: the peer
/// wrote it (into its volatile cache) and answered; no barrier has confirmed its flush.
fn write_acked_unflushed(p: &mut Pair, req: u64, block: u64, byte: u8) {
    p.write(req, block * 4096, 4096, byte);
    p.complete_ios(0);
    p.deliver(1);
    p.complete_ios(1);
    p.deliver(0);
    assert!(p.acked(0, req));
}

/// A flush is the promise that survives both nodes losing their caches. When the link
/// breaks before the peer's barrier ack, the flush rests on the primary's disk alone, so
/// it completes only once the new generation that makes this copy the resync source is
/// durable. Acknowledged earlier, a crash of the primary then left generations equal to
/// the peer's; the crashed primary resynced its activity log from the survivor, whose
/// cache had lost the write (cluster-sim seeds 4855, 4913).
#[test]
fn a_flush_the_peer_never_confirmed_waits_for_the_new_generation() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    write_acked_unflushed(&mut p, 1, 0, 0x11);
    // The flush: its barrier never reaches the peer, the local flush is done.
    p.input(0, Input::Flush { req: 2 });
    p.wire[1].clear();
    p.complete_ios(0);
    assert!(!p.acked(0, 2), "waits for the peer's barrier ack");
    // The peer loses power (its cache never wrote block 0) and is fenced.
    p.n[1].disk[..4096].fill(0);
    p.power_cut(1);
    p.n[0].core.peer_fenced(at(p.now));
    p.collect(0);
    // Node 0 loses power the moment the flush is acknowledged.
    while !p.acked(0, 2) {
        assert!(
            p.complete_one(0).is_some(),
            "the flush was never acknowledged"
        );
    }
    p.power_cut(0);
    p.connect();
    p.settle();
    for i in 0..2 {
        assert_eq!(
            p.n[i].disk[0],
            0x11,
            "node {i} lost the flushed write: {:?}",
            p.n[i].core.status().last_decision
        );
    }
}

/// The same for a write whose peer copy was lost with the link, with no suspension to
/// hold it (`dont-care`; also a primary that knew its peer outdated): acknowledged
/// alone only once the new generation is durable.
#[test]
fn a_write_acknowledged_alone_after_a_link_loss_waits_for_the_new_generation() {
    let mut p = synced(DiskFencing::DontCare);
    write_acked_unflushed(&mut p, 1, 0, 0x21);
    // A second write is sent, the link breaks before the peer answers; the peer's
    // copy of both is in its cache, which the power cut that follows empties.
    p.write(2, 4096, 4096, 0x22);
    p.complete_ios(0);
    p.deliver(1);
    p.complete_ios(1);
    p.wire[0].clear();
    p.n[1].disk[..2 * 4096].fill(0);
    p.power_cut(1);
    assert!(!p.n[0].core.suspended());
    while !p.acked(0, 2) {
        assert!(
            p.complete_one(0).is_some(),
            "the write was never acknowledged"
        );
    }
    p.power_cut(0);
    p.connect();
    p.settle();
    for i in 0..2 {
        assert_eq!(
            (p.n[i].disk[0], p.n[i].disk[4096]),
            (0x21, 0x22),
            "node {i} lost an acknowledged write: {:?}",
            p.n[i].core.status().last_decision
        );
    }
}

/// The cluster's answer that the peer is outdated belongs to the question, asked while
/// there was no link. A link that came up since may have cleared the peer's mark (its
/// handshake found both copies equal): the answer is stale and changes nothing, and a
/// suspension asks again (as DRBD ignores a fence-peer handler's exit code when the
/// connection came back meanwhile). Believed, it let a later primary write alone, and a
/// crashed primary be promoted alone, against a peer that was not outdated (cluster-sim
/// seed 4681).
#[test]
fn an_outdate_answer_from_before_a_new_link_is_ignored() {
    let mut p = synced(DiskFencing::ResourceAndStonith);
    // The link breaks; node 0 asks; the peer is outdated, but before node 0 hears it the
    // link is back and the handshake finds nothing to sync: the peer's mark is gone.
    cut(&mut p);
    assert!(p.n[0].core.suspended());
    let ticket = p.n[1].core.outdate(at(p.now)).unwrap();
    p.collect(1);
    superblocks_until_durable(&mut p, 1, ticket);
    p.connect();
    p.settle();
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    assert!(!p.n[0].core.suspended());
    // The answer arrives now: stale.
    p.n[0].core.peer_outdated(at(p.now));
    p.collect(0);
    assert!(
        !p.n[0].core.status().peer_outdated,
        "a stale answer believed"
    );
    // So the next link loss suspends again and asks.
    let asked = p.fence_peer_asked[0];
    cut(&mut p);
    assert!(p.n[0].core.suspended());
    assert_eq!(p.fence_peer_asked[0], asked + 1);
    p.write(1, 0, 4096, 1);
    p.settle();
    assert!(
        !p.acked(0, 1),
        "acknowledged alone while the peer may be promoted"
    );

    // Again, with the answer arriving after a link came and went: the peer is outdated,
    // a link comes (its handshake clears the mark) and breaks again, node 0 asks again
    // (the same open question, for the cluster); the answer is stale, and the next
    // question's answer counts.
    let ticket = p.n[1].core.outdate(at(p.now)).unwrap();
    p.collect(1);
    superblocks_until_durable(&mut p, 1, ticket);
    p.connect();
    p.settle();
    assert!(p.acked(0, 1));
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
    let asked = p.fence_peer_asked[0];
    cut(&mut p);
    assert!(p.n[0].core.suspended());
    assert_eq!(p.fence_peer_asked[0], asked + 1);
    p.n[0].core.peer_outdated(at(p.now));
    p.collect(0);
    assert!(
        !p.n[0].core.status().peer_outdated,
        "a stale answer believed"
    );
    assert!(p.n[0].core.suspended());
    p.answer_fence_peer = true;
    for _ in 0..60 {
        p.now += 100;
        p.input(0, Input::Tick);
    }
    assert!(p.fence_peer_asked[0] > asked + 1, "asked again");
    assert!(!p.n[0].core.suspended());
    assert!(p.n[0].core.status().peer_outdated);
    assert_eq!(p.n[1].core.disk_state(), DiskState::Outdated);
}
