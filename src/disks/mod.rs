//! The disk service (`tandem disk-service`, a process of the daemon's, process.rs; the
//! daemon reaches it through remote.rs): every configured `[[disk]]` with a host entry for
//! this node runs here — a replication driver (`tandem_disk::driver`) and an NBD export on a
//! Unix socket (default `/run/tandem/disk/NAME.nbd`, export name `NAME`).
//!
//! ```text
//!   daemon call thread ─────block_on──▶ ┌─────────── tokio runtime "disk-*" ───────────┐
//!   (process.rs, one per call)          │ per disk: node (core + link) ◀── NBD server  │
//!                                       │ monitor task: roles, resync groups, startup  │
//!                                       └──────────────────────────────────────────────┘
//! ```
//!
//! This process owns one tokio runtime (one worker thread by default,
//! `TANDEM_DISK_WORKERS=N` to change); the daemon's calls are answered by `block_on` from
//! each call's own connection thread (process.rs).
//!
//! The replication link's secret is derived from the cluster key file, per disk:
//! `HMAC-SHA256(key = the key file's secret, message = "tandem disk link v1: " ‖ NAME)`.
//! Both nodes hold the same key file, so they derive the same secret; a node with a
//! different key file never passes the link's challenge/response. The key file's secret
//! itself never crosses the link.

mod device;
mod monitor;
pub mod process;
pub mod remote;
mod service;
mod settings;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem_config::{Config, Disk};
use tandem_disk::core::{ConnState, Role};
use tandem_disk::driver::{DriverHandle, LinkState};
use tandem_nbd::{Server, UnixAccess};
use tokio::sync::watch;

use crate::control::Response;
pub use device::ReplicatedDevice;
pub use settings::meta_location;
use settings::{group_id, local_paths};

/// Worker threads of the disk runtime (`TANDEM_DISK_WORKERS` overrides). One: a disk's
/// event loop, its NBD connections and its link then hand work to each other without
/// waking another thread — paired runs of 4 KiB QD16 protocol C writes used 18 instead
/// of 21–25 µs of daemon CPU per write (docs/benchmarks.md). Each disk's loop is one task
/// either way; fsyncs and large writes run on tokio's blocking pool. Hosts with several
/// busy disks and cores to spare may want more.
const DEFAULT_WORKERS: usize = 1;
/// How long `primary` (without `--force`) waits for a running startup wait to end.
const PRIMARY_WAITS_FOR_STARTUP: Duration = Duration::from_secs(20);
/// How often the monitor looks at every disk (roles, resync groups).
const MONITOR_INTERVAL: Duration = Duration::from_millis(100);
/// How long a group's demotion, `down` and a clean stop keep trying while the core
/// refuses as busy (I/O in flight, or writes the peer has not confirmed flushing: the
/// core asked for that flush), beyond the link's timeout — after which a dead peer's
/// link is gone and nothing waits for it any more.
const DEMOTE_PATIENCE_BEYOND_LINK: Duration = Duration::from_secs(2);
/// How long an operator's `secondary` retries while the core is busy.
const OPERATOR_DEMOTE_PATIENCE: Duration = Duration::from_secs(2);
/// How long a status query may take before the disk is reported unresponsive.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// A `tandem disk` command carried over the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskCommand {
    /// Attach the backing store, start replicating and serving NBD.
    Up,
    /// Stop serving and replicating (a primary is demoted first).
    Down,
    /// Become primary.
    Primary {
        /// Promote even on inconsistent/outdated data, or during the startup wait.
        force: bool,
    },
    /// Become secondary.
    Secondary,
    /// (Re)connect to the peer.
    Connect {
        /// Resolve a split brain by throwing this side's changes away.
        discard_my_data: bool,
    },
    /// Drop the link and stay standalone.
    Disconnect,
    /// Online verify against the peer.
    Verify,
    /// Mark the whole local disk out of sync (full resync from the peer).
    Invalidate,
    /// Report the state.
    Status,
}

