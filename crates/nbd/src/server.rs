//! The I/O driver: listeners, negotiation I/O and the pipelined transmission loop.
//!
//! ```text
//!  socket ─► reader task ──validate──► spawn(request) ──► device.read/write/...
//!              │  (bounded: slots +                           │
//!              │   bytes in flight)                           ▼
//!              └──────────── error replies ──────────► reply channel ─► writer task ─► socket
//! ```
//! One reader per connection decodes headers and reads write payloads into pooled
//! buffers while earlier requests are still running; each request runs as its own task and
//! replies may leave in any order. A single writer task owns the socket's write half and
//! sends every reply queued so far with one vectored write, so completions never fight
//! over a lock.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::device::{BlockDevice, Capabilities};
use crate::handshake::{
    ExportCatalog, ExportSummary, MAX_DISCARD_OPTION_BYTES, MAX_OPTION_BYTES,
    MAX_OPTIONS_PER_SESSION, Step, answer_option, answer_too_big,
};
use crate::proto::{
    Command, MAX_PAYLOAD_BYTES, OPTION_HEADER_LEN, REQUEST_HEADER_LEN, SIMPLE_REPLY_LEN,
    TransmissionContext, Verdict, decode_client_flags, decode_option_header, decode_request_header,
    encode_greeting, encode_simple_reply, tflag, validate_request,
};
use crate::stats::{Stats, StatsSnapshot};

/// Directory of the per-disk Unix sockets.
pub const DEFAULT_SOCKET_DIR: &str = "/run/tandem/disk";

/// The default socket of export `name`: `/run/tandem/disk/NAME.nbd`.
pub fn default_socket_path(name: &str) -> PathBuf {
    Path::new(DEFAULT_SOCKET_DIR).join(format!("{name}.nbd"))
}

/// Who may use a server's Unix sockets: root and the server's own user always, and the
/// members of `group` (by primary or supplementary group id) if it is set.
///
/// Said twice, to be sure: to the kernel by the modes of the socket (0600, or 0660 and
/// owned by the group) and of its directory (0700, or 0710), and by the server itself at
/// accept from the peer's credentials (`SO_PEERCRED`, `SO_PEERGROUPS`), which holds even
/// if someone loosens those modes or reaches the socket by another path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnixAccess {
    /// The group whose members may connect, by id; `None`: root (and our user) only.
    pub group: Option<u32>,
}

impl UnixAccess {
    /// Mode of the socket file.
    pub fn socket_mode(&self) -> u32 {
        if self.group.is_some() { 0o660 } else { 0o600 }
    }

    /// Mode of the socket's directory: the group may pass through, never list it.
    pub fn dir_mode(&self) -> u32 {
        if self.group.is_some() { 0o710 } else { 0o700 }
    }

    /// Whether a peer with user `uid`, group `gid` and supplementary `groups` may
    /// connect, for a server running as user `own_uid`.
    pub fn allows(&self, own_uid: u32, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == 0 || uid == own_uid || self.group.is_some_and(|g| gid == g || groups.contains(&g))
    }
}

/// Limits of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once (over all listeners); more are closed at accept.
    pub max_connections: usize,
    /// Requests in flight per connection; the reader stops reading when it is reached.
    pub max_requests_in_flight: usize,
    /// Payload bytes (reads and writes) in flight per connection; at least 32 MiB.
    pub max_bytes_in_flight: usize,
    /// Time a client has to finish negotiation.
    pub handshake_timeout: Duration,
    /// Bytes of the per-connection read buffer (small requests are read in batches).
    pub read_buffer_bytes: usize,
    /// Who may connect to the Unix sockets ([`Server::serve_unix`]).
    pub unix_access: UnixAccess,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 64,
            max_requests_in_flight: 64,
            max_bytes_in_flight: 64 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(30),
            read_buffer_bytes: 256 * 1024,
            unix_access: UnixAccess::default(),
        }
    }
}

/// Payload buffers kept for reuse per connection at most (enough for 1 MiB requests at
/// depth 16); idle connections thus hold little memory.
const MAX_POOLED_BYTES: usize = 16 * 1024 * 1024;

/// Bytes per permit of the in-flight byte budget.
const BYTE_PERMIT_UNIT: usize = 4096;

struct Export {
    name: String,
    description: String,
    device: Arc<dyn BlockDevice>,
    closed: watch::Sender<bool>,
}

