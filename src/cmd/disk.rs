//! `tandem disk …`: replicated disks, in the manner of drbdadm.
//!
//! `create-md` works offline on this node's backing store (as drbdmeta does); every other
//! command goes to the local daemon's disk service over the control socket.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::Global;
use crate::control::{self, Request};
use crate::disks::DiskCommand;

/// `tandem disk` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
    /// The daemon's control socket (default: the configuration's).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Write fresh metadata on this node's backing store (offline; refuses valid
    /// metadata unless --force).
    CreateMd {
        /// The disk.
        name: String,
        /// Overwrite valid metadata (its generations and bitmap are lost).
        #[arg(long)]
        force: bool,
        /// Which host entry to use (default: this machine's host name).
        #[arg(long)]
        node: Option<String>,
    },
    /// Attach, start replicating and serve NBD.
    Up {
        /// The disk, or `all`.
        name: String,
    },
    /// Stop serving and replicating (a primary is demoted first).
    Down {
        /// The disk, or `all`.
        name: String,
    },
    /// Become primary (serve writes).
    Primary {
        /// The disk, or `all`.
        name: String,
        /// Promote on inconsistent or outdated data, or without waiting for the peer.
        #[arg(long)]
        force: bool,
    },
    /// Become secondary.
    Secondary {
        /// The disk, or `all`.
        name: String,
    },
    /// Connect to the peer.
    Connect {
        /// The disk, or `all`.
        name: String,
        /// After a split brain: throw this side's changes away and resync from the peer.
        #[arg(long)]
        discard_my_data: bool,
    },
    /// Drop the link and stay standalone.
    Disconnect {
        /// The disk, or `all`.
        name: String,
    },
    /// Compare every block with the peer (online verify).
    Verify {
        /// The disk, or `all`.
        name: String,
    },
    /// Throw the local data away: full resync from the peer.
    Invalidate {
        /// The disk, or `all`.
        name: String,
    },
    /// Show the state (like /proc/drbd), or the stable JSON document.
    Status {
        /// The disk (default: all).
        name: Option<String>,
        /// JSON: role, peer_role, connection, disk_state, peer_disk_state,
        /// out_of_sync_bytes, resync {done_bytes, total_bytes, rate_bytes_per_s},
        /// sent_bytes, received_bytes, … (docs/disk.md).
        #[arg(long)]
        json: bool,
    },
}

