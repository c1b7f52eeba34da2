//! The witness's side: who gets the vote.
//!
//! Rules, for a request from `R` that lost `P`:
//! 1. A standing grant decides: its winner gets the vote again (the answer may have
//!    been lost), anyone else is refused. A grant ends when its winner releases it (it
//!    hears its peer again) or when the loser is heard with a new incarnation (it was
//!    fenced and booted, so that loss of contact is over).
//! 2. Without a grant: if the witness does not hear `P` either, `R` gets the vote at
//!    once — the power-loss case, decided within the same deadtime as the nodes'.
//! 3. If the witness hears both, the nodes are cut from each other only, and the node
//!    that serves must win: a requester holding groups gets the vote at once. Holding
//!    none, it waits up to `tie_wait` for `P`'s request: if `P` asks too, the one
//!    holding groups wins, and on a tie the node listed first in the configuration. If
//!    `P` never asks, it has not lost `R` (a one-way fault): `R` is refused, and
//!    neither fences nor takes over.
//!
//! Every grant is persisted ([`ArbiterCommand::Persist`]) before the answer that
//! carries it, so a witness restarted mid-incident keeps to it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::message::{MAX_NAME_BYTES, WitnessMessage};

/// The vote of one loss of contact, as stored on the witness's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The node that has the vote.
    pub winner: String,
    /// The node it may fence.
    pub loser: String,
    /// The loser's incarnation as the witness last knew it (0: never heard). Heard with
    /// another one, the loser has restarted and the grant is over.
    pub loser_incarnation: u64,
    /// When it was granted (wall clock, ms since the epoch), for status and logs.
    pub granted_unix_ms: u64,
}

