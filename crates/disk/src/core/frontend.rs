//! The frontend's requests: admission, write ordering and issue (activity log, epochs,
//! the peer leg), acknowledgement at the protocol's level, flushes.

use bytes::Bytes;
use tandem_wire::frame::{Frame, MAX_DATA_BYTES, SECTOR_BYTES};

use super::activity_log::{ActivityLog, Begin};
use super::bitmap::blocks_touched;
use super::*;

impl Core {
    /// Why a frontend request of `len` bytes at `offset` cannot be taken, if it cannot:
    /// only a primary serves I/O, in whole sectors, within the disk, under unique ids.
    pub(super) fn check_request(
        &self,
        offset: u64,
        len: u64,
        duplicate: bool,
    ) -> Option<RequestError> {
        if self.role != Role::Primary {
            Some(RequestError::NotPrimary)
        } else if offset % SECTOR_BYTES != 0
            || len % SECTOR_BYTES != 0
            || len == 0
            || len > MAX_DATA_BYTES as u64
        {
            Some(RequestError::Misaligned)
        } else if offset.checked_add(len).is_none_or(|e| e > self.size_bytes) {
            Some(RequestError::OutOfRange)
        } else if duplicate {
            Some(RequestError::DuplicateId)
        } else {
            None
        }
    }

    pub(super) fn on_write(&mut self, req: u64, offset: u64, data: Bytes, fua: bool) {
        let err = self.check_request(offset, data.len() as u64, self.writes.contains_key(&req));
        if let Some(e) = err {
            self.outputs.push_back(Output::WriteDone {
                req,
                result: Err(e),
            });
            return;
        }
        self.writes.insert(
            req,
            WriteReq {
                offset,
                data,
                fua,
                issued: false,
                local_needed: false,
                local_done: None,
                local_fua: false,
                lost_flush: None,
                peer: PeerLeg::None,
                al_extents: None,
                wait_meta: 0,
                arrived_ms: self.now_ms,
            },
        );
        self.write_order.push_back(req);
        self.to_issue.push_back(req);
    }

    pub(super) fn on_read(&mut self, req: u64, offset: u64, len: u32) {
        let err = self.check_request(offset, u64::from(len), self.reads.contains_key(&req));
        if let Some(e) = err {
            self.outputs.push_back(Output::ReadDone {
                req,
                result: Err(e),
            });
            return;
        }
        self.reads.insert(req, (offset, len));
        self.start_read(req, offset, len);
    }

    pub(super) fn start_read(&mut self, req: u64, offset: u64, len: u32) {
        if self.disk != DiskState::Diskless {
            let io = self.io(Io::AppRead(req));
            self.outputs.push_back(Output::ReadLocal {
                io,
                offset_bytes: offset,
                len_bytes: len,
            });
        } else if self.conn.replicating()
            && self.peer.is_some_and(|p| p.disk == DiskState::UpToDate)
        {
            self.send(Frame::ReadRequest {
                id: req,
                sector: offset / SECTOR_BYTES,
                len_bytes: len,
            });
        } else {
            self.reads.remove(&req);
            self.outputs.push_back(Output::ReadDone {
                req,
                result: Err(RequestError::Io("no local disk and no peer".into())),
            });
        }
    }

    pub(super) fn on_flush(&mut self, req: u64) {
        if self.role != Role::Primary {
            self.outputs.push_back(Output::FlushDone {
                req,
                result: Err(RequestError::NotPrimary),
            });
            return;
        }
        // A flush covers writes already acknowledged; under B and C it also waits for
        // the peer to flush the epoch that holds them.
        let epoch = if self.conn.replicating() && self.cfg.protocol != Protocol::A {
            Some(self.close_epoch())
        } else {
            if self.conn.replicating() {
                self.close_epoch();
            }
            None
        };
        let local_needed = self.disk != DiskState::Diskless;
        if local_needed {
            let io = self.io(Io::AppFlush(req));
            self.outputs.push_back(Output::FlushLocal { io });
        }
        self.flushes.insert(
            req,
            FlushReq {
                epoch,
                local_done: !local_needed,
            },
        );
        self.try_complete_flush(req);
    }

    pub(super) fn close_epoch(&mut self) -> u64 {
        let e = self.epoch;
        self.send(Frame::Barrier { epoch: e });
        self.epoch += 1;
        self.epoch_writes = 0;
        e
    }

