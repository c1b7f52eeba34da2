//! A thin blocking driver (feature `driver`): runs one [`Membership`] core on a
//! dedicated thread over real UDP sockets and serial lines.
//!
//! ```text
//!   caller ── send_message / status / link hints ──► command channel + wake pipe ─┐
//!                                                                                  ▼
//!   UDP sockets, ttys ──poll(2)──► thread "tandem-membership": core.handle_* ──► sendto / write
//!                                                   │
//!   caller ◄── events() (with the Instant they happened) ◄─┘
//! ```
//!
//! Why a plain thread and `poll(2)` rather than the async runtime: the heartbeat path
//! must never wait behind disk I/O, resource actions or a busy executor (a false "dead"
//! under load is how split brains start). The thread owns the core; everything else
//! talks to it through a channel and a self-pipe. This is the only place in the crate
//! that reads the clock.
//!
//! One link's trouble is that link's alone. An error that retrying the same socket
//! cannot cure (`ENODEV` once its interface is deleted, `EIO` writing a serial line)
//! closes that link — the core is told it is down and [`Event::LinkClosed`] says why —
//! and the driver reopens it from its [`Medium`] after [`REOPEN_BACKOFF_MIN`], doubling
//! up to [`REOPEN_BACKOFF_MAX`] while reopening fails; [`Event::LinkReopened`] follows.
//! The other links go on carrying heartbeats the whole time. Only a failure of the
//! thread itself (its `poll`) ends it; [`Driver::failure`] then says why.

use std::fs::OpenOptions;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tandem_wire::serial::{FrameDecoder, encode_frame};

use crate::config::{LinkId, NodeId};
use crate::core::{Event, Membership, MessageId, SendError};
use crate::status::Status;

/// The default Heartbeat UDP port.
pub const DEFAULT_PORT: u16 = 694;

/// Bytes of serial output that may wait for the line before new frames are dropped
/// (a heartbeat dropped on a slow line is better than an ever-growing backlog).
const SERIAL_BACKLOG_LIMIT: usize = 16 * 1024;

/// The medium behind one link.
#[derive(Debug)]
pub enum Medium {
    /// UDP unicast to fixed peers (Heartbeat `ucast DEV ADDR`).
    Ucast {
        /// Local address to bind (its port is the one peers send to).
        bind: SocketAddr,
        /// Peer addresses; every packet goes to each.
        peers: Vec<SocketAddr>,
        /// Interface to bind to (`SO_BINDTODEVICE`), if any.
        device: Option<String>,
    },
    /// UDP broadcast (Heartbeat `bcast DEV`).
    Bcast {
        /// Local address to bind, usually `0.0.0.0:694` (a specific address would not
        /// receive broadcasts).
        bind: SocketAddr,
        /// Broadcast address and port to send to.
        broadcast: SocketAddr,
        /// Interface to bind to (`SO_BINDTODEVICE`), if any.
        device: Option<String>,
    },
    /// UDP multicast (Heartbeat `mcast DEV GROUP PORT TTL LOOP`).
    Mcast {
        /// Group to join and send to.
        group: Ipv4Addr,
        /// Port.
        port: u16,
        /// Local interface address for joining and sending.
        interface: Ipv4Addr,
        /// Multicast TTL.
        ttl: u32,
        /// Whether our own packets loop back (they are then dropped as `own_packet`).
        loopback: bool,
        /// Interface to bind to (`SO_BINDTODEVICE`), if any.
        device: Option<String>,
    },
    /// A serial line (Heartbeat `serial /dev/ttyS0` with `baud`).
    Serial {
        /// The tty.
        path: PathBuf,
        /// Line speed in bits per second.
        baud: u32,
    },
    /// An already-open tty (e.g. a pty master); it is switched to raw mode.
    SerialFd {
        /// The open descriptor (ownership passes to the driver).
        fd: OwnedFd,
    },
}

/// One link: its id in the membership configuration and its medium.
#[derive(Debug)]
pub struct LinkSpec {
    /// Link id (as in `MembershipConfig::links`).
    pub id: LinkId,
    /// The medium.
    pub medium: Medium,
}

/// An event with the moment the driver saw it (for detection-time measurements).
#[derive(Debug, Clone)]
pub struct TimedEvent {
    /// When.
    pub at: Instant,
    /// What.
    pub event: Event,
}

/// Why a request to the driver failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The core refused the message.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The driver thread has stopped.
    #[error("membership driver thread has stopped")]
    Stopped,
}

