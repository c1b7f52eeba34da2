//! Generation identifiers and the connect-time sync decision.
//!
//! A *generation* names one history of a disk's data, in the manner of DRBD 8's UUIDs.
//! Each side keeps four: `current` (the data it holds now), `bitmap` (the generation at
//! which its dirty bitmap started recording changes the peer lacks, 0 when none) and two
//! `history` entries (older generations, newest first).
//!
//! How they move (see docs/disk.md for the whole table):
//! - create-md: `current = JUST_CREATED`, everything else 0.
//! - a primary starts writing without its peer (promoted while disconnected, or lost the
//!   peer): if `bitmap == 0`, `bitmap = current` and `current` becomes a new random value.
//! - a resync ends: the source moves `bitmap` into `history` and clears it; the target
//!   takes the source's `current` and history.
//!
//! At connect both sides compare and reach mirror-image answers with [`decide`].

/// `current` of a disk that has never held data (create-md, never promoted).
pub const JUST_CREATED: u64 = 4;

/// The four generation identifiers of one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Generations {
    /// The generation of the data on this disk now.
    pub current: u64,
    /// The generation at which the bitmap started tracking changes; 0 if it does not.
    pub bitmap: u64,
    /// Older generations, newest first; 0 for none.
    pub history: [u64; 2],
}

impl Generations {
    /// The generations of freshly created metadata.
    pub fn just_created() -> Self {
        Generations {
            current: JUST_CREATED,
            bitmap: 0,
            history: [0, 0],
        }
    }

    /// As the four-word array carried in state frames.
    pub fn to_array(self) -> [u64; 4] {
        [self.current, self.bitmap, self.history[0], self.history[1]]
    }

    /// From the four-word array carried in state frames.
    pub fn from_array(a: [u64; 4]) -> Self {
        Generations {
            current: a[0],
            bitmap: a[1],
            history: [a[2], a[3]],
        }
    }

    /// Starts tracking changes the peer does not have: keeps the old `current` as the
    /// bitmap generation and moves to `new_current`. A no-op when already tracking.
    /// Returns true when something changed (and must be persisted before writing).
    pub fn start_new_current(&mut self, new_current: u64) -> bool {
        if self.bitmap != 0 {
            return false;
        }
        self.bitmap = self.current;
        self.current = new_current;
        true
    }

    /// A fresh start after `primary --force` on a disk without valid data: the old
    /// current goes to history and the bitmap is dropped (a full sync follows anyway).
    pub fn force_new_current(&mut self, new_current: u64) {
        if self.current != JUST_CREATED && self.current != 0 {
            self.push_history(self.current);
        }
        self.bitmap = 0;
        self.current = new_current;
    }

    /// End of a resync on the source side: the bitmap generation becomes history.
    pub fn resync_finished_on_source(&mut self) {
        if self.bitmap != 0 {
            self.push_history(self.bitmap);
            self.bitmap = 0;
        }
    }

    fn push_history(&mut self, g: u64) {
        if self.history[0] != g {
            self.history[1] = self.history[0];
            self.history[0] = g;
        }
    }
}

/// Which way data flows. `Source` means *this* side sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This side is the sync source.
    Source,
    /// This side is the sync target.
    Target,
}

impl Direction {
    /// The same decision seen from the other side.
    pub fn mirror(self) -> Self {
        match self {
            Direction::Source => Direction::Target,
            Direction::Target => Direction::Source,
        }
    }
}

/// What the generations say about two disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncDecision {
    /// Same data (or both empty): nothing to do.
    NoSync,
    /// Only the blocks in the bitmaps (both, ORed) differ.
    BitmapSync(Direction),
    /// The bitmaps do not cover the difference: copy everything.
    FullSync(Direction),
    /// Both sides changed since they last agreed. `bitmaps_cover` says whether the two
    /// bitmaps together record every change (both started from the same generation), so
    /// an automatic policy may resolve it with a bitmap resync; otherwise only an
    /// operator can, with a full sync.
    SplitBrain {
        /// The bitmaps record every change on both sides.
        bitmaps_cover: bool,
    },
    /// No shared history at all: these disks were never peers. Never synced.
    UnrelatedData,
}

impl SyncDecision {
    /// The same decision seen from the other side.
    pub fn mirror(self) -> Self {
        match self {
            SyncDecision::BitmapSync(d) => SyncDecision::BitmapSync(d.mirror()),
            SyncDecision::FullSync(d) => SyncDecision::FullSync(d.mirror()),
            other => other,
        }
    }
}

