//! The sans-IO replication core: one disk resource on one node.
//!
//! ```text
//!   frontend (NBD)          replication link          local disk + metadata
//!   Write/Read/Flush ──┐    Frame / Connected ──┐    IoDone ──┐
//!                      ▼                        ▼             ▼
//!                 ┌────────────────────────────────────────────────┐
//!   now_ms ──────▶│ Core::handle(now_ms, Input)   + admin methods   │
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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tandem_wire::frame::{Frame, MAX_DATA_BYTES, SECTOR_BYTES, StateReport, state_flags};

use activity_log::{ActivityLog, AlTransaction, Begin};
use bitmap::{BLOCK_BYTES, Bitmap, blocks_covered, blocks_touched};
use generation::{CrashedPrimaryRule, Direction, Generations, HandshakeSide, SyncDecision, decide};
use policy::{AfterSplitBrain, Resolution, SplitBrainSide, resolve};
use resync::{ResyncLimits, ResyncPlanner};

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

/// Replication protocol: when a write is acknowledged to the frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Local disk done and the data handed to the link.
    A,
    /// Local disk done and the peer has received the data.
    B,
    /// Local disk done and the peer has written it: durable on both.
    C,
}

impl Protocol {
    fn code(self) -> u8 {
        match self {
            Protocol::A => b'A',
            Protocol::B => b'B',
            Protocol::C => b'C',
        }
    }
}

/// A node's role for this disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Serves the frontend; its writes are replicated.
    Primary,
    /// Receives the primary's writes; serves nothing.
    Secondary,
}

/// The replication link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Not trying to connect (admin disconnect, split brain, unrelated data).
    StandAlone,
    /// Waiting for the link (the driver dials / listens).
    Connecting,
    /// Link up, states being exchanged.
    Handshaking,
    /// Bitmaps being exchanged; we will be the sync source.
    WaitBitmapSource,
    /// Bitmaps being exchanged; we will be the sync target.
    WaitBitmapTarget,
    /// Connected and in sync: writes are mirrored.
    Connected,
    /// Sending dirty blocks to the peer.
    SyncSource,
    /// Fetching dirty blocks from the peer.
    SyncTarget,
    /// Comparing checksums of every block with the peer (we drive it).
    VerifySource,
}

impl ConnState {
    /// Whether writes are mirrored to the peer in this state.
    pub fn replicating(self) -> bool {
        matches!(
            self,
            ConnState::Connected
                | ConnState::SyncSource
                | ConnState::SyncTarget
                | ConnState::VerifySource
        )
    }

    fn link_up(self) -> bool {
        !matches!(self, ConnState::StandAlone | ConnState::Connecting)
    }
}

/// The state of a disk's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    /// No backing disk (detached after an I/O error, or not attached).
    Diskless,
    /// The data is not usable as is (fresh, or a sync target mid-resync).
    Inconsistent,
    /// Consistent but known to be older than the peer's.
    Outdated,
    /// Consistent; whether it is the newest is not known (no peer seen yet).
    Consistent,
    /// Consistent and the newest.
    UpToDate,
}

impl DiskState {
    fn code(self) -> u8 {
        self as u8
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => DiskState::Diskless,
            1 => DiskState::Inconsistent,
            2 => DiskState::Outdated,
            3 => DiskState::Consistent,
            4 => DiskState::UpToDate,
            _ => return None,
        })
    }
}

/// Persistent flags of the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetaFlags {
    /// The data is consistent (not a fresh disk, not a sync target mid-resync).
    pub consistent: bool,
    /// The data is known to be older than the peer's.
    pub outdated: bool,
    /// Primary now; still set at attach means the node crashed as primary.
    pub was_primary: bool,
    /// Crashed as primary and not resynced since.
    pub crashed_primary: bool,
    /// The peer is known to be outdated.
    pub peer_outdated: bool,
    /// Was primary when the link broke (for `discard-younger-primary`).
    pub primary_at_split: bool,
}

impl MetaFlags {
    /// Bit encoding stored in the superblock.
    pub fn to_bits(self) -> u32 {
        u32::from(self.consistent)
            | u32::from(self.outdated) << 1
            | u32::from(self.was_primary) << 2
            | u32::from(self.crashed_primary) << 3
            | u32::from(self.peer_outdated) << 4
            | u32::from(self.primary_at_split) << 5
    }
    /// Decodes [`MetaFlags::to_bits`]; None if unknown bits are set.
    pub fn from_bits(b: u32) -> Option<Self> {
        if b >> 6 != 0 {
            return None;
        }
        Some(MetaFlags {
            consistent: b & 1 != 0,
            outdated: b & 2 != 0,
            was_primary: b & 4 != 0,
            crashed_primary: b & 8 != 0,
            peer_outdated: b & 16 != 0,
            primary_at_split: b & 32 != 0,
        })
    }
}

/// Everything the core keeps on disk, as loaded at attach time.
#[derive(Debug, Clone)]
pub struct MetaState {
    /// Random identity of this metadata.
    pub node_id: u64,
    /// Usable data bytes (a multiple of 4 KiB).
    pub size_bytes: u64,
    /// Generation identifiers.
    pub generations: Generations,
    /// Flags.
    pub flags: MetaFlags,
    /// Activity-log size.
    pub al_extents: u32,
    /// Dirty bitmap.
    pub bitmap: Bitmap,
    /// The newest valid activity-log transaction, if any.
    pub al: Option<AlTransaction>,
}

/// Superblock fields the core updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperblockUpdate {
    /// Generations.
    pub generations: Generations,
    /// Flags.
    pub flags: MetaFlags,
}

/// Words of the bitmap stored per 4 KiB metadata block (16 bytes go to the block header).
pub const BITMAP_WORDS_PER_BLOCK: usize = 510;

/// A metadata write the driver must make durable (write + flush, or FUA), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaWrite {
    /// The superblock.
    Superblock(SuperblockUpdate),
    /// Bitmap block `index` (words `index*510 ..`).
    BitmapBlock {
        /// Block index.
        index: u32,
        /// Its words (up to 510).
        words: Vec<u64>,
    },
    /// An activity-log transaction.
    ActivityLog(AlTransaction),
}

/// Names one local I/O the core asked for.
pub type IoId = u64;

/// Why a local I/O failed (the driver maps OS errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFailure(pub String);

/// Why a frontend request was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Only a primary serves I/O.
    #[error("not primary")]
    NotPrimary,
    /// Offset or length not a multiple of 512, or empty, or over 1 MiB.
    #[error("misaligned or oversized request")]
    Misaligned,
    /// Past the end of the disk.
    #[error("request beyond the end of the disk")]
    OutOfRange,
    /// Neither the local disk nor the peer could do it.
    #[error("I/O error: {0}")]
    Io(String),
    /// A request with this id is already in flight.
    #[error("duplicate request id")]
    DuplicateId,
}

/// Why an admin command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// Promotion needs up-to-date (or, alone, consistent) data.
    #[error("refusing to become primary: disk is {0:?} (use --force to override)")]
    NotUpToDate(DiskState),
    /// Only one primary at a time.
    #[error("the peer is primary")]
    PeerIsPrimary,
    /// Cannot do it while writes are in flight.
    #[error("requests in flight")]
    Busy,
    /// No disk and no up-to-date peer to serve through.
    #[error("no local disk and no up-to-date peer")]
    NoData,
    /// The command needs a connected, in-sync link.
    #[error("not connected and in sync")]
    NotConnected,
    /// Not allowed in this role.
    #[error("not allowed while primary")]
    IsPrimary,
    /// A sync target cannot be promoted while its resync runs.
    #[error("resync in progress")]
    Resyncing,
    /// This node crashed as primary and has not seen its peer since: under protocols B
    /// and C the peer may hold acknowledged writes this disk's cache lost.
    #[error(
        "crashed as primary and not resynced: the peer may hold newer acknowledged writes (use --force to override)"
    )]
    CrashedPrimary,
}

/// Something that happened, for the frontend acknowledgement of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteAck {
    /// The peer confirmed it at the protocol's level (false: degraded, local only).
    pub replicated: bool,
}

