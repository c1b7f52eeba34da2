//! `Core::poll_timeout`: a driver that ticks a core only when it says a tick is due
//! (and on inputs) loses nothing — pings, ping timeouts, bitmap persistence, the paced
//! resync and the repeated fence-peer request all happen — and an idle disk sleeps.

mod pair;

use pair::Pair;
use tandem_disk::core::{Config, ConnState, DiskFencing, Input};
use tandem_testkit::{at, ms};

/// Runs the pair for `ms` as an event-driven driver would: everything that can move
/// moves, then time jumps to the earliest `poll_timeout` and only the cores due then are
/// ticked. Returns the ticks each node got.
fn run_for(p: &mut Pair, for_ms: u64) -> [u64; 2] {
    let until_ms = p.now + for_ms;
    let mut ticks = [0; 2];
    loop {
        while (0..2).any(|i| p.complete_ios(i) | p.deliver(i)) {}
        let due: Vec<Option<u64>> = p.n.iter().map(|n| n.core.poll_timeout().map(ms)).collect();
        let Some(next) = due.iter().flatten().copied().min() else {
            return ticks;
        };
        if next > until_ms {
            p.now = until_ms;
            return ticks;
        }
        p.now = p.now.max(next);
        for (i, d) in due.iter().enumerate() {
            if d.is_some_and(|d| d <= p.now) {
                p.input(i, Input::Tick);
                ticks[i] += 1;
            }
        }
    }
}

#[test]
fn an_idle_connected_core_sleeps_a_ping_interval() {
    let cfg = Config::default();
    let mut p = Pair::synced(cfg.clone());
    // Once each side has pinged on its own schedule, its next wake is a whole ping
    // interval away (not the driver's former 20 ms).
    run_for(&mut p, 2 * cfg.ping_interval_ms);
    let ticks = run_for(&mut p, 60 * cfg.ping_interval_ms);
    for (i, n) in p.n.iter().enumerate() {
        let due = n
            .core
            .poll_timeout()
            .map(ms)
            .expect("a connected core pings");
        assert!(due > p.now, "node {i}: due {due} at {}", p.now);
        assert_eq!(n.core.connection(), ConnState::Connected, "node {i}");
    }
    // Right after a tick that pinged, the next one is exactly a ping interval later.
    let due = p.n[0].core.poll_timeout().map(ms).unwrap();
    p.now = due;
    p.input(0, Input::Tick);
    assert!(p.n[0].core.poll_timeout().map(ms).unwrap() >= p.now + cfg.ping_interval_ms);
    // 60 s idle: one wake per ping interval and node (3000 at a 20 ms tick).
    for (i, t) in ticks.iter().enumerate() {
        assert!((59..=61).contains(t), "node {i}: {t} ticks in 60 s");
    }
}

#[test]
fn a_disconnected_idle_core_has_nothing_due() {
    let mut p = Pair::synced(Config::default());
    for i in 0..2 {
        p.n[i].core.disconnect(at(p.now));
        p.collect(i);
    }
    run_for(&mut p, 10_000);
    for (i, n) in p.n.iter().enumerate() {
        assert_eq!(n.core.connection(), ConnState::StandAlone, "node {i}");
        assert_eq!(n.core.poll_timeout().map(ms), None, "node {i}");
    }
}

#[test]
fn dirty_bitmap_blocks_are_persisted_when_due() {
    let cfg = Config {
        fencing: DiskFencing::DontCare,
        ..Config::default()
    };
    let mut p = Pair::synced(cfg.clone());
    p.n[0].core.disconnect(at(p.now));
    p.collect(0);
    run_for(&mut p, 100);
    let t0 = p.now;
    p.write(1, 0, 4096, 7);
    p.complete_ios(0);
    assert!(p.acked(0, 1));
    let due = p.n[0]
        .core
        .poll_timeout()
        .expect("a dirty bitmap block waits");
    assert!(
        due > at(t0) && due <= at(t0 + cfg.bitmap_persist_interval_ms),
        "{due:?}"
    );
    run_for(&mut p, 10 * cfg.bitmap_persist_interval_ms);
    assert_eq!(
        p.n[0].core.poll_timeout().map(ms),
        None,
        "persisted, nothing left due"
    );
    assert_eq!(p.n[0].stored.bitmap.count(), 1, "the dirty bit is durable");
}

#[test]
fn a_rate_limited_resync_completes_ticked_only_when_due() {
    let rate = 1u64 << 20;
    let mut p = Pair::synced(Config {
        resync_rate_bytes_per_s: Some(rate),
        resync_request_bytes: 64 << 10,
        ..Config::default()
    });
    p.n[0].core.disconnect(at(p.now));
    p.collect(0);
    run_for(&mut p, 100);
    let blocks = 512u64; // 2 MiB
    for k in 0..blocks {
        p.write(1000 + k, k * 4096, 4096, 3);
    }
    run_for(&mut p, 2_000);
    p.n[0].core.connect(at(p.now), false);
    p.collect(0);
    p.connect();
    // 2 MiB at 1 MiB/s: half a second in, the rate still holds it back.
    let first = run_for(&mut p, 500);
    assert!(p.n[0].core.bitmap().count() > blocks / 4, "the rate holds");
    let rest = run_for(&mut p, 10_000);
    assert_eq!(p.n[1].core.connection(), ConnState::Connected);
    assert_eq!(p.n[0].core.bitmap().count(), 0);
    // The target woke about once per request the rate held back (and per ping), not
    // every few milliseconds.
    let requests = blocks * 4096 / (64 << 10);
    let ticks = first[1] + rest[1];
    assert!(
        ticks <= requests + 12,
        "{ticks} ticks for {requests} requests"
    );
}

#[test]
fn a_suspended_primary_repeats_its_fence_request_when_due() {
    let mut p = Pair::synced(Config::default());
    p.answer_fence_peer = false;
    p.write(1, 0, 4096, 1);
    p.link = false;
    p.wire = [Default::default(), Default::default()];
    p.input(0, Input::Disconnected);
    p.input(1, Input::Disconnected);
    assert!(p.n[0].core.suspended());
    let asked = p.fence_peer_asked[0];
    let t0 = p.now;
    assert_eq!(p.n[0].core.poll_timeout().map(ms), Some(t0 + 5_000));
    run_for(&mut p, 5_000);
    assert_eq!(p.fence_peer_asked[0], asked + 1);
    assert_eq!(p.n[0].core.poll_timeout().map(ms), Some(t0 + 10_000));
}