impl DiskCommand {
    /// Whether the command changes state (and must be logged).
    pub fn changes_state(&self) -> bool {
        !matches!(self, DiskCommand::Status)
    }
}

/// One configured disk of this node.
struct Slot {
    disk: Disk,
    running: Option<Arc<Running>>,
    /// Why the last `up` failed, for status.
    error: Option<String>,
}

/// A disk that is up.
struct Running {
    driver: DriverHandle,
    server: Arc<Server>,
    socket: PathBuf,
    /// Kept current by the monitor and by promote/demote; the NBD device reads it.
    primary: Arc<AtomicBool>,
    /// What the monitor last told the core about resync groups.
    resync_paused: AtomicBool,
    /// Whether the monitor has logged the backing disk's detach (once per detach).
    detach_logged: AtomicBool,
    /// The link as the node's event loop publishes it: the startup wait is over once a
    /// handshake has completed (see [`Running::waiting`]).
    link: watch::Receiver<LinkState>,
    /// Set when the link stood alone during the startup wait (not waiting any longer).
    wait_gave_up: Arc<AtomicBool>,
    /// The startup wait in ms (0 = forever).
    wait_ms: u64,
    started: Instant,
    /// What the local device serves (the same device as the NBD export).
    device: Arc<ReplicatedDevice>,
    /// Where the local device is published while this node is primary.
    local_paths: tandem_blockdev::Paths,
    /// The local device (`/dev/tandem/NAME`), present exactly while primary. Held
    /// across publish and unpublish, so two requests never race on it.
    local: Mutex<Option<tandem_blockdev::LocalDevice>>,
    /// Wall-clock ms of the last promotion on this node (0: none since the disk came
    /// up); status shows it, so a failover's timeline needs no log parsing.
    promoted_unix_ms: AtomicU64,
    /// How long a patient demotion keeps retrying (see [`DEMOTE_PATIENCE_BEYOND_LINK`]).
    demote_patience: Duration,
    /// Wall-clock ms at which the local device was last published (0: never).
    published_unix_ms: AtomicU64,
}

impl Running {
    /// Whether the startup wait (wfc_timeout / degr_wfc_timeout) still runs: no handshake
    /// has completed since the disk came up, the link is not standing alone, and the time
    /// is not up. Computed from the node's own link state at the moment of asking, so it
    /// cannot lag behind what `status` shows.
    fn waiting(&self) -> bool {
        let link = *self.link.borrow();
        !(startup_over(&link) || self.wait_gave_up.load(Ordering::Relaxed))
            && self.wait_left().is_none_or(|left| !left.is_zero())
    }

    /// What is left of the startup wait's time (None: no timeout).
    fn wait_left(&self) -> Option<Duration> {
        (self.wait_ms != 0).then(|| {
            Duration::from_millis(self.wait_ms)
                .saturating_sub(crate::clock::now().duration_since(self.started))
        })
    }
}

/// Whether the link tells the startup wait to end: a handshake completed, or the disk
/// stands alone (it is not trying to connect, so waiting would be for nothing).
fn startup_over(link: &LinkState) -> bool {
    link.handshakes > 0 || link.connection == ConnState::StandAlone
}

/// The service: one per disk-service process.
struct Service {
    runtime: tokio::runtime::Runtime,
    local: String,
    key_secret: Vec<u8>,
    /// Who may use the disks' NBD sockets (`cluster.nbd_group`).
    nbd_access: UnixAccess,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Disk → the group whose `disk` resource promotes it.
    managed: BTreeMap<String, String>,
}

static SERVICE: OnceLock<Service> = OnceLock::new();

/// Called with a disk's name when its core needs the peer outdated or fenced (disk
/// fencing): the resource manager's outdater takes it from there.
pub type FencePeerHook = Box<dyn Fn(&str) + Send + Sync>;

static FENCE_PEER: OnceLock<FencePeerHook> = OnceLock::new();

