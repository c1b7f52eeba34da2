//! The peer, as membership and its messages tell it: up, dead, back after a partition,
//! restarted; its reports, claims, requests, fence records and outdate requests.

use std::collections::BTreeMap;

use tandem_fencing::FenceRecord;
use tandem_membership::Event;
use tandem_policy::{ActionId, Failure, PeerState, Request, ResourceView};

use crate::controller::{Controller, Shutdown};
use crate::messages::{PeerMessage, Reported, failure_from_code, state_from_code};
use crate::types::{Command, DiskOrder};

impl Controller {
    pub(crate) fn membership(&mut self, event: Event) {
        self.notice_membership(&event);
        match event {
            Event::NodeUp { .. }
            | Event::NodeDead { .. }
            | Event::NodeReturnedAfterPartition { .. }
            | Event::NodeRestarted { .. }
            | Event::Message { .. }
                if self.is_witness(&event) =>
            {
                self.witness_event(event);
            }
            Event::NodeUp { node, .. } if node == self.peer_id => {
                self.witness.peer_back();
                if self.peer_state != PeerState::ReturnedAfterPartition {
                    self.peer_state = PeerState::Up;
                }
                self.peer_heard_again();
                self.peer_said_goodbye = false;
                self.send_report();
                self.replan = true;
            }
            Event::NodeDead { node, .. } if node == self.peer_id => {
                self.peer_state = if self.peer_said_goodbye {
                    PeerState::LeftCleanly
                } else {
                    PeerState::Dead
                };
                self.outdater.peer_unreachable();
                self.end_claims(false);
                if self.peer_state == PeerState::Dead {
                    let holds = self.holds_any();
                    self.witness.peer_lost(self.now, holds);
                }
                self.replan = true;
            }
            Event::NodeReturnedAfterPartition { node, .. } if node == self.peer_id => {
                self.witness.peer_back();
                self.peer_state = PeerState::ReturnedAfterPartition;
                self.peer_heard_again();
                self.peer_reported.clear();
                // The peer may never have missed us (a freeze on its side looks like
                // lateness there): it will not report unasked.
                self.send(PeerMessage::AskReport);
                self.send_report();
                self.replan = true;
            }
            Event::NodeRestarted { node, .. } if node == self.peer_id => {
                // A new incarnation has lost its state: it runs nothing until it reports.
                self.witness.peer_back();
                self.forget_requests();
                self.peer_state = PeerState::Up;
                self.peer_reported.clear();
                self.peer_said_goodbye = false;
                self.peer_groups.clear();
                self.end_claims(false);
                self.coordinator
                    .node_returned_with_new_incarnation(&self.peer);
                self.peer_heard_again();
                self.ping.remove(&self.peer);
                self.send_report();
                self.replan = true;
            }
            Event::MessageFailed { id, .. } => {
                if let Some(request) = self.outdate_messages.remove(&id) {
                    self.outdater.message_failed(request);
                }
                if matches!(self.shutdown, Some(Shutdown::Goodbye { id: Some(g), .. }) if g == id) {
                    tracing::warn!("all groups stopped; the peer did not take our goodbye");
                    self.finish_shutdown();
                }
            }
            Event::MessageAcked { id, .. } => {
                self.outdate_messages.remove(&id);
                if matches!(self.shutdown, Some(Shutdown::Goodbye { id: Some(g), .. }) if g == id) {
                    tracing::info!("all groups stopped; the peer acknowledged our goodbye");
                    self.finish_shutdown();
                }
            }
            Event::Message { from, payload } if from == self.peer_id => {
                match PeerMessage::decode(&payload) {
                    Some(m) => self.peer_message(m),
                    None => {
                        self.counters.message_dropped("peer");
                        tracing::warn!("malformed cluster message from {} dropped", self.peer)
                    }
                }
            }
            _ => {}
        }
    }

    /// The peer is heard again before a fence of it completed (a partition healed, or
    /// it restarted): the fence is no longer the planner's decision but a leftover. It
    /// is cancelled and the transition waiting for it abandoned; the next plan sees the
    /// peer's report and fences it again if it must (both holding a group, a failed
    /// stop). Waiting for a fence of a node that is back would wait for ever when the
    /// device cannot act (an operator's confirmation, a broken switch).
    pub(crate) fn peer_heard_again(&mut self) {
        self.share_requests();
        if self.coordinator.state(&self.peer).is_down() {
            // Fenced (or confirmed down) earlier, and heard now: it came back, so it is
            // no longer down. Kept, the old verdict would let a disk count this live
            // peer as fenced — and write alone past it.
            tracing::info!(peer = %self.peer, "the fenced peer is back");
            self.coordinator
                .node_returned_with_new_incarnation(&self.peer);
            return;
        }
        self.coordinator.cancel(&self.peer);
        let peer = self.peer.clone();
        if let Some(running) = &mut self.running {
            let waiting: Vec<ActionId> = running
                .fences
                .iter()
                .filter(|(_, node)| **node == peer)
                .map(|(id, _)| *id)
                .collect();
            if !waiting.is_empty() {
                tracing::info!(%peer, "the peer is back before its fence completed: fence cancelled, replanning");
                for id in waiting {
                    running.fences.remove(&id);
                    running.in_flight.remove(&id);
                }
                running.abandoned = true;
            }
        }
    }

