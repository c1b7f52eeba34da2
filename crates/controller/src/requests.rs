//! Operator requests (`tandem standby` / `tandem takeover`): refused at once, with the
//! reason, when the cluster would not carry them out; otherwise shared with the peer and
//! kept in cluster order for the planner.
//!
//! A request that is only stored would make the operator believe something is about to
//! happen: `tandem standby` used to answer "requested" while both nodes waited for each
//! other's state report, and nothing moved. So a request is refused while
//! - maintenance mode is on (nothing starts or stops);
//! - this node has not probed all its resources yet, or the peer is up (or back after a
//!   partition) and has not reported all its groups: the views are not settled, and the
//!   planner would not move anything;
//! - the peer came back after a partition (its report, and fencing if it holds groups,
//!   come first) — until it has reported every group and holds none that this node
//!   holds: then the partition is over and the peer is up again
//!   ([`Controller::partition_over_if_settled`]; without that, a partition healed before
//!   fencing completed left both nodes refusing every request for ever);
//! - for a standby: the peer, which would take the groups, is not up (dead, gone,
//!   never heard);
//! - no group falls in the request's scope.

use tandem_policy::{PeerState, Request, RequestKind, ResourceState, Scope};

use crate::controller::{Controller, REQUESTS_KEPT};
use crate::messages::PeerMessage;

impl Controller {
    /// The peer came back after a partition: once it has reported every group and holds
    /// none that this node holds (nothing to fence, no loser to pick), the partition is
    /// over and it counts as up. The planner treats both states alike then; requests
    /// are refused only while the peer is back after a partition.
    pub(crate) fn partition_over_if_settled(&mut self) {
        if self.peer_state != PeerState::ReturnedAfterPartition {
            return;
        }
        let groups = &self.config.groups;
        if !groups.iter().all(|g| self.peer_reported.contains(&g.name)) {
            return;
        }
        let both_hold = groups.iter().any(|g| {
            let here = self
                .resources
                .iter()
                .any(|((group, _), r)| *group == g.name && r.state.holds());
            let there = self
                .peer_groups
                .get(&g.name)
                .is_some_and(|rs| rs.values().any(|r| r.state.holds()));
            here && there
        });
        if both_hold {
            return;
        }
        tracing::info!(peer = %self.peer, "the peer reported after the partition and holds nothing this node holds: the partition is over");
        self.peer_state = PeerState::Up;
    }

    /// Why the cluster would not carry out `kind` over `scope` now, if it would not.
    pub(crate) fn request_refusal(&self, kind: RequestKind, scope: Scope) -> Option<String> {
        let verb = match kind {
            RequestKind::Standby => "standby",
            RequestKind::Takeover => "takeover",
        };
        let covered: Vec<&str> = self
            .config
            .groups
            .iter()
            .filter(|g| scope.covers(&self.local, &g.home))
            .map(|g| g.name.as_str())
            .collect();
        if covered.is_empty() {
            return Some(format!(
                "no group falls in the scope of this {verb} (`{}`) on {}",
                scope_name(scope),
                self.local
            ));
        }
        if self.maintenance {
            return Some(
                "maintenance mode is on: nothing starts or stops until `tandem maintenance off`"
                    .into(),
            );
        }
        let unprobed = self
            .resources
            .values()
            .filter(|r| r.state == ResourceState::Unknown)
            .count();
        if unprobed > 0 {
            return Some(format!(
                "{} has not probed {unprobed} of its resources yet: it does not know what runs here; try again in a moment",
                self.local
            ));
        }
        let peer = &self.peer;
        match self.peer_state {
            PeerState::ReturnedAfterPartition => {
                return Some(format!(
                    "{peer} came back after a partition: its report and fencing come before anything moves"
                ));
            }
            PeerState::Up => {
                let missing: Vec<&str> = self
                    .config
                    .groups
                    .iter()
                    .filter(|g| !self.peer_reported.contains(&g.name))
                    .map(|g| g.name.as_str())
                    .collect();
                if !missing.is_empty() {
                    return Some(format!(
                        "{peer} is up but has not reported its state of {}: nothing can move until it does (see `tandem status` on both nodes)",
                        missing.join(", ")
                    ));
                }
            }
            PeerState::Dead | PeerState::LeftCleanly | PeerState::Unknown
                if kind == RequestKind::Standby =>
            {
                let state = match self.peer_state {
                    PeerState::Dead => "dead",
                    PeerState::LeftCleanly => "stopped (it left the cluster cleanly)",
                    _ => "not heard since this daemon started",
                };
                return Some(format!(
                    "{peer} is {state}: no node would take over {}",
                    covered.join(", ")
                ));
            }
            PeerState::Dead | PeerState::LeftCleanly | PeerState::Unknown => {}
        }
        None
    }

