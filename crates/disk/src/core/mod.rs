//! The sans-IO replication core: one disk resource on one node.
//!
//! ```text
//!   frontend (NBD)          replication link          local disk + metadata
//!   Write/Read/Flush ──┐    Frame / Connected ──┐    IoDone ──┐
//!                      ▼                        ▼             ▼
//!                 ┌────────────────────────────────────────────────┐
//!   now ─────────▶│ Core::handle(now, Input)      + admin methods   │
//!                 └────────────────────────────────────────────────┘
//!                      │ poll_output() → Output
//!                      ▼
//!   WriteLocal / ReadLocal / FlushLocal / PersistMeta   (do it, answer IoDone)
//!   Send(Frame) / Disconnect                            (put on / take down the link)
//!   WriteDone / ReadDone / FlushDone                    (answer the frontend)
//! ```
//!
//! The core never reads the clock, sleeps, or touches a socket or a file. It decides:
//! when a frontend write is acknowledged (protocol A, B or C), what the peer must get,
//! which blocks are dirty, which activity-log transactions and superblock updates must be
//! durable before data moves, the connect-time sync decision, and the resync.
//!
//! Invariants that safety depends on are checked in release builds too (`assert!`):
//! an acknowledgement never precedes durability at the promised level, a disk never
//! becomes primary on inconsistent data unless forced, and a primary never becomes a
//! sync target.

pub mod activity_log;
pub mod bitmap;
pub mod generation;
pub mod policy;
pub mod resync;

mod fencing;
mod frontend;
mod handshake;
mod io;
mod link;
mod persist;
mod pump;
mod types;

pub use types::*;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;

use activity_log::ActivityLog;
use bitmap::{BLOCK_BYTES, Bitmap};
use generation::{Generations, SyncDecision};
use resync::ResyncPlanner;

/// Maps keyed by the core's own sequential ids (requests, I/Os, wire ids): a
/// multiplicative hash, since SipHash's protection against chosen keys buys nothing
/// for ids we hand out ourselves, and the write path looks them up several times per
/// write.
type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of one integer key: spreads sequential ids over the high bits the
/// table uses for its control bytes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// What the peer told us about itself.
#[derive(Debug, Clone, Copy)]
struct PeerInfo {
    role: Role,
    disk: DiskState,
}

#[derive(Debug)]
enum PeerLeg {
    /// Not replicated (local only): bits were set.
    None,
    /// Sent; waiting for acks. `protected`: the peer's disk was up to date, so its copy
    /// can stand in for ours.
    Sent {
        received: bool,
        written: bool,
        protected: bool,
    },
    /// The link went down before the ack: bits were set.
    Lost,
}

#[derive(Debug)]
struct WriteReq {
    offset: u64,
    data: Bytes,
    fua: bool,
    issued: bool,
    local_needed: bool,
    local_done: Option<Result<(), IoFailure>>,
    /// The local write went out with FUA.
    local_fua: bool,
    /// Under C, a write whose peer copy was lost is flushed locally before its ack:
    /// None = not needed yet, Some(false) = flush in flight, Some(true) = flushed.
    lost_flush: Option<bool>,
    peer: PeerLeg,
    al_extents: Option<std::ops::RangeInclusive<u32>>,
    wait_meta: u64,
    /// When the write arrived (its latency is counted at its acknowledgement).
    arrived_ms: u64,
}

#[derive(Debug)]
struct FlushReq {
    epoch: Option<u64>,
    local_done: bool,
}

#[derive(Debug)]
enum Io {
    AppWrite(u64),
    AppRead(u64),
    AppFlush(u64),
    LostFlush(u64),
    PeerWrite {
        id: u64,
        offset: u64,
        len: u64,
    },
    PeerFlush {
        epoch: u64,
    },
    ResyncWrite {
        offset: u64,
        len: u64,
    },
    ResyncRead {
        id: u64,
        offset: u64,
        digest: Option<[u8; 32]>,
    },
    CsumRead {
        id: u64,
        offset: u64,
    },
    PeerRead {
        id: u64,
    },
    VerifyRead {
        id: u64,
        offset: u64,
    },
    ChecksumRead {
        id: u64,
        offset: u64,
        digest: [u8; 32],
    },
    Meta,
}

