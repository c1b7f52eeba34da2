//! The simulated cluster's run: the event queue, the shell's work for each node, the
//! faults, and the checks after every step.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_agents::{ActionResult, ExecStatus, OcfExit};
use tandem_controller::{Command, Controller, DiskOrder, Input, Op, Operator, SendTag};
use tandem_disk::core::generation::Generations;
use tandem_disk::core::{AdminError, ConnState, Core, Output, Role};
use tandem_fencing::{FenceAction, FenceResult};
use tandem_membership::{
    Event as MembershipEvent, LinkConfig, Membership, MembershipConfig, NodeConfig, PacketKey,
    RetransmitConfig, Transmit,
};
use tandem_policy::{RequestKind, Scope};
use tandem_wire::frame::{Frame, FrameKey};

use super::node::{DiskAction, SimNode};
use crate::storage::{DiskModel, PendingIo, Storage, StoredMeta};
use tandem_rng::Rng;

mod checks;
mod commands;
mod config;
mod disk_service;
mod faults;
mod witness;

use config::{config_text, disk_config, membership_config};
use witness::{SimWitness, WITNESS_HOST};

/// The replicated disk's size.
const DISK_BYTES: u64 = 4 << 20;
/// The client's writes (and the blocks the checks look at).
const BLOCK: u64 = 4096;
/// The simulator's clock granularity for timers.
const TICK: Duration = Duration::from_millis(10);
/// How often a disk core is ticked (the driver's 20 ms, rounded to the tick).
const DISK_TICK: Duration = Duration::from_millis(20);
/// The two heartbeat networks: link 0 `hb` (also carries replication), link 1 `lan`.
const NETS: usize = 2;
/// The pairs' names, for the trace.
const PAIR_NAMES: [&str; PAIRS] = ["n1 and n2", "n1 and the witness", "n2 and the witness"];
/// The pairs of hosts a network can be cut between, numbered by [`pair`]: n1–n2, n1–the
/// witness, n2–the witness.
const PAIRS: usize = 3;
/// The group's resources that a resource agent runs (the disk is the disk core's business).
const AGENT_RESOURCES: [&str; 2] = ["svc", "vip"];

/// An unsafe variant, to show the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsafe {
    /// The product as configured by default.
    None,
    /// Disk fencing `dont-care`: a primary that lost its link writes alone at once.
    DiskDontCare,
    /// Cluster fencing `none`: a silent peer is taken over without being fenced.
    NoFencing,
    /// A witness whose shell turns every refusal into a grant: both nodes that lost
    /// each other get the vote (the run has a witness whatever the seed).
    WitnessGrantsBoth,
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated time with faults.
    pub fault_time: Duration,
    /// Simulated time without faults, at whose end the cluster must have converged.
    pub calm_time: Duration,
    /// An unsafe variant, or none.
    pub unsafe_variant: Unsafe,
    /// Whether the cluster has a witness; `None`: odd seeds have one, even seeds not.
    pub witness: Option<bool>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault_time: Duration::from_secs(60),
            calm_time: Duration::from_secs(60),
            unsafe_variant: Unsafe::None,
            witness: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Steps (events and ticks handled).
    pub steps: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Power-offs by the fence device.
    pub fences: u64,
    /// Promotions of r0 (the first included).
    pub promotions: u64,
    /// Writes the client had acknowledged.
    pub writes_acked: u64,
    /// Resource actions run.
    pub actions: u64,
    /// Whether the cluster had a witness.
    pub witness: bool,
    /// Votes the witness granted (answers that carried a grant).
    pub grants: u64,
    /// Takeovers with a witness (a start while the peer was lost), each checked to follow
    /// a granted vote or a confirmed fence.
    pub witness_takeovers: u64,
}

#[derive(Debug)]
enum Ev {
    Packet {
        from: usize,
        to: usize,
        link: u16,
        bytes: Vec<u8>,
    },
    /// The replication stream towards `to` may move.
    Stream {
        to: usize,
    },
    Input {
        to: usize,
        boot: u64,
        input: Input,
    },
    PowerOn {
        node: usize,
    },
    Thaw {
        node: usize,
    },
    Heal {
        pair: usize,
        net: usize,
    },
    WitnessPowerOn,
    /// Every network between a pair of hosts is cut (a fault's second half).
    Cut {
        pair: usize,
        lasting_ms: u64,
    },
    SwitchFixed,
}

