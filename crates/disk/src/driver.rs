//! The I/O driver: runs one [`Core`] for real, with a file or block device as backing
//! store, [`MetaStore`] for metadata, and an authenticated TCP replication link (tokio).
//!
//! ```text
//!   DriverHandle (frontend + admin) ──cmd──▶ ┌──────────────┐ ◀──frames──┐
//!                                          │  event loop  │            ├─ link socket
//!   blocking I/O (spawn_blocking) ─IoDone─▶│  owns Core   │ ──frames──▶┘
//!   timer (Core::poll_timeout, dial) ─────▶└──────────────┘ ──small writes──▶ page cache
//! ```
//!
//! The loop is the only place that reads the clock. It reads and writes the link socket
//! itself and does small buffered writes in place: at 4 KiB a hand-off to another thread
//! costs more than the write (docs/benchmarks.md). Large aligned writes go around the
//! page cache (`O_DIRECT`) on the blocking pool, as DRBD's lower-device bios do; reads
//! go through the page cache with readahead off (docs/disk.md, section 9, says why).
//!
//! Connection rule: the node whose replication address sorts lower dials, the other
//! accepts; both authenticate each other with a challenge/response over the shared
//! secret before the core sees the link.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{
    AdminError, Config, ConnState, Core, Input, IoFailure, Output, RequestError, Status, WriteAck,
};
use crate::meta::{MetaError, MetaLocation, MetaStore};
use tandem_wire::frame::{self, Frame, FrameKey, FrameType, HEADER_LEN, Header};

/// Everything one node of one resource needs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Backing file or block device.
    pub backing: PathBuf,
    /// Where the metadata is.
    pub meta: MetaLocation,
    /// Our replication address (we listen here).
    pub listen: SocketAddr,
    /// The peer's replication address.
    pub peer: SocketAddr,
    /// Shared secret for the link's challenge/response.
    pub secret: Vec<u8>,
    /// Longest wait between two connection attempts (DRBD's `connect-int`): the
    /// dialling side retries after 0.5 s, doubling the wait up to this.
    pub connect_interval: Duration,
    /// Core tunables.
    pub core: Config,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Metadata refused.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// Backing store or socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The node has stopped.
    #[error("node stopped")]
    Stopped,
    /// The kernel gave no random bytes. Challenge nonces and generation ids depend on
    /// them, so there is no weaker fallback.
    #[error("no random bytes from the kernel (getrandom): {0}")]
    Random(String),
}

enum Cmd {
    Write(
        u64,
        Bytes,
        bool,
        oneshot::Sender<Result<WriteAck, RequestError>>,
    ),
    Read(u64, u32, oneshot::Sender<Result<Bytes, RequestError>>),
    Flush(oneshot::Sender<Result<(), RequestError>>),
    Promote(bool, oneshot::Sender<Result<(), AdminError>>),
    Demote(oneshot::Sender<Result<(), AdminError>>),
    Connect(bool),
    Disconnect,
    PeerFenced(oneshot::Sender<()>),
    PeerOutdated(oneshot::Sender<()>),
    PeerUnreachable(oneshot::Sender<()>),
    Outdate(oneshot::Sender<Result<(), AdminError>>),
    Leave(oneshot::Sender<Result<(), AdminError>>),
    Verify(oneshot::Sender<Result<(), AdminError>>),
    Invalidate(oneshot::Sender<Result<(), AdminError>>),
    Status(oneshot::Sender<Status>),
    SetResyncPaused(bool),
    StartupWait(u64, u64, oneshot::Sender<u64>),
    Shutdown(oneshot::Sender<()>),
}

enum Event {
    IoDone(u64, Result<Option<Bytes>, IoFailure>),
    /// An authenticated connection and its session keys. Nothing past the handshake has
    /// been read from it: the event loop reads its frames once it has made this
    /// connection the link (were they read earlier, the peer's first `State` could reach
    /// the loop before `LinkUp`, be dropped as a frame of an unknown link, and leave the
    /// core in `Handshaking`).
    LinkUp(u64, OwnedReadHalf, OwnedWriteHalf, LinkKeys),
    /// Authentication failed.
    LinkDown(u64),
    /// A dial failed; `refused` when the peer's machine answered that nothing listens
    /// (its disk service is not up yet: it will be soon, and a refused dial costs
    /// nothing), rather than a timeout or an unreachable network.
    DialFailed {
        refused: bool,
    },
}

/// A running node: the frontend and admin interface.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Cmd>,
    size_bytes: u64,
    link: watch::Receiver<LinkState>,
}

/// The link as the event loop last left it, published on a `watch` channel
/// ([`DriverHandle::link`]) after every pass of the loop.
///
/// A watch channel keeps only the newest value, so a waiter may not see every state the
/// link passes through; `handshakes` is what makes "the peer was here" impossible to
/// miss: it only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// The core's connection state.
    pub connection: ConnState,
    /// How many handshakes have completed since the node started (the link reached a
    /// state past `Handshaking`: bitmap exchange, connected, resync or verify).
    pub handshakes: u64,
    /// I/O is suspended until the peer is outdated or fenced (disk fencing).
    pub suspended: bool,
    /// How often the core has asked for the peer to be outdated or fenced
    /// (`Output::FencePeer`); the driver's owner acts on every increase.
    pub fence_peer_requests: u64,
}

