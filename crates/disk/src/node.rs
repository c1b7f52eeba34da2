//! The I/O driver: runs one [`Core`] for real, with a file or block device as backing
//! store, [`MetaStore`] for metadata, and an authenticated TCP replication link (tokio).
//!
//! ```text
//!   NodeHandle (frontend + admin) ──cmd──▶ ┌──────────────┐ ◀──frames── link reader task
//!                                          │  event loop  │ ──frames──▶ link writer task
//!   blocking I/O (spawn_blocking) ─IoDone─▶│  owns Core   │
//!   20 ms tick ───────────────────────────▶└──────────────┘
//! ```
//!
//! The loop is the only place that reads the clock. Connection rule: the node whose
//! replication address sorts lower dials, the other accepts; both authenticate each other
//! with a challenge/response over the shared secret before the core sees the link.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::core::{
    AdminError, Config, ConnState, Core, Input, IoFailure, Output, RequestError, Status, WriteAck,
};
use crate::meta::{MetaError, MetaLocation, MetaStore};
use tandem_wire::frame::{self, Frame, HEADER_LEN, Header};

/// Everything one node of one resource needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
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
    /// Core tunables.
    pub core: Config,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
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
    Verify(oneshot::Sender<Result<(), AdminError>>),
    Invalidate(oneshot::Sender<Result<(), AdminError>>),
    Status(oneshot::Sender<Status>),
    SetResyncPaused(bool),
    StartupWait(u64, u64, oneshot::Sender<u64>),
    Shutdown(oneshot::Sender<()>),
}

enum Event {
    IoDone(u64, Result<Option<Bytes>, IoFailure>),
    /// An authenticated connection. Its reader and writer are started by the event loop
    /// only once it has made this connection the link: were the reader started earlier,
    /// the peer's first `State` could reach the loop before `LinkUp`, be dropped as a
    /// frame of an unknown link, and leave the core in `Handshaking` for good.
    LinkUp(u64, OwnedReadHalf, OwnedWriteHalf),
    Frame(u64, Frame),
    LinkDown(u64),
    DialFailed,
}

/// A running node: the frontend and admin interface.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Cmd>,
    size_bytes: u64,
    link: watch::Receiver<LinkState>,
}

/// The link as the event loop last left it, published on a `watch` channel
/// ([`NodeHandle::link`]) after every step of the loop.
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
}

