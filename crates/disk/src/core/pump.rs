//! The pump: moves every queue (writes, the peer's ops, resync, verify, metadata) as
//! far as it can after each input.

use tandem_wire::frame::{Frame, MAX_DATA_BYTES, SECTOR_BYTES};

use super::bitmap::BLOCK_BYTES;
use super::*;

impl Core {
    /// Moves every queue as far as it can go. Called after each input.
    pub(super) fn pump(&mut self) {
        for _ in 0..4 {
            self.issue_writes();
            self.apply_peer_ops();
            self.serve_resync_reads();
            self.plan_resync();
            self.plan_verify();
            self.issue_meta();
            self.announce_if_durable();
            self.send_resync_complete_if_durable();
        }
    }

    pub(super) fn apply_peer_ops(&mut self) {
        while let Some((op, _)) = self.peer_ops.front() {
            match op {
                PeerOp::Write { offset, data, .. } | PeerOp::Resync { offset, data } => {
                    let (o, l) = (*offset, data.len() as u64);
                    if self
                        .peer_writes_inflight
                        .iter()
                        .any(|(po, pl)| *po < o + l && o < po + pl)
                    {
                        return;
                    }
                    // A sync target's resync writes wait for "inconsistent" to be durable.
                    if self.meta_done < self.meta_enqueued {
                        return;
                    }
                }
                PeerOp::Barrier { .. } => {
                    if !self.peer_writes_inflight.is_empty() || self.peer_flush_inflight {
                        return;
                    }
                }
            }
            let Some((op, gen_of_link)) = self.peer_ops.pop_front() else {
                return;
            };
            if self.disk == DiskState::Diskless {
                continue;
            }
            match op {
                PeerOp::Write {
                    id,
                    offset,
                    data,
                    fua,
                } => {
                    let len = data.len() as u64;
                    self.peer_writes_inflight.push((offset, len));
                    let io = self.io_on_link(Io::PeerWrite { id, offset, len }, gen_of_link);
                    self.outputs.push_back(Output::WriteLocal {
                        io,
                        offset_bytes: offset,
                        data,
                        fua,
                    });
                }
                PeerOp::Resync { offset, data } => {
                    let len = data.len() as u64;
                    self.peer_writes_inflight.push((offset, len));
                    let io = self.io_on_link(Io::ResyncWrite { offset, len }, gen_of_link);
                    // FUA: the source clears its bits on our ack, so the data must
                    // survive a crash of ours from then on.
                    self.outputs.push_back(Output::WriteLocal {
                        io,
                        offset_bytes: offset,
                        data,
                        fua: true,
                    });
                }
                PeerOp::Barrier { epoch } => {
                    self.peer_flush_inflight = true;
                    let io = self.io_on_link(Io::PeerFlush { epoch }, gen_of_link);
                    self.outputs.push_back(Output::FlushLocal { io });
                }
            }
        }
    }

    pub(super) fn serve_resync_reads(&mut self) {
        if self.conn != ConnState::SyncSource {
            return;
        }
        let mut waiting = std::mem::take(&mut self.resync_reads_waiting);
        let mut keep = VecDeque::new();
        while let Some((id, offset, len, digest)) = waiting.pop_front() {
            let end = offset + len;
            let busy = self.writes.values().any(|w| {
                w.issued
                    && w.local_done.is_none()
                    && w.offset < end
                    && offset < w.offset + w.data.len() as u64
            });
            if busy || self.peer_busy(offset, len) {
                keep.push_back((id, offset, len, digest));
                continue;
            }
            self.resync_reads_inflight.push((offset, len));
            let io = self.io(Io::ResyncRead { id, offset, digest });
            self.outputs.push_back(Output::ReadLocal {
                io,
                offset_bytes: offset,
                len_bytes: len as u32,
            });
        }
        self.resync_reads_waiting = keep;
    }

    pub(super) fn plan_resync(&mut self) {
        if self.conn != ConnState::SyncTarget || self.resync_paused {
            return;
        }
        let now = self.now_ms;
        while let Some(p) = &mut self.planner {
            let Some((first, n)) = p.next_request(&self.bitmap, now) else {
                break;
            };
            let id = self.next_resync_id;
            self.next_resync_id += 1;
            self.resync_reqs.insert(id, (first, n));
            let len = (n * BLOCK_BYTES) as u32;
            if self.cfg.checksum_resync {
                // Checksum-based resync: digest our copy first, the source sends data
                // only where it differs.
                let io = self.io(Io::CsumRead {
                    id,
                    offset: first * BLOCK_BYTES,
                });
                self.outputs.push_back(Output::ReadLocal {
                    io,
                    offset_bytes: first * BLOCK_BYTES,
                    len_bytes: len,
                });
            } else {
                self.send(Frame::ResyncRequest {
                    id,
                    sector: first * BLOCK_BYTES / SECTOR_BYTES,
                    len_bytes: len,
                });
            }
        }
        let done = self.bitmap.count() == 0
            && self.planner.as_ref().is_some_and(|p| p.inflight() == 0)
            && !self.resync_finished_sent;
        if done {
            self.resync_finished_sent = true;
            self.send(Frame::ResyncFinished);
        }
    }

    pub(super) fn plan_verify(&mut self) {
        if self.conn != ConnState::VerifySource {
            return;
        }
        let chunk = self
            .cfg
            .resync_request_bytes
            .clamp(BLOCK_BYTES, MAX_DATA_BYTES as u64);
        while self.verify_inflight < self.cfg.resync_inflight.max(1)
            && self.verify_cursor < self.size_bytes
        {
            let offset = self.verify_cursor;
            let len = chunk.min(self.size_bytes - offset);
            self.verify_cursor += len;
            self.verify_inflight += 1;
            let id = self.next_resync_id;
            self.next_resync_id += 1;
            let io = self.io(Io::VerifyRead { id, offset });
            self.outputs.push_back(Output::ReadLocal {
                io,
                offset_bytes: offset,
                len_bytes: len as u32,
            });
        }
        if self.verify_cursor >= self.size_bytes && self.verify_inflight == 0 {
            self.conn = ConnState::Connected;
            self.send(Frame::VerifyFinished);
        }
    }

    /// Sends the `ResyncComplete` a source owes, once its generations are durable and if
    /// the link it is for still stands.
    fn send_resync_complete_if_durable(&mut self) {
        let Some((ticket, link)) = self.resync_complete_owed else {
            return;
        };
        if link != self.link_gen || !self.conn.link_up() {
            self.resync_complete_owed = None;
            return;
        }
        if self.meta_done >= ticket {
            self.resync_complete_owed = None;
            let generations = self.gens.to_array();
            self.send(Frame::ResyncComplete { generations });
        }
    }
}
