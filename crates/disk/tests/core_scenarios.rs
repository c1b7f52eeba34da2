//! Scenario tests of the replication core, one behaviour each, with a tiny harness:
//! two cores, in-memory disks that complete I/O when told, and a link that delivers
//! frames when told.

mod pair;

use bytes::Bytes;
use pair::{Pair, SIZE, meta};
use tandem_disk::core::generation::{Generations, SyncDecision};
use tandem_disk::core::{
    AdminError, Config, ConnState, Core, DiskFencing, DiskState, Input, Output, Protocol, Role,
};
use tandem_testkit::at;
use tandem_wire::frame::{Frame, StateReport};

#[test]
fn protocol_c_acknowledges_only_after_the_peer_wrote() {
    let mut p = Pair::synced(Config::default());
    p.write(100, 0, 4096, 7);
    p.complete_ios(0);
    assert!(!p.acked(0, 100), "local disk alone is not enough under C");
    p.deliver(1); // the peer receives, but has not written yet
    p.deliver(0);
    assert!(!p.acked(0, 100), "received is not written");
    p.complete_ios(1);
    p.deliver(0);
    assert!(p.acked(0, 100));
    assert_eq!(&p.n[1].disk[..4096], &[7u8; 4096][..]);
}

#[test]
fn protocol_b_acknowledges_when_the_peer_received() {
    let mut p = Pair::synced(Config {
        protocol: Protocol::B,
        ..Config::default()
    });
    p.write(100, 0, 4096, 7);
    p.complete_ios(0);
    assert!(!p.acked(0, 100));
    p.deliver(1);
    p.deliver(0);
    assert!(p.acked(0, 100), "received by the peer, written locally");
}

#[test]
fn protocol_a_acknowledges_when_sent() {
    let mut p = Pair::synced(Config {
        protocol: Protocol::A,
        ..Config::default()
    });
    // The first write to an extent waits for its activity-log transaction.
    p.write(100, 0, 4096, 7);
    p.complete_ios(0);
    assert!(p.acked(0, 100), "local + sent, the peer has not answered");
    assert!(!p.wire[1].is_empty());
    // The extent is hot now: the next write is sent at once, acked after the local write.
    p.write(101, 4096, 4096, 8);
    assert!(!p.acked(0, 101), "not before the local write");
    p.complete_ios(0);
    assert!(p.acked(0, 101));
    p.settle();
    assert_eq!(p.n[0].disk, p.n[1].disk);
}

#[test]
fn flush_waits_for_the_peers_barrier_under_c() {
    let mut p = Pair::synced(Config::default());
    p.write(1, 0, 4096, 1);
    p.settle();
    let (acks_in, acks_out) = (
        p.n[0].core.status().barrier_acks_received,
        p.n[1].core.status().barrier_acks_sent,
    );
    p.input(0, Input::Flush { req: 2 });
    p.complete_ios(0);
    assert!(!p.acked(0, 2), "peer has not flushed");
    p.settle();
    assert!(p.acked(0, 2));
    // The counters status shows: the flush's barrier, flushed by the peer and confirmed.
    assert!(p.n[0].core.status().barrier_acks_received > acks_in);
    assert!(p.n[1].core.status().barrier_acks_sent > acks_out);
}

#[test]
fn reconnect_resyncs_only_the_dirty_blocks() {
    let mut p = Pair::synced(Config::default());
    let gen_before = p.n[0].core.generations();
    // Disconnect, write 3 blocks on the primary.
    p.n[0].core.disconnect(at(p.now));
    p.collect(0);
    p.settle();
    p.write(1, 8192, 3 * 4096, 9);
    p.settle();
    assert!(p.acked(0, 1));
    assert_eq!(p.n[0].core.bitmap().count(), 3);
    let g = p.n[0].core.generations();
    assert_eq!(
        g.bitmap, gen_before.current,
        "bitmap generation = old current"
    );
    assert_ne!(g.current, gen_before.current);
    let moved_before = p.n[1].core.status().resync_moved_bytes;
    p.n[0].core.connect(at(p.now), false);
    p.collect(0);
    p.connect();
    p.settle();
    assert_eq!(
        p.n[0].core.status().last_decision,
        Some(SyncDecision::BitmapSync(
            tandem_disk::core::generation::Direction::Source
        ))
    );
    assert_eq!(
        p.n[1].core.status().resync_moved_bytes - moved_before,
        3 * 4096
    );
    assert_eq!(p.n[0].disk, p.n[1].disk);
    assert_eq!(p.n[0].core.bitmap().count(), 0);
    assert_eq!(
        p.n[0].core.generations().current,
        p.n[1].core.generations().current
    );
    assert_eq!(p.n[0].core.generations().history[0], gen_before.current);
}

