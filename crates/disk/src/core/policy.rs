//! After-split-brain policies, in the manner of DRBD's `after-sb-0pri` / `after-sb-1pri` /
//! `after-sb-2pri`, and the operator's `--discard-my-data`.
//!
//! Given both sides' facts, [`resolve`] names the side whose changes are thrown away
//! (the sync target), or says "disconnect and wait for an operator". Both sides compute
//! it from the same facts and reach mirror-image answers.

use super::generation::Direction;

/// One automatic policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBrainPolicy {
    /// Never resolve automatically: disconnect and wait for an operator.
    Disconnect,
    /// If exactly one side wrote nothing since the split, resync from the other.
    DiscardZeroChanges,
    /// Resync from the side with more changed blocks (ties: by node id).
    DiscardLeastChanges,
    /// Keep the side that was primary when the link broke; discard the one promoted later.
    DiscardYoungerPrimary,
    /// Keep the side promoted while the link was down; discard the one that was primary
    /// when it broke.
    DiscardOlderPrimary,
    /// With one primary: apply the no-primary policy, but only if it discards the
    /// secondary; otherwise disconnect.
    Consensus,
    /// With one primary: discard the secondary's changes.
    DiscardSecondary,
}

impl SplitBrainPolicy {
    /// Parses DRBD's spelling (`discard-zero-changes`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disconnect" => SplitBrainPolicy::Disconnect,
            "discard-zero-changes" => SplitBrainPolicy::DiscardZeroChanges,
            "discard-least-changes" => SplitBrainPolicy::DiscardLeastChanges,
            "discard-younger-primary" => SplitBrainPolicy::DiscardYoungerPrimary,
            "discard-older-primary" => SplitBrainPolicy::DiscardOlderPrimary,
            "consensus" => SplitBrainPolicy::Consensus,
            "discard-secondary" => SplitBrainPolicy::DiscardSecondary,
            _ => return None,
        })
    }
}

/// The three policies by number of primaries at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterSplitBrain {
    /// No primary: `disconnect`, `discard-zero-changes`, `discard-least-changes`,
    /// `discard-younger-primary`, `discard-older-primary`.
    pub no_primary: SplitBrainPolicy,
    /// One primary: `disconnect`, `consensus`, `discard-secondary`.
    pub one_primary: SplitBrainPolicy,
    /// Two primaries: only `disconnect`.
    pub two_primaries: SplitBrainPolicy,
}

impl Default for AfterSplitBrain {
    /// Everything manual, as DRBD's defaults.
    fn default() -> Self {
        AfterSplitBrain {
            no_primary: SplitBrainPolicy::Disconnect,
            one_primary: SplitBrainPolicy::Disconnect,
            two_primaries: SplitBrainPolicy::Disconnect,
        }
    }
}

impl AfterSplitBrain {
    /// Refuses combinations that make no sense (as DRBD does).
    pub fn validate(&self) -> Result<(), &'static str> {
        use SplitBrainPolicy::*;
        if matches!(self.no_primary, Consensus | DiscardSecondary) {
            return Err("after-sb-0pri cannot be consensus or discard-secondary");
        }
        if !matches!(self.one_primary, Disconnect | Consensus | DiscardSecondary) {
            return Err("after-sb-1pri must be disconnect, consensus or discard-secondary");
        }
        if self.two_primaries != Disconnect {
            return Err("after-sb-2pri must be disconnect");
        }
        Ok(())
    }
}

/// One side's facts for the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitBrainSide {
    /// Blocks changed since the split (set bits).
    pub changed_blocks: u64,
    /// Primary right now.
    pub primary: bool,
    /// Was primary when the link broke.
    pub primary_at_split: bool,
    /// The operator said `connect --discard-my-data` here.
    pub discard_my_data: bool,
    /// None of this side's changes since the split was ever acknowledged (disk fencing
    /// kept its I/O suspended): they may be thrown away.
    pub unacked_changes: bool,
    /// Tie-break.
    pub node_id: u64,
}

/// What to do about a split brain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Resync in this direction (`Target` = our changes are discarded).
    Resync(Direction),
    /// Disconnect and wait for an operator.
    Disconnect,
}