enum Command {
    Send {
        to: NodeId,
        payload: Vec<u8>,
        reply: mpsc::Sender<Result<MessageId, SendError>>,
    },
    Status(mpsc::Sender<Status>),
    LinkDown(LinkId),
    LinkUp(LinkId),
    Stop,
}

enum Io {
    Udp {
        socket: UdpSocket,
        destinations: Vec<SocketAddr>,
    },
    Serial {
        fd: OwnedFd,
        decoder: FrameDecoder,
        backlog: Vec<u8>,
    },
}

/// One link: how to open it, and its socket or tty while it is open.
struct OpenLink {
    id: LinkId,
    /// What to reopen after an error.
    medium: Medium,
    /// `None` while closed after an error.
    io: Option<Io>,
    /// Open: a tty whose other end hung up is not polled until then (poll would report
    /// the hang-up in a tight loop). Closed: the next reopen attempt.
    paused_until: Option<Instant>,
    /// The wait before the next reopen attempt after this one fails.
    backoff: Duration,
    /// Why the link is closed.
    error: Option<String>,
}

/// How long a hung-up tty is left alone before it is polled again.
const HANGUP_PAUSE: Duration = Duration::from_millis(200);

/// The first wait before a closed link is reopened.
pub const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// The longest wait between attempts to reopen a closed link.
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A running driver. Dropping it stops the thread.
pub struct Driver {
    thread: Option<JoinHandle<io::Result<()>>>,
    commands: mpsc::Sender<Command>,
    wake: OwnedFd,
    // Behind a mutex so that a `Driver` can be shared between threads (one of which
    // waits for events while others ask for status or send messages).
    events: std::sync::Mutex<mpsc::Receiver<TimedEvent>>,
    realtime: Result<(), String>,
    tid: libc::pid_t,
    failure: Arc<Mutex<Option<String>>>,
}

/// How the driver thread runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run the thread under SCHED_RR at this priority (1–99). Heartbeat ran its heartbeat
    /// path the same way (`realtime on`): on a loaded machine an ordinary thread can wait
    /// long enough for a live node to look dead. Best effort: see [`Driver::realtime`].
    pub realtime_priority: Option<i32>,
}

/// The one clock read in this crate.
fn clock() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

/// Puts the calling thread under SCHED_RR at `priority`.
fn set_realtime(priority: i32) -> Result<(), String> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: changes the calling thread's scheduling; `param` is valid for the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_RR, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "SCHED_RR priority {priority}: {}",
            io::Error::from_raw_os_error(rc)
        ))
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn udp(bind: SocketAddr, device: Option<&str>) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // Several agents on one machine (tests) and bcast/mcast listeners share the port.
    s.set_reuse_address(true)?;
    if let Some(dev) = device {
        s.bind_device(Some(dev.as_bytes()))?;
    }
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    Ok(s)
}

fn baud_constant(baud: u32) -> io::Result<libc::speed_t> {
    Ok(match baud {
        1200 => libc::B1200,
        2400 => libc::B2400,
        4800 => libc::B4800,
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115200 => libc::B115200,
        230400 => libc::B230400,
        460800 => libc::B460800,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsupported baud rate {baud}"),
            ));
        }
    })
}

