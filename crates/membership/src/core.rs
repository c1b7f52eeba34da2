//! The membership state machine.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use tandem_wire::{
    AckBody, Body, Header, HeartbeatBody, MAX_MESSAGE_PAYLOAD_LEN, MessageBody, PacketKind,
    ViewEntry, ViewState, decode_header, encode, open,
};

use crate::config::{ConfigError, LinkId, MembershipConfig, NodeId};
use crate::status::{
    DropCounts, DropReason, LinkStatus, NodeLinkStatus, NodeState, NodeStatus, Status,
};

/// A packet for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The link to send it on.
    pub link: LinkId,
    /// The node it is meant for, or `None` for every node (heartbeats). Unicast drivers
    /// with several peers on one link may use it to pick the address.
    pub to: Option<NodeId>,
    /// The encoded packet.
    pub bytes: Vec<u8>,
}

/// Identifies a reliable message this node sent (unique within this incarnation).
pub type MessageId = u64;

/// Why a reliable message was abandoned. Whether the peer got it is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Not acknowledged after the configured number of transmissions (this message or
    /// an earlier one in the same stream, which blocks the ones behind it).
    RetransmitLimit,
    /// The destination was declared dead.
    NodeDead,
    /// The destination restarted (new incarnation) before acknowledging.
    NodeRestarted,
}

/// What the core tells its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node was heard (first time, or again after being declared dead).
    NodeUp {
        /// The node.
        node: NodeId,
        /// Its incarnation.
        incarnation: u64,
    },
    /// A packet arrived from a node after a silence of at least warntime.
    NodeLate {
        /// The node.
        node: NodeId,
        /// The silence.
        gap: Duration,
    },
    /// Nothing authentic heard from a node on any link for deadtime (or, for a node
    /// never heard, since start for initdead).
    NodeDead {
        /// The node.
        node: NodeId,
        /// Its last known incarnation, `None` if it was never heard.
        incarnation: Option<u64>,
    },
    /// A node is heard on a link again.
    LinkUp {
        /// The node.
        node: NodeId,
        /// The link.
        link: LinkId,
    },
    /// A node was not heard on a link for deadtime, or the driver reported the link down.
    LinkDown {
        /// The node.
        node: NodeId,
        /// The link.
        link: LinkId,
    },
    /// A node declared dead spoke again with the *same* incarnation: it was alive all
    /// along behind a partition and may still run resources. Followed by `NodeUp`.
    NodeReturnedAfterPartition {
        /// The node.
        node: NodeId,
        /// Its (unchanged) incarnation.
        incarnation: u64,
    },
    /// A node was heard with a newer incarnation: it restarted, whether or not it was
    /// declared dead in between, and has lost its state.
    NodeRestarted {
        /// The node.
        node: NodeId,
        /// The new incarnation.
        incarnation: u64,
        /// The incarnation heard before.
        previous: u64,
    },
    /// A node's configuration digest differs from ours.
    ConfigMismatch {
        /// The node.
        node: NodeId,
    },
    /// The driver closed a local link after an error that retrying the same socket
    /// cannot cure (`ENODEV` when its interface was deleted, `EIO` on a serial line);
    /// it reopens the link with backoff. Sent by the driver, never by the core.
    LinkClosed {
        /// The link.
        link: LinkId,
        /// The error, as the system put it.
        error: String,
    },
    /// The driver reopened a link it had closed. Sent by the driver, never by the core.
    LinkReopened {
        /// The link.
        link: LinkId,
    },
    /// A reliable message, delivered once and in order per sender.
    Message {
        /// Sender.
        from: NodeId,
        /// Payload.
        payload: Vec<u8>,
    },
    /// A reliable message this node sent was acknowledged.
    MessageAcked {
        /// Destination.
        to: NodeId,
        /// The id `send_message` returned.
        id: MessageId,
    },
    /// A reliable message this node sent was abandoned.
    MessageFailed {
        /// Destination.
        to: NodeId,
        /// The id `send_message` returned.
        id: MessageId,
        /// Why.
        reason: FailReason,
    },
}