/// What one side brings to the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeSide {
    /// Its generations.
    pub generations: Generations,
    /// It was primary and stopped without demoting: its activity-log extents may hold
    /// writes the peer never got.
    pub crashed_primary: bool,
    /// Its data is not consistent (create-md, interrupted sync target, invalidate).
    pub inconsistent: bool,
    /// Its node id, only for a deterministic tie-break.
    pub node_id: u64,
}

/// Which side's activity-log extents win after a crashed primary comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashedPrimaryRule {
    /// The crashed primary is the source (DRBD's rule): right when its disk survived the
    /// crash, and the only choice under protocol A, where acknowledged writes may exist
    /// only on the primary.
    CrashedIsSource,
    /// The side that did not crash is the source: under protocols B and C it holds every
    /// acknowledged write, while the crashed side's volatile write cache may have lost
    /// some of them. tandem uses this for B and C.
    SurvivorIsSource,
}

/// The connect-time decision from both sides' generations. Pure and symmetric:
/// `decide(a, b, r) == decide(b, a, r).mirror()` for every input (tested).
///
/// Rules, first match wins (numbered as in docs/disk.md):
/// 1. both `current == JUST_CREATED` → no sync;
/// 2. local just created → full sync, target; 3. peer just created → full sync, source;
/// 4. equal `current`: an inconsistent side is the target (bitmap); otherwise a crashed
///    primary's AL extents are resynced per `rule`; otherwise no sync;
/// 5. peer `bitmap == local current` → bitmap sync, target (the peer moved on, we did not);
/// 6. local `bitmap == peer current` → bitmap sync, source;
/// 7. peer history holds local current → full sync, target (the peer's bitmap no longer
///    covers all it changed since our generation);
/// 8. local history holds peer current → full sync, source;
/// 9. equal non-zero `bitmap` → split brain, bitmaps cover the changes;
/// 10. any other shared non-zero generation → split brain, bitmaps do not cover;
/// 11. otherwise → unrelated data.
pub fn decide(
    local: &HandshakeSide,
    peer: &HandshakeSide,
    rule: CrashedPrimaryRule,
) -> SyncDecision {
    use Direction::*;
    use SyncDecision::*;
    let l = local.generations;
    let p = peer.generations;
    let l_jc = l.current == JUST_CREATED || l.current == 0;
    let p_jc = p.current == JUST_CREATED || p.current == 0;
    if l_jc && p_jc {
        return NoSync;
    }
    if l_jc {
        return FullSync(Target);
    }
    if p_jc {
        return FullSync(Source);
    }
    if l.current == p.current {
        match (local.inconsistent, peer.inconsistent) {
            (true, false) => return BitmapSync(Target),
            (false, true) => return BitmapSync(Source),
            // Both inconsistent with the same generation: neither may serve as source.
            (true, true) => return NoSync,
            (false, false) => {}
        }
        // Equal generations mean the crashed primary acknowledged nothing alone (its
        // first write alone starts a new generation, durably, before it is done): a
        // survivor holds every acknowledged write even if it marked itself outdated.
        let dir = match (local.crashed_primary, peer.crashed_primary) {
            (false, false) => return NoSync,
            (true, false) => match rule {
                CrashedPrimaryRule::CrashedIsSource => Source,
                CrashedPrimaryRule::SurvivorIsSource => Target,
            },
            (false, true) => match rule {
                CrashedPrimaryRule::CrashedIsSource => Target,
                CrashedPrimaryRule::SurvivorIsSource => Source,
            },
            // Both crashed as primary (only in a dual-primary accident): break the tie
            // by node id so both sides agree, and resync both sets of extents.
            (true, true) => match local.node_id.cmp(&peer.node_id) {
                std::cmp::Ordering::Greater => Source,
                std::cmp::Ordering::Less => Target,
                // Same id means cloned metadata: no side can be chosen.
                std::cmp::Ordering::Equal => return NoSync,
            },
        };
        return BitmapSync(dir);
    }
    let peer_moved_on = p.bitmap != 0 && p.bitmap == l.current;
    let we_moved_on = l.bitmap != 0 && l.bitmap == p.current;
    match (peer_moved_on, we_moved_on) {
        (true, false) => return BitmapSync(Target),
        (false, true) => return BitmapSync(Source),
        (true, true) => {
            return SplitBrain {
                bitmaps_cover: false,
            };
        }
        (false, false) => {}
    }
    let peer_has_ours = p.history.contains(&l.current);
    let we_have_peers = l.history.contains(&p.current);
    match (peer_has_ours, we_have_peers) {
        (true, false) => return FullSync(Target),
        (false, true) => return FullSync(Source),
        // Each claims the other is in its past: histories contradict each other.
        (true, true) => {
            return SplitBrain {
                bitmaps_cover: false,
            };
        }
        (false, false) => {}
    }
    if l.bitmap != 0 && l.bitmap == p.bitmap {
        return SplitBrain {
            bitmaps_cover: true,
        };
    }
    let l_old = [l.bitmap, l.history[0], l.history[1]];
    let p_old = [p.bitmap, p.history[0], p.history[1]];
    if l_old
        .iter()
        .any(|g| *g != 0 && *g != JUST_CREATED && p_old.contains(g))
    {
        return SplitBrain {
            bitmaps_cover: false,
        };
    }
    UnrelatedData
}