impl Export {
    fn summary(&self) -> ExportSummary {
        ExportSummary {
            name: self.name.clone(),
            description: self.description.clone(),
            size_bytes: self.device.size_bytes(),
            flags: transmission_flags(self.device.capabilities(), self.device.writable()),
        }
    }
}

/// Transmission flags for a device in its current state.
pub fn transmission_flags(caps: Capabilities, writable: bool) -> u16 {
    let mut f = tflag::HAS_FLAGS | tflag::SEND_CACHE;
    if caps.flush {
        f |= tflag::SEND_FLUSH | tflag::SEND_FUA;
    }
    if caps.trim {
        f |= tflag::SEND_TRIM;
    }
    if caps.write_zeroes {
        f |= tflag::SEND_WRITE_ZEROES;
    }
    if caps.multi_conn {
        f |= tflag::CAN_MULTI_CONN;
    }
    if caps.rotational {
        f |= tflag::ROTATIONAL;
    }
    if !writable {
        f |= tflag::READ_ONLY;
    }
    f
}

/// Errors of the server's setup calls.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An export with this name is already served.
    #[error("export {0:?} already exists")]
    ExportExists(String),
    /// The export name is empty, too long or contains NUL.
    #[error("invalid export name {0:?}")]
    BadExportName(String),
    /// Another server answers on the socket path.
    #[error("socket {0} is in use by another server")]
    SocketInUse(PathBuf),
    /// An I/O error while binding.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

/// An NBD server: a set of named exports and the listeners that serve them.
pub struct Server {
    config: ServerConfig,
    exports: RwLock<BTreeMap<String, Arc<Export>>>,
    stats: Stats,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("exports", &self.export_names())
            .finish()
    }
}

struct Catalog<'a> {
    server: &'a Server,
    default_export: Option<&'a str>,
}

impl ExportCatalog for Catalog<'_> {
    fn resolve(&self, requested: &str) -> Option<ExportSummary> {
        let name = match (requested, self.default_export) {
            ("", Some(d)) => d,
            (n, _) => n,
        };
        self.server.export(name).map(|e| e.summary())
    }
    fn list(&self) -> Vec<(String, String)> {
        let exports = self
            .server
            .exports
            .read()
            .unwrap_or_else(|p| p.into_inner());
        exports
            .values()
            .map(|e| (e.name.clone(), e.description.clone()))
            .collect()
    }
}

impl Server {
    /// A server with no exports.
    pub fn new(config: ServerConfig) -> Arc<Self> {
        let (shutdown, _) = watch::channel(false);
        Arc::new(Server {
            config,
            exports: RwLock::new(BTreeMap::new()),
            stats: Stats::default(),
            shutdown,
        })
    }

    /// Serve `device` as export `name`.
    pub fn add_export(
        &self,
        name: &str,
        description: &str,
        device: Arc<dyn BlockDevice>,
    ) -> Result<(), ServerError> {
        if name.is_empty() || name.len() > crate::proto::MAX_STRING_LEN || name.contains('\0') {
            return Err(ServerError::BadExportName(name.to_string()));
        }
        let mut exports = self.exports.write().unwrap_or_else(|p| p.into_inner());
        if exports.contains_key(name) {
            return Err(ServerError::ExportExists(name.to_string()));
        }
        let (closed, _) = watch::channel(false);
        exports.insert(
            name.to_string(),
            Arc::new(Export {
                name: name.to_string(),
                description: description.to_string(),
                device,
                closed,
            }),
        );
        Ok(())
    }