    pub(crate) fn peer_message(&mut self, message: PeerMessage) {
        match message {
            PeerMessage::Report { group, resources } => {
                // One report per group, each replacing what was known of its group; a
                // group this node does not know is ignored (bounded state).
                if self.config.group(&group).is_none() {
                    return;
                }
                let rs: BTreeMap<String, ResourceView> = resources
                    .into_iter()
                    .map(|(r, reported)| (r, peer_view(&reported)))
                    .collect();
                if rs.values().any(|r| r.state.holds()) {
                    self.peer_claim_settled(&group);
                }
                self.peer_reported.insert(group.clone());
                self.peer_groups.insert(group, rs);
                self.partition_over_if_settled();
            }
            PeerMessage::Released { group } => {
                tracing::info!(%group, peer = %self.peer, "peer released group");
                self.peer_claim_settled(&group);
            }
            // The asker forgot what we run, and what we asked for: both views must see
            // the same requests (cluster-sim seed 2274).
            PeerMessage::AskReport => {
                self.send_report();
                self.share_requests();
            }
            PeerMessage::Claim { group, id } => self.peer_claims(group, id),
            PeerMessage::ClaimAnswer { group, id, granted } => {
                self.claim_answered(group, id, granted)
            }
            PeerMessage::FenceMe { reason } => {
                tracing::error!(peer = %self.peer, %reason, "peer asks to be fenced");
            }
            PeerMessage::Request {
                node,
                kind,
                scope,
                at_ms,
            } => {
                tracing::info!(%node, ?kind, ?scope, "operator request from the peer");
                self.add_request(at_ms, Request { node, kind, scope });
            }
            PeerMessage::Maintenance { on, at_ms } => {
                // The later switch wins (on, if both came at the same moment).
                let newer = at_ms > self.maintenance_at_ms
                    || (at_ms == self.maintenance_at_ms && on && !self.maintenance);
                if newer && on != self.maintenance {
                    tracing::info!(on, "maintenance mode set by the peer");
                }
                if newer {
                    self.maintenance = on;
                    self.maintenance_at_ms = at_ms;
                }
            }
            PeerMessage::Fence { record } => match FenceRecord::from_json(record.as_bytes()) {
                Ok(record) => {
                    tracing::info!(target = %record.target, "fencing record from the peer: {}", record.outcome.summary());
                    self.coordinator.peer_reported(record, self.now);
                }
                Err(err) => {
                    self.counters.message_dropped("peer");
                    tracing::warn!("malformed fencing record from the peer dropped: {err}")
                }
            },
            PeerMessage::Ping { ok } => {
                self.ping.insert(self.peer.clone(), ok);
            }
            PeerMessage::Goodbye => {
                tracing::info!(peer = %self.peer, "peer stopped its groups and is leaving");
                self.peer_said_goodbye = true;
                // It runs nothing from here on: take over now, not a deadtime later when
                // its silence makes it dead (Heartbeat's graceful handover).
                self.peer_state = PeerState::LeftCleanly;
                self.coordinator.cancel(&self.peer);
                self.peer_groups.clear();
                self.end_claims(false);
                self.peer_reported = self.config.groups.iter().map(|g| g.name.clone()).collect();
            }
            PeerMessage::Outdate { disk, request } => {
                tracing::warn!(%disk, peer = %self.peer, "the peer lost its replication link: outdating this copy");
                self.commands
                    .push_back(Command::Disks(DiskOrder::Outdate { disk, request }));
            }
            PeerMessage::Outdated {
                disk,
                request,
                error,
            } => {
                match &error {
                    None => tracing::info!(%disk, peer = %self.peer, "the peer outdated its copy"),
                    Some(why) => {
                        tracing::warn!(%disk, peer = %self.peer, "the peer did not outdate its copy: {why}")
                    }
                }
                self.outdater
                    .reply(&disk, request, error.map_or(Ok(()), Err));
            }
        }
        self.replan = true;
    }
}

fn peer_view(reported: &Reported) -> ResourceView {
    ResourceView {
        state: state_from_code(&reported.state),
        failures: reported
            .failures
            .chars()
            .filter_map(failure_from_code)
            .map(|op| Failure { op, expired: false })
            .collect(),
    }
}
