//! The simulated disk service and its client: promotions and demotions with the real
//! service's retries, the replication streams, and the client's numbered writes.

use super::*;

impl Cluster {
    // ------------------------------------------------------------------ the disk service

    pub(super) fn disk_role(&self, i: usize) -> Option<Role> {
        self.nodes[i].disk.as_ref().map(|d| d.role())
    }

    pub(super) fn disk_order(&mut self, i: usize, order: DiskOrder) {
        let ms = self.local(i);
        let Some(d) = self.nodes[i].disk.as_mut() else {
            if let DiskOrder::Outdate { disk, request } = order {
                self.later(
                    i,
                    Duration::from_millis(1),
                    Input::OutdateDone {
                        disk,
                        request,
                        result: Err("the disk is not up".into()),
                    },
                );
            }
            return;
        };
        match order {
            DiskOrder::PeerFenced => d.peer_fenced(ms),
            DiskOrder::PeerOutdated(_) => d.peer_outdated(ms),
            DiskOrder::PeerUnreachable(_) => d.peer_unreachable(ms),
            DiskOrder::Outdate { disk, request } => match d.outdate(ms) {
                Ok(ticket) => self.nodes[i].outdates.push((request, ticket)),
                Err(e) => self.later(
                    i,
                    Duration::from_millis(1),
                    Input::OutdateDone {
                        disk,
                        request,
                        result: Err(e.to_string()),
                    },
                ),
            },
            // The simulated disk is a group's, and the simulator never stops a node in
            // maintenance mode.
            DiskOrder::StopUnmanaged | DiskOrder::Detach => {}
            DiskOrder::Leave => {
                let ticket = d.leave(ms);
                // The shell waits until the mark is durable before the goodbye.
                self.drain_disk(i);
                for _ in 0..1000 {
                    if self.nodes[i]
                        .disk
                        .as_ref()
                        .is_none_or(|d| d.metadata_durable(ticket))
                    {
                        break;
                    }
                    self.complete_ios_all(i);
                    self.drain_disk(i);
                }
            }
        }
        self.drain_disk(i);
    }

    /// The disk core's own outputs only (no controller commands: used inside one).
    pub(super) fn drain_disk(&mut self, i: usize) {
        while let Some(o) = self.nodes[i].disk.as_mut().and_then(|d| d.poll_output()) {
            self.disk_output(i, o);
        }
    }

    pub(super) fn outdates_step(&mut self, i: usize) {
        let outdates = std::mem::take(&mut self.nodes[i].outdates);
        let Some(d) = self.nodes[i].disk.as_ref() else {
            return;
        };
        let (done, waiting): (Vec<_>, Vec<_>) = outdates
            .into_iter()
            .partition(|(_, t)| d.metadata_durable(*t));
        self.nodes[i].outdates = waiting;
        for (request, _) in done {
            self.tell_controller(
                i,
                Input::OutdateDone {
                    disk: "r0".into(),
                    request,
                    result: Ok(()),
                },
            );
        }
    }

    /// The disk service's promotion and demotion, with the real one's retries.
    pub(super) fn disk_action_step(&mut self, i: usize) {
        let Some(mut a) = self.nodes[i].disk_action.clone() else {
            return;
        };
        let ms = self.local(i);
        let wait_over = self.nodes[i].handshaked || self.nodes[i].degraded_at_boot;
        let Some(d) = self.nodes[i].disk.as_mut() else {
            return;
        };
        let mut outcome: Option<Result<(), String>> = None;
        let demote = a.op == Op::Stop || (a.op == Op::Restart && !a.demoted);
        if demote {
            match d.demote(ms) {
                Ok(()) if a.op == Op::Restart => a.demoted = true,
                Ok(()) => outcome = Some(Ok(())),
                Err(AdminError::Busy) if self.now < a.deadline => {}
                Err(e) => outcome = Some(Err(e.to_string())),
            }
        }
        if outcome.is_none() && (a.op == Op::Start || (a.op == Op::Restart && a.demoted)) {
            // The startup wait: a node that has not seen its peer since it booted, and
            // did not run degraded, waits for it (wfc_timeout = forever, DRBD's default).
            if !wait_over {
                if self.now >= a.deadline {
                    outcome = Some(Err("still waiting for the peer at startup".into()));
                }
            } else {
                match d.promote(ms, false) {
                    Ok(()) => outcome = Some(Ok(())),
                    Err(AdminError::PeerNotOutdated) if self.now < a.deadline => {
                        if !a.asked_fence_peer {
                            a.asked_fence_peer = true;
                            self.nodes[i].disk_action = Some(a.clone());
                            self.tell_controller(i, Input::DiskFencePeer { disk: "r0".into() });
                            return;
                        }
                    }
                    Err(AdminError::PeerIsPrimary | AdminError::Resyncing)
                        if self.now < a.deadline => {}
                    Err(e) => outcome = Some(Err(e.to_string())),
                }
            }
        }
        match outcome {
            None => self.nodes[i].disk_action = Some(a),
            Some(r) => {
                self.nodes[i].disk_action = None;
                let r = match r {
                    Ok(()) => result(OcfExit::Success, "disk r0"),
                    Err(e) => result(OcfExit::Generic, &e),
                };
                self.later(
                    i,
                    Duration::from_millis(1),
                    Input::ActionDone {
                        action: a.action,
                        group: a.group,
                        resource: a.resource,
                        op: a.op,
                        result: r,
                    },
                );
            }
        }
    }