    /// Shares an accepted request with the peer and keeps it for the planner.
    pub(crate) fn accept_request(&mut self, kind: RequestKind, scope: Scope) -> serde_json::Value {
        let request = Request {
            node: self.local.clone(),
            kind,
            scope,
        };
        let at_ms = self.wall_ms();
        self.send(PeerMessage::Request {
            node: request.node.clone(),
            kind,
            scope,
            at_ms,
        });
        self.add_request(at_ms, request);
        self.replan = true;
        serde_json::json!({"accepted": true})
    }

    /// Adds an operator request in cluster order, dropping the ones that a later
    /// request fully replaces (the newest request covering a group decides, so one whose
    /// groups are all covered by a later one can never decide again), and keeping at
    /// most [`REQUESTS_KEPT`]. A request known already is not added twice.
    pub(crate) fn add_request(&mut self, at_ms: u64, request: Request) {
        if self
            .requests
            .iter()
            .any(|(t, r)| *t == at_ms && *r == request)
        {
            return;
        }
        let key = |(t, r): &(u64, Request)| (*t, r.node.clone());
        let pos = self
            .requests
            .partition_point(|x| key(x) <= key(&(at_ms, request.clone())));
        self.requests.insert(pos, (at_ms, request));
        let covered = |r: &Request| -> Vec<String> {
            self.config
                .groups
                .iter()
                .filter(|g| r.scope.covers(&r.node, &g.home))
                .map(|g| g.name.clone())
                .collect()
        };
        let covers: Vec<Vec<String>> = self.requests.iter().map(|(_, r)| covered(r)).collect();
        let keep: Vec<bool> = (0..covers.len())
            .map(|k| {
                !covers[k]
                    .iter()
                    .all(|g| covers[k + 1..].iter().any(|later| later.contains(g)))
            })
            .collect();
        let mut keep = keep.into_iter();
        self.requests.retain(|_| keep.next().unwrap_or(true));
        while self.requests.len() > REQUESTS_KEPT {
            self.requests.remove(0);
        }
    }

    /// The peer restarted (a new incarnation: after a fence, a crash or a stop): every
    /// standing request ends — the peer's with its old life, which its new one has
    /// forgotten too, and this node's with the situation it was made for. Requests are
    /// one-shot moves, as Heartbeat's `hb_standby` and `hb_takeover` were: a takeover
    /// must not pull a group back from the node that took it over after the requester
    /// failed, nor a standby push it away from the node that took it over after the
    /// other failed, when that node returns; `auto_failback` alone decides what a
    /// returning node gets. (An outside review met the second: standby on ox1, standby
    /// on ox2, ox1 powered off and back — the group left ox2 for ox1 with
    /// `auto_failback` off.) A peer merely declared dead keeps them all: it may be
    /// alive behind a partition, still holding them, and both views must agree when it
    /// returns (cluster-sim seed 2274).
    pub(crate) fn forget_requests(&mut self) {
        self.requests.clear();
    }

    /// Tells the peer every standing request (it may have missed them while down, or
    /// lost them in a restart): both nodes' planners must see the same requests.
    pub(crate) fn share_requests(&mut self) {
        let all: Vec<(u64, Request)> = self.requests.clone();
        for (at_ms, r) in all {
            self.send(PeerMessage::Request {
                node: r.node,
                kind: r.kind,
                scope: r.scope,
                at_ms,
            });
        }
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::All => "all",
        Scope::Local => "local",
        Scope::Foreign => "foreign",
    }
}