#[test]
fn split_brain_is_detected_and_nothing_is_overwritten() {
    // Split brain needs both sides to write apart: only `dont-care` lets that happen
    // without an operator's `--force`.
    let mut p = Pair::synced(Config {
        fencing: DiskFencing::DontCare,
        ..Config::default()
    });
    p.n[0].core.disconnect(at(p.now));
    p.collect(0);
    p.settle();
    p.write(1, 0, 4096, 1);
    p.settle();
    p.n[1].core.promote(at(p.now), false).unwrap();
    p.collect(1);
    p.input(
        1,
        Input::Write {
            req: 5,
            offset_bytes: 4096,
            data: Bytes::from(vec![2u8; 4096]),
            fua: false,
        },
    );
    p.settle();
    p.n[1].core.demote(at(p.now)).unwrap();
    p.n[0].core.connect(at(p.now), false);
    p.connect();
    p.settle();
    // The side that decided first stands alone; the other lost the link.
    assert!(p.n.iter().any(|n| matches!(
        n.core.status().last_decision,
        Some(SyncDecision::SplitBrain {
            bitmaps_cover: true
        })
    ) && n.core.connection() == ConnState::StandAlone));
    assert!(!p.link);
    assert_eq!(p.n[0].disk[0], 1);
    assert_eq!(p.n[1].disk[4096], 2, "the peer's change is still there");
    // The operator discards node 1's changes.
    p.n[1].core.connect(at(p.now), true);
    p.n[0].core.connect(at(p.now), false);
    p.connect();
    p.settle();
    assert_eq!(p.n[0].disk, p.n[1].disk);
    assert_eq!(p.n[1].disk[4096], 0);
}

#[test]
fn promotion_refuses_inconsistent_data_unless_forced() {
    let mut p = Pair::new(Config::default());
    assert_eq!(
        p.n[0].core.promote(at(0), false),
        Err(AdminError::NotUpToDate(DiskState::Inconsistent))
    );
    assert!(p.n[0].core.promote(at(0), true).is_ok());
    assert_eq!(p.n[0].core.role(), Role::Primary);
    assert_eq!(p.n[0].core.disk_state(), DiskState::UpToDate);
}

#[test]
fn unrelated_disks_never_sync() {
    let cfg = Config::default();
    let mut a = meta(1);
    a.generations = Generations {
        current: 1000,
        bitmap: 0,
        history: [0, 0],
    };
    a.flags.consistent = true;
    let mut b = meta(2);
    b.generations = Generations {
        current: 2000,
        bitmap: 0,
        history: [0, 0],
    };
    b.flags.consistent = true;
    let mut p = Pair::new(cfg.clone());
    p.n[0].core = Core::new(cfg.clone(), a, 1, at(0));
    p.n[1].core = Core::new(cfg, b, 2, at(0));
    p.n[0].core.connect(at(0), false);
    p.n[1].core.connect(at(0), true);
    p.connect();
    p.settle();
    assert!(
        p.n.iter()
            .any(|n| n.core.connection() == ConnState::StandAlone
                && n.core.status().last_decision == Some(SyncDecision::UnrelatedData))
    );
    assert!(!p.link);
    for n in &p.n {
        assert_eq!(n.core.status().resync_moved_bytes, 0);
        assert_ne!(n.core.disk_state(), DiskState::Inconsistent);
    }
}

#[test]
fn a_primary_never_becomes_sync_target() {
    let mut p = Pair::synced(Config {
        fencing: DiskFencing::DontCare,
        ..Config::default()
    });
    // Node 0 (primary) loses the link without writing; node 1 is promoted and writes.
    p.n[0].core.disconnect(at(p.now));
    p.collect(0);
    p.settle();
    p.n[1].core.promote(at(p.now), false).unwrap();
    p.collect(1);
    p.input(
        1,
        Input::Write {
            req: 5,
            offset_bytes: 0,
            data: Bytes::from(vec![2u8; 4096]),
            fua: false,
        },
    );
    p.settle();
    p.n[1].core.demote(at(p.now)).unwrap();
    p.n[0].core.connect(at(p.now), false);
    p.connect();
    p.settle();
    assert_eq!(p.n[0].core.connection(), ConnState::StandAlone);
    assert!(
        p.n[0]
            .core
            .status()
            .last_disconnect_reason
            .unwrap()
            .contains("sync target while primary")
    );
    assert_eq!(p.n[1].disk[0], 2);
}