impl Grant {
    /// The stored form: one line of JSON.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Reads the stored form; an error names what is wrong (the witness then refuses
    /// to start rather than risk a second grant). Node names are what a message may
    /// carry: not empty, at most [`MAX_NAME_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Grant, String> {
        if bytes.len() > 4096 {
            return Err("longer than any grant".into());
        }
        let grant: Grant = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        for (what, name) in [("winner", &grant.winner), ("loser", &grant.loser)] {
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "the {what}'s name is empty or longer than {MAX_NAME_BYTES} bytes"
                ));
            }
        }
        Ok(grant)
    }
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArbiterCommand {
    /// Store this grant durably (`None`: remove the stored one) before running the
    /// commands after it.
    Persist(Option<Grant>),
    /// Send a message to a node.
    Send {
        /// The node.
        to: String,
        /// The message.
        message: WitnessMessage,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Heard {
    alive: bool,
    incarnation: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    peer: String,
    request: u64,
    holds_groups: bool,
    since: Instant,
}

/// The witness's decision maker.
#[derive(Debug)]
pub struct Arbiter {
    /// The two nodes, in configuration order (the first wins ties).
    nodes: [String; 2],
    tie_wait: Duration,
    heard: BTreeMap<String, Heard>,
    grant: Option<Grant>,
    pending: BTreeMap<String, Pending>,
    out: VecDeque<ArbiterCommand>,
    now_unix_ms: u64,
}

impl Arbiter {
    /// An arbiter for `nodes` (configuration order), resuming `stored` (the grant on
    /// disk, if any). `tie_wait` is how long a tie waits for the other node's request.
    pub fn new(nodes: [String; 2], tie_wait: Duration, stored: Option<Grant>) -> Arbiter {
        let stored = stored.filter(|g| nodes.contains(&g.winner) && nodes.contains(&g.loser));
        Arbiter {
            nodes,
            tie_wait,
            heard: BTreeMap::new(),
            grant: stored,
            pending: BTreeMap::new(),
            out: VecDeque::new(),
            now_unix_ms: 0,
        }
    }

    /// The standing grant.
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_ref()
    }

    /// Whether the witness hears `node` now.
    pub fn hears(&self, node: &str) -> bool {
        self.heard.get(node).is_some_and(|h| h.alive)
    }

    /// The wall clock, for the grants' timestamps (the shell sets it before each input).
    pub fn set_wall_clock(&mut self, unix_ms: u64) {
        self.now_unix_ms = unix_ms;
    }

    /// Membership heard `node` (again) with `incarnation`.
    pub fn node_up(&mut self, node: &str, incarnation: u64, now: Instant) {
        if !self.nodes.iter().any(|n| n == node) {
            return;
        }
        let h = self.heard.entry(node.to_string()).or_default();
        h.alive = true;
        h.incarnation = incarnation;
        if let Some(g) = &self.grant {
            if g.loser == node && g.loser_incarnation != 0 && g.loser_incarnation != incarnation {
                tracing::info!(
                    winner = %g.winner, loser = %g.loser,
                    "the loser is back with a new incarnation: this loss of contact is over"
                );
                self.set_grant(None);
            }
        }
        self.decide(now);
    }

    /// Membership declared `node` dead.
    pub fn node_dead(&mut self, node: &str, now: Instant) {
        if let Some(h) = self.heard.get_mut(node) {
            h.alive = false;
        }
        self.pending.remove(node);
        self.decide(now);
    }

    /// A message from `from` (already authenticated by membership).
    pub fn message(&mut self, from: &str, message: WitnessMessage, now: Instant) {
        if !self.nodes.iter().any(|n| n == from) {
            return;
        }
        match message {
            WitnessMessage::VoteRequest {
                peer,
                holds_groups,
                request,
            } => {
                if peer == from || !self.nodes.contains(&peer) {
                    self.answer(from, request, false, format!("{peer} is not {from}'s peer"));
                    return;
                }
                self.pending.insert(
                    from.to_string(),
                    Pending {
                        peer,
                        request,
                        holds_groups,
                        since: self.pending.get(from).map_or(now, |p| p.since),
                    },
                );
                self.decide(now);
            }
            WitnessMessage::Release { peer } => {
                if self
                    .grant
                    .as_ref()
                    .is_some_and(|g| g.winner == from && g.loser == peer)
                {
                    tracing::info!(winner = %from, loser = %peer, "released: the nodes hear each other again");
                    self.set_grant(None);
                }
                self.pending.remove(from);
            }
            WitnessMessage::VoteAnswer { .. } => {}
        }
    }

    /// Time passed.
    pub fn tick(&mut self, now: Instant) {
        self.decide(now);
    }

    /// When [`Arbiter::tick`] is next due: the end of a tie's wait.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.since + self.tie_wait).min()
    }

    /// The next command for the shell.
    pub fn poll_command(&mut self) -> Option<ArbiterCommand> {
        self.out.pop_front()
    }

    fn set_grant(&mut self, grant: Option<Grant>) {
        self.grant = grant.clone();
        self.out.push_back(ArbiterCommand::Persist(grant));
    }

    fn answer(&mut self, to: &str, request: u64, granted: bool, reason: String) {
        tracing::info!(node = %to, granted, %reason, "vote");
        self.out.push_back(ArbiterCommand::Send {
            to: to.to_string(),
            message: WitnessMessage::VoteAnswer {
                request,
                granted,
                reason,
            },
        });
    }

    fn grant_to(&mut self, winner: &str, loser: &str) {
        let loser_incarnation = self.heard.get(loser).map_or(0, |h| h.incarnation);
        self.set_grant(Some(Grant {
            winner: winner.to_string(),
            loser: loser.to_string(),
            loser_incarnation,
            granted_unix_ms: self.now_unix_ms,
        }));
    }

    /// Answers every pending request that can be answered now.
    fn decide(&mut self, now: Instant) {
        let askers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| self.pending.contains_key(*n))
            .cloned()
            .collect();
        for asker in askers {
            let Some(p) = self.pending.get(&asker).cloned() else {
                continue;
            };
            if self.grant.is_none() {
                if let Some(winner) = self.winner_of(&asker, &p) {
                    let loser = if winner == asker {
                        p.peer.clone()
                    } else {
                        asker.clone()
                    };
                    self.grant_to(&winner, &loser);
                } else if !self.hears(&p.peer) || now < p.since + self.tie_wait {
                    continue; // undecided: wait for the peer's request or the tie's end
                }
            }
            self.pending.remove(&asker);
            let (granted, reason) = match &self.grant {
                Some(g) if g.winner == asker => (true, format!("{asker} may fence {}", g.loser)),
                Some(g) => (
                    false,
                    format!("the vote of this loss of contact went to {}", g.winner),
                ),
                None => (
                    false,
                    format!(
                        "the witness still hears {}, which has not lost contact with {asker}",
                        p.peer
                    ),
                ),
            };
            self.answer(&asker, p.request, granted, reason);
        }
    }

    /// Who gets the vote for `asker`'s request, if it can be decided now.
    fn winner_of(&self, asker: &str, p: &Pending) -> Option<String> {
        if !self.hears(&p.peer) {
            return Some(asker.to_string());
        }
        let other = self.pending.get(&p.peer).filter(|o| o.peer == asker);
        match other {
            Some(o) => Some(match (p.holds_groups, o.holds_groups) {
                (true, false) => asker.to_string(),
                (false, true) => p.peer.clone(),
                // A tie: the node listed first.
                _ => self.nodes[0].clone(),
            }),
            // Only the asker has lost contact so far. Holding groups, it serves: it wins
            // (the other, if it asks later, is refused). Holding none, it waits for the
            // other's request, and is refused after the tie's wait if none came.
            None if p.holds_groups => Some(asker.to_string()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests;
