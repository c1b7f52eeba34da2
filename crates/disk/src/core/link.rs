//! The replication link: connect, loss, pings, and every frame after the handshake.

use tandem_wire::frame::{Frame, SECTOR_BYTES, StateReport, state_flags};

use super::bitmap::{BLOCK_BYTES, blocks_covered, blocks_touched};
use super::generation::Generations;
use super::*;

impl Core {
    pub(super) fn send(&mut self, f: Frame) {
        if self.conn.link_up() {
            self.outputs.push_back(Output::Send(f));
        }
    }

    pub(super) fn state_report(&self) -> StateReport {
        let mut flags = 0;
        if self.flags.crashed_primary {
            flags |= state_flags::CRASHED_PRIMARY;
        }
        if self.discard_my_data {
            flags |= state_flags::DISCARD_MY_DATA;
        }
        if self.flags.primary_at_split {
            flags |= state_flags::PRIMARY_AT_SPLIT;
        }
        if self.flags.unacked_changes {
            flags |= state_flags::UNACKED_CHANGES;
        }
        StateReport {
            protocol: protocol_code(self.cfg.protocol),
            role: u8::from(self.role == Role::Primary),
            disk: self.reported_disk_state().code(),
            node_id: self.node_id,
            generations: self.gens.to_array(),
            bitmap_bits: self.bitmap.count(),
            size_bytes: self.size_bytes,
            flags,
        }
    }

    pub(super) fn send_state(&mut self) {
        let r = self.state_report();
        self.send(Frame::State(r));
    }

    pub(super) fn on_connected(&mut self) {
        if self.conn != ConnState::Connecting {
            return;
        }
        self.conn = ConnState::Handshaking;
        self.link_gen += 1;
        self.wire_ids.clear();
        self.peer = None;
        // "Unreachable" and "fenced while stale" held only while there was no link.
        self.peer_unreachable = false;
        self.peer_fenced_while_stale = false;
        self.last_rx_ms = self.now_ms;
        self.link_up_ms = self.now_ms;
        self.last_ping_ms = self.now_ms;
        self.bitmap_received = false;
        self.bitmap_sent = false;
        self.pending_decision = None;
        self.epoch = 1;
        self.epoch_writes = 0;
        self.send_state();
    }

    /// We decided to drop the link.
    pub(super) fn drop_link(&mut self, reason: &str) {
        if !self.conn.link_up() {
            return;
        }
        self.outputs.push_back(Output::Disconnect {
            reason: reason.to_string(),
        });
        self.on_link_lost(reason);
    }

    pub(super) fn on_link_lost(&mut self, reason: &str) {
        if !self.conn.link_up() {
            return;
        }
        self.last_disconnect_reason = Some(reason.to_string());
        let was_primary = self.role == Role::Primary;
        let peer_disk = self.peer.map(|p| p.disk);
        // Everything the peer may not have made durable becomes dirty.
        let tl: Vec<_> = self.transfer_log.drain(..).collect();
        for (_, o, l, held) in tl {
            let (f, n) = blocks_touched(o, l);
            self.set_bits(f, n);
            if let Some(ext) = held {
                self.al.end(ext);
            }
        }
        let reqs: Vec<u64> = self.write_order.iter().copied().collect();
        for r in &reqs {
            if let Some(w) = self.writes.get_mut(r)
                && let PeerLeg::Sent { .. } = w.peer
            {
                w.peer = PeerLeg::Lost;
                let (f, n) = blocks_touched(w.offset, w.data.len() as u64);
                self.bitmap.set_range(f, n);
                self.mark_bitmap_dirty(f, n);
            }
        }
        if was_primary && self.disk != DiskState::Diskless {
            self.flags.primary_at_split = true;
            if self.bitmap.count() > 0 {
                let g = self.new_generation();
                self.gens.start_new_current(g);
            }
        }
        // Resync and verify state goes; the bitmap keeps what is left.
        if self.conn == ConnState::SyncTarget {
            self.disk = DiskState::Inconsistent;
        }
        self.planner = None;
        self.resync_reqs.clear();
        self.resync_reads_waiting.clear();
        self.verify_inflight = 0;
        self.peer = None;
        self.conn = ConnState::Connecting;
        // Before the superblock below, so a peer known unpromotable is recorded with it.
        self.fence_peer_on_link_loss(peer_disk);
        self.persist_all_dirty_bitmap();
        self.persist_superblock();
        if was_primary {
            // From here this side acknowledges alone: writes whose peer copy was lost,
            // flushes the peer never confirmed. The peer may hold those writes only in
            // a cache that a power cut empties, so after a crash here the copy that
            // holds them must win the handshake — which it does only once the new
            // generation above is on disk. Until then a crash leaves generations equal
            // to the peer's, and a crashed primary then resyncs from the survivor.
            self.alone_acks_wait_meta = self.meta_enqueued;
        }
        // Requests that waited for the peer complete on their local result; pending
        // flushes no longer wait for a barrier ack; reads through the peer fail.
        for r in reqs {
            self.try_complete_write(r);
        }
        let fl: Vec<u64> = self.flushes.keys().copied().collect();
        for f in fl {
            if let Some(x) = self.flushes.get_mut(&f) {
                x.epoch = None;
            }
            self.try_complete_flush(f);
        }
        if self.disk == DiskState::Diskless {
            let rd: Vec<u64> = self.reads.keys().copied().collect();
            for r in rd {
                self.reads.remove(&r);
                self.outputs.push_back(Output::ReadDone {
                    req: r,
                    result: Err(RequestError::Io("peer lost".into())),
                });
            }
        }
    }

