//! The daemon's side of the disk service (`process.rs` is the other): starts
//! `tandem disk-service` — or attaches to the one a daemon stopped in maintenance mode
//! left running — and carries the resource manager's and the operator's calls to it,
//! one connection per call (a promotion that waits for the peer never holds up a
//! status).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_config::Config;

use super::{Caller, DiskCommand};
use crate::control::Response;

/// The calls' protocol; a daemon and a disk service that differ refuse to attach.
pub const PROTOCOL: u32 = 1;
/// How long a started disk service may take to bring its disks up and answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one call may take (a promotion waits up to 20 s for the peer's outdate,
/// a demotion for what the peer must flush; nothing legitimate comes near this).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// One call from the daemon, a JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// Opens the attach connection (held open for events; its close without
    /// [`Call::Detach`] ends the disk service).
    Attach {
        /// [`PROTOCOL`] of the daemon.
        protocol: u32,
        /// The daemon's process id, for the logs.
        pid: u32,
    },
    /// On the attach connection: the daemon stops in maintenance mode; the disks keep
    /// serving.
    Detach,
    /// A `tandem disk` command, or a group's `disk` resource.
    Request {
        /// The disk (or `all`).
        name: String,
        /// What to do.
        command: DiskCommand,
        /// Who asks.
        caller: Caller,
    },
    /// A clean stop begins: demote the primaries no group manages.
    Stop {
        /// The groups' disks.
        managed: Vec<String>,
    },
    /// The peer was fenced.
    PeerFenced,
    /// The peer outdated its copy.
    PeerOutdated {
        /// The disk.
        disk: String,
    },
    /// The peer cannot be reached to outdate its copy.
    PeerUnreachable {
        /// The disk.
        disk: String,
    },
    /// Outdate this node's copy (the peer asks).
    OutdateLocal {
        /// The disk.
        disk: String,
    },
    /// A clean stop: secondaries whose peer goes on outdate themselves.
    Leave,
    /// Every disk's state.
    Status,
}

/// What the disk service tells its daemon, unasked, on the attach connection.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A disk's core needs the peer outdated or fenced.
    FencePeer {
        /// The disk.
        disk: String,
    },
}

struct Remote {
    socket: PathBuf,
    attach: Mutex<UnixStream>,
    detaching: AtomicBool,
}

static REMOTE: OnceLock<Remote> = OnceLock::new();

/// The disk service's socket for a daemon whose control socket is `control`.
pub fn socket_path(control: &Path) -> PathBuf {
    let mut s = control.as_os_str().to_owned();
    s.push(".disks");
    PathBuf::from(s)
}

/// How `attach` starts a disk service when none is running.
pub struct Launch<'a> {
    /// The configuration file (the disk service loads it itself).
    pub config_path: &'a Path,
    /// This node.
    pub local: &'a str,
    /// The daemon's control socket (the disk service's sits beside it).
    pub control_socket: &'a Path,
    /// Lock memory in the disk service, as in the daemon.
    pub realtime: bool,
}

/// Attaches to this node's disk service, starting it when none runs (after removing
/// what a killed one left); nothing when this node has no disks. `fence_peer` gets the
/// disks' requests to have the peer outdated or fenced. If the disk service ends while
/// the daemon runs (not detached), the daemon exits 70: its disks are gone, and the
/// peer must take over (and fence this node), as after a crash.
pub fn attach(
    config: &Config,
    launch: &Launch,
    fence_peer: Box<dyn Fn(&str) + Send>,
) -> anyhow::Result<()> {
    if !config.disks.iter().any(|d| d.host(launch.local).is_some()) {
        return Ok(());
    }
    let socket = socket_path(launch.control_socket);
    let stream = match find_running(&socket)? {
        Some(attached) => {
            tracing::info!(socket = %socket.display(), "attached to the running disk service (left by a daemon stopped in maintenance mode)");
            if attached.disks != disks_fingerprint(config) {
                tracing::warn!(socket = %socket.display(), "the running disk service serves the [[disk]] configuration it was started with, which differs from this daemon's: the changes take effect once the daemon stops outside maintenance mode (`tandem maintenance off`, then a restart)");
            }
            attached.stream
        }
        None => {
            super::clean_stale(config, launch.local);
            start(launch, &socket)?
        }
    };
    let events = stream.try_clone()?;
    if REMOTE
        .set(Remote {
            socket,
            attach: Mutex::new(stream),
            detaching: AtomicBool::new(false),
        })
        .is_err()
    {
        bail!("attached to the disk service twice");
    }
    std::thread::Builder::new()
        .name("disk-events".into())
        .spawn(move || read_events(events, fence_peer))
        .context("start the disk events thread")?;
    Ok(())
}

