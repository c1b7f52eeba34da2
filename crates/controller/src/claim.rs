//! Claims: a group is started from nothing only with the peer's consent.
//!
//! Each controller plans from its own view, and the peer's part of that view is only as
//! fresh as its last report. Two views can be stale in mirror image — each node's own
//! failure has just expired while the peer's, as last reported, has not — and both
//! planners then pick themselves. So while the peer can be heard, the first start of a
//! group that runs nowhere here waits for a [`PeerMessage::Claim`] to be granted:
//!
//! - the peer grants unless it holds the group itself (then it refuses); from then on
//!   its planner counts the group as starting on the claimer until the claimer's own
//!   report says what runs, the claimer gives the claim back (`Released`), the peer is
//!   lost or restarts, or [`claim_lifetime`] passes;
//! - two claims that cross are settled by name: the node whose name sorts first keeps
//!   its claim and refuses the other's; the other withdraws its own and grants;
//! - a claim unanswered when the peer is lost is withdrawn: the start then needs what
//!   any start beside a lost peer needs (its fence).
//!
//! Messages between the controllers arrive once and in order, so a grant can never
//! overtake the report that a group started, and the claimer's `starting` report always
//! precedes anything it sends after running the start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tandem_policy::{ActionId, ResourceState, ResourceView};

use crate::controller::Controller;
use crate::messages::PeerMessage;
use crate::types::Op;

/// How long a granted claim counts without news from the claimer: two deadtimes. A
/// claimer that can still be heard reports its start at once; one that cannot is
/// declared dead within a deadtime and its claim dropped.
pub fn claim_lifetime(deadtime: Duration) -> Duration {
    deadtime * 2
}

/// This node's claim waiting for the peer's answer.
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    pub(crate) id: u64,
    /// The held start: the action of the running transition (none while no
    /// transition wants it), and its resource.
    pub(crate) action: Option<ActionId>,
    pub(crate) resource: String,
}

/// Both directions' claims. Bounded: at most one entry per configured group each way.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    next_id: u64,
    /// Group → this node's open claim.
    pub(crate) asked: BTreeMap<String, Asked>,
    /// Group → until when the peer's granted (or winning) claim counts.
    pub(crate) peer: BTreeMap<String, Instant>,
}

impl Controller {
    /// Whether starting `resource` of `group` must first be claimed: the peer can be
    /// heard and nothing of the group runs (or is being started) here.
    pub(crate) fn needs_claim(&self, group: &str) -> bool {
        self.peer_reachable()
            && self
                .resources
                .iter()
                .filter(|((g, _), _)| g == group)
                .all(|(_, r)| !r.state.holds())
    }

    /// Holds the start `action` of `group`/`resource` and asks the peer for the group.
    pub(crate) fn claim(&mut self, action: ActionId, group: String, resource: String) {
        let id = match self.claims.asked.get(&group) {
            // The same group claimed for an earlier transition: that answer serves.
            Some(a) => a.id,
            None => {
                self.claims.next_id += 1;
                let id = self.claims.next_id;
                tracing::info!(%group, peer = %self.peer, "claiming the group before starting it");
                self.send(PeerMessage::Claim {
                    group: group.clone(),
                    id,
                });
                id
            }
        };
        self.claims.asked.insert(
            group,
            Asked {
                id,
                action: Some(action),
                resource,
            },
        );
    }

    /// The peer claims `group`.
    pub(crate) fn peer_claims(&mut self, group: String, id: u64) {
        if self.config.group(&group).is_none() {
            return;
        }
        let holds = self
            .resources
            .iter()
            .any(|((g, _), r)| *g == group && r.state.holds());
        let we_win = self.claims.asked.contains_key(&group) && self.local < self.peer;
        let granted = !holds && !we_win;
        if granted {
            if self.claims.asked.contains_key(&group) {
                tracing::info!(%group, peer = %self.peer, "claims crossed: the peer's wins, ours withdrawn");
                self.withdraw_claim(&group, false);
            }
            self.claims.peer.insert(
                group.clone(),
                self.now + claim_lifetime(self.config.cluster.deadtime),
            );
        } else {
            tracing::info!(%group, peer = %self.peer, holds, "refusing the peer's claim");
        }
        self.send(PeerMessage::ClaimAnswer { group, id, granted });
        self.replan = true;
    }