    /// Issues queued frontend writes in order, as far as ordering, the activity log and
    /// metadata allow.
    pub(super) fn issue_writes(&mut self) {
        // Suspended (disk fencing): new writes wait unissued until the peer's fate is
        // known; issuing them alone now could only end in an acknowledgement too early.
        if self.suspended_since_ms.is_some() {
            return;
        }
        while let Some(&req) = self.to_issue.front() {
            let Some(w) = self.writes.get(&req) else {
                self.to_issue.pop_front();
                continue;
            };
            if w.issued {
                self.to_issue.pop_front();
                continue;
            }
            // Writes wait while the handshake decides what the peer gets: a write in
            // that window would miss both the mirror and the exchanged bitmap.
            if matches!(
                self.conn,
                ConnState::Handshaking | ConnState::WaitBitmapSource | ConnState::WaitBitmapTarget
            ) {
                return;
            }
            let (offset, len) = (w.offset, w.data.len() as u64);
            if self.overlaps_inflight(req, offset, len) {
                return;
            }
            let local_needed = self.disk != DiskState::Diskless;
            let replicate = self.conn.replicating();
            if !local_needed && !replicate {
                self.finish_write(
                    req,
                    Err(RequestError::Io("no local disk and no peer".into())),
                );
                continue;
            }
            if local_needed && self.writes[&req].al_extents.is_none() {
                let ext = ActivityLog::extents_of(offset, len);
                match self.al.begin(ext.clone()) {
                    Begin::Busy => {
                        // Extents may be held by writes waiting for the peer's flush:
                        // close the epoch so the barrier ack releases them.
                        if self.conn.replicating() && self.epoch_writes > 0 {
                            self.close_epoch();
                        }
                        return;
                    }
                    Begin::Hot => {}
                    Begin::Transaction {
                        transaction,
                        evicted,
                    } => {
                        // The bits of extents leaving the log must be durable first:
                        // after a crash only the log's extents are added back.
                        for e in evicted {
                            self.persist_bitmap_for_extent(e);
                        }
                        self.enqueue_meta(MetaWrite::ActivityLog(transaction));
                    }
                }
                if let Some(w) = self.writes.get_mut(&req) {
                    w.al_extents = Some(ext);
                }
            }
            if !replicate {
                // Local only: record the difference before writing, and move to a new
                // generation if this is the first change the peer will lack.
                let (first, n) = blocks_touched(offset, len);
                self.set_bits(first, n);
                if self.role == Role::Primary && self.gens.bitmap == 0 {
                    let g = self.new_generation();
                    self.gens.start_new_current(g);
                    self.persist_superblock();
                }
            }
            let meta_ticket = self.meta_enqueued;
            if let Some(w) = self.writes.get_mut(&req) {
                w.wait_meta = meta_ticket;
            }
            if self.meta_done < meta_ticket {
                // Activity log or superblock first; later writes queue behind.
                return;
            }
            let (data, fua) = {
                let w = &self.writes[&req];
                (w.data.clone(), w.fua)
            };
            let protected = replicate && self.peer.is_some_and(|p| p.disk == DiskState::UpToDate);
            // Protocol C promises the write survives any single failure. When no
            // up-to-date peer holds a copy (disconnected, or the peer is a sync target),
            // our own disk must: the local write is forced durable.
            let local_fua = fua || (self.cfg.protocol == Protocol::C && !protected);
            if replicate {
                let wire_id = self.next_wire_id;
                self.next_wire_id += 1;
                self.wire_ids.insert(wire_id, req);
                self.send(Frame::Data {
                    id: wire_id,
                    sector: offset / SECTOR_BYTES,
                    epoch: self.epoch,
                    fua,
                    data: data.clone(),
                });
                self.sent_bytes += len;
                let held = self.writes.get(&req).and_then(|w| w.al_extents.clone());
                if let Some(ext) = &held {
                    self.al.hold(ext.clone());
                }
                self.transfer_log.push_back((self.epoch, offset, len, held));
                self.epoch_writes += 1;
            }
            if local_needed {
                let io = self.io(Io::AppWrite(req));
                self.outputs.push_back(Output::WriteLocal {
                    io,
                    offset_bytes: offset,
                    data,
                    fua: local_fua,
                });
            }
            if let Some(w) = self.writes.get_mut(&req) {
                w.issued = true;
                w.local_fua = local_fua;
                w.local_needed = local_needed;
                w.peer = if replicate {
                    PeerLeg::Sent {
                        received: false,
                        written: false,
                        protected,
                    }
                } else {
                    PeerLeg::None
                };
            }
            if replicate && self.epoch_writes >= self.cfg.epoch_max_writes {
                self.close_epoch();
            }
            self.try_complete_write(req);
        }
    }