/// Resolves a split brain. `bitmaps_cover` comes from the generation decision: when
/// false, only the operator's `discard-my-data` resolves it (with a full sync).
pub fn resolve(
    policies: &AfterSplitBrain,
    local: &SplitBrainSide,
    peer: &SplitBrainSide,
    bitmaps_cover: bool,
) -> Resolution {
    use Direction::*;
    let r = match (local.discard_my_data, peer.discard_my_data) {
        (true, false) => Resolution::Resync(Target),
        (false, true) => Resolution::Resync(Source),
        (true, true) => Resolution::Disconnect,
        // Changes nobody was ever told were stored lose against changes that were
        // (whatever the bitmaps cover: a full sync otherwise): nothing acknowledged is
        // discarded. Both unacknowledged: either may go; the higher node id stays.
        (false, false) if local.unacked_changes && !peer.unacked_changes => {
            Resolution::Resync(Target)
        }
        (false, false) if peer.unacked_changes && !local.unacked_changes => {
            Resolution::Resync(Source)
        }
        (false, false) if local.unacked_changes && peer.unacked_changes => {
            if local.node_id > peer.node_id {
                Resolution::Resync(Source)
            } else {
                Resolution::Resync(Target)
            }
        }
        (false, false) if !bitmaps_cover => Resolution::Disconnect,
        (false, false) => automatic(policies, local, peer),
    };
    // Whatever the policy, a primary's data is never the one thrown away.
    match r {
        Resolution::Resync(Target) if local.primary => Resolution::Disconnect,
        Resolution::Resync(Source) if peer.primary => Resolution::Disconnect,
        r => r,
    }
}

fn automatic(
    policies: &AfterSplitBrain,
    local: &SplitBrainSide,
    peer: &SplitBrainSide,
) -> Resolution {
    use Direction::*;
    match (local.primary, peer.primary) {
        (false, false) => no_primary(policies.no_primary, local, peer),
        (true, true) => Resolution::Disconnect,
        _ => match policies.one_primary {
            SplitBrainPolicy::DiscardSecondary => {
                Resolution::Resync(if local.primary { Source } else { Target })
            }
            SplitBrainPolicy::Consensus => match no_primary(policies.no_primary, local, peer) {
                Resolution::Resync(Target) if !local.primary => Resolution::Resync(Target),
                Resolution::Resync(Source) if local.primary => Resolution::Resync(Source),
                _ => Resolution::Disconnect,
            },
            _ => Resolution::Disconnect,
        },
    }
}