    /// The peer answers this node's claim `id` of `group`.
    pub(crate) fn claim_answered(&mut self, group: String, id: u64, granted: bool) {
        let ours = self.claims.asked.get(&group).is_some_and(|a| a.id == id);
        if !ours {
            if granted && !self.claims.asked.contains_key(&group) {
                // A grant this node no longer needs: give it back at once.
                self.send(PeerMessage::Released { group });
            }
            return;
        }
        let Some(asked) = self.claims.asked.remove(&group) else {
            return;
        };
        let usable = asked.action.filter(|action| {
            self.shutdown.is_none()
                && self
                    .running
                    .as_ref()
                    .is_some_and(|r| !r.abandoned && r.in_flight.contains(action))
        });
        if granted && let Some(action) = usable {
            tracing::info!(%group, peer = %self.peer, "claim granted");
            self.run(
                Some(action),
                group,
                asked.resource,
                Op::Start,
                ResourceState::Starting,
            );
            return;
        }
        if granted {
            self.send(PeerMessage::Released {
                group: group.clone(),
            });
        } else {
            tracing::info!(%group, peer = %self.peer, "claim refused: the peer holds or claims the group");
            // The peer holds or starts it; its report says more soon.
            self.claims.peer.insert(
                group.clone(),
                self.now + claim_lifetime(self.config.cluster.deadtime),
            );
        }
        self.drop_held_start(asked.action);
    }

    /// A transition being abandoned does not wait for its claims' answers: the held
    /// starts leave it at once (the next plan comes sooner), and the claims stay open
    /// for that plan's starts of the same groups.
    pub(crate) fn detach_held_starts(&mut self) {
        let replan = self.replan;
        let Some(r) = &mut self.running else {
            return;
        };
        if !(r.abandoned || replan) {
            return;
        }
        for a in self.claims.asked.values_mut() {
            if let Some(action) = a.action.take() {
                r.in_flight.remove(&action);
            }
        }
    }

    /// Gives up this node's claim of `group` (unanswered): its held start is dropped
    /// from the running transition, and the peer is told if it may have granted it.
    pub(crate) fn withdraw_claim(&mut self, group: &str, tell_peer: bool) {
        if let Some(asked) = self.claims.asked.remove(group) {
            if tell_peer {
                self.send(PeerMessage::Released {
                    group: group.to_string(),
                });
            }
            self.drop_held_start(asked.action);
        }
    }

    /// Every claim in either direction ends (the peer was lost or restarted, or this
    /// node shuts down — then the peer is told).
    pub(crate) fn end_claims(&mut self, tell_peer: bool) {
        let groups: Vec<String> = self.claims.asked.keys().cloned().collect();
        for g in groups {
            self.withdraw_claim(&g, tell_peer);
        }
        self.claims.peer.clear();
    }

    /// A report or release from the peer ends its claim of `group`: from here its
    /// reports say what runs there.
    pub(crate) fn peer_claim_settled(&mut self, group: &str) {
        self.claims.peer.remove(group);
    }

    /// Drops expired peer claims; whether any was dropped.
    pub(crate) fn expire_claims(&mut self) -> bool {
        let now = self.now;
        let before = self.claims.peer.len();
        self.claims.peer.retain(|_, until| now < *until);
        self.claims.peer.len() < before
    }

    /// The peer's claims as the planner sees them: its group's first resource starting,
    /// unless its report already shows something of the group there.
    pub(crate) fn claimed_view(&self, group: &str) -> Option<(String, ResourceView)> {
        if !self.claims.peer.contains_key(group) {
            return None;
        }
        let reported_holding = self
            .peer_groups
            .get(group)
            .is_some_and(|rs| rs.values().any(|r| r.state.holds()));
        if reported_holding {
            return None;
        }
        let first = self.config.group(group)?.resources.first()?;
        Some((
            first.name.clone(),
            ResourceView {
                state: ResourceState::Starting,
                failures: Vec::new(),
            },
        ))
    }

    fn drop_held_start(&mut self, action: Option<ActionId>) {
        if let (Some(action), Some(r)) = (action, &mut self.running)
            && r.in_flight.remove(&action)
        {
            r.abandoned = true;
        }
        self.replan = true;
    }
}