/// Runs `tandem disk …`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let socket = crate::cmd::status::control_socket(global, args.socket);
    let (name, command, json) = match args.command {
        Sub::CreateMd { name, force, node } => return create_md(global, &name, force, node),
        Sub::Up { name } => (name, DiskCommand::Up, false),
        Sub::Down { name } => (name, DiskCommand::Down, false),
        Sub::Primary { name, force } => (name, DiskCommand::Primary { force }, false),
        Sub::Secondary { name } => (name, DiskCommand::Secondary, false),
        Sub::Connect {
            name,
            discard_my_data,
        } => (name, DiskCommand::Connect { discard_my_data }, false),
        Sub::Disconnect { name } => (name, DiskCommand::Disconnect, false),
        Sub::Verify { name } => (name, DiskCommand::Verify, false),
        Sub::Invalidate { name } => (name, DiskCommand::Invalidate, false),
        Sub::Status { name, json } => (
            name.unwrap_or_else(|| "all".into()),
            DiskCommand::Status,
            json,
        ),
    };
    let is_status = command == DiskCommand::Status;
    let body = control::request(&socket, &Request::Disk { name, command })?;
    // What a command did beyond its name (e.g. what a forced promotion discards).
    let bodies = match body.get("disks").and_then(Value::as_array) {
        Some(disks) => disks.clone(),
        None => vec![body.clone()],
    };
    for d in &bodies {
        if let Some(note) = d["note"].as_str() {
            eprintln!("{}: {note}", d["name"].as_str().unwrap_or("?"));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else if is_status {
        match body.get("disks").and_then(Value::as_array) {
            Some(disks) => {
                for d in disks {
                    print!("{}", render(d));
                }
            }
            None => print!("{}", render(&body)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn create_md(
    global: &Global,
    name: &str,
    force: bool,
    node: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = match tandem_config::Config::load(&global.config) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(1));
        }
    };
    let node = match node {
        Some(n) => n,
        None => hostname()?,
    };
    let disk = config
        .disk(name)
        .with_context(|| format!("no disk {name:?} in {}", global.config.display()))?;
    let host = disk
        .host(&node)
        .with_context(|| format!("disk {name} has no [disk.on.{node}] entry (use --node)"))?;
    // A running agent with this disk up owns its metadata: refuse to pull it away.
    let socket = config.cluster.control_socket.clone();
    if let Ok(v) = control::request(
        &socket,
        &Request::Disk {
            name: name.to_string(),
            command: DiskCommand::Status,
        },
    ) && v["up"] == Value::Bool(true)
    {
        bail!("disk {name} is up in the running daemon: `tandem disk down {name}` first");
    }
    let loc = crate::disks::meta_location(&host.meta)?;
    let node_id = random_u64()?;
    let layout = tandem_disk::meta::MetaStore::create(
        &host.backing,
        &loc,
        disk.al_extents,
        node_id,
        force,
    )
    .map_err(|e| match e {
        tandem_disk::meta::MetaError::Exists => anyhow::anyhow!(
            "{}: valid tandem metadata exists already (use --force to overwrite it, losing its generations and bitmap)",
            host.backing.display()
        ),
        e => anyhow::anyhow!(e),
    })?;
    println!(
        "{name}: metadata written on {} ({}), {} bytes of data, {} bitmap blocks",
        host.backing.display(),
        match &loc {
            tandem_disk::meta::MetaLocation::Internal => "internal".to_string(),
            tandem_disk::meta::MetaLocation::External(p) => p.display().to_string(),
        },
        layout.size_bytes,
        layout.bitmap_blocks
    );
    Ok(ExitCode::SUCCESS)
}

fn random_u64() -> anyhow::Result<u64> {
    use std::io::Read as _;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("read /dev/urandom")?;
    Ok(u64::from_le_bytes(b))
}

fn hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("gethostname");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn state_name(v: &Value) -> String {
    match v.as_str() {
        Some(s) => s
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect(),
        None => "Unknown".into(),
    }
}

fn kib(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0) / 1024
}

/// One disk in the manner of /proc/drbd:
///
/// ```text
/// r0: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C
///     ns:65536 nr:0 oos:40960 (KiB)
///     [=======>............] sync'ed: 38.5% (40960/66560)K
///     finish: 0:00:05 speed: 7680 K/sec
/// ```
pub fn render(d: &Value) -> String {
    let mut s = String::new();
    let name = d["name"].as_str().unwrap_or("?");
    if d["up"] != Value::Bool(true) {
        let _ = write!(s, "{name}: down");
        if let Some(e) = d["error"].as_str() {
            let _ = write!(s, " ({e})");
        }
        s.push('\n');
        return s;
    }
    let peer_role = if d["peer_role"].is_null() {
        "Unknown".into()
    } else {
        state_name(&d["peer_role"])
    };
    let peer_disk = if d["peer_disk_state"].is_null() {
        // As DRBD's pdsk: a peer known outdated (or fenced) since the link broke.
        if d["peer_outdated"] == Value::Bool(true) {
            "Outdated".into()
        } else {
            "DUnknown".into()
        }
    } else {
        state_name(&d["peer_disk_state"])
    };
    let _ = writeln!(
        s,
        "{name}: cs:{} ro:{}/{} ds:{}/{} {}{}",
        state_name(&d["connection"]),
        state_name(&d["role"]),
        peer_role,
        state_name(&d["disk_state"]),
        peer_disk,
        d["protocol"].as_str().unwrap_or("?"),
        if d["waiting_for_peer"] == Value::Bool(true) {
            " (waiting for peer)"
        } else {
            ""
        }
    );
    if let Some(why) = d["suspended"]["reason"].as_str() {
        let for_ms = d["suspended"]["for_ms"].as_u64().unwrap_or(0);
        let _ = writeln!(
            s,
            "    suspended: {why} (for {:.1} s)",
            for_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(
        s,
        "    ns:{} nr:{} oos:{} (KiB)",
        kib(&d["sent_bytes"]),
        kib(&d["received_bytes"]),
        kib(&d["out_of_sync_bytes"])
    );
    let total = d["resync"]["total_bytes"].as_u64().unwrap_or(0);
    let syncing = matches!(
        d["connection"].as_str(),
        Some("sync_source" | "sync_target" | "wait_bitmap_source" | "wait_bitmap_target")
    );
    if syncing && total > 0 {
        let done = d["resync"]["done_bytes"].as_u64().unwrap_or(0).min(total);
        let rate = d["resync"]["rate_bytes_per_s"].as_u64().unwrap_or(0);
        let frac = done as f64 / total as f64;
        const WIDTH: usize = 20;
        let filled = ((frac * WIDTH as f64) as usize).min(WIDTH);
        let bar: String = (0..WIDTH)
            .map(|i| match i.cmp(&filled) {
                std::cmp::Ordering::Less => '=',
                std::cmp::Ordering::Equal => '>',
                std::cmp::Ordering::Greater => '.',
            })
            .collect();
        let left = total - done;
        let _ = writeln!(
            s,
            "    [{bar}] sync'ed: {:.1}% ({}/{})K{}",
            frac * 100.0,
            left / 1024,
            total / 1024,
            if d["resync_paused"] == Value::Bool(true) {
                " (paused: resync group)"
            } else {
                ""
            }
        );
        let finish = match left.checked_div(rate) {
            Some(secs) => format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
            None => "?".into(),
        };
        let _ = writeln!(s, "    finish: {finish} speed: {} K/sec", rate / 1024);
    }
    if let Some(why) = d["last_disconnect_reason"].as_str()
        && state_name(&d["connection"]) == "StandAlone"
    {
        let _ = writeln!(s, "    standalone: {why}");
    }
    if let Some(why) = d["detach_reason"].as_str() {
        let _ = writeln!(s, "    detached: {why}");
    }
    if let Some(e) = d["error"].as_str() {
        let _ = writeln!(s, "    error: {e}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_proc_drbd_with_a_progress_bar() {
        let d = serde_json::json!({
            "name": "r0", "up": true, "protocol": "C",
            "role": "primary", "peer_role": "secondary",
            "connection": "sync_source", "disk_state": "up_to_date",
            "peer_disk_state": "inconsistent",
            "out_of_sync_bytes": 41943040u64,
            "resync": { "done_bytes": 26214400u64, "total_bytes": 68157440u64, "rate_bytes_per_s": 7864320u64 },
            "sent_bytes": 67108864u64, "received_bytes": 0,
        });
        let text = render(&d);
        assert!(
            text.contains("r0: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C"),
            "{text}"
        );
        assert!(
            text.contains("[=======>............] sync'ed: 38.5%"),
            "{text}"
        );
        assert!(text.contains("finish: 0:00:05 speed: 7680 K/sec"), "{text}");
        let down = render(&serde_json::json!({"name": "r1", "up": false, "error": "no metadata"}));
        assert_eq!(down, "r1: down (no metadata)\n");
    }
}