    /// Stop serving export `name`: new negotiations no longer see it, and open
    /// connections finish their in-flight requests and are closed. Returns whether it
    /// existed.
    pub fn remove_export(&self, name: &str) -> bool {
        let removed = self
            .exports
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        match removed {
            Some(e) => {
                e.closed.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// Names of the exports.
    pub fn export_names(&self) -> Vec<String> {
        let exports = self.exports.read().unwrap_or_else(|p| p.into_inner());
        exports.keys().cloned().collect()
    }

    fn export(&self, name: &str) -> Option<Arc<Export>> {
        let exports = self.exports.read().unwrap_or_else(|p| p.into_inner());
        exports.get(name).cloned()
    }

    /// Counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stop accepting, answer pending options with `NBD_REP_ERR_SHUTDOWN`, let in-flight
    /// requests finish and close every connection.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Accept connections on a Unix socket until [`Server::shutdown`]. An empty export name
    /// from a client means `default_export`.
    pub async fn serve_unix(
        self: Arc<Self>,
        listener: UnixListener,
        default_export: Option<String>,
    ) -> io::Result<()> {
        let mut stop = self.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            match accepted {
                Ok((stream, _)) => {
                    if let Err(why) = self.check_peer(&stream) {
                        // Closed without a word: whoever it is learns nothing.
                        Stats::add(&self.stats.connections_refused_credentials, 1);
                        tracing::warn!("nbd connection refused: {why}");
                        continue;
                    }
                    let (r, w) = stream.into_split();
                    self.clone().spawn_connection(r, w, default_export.clone());
                }
                Err(e) => accept_backoff(e).await,
            }
        }
    }

    /// Checks a Unix-socket peer against [`ServerConfig::unix_access`].
    fn check_peer(&self, stream: &UnixStream) -> Result<(), String> {
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("no peer credentials: {e}"))?;
        let groups = peer_groups(stream).unwrap_or_default();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let own_uid = unsafe { libc::geteuid() };
        if self
            .config
            .unix_access
            .allows(own_uid, cred.uid(), cred.gid(), &groups)
        {
            return Ok(());
        }
        Err(format!(
            "uid {} gid {} (pid {}) is not root and not in the allowed group ({})",
            cred.uid(),
            cred.gid(),
            cred.pid().map_or("?".to_string(), |p| p.to_string()),
            self.config
                .unix_access
                .group
                .map_or("none configured".to_string(), |g| format!("gid {g}")),
        ))
    }

    /// Accept connections on a TCP socket until [`Server::shutdown`] (Nagle is disabled on
    /// every connection: replies are small and latency-bound).
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        default_export: Option<String>,
    ) -> io::Result<()> {
        let mut stop = self.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            match accepted {
                Ok((stream, _)) => {
                    let _ = TcpStream::set_nodelay(&stream, true);
                    let (r, w) = stream.into_split();
                    self.clone().spawn_connection(r, w, default_export.clone());
                }
                Err(e) => accept_backoff(e).await,
            }
        }
    }

    fn spawn_connection<R, W>(self: Arc<Self>, r: R, w: W, default_export: Option<String>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        Stats::add(&self.stats.connections_accepted, 1);
        let active = self
            .stats
            .connections_active
            .fetch_add(1, Ordering::Relaxed);
        if active >= self.config.max_connections as u64 {
            self.stats
                .connections_active
                .fetch_sub(1, Ordering::Relaxed);
            Stats::add(&self.stats.connections_refused, 1);
            return;
        }
        tokio::spawn(async move {
            if let Err(e) = self.connection(r, w, default_export.as_deref()).await {
                tracing::debug!(error = %e, "nbd connection ended");
            }
            self.stats
                .connections_active
                .fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn connection<R, W>(
        self: &Arc<Self>,
        r: R,
        mut w: W,
        default_export: Option<&str>,
    ) -> io::Result<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut r = BufReader::with_capacity(self.config.read_buffer_bytes, r);
        let negotiated = tokio::time::timeout(
            self.config.handshake_timeout,
            self.negotiate(&mut r, &mut w, default_export),
        )
        .await;
        let summary = match negotiated {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => {
                Stats::add(&self.stats.handshakes_failed, 1);
                return Ok(());
            }
            Ok(Err(e)) => {
                Stats::add(&self.stats.handshakes_failed, 1);
                return Err(e);
            }
            Err(_) => {
                Stats::add(&self.stats.handshakes_failed, 1);
                return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake timeout"));
            }
        };
        // The export may have gone between the answer and now: then hang up.
        let Some(export) = self.export(&summary.name) else {
            Stats::add(&self.stats.handshakes_failed, 1);
            return Ok(());
        };
        Stats::add(&self.stats.handshakes_completed, 1);
        let ctx = TransmissionContext {
            size_bytes: summary.size_bytes,
            flags: summary.flags,
            writable: summary.flags & tflag::READ_ONLY == 0,
        };
        self.transmit(r, w, export, ctx).await
    }

    /// Run option haggling; `Some(export)` when the client entered transmission.
    async fn negotiate<R, W>(
        &self,
        r: &mut R,
        w: &mut W,
        default_export: Option<&str>,
    ) -> io::Result<Option<ExportSummary>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        w.write_all(&encode_greeting()).await?;
        w.flush().await?;
        let mut b4 = [0u8; 4];
        r.read_exact(&mut b4).await?;
        let client = decode_client_flags(&b4).map_err(invalid)?;
        let catalog = Catalog {
            server: self,
            default_export,
        };
        let mut data = Vec::new();
        for _ in 0..MAX_OPTIONS_PER_SESSION {
            let mut hb = [0u8; OPTION_HEADER_LEN];
            r.read_exact(&mut hb).await?;
            let header = decode_option_header(&hb).map_err(invalid)?;
            let answer = if header.length > MAX_OPTION_BYTES {
                if header.length > MAX_DISCARD_OPTION_BYTES {
                    return Err(invalid("option data too large"));
                }
                discard(r, u64::from(header.length)).await?;
                answer_too_big(header.option)
            } else {
                data.resize(header.length as usize, 0);
                r.read_exact(&mut data).await?;
                let shutting_down = *self.shutdown.borrow();
                answer_option(header, &data, client, shutting_down, &catalog)
            };
            if !answer.reply.is_empty() {
                w.write_all(&answer.reply).await?;
                w.flush().await?;
            }
            match answer.step {
                Step::Continue => {}
                Step::Close => return Ok(None),
                Step::Transmit(export) => return Ok(Some(export)),
            }
        }
        Err(invalid("too many options"))
    }

    async fn transmit<R, W>(
        self: &Arc<Self>,
        mut r: BufReader<R>,
        w: W,
        export: Arc<Export>,
        ctx: TransmissionContext,
    ) -> io::Result<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = &self.config;
        let slots = Arc::new(Semaphore::new(cfg.max_requests_in_flight.max(1)));
        let byte_permits =
            cfg.max_bytes_in_flight.max(MAX_PAYLOAD_BYTES as usize) / BYTE_PERMIT_UNIT;
        let bytes = Arc::new(Semaphore::new(byte_permits));
        let pool = Arc::new(BufferPool::new(
            cfg.max_requests_in_flight * 2,
            cfg.max_bytes_in_flight.min(MAX_POOLED_BYTES),
        ));
        // Every queued reply holds a slot permit, so the channel never holds more than
        // max_requests_in_flight entries and sends never wait.
        let (tx, rx) = mpsc::channel::<Reply>(cfg.max_requests_in_flight.max(1));
        let writer = tokio::spawn(write_replies(w, rx, pool.clone()));
        let mut stop = self.shutdown.subscribe();
        let mut closed = export.closed.subscribe();
        let mut hb = [0u8; REQUEST_HEADER_LEN];
        let result: io::Result<()> = loop {
            let read = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break Ok(()),
                _ = closed.wait_for(|c| *c) => break Ok(()),
                r = r.read_exact(&mut hb) => r,
            };
            if let Err(e) = read {
                // A client closing without NBD_CMD_DISC is a hard disconnect; not our error.
                break if e.kind() == io::ErrorKind::UnexpectedEof {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            let header = match decode_request_header(&hb) {
                Ok(h) => h,
                Err(e) => {
                    self.stats.reject_bad_magic();
                    break Err(invalid(e));
                }
            };
            let mut now_ctx = ctx;
            now_ctx.writable = ctx.writable && export.device.writable();
            let verdict = validate_request(&header, &now_ctx);
            let handle = header.handle;
            let (cmd, errno_reply) = match verdict {
                Verdict::Disconnect => break Ok(()),
                Verdict::HardDisconnect(reason) => {
                    self.stats.reject(reason);
                    break Err(invalid("request payload too large"));
                }
                Verdict::Reject {
                    errno,
                    discard_bytes,
                    reason,
                } => {
                    self.stats.reject(reason);
                    if let Err(e) = discard(&mut r, u64::from(discard_bytes)).await {
                        break Err(e);
                    }
                    (None, errno)
                }
                Verdict::Execute(cmd) => (Some(cmd), 0),
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break Ok(());
            };
            let Some(cmd) = cmd else {
                let reply = Reply {
                    header: encode_simple_reply(errno_reply, handle),
                    data: None,
                    _permits: (slot, None),
                };
                if tx.send(reply).await.is_err() {
                    break Ok(());
                }
                continue;
            };
            let payload = match cmd {
                Command::Read { length, .. } | Command::Write { length, .. } => length as usize,
                // No payload on the wire, but work in flight in the device: up to a
                // largest request's worth of zero pieces (or buffers) at once. Counted,
                // so a client cannot queue 64 of them (4 GiB each) past the budget.
                Command::WriteZeroes { length, .. } => length.min(MAX_PAYLOAD_BYTES) as usize,
                _ => 0,
            };
            let byte_permit = if payload > 0 {
                let n = payload.div_ceil(BYTE_PERMIT_UNIT).min(byte_permits) as u32;
                match bytes.clone().acquire_many_owned(n).await {
                    Ok(p) => Some(p),
                    Err(_) => break Ok(()),
                }
            } else {
                None
            };
            let mut write_data = None;
            if let Command::Write { length, .. } = cmd {
                let mut buf = pool.take(length as usize);
                if let Err(e) = r.read_exact(&mut buf).await {
                    break Err(e);
                }
                write_data = Some(buf);
            }
            let job = Job {
                server: self.clone(),
                device: export.device.clone(),
                pool: pool.clone(),
                tx: tx.clone(),
                handle,
                permits: (slot, byte_permit),
            };
            // Devices that complete at once (page-cache hits, memory) are answered without
            // a task hop; anything still pending is handed to its own task.
            let mut fut = Box::pin(job.run(cmd, write_data));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if fut.as_mut().poll(&mut cx).is_pending() {
                tokio::spawn(fut);
            }
        };
        // NBD_CMD_DISC, shutdown or a broken stream: let in-flight requests finish and
        // their replies drain, then close the socket.
        drop(tx);
        match writer.await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "nbd reply writer failed"),
        }
        result
    }
}