impl NodeHandle {
    /// Usable size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The link's state, kept current by the event loop itself (no request, no polling):
    /// `changed()` / `wait_for()` wake on every change it makes.
    pub fn link(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Writes `data` at `offset_bytes` (primary only).
    pub async fn write(
        &self,
        offset_bytes: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<Result<WriteAck, RequestError>, NodeError> {
        self.ask(|tx| Cmd::Write(offset_bytes, data, fua, tx)).await
    }

    /// Reads `len_bytes` at `offset_bytes` (primary only).
    pub async fn read(
        &self,
        offset_bytes: u64,
        len_bytes: u32,
    ) -> Result<Result<Bytes, RequestError>, NodeError> {
        self.ask(|tx| Cmd::Read(offset_bytes, len_bytes, tx)).await
    }

    /// Makes acknowledged writes durable (per protocol, on both sides).
    pub async fn flush(&self) -> Result<Result<(), RequestError>, NodeError> {
        self.ask(Cmd::Flush).await
    }

    /// `tandem disk primary [--force]`.
    pub async fn promote(&self, force: bool) -> Result<Result<(), AdminError>, NodeError> {
        self.ask(|tx| Cmd::Promote(force, tx)).await
    }

    /// `tandem disk secondary`.
    pub async fn demote(&self) -> Result<Result<(), AdminError>, NodeError> {
        self.ask(Cmd::Demote).await
    }

    /// `tandem disk connect [--discard-my-data]`.
    pub async fn connect(&self, discard_my_data: bool) -> Result<(), NodeError> {
        self.tx
            .send(Cmd::Connect(discard_my_data))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// `tandem disk disconnect`.
    pub async fn disconnect(&self) -> Result<(), NodeError> {
        self.tx
            .send(Cmd::Disconnect)
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// `tandem disk verify`.
    pub async fn verify(&self) -> Result<Result<(), AdminError>, NodeError> {
        self.ask(Cmd::Verify).await
    }

    /// `tandem disk invalidate`.
    pub async fn invalidate(&self) -> Result<Result<(), AdminError>, NodeError> {
        self.ask(Cmd::Invalidate).await
    }

    /// Status snapshot.
    pub async fn status(&self) -> Result<Status, NodeError> {
        self.ask(Cmd::Status).await
    }

    /// Holds back (or releases) this disk's resync requests: the agent runs resync
    /// groups in order with it (see `core::resync::groups_allowed`).
    pub async fn set_resync_paused(&self, paused: bool) -> Result<(), NodeError> {
        self.tx
            .send(Cmd::SetResyncPaused(paused))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// How long startup should wait for the peer (`Core::startup_wait_ms`: the degraded
    /// value when this disk last ran without its peer; 0 = forever).
    pub async fn startup_wait_ms(
        &self,
        wfc_timeout_ms: u64,
        degr_wfc_timeout_ms: u64,
    ) -> Result<u64, NodeError> {
        self.ask(|tx| Cmd::StartupWait(wfc_timeout_ms, degr_wfc_timeout_ms, tx))
            .await
    }

    /// Stops the node (`tandem disk down`): the link closes, metadata stays as it is.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.ask(Cmd::Shutdown).await
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(f) = File::open("/dev/urandom") {
        let _ = f.read_exact_at(&mut b, 0);
    }
    u64::from_le_bytes(b) ^ u64::from(std::process::id())
}

/// The one place this driver reads the clock.
#[allow(clippy::disallowed_methods)]
fn clock_now() -> Instant {
    Instant::now()
}

fn random_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    for c in n.chunks_mut(8) {
        c.copy_from_slice(&random_u64().to_le_bytes());
    }
    n
}

/// Starts a node: opens metadata (refusing bad metadata), attaches the core, listens
/// on `cfg.listen`, and begins connecting. The node starts secondary.
pub async fn start(cfg: NodeConfig) -> Result<NodeHandle, NodeError> {
    let (store, meta) = MetaStore::open(&cfg.backing, &cfg.meta)?;
    let data = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cfg.backing)
        .map_err(io_err(format!("open {}", cfg.backing.display())))?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(io_err(format!("listen on {}", cfg.listen)))?;
    let size_bytes = meta.size_bytes;
    let clock = clock_now();
    let now_ms = || clock_now().duration_since(clock).as_millis() as u64;
    let mut core = Core::new(cfg.core.clone(), meta, random_u64(), now_ms());
    core.connect(now_ms(), false);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    let dialer = cfg.listen.to_string() < cfg.peer.to_string();
    let link_published = core.connection();
    let (link_tx, link_rx) = watch::channel(LinkState {
        connection: link_published,
        handshakes: 0,
    });
    let driver = Driver {
        cfg: Arc::new(cfg),
        core,
        data: Arc::new(data),
        store: Arc::new(Mutex::new(store)),
        ev_tx,
        link: None,
        next_link: 1,
        dialing: false,
        last_dial: None,
        dialer,
        next_req: 1,
        writes: HashMap::new(),
        reads: HashMap::new(),
        flushes: HashMap::new(),
        clock,
        link_state: link_tx,
        link_published,
    };
    tokio::spawn(driver.run(cmd_rx, ev_rx, listener));
    Ok(NodeHandle {
        tx: cmd_tx,
        size_bytes,
        link: link_rx,
    })
}

struct Link {
    id: u64,
    tx: mpsc::UnboundedSender<Frame>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Driver {
    cfg: Arc<NodeConfig>,
    core: Core,
    data: Arc<File>,
    store: Arc<Mutex<MetaStore>>,
    ev_tx: mpsc::Sender<Event>,
    link: Option<Link>,
    next_link: u64,
    dialing: bool,
    last_dial: Option<Instant>,
    dialer: bool,
    next_req: u64,
    writes: HashMap<u64, oneshot::Sender<Result<WriteAck, RequestError>>>,
    reads: HashMap<u64, oneshot::Sender<Result<Bytes, RequestError>>>,
    flushes: HashMap<u64, oneshot::Sender<Result<(), RequestError>>>,
    clock: Instant,
    /// Published after every step of the loop that changes it (see [`LinkState`]).
    link_state: watch::Sender<LinkState>,
    /// The connection state last published: the per-step check costs no lock.
    link_published: ConnState,
}

impl Driver {
    fn now_ms(&self) -> u64 {
        clock_now().duration_since(self.clock).as_millis() as u64
    }

    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Cmd>,
        mut ev_rx: mpsc::Receiver<Event>,
        listener: TcpListener,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Cmd::Shutdown(done) = cmd {
                        self.link = None;
                        let _ = done.send(());
                        break;
                    }
                    self.on_cmd(cmd);
                }
                ev = ev_rx.recv() => {
                    let Some(ev) = ev else { break };
                    self.on_event(ev);
                }
                acc = listener.accept() => {
                    if let Ok((sock, _)) = acc {
                        if !self.dialer && self.link.is_none() && self.core.wants_connection() {
                            let id = self.next_link;
                            self.next_link += 1;
                            tokio::spawn(establish(sock, false, self.cfg.secret.clone(), id, self.ev_tx.clone()));
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = self.now_ms();
                    self.core.handle(now, Input::Tick);
                    self.maybe_dial();
                }
            }
            self.drain();
            self.publish_link_state();
        }
    }

    /// Publishes the connection state if this step changed it, counting every completed
    /// handshake. Waiters are woken by the loop itself, in the step that connected.
    fn publish_link_state(&mut self) {
        let now = self.core.connection();
        if now == self.link_published {
            return;
        }
        let was = std::mem::replace(&mut self.link_published, now);
        self.link_state.send_modify(|l| {
            if handshake_done(now) && !handshake_done(was) {
                l.handshakes += 1;
            }
            l.connection = now;
        });
    }

    fn maybe_dial(&mut self) {
        if !self.dialer || self.dialing || self.link.is_some() || !self.core.wants_connection() {
            return;
        }
        let now = clock_now();
        if self
            .last_dial
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(500))
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
                _ => {
                    let _ = ev.send(Event::DialFailed).await;
                }
            }
        });
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let now = self.now_ms();
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
            Cmd::Demote(tx) => {
                let _ = tx.send(self.core.demote(now));
            }
            Cmd::Connect(discard) => self.core.connect(now, discard),
            Cmd::Disconnect => self.core.disconnect(now),
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
        let now = self.now_ms();
        match ev {
            Event::IoDone(io, result) => self.core.handle(now, Input::IoDone { io, result }),
            Event::LinkUp(id, rd, wr) => {
                self.dialing = false;
                if self.link.is_none()
                    && self.core.wants_connection()
                    && self.core.connection() == crate::core::ConnState::Connecting
                {
                    // Registered before its reader exists: every `Frame(id)` event is
                    // queued behind this one.
                    let (tx, tasks) = run_link(id, rd, wr, self.ev_tx.clone());
                    self.link = Some(Link { id, tx, tasks });
                    self.core.handle(now, Input::Connected);
                }
                // Otherwise the halves drop here and the socket closes.
            }
            Event::Frame(id, f) => {
                if self.link.as_ref().is_some_and(|l| l.id == id) {
                    self.core.handle(now, Input::Frame(f));
                }
            }
            Event::LinkDown(id) => {
                if self.link.as_ref().is_some_and(|l| l.id == id) {
                    self.link = None;
                    self.core.handle(now, Input::Disconnected);
                } else if self.link.is_none() {
                    self.dialing = false;
                }
            }
            Event::DialFailed => self.dialing = false,
        }
    }

    /// Carries out everything the core asked for.
    fn drain(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::WriteLocal {
                    io,
                    offset_bytes,
                    data,
                    fua,
                } => {
                    let f = self.data.clone();
                    self.blocking(io, move || {
                        f.write_all_at(&data, offset_bytes)?;
                        if fua {
                            f.sync_data()?;
                        }
                        Ok(None)
                    });
                }
                Output::ReadLocal {
                    io,
                    offset_bytes,
                    len_bytes,
                } => {
                    let f = self.data.clone();
                    self.blocking(io, move || {
                        let mut b = vec![0u8; len_bytes as usize];
                        f.read_exact_at(&mut b, offset_bytes)?;
                        Ok(Some(Bytes::from(b)))
                    });
                }
                Output::FlushLocal { io } => {
                    let f = self.data.clone();
                    self.blocking(io, move || {
                        f.sync_data()?;
                        Ok(None)
                    });
                }
                Output::PersistMeta { io, write } => {
                    let f = self.data.clone();
                    let store = self.store.clone();
                    self.blocking(io, move || {
                        // Data first, then the metadata block (the core's contract).
                        f.sync_data()?;
                        let mut s = store
                            .lock()
                            .map_err(|_| std::io::Error::other("metadata lock poisoned"))?;
                        s.write(&write).map_err(std::io::Error::other)?;
                        Ok(None)
                    });
                }
                Output::Send(f) => {
                    if let Some(l) = &self.link {
                        let _ = l.tx.send(f);
                    }
                }
                Output::Disconnect { .. } => self.link = None,
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
/// past the handshake here: the frames after it belong to the loop (see [`run_link`]).
async fn establish(
    sock: TcpStream,
    initiator: bool,
    secret: Vec<u8>,
    id: u64,
    ev: mpsc::Sender<Event>,
) {
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let auth = async {
        let mine = random_nonce();
        wr.write_all(&Frame::AuthChallenge { nonce: mine }.to_bytes())
            .await
            .ok()?;
        let Frame::AuthChallenge { nonce: theirs } = read_frame(&mut rd).await.ok()? else {
            return None;
        };
        let mac = frame::auth_response(&secret, &theirs, initiator);
        wr.write_all(&Frame::AuthResponse { mac }.to_bytes())
            .await
            .ok()?;
        let Frame::AuthResponse { mac } = read_frame(&mut rd).await.ok()? else {
            return None;
        };
        frame::auth_verify(&secret, &mine, !initiator, &mac).then_some(())
    };
    let ok = tokio::time::timeout(Duration::from_secs(5), auth)
        .await
        .ok()
        .flatten()
        .is_some();
    if !ok {
        let _ = ev.send(Event::LinkDown(id)).await;
        return;
    }
    let _ = ev.send(Event::LinkUp(id, rd, wr)).await;
}

/// Starts the reader and writer of the link `id`. Called by the event loop after it
/// registered the link, so the reader's first `Frame(id)` cannot overtake `LinkUp`.
fn run_link(
    id: u64,
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    ev: mpsc::Sender<Event>,
) -> (mpsc::UnboundedSender<Frame>, Vec<JoinHandle<()>>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let ev_r = ev.clone();
    let reader = tokio::spawn(async move {
        loop {
            match read_frame(&mut rd).await {
                Ok(f) => {
                    if ev_r.send(Event::Frame(id, f)).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = ev_r.send(Event::LinkDown(id)).await;
                    return;
                }
            }
        }
    });
    let ev_w = ev;
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(1 << 20);
        while let Some(f) = rx.recv().await {
            buf.clear();
            f.encode(&mut buf);
            // Batch whatever else is queued into the same write.
            while buf.len() < (4 << 20) {
                match rx.try_recv() {
                    Ok(f) => f.encode(&mut buf),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                let _ = ev_w.send(Event::LinkDown(id)).await;
                return;
            }
        }
    });
    (tx, vec![reader, writer])
}

