//! The connect-time handshake: the peer's state, the sync decision, bitmap exchange.

use tandem_wire::frame::{Frame, MAX_DATA_BYTES, SECTOR_BYTES, StateReport, state_flags};

use super::generation::{
    CrashedPrimaryRule, Direction, Generations, HandshakeSide, SyncDecision, decide,
};
use super::policy::{Resolution, SplitBrainSide, resolve};
use super::resync::{ResyncLimits, ResyncPlanner};
use super::*;

impl Core {
    pub(super) fn valid_range(&self, offset: u64, len: u64) -> bool {
        len > 0
            && len % SECTOR_BYTES == 0
            && offset % SECTOR_BYTES == 0
            && offset
                .checked_add(len)
                .is_some_and(|e| e <= self.size_bytes)
    }

    pub(super) fn on_peer_state(&mut self, s: StateReport) {
        // An unknown code is a peer this build does not understand, not a secondary.
        let role = match s.role {
            0 => Some(Role::Secondary),
            1 => Some(Role::Primary),
            _ => None,
        };
        let (Some(disk), Some(role)) = (DiskState::from_code(s.disk), role) else {
            self.drop_link("peer sent an unknown role or disk state");
            return;
        };
        let first = self.peer.is_none();
        self.peer = Some(PeerInfo { role, disk });
        if !first {
            if role == Role::Primary && self.role == Role::Primary {
                self.drop_link("both nodes are primary");
            }
            // A secondary leaving on purpose says, once durable, that its copy is stale.
            if disk == DiskState::Outdated {
                self.set_peer_outdated();
            }
            return;
        }
        if self.conn != ConnState::Handshaking {
            return;
        }
        if s.protocol != protocol_code(self.cfg.protocol) {
            self.go_standalone("peer uses another replication protocol");
            return;
        }
        if s.size_bytes != self.size_bytes {
            self.go_standalone("peer disk has another size");
            return;
        }
        if role == Role::Primary && self.role == Role::Primary {
            self.go_standalone("both nodes are primary (split brain)");
            return;
        }
        if self.disk == DiskState::Diskless || disk == DiskState::Diskless {
            // No resync possible; mirror writes if one side has data.
            self.conn = ConnState::Connected;
            return;
        }
        let rule = match self.cfg.protocol {
            Protocol::A => CrashedPrimaryRule::CrashedIsSource,
            Protocol::B | Protocol::C => CrashedPrimaryRule::SurvivorIsSource,
        };
        let peer_gens = Generations::from_array(s.generations);
        let local = HandshakeSide {
            generations: self.gens,
            crashed_primary: self.flags.crashed_primary,
            inconsistent: self.disk == DiskState::Inconsistent,
            node_id: self.node_id,
        };
        let peer_side = HandshakeSide {
            generations: peer_gens,
            crashed_primary: s.flags & state_flags::CRASHED_PRIMARY != 0,
            inconsistent: disk == DiskState::Inconsistent,
            node_id: s.node_id,
        };
        let mut decision = decide(&local, &peer_side, rule);
        self.last_decision = Some(decision);
        // Leftover bits with equal generations (verify found differences, an
        // interrupted invalidate, or a side that wrote alone after a source-side
        // resync's end was lost in a crash): resync them. The source is, in order: the
        // primary; a side that is not outdated over one that is; a side that records
        // changes of its own (a bitmap generation) over one that does not; a side with
        // dirty bits over one without; the higher node id. An outdated copy never
        // overwrites a newer one this way.
        if decision == SyncDecision::NoSync
            && self.gens.current == peer_gens.current
            && (self.bitmap.count() > 0 || s.bitmap_bits > 0)
            && self.disk != DiskState::Inconsistent
            && disk != DiskState::Inconsistent
        {
            // Bits mark blocks the side's peer may lack (its transfer log at a link loss):
            // a side with bits over one without.
            let rank = |primary: bool, disk: DiskState, bitmap_gen: u64, bits: u64, id: u64| {
                (
                    primary,
                    disk != DiskState::Outdated,
                    bitmap_gen != 0,
                    bits > 0,
                    id,
                )
            };
            let source = rank(
                self.role == Role::Primary,
                self.disk,
                self.gens.bitmap,
                self.bitmap.count(),
                self.node_id,
            ) > rank(
                role == Role::Primary,
                disk,
                peer_gens.bitmap,
                s.bitmap_bits,
                s.node_id,
            );
            decision = SyncDecision::BitmapSync(if source {
                Direction::Source
            } else {
                Direction::Target
            });
        }
        let (dir, full) = match decision {
            SyncDecision::NoSync => {
                if self.disk == DiskState::Inconsistent && disk == DiskState::Inconsistent {
                    // Two fresh disks: wait for `primary --force` on one.
                    self.conn = ConnState::Connected;
                    return;
                }
                self.conn = ConnState::Connected;
                // Equal generations and nothing dirty: both copies are the same data, so
                // an outdated mark (set while apart) no longer holds on either side.
                if matches!(self.disk, DiskState::Consistent | DiskState::Outdated) {
                    self.disk = DiskState::UpToDate;
                }
                if let Some(p) = &mut self.peer
                    && matches!(p.disk, DiskState::Consistent | DiskState::Outdated)
                {
                    p.disk = DiskState::UpToDate;
                }
                if self.flags.crashed_primary
                    || self.flags.primary_at_split
                    || self.flags.outdated
                    || self.flags.peer_outdated
                    || self.flags.unacked_changes
                {
                    self.flags.crashed_primary = false;
                    self.flags.primary_at_split = false;
                    self.flags.outdated = false;
                    self.flags.peer_outdated = false;
                    self.flags.unacked_changes = false;
                    self.persist_superblock();
                }
                self.resume_in_sync();
                return;
            }
            SyncDecision::BitmapSync(d) => (d, false),
            SyncDecision::FullSync(d) => (d, true),
            SyncDecision::SplitBrain { bitmaps_cover } => {
                let me = SplitBrainSide {
                    changed_blocks: self.bitmap.count(),
                    primary: self.role == Role::Primary,
                    primary_at_split: self.flags.primary_at_split,
                    discard_my_data: self.discard_my_data,
                    unacked_changes: self.flags.unacked_changes,
                    node_id: self.node_id,
                };
                let them = SplitBrainSide {
                    changed_blocks: s.bitmap_bits,
                    primary: role == Role::Primary,
                    primary_at_split: s.flags & state_flags::PRIMARY_AT_SPLIT != 0,
                    discard_my_data: s.flags & state_flags::DISCARD_MY_DATA != 0,
                    unacked_changes: s.flags & state_flags::UNACKED_CHANGES != 0,
                    node_id: s.node_id,
                };
                match resolve(&self.cfg.after_split_brain, &me, &them, bitmaps_cover) {
                    Resolution::Resync(d) => (d, !bitmaps_cover),
                    Resolution::Disconnect => {
                        self.go_standalone("split brain detected: waiting for an operator");
                        return;
                    }
                }
            }
            SyncDecision::UnrelatedData => {
                self.go_standalone("unrelated data: these disks were never peers");
                return;
            }
        };
        if dir == Direction::Target && self.role == Role::Primary {
            self.go_standalone("refusing to become sync target while primary");
            return;
        }
        if dir == Direction::Source && self.disk == DiskState::Inconsistent {
            self.go_standalone("no valid sync source: local data is inconsistent");
            return;
        }
        self.discard_my_data = false;
        if full {
            self.bitmap.set_all();
            self.mark_bitmap_dirty(0, self.bitmap.blocks());
        }
        if dir == Direction::Source
            && matches!(self.disk, DiskState::Consistent | DiskState::Outdated)
        {
            // The handshake chose our data: it is the newest.
            self.disk = DiskState::UpToDate;
            if self.flags.outdated {
                self.flags.outdated = false;
                self.persist_superblock();
            }
        }
        self.conn = match dir {
            Direction::Source => ConnState::WaitBitmapSource,
            Direction::Target => ConnState::WaitBitmapTarget,
        };
        if dir == Direction::Target {
            // Inconsistent on disk before the first resync byte lands.
            self.disk = DiskState::Inconsistent;
            self.flags.consistent = false;
            self.persist_superblock();
        }
        self.send_bitmap();
        self.maybe_start_resync();
    }

