//! The controller's side of the witness: membership events about the witness and its
//! answers go to the [`Ballot`](tandem_witness::Ballot), whose vote the planner sees;
//! its requests leave as [`Command::SendToWitness`].

use tandem_config::Config;
use tandem_membership::{Event, NodeId};
use tandem_witness::WitnessMessage;

use crate::controller::Controller;
use crate::types::Command;

/// The witness's membership node id: after the `[[node]]`s, which are numbered from 1 in
/// file order (the daemon's membership configuration and the witness use the same rule).
pub fn witness_node_id(config: &Config) -> Option<NodeId> {
    config
        .witness
        .as_ref()
        .map(|_| config.nodes.len() as NodeId + 1)
}

impl Controller {
    /// Whether a membership event is about the witness.
    pub(crate) fn is_witness(&self, event: &Event) -> bool {
        let node = match event {
            Event::NodeUp { node, .. }
            | Event::NodeDead { node, .. }
            | Event::NodeReturnedAfterPartition { node, .. }
            | Event::NodeRestarted { node, .. } => *node,
            Event::Message { from, .. } => *from,
            _ => return false,
        };
        Some(node) == self.witness_id
    }

    /// A membership event about the witness.
    pub(crate) fn witness_event(&mut self, event: Event) {
        let now = self.now;
        let holds = self.holds_any();
        let before = self.witness.vote();
        match event {
            Event::NodeUp { .. }
            | Event::NodeReturnedAfterPartition { .. }
            | Event::NodeRestarted { .. } => self.witness.witness_up(now, holds),
            Event::NodeDead { .. } => self.witness.witness_dead(now),
            Event::Message { payload, .. } => match WitnessMessage::decode(&payload) {
                Some(m) => self.witness.message(m),
                None => {
                    self.counters.message_dropped("witness");
                    tracing::warn!("malformed message from the witness dropped")
                }
            },
            _ => {}
        }
        self.witness_messages();
        if self.witness.vote() != before {
            self.replan = true;
        }
    }

    /// Moves the ballot's outgoing messages into commands.
    pub(crate) fn witness_messages(&mut self) {
        while let Some(m) = self.witness.poll_message() {
            if self.witness_id.is_some() {
                self.commands.push_back(Command::SendToWitness(m));
            }
        }
    }

    /// Whether this node holds (part of) any group, as far as it knows (a resource not
    /// probed yet does not count).
    pub(crate) fn holds_any(&self) -> bool {
        self.resources
            .values()
            .any(|r| r.state.holds() && r.state != tandem_policy::ResourceState::Unknown)
    }

    /// This node's vote, as the planner sees it (for a simulator's checks; status shows
    /// the same in `witness.vote`).
    pub fn witness_vote(&self) -> tandem_policy::WitnessVote {
        self.witness.vote()
    }

    /// Whether this node has lost contact with its peer (dead, or never heard), the case
    /// in which a takeover needs the witness's vote or a confirmed fence.
    pub fn peer_lost(&self) -> bool {
        matches!(
            self.peer_state,
            tandem_policy::PeerState::Dead | tandem_policy::PeerState::Unknown
        )
    }

    /// Whether the fencing coordinator knows the peer down (fenced, or confirmed by an
    /// operator).
    pub fn peer_known_down(&self) -> bool {
        self.coordinator.state(&self.peer).is_down()
    }

    /// The witness part of `tandem status --json`.
    pub(crate) fn witness_status(&self) -> serde_json::Value {
        match &self.config.witness {
            None => serde_json::Value::Null,
            Some(w) => serde_json::json!({
                "name": w.name,
                "heard": self.witness.witness_heard(),
                "vote": self.witness.vote(),
                "reason": self.witness.reason(),
            }),
        }
    }
}