/// Raw 8N1, no flow control, non-blocking; `baud` if given.
fn make_raw(fd: RawFd, baud: Option<u32>) -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd, which the caller
    // owns for the duration of the call.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        cvt(libc::tcgetattr(fd, &mut t))?;
        libc::cfmakeraw(&mut t);
        t.c_cflag |= libc::CLOCAL | libc::CREAD;
        t.c_cflag &= !libc::CRTSCTS;
        if let Some(b) = baud {
            let speed = baud_constant(b)?;
            cvt(libc::cfsetispeed(&mut t, speed))?;
            cvt(libc::cfsetospeed(&mut t, speed))?;
        }
        cvt(libc::tcsetattr(fd, libc::TCSANOW, &t))?;
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Opens the socket or tty of `medium` (again, after an error: it stays the recipe).
fn open_io(medium: &Medium) -> io::Result<Io> {
    Ok(match medium {
        Medium::Ucast {
            bind,
            peers,
            device,
        } => {
            let s = udp(*bind, device.as_deref())?;
            s.bind(&(*bind).into())?;
            Io::Udp {
                socket: s.into(),
                destinations: peers.clone(),
            }
        }
        Medium::Bcast {
            bind,
            broadcast,
            device,
        } => {
            let s = udp(*bind, device.as_deref())?;
            s.set_broadcast(true)?;
            s.bind(&(*bind).into())?;
            Io::Udp {
                socket: s.into(),
                destinations: vec![*broadcast],
            }
        }
        Medium::Mcast {
            group,
            port,
            interface,
            ttl,
            loopback,
            device,
        } => {
            let bind = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, *port));
            let s = udp(bind, device.as_deref())?;
            s.bind(&bind.into())?;
            s.join_multicast_v4(group, interface)?;
            s.set_multicast_if_v4(interface)?;
            s.set_multicast_ttl_v4(*ttl)?;
            s.set_multicast_loop_v4(*loopback)?;
            Io::Udp {
                socket: s.into(),
                destinations: vec![SocketAddr::V4(SocketAddrV4::new(*group, *port))],
            }
        }
        Medium::Serial { path, baud } => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
            let fd = OwnedFd::from(file);
            make_raw(fd.as_raw_fd(), Some(*baud))?;
            Io::Serial {
                fd,
                decoder: FrameDecoder::new(),
                backlog: Vec::new(),
            }
        }
        Medium::SerialFd { fd } => {
            // A duplicate: the medium keeps the original to reopen from.
            let fd = fd.try_clone()?;
            make_raw(fd.as_raw_fd(), None)?;
            Io::Serial {
                fd,
                decoder: FrameDecoder::new(),
                backlog: Vec::new(),
            }
        }
    })
}

fn open_link(spec: LinkSpec) -> io::Result<OpenLink> {
    Ok(OpenLink {
        id: spec.id,
        io: Some(open_io(&spec.medium)?),
        medium: spec.medium,
        paused_until: None,
        backoff: REOPEN_BACKOFF_MIN,
        error: None,
    })
}

impl OpenLink {
    /// Closes the link after `e`: the core stops sending on it, the caller hears why,
    /// and a reopen is due after the current backoff.
    fn close(
        &mut self,
        e: &io::Error,
        core: &mut Membership,
        events: &mpsc::Sender<TimedEvent>,
        now: Instant,
    ) {
        self.io = None;
        self.error = Some(e.to_string());
        self.paused_until = Some(now + self.backoff);
        core.link_down(self.id, now);
        let _ = events.send(TimedEvent {
            at: now,
            event: Event::LinkClosed {
                link: self.id,
                error: e.to_string(),
            },
        });
    }

    /// Tries to reopen a closed link whose wait is over.
    fn reopen_if_due(
        &mut self,
        core: &mut Membership,
        events: &mpsc::Sender<TimedEvent>,
        now: Instant,
    ) {
        if self.io.is_some() || self.paused_until.is_some_and(|t| t > now) {
            return;
        }
        match open_io(&self.medium) {
            Ok(io) => {
                self.io = Some(io);
                self.error = None;
                self.paused_until = None;
                core.link_up(self.id, now);
                let _ = events.send(TimedEvent {
                    at: now,
                    event: Event::LinkReopened { link: self.id },
                });
            }
            Err(e) => {
                self.backoff = (self.backoff * 2).min(REOPEN_BACKOFF_MAX);
                self.error = Some(format!("{e} (reopening)"));
                self.paused_until = Some(now + self.backoff);
            }
        }
    }
}

impl Driver {
    /// Opens every link (errors come back here, before anything runs), then starts the
    /// thread that runs `core`.
    pub fn start(core: Membership, links: Vec<LinkSpec>) -> io::Result<Driver> {
        Self::start_with(core, links, Options::default())
    }

