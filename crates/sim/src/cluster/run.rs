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
    RetransmitConfig,
};
use tandem_policy::{RequestKind, Scope};
use tandem_wire::frame::{Frame, FrameKey};

use super::node::{DiskAction, SimNode};
use crate::storage::{DiskModel, PendingIo, Storage, StoredMeta};
use tandem_rng::Rng;

mod checks;
mod disk_service;

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
/// The group's resources that an agent runs (the disk is the disk core's business).
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault_time: Duration::from_secs(60),
            calm_time: Duration::from_secs(60),
            unsafe_variant: Unsafe::None,
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
}

#[derive(Debug)]
enum Ev {
    Packet {
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
        net: usize,
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
    cut: [bool; NETS],
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

fn config_text(variant: Unsafe) -> String {
    let fencing = if variant == Unsafe::NoFencing {
        "none"
    } else {
        "required"
    };
    let disk_fencing = if variant == Unsafe::DiskDontCare {
        "fencing = \"dont-care\""
    } else {
        ""
    };
    let device = if variant == Unsafe::NoFencing {
        ""
    } else {
        "[[fence_device]]\nname = \"switch\"\nagent = \"fence_sim\"\nplugs = { n1 = \"1\", n2 = \"2\" }\ntimeout = \"10s\"\n"
    };
    format!(
        r#"[cluster]
name = "sim"
key_file = "/etc/tandem/authkey"
keepalive = "100ms"
deadtime = "1s"
warntime = "500ms"
initdead = "2s"
fencing = "{fencing}"
fencing_delay = "1s"
auto_failback = "off"

[[node]]
name = "n1"
[[node]]
name = "n2"

[[link]]
name = "hb"
type = "ucast"
interface = "eth1"
peers = ["10.0.1.1", "10.0.1.2"]

[[link]]
name = "lan"
type = "ucast"
interface = "eth0"
peers = ["10.0.0.1", "10.0.0.2"]

{device}
[[disk]]
name = "r0"
protocol = "C"
net_timeout = "2s"
ping_interval = "500ms"
{disk_fencing}

[disk.on.n1]
device = "/dev/tandem/r0"
backing = "/sim/n1-r0"
address = "10.0.1.1:7788"

[disk.on.n2]
device = "/dev/tandem/r0"
backing = "/sim/n2-r0"
address = "10.0.1.2:7788"

[[group]]
name = "g"
home = "n1"
failure_timeout = "20s"

[[group.resource]]
name = "r0"
type = "disk"
disk = "r0"
monitor_interval = "1s"
timeout = "20s"

[[group.resource]]
name = "svc"
type = "lsb"
script = "svc"
monitor_interval = "1s"
timeout = "5s"

[[group.resource]]
name = "vip"
type = "ipaddr"
address = "10.0.0.100/24"
monitor_interval = "1s"
timeout = "5s"
"#
    )
}

fn membership_config(config: &tandem_config::Config, local: usize) -> MembershipConfig {
    MembershipConfig {
        cluster_id: 0x0051_57c1_u64,
        local_node: local as u32 + 1,
        nodes: config
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeConfig {
                id: i as u32 + 1,
                name: n.name.clone(),
            })
            .collect(),
        links: config
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| LinkConfig {
                id: i as u16,
                name: l.name.clone(),
            })
            .collect(),
        keepalive: config.cluster.keepalive,
        deadtime: config.cluster.deadtime,
        warntime: config.cluster.warntime,
        initdead: config.cluster.initdead,
        key: PacketKey::from_bytes([0x42; 32]),
        config_digest: [0x11; 32],
        retransmit: RetransmitConfig::for_keepalive(config.cluster.keepalive),
    }
}

