//! A node's side: asking the witness for the vote when the peer is lost.
//!
//! | event | becomes |
//! |---|---|
//! | peer lost, witness heard | `asking` (a request goes out, repeated every `retry`) |
//! | peer lost, witness lost less than `deadtime` before | `isolated` (lost both together) |
//! | peer lost, witness gone longer (or never heard) | `none`: fencing as without a witness |
//! | answer: granted / refused | `granted` / `refused` (a refusal is asked again every `retry`) |
//! | witness lost while asking or refused | `isolated` |
//! | witness heard again while isolated | `asking` |
//! | peer heard again | `none`, and a `granted` vote is released |
//!
//! Lost "together" is within `deadtime` of each other: a node cut off from both sees
//! their silences end within one deadtime, in either order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tandem_policy::WitnessVote;

use crate::message::WitnessMessage;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The peer is not lost (or no witness is configured).
    Idle,
    /// The peer is lost and the witness was gone long before: as without a witness.
    WithoutWitness,
    Asking {
        request: u64,
        asked_at: Instant,
    },
    Granted {
        reason: String,
    },
    Refused {
        request: u64,
        asked_at: Instant,
        reason: String,
    },
    Isolated,
}

/// One node's dealings with the witness.
#[derive(Debug)]
pub struct Ballot {
    peer: String,
    configured: bool,
    deadtime: Duration,
    retry: Duration,
    witness_up: bool,
    witness_lost_at: Option<Instant>,
    state: State,
    next_request: u64,
    out: VecDeque<WitnessMessage>,
}

impl Ballot {
    /// A ballot about `peer`; `configured` false makes it inert (the vote stays `none`).
    /// `retry` is how often an unanswered or refused request is asked again.
    pub fn new(peer: &str, configured: bool, deadtime: Duration, retry: Duration) -> Ballot {
        Ballot {
            peer: peer.to_string(),
            configured,
            deadtime,
            retry,
            witness_up: false,
            witness_lost_at: None,
            state: State::Idle,
            next_request: 1,
            out: VecDeque::new(),
        }
    }

    /// What the planner is told.
    pub fn vote(&self) -> WitnessVote {
        match self.state {
            State::Idle | State::WithoutWitness => WitnessVote::None,
            State::Asking { .. } => WitnessVote::Asking,
            State::Granted { .. } => WitnessVote::Granted,
            State::Refused { .. } => WitnessVote::Refused,
            State::Isolated => WitnessVote::Isolated,
        }
    }

    /// Whether a witness is configured.
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// Whether the witness is heard now.
    pub fn witness_heard(&self) -> bool {
        self.witness_up
    }