    pub(super) fn overlaps_inflight(&self, req: u64, offset: u64, len: u64) -> bool {
        let end = offset + len;
        for other in &self.write_order {
            if *other == req {
                break;
            }
            if let Some(w) = self.writes.get(other) {
                let o_end = w.offset + w.data.len() as u64;
                if w.offset < end && offset < o_end && (!w.issued || w.local_done.is_none()) {
                    return true;
                }
            }
        }
        self.resync_reads_inflight
            .iter()
            .any(|(o, l)| *o < end && offset < o + l)
            || self.peer_busy(offset, len)
    }

    pub(super) fn try_complete_write(&mut self, req: u64) {
        let Some(w) = self.writes.get(&req) else {
            return;
        };
        if !w.issued {
            return;
        }
        if w.local_needed && w.local_done.is_none() {
            return;
        }
        let local_ok = !w.local_needed || matches!(w.local_done, Some(Ok(())));
        if self.cfg.protocol == Protocol::C
            && matches!(w.peer, PeerLeg::Lost)
            && w.local_needed
            && local_ok
            && !w.local_fua
            && w.lost_flush != Some(true)
        {
            // The peer's copy is gone and ours may sit in a volatile cache: make it
            // durable before acknowledging under C.
            if w.lost_flush.is_none() {
                if let Some(w) = self.writes.get_mut(&req) {
                    w.lost_flush = Some(false);
                }
                let io = self.io(Io::LostFlush(req));
                self.outputs.push_back(Output::FlushLocal { io });
            }
            return;
        }
        // A write whose peer copy was lost waits while suspended (for the peer to be
        // outdated or fenced; acknowledged now, it could be missing from a promoted
        // peer), and until the metadata that makes this copy the one that holds it is
        // durable (see `alone_acks_wait_meta`).
        if matches!(w.peer, PeerLeg::Lost)
            && (self.suspended_since_ms.is_some() || self.meta_done < self.alone_acks_wait_meta)
        {
            return;
        }
        let (peer_ok, peer_pending, protected) = match w.peer {
            PeerLeg::None | PeerLeg::Lost => (false, false, false),
            PeerLeg::Sent {
                received,
                written,
                protected,
            } => {
                let ok = if !w.local_needed {
                    // Without a local copy only the peer's disk holds it.
                    written
                } else {
                    match self.cfg.protocol {
                        Protocol::A => true,
                        Protocol::B => received || written,
                        Protocol::C => written,
                    }
                };
                (ok, !ok, protected)
            }
        };
        if peer_pending {
            return;
        }
        let result = if peer_ok && protected {
            // A copy on an up-to-date peer at the promised level exists.
            Ok(WriteAck { replicated: true })
        } else if local_ok {
            Ok(WriteAck { replicated: false })
        } else {
            Err(RequestError::Io(
                "local write failed and no peer copy".into(),
            ))
        };
        if let Ok(a) = &result {
            // The promise: never acknowledge before durable at the promised level.
            assert!(
                local_ok || a.replicated,
                "write acknowledged with neither a local nor a peer copy"
            );
        }
        self.finish_write(req, result);
    }

    pub(super) fn finish_write(&mut self, req: u64, result: Result<WriteAck, RequestError>) {
        if let Some(w) = self.writes.remove(&req) {
            if let Some(ext) = w.al_extents {
                self.al.end(ext);
            }
            if result.is_ok() {
                self.write_latency
                    .record(self.now_ms.saturating_sub(w.arrived_ms));
            }
            if let Some(i) = self.write_order.iter().position(|r| *r == req) {
                self.write_order.remove(i);
            }
        }
        self.outputs.push_back(Output::WriteDone { req, result });
    }

    pub(super) fn try_complete_flush(&mut self, req: u64) {
        let Some(f) = self.flushes.get(&req) else {
            return;
        };
        // A flush is a promise that survives the loss of both nodes' caches. Once the
        // peer can no longer confirm it (the link broke before its barrier ack), it
        // rests on this disk alone: like a write whose peer copy was lost, it waits
        // until the generation that makes this copy the sync source is durable.
        if !f.local_done
            || f.epoch.is_some()
            || self.suspended_since_ms.is_some()
            || self.meta_done < self.alone_acks_wait_meta
        {
            return;
        }
        self.flushes.remove(&req);
        self.outputs.push_back(Output::FlushDone {
            req,
            result: Ok(()),
        });
    }
}