#[cfg(test)]
mod tests {
    use super::*;
    use CrashedPrimaryRule::*;
    use Direction::*;
    use SyncDecision::*;

    fn side(c: u64, b: u64, h0: u64, h1: u64) -> HandshakeSide {
        HandshakeSide {
            generations: Generations {
                current: c,
                bitmap: b,
                history: [h0, h1],
            },
            crashed_primary: false,
            inconsistent: false,
            node_id: 1,
        }
    }

    /// The decision table, one row per rule (and the interesting variants), as
    /// (local, peer, rule, expected).
    #[test]
    fn decision_table() {
        let jc = JUST_CREATED;
        let crashed = |mut s: HandshakeSide| {
            s.crashed_primary = true;
            s
        };
        let incons = |mut s: HandshakeSide| {
            s.inconsistent = true;
            s
        };
        let rows: Vec<(
            HandshakeSide,
            HandshakeSide,
            CrashedPrimaryRule,
            SyncDecision,
        )> = vec![
            // 1: both fresh.
            (
                side(jc, 0, 0, 0),
                side(jc, 0, 0, 0),
                SurvivorIsSource,
                NoSync,
            ),
            // 2/3: one fresh, the other has data.
            (
                side(jc, 0, 0, 0),
                side(10, 0, 0, 0),
                SurvivorIsSource,
                FullSync(Target),
            ),
            (
                side(10, 0, 0, 0),
                side(jc, 0, 0, 0),
                SurvivorIsSource,
                FullSync(Source),
            ),
            // 4: same data.
            (
                side(10, 0, 0, 0),
                side(10, 0, 0, 0),
                SurvivorIsSource,
                NoSync,
            ),
            (
                side(10, 0, 5, 0),
                side(10, 0, 5, 0),
                CrashedIsSource,
                NoSync,
            ),
            // 4: same generation, one side inconsistent (invalidate, interrupted target).
            (
                incons(side(10, 0, 0, 0)),
                side(10, 0, 0, 0),
                SurvivorIsSource,
                BitmapSync(Target),
            ),
            (
                side(10, 0, 0, 0),
                incons(side(10, 0, 0, 0)),
                SurvivorIsSource,
                BitmapSync(Source),
            ),
            (
                incons(side(10, 0, 0, 0)),
                incons(side(10, 0, 0, 0)),
                SurvivorIsSource,
                NoSync,
            ),
            // 4: crashed primary came back, peer never promoted.
            (
                crashed(side(10, 0, 0, 0)),
                side(10, 0, 0, 0),
                SurvivorIsSource,
                BitmapSync(Target),
            ),
            (
                crashed(side(10, 0, 0, 0)),
                side(10, 0, 0, 0),
                CrashedIsSource,
                BitmapSync(Source),
            ),
            (
                side(10, 0, 0, 0),
                crashed(side(10, 0, 0, 0)),
                SurvivorIsSource,
                BitmapSync(Source),
            ),
            (
                side(10, 0, 0, 0),
                crashed(side(10, 0, 0, 0)),
                CrashedIsSource,
                BitmapSync(Target),
            ),
            // 5: the peer wrote while we were away (failover, or primary lost secondary).
            (
                side(10, 0, 0, 0),
                side(20, 10, 0, 0),
                SurvivorIsSource,
                BitmapSync(Target),
            ),
            (
                crashed(side(10, 0, 0, 0)),
                side(20, 10, 0, 0),
                CrashedIsSource,
                BitmapSync(Target),
            ),
            // 6: we wrote while the peer was away.
            (
                side(20, 10, 0, 0),
                side(10, 0, 0, 0),
                SurvivorIsSource,
                BitmapSync(Source),
            ),
            // 6: interrupted resync: the target keeps its old current until the end.
            (
                side(20, 10, 0, 0),
                incons(side(10, 0, 0, 0)),
                SurvivorIsSource,
                BitmapSync(Source),
            ),
            // 7/8: the peer's bitmap generation already went to history.
            (
                side(10, 0, 0, 0),
                side(30, 0, 10, 0),
                SurvivorIsSource,
                FullSync(Target),
            ),
            (
                side(10, 0, 0, 0),
                side(30, 0, 5, 10),
                SurvivorIsSource,
                FullSync(Target),
            ),
            (
                side(30, 0, 10, 0),
                side(10, 0, 0, 0),
                SurvivorIsSource,
                FullSync(Source),
            ),
            // 9: both wrote since generation 10: split brain, bitmaps cover.
            (
                side(21, 10, 0, 0),
                side(22, 10, 0, 0),
                SurvivorIsSource,
                SplitBrain {
                    bitmaps_cover: true,
                },
            ),
            // 10: both moved on from a shared older generation.
            (
                side(21, 11, 10, 0),
                side(22, 12, 10, 0),
                SurvivorIsSource,
                SplitBrain {
                    bitmaps_cover: false,
                },
            ),
            (
                side(21, 0, 10, 0),
                side(22, 10, 0, 0),
                SurvivorIsSource,
                SplitBrain {
                    bitmaps_cover: false,
                },
            ),
            // 11: nothing shared.
            (
                side(21, 11, 1, 2),
                side(22, 12, 3, 5),
                SurvivorIsSource,
                UnrelatedData,
            ),
            (
                side(21, 0, 0, 0),
                side(22, 0, 0, 0),
                SurvivorIsSource,
                UnrelatedData,
            ),
        ];
        for (i, (l, p, r, want)) in rows.iter().enumerate() {
            assert_eq!(decide(l, p, *r), *want, "row {i}: {l:?} vs {p:?}");
            assert_eq!(decide(p, l, *r), want.mirror(), "row {i} mirrored");
        }
    }