impl DriverHandle {
    /// Usable size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The link's state, kept current by the event loop itself (no request, no polling):
    /// `changed()` / `wait_for()` wake on every change it makes.
    pub fn link(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Writes `data` at `offset_bytes` (primary only).
    pub async fn write(
        &self,
        offset_bytes: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<Result<WriteAck, RequestError>, DriverError> {
        self.ask(|tx| Cmd::Write(offset_bytes, data, fua, tx)).await
    }

    /// Reads `len_bytes` at `offset_bytes` (primary only).
    pub async fn read(
        &self,
        offset_bytes: u64,
        len_bytes: u32,
    ) -> Result<Result<Bytes, RequestError>, DriverError> {
        self.ask(|tx| Cmd::Read(offset_bytes, len_bytes, tx)).await
    }

    /// Makes acknowledged writes durable (per protocol, on both sides).
    pub async fn flush(&self) -> Result<Result<(), RequestError>, DriverError> {
        self.ask(Cmd::Flush).await
    }

    /// `tandem disk primary [--force]`.
    pub async fn promote(&self, force: bool) -> Result<Result<(), AdminError>, DriverError> {
        self.ask(|tx| Cmd::Promote(force, tx)).await
    }

    /// `tandem disk secondary`: answers once the superblock on disk says secondary.
    pub async fn demote(&self) -> Result<Result<(), AdminError>, DriverError> {
        self.ask(Cmd::Demote).await
    }

    /// `tandem disk connect [--discard-my-data]`.
    pub async fn connect(&self, discard_my_data: bool) -> Result<(), DriverError> {
        self.tx
            .send(Cmd::Connect(discard_my_data))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// The cluster fenced the peer: drop the link now, the peer counts as outdated
    /// (see `Core::peer_fenced`). Returns once the core has taken it in.
    pub async fn peer_fenced(&self) -> Result<(), DriverError> {
        self.ask(Cmd::PeerFenced).await
    }

    /// The cluster outdated the peer (its answer came after its metadata was durable):
    /// suspended I/O resumes (`Core::peer_outdated`).
    pub async fn peer_outdated(&self) -> Result<(), DriverError> {
        self.ask(Cmd::PeerOutdated).await
    }

    /// The cluster could not reach the peer (`Core::peer_unreachable`: under
    /// `resource-only` this side goes on alone).
    pub async fn peer_unreachable(&self) -> Result<(), DriverError> {
        self.ask(Cmd::PeerUnreachable).await
    }

    /// The peer lost its link and asks this side to outdate itself: answers once the
    /// outdated mark is durable (`Core::outdate`; a primary refuses).
    pub async fn outdate(&self) -> Result<Result<(), AdminError>, DriverError> {
        self.ask(Cmd::Outdate).await
    }

    /// Before a clean stop: a secondary whose up-to-date peer goes on outdates itself
    /// and tells the peer (`Core::leave`); answers once that is durable and sent.
    pub async fn leave(&self) -> Result<(), DriverError> {
        self.ask(Cmd::Leave)
            .await?
            .map_err(|_| DriverError::Stopped)
    }

    /// `tandem disk disconnect`.
    pub async fn disconnect(&self) -> Result<(), DriverError> {
        self.tx
            .send(Cmd::Disconnect)
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// `tandem disk verify`.
    pub async fn verify(&self) -> Result<Result<(), AdminError>, DriverError> {
        self.ask(Cmd::Verify).await
    }

    /// `tandem disk invalidate`.
    pub async fn invalidate(&self) -> Result<Result<(), AdminError>, DriverError> {
        self.ask(Cmd::Invalidate).await
    }

    /// Status snapshot.
    pub async fn status(&self) -> Result<Status, DriverError> {
        self.ask(Cmd::Status).await
    }

    /// Holds back (or releases) this disk's resync requests: the daemon runs resync
    /// groups in order with it (see `core::resync::groups_allowed`).
    pub async fn set_resync_paused(&self, paused: bool) -> Result<(), DriverError> {
        self.tx
            .send(Cmd::SetResyncPaused(paused))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// How long startup should wait for the peer (`Core::startup_wait_ms`: the degraded
    /// value when this disk last ran without its peer; 0 = forever).
    pub async fn startup_wait_ms(
        &self,
        wfc_timeout_ms: u64,
        degr_wfc_timeout_ms: u64,
    ) -> Result<u64, DriverError> {
        self.ask(|tx| Cmd::StartupWait(wfc_timeout_ms, degr_wfc_timeout_ms, tx))
            .await
    }

    /// Stops the node (`tandem disk down`): the link closes, metadata stays as it is.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.ask(Cmd::Shutdown).await
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
    let what = what.into();
    move |source| DriverError::Io { what, source }
}

/// `N` bytes from the kernel's random generator (getrandom(2), which waits until it is
/// seeded), or an error: never a weaker fallback such as the process id, which two
/// nodes (or two lab hosts in their own pid namespaces) can share.
fn random_bytes<const N: usize>() -> Result<[u8; N], DriverError> {
    random_bytes_from(getrandom::fill)
}

fn random_bytes_from<const N: usize>(
    fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>,
) -> Result<[u8; N], DriverError> {
    let mut b = [0u8; N];
    fill(&mut b).map_err(|e| DriverError::Random(e.to_string()))?;
    Ok(b)
}

/// The one place this driver reads the clock.
#[allow(clippy::disallowed_methods)]
fn clock_now() -> Instant {
    Instant::now()
}

/// The first retry of a failed dial; later ones wait longer, up to `connect_interval`.
const FIRST_DIAL_WAIT: Duration = Duration::from_millis(500);

/// Frontend commands taken in one pass of the event loop at most.
const CMD_BATCH: usize = 64;

/// Buffered writes up to this size are done by the event loop itself (see the module
/// documentation); larger ones, and forced-unit-access ones, go to the blocking pool.
const INLINE_WRITE_MAX_BYTES: usize = 64 << 10;

/// Writes at least this large, and aligned to [`DIRECT_ALIGN_BYTES`], bypass the page
/// cache.
const DIRECT_MIN_BYTES: usize = 64 << 10;

/// Offset, length and memory alignment of direct writes: 4 KiB suits every device whose
/// logical block is at most 4 KiB, and ext4 and XFS files.
const DIRECT_ALIGN_BYTES: usize = 4096;

/// The backing file or device, opened twice: buffered, and `O_DIRECT` where the file
/// system supports it.
struct Backing {
    file: File,
    direct: Option<File>,
    /// Cleared if the kernel refuses a direct write: from then on all go buffered.
    direct_ok: AtomicBool,
}

/// Opens the backing store. Why the page cache is managed as it is: Linux (6.x, ext4)
/// caches files in large folios, and a 4 KiB write into a large folio walks every
/// buffer of the folio — measured here, that walk took a third of the primary's CPU at
/// 4 KiB random writes, and folios became large wherever a resync or a large write had
/// gone. So readahead is off (reads bring in single pages; resync and frontend reads
/// are explicit about their size) and large aligned writes bypass the cache; small
/// writes stay buffered, because to the device one 4 KiB direct write costs more than
/// the cache's coalescing.
fn open_backing(path: &std::path::Path) -> Result<Backing, DriverError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    // SAFETY: plain advice on a descriptor we own; the result only matters for speed.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    // tmpfs, for one, refuses O_DIRECT: then every write is buffered.
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok();
    Ok(Backing {
        file,
        direct_ok: AtomicBool::new(direct.is_some()),
        direct,
    })
}

impl Backing {
    /// Writes `data` at `offset`: directly when large and aligned, else buffered.
    fn write(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let aligned = offset % DIRECT_ALIGN_BYTES as u64 == 0
            && data.len() % DIRECT_ALIGN_BYTES == 0
            && data.len() >= DIRECT_MIN_BYTES;
        if let Some(direct) = &self.direct
            && aligned
            && self.direct_ok.load(Ordering::Relaxed)
        {
            match write_direct(direct, data, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct_ok.store(false, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        self.file.write_all_at(data, offset)
    }
}

/// An `O_DIRECT` write, through a reused aligned buffer unless `data` is aligned.
fn write_direct(f: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    if data.as_ptr().align_offset(DIRECT_ALIGN_BYTES) == 0 {
        return f.write_all_at(data, offset);
    }
    thread_local! {
        static ALIGNED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    ALIGNED.with_borrow_mut(|buf| {
        if buf.len() < data.len() + DIRECT_ALIGN_BYTES {
            buf.resize(data.len() + DIRECT_ALIGN_BYTES, 0);
        }
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
        let aligned = &mut buf[start..start + data.len()];
        aligned.copy_from_slice(data);
        f.write_all_at(aligned, offset)
    })
}

/// Starts a node: opens metadata (refusing bad metadata), attaches the core, listens
/// on `cfg.listen`, and begins connecting. The node starts secondary.
pub async fn start(cfg: DriverConfig) -> Result<DriverHandle, DriverError> {
    let (store, meta) = MetaStore::open(&cfg.backing, &cfg.meta)?;
    let backing = open_backing(&cfg.backing)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(io_err(format!("listen on {}", cfg.listen)))?;
    let size_bytes = meta.size_bytes;
    let clock = clock_now();
    let seed = u64::from_le_bytes(random_bytes()?);
    let mut core = Core::new(cfg.core.clone(), meta, seed, clock);
    core.connect(clock_now(), false);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    let dialer = cfg.listen.to_string() < cfg.peer.to_string();
    let link_published = (core.connection(), false, 0);
    let (link_tx, link_rx) = watch::channel(LinkState {
        connection: link_published.0,
        handshakes: 0,
        suspended: false,
        fence_peer_requests: 0,
    });
    let driver = Driver {
        cfg: Arc::new(cfg),
        core,
        backing: Arc::new(backing),
        store: Arc::new(Mutex::new(store)),
        ev_tx,
        link: None,
        unauthenticated: Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED)),
        next_link: 1,
        dialing: false,
        last_dial: None,
        dial_wait: FIRST_DIAL_WAIT,
        dialer,
        next_req: 1,
        writes: HashMap::new(),
        reads: HashMap::new(),
        flushes: HashMap::new(),
        durable_waiters: Vec::new(),
        clock,
        link_state: link_tx,
        link_published,
    };
    tokio::spawn(driver.run(cmd_rx, ev_rx, listener));
    Ok(DriverHandle {
        tx: cmd_tx,
        size_bytes,
        link: link_rx,
    })
}

/// The session keys of one link: one per direction (see `FrameKey::session`).
struct LinkKeys {
    send: FrameKey,
    recv: FrameKey,
}

impl LinkKeys {
    fn derive(secret: &[u8], mine: &[u8; 32], theirs: &[u8; 32], initiator: bool) -> LinkKeys {
        let (i_nonce, a_nonce) = if initiator {
            (mine, theirs)
        } else {
            (theirs, mine)
        };
        LinkKeys {
            send: FrameKey::session(secret, i_nonce, a_nonce, initiator),
            recv: FrameKey::session(secret, i_nonce, a_nonce, !initiator),
        }
    }
}

/// Connections accepted but not yet authenticated, at most: more are closed at once.
/// Each holds a task and a socket for up to the 5 s handshake timeout; the real peer
/// needs one.
const MAX_UNAUTHENTICATED: usize = 4;

/// The authenticated replication connection, read and written by the event loop.
/// Every frame carries a MAC under the link's session key for its direction and its
/// sequence number in that direction (counted here, never sent): a frame that does not
/// verify drops the link.
struct Link {
    id: u64,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    keys: LinkKeys,
    /// Sequence number of the next frame sent.
    send_seq: u64,
    /// Sequence number of the next frame received.
    recv_seq: u64,
    /// Received bytes not yet decoded.
    rbuf: BytesMut,
    /// A large data frame being read straight into a buffer of its own.
    big: Option<BigFrame>,
    payload_pool: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Small frames encoded since the last flush.
    wbuf: Vec<u8>,
    /// Output not yet written, in order: encoded bytes, and the data of large frames
    /// where it lies (written with the rest by one vectored write, never copied).
    out: VecDeque<Bytes>,
}

/// What the link socket is ready for.
enum LinkIo {
    Read(std::io::Result<usize>),
    Writable(std::io::Result<()>),
}

/// Free receive space kept before every read (a read into a full buffer would return 0,
/// which means end of stream).
const LINK_READ_SPACE_BYTES: usize = 256 << 10;

/// Capacity of a link's buffer of small encoded frames.
const WBUF_BYTES: usize = 64 << 10;

/// Data frames at least this large are received into a buffer of their own, and sent
/// from where their data lies.
const BIG_FRAME_BYTES: usize = 64 << 10;

struct BigFrame {
    header: Header,
    header_bytes: [u8; HEADER_LEN],
    payload: AlignedPayload,
    filled: usize,
}

/// A frame payload whose data (after a `prefix` of bytes, the epoch of a `Data` frame)
/// starts on a [`DIRECT_ALIGN_BYTES`] boundary. Its buffer goes back to the link's
/// pool when the last `Bytes` of it is dropped (the write is done), so a busy link
/// neither allocates nor zeroes a megabyte per frame.
struct AlignedPayload {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Payload buffers a link keeps for reuse (each 1 MiB + alignment slack).
const PAYLOAD_POOL_BUFFERS: usize = 16;
const PAYLOAD_BUFFER_BYTES: usize = frame::MAX_PAYLOAD_BYTES + DIRECT_ALIGN_BYTES;

impl AlignedPayload {
    fn new(len: usize, prefix: usize, pool: &Arc<Mutex<Vec<Vec<u8>>>>) -> AlignedPayload {
        let reused = pool.lock().ok().and_then(|mut p| p.pop());
        let buf =
            reused.unwrap_or_else(|| vec![0u8; PAYLOAD_BUFFER_BYTES.max(len + DIRECT_ALIGN_BYTES)]);
        let data_at = buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
        let start =
            (data_at + DIRECT_ALIGN_BYTES - prefix % DIRECT_ALIGN_BYTES) % DIRECT_ALIGN_BYTES;
        AlignedPayload {
            buf,
            start,
            len,
            pool: pool.clone(),
        }
    }
}

impl Drop for AlignedPayload {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pool.lock()
            && p.len() < PAYLOAD_POOL_BUFFERS
        {
            p.push(std::mem::take(&mut self.buf));
        }
    }
}

impl AsRef<[u8]> for AlignedPayload {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl AsMut<[u8]> for AlignedPayload {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl Link {
    fn new(id: u64, rd: OwnedReadHalf, wr: OwnedWriteHalf, keys: LinkKeys) -> Link {
        Link {
            id,
            rd,
            wr,
            keys,
            send_seq: 0,
            recv_seq: 0,
            rbuf: BytesMut::with_capacity(LINK_READ_SPACE_BYTES),
            big: None,
            payload_pool: Arc::default(),
            wbuf: Vec::with_capacity(WBUF_BYTES),
            out: VecDeque::new(),
        }
    }

    /// Waits until bytes arrived, or until the socket takes more of our queued output.
    /// Cancel-safe: nothing is lost if another branch of the loop wins.
    async fn ready(&mut self) -> LinkIo {
        if self.rbuf.capacity() - self.rbuf.len() < LINK_READ_SPACE_BYTES / 4 {
            self.rbuf.reserve(LINK_READ_SPACE_BYTES);
        }
        let output_waits = !self.out.is_empty();
        if let Some(big) = &mut self.big {
            let space = &mut big.payload.as_mut()[big.filled..];
            return tokio::select! {
                r = self.rd.read(space) => {
                    if let Ok(n) = r {
                        big.filled += n;
                    }
                    LinkIo::Read(r)
                }
                w = self.wr.writable(), if output_waits => LinkIo::Writable(w),
            };
        }
        tokio::select! {
            r = self.rd.read_buf(&mut self.rbuf) => LinkIo::Read(r),
            w = self.wr.writable(), if output_waits => LinkIo::Writable(w),
        }
    }

    /// The next whole frame received, if there is one.
    fn next_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        if let Some(big) = &self.big {
            if big.filled < big.payload.len {
                return Ok(None);
            }
            let Some(big) = self.big.take() else {
                return Ok(None);
            };
            let payload = Bytes::from_owner(big.payload);
            let seq = self.next_recv_seq();
            return Frame::decode_payload_shared(
                &big.header,
                &big.header_bytes,
                &payload,
                &self.keys.recv,
                seq,
            )
            .map(Some)
            .map_err(|_| ReadError::Decode);
        }
        if self.rbuf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = Header::decode(&self.rbuf[..HEADER_LEN]).map_err(|_| ReadError::Decode)?;
        let total = HEADER_LEN + header.length as usize;
        let data_prefix = match header.kind {
            FrameType::Data => Some(8),
            FrameType::ResyncData | FrameType::ReadReply => Some(0),
            _ => None,
        };
        if let Some(prefix) = data_prefix
            && header.length as usize >= BIG_FRAME_BYTES
        {
            // Read the rest of it straight into a buffer whose data is aligned for
            // direct I/O: no copy on the way to the disk but this one.
            let mut payload =
                AlignedPayload::new(header.length as usize, prefix, &self.payload_pool);
            let have = (self.rbuf.len() - HEADER_LEN).min(payload.len);
            payload.as_mut()[..have].copy_from_slice(&self.rbuf[HEADER_LEN..HEADER_LEN + have]);
            let mut header_bytes = [0u8; HEADER_LEN];
            header_bytes.copy_from_slice(&self.rbuf[..HEADER_LEN]);
            self.rbuf.advance(HEADER_LEN + have);
            self.big = Some(BigFrame {
                header,
                header_bytes,
                payload,
                filled: have,
            });
            return self.next_frame();
        }
        if self.rbuf.len() < total {
            self.rbuf.reserve(total - self.rbuf.len());
            return Ok(None);
        }
        let seq = self.next_recv_seq();
        let frame = Frame::decode_payload(
            &header,
            &self.rbuf[..HEADER_LEN],
            &self.rbuf[HEADER_LEN..total],
            &self.keys.recv,
            seq,
        )
        .map_err(|_| ReadError::Decode);
        self.rbuf.advance(total);
        frame.map(Some)
    }

    fn next_recv_seq(&mut self) -> u64 {
        self.recv_seq += 1;
        self.recv_seq - 1
    }

    /// Queues a frame for the next flush, as the next frame of this direction.
    fn send(&mut self, f: &Frame) {
        let seq = self.send_seq;
        self.send_seq += 1;
        if f.encoded_len() < BIG_FRAME_BYTES {
            f.encode(&mut self.wbuf, &self.keys.send, seq);
        } else if let Some(data) = f.encode_split(&mut self.wbuf, &self.keys.send, seq) {
            self.seal();
            self.out.push_back(data);
        }
    }

    /// Moves the small frames encoded so far to the output queue.
    fn seal(&mut self) {
        if !self.wbuf.is_empty() {
            let full = std::mem::replace(&mut self.wbuf, Vec::with_capacity(WBUF_BYTES));
            self.out.push_back(Bytes::from(full));
        }
    }

    /// Writes as much queued output as the socket takes now; never waits.
    fn flush(&mut self) -> std::io::Result<()> {
        self.seal();
        while !self.out.is_empty() {
            let slices: Vec<std::io::IoSlice<'_>> = self
                .out
                .iter()
                .take(64)
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            match self.wr.try_write_vectored(&slices) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    while n > 0 {
                        let Some(front) = self.out.front_mut() else {
                            break;
                        };
                        if n >= front.len() {
                            n -= front.len();
                            self.out.pop_front();
                        } else {
                            front.advance(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

struct Driver {
    cfg: Arc<DriverConfig>,
    core: Core,
    backing: Arc<Backing>,
    store: Arc<Mutex<MetaStore>>,
    ev_tx: mpsc::Sender<Event>,
    link: Option<Link>,
    /// Permits for connections accepted but not yet authenticated.
    unauthenticated: Arc<tokio::sync::Semaphore>,
    next_link: u64,
    dialing: bool,
    last_dial: Option<Instant>,
    /// Wait before the next dial: grows while dials fail, back to the first on a link.
    dial_wait: Duration,
    dialer: bool,
    next_req: u64,
    writes: HashMap<u64, oneshot::Sender<Result<WriteAck, RequestError>>>,
    reads: HashMap<u64, oneshot::Sender<Result<Bytes, RequestError>>>,
    flushes: HashMap<u64, oneshot::Sender<Result<(), RequestError>>>,
    /// Demotes, outdates and leaves done in the core, answered once the metadata
    /// written for them is durable.
    durable_waiters: Vec<(u64, oneshot::Sender<Result<(), AdminError>>)>,
    clock: Instant,
    /// Published after every pass of the loop that changes it (see [`LinkState`]).
    link_state: watch::Sender<LinkState>,
    /// What was last published (connection, suspended, fence-peer requests): the
    /// per-pass check costs no lock.
    link_published: (ConnState, bool, u64),
}

impl Driver {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Cmd>,
        mut ev_rx: mpsc::Receiver<Event>,
        listener: TcpListener,
    ) {
        let mut stopped = None;
        'run: loop {
            // Sleep until the core or the dialler has something due, or an input comes:
            // an idle connected disk wakes once per ping interval.
            let wake = self.next_wake();
            tokio::select! {
                cmd = cmd_rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    // Whatever else is queued goes in the same pass: its frames leave in
                    // one link write (at QD16 that is most of a queue per syscall).
                    let mut next = Some(cmd);
                    let mut taken = 0;
                    while let Some(cmd) = next.take() {
                        if let Cmd::Shutdown(done) = cmd {
                            stopped = Some(done);
                            break 'run;
                        }
                        self.on_cmd(cmd);
                        taken += 1;
                        if taken < CMD_BATCH {
                            next = cmd_rx.try_recv().ok();
                        }
                    }
                }
                ev = ev_rx.recv() => {
                    let Some(ev) = ev else { break };
                    self.on_event(ev);
                }
                io = async {
                    match self.link.as_mut() {
                        Some(l) => l.ready().await,
                        None => std::future::pending().await,
                    }
                } => self.on_link_io(io),
                acc = listener.accept() => {
                    if let Ok((sock, _)) = acc {
                        self.on_accept(sock);
                    }
                }
                _ = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = clock_now();
                    self.core.handle(now, Input::Tick);
                    self.maybe_dial();
                }
            }
            self.drain();
            self.publish_link_state();
        }
        // Whatever the core queued last (a leaving secondary's outdated state) goes to
        // the socket, as far as it takes it now; then socket and listener are closed
        // before `shutdown` returns, so the same addresses can be bound again at once.
        if let Some(l) = &mut self.link {
            let _ = l.flush();
        }
        drop(listener);
        drop(self);
        if let Some(done) = stopped {
            let _ = done.send(());
        }
    }

    /// Publishes the connection state if this pass changed it, counting every completed
    /// handshake. Waiters are woken by the loop itself, in the pass that connected.
    fn publish_link_state(&mut self) {
        let now = (
            self.core.connection(),
            self.core.suspended(),
            self.core.fence_peer_requests(),
        );
        if now == self.link_published {
            return;
        }
        let was = std::mem::replace(&mut self.link_published, now);
        self.link_state.send_modify(|l| {
            if handshake_done(now.0) && !handshake_done(was.0) {
                l.handshakes += 1;
            }
            l.connection = now.0;
            l.suspended = now.1;
            l.fence_peer_requests = now.2;
        });
    }

    /// Authenticates an accepted connection, if this side accepts, wants a link, has
    /// none, and fewer than [`MAX_UNAUTHENTICATED`] others are authenticating; any other
    /// connection is closed at once.
    fn on_accept(&mut self, sock: TcpStream) {
        if self.dialer || self.link.is_some() || !self.core.wants_connection() {
            return;
        }
        let Ok(permit) = self.unauthenticated.clone().try_acquire_owned() else {
            return;
        };
        let id = self.next_link;
        self.next_link += 1;
        let (secret, ev) = (self.cfg.secret.clone(), self.ev_tx.clone());
        tokio::spawn(async move {
            establish(sock, false, secret, id, ev).await;
            drop(permit);
        });
    }

    /// The earliest of the core's [`Core::poll_timeout`] and the next dial.
    fn next_wake(&self) -> Option<tokio::time::Instant> {
        let core = self.core.poll_timeout();
        let dial =
            (self.dialer && !self.dialing && self.link.is_none() && self.core.wants_connection())
                .then(|| self.last_dial.map_or(self.clock, |t| t + self.dial_wait));
        core.into_iter()
            .chain(dial)
            .min()
            .map(tokio::time::Instant::from_std)
    }

    fn maybe_dial(&mut self) {
        if !self.dialer || self.dialing || self.link.is_some() || !self.core.wants_connection() {
            return;
        }
        let now = clock_now();
        if self
            .last_dial
            .is_some_and(|t| now.duration_since(t) < self.dial_wait)
        {
            return;
        }
        self.last_dial = Some(now);
        self.dialing = true;
        let id = self.next_link;
        self.next_link += 1;
        let peer = self.cfg.peer;
        let secret = self.cfg.secret.clone();
        let ev = self.ev_tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(peer)).await {
                Ok(Ok(sock)) => establish(sock, true, secret, id, ev).await,
                Ok(Err(e)) => {
                    let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
                    let _ = ev.send(Event::DialFailed { refused }).await;
                }
                Err(_) => {
                    let _ = ev.send(Event::DialFailed { refused: false }).await;
                }
            }
        });
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let now = clock_now();
        match cmd {
            Cmd::Write(offset, data, fua, tx) => {
                let req = self.req();
                self.writes.insert(req, tx);
                self.core.handle(
                    now,
                    Input::Write {
                        req,
                        offset_bytes: offset,
                        data,
                        fua,
                    },
                );
            }
            Cmd::Read(offset, len, tx) => {
                let req = self.req();
                self.reads.insert(req, tx);
                self.core.handle(
                    now,
                    Input::Read {
                        req,
                        offset_bytes: offset,
                        len_bytes: len,
                    },
                );
            }
            Cmd::Flush(tx) => {
                let req = self.req();
                self.flushes.insert(req, tx);
                self.core.handle(now, Input::Flush { req });
            }
            Cmd::Promote(force, tx) => {
                let _ = tx.send(self.core.promote(now, force));
            }
            Cmd::Demote(tx) => match self.core.demote(now) {
                // Answered once the superblock says secondary: a daemon that exits
                // right after a clean stop must not leave a crashed primary behind.
                Ok(()) => self.durable_waiters.push((self.core.metadata_ticket(), tx)),
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            },
            Cmd::Connect(discard) => self.core.connect(now, discard),
            Cmd::Disconnect => self.core.disconnect(now),
            Cmd::PeerFenced(tx) => {
                self.core.peer_fenced(now);
                let _ = tx.send(());
            }
            Cmd::PeerOutdated(tx) => {
                self.core.peer_outdated(now);
                let _ = tx.send(());
            }
            Cmd::PeerUnreachable(tx) => {
                self.core.peer_unreachable(now);
                let _ = tx.send(());
            }
            Cmd::Outdate(tx) => match self.core.outdate(now) {
                Ok(ticket) => self.durable_waiters.push((ticket, tx)),
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            },
            Cmd::Leave(tx) => {
                let ticket = self.core.leave(now);
                self.durable_waiters.push((ticket, tx));
            }
            Cmd::Verify(tx) => {
                let _ = tx.send(self.core.verify(now));
            }
            Cmd::Invalidate(tx) => {
                let _ = tx.send(self.core.invalidate(now));
            }
            Cmd::Status(tx) => {
                let _ = tx.send(self.core.status());
            }
            Cmd::SetResyncPaused(paused) => self.core.set_resync_paused(now, paused),
            Cmd::StartupWait(wfc, degr, tx) => {
                let _ = tx.send(self.core.startup_wait_ms(wfc, degr));
            }
            Cmd::Shutdown(_) => {}
        }
    }

    fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    fn on_event(&mut self, ev: Event) {
        let now = clock_now();
        match ev {
            Event::IoDone(io, result) => self.core.handle(now, Input::IoDone { io, result }),
            Event::LinkUp(id, rd, wr, keys) => {
                self.dialing = false;
                self.dial_wait = FIRST_DIAL_WAIT;
                if self.link.is_none()
                    && self.core.wants_connection()
                    && self.core.connection() == crate::core::ConnState::Connecting
                {
                    self.link = Some(Link::new(id, rd, wr, keys));
                    self.core.handle(now, Input::Connected);
                }
                // Otherwise the halves drop here and the socket closes.
            }
            Event::LinkDown(id) => {
                if self.link.as_ref().is_some_and(|l| l.id == id) {
                    self.link_lost();
                } else if self.link.is_none() {
                    // Authentication failed: back off as after an unanswered dial.
                    self.dial_failed(false);
                }
            }
            Event::DialFailed { refused } => self.dial_failed(refused),
        }
    }

    /// A dial or its handshake failed: the next waits twice as long, up to
    /// `connect_interval` — except after a refusal, retried after [`FIRST_DIAL_WAIT`]:
    /// the peer's machine is up and its disk service about to listen (a restarted
    /// daemon, a node back from a power cut), and doubling waits there held the
    /// reconnection back by seconds.
    fn dial_failed(&mut self, refused: bool) {
        self.dialing = false;
        self.dial_wait = if refused {
            FIRST_DIAL_WAIT
        } else {
            (self.dial_wait * 2).min(self.cfg.connect_interval.max(FIRST_DIAL_WAIT))
        };
    }

    fn link_lost(&mut self) {
        self.link = None;
        let now = clock_now();
        self.core.handle(now, Input::Disconnected);
    }

    /// Bytes arrived (every whole frame goes to the core), or queued output can move.
    fn on_link_io(&mut self, io: LinkIo) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        match io {
            LinkIo::Read(Ok(n)) if n > 0 => {
                let now = clock_now();
                loop {
                    let Some(link) = self.link.as_mut() else {
                        return;
                    };
                    match link.next_frame() {
                        Ok(Some(f)) => self.core.handle(now, Input::Frame(f)),
                        Ok(None) => break,
                        Err(ReadError::Decode) | Err(ReadError::Io) => {
                            // A corrupt stream cannot be resynchronised: drop the link.
                            self.link_lost();
                            return;
                        }
                    }
                }
            }
            // End of stream or a read error.
            LinkIo::Read(_) => self.link_lost(),
            LinkIo::Writable(Ok(())) => {
                if link.flush().is_err() {
                    self.link_lost();
                }
            }
            LinkIo::Writable(Err(_)) => self.link_lost(),
        }
    }

    /// Carries out everything the core asked for, then writes what it sends.
    fn drain(&mut self) {
        loop {
            while let Some(out) = self.core.poll_output() {
                self.carry_out(out);
            }
            let broken = self.link.as_mut().is_some_and(|l| l.flush().is_err());
            if !broken {
                break;
            }
            self.link_lost();
        }
        if !self.durable_waiters.is_empty() {
            let core = &self.core;
            let (done, waiting) = std::mem::take(&mut self.durable_waiters)
                .into_iter()
                .partition(|(ticket, _)| core.metadata_durable(*ticket));
            self.durable_waiters = waiting;
            for (_, tx) in done {
                let _ = tx.send(Ok(()));
            }
        }
    }

    fn carry_out(&mut self, out: Output) {
        match out {
            Output::WriteLocal {
                io,
                offset_bytes,
                data,
                fua,
            } => {
                if !fua && data.len() <= INLINE_WRITE_MAX_BYTES {
                    let result = self
                        .backing
                        .write(&data, offset_bytes)
                        .map(|()| None)
                        .map_err(|e| IoFailure(e.to_string()));
                    let now = clock_now();
                    self.core.handle(now, Input::IoDone { io, result });
                    return;
                }
                let b = self.backing.clone();
                self.blocking(io, move || {
                    b.write(&data, offset_bytes)?;
                    if fua {
                        b.file.sync_data()?;
                    }
                    Ok(None)
                });
            }
            Output::ReadLocal {
                io,
                offset_bytes,
                len_bytes,
            } => {
                let b = self.backing.clone();
                self.blocking(io, move || {
                    let mut buf = vec![0u8; len_bytes as usize];
                    b.file.read_exact_at(&mut buf, offset_bytes)?;
                    Ok(Some(Bytes::from(buf)))
                });
            }
            Output::FlushLocal { io } => {
                let b = self.backing.clone();
                self.blocking(io, move || {
                    b.file.sync_data()?;
                    Ok(None)
                });
            }
            Output::PersistMeta { io, write } => {
                let b = self.backing.clone();
                let store = self.store.clone();
                self.blocking(io, move || {
                    // Data first, then the metadata block (the core's contract).
                    b.file.sync_data()?;
                    let mut s = store
                        .lock()
                        .map_err(|_| std::io::Error::other("metadata lock poisoned"))?;
                    s.write(&write).map_err(std::io::Error::other)?;
                    Ok(None)
                });
            }
            Output::Send(f) => {
                if let Some(l) = &mut self.link {
                    l.send(&f);
                }
            }
            // What was queued before (a state report that says this copy is outdated)
            // is handed to the socket first, as far as it takes it now.
            Output::Disconnect { .. } => {
                if let Some(mut l) = self.link.take() {
                    let _ = l.flush();
                }
            }
            // Acted on by the node's owner through `LinkState::fence_peer_requests`.
            Output::FencePeer => {}
            Output::WriteDone { req, result } => {
                if let Some(tx) = self.writes.remove(&req) {
                    let _ = tx.send(result);
                }
            }
            Output::ReadDone { req, result } => {
                if let Some(tx) = self.reads.remove(&req) {
                    let _ = tx.send(result);
                }
            }
            Output::FlushDone { req, result } => {
                if let Some(tx) = self.flushes.remove(&req) {
                    let _ = tx.send(result);
                }
            }
        }
    }

    fn blocking(
        &self,
        io: u64,
        work: impl FnOnce() -> std::io::Result<Option<Bytes>> + Send + 'static,
    ) {
        let ev = self.ev_tx.clone();
        tokio::task::spawn_blocking(move || {
            let r = work().map_err(|e| IoFailure(e.to_string()));
            let _ = ev.blocking_send(Event::IoDone(io, r));
        });
    }
}

/// Whether the link is past its handshake: the peer is there and the two sides agreed.
fn handshake_done(c: ConnState) -> bool {
    matches!(
        c,
        ConnState::WaitBitmapSource
            | ConnState::WaitBitmapTarget
            | ConnState::Connected
            | ConnState::SyncSource
            | ConnState::SyncTarget
            | ConnState::VerifySource
    )
}

/// Authenticates a fresh TCP connection in both directions and hands it to the event
/// loop as `LinkUp` (or reports `LinkDown`, if authentication fails). Nothing reads
/// past the handshake here: the frames after it belong to the loop (see [`Link`]).
async fn establish(
    sock: TcpStream,
    initiator: bool,
    secret: Vec<u8>,
    id: u64,
    ev: mpsc::Sender<Event>,
) {
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    // Before the secret is proven, frames carry a tag under the public key only; the
    // challenge is frame 0 and the answer frame 1 of each direction.
    let pre = FrameKey::preauth();
    let auth = async {
        let mine: [u8; 32] = random_bytes().ok()?;
        wr.write_all(&Frame::AuthChallenge { nonce: mine }.to_bytes(&pre, 0))
            .await
            .ok()?;
        let Frame::AuthChallenge { nonce: theirs } =
            read_frame(&mut rd, FrameType::AuthChallenge, &pre, 0)
                .await
                .ok()?
        else {
            return None;
        };
        let mac = frame::auth_response(&secret, &theirs, initiator);
        wr.write_all(&Frame::AuthResponse { mac }.to_bytes(&pre, 1))
            .await
            .ok()?;
        let Frame::AuthResponse { mac } = read_frame(&mut rd, FrameType::AuthResponse, &pre, 1)
            .await
            .ok()?
        else {
            return None;
        };
        frame::auth_verify(&secret, &mine, !initiator, &mac)
            .then(|| LinkKeys::derive(&secret, &mine, &theirs, initiator))
    };
    match tokio::time::timeout(Duration::from_secs(5), auth).await {
        Ok(Some(keys)) => {
            let _ = ev.send(Event::LinkUp(id, rd, wr, keys)).await;
        }
        _ => {
            let _ = ev.send(Event::LinkDown(id)).await;
        }
    }
}

#[derive(Debug)]
enum ReadError {
    Io,
    Decode,
}

/// Reads one frame of type `kind` during the handshake. The header is checked (type,
/// and length against the type's largest payload: 32 bytes) before a payload byte is
/// read or allocated.
async fn read_frame(
    rd: &mut OwnedReadHalf,
    kind: FrameType,
    key: &FrameKey,
    seq: u64,
) -> Result<Frame, ReadError> {
    let mut h = [0u8; HEADER_LEN];
    rd.read_exact(&mut h).await.map_err(|_| ReadError::Io)?;
    let header = Header::decode(&h).map_err(|_| ReadError::Decode)?;
    if header.kind != kind {
        return Err(ReadError::Decode);
    }
    let mut payload = vec![0u8; header.length as usize];
    rd.read_exact(&mut payload)
        .await
        .map_err(|_| ReadError::Io)?;
    Frame::decode_payload(&header, &h, &payload, key, seq).map_err(|_| ReadError::Decode)
}

#[cfg(test)]
mod tests;