/// Work queued on the secondary (or a sync target), applied in arrival order.
#[derive(Debug)]
enum PeerOp {
    Write {
        id: u64,
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Barrier {
        epoch: u64,
    },
    Resync {
        offset: u64,
        data: Bytes,
    },
}

/// The replication core of one disk resource. See the module docs.
pub struct Core {
    cfg: Config,
    node_id: u64,
    size_bytes: u64,
    role: Role,
    conn: ConnState,
    disk: DiskState,
    gens: Generations,
    flags: MetaFlags,
    bitmap: Bitmap,
    al: ActivityLog,
    peer: Option<PeerInfo>,
    rng: u64,
    discard_my_data: bool,

    next_io: u64,
    ios: IdMap<IoId, (Io, u64)>,
    link_gen: u64,
    next_wire_id: u64,
    wire_ids: IdMap<u64, u64>,
    outputs: VecDeque<Output>,

    // Metadata writes: strictly one at a time, in order.
    meta_queue: VecDeque<MetaWrite>,
    meta_inflight: bool,
    meta_enqueued: u64,
    meta_done: u64,
    bitmap_dirty_blocks: BTreeSet<u32>,
    bitmap_persisted_ms: u64,

    // Primary side.
    writes: IdMap<u64, WriteReq>,
    write_order: VecDeque<u64>,
    /// The writes of `write_order` not yet issued: writes are issued strictly in order,
    /// so these are its tail, and issuing never rescans what already left.
    to_issue: VecDeque<u64>,
    reads: IdMap<u64, (u64, u32)>,
    flushes: IdMap<u64, FlushReq>,
    epoch: u64,
    epoch_writes: u32,
    /// Mirrored writes not yet covered by a barrier ack: (epoch, offset, len, extents).
    /// Each holds its activity-log extents: if this primary crashes before the peer
    /// flushed them, those extents are what gets resynced.
    transfer_log: VecDeque<(u64, u64, u64, Option<std::ops::RangeInclusive<u32>>)>,

    // Secondary side.
    /// Received writes, barriers and resync data in arrival order, with the link they
    /// came on. They are applied even after that link dies (the primary counts on
    /// "received" under protocol B), but never answered on a newer link.
    peer_ops: VecDeque<(PeerOp, u64)>,
    peer_writes_inflight: Vec<(u64, u64)>,
    peer_flush_inflight: bool,

    // Resync.
    planner: Option<ResyncPlanner>,
    resync_reqs: IdMap<u64, (u64, u64)>,
    next_resync_id: u64,
    resync_reads_inflight: Vec<(u64, u64)>,
    /// Resync requests to serve: (id, offset, len, the target's digest if checksum-based).
    resync_reads_waiting: VecDeque<(u64, u64, u64, Option<[u8; 32]>)>,
    resync_finished_sent: bool,
    resync_source_done_bytes: u64,
    resync_source_total_bytes: u64,
    /// When this side became the sync source (its average rate is shown in status, as
    /// the target's is: an operator watches either end).
    resync_source_started_ms: u64,
    bitmap_received: bool,
    bitmap_sent: bool,
    pending_decision: Option<SyncDecision>,

    /// Resync held back by the resync-group order (see `resync::groups_allowed`).
    resync_paused: bool,

    // Verify.
    verify_cursor: u64,
    verify_inflight: usize,
    verify_oos_blocks: u64,