/// What became of a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Authentic and fresh: it counted as a sign of life. (If it carried a message the
    /// reliable layer discarded — another node's, a stale stream's — that is counted in
    /// the link's drops under `other_destination`, `stale` or `out_of_window`.)
    Accepted,
    /// Dropped (and counted) for this reason; it did not count as a sign of life.
    Dropped(DropReason),
}

/// Why `send_message` refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such node, or it is this node.
    #[error("node {0} is not a peer in the configuration")]
    UnknownNode(NodeId),
    /// The destination is declared dead.
    #[error("node {0} is dead")]
    NodeDead(NodeId),
    /// The payload does not fit one packet.
    #[error("payload of {0} bytes exceeds {MAX_MESSAGE_PAYLOAD_LEN}")]
    TooLarge(usize),
    /// The destination's queue is full.
    #[error("queue to node {0} is full")]
    QueueFull(NodeId),
}

/// Anti-replay window over packet sequence numbers (like IPsec's): the highest seen and
/// a bitmap of the 64 below it, so reordering within a link is tolerated.
#[derive(Debug, Clone, Default)]
struct ReplayWindow {
    highest: u64,
    bitmap: u64,
}

impl ReplayWindow {
    /// True (and recorded) if `seq` was not seen and is within the window.
    fn check_and_set(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.bitmap = if shift >= 64 { 0 } else { self.bitmap << shift };
            self.bitmap |= 1;
            self.highest = seq;
            return true;
        }
        let diff = self.highest - seq;
        if diff >= 64 || self.bitmap & (1 << diff) != 0 {
            return false;
        }
        self.bitmap |= 1 << diff;
        true
    }
}

#[derive(Debug, Clone, Default)]
struct PeerLink {
    up: bool,
    last_heard: Option<Instant>,
    packets: u64,
    late_count: u64,
    replay: ReplayWindow,
}

#[derive(Debug, Clone)]
struct OutMsg {
    id: MessageId,
    seq: u64,
    payload: Vec<u8>,
    /// Transmissions so far (0: not sent yet).
    attempts: u32,
    next_retransmit: Option<Instant>,
}

/// Messages from this node to one peer.
#[derive(Debug, Clone)]
struct OutStream {
    epoch: u32,
    /// Incarnation of the peer this stream is addressed to (fixed when first known).
    dest_incarnation: Option<u64>,
    next_seq: u64,
    queue: VecDeque<OutMsg>,
}