    pub(super) fn go_standalone(&mut self, reason: &str) {
        self.drop_link(reason);
        self.conn = ConnState::StandAlone;
    }

    pub(super) fn send_bitmap(&mut self) {
        let words = self.bitmap.words().to_vec();
        let chunks = words
            .len()
            .div_ceil(tandem_wire::frame::MAX_BITMAP_WORDS)
            .max(1);
        for i in 0..chunks {
            let s = (i * tandem_wire::frame::MAX_BITMAP_WORDS).min(words.len());
            let e = (s + tandem_wire::frame::MAX_BITMAP_WORDS).min(words.len());
            self.send(Frame::Bitmap {
                word_offset: s as u64,
                words: words[s..e].to_vec(),
                last: i + 1 == chunks,
            });
        }
        self.bitmap_sent = true;
    }

    pub(super) fn maybe_start_resync(&mut self) {
        if !(self.bitmap_sent && self.bitmap_received) {
            return;
        }
        // Both sides now hold the union of the two bitmaps; persist it so a crash
        // during resync cannot forget a block.
        self.persist_all_dirty_bitmap();
        match self.conn {
            ConnState::WaitBitmapSource => {
                self.conn = ConnState::SyncSource;
                self.resync_source_done_bytes = 0;
                self.resync_source_started_ms = self.now_ms;
                self.resync_source_total_bytes = self.bitmap.dirty_bytes();
                if let Some(p) = &mut self.peer {
                    p.disk = DiskState::Inconsistent;
                }
            }
            ConnState::WaitBitmapTarget => {
                assert!(
                    self.role != Role::Primary,
                    "a primary never becomes sync target"
                );
                self.conn = ConnState::SyncTarget;
                self.resync_finished_sent = false;
                self.resync_reqs.clear();
                self.planner = Some(ResyncPlanner::new(
                    ResyncLimits {
                        rate_bytes_per_s: self.cfg.resync_rate_bytes_per_s,
                        max_request_bytes: self.cfg.resync_request_bytes.min(MAX_DATA_BYTES as u64),
                        max_inflight: self.cfg.resync_inflight.max(1),
                    },
                    &self.bitmap,
                    self.now_ms,
                ));
            }
            _ => {}
        }
    }
}
