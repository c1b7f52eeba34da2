//! `tandem disk-service`: the disk service in a process of its own, started by the
//! daemon (`tandem daemon`) and talking to it over a Unix socket beside the control
//! socket (`CONTROL_SOCKET.disks`, root only).
//!
//! ```text
//!  tandem daemon ──attach (held open)──▶ ┌──── tandem disk-service ────┐
//!        ▲      ◀── fence_peer events ── │ disks (cores, links, NBD,   │
//!        └──── one call per connection ─▶│ /dev/tandem) — see mod.rs   │
//!                                        └─────────────────────────────┘
//! ```
//!
//! Why a process: what runs on a replicated disk (a file system, the database on it)
//! can then outlive the daemon. A daemon stopped in maintenance mode *detaches*, and
//! the disks keep serving until the next daemon attaches — Pacemaker's "restart the
//! stack under running resources". Otherwise the disk service lives and dies with its
//! daemon: when the daemon's attach connection closes without a detach (a clean stop
//! that demoted everything, or a crash), the disk service exits at once, exactly as
//! the disks did when they ran inside the daemon. It ignores SIGTERM and SIGINT: its
//! daemon decides.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use serde_json::json;

use super::remote::{Call, Event, PROTOCOL};
use crate::Global;
use crate::control::Response;

/// `tandem disk-service` arguments (the daemon passes them; not for operators).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// This node's name in the configuration.
    #[arg(long)]
    pub node: String,
    /// The socket to serve (the daemon's control socket + `.disks`).
    #[arg(long)]
    pub socket: PathBuf,
    /// Do not lock memory.
    #[arg(long)]
    pub no_realtime: bool,
}

/// The attached daemon's connection (events are written to it), if one is attached.
static ATTACHED: Mutex<Option<UnixStream>> = Mutex::new(None);

/// [`super::remote::disks_fingerprint`] of the configuration this process loaded.
static DISKS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs the disk service until its daemon goes away without detaching.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    ignore_stop_signals();
    let Some(config) = crate::daemon::load_config(&global.config) else {
        return Ok(ExitCode::from(1));
    };
    if !args.no_realtime {
        crate::daemon::lock_memory();
    }
    let _ = DISKS.set(super::remote::disks_fingerprint(&config));
    let listener = crate::control::bind(&args.socket)?;
    super::start(&config, &args.node)?;
    super::set_fence_peer_hook(Box::new(|disk| {
        send_event(&Event::FencePeer {
            disk: disk.to_string(),
        })
    }));
    tracing::info!(node = %args.node, socket = %args.socket.display(), "disk service running");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            if let Err(err) = serve(stream) {
                tracing::debug!("disk service connection: {err:#}");
            }
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn ignore_stop_signals() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

fn send_event(event: &Event) {
    let mut attached = ATTACHED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(stream) = attached.as_mut() {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        // Lost with a daemon that is going: the cores repeat their requests.
        let _ = stream.write_all(&line);
    }
}

fn serve(stream: UnixStream) -> anyhow::Result<()> {
    if crate::control::peer_credentials(&stream)?.uid != 0 {
        anyhow::bail!("refused: not root");
    }
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let response = match serde_json::from_str::<Call>(&line) {
        Ok(Call::Attach { protocol, pid }) => return attached(stream, reader, protocol, pid),
        Ok(call) => answer(call),
        Err(err) => Response::error(format!("malformed call: {err}")),
    };
    reply(&stream, &response)
}

fn reply(mut stream: &UnixStream, response: &Response) -> anyhow::Result<()> {
    let mut out = serde_json::to_vec(response)?;
    out.push(b'\n');
    stream.write_all(&out)?;
    Ok(())
}

fn answer(call: Call) -> Response {
    match call {
        Call::Request {
            name,
            command,
            caller,
        } => super::request(&name, command, caller),
        Call::Stop { managed } => {
            super::stop(&managed);
            Response::ok(json!(null))
        }
        Call::PeerFenced => {
            super::peer_fenced();
            Response::ok(json!(null))
        }
        Call::PeerOutdated { disk } => {
            super::peer_outdated(&disk);
            Response::ok(json!(null))
        }
        Call::PeerUnreachable { disk } => {
            super::peer_unreachable(&disk);
            Response::ok(json!(null))
        }
        Call::OutdateLocal { disk } => match super::outdate_local(&disk) {
            Ok(()) => Response::ok(json!(null)),
            Err(why) => Response::error(why),
        },
        Call::Leave => {
            super::leave();
            Response::ok(json!(null))
        }
        Call::Status => Response::ok(super::status_json()),
        Call::Attach { .. } | Call::Detach => {
            Response::error("attach and detach come on the attach connection only")
        }
    }
}

/// Serves the daemon's attach connection: events go out on it; a `detach` line keeps
/// the disks running once it closes, its closing without one ends the process.
fn attached(
    stream: UnixStream,
    mut reader: BufReader<UnixStream>,
    protocol: u32,
    pid: u32,
) -> anyhow::Result<()> {
    if protocol != PROTOCOL {
        return reply(
            &stream,
            &Response::error(format!(
                "the disk service speaks protocol {PROTOCOL}, the daemon {protocol} (pid {})",
                std::process::id()
            )),
        );
    }
    {
        let mut slot = ATTACHED.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            drop(slot);
            return reply(
                &stream,
                &Response::error("another daemon is attached to this disk service"),
            );
        }
        *slot = Some(stream.try_clone()?);
        let disks = DISKS.get().cloned().unwrap_or_default();
        reply(
            &stream,
            &Response::ok(json!({"pid": std::process::id(), "disks": disks})),
        )?;
    }
    tracing::info!(daemon = pid, "daemon attached");
    let mut detached = false;
    for line in (&mut reader).lines() {
        let Ok(line) = line else { break };
        if matches!(serde_json::from_str::<Call>(&line), Ok(Call::Detach)) {
            detached = true;
            let _ = reply(&stream, &Response::ok(json!(null)));
        }
    }
    if detached {
        *ATTACHED.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(
            daemon = pid,
            "the daemon detached (maintenance mode): the disks keep serving until the next one attaches"
        );
        return Ok(());
    }
    // Still marked attached: a new daemon is refused (and retries) until this ends.
    tracing::info!(
        daemon = pid,
        "the daemon is gone without detaching: the disk service ends with it"
    );
    std::process::exit(0);
}
