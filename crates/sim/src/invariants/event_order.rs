//! Invariant: the events one observer reports about one peer follow the peer's real
//! life. `NodeUp` only from unknown/dead; `NodeDead` only from up (or unknown, at
//! initdead); `NodeReturnedAfterPartition` only for a dead peer heard again with the
//! *same* incarnation, and always directly before its `NodeUp`; `NodeRestarted` only
//! with an incarnation newer than the one held and that the peer really had; a dead
//! peer coming back with a new incarnation is reported as restarted, never as returned;
//! `LinkUp`/`LinkDown` alternate per link, and a link is only up while the peer is.

use std::time::Duration;

use tandem_membership::Event;

use super::Check;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Unknown,
    Up(u64),
    Dead(Option<u64>),
}

/// What the observer is expected to say next about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Anything,
    /// `NodeUp` with this incarnation, after a returned or restarted event.
    NodeUp(u64),
}

/// Model of every (observer, peer) pair.
#[derive(Debug)]
pub struct EventOrder {
    warntime: Duration,
    model: Vec<Vec<Model>>,
    expect: Vec<Vec<Expect>>,
    links_up: Vec<Vec<Vec<bool>>>,
    /// Counts of notable events, for the run summary.
    pub returned: u64,
    /// Restart events seen.
    pub restarted: u64,
}

impl EventOrder {
    /// For `n` nodes and `links` links.
    pub fn new(n: usize, links: usize, warntime: Duration) -> Self {
        EventOrder {
            warntime,
            model: vec![vec![Model::Unknown; n]; n],
            expect: vec![vec![Expect::Anything; n]; n],
            links_up: vec![vec![vec![false; links]; n]; n],
            returned: 0,
            restarted: 0,
        }
    }

    /// Observer `r` restarted: it knows nothing again.
    pub fn on_start(&mut self, r: usize) {
        for s in 0..self.model.len() {
            self.model[r][s] = Model::Unknown;
            self.expect[r][s] = Expect::Anything;
            for l in &mut self.links_up[r][s] {
                *l = false;
            }
        }
    }

    /// An event from observer `r`; `incarnations[s]` is `s`'s real current incarnation.
    pub fn on_event(&mut self, r: usize, e: &Event, incarnations: &[u64]) -> Check {
        let who = |s: u32| format!("node {} about node {s}", r + 1);
        let idx = |s: u32| s as usize - 1;
        match *e {
            Event::NodeUp { node, incarnation } => {
                let s = idx(node);
                let m = self.model[r][s];
                let exp = self.expect[r][s];
                self.expect[r][s] = Expect::Anything;
                if incarnation > incarnations[s] {
                    return Err(format!(
                        "{}: NodeUp with incarnation {incarnation} it never had",
                        who(node)
                    ));
                }
                match (m, exp) {
                    (Model::Unknown, _) => {}
                    (Model::Dead(_), Expect::NodeUp(i)) if i == incarnation => {}
                    (Model::Dead(None), Expect::Anything) => {}
                    _ => {
                        return Err(format!(
                            "{}: NodeUp({incarnation}) from {m:?} without the returned/restarted event first",
                            who(node)
                        ));
                    }
                }
                self.model[r][s] = Model::Up(incarnation);
            }
            Event::NodeDead { node, incarnation } => {
                let s = idx(node);
                match (self.model[r][s], incarnation) {
                    (Model::Up(i), Some(j)) if i == j => {}
                    (Model::Unknown, None) => {}
                    (m, _) => {
                        return Err(format!(
                            "{}: NodeDead({incarnation:?}) from {m:?}",
                            who(node)
                        ));
                    }
                }
                if self.links_up[r][s].iter().any(|&u| u) {
                    return Err(format!("{}: NodeDead while a link is up", who(node)));
                }
                self.model[r][s] = Model::Dead(incarnation);
            }
            Event::NodeReturnedAfterPartition { node, incarnation } => {
                let s = idx(node);
                if self.model[r][s] != Model::Dead(Some(incarnation)) {
                    return Err(format!(
                        "{}: returned-after-partition({incarnation}) from {:?}",
                        who(node),
                        self.model[r][s]
                    ));
                }
                self.returned += 1;
                self.expect[r][s] = Expect::NodeUp(incarnation);
            }
            Event::NodeRestarted {
                node,
                incarnation,
                previous,
            } => {
                let s = idx(node);
                if incarnation <= previous || incarnation > incarnations[s] {
                    return Err(format!(
                        "{}: restarted {previous} -> {incarnation}",
                        who(node)
                    ));
                }
                self.restarted += 1;
                match self.model[r][s] {
                    Model::Up(i) if i == previous => self.model[r][s] = Model::Up(incarnation),
                    Model::Dead(Some(i)) if i == previous => {
                        self.expect[r][s] = Expect::NodeUp(incarnation);
                    }
                    m => {
                        return Err(format!(
                            "{}: restarted from {m:?} (previous {previous})",
                            who(node)
                        ));
                    }
                }
            }
            Event::LinkUp { node, link } => {
                let s = idx(node);
                if !matches!(self.model[r][s], Model::Up(_)) {
                    return Err(format!("{}: LinkUp({link}) while node not up", who(node)));
                }
                let l = &mut self.links_up[r][s][link as usize];
                if *l {
                    return Err(format!("{}: LinkUp({link}) twice", who(node)));
                }
                *l = true;
            }
            Event::LinkDown { node, link } => {
                let s = idx(node);
                let l = &mut self.links_up[r][s][link as usize];
                if !*l {
                    return Err(format!("{}: LinkDown({link}) while down", who(node)));
                }
                *l = false;
            }
            Event::NodeLate { node, gap } => {
                let s = idx(node);
                if !matches!(self.model[r][s], Model::Up(_)) || gap < self.warntime {
                    return Err(format!(
                        "{}: NodeLate({gap:?}) from {:?}",
                        who(node),
                        self.model[r][s]
                    ));
                }
            }
            Event::ConfigMismatch { node } => {
                return Err(format!(
                    "{}: config mismatch in a cluster with one config",
                    who(node)
                ));
            }
            Event::Message { .. }
            | Event::MessageAcked { .. }
            | Event::MessageFailed { .. }
            | Event::LinkClosed { .. }
            | Event::LinkReopened { .. } => {}
        }
        Ok(())
    }

    /// After a step: no observer is left owing the `NodeUp` it announced.
    pub fn check_settled(&self) -> Check {
        for (r, row) in self.expect.iter().enumerate() {
            for (s, e) in row.iter().enumerate() {
                if *e != Expect::Anything {
                    return Err(format!(
                        "node {} announced {e:?} about node {} but did not emit it",
                        r + 1,
                        s + 1
                    ));
                }
            }
        }
        Ok(())
    }
}
