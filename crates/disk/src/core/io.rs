//! Completions of the local I/O the core asked for.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tandem_wire::frame::{Frame, SECTOR_BYTES};

use super::bitmap::{blocks_covered, blocks_touched};
use super::*;

impl Core {
    pub(super) fn io(&mut self, kind: Io) -> IoId {
        let id = self.next_io;
        self.next_io += 1;
        self.ios.insert(id, (kind, self.link_gen));
        id
    }

    pub(super) fn io_on_link(&mut self, kind: Io, link_gen: u64) -> IoId {
        let id = self.next_io;
        self.next_io += 1;
        self.ios.insert(id, (kind, link_gen));
        id
    }

    /// Whether replicated or resync writes from the peer touch this range (queued or in
    /// flight): local writes and resync reads of the range must wait for them.
    pub(super) fn peer_busy(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        self.peer_writes_inflight
            .iter()
            .any(|(o, l)| *o < end && offset < o + l)
            || self.peer_ops.iter().any(|(op, _)| match op {
                PeerOp::Write {
                    offset: o, data, ..
                }
                | PeerOp::Resync { offset: o, data } => *o < end && offset < o + data.len() as u64,
                PeerOp::Barrier { .. } => false,
            })
    }

    pub(super) fn on_io_done(&mut self, io: IoId, result: Result<Option<Bytes>, IoFailure>) {
        let Some((kind, link_gen)) = self.ios.remove(&io) else {
            return;
        };
        // Completions that belong to an earlier link must not talk to the new one.
        let same_link = link_gen == self.link_gen;
        let failed = result.is_err();
        // Cloned only when the I/O failed: the reason a detach reports.
        let error = result.as_ref().err().cloned();
        match kind {
            Io::Meta => {
                self.meta_inflight = false;
                if failed {
                    self.detach("metadata write failed", error.as_ref());
                }
                self.meta_done += 1;
                if self.meta_done == self.alone_acks_wait_meta {
                    // The superblock that may release acknowledgements given alone is
                    // durable.
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
            Io::AppWrite(req) => {
                if failed {
                    self.detach("write failed", error.as_ref());
                }
                if let Some(w) = self.writes.get_mut(&req) {
                    w.local_done = Some(result.map(|_| ()));
                }
                self.try_complete_write(req);
            }
            Io::AppRead(req) => match result {
                Ok(Some(data)) => {
                    self.reads.remove(&req);
                    self.outputs.push_back(Output::ReadDone {
                        req,
                        result: Ok(data),
                    });
                }
                _ => {
                    self.detach("read failed", error.as_ref());
                    if let Some((o, l)) = self.reads.get(&req).copied() {
                        self.start_read(req, o, l);
                    }
                }
            },
            Io::LostFlush(req) => {
                if failed {
                    self.detach("flush failed", error.as_ref());
                }
                if let Some(w) = self.writes.get_mut(&req) {
                    w.lost_flush = Some(true);
                    if failed {
                        w.local_done = Some(Err(IoFailure("flush failed".into())));
                    }
                }
                self.try_complete_write(req);
            }
            Io::AppFlush(req) => {
                if failed {
                    self.detach("flush failed", error.as_ref());
                }
                if let Some(f) = self.flushes.get_mut(&req) {
                    f.local_done = true;
                }
                self.try_complete_flush(req);
            }
            Io::PeerWrite { id, offset, len } => {
                if let Some(i) = self
                    .peer_writes_inflight
                    .iter()
                    .position(|r| *r == (offset, len))
                {
                    self.peer_writes_inflight.swap_remove(i);
                }
                if failed {
                    self.detach("replicated write failed", error.as_ref());
                } else if !same_link {
                } else if self.cfg.protocol == Protocol::C
                    || self.peer.is_some_and(|p| p.disk == DiskState::Diskless)
                {
                    self.send(Frame::AckWritten { id });
                }
            }
            Io::PeerFlush { epoch } => {
                self.peer_flush_inflight = false;
                if failed {
                    self.detach("flush failed", error.as_ref());
                }
                if same_link {
                    self.barrier_acks_sent += 1;
                    self.send(Frame::BarrierAck { epoch });
                }
            }
            Io::ResyncWrite { offset, len } => {
                if let Some(i) = self
                    .peer_writes_inflight
                    .iter()
                    .position(|r| *r == (offset, len))
                {
                    self.peer_writes_inflight.swap_remove(i);
                }
                let (first, n) = blocks_covered(offset, len);
                if !same_link {
                    // The bits stay: the new link's resync asks for the range again.
                } else if let Some(p) = &mut self.planner {
                    p.complete(first, n, !failed);
                }
                if failed {
                    self.detach("resync write failed", error.as_ref());
                } else if same_link && self.conn == ConnState::SyncTarget {
                    // Written with FUA: durable, so the bits may go on both sides.
                    self.clear_bits(first, n);
                    self.send(Frame::ResyncAck {
                        sector: offset / SECTOR_BYTES,
                        len_bytes: len as u32,
                    });
                }
            }
            Io::CsumRead { id, offset } => match result {
                Ok(Some(data)) if same_link && self.conn == ConnState::SyncTarget => {
                    let digest: [u8; 32] = Sha256::digest(&data).into();
                    self.send(Frame::ResyncChecksum {
                        id,
                        sector: offset / SECTOR_BYTES,
                        len_bytes: data.len() as u32,
                        digest,
                    });
                }
                Ok(_) => {}
                Err(_) => self.detach("checksum read failed", error.as_ref()),
            },
            Io::ResyncRead { id, offset, digest } => {
                if let Some(i) = self
                    .resync_reads_inflight
                    .iter()
                    .position(|r| r.0 == offset)
                {
                    self.resync_reads_inflight.swap_remove(i);
                }
                match result {
                    Ok(Some(data))
                        if same_link
                            && self.conn == ConnState::SyncSource
                            && digest
                                .is_some_and(|d| d == <[u8; 32]>::from(Sha256::digest(&data))) =>
                    {
                        self.send(Frame::ResyncInSync {
                            id,
                            sector: offset / SECTOR_BYTES,
                            len_bytes: data.len() as u32,
                        });
                    }
                    Ok(Some(data)) if same_link && self.conn == ConnState::SyncSource => {
                        self.sent_bytes += data.len() as u64;
                        self.resync_moved_bytes += data.len() as u64;
                        self.send(Frame::ResyncData {
                            id,
                            sector: offset / SECTOR_BYTES,
                            data,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.detach("resync read failed", error.as_ref());
                    }
                }
            }
            Io::PeerRead { .. } if !same_link => {}
            Io::ChecksumRead { .. } if !same_link => {}
            Io::VerifyRead { .. } if !same_link => {}
            Io::PeerRead { id } => match result {
                Ok(Some(data)) => {
                    self.sent_bytes += data.len() as u64;
                    self.send(Frame::ReadReply { id, data });
                }
                _ => {
                    self.detach("read for peer failed", error.as_ref());
                    self.send(Frame::ReadError { id });
                }
            },
            Io::VerifyRead { id, offset } => {
                if let Ok(Some(data)) = result {
                    let digest: [u8; 32] = Sha256::digest(&data).into();
                    self.send(Frame::ChecksumRequest {
                        id,
                        sector: offset / SECTOR_BYTES,
                        len_bytes: data.len() as u32,
                        digest,
                    });
                } else {
                    self.verify_inflight = self.verify_inflight.saturating_sub(1);
                    self.detach("verify read failed", error.as_ref());
                }
            }
            Io::ChecksumRead { id, offset, digest } => {
                if let Ok(Some(data)) = result {
                    let mine: [u8; 32] = Sha256::digest(&data).into();
                    let in_sync = mine == digest;
                    let len = data.len() as u64;
                    if !in_sync {
                        let (first, n) = blocks_touched(offset, len);
                        self.set_bits(first, n);
                    }
                    self.send(Frame::ChecksumReply {
                        id,
                        sector: offset / SECTOR_BYTES,
                        len_bytes: len as u32,
                        in_sync,
                    });
                } else {
                    self.detach("checksum read failed", error.as_ref());
                }
            }
        }
    }

    /// `on-io-error detach`: drop the backing disk; a primary keeps serving through the
    /// peer.
    pub(super) fn detach(&mut self, why: &str, error: Option<&IoFailure>) {
        if self.disk == DiskState::Diskless {
            return;
        }
        self.disk = DiskState::Diskless;
        self.detach_reason = Some(match error {
            Some(IoFailure(e)) => format!("{why}: {e}"),
            None => why.to_string(),
        });
        if self.conn.link_up() {
            self.send_state();
            if matches!(
                self.conn,
                ConnState::SyncSource | ConnState::SyncTarget | ConnState::VerifySource
            ) {
                self.drop_link("local disk detached");
            }
        }
    }
}
