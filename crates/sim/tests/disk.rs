//! Deterministic simulation of two replication cores with an in-memory disk model (a
//! volatile write cache that loses unflushed writes in a crash), link faults, crashes
//! at any step, failover and split brain, under a write workload. Every fault comes from
//! the seed; a failure prints the seed (`TANDEM_SIM_SEED=N cargo test -p tandem-sim --test disk`
//! replays one; `TANDEM_SIM_SEEDS=N` runs more).
//!
//! Checked after a fault phase and a calm phase that must converge:
//! - every write acknowledged as replicated under protocol C (or B) is readable after any
//!   single crash or failover, and nothing older shows through;
//! - without a crash, every acknowledged write survives link faults;
//! - after resync both disks are byte-identical and both bitmaps are empty;
//! - when both sides wrote as primary while apart, the handshake reports split brain;
//! - `Core::validate` holds after every step;
//! - disk fencing: under `resource-and-stonith` (protocol C), a node promoted without
//!   `--force` holds every acknowledged write at the moment of its promotion, and every
//!   acknowledged write survives the run, whatever the link, the cluster's other paths
//!   and one power loss did. Runs under `dont-care` count the promotions that would
//!   have served stale data, to show the check catches the unsafe policy.
//!
//! The simulator plays the cluster for the cores: `Output::FencePeer` is answered by
//! outdating the peer over "membership" (a second, separately cut path), or — when
//! membership is cut too — by fencing it (a power loss, if the run has had none yet;
//! otherwise membership is taken to carry the outdate) under `resource-and-stonith`,
//! or by `peer_unreachable` under `resource-only`. A failover promotes a node the way
//! the daemon would: never a node still in its startup wait (restarted, no handshake
//! since, not degraded: `wfc_timeout` forever), and outdating or fencing the peer first
//! when the core asks for it.

use std::collections::{HashMap, VecDeque};
use tandem_testkit::at;

use bytes::Bytes;
use tandem_disk::core::generation::SyncDecision;
use tandem_disk::core::{
    AdminError, Config, ConnState, Core, DiskFencing, DiskState, Input, Output, Protocol, Role,
};
use tandem_rng::Rng;
use tandem_sim::storage::{DiskModel, PendingIo, StoredMeta};
use tandem_wire::frame::{Frame, FrameKey};

const SECTOR: usize = 512;

struct Node {
    core: Option<Core>,
    disk: DiskModel,
    meta: StoredMeta,
    ios: Vec<(u64, PendingIo)>,
    crashed_at_step: Option<u64>,
    /// A handshake completed since this node (re)started: its startup wait is over.
    handshaked: bool,
}

#[derive(Default)]
struct Frontend {
    next_req: u64,
    inflight: HashMap<u64, (usize, u64, u64)>, // req -> (node, offset, len)
    /// Reads: what each sector must at least hold, as of the read's issue.
    read_floor: HashMap<u64, Vec<u64>>,
    /// Per sector: highest write id acknowledged as replicated.
    acked_replicated: Vec<u64>,
    /// Per sector: highest write id acknowledged at all.
    acked_any: Vec<u64>,
    /// Per sector: every write id ever issued to it (for "no garbage" checks).
    issued: Vec<Vec<u64>>,
    /// Write ids whose acknowledgement was degraded (local only).
    writes_acked: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    cfg: Config,
    size: u64,
    nodes: [Node; 2],
    link_up: bool,
    partitioned: bool,
    net: [VecDeque<Vec<u8>>; 2], // net[i] = frames towards node i
    now_ms: u64,
    step: u64,
    fe: Frontend,
    crashes: u32,
    crash_allowed: bool,
    wrote_apart: [bool; 2],
    split_brain_expected: bool,
    split_brain_seen: bool,
    log: Vec<String>,
    /// The heartbeat paths (the cluster's other way to reach the peer) are cut.
    membership_cut: bool,
    /// `FencePeer` requests not yet handled, by asking node.
    fence_requests: VecDeque<usize>,
    /// Outdates under way: (outdated node, its metadata ticket, asking node).
    outdates: Vec<(usize, u64, usize)>,
    /// An operator forced a promotion this run (acknowledged writes may be discarded).
    forced: bool,
    /// Promotions that served a copy missing an acknowledged write (only `dont-care`
    /// may have any; anything else fails the run).
    stale_promotions: u64,
    fences: u64,
    outdated: u64,
    /// In the calm phase (an operator resolves what the nodes refuse to).
    calming: bool,
}