/// Messages from one peer to this node.
#[derive(Debug, Clone)]
struct InStream {
    sender_incarnation: u64,
    epoch: u32,
    next_expected: u64,
    buffer: BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Peer {
    id: NodeId,
    name: String,
    state: NodeState,
    incarnation: Option<u64>,
    /// Incarnation held when it was declared dead, to tell a return from a restart.
    dead_incarnation: Option<u64>,
    last_heard: Option<Instant>,
    late_count: u64,
    config_digest: Option<[u8; 32]>,
    /// What its last heartbeat said about this node: (state, links-up mask).
    view_of_us: Option<(ViewState, u32)>,
    links: Vec<PeerLink>,
    out: OutStream,
    inbound: InStream,
}

#[derive(Debug, Clone)]
struct LocalLink {
    id: LinkId,
    name: String,
    down_hint: bool,
    packets_sent: u64,
    packets_received: u64,
    drops: DropCounts,
}

/// The membership core. See the crate documentation for the driving loop.
#[derive(Debug)]
pub struct Membership {
    cfg: MembershipConfig,
    incarnation: u64,
    start: Instant,
    /// Latest time seen: time passed in never goes backwards inside the core.
    now: Instant,
    next_packet_seq: u64,
    next_heartbeat: Instant,
    next_message_id: MessageId,
    links: Vec<LocalLink>,
    peers: Vec<Peer>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Membership {
    /// Starts a core. `incarnation` must be newer than any this node used before (the
    /// agent persists and bumps it). The first heartbeats are due at `now`.
    pub fn new(cfg: MembershipConfig, incarnation: u64, now: Instant) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if incarnation == 0 {
            return Err(ConfigError::ZeroIncarnation);
        }
        let links = cfg
            .links
            .iter()
            .map(|l| LocalLink {
                id: l.id,
                name: l.name.clone(),
                down_hint: false,
                packets_sent: 0,
                packets_received: 0,
                drops: DropCounts::default(),
            })
            .collect::<Vec<_>>();
        let peers = cfg
            .nodes
            .iter()
            .filter(|n| n.id != cfg.local_node)
            .map(|n| Peer {
                id: n.id,
                name: n.name.clone(),
                state: NodeState::Unknown,
                incarnation: None,
                dead_incarnation: None,
                last_heard: None,
                late_count: 0,
                config_digest: None,
                view_of_us: None,
                links: vec![PeerLink::default(); links.len()],
                out: OutStream {
                    epoch: 1,
                    dest_incarnation: None,
                    next_seq: 1,
                    queue: VecDeque::new(),
                },
                inbound: InStream {
                    sender_incarnation: 0,
                    epoch: 0,
                    next_expected: 1,
                    buffer: BTreeMap::new(),
                },
            })
            .collect();
        Ok(Self {
            cfg,
            incarnation,
            start: now,
            now,
            next_packet_seq: 1,
            next_heartbeat: now,
            next_message_id: 1,
            links,
            peers,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The configuration the core runs with.
    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    /// A peer's state (`None` for an id that is not a peer).
    pub fn node_state(&self, node: NodeId) -> Option<NodeState> {
        self.peer_index(node).map(|i| self.peers[i].state)
    }

    fn clock(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    fn peer_index(&self, node: NodeId) -> Option<usize> {
        self.peers.iter().position(|p| p.id == node)
    }

    fn link_index(&self, link: LinkId) -> Option<usize> {
        self.links.iter().position(|l| l.id == link)
    }

    // ----- output -----

    /// The next packet to send, if any. Call until `None` after every input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any. Call until `None` after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next (always `Some`: heartbeats are periodic).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_heartbeat;
        let deadtime = self.cfg.deadtime;
        if self.peers.iter().any(|p| p.state == NodeState::Unknown) {
            t = t.min(self.start + self.cfg.initdead);
        }
        for p in &self.peers {
            if p.state == NodeState::Up {
                if let Some(h) = p.last_heard {
                    t = t.min(h + deadtime);
                }
                for m in &p.out.queue {
                    if let Some(r) = m.next_retransmit {
                        t = t.min(r);
                    }
                }
            }
            for l in &p.links {
                if let (true, Some(h)) = (l.up, l.last_heard) {
                    t = t.min(h + deadtime);
                }
            }
        }
        Some(t)
    }

    // ----- input -----

    /// Timers: sends heartbeats, declares links and nodes down, retransmits messages.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        if now >= self.next_heartbeat {
            for li in 0..self.links.len() {
                if !self.links[li].down_hint {
                    self.send_heartbeat(li);
                }
            }
            self.next_heartbeat += self.cfg.keepalive;
            if self.next_heartbeat <= now {
                // The clock jumped (or the process stalled) past several beats: one
                // heartbeat now, and the schedule restarts from here.
                self.next_heartbeat = now + self.cfg.keepalive;
            }
        }
        let deadtime = self.cfg.deadtime;
        for pi in 0..self.peers.len() {
            // Links first, so that a node's last link goes down before the node does.
            for li in 0..self.links.len() {
                let l = &mut self.peers[pi].links[li];
                if let (true, Some(h)) = (l.up, l.last_heard) {
                    if now >= h + deadtime {
                        l.up = false;
                        self.events.push_back(Event::LinkDown {
                            node: self.peers[pi].id,
                            link: self.links[li].id,
                        });
                    }
                }
            }
            let p = &self.peers[pi];
            let expired = match (p.state, p.last_heard) {
                (NodeState::Up, Some(h)) => now >= h + deadtime,
                (NodeState::Unknown, _) => now >= self.start + self.cfg.initdead,
                _ => false,
            };
            if expired {
                self.declare_dead(pi);
            }
        }
        self.retransmit_due(now);
    }

    /// A datagram arrived on `link`. Never panics, whatever the bytes.
    pub fn handle_packet(&mut self, link: LinkId, bytes: &[u8], now: Instant) -> Verdict {
        let now = self.clock(now);
        let Some(li) = self.link_index(link) else {
            // A driver bug, not a network event: nothing to count it against.
            return Verdict::Dropped(DropReason::Malformed);
        };
        self.links[li].packets_received += 1;
        match self.accept(li, bytes, now) {
            Ok(()) => Verdict::Accepted,
            Err(reason) => {
                self.links[li].drops.add(reason);
                Verdict::Dropped(reason)
            }
        }
    }

    fn accept(&mut self, li: usize, bytes: &[u8], now: Instant) -> Result<(), DropReason> {
        let header = decode_header(bytes)?;
        if header.cluster_id != self.cfg.cluster_id {
            return Err(DropReason::OtherCluster);
        }
        if header.sender == self.cfg.local_node {
            return Err(DropReason::OwnPacket);
        }
        let pi = self
            .peer_index(header.sender)
            .ok_or(DropReason::UnknownNode)?;
        let (header, body) = open(bytes, &self.cfg.key)?;
        if header.link != self.links[li].id {
            return Err(DropReason::WrongLink);
        }
        let inc = header.incarnation;
        let known = self.peers[pi].incarnation;
        if inc == 0 || known.is_some_and(|k| inc < k) {
            return Err(DropReason::OldIncarnation);
        }
        let restarted = known.filter(|&k| inc > k);
        if restarted.is_none() && !self.peers[pi].links[li].replay.check_and_set(header.seq) {
            return Err(DropReason::Replay);
        }
        // Authentic and fresh from here on: state may change.
        if let Some(previous) = restarted {
            self.on_restart(pi, inc, previous);
            self.peers[pi].links[li].replay.check_and_set(header.seq);
        }
        self.note_alive(pi, li, inc, now);
        // From here the packet has proved the sender alive, whatever becomes of its
        // content: a message the reliable layer discards is counted under its reason
        // but the verdict stays `Accepted`.
        let content = match body {
            Body::Heartbeat(hb) => {
                let p = &mut self.peers[pi];
                if hb.config_digest != self.cfg.config_digest
                    && p.config_digest != Some(hb.config_digest)
                {
                    self.events.push_back(Event::ConfigMismatch { node: p.id });
                }
                p.config_digest = Some(hb.config_digest);
                let local = self.cfg.local_node;
                p.view_of_us = hb
                    .view
                    .iter()
                    .find(|e| e.node == local)
                    .map(|e| (e.state, e.links_up_mask));
                Ok(())
            }
            Body::Message(m) => self.on_message(pi, &header, m),
            Body::Ack(a) => self.on_ack(pi, &header, a),
        };
        if let Err(reason) = content {
            self.links[li].drops.add(reason);
        }
        Ok(())
    }

    /// Resets what belonged to the peer's previous life.
    fn on_restart(&mut self, pi: usize, inc: u64, previous: u64) {
        let node = self.peers[pi].id;
        self.events.push_back(Event::NodeRestarted {
            node,
            incarnation: inc,
            previous,
        });
        for l in &mut self.peers[pi].links {
            l.replay = ReplayWindow::default();
        }
        self.fail_stream(pi, FailReason::NodeRestarted);
        let p = &mut self.peers[pi];
        p.out.dest_incarnation = Some(inc);
        p.incarnation = Some(inc);
    }

    fn note_alive(&mut self, pi: usize, li: usize, inc: u64, now: Instant) {
        let warntime = self.cfg.warntime;
        let link_id = self.links[li].id;
        let p = &mut self.peers[pi];
        if let (NodeState::Up, Some(h)) = (p.state, p.last_heard) {
            let gap = now.saturating_duration_since(h);
            if gap >= warntime {
                p.late_count += 1;
                self.events.push_back(Event::NodeLate { node: p.id, gap });
            }
        }
        p.last_heard = Some(now);
        let was = p.state;
        p.incarnation = Some(inc);
        if p.out.dest_incarnation.is_none() {
            p.out.dest_incarnation = Some(inc);
        }
        if was != NodeState::Up {
            p.state = NodeState::Up;
            if was == NodeState::Dead && p.dead_incarnation == Some(inc) {
                self.events.push_back(Event::NodeReturnedAfterPartition {
                    node: p.id,
                    incarnation: inc,
                });
            }
            self.events.push_back(Event::NodeUp {
                node: p.id,
                incarnation: inc,
            });
        }
        let l = &mut p.links[li];
        if let (true, Some(h)) = (l.up, l.last_heard) {
            if now.saturating_duration_since(h) >= warntime {
                l.late_count += 1;
            }
        }
        l.last_heard = Some(now);
        l.packets += 1;
        if !l.up && !self.links[li].down_hint {
            l.up = true;
            self.events.push_back(Event::LinkUp {
                node: p.id,
                link: link_id,
            });
        }
        if was != NodeState::Up {
            self.pump(pi, now);
        }
    }

    fn declare_dead(&mut self, pi: usize) {
        let links: Vec<LinkId> = self.links.iter().map(|l| l.id).collect();
        let p = &mut self.peers[pi];
        for (li, l) in p.links.iter_mut().enumerate() {
            if l.up {
                l.up = false;
                self.events.push_back(Event::LinkDown {
                    node: p.id,
                    link: links[li],
                });
            }
        }
        p.state = NodeState::Dead;
        p.dead_incarnation = p.incarnation;
        self.events.push_back(Event::NodeDead {
            node: p.id,
            incarnation: p.incarnation,
        });
        self.fail_stream(pi, FailReason::NodeDead);
    }

    /// Abandons every queued message to a peer and starts a new stream epoch, so the
    /// receiver does not wait for messages that will never come.
    fn fail_stream(&mut self, pi: usize, reason: FailReason) {
        let p = &mut self.peers[pi];
        for m in p.out.queue.drain(..) {
            self.events.push_back(Event::MessageFailed {
                to: p.id,
                id: m.id,
                reason,
            });
        }
        p.out.epoch = p.out.epoch.wrapping_add(1);
        p.out.next_seq = 1;
    }

    /// The driver saw a link go down (interface down, tty gone): stop sending on it and
    /// mark it down for every peer now rather than after deadtime.
    pub fn link_down(&mut self, link: LinkId, now: Instant) {
        self.clock(now);
        let Some(li) = self.link_index(link) else {
            return;
        };
        self.links[li].down_hint = true;
        for p in &mut self.peers {
            if p.links[li].up {
                p.links[li].up = false;
                self.events.push_back(Event::LinkDown { node: p.id, link });
            }
        }
    }

    /// The driver saw a link come back: send on it again, starting with a heartbeat now.
    pub fn link_up(&mut self, link: LinkId, now: Instant) {
        self.clock(now);
        let Some(li) = self.link_index(link) else {
            return;
        };
        if self.links[li].down_hint {
            self.links[li].down_hint = false;
            self.send_heartbeat(li);
        }
    }

    // ----- reliable messages -----

    /// Queues a reliable message to `to`. It is sent on every link, retransmitted with
    /// exponential backoff until acknowledged (`MessageAcked`) or abandoned
    /// (`MessageFailed`), and delivered to the peer once, in order.
    pub fn send_message(
        &mut self,
        to: NodeId,
        payload: Vec<u8>,
        now: Instant,
    ) -> Result<MessageId, SendError> {
        let now = self.clock(now);
        let pi = self.peer_index(to).ok_or(SendError::UnknownNode(to))?;
        if payload.len() > MAX_MESSAGE_PAYLOAD_LEN {
            return Err(SendError::TooLarge(payload.len()));
        }
        let p = &mut self.peers[pi];
        if p.state == NodeState::Dead {
            return Err(SendError::NodeDead(to));
        }
        if p.out.queue.len() >= self.cfg.retransmit.queue_limit {
            return Err(SendError::QueueFull(to));
        }
        let id = self.next_message_id;
        self.next_message_id += 1;
        let seq = p.out.next_seq;
        p.out.next_seq += 1;
        p.out.queue.push_back(OutMsg {
            id,
            seq,
            payload,
            attempts: 0,
            next_retransmit: None,
        });
        self.pump(pi, now);
        Ok(id)
    }

    /// Sends never-sent messages that fit the window, if the peer is up.
    fn pump(&mut self, pi: usize, now: Instant) {
        if self.peers[pi].state != NodeState::Up {
            return;
        }
        let window = self.cfg.retransmit.window;
        for qi in 0..self.peers[pi].out.queue.len().min(window) {
            if self.peers[pi].out.queue[qi].attempts == 0 {
                self.transmit_message(pi, qi, now);
            }
        }
    }

    fn retransmit_due(&mut self, now: Instant) {
        let window = self.cfg.retransmit.window;
        for pi in 0..self.peers.len() {
            if self.peers[pi].state != NodeState::Up {
                continue;
            }
            let mut qi = 0;
            while qi < self.peers[pi].out.queue.len().min(window) {
                let m = &self.peers[pi].out.queue[qi];
                if m.next_retransmit.is_some_and(|t| now >= t) {
                    if m.attempts >= self.cfg.retransmit.attempts {
                        self.fail_stream(pi, FailReason::RetransmitLimit);
                        break;
                    }
                    self.transmit_message(pi, qi, now);
                }
                qi += 1;
            }
        }
    }

    fn transmit_message(&mut self, pi: usize, qi: usize, now: Instant) {
        let r = &self.cfg.retransmit;
        let p = &mut self.peers[pi];
        let Some(dest_incarnation) = p.out.dest_incarnation else {
            return;
        };
        let m = &mut p.out.queue[qi];
        let backoff = r
            .initial
            .checked_mul(1u32 << m.attempts.min(20))
            .unwrap_or(r.max)
            .min(r.max);
        m.attempts += 1;
        m.next_retransmit = Some(now + backoff);
        let body = Body::Message(MessageBody {
            dest_incarnation,
            epoch: p.out.epoch,
            msg_seq: m.seq,
            payload: m.payload.clone(),
        });
        let to = p.id;
        self.send_on_all_links(PacketKind::Message, to, &body);
    }

    fn on_message(&mut self, pi: usize, header: &Header, m: MessageBody) -> Result<(), DropReason> {
        if header.dest != self.cfg.local_node {
            return Err(DropReason::OtherDestination);
        }
        if m.dest_incarnation != self.incarnation {
            return Err(DropReason::Stale);
        }
        let window = self.cfg.retransmit.window as u64;
        let from = self.peers[pi].id;
        let s = &mut self.peers[pi].inbound;
        if s.sender_incarnation != header.incarnation || m.epoch > s.epoch {
            *s = InStream {
                sender_incarnation: header.incarnation,
                epoch: m.epoch,
                next_expected: 1,
                buffer: BTreeMap::new(),
            };
        } else if m.epoch < s.epoch {
            return Err(DropReason::Stale);
        }
        if m.msg_seq >= s.next_expected.saturating_add(window) || m.msg_seq == 0 {
            return Err(DropReason::OutOfWindow);
        }
        if m.msg_seq >= s.next_expected {
            s.buffer.entry(m.msg_seq).or_insert(m.payload);
        }
        // Deliver what is now contiguous. Duplicates fall through to a fresh ack, which
        // stops the sender retransmitting when an earlier ack was lost.
        while let Some(payload) = s.buffer.remove(&s.next_expected) {
            s.next_expected += 1;
            self.events.push_back(Event::Message { from, payload });
        }
        let ack = Body::Ack(AckBody {
            dest_incarnation: header.incarnation,
            epoch: s.epoch,
            cumulative: s.next_expected - 1,
        });
        self.send_on_all_links(PacketKind::Ack, from, &ack);
        Ok(())
    }

    fn on_ack(&mut self, pi: usize, header: &Header, a: AckBody) -> Result<(), DropReason> {
        if header.dest != self.cfg.local_node {
            return Err(DropReason::OtherDestination);
        }
        if a.dest_incarnation != self.incarnation || a.epoch != self.peers[pi].out.epoch {
            return Err(DropReason::Stale);
        }
        let p = &mut self.peers[pi];
        while let Some(front) = p.out.queue.front() {
            // Only messages actually sent can be acknowledged; a forged-looking ack past
            // what was sent cannot happen with a valid MAC, but costs nothing to guard.
            if front.seq > a.cumulative || front.attempts == 0 {
                break;
            }
            let id = front.id;
            p.out.queue.pop_front();
            self.events.push_back(Event::MessageAcked { to: p.id, id });
        }
        let now = self.now;
        self.pump(pi, now);
        Ok(())
    }

    // ----- encoding -----

    fn header(&mut self, kind: PacketKind, dest: NodeId, link: LinkId) -> Header {
        let seq = self.next_packet_seq;
        self.next_packet_seq += 1;
        Header {
            kind,
            flags: 0,
            cluster_id: self.cfg.cluster_id,
            sender: self.cfg.local_node,
            dest,
            incarnation: self.incarnation,
            seq,
            link,
            body_len: 0,
        }
    }

    fn push(&mut self, li: usize, to: Option<NodeId>, header: &Header, body: &Body) {
        // Bodies are built within limits checked at construction (view size, payload
        // size), so encoding cannot fail; if it ever did, sending nothing is the safe side.
        if let Ok(bytes) = encode(header, body, &self.cfg.key) {
            self.links[li].packets_sent += 1;
            self.transmits.push_back(Transmit {
                link: self.links[li].id,
                to,
                bytes,
            });
        }
    }

    fn send_on_all_links(&mut self, kind: PacketKind, to: NodeId, body: &Body) {
        for li in 0..self.links.len() {
            if self.links[li].down_hint {
                continue;
            }
            let h = self.header(kind, to, self.links[li].id);
            self.push(li, Some(to), &h, body);
        }
    }

    fn send_heartbeat(&mut self, li: usize) {
        let mut view = Vec::with_capacity(self.peers.len() + 1);
        let local_mask = self
            .links
            .iter()
            .filter(|l| !l.down_hint && l.id < 32)
            .fold(0u32, |m, l| m | 1 << l.id);
        view.push(ViewEntry {
            node: self.cfg.local_node,
            state: ViewState::Up,
            incarnation: self.incarnation,
            links_up_mask: local_mask,
        });
        for p in &self.peers {
            let mask = p
                .links
                .iter()
                .zip(&self.links)
                .filter(|(pl, l)| pl.up && l.id < 32)
                .fold(0u32, |m, (_, l)| m | 1 << l.id);
            view.push(ViewEntry {
                node: p.id,
                state: match p.state {
                    NodeState::Unknown => ViewState::Unknown,
                    NodeState::Up => ViewState::Up,
                    NodeState::Dead => ViewState::Dead,
                },
                incarnation: p.incarnation.unwrap_or(0),
                links_up_mask: mask,
            });
        }
        let body = Body::Heartbeat(HeartbeatBody {
            config_digest: self.cfg.config_digest,
            keepalive_ms: u32::try_from(self.cfg.keepalive.as_millis()).unwrap_or(u32::MAX),
            view,
        });
        let h = self.header(PacketKind::Heartbeat, 0, self.links[li].id);
        self.push(li, None, &h, &body);
    }

    // ----- inspection -----

    /// A snapshot for `tandem status`; `now` gives the "ms ago" figures.
    pub fn status(&self, now: Instant) -> Status {
        let now = now.max(self.now);
        let ago =
            |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        let mut nodes = Vec::with_capacity(self.peers.len() + 1);
        for n in &self.cfg.nodes {
            if n.id == self.cfg.local_node {
                nodes.push(NodeStatus {
                    id: n.id,
                    name: n.name.clone(),
                    local: true,
                    state: NodeState::Up,
                    incarnation: Some(self.incarnation),
                    last_heard_ms_ago: Some(0),
                    late_count: 0,
                    config_matches: Some(true),
                    hears_us: None,
                    links: self
                        .links
                        .iter()
                        .map(|l| NodeLinkStatus {
                            id: l.id,
                            name: l.name.clone(),
                            up: !l.down_hint,
                            hears_us: None,
                            packets: l.packets_sent,
                            late_count: 0,
                            last_heard_ms_ago: None,
                        })
                        .collect(),
                });
                continue;
            }
            let Some(p) = self.peers.iter().find(|p| p.id == n.id) else {
                continue;
            };
            nodes.push(NodeStatus {
                id: p.id,
                name: p.name.clone(),
                local: false,
                state: p.state,
                incarnation: p.incarnation,
                last_heard_ms_ago: ago(p.last_heard),
                late_count: p.late_count,
                config_matches: p.config_digest.map(|d| d == self.cfg.config_digest),
                hears_us: p.view_of_us.map(|(state, _)| state == ViewState::Up),
                links: p
                    .links
                    .iter()
                    .zip(&self.links)
                    .map(|(pl, l)| NodeLinkStatus {
                        id: l.id,
                        name: l.name.clone(),
                        up: pl.up,
                        hears_us: p
                            .view_of_us
                            .map(|(_, mask)| l.id < 32 && mask & (1 << l.id) != 0),
                        packets: pl.packets,
                        late_count: pl.late_count,
                        last_heard_ms_ago: ago(pl.last_heard),
                    })
                    .collect(),
            });
        }
        Status {
            cluster_id: self.cfg.cluster_id,
            local_node: self.cfg.local_node,
            incarnation: self.incarnation,
            nodes,
            links: self
                .links
                .iter()
                .map(|l| LinkStatus {
                    id: l.id,
                    name: l.name.clone(),
                    down_hint: l.down_hint,
                    closed: None,
                    packets_sent: l.packets_sent,
                    packets_received: l.packets_received,
                    drops: l.drops.clone(),
                })
                .collect(),
        }
    }

    /// Checks the core's internal invariants; the simulator calls it after every step.
    /// An `Err` is a bug in this crate, never a consequence of input.
    pub fn validate(&self) -> Result<(), String> {
        let window = self.cfg.retransmit.window;
        if self.next_heartbeat > self.now + self.cfg.keepalive {
            return Err("next heartbeat more than one keepalive ahead".into());
        }
        for p in &self.peers {
            let who = &p.name;
            match p.state {
                NodeState::Up => {
                    // Whether it is overdue depends on the driver calling handle_timeout
                    // in time, so that is checked by the simulator, not here.
                    if p.last_heard.is_none() || p.incarnation.is_none() {
                        return Err(format!("{who}: up but never heard"));
                    }
                }
                NodeState::Unknown => {
                    if p.last_heard.is_some() || p.incarnation.is_some() {
                        return Err(format!("{who}: unknown but heard"));
                    }
                }
                NodeState::Dead => {
                    if p.links.iter().any(|l| l.up) {
                        return Err(format!("{who}: dead with a link up"));
                    }
                }
            }
            for l in &p.links {
                if l.up && (l.last_heard.is_none() || p.state != NodeState::Up) {
                    return Err(format!("{who}: link up while node not up"));
                }
                if let (Some(lh), Some(h)) = (l.last_heard, p.last_heard) {
                    if lh > h {
                        return Err(format!("{who}: link heard after node"));
                    }
                }
            }
            if p.out.queue.len() > self.cfg.retransmit.queue_limit {
                return Err(format!("{who}: queue over its limit"));
            }
            let mut prev = 0;
            for (i, m) in p.out.queue.iter().enumerate() {
                if m.seq <= prev || m.seq >= p.out.next_seq {
                    return Err(format!("{who}: queued sequence numbers out of order"));
                }
                prev = m.seq;
                if i >= window && m.attempts > 0 {
                    return Err(format!("{who}: message sent beyond the window"));
                }
                if m.attempts > self.cfg.retransmit.attempts {
                    return Err(format!("{who}: message sent more often than allowed"));
                }
                if (m.attempts == 0) != m.next_retransmit.is_none() {
                    return Err(format!("{who}: retransmit timer inconsistent"));
                }
            }
            if p.state == NodeState::Dead && !p.out.queue.is_empty() {
                return Err(format!("{who}: messages queued to a dead node"));
            }
            let s = &p.inbound;
            if s.next_expected == 0
                || s.buffer.keys().any(|&k| {
                    k <= s.next_expected || k >= s.next_expected + self.cfg.retransmit.window as u64
                })
            {
                return Err(format!("{who}: receive buffer outside its window"));
            }
        }
        Ok(())
    }
}