#[test]
fn online_verify_finds_a_differing_block() {
    let mut p = Pair::synced(Config::default());
    p.n[1].disk[5 * 4096 + 17] ^= 0xff; // silent corruption on the secondary
    p.n[0].core.verify(at(p.now)).unwrap();
    p.collect(0);
    p.settle();
    let st = p.n[0].core.status();
    assert_eq!(st.connection, ConnState::Connected);
    assert!(st.verify_out_of_sync_blocks >= 1);
    assert!(p.n[0].core.bitmap().get(5));
    // A reconnect resyncs it from the primary.
    p.n[0].core.disconnect(at(p.now));
    p.collect(0);
    p.n[0].core.connect(at(p.now), false);
    p.connect();
    p.settle();
    assert_eq!(p.n[0].disk, p.n[1].disk);
}

#[test]
fn bad_requests_get_errors_not_panics() {
    let mut p = Pair::synced(Config::default());
    for (off, len) in [
        (1u64, 512usize),
        (0, 100),
        (SIZE, 512),
        (SIZE - 512, 1024),
        (0, 2 << 20),
    ] {
        p.write(9, off, len, 1);
        assert!(
            p.n[0].done.iter().any(|(r, ok)| *r == 9 && !ok),
            "{off} {len}"
        );
        p.n[0].done.clear();
    }
    // A secondary refuses frontend I/O.
    p.input(
        1,
        Input::Read {
            req: 3,
            offset_bytes: 0,
            len_bytes: 512,
        },
    );
    assert!(p.n[1].done.iter().any(|(r, ok)| *r == 3 && !ok));
    // A data frame out of range from the peer drops the link.
    p.input(
        1,
        Input::Frame(Frame::Data {
            id: 1,
            sector: SIZE / 512,
            epoch: 1,
            fua: false,
            data: Bytes::from(vec![0u8; 512]),
        }),
    );
    assert!(!p.link);
}

#[test]
fn on_io_error_the_primary_detaches_and_serves_through_the_peer() {
    let mut p = Pair::synced(Config::default());
    p.write(1, 0, 4096, 5);
    p.settle();
    p.n[0].fail_writes = true;
    p.write(2, 8192, 4096, 6);
    p.settle();
    assert!(p.acked(0, 2), "the peer's copy carries the write");
    assert_eq!(p.n[0].core.disk_state(), DiskState::Diskless);
    assert_eq!(
        p.n[0].core.detach_reason(),
        Some("write failed: EIO"),
        "the detach says which I/O failed and how"
    );
    assert_eq!(
        p.n[1].core.status().peer_disk_state,
        Some(DiskState::Diskless)
    );
    // Diskless now: writes and reads go through the peer.
    p.write(3, 4096, 4096, 7);
    p.settle();
    assert!(p.acked(0, 3));
    assert_eq!(&p.n[1].disk[4096..8192], &[7u8; 4096][..]);
    p.input(
        0,
        Input::Read {
            req: 4,
            offset_bytes: 0,
            len_bytes: 12288,
        },
    );
    p.settle();
    let (_, data) = p.n[0]
        .reads
        .iter()
        .find(|(r, _)| *r == 4)
        .expect("read served");
    assert_eq!(&data[..4096], &[5u8; 4096][..]);
    assert_eq!(&data[4096..8192], &[7u8; 4096][..]);
    assert_eq!(&data[8192..], &[6u8; 4096][..]);
}

#[test]
fn status_json_has_the_documented_fields() {
    let p = Pair::synced(Config::default());
    let v = serde_json::to_value(p.n[0].core.status().report()).unwrap();
    assert_eq!(v["role"], "primary");
    assert_eq!(v["peer_role"], "secondary");
    assert_eq!(v["connection"], "connected");
    assert_eq!(v["disk_state"], "up_to_date");
    assert_eq!(v["peer_disk_state"], "up_to_date");
    assert_eq!(v["out_of_sync_bytes"], 0);
    for k in ["done_bytes", "total_bytes", "rate_bytes_per_s"] {
        assert!(v["resync"][k].is_u64(), "{k}");
    }
    assert!(v["sent_bytes"].is_u64() && v["received_bytes"].is_u64());
}