/// An input to the core.
#[derive(Debug, Clone)]
pub enum Input {
    /// Frontend write of `data` at `offset_bytes`; `fua`: durable before acknowledged.
    Write {
        /// Frontend request id (unique among requests in flight).
        req: u64,
        /// Byte offset (multiple of 512).
        offset_bytes: u64,
        /// Bytes (multiple of 512, at most 1 MiB).
        data: Bytes,
        /// Force unit access.
        fua: bool,
    },
    /// Frontend read.
    Read {
        /// Frontend request id.
        req: u64,
        /// Byte offset (multiple of 512).
        offset_bytes: u64,
        /// Length (multiple of 512, at most 1 MiB).
        len_bytes: u32,
    },
    /// Frontend flush: everything acknowledged before it becomes durable.
    Flush {
        /// Frontend request id.
        req: u64,
    },
    /// A local I/O finished; reads carry their data.
    IoDone {
        /// Which one.
        io: IoId,
        /// Data for reads, nothing for writes and flushes, or the failure.
        result: Result<Option<Bytes>, IoFailure>,
    },
    /// The link is up and authenticated.
    Connected,
    /// The link went down.
    Disconnected,
    /// A frame from the peer.
    Frame(Frame),
    /// Time passed (pings, rate limit, lazy bitmap writes).
    Tick,
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write to the backing store.
    WriteLocal {
        /// Answer with `IoDone { io }`.
        io: IoId,
        /// Byte offset.
        offset_bytes: u64,
        /// The bytes.
        data: Bytes,
        /// Durable before done.
        fua: bool,
    },
    /// Read from the backing store.
    ReadLocal {
        /// Answer with `IoDone { io, Ok(Some(data)) }`.
        io: IoId,
        /// Byte offset.
        offset_bytes: u64,
        /// Length.
        len_bytes: u32,
    },
    /// Flush the backing store's write cache.
    FlushLocal {
        /// Answer with `IoDone { io }`.
        io: IoId,
    },
    /// Make a metadata block durable. Issued one at a time, in order. Contract: first
    /// flush the data device (every data write completed so far becomes durable), then
    /// write the block durably — as DRBD's activity-log writes do. The activity log and
    /// the generation rules rely on it: an extent leaves the log, or a new generation
    /// is recorded, only once the data it covers is on stable storage.
    PersistMeta {
        /// Answer with `IoDone { io }`.
        io: IoId,
        /// What to write.
        write: MetaWrite,
    },
    /// Send a frame to the peer (in order).
    Send(Frame),
    /// Close the link; the core already counts it as down.
    Disconnect {
        /// Why.
        reason: String,
    },
    /// Answer a frontend write.
    WriteDone {
        /// Request id.
        req: u64,
        /// Outcome.
        result: Result<WriteAck, RequestError>,
    },
    /// Answer a frontend read.
    ReadDone {
        /// Request id.
        req: u64,
        /// The data.
        result: Result<Bytes, RequestError>,
    },
    /// Answer a frontend flush.
    FlushDone {
        /// Request id.
        req: u64,
        /// Outcome.
        result: Result<(), RequestError>,
    },
}

/// Tunables of one resource.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replication protocol.
    pub protocol: Protocol,
    /// Activity-log size in 4 MiB extents.
    pub al_extents: u32,
    /// Resync rate limit; None = as fast as the link goes.
    pub resync_rate_bytes_per_s: Option<u64>,
    /// Largest resync request.
    pub resync_request_bytes: u64,
    /// Resync requests in flight.
    pub resync_inflight: usize,
    /// Split-brain policies.
    pub after_split_brain: AfterSplitBrain,
    /// Send a ping this often.
    pub ping_interval_ms: u64,
    /// Drop the link when nothing arrived for this long.
    pub ping_timeout_ms: u64,
    /// Close a write epoch (barrier) after this many writes.
    pub epoch_max_writes: u32,
    /// Write dirty bitmap blocks at most this often.
    pub bitmap_persist_interval_ms: u64,
    /// Checksum-based resync (DRBD's `csums-alg`): the target sends a SHA-256 of each
    /// range and the source sends data only where it differs. Saves bandwidth when
    /// most dirty blocks are in fact equal (after a crash of a primary, say).
    pub checksum_resync: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protocol: Protocol::C,
            al_extents: 257,
            resync_rate_bytes_per_s: None,
            resync_request_bytes: 256 << 10,
            resync_inflight: 8,
            after_split_brain: AfterSplitBrain::default(),
            ping_interval_ms: 1000,
            ping_timeout_ms: 5000,
            epoch_max_writes: 256,
            bitmap_persist_interval_ms: 1000,
            checksum_resync: false,
        }
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

/// Status for `tandem disk status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Our role.
    pub role: Role,
    /// The peer's role, if connected.
    pub peer_role: Option<Role>,
    /// Link state.
    pub connection: ConnState,
    /// Our disk.
    pub disk_state: DiskState,
    /// The peer's disk, if connected.
    pub peer_disk_state: Option<DiskState>,
    /// Bytes marked out of sync.
    pub out_of_sync_bytes: u64,
    /// Resync progress (target side: done/total/rate; source: done/total).
    pub resync_done_bytes: u64,
    /// Bytes the resync had to move.
    pub resync_total_bytes: u64,
    /// Average resync rate.
    pub resync_rate_bytes_per_s: u64,
    /// Application and resync data bytes sent to the peer.
    pub sent_bytes: u64,
    /// Application and resync data bytes received from the peer.
    pub received_bytes: u64,
    /// Bytes moved by resyncs since start (data frames of resync, either direction).
    pub resync_moved_bytes: u64,
    /// Generations.
    pub generations: Generations,
    /// Why the link was last dropped, if it was.
    pub last_disconnect_reason: Option<String>,
    /// Blocks found different by the last online verify.
    pub verify_out_of_sync_blocks: u64,
    /// The last handshake's decision.
    pub last_decision: Option<SyncDecision>,
}

/// Resync progress as `tandem disk status --json` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ResyncReport {
    /// Bytes resynced so far.
    pub done_bytes: u64,
    /// Bytes the resync has to move.
    pub total_bytes: u64,
    /// Average rate.
    pub rate_bytes_per_s: u64,
}

/// The stable `--json` shape of a disk's status (docs/disk.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusReport {
    /// Our role.
    pub role: Role,
    /// The peer's role, if connected.
    pub peer_role: Option<Role>,
    /// Link state.
    pub connection: ConnState,
    /// Our disk.
    pub disk_state: DiskState,
    /// The peer's disk, if connected.
    pub peer_disk_state: Option<DiskState>,
    /// Bytes marked out of sync.
    pub out_of_sync_bytes: u64,
    /// Resync progress.
    pub resync: ResyncReport,
    /// Data bytes sent to the peer.
    pub sent_bytes: u64,
    /// Data bytes received from the peer.
    pub received_bytes: u64,
}

impl Status {
    /// The `--json` shape.
    pub fn report(&self) -> StatusReport {
        StatusReport {
            role: self.role,
            peer_role: self.peer_role,
            connection: self.connection,
            disk_state: self.disk_state,
            peer_disk_state: self.peer_disk_state,
            out_of_sync_bytes: self.out_of_sync_bytes,
            resync: ResyncReport {
                done_bytes: self.resync_done_bytes,
                total_bytes: self.resync_total_bytes,
                rate_bytes_per_s: self.resync_rate_bytes_per_s,
            },
            sent_bytes: self.sent_bytes,
            received_bytes: self.received_bytes,
        }
    }
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
    now_ms: u64,
    sent_bytes: u64,
    received_bytes: u64,
    resync_moved_bytes: u64,
    last_disconnect_reason: Option<String>,
    last_decision: Option<SyncDecision>,
}

impl Core {
    /// Attaches to loaded metadata. A node that was primary when it stopped is a
    /// *crashed primary*: its activity-log extents join the bitmap (they may differ from
    /// the peer), and this is persisted before anything else happens.
    pub fn new(cfg: Config, meta: MetaState, rng_seed: u64, now_ms: u64) -> Self {
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
            now_ms,
            sent_bytes: 0,
            received_bytes: 0,
            resync_moved_bytes: 0,
            last_disconnect_reason: None,
            last_decision: None,
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

    /// Feeds one input at time `now_ms` (monotonic milliseconds, any origin).
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        self.now_ms = self.now_ms.max(now_ms);
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

    /// Holds back (or releases) this disk's resync requests; the agent does this to run
    /// resync groups in order (the whitepaper's `syncer { group N; }`).
    pub fn set_resync_paused(&mut self, now_ms: u64, paused: bool) {
        self.now_ms = self.now_ms.max(now_ms);
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
                0,
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
            generations: self.gens,
            last_disconnect_reason: self.last_disconnect_reason.clone(),
            verify_out_of_sync_blocks: self.verify_oos_blocks,
            last_decision: self.last_decision,
        }
    }

