//! Disk fencing (DRBD's `fencing` policy): a primary that loses its link never
//! acknowledges a write that a promotable peer lacks.
//!
//! ```text
//!  link lost as primary ──▶ peer copy promotable? ──no (outdated, inconsistent)──▶ go on
//!                                │ yes, policy ≠ dont-care
//!                                ▼
//!          suspend I/O, Output::FencePeer ──▶ driver: outdate the peer over membership,
//!                                │                    or fence it
//!        peer_outdated / peer_fenced / (resource-only) peer_unreachable
//!                                ▼
//!           peer_outdated flag durable ──▶ resume: held writes acknowledged (alone)
//! ```
//!
//! Suspended means: writes already sent keep their local copy but are not
//! acknowledged, new writes and flushes wait unissued, reads go on. Nothing fails. A
//! link that comes back ends the suspension only once the resync has made the peer
//! whole (or the handshake found nothing to sync): before that the peer's copy could
//! still be promoted without the held writes.
//!
//! The other side of the bargain is [`Core::outdate`]: a secondary told by the cluster
//! that the primary lost the link marks its own copy outdated, durably, before the
//! answer goes back — and an outdated copy is promoted only with `--force`. A secondary
//! that leaves an up-to-date peer on purpose (`disconnect`, a clean stop) outdates
//! itself the same way and says so on the link before it goes, so the peer never has
//! to fence a node that left cleanly.

use super::*;

/// How often a suspended core repeats [`Output::FencePeer`] (the driver's answer may
/// have been lost, or the cluster may not have been able to act yet).
const FENCE_PEER_REPEAT_MS: u64 = 5_000;

impl Core {
    /// The cluster made sure the peer's copy is outdated (durable on the peer, which
    /// answered only then): this side may write alone. Resumes suspended I/O.
    ///
    /// The answer is about the question, asked when there was no link (a suspension's
    /// `FencePeer`, a promotion refused with `PeerNotOutdated`): if a link has come up
    /// since, its handshake may have found both copies equal (or resynced the peer) and
    /// cleared the peer's mark, so the answer is stale and ignored — as DRBD ignores a
    /// fence-peer handler's exit code when the connection was established while it
    /// ran. Believed, it would let this side promote itself or write alone later
    /// against a peer that is not outdated (cluster-sim seed 4681). An answer to no
    /// question is ignored too.
    pub fn peer_outdated(&mut self, now: Instant) {
        self.advance(now);
        if self.fence_answer_is_current() {
            self.set_peer_outdated();
        }
        self.pump();
    }

    /// The cluster could not reach the peer at all (neither outdated nor fenced). Under
    /// `resource-only` this side goes on alone, knowingly — I/O resumes and promotion
    /// alone is allowed until the next link; under `resource-and-stonith` nothing
    /// changes (only an outdate or a fence ends the suspension, and the cluster goes on
    /// to fence). Stale (a link came up since the question), it is ignored, as
    /// [`Core::peer_outdated`].
    pub fn peer_unreachable(&mut self, now: Instant) {
        self.advance(now);
        if self.cfg.fencing == DiskFencing::ResourceOnly && self.fence_answer_is_current() {
            self.peer_unreachable = true;
            self.resume();
        }
        self.pump();
    }

    /// The peer lost its link to us and asks this side to outdate itself (DRBD's
    /// outdate-peer): the link, if it still looks up here, is dropped, and the copy is
    /// marked outdated. Returns the metadata ticket to wait for
    /// ([`Core::metadata_durable`]) before answering. A primary refuses.
    pub fn outdate(&mut self, now: Instant) -> Result<u64, AdminError> {
        self.advance(now);
        if self.role == Role::Primary {
            return Err(AdminError::IsPrimary);
        }
        if self.conn.link_up() {
            self.drop_link("outdated at the peer's request: it lost this link");
        }
        self.mark_outdated();
        self.pump();
        Ok(self.meta_enqueued)
    }

    /// A clean stop of this node: a secondary whose up-to-date peer goes on outdates
    /// itself and tells the peer on the link once that is durable (so the peer can take
    /// over and write without fencing this node). Returns the ticket to wait for
    /// before the link is closed.
    pub fn leave(&mut self, now: Instant) -> u64 {
        self.advance(now);
        self.leave_outdated();
        self.pump();
        self.announce.map_or(self.meta_enqueued, |a| a.ticket)
    }

    /// Whether I/O is suspended (waiting for the peer to be outdated or fenced).
    pub fn suspended(&self) -> bool {
        self.suspended_since_ms.is_some()
    }

    /// How often [`Output::FencePeer`] has been asked for since the core started.
    pub fn fence_peer_requests(&self) -> u64 {
        self.fence_peer_requests
    }

    /// Called when the link is lost, with the peer's disk state as last reported.
    pub(super) fn fence_peer_on_link_loss(&mut self, peer_disk: Option<DiskState>) {
        if self.role != Role::Primary
            || self.cfg.fencing == DiskFencing::DontCare
            || self.flags.peer_outdated
        {
            return;
        }
        match peer_disk {
            // The peer could not be promoted without a resync from us anyway (its
            // inconsistent mark is durable before it acknowledged any resync write).
            Some(DiskState::Inconsistent | DiskState::Outdated | DiskState::Diskless) => {
                self.flags.peer_outdated = true;
            }
            _ => self.suspend(),
        }
    }

    /// Repeats the request while suspended (see [`FENCE_PEER_REPEAT_MS`]).
    pub(super) fn fence_peer_tick(&mut self) {
        if self.suspended_since_ms.is_some()
            && !self.conn.link_up()
            && self.now_ms.saturating_sub(self.fence_peer_asked_ms) >= FENCE_PEER_REPEAT_MS
        {
            self.ask_fence_peer();
        }
    }