    /// Exhaustive over a small alphabet of generation values: both sides always reach
    /// mirror-image answers, and a side never becomes sync target while the peer's
    /// generations show no trace of its current data (that would overwrite data the
    /// peer lacks).
    #[test]
    fn exhaustive_symmetry_and_safety() {
        let vals = [0u64, JUST_CREATED, 10, 11, 12];
        let mut sides = Vec::new();
        for c in [JUST_CREATED, 10, 11, 12] {
            for b in vals {
                for h0 in vals {
                    for flags in 0..4u8 {
                        sides.push(HandshakeSide {
                            generations: Generations {
                                current: c,
                                bitmap: b,
                                history: [h0, 0],
                            },
                            crashed_primary: flags & 1 != 0,
                            inconsistent: flags & 2 != 0,
                            node_id: u64::from(flags) + c,
                        });
                    }
                }
            }
        }
        let mut n = 0;
        for l in &sides {
            for p in &sides {
                for r in [SurvivorIsSource, CrashedIsSource] {
                    let d = decide(l, p, r);
                    assert_eq!(d, decide(p, l, r).mirror(), "{l:?} {p:?}");
                    if let BitmapSync(Target) | FullSync(Target) = d {
                        let lc = l.generations.current;
                        let pg = p.generations;
                        let peer_knows_ours = lc == JUST_CREATED
                            || lc == pg.current
                            || lc == pg.bitmap
                            || pg.history.contains(&lc);
                        assert!(peer_knows_ours, "would overwrite unknown data: {l:?} {p:?}");
                    }
                    n += 1;
                }
            }
        }
        assert!(n > 10_000);
    }

    #[test]
    fn generation_moves() {
        let mut g = Generations::just_created();
        g.force_new_current(100);
        assert_eq!(
            g,
            Generations {
                current: 100,
                bitmap: 0,
                history: [0, 0]
            }
        );
        assert!(g.start_new_current(200));
        assert!(!g.start_new_current(300), "already tracking");
        assert_eq!(
            g,
            Generations {
                current: 200,
                bitmap: 100,
                history: [0, 0]
            }
        );
        g.resync_finished_on_source();
        assert_eq!(
            g,
            Generations {
                current: 200,
                bitmap: 0,
                history: [100, 0]
            }
        );
        g.start_new_current(300);
        g.resync_finished_on_source();
        assert_eq!(g.history, [200, 100]);
    }
}