/// Dirties `n` scattered 4 KiB blocks on the primary while disconnected and reconnects.
/// After a resync both sides are up to date and know it of each other (a stale view
/// of the peer would count a later primary's writes as unprotected). The case where
/// the source reported itself only `consistent` — after a restart — is checked by the
/// simulation's final state over many seeds (crates/sim/tests/disk.rs).
#[test]
fn after_a_resync_both_sides_see_each_other_up_to_date() {
    let mut p = Pair::synced(Config::default());
    p.n[0].core.disconnect(at(p.now));
    p.collect(0);
    p.settle();
    p.write(1, 8192, 3 * 4096, 9);
    p.settle();
    // Both secondary before they meet again, as after a clean restart of both.
    p.n[0].core.demote(at(p.now)).unwrap();
    p.collect(0);
    p.settle();
    p.n[0].core.connect(at(p.now), false);
    p.collect(0);
    p.connect();
    p.settle();
    for i in 0..2 {
        let s = p.n[i].core.status();
        assert_eq!(s.connection, ConnState::Connected, "node {i}: {s:?}");
        assert_eq!(s.disk_state, DiskState::UpToDate, "node {i}: {s:?}");
        assert_eq!(
            s.peer_disk_state,
            Some(DiskState::UpToDate),
            "node {i}: {s:?}"
        );
    }
    assert_eq!(p.n[0].disk, p.n[1].disk);
}

/// A demote is durable only once its superblock write completed: the driver answers
/// `demote` when `metadata_durable` says so for the ticket taken right after it, so an
/// agent that exits after a clean stop leaves no crashed primary behind.
#[test]
fn a_demote_is_durable_only_after_its_metadata_write() {
    let mut p = Pair::synced(Config::default());
    p.write(1, 0, 4096, 5);
    p.settle();
    // Flushed on both sides, so the demotion need not wait for the peer.
    p.input(0, Input::Flush { req: 2 });
    p.settle();
    assert!(p.acked(0, 1) && p.acked(0, 2));
    p.n[0].core.demote(at(p.now)).unwrap();
    let ticket = p.n[0].core.metadata_ticket();
    p.collect(0);
    assert!(
        p.n[0]
            .ios
            .iter()
            .any(|o| matches!(o, Output::PersistMeta { .. })),
        "the demote asked for a metadata write"
    );
    assert!(
        !p.n[0].core.metadata_durable(ticket),
        "not durable before the write ran"
    );
    p.settle();
    assert!(
        p.n[0].core.metadata_durable(ticket),
        "durable once it completed"
    );
}

fn dirty_and_reconnect(p: &mut Pair, n: u64) -> u64 {
    p.n[0].core.disconnect(at(p.now));
    p.collect(0);
    p.settle();
    for k in 0..n {
        p.write(1000 + k, k * 8192, 4096, 3);
    }
    p.settle();
    assert_eq!(p.n[0].core.bitmap().count(), n);
    p.n[0].core.connect(at(p.now), false);
    p.collect(0);
    p.connect();
    n * 4096
}

#[test]
fn a_rate_limited_resync_holds_its_rate() {
    let rate = 1u64 << 20;
    let mut p = Pair::synced(Config {
        resync_rate_bytes_per_s: Some(rate),
        resync_request_bytes: 64 << 10,
        ..Config::default()
    });
    let bytes = dirty_and_reconnect(&mut p, 1024); // 4 MiB
    let start = p.now;
    p.settle();
    let elapsed_ms = p.now - start;
    let achieved = bytes * 1000 / elapsed_ms.max(1);
    eprintln!("resync of {bytes} bytes at a limit of {rate} B/s: {achieved} B/s");
    // Virtual time: the bucket starts full (one burst), then refills at the rate.
    assert!(
        achieved <= rate * 115 / 100 && achieved >= rate * 90 / 100,
        "{achieved} bytes/s for a limit of {rate}"
    );
    assert_eq!(p.n[0].disk, p.n[1].disk);
}