struct Queued {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // Earliest first from a max-heap.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Per-run fault rates, drawn from the seed.
struct Rates {
    /// Per tick, parts per million.
    fault_ppm: u32,
    packet_loss_ppm: u32,
    agent_start_fail_ppm: u32,
    agent_stop_fail_ppm: u32,
    agent_hang_ppm: u32,
    monitor_false_fail_ppm: u32,
}

struct Cluster {
    seed: u64,
    opts: Options,
    rng: Rng,
    base: Instant,
    now: Duration,
    config: Arc<tandem_config::Config>,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    /// Per pair of hosts ([`pair`]) and network: cut.
    cut: [[bool; NETS]; PAIRS],
    /// The witness host, in a run with a witness.
    witness: Option<SimWitness>,
    /// A broken invariant found while a command ran, reported by the next check.
    violation: Option<String>,
    switch_broken: bool,
    next_conn: u64,
    /// The replication link's byte stream towards each node, as TCP delivers it: in
    /// order, nothing lost while the connection lasts, held up while the network is cut
    /// or the receiver hung; a close arrives after the data before it.
    streams: [VecDeque<(u64, Option<Bytes>)>; 2],
    rates: Rates,
    calm: bool,
    /// Client: next write id, writes in flight (node, request, block, id), acknowledged
    /// newest id per block.
    next_write: u64,
    writes: BTreeMap<u64, (usize, u64, u64)>,
    next_req: u64,
    acked: Vec<u64>,
    /// Per block, the newest write an acknowledged flush covers: all a double power
    /// loss must keep.
    flushed: Vec<u64>,
    /// Per block, the nodes (bit i) that lost power while its newest acknowledged
    /// write was not covered by a flush. Both: that write may be gone (each node lost
    /// its cached copy), and only the flushed one is promised.
    lost_unflushed: Vec<u8>,
    /// Flushes in flight: request → the acknowledged writes when it was issued.
    flushes: BTreeMap<u64, (usize, Vec<u64>)>,
    summary: Summary,
    trace: VecDeque<String>,
}

/// Runs one seed; `Err` names the broken invariant, with the last steps.
pub fn run_seed(seed: u64, opts: &Options) -> Result<Summary, String> {
    let mut c = Cluster::new(seed, opts.clone());
    c.run()?;
    Ok(c.summary.clone())
}

/// The number of the pair of hosts `a` and `b` (in either order) in [`Cluster::cut`].
fn pair(a: usize, b: usize) -> usize {
    match (a.min(b), a.max(b)) {
        (0, 1) => 0,
        (0, _) => 1,
        _ => 2,
    }
}

fn stamp(id: u64, block: u64) -> Bytes {
    let mut v = vec![(id as u8) ^ 0x5a; BLOCK as usize];
    v[..8].copy_from_slice(&id.to_le_bytes());
    v[8..16].copy_from_slice(&block.to_le_bytes());
    Bytes::from(v)
}

/// The write id a block holds (0: never written).
fn version(data: &[u8], block: u64) -> Result<u64, String> {
    if data.iter().all(|b| *b == 0) {
        return Ok(0);
    }
    let id = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
    let b = u64::from_le_bytes(data[8..16].try_into().unwrap_or_default());
    if b != block || data[16..].iter().any(|x| *x != (id as u8) ^ 0x5a) {
        return Err(format!("block {block} holds torn or misplaced data"));
    }
    Ok(id)
}

fn result(exit: OcfExit, why: &str) -> ActionResult {
    ActionResult::done(exit, why, Duration::from_millis(1))
}

fn timed_out(timeout: Duration) -> ActionResult {
    ActionResult {
        exec_status: ExecStatus::Timeout,
        exit: None,
        reason: "timed out".into(),
        duration: timeout,
        output: String::new(),
    }
}

impl Cluster {
    fn new(seed: u64, opts: Options) -> Cluster {
        let mut rng = Rng::new(seed);
        let with_witness = opts.unsafe_variant == Unsafe::WitnessGrantsBoth
            || opts.witness.unwrap_or(seed % 2 == 1);
        let (config, _) = tandem_config::Config::parse_str(
            "sim.toml",
            &config_text(opts.unsafe_variant, with_witness),
        )
        .unwrap_or_else(|e| panic!("the simulator's configuration: {e}"));
        // Both copies start synced and at rest: the same generation, no dirty bits.
        let storage = |id: u64| {
            let mut meta = StoredMeta::fresh(id, DISK_BYTES);
            meta.generations = Generations {
                current: 0x1234_5678_9abc_def1,
                bitmap: 0,
                history: [0, 0],
            };
            meta.flags.consistent = true;
            Storage {
                disk: DiskModel::new(DISK_BYTES as usize),
                meta,
            }
        };
        let rates = Rates {
            fault_ppm: rng.range(3_000, 9_000) as u32,
            packet_loss_ppm: rng.range(0, 30_000) as u32,
            agent_start_fail_ppm: rng.range(0, 60_000) as u32,
            agent_stop_fail_ppm: rng.range(0, 15_000) as u32,
            agent_hang_ppm: rng.range(0, 10_000) as u32,
            monitor_false_fail_ppm: rng.range(0, 10_000) as u32,
        };
        #[allow(clippy::disallowed_methods)]
        // The origin of simulated time; only offsets from it matter.
        let base = Instant::now();
        let mut c = Cluster {
            seed,
            opts,
            rng,
            base,
            now: Duration::ZERO,
            config: Arc::new(config),
            nodes: vec![
                SimNode::new("n1", storage(101)),
                SimNode::new("n2", storage(202)),
            ],
            queue: BinaryHeap::new(),
            seq: 0,
            cut: [[false; NETS]; PAIRS],
            witness: with_witness.then(SimWitness::default),
            violation: None,
            switch_broken: false,
            next_conn: 1,
            streams: [VecDeque::new(), VecDeque::new()],
            rates,
            calm: false,
            next_write: 1,
            writes: BTreeMap::new(),
            next_req: 1,
            acked: vec![0; (DISK_BYTES / BLOCK) as usize],
            flushed: vec![0; (DISK_BYTES / BLOCK) as usize],
            lost_unflushed: vec![0; (DISK_BYTES / BLOCK) as usize],
            flushes: BTreeMap::new(),
            summary: Summary {
                seed,
                witness: with_witness,
                ..Summary::default()
            },
            trace: VecDeque::new(),
        };
        c.power_on(0);
        c.power_on(1);
        if with_witness {
            c.witness_power_on();
        }
        c
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == 200 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>8.3}s {line}", self.now.as_secs_f64()));
    }

