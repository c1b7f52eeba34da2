//! The simulated cluster: membership cores, lossy links, per-node clocks, and the
//! invariant checkers fed after every step.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use tandem_membership::{
    Event, LinkConfig, Membership, MembershipConfig, NodeConfig, NodeState, PacketKey,
    RetransmitConfig, Verdict,
};

use crate::invariants::dead_timing::DeadTiming;
use crate::invariants::event_order::EventOrder;
use crate::invariants::forgery::{Forgery, expect_dropped};
use crate::invariants::messages::Messages;
use crate::invariants::{Check, convergence};
use tandem_rng::Rng;

/// Size and timing of a simulated cluster.
#[derive(Debug, Clone)]
pub struct Params {
    /// Nodes (2 or 3).
    pub nodes: usize,
    /// Links between every pair of nodes.
    pub links: usize,
    /// Link 0 is a shared medium (a broadcast segment): every node receives every
    /// packet sent on it, including messages and acks addressed to another node.
    pub shared_medium: bool,
    /// Heartbeat interval.
    pub keepalive: Duration,
    /// Dead after this much silence.
    pub deadtime: Duration,
    /// Late warning threshold.
    pub warntime: Duration,
    /// Startup grace.
    pub initdead: Duration,
    /// A timer fires up to this late (a busy driver thread); drawn anew for every
    /// firing. Must stay below keepalive for the dead-timing bound to hold.
    pub timer_late_max: Duration,
}

impl Params {
    /// Two nodes, two links, keepalive 100 ms, deadtime 500 ms (the benchmark's figures).
    pub fn two_nodes() -> Self {
        Params {
            nodes: 2,
            links: 2,
            shared_medium: false,
            keepalive: Duration::from_millis(100),
            deadtime: Duration::from_millis(500),
            warntime: Duration::from_millis(250),
            initdead: Duration::from_millis(1000),
            timer_late_max: Duration::ZERO,
        }
    }

    /// Random size and timing drawn from `rng`.
    pub fn random(rng: &mut Rng) -> Self {
        let keepalive = Duration::from_millis([50, 100, 200][rng.below(3) as usize]);
        let deadtime = keepalive * rng.range(3, 8) as u32;
        Params {
            nodes: rng.range(2, 3) as usize,
            links: rng.range(1, 3) as usize,
            shared_medium: rng.below(2) == 0,
            keepalive,
            deadtime,
            warntime: deadtime / 2,
            initdead: deadtime * 2,
            timer_late_max: if rng.below(2) == 0 {
                Duration::ZERO
            } else {
                Duration::from_micros(rng.below(keepalive.as_micros() as u64 / 2))
            },
        }
    }

    /// The core configuration of node index `local`.
    pub fn config(&self, local: usize) -> MembershipConfig {
        MembershipConfig {
            cluster_id: 0x7A11_DE11,
            local_node: local as u32 + 1,
            nodes: (0..self.nodes)
                .map(|i| NodeConfig {
                    id: i as u32 + 1,
                    name: format!("n{}", i + 1),
                })
                .collect(),
            links: (0..self.links)
                .map(|l| LinkConfig {
                    id: l as u16,
                    name: format!("link{l}"),
                })
                .collect(),
            keepalive: self.keepalive,
            deadtime: self.deadtime,
            warntime: self.warntime,
            initdead: self.initdead,
            key: PacketKey::from_bytes([0x42; 32]),
            config_digest: [0x11; 32],
            retransmit: RetransmitConfig::for_keepalive(self.keepalive),
        }
    }
}

/// How one link treats packets (both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFaults {
    /// Probability of loss, per million.
    pub loss_ppm: u32,
    /// Probability of a duplicate copy, per million.
    pub dup_ppm: u32,
    /// Smallest one-way delay.
    pub delay_min: Duration,
    /// Largest one-way delay; a spread reorders packets.
    pub delay_max: Duration,
}

impl LinkFaults {
    /// A clean link: no loss, no duplicates, 1 ms delay.
    pub fn clean() -> Self {
        LinkFaults {
            loss_ppm: 0,
            dup_ppm: 0,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(1),
        }
    }
}