#[test]
fn an_interrupted_resync_resumes_where_it_stopped() {
    let mut p = Pair::synced(Config {
        resync_rate_bytes_per_s: Some(1 << 20),
        resync_request_bytes: 64 << 10,
        ..Config::default()
    });
    let bytes = dirty_and_reconnect(&mut p, 512); // 2 MiB
    let moved_before = p.n[1].core.status().resync_moved_bytes;
    // Let about half of it through, then cut the link.
    while p.n[1].core.status().resync_moved_bytes - moved_before < bytes / 2 {
        for i in 0..2 {
            p.complete_ios(i);
            p.deliver(i);
        }
        p.now += 10;
        p.input(0, Input::Tick);
        p.input(1, Input::Tick);
    }
    p.n[1].core.disconnect(at(p.now));
    p.collect(1);
    p.settle();
    let left = p.n[0].core.bitmap().count() * 4096;
    assert!(left > 0 && left < bytes, "{left} of {bytes} left");
    p.n[1].core.connect(at(p.now), false);
    p.connect();
    p.settle();
    let moved = p.n[1].core.status().resync_moved_bytes - moved_before;
    assert!(moved <= bytes * 11 / 10, "moved {moved} for {bytes} dirty");
    assert_eq!(p.n[0].disk, p.n[1].disk);
}

#[test]
fn checksum_based_resync_moves_only_differing_ranges() {
    let mut p = Pair::synced(Config {
        checksum_resync: true,
        ..Config::default()
    });
    p.n[1].disk[3 * 4096 + 100] ^= 0x55; // one silently different block
    let moved_before = p.n[1].core.status().resync_moved_bytes;
    // The secondary declares its data bad: every block is dirty.
    p.n[1].core.invalidate(at(p.now)).unwrap();
    p.collect(1);
    p.n[1].core.connect(at(p.now), false);
    p.n[0].core.connect(at(p.now), false);
    p.settle();
    if !p.link {
        p.connect();
        p.settle();
    }
    let moved = p.n[1].core.status().resync_moved_bytes - moved_before;
    assert!(moved > 0 && moved <= 256 << 10, "moved {moved} of {SIZE}");
    assert_eq!(p.n[0].disk, p.n[1].disk);
    assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
}

#[test]
fn a_disk_that_ran_alone_uses_the_degraded_startup_wait() {
    let mut p = Pair::synced(Config::default());
    assert!(!p.n[0].core.was_degraded());
    assert_eq!(p.n[0].core.startup_wait_ms(0, 60_000), 0);
    p.n[0].core.disconnect(at(p.now));
    p.collect(0);
    p.write(1, 0, 4096, 1);
    p.settle();
    assert!(p.n[0].core.was_degraded());
    assert_eq!(p.n[0].core.startup_wait_ms(0, 60_000), 60_000);
}

/// Regression (node_loopback hung in `Handshaking` for 30 s): a link on which the
/// peer's `State` never arrives — it was lost by the driver — while pings keep flowing
/// must not park the core in the handshake for good. Within the ping timeout the core
/// waits; after it, it drops the link and is `Connecting` again, so the driver redials.
#[test]
fn a_handshake_without_the_peers_state_times_out_despite_pings() {
    let cfg = Config::default();
    let timeout_ms = cfg.ping_timeout_ms;
    let mut core = Core::new(cfg, meta(1), 1, at(0));
    core.connect(at(0), false);
    core.handle(at(0), Input::Connected);
    assert_eq!(core.connection(), ConnState::Handshaking);
    let mut sent_state = false;
    let mut disconnected = None;
    let mut now = 0;
    while now <= timeout_ms + 1000 {
        // The peer answers and pings (last_rx stays fresh) but its State is gone.
        core.handle(at(now), Input::Frame(Frame::Ping));
        core.handle(at(now), Input::Tick);
        while let Some(o) = core.poll_output() {
            match o {
                Output::Send(Frame::State(_)) => sent_state = true,
                Output::Disconnect { reason } => {
                    disconnected.get_or_insert((now, reason));
                }
                _ => {}
            }
        }
        if now <= timeout_ms {
            assert_eq!(core.connection(), ConnState::Handshaking, "at {now} ms");
        }
        now += 100;
    }
    assert!(sent_state, "our state went out at link up");
    let (at_ms, reason) = disconnected.expect("the stuck handshake was dropped");
    assert!(at_ms > timeout_ms && at_ms <= timeout_ms + 100, "{at_ms}");
    assert!(reason.contains("handshake"), "{reason}");
    assert_eq!(core.connection(), ConnState::Connecting);
    assert!(core.wants_connection(), "the driver dials again");
    // The next link handshakes normally.
    core.handle(at(now), Input::Connected);
    assert_eq!(core.connection(), ConnState::Handshaking);
}

