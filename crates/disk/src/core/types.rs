//! The core's public types: roles and states, metadata, inputs and outputs, tunables and
//! status.

use bytes::Bytes;
use tandem_wire::frame::Frame;

use super::activity_log::AlTransaction;
use super::bitmap::Bitmap;
use super::generation::{Generations, SyncDecision};
use super::policy::AfterSplitBrain;

/// Replication protocol (when a write is acknowledged to the frontend) and disk
/// fencing policy: the configuration's own types.
pub use tandem_config::{DiskFencing, Protocol};

/// The protocol's code in a state report.
pub(crate) fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::A => b'A',
        Protocol::B => b'B',
        Protocol::C => b'C',
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

    pub(crate) fn link_up(self) -> bool {
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
    pub(crate) fn code(self) -> u8 {
        self as u8
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
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
    /// Changes made since the last generation shared with the peer were never
    /// acknowledged (I/O was suspended when the link broke, and stayed so): in a split
    /// brain they may be discarded.
    pub unacked_changes: bool,
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
            | u32::from(self.unacked_changes) << 6
    }
    /// Decodes [`MetaFlags::to_bits`]; None if unknown bits are set.
    pub fn from_bits(b: u32) -> Option<Self> {
        if b >> 7 != 0 {
            return None;
        }
        Some(MetaFlags {
            consistent: b & 1 != 0,
            outdated: b & 2 != 0,
            was_primary: b & 4 != 0,
            crashed_primary: b & 8 != 0,
            peer_outdated: b & 16 != 0,
            primary_at_split: b & 32 != 0,
            unacked_changes: b & 64 != 0,
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
    /// Cannot do it while writes are in flight (for a demotion: also while the peer has
    /// not yet confirmed flushing the writes it was sent; the demotion asked for it).
    #[error("requests in flight, or writes the peer has not yet confirmed flushing")]
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
    /// Alone, with a peer that is neither known outdated nor fenced: the peer may be
    /// primary, or be promoted, with data this side lacks (the disk's fencing policy).
    #[error(
        "the peer is neither known outdated nor fenced: it may be primary or hold newer data (outdate it through the cluster, fence it, or use --force)"
    )]
    PeerNotOutdated,
    /// Alone since this node started, the peer fenced: the peer may hold writes this
    /// copy lacks (it was only `Consistent`, never connected since the start).
    #[error(
        "this copy has not seen its peer since this node started, and the peer (fenced, down) may hold newer writes: wait for it to return, or use --force to go on with this copy"
    )]
    MayBeStale,
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
    /// The link is gone and the peer's copy may still be promoted: establish that it
    /// cannot be — outdate it over the cluster's other paths, or fence it — and answer
    /// with [`super::Core::peer_outdated`], [`super::Core::peer_fenced`] or, where the
    /// policy allows going on, [`super::Core::peer_unreachable`]. I/O stays suspended
    /// until then. Repeated while it lasts.
    FencePeer,
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
    /// What a primary does when the link drops while the peer's copy could still be
    /// promoted (DRBD's `fencing`).
    pub fencing: DiskFencing,
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
            fencing: DiskFencing::ResourceAndStonith,
        }
    }
}

/// Status for `tandem disk status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// How long acknowledged application writes took, arrival to acknowledgement.
    pub write_latency: LatencyHistogram,
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
    /// Barriers the peer confirmed since start (each its flush of an epoch: how a
    /// frontend flush reaches the peer's disk), on a primary.
    pub barrier_acks_received: u64,
    /// Barriers this node flushed and confirmed for its peer since start, on a secondary.
    pub barrier_acks_sent: u64,
    /// Generations.
    pub generations: Generations,
    /// Why the link was last dropped, if it was.
    pub last_disconnect_reason: Option<String>,
    /// Why the backing disk was dropped (`on-io-error detach`): the failed I/O and its
    /// error. Cleared only by taking the disk down and up again.
    pub detach_reason: Option<String>,
    /// Blocks found different by the last online verify.
    pub verify_out_of_sync_blocks: u64,
    /// The last handshake's decision.
    pub last_decision: Option<SyncDecision>,
    /// How long I/O has been suspended, waiting for the peer to be outdated or fenced.
    pub suspended_ms: Option<u64>,
    /// The peer is known outdated (or fenced) since the link last broke.
    pub peer_outdated: bool,
    /// It stopped as primary without demoting and has not resynced since.
    pub crashed_primary: bool,
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
    /// Suspended I/O, if it is: why, and for how long.
    pub suspended: Option<SuspendedReport>,
    /// The peer is known outdated or fenced (promotion alone needs no `--force`).
    pub peer_outdated: bool,
}

/// Why and how long a disk's I/O has been suspended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SuspendedReport {
    /// What it waits for.
    pub reason: &'static str,
    /// Milliseconds so far.
    pub for_ms: u64,
}

/// The one reason I/O is suspended, as status says it.
pub const SUSPENDED_REASON: &str = "waiting for the peer to be outdated or fenced";

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
            suspended: self.suspended_ms.map(|for_ms| SuspendedReport {
                reason: SUSPENDED_REASON,
                for_ms,
            }),
            peer_outdated: self.peer_outdated,
        }
    }
}

/// Upper bounds (milliseconds) of [`LatencyHistogram`]'s buckets. The core's clock
/// counts milliseconds, so a write faster than that lands in the first bucket.
pub const WRITE_LATENCY_BUCKETS_MS: [u64; 11] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000];

/// A fixed-size latency histogram (bounded state, whatever the write count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Per bucket of [`WRITE_LATENCY_BUCKETS_MS`], the writes that took at most that
    /// long and more than the bucket before (not cumulative); slower ones count only in
    /// `count` and `sum_ms`.
    pub buckets: [u64; WRITE_LATENCY_BUCKETS_MS.len()],
    /// Sum of all latencies, ms.
    pub sum_ms: u64,
    /// Writes counted.
    pub count: u64,
}

impl LatencyHistogram {
    /// Counts one write that took `ms`.
    pub fn record(&mut self, ms: u64) {
        if let Some(i) = WRITE_LATENCY_BUCKETS_MS.iter().position(|le| ms <= *le) {
            self.buckets[i] += 1;
        }
        self.sum_ms = self.sum_ms.saturating_add(ms);
        self.count += 1;
    }
}

/// As status shows it: `{"buckets": [[le_seconds, cumulative count]…], "sum": seconds,
/// "count": n}` — the shape of a Prometheus histogram.
impl serde::Serialize for LatencyHistogram {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = WRITE_LATENCY_BUCKETS_MS
            .iter()
            .zip(self.buckets)
            .map(|(le, n)| {
                cumulative += n;
                (*le as f64 / 1000.0, cumulative)
            })
            .collect();
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("buckets", &buckets)?;
        m.serialize_entry("sum", &(self.sum_ms as f64 / 1000.0))?;
        m.serialize_entry("count", &self.count)?;
        m.end()
    }
}