fn start(launch: &Launch, socket: &Path) -> anyhow::Result<UnixStream> {
    let exe = std::env::current_exe().context("find the tandem binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("-c")
        .arg(launch.config_path)
        .args(["disk-service", "--node", launch.local, "--socket"])
        .arg(socket)
        .stdin(Stdio::null());
    if !launch.realtime {
        cmd.arg("--no-realtime");
    }
    let mut child = cmd.spawn().context("start tandem disk-service")?;
    let deadline = crate::clock::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the disk service exited with {status} as it started (its log says why)");
        }
        match connect_attach(socket) {
            Ok(stream) => {
                tracing::info!(pid = child.id(), "disk service started");
                // Reaped here while this daemon lives; a detached one outlives it.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(stream);
            }
            Err(err) if crate::clock::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err).context(format!(
                    "the disk service did not answer within {} s",
                    START_TIMEOUT.as_secs()
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The disk service a daemon stopped in maintenance mode left, attached; `None` when
/// none listens. One that is still ending (its daemon crashed a moment ago) is waited
/// for; one that keeps refusing (another protocol) is an error, never replaced: its
/// disks may be serving a mounted file system.
fn find_running(socket: &Path) -> anyhow::Result<Option<Attached>> {
    let mut refused = String::from("no answer");
    for _ in 0..40 {
        let stream = match UnixStream::connect(socket) {
            Ok(stream) => stream,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(err) => {
                return Err(err).with_context(|| format!("connect to {}", socket.display()));
            }
        };
        match attach_on(stream) {
            Ok(Ok(attached)) => return Ok(Some(attached)),
            // Still attached to a daemon that is dying, or another protocol.
            Ok(Err(why)) => refused = why,
            Err(err) => refused = format!("{err:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{}: a disk service listens but does not let this daemon attach ({refused}); its disks may be in use, so it is not replaced",
        socket.display()
    )
}

fn connect_attach(socket: &Path) -> anyhow::Result<UnixStream> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connect to the disk service at {}", socket.display()))?;
    match attach_on(stream)? {
        Ok(attached) => Ok(attached.stream),
        Err(why) => bail!("the disk service at {} refused: {why}", socket.display()),
    }
}

/// Attaches on a fresh connection: the stream, or the disk service's refusal.
fn attach_on(stream: UnixStream) -> anyhow::Result<Result<Attached, String>> {
    let reply = exchange(
        &stream,
        &Call::Attach {
            protocol: PROTOCOL,
            pid: std::process::id(),
        },
    )?;
    if let Some(why) = reply.error {
        return Ok(Err(why));
    }
    stream.set_read_timeout(None)?;
    Ok(Ok(Attached {
        stream,
        disks: reply.body["disks"].as_str().unwrap_or_default().to_string(),
    }))
}

/// An attach connection, with the [`disks_fingerprint`] the disk service runs.
struct Attached {
    stream: UnixStream,
    disks: String,
}

/// A fingerprint of the `[[disk]]` tables a process loaded: a disk service left
/// running keeps those it started with, and a daemon attaching with other ones says so.
pub fn disks_fingerprint(config: &Config) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    format!("{:?}", config.disks).hash(&mut h);
    format!("{:016x}", h.finish())
}

fn exchange(mut stream: &UnixStream, call: &Call) -> anyhow::Result<Response> {
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    let mut line = serde_json::to_vec(call)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.is_empty() {
        bail!("the disk service closed the connection");
    }
    serde_json::from_str(&answer).context("read the disk service's answer")
}

fn read_events(stream: UnixStream, fence_peer: Box<dyn Fn(&str) + Send>) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Event>(&line) {
            Ok(Event::FencePeer { disk }) => fence_peer(&disk),
            // The detach's answer comes this way too.
            Err(_) => {}
        }
    }
    if REMOTE
        .get()
        .is_some_and(|r| r.detaching.load(Ordering::SeqCst))
    {
        return;
    }
    tracing::error!(
        "the disk service ended while the daemon runs: its disks are gone; exiting so that the peer takes over"
    );
    std::process::exit(70);
}

/// One call on a connection of its own.
fn call(call: &Call) -> Response {
    let Some(remote) = REMOTE.get() else {
        return Response::error("this node has no disks");
    };
    let result = UnixStream::connect(&remote.socket)
        .context("connect to the disk service")
        .and_then(|s| exchange(&s, call));
    result.unwrap_or_else(|err| Response::error(format!("{err:#}")))
}

fn logged(what: &str, response: Response) {
    if let Some(err) = response.error {
        tracing::warn!("disk service: {what}: {err}");
    }
}

/// A `tandem disk` request, or a group's `disk` resource (see [`super::request`]).
pub fn request(name: &str, command: DiskCommand, caller: Caller) -> Response {
    call(&Call::Request {
        name: name.to_string(),
        command,
        caller,
    })
}

/// A clean stop begins (see [`super::stop`]).
pub fn stop(managed: &[String]) {
    if REMOTE.get().is_some() {
        logged(
            "stop",
            call(&Call::Stop {
                managed: managed.to_vec(),
            }),
        );
    }
}

/// See [`super::peer_fenced`].
pub fn peer_fenced() {
    if REMOTE.get().is_some() {
        logged("peer fenced", call(&Call::PeerFenced));
    }
}

/// See [`super::peer_outdated`].
pub fn peer_outdated(disk: &str) {
    logged(
        "peer outdated",
        call(&Call::PeerOutdated {
            disk: disk.to_string(),
        }),
    );
}

/// See [`super::peer_unreachable`].
pub fn peer_unreachable(disk: &str) {
    logged(
        "peer unreachable",
        call(&Call::PeerUnreachable {
            disk: disk.to_string(),
        }),
    );
}

/// See [`super::outdate_local`].
pub fn outdate_local(disk: &str) -> Result<(), String> {
    match call(&Call::OutdateLocal {
        disk: disk.to_string(),
    })
    .error
    {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

/// See [`super::leave`].
pub fn leave() {
    if REMOTE.get().is_some() {
        logged("leave", call(&Call::Leave));
    }
}

/// Every disk of this node as status shows it (empty without disks).
pub fn status_json() -> Value {
    if REMOTE.get().is_none() {
        return Value::Array(Vec::new());
    }
    let response = call(&Call::Status);
    match response.error {
        None => response.body,
        Some(err) => {
            tracing::warn!("disk service: status: {err}");
            Value::Array(Vec::new())
        }
    }
}

/// The daemon stops in maintenance mode: the disk service keeps its disks serving
/// until the next daemon attaches.
pub fn detach() {
    let Some(remote) = REMOTE.get() else {
        return;
    };
    remote.detaching.store(true, Ordering::SeqCst);
    let stream = remote.attach.lock().unwrap_or_else(|p| p.into_inner());
    let mut line = serde_json::to_vec(&Call::Detach).unwrap_or_default();
    line.push(b'\n');
    match (&*stream).write_all(&line) {
        Ok(()) => tracing::info!("disks detached: they keep serving until the next daemon"),
        Err(err) => tracing::error!("could not detach the disk service: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disks_fingerprint_changes_with_a_disk_setting_only() {
        let text = include_str!("../../testdata/config/example.toml");
        let parse = |t: &str| Config::parse_str("example.toml", t).unwrap().0;
        let base = disks_fingerprint(&parse(text));
        assert_eq!(base, disks_fingerprint(&parse(text)), "stable");
        assert_ne!(
            base,
            disks_fingerprint(&parse(&text.replace("rate = \"5M\"", "rate = \"10M\""))),
            "a disk's rate changed"
        );
        assert_eq!(
            base,
            disks_fingerprint(&parse(&text.replace("deadtime = ", "# deadtime = "))),
            "membership settings are not the disks'"
        );
    }
}