/// A hostile (but authenticated) peer: random frames in random states never panic the
/// core; at worst it drops the link.
#[test]
fn random_frames_from_the_peer_never_panic() {
    let mut s: u64 = 0xdead_beef;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for round in 0..100 {
        let mut p = Pair::synced(Config {
            checksum_resync: round % 2 == 0,
            ..Config::default()
        });
        if round % 3 == 0 {
            p.n[0].core.demote(at(p.now)).unwrap();
            p.collect(0);
        }
        let victim = (round % 2) as usize;
        for _ in 0..200 {
            let sector = match next() % 4 {
                0 => next(),
                1 => SIZE / 512 - 1,
                _ => next() % (SIZE / 512),
            };
            let len = match next() % 3 {
                0 => (next() % 2048) as u32 * 512 + 512,
                1 => 4096,
                _ => next() as u32,
            };
            let data = Bytes::from(vec![next() as u8; (next() % 3 + 1) as usize * 512]);
            let f = match next() % 16 {
                0 => Frame::Data {
                    id: next() % 8,
                    sector,
                    epoch: next() % 4,
                    fua: next() % 2 == 0,
                    data,
                },
                1 => Frame::AckWritten { id: next() % 8 },
                2 => Frame::AckReceived { id: next() % 8 },
                3 => Frame::Barrier { epoch: next() % 4 },
                4 => Frame::BarrierAck { epoch: next() % 4 },
                5 => Frame::ResyncRequest {
                    id: next() % 8,
                    sector,
                    len_bytes: len.max(1),
                },
                6 => Frame::ResyncData {
                    id: next() % 8,
                    sector,
                    data,
                },
                7 => Frame::ResyncAck {
                    sector,
                    len_bytes: len.max(1),
                },
                8 => Frame::Bitmap {
                    word_offset: if next() % 4 == 0 {
                        next()
                    } else {
                        next() % 1024
                    },
                    words: vec![next(); (next() % 8) as usize],
                    last: next() % 2 == 0,
                },
                9 => Frame::ResyncFinished,
                10 => Frame::ResyncComplete {
                    generations: [next(), next(), 0, 0],
                },
                11 => Frame::State(tandem_wire::frame::StateReport {
                    protocol: b'C',
                    role: (next() % 3) as u8,
                    disk: (next() % 6) as u8,
                    node_id: next(),
                    generations: [next() % 8, next() % 8, 0, 0],
                    bitmap_bits: next() % 100,
                    size_bytes: if next() % 4 == 0 { next() } else { SIZE },
                    flags: (next() % 8) as u32,
                }),
                12 => Frame::ReadRequest {
                    id: next(),
                    sector,
                    len_bytes: len.max(1),
                },
                13 => Frame::ChecksumRequest {
                    id: next(),
                    sector,
                    len_bytes: len.max(1),
                    digest: [0; 32],
                },
                14 => Frame::ResyncInSync {
                    id: next() % 8,
                    sector,
                    len_bytes: len.max(1),
                },
                _ => Frame::ResyncChecksum {
                    id: next() % 8,
                    sector,
                    len_bytes: len.max(1),
                    digest: [1; 32],
                },
            };
            if !p.link {
                break;
            }
            p.input(victim, Input::Frame(f));
            p.complete_ios(victim);
        }
    }
}

#[test]
fn a_paused_resync_waits_for_its_group() {
    let mut p = Pair::synced(Config::default());
    p.n[1].core.set_resync_paused(at(p.now), true);
    let bytes = dirty_and_reconnect(&mut p, 16);
    for _ in 0..50 {
        for i in 0..2 {
            p.complete_ios(i);
            p.deliver(i);
        }
        p.now += 10;
        p.input(0, Input::Tick);
        p.input(1, Input::Tick);
    }
    assert!(p.n[1].core.needs_resync());
    assert_eq!(
        p.n[0].core.bitmap().count() * 4096,
        bytes,
        "nothing moved while paused"
    );
    p.n[1].core.set_resync_paused(at(p.now), false);
    p.collect(1);
    p.settle();
    assert!(!p.n[1].core.needs_resync());
    assert_eq!(p.n[0].disk, p.n[1].disk);
}