    /// As [`Driver::start`], with options.
    pub fn start_with(
        core: Membership,
        links: Vec<LinkSpec>,
        options: Options,
    ) -> io::Result<Driver> {
        let links = links
            .into_iter()
            .map(open_link)
            .collect::<io::Result<Vec<_>>>()?;
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (wake_rx, wake_tx) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::channel();
        let (rt_tx, rt_rx) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let failed = Arc::clone(&failure);
        let thread = std::thread::Builder::new()
            .name("tandem-membership".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                let rt = options.realtime_priority.map_or(Ok(()), set_realtime);
                let _ = rt_tx.send((rt, tid));
                // The reason is recorded before the event channel closes (it closes
                // when this closure returns), so whoever sees it closed can read it.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(core, links, wake_rx, cmd_rx, &ev_tx)
                }))
                .unwrap_or_else(|_| Err(io::Error::other("membership thread panicked")));
                if let Err(e) = &result {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
                drop(ev_tx);
                result
            })?;
        let (realtime, tid) = rt_rx
            .recv()
            .unwrap_or_else(|_| (Err("the membership thread ended at start".into()), 0));
        Ok(Driver {
            thread: Some(thread),
            commands: cmd_tx,
            wake: wake_tx,
            events: std::sync::Mutex::new(ev_rx),
            realtime,
            tid,
            failure,
        })
    }

    /// Why the driver thread ended by itself, once it has (an error of its `poll`, or a
    /// panic). The events channel closes right after this is set.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Events, in order, with the time the driver saw them. One consumer at a time.
    pub fn events(&self) -> std::sync::MutexGuard<'_, mpsc::Receiver<TimedEvent>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kernel thread id of the heartbeat thread (for `chrt -p`, cgroups, tests).
    pub fn thread_id(&self) -> libc::pid_t {
        self.tid
    }

    /// Whether the real-time priority asked for in [`Options`] was granted (and why not).
    pub fn realtime(&self) -> Result<(), &str> {
        self.realtime.as_ref().map(|_| ()).map_err(String::as_str)
    }

    fn command(&self, c: Command) -> Result<(), DriverError> {
        self.commands.send(c).map_err(|_| DriverError::Stopped)?;
        // SAFETY: writing one byte from a valid buffer to a descriptor we own. A full
        // pipe (EAGAIN) is fine: the thread is already due to wake up.
        unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        Ok(())
    }

    /// Queues a reliable message (see [`Membership::send_message`]).
    pub fn send_message(&self, to: NodeId, payload: Vec<u8>) -> Result<MessageId, DriverError> {
        let (reply, rx) = mpsc::channel();
        self.command(Command::Send { to, payload, reply })?;
        Ok(rx.recv().map_err(|_| DriverError::Stopped)??)
    }

    /// The core's status now.
    pub fn status(&self) -> Result<Status, DriverError> {
        let (reply, rx) = mpsc::channel();
        self.command(Command::Status(reply))?;
        rx.recv().map_err(|_| DriverError::Stopped)
    }

    /// Reports a link down (see [`Membership::link_down`]).
    pub fn link_down(&self, link: LinkId) -> Result<(), DriverError> {
        self.command(Command::LinkDown(link))
    }

    /// Reports a link up (see [`Membership::link_up`]).
    pub fn link_up(&self, link: LinkId) -> Result<(), DriverError> {
        self.command(Command::LinkUp(link))
    }

    /// Stops the thread and returns its result (an I/O error that ended it, if any).
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let _ = self.command(Command::Stop);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("membership thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        // An unreachable peer or a downed interface must not stop the heartbeat thread:
        // that is exactly what it is there to notice.
        Some(
            libc::ECONNREFUSED
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::ENETDOWN
                | libc::EPERM
                | libc::ENOBUFS
        )
    )
}

fn write_serial(fd: &OwnedFd, backlog: &mut Vec<u8>) -> io::Result<()> {
    while !backlog.is_empty() {
        // SAFETY: writing from a valid buffer of the given length to a descriptor we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), backlog.as_ptr().cast(), backlog.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if transient(&e) { Ok(()) } else { Err(e) };
        }
        backlog.drain(..n as usize);
    }
    Ok(())
}

/// Sends what the core hands out; a link that fails for good is closed.
fn flush(core: &mut Membership, links: &mut [OpenLink], events: &mpsc::Sender<TimedEvent>) {
    let now = clock();
    while let Some(t) = core.poll_transmit() {
        let Some(link) = links.iter_mut().find(|l| l.id == t.link) else {
            continue;
        };
        let result = match &mut link.io {
            None => Ok(()),
            Some(Io::Udp {
                socket,
                destinations,
            }) => destinations
                .iter()
                .map(|d| socket.send_to(&t.bytes, d).map(|_| ()))
                .find(|r| r.as_ref().is_err_and(|e| !transient(e)))
                .unwrap_or(Ok(())),
            Some(Io::Serial { fd, backlog, .. }) => {
                if backlog.len() < SERIAL_BACKLOG_LIMIT {
                    backlog.extend(encode_frame(&t.bytes));
                }
                write_serial(fd, backlog)
            }
        };
        if let Err(e) = result {
            link.close(&e, core, events, now);
        }
    }
}