fn stamp(write_id: u64, offset: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    for (i, chunk) in v.chunks_mut(SECTOR).enumerate() {
        let sector = offset / SECTOR as u64 + i as u64;
        chunk[..8].copy_from_slice(&write_id.to_le_bytes());
        chunk[8..16].copy_from_slice(&sector.to_le_bytes());
        for (j, b) in chunk[16..].iter_mut().enumerate() {
            *b = (write_id as u8).wrapping_add(j as u8);
        }
    }
    Bytes::from(v)
}

fn version_of(buf: &[u8], sector: u64) -> Result<u64, String> {
    if buf.iter().all(|b| *b == 0) {
        return Ok(0);
    }
    let id = u64::from_le_bytes(buf[..8].try_into().unwrap());
    let s = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    if s != sector {
        return Err(format!("sector {sector} holds data stamped for sector {s}"));
    }
    for (j, b) in buf[16..].iter().enumerate() {
        if *b != (id as u8).wrapping_add(j as u8) {
            return Err(format!("sector {sector}: torn or garbage data"));
        }
    }
    Ok(id)
}

impl Sim {
    fn new(seed: u64, protocol: Protocol, fencing: DiskFencing) -> Sim {
        let mut rng = Rng::new(seed);
        let size: u64 = 12 << 20;
        let cfg = Config {
            protocol,
            al_extents: 2,
            resync_rate_bytes_per_s: if rng.chance_percent(30) {
                Some(8 << 20)
            } else {
                None
            },
            resync_request_bytes: 64 << 10,
            resync_inflight: 4,
            epoch_max_writes: 8,
            ping_interval_ms: 500,
            ping_timeout_ms: 3000,
            bitmap_persist_interval_ms: 200,
            checksum_resync: rng.chance_percent(30),
            fencing,
            ..Config::default()
        };
        let sectors = (size / SECTOR as u64) as usize;
        let mk = |id: u64| Node {
            core: None,
            disk: DiskModel::new(size as usize),
            meta: StoredMeta::fresh(id, size),
            ios: Vec::new(),
            crashed_at_step: None,
            handshaked: false,
        };
        let mut sim = Sim {
            seed,
            rng,
            cfg,
            size,
            nodes: [mk(101), mk(202)],
            link_up: false,
            partitioned: false,
            net: [VecDeque::new(), VecDeque::new()],
            now_ms: 1000,
            step: 0,
            fe: Frontend {
                acked_replicated: vec![0; sectors],
                acked_any: vec![0; sectors],
                issued: vec![Vec::new(); sectors],
                ..Default::default()
            },
            crashes: 0,
            crash_allowed: true,
            wrote_apart: [false, false],
            split_brain_expected: false,
            split_brain_seen: false,
            log: Vec::new(),
            membership_cut: false,
            fence_requests: VecDeque::new(),
            outdates: Vec::new(),
            forced: false,
            stale_promotions: 0,
            fences: 0,
            outdated: 0,
            calming: false,
        };
        for i in 0..2 {
            sim.start_node(i);
        }
        // Initial full sync: node 0 declares its (empty) data the truth.
        let now = sim.now_ms;
        sim.core(0)
            .promote(at(now), true)
            .expect("forced promotion");
        sim.drain(0);
        sim
    }

    fn core(&mut self, i: usize) -> &mut Core {
        self.nodes[i].core.as_mut().expect("node is up")
    }

    fn start_node(&mut self, i: usize) {
        let meta = self.nodes[i].meta.state(self.size, self.cfg.al_extents);
        let mut core = Core::new(
            self.cfg.clone(),
            meta,
            self.seed ^ ((i as u64 + 1) * 7919) ^ self.step,
            at(self.now_ms),
        );
        core.connect(at(self.now_ms), false);
        self.nodes[i].core = Some(core);
        self.nodes[i].crashed_at_step = None;
        self.nodes[i].handshaked = false;
        self.drain(i);
    }

