//! Invariant: a peer is declared dead no earlier than `deadtime` after the last
//! authentic packet the observer accepted from it, and — unless the observer's clock
//! jumped forward meanwhile — no later than `deadtime + keepalive` after it. A peer
//! never heard is declared dead no earlier than `initdead` after the observer started.
//! Conversely the detector is live: a peer the core calls `up` was heard within
//! `deadtime` (so "dead" is never withheld while nothing arrives).
//!
//! All times are the observer's own (clamped, monotonic) clock, the only one it has.

use std::time::{Duration, Instant};

use tandem_membership::NodeState;

use super::Check;

/// State of the dead-timing invariant for every (observer, peer) pair.
#[derive(Debug)]
pub struct DeadTiming {
    keepalive: Duration,
    deadtime: Duration,
    initdead: Duration,
    timer_late_max: Duration,
    started: Vec<Instant>,
    last: Vec<Vec<Option<Instant>>>,
    jumped: Vec<Vec<bool>>,
    /// Observed time from last accepted packet to the dead verdict, beyond deadtime
    /// (no-jump cases).
    pub latencies: Vec<Duration>,
}

impl DeadTiming {
    /// For `n` nodes started at `started[r]` (observer-local).
    pub fn new(
        keepalive: Duration,
        deadtime: Duration,
        initdead: Duration,
        timer_late_max: Duration,
        started: Vec<Instant>,
    ) -> Self {
        let n = started.len();
        DeadTiming {
            keepalive,
            deadtime,
            initdead,
            timer_late_max,
            started,
            last: vec![vec![None; n]; n],
            jumped: vec![vec![false; n]; n],
            latencies: Vec::new(),
        }
    }

    /// Observer `r` (re)started at its local `at`: it remembers nothing.
    pub fn on_start(&mut self, r: usize, at: Instant) {
        self.started[r] = at;
        for s in 0..self.last.len() {
            self.last[r][s] = None;
            self.jumped[r][s] = false;
        }
    }

    /// `r` accepted an authentic packet from `s` at `r`'s time `at`.
    pub fn on_accept(&mut self, r: usize, s: usize, at: Instant) {
        self.last[r][s] = Some(at);
        self.jumped[r][s] = false;
    }

    /// `r`'s clock jumped forward.
    pub fn on_jump_forward(&mut self, r: usize) {
        for j in &mut self.jumped[r] {
            *j = true;
        }
    }

    /// `r` declared `s` dead at `r`'s time `at`.
    pub fn on_dead(&mut self, r: usize, s: usize, at: Instant) -> Check {
        let (from, min, what) = match self.last[r][s] {
            Some(h) => (h, self.deadtime, "last accepted packet"),
            None => (self.started[r], self.initdead, "start (never heard)"),
        };
        let waited = at.saturating_duration_since(from);
        if waited < min {
            return Err(format!(
                "node {} declared node {} dead {waited:?} after its {what}; minimum {min:?}",
                r + 1,
                s + 1
            ));
        }
        if !self.jumped[r][s] {
            if waited > min + self.keepalive {
                return Err(format!(
                    "node {} declared node {} dead {waited:?} after its {what}; maximum {:?}",
                    r + 1,
                    s + 1,
                    min + self.keepalive
                ));
            }
            if self.last[r][s].is_some() {
                self.latencies.push(waited - min);
            }
        }
        Ok(())
    }

    /// After a step: if `r` holds `s` up, it heard `s` within deadtime (plus the
    /// simulated lateness of `r`'s timers).
    pub fn check_live(&self, r: usize, s: usize, state: NodeState, now: Instant) -> Check {
        if state != NodeState::Up {
            return Ok(());
        }
        match self.last[r][s] {
            Some(h) if now.saturating_duration_since(h) < self.deadtime + self.timer_late_max => {
                Ok(())
            }
            Some(h) => Err(format!(
                "node {} still holds node {} up {:?} after the last accepted packet",
                r + 1,
                s + 1,
                now.saturating_duration_since(h)
            )),
            None => Err(format!(
                "node {} holds node {} up without having accepted a packet from it",
                r + 1,
                s + 1
            )),
        }
    }
}