/// Generation ids come from the driver's seed *and* the metadata's node id: two nodes
/// handed the same seed (a broken entropy source; the driver used to fall back to the
/// process id, which two lab hosts in their own pid namespaces share) still start
/// different data histories, draw after draw.
#[test]
fn two_nodes_with_the_same_seed_draw_different_generations() {
    let mut gens = [Vec::new(), Vec::new()];
    for (i, node_id) in [1u64, 2].into_iter().enumerate() {
        let mut core = Core::new(Config::default(), meta(node_id), 42, at(0));
        for _ in 0..3 {
            // A forced promotion on inconsistent data starts a new lineage each time.
            core.demote(at(0)).unwrap();
            core.invalidate(at(0)).unwrap();
            core.promote(at(0), true).unwrap();
            gens[i].push(core.generations().current);
        }
    }
    for g in &gens[0] {
        assert!(!gens[1].contains(g), "same generation drawn: {gens:?}");
    }
}

/// A state report with a role code this build does not know (or an unknown disk
/// state) drops the link, at the handshake and later: it used to be read as secondary,
/// so a newer or broken peer claiming some third role could look harmless to a primary.
#[test]
fn an_unknown_peer_role_or_state_drops_the_link() {
    for (role, disk, handshake_done) in [(2u8, 4u8, false), (255, 4, true), (0, 9, true)] {
        let mut p = if handshake_done {
            Pair::synced(Config::default())
        } else {
            let mut p = Pair::new(Config::default());
            p.link = true;
            p.input(0, Input::Connected);
            p
        };
        p.input(
            0,
            Input::Frame(Frame::State(StateReport {
                protocol: b'C',
                role,
                disk,
                node_id: 2,
                generations: p.n[1].core.generations().to_array(),
                bitmap_bits: 0,
                size_bytes: SIZE,
                flags: 0,
            })),
        );
        let s = p.n[0].core.status();
        assert_eq!(
            s.connection,
            ConnState::Connecting,
            "role {role} disk {disk}: {s:?}"
        );
        assert!(
            s.last_disconnect_reason
                .as_deref()
                .is_some_and(|r| r.contains("unknown role")),
            "role {role} disk {disk}: {s:?}"
        );
        assert_eq!(s.peer_role, None);
    }
}

/// A demotion waits until the peer has confirmed flushing every write it was sent (the
/// transfer log is empty): it asks for that flush (a barrier) and is refused as busy
/// meanwhile. Demoted at once, a node whose peer had just lost power — and with it,
/// from its cache, writes acknowledged under protocol C — and that stopped before its
/// link timed out kept no trace of them: both met again with equal generations and
/// clean bitmaps, no resync, and the peer was promoted without them (cluster-sim seed
/// 4401). Waiting, the link loss turns them into dirty bits under a new generation, and
/// the demoted node is the resync source.
#[test]
fn a_demotion_waits_until_the_peer_flushed_what_it_acknowledged() {
    let mut p = Pair::synced(Config::default());
    p.write(1, 0, 4096, 0x31);
    p.complete_ios(0);
    p.deliver(1);
    p.complete_ios(1);
    p.deliver(0);
    assert!(p.acked(0, 1), "in the peer's cache, acknowledged under C");
    let first = p.n[0].core.demote(at(p.now));
    p.collect(0);
    assert_eq!(
        first,
        Err(AdminError::Busy),
        "the peer has not flushed it yet"
    );
    assert!(
        p.wire[1].iter().any(|f| matches!(f, Frame::Barrier { .. })),
        "the demotion asks for the peer's flush"
    );
    // The peer loses power before it flushes (its cache never wrote block 0); node 0
    // does not see it until the link times out.
    p.n[1].disk[..4096].fill(0);
    p.power_cut_unseen(1);
    // The disk service retries until the demotion goes through.
    let mut tries = 0;
    while p.n[0].core.demote(at(p.now)).is_err() {
        tries += 1;
        assert!(tries < 1000, "never demoted");
        p.now += 100;
        p.input(0, Input::Tick);
        p.complete_ios(0);
    }
    p.collect(0);
    // A clean stop, then both meet again: node 0 holds the write and is the source.
    p.stop_and_start(0);
    p.connect();
    p.settle();
    assert_eq!(p.n[1].core.connection(), ConnState::Connected);
    assert_eq!(
        p.n[1].disk[0],
        0x31,
        "{:?}",
        p.n[1].core.status().last_decision
    );
    assert_eq!(p.n[1].core.promote(at(p.now), false), Ok(()));
}