/// Who asks the disk service for a change: an operator (`tandem disk …`) may not
/// promote a disk that a group manages; the group itself may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Caller {
    /// `tandem disk …` over the control socket.
    Operator,
    /// A group's `disk` resource, run by the resource manager.
    Group,
}

/// How long a promotion waits for the cluster to outdate or fence the peer.
const PRIMARY_WAITS_FOR_PEER_OUTDATE: Duration = Duration::from_secs(20);

/// Routes disk-fencing requests to `hook` (set once, before disks need it; requests
/// made before are repeated by the cores every few seconds).
pub fn set_fence_peer_hook(hook: FencePeerHook) {
    let _ = FENCE_PEER.set(hook);
}

fn ask_fence_peer(name: &str) {
    match FENCE_PEER.get() {
        Some(hook) => hook(name),
        None => {
            tracing::warn!(disk = %name, "the peer must be outdated or fenced, but no daemon is attached to ask the cluster yet")
        }
    }
}

/// Starts the disk service: brings up every configured disk that has a host entry for
/// `local` (errors are logged and shown in status; they never stop the disk service), and the
/// monitor that keeps roles and resync groups current. Call once.
pub fn start(config: &Config, local: &str) -> anyhow::Result<()> {
    let mine: Vec<Disk> = config
        .disks
        .iter()
        .filter(|d| d.host(local).is_some())
        .cloned()
        .collect();
    let key_secret = if mine.is_empty() {
        Vec::new()
    } else {
        let path = &config.cluster.key_file;
        let (key, _) =
            tandem_config::key::check_file(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if key.secret.is_empty() {
            tracing::warn!(
                "{}: the key has no secret (crc): replication links are not authenticated",
                path.display()
            );
        }
        key.secret
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("TANDEM_DISK_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_WORKERS)
                .max(1),
        )
        .thread_name("disk")
        // These threads write what a file system on the local device flushes; their
        // own allocations must not wait for that writeback (see `mark_io_flusher`).
        .on_thread_start(tandem_blockdev::mark_io_flusher)
        .enable_all()
        .build()
        .context("start the disk service's runtime")?;
    let slots = mine
        .into_iter()
        .map(|disk| {
            (
                disk.name.clone(),
                Slot {
                    disk,
                    running: None,
                    error: None,
                },
            )
        })
        .collect();
    let managed = config
        .groups
        .iter()
        .flat_map(|g| g.resources.iter().map(move |r| (g, r)))
        .filter_map(|(g, r)| match &r.kind {
            tandem_config::ResourceKind::Disk { disk } => Some((disk.clone(), g.name.clone())),
            _ => None,
        })
        .collect();
    let nbd_access = UnixAccess {
        group: config.cluster.nbd_group.as_deref().and_then(|name| {
            group_id(name)
                .map_err(|err| {
                    // Fail closed: root only, and said where an operator looks.
                    tracing::error!(
                        "cluster.nbd_group = {name:?}: {err:#}; NBD sockets are root-only"
                    )
                })
                .ok()
        }),
    };
    let service = Service {
        runtime,
        local: local.to_string(),
        key_secret,
        nbd_access,
        slots: Mutex::new(slots),
        managed,
    };
    if SERVICE.set(service).is_err() {
        bail!("the disk service was started twice");
    }
    let Some(service) = SERVICE.get() else {
        bail!("the disk service did not start");
    };
    let names: Vec<String> = service.lock().keys().cloned().collect();
    for name in names {
        if let Err(err) = service.up(&name) {
            tracing::error!(disk = %name, "disk did not come up: {err:#}");
        }
    }
    service.runtime.spawn(monitor::monitor(service));
    Ok(())
}

/// Answers a `tandem disk` request (`name` may be `all`).
pub fn request(name: &str, command: DiskCommand, caller: Caller) -> Response {
    let Some(service) = SERVICE.get() else {
        return Response::error("the disk service is not running");
    };
    let names: Vec<String> = if name == "all" {
        service.lock().keys().cloned().collect()
    } else if service.lock().contains_key(name) {
        vec![name.to_string()]
    } else {
        return Response::error(format!(
            "no disk {name:?} on this node ({}): not configured, or no [disk.on.{}] entry",
            service.local, service.local
        ));
    };
    let mut bodies = Vec::new();
    let mut errors = Vec::new();
    for n in &names {
        let note = match service.command(n, &command, caller) {
            Ok(note) => note,
            Err(err) => {
                errors.push(format!("{n}: {err:#}"));
                None
            }
        };
        let mut body = service.disk_json(n);
        if let Some(note) = note {
            body["note"] = json!(note);
        }
        bodies.push(body);
    }
    if !errors.is_empty() {
        return Response::error(errors.join("; "));
    }
    if name == "all" {
        Response::ok(json!({ "disks": bodies }))
    } else {
        Response::ok(bodies.pop().unwrap_or(Value::Null))
    }
}

/// A clean stop of the disk service (SIGTERM, SIGINT): demotes every primary disk of this node
/// except those in `managed` (a resource group's disks: the resource manager demotes
/// them in order, after whatever sits on top of them has stopped), so that the next
/// start is not taken for a crashed primary. Errors are logged; the disk service exits anyway.
pub fn stop(managed: &[String]) {
    let Some(service) = SERVICE.get() else {
        return;
    };
    let running: Vec<(String, Arc<Running>)> = service
        .lock()
        .iter()
        .filter(|(name, _)| !managed.contains(name))
        .filter_map(|(name, s)| s.running.clone().map(|r| (name.clone(), r)))
        .collect();
    for (name, r) in running {
        let role = service
            .runtime
            .block_on(async { tokio::time::timeout(STATUS_TIMEOUT, r.driver.status()).await });
        if !matches!(role, Ok(Ok(ref s)) if s.role == Role::Primary) {
            continue;
        }
        if let Err(err) = service.unpublish_local(&name, &r) {
            // Demoting would not save it either: the exit takes the FUSE daemon, and
            // with it the device, away. Left primary, the next start resyncs the
            // activity log as after a crash.
            tracing::error!(disk = %name, "stopping: {err:#}; left primary, and whatever uses the device loses it when the disk service exits");
            continue;
        }
        match service.demote_durably(&r, r.demote_patience) {
            Ok(()) => tracing::info!(disk = %name, "stopping: demoted to secondary"),
            Err(err) => tracing::error!(disk = %name, "stopping: still primary: {err:#}"),
        }
    }
}

/// The cluster fenced the peer (or an operator confirmed it down): every running disk
/// drops its replication link at once, so a promotion does not wait for the link to
/// time out — a fenced machine's sockets never say goodbye — and counts the peer as
/// outdated (suspended I/O resumes). Returns once every disk has taken it in, so a
/// promotion that follows finds it done.
pub fn peer_fenced() {
    let Some(service) = SERVICE.get() else {
        return;
    };
    let nodes = service.running_nodes();
    if nodes.is_empty() {
        return;
    }
    tracing::info!(
        disks = nodes.len(),
        "peer fenced: dropping the replication links, the peer counts as outdated"
    );
    service.runtime.block_on(async {
        for (_, node) in nodes {
            let _ = tokio::time::timeout(STATUS_TIMEOUT, node.peer_fenced()).await;
        }
    });
}

/// The peer outdated its copy of `name` (its answer came after its metadata was
/// durable): suspended I/O resumes.
pub fn peer_outdated(name: &str) {
    if let Some((service, node)) = running_node(name) {
        tracing::info!(disk = %name, "the peer's copy is outdated");
        service.runtime.block_on(async {
            let _ = tokio::time::timeout(STATUS_TIMEOUT, node.peer_outdated()).await;
        });
    }
}

/// The peer cannot be reached to outdate `name` (under `resource-only` the disk goes
/// on alone).
pub fn peer_unreachable(name: &str) {
    if let Some((service, node)) = running_node(name) {
        tracing::warn!(disk = %name, "the peer cannot be reached to outdate its copy");
        service.runtime.block_on(async {
            let _ = tokio::time::timeout(STATUS_TIMEOUT, node.peer_unreachable()).await;
        });
    }
}

/// The peer lost its link and asks this node to outdate its copy of `name`: answers
/// once the mark is durable. A disk that is down is outdated in its metadata directly.
pub fn outdate_local(name: &str) -> Result<(), String> {
    let Some(service) = SERVICE.get() else {
        return Err("the disk service is not running".into());
    };
    let (disk, running) = {
        let slots = service.lock();
        let Some(slot) = slots.get(name) else {
            return Err(format!("no disk {name:?} on {}", service.local));
        };
        (slot.disk.clone(), slot.running.clone())
    };
    match running {
        Some(r) => {
            let result = service
                .runtime
                .block_on(async { tokio::time::timeout(STATUS_TIMEOUT, r.driver.outdate()).await });
            match result {
                Ok(Ok(Ok(()))) => {
                    tracing::warn!(disk = %name, "outdated at the peer's request (it lost the replication link)");
                    Ok(())
                }
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the disk did not answer within 5 s".into()),
            }
        }
        None => {
            let host = disk
                .host(&service.local)
                .ok_or_else(|| format!("no [disk.on.{}] entry", service.local))?;
            let meta = meta_location(&host.meta).map_err(|e| format!("{e:#}"))?;
            tandem_disk::offline::outdate(&host.backing, &meta).map_err(|e| e.to_string())?;
            tracing::warn!(disk = %name, "outdated in its metadata at the peer's request (the disk is down)");
            Ok(())
        }
    }
}

/// Before a clean stop, after every demote: each secondary disk whose up-to-date peer
/// goes on outdates itself and says so on the link (so the peer takes over without
/// fencing this node). Errors are logged; the disk service stops anyway.
pub fn leave() {
    let Some(service) = SERVICE.get() else {
        return;
    };
    for (name, node) in service.running_nodes() {
        let left = service
            .runtime
            .block_on(async { tokio::time::timeout(STATUS_TIMEOUT, node.leave()).await });
        if !matches!(left, Ok(Ok(()))) {
            tracing::warn!(disk = %name, "stopping: could not tell the peer this copy is outdated");
        }
    }
}

fn running_node(name: &str) -> Option<(&'static Service, DriverHandle)> {
    let service = SERVICE.get()?;
    let node = service.running(name)?.driver.clone();
    Some((service, node))
}

/// Every disk of this node as `tandem status --json` shows it under `disks` (empty when
/// the service is not running or this node has no disks).
pub fn status_json() -> Value {
    let Some(service) = SERVICE.get() else {
        return json!([]);
    };
    let names: Vec<String> = service.lock().keys().cloned().collect();
    Value::Array(names.iter().map(|n| service.disk_json(n)).collect())
}

/// Before anything else at the start of a disk service: removes what a previous one of this node
/// left of its disks' local devices — stale FUSE mounts, file systems mounted on its
/// loop devices, the loop devices themselves, the links (a disk service killed while primary
/// leaves them all; its FUSE daemon died with it). Errors are logged.
pub fn clean_stale(config: &Config, local: &str) {
    for disk in &config.disks {
        let Some(host) = disk.host(local) else {
            continue;
        };
        let paths = local_paths(&disk.name, host);
        match tandem_blockdev::clean_stale(&paths) {
            Ok(report) if report.is_empty() => {}
            Ok(report) => tracing::warn!(
                disk = %disk.name,
                aborted = ?report.aborted,
                unmounted = ?report.unmounted,
                detached = ?report.detached,
                deferred = ?report.deferred,
                link_removed = ?report.link_removed,
                "removed the local device a previous disk service left"
            ),
            Err(err) => {
                tracing::error!(disk = %disk.name, "cleaning up the local device a previous disk service left: {err}")
            }
        }
    }
}

#[cfg(test)]
mod tests;