    pub(super) fn on_tick(&mut self) {
        let now = self.now_ms;
        if self.conn.link_up() {
            if now.saturating_sub(self.last_rx_ms) > self.cfg.ping_timeout_ms {
                self.drop_link("ping timeout");
            } else if self.conn == ConnState::Handshaking
                && self.peer.is_none()
                && now.saturating_sub(self.link_up_ms) > self.cfg.ping_timeout_ms
            {
                // Pings keep a link alive, but a link whose peer never told us its state
                // can never leave the handshake: drop it and let the driver dial again
                // (a lost or misrouted `State` must not park the resource for good).
                self.drop_link("handshake timeout: no state from the peer");
            } else if now.saturating_sub(self.last_ping_ms) >= self.cfg.ping_interval_ms {
                self.last_ping_ms = now;
                self.send(Frame::Ping);
            }
        }
        self.fence_peer_tick();
        if !self.bitmap_dirty_blocks.is_empty()
            && now.saturating_sub(self.bitmap_persisted_ms) >= self.cfg.bitmap_persist_interval_ms
        {
            self.persist_all_dirty_bitmap();
        }
    }

    /// When [`Self::on_tick`] has link work: the ping timeout, the handshake timeout, or
    /// the next ping (the same tests, solved for time).
    pub(super) fn link_deadline_ms(&self) -> Option<u64> {
        if !self.conn.link_up() {
            return None;
        }
        let timeout = self.cfg.ping_timeout_ms.saturating_add(1);
        let mut due = self
            .last_rx_ms
            .saturating_add(timeout)
            .min(self.last_ping_ms.saturating_add(self.cfg.ping_interval_ms));
        if self.conn == ConnState::Handshaking && self.peer.is_none() {
            due = due.min(self.link_up_ms.saturating_add(timeout));
        }
        Some(due)
    }