/// With the peer alive the wait is one barrier round trip.
#[test]
fn a_demotion_after_the_peers_flush_goes_through() {
    let mut p = Pair::synced(Config::default());
    p.write(1, 0, 4096, 0x41);
    p.settle();
    assert!(p.acked(0, 1));
    assert_eq!(p.n[0].core.demote(at(p.now)), Err(AdminError::Busy));
    p.collect(0);
    p.settle();
    assert_eq!(p.n[0].core.demote(at(p.now)), Ok(()));
    assert_eq!(p.n[0].core.role(), Role::Secondary);
}

/// Both ends of a resync report its rate: the source used to show 0 while the target
/// showed the real figure (an operator watches either end).
#[test]
fn both_ends_of_a_resync_report_its_rate() {
    let rate = 1u64 << 20;
    let mut p = Pair::synced(Config {
        resync_rate_bytes_per_s: Some(rate),
        resync_request_bytes: 64 << 10,
        ..Config::default()
    });
    dirty_and_reconnect(&mut p, 1024); // 4 MiB: about 4 s at the limit
    let start = p.now;
    while p.now < start + 2_000 {
        let mut any = false;
        for i in 0..2 {
            any |= p.complete_ios(i);
            any |= p.deliver(i);
        }
        if !any {
            p.now += 10;
            p.input(0, Input::Tick);
            p.input(1, Input::Tick);
        }
    }
    for i in 0..2 {
        let s = p.n[i].core.status();
        assert!(
            s.resync_done_bytes > 0 && s.resync_total_bytes > s.resync_done_bytes,
            "node {i} is mid-resync: {s:?}"
        );
        assert!(
            s.resync_rate_bytes_per_s >= rate / 2 && s.resync_rate_bytes_per_s <= rate * 2,
            "node {i} ({:?}) reports {} B/s for a limit of {rate}",
            s.connection,
            s.resync_rate_bytes_per_s
        );
    }
    p.settle();
}

/// Every acknowledged write is counted in the latency histogram, in the bucket of the
/// time from its arrival to its acknowledgement (bounded state: fixed buckets).
#[test]
fn acknowledged_writes_are_counted_in_the_latency_histogram() {
    let mut p = Pair::synced(Config::default());
    for req in 1..=5u64 {
        p.write(req, req * 4096, 4096, req as u8);
        p.now += 3; // the replication round trip takes 3 ms of the core's clock
        p.settle();
        assert!(p.acked(0, req));
    }
    let h = p.n[0].core.status().write_latency;
    assert_eq!(h.count, 5, "{h:?}");
    assert_eq!(h.buckets.iter().sum::<u64>(), 5, "{h:?}");
    assert!(h.sum_ms >= 15, "{h:?}");
}

/// A clean demotion empties the activity log: after a later crash as primary, the
/// returning node resyncs the extents of that later primacy only, not every extent it
/// ever wrote (with the seed's `al-extents 257`, 1 GiB: whole disks in the whitepaper
/// stack's lab).
#[test]
fn a_crash_after_a_clean_demotion_resyncs_only_the_later_primacys_extents() {
    const EXTENT: u64 = 4 << 20;
    let mut p = Pair::synced(Config::default());
    for (k, extent) in [0u64, 1, 2].into_iter().enumerate() {
        p.write(1 + k as u64, extent * EXTENT, 4096, 7);
    }
    p.settle();
    p.input(0, Input::Flush { req: 10 });
    p.settle();
    assert!(p.acked(0, 10));
    p.n[0].core.demote(at(p.now)).unwrap();
    p.collect(0);
    p.settle();
    p.n[0].core.promote(at(p.now), false).unwrap();
    p.collect(0);
    p.settle();
    p.write(20, 3 * EXTENT, 4096, 8);
    p.input(0, Input::Flush { req: 21 });
    p.settle();
    assert!(p.acked(0, 21));
    p.power_cut(0);
    assert_eq!(
        p.n[0].core.bitmap().count() * 4096,
        EXTENT,
        "only extent 3 is marked for resync after the crash"
    );
    p.connect();
    p.settle();
    assert_eq!(p.n[0].core.connection(), ConnState::Connected);
    assert_eq!(p.n[0].core.status().resync_moved_bytes, EXTENT);
}
