//! The control socket: how the CLI talks to the local `tandem daemon`.
//!
//! A Unix stream socket, mode 0600 and owned by root, carrying one JSON request line and
//! one JSON response line per connection. The peer's credentials (SO_PEERCRED) are
//! checked — only root may ask — and every request that changes state is logged with the
//! uid and pid that asked.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The largest request line the daemon reads; anything longer is refused.
const REQUEST_BYTES_MAX: u64 = 64 * 1024;

/// How long the CLI waits for the daemon's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A request from the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The whole status: nodes, links, events, groups.
    Status,
    /// `tandem standby [all|local|foreign]` (Heartbeat's hb_standby).
    Standby {
        /// Which groups.
        scope: tandem_policy::Scope,
    },
    /// `tandem takeover [all|local|foreign]` (Heartbeat's hb_takeover).
    Takeover {
        /// Which groups.
        scope: tandem_policy::Scope,
    },
    /// `tandem maintenance on|off`.
    Maintenance {
        /// On or off.
        on: bool,
    },
    /// `tandem disk up|down|primary|… NAME` (NAME may be `all`).
    Disk {
        /// The disk, or `all`.
        name: String,
        /// What to do.
        command: crate::disks::DiskCommand,
    },
    /// `tandem fence NODE`: fence it now through the configured devices.
    Fence {
        /// The node.
        node: String,
    },
    /// `tandem fence confirm NODE`: the operator made sure NODE is down.
    FenceConfirm {
        /// The node.
        node: String,
    },
    /// `tandem fence history`.
    FenceHistory,
}

impl Request {
    /// Whether this request changes the cluster's state (and must be logged).
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Status | Request::FenceHistory => false,
            Request::Disk { command, .. } => command.changes_state(),
            _ => true,
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// `None` on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result, shaped by the request.
    #[serde(default)]
    pub body: serde_json::Value,
}

impl Response {
    /// A successful answer.
    pub fn ok(body: serde_json::Value) -> Self {
        Self { error: None, body }
    }

    /// A refusal or failure, with the reason for the operator.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            error: Some(message.into()),
            body: serde_json::Value::Null,
        }
    }
}

/// Who is asking: from the kernel, not from the request.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The asking process's user id.
    pub uid: u32,
    /// The asking process's id.
    pub pid: i32,
}

/// Binds the control socket at `path` (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{}: another daemon is already listening on this control socket",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("remove stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Serves requests on `listener` forever, one thread per connection, calling `handle`.
pub fn serve<H>(listener: UnixListener, handle: H)
where
    H: Fn(Request, Peer) -> Response + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let handle = Arc::clone(&handle);
        std::thread::spawn(move || {
            if let Err(err) = serve_one(stream, &*handle) {
                tracing::debug!("control connection: {err:#}");
            }
        });
    }
}

fn serve_one(stream: UnixStream, handle: &dyn Fn(Request, Peer) -> Response) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let peer = peer_credentials(&stream)?;
    let mut reader = BufReader::new((&stream).take(REQUEST_BYTES_MAX));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let response = if peer.uid != 0 {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "control request refused: not root"
        );
        Response::error("only root may talk to the tandem daemon")
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                if request.changes_state() {
                    tracing::info!(uid = peer.uid, pid = peer.pid, ?request, "control request");
                }
                handle(request, peer)
            }
            Err(err) => Response::error(format!("malformed request: {err}")),
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    (&stream).write_all(&out)?;
    Ok(())
}

use std::io::Read as _;

pub(crate) fn peer_credentials(stream: &UnixStream) -> anyhow::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and the fd is open
    // for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_PEERCRED");
    }
    Ok(Peer {
        uid: cred.uid,
        pid: cred.pid,
    })
}

/// Sends one request to the daemon at `path` and waits for its answer.
pub fn request(path: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let stream = UnixStream::connect(path).with_context(|| {
        format!(
            "connect to the tandem daemon at {} (is `tandem daemon` running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut out = serde_json::to_vec(request)?;
    out.push(b'\n');
    (&stream).write_all(&out)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let response: Response = serde_json::from_str(&line).context("read the daemon's answer")?;
    match response.error {
        Some(error) => bail!("{error}"),
        None => Ok(response.body),
    }
}