    pub(super) fn on_frame(&mut self, f: Frame) {
        if !self.conn.link_up() {
            return;
        }
        self.last_rx_ms = self.now_ms;
        match f {
            Frame::State(s) => self.on_peer_state(s),
            Frame::Ping => self.send(Frame::PingAck),
            Frame::PingAck => {}
            Frame::Data {
                id,
                sector,
                epoch: _,
                fua,
                data,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if !self.valid_range(offset, data.len() as u64)
                    || self.role == Role::Primary
                    || !self.conn.replicating()
                {
                    self.drop_link("unexpected or invalid data frame");
                    return;
                }
                self.received_bytes += data.len() as u64;
                if self.cfg.protocol == Protocol::B {
                    self.send(Frame::AckReceived { id });
                }
                if self.disk == DiskState::Diskless {
                    return;
                }
                self.peer_ops.push_back((
                    PeerOp::Write {
                        id,
                        offset,
                        data,
                        fua,
                    },
                    self.link_gen,
                ));
            }
            Frame::Barrier { epoch } => {
                if self.disk == DiskState::Diskless {
                    self.barrier_acks_sent += 1;
                    self.send(Frame::BarrierAck { epoch });
                } else {
                    self.peer_ops
                        .push_back((PeerOp::Barrier { epoch }, self.link_gen));
                }
            }
            Frame::AckReceived { id } => {
                let Some(id) = self.wire_ids.get(&id).copied() else {
                    return;
                };
                if let Some(w) = self.writes.get_mut(&id)
                    && let PeerLeg::Sent { received, .. } = &mut w.peer
                {
                    *received = true;
                }
                self.try_complete_write(id);
            }
            Frame::AckWritten { id } => {
                let Some(id) = self.wire_ids.remove(&id) else {
                    return;
                };
                if let Some(w) = self.writes.get_mut(&id)
                    && let PeerLeg::Sent { written, .. } = &mut w.peer
                {
                    *written = true;
                }
                self.try_complete_write(id);
            }
            Frame::BarrierAck { epoch } => {
                self.barrier_acks_received += 1;
                while self.transfer_log.front().is_some_and(|t| t.0 <= epoch) {
                    if let Some((_, _, _, Some(ext))) = self.transfer_log.pop_front() {
                        self.al.end(ext);
                    }
                }
                let fl: Vec<u64> = self
                    .flushes
                    .iter()
                    .filter(|(_, f)| f.epoch.is_some_and(|e| e <= epoch))
                    .map(|(r, _)| *r)
                    .collect();
                for r in fl {
                    if let Some(f) = self.flushes.get_mut(&r) {
                        f.epoch = None;
                    }
                    self.try_complete_flush(r);
                }
            }
            Frame::Bitmap {
                word_offset,
                words,
                last,
            } => {
                if !matches!(
                    self.conn,
                    ConnState::WaitBitmapSource | ConnState::WaitBitmapTarget
                ) {
                    self.drop_link("unexpected bitmap");
                    return;
                }
                let nwords = self.bitmap.words().len() as u64;
                if word_offset.saturating_add(words.len() as u64) > nwords {
                    self.drop_link("bitmap frame past the end of the bitmap");
                    return;
                }
                self.bitmap.merge_words(word_offset, &words);
                let first_block = word_offset * 64;
                let n =
                    (words.len() as u64 * 64).min(self.bitmap.blocks().saturating_sub(first_block));
                self.mark_bitmap_dirty(first_block, n);
                if last {
                    self.bitmap_received = true;
                    self.maybe_start_resync();
                }
            }
            Frame::ResyncRequest {
                id,
                sector,
                len_bytes,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if self.conn != ConnState::SyncSource
                    || !self.valid_range(offset, u64::from(len_bytes))
                {
                    self.drop_link("unexpected resync request");
                    return;
                }
                self.resync_reads_waiting
                    .push_back((id, offset, u64::from(len_bytes), None));
            }
            Frame::ResyncChecksum {
                id,
                sector,
                len_bytes,
                digest,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if self.conn != ConnState::SyncSource
                    || !self.valid_range(offset, u64::from(len_bytes))
                {
                    self.drop_link("unexpected resync checksum");
                    return;
                }
                self.resync_reads_waiting.push_back((
                    id,
                    offset,
                    u64::from(len_bytes),
                    Some(digest),
                ));
            }
            Frame::ResyncInSync {
                id,
                sector,
                len_bytes,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                let Some((first, n)) = self.resync_reqs.remove(&id) else {
                    self.drop_link("in-sync answer for no request");
                    return;
                };
                if self.conn != ConnState::SyncTarget
                    || offset != first * BLOCK_BYTES
                    || u64::from(len_bytes) != n * BLOCK_BYTES
                {
                    self.drop_link("in-sync answer does not match its request");
                    return;
                }
                // Same bytes on both sides: nothing to write, the bits may go.
                if let Some(p) = &mut self.planner {
                    p.complete(first, n, true);
                }
                self.clear_bits(first, n);
                self.send(Frame::ResyncAck { sector, len_bytes });
            }
            Frame::ResyncData { id, sector, data } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                let Some((first, n)) = self.resync_reqs.remove(&id) else {
                    self.drop_link("resync data for no request");
                    return;
                };
                if self.conn != ConnState::SyncTarget
                    || offset != first * BLOCK_BYTES
                    || data.len() as u64 != n * BLOCK_BYTES
                {
                    self.drop_link("resync data does not match its request");
                    return;
                }
                self.received_bytes += data.len() as u64;
                self.resync_moved_bytes += data.len() as u64;
                self.peer_ops
                    .push_back((PeerOp::Resync { offset, data }, self.link_gen));
            }
            Frame::ResyncAck { sector, len_bytes } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if self.conn == ConnState::SyncSource
                    && self.valid_range(offset, u64::from(len_bytes))
                {
                    let (first, n) = blocks_covered(offset, u64::from(len_bytes));
                    self.clear_bits(first, n);
                    self.resync_source_done_bytes += u64::from(len_bytes);
                }
            }
            Frame::ResyncFinished => {
                if self.conn != ConnState::SyncSource {
                    self.drop_link("unexpected resync finished");
                    return;
                }
                if self.bitmap.count() != 0 {
                    self.drop_link("resync ended with dirty blocks on the source");
                    return;
                }
                self.gens.resync_finished_on_source();
                self.flags.crashed_primary = false;
                self.flags.primary_at_split = false;
                self.flags.peer_outdated = false;
                self.flags.unacked_changes = false;
                self.persist_all_dirty_bitmap();
                self.persist_superblock();
                self.conn = ConnState::Connected;
                // The target adopts our generations when it hears this: our rotation must
                // be durable first, or a crash here could leave us with the old bitmap
                // generation while the peer holds our current one — and the next write
                // alone would not start a generation the peer lacks.
                self.resync_complete_owed = Some((self.meta_enqueued, self.link_gen));
                if let Some(p) = &mut self.peer {
                    p.disk = DiskState::UpToDate;
                }
                // The peer now holds every write, held ones included.
                self.resume_in_sync();
            }
            Frame::ResyncComplete { generations } => {
                if self.conn != ConnState::SyncTarget || self.bitmap.count() != 0 {
                    self.drop_link("unexpected resync complete");
                    return;
                }
                let src = Generations::from_array(generations);
                self.gens = Generations {
                    current: src.current,
                    bitmap: 0,
                    history: src.history,
                };
                self.flags.consistent = true;
                self.flags.outdated = false;
                self.flags.crashed_primary = false;
                self.flags.primary_at_split = false;
                self.flags.peer_outdated = false;
                self.flags.unacked_changes = false;
                self.disk = DiskState::UpToDate;
                // The handshake chose the source's data, so the source made itself up to
                // date after it had reported its state: that report is stale.
                if let Some(p) = &mut self.peer {
                    p.disk = DiskState::UpToDate;
                }
                self.planner = None;
                self.conn = ConnState::Connected;
                self.persist_all_dirty_bitmap();
                self.persist_superblock();
                self.send_state();
            }
            Frame::ChecksumRequest {
                id,
                sector,
                len_bytes,
                digest,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if !self.valid_range(offset, u64::from(len_bytes))
                    || self.disk == DiskState::Diskless
                {
                    self.drop_link("invalid checksum request");
                    return;
                }
                let io = self.io(Io::ChecksumRead { id, offset, digest });
                self.outputs.push_back(Output::ReadLocal {
                    io,
                    offset_bytes: offset,
                    len_bytes,
                });
            }
            Frame::ChecksumReply {
                sector,
                len_bytes,
                in_sync,
                ..
            } => {
                if self.conn != ConnState::VerifySource {
                    return;
                }
                self.verify_inflight = self.verify_inflight.saturating_sub(1);
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if !in_sync && self.valid_range(offset, u64::from(len_bytes)) {
                    let (first, n) = blocks_touched(offset, u64::from(len_bytes));
                    self.verify_oos_blocks += n;
                    self.set_bits(first, n);
                }
            }
            Frame::VerifyFinished => {}
            Frame::ReadRequest {
                id,
                sector,
                len_bytes,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if !self.valid_range(offset, u64::from(len_bytes))
                    || self.disk != DiskState::UpToDate
                {
                    self.send(Frame::ReadError { id });
                    return;
                }
                let io = self.io(Io::PeerRead { id });
                self.outputs.push_back(Output::ReadLocal {
                    io,
                    offset_bytes: offset,
                    len_bytes,
                });
            }
            Frame::ReadReply { id, data } => {
                if let Some((_, len)) = self.reads.remove(&id) {
                    if data.len() == len as usize {
                        self.received_bytes += data.len() as u64;
                        self.outputs.push_back(Output::ReadDone {
                            req: id,
                            result: Ok(data),
                        });
                    } else {
                        self.outputs.push_back(Output::ReadDone {
                            req: id,
                            result: Err(RequestError::Io("short read from peer".into())),
                        });
                    }
                }
            }
            Frame::ReadError { id } => {
                if self.reads.remove(&id).is_some() {
                    self.outputs.push_back(Output::ReadDone {
                        req: id,
                        result: Err(RequestError::Io("peer read failed".into())),
                    });
                }
            }
            Frame::AuthChallenge { .. } | Frame::AuthResponse { .. } => {
                self.drop_link("authentication frame after the handshake");
            }
        }
    }
}