/// Something the scenario does at a given time.
#[derive(Debug, Clone)]
pub enum Action {
    /// Change a link's loss, duplication and delay.
    SetFaults {
        /// Link index.
        link: usize,
        /// New behaviour.
        faults: LinkFaults,
    },
    /// Cut one direction of one link between two nodes.
    Cut {
        /// Link index.
        link: usize,
        /// Sending node index.
        from: usize,
        /// Receiving node index.
        to: usize,
    },
    /// Cut every link in both directions between two nodes.
    Partition {
        /// One node.
        a: usize,
        /// The other.
        b: usize,
    },
    /// Cut every link everywhere.
    CutAll,
    /// Remove every cut (loss settings stay).
    HealAll,
    /// Reset every link to [`LinkFaults::clean`] and remove every cut.
    Calm,
    /// Move a node's clock forward (a stall, or a suspended VM waking up).
    JumpForward {
        /// Node index.
        node: usize,
        /// By how much.
        by: Duration,
    },
    /// Move a node's clock backward (the core must treat it as standing still).
    JumpBackward {
        /// Node index.
        node: usize,
        /// By how much.
        by: Duration,
    },
    /// Restart a node's agent: a new core with the next incarnation.
    Restart {
        /// Node index.
        node: usize,
    },
    /// Queue reliable messages.
    Send {
        /// Sender index.
        from: usize,
        /// Receiver index.
        to: usize,
        /// How many.
        count: u32,
        /// Whether they must be delivered (calm conditions) rather than may fail.
        must_deliver: bool,
    },
    /// Inject a forged packet at a node.
    Inject {
        /// Receiving node index.
        to: usize,
        /// What to forge.
        kind: Forgery,
    },
}

#[derive(Debug, PartialEq, Eq)]
struct InFlight {
    at: Duration,
    seq: u64,
    from: usize,
    to: usize,
    link: usize,
    bytes: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on (time, insertion order): ties keep a deterministic order.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct SimNode {
    core: Membership,
    incarnation: u64,
    /// Local clock = base + global time + offset.
    offset: Duration,
    /// The largest local time handed to the core (the core's own clamped clock).
    eff: Instant,
    /// Packets this node accepted recently (link, bytes), for replay injection.
    accepted: VecDeque<(usize, Vec<u8>)>,
    /// How late its next timer fires.
    late: Duration,
}

/// Figures from one run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Packets handed to the network.
    pub packets_sent: u64,
    /// Packets lost by link faults or cuts.
    pub packets_lost: u64,
    /// Extra copies made.
    pub packets_duplicated: u64,
    /// Packets the cores accepted.
    pub packets_accepted: u64,
    /// Packets the cores dropped.
    pub packets_dropped: u64,
    /// Forged packets injected (all dropped, or the run failed).
    pub forgeries: u64,
    /// Dead verdicts.
    pub dead_verdicts: u64,
    /// Returned-after-partition events.
    pub returned: u64,
    /// Restart events.
    pub restarted: u64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// Messages and acks seen by a node they were not addressed to (shared medium),
    /// counted by the cores running at the end.
    pub other_destination: u64,
    /// Messages acknowledged.
    pub messages_acked: u64,
    /// Time from the last accepted packet to a dead verdict, minus deadtime (cases
    /// without a clock jump; the sim fires timers exactly when due, so this measures
    /// the core's own rounding, not scheduling delay).
    pub dead_latencies: Vec<Duration>,
}

/// A deterministic simulated cluster.
pub struct Sim {
    /// Size and timing.
    pub params: Params,
    rng: Rng,
    base: Instant,
    now: Duration,
    nodes: Vec<SimNode>,
    faults: Vec<LinkFaults>,
    /// `cut[link][from][to]`.
    cut: Vec<Vec<Vec<bool>>>,
    queue: BinaryHeap<InFlight>,
    queue_seq: u64,
    actions: Vec<(Duration, u64, Action)>,
    action_seq: u64,
    recent: VecDeque<(usize, Vec<u8>)>,
    dead_timing: DeadTiming,
    event_order: EventOrder,
    messages: Messages,
    /// Every event with its global time and observer index, for scenario assertions.
    pub log: Vec<(Duration, usize, Event)>,
    /// The last steps, printed when a check fails.
    trace: VecDeque<String>,
    summary: Summary,
}

/// Clock offsets start here so that backward jumps have room.
const INITIAL_OFFSET: Duration = Duration::from_secs(3600);

