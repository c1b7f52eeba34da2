//! Invariant: reliable messages are delivered at most once and in send order per
//! (sender, receiver); an acknowledged message was delivered; a message sent while the
//! network is calm is delivered and acknowledged, never abandoned; at the end nothing
//! is left pending.

use std::collections::{HashMap, HashSet};

use tandem_membership::{FailReason, MessageId};

use super::Check;

/// Builds the payload of the `counter`-th message from `s` to `r`: the counter, both
/// indices, and a filler of varying length so packets are not all the same size.
pub fn payload(s: usize, r: usize, counter: u64) -> Vec<u8> {
    let mut p = counter.to_be_bytes().to_vec();
    p.push(s as u8);
    p.push(r as u8);
    p.extend((0..counter % 97).map(|i| i as u8));
    p
}

#[derive(Debug)]
struct Sent {
    r: usize,
    counter: u64,
    must_deliver: bool,
}

/// Message bookkeeping for every ordered pair of nodes.
#[derive(Debug)]
pub struct Messages {
    next_counter: Vec<Vec<u64>>,
    last_delivered: Vec<Vec<u64>>,
    sent: HashMap<(usize, u64, MessageId), Sent>,
    delivered: HashSet<(usize, usize, u64)>,
    /// Messages delivered.
    pub delivered_count: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages abandoned, by reason.
    pub failed: HashMap<&'static str, u64>,
}

impl Messages {
    /// For `n` nodes.
    pub fn new(n: usize) -> Self {
        Messages {
            next_counter: vec![vec![1; n]; n],
            last_delivered: vec![vec![0; n]; n],
            sent: HashMap::new(),
            delivered: HashSet::new(),
            delivered_count: 0,
            acked: 0,
            failed: HashMap::new(),
        }
    }

    /// The next counter and payload for a message from `s` to `r`.
    pub fn next(&mut self, s: usize, r: usize) -> (u64, Vec<u8>) {
        let c = self.next_counter[s][r];
        self.next_counter[s][r] += 1;
        (c, payload(s, r, c))
    }

    /// `s` (incarnation `inc`) queued message `id` with `counter` to `r`.
    pub fn on_sent(
        &mut self,
        s: usize,
        inc: u64,
        id: MessageId,
        r: usize,
        counter: u64,
        must_deliver: bool,
    ) {
        self.sent.insert(
            (s, inc, id),
            Sent {
                r,
                counter,
                must_deliver,
            },
        );
    }

    /// `r` delivered a message from node id `from`.
    pub fn on_delivered(&mut self, r: usize, from: u32, payload: &[u8]) -> Check {
        let parsed = payload.get(..10).map(|h| {
            (
                u64::from_be_bytes(h[..8].try_into().unwrap_or([0; 8])),
                h[8] as usize,
                h[9] as usize,
            )
        });
        let Some((counter, s, to)) = parsed else {
            return Err(format!(
                "node {} delivered a payload the simulator never sent",
                r + 1
            ));
        };
        if s + 1 != from as usize || to != r || payload != self::payload(s, r, counter).as_slice() {
            return Err(format!(
                "node {} delivered a corrupted or misrouted message",
                r + 1
            ));
        }
        if !self.delivered.insert((s, r, counter)) {
            return Err(format!(
                "message {counter} from node {} to node {} delivered twice",
                s + 1,
                r + 1
            ));
        }
        if counter <= self.last_delivered[s][r] {
            return Err(format!(
                "message {counter} from node {} to node {} delivered after {}: out of order",
                s + 1,
                r + 1,
                self.last_delivered[s][r]
            ));
        }
        self.last_delivered[s][r] = counter;
        self.delivered_count += 1;
        Ok(())
    }

    /// `s` (incarnation `inc`) got an ack for `id`.
    pub fn on_acked(&mut self, s: usize, inc: u64, to: u32, id: MessageId) -> Check {
        let Some(m) = self.sent.remove(&(s, inc, id)) else {
            return Err(format!(
                "node {} acked unknown or settled message id {id}",
                s + 1
            ));
        };
        if m.r + 1 != to as usize || !self.delivered.contains(&(s, m.r, m.counter)) {
            return Err(format!(
                "node {}: message {} to node {to} acknowledged but never delivered",
                s + 1,
                m.counter
            ));
        }
        self.acked += 1;
        Ok(())
    }

    /// `s` (incarnation `inc`) abandoned `id`.
    pub fn on_failed(&mut self, s: usize, inc: u64, id: MessageId, reason: FailReason) -> Check {
        let Some(m) = self.sent.remove(&(s, inc, id)) else {
            return Err(format!(
                "node {} failed unknown or settled message id {id}",
                s + 1
            ));
        };
        if m.must_deliver {
            return Err(format!(
                "node {}: message {} to node {} sent in calm conditions was abandoned ({reason:?})",
                s + 1,
                m.counter,
                m.r + 1
            ));
        }
        let key = match reason {
            FailReason::RetransmitLimit => "retransmit_limit",
            FailReason::NodeDead => "node_dead",
            FailReason::NodeRestarted => "node_restarted",
        };
        *self.failed.entry(key).or_default() += 1;
        Ok(())
    }

    /// `s` restarted: what its previous incarnation had queued is gone without a verdict.
    pub fn on_restart(&mut self, s: usize, old_inc: u64) {
        self.sent
            .retain(|&(x, inc, _), _| !(x == s && inc == old_inc));
    }

    /// At the end of a calm phase: every message was acknowledged or abandoned.
    pub fn check_drained(&self) -> Check {
        match self.sent.iter().next() {
            None => Ok(()),
            Some(((s, _, id), m)) => Err(format!(
                "{} message(s) still pending, e.g. id {id} ({}) from node {} to node {}",
                self.sent.len(),
                m.counter,
                s + 1,
                m.r + 1
            )),
        }
    }
}