    // Link.
    last_rx_ms: u64,
    /// When the current link came up (the handshake's deadline counts from here).
    link_up_ms: u64,
    last_ping_ms: u64,
    /// The clock's reading when the core was made: inside, time is milliseconds since.
    origin: Instant,
    /// Milliseconds since `origin` at the latest input (never goes back).
    now_ms: u64,
    sent_bytes: u64,
    received_bytes: u64,
    resync_moved_bytes: u64,
    /// Acknowledged application writes' latencies.
    write_latency: LatencyHistogram,
    /// Barriers the peer confirmed (its flush of an epoch), on a primary.
    barrier_acks_received: u64,
    /// Barriers this node flushed and confirmed for its peer, on a secondary.
    barrier_acks_sent: u64,
    last_disconnect_reason: Option<String>,
    /// Why the backing disk was dropped (`on-io-error detach`), with the I/O error.
    detach_reason: Option<String>,
    last_decision: Option<SyncDecision>,
    /// I/O is suspended since then: the link broke while the peer could still be
    /// promoted (see `fencing.rs`).
    suspended_since_ms: Option<u64>,
    /// When the core last asked the driver to fence the peer.
    fence_peer_asked_ms: u64,
    /// The question about the peer's fate that waits for the cluster's answer: the link
    /// generation when it was first asked (a suspension's `FencePeer`, or a promotion
    /// refused for it). The cluster answers once per question, however often it is
    /// repeated; an answer counts only if no link has come up since the question (see
    /// `Core::peer_outdated`).
    fence_question_link: Option<u64>,
    /// How often it asked, since start.
    fence_peer_requests: u64,
    /// Under `resource-only`: the cluster could not reach the peer, so this side may go
    /// on alone (until the next link).
    peer_unreachable: bool,
    /// The peer was fenced while this copy was not known up to date (it had not seen the
    /// peer since it started): promotion then says so, rather than ask for a fence again.
    peer_fenced_while_stale: bool,
    /// The metadata ticket of the last self-outdate: `Outdated` is reported to the peer
    /// only once it is durable.
    outdated_ticket: u64,
    /// A state report (and maybe a standalone drop) owed to the peer once a metadata
    /// ticket is durable.
    announce: Option<Announce>,
    /// Acknowledgements that rest on this copy alone — a write whose peer copy was lost,
    /// a flush the peer never confirmed — go out only once this metadata ticket is
    /// durable: the superblock a primary writes when its link breaks (the new
    /// generation that says this copy holds what the peer may lack) and, after a
    /// suspension, the one that clears `unacked_changes`.
    alone_acks_wait_meta: u64,
    /// `ResyncComplete` owed to the target once the source's generation rotation is
    /// durable: (metadata ticket, the link it is for).
    resync_complete_owed: Option<(u64, u64)>,
}

/// What is owed to the peer once a self-outdate is durable.
#[derive(Debug, Clone, Copy)]
struct Announce {
    ticket: u64,
    /// Then drop the link and stand alone (`disconnect` of a secondary).
    then_stand_alone: bool,
}

impl Core {
    /// Attaches to loaded metadata. A node that was primary when it stopped is a
    /// *crashed primary*: its activity-log extents join the bitmap (they may differ from
    /// the peer), and this is persisted before anything else happens.
    pub fn new(cfg: Config, meta: MetaState, rng_seed: u64, now: Instant) -> Self {
        let now_ms = 0;
        assert!(
            meta.size_bytes % BLOCK_BYTES == 0,
            "size must be a multiple of 4 KiB"
        );
        let mut flags = meta.flags;
        let mut bitmap = meta.bitmap;
        let al = ActivityLog::restore(cfg.al_extents, meta.al.as_ref());
        let mut crash_recovery = false;
        if flags.was_primary {
            flags.was_primary = false;
            flags.crashed_primary = true;
            crash_recovery = true;
        }
        if flags.crashed_primary {
            for e in al.hot_extents() {
                let first = u64::from(e) * activity_log::EXTENT_BYTES;
                let len = activity_log::EXTENT_BYTES.min(meta.size_bytes.saturating_sub(first));
                bitmap.set_bytes(first, len);
            }
        }
        let disk = if !flags.consistent {
            DiskState::Inconsistent
        } else if flags.outdated {
            DiskState::Outdated
        } else {
            DiskState::Consistent
        };
        let mut core = Core {
            cfg,
            node_id: meta.node_id,
            size_bytes: meta.size_bytes,
            role: Role::Secondary,
            conn: ConnState::StandAlone,
            disk,
            gens: meta.generations,
            flags,
            bitmap,
            al,
            peer: None,
            rng: rng_seed ^ 0x9e37_79b9_7f4a_7c15,
            discard_my_data: false,
            next_io: 1,
            ios: IdMap::default(),
            link_gen: 0,
            next_wire_id: 1,
            wire_ids: IdMap::default(),
            outputs: VecDeque::new(),
            meta_queue: VecDeque::new(),
            meta_inflight: false,
            meta_enqueued: 0,
            meta_done: 0,
            bitmap_dirty_blocks: BTreeSet::new(),
            bitmap_persisted_ms: now_ms,
            writes: IdMap::default(),
            write_order: VecDeque::new(),
            to_issue: VecDeque::new(),
            reads: IdMap::default(),
            flushes: IdMap::default(),
            epoch: 1,
            epoch_writes: 0,
            transfer_log: VecDeque::new(),
            peer_ops: VecDeque::new(),
            peer_writes_inflight: Vec::new(),
            peer_flush_inflight: false,
            planner: None,
            resync_reqs: IdMap::default(),
            next_resync_id: 1,
            resync_reads_inflight: Vec::new(),
            resync_reads_waiting: VecDeque::new(),
            resync_finished_sent: false,
            resync_source_done_bytes: 0,
            resync_source_total_bytes: 0,
            resync_source_started_ms: 0,
            bitmap_received: false,
            bitmap_sent: false,
            pending_decision: None,
            resync_paused: false,
            verify_cursor: 0,
            verify_inflight: 0,
            verify_oos_blocks: 0,
            last_rx_ms: now_ms,
            link_up_ms: now_ms,
            last_ping_ms: now_ms,
            origin: now,
            now_ms,
            sent_bytes: 0,
            received_bytes: 0,
            resync_moved_bytes: 0,
            write_latency: LatencyHistogram::default(),
            barrier_acks_received: 0,
            barrier_acks_sent: 0,
            last_disconnect_reason: None,
            detach_reason: None,
            last_decision: None,
            suspended_since_ms: None,
            fence_peer_asked_ms: 0,
            fence_question_link: None,
            fence_peer_requests: 0,
            peer_unreachable: false,
            peer_fenced_while_stale: false,
            outdated_ticket: 0,
            announce: None,
            resync_complete_owed: None,
            alone_acks_wait_meta: 0,
        };
        if crash_recovery {
            // The extents' bits must be on disk before the flag that made us add them
            // is gone: bitmap first, then the superblock.
            core.persist_whole_bitmap();
            core.persist_superblock();
        }
        core
    }