impl Sim {
    /// A cluster of fresh cores, all links clean, every node started at time zero.
    pub fn new(seed: u64, params: Params) -> Sim {
        #[allow(clippy::disallowed_methods)]
        // The origin of simulated time; only offsets from it matter, so runs stay
        // deterministic.
        let base = Instant::now();
        let start = base + INITIAL_OFFSET;
        let nodes = (0..params.nodes)
            .map(|i| SimNode {
                core: Membership::new(params.config(i), 1, start)
                    .unwrap_or_else(|e| panic!("simulator built a bad config: {e}")),
                incarnation: 1,
                offset: INITIAL_OFFSET,
                eff: start,
                accepted: VecDeque::new(),
                late: Duration::ZERO,
            })
            .collect();
        let n = params.nodes;
        Sim {
            rng: Rng::new(seed),
            base,
            now: Duration::ZERO,
            nodes,
            faults: vec![LinkFaults::clean(); params.links],
            cut: vec![vec![vec![false; n]; n]; params.links],
            queue: BinaryHeap::new(),
            queue_seq: 0,
            actions: Vec::new(),
            action_seq: 0,
            recent: VecDeque::new(),
            dead_timing: DeadTiming::new(
                params.keepalive,
                params.deadtime,
                params.initdead,
                params.timer_late_max,
                vec![start; n],
            ),
            event_order: EventOrder::new(n, params.links, params.warntime),
            messages: Messages::new(n),
            log: Vec::new(),
            trace: VecDeque::new(),
            summary: Summary::default(),
            params,
        }
    }

    /// Global simulated time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The simulator's RNG, for scenarios that draw their schedule from the same seed.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// A node's core (for assertions).
    pub fn core(&self, node: usize) -> &Membership {
        &self.nodes[node].core
    }

    /// A node's local time.
    pub fn local_now(&self, node: usize) -> Instant {
        self.base + self.now + self.nodes[node].offset
    }

    /// Schedules an action at global time `at`.
    pub fn schedule(&mut self, at: Duration, action: Action) {
        self.actions.push((at, self.action_seq, action));
        self.action_seq += 1;
        // Latest first, so the next one pops off the end.
        self.actions.sort_by_key(|a| std::cmp::Reverse((a.0, a.1)));
    }