    /// The witness's last reason, for status.
    pub fn reason(&self) -> Option<&str> {
        match &self.state {
            State::Granted { reason } | State::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Membership declared the peer dead (or never heard it within initdead).
    pub fn peer_lost(&mut self, now: Instant, holds_groups: bool) {
        if !self.configured || self.state != State::Idle {
            return;
        }
        if self.witness_up {
            self.ask(now, holds_groups);
        } else if self
            .witness_lost_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.deadtime)
        {
            tracing::warn!(peer = %self.peer, "lost the peer and the witness together: fencing nobody, running nothing");
            self.state = State::Isolated;
        } else {
            tracing::warn!(peer = %self.peer, "lost the peer while the witness was already gone: fencing as without a witness");
            self.state = State::WithoutWitness;
        }
    }

    /// The peer is heard again: whatever this loss of contact decided is over.
    pub fn peer_back(&mut self) {
        if matches!(self.state, State::Granted { .. }) {
            self.out.push_back(WitnessMessage::Release {
                peer: self.peer.clone(),
            });
        }
        self.state = State::Idle;
    }

    /// Membership hears the witness (again).
    pub fn witness_up(&mut self, now: Instant, holds_groups: bool) {
        self.witness_up = true;
        if self.state == State::Isolated {
            tracing::info!("the witness is heard again: asking for the vote");
            self.ask(now, holds_groups);
        }
    }

    /// Membership declared the witness dead.
    pub fn witness_dead(&mut self, now: Instant) {
        self.witness_up = false;
        self.witness_lost_at = Some(now);
        if matches!(self.state, State::Asking { .. } | State::Refused { .. }) {
            tracing::warn!(peer = %self.peer, "lost the witness while the peer is lost: fencing nobody, running nothing");
            self.state = State::Isolated;
        }
    }

    /// A message from the witness.
    pub fn message(&mut self, message: WitnessMessage) {
        let WitnessMessage::VoteAnswer {
            request,
            granted,
            reason,
        } = message
        else {
            return;
        };
        let asked = match &self.state {
            State::Asking {
                request: r,
                asked_at,
            }
            | State::Refused {
                request: r,
                asked_at,
                ..
            } if *r == request => *asked_at,
            _ => return,
        };
        tracing::info!(granted, %reason, "the witness answered");
        self.state = if granted {
            State::Granted { reason }
        } else {
            State::Refused {
                request,
                asked_at: asked,
                reason,
            }
        };
    }

    /// Time passed: an unanswered request is repeated, a refusal asked again.
    pub fn tick(&mut self, now: Instant, holds_groups: bool) {
        match self.state {
            State::Asking { asked_at, request } if now >= asked_at + self.retry => {
                self.send_request(request, holds_groups);
                self.state = State::Asking {
                    request,
                    asked_at: now,
                };
            }
            State::Refused { asked_at, .. } if now >= asked_at + self.retry => {
                self.ask(now, holds_groups);
            }
            _ => {}
        }
    }

    /// When [`Ballot::tick`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Asking { asked_at, .. } | State::Refused { asked_at, .. } => {
                Some(asked_at + self.retry)
            }
            _ => None,
        }
    }

    /// The next message for the witness.
    pub fn poll_message(&mut self) -> Option<WitnessMessage> {
        self.out.pop_front()
    }

    fn ask(&mut self, now: Instant, holds_groups: bool) {
        let request = self.next_request;
        self.next_request += 1;
        self.send_request(request, holds_groups);
        self.state = State::Asking {
            request,
            asked_at: now,
        };
    }

    fn send_request(&mut self, request: u64, holds_groups: bool) {
        self.out.push_back(WitnessMessage::VoteRequest {
            peer: self.peer.clone(),
            holds_groups,
            request,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests need one real `Instant` as time zero; every later time is derived from it.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    const DEADTIME: Duration = Duration::from_secs(1);
    const RETRY: Duration = Duration::from_millis(500);

    fn ballot() -> (Ballot, Instant) {
        let now = t0();
        let mut b = Ballot::new("ox1", true, DEADTIME, RETRY);
        b.witness_up(now, false);
        (b, now)
    }

    fn request_id(b: &mut Ballot) -> u64 {
        match b.poll_message() {
            Some(WitnessMessage::VoteRequest { request, .. }) => request,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn answer(b: &mut Ballot, request: u64, granted: bool) {
        b.message(WitnessMessage::VoteAnswer {
            request,
            granted,
            reason: "because".into(),
        });
    }

    #[test]
    fn without_a_witness_configured_the_vote_stays_none() {
        let now = t0();
        let mut b = Ballot::new("ox1", false, DEADTIME, RETRY);
        b.peer_lost(now, false);
        assert_eq!(b.vote(), WitnessVote::None);
        assert_eq!(b.poll_message(), None);
    }

    #[test]
    fn a_lost_peer_asks_and_the_answer_decides() {
        let (mut b, now) = ballot();
        b.peer_lost(now, true);
        assert_eq!(b.vote(), WitnessVote::Asking);
        let r = request_id(&mut b);
        answer(&mut b, r + 1, true);
        assert_eq!(
            b.vote(),
            WitnessVote::Asking,
            "an answer to another request"
        );
        answer(&mut b, r, true);
        assert_eq!(b.vote(), WitnessVote::Granted);
        b.peer_back();
        assert_eq!(
            b.poll_message(),
            Some(WitnessMessage::Release { peer: "ox1".into() })
        );
        assert_eq!(b.vote(), WitnessVote::None);
    }

    #[test]
    fn an_unanswered_request_is_repeated_and_a_refusal_asked_again() {
        let (mut b, now) = ballot();
        b.peer_lost(now, false);
        let r = request_id(&mut b);
        b.tick(now + RETRY, false);
        assert_eq!(request_id(&mut b), r, "the same question again");
        answer(&mut b, r, false);
        assert_eq!(b.vote(), WitnessVote::Refused);
        b.tick(now + RETRY * 3, false);
        let r2 = request_id(&mut b);
        assert!(r2 > r);
        assert_eq!(b.vote(), WitnessVote::Asking);
        answer(&mut b, r2, true);
        assert_eq!(b.vote(), WitnessVote::Granted);
    }

    #[test]
    fn losing_peer_and_witness_together_isolates_in_either_order() {
        let (mut b, now) = ballot();
        b.peer_lost(now, true);
        b.witness_dead(now + DEADTIME / 2);
        assert_eq!(b.vote(), WitnessVote::Isolated);

        let (mut b, now) = ballot();
        b.witness_dead(now);
        b.peer_lost(now + DEADTIME / 2, true);
        assert_eq!(b.vote(), WitnessVote::Isolated);
        assert_eq!(b.poll_message(), None, "nobody to ask");
        // The witness returns: ask.
        b.witness_up(now + DEADTIME, true);
        assert_eq!(b.vote(), WitnessVote::Asking);
        assert!(request_id(&mut b) > 0);
    }

    #[test]
    fn a_witness_gone_long_before_the_peer_means_fencing_as_without_one() {
        let (mut b, now) = ballot();
        b.witness_dead(now);
        b.peer_lost(now + DEADTIME * 3, false);
        assert_eq!(b.vote(), WitnessVote::None);
        let now = t0();
        let mut never = Ballot::new("ox1", true, DEADTIME, RETRY);
        never.peer_lost(now, false);
        assert_eq!(never.vote(), WitnessVote::None, "a witness never heard");
    }

    #[test]
    fn a_granted_vote_survives_losing_the_witness() {
        let (mut b, now) = ballot();
        b.peer_lost(now, false);
        let r = request_id(&mut b);
        answer(&mut b, r, true);
        b.witness_dead(now + RETRY);
        assert_eq!(b.vote(), WitnessVote::Granted);
    }
}