    // ------------------------------------------------------------------ public API

    /// Feeds one input at time `now` (the same monotonic clock as every core's).
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.advance(now);
        match input {
            Input::Write {
                req,
                offset_bytes,
                data,
                fua,
            } => self.on_write(req, offset_bytes, data, fua),
            Input::Read {
                req,
                offset_bytes,
                len_bytes,
            } => self.on_read(req, offset_bytes, len_bytes),
            Input::Flush { req } => self.on_flush(req),
            Input::IoDone { io, result } => self.on_io_done(io, result),
            Input::Connected => self.on_connected(),
            Input::Disconnected => self.on_link_lost("link down"),
            Input::Frame(f) => self.on_frame(f),
            Input::Tick => self.on_tick(),
        }
        self.pump();
    }

    /// The next piece of work for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle(now, Input::Tick)` is next due, or None
    /// if nothing waits on time: the earliest of the link's ping, ping timeout and
    /// handshake timeout, the repeated fence-peer request of a suspended disk, the
    /// persisting of dirty bitmap blocks, and the resync request the rate held back.
    /// Between inputs the driver may sleep until then: an idle connected disk wakes once
    /// per ping interval, an idle disconnected one not at all. (Connection retries are
    /// the driver's: it dials.)
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.poll_timeout_ms()
            .map(|ms| self.origin + Duration::from_millis(ms))
    }

    /// Takes the time of an input: milliseconds since `origin`, never going back.
    fn advance(&mut self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis();
        self.now_ms = self.now_ms.max(u64::try_from(ms).unwrap_or(u64::MAX));
    }

    fn poll_timeout_ms(&self) -> Option<u64> {
        let resync = self
            .planner
            .as_ref()
            .filter(|_| self.conn == ConnState::SyncTarget && !self.resync_paused)
            .and_then(|p| p.ready_at_ms(self.now_ms));
        [
            self.link_deadline_ms(),
            self.fence_peer_deadline_ms(),
            self.bitmap_persist_deadline_ms(),
            resync,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether this disk last ran without its peer (it holds changes the peer lacks, or
    /// it was primary when the link broke). The startup wait uses `degr-wfc-timeout`
    /// instead of `wfc-timeout` for such a disk, as DRBD does: a cluster that was
    /// already degraded should not wait long for a peer that may be gone for good.
    pub fn was_degraded(&self) -> bool {
        self.gens.bitmap != 0 || self.flags.primary_at_split || self.flags.peer_outdated
    }

    /// How long startup should wait for the peer before going on alone:
    /// `degr_wfc_timeout_ms` if [`Core::was_degraded`], else `wfc_timeout_ms`
    /// (0 = forever, as in DRBD).
    pub fn startup_wait_ms(&self, wfc_timeout_ms: u64, degr_wfc_timeout_ms: u64) -> u64 {
        if self.was_degraded() {
            degr_wfc_timeout_ms
        } else {
            wfc_timeout_ms
        }
    }

    /// Whether this disk has a resync to run or running as target (for resync groups:
    /// feed `(group, needs_resync)` of every resource to `resync::groups_allowed`).
    pub fn needs_resync(&self) -> bool {
        matches!(
            self.conn,
            ConnState::SyncTarget | ConnState::WaitBitmapTarget
        )
    }

    /// Holds back (or releases) this disk's resync requests; the daemon does this to run
    /// resync groups in order (the whitepaper's `syncer { group N; }`).
    pub fn set_resync_paused(&mut self, now: Instant, paused: bool) {
        self.advance(now);
        self.resync_paused = paused;
        self.pump();
    }

    /// Whether the driver should keep (re)connecting the link.
    pub fn wants_connection(&self) -> bool {
        self.conn != ConnState::StandAlone
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Link state.
    pub fn connection(&self) -> ConnState {
        self.conn
    }

    /// Disk state.
    pub fn disk_state(&self) -> DiskState {
        self.disk
    }

    /// Why the backing disk was dropped, if it was (the failed I/O and its error).
    pub fn detach_reason(&self) -> Option<&str> {
        self.detach_reason.as_deref()
    }

    /// Generations.
    pub fn generations(&self) -> Generations {
        self.gens
    }

    /// The dirty bitmap.
    pub fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }

    /// Usable size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Status snapshot.
    pub fn status(&self) -> Status {
        let (done, total, rate) = match (&self.planner, self.conn) {
            (Some(p), _) => (p.done_bytes, p.total_bytes, p.rate_bytes_per_s(self.now_ms)),
            (None, ConnState::SyncSource) => (
                self.resync_source_done_bytes,
                self.resync_source_total_bytes,
                self.resync_source_done_bytes.saturating_mul(1000)
                    / self
                        .now_ms
                        .saturating_sub(self.resync_source_started_ms)
                        .max(1),
            ),
            _ => (0, 0, 0),
        };
        Status {
            role: self.role,
            peer_role: self.peer.map(|p| p.role),
            connection: self.conn,
            disk_state: self.disk,
            peer_disk_state: self.peer.map(|p| p.disk),
            out_of_sync_bytes: self.bitmap.dirty_bytes(),
            resync_done_bytes: done,
            resync_total_bytes: total,
            resync_rate_bytes_per_s: rate,
            sent_bytes: self.sent_bytes,
            received_bytes: self.received_bytes,
            resync_moved_bytes: self.resync_moved_bytes,
            write_latency: self.write_latency.clone(),
            barrier_acks_received: self.barrier_acks_received,
            barrier_acks_sent: self.barrier_acks_sent,
            generations: self.gens,
            last_disconnect_reason: self.last_disconnect_reason.clone(),
            detach_reason: self.detach_reason.clone(),
            verify_out_of_sync_blocks: self.verify_oos_blocks,
            last_decision: self.last_decision,
            suspended_ms: self
                .suspended_since_ms
                .map(|since| self.now_ms.saturating_sub(since)),
            peer_outdated: self.flags.peer_outdated,
            crashed_primary: self.flags.crashed_primary,
        }
    }

    /// `tandem disk primary [--force]`.
    pub fn promote(&mut self, now: Instant, force: bool) -> Result<(), AdminError> {
        self.advance(now);
        if self.role == Role::Primary {
            return Ok(());
        }
        if let Some(p) = self.peer
            && p.role == Role::Primary
        {
            return Err(AdminError::PeerIsPrimary);
        }
        if matches!(
            self.conn,
            ConnState::SyncTarget | ConnState::WaitBitmapTarget | ConnState::Handshaking
        ) {
            return Err(AdminError::Resyncing);
        }
        let replicating = self.conn.replicating();
        // A crashed primary's cache may have lost acknowledged writes that only the peer
        // holds — unless the peer was outdated or fenced before this node acknowledged
        // anything alone: every write before that is durable here (the link loss made
        // it so), every write after it exists only here.
        if self.flags.crashed_primary
            && !replicating
            && !force
            && self.cfg.protocol != Protocol::A
            && self.disk != DiskState::Inconsistent
            && !self.flags.peer_outdated
        {
            return Err(AdminError::CrashedPrimary);
        }
        // Alone, the peer may be primary, or be promoted later with writes this side
        // lacks: the fencing policy wants it outdated or fenced first.
        let peer_may_be_promoted = !replicating
            && self.cfg.fencing != DiskFencing::DontCare
            && !self.flags.peer_outdated
            && !self.peer_unreachable;
        match self.disk {
            DiskState::UpToDate | DiskState::Consistent if peer_may_be_promoted && !force => {
                // The driver now asks the cluster to outdate (or fence) the peer.
                self.fence_question_link.get_or_insert(self.link_gen);
                return Err(if self.peer_fenced_while_stale {
                    AdminError::MayBeStale
                } else {
                    AdminError::PeerNotOutdated
                });
            }
            DiskState::UpToDate => {}
            // Alone after a restart: consistent, and no peer says otherwise.
            DiskState::Consistent if !replicating => {}
            DiskState::Diskless => {
                let peer_ok = self.peer.is_some_and(|p| p.disk == DiskState::UpToDate);
                if !(replicating && peer_ok) {
                    return Err(AdminError::NoData);
                }
            }
            d => {
                if !force {
                    return Err(AdminError::NotUpToDate(d));
                }
                // The operator declares this data the truth: a new lineage starts.
                let g = self.new_generation();
                self.gens.force_new_current(g);
                self.flags.consistent = true;
                self.flags.outdated = false;
                self.disk = DiskState::UpToDate;
                if replicating {
                    // The peer must now be fully overwritten; renegotiate.
                    self.role = Role::Primary;
                    self.flags.was_primary = true;
                    self.persist_superblock();
                    self.drop_link("forced primary: renegotiating");
                    self.pump();
                    return Ok(());
                }
            }
        }
        self.safety_check_promotion(force);
        if self.disk == DiskState::Consistent {
            self.disk = DiskState::UpToDate;
        }
        self.role = Role::Primary;
        self.flags.was_primary = true;
        if !replicating && self.disk != DiskState::Diskless {
            let g = self.new_generation();
            self.gens.start_new_current(g);
        }
        self.persist_superblock();
        if self.conn.link_up() {
            self.send_state();
        }
        self.pump();
        Ok(())
    }

    /// `tandem disk secondary`.
    pub fn demote(&mut self, now: Instant) -> Result<(), AdminError> {
        self.advance(now);
        if self.role == Role::Secondary {
            return Ok(());
        }
        if !self.writes.is_empty() || !self.flushes.is_empty() || !self.reads.is_empty() {
            return Err(AdminError::Busy);
        }
        // Writes the peer acknowledged but has not confirmed flushing (the transfer log)
        // may still be lost by a power cut there, and only this side knows it: a
        // primary keeps them (and their activity-log extents) until the barrier ack,
        // and a link lost first turns them into dirty bits under a new generation.
        // A secondary has no transfer log, and nothing on its disk would say that its
        // peer may lack them: demoted now, a power cut of the peer followed by a
        // handshake of equal generations and clean bitmaps would lose them (cluster-sim
        // seed 4401). So the demotion waits for the peer's flush, asked for now, as
        // DRBD's waits for every request pending on the peer.
        if !self.transfer_log.is_empty() {
            if self.conn.replicating() && self.epoch_writes > 0 {
                self.close_epoch();
                self.pump();
            }
            return Err(AdminError::Busy);
        }
        self.role = Role::Secondary;
        self.flags.was_primary = false;
        // Nothing is in flight (checked above), so nothing waits for the peer's fate.
        self.suspended_since_ms = None;
        self.persist_all_dirty_bitmap();
        // Nothing in flight: the activity log empties (after the bits above, and after
        // the data device's flush that every metadata write starts with), so a later
        // crash as primary resyncs only what that later primacy wrote.
        if let Some(t) = self.al.cool() {
            self.enqueue_meta(MetaWrite::ActivityLog(t));
        }
        self.persist_superblock();
        if self.conn.link_up() {
            self.send_state();
        }
        self.pump();
        Ok(())
    }

    /// A ticket for the metadata writes asked for so far: they are all durable once
    /// [`Core::metadata_durable`] says so for it (a demote is on disk only then).
    pub fn metadata_ticket(&self) -> u64 {
        self.meta_enqueued
    }

    /// Whether every metadata write up to `ticket` has completed (or failed: a failed
    /// one detaches the disk, and waiting longer would not help).
    pub fn metadata_durable(&self, ticket: u64) -> bool {
        self.meta_done >= ticket
    }

    /// The cluster has fenced the peer (or an operator confirmed it down): whatever the
    /// link looks like, nobody is at the other end. It is dropped now rather than after
    /// the ping timeout — a powered-off machine sends no FIN — and the core goes on
    /// connecting, for the peer's return.
    pub fn peer_fenced(&mut self, now: Instant) {
        self.advance(now);
        // A fence answers any open question about the peer's fate (and is a fact,
        // whatever the link did meanwhile).
        self.fence_question_link = None;
        self.drop_link("the peer was fenced");
        // A fenced node runs nothing until it returns. If this copy is up to date (we
        // were primary, or connected to the peer until it went), the peer can hold
        // nothing newer: as good as outdated (DRBD records the same). A copy that has
        // not seen its peer since this node started is only `Consistent`: the fenced
        // peer may well have written after it — fencing makes it stop, not older.
        if self.role == Role::Primary || self.disk == DiskState::UpToDate {
            self.set_peer_outdated();
        } else {
            self.peer_fenced_while_stale = true;
        }
        self.pump();
    }

    /// `tandem disk connect [--discard-my-data]`.
    pub fn connect(&mut self, now: Instant, discard_my_data: bool) {
        self.advance(now);
        self.discard_my_data = discard_my_data;
        if self.conn == ConnState::StandAlone {
            self.conn = ConnState::Connecting;
        }
        self.pump();
    }

    /// `tandem disk disconnect`.
    pub fn disconnect(&mut self, now: Instant) {
        self.advance(now);
        if self.leave_outdated() {
            // The link goes once the peer has heard, durably, that this copy is stale.
            if let Some(a) = &mut self.announce {
                a.then_stand_alone = true;
            }
            self.pump();
            return;
        }
        if self.conn.link_up() {
            self.drop_link("admin disconnect");
        }
        self.conn = ConnState::StandAlone;
        self.pump();
    }

    /// `tandem disk invalidate`: our data is declared bad; everything will be fetched
    /// from the peer (now if connected, else at the next connect).
    pub fn invalidate(&mut self, now: Instant) -> Result<(), AdminError> {
        self.advance(now);
        if self.role == Role::Primary {
            return Err(AdminError::IsPrimary);
        }
        self.bitmap.set_all();
        self.disk = DiskState::Inconsistent;
        self.flags.consistent = false;
        self.persist_whole_bitmap();
        self.persist_superblock();
        if self.conn.link_up() {
            self.drop_link("invalidate: renegotiating");
            self.conn = ConnState::Connecting;
        }
        self.pump();
        Ok(())
    }

    /// `tandem disk verify`: compare every block with the peer by checksum; differing
    /// blocks are marked out of sync (resynced at the next connect).
    pub fn verify(&mut self, now: Instant) -> Result<(), AdminError> {
        self.advance(now);
        if self.conn != ConnState::Connected || self.disk == DiskState::Diskless {
            return Err(AdminError::NotConnected);
        }
        self.conn = ConnState::VerifySource;
        self.verify_cursor = 0;
        self.verify_inflight = 0;
        self.verify_oos_blocks = 0;
        self.pump();
        Ok(())
    }

    /// Checks internal invariants; the simulator calls it after every step.
    pub fn validate(&self) {
        assert_eq!(
            self.bitmap.count(),
            self.bitmap
                .words()
                .iter()
                .map(|w| u64::from(w.count_ones()))
                .sum::<u64>()
        );
        if self.role == Role::Primary {
            assert!(
                matches!(self.disk, DiskState::UpToDate | DiskState::Diskless),
                "primary on {:?} data",
                self.disk
            );
            assert!(self.conn != ConnState::SyncTarget, "primary as sync target");
        }
        if self.conn == ConnState::SyncTarget {
            assert_eq!(self.disk, DiskState::Inconsistent);
        }
        if !self.conn.link_up() {
            assert!(self.peer.is_none());
        }
        if self.suspended_since_ms.is_some() {
            assert_eq!(self.role, Role::Primary, "a suspended secondary");
        }
    }
}