    /// Figures so far.
    pub fn summary(&self) -> Summary {
        let mut s = self.summary.clone();
        s.returned = self.event_order.returned;
        s.restarted = self.event_order.restarted;
        s.messages_delivered = self.messages.delivered_count;
        s.messages_acked = self.messages.acked;
        s.dead_latencies = self.dead_timing.latencies.clone();
        s.other_destination = (0..self.nodes.len())
            .map(|i| {
                self.nodes[i]
                    .core
                    .status(self.local_now(i))
                    .links
                    .iter()
                    .map(|l| l.drops.get(tandem_membership::DropReason::OtherDestination))
                    .sum::<u64>()
            })
            .sum();
        s
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == 60 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3}s {line}", self.now.as_secs_f64()));
    }

    fn fail(&self, what: String) -> String {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        format!("{what}\nlast steps:\n  {}", trace.join("\n  "))
    }

    /// Runs until global time `end`, checking every invariant after every step.
    pub fn run_until(&mut self, end: Duration) -> Result<(), String> {
        loop {
            let next_action = self.actions.last().map(|a| a.0);
            let next_packet = self.queue.peek().map(|p| p.at);
            let next_timer = (0..self.nodes.len()).map(|i| self.timer_global(i)).min();
            let Some(t) = [next_action, next_packet, next_timer]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.step().map_err(|e| self.fail(e))?;
        }
        self.now = self.now.max(end);
        Ok(())
    }

    /// Global time at which node `i`'s core wants its timer.
    fn timer_global(&self, i: usize) -> Duration {
        let node = &self.nodes[i];
        let Some(deadline) = node.core.poll_timeout() else {
            return Duration::MAX;
        };
        // local(t) = base + t + offset ≥ deadline  ⇔  t ≥ deadline − base − offset
        deadline
            .saturating_duration_since(self.base)
            .saturating_sub(node.offset)
            + node.late
    }

    fn step(&mut self) -> Check {
        while self.actions.last().is_some_and(|a| a.0 <= self.now) {
            if let Some((_, _, action)) = self.actions.pop() {
                self.apply(action)?;
            }
        }
        while self.queue.peek().is_some_and(|p| p.at <= self.now) {
            if let Some(p) = self.queue.pop() {
                self.deliver(p)?;
            }
        }
        for i in 0..self.nodes.len() {
            let mut rounds = 0;
            while self.timer_global(i) <= self.now {
                let now = self.tick_clock(i);
                self.nodes[i].core.handle_timeout(now);
                let late_us = self.params.timer_late_max.as_micros() as u64;
                self.nodes[i].late = Duration::from_micros(self.rng.below(late_us));
                self.drain(i)?;
                rounds += 1;
                if rounds > 1000 {
                    return Err(format!("node {} timer fires forever at one instant", i + 1));
                }
            }
        }
        self.check_step()
    }

    /// The local time to hand node `i`'s core now (and remember as its clamped clock).
    fn tick_clock(&mut self, i: usize) -> Instant {
        let local = self.local_now(i);
        let n = &mut self.nodes[i];
        n.eff = n.eff.max(local);
        local
    }

    fn check_step(&self) -> Check {
        for (r, node) in self.nodes.iter().enumerate() {
            node.core
                .validate()
                .map_err(|e| format!("node {} validate: {e}", r + 1))?;
            for s in 0..self.nodes.len() {
                if s == r {
                    continue;
                }
                let state = node
                    .core
                    .node_state(s as u32 + 1)
                    .unwrap_or(NodeState::Unknown);
                self.dead_timing.check_live(r, s, state, node.eff)?;
            }
        }
        self.event_order.check_settled()
    }

    fn apply(&mut self, action: Action) -> Check {
        self.note(format!("action {action:?}"));
        match action {
            Action::SetFaults { link, faults } => self.faults[link] = faults,
            Action::Cut { link, from, to } => self.cut[link][from][to] = true,
            Action::Partition { a, b } => {
                for l in &mut self.cut {
                    l[a][b] = true;
                    l[b][a] = true;
                }
            }
            Action::CutAll => {
                for l in &mut self.cut {
                    for row in l.iter_mut() {
                        row.iter_mut().for_each(|c| *c = true);
                    }
                }
            }
            Action::HealAll => {
                for l in &mut self.cut {
                    for row in l.iter_mut() {
                        row.iter_mut().for_each(|c| *c = false);
                    }
                }
            }
            Action::Calm => {
                self.apply(Action::HealAll)?;
                self.faults
                    .iter_mut()
                    .for_each(|f| *f = LinkFaults::clean());
            }
            Action::JumpForward { node, by } => {
                self.nodes[node].offset += by;
                self.dead_timing.on_jump_forward(node);
            }
            Action::JumpBackward { node, by } => {
                let o = &mut self.nodes[node].offset;
                *o = o.saturating_sub(by).max(Duration::from_secs(1));
            }
            Action::Restart { node } => {
                // A new process: its clock starts from the machine's time, not from the
                // old core's clamped one.
                let inc = self.nodes[node].incarnation + 1;
                let now = self.local_now(node);
                let core = Membership::new(self.params.config(node), inc, now)
                    .map_err(|e| format!("restart: {e}"))?;
                let old = self.nodes[node].incarnation;
                let sn = &mut self.nodes[node];
                sn.eff = now;
                sn.core = core;
                sn.incarnation = inc;
                sn.accepted.clear();
                let eff = sn.eff;
                self.dead_timing.on_start(node, eff);
                self.event_order.on_start(node);
                self.messages.on_restart(node, old);
                self.drain(node)?;
            }
            Action::Send {
                from,
                to,
                count,
                must_deliver,
            } => {
                for _ in 0..count {
                    let (counter, payload) = self.messages.next(from, to);
                    let now = self.tick_clock(from);
                    match self.nodes[from]
                        .core
                        .send_message(to as u32 + 1, payload, now)
                    {
                        Ok(id) => {
                            let inc = self.nodes[from].incarnation;
                            self.messages
                                .on_sent(from, inc, id, to, counter, must_deliver);
                        }
                        Err(e) if must_deliver => {
                            return Err(format!(
                                "node {} refused a message in calm conditions: {e}",
                                from + 1
                            ));
                        }
                        Err(_) => {}
                    }
                    self.drain(from)?;
                }
            }
            Action::Inject { to, kind } => self.inject(to, kind)?,
        }
        Ok(())
    }

    fn inject(&mut self, to: usize, kind: Forgery) -> Check {
        let links = self.params.links;
        let (link, bytes) = match kind {
            Forgery::Garbage => {
                let len = self.rng.below(200) as usize;
                let bytes = (0..len).map(|_| self.rng.next_u64() as u8).collect();
                (self.rng.below(links as u64) as usize, bytes)
            }
            Forgery::BitFlip => {
                if self.recent.is_empty() {
                    return Ok(());
                }
                let i = self.rng.below(self.recent.len() as u64) as usize;
                let (link, mut bytes) = self.recent[i].clone();
                let bit = self.rng.below(bytes.len() as u64 * 8) as usize;
                bytes[bit / 8] ^= 1 << (bit % 8);
                (link, bytes)
            }
            Forgery::Replay | Forgery::CrossLinkReplay => {
                let acc = &self.nodes[to].accepted;
                if acc.is_empty() || (kind == Forgery::CrossLinkReplay && links < 2) {
                    return Ok(());
                }
                let i = self.rng.below(acc.len() as u64) as usize;
                let (link, bytes) = acc[i].clone();
                let link = if kind == Forgery::CrossLinkReplay {
                    (link + 1) % links
                } else {
                    link
                };
                (link, bytes)
            }
        };
        let now = self.tick_clock(to);
        let v = self.nodes[to].core.handle_packet(link as u16, &bytes, now);
        self.summary.forgeries += 1;
        self.note(format!(
            "inject {kind:?} at node {} link {link}: {v:?}",
            to + 1
        ));
        expect_dropped(to, kind, v)?;
        self.drain(to)
    }

    fn deliver(&mut self, p: InFlight) -> Check {
        let now = self.tick_clock(p.to);
        let v = self.nodes[p.to]
            .core
            .handle_packet(p.link as u16, &p.bytes, now);
        match v {
            Verdict::Accepted => {
                self.summary.packets_accepted += 1;
                let eff = self.nodes[p.to].eff;
                self.dead_timing.on_accept(p.to, p.from, eff);
                let acc = &mut self.nodes[p.to].accepted;
                if acc.len() == 64 {
                    acc.pop_front();
                }
                acc.push_back((p.link, p.bytes));
            }
            Verdict::Dropped(_) => self.summary.packets_dropped += 1,
        }
        self.drain(p.to)
    }

    /// Moves node `i`'s transmissions onto the network and feeds its events to the
    /// checkers.
    fn drain(&mut self, i: usize) -> Check {
        while let Some(t) = self.nodes[i].core.poll_transmit() {
            self.summary.packets_sent += 1;
            let link = t.link as usize;
            if self.recent.len() == 64 {
                self.recent.pop_front();
            }
            self.recent.push_back((link, t.bytes.clone()));
            let targets: Vec<usize> = match t.to {
                Some(id) if !(link == 0 && self.params.shared_medium) => vec![id as usize - 1],
                _ => (0..self.nodes.len()).filter(|&j| j != i).collect(),
            };
            for to in targets {
                self.send(i, to, link, t.bytes.clone());
            }
        }
        let incarnations: Vec<u64> = self.nodes.iter().map(|n| n.incarnation).collect();
        while let Some(e) = self.nodes[i].core.poll_event() {
            let eff = self.nodes[i].eff;
            self.note(format!("node {} event {e:?}", i + 1));
            self.log.push((self.now, i, e.clone()));
            self.event_order.on_event(i, &e, &incarnations)?;
            let inc = self.nodes[i].incarnation;
            match e {
                Event::NodeDead { node, .. } => {
                    self.summary.dead_verdicts += 1;
                    self.dead_timing.on_dead(i, node as usize - 1, eff)?;
                }
                Event::Message { from, payload } => {
                    self.messages.on_delivered(i, from, &payload)?;
                }
                Event::MessageAcked { to, id } => self.messages.on_acked(i, inc, to, id)?,
                Event::MessageFailed { id, reason, .. } => {
                    self.messages.on_failed(i, inc, id, reason)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn send(&mut self, from: usize, to: usize, link: usize, bytes: Vec<u8>) {
        let f = self.faults[link].clone();
        if self.cut[link][from][to] || self.rng.chance_ppm(f.loss_ppm) {
            self.summary.packets_lost += 1;
            return;
        }
        let copies = if self.rng.chance_ppm(f.dup_ppm) {
            self.summary.packets_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let spread = f.delay_max.saturating_sub(f.delay_min).as_micros() as u64;
            let delay = f.delay_min + Duration::from_micros(self.rng.range(0, spread));
            self.queue.push(InFlight {
                at: self.now + delay,
                seq: self.queue_seq,
                from,
                to,
                link,
                bytes: bytes.clone(),
            });
            self.queue_seq += 1;
        }
    }

    /// After a calm phase: every node up everywhere with its current incarnation, every
    /// link up, every message settled.
    pub fn check_converged(&self) -> Result<(), String> {
        let cores: Vec<(&Membership, Instant)> = (0..self.nodes.len())
            .map(|i| (&self.nodes[i].core, self.local_now(i)))
            .collect();
        let incarnations: Vec<u64> = self.nodes.iter().map(|n| n.incarnation).collect();
        convergence::check(&cores, &incarnations)
            .and_then(|()| self.messages.check_drained())
            .map_err(|e| self.fail(e))
    }
}