    fn feed(&mut self, i: usize, input: Input) {
        let now = self.now_ms;
        let was_connected = matches!(input, Input::Frame(Frame::State(_)));
        if let Some(c) = self.nodes[i].core.as_mut() {
            let before = (c.connection(), c.disk_state(), c.role());
            c.handle(at(now), input);
            c.validate();
            let after = (c.connection(), c.disk_state(), c.role());
            if before.0 == ConnState::Handshaking && after.0 != ConnState::Handshaking {
                self.nodes[i].handshaked = true;
                // A handshake decided: was it between two sides that both wrote apart?
                if self.wrote_apart[0] && self.wrote_apart[1] {
                    self.split_brain_expected = true;
                }
                self.wrote_apart = [false, false];
            }
            if before != after || was_connected {
                let st = c.status();
                self.log.push(format!(
                    "step {} node {i}: {:?} -> {:?} decision {:?} gens {:x?} bits {}",
                    self.step,
                    before,
                    after,
                    st.last_decision,
                    st.generations,
                    c.bitmap().count()
                ));
            }
        }
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].core.as_mut().and_then(|c| c.poll_output()) else {
                break;
            };
            match out {
                Output::WriteLocal {
                    io,
                    offset_bytes,
                    data,
                    fua,
                } => self.nodes[i].ios.push((
                    io,
                    PendingIo::Write {
                        offset: offset_bytes,
                        data,
                        fua,
                    },
                )),
                Output::ReadLocal {
                    io,
                    offset_bytes,
                    len_bytes,
                } => self.nodes[i].ios.push((
                    io,
                    PendingIo::Read {
                        offset: offset_bytes,
                        len: len_bytes,
                    },
                )),
                Output::FlushLocal { io } => self.nodes[i].ios.push((io, PendingIo::Flush)),
                Output::FencePeer => {
                    if !self.fence_requests.contains(&i) {
                        self.fence_requests.push_back(i);
                    }
                }
                Output::PersistMeta { io, write } => {
                    self.nodes[i].ios.push((io, PendingIo::Meta(write)))
                }
                Output::Send(f) => {
                    if self.link_up {
                        self.net[1 - i].push_back(f.to_bytes(&FrameKey::preauth(), 0));
                    }
                }
                Output::Disconnect { reason } => {
                    self.log
                        .push(format!("step {} node {i} disconnects: {reason}", self.step));
                    if reason.contains("split brain") {
                        self.split_brain_seen = true;
                    }
                    self.link_down();
                }
                Output::WriteDone { req, result } => {
                    let (node, offset, len) = self.fe.inflight.remove(&req).expect("known req");
                    assert_eq!(node, i);
                    if let Ok(ack) = result {
                        if std::env::var("TANDEM_SIM_SEED").is_ok() {
                            self.log.push(format!(
                                "step {} node {i} ack write {req} @{offset}+{len} replicated={}",
                                self.step, ack.replicated
                            ));
                        }
                        self.fe.writes_acked += 1;
                        let first = (offset / SECTOR as u64) as usize;
                        for s in first..first + (len as usize / SECTOR) {
                            self.fe.acked_any[s] = self.fe.acked_any[s].max(req);
                            if ack.replicated {
                                self.fe.acked_replicated[s] = self.fe.acked_replicated[s].max(req);
                            }
                        }
                        // Written while apart: acknowledged without the peer while the
                        // link is down (not during a resync or a handshake, whose
                        // decision already covers it).
                        if !ack.replicated
                            && matches!(
                                self.core(i).connection(),
                                ConnState::Connecting | ConnState::StandAlone
                            )
                        {
                            self.wrote_apart[i] = true;
                        }
                    }
                }
                Output::ReadDone { req, result } => {
                    let (_, offset, _) = self.fe.inflight.remove(&req).expect("known read");
                    let floor = self.fe.read_floor.remove(&req);
                    let _ = &floor;
                    if let Ok(data) = result {
                        for (k, chunk) in data.chunks(SECTOR).enumerate() {
                            let s = offset / SECTOR as u64 + k as u64;
                            let v = version_of(chunk, s).unwrap_or_else(|e| self.fail(&e));
                            let want = if self.cfg.protocol == Protocol::A || self.forced {
                                0
                            } else {
                                floor.as_ref().map_or(0, |f| f[k])
                            };
                            if v < want {
                                self.fail(&format!(
                                    "read of sector {s} on node {i} returned write {v}, but write {want} was acknowledged as replicated"
                                ));
                            }
                        }
                    }
                }
                Output::FlushDone { req, .. } => {
                    self.fe.inflight.remove(&req);
                }
            }
        }
    }

    fn fail(&self, what: &str) -> ! {
        let keep = if std::env::var("TANDEM_SIM_SEED").is_ok() {
            usize::MAX
        } else {
            30
        };
        let tail: Vec<&String> = self.log.iter().rev().take(keep).collect();
        panic!(
            "simulation failed (seed {}, step {}): {what}\nrecent events (newest first):\n{}",
            self.seed,
            self.step,
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    fn link_down(&mut self) {
        if !self.link_up {
            return;
        }
        self.link_up = false;
        self.net[0].clear();
        self.net[1].clear();
        for i in 0..2 {
            if self.nodes[i].core.is_some() {
                self.feed(i, Input::Disconnected);
            }
        }
    }

    fn try_connect(&mut self) {
        if self.link_up || self.partitioned {
            return;
        }
        let both = self.nodes.iter().all(|n| {
            n.core
                .as_ref()
                .is_some_and(|c| c.wants_connection() && c.connection() == ConnState::Connecting)
        });
        if !both {
            return;
        }
        self.link_up = true;
        self.log.push(format!("step {} link up", self.step));
        let first = self.rng.below(2) as usize;
        self.feed(first, Input::Connected);
        self.feed(1 - first, Input::Connected);
    }

    fn deliver(&mut self, to: usize) {
        let Some(bytes) = self.net[to].pop_front() else {
            return;
        };
        let (frame, _) = Frame::decode(&bytes, &FrameKey::preauth(), 0).expect("own frames decode");
        self.feed(to, Input::Frame(frame));
    }

    fn complete_io(&mut self, i: usize) {
        if self.nodes[i].ios.is_empty() {
            return;
        }
        let k = self.rng.below(self.nodes[i].ios.len() as u64) as usize;
        let (io, op) = self.nodes[i].ios.swap_remove(k);
        // Metadata writes are issued one at a time; completing them in order is implied.
        let result = match op {
            PendingIo::Write { offset, data, fua } => {
                self.nodes[i].disk.write(offset, data, fua);
                Ok(None)
            }
            PendingIo::Read { offset, len } => Ok(Some(Bytes::from(
                self.nodes[i].disk.read(offset, len as usize),
            ))),
            PendingIo::Flush => {
                self.nodes[i].disk.flush();
                Ok(None)
            }
            PendingIo::Meta(w) => {
                // PersistMeta's contract: data written before it is durable first.
                self.nodes[i].disk.flush();
                self.nodes[i].meta.apply(&w);
                Ok(None)
            }
        };
        self.feed(i, Input::IoDone { io, result });
    }

    fn crash(&mut self, i: usize) {
        self.log.push(format!("step {} CRASH node {i}", self.step));
        self.crashes += 1;
        let in_memory = self.nodes[i].core.as_ref().map(|c| c.generations());
        let node = &mut self.nodes[i];
        node.core = None;
        // A metadata write in flight may or may not have landed; if it did, so did the
        // flush before it.
        for (_, op) in std::mem::take(&mut node.ios) {
            if let PendingIo::Meta(w) = op
                && self.rng.chance_percent(50)
            {
                node.disk.flush();
                node.meta.apply(&w);
            }
        }
        node.disk.crash(&mut self.rng);
        // Writes apart whose new generation never reached the superblock are forgotten
        // with the crash: the node comes back as it was before them.
        if in_memory.is_some_and(|g| g.current != node.meta.generations.current) {
            self.wrote_apart[i] = false;
        }
        node.crashed_at_step = Some(self.step);
        self.fe.inflight.retain(|_, (n, _, _)| *n != i);
        // The peer sees the link die.
        if self.link_up {
            self.link_up = false;
            self.net[0].clear();
            self.net[1].clear();
            self.feed(1 - i, Input::Disconnected);
        }
    }

    fn primary(&self) -> Option<usize> {
        (0..2).find(|i| {
            self.nodes[*i]
                .core
                .as_ref()
                .is_some_and(|c| c.role() == Role::Primary)
        })
    }

    fn issue_frontend(&mut self, faults: bool) {
        let Some(p) = self.primary() else {
            return;
        };
        if self.fe.inflight.len() >= 8 {
            return;
        }
        let req = self.fe.next_req + 1;
        self.fe.next_req = req;
        let r = self.rng.below(100);
        if r < 80 {
            // Hot spots, so the activity log both hits and evicts.
            let sectors = self.size / SECTOR as u64;
            let region = self.rng.below(6) * (sectors / 6);
            let off_sectors = region + self.rng.below(sectors / 6 - 64);
            let len = (1 + self.rng.below(16)) as usize * SECTOR;
            let offset = off_sectors * SECTOR as u64;
            let data = stamp(req, offset, len);
            let fua = self.rng.chance_percent(10);
            for s in off_sectors..off_sectors + (len / SECTOR) as u64 {
                self.fe.issued[s as usize].push(req);
            }
            self.fe.inflight.insert(req, (p, offset, len as u64));
            self.feed(
                p,
                Input::Write {
                    req,
                    offset_bytes: offset,
                    data,
                    fua,
                },
            );
        } else if r < 90 {
            self.fe.inflight.insert(req, (p, 0, 0));
            self.feed(p, Input::Flush { req });
        } else {
            let sectors = self.size / SECTOR as u64;
            let off = self.rng.below(sectors - 32) * SECTOR as u64;
            self.fe.inflight.insert(req, (p, off, 16 * 512));
            let first = (off / SECTOR as u64) as usize;
            let floor = self.fe.acked_replicated[first..first + 16].to_vec();
            self.fe.read_floor.insert(req, floor);
            let _ = faults;
            self.feed(
                p,
                Input::Read {
                    req,
                    offset_bytes: off,
                    len_bytes: 16 * 512,
                },
            );
        }
    }

    fn step_once(&mut self, faults: bool, workload: bool) {
        self.step += 1;
        let r = self.rng.below(1000);
        match r {
            0..=299 => {
                let to = self.rng.below(2) as usize;
                self.deliver(to);
            }
            300..=599 => {
                let i = self.rng.below(2) as usize;
                self.complete_io(i);
            }
            600..=799 => {
                if workload {
                    self.issue_frontend(faults);
                }
            }
            800..=899 => {
                self.now_ms += 1 + self.rng.below(30);
                for i in 0..2 {
                    self.feed(i, Input::Tick);
                }
            }
            900..=949 => self.try_connect(),
            950..=989 => self.cluster_step(),
            _ => {
                if faults {
                    self.fault();
                }
            }
        }
        self.check_split_brain_tracking();
    }

    fn check_split_brain_tracking(&mut self) {
        for i in 0..2 {
            if let Some(c) = self.nodes[i].core.as_ref()
                && let Some(SyncDecision::SplitBrain { .. }) = c.status().last_decision
            {
                self.split_brain_seen = true;
            }
        }
    }

    fn fault(&mut self) {
        let r = self.rng.below(100);
        if r < 30 {
            if self.link_up {
                self.log.push(format!("step {} link drop", self.step));
                self.link_down();
            }
        } else if r < 40 {
            self.partitioned = !self.partitioned;
            self.log.push(format!(
                "step {} partitioned={}",
                self.step, self.partitioned
            ));
            if self.partitioned {
                self.link_down();
            }
        } else if r < 50 {
            if self.crashes == 0 && self.crash_allowed {
                // The active node's power loss is the case that matters most.
                let i = match self.primary() {
                    Some(p) if self.rng.chance_percent(70) => p,
                    _ => self.rng.below(2) as usize,
                };
                if self.nodes[i].core.is_some() {
                    self.crash(i);
                }
            }
        } else if r < 70 {
            // Restart a crashed node.
            for i in 0..2 {
                if self.nodes[i].core.is_none()
                    && self.nodes[i]
                        .crashed_at_step
                        .is_some_and(|s| self.step > s + 200)
                {
                    self.log
                        .push(format!("step {} restart node {i}", self.step));
                    self.start_node(i);
                }
            }
        } else if r < 80 {
            self.failover();
        } else if r < 90 {
            self.membership_cut = !self.membership_cut;
            self.log.push(format!(
                "step {} membership cut={}",
                self.step, self.membership_cut
            ));
        } else {
            // Operator error: promote the secondary while the link is down (split
            // brain). Refused without --force unless the policy is dont-care; forced
            // now and then, which discards whatever the other side acknowledged.
            if !self.link_up
                && let Some(p) = self.primary()
            {
                let s = 1 - p;
                let now = self.now_ms;
                // Never on inconsistent data (mid initial sync): that starts an unrelated
                // lineage no operator would want resolved.
                let force = self.rng.chance_percent(20)
                    && self.nodes[s]
                        .core
                        .as_ref()
                        .is_some_and(|c| c.disk_state() != DiskState::Inconsistent);
                if let Some(c) = self.nodes[s].core.as_mut()
                    && c.promote(at(now), force).is_ok()
                {
                    self.forced |= force;
                    self.log.push(format!(
                        "step {} split-brain promote node {s} (force: {force})",
                        self.step
                    ));
                    self.drain(s);
                }
            }
        }
    }

    /// The primary is down: promote the other node as the daemon would — not while it
    /// waits for its peer at startup, and after outdating or fencing the peer when the
    /// core asks for that.
    fn failover(&mut self) {
        if self.primary().is_some() {
            return;
        }
        let first = self.rng.below(2) as usize;
        for i in [first, 1 - first] {
            let Some(c) = self.nodes[i].core.as_ref() else {
                continue;
            };
            // wfc_timeout = forever; a node that ran degraded waits degr_wfc_timeout,
            // long over here.
            if !self.nodes[i].handshaked && !c.was_degraded() {
                continue;
            }
            let now = self.now_ms;
            let result = self.core(i).promote(at(now), false);
            match result {
                Ok(()) => {
                    self.log
                        .push(format!("step {} failover: node {i} primary", self.step));
                    self.drain(i);
                    self.check_promotion(i);
                    return;
                }
                Err(AdminError::PeerNotOutdated) => {
                    self.fence_peer_of(i);
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// A node was just promoted without --force: under resource-and-stonith and
    /// protocol C its copy must hold every write acknowledged so far.
    fn check_promotion(&mut self, i: usize) {
        if self.cfg.protocol != Protocol::C || self.forced {
            return;
        }
        let data = self.nodes[i].disk.read(0, self.size as usize);
        let stale = data.chunks(SECTOR).enumerate().find_map(|(k, chunk)| {
            let v = version_of(chunk, k as u64).unwrap_or(0);
            (v < self.fe.acked_any[k]).then_some((k, v, self.fe.acked_any[k]))
        });
        let Some((sector, found, acked)) = stale else {
            return;
        };
        self.stale_promotions += 1;
        if self.cfg.fencing == DiskFencing::ResourceAndStonith {
            self.fail(&format!(
                "node {i} promoted without write {acked}, acknowledged at sector {sector} (it holds {found})"
            ));
        }
    }

    /// The cluster's side of disk fencing: handles one pending `FencePeer`, and tells
    /// the asking side about outdates whose metadata is now durable.
    fn cluster_step(&mut self) {
        let mut k = 0;
        while k < self.outdates.len() {
            let (j, ticket, asker) = self.outdates[k];
            let durable = self.nodes[j]
                .core
                .as_ref()
                .is_some_and(|c| c.metadata_durable(ticket));
            if durable {
                self.outdates.swap_remove(k);
                self.outdated += 1;
                self.log.push(format!(
                    "step {} node {j} outdated (for node {asker})",
                    self.step
                ));
                let now = self.now_ms;
                if let Some(c) = self.nodes[asker].core.as_mut() {
                    c.peer_outdated(at(now));
                    self.drain(asker);
                }
            } else {
                k += 1;
            }
        }
        if let Some(i) = self.fence_requests.pop_front()
            && self.nodes[i].core.as_ref().is_some_and(|c| c.suspended())
        {
            self.fence_peer_of(i);
        }
    }

    /// Node `i` needs its peer outdated or fenced.
    fn fence_peer_of(&mut self, i: usize) {
        let j = 1 - i;
        let now = self.now_ms;
        if self.nodes[j].core.is_none() {
            // Down already: the fence finds it off.
            self.log
                .push(format!("step {} node {j} is down: fenced", self.step));
            self.core(i).peer_fenced(at(now));
            self.drain(i);
            return;
        }
        let stonith = self.cfg.fencing == DiskFencing::ResourceAndStonith;
        if self.membership_cut && !stonith {
            self.log
                .push(format!("step {} node {j} unreachable", self.step));
            self.core(i).peer_unreachable(at(now));
            self.drain(i);
            return;
        }
        if self.membership_cut && self.crashes == 0 && self.crash_allowed {
            self.log
                .push(format!("step {} FENCE node {j} (power off)", self.step));
            self.fences += 1;
            self.crash(j);
            self.core(i).peer_fenced(at(now));
            self.drain(i);
            return;
        }
        match self.core(j).outdate(at(now)) {
            Ok(ticket) => {
                self.drain(j);
                self.outdates.push((j, ticket, i));
            }
            Err(e) => {
                // Both primary: only an operator's --force gets here. In the fault phase
                // the peer is fenced if the run may still lose power once; in the calm
                // phase the operator demotes it, as the one way out.
                self.log.push(format!(
                    "step {} node {j} refuses to be outdated: {e}",
                    self.step
                ));
                if self.calming {
                    let _ = self.core(j).demote(at(now));
                    self.drain(j);
                } else if self.crashes == 0 && self.crash_allowed {
                    self.log
                        .push(format!("step {} FENCE node {j} (power off)", self.step));
                    self.fences += 1;
                    self.crash(j);
                    self.core(i).peer_fenced(at(now));
                    self.drain(i);
                }
            }
        }
    }

    /// Brings both nodes up and lets them converge; an operator resolves what the
    /// nodes refused to decide (split brain: node 1's changes are discarded; a primary
    /// that would have to be a sync target: it is demoted).
    fn calm(&mut self, workload_steps: u64) {
        self.partitioned = false;
        self.membership_cut = false;
        self.calming = true;
        for i in 0..2 {
            if self.nodes[i].core.is_none() {
                self.log
                    .push(format!("step {} calm: restart node {i}", self.step));
                self.start_node(i);
            }
        }
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > 400_000 {
                let st: Vec<String> = (0..2)
                    .map(|i| format!("{:?}", self.nodes[i].core.as_ref().map(|c| c.status())))
                    .collect();
                self.fail(&format!("did not converge: {st:?}"));
            }
            let standalone = (0..2).any(|i| {
                self.nodes[i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.connection() == ConnState::StandAlone)
            });
            if standalone && !self.link_up && self.fe.inflight.is_empty() {
                let split = (0..2).any(|i| {
                    self.nodes[i].core.as_ref().is_some_and(|c| {
                        c.status()
                            .last_disconnect_reason
                            .is_some_and(|r| r.contains("split brain"))
                    })
                });
                for i in 0..2 {
                    let now = self.now_ms;
                    let c = self.core(i);
                    let _ = c.demote(at(now));
                    c.disconnect(at(now));
                    c.connect(at(now), split && i == 1);
                    self.drain(i);
                }
                self.log.push(format!(
                    "step {} operator reconnects (split brain: {split})",
                    self.step
                ));
            }
            // Two fresh disks (the initial forced promotion was lost in a crash before
            // it reached the superblock): the operator forces it again.
            let fresh = (0..2).all(|i| {
                self.nodes[i].core.as_ref().is_some_and(|c| {
                    c.connection() == ConnState::Connected
                        && c.disk_state() == DiskState::Inconsistent
                })
            });
            if fresh {
                let now = self.now_ms;
                let _ = self.core(0).promote(at(now), true);
                self.drain(0);
            }
            self.step_once(false, steps < workload_steps);
            if self.converged() {
                break;
            }
        }
    }

    fn converged(&self) -> bool {
        self.link_up
            && self.fe.inflight.is_empty()
            && self.net.iter().all(|q| q.is_empty())
            && self.nodes.iter().all(|n| {
                n.ios.is_empty()
                    && n.core.as_ref().is_some_and(|c| {
                        c.connection() == ConnState::Connected
                            && c.disk_state() == DiskState::UpToDate
                            && c.bitmap().count() == 0
                    })
            })
    }

    fn check_final(&mut self) {
        let a = self.nodes[0].disk.read(0, self.size as usize);
        let b = self.nodes[1].disk.read(0, self.size as usize);
        if a != b {
            let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap();
            let sec = first / SECTOR;
            let va = version_of(&a[sec * SECTOR..(sec + 1) * SECTOR], sec as u64);
            let vb = version_of(&b[sec * SECTOR..(sec + 1) * SECTOR], sec as u64);
            self.fail(&format!(
                "disks differ after resync, first at byte {first} (sector {sec}: node 0 has {va:?}, node 1 has {vb:?}; issued there: {:?})",
                self.fe.issued[sec]
            ));
        }
        for (k, chunk) in a.chunks(SECTOR).enumerate() {
            let v = version_of(chunk, k as u64).unwrap_or_else(|e| self.fail(&e));
            if v != 0 && !self.fe.issued[k].contains(&v) {
                self.fail(&format!("sector {k} holds write {v}, never issued there"));
            }
            // Protocol A acknowledges on "sent": a crash of the primary may lose it. An
            // operator who forced a promotion chose to discard one side's writes.
            let want = if (self.cfg.protocol == Protocol::A && self.crashes > 0) || self.forced {
                0
            } else {
                self.fe.acked_replicated[k]
            };
            if v < want {
                self.fail(&format!(
                    "sector {k}: acknowledged replicated write {want} lost (found {v})"
                ));
            }
            if self.crashes == 0 && !self.split_brain_seen && !self.forced {
                let want = self.fe.acked_any[k];
                if v < want {
                    self.fail(&format!(
                        "sector {k}: acknowledged write {want} lost without any crash (found {v})"
                    ));
                }
            }
        }
        // Disk fencing's promise: under resource-and-stonith and protocol C, nothing
        // acknowledged is lost — link cuts, cut heartbeats and one power loss included.
        if self.cfg.fencing == DiskFencing::ResourceAndStonith
            && self.cfg.protocol == Protocol::C
            && !self.forced
        {
            for (k, chunk) in a.chunks(SECTOR).enumerate() {
                let v = version_of(chunk, k as u64).unwrap_or(0);
                if v < self.fe.acked_any[k] {
                    self.fail(&format!(
                        "sector {k}: acknowledged write {} lost under resource-and-stonith (found {v})",
                        self.fe.acked_any[k]
                    ));
                }
            }
        }
        if self.split_brain_expected && !self.split_brain_seen {
            self.fail("both sides wrote as primary while apart, but no split brain was reported");
        }
        // Converged means both up to date; each must also know it of the other, or a
        // primary's later writes would count as unprotected.
        for (i, n) in self.nodes.iter().enumerate() {
            let peer = n.core.as_ref().and_then(|c| c.status().peer_disk_state);
            if peer != Some(DiskState::UpToDate) {
                let msg =
                    format!("node {i} sees its up-to-date peer as {peer:?} after convergence");
                self.fail(&msg);
            }
        }
        let g0 = self.nodes[0].core.as_ref().unwrap().generations().current;
        let g1 = self.nodes[1].core.as_ref().unwrap().generations().current;
        assert_eq!(
            g0, g1,
            "seed {}: generations differ after convergence",
            self.seed
        );
    }
}

#[derive(Default, Debug)]
struct Coverage {
    runs: u64,
    writes_acked: u64,
    crashes: u64,
    split_brains: u64,
    resync_bytes: u64,
    fences: u64,
    outdated: u64,
    fence_peer_requests: u64,
    stale_promotions: u64,
}

fn run(seed: u64, protocol: Protocol, fencing: DiskFencing, cov: &mut Coverage) {
    let mut sim = Sim::new(seed, protocol, fencing);
    // Half the runs start from a finished initial sync, so failover and split brain
    // find an up-to-date secondary; the others fault during the initial full sync.
    if sim.rng.chance_percent(50) {
        sim.calm(0);
    }
    sim.crash_allowed = sim.rng.chance_percent(75);
    let fault_steps = 4000 + sim.rng.below(8000);
    for _ in 0..fault_steps {
        sim.step_once(true, true);
    }
    sim.calm(2000);
    sim.check_final();
    if std::env::var("TANDEM_SIM_TRACE").is_ok() {
        eprintln!("{}", sim.log.join("\n"));
    }
    cov.runs += 1;
    cov.writes_acked += sim.fe.writes_acked;
    cov.crashes += u64::from(sim.crashes);
    cov.split_brains += u64::from(sim.split_brain_seen);
    cov.fences += sim.fences;
    cov.outdated += sim.outdated;
    cov.stale_promotions += sim.stale_promotions;
    for n in sim.nodes.iter().filter_map(|n| n.core.as_ref()) {
        cov.resync_bytes += n.status().resync_moved_bytes;
        cov.fence_peer_requests += n.fence_peer_requests();
    }
}

fn seeds(protocol: Protocol, fencing: DiskFencing, default: u64) -> Coverage {
    let mut cov = Coverage::default();
    if let Ok(s) = std::env::var("TANDEM_SIM_SEED") {
        run(
            s.parse().expect("TANDEM_SIM_SEED is a number"),
            protocol,
            fencing,
            &mut cov,
        );
        return cov;
    }
    let n: u64 = std::env::var("TANDEM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    for seed in 0..n {
        run(seed, protocol, fencing, &mut cov);
    }
    eprintln!("protocol {protocol:?}, fencing {fencing:?}: {cov:?}");
    // The faults must really happen, or the test proves nothing.
    assert!(cov.crashes > n / 4 && cov.crashes < n, "{cov:?}");
    assert!(cov.writes_acked > n * 100, "{cov:?}");
    assert!(cov.resync_bytes > 0, "{cov:?}");
    cov
}

fn replaying_one_seed() -> bool {
    std::env::var("TANDEM_SIM_SEED").is_ok()
}

#[test]
fn protocol_c_with_resource_and_stonith_never_loses_an_acknowledged_write() {
    let cov = seeds(Protocol::C, DiskFencing::ResourceAndStonith, 120);
    if !replaying_one_seed() {
        assert!(cov.fence_peer_requests > 0, "{cov:?}");
        assert!(cov.outdated > 0 && cov.fences > 0, "{cov:?}");
        assert_eq!(cov.stale_promotions, 0);
    }
}

#[test]
fn protocol_c_with_resource_only_survives_any_single_crash() {
    let cov = seeds(Protocol::C, DiskFencing::ResourceOnly, 40);
    if !replaying_one_seed() {
        assert!(cov.outdated > 0, "{cov:?}");
    }
}

/// The unsafe policy, to show the simulator catches it: under `dont-care` a node is
/// promoted on a copy missing acknowledged writes (the replication link lost before
/// the primary), and the check at promotion sees it.
#[test]
fn protocol_c_with_dont_care_promotes_stale_copies_and_the_check_sees_it() {
    // Seeds until the first stale promotion, at most this many (it comes within about
    // a hundred: the link must fail, the primary write alone, then lose power).
    const MAX_SEEDS: u64 = 600;
    let mut cov = Coverage::default();
    let mut found = None;
    for seed in 0..MAX_SEEDS {
        run(seed, Protocol::C, DiskFencing::DontCare, &mut cov);
        if cov.stale_promotions > 0 {
            found = Some(seed);
            break;
        }
    }
    eprintln!("dont-care: first stale promotion at seed {found:?}: {cov:?}");
    assert!(found.is_some(), "{cov:?}");
    assert_eq!(cov.fence_peer_requests, 0);
}

#[test]
fn protocol_b_acknowledged_writes_survive_any_single_crash() {
    seeds(Protocol::B, DiskFencing::ResourceAndStonith, 40);
}

#[test]
fn protocol_a_converges_to_identical_disks() {
    seeds(Protocol::A, DiskFencing::ResourceOnly, 40);
}