/// Reads what arrived on one open link; `Err` is an error that closes the link.
fn receive(
    core: &mut Membership,
    l: &mut OpenLink,
    rev: libc::c_short,
    buf: &mut [u8],
    now: Instant,
) -> io::Result<()> {
    let Some(io) = &mut l.io else {
        return Ok(());
    };
    match io {
        Io::Udp { socket, .. } => loop {
            match socket.recv_from(buf) {
                Ok((n, _from)) => {
                    // Traffic proves the link works: the next failure starts over.
                    l.backoff = REOPEN_BACKOFF_MIN;
                    core.handle_packet(l.id, &buf[..n], now);
                }
                Err(e) if transient(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        },
        Io::Serial {
            fd,
            decoder,
            backlog,
        } => {
            if rev & libc::POLLOUT != 0 {
                write_serial(fd, backlog)?;
            }
            loop {
                // SAFETY: reading into a valid buffer of the given length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    let e = io::Error::last_os_error();
                    if n < 0 && transient(&e) {
                        return Ok(());
                    }
                    // EOF or EIO: the other end of the line (a pty's) is closed; look
                    // again later, it may come back.
                    if n == 0 || e.raw_os_error() == Some(libc::EIO) {
                        l.paused_until = Some(now + HANGUP_PAUSE);
                        return Ok(());
                    }
                    return Err(e);
                }
                l.backoff = REOPEN_BACKOFF_MIN;
                for frame in decoder.push(&buf[..n as usize]).into_iter().flatten() {
                    core.handle_packet(l.id, &frame, now);
                }
            }
        }
    }
}

fn run(
    mut core: Membership,
    mut links: Vec<OpenLink>,
    wake: OwnedFd,
    commands: mpsc::Receiver<Command>,
    events: &mpsc::Sender<TimedEvent>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let now = clock();
        for l in &mut links {
            l.reopen_if_due(&mut core, events, now);
        }
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
        }
        flush(&mut core, &mut links, events);
        while let Some(event) = core.poll_event() {
            // A caller that stopped listening does not stop the heartbeats.
            let _ = events.send(TimedEvent { at: now, event });
        }

        let mut fds: Vec<libc::pollfd> = links
            .iter_mut()
            .map(|l| {
                let idle = libc::pollfd {
                    // poll ignores negative descriptors.
                    fd: -1,
                    events: 0,
                    revents: 0,
                };
                if l.paused_until.is_some_and(|t| t > now) {
                    return idle;
                }
                let (fd, out) = match &l.io {
                    None => return idle,
                    Some(Io::Udp { socket, .. }) => (socket.as_raw_fd(), false),
                    Some(Io::Serial { fd, backlog, .. }) => (fd.as_raw_fd(), !backlog.is_empty()),
                };
                l.paused_until = None;
                libc::pollfd {
                    fd,
                    events: libc::POLLIN | if out { libc::POLLOUT } else { 0 },
                    revents: 0,
                }
            })
            .collect();
        fds.push(libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let next_wake = links
            .iter()
            .filter_map(|l| l.paused_until)
            .chain(core.poll_timeout())
            .min();
        let timeout_ms = next_wake.map_or(-1, |t| {
            // Round up: waking a little late is harmless, waking early spins.
            let d = t.saturating_duration_since(clock());
            d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        });
        // SAFETY: fds is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Datagrams first: after a stall, packets waiting in the buffers prove the peer
        // alive before an overdue timer could declare it dead.
        let now = clock();
        for (i, l) in links.iter_mut().enumerate() {
            let rev = fds[i].revents;
            if rev == 0 {
                continue;
            }
            if let Err(e) = receive(&mut core, l, rev, &mut buf, now) {
                l.close(&e, &mut core, events, now);
            }
        }
        if fds[links.len()].revents != 0 {
            // SAFETY: draining the wake pipe into a valid buffer.
            while unsafe { libc::read(wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        }
        while let Ok(c) = commands.try_recv() {
            let now = clock();
            match c {
                Command::Send { to, payload, reply } => {
                    let _ = reply.send(core.send_message(to, payload, now));
                }
                Command::Status(reply) => {
                    let mut status = core.status(now);
                    for s in &mut status.links {
                        if let Some(l) = links.iter().find(|l| l.id == s.id) {
                            s.closed.clone_from(&l.error);
                        }
                    }
                    let _ = reply.send(status);
                }
                Command::LinkDown(l) => core.link_down(l, now),
                Command::LinkUp(l) => core.link_up(l, now),
                Command::Stop => return Ok(()),
            }
        }
    }
}