    /// `tandem disk primary [--force]`.
    pub fn promote(&mut self, now_ms: u64, force: bool) -> Result<(), AdminError> {
        self.now_ms = self.now_ms.max(now_ms);
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
        if self.flags.crashed_primary
            && !replicating
            && !force
            && self.cfg.protocol != Protocol::A
            && self.disk != DiskState::Inconsistent
        {
            return Err(AdminError::CrashedPrimary);
        }
        match self.disk {
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
    pub fn demote(&mut self, now_ms: u64) -> Result<(), AdminError> {
        self.now_ms = self.now_ms.max(now_ms);
        if self.role == Role::Secondary {
            return Ok(());
        }
        if !self.writes.is_empty() || !self.flushes.is_empty() || !self.reads.is_empty() {
            return Err(AdminError::Busy);
        }
        self.role = Role::Secondary;
        self.flags.was_primary = false;
        self.persist_all_dirty_bitmap();
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
    pub fn peer_fenced(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.drop_link("the peer was fenced");
        self.pump();
    }

    /// `tandem disk connect [--discard-my-data]`.
    pub fn connect(&mut self, now_ms: u64, discard_my_data: bool) {
        self.now_ms = self.now_ms.max(now_ms);
        self.discard_my_data = discard_my_data;
        if self.conn == ConnState::StandAlone {
            self.conn = ConnState::Connecting;
        }
        self.pump();
    }

    /// `tandem disk disconnect`.
    pub fn disconnect(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.conn.link_up() {
            self.drop_link("admin disconnect");
        }
        self.conn = ConnState::StandAlone;
        self.pump();
    }

    /// `tandem disk invalidate`: our data is declared bad; everything will be fetched
    /// from the peer (now if connected, else at the next connect).
    pub fn invalidate(&mut self, now_ms: u64) -> Result<(), AdminError> {
        self.now_ms = self.now_ms.max(now_ms);
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
    pub fn verify(&mut self, now_ms: u64) -> Result<(), AdminError> {
        self.now_ms = self.now_ms.max(now_ms);
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
    }

    // ------------------------------------------------------------------ frontend

    /// Why a frontend request of `len` bytes at `offset` cannot be taken, if it cannot:
    /// only a primary serves I/O, in whole sectors, within the disk, under unique ids.
    fn check_request(&self, offset: u64, len: u64, duplicate: bool) -> Option<RequestError> {
        if self.role != Role::Primary {
            Some(RequestError::NotPrimary)
        } else if offset % SECTOR_BYTES != 0
            || len % SECTOR_BYTES != 0
            || len == 0
            || len > MAX_DATA_BYTES as u64
        {
            Some(RequestError::Misaligned)
        } else if offset.checked_add(len).is_none_or(|e| e > self.size_bytes) {
            Some(RequestError::OutOfRange)
        } else if duplicate {
            Some(RequestError::DuplicateId)
        } else {
            None
        }
    }

    fn on_write(&mut self, req: u64, offset: u64, data: Bytes, fua: bool) {
        let err = self.check_request(offset, data.len() as u64, self.writes.contains_key(&req));
        if let Some(e) = err {
            self.outputs.push_back(Output::WriteDone {
                req,
                result: Err(e),
            });
            return;
        }
        self.writes.insert(
            req,
            WriteReq {
                offset,
                data,
                fua,
                issued: false,
                local_needed: false,
                local_done: None,
                local_fua: false,
                lost_flush: None,
                peer: PeerLeg::None,
                al_extents: None,
                wait_meta: 0,
            },
        );
        self.write_order.push_back(req);
        self.to_issue.push_back(req);
    }

    fn on_read(&mut self, req: u64, offset: u64, len: u32) {
        let err = self.check_request(offset, u64::from(len), self.reads.contains_key(&req));
        if let Some(e) = err {
            self.outputs.push_back(Output::ReadDone {
                req,
                result: Err(e),
            });
            return;
        }
        self.reads.insert(req, (offset, len));
        self.start_read(req, offset, len);
    }

    fn start_read(&mut self, req: u64, offset: u64, len: u32) {
        if self.disk != DiskState::Diskless {
            let io = self.io(Io::AppRead(req));
            self.outputs.push_back(Output::ReadLocal {
                io,
                offset_bytes: offset,
                len_bytes: len,
            });
        } else if self.conn.replicating()
            && self.peer.is_some_and(|p| p.disk == DiskState::UpToDate)
        {
            self.send(Frame::ReadRequest {
                id: req,
                sector: offset / SECTOR_BYTES,
                len_bytes: len,
            });
        } else {
            self.reads.remove(&req);
            self.outputs.push_back(Output::ReadDone {
                req,
                result: Err(RequestError::Io("no local disk and no peer".into())),
            });
        }
    }

    fn on_flush(&mut self, req: u64) {
        if self.role != Role::Primary {
            self.outputs.push_back(Output::FlushDone {
                req,
                result: Err(RequestError::NotPrimary),
            });
            return;
        }
        // A flush covers writes already acknowledged; under B and C it also waits for
        // the peer to flush the epoch that holds them.
        let epoch = if self.conn.replicating() && self.cfg.protocol != Protocol::A {
            Some(self.close_epoch())
        } else {
            if self.conn.replicating() {
                self.close_epoch();
            }
            None
        };
        let local_needed = self.disk != DiskState::Diskless;
        if local_needed {
            let io = self.io(Io::AppFlush(req));
            self.outputs.push_back(Output::FlushLocal { io });
        }
        self.flushes.insert(
            req,
            FlushReq {
                epoch,
                local_done: !local_needed,
            },
        );
        self.try_complete_flush(req);
    }

    fn close_epoch(&mut self) -> u64 {
        let e = self.epoch;
        self.send(Frame::Barrier { epoch: e });
        self.epoch += 1;
        self.epoch_writes = 0;
        e
    }

    /// Issues queued frontend writes in order, as far as ordering, the activity log and
    /// metadata allow.
    fn issue_writes(&mut self) {
        while let Some(&req) = self.to_issue.front() {
            let Some(w) = self.writes.get(&req) else {
                self.to_issue.pop_front();
                continue;
            };
            if w.issued {
                self.to_issue.pop_front();
                continue;
            }
            // Writes wait while the handshake decides what the peer gets: a write in
            // that window would miss both the mirror and the exchanged bitmap.
            if matches!(
                self.conn,
                ConnState::Handshaking | ConnState::WaitBitmapSource | ConnState::WaitBitmapTarget
            ) {
                return;
            }
            let (offset, len) = (w.offset, w.data.len() as u64);
            if self.overlaps_inflight(req, offset, len) {
                return;
            }
            let local_needed = self.disk != DiskState::Diskless;
            let replicate = self.conn.replicating();
            if !local_needed && !replicate {
                self.finish_write(
                    req,
                    Err(RequestError::Io("no local disk and no peer".into())),
                );
                continue;
            }
            if local_needed && self.writes[&req].al_extents.is_none() {
                let ext = ActivityLog::extents_of(offset, len);
                match self.al.begin(ext.clone()) {
                    Begin::Busy => {
                        // Extents may be held by writes waiting for the peer's flush:
                        // close the epoch so the barrier ack releases them.
                        if self.conn.replicating() && self.epoch_writes > 0 {
                            self.close_epoch();
                        }
                        return;
                    }
                    Begin::Hot => {}
                    Begin::Transaction {
                        transaction,
                        evicted,
                    } => {
                        // The bits of extents leaving the log must be durable first:
                        // after a crash only the log's extents are added back.
                        for e in evicted {
                            self.persist_bitmap_for_extent(e);
                        }
                        self.enqueue_meta(MetaWrite::ActivityLog(transaction));
                    }
                }
                if let Some(w) = self.writes.get_mut(&req) {
                    w.al_extents = Some(ext);
                }
            }
            if !replicate {
                // Local only: record the difference before writing, and move to a new
                // generation if this is the first change the peer will lack.
                let (first, n) = blocks_touched(offset, len);
                self.set_bits(first, n);
                if self.role == Role::Primary && self.gens.bitmap == 0 {
                    let g = self.new_generation();
                    self.gens.start_new_current(g);
                    self.persist_superblock();
                }
            }
            let meta_ticket = self.meta_enqueued;
            if let Some(w) = self.writes.get_mut(&req) {
                w.wait_meta = meta_ticket;
            }
            if self.meta_done < meta_ticket {
                // Activity log or superblock first; later writes queue behind.
                return;
            }
            let (data, fua) = {
                let w = &self.writes[&req];
                (w.data.clone(), w.fua)
            };
            let protected = replicate && self.peer.is_some_and(|p| p.disk == DiskState::UpToDate);
            // Protocol C promises the write survives any single failure. When no
            // up-to-date peer holds a copy (disconnected, or the peer is a sync target),
            // our own disk must: the local write is forced durable.
            let local_fua = fua || (self.cfg.protocol == Protocol::C && !protected);
            if replicate {
                let wire_id = self.next_wire_id;
                self.next_wire_id += 1;
                self.wire_ids.insert(wire_id, req);
                self.send(Frame::Data {
                    id: wire_id,
                    sector: offset / SECTOR_BYTES,
                    epoch: self.epoch,
                    fua,
                    data: data.clone(),
                });
                self.sent_bytes += len;
                let held = self.writes.get(&req).and_then(|w| w.al_extents.clone());
                if let Some(ext) = &held {
                    self.al.hold(ext.clone());
                }
                self.transfer_log.push_back((self.epoch, offset, len, held));
                self.epoch_writes += 1;
            }
            if local_needed {
                let io = self.io(Io::AppWrite(req));
                self.outputs.push_back(Output::WriteLocal {
                    io,
                    offset_bytes: offset,
                    data,
                    fua: local_fua,
                });
            }
            if let Some(w) = self.writes.get_mut(&req) {
                w.issued = true;
                w.local_fua = local_fua;
                w.local_needed = local_needed;
                w.peer = if replicate {
                    PeerLeg::Sent {
                        received: false,
                        written: false,
                        protected,
                    }
                } else {
                    PeerLeg::None
                };
            }
            if replicate && self.epoch_writes >= self.cfg.epoch_max_writes {
                self.close_epoch();
            }
            self.try_complete_write(req);
        }
    }

    fn overlaps_inflight(&self, req: u64, offset: u64, len: u64) -> bool {
        let end = offset + len;
        for other in &self.write_order {
            if *other == req {
                break;
            }
            if let Some(w) = self.writes.get(other) {
                let o_end = w.offset + w.data.len() as u64;
                if w.offset < end && offset < o_end && (!w.issued || w.local_done.is_none()) {
                    return true;
                }
            }
        }
        self.resync_reads_inflight
            .iter()
            .any(|(o, l)| *o < end && offset < o + l)
            || self.peer_busy(offset, len)
    }

    fn try_complete_write(&mut self, req: u64) {
        let Some(w) = self.writes.get(&req) else {
            return;
        };
        if !w.issued {
            return;
        }
        if w.local_needed && w.local_done.is_none() {
            return;
        }
        let local_ok = !w.local_needed || matches!(w.local_done, Some(Ok(())));
        if self.cfg.protocol == Protocol::C
            && matches!(w.peer, PeerLeg::Lost)
            && w.local_needed
            && local_ok
            && !w.local_fua
            && w.lost_flush != Some(true)
        {
            // The peer's copy is gone and ours may sit in a volatile cache: make it
            // durable before acknowledging under C.
            if w.lost_flush.is_none() {
                if let Some(w) = self.writes.get_mut(&req) {
                    w.lost_flush = Some(false);
                }
                let io = self.io(Io::LostFlush(req));
                self.outputs.push_back(Output::FlushLocal { io });
            }
            return;
        }
        let (peer_ok, peer_pending, protected) = match w.peer {
            PeerLeg::None | PeerLeg::Lost => (false, false, false),
            PeerLeg::Sent {
                received,
                written,
                protected,
            } => {
                let ok = if !w.local_needed {
                    // Without a local copy only the peer's disk holds it.
                    written
                } else {
                    match self.cfg.protocol {
                        Protocol::A => true,
                        Protocol::B => received || written,
                        Protocol::C => written,
                    }
                };
                (ok, !ok, protected)
            }
        };
        if peer_pending {
            return;
        }
        let result = if peer_ok && protected {
            // A copy on an up-to-date peer at the promised level exists.
            Ok(WriteAck { replicated: true })
        } else if local_ok {
            Ok(WriteAck { replicated: false })
        } else {
            Err(RequestError::Io(
                "local write failed and no peer copy".into(),
            ))
        };
        if let Ok(a) = &result {
            // The promise: never acknowledge before durable at the promised level.
            assert!(
                local_ok || a.replicated,
                "write acknowledged with neither a local nor a peer copy"
            );
        }
        self.finish_write(req, result);
    }

    fn finish_write(&mut self, req: u64, result: Result<WriteAck, RequestError>) {
        if let Some(w) = self.writes.remove(&req) {
            if let Some(ext) = w.al_extents {
                self.al.end(ext);
            }
            if let Some(i) = self.write_order.iter().position(|r| *r == req) {
                self.write_order.remove(i);
            }
        }
        self.outputs.push_back(Output::WriteDone { req, result });
    }

    fn try_complete_flush(&mut self, req: u64) {
        let Some(f) = self.flushes.get(&req) else {
            return;
        };
        if !f.local_done || f.epoch.is_some() {
            return;
        }
        self.flushes.remove(&req);
        self.outputs.push_back(Output::FlushDone {
            req,
            result: Ok(()),
        });
    }

    // ------------------------------------------------------------------ local I/O

    fn io(&mut self, kind: Io) -> IoId {
        let id = self.next_io;
        self.next_io += 1;
        self.ios.insert(id, (kind, self.link_gen));
        id
    }

    fn io_on_link(&mut self, kind: Io, link_gen: u64) -> IoId {
        let id = self.next_io;
        self.next_io += 1;
        self.ios.insert(id, (kind, link_gen));
        id
    }

    /// Whether replicated or resync writes from the peer touch this range (queued or in
    /// flight): local writes and resync reads of the range must wait for them.
    fn peer_busy(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        self.peer_writes_inflight
            .iter()
            .any(|(o, l)| *o < end && offset < o + l)
            || self.peer_ops.iter().any(|(op, _)| match op {
                PeerOp::Write {
                    offset: o, data, ..
                }
                | PeerOp::Resync { offset: o, data } => *o < end && offset < o + data.len() as u64,
                PeerOp::Barrier { .. } => false,
            })
    }

    fn on_io_done(&mut self, io: IoId, result: Result<Option<Bytes>, IoFailure>) {
        let Some((kind, link_gen)) = self.ios.remove(&io) else {
            return;
        };
        // Completions that belong to an earlier link must not talk to the new one.
        let same_link = link_gen == self.link_gen;
        let failed = result.is_err();
        match kind {
            Io::Meta => {
                self.meta_inflight = false;
                if failed {
                    self.detach("metadata write failed");
                }
                self.meta_done += 1;
            }
            Io::AppWrite(req) => {
                if failed {
                    self.detach("write failed");
                }
                if let Some(w) = self.writes.get_mut(&req) {
                    w.local_done = Some(result.map(|_| ()));
                }
                self.try_complete_write(req);
            }
            Io::AppRead(req) => match result {
                Ok(Some(data)) => {
                    self.reads.remove(&req);
                    self.outputs.push_back(Output::ReadDone {
                        req,
                        result: Ok(data),
                    });
                }
                _ => {
                    self.detach("read failed");
                    if let Some((o, l)) = self.reads.get(&req).copied() {
                        self.start_read(req, o, l);
                    }
                }
            },
            Io::LostFlush(req) => {
                if failed {
                    self.detach("flush failed");
                }
                if let Some(w) = self.writes.get_mut(&req) {
                    w.lost_flush = Some(true);
                    if failed {
                        w.local_done = Some(Err(IoFailure("flush failed".into())));
                    }
                }
                self.try_complete_write(req);
            }
            Io::AppFlush(req) => {
                if failed {
                    self.detach("flush failed");
                }
                if let Some(f) = self.flushes.get_mut(&req) {
                    f.local_done = true;
                }
                self.try_complete_flush(req);
            }
            Io::PeerWrite { id, offset, len } => {
                if let Some(i) = self
                    .peer_writes_inflight
                    .iter()
                    .position(|r| *r == (offset, len))
                {
                    self.peer_writes_inflight.swap_remove(i);
                }
                if failed {
                    self.detach("replicated write failed");
                } else if !same_link {
                } else if self.cfg.protocol == Protocol::C
                    || self.peer.is_some_and(|p| p.disk == DiskState::Diskless)
                {
                    self.send(Frame::AckWritten { id });
                }
            }
            Io::PeerFlush { epoch } => {
                self.peer_flush_inflight = false;
                if failed {
                    self.detach("flush failed");
                }
                if same_link {
                    self.send(Frame::BarrierAck { epoch });
                }
            }
            Io::ResyncWrite { offset, len } => {
                if let Some(i) = self
                    .peer_writes_inflight
                    .iter()
                    .position(|r| *r == (offset, len))
                {
                    self.peer_writes_inflight.swap_remove(i);
                }
                let (first, n) = blocks_covered(offset, len);
                if !same_link {
                    // The bits stay: the new link's resync asks for the range again.
                } else if let Some(p) = &mut self.planner {
                    p.complete(first, n, !failed);
                }
                if failed {
                    self.detach("resync write failed");
                } else if same_link && self.conn == ConnState::SyncTarget {
                    // Written with FUA: durable, so the bits may go on both sides.
                    self.clear_bits(first, n);
                    self.send(Frame::ResyncAck {
                        sector: offset / SECTOR_BYTES,
                        len_bytes: len as u32,
                    });
                }
            }
            Io::CsumRead { id, offset } => match result {
                Ok(Some(data)) if same_link && self.conn == ConnState::SyncTarget => {
                    let digest: [u8; 32] = Sha256::digest(&data).into();
                    self.send(Frame::ResyncChecksum {
                        id,
                        sector: offset / SECTOR_BYTES,
                        len_bytes: data.len() as u32,
                        digest,
                    });
                }
                Ok(_) => {}
                Err(_) => self.detach("checksum read failed"),
            },
            Io::ResyncRead { id, offset, digest } => {
                if let Some(i) = self
                    .resync_reads_inflight
                    .iter()
                    .position(|r| r.0 == offset)
                {
                    self.resync_reads_inflight.swap_remove(i);
                }
                match result {
                    Ok(Some(data))
                        if same_link
                            && self.conn == ConnState::SyncSource
                            && digest
                                .is_some_and(|d| d == <[u8; 32]>::from(Sha256::digest(&data))) =>
                    {
                        self.send(Frame::ResyncInSync {
                            id,
                            sector: offset / SECTOR_BYTES,
                            len_bytes: data.len() as u32,
                        });
                    }
                    Ok(Some(data)) if same_link && self.conn == ConnState::SyncSource => {
                        self.sent_bytes += data.len() as u64;
                        self.resync_moved_bytes += data.len() as u64;
                        self.send(Frame::ResyncData {
                            id,
                            sector: offset / SECTOR_BYTES,
                            data,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.detach("resync read failed");
                    }
                }
            }
            Io::PeerRead { .. } if !same_link => {}
            Io::ChecksumRead { .. } if !same_link => {}
            Io::VerifyRead { .. } if !same_link => {}
            Io::PeerRead { id } => match result {
                Ok(Some(data)) => {
                    self.sent_bytes += data.len() as u64;
                    self.send(Frame::ReadReply { id, data });
                }
                _ => {
                    self.detach("read for peer failed");
                    self.send(Frame::ReadError { id });
                }
            },
            Io::VerifyRead { id, offset } => {
                if let Ok(Some(data)) = result {
                    let digest: [u8; 32] = Sha256::digest(&data).into();
                    self.send(Frame::ChecksumRequest {
                        id,
                        sector: offset / SECTOR_BYTES,
                        len_bytes: data.len() as u32,
                        digest,
                    });
                } else {
                    self.verify_inflight = self.verify_inflight.saturating_sub(1);
                    self.detach("verify read failed");
                }
            }
            Io::ChecksumRead { id, offset, digest } => {
                if let Ok(Some(data)) = result {
                    let mine: [u8; 32] = Sha256::digest(&data).into();
                    let in_sync = mine == digest;
                    let len = data.len() as u64;
                    if !in_sync {
                        let (first, n) = blocks_touched(offset, len);
                        self.set_bits(first, n);
                    }
                    self.send(Frame::ChecksumReply {
                        id,
                        sector: offset / SECTOR_BYTES,
                        len_bytes: len as u32,
                        in_sync,
                    });
                } else {
                    self.detach("checksum read failed");
                }
            }
        }
    }

    /// `on-io-error detach`: drop the backing disk; a primary keeps serving through the
    /// peer.
    fn detach(&mut self, _why: &str) {
        if self.disk == DiskState::Diskless {
            return;
        }
        self.disk = DiskState::Diskless;
        if self.conn.link_up() {
            self.send_state();
            if matches!(
                self.conn,
                ConnState::SyncSource | ConnState::SyncTarget | ConnState::VerifySource
            ) {
                self.drop_link("local disk detached");
            }
        }
    }

    // ------------------------------------------------------------------ metadata

    fn enqueue_meta(&mut self, w: MetaWrite) {
        if self.disk == DiskState::Diskless {
            return;
        }
        self.meta_queue.push_back(w);
        self.meta_enqueued += 1;
    }

    fn persist_superblock(&mut self) {
        let update = SuperblockUpdate {
            generations: self.gens,
            flags: self.flags,
        };
        self.enqueue_meta(MetaWrite::Superblock(update));
    }

    fn bitmap_block(&self, index: u32) -> MetaWrite {
        let words = self.bitmap.words();
        let start = (index as usize * BITMAP_WORDS_PER_BLOCK).min(words.len());
        let end = (start + BITMAP_WORDS_PER_BLOCK).min(words.len());
        MetaWrite::BitmapBlock {
            index,
            words: words[start..end].to_vec(),
        }
    }

    fn persist_bitmap_for_extent(&mut self, extent: u32) {
        let first_block = u64::from(extent) * (activity_log::EXTENT_BYTES / BLOCK_BYTES);
        let n = activity_log::EXTENT_BYTES / BLOCK_BYTES;
        let first = (first_block / 64 / BITMAP_WORDS_PER_BLOCK as u64) as u32;
        let last = ((first_block + n - 1) / 64 / BITMAP_WORDS_PER_BLOCK as u64) as u32;
        for b in first..=last {
            if self.bitmap_dirty_blocks.remove(&b) {
                let w = self.bitmap_block(b);
                self.enqueue_meta(w);
            }
        }
    }

    fn persist_all_dirty_bitmap(&mut self) {
        let blocks: Vec<u32> = std::mem::take(&mut self.bitmap_dirty_blocks)
            .into_iter()
            .collect();
        for b in blocks {
            let w = self.bitmap_block(b);
            self.enqueue_meta(w);
        }
        self.bitmap_persisted_ms = self.now_ms;
    }

    fn persist_whole_bitmap(&mut self) {
        let n = self
            .bitmap
            .words()
            .len()
            .div_ceil(BITMAP_WORDS_PER_BLOCK)
            .max(1);
        self.bitmap_dirty_blocks.clear();
        for b in 0..n as u32 {
            let w = self.bitmap_block(b);
            self.enqueue_meta(w);
        }
    }

    fn mark_bitmap_dirty(&mut self, first_block: u64, n: u64) {
        if n == 0 {
            return;
        }
        let per = 64 * BITMAP_WORDS_PER_BLOCK as u64;
        for b in (first_block / per)..=((first_block + n - 1) / per) {
            self.bitmap_dirty_blocks.insert(b as u32);
        }
    }

    fn set_bits(&mut self, first: u64, n: u64) {
        if self.bitmap.set_range(first, n) > 0 {
            self.mark_bitmap_dirty(first, n);
        }
    }

    fn clear_bits(&mut self, first: u64, n: u64) {
        if self.bitmap.clear_range(first, n) > 0 {
            self.mark_bitmap_dirty(first, n);
        }
    }

    fn issue_meta(&mut self) {
        if self.meta_inflight {
            return;
        }
        if let Some(w) = self.meta_queue.pop_front() {
            let io = self.io(Io::Meta);
            self.meta_inflight = true;
            self.outputs.push_back(Output::PersistMeta { io, write: w });
        }
    }

    fn new_generation(&mut self) -> u64 {
        // splitmix64 over the seeded state; never 0 or JUST_CREATED.
        loop {
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z > generation::JUST_CREATED {
                return z;
            }
        }
    }

    fn safety_check_promotion(&self, force: bool) {
        assert!(
            force
                || matches!(
                    self.disk,
                    DiskState::UpToDate | DiskState::Consistent | DiskState::Diskless
                ),
            "promotion on {:?} data without force",
            self.disk
        );
    }

    // ------------------------------------------------------------------ link

    fn send(&mut self, f: Frame) {
        if self.conn.link_up() {
            self.outputs.push_back(Output::Send(f));
        }
    }

    fn state_report(&self) -> StateReport {
        let mut flags = 0;
        if self.flags.crashed_primary {
            flags |= state_flags::CRASHED_PRIMARY;
        }
        if self.discard_my_data {
            flags |= state_flags::DISCARD_MY_DATA;
        }
        if self.flags.primary_at_split {
            flags |= state_flags::PRIMARY_AT_SPLIT;
        }
        StateReport {
            protocol: self.cfg.protocol.code(),
            role: u8::from(self.role == Role::Primary),
            disk: self.disk.code(),
            node_id: self.node_id,
            generations: self.gens.to_array(),
            bitmap_bits: self.bitmap.count(),
            size_bytes: self.size_bytes,
            flags,
        }
    }

    fn send_state(&mut self) {
        let r = self.state_report();
        self.send(Frame::State(r));
    }

    fn on_connected(&mut self) {
        if self.conn != ConnState::Connecting {
            return;
        }
        self.conn = ConnState::Handshaking;
        self.link_gen += 1;
        self.wire_ids.clear();
        self.peer = None;
        self.last_rx_ms = self.now_ms;
        self.link_up_ms = self.now_ms;
        self.last_ping_ms = self.now_ms;
        self.bitmap_received = false;
        self.bitmap_sent = false;
        self.pending_decision = None;
        self.epoch = 1;
        self.epoch_writes = 0;
        self.send_state();
    }

    /// We decided to drop the link.
    fn drop_link(&mut self, reason: &str) {
        if !self.conn.link_up() {
            return;
        }
        self.outputs.push_back(Output::Disconnect {
            reason: reason.to_string(),
        });
        self.on_link_lost(reason);
    }

    fn on_link_lost(&mut self, reason: &str) {
        if !self.conn.link_up() {
            return;
        }
        self.last_disconnect_reason = Some(reason.to_string());
        let was_primary = self.role == Role::Primary;
        // Everything the peer may not have made durable becomes dirty.
        let tl: Vec<_> = self.transfer_log.drain(..).collect();
        for (_, o, l, held) in tl {
            let (f, n) = blocks_touched(o, l);
            self.set_bits(f, n);
            if let Some(ext) = held {
                self.al.end(ext);
            }
        }
        let reqs: Vec<u64> = self.write_order.iter().copied().collect();
        for r in &reqs {
            if let Some(w) = self.writes.get_mut(r)
                && let PeerLeg::Sent { .. } = w.peer
            {
                w.peer = PeerLeg::Lost;
                let (f, n) = blocks_touched(w.offset, w.data.len() as u64);
                self.bitmap.set_range(f, n);
                self.mark_bitmap_dirty(f, n);
            }
        }
        if was_primary && self.disk != DiskState::Diskless {
            self.flags.primary_at_split = true;
            if self.bitmap.count() > 0 {
                let g = self.new_generation();
                self.gens.start_new_current(g);
            }
        }
        // Resync and verify state goes; the bitmap keeps what is left.
        if self.conn == ConnState::SyncTarget {
            self.disk = DiskState::Inconsistent;
        }
        self.planner = None;
        self.resync_reqs.clear();
        self.resync_reads_waiting.clear();
        self.verify_inflight = 0;
        self.peer = None;
        self.conn = ConnState::Connecting;
        self.persist_all_dirty_bitmap();
        self.persist_superblock();
        // Requests that waited for the peer complete on their local result; pending
        // flushes no longer wait for a barrier ack; reads through the peer fail.
        for r in reqs {
            self.try_complete_write(r);
        }
        let fl: Vec<u64> = self.flushes.keys().copied().collect();
        for f in fl {
            if let Some(x) = self.flushes.get_mut(&f) {
                x.epoch = None;
            }
            self.try_complete_flush(f);
        }
        if self.disk == DiskState::Diskless {
            let rd: Vec<u64> = self.reads.keys().copied().collect();
            for r in rd {
                self.reads.remove(&r);
                self.outputs.push_back(Output::ReadDone {
                    req: r,
                    result: Err(RequestError::Io("peer lost".into())),
                });
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.now_ms;
        if self.conn.link_up() {
            if now.saturating_sub(self.last_rx_ms) > self.cfg.ping_timeout_ms {
                self.drop_link("ping timeout");
            } else if self.conn == ConnState::Handshaking
                && self.peer.is_none()
                && now.saturating_sub(self.link_up_ms) > self.cfg.ping_timeout_ms
            {
                // Pings keep a link alive, but a link whose peer never told us its state
                // can never leave the handshake: drop it and let the driver dial again
                // (a lost or misrouted `State` must not park the resource for good).
                self.drop_link("handshake timeout: no state from the peer");
            } else if now.saturating_sub(self.last_ping_ms) >= self.cfg.ping_interval_ms {
                self.last_ping_ms = now;
                self.send(Frame::Ping);
            }
        }
        if !self.bitmap_dirty_blocks.is_empty()
            && now.saturating_sub(self.bitmap_persisted_ms) >= self.cfg.bitmap_persist_interval_ms
        {
            self.persist_all_dirty_bitmap();
        }
    }

    fn on_frame(&mut self, f: Frame) {
        if !self.conn.link_up() {
            return;
        }
        self.last_rx_ms = self.now_ms;
        match f {
            Frame::State(s) => self.on_peer_state(s),
            Frame::Ping => self.send(Frame::PingAck),
            Frame::PingAck => {}
            Frame::Data {
                id,
                sector,
                epoch: _,
                fua,
                data,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if !self.valid_range(offset, data.len() as u64)
                    || self.role == Role::Primary
                    || !self.conn.replicating()
                {
                    self.drop_link("unexpected or invalid data frame");
                    return;
                }
                self.received_bytes += data.len() as u64;
                if self.cfg.protocol == Protocol::B {
                    self.send(Frame::AckReceived { id });
                }
                if self.disk == DiskState::Diskless {
                    return;
                }
                self.peer_ops.push_back((
                    PeerOp::Write {
                        id,
                        offset,
                        data,
                        fua,
                    },
                    self.link_gen,
                ));
            }
            Frame::Barrier { epoch } => {
                if self.disk == DiskState::Diskless {
                    self.send(Frame::BarrierAck { epoch });
                } else {
                    self.peer_ops
                        .push_back((PeerOp::Barrier { epoch }, self.link_gen));
                }
            }
            Frame::AckReceived { id } => {
                let Some(id) = self.wire_ids.get(&id).copied() else {
                    return;
                };
                if let Some(w) = self.writes.get_mut(&id)
                    && let PeerLeg::Sent { received, .. } = &mut w.peer
                {
                    *received = true;
                }
                self.try_complete_write(id);
            }
            Frame::AckWritten { id } => {
                let Some(id) = self.wire_ids.remove(&id) else {
                    return;
                };
                if let Some(w) = self.writes.get_mut(&id)
                    && let PeerLeg::Sent { written, .. } = &mut w.peer
                {
                    *written = true;
                }
                self.try_complete_write(id);
            }
            Frame::BarrierAck { epoch } => {
                while self.transfer_log.front().is_some_and(|t| t.0 <= epoch) {
                    if let Some((_, _, _, Some(ext))) = self.transfer_log.pop_front() {
                        self.al.end(ext);
                    }
                }
                let fl: Vec<u64> = self
                    .flushes
                    .iter()
                    .filter(|(_, f)| f.epoch.is_some_and(|e| e <= epoch))
                    .map(|(r, _)| *r)
                    .collect();
                for r in fl {
                    if let Some(f) = self.flushes.get_mut(&r) {
                        f.epoch = None;
                    }
                    self.try_complete_flush(r);
                }
            }
            Frame::Bitmap {
                word_offset,
                words,
                last,
            } => {
                if !matches!(
                    self.conn,
                    ConnState::WaitBitmapSource | ConnState::WaitBitmapTarget
                ) {
                    self.drop_link("unexpected bitmap");
                    return;
                }
                let nwords = self.bitmap.words().len() as u64;
                if word_offset.saturating_add(words.len() as u64) > nwords {
                    self.drop_link("bitmap frame past the end of the bitmap");
                    return;
                }
                self.bitmap.merge_words(word_offset, &words);
                let first_block = word_offset * 64;
                let n =
                    (words.len() as u64 * 64).min(self.bitmap.blocks().saturating_sub(first_block));
                self.mark_bitmap_dirty(first_block, n);
                if last {
                    self.bitmap_received = true;
                    self.maybe_start_resync();
                }
            }
            Frame::ResyncRequest {
                id,
                sector,
                len_bytes,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if self.conn != ConnState::SyncSource
                    || !self.valid_range(offset, u64::from(len_bytes))
                {
                    self.drop_link("unexpected resync request");
                    return;
                }
                self.resync_reads_waiting
                    .push_back((id, offset, u64::from(len_bytes), None));
            }
            Frame::ResyncChecksum {
                id,
                sector,
                len_bytes,
                digest,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if self.conn != ConnState::SyncSource
                    || !self.valid_range(offset, u64::from(len_bytes))
                {
                    self.drop_link("unexpected resync checksum");
                    return;
                }
                self.resync_reads_waiting.push_back((
                    id,
                    offset,
                    u64::from(len_bytes),
                    Some(digest),
                ));
            }
            Frame::ResyncInSync {
                id,
                sector,
                len_bytes,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                let Some((first, n)) = self.resync_reqs.remove(&id) else {
                    self.drop_link("in-sync answer for no request");
                    return;
                };
                if self.conn != ConnState::SyncTarget
                    || offset != first * BLOCK_BYTES
                    || u64::from(len_bytes) != n * BLOCK_BYTES
                {
                    self.drop_link("in-sync answer does not match its request");
                    return;
                }
                // Same bytes on both sides: nothing to write, the bits may go.
                if let Some(p) = &mut self.planner {
                    p.complete(first, n, true);
                }
                self.clear_bits(first, n);
                self.send(Frame::ResyncAck { sector, len_bytes });
            }
            Frame::ResyncData { id, sector, data } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                let Some((first, n)) = self.resync_reqs.remove(&id) else {
                    self.drop_link("resync data for no request");
                    return;
                };
                if self.conn != ConnState::SyncTarget
                    || offset != first * BLOCK_BYTES
                    || data.len() as u64 != n * BLOCK_BYTES
                {
                    self.drop_link("resync data does not match its request");
                    return;
                }
                self.received_bytes += data.len() as u64;
                self.resync_moved_bytes += data.len() as u64;
                self.peer_ops
                    .push_back((PeerOp::Resync { offset, data }, self.link_gen));
            }
            Frame::ResyncAck { sector, len_bytes } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if self.conn == ConnState::SyncSource
                    && self.valid_range(offset, u64::from(len_bytes))
                {
                    let (first, n) = blocks_covered(offset, u64::from(len_bytes));
                    self.clear_bits(first, n);
                    self.resync_source_done_bytes += u64::from(len_bytes);
                }
            }
            Frame::ResyncFinished => {
                if self.conn != ConnState::SyncSource {
                    self.drop_link("unexpected resync finished");
                    return;
                }
                if self.bitmap.count() != 0 {
                    self.drop_link("resync ended with dirty blocks on the source");
                    return;
                }
                self.gens.resync_finished_on_source();
                self.flags.crashed_primary = false;
                self.flags.primary_at_split = false;
                self.flags.peer_outdated = false;
                self.persist_all_dirty_bitmap();
                self.persist_superblock();
                self.conn = ConnState::Connected;
                let g = self.gens.to_array();
                self.send(Frame::ResyncComplete { generations: g });
                if let Some(p) = &mut self.peer {
                    p.disk = DiskState::UpToDate;
                }
            }
            Frame::ResyncComplete { generations } => {
                if self.conn != ConnState::SyncTarget || self.bitmap.count() != 0 {
                    self.drop_link("unexpected resync complete");
                    return;
                }
                let src = Generations::from_array(generations);
                self.gens = Generations {
                    current: src.current,
                    bitmap: 0,
                    history: src.history,
                };
                self.flags.consistent = true;
                self.flags.outdated = false;
                self.flags.crashed_primary = false;
                self.flags.primary_at_split = false;
                self.disk = DiskState::UpToDate;
                // The handshake chose the source's data, so the source made itself up to
                // date after it had reported its state: that report is stale.
                if let Some(p) = &mut self.peer {
                    p.disk = DiskState::UpToDate;
                }
                self.planner = None;
                self.conn = ConnState::Connected;
                self.persist_all_dirty_bitmap();
                self.persist_superblock();
                self.send_state();
            }
            Frame::ChecksumRequest {
                id,
                sector,
                len_bytes,
                digest,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if !self.valid_range(offset, u64::from(len_bytes))
                    || self.disk == DiskState::Diskless
                {
                    self.drop_link("invalid checksum request");
                    return;
                }
                let io = self.io(Io::ChecksumRead { id, offset, digest });
                self.outputs.push_back(Output::ReadLocal {
                    io,
                    offset_bytes: offset,
                    len_bytes,
                });
            }
            Frame::ChecksumReply {
                sector,
                len_bytes,
                in_sync,
                ..
            } => {
                if self.conn != ConnState::VerifySource {
                    return;
                }
                self.verify_inflight = self.verify_inflight.saturating_sub(1);
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if !in_sync && self.valid_range(offset, u64::from(len_bytes)) {
                    let (first, n) = blocks_touched(offset, u64::from(len_bytes));
                    self.verify_oos_blocks += n;
                    self.set_bits(first, n);
                }
            }
            Frame::VerifyFinished => {}
            Frame::ReadRequest {
                id,
                sector,
                len_bytes,
            } => {
                let offset = sector.saturating_mul(SECTOR_BYTES);
                if !self.valid_range(offset, u64::from(len_bytes))
                    || self.disk != DiskState::UpToDate
                {
                    self.send(Frame::ReadError { id });
                    return;
                }
                let io = self.io(Io::PeerRead { id });
                self.outputs.push_back(Output::ReadLocal {
                    io,
                    offset_bytes: offset,
                    len_bytes,
                });
            }
            Frame::ReadReply { id, data } => {
                if let Some((_, len)) = self.reads.remove(&id) {
                    if data.len() == len as usize {
                        self.received_bytes += data.len() as u64;
                        self.outputs.push_back(Output::ReadDone {
                            req: id,
                            result: Ok(data),
                        });
                    } else {
                        self.outputs.push_back(Output::ReadDone {
                            req: id,
                            result: Err(RequestError::Io("short read from peer".into())),
                        });
                    }
                }
            }
            Frame::ReadError { id } => {
                if self.reads.remove(&id).is_some() {
                    self.outputs.push_back(Output::ReadDone {
                        req: id,
                        result: Err(RequestError::Io("peer read failed".into())),
                    });
                }
            }
            Frame::AuthChallenge { .. } | Frame::AuthResponse { .. } => {
                self.drop_link("authentication frame after the handshake");
            }
        }
    }

    fn valid_range(&self, offset: u64, len: u64) -> bool {
        len > 0
            && len % SECTOR_BYTES == 0
            && offset % SECTOR_BYTES == 0
            && offset
                .checked_add(len)
                .is_some_and(|e| e <= self.size_bytes)
    }

    fn on_peer_state(&mut self, s: StateReport) {
        let (Some(disk), role) = (
            DiskState::from_code(s.disk),
            if s.role == 1 {
                Role::Primary
            } else {
                Role::Secondary
            },
        ) else {
            self.drop_link("peer sent an unknown disk state");
            return;
        };
        let first = self.peer.is_none();
        self.peer = Some(PeerInfo { role, disk });
        if !first {
            if role == Role::Primary && self.role == Role::Primary {
                self.drop_link("both nodes are primary");
            }
            return;
        }
        if self.conn != ConnState::Handshaking {
            return;
        }
        if s.protocol != self.cfg.protocol.code() {
            self.go_standalone("peer uses another replication protocol");
            return;
        }
        if s.size_bytes != self.size_bytes {
            self.go_standalone("peer disk has another size");
            return;
        }
        if role == Role::Primary && self.role == Role::Primary {
            self.go_standalone("both nodes are primary (split brain)");
            return;
        }
        if self.disk == DiskState::Diskless || disk == DiskState::Diskless {
            // No resync possible; mirror writes if one side has data.
            self.conn = ConnState::Connected;
            return;
        }
        let rule = match self.cfg.protocol {
            Protocol::A => CrashedPrimaryRule::CrashedIsSource,
            Protocol::B | Protocol::C => CrashedPrimaryRule::SurvivorIsSource,
        };
        let peer_gens = Generations::from_array(s.generations);
        let local = HandshakeSide {
            generations: self.gens,
            crashed_primary: self.flags.crashed_primary,
            inconsistent: self.disk == DiskState::Inconsistent,
            node_id: self.node_id,
        };
        let peer_side = HandshakeSide {
            generations: peer_gens,
            crashed_primary: s.flags & state_flags::CRASHED_PRIMARY != 0,
            inconsistent: disk == DiskState::Inconsistent,
            node_id: s.node_id,
        };
        let mut decision = decide(&local, &peer_side, rule);
        self.last_decision = Some(decision);
        // Leftover bits with equal generations (verify found differences, or an
        // interrupted invalidate): resync them, primary (or higher node id) as source.
        if decision == SyncDecision::NoSync
            && self.gens.current == peer_gens.current
            && (self.bitmap.count() > 0 || s.bitmap_bits > 0)
            && self.disk != DiskState::Inconsistent
            && disk != DiskState::Inconsistent
        {
            let source = match (self.role, role) {
                (Role::Primary, _) => true,
                (_, Role::Primary) => false,
                _ => self.node_id > s.node_id,
            };
            decision = SyncDecision::BitmapSync(if source {
                Direction::Source
            } else {
                Direction::Target
            });
        }
        let (dir, full) = match decision {
            SyncDecision::NoSync => {
                if self.disk == DiskState::Inconsistent && disk == DiskState::Inconsistent {
                    // Two fresh disks: wait for `primary --force` on one.
                    self.conn = ConnState::Connected;
                    return;
                }
                self.conn = ConnState::Connected;
                if matches!(self.disk, DiskState::Consistent | DiskState::Outdated)
                    && self.disk != DiskState::Inconsistent
                {
                    self.disk = DiskState::UpToDate;
                }
                if let Some(p) = &mut self.peer
                    && matches!(p.disk, DiskState::Consistent | DiskState::Outdated)
                {
                    p.disk = DiskState::UpToDate;
                }
                if self.flags.crashed_primary || self.flags.primary_at_split {
                    self.flags.crashed_primary = false;
                    self.flags.primary_at_split = false;
                    self.persist_superblock();
                }
                return;
            }
            SyncDecision::BitmapSync(d) => (d, false),
            SyncDecision::FullSync(d) => (d, true),
            SyncDecision::SplitBrain { bitmaps_cover } => {
                let me = SplitBrainSide {
                    changed_blocks: self.bitmap.count(),
                    primary: self.role == Role::Primary,
                    primary_at_split: self.flags.primary_at_split,
                    discard_my_data: self.discard_my_data,
                    node_id: self.node_id,
                };
                let them = SplitBrainSide {
                    changed_blocks: s.bitmap_bits,
                    primary: role == Role::Primary,
                    primary_at_split: s.flags & state_flags::PRIMARY_AT_SPLIT != 0,
                    discard_my_data: s.flags & state_flags::DISCARD_MY_DATA != 0,
                    node_id: s.node_id,
                };
                match resolve(&self.cfg.after_split_brain, &me, &them, bitmaps_cover) {
                    Resolution::Resync(d) => (d, !bitmaps_cover),
                    Resolution::Disconnect => {
                        self.go_standalone("split brain detected: waiting for an operator");
                        return;
                    }
                }
            }
            SyncDecision::UnrelatedData => {
                self.go_standalone("unrelated data: these disks were never peers");
                return;
            }
        };
        if dir == Direction::Target && self.role == Role::Primary {
            self.go_standalone("refusing to become sync target while primary");
            return;
        }
        if dir == Direction::Source && self.disk == DiskState::Inconsistent {
            self.go_standalone("no valid sync source: local data is inconsistent");
            return;
        }
        self.discard_my_data = false;
        if full {
            self.bitmap.set_all();
            self.mark_bitmap_dirty(0, self.bitmap.blocks());
        }
        if dir == Direction::Source
            && matches!(self.disk, DiskState::Consistent | DiskState::Outdated)
        {
            // The handshake chose our data: it is the newest.
            self.disk = DiskState::UpToDate;
            if self.flags.outdated {
                self.flags.outdated = false;
                self.persist_superblock();
            }
        }
        self.conn = match dir {
            Direction::Source => ConnState::WaitBitmapSource,
            Direction::Target => ConnState::WaitBitmapTarget,
        };
        if dir == Direction::Target {
            // Inconsistent on disk before the first resync byte lands.
            self.disk = DiskState::Inconsistent;
            self.flags.consistent = false;
            self.persist_superblock();
        }
        self.send_bitmap();
        self.maybe_start_resync();
    }

    fn go_standalone(&mut self, reason: &str) {
        self.drop_link(reason);
        self.conn = ConnState::StandAlone;
    }

    fn send_bitmap(&mut self) {
        let words = self.bitmap.words().to_vec();
        let chunks = words
            .len()
            .div_ceil(tandem_wire::frame::MAX_BITMAP_WORDS)
            .max(1);
        for i in 0..chunks {
            let s = (i * tandem_wire::frame::MAX_BITMAP_WORDS).min(words.len());
            let e = (s + tandem_wire::frame::MAX_BITMAP_WORDS).min(words.len());
            self.send(Frame::Bitmap {
                word_offset: s as u64,
                words: words[s..e].to_vec(),
                last: i + 1 == chunks,
            });
        }
        self.bitmap_sent = true;
    }

    fn maybe_start_resync(&mut self) {
        if !(self.bitmap_sent && self.bitmap_received) {
            return;
        }
        // Both sides now hold the union of the two bitmaps; persist it so a crash
        // during resync cannot forget a block.
        self.persist_all_dirty_bitmap();
        match self.conn {
            ConnState::WaitBitmapSource => {
                self.conn = ConnState::SyncSource;
                self.resync_source_done_bytes = 0;
                self.resync_source_total_bytes = self.bitmap.dirty_bytes();
                if let Some(p) = &mut self.peer {
                    p.disk = DiskState::Inconsistent;
                }
            }
            ConnState::WaitBitmapTarget => {
                assert!(
                    self.role != Role::Primary,
                    "a primary never becomes sync target"
                );
                self.conn = ConnState::SyncTarget;
                self.resync_finished_sent = false;
                self.resync_reqs.clear();
                self.planner = Some(ResyncPlanner::new(
                    ResyncLimits {
                        rate_bytes_per_s: self.cfg.resync_rate_bytes_per_s,
                        max_request_bytes: self.cfg.resync_request_bytes.min(MAX_DATA_BYTES as u64),
                        max_inflight: self.cfg.resync_inflight.max(1),
                    },
                    &self.bitmap,
                    self.now_ms,
                ));
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------ the pump

    /// Moves every queue as far as it can go. Called after each input.
    fn pump(&mut self) {
        for _ in 0..4 {
            self.issue_writes();
            self.apply_peer_ops();
            self.serve_resync_reads();
            self.plan_resync();
            self.plan_verify();
            self.issue_meta();
        }
    }

    fn apply_peer_ops(&mut self) {
        while let Some((op, _)) = self.peer_ops.front() {
            match op {
                PeerOp::Write { offset, data, .. } | PeerOp::Resync { offset, data } => {
                    let (o, l) = (*offset, data.len() as u64);
                    if self
                        .peer_writes_inflight
                        .iter()
                        .any(|(po, pl)| *po < o + l && o < po + pl)
                    {
                        return;
                    }
                    // A sync target's resync writes wait for "inconsistent" to be durable.
                    if self.meta_done < self.meta_enqueued {
                        return;
                    }
                }
                PeerOp::Barrier { .. } => {
                    if !self.peer_writes_inflight.is_empty() || self.peer_flush_inflight {
                        return;
                    }
                }
            }
            let Some((op, gen_of_link)) = self.peer_ops.pop_front() else {
                return;
            };
            if self.disk == DiskState::Diskless {
                continue;
            }
            match op {
                PeerOp::Write {
                    id,
                    offset,
                    data,
                    fua,
                } => {
                    let len = data.len() as u64;
                    self.peer_writes_inflight.push((offset, len));
                    let io = self.io_on_link(Io::PeerWrite { id, offset, len }, gen_of_link);
                    self.outputs.push_back(Output::WriteLocal {
                        io,
                        offset_bytes: offset,
                        data,
                        fua,
                    });
                }
                PeerOp::Resync { offset, data } => {
                    let len = data.len() as u64;
                    self.peer_writes_inflight.push((offset, len));
                    let io = self.io_on_link(Io::ResyncWrite { offset, len }, gen_of_link);
                    // FUA: the source clears its bits on our ack, so the data must
                    // survive a crash of ours from then on.
                    self.outputs.push_back(Output::WriteLocal {
                        io,
                        offset_bytes: offset,
                        data,
                        fua: true,
                    });
                }
                PeerOp::Barrier { epoch } => {
                    self.peer_flush_inflight = true;
                    let io = self.io_on_link(Io::PeerFlush { epoch }, gen_of_link);
                    self.outputs.push_back(Output::FlushLocal { io });
                }
            }
        }
    }

    fn serve_resync_reads(&mut self) {
        if self.conn != ConnState::SyncSource {
            return;
        }
        let mut waiting = std::mem::take(&mut self.resync_reads_waiting);
        let mut keep = VecDeque::new();
        while let Some((id, offset, len, digest)) = waiting.pop_front() {
            let end = offset + len;
            let busy = self.writes.values().any(|w| {
                w.issued
                    && w.local_done.is_none()
                    && w.offset < end
                    && offset < w.offset + w.data.len() as u64
            });
            if busy || self.peer_busy(offset, len) {
                keep.push_back((id, offset, len, digest));
                continue;
            }
            self.resync_reads_inflight.push((offset, len));
            let io = self.io(Io::ResyncRead { id, offset, digest });
            self.outputs.push_back(Output::ReadLocal {
                io,
                offset_bytes: offset,
                len_bytes: len as u32,
            });
        }
        self.resync_reads_waiting = keep;
    }

    fn plan_resync(&mut self) {
        if self.conn != ConnState::SyncTarget || self.resync_paused {
            return;
        }
        let now = self.now_ms;
        while let Some(p) = &mut self.planner {
            let Some((first, n)) = p.next_request(&self.bitmap, now) else {
                break;
            };
            let id = self.next_resync_id;
            self.next_resync_id += 1;
            self.resync_reqs.insert(id, (first, n));
            let len = (n * BLOCK_BYTES) as u32;
            if self.cfg.checksum_resync {
                // Checksum-based resync: digest our copy first, the source sends data
                // only where it differs.
                let io = self.io(Io::CsumRead {
                    id,
                    offset: first * BLOCK_BYTES,
                });
                self.outputs.push_back(Output::ReadLocal {
                    io,
                    offset_bytes: first * BLOCK_BYTES,
                    len_bytes: len,
                });
            } else {
                self.send(Frame::ResyncRequest {
                    id,
                    sector: first * BLOCK_BYTES / SECTOR_BYTES,
                    len_bytes: len,
                });
            }
        }
        let done = self.bitmap.count() == 0
            && self.planner.as_ref().is_some_and(|p| p.inflight() == 0)
            && !self.resync_finished_sent;
        if done {
            self.resync_finished_sent = true;
            self.send(Frame::ResyncFinished);
        }
    }

    fn plan_verify(&mut self) {
        if self.conn != ConnState::VerifySource {
            return;
        }
        let chunk = self
            .cfg
            .resync_request_bytes
            .clamp(BLOCK_BYTES, MAX_DATA_BYTES as u64);
        while self.verify_inflight < self.cfg.resync_inflight.max(1)
            && self.verify_cursor < self.size_bytes
        {
            let offset = self.verify_cursor;
            let len = chunk.min(self.size_bytes - offset);
            self.verify_cursor += len;
            self.verify_inflight += 1;
            let id = self.next_resync_id;
            self.next_resync_id += 1;
            let io = self.io(Io::VerifyRead { id, offset });
            self.outputs.push_back(Output::ReadLocal {
                io,
                offset_bytes: offset,
                len_bytes: len as u32,
            });
        }
        if self.verify_cursor >= self.size_bytes && self.verify_inflight == 0 {
            self.conn = ConnState::Connected;
            self.send(Frame::VerifyFinished);
        }
    }
}