async fn accept_backoff(e: io::Error) {
    // Out of descriptors and similar: back off instead of spinning.
    tracing::warn!(error = %e, "nbd accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn invalid<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

async fn discard<R: AsyncRead + Unpin>(r: &mut R, n: u64) -> io::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let copied = tokio::io::copy(&mut r.take(n), &mut tokio::io::sink()).await?;
    if copied < n {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(())
}

type Permits = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

struct Reply {
    header: [u8; SIMPLE_REPLY_LEN],
    data: Option<Vec<u8>>,
    /// Released once the reply is on the socket, which bounds memory in flight.
    _permits: Permits,
}

struct Job {
    server: Arc<Server>,
    device: Arc<dyn BlockDevice>,
    pool: Arc<BufferPool>,
    tx: mpsc::Sender<Reply>,
    handle: u64,
    permits: Permits,
}

impl Job {
    async fn run(self, cmd: Command, write_data: Option<Vec<u8>>) {
        let stats = &self.server.stats;
        let dev = &*self.device;
        let (result, data) = match cmd {
            Command::Read { offset, length } => {
                let buf = self.pool.take(length as usize);
                let (buf, r) = dev.read(offset, buf).await;
                if r.is_ok() {
                    Stats::add(&stats.reads, 1);
                    Stats::add(&stats.bytes_read, u64::from(length));
                    (r, Some(buf))
                } else {
                    self.pool.put(buf);
                    (r, None)
                }
            }
            Command::Write {
                offset,
                fua,
                length,
            } => {
                let buf = write_data.unwrap_or_default();
                let (buf, r) = dev.write(offset, buf, fua).await;
                self.pool.put(buf);
                if r.is_ok() {
                    Stats::add(&stats.writes, 1);
                    Stats::add(&stats.bytes_written, u64::from(length));
                }
                (r, None)
            }
            Command::Flush => {
                Stats::add(&stats.flushes, 1);
                (dev.flush().await, None)
            }
            Command::Trim {
                offset,
                length,
                fua,
            } => {
                Stats::add(&stats.trims, 1);
                (dev.trim(offset, u64::from(length), fua).await, None)
            }
            Command::WriteZeroes {
                offset,
                length,
                fua,
                may_trim,
            } => {
                Stats::add(&stats.write_zeroes, 1);
                let r = dev
                    .write_zeroes(offset, u64::from(length), fua, may_trim)
                    .await;
                (r, None)
            }
            Command::Cache => (Ok(()), None),
        };
        let errno = match result {
            Ok(()) => 0,
            Err(e) => {
                Stats::add(&stats.device_errors, 1);
                tracing::debug!(error = %e, handle = self.handle, "nbd request failed");
                e.nbd_errno()
            }
        };
        let reply = Reply {
            header: encode_simple_reply(errno, self.handle),
            data,
            _permits: self.permits,
        };
        // The writer is gone only when the client is; nothing left to tell it.
        let _ = self.tx.send(reply).await;
    }
}

/// Replies written per vectored write at most.
const REPLY_BATCH: usize = 64;

async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Reply>,
    pool: Arc<BufferPool>,
) -> io::Result<()> {
    let mut batch: Vec<Reply> = Vec::with_capacity(REPLY_BATCH);
    loop {
        if rx.recv_many(&mut batch, REPLY_BATCH).await == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
            for reply in &batch {
                slices.push(IoSlice::new(&reply.header));
                if let Some(d) = &reply.data {
                    slices.push(IoSlice::new(d));
                }
            }
            write_all_vectored(&mut w, &mut slices).await?;
        }
        for reply in batch.drain(..) {
            if let Some(d) = reply.data {
                pool.put(d);
            }
        }
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !slices.is_empty() {
        let n = w.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Payload buffers kept for reuse, so steady-state I/O allocates nothing.
struct BufferPool {
    inner: Mutex<PoolInner>,
    max_buffers: usize,
    max_bytes: usize,
}

struct PoolInner {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    fn new(max_buffers: usize, max_bytes: usize) -> Self {
        BufferPool {
            inner: Mutex::new(PoolInner {
                buffers: Vec::new(),
                bytes: 0,
            }),
            max_buffers,
            max_bytes,
        }
    }

    /// A buffer of exactly `len` bytes (contents unspecified).
    fn take(&self, len: usize) -> Vec<u8> {
        let found = {
            let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            // Best fit: the smallest buffer that is large enough.
            let mut best: Option<usize> = None;
            for (i, b) in p.buffers.iter().enumerate() {
                if b.capacity() >= len
                    && best.is_none_or(|j| b.capacity() < p.buffers[j].capacity())
                {
                    best = Some(i);
                }
            }
            best.map(|i| {
                let b = p.buffers.swap_remove(i);
                p.bytes -= b.capacity();
                b
            })
        };
        match found {
            Some(mut b) => {
                // Keeping the previous length means only a grown tail gets zeroed.
                b.resize(len, 0);
                b
            }
            None => vec![0; len],
        }
    }

    fn put(&self, b: Vec<u8>) {
        if b.capacity() == 0 || b.capacity() > MAX_PAYLOAD_BYTES as usize {
            return;
        }
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if p.buffers.len() < self.max_buffers && p.bytes + b.capacity() <= self.max_bytes {
            p.bytes += b.capacity();
            p.buffers.push(b);
        }
    }
}

/// The supplementary groups of a Unix-socket peer, as they were when it connected
/// (`SO_PEERGROUPS`, Linux 4.13+).
fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for writes of `len` bytes, and the descriptor is
        // open for the duration of the call.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<u32>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the kernel said how many there are; try once more with room for them.
        if e.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(e);
        }
        groups.resize(needed, 0);
    }
}