    fn fail(&self, what: &str) -> String {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        format!(
            "seed {}: {what}\nlast steps:\n  {}",
            self.seed,
            trace.join("\n  ")
        )
    }

    fn fault(&mut self, kind: &'static str) {
        *self.summary.faults.entry(kind).or_default() += 1;
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at: self.now + after,
            seq: self.seq,
            ev,
        });
    }

    fn local(&self, i: usize) -> Instant {
        self.nodes[i].local(self.base, self.now)
    }

    // ------------------------------------------------------------------ the run

    fn run(&mut self) -> Result<(), String> {
        let end_faults = self.opts.fault_time;
        let end = end_faults + self.opts.calm_time;
        let mut next_tick = Duration::ZERO;
        while self.now < end {
            let next_ev = self.queue.peek().map(|q| q.at);
            if next_ev.is_some_and(|t| t <= next_tick) {
                let Some(q) = self.queue.pop() else { break };
                self.now = q.at.max(self.now);
                self.event(q.ev);
            } else {
                self.now = next_tick;
                next_tick += TICK;
                if !self.calm && self.now >= end_faults {
                    self.begin_calm();
                }
                self.tick();
            }
            self.summary.steps += 1;
            self.check()?;
        }
        self.check_converged()
    }

    fn begin_calm(&mut self) {
        self.calm = true;
        self.note("CALM: faults stop; networks heal, nodes thaw and power on".into());
        self.cut = [[false; NETS]; PAIRS];
        self.switch_broken = false;
        for i in 0..2 {
            self.nodes[i].frozen = false;
            if !self.nodes[i].powered {
                self.power_on(i);
            }
        }
        if self.witness.as_ref().is_some_and(|w| !w.powered) {
            self.witness_power_on();
        }
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Packet {
                from,
                to,
                link,
                bytes,
            } => {
                if self.is_cut(from, to, link as usize) {
                    return;
                }
                if to == WITNESS_HOST {
                    self.witness_packet(link, &bytes);
                } else if self.nodes[to].alive() {
                    let now = self.local(to);
                    if let Some(m) = self.nodes[to].membership.as_mut() {
                        m.handle_packet(link, &bytes, now);
                    }
                    self.drain(to);
                }
            }
            Ev::Stream { to } => {
                if self.streams[to].is_empty() {
                    return;
                }
                if self.is_cut(0, 1, 0) || self.nodes[to].frozen {
                    // TCP keeps trying; the cores' ping timeouts decide when to give up.
                    self.schedule(TICK, Ev::Stream { to });
                    return;
                }
                let Some((conn, item)) = self.streams[to].pop_front() else {
                    return;
                };
                if !self.streams[to].is_empty() {
                    self.schedule(Duration::from_micros(100), Ev::Stream { to });
                }
                if self.nodes[to].conn != Some(conn) || !self.nodes[to].powered {
                    return;
                }
                let ms = self.local(to);
                match item {
                    Some(bytes) => {
                        let Ok((frame, _)) = Frame::decode(&bytes, &FrameKey::preauth(), 0) else {
                            return;
                        };
                        if let Some(d) = self.nodes[to].disk.as_mut() {
                            d.handle(ms, tandem_disk::core::Input::Frame(frame));
                        }
                    }
                    None => {
                        self.nodes[to].conn = None;
                        if let Some(d) = self.nodes[to].disk.as_mut() {
                            d.handle(ms, tandem_disk::core::Input::Disconnected);
                        }
                    }
                }
                self.drain(to);
            }
            Ev::Input { to, boot, input } => {
                if self.nodes[to].boot != boot || !self.nodes[to].powered {
                    return;
                }
                if self.nodes[to].frozen {
                    self.schedule(TICK, Ev::Input { to, boot, input });
                    return;
                }
                let now = self.local(to);
                if let Some(c) = self.nodes[to].controller.as_mut() {
                    c.handle(now, input);
                }
                self.drain(to);
            }
            Ev::PowerOn { node } => {
                if !self.nodes[node].powered {
                    self.power_on(node);
                }
            }
            Ev::Thaw { node } => {
                if self.nodes[node].frozen {
                    self.note(format!("{} thaws", self.nodes[node].name));
                    self.nodes[node].frozen = false;
                }
            }
            Ev::Heal { pair, net } => {
                if self.cut[pair][net] {
                    self.note(format!("net {net} heals between {}", PAIR_NAMES[pair]));
                    self.cut[pair][net] = false;
                }
            }
            Ev::Cut { pair, lasting_ms } => {
                if !self.calm {
                    self.note(format!("every network cut between {}", PAIR_NAMES[pair]));
                    self.cut_pair_for(pair, lasting_ms);
                }
            }
            Ev::WitnessPowerOn => {
                if self.witness.as_ref().is_some_and(|w| !w.powered) {
                    self.witness_power_on();
                }
            }
            Ev::SwitchFixed => self.switch_broken = false,
        }
    }

    fn tick(&mut self) {
        for i in 0..2 {
            if !self.nodes[i].alive() {
                continue;
            }
            let now = self.local(i);
            if let Some(m) = self.nodes[i].membership.as_mut()
                && m.poll_timeout().is_some_and(|t| t <= now)
            {
                m.handle_timeout(now);
            }
            if let Some(c) = self.nodes[i].controller.as_mut()
                && c.poll_timeout().is_some_and(|t| t <= now)
            {
                c.handle(now, Input::Tick);
            }
            if self.now >= self.nodes[i].last_disk_tick + DISK_TICK {
                self.nodes[i].last_disk_tick = self.now;
                let ms = self.local(i);
                if let Some(d) = self.nodes[i].disk.as_mut() {
                    d.handle(ms, tandem_disk::core::Input::Tick);
                }
            }
            self.complete_ios(i);
            self.disk_action_step(i);
            self.outdates_step(i);
            self.drain(i);
        }
        self.witness_tick();
        self.connect_replication();
        self.client();
        if !self.calm {
            self.maybe_fault();
        }
    }

    // ------------------------------------------------------------------ power

    fn power_on(&mut self, i: usize) {
        let boot = self.nodes[i].boot + 1;
        let now = self.local(i);
        let membership = Membership::new(membership_config(&self.config, i), boot, now)
            .unwrap_or_else(|e| panic!("membership config: {e}"));
        let controller = Controller::new(
            Arc::clone(&self.config),
            &self.nodes[i].name.clone(),
            (1 - i) as u32 + 1,
            now,
            self.now.as_millis() as u64,
            self.rng.next_u64(),
        )
        .unwrap_or_else(|e| panic!("controller: {e}"));
        let disk_cfg = self.config.disk("r0").map(disk_config).unwrap_or_default();
        let meta = self.nodes[i]
            .storage
            .meta
            .state(DISK_BYTES, disk_cfg.al_extents);
        let ms = self.local(i);
        // Each boot of each node draws its own generations (as getrandom does for the
        // agent): a seed derived by XOR could repeat across nodes and boots.
        let disk_seed = self.rng.next_u64();
        let mut disk = Core::new(disk_cfg, meta, disk_seed, ms);
        disk.connect(ms, false);
        let n = &mut self.nodes[i];
        n.powered = true;
        n.frozen = false;
        n.boot = boot;
        n.membership = Some(membership);
        n.controller = Some(controller);
        n.disk = Some(disk);
        n.handshaked = false;
        n.degraded_at_boot = n.disk.as_ref().is_some_and(|d| d.was_degraded());
        n.conn = None;
        n.was_primary = false;
        n.last_disk_tick = self.now;
        self.note(format!("{} powers on (boot {boot})", self.nodes[i].name));
        let now = self.local(i);
        if let Some(c) = self.nodes[i].controller.as_mut() {
            c.handle(now, Input::Tick);
        }
        self.drain(i);
    }

    fn power_off(&mut self, i: usize, why: &str) {
        if !self.nodes[i].powered {
            return;
        }
        self.note(format!("{} loses power ({why})", self.nodes[i].name));
        self.writes.retain(|_, (n, _, _)| *n != i);
        self.flushes.retain(|_, (n, _)| *n != i);
        // Protocol C acknowledges a write in both caches, not on both platters: once
        // each node has lost power with it unflushed, only a flush's promise holds.
        for b in 0..self.acked.len() {
            if self.acked[b] > self.flushed[b] {
                self.lost_unflushed[b] |= 1 << i;
                if self.lost_unflushed[b] == 0b11 {
                    self.acked[b] = self.flushed[b];
                    self.lost_unflushed[b] = 0;
                }
            }
        }
        let mut rng = self.rng.clone();
        self.nodes[i].power_off(&mut rng);
        self.rng = rng;
    }

    // ------------------------------------------------------------------ the shell

    /// Moves everything node `i` has queued until nothing moves.
    fn drain(&mut self, i: usize) {
        for _ in 0..10_000 {
            if !self.nodes[i].alive() {
                return;
            }
            let mut moved = false;
            let now = self.local(i);
            while let Some(t) = self.nodes[i]
                .membership
                .as_mut()
                .and_then(|m| m.poll_transmit())
            {
                moved = true;
                self.transmit(i, t);
            }
            while let Some(e) = self.nodes[i]
                .membership
                .as_mut()
                .and_then(|m| m.poll_event())
            {
                moved = true;
                let seen = match &e {
                    MembershipEvent::Message { payload, .. } => {
                        format!("hears {}", String::from_utf8_lossy(payload))
                    }
                    MembershipEvent::MessageAcked { .. } => String::new(),
                    e => format!("membership: {e:?}"),
                };
                if !seen.is_empty() {
                    self.note(format!("{} {seen}", self.nodes[i].name));
                }
                if let Some(c) = self.nodes[i].controller.as_mut() {
                    c.handle(now, Input::Membership(e));
                }
            }
            while let Some(cmd) = self.nodes[i]
                .controller
                .as_mut()
                .and_then(|c| c.poll_command())
            {
                moved = true;
                self.command(i, cmd);
                if !self.nodes[i].alive() {
                    return;
                }
            }
            while let Some(o) = self.nodes[i].disk.as_mut().and_then(|d| d.poll_output()) {
                moved = true;
                self.disk_output(i, o);
            }
            if !moved {
                return;
            }
        }
        panic!("seed {}: node {i} never settled", self.seed);
    }

    /// Host `from`'s packet onto the networks: to the member it names, or to every other
    /// host (a heartbeat), each copy lost, cut off or delayed on its own.
    fn transmit(&mut self, from: usize, t: Transmit) {
        let hosts = if self.witness.is_some() { 3 } else { 2 };
        let to: Vec<usize> = match t.to {
            Some(member) => vec![member as usize - 1],
            None => (0..hosts).filter(|&h| h != from).collect(),
        };
        for to in to {
            if self.is_cut(from, to, t.link as usize)
                || self.rng.chance_ppm(self.rates.packet_loss_ppm)
            {
                continue;
            }
            let delay = Duration::from_micros(self.rng.range(300, 3000));
            self.schedule(
                delay,
                Ev::Packet {
                    from,
                    to,
                    link: t.link,
                    bytes: t.bytes.clone(),
                },
            );
        }
    }

    /// Whether network `net` is cut between hosts `a` and `b`.
    fn is_cut(&self, a: usize, b: usize, net: usize) -> bool {
        self.cut[pair(a, b)][net]
    }

    fn tell_controller(&mut self, i: usize, input: Input) {
        let now = self.local(i);
        if let Some(c) = self.nodes[i].controller.as_mut() {
            c.handle(now, input);
        }
    }

    fn later(&mut self, i: usize, after: Duration, input: Input) {
        let boot = self.nodes[i].boot;
        self.schedule(after, Ev::Input { to: i, boot, input });
    }
}