    pub(super) fn disk_output(&mut self, i: usize, o: Output) {
        match o {
            Output::WriteLocal {
                io,
                offset_bytes,
                data,
                fua,
            } => self.nodes[i].ios.push((
                io,
                PendingIo::Write {
                    offset: offset_bytes,
                    data,
                    fua,
                },
            )),
            Output::ReadLocal {
                io,
                offset_bytes,
                len_bytes,
            } => self.nodes[i].ios.push((
                io,
                PendingIo::Read {
                    offset: offset_bytes,
                    len: len_bytes,
                },
            )),
            Output::FlushLocal { io } => self.nodes[i].ios.push((io, PendingIo::Flush)),
            Output::PersistMeta { io, write } => {
                self.nodes[i].ios.push((io, PendingIo::Meta(write)))
            }
            Output::Send(frame) => {
                if let Some(conn) = self.nodes[i].conn {
                    self.stream(
                        1 - i,
                        conn,
                        Some(Bytes::from(frame.to_bytes(&FrameKey::preauth(), 0))),
                    );
                }
            }
            Output::Disconnect { reason } => {
                self.note(format!(
                    "{} drops the replication link: {reason}",
                    self.nodes[i].name
                ));
                if let Some(conn) = self.nodes[i].conn.take() {
                    self.stream(1 - i, conn, None);
                }
            }
            Output::WriteDone { req, result } => {
                if let Some((_, block, id)) = self.writes.remove(&req)
                    && result.is_ok()
                {
                    if std::env::var("TANDEM_SIM_TRACE_BLOCK").ok() == Some(block.to_string()) {
                        self.note(format!(
                            "{} acks write {id} to block {block}: {result:?}",
                            self.nodes[i].name
                        ));
                    }
                    self.summary.writes_acked += 1;
                    let b = block as usize;
                    if id > self.acked[b] {
                        self.acked[b] = id;
                        // A peer that lost power before this acknowledgement arrived may
                        // have lost its cached copy already.
                        self.lost_unflushed[b] = if self.nodes[1 - i].powered {
                            0
                        } else {
                            1 << (1 - i)
                        };
                    }
                }
            }
            Output::FlushDone { req, result } => {
                if let Some((_, covered)) = self.flushes.remove(&req)
                    && result.is_ok()
                {
                    for (f, a) in self.flushed.iter_mut().zip(covered) {
                        *f = (*f).max(a);
                    }
                }
            }
            Output::ReadDone { .. } => {}
            Output::FencePeer => {
                self.tell_controller(i, Input::DiskFencePeer { disk: "r0".into() })
            }
        }
    }

    /// Puts a frame (or, `None`, the close) on the stream towards `to`.
    pub(super) fn stream(&mut self, to: usize, conn: u64, item: Option<Bytes>) {
        if self.streams[to].is_empty() {
            self.schedule(Duration::from_micros(500), Ev::Stream { to });
        }
        self.streams[to].push_back((conn, item));
    }

    pub(super) fn complete_ios(&mut self, i: usize) {
        let n = self.nodes[i].ios.len();
        for _ in 0..n {
            if self.nodes[i].ios.is_empty() || self.rng.below(3) == 0 {
                continue;
            }
            let k = self.rng.below(self.nodes[i].ios.len() as u64) as usize;
            self.complete_one(i, k);
        }
    }

    pub(super) fn complete_ios_all(&mut self, i: usize) {
        while !self.nodes[i].ios.is_empty() {
            self.complete_one(i, 0);
        }
    }

    pub(super) fn complete_one(&mut self, i: usize, k: usize) {
        // Metadata writes are issued one at a time by the core; others in any order.
        let (io, op) = self.nodes[i].ios.swap_remove(k);
        let result = self.nodes[i].storage.complete(op);
        let ms = self.local(i);
        if let Some(d) = self.nodes[i].disk.as_mut() {
            d.handle(ms, tandem_disk::core::Input::IoDone { io, result });
        }
        self.drain_disk(i);
    }

    pub(super) fn connect_replication(&mut self) {
        let ready = |n: &SimNode| {
            n.alive()
                && n.conn.is_none()
                && n.disk.as_ref().is_some_and(|d| {
                    d.wants_connection() && d.connection() == ConnState::Connecting
                })
        };
        if self.is_cut(0, 1, 0)
            || !ready(&self.nodes[0])
            || !ready(&self.nodes[1])
            || self.rng.below(5) != 0
        {
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        for i in 0..2 {
            self.nodes[i].conn = Some(conn);
            let ms = self.local(i);
            if let Some(d) = self.nodes[i].disk.as_mut() {
                d.handle(ms, tandem_disk::core::Input::Connected);
            }
            self.drain(i);
        }
    }

    // ------------------------------------------------------------------ the client

    pub(super) fn client(&mut self) {
        if self.rng.below(3) != 0 || self.writes.len() >= 8 {
            return;
        }
        let Some(p) = (0..2).find(|&i| {
            self.nodes[i].alive()
                && !self.nodes[i].stopping
                && self.disk_role(i) == Some(Role::Primary)
        }) else {
            return;
        };
        if self.rng.below(10) == 0 {
            let req = self.next_req;
            self.next_req += 1;
            self.flushes.insert(req, (p, self.acked.clone()));
            let ms = self.local(p);
            if let Some(d) = self.nodes[p].disk.as_mut() {
                d.handle(ms, tandem_disk::core::Input::Flush { req });
            }
            self.drain(p);
            return;
        }
        let block = self.rng.below(DISK_BYTES / BLOCK);
        let id = self.next_write;
        self.next_write += 1;
        let req = self.next_req;
        self.next_req += 1;
        self.writes.insert(req, (p, block, id));
        let ms = self.local(p);
        let fua = self.rng.below(10) == 0;
        if let Some(d) = self.nodes[p].disk.as_mut() {
            d.handle(
                ms,
                tandem_disk::core::Input::Write {
                    req,
                    offset_bytes: block * BLOCK,
                    data: stamp(id, block),
                    fua,
                },
            );
        }
        self.drain(p);
    }
}