/// Gives `dir` the mode and group of `access` (0700, or 0710 and the group's): the
/// directory of the server's sockets is where access is decided first. Only for a
/// directory the server owns, such as [`DEFAULT_SOCKET_DIR`].
pub fn secure_socket_dir(dir: &Path, access: &UnixAccess) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let io_err = |context: String| move |source| ServerError::Io { context, source };
    std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    std::os::unix::fs::chown(dir, None, access.group)
        .map_err(io_err(format!("chown {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(access.dir_mode()))
        .map_err(io_err(format!("chmod {}", dir.display())))
}

/// Bind a Unix socket at `path` with the mode and group of `access` (0600, or 0660 and
/// the group's). Missing directories are created with the mode of `access`'s directory;
/// an existing one is left as it is (see [`secure_socket_dir`]). A stale socket file
/// left by a dead server is replaced; a live one is an error.
pub async fn bind_unix(path: &Path, access: &UnixAccess) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io_err = |context: String| move |source| ServerError::Io { context, source };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(access.dir_mode())
            .create(dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        // Only ever replace a socket: a misconfigured path must not delete a file.
        if !meta.file_type().is_socket() {
            return Err(ServerError::Io {
                context: format!("bind {}", path.display()),
                source: io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"),
            });
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path)
            .map_err(io_err(format!("remove stale socket {}", path.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err(format!("bind {}", path.display())))?;
    // Until these two calls the socket has the umask's mode: a client could connect only
    // if the directory let it through, and `serve_unix` checks every peer anyway.
    std::os::unix::fs::chown(path, None, access.group)
        .map_err(io_err(format!("chown {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.socket_mode()))
        .map_err(io_err(format!("chmod {}", path.display())))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_best_fit_and_bounds_bytes() {
        let p = BufferPool::new(4, 3 << 20);
        p.put(vec![1; 1 << 20]);
        p.put(vec![2; 4096]);
        let b = p.take(4000);
        assert_eq!(b.len(), 4000);
        assert_eq!(b.capacity(), 4096);
        let b = p.take(1 << 20);
        assert_eq!(b.capacity(), 1 << 20);
        p.put(vec![0; 2 << 20]);
        p.put(vec![0; 2 << 20]); // over the byte budget: dropped
        assert_eq!(p.inner.lock().unwrap().buffers.len(), 1);
    }

    #[tokio::test]
    async fn bind_unix_replaces_stale_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sub/d.nbd");
        let root_only = UnixAccess::default();
        let l = bind_unix(&sock, &root_only).await.unwrap();
        assert!(matches!(
            bind_unix(&sock, &root_only).await,
            Err(ServerError::SocketInUse(_))
        ));
        drop(l);
        // The socket file is left behind by the dropped listener: stale, so replaced.
        let _l = bind_unix(&sock, &root_only).await.unwrap();
        let file = dir.path().join("precious");
        std::fs::write(&file, b"keep").unwrap();
        assert!(bind_unix(&file, &root_only).await.is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    fn mode_and_group(p: &Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.mode() & 0o7777, m.gid())
    }

    /// Sockets are 0600 in a 0700 directory, or 0660 in a 0710 directory and owned by
    /// the allowed group; an existing directory is tightened by `secure_socket_dir`.
    #[tokio::test]
    async fn sockets_and_their_directory_get_the_modes_of_their_access() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("new/a.nbd");
        let _a = bind_unix(&sock, &UnixAccess::default()).await.unwrap();
        assert_eq!(mode_and_group(&sock).0, 0o600);
        assert_eq!(mode_and_group(sock.parent().unwrap()).0, 0o700);
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        let group = UnixAccess { group: Some(gid) };
        let sock = dir.path().join("grp/b.nbd");
        let _b = bind_unix(&sock, &group).await.unwrap();
        assert_eq!(mode_and_group(&sock), (0o660, gid));
        assert_eq!(mode_and_group(sock.parent().unwrap()).0, 0o710);
        let old = dir.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        secure_socket_dir(&old, &UnixAccess::default()).unwrap();
        assert_eq!(mode_and_group(&old).0, 0o700);
    }

    #[test]
    fn unix_access_allows_root_our_user_and_the_group_only() {
        let root_only = UnixAccess::default();
        let disk = UnixAccess { group: Some(6) };
        assert!(root_only.allows(0, 0, 0, &[]));
        assert!(root_only.allows(1000, 1000, 1000, &[]), "our own user");
        assert!(!root_only.allows(0, 1000, 6, &[6]), "no group configured");
        assert!(disk.allows(0, 1000, 6, &[]), "primary group");
        assert!(disk.allows(0, 1000, 100, &[4, 6]), "supplementary group");
        assert!(!disk.allows(0, 1000, 100, &[4, 7]));
    }

    #[test]
    fn flags_follow_capabilities_and_role() {
        let f = transmission_flags(Capabilities::default(), false);
        assert_ne!(f & tflag::READ_ONLY, 0);
        assert_ne!(f & tflag::SEND_FUA, 0);
        assert_ne!(f & tflag::CAN_MULTI_CONN, 0);
        let f = transmission_flags(
            Capabilities {
                trim: false,
                ..Capabilities::default()
            },
            true,
        );
        assert_eq!(f & (tflag::READ_ONLY | tflag::SEND_TRIM), 0);
    }
}