#[derive(Debug)]
enum ReadError {
    Io,
    Decode,
}

async fn read_frame(rd: &mut OwnedReadHalf) -> Result<Frame, ReadError> {
    let mut h = [0u8; HEADER_LEN];
    rd.read_exact(&mut h).await.map_err(|_| ReadError::Io)?;
    let header = Header::decode(&h).map_err(|_| ReadError::Decode)?;
    let mut payload = vec![0u8; header.length as usize];
    rd.read_exact(&mut payload)
        .await
        .map_err(|_| ReadError::Io)?;
    Frame::decode_payload(&header, &h, &payload).map_err(|_| ReadError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression for the precise cause of `node_loopback` hanging in `Handshaking`: the
    /// link's reader used to start inside `establish`, before `LinkUp` was queued, so a
    /// `State` sent right behind the handshake could reach the loop first and be dropped
    /// as a frame of an unknown link. Now nothing past the handshake is read until the
    /// loop starts the link, and then that frame is the first event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_frame_of_a_link_is_read_before_the_loop_starts_it() {
        let secret = b"s3cret".to_vec();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer_secret = secret.clone();
        // Scripted initiator: its answer and the next frame leave in one write.
        let peer = tokio::spawn(async move {
            let sock = TcpStream::connect(addr).await.unwrap();
            let (mut rd, mut wr) = sock.into_split();
            let mine = [7u8; 32];
            wr.write_all(&Frame::AuthChallenge { nonce: mine }.to_bytes())
                .await
                .unwrap();
            let Ok(Frame::AuthChallenge { nonce }) = read_frame(&mut rd).await else {
                panic!("no challenge");
            };
            let mac = frame::auth_response(&peer_secret, &nonce, true);
            let mut glued = Frame::AuthResponse { mac }.to_bytes();
            glued.extend(Frame::Ping.to_bytes());
            wr.write_all(&glued).await.unwrap();
            let Ok(Frame::AuthResponse { mac }) = read_frame(&mut rd).await else {
                panic!("no answer");
            };
            assert!(frame::auth_verify(&peer_secret, &mine, false, &mac));
            (rd, wr)
        });
        let (sock, _) = listener.accept().await.unwrap();
        let (ev_tx, mut ev_rx) = mpsc::channel(16);
        establish(sock, false, secret, 7, ev_tx.clone()).await;
        let _peer_halves = peer.await.unwrap();
        let Some(Event::LinkUp(7, mut rd, wr)) = ev_rx.recv().await else {
            panic!("authenticated link not handed to the loop first");
        };
        // The frame behind the handshake is still unread, and no event overtook LinkUp.
        let mut magic = [0u8; 4];
        rd.peek(&mut magic).await.unwrap();
        assert_eq!(&magic, b"TDRF", "the next frame waits in the socket");
        assert!(
            ev_rx.try_recv().is_err(),
            "nothing queued behind LinkUp yet"
        );
        // Once the loop has registered the link it starts it; the frame follows.
        let (_tx, tasks) = run_link(7, rd, wr, ev_tx);
        match ev_rx.recv().await {
            Some(Event::Frame(7, Frame::Ping)) => {}
            _ => panic!("the glued frame is the link's first event"),
        }
        for t in tasks {
            t.abort();
        }
    }
}