fn no_primary(p: SplitBrainPolicy, l: &SplitBrainSide, r: &SplitBrainSide) -> Resolution {
    use Direction::*;
    let tie = if l.node_id > r.node_id {
        Source
    } else {
        Target
    };
    match p {
        SplitBrainPolicy::DiscardZeroChanges => match (l.changed_blocks, r.changed_blocks) {
            (0, 0) => Resolution::Resync(tie),
            (0, _) => Resolution::Resync(Target),
            (_, 0) => Resolution::Resync(Source),
            _ => Resolution::Disconnect,
        },
        SplitBrainPolicy::DiscardLeastChanges => {
            Resolution::Resync(match l.changed_blocks.cmp(&r.changed_blocks) {
                std::cmp::Ordering::Less => Target,
                std::cmp::Ordering::Greater => Source,
                std::cmp::Ordering::Equal => tie,
            })
        }
        SplitBrainPolicy::DiscardYoungerPrimary => match (l.primary_at_split, r.primary_at_split) {
            (true, false) => Resolution::Resync(Source),
            (false, true) => Resolution::Resync(Target),
            _ => Resolution::Disconnect,
        },
        SplitBrainPolicy::DiscardOlderPrimary => match (l.primary_at_split, r.primary_at_split) {
            (true, false) => Resolution::Resync(Target),
            (false, true) => Resolution::Resync(Source),
            _ => Resolution::Disconnect,
        },
        _ => Resolution::Disconnect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::*;
    use SplitBrainPolicy::*;

    fn s(changed: u64, primary: bool, at_split: bool, discard: bool, id: u64) -> SplitBrainSide {
        SplitBrainSide {
            changed_blocks: changed,
            primary,
            primary_at_split: at_split,
            discard_my_data: discard,
            unacked_changes: false,
            node_id: id,
        }
    }

    fn pol(p0: SplitBrainPolicy, p1: SplitBrainPolicy) -> AfterSplitBrain {
        AfterSplitBrain {
            no_primary: p0,
            one_primary: p1,
            two_primaries: Disconnect,
        }
    }

    #[test]
    fn policy_table() {
        let rows = vec![
            // Default: manual.
            (
                pol(Disconnect, Disconnect),
                s(0, false, false, false, 1),
                s(5, false, false, false, 2),
                true,
                Resolution::Disconnect,
            ),
            // Manual discard-my-data wins, even when bitmaps do not cover.
            (
                pol(Disconnect, Disconnect),
                s(9, false, false, true, 1),
                s(5, false, false, false, 2),
                false,
                Resolution::Resync(Target),
            ),
            (
                pol(Disconnect, Disconnect),
                s(9, false, false, true, 1),
                s(5, false, false, true, 2),
                true,
                Resolution::Disconnect,
            ),
            // ...but not against a primary's data.
            (
                pol(Disconnect, Disconnect),
                s(9, false, false, false, 1),
                s(5, true, false, true, 2),
                true,
                Resolution::Disconnect,
            ),
            // discard-zero-changes.
            (
                pol(DiscardZeroChanges, Disconnect),
                s(0, false, false, false, 1),
                s(5, false, false, false, 2),
                true,
                Resolution::Resync(Target),
            ),
            (
                pol(DiscardZeroChanges, Disconnect),
                s(3, false, false, false, 1),
                s(5, false, false, false, 2),
                true,
                Resolution::Disconnect,
            ),
            // discard-least-changes.
            (
                pol(DiscardLeastChanges, Disconnect),
                s(3, false, false, false, 1),
                s(5, false, false, false, 2),
                true,
                Resolution::Resync(Target),
            ),
            (
                pol(DiscardLeastChanges, Disconnect),
                s(5, false, false, false, 1),
                s(5, false, false, false, 2),
                true,
                Resolution::Resync(Target),
            ),
            // discard-younger-primary.
            (
                pol(DiscardYoungerPrimary, Disconnect),
                s(3, false, true, false, 1),
                s(5, false, false, false, 2),
                true,
                Resolution::Resync(Source),
            ),
            (
                pol(DiscardYoungerPrimary, Disconnect),
                s(3, false, true, false, 1),
                s(5, false, true, false, 2),
                true,
                Resolution::Disconnect,
            ),
            // discard-older-primary: the other way round.
            (
                pol(DiscardOlderPrimary, Disconnect),
                s(3, false, true, false, 1),
                s(5, false, false, false, 2),
                true,
                Resolution::Resync(Target),
            ),
            (
                pol(DiscardOlderPrimary, Disconnect),
                s(3, false, false, false, 1),
                s(5, false, true, false, 2),
                true,
                Resolution::Resync(Source),
            ),
            (
                pol(DiscardOlderPrimary, Disconnect),
                s(3, false, false, false, 1),
                s(5, false, false, false, 2),
                true,
                Resolution::Disconnect,
            ),
            // Bitmaps do not cover: automatic policies stand down.
            (
                pol(DiscardLeastChanges, Disconnect),
                s(3, false, false, false, 1),
                s(5, false, false, false, 2),
                false,
                Resolution::Disconnect,
            ),
            // One primary, consensus: only if the secondary is the one discarded.
            (
                pol(DiscardZeroChanges, Consensus),
                s(0, false, false, false, 1),
                s(5, true, false, false, 2),
                true,
                Resolution::Resync(Target),
            ),
            (
                pol(DiscardZeroChanges, Consensus),
                s(5, false, false, false, 1),
                s(0, true, false, false, 2),
                true,
                Resolution::Disconnect,
            ),
            // One primary, discard-secondary.
            (
                pol(Disconnect, DiscardSecondary),
                s(5, true, false, false, 1),
                s(9, false, false, false, 2),
                true,
                Resolution::Resync(Source),
            ),
            // Two primaries: always disconnect.
            (
                pol(DiscardZeroChanges, DiscardSecondary),
                s(0, true, false, false, 1),
                s(5, true, false, false, 2),
                true,
                Resolution::Disconnect,
            ),
        ];
        for (i, (p, l, r, cover, want)) in rows.into_iter().enumerate() {
            assert_eq!(resolve(&p, &l, &r, cover), want, "row {i}");
            let mirrored = match want {
                Resolution::Resync(d) => Resolution::Resync(d.mirror()),
                x => x,
            };
            assert_eq!(resolve(&p, &r, &l, cover), mirrored, "row {i} mirrored");
        }
    }

    #[test]
    fn validation() {
        assert!(pol(Consensus, Disconnect).validate().is_err());
        assert!(pol(Disconnect, DiscardZeroChanges).validate().is_err());
        assert!(pol(DiscardZeroChanges, Consensus).validate().is_ok());
        assert_eq!(
            SplitBrainPolicy::parse("discard-least-changes"),
            Some(DiscardLeastChanges)
        );
    }
}