fn disk_config(disk: &tandem_config::Disk) -> tandem_disk::core::Config {
    tandem_disk::core::Config {
        protocol: tandem_disk::core::Protocol::C,
        al_extents: 7,
        ping_interval_ms: disk.ping_interval.as_millis() as u64,
        ping_timeout_ms: disk.net_timeout.as_millis() as u64,
        fencing: disk.fencing,
        ..tandem_disk::core::Config::default()
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
        let (config, _) =
            tandem_config::Config::parse_str("sim.toml", &config_text(opts.unsafe_variant))
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
            cut: [false; NETS],
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
                ..Summary::default()
            },
            trace: VecDeque::new(),
        };
        c.power_on(0);
        c.power_on(1);
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
        self.cut = [false; NETS];
        self.switch_broken = false;
        for i in 0..2 {
            self.nodes[i].frozen = false;
            if !self.nodes[i].powered {
                self.power_on(i);
            }
        }
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Packet { to, link, bytes } => {
                if self.nodes[to].alive() && !self.cut[link as usize] {
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
                if self.cut[0] || self.nodes[to].frozen {
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
            Ev::Heal { net } => {
                if self.cut[net] {
                    self.note(format!("net {net} heals"));
                    self.cut[net] = false;
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
                let link = t.link as usize;
                if self.cut[link] || self.rng.chance_ppm(self.rates.packet_loss_ppm) {
                    continue;
                }
                let delay = Duration::from_micros(self.rng.range(300, 3000));
                self.schedule(
                    delay,
                    Ev::Packet {
                        to: 1 - i,
                        link: t.link,
                        bytes: t.bytes,
                    },
                );
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

    fn command(&mut self, i: usize, cmd: Command) {
        match cmd {
            // The simulated cluster is configured without a witness; the witness's
            // rules are proven by its own tests and the lab's.
            Command::SendToWitness(_) => {}
            Command::RunAction {
                action,
                group,
                resource,
                op,
                timeout,
            } => {
                self.summary.actions += 1;
                if op != Op::Probe {
                    self.note(format!(
                        "{} runs {op:?} {group}/{resource}",
                        self.nodes[i].name
                    ));
                }
                if resource == "r0" {
                    if op == Op::Probe {
                        let primary = self.disk_role(i) == Some(Role::Primary);
                        let r = if primary {
                            result(OcfExit::Success, "primary")
                        } else {
                            result(OcfExit::NotRunning, "secondary")
                        };
                        self.later(
                            i,
                            Duration::from_millis(1),
                            Input::ActionDone {
                                action,
                                group,
                                resource,
                                op,
                                result: r,
                            },
                        );
                        return;
                    }
                    self.nodes[i].disk_action = Some(DiskAction {
                        action,
                        group,
                        resource,
                        op,
                        demoted: false,
                        deadline: self.now
                            + if op == Op::Stop {
                                Duration::from_secs(5)
                            } else {
                                timeout
                            },
                        asked_fence_peer: false,
                    });
                    self.disk_action_step(i);
                    return;
                }
                let (r, after) = self.agent(i, &resource, op, timeout);
                self.later(
                    i,
                    after,
                    Input::ActionDone {
                        action,
                        group,
                        resource,
                        op,
                        result: r,
                    },
                );
            }
            Command::RunMonitor {
                group, resource, ..
            } => {
                let running = if resource == "r0" {
                    self.disk_role(i) == Some(Role::Primary)
                } else {
                    self.nodes[i].running.contains(&resource)
                };
                let lie = !self.calm && self.rng.chance_ppm(self.rates.monitor_false_fail_ppm);
                let r = if lie {
                    self.fault("monitor-false-failure");
                    result(OcfExit::Generic, "simulated monitor failure")
                } else if running {
                    result(OcfExit::Success, "running")
                } else {
                    result(OcfExit::NotRunning, "not running")
                };
                let after = Duration::from_millis(self.rng.range(1, 30));
                self.later(
                    i,
                    after,
                    Input::MonitorDone {
                        group,
                        resource,
                        result: r,
                    },
                );
            }
            Command::Send { message, tag } => {
                let now = self.local(i);
                let sent = self.nodes[i]
                    .membership
                    .as_mut()
                    .map(|m| m.send_message((1 - i) as u32 + 1, message.encode(), now));
                match sent {
                    Some(Ok(id)) if tag != SendTag::Plain => {
                        self.tell_controller(i, Input::Sent { tag, id })
                    }
                    Some(Ok(_)) => {}
                    _ if tag != SendTag::Plain => {
                        self.tell_controller(i, Input::SendFailed { tag })
                    }
                    _ => {}
                }
            }
            Command::RunFenceDevice(tandem_fencing::Command::RunDevice {
                id,
                device,
                action,
                target,
                ..
            }) => {
                let t = self.nodes.iter().position(|n| n.name == target);
                let outcome = if self.switch_broken || t.is_none() {
                    self.note(format!(
                        "{} fences {target}: the switch fails",
                        self.nodes[i].name
                    ));
                    tandem_fencing::Outcome::Failed {
                        exit: Some(1),
                        output: "simulated switch failure".into(),
                    }
                } else {
                    if let Some(t) = t {
                        self.summary.fences += 1;
                        self.note(format!("{} FENCES {target}", self.nodes[i].name));
                        self.power_off(t, "fenced");
                        let back = if self.calm {
                            Duration::from_secs(2)
                        } else {
                            Duration::from_millis(self.rng.range(3_000, 15_000))
                        };
                        self.schedule(back, Ev::PowerOn { node: t });
                    }
                    tandem_fencing::Outcome::Success
                };
                let _ = action;
                self.later(
                    i,
                    Duration::from_millis(50),
                    Input::FenceDone {
                        id,
                        result: FenceResult {
                            device,
                            action: FenceAction::Off,
                            target: Some(target),
                            outcome,
                            stdout: String::new(),
                            duration_ms: 50,
                        },
                    },
                );
            }
            Command::RunFenceDevice(tandem_fencing::Command::SendToPeer(_)) => {}
            Command::Disks(order) => self.disk_order(i, order),
            // Notifications change nothing in the cluster.
            Command::Notify(_) => {}
            Command::Exit => {
                self.note(format!("{} stopped cleanly", self.nodes[i].name));
                // The agent exits once its disks' metadata is durable (a demote answers
                // only then): let the core finish its queued metadata writes.
                for _ in 0..1000 {
                    if self.nodes[i].ios.is_empty() {
                        break;
                    }
                    self.complete_ios_all(i);
                    self.drain_disk(i);
                }
                let mut rng = self.rng.clone();
                self.nodes[i].stop_cleanly(&mut rng);
                self.rng = rng;
                self.writes.retain(|_, (n, _, _)| *n != i);
                self.flushes.retain(|_, (n, _)| *n != i);
                let back = Duration::from_millis(self.rng.range(500, 5_000));
                self.schedule(back, Ev::PowerOn { node: i });
            }
        }
    }

    /// A simulated resource agent: the world changes, and the result comes later.
    fn agent(
        &mut self,
        i: usize,
        resource: &str,
        op: Op,
        timeout: Duration,
    ) -> (ActionResult, Duration) {
        let quick = Duration::from_millis(self.rng.range(1, 40));
        let faults = !self.calm;
        if faults && self.rng.chance_ppm(self.rates.agent_hang_ppm) && op != Op::Probe {
            self.fault("agent-hang");
            return (timed_out(timeout), timeout);
        }
        let running = self.nodes[i].running.contains(resource);
        match op {
            Op::Probe => {
                let exit = if running {
                    OcfExit::Success
                } else {
                    OcfExit::NotRunning
                };
                (result(exit, "probe"), quick)
            }
            Op::Start | Op::Restart => {
                if faults && self.rng.chance_ppm(self.rates.agent_start_fail_ppm) {
                    self.fault("agent-start-failure");
                    if op == Op::Restart {
                        self.nodes[i].running.remove(resource);
                    }
                    return (result(OcfExit::Generic, "simulated start failure"), quick);
                }
                self.nodes[i].running.insert(resource.to_string());
                (result(OcfExit::Success, "started"), quick)
            }
            Op::Stop => {
                if faults && self.rng.chance_ppm(self.rates.agent_stop_fail_ppm) {
                    self.fault("agent-stop-failure");
                    return (result(OcfExit::Generic, "simulated stop failure"), quick);
                }
                self.nodes[i].running.remove(resource);
                (result(OcfExit::Success, "stopped"), quick)
            }
        }
    }

    // ------------------------------------------------------------------ faults

    fn maybe_fault(&mut self) {
        if !self.rng.chance_ppm(self.rates.fault_ppm) {
            return;
        }
        let i = self.rng.below(2) as usize;
        let name = self.nodes[i].name.clone();
        match self.rng.below(100) {
            0..=17 => {
                self.fault("power-off");
                self.power_off(i, "power cut");
                let back = Duration::from_millis(self.rng.range(2_000, 12_000));
                self.schedule(back, Ev::PowerOn { node: i });
            }
            18..=29 => {
                if self.nodes[i].alive() {
                    self.fault("freeze");
                    self.note(format!("{name} freezes"));
                    self.nodes[i].frozen = true;
                    let back = Duration::from_millis(self.rng.range(300, 4_000));
                    self.schedule(back, Ev::Thaw { node: i });
                }
            }
            30..=49 => {
                let net = self.rng.below(NETS as u64) as usize;
                self.fault(if net == 0 { "cut-hb" } else { "cut-lan" });
                self.note(format!("net {net} cut"));
                self.cut[net] = true;
                let back = Duration::from_millis(self.rng.range(500, 8_000));
                self.schedule(back, Ev::Heal { net });
            }
            50..=57 => {
                self.fault("cut-all");
                self.note("every network cut".into());
                self.cut = [true; NETS];
                for net in 0..NETS {
                    let back = Duration::from_millis(self.rng.range(500, 6_000));
                    self.schedule(back, Ev::Heal { net });
                }
            }
            58..=64 => {
                self.fault("clock-jump");
                let jump = Duration::from_millis(self.rng.range(100, 3_000));
                self.note(format!("{name}'s clock jumps {jump:?}"));
                self.nodes[i].skew += jump;
            }
            65..=71 => {
                self.fault("switch-broken");
                self.note("the power switch breaks".into());
                self.switch_broken = true;
                let back = Duration::from_millis(self.rng.range(1_000, 10_000));
                self.schedule(back, Ev::SwitchFixed);
            }
            72..=81 => {
                if self.nodes[i].alive() {
                    let kind = if self.rng.below(2) == 0 {
                        RequestKind::Standby
                    } else {
                        RequestKind::Takeover
                    };
                    self.fault("operator-request");
                    self.note(format!("operator on {name}: {kind:?} all"));
                    let now = self.local(i);
                    if let Some(c) = self.nodes[i].controller.as_mut() {
                        let _ = c.operator(now, Operator::Request(kind, Scope::All));
                    }
                    self.drain(i);
                }
            }
            _ => {
                if self.nodes[i].alive() && !self.nodes[i].stopping {
                    self.fault("clean-stop");
                    self.note(format!("{name} stops cleanly"));
                    self.nodes[i].stopping = true;
                    self.tell_controller(i, Input::Shutdown);
                    self.drain(i);
                }
            }
        }
    }
}