    /// When [`Self::fence_peer_tick`] asks again, if it will.
    pub(super) fn fence_peer_deadline_ms(&self) -> Option<u64> {
        (self.suspended_since_ms.is_some() && !self.conn.link_up()).then(|| {
            self.fence_peer_asked_ms
                .saturating_add(FENCE_PEER_REPEAT_MS)
        })
    }

    /// The link is whole again and the peer holds everything (resync done, or nothing
    /// to sync): a suspension ends.
    pub(super) fn resume_in_sync(&mut self) {
        self.resume();
    }

    /// Sends what a self-outdate owes the peer once it is durable.
    pub(super) fn announce_if_durable(&mut self) {
        let Some(a) = self.announce else {
            return;
        };
        if self.meta_done < a.ticket {
            return;
        }
        self.announce = None;
        if self.conn.link_up() {
            self.send_state();
        }
        if a.then_stand_alone {
            self.drop_link("admin disconnect");
            self.conn = ConnState::StandAlone;
        }
    }

    /// The disk state the peer is told: `Outdated` only once it is durable here, so the
    /// peer never relies on a mark a crash could still undo.
    pub(super) fn reported_disk_state(&self) -> DiskState {
        if self.disk == DiskState::Outdated && self.meta_done < self.outdated_ticket {
            DiskState::Consistent
        } else {
            self.disk
        }
    }

    pub(super) fn set_peer_outdated(&mut self) {
        // Heard after a crash as primary, it proves nothing about this copy: the crash
        // may have cost it acknowledged writes the outdated peer holds. Only knowledge
        // from before the crash (this side then wrote alone) lets it be promoted alone.
        let crashed_secondary = self.flags.crashed_primary && self.role == Role::Secondary;
        if !self.flags.peer_outdated && !crashed_secondary {
            self.flags.peer_outdated = true;
            self.persist_superblock();
        }
        self.resume();
    }

    /// The self-outdate of a secondary leaving an up-to-date peer; returns whether it
    /// happened (an announcement is then owed).
    pub(super) fn leave_outdated(&mut self) -> bool {
        let peer_up_to_date = self.peer.is_some_and(|p| p.disk == DiskState::UpToDate);
        if !self.transfer_log.is_empty() {
            // Writes the peer has not confirmed flushing (its cache may still lose them):
            // this copy is not stale but the one that holds them for sure. They are
            // recorded as blocks the peer may lack, and this copy is not outdated.
            let tl: Vec<(u64, u64)> = self.transfer_log.iter().map(|t| (t.1, t.2)).collect();
            for (offset, len) in tl {
                let (first, n) = bitmap::blocks_touched(offset, len);
                self.set_bits(first, n);
            }
            self.persist_all_dirty_bitmap();
            return false;
        }
        if self.role != Role::Secondary
            || !self.conn.link_up()
            || !peer_up_to_date
            || !matches!(self.disk, DiskState::UpToDate | DiskState::Consistent)
        {
            return false;
        }
        self.mark_outdated();
        self.announce = Some(Announce {
            ticket: self.meta_enqueued,
            then_stand_alone: false,
        });
        true
    }

    fn mark_outdated(&mut self) {
        if self.disk == DiskState::Diskless {
            return;
        }
        if matches!(self.disk, DiskState::UpToDate | DiskState::Consistent) {
            self.disk = DiskState::Outdated;
        }
        if !self.flags.outdated {
            self.flags.outdated = true;
            self.persist_superblock();
            self.outdated_ticket = self.meta_enqueued;
        }
    }

    fn suspend(&mut self) {
        if self.suspended_since_ms.is_none() {
            self.suspended_since_ms = Some(self.now_ms);
            // From here until the peer is outdated or fenced nothing is acknowledged:
            // whatever this side changes may be discarded in a split brain (persisted
            // with the superblock the link loss writes).
            self.flags.unacked_changes = true;
        }
        self.ask_fence_peer();
    }

    /// Takes the cluster's answer to the open question about the peer's fate (outdated,
    /// unreachable): whether it still holds — no link now, and none has come up since
    /// the question was first asked. A stale answer closes the question all the same:
    /// a suspension asks again (`fence_peer_tick`), and that answer counts.
    fn fence_answer_is_current(&mut self) -> bool {
        let asked = self.fence_question_link.take();
        asked == Some(self.link_gen) && !self.conn.link_up()
    }

    fn ask_fence_peer(&mut self) {
        self.fence_peer_asked_ms = self.now_ms;
        self.fence_question_link.get_or_insert(self.link_gen);
        self.fence_peer_requests += 1;
        self.outputs.push_back(Output::FencePeer);
    }

    /// Ends a suspension: held writes complete on their local result (made durable
    /// first under protocol C), held flushes complete, queued writes are issued.
    fn resume(&mut self) {
        if self.suspended_since_ms.take().is_none() {
            return;
        }
        if self.flags.unacked_changes {
            // Acknowledgements are about to go out: the claim "nothing acknowledged"
            // must be off the disk first, or a crash now would let these writes be
            // discarded after they were acknowledged.
            self.flags.unacked_changes = false;
            self.persist_superblock();
            self.alone_acks_wait_meta = self.meta_enqueued;
        }
        let reqs: Vec<u64> = self.write_order.iter().copied().collect();
        for r in reqs {
            self.try_complete_write(r);
        }
        let flushes: Vec<u64> = self.flushes.keys().copied().collect();
        for f in flushes {
            self.try_complete_flush(f);
        }
    }
}
