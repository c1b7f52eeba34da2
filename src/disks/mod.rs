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
pub mod process;
pub mod remote;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem_config::{AfterSb0Pri, AfterSb1Pri, Config, Disk, Meta};
use tandem_disk::core::policy::{AfterSplitBrain, SplitBrainPolicy};
use tandem_disk::core::{AdminError, ConnState, Role};
use tandem_disk::driver::{self, DriverConfig, DriverHandle, LinkState};
use tandem_disk::meta::MetaLocation;
use tandem_nbd::{Server, ServerConfig, UnixAccess};
use tokio::sync::watch;

use crate::control::Response;
pub use device::ReplicatedDevice;

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

/// The id of group `name`, through the C library (so /etc/group, LDAP, whatever NSS
/// is set up for).
fn group_id(name: &str) -> anyhow::Result<u32> {
    let c_name = std::ffi::CString::new(name).context("a group name with a NUL byte")?;
    // SAFETY: an all-zero `group` is a valid value of this plain C struct.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 << 10];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` for `buf.len()` bytes.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("look the group up");
    }
    if found.is_null() {
        bail!("no such group");
    }
    Ok(group.gr_gid)
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
    service.runtime.spawn(monitor(service));
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

/// `HMAC-SHA256(key, "tandem disk link v1: " ‖ name)`: the replication link's secret.
pub fn link_secret(key_secret: &[u8], name: &str) -> Vec<u8> {
    hmac_sha256(
        key_secret,
        format!("tandem disk link v1: {name}").as_bytes(),
    )
    .to_vec()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&tandem_wire::sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Vec::with_capacity(BLOCK + message.len());
    inner.extend(k.iter().map(|b| b ^ 0x36));
    inner.extend_from_slice(message);
    let inner_hash = tandem_wire::sha256(&inner);
    let mut outer = Vec::with_capacity(BLOCK + 32);
    outer.extend(k.iter().map(|b| b ^ 0x5c));
    outer.extend_from_slice(&inner_hash);
    tandem_wire::sha256(&outer)
}

/// The disk's metadata location from its host entry.
pub fn meta_location(meta: &Meta) -> anyhow::Result<MetaLocation> {
    match meta {
        Meta::Internal => Ok(MetaLocation::Internal),
        Meta::External { path, index: None } => Ok(MetaLocation::External(path.clone())),
        Meta::External {
            path,
            index: Some(i),
        } => bail!(
            "meta {} [{i}]: indexed metadata slots are not supported; give each disk its own metadata file",
            path.display()
        ),
    }
}

/// The core's settings from the configuration.
pub fn core_config(disk: &Disk) -> tandem_disk::core::Config {
    let no_primary = match disk.after_sb_0pri {
        AfterSb0Pri::Disconnect => SplitBrainPolicy::Disconnect,
        AfterSb0Pri::DiscardYoungerPrimary => SplitBrainPolicy::DiscardYoungerPrimary,
        AfterSb0Pri::DiscardZeroChanges => SplitBrainPolicy::DiscardZeroChanges,
        AfterSb0Pri::DiscardLeastChanges => SplitBrainPolicy::DiscardLeastChanges,
        AfterSb0Pri::DiscardOlderPrimary => SplitBrainPolicy::DiscardOlderPrimary,
    };
    let one_primary = match disk.after_sb_1pri {
        AfterSb1Pri::Disconnect => SplitBrainPolicy::Disconnect,
        AfterSb1Pri::Consensus => SplitBrainPolicy::Consensus,
        AfterSb1Pri::DiscardSecondary => SplitBrainPolicy::DiscardSecondary,
    };
    let net_timeout_ms = (disk.net_timeout.as_millis() as u64).max(1000);
    tandem_disk::core::Config {
        protocol: disk.protocol,
        al_extents: disk.al_extents,
        resync_rate_bytes_per_s: disk.rate_bytes_per_s,
        after_split_brain: AfterSplitBrain {
            no_primary,
            one_primary,
            two_primaries: SplitBrainPolicy::Disconnect,
        },
        // The core drops the link after `ping_timeout_ms` of silence, so an idle link
        // must be pinged well within `net_timeout`.
        ping_interval_ms: (disk.ping_interval.as_millis() as u64).min(net_timeout_ms / 3),
        ping_timeout_ms: net_timeout_ms,
        fencing: disk.fencing,
        ..Default::default()
    }
}

fn millis(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| (d.as_millis() as u64).max(1))
}

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self, name: &str) -> Option<Arc<Running>> {
        self.lock().get(name).and_then(|s| s.running.clone())
    }

    fn running_nodes(&self) -> Vec<(String, DriverHandle)> {
        self.lock()
            .iter()
            .filter_map(|(n, s)| s.running.as_ref().map(|r| (n.clone(), r.driver.clone())))
            .collect()
    }

    fn command(
        &'static self,
        name: &str,
        command: &DiskCommand,
        caller: Caller,
    ) -> anyhow::Result<Option<String>> {
        if *command == DiskCommand::Up {
            return self.up(name).map(|()| None);
        }
        if *command == DiskCommand::Status {
            return Ok(None);
        }
        let Some(r) = self.running(name) else {
            bail!("disk is down (tandem disk up {name})");
        };
        let rt = &self.runtime;
        match command {
            DiskCommand::Up | DiskCommand::Status => Ok(None),
            DiskCommand::Down => self.down(name, &r).map(|()| None),
            DiskCommand::Primary { force } => {
                if let (false, Caller::Operator, Some(group)) =
                    (*force, caller, self.managed.get(name))
                {
                    bail!(
                        "disk {name} belongs to group {group}, which promotes it where the group runs: use `tandem takeover` (or `--force` to promote it by hand anyway)"
                    );
                }
                if !force && r.waiting() {
                    // Woken by the node's event loop in the step that connects, or at
                    // the end of the wait's time, whichever comes first.
                    let limit = r.wait_left().map_or(PRIMARY_WAITS_FOR_STARTUP, |l| {
                        l.min(PRIMARY_WAITS_FOR_STARTUP)
                    });
                    let mut link = r.link.clone();
                    // The timer must be made inside the runtime.
                    let _ = rt.block_on(async {
                        tokio::time::timeout(limit, link.wait_for(startup_over))
                            .await
                            .map(|r| r.map(|l| *l))
                    });
                    if r.waiting() {
                        let left = match r.wait_left() {
                            None => "no timeout (wfc_timeout = 0)".to_string(),
                            Some(left) => format!("{} s left", left.as_millis().div_ceil(1000)),
                        };
                        bail!(
                            "still waiting for the peer at startup ({left}); `primary --force` goes on alone"
                        );
                    }
                }
                // A peer that is demoting or gone still reads as primary until its state
                // arrives or the link times out (a node that said goodbye demoted before
                // it did; a fenced one takes `net_timeout` to be noticed): wait that long.
                let net_timeout = self
                    .lock()
                    .get(name)
                    .map_or(tandem_config::defaults::NET_TIMEOUT, |s| s.disk.net_timeout);
                let deadline = crate::clock::now() + net_timeout + Duration::from_secs(1);
                // Alone, with a peer that is neither outdated nor fenced: the cluster is
                // asked to outdate it (or fence it), as DRBD calls its fence-peer
                // handler before a promotion; the promotion waits for the answer.
                let mut outdate_deadline = None;
                let before = rt.block_on(r.driver.status())?;
                loop {
                    match rt.block_on(r.driver.promote(*force))? {
                        Err(AdminError::PeerIsPrimary) if crate::clock::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        // A sync target that just connected (both nodes back from a
                        // power cut: the crashed primary's activity-log extents come
                        // from the peer) is resynced in a moment: wait for it rather
                        // than fail the group's start, which would bar this node from
                        // the group for its failure timeout (`tandem lab scenarios
                        // PowerOffBoth`).
                        Err(AdminError::Resyncing) if crate::clock::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(AdminError::PeerNotOutdated) => {
                            let now = crate::clock::now();
                            let until = *outdate_deadline.get_or_insert_with(|| {
                                ask_fence_peer(name);
                                now + PRIMARY_WAITS_FOR_PEER_OUTDATE
                            });
                            if now >= until {
                                bail!(
                                    "the peer is neither known outdated nor fenced, and the cluster could not make it so within {} s: fence it (`tandem fence NODE`, or `tandem fence confirm NODE` once it is down), or `primary --force`",
                                    PRIMARY_WAITS_FOR_PEER_OUTDATE.as_secs()
                                );
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        result => break result?,
                    }
                }
                r.primary.store(true, Ordering::Relaxed);
                r.promoted_unix_ms
                    .store(crate::clock::wall_ms(), Ordering::Relaxed);
                if let Err(err) = self.publish_local(name, &r) {
                    // The local device exists exactly while this node is primary: a
                    // primary without it would leave whatever mounts it stranded.
                    let undo = match self.demote_durably(&r, r.demote_patience) {
                        Ok(()) => "demoted again".to_string(),
                        Err(e) => format!("and the demotion that should undo it failed: {e:#}"),
                    };
                    bail!("promoted, but the local device could not be published: {err:#}; {undo}");
                }
                let discarded = match before.disk_state {
                    _ if !*force => None,
                    tandem_disk::core::DiskState::Outdated => Some(
                        "this copy was outdated: writes the peer acknowledged after that are discarded when the disks reconnect",
                    ),
                    tandem_disk::core::DiskState::Inconsistent => Some(
                        "this copy was inconsistent: the peer's data is overwritten with it when the disks reconnect",
                    ),
                    _ if !before.connection.replicating() && !before.peer_outdated => Some(
                        "the peer was neither outdated nor fenced: if it is primary too, or holds newer writes, the disks report split brain when they reconnect",
                    ),
                    _ => None,
                };
                if let Some(what) = discarded {
                    tracing::warn!(disk = %name, "forced primary: {what}");
                }
                Ok(discarded.map(|w| format!("forced primary: {w}")))
            }
            // A group's stop waits for I/O in flight to drain (a suspended disk's held
            // writes resolve once the peer is outdated or fenced); an operator's
            // `secondary` answers at once.
            DiskCommand::Secondary => {
                // A group waits as long as a dead peer's link can take to go; an
                // operator for one barrier round trip, and is told why if that was
                // not enough (suspended writes wait for the peer's fate, not for this).
                let patience = match caller {
                    Caller::Group => r.demote_patience,
                    Caller::Operator => OPERATOR_DEMOTE_PATIENCE,
                };
                // The device goes first, while the disk still takes writes: refused
                // (nothing changes) while a file system is mounted on it; what buffered
                // writers left in its cache is written back and flushed.
                self.unpublish_local(name, &r)?;
                if let Err(err) = self.demote_durably(&r, patience) {
                    // Still primary, so the device comes back.
                    if let Err(e) = self.publish_local(name, &r) {
                        tracing::error!(disk = %name, "still primary after a failed demotion, but the local device could not be published again: {e:#}");
                    }
                    return Err(err);
                }
                Ok(None)
            }
            DiskCommand::Connect { discard_my_data } => {
                rt.block_on(r.driver.connect(*discard_my_data))?;
                Ok(None)
            }
            DiskCommand::Disconnect => {
                rt.block_on(r.driver.disconnect())?;
                Ok(None)
            }
            DiskCommand::Verify => {
                rt.block_on(r.driver.verify())??;
                Ok(None)
            }
            DiskCommand::Invalidate => {
                rt.block_on(r.driver.invalidate())??;
                Ok(None)
            }
        }
    }

    /// Starts a disk: metadata checked, node started, NBD socket bound, startup wait.
    fn up(&'static self, name: &str) -> anyhow::Result<()> {
        let disk = {
            let slots = self.lock();
            let Some(slot) = slots.get(name) else {
                bail!("no disk {name:?} on this node");
            };
            if slot.running.is_some() {
                return Ok(());
            }
            slot.disk.clone()
        };
        let result = self.start_disk(&disk);
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(name) else {
            bail!("no disk {name:?} on this node");
        };
        match result {
            Ok(running) => {
                slot.running = Some(running);
                slot.error = None;
                Ok(())
            }
            Err(err) => {
                slot.error = Some(format!("{err:#}"));
                Err(err)
            }
        }
    }

    fn start_disk(&'static self, disk: &Disk) -> anyhow::Result<Arc<Running>> {
        let name = disk.name.clone();
        let host = disk
            .host(&self.local)
            .with_context(|| format!("no [disk.on.{}] entry", self.local))?;
        let peer = disk
            .hosts
            .iter()
            .find(|h| h.node != self.local)
            .context("the disk names no peer node")?;
        let cfg = DriverConfig {
            backing: host.backing.clone(),
            meta: meta_location(&host.meta)?,
            listen: host.address,
            peer: peer.address,
            secret: link_secret(&self.key_secret, &name),
            connect_interval: disk.connect_interval,
            core: core_config(disk),
        };
        let socket = tandem_nbd::default_socket_path(&name);
        let several_groups = {
            let slots = self.lock();
            let first = slots.values().next().map(|s| s.disk.resync_group);
            slots.values().any(|s| Some(s.disk.resync_group) != first)
        };
        let (wfc, degr) = (millis(disk.wfc_timeout), millis(disk.degr_wfc_timeout));
        let rt = &self.runtime;
        let (node, server, primary, wait_ms, device) = rt.block_on(async {
            let node = driver::start(cfg)
                .await
                .with_context(|| format!("start the replication driver on {}", host.address))?;
            let primary = Arc::new(AtomicBool::new(false));
            let device = Arc::new(ReplicatedDevice::new(node.clone(), primary.clone()));
            let access = self.nbd_access;
            let server = Server::new(ServerConfig {
                unix_access: access,
                ..ServerConfig::default()
            });
            let listener = match async {
                server.add_export(&name, &format!("tandem disk {name}"), device.clone())?;
                // Also tightens a directory an older daemon left more open.
                tandem_nbd::secure_socket_dir(Path::new(tandem_nbd::DEFAULT_SOCKET_DIR), &access)?;
                tandem_nbd::bind_unix(&socket, &access).await
            }
            .await
            {
                Ok(l) => l,
                Err(err) => {
                    let _ = node.shutdown().await;
                    return Err(anyhow!(err).context(format!("serve NBD on {}", socket.display())));
                }
            };
            tokio::spawn(server.clone().serve_unix(listener, Some(name.clone())));
            if several_groups {
                // Until the monitor has seen every disk, no resync may jump the order.
                let _ = node.set_resync_paused(true).await;
            }
            let wait_ms = node.startup_wait_ms(wfc, degr).await?;
            anyhow::Ok((node, server, primary, wait_ms, device))
        })?;
        let running = Arc::new(Running {
            link: node.link(),
            driver: node,
            server,
            socket: socket.clone(),
            primary,
            resync_paused: AtomicBool::new(several_groups),
            wait_gave_up: Arc::new(AtomicBool::new(false)),
            detach_logged: AtomicBool::new(false),
            wait_ms,
            started: crate::clock::now(),
            device,
            local_paths: local_paths(&name, host),
            local: Mutex::new(None),
            promoted_unix_ms: AtomicU64::new(0),
            published_unix_ms: AtomicU64::new(0),
            demote_patience: Duration::from_millis(core_config(disk).ping_timeout_ms)
                + DEMOTE_PATIENCE_BEYOND_LINK,
        });
        rt.spawn(startup_wait_log(
            name.clone(),
            running.link.clone(),
            wait_ms,
            running.started,
            running.wait_gave_up.clone(),
        ));
        rt.spawn(forward_fence_peer_requests(
            name.clone(),
            running.link.clone(),
        ));
        tracing::info!(
            disk = %name,
            listen = %host.address,
            peer = %peer.address,
            nbd = %socket.display(),
            "disk up"
        );
        Ok(running)
    }

    fn down(&self, name: &str, r: &Running) -> anyhow::Result<()> {
        let rt = &self.runtime;
        // As DRBD refuses to take down a device someone holds open.
        let clients = r.server.stats().connections_active;
        if clients > 0 {
            bail!(
                "in use by {clients} NBD client(s) on {}",
                r.socket.display()
            );
        }
        self.unpublish_local(name, r).context("cannot go down")?;
        // No new NBD clients from here on.
        r.server.shutdown();
        r.server.remove_export(name);
        self.demote_durably(r, r.demote_patience)
            .context("cannot demote before going down")?;
        rt.block_on(r.driver.shutdown())?;
        let _ = std::fs::remove_file(&r.socket);
        if let Some(slot) = self.lock().get_mut(name) {
            slot.running = None;
        }
        tracing::info!(disk = %name, "disk down");
        Ok(())
    }

    /// Demotes, retrying 100 ms apart for `patience` while the core is busy. The node
    /// answers once the superblock on disk says "not primary": a disk service that exits
    /// right after (a clean stop) must not leave a superblock that reads as a crashed
    /// primary at the next start, or its activity log would be resynced.
    fn demote_durably(&self, r: &Running, patience: Duration) -> anyhow::Result<()> {
        let rt = &self.runtime;
        let give_up = crate::clock::now() + patience;
        let mut result = rt.block_on(r.driver.demote())?;
        while result.is_err() && crate::clock::now() < give_up {
            std::thread::sleep(Duration::from_millis(100));
            result = rt.block_on(r.driver.demote())?;
        }
        result?;
        r.primary.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes the local device of a primary (nothing if it is published already).
    /// Blocking; never called from the runtime's workers (the device's first flush
    /// runs there).
    fn publish_local(&self, name: &str, r: &Running) -> anyhow::Result<()> {
        let mut local = lock(&r.local);
        if local.is_some() {
            return Ok(());
        }
        let options = tandem_blockdev::Options {
            paths: r.local_paths.clone(),
            name: name.to_string(),
            fuse_threads: fuse_threads(),
        };
        let device: Arc<dyn tandem_nbd::BlockDevice> = r.device.clone();
        let published =
            tandem_blockdev::LocalDevice::publish(device, self.runtime.handle().clone(), &options)
                .with_context(|| format!("publish {}", r.local_paths.link.display()))?;
        tracing::info!(
            disk = %name,
            device = %published.link().display(),
            loop_device = %published.loop_device().path().display(),
            direct_io = published.direct_io(),
            "local device published"
        );
        r.published_unix_ms
            .store(crate::clock::wall_ms(), Ordering::Relaxed);
        *local = Some(published);
        Ok(())
    }

    /// Takes the local device down; refused while anything holds it, naming what.
    fn unpublish_local(&self, name: &str, r: &Running) -> anyhow::Result<()> {
        let mut local = lock(&r.local);
        let Some(published) = local.as_mut() else {
            return Ok(());
        };
        let link = published.link().display().to_string();
        match published.unpublish() {
            Ok(()) => {
                tracing::info!(disk = %name, device = %link, "local device taken down");
                *local = None;
                Ok(())
            }
            Err(tandem_blockdev::Error::Busy(holders)) => bail!(
                "{link} is in use ({}): unmount it or close it first",
                tandem_blockdev::holders::describe(&holders)
            ),
            Err(err) => Err(anyhow!(err).context(format!("take down {link}"))),
        }
    }

    fn disk_json(&self, name: &str) -> Value {
        let (disk, running, error) = {
            let slots = self.lock();
            let Some(s) = slots.get(name) else {
                return json!({ "name": name, "error": "not configured on this node" });
            };
            (s.disk.clone(), s.running.clone(), s.error.clone())
        };
        let mut v = json!({
            "name": name,
            "up": running.is_some(),
            "protocol": format!("{:?}", disk.protocol),
            "resync_group": disk.resync_group,
            "rate_limit_bytes_per_s": disk.rate_bytes_per_s,
        });
        if let Some(e) = error {
            v["error"] = json!(e);
        }
        let Some(r) = running else {
            return v;
        };
        v["nbd_socket"] = json!(r.socket);
        v["size_bytes"] = json!(r.driver.size_bytes());
        v["local_device"] = local_device_json(&r);
        v["promoted_unix_ms"] = unix_ms_json(&r.promoted_unix_ms);
        v["waiting_for_peer"] = json!(r.waiting());
        v["resync_paused"] = json!(r.resync_paused.load(Ordering::Relaxed));
        v["nbd"] = json!(
            r.server
                .stats()
                .pairs()
                .into_iter()
                .collect::<BTreeMap<_, _>>()
        );
        let status = self
            .runtime
            .block_on(async { tokio::time::timeout(STATUS_TIMEOUT, r.driver.status()).await });
        match status {
            Ok(Ok(s)) => {
                if let (Some(obj), Ok(Value::Object(report))) =
                    (v.as_object_mut(), serde_json::to_value(s.report()))
                {
                    obj.extend(report);
                }
                v["resync_moved_bytes"] = json!(s.resync_moved_bytes);
                v["write_latency"] = json!(s.write_latency);
                v["barrier_acks_received"] = json!(s.barrier_acks_received);
                v["barrier_acks_sent"] = json!(s.barrier_acks_sent);
                v["generations"] = json!(s.generations);
                v["last_disconnect_reason"] = json!(s.last_disconnect_reason);
                v["detach_reason"] = json!(s.detach_reason);
                v["verify_out_of_sync_blocks"] = json!(s.verify_out_of_sync_blocks);
                v["last_decision"] = json!(s.last_decision);
            }
            Ok(Err(e)) => v["error"] = json!(format!("{e}")),
            Err(_) => v["error"] = json!("the disk did not answer within 5 s"),
        }
        v
    }
}

/// FUSE threads of a local device (`TANDEM_FUSE_THREADS` overrides).
const DEFAULT_FUSE_THREADS: usize = 2;

fn fuse_threads() -> usize {
    std::env::var("TANDEM_FUSE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_FUSE_THREADS)
        .clamp(1, 16)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where disk `name`'s local device lives on this node: the configured `device` path
/// (a link to the loop device), the FUSE mount beside the NBD socket
/// (`/run/tandem/disk/NAME.fuse`), and the FUSE file named after the backing store.
fn local_paths(name: &str, host: &tandem_config::DiskHost) -> tandem_blockdev::Paths {
    let backing = std::path::absolute(&host.backing).unwrap_or_else(|_| host.backing.clone());
    tandem_blockdev::Paths {
        link: host.device.clone(),
        mount_dir: tandem_nbd::default_socket_path(name).with_file_name(format!("{name}.fuse")),
        file_name: tandem_blockdev::file_name(name, &backing),
    }
}

/// `local_device` in status: null while not published.
fn local_device_json(r: &Running) -> Value {
    // A publish or teardown in progress (a flush may wait for a suspended disk) must
    // not hold status up.
    let Ok(local) = r.local.try_lock() else {
        return json!({ "path": r.local_paths.link, "changing": true });
    };
    let Some(d) = local.as_ref() else {
        return Value::Null;
    };
    let s = d.stats();
    json!({
        "path": d.link(),
        "published_unix_ms": unix_ms_json(&r.published_unix_ms),
        "loop_device": d.loop_device().path(),
        "direct_io": d.direct_io(),
        "reads": s.reads,
        "writes": s.writes,
        "flushes": s.flushes,
        "zeroes": s.zeroes,
        "read_bytes": s.read_bytes,
        "written_bytes": s.written_bytes,
        "errors": s.errors,
    })
}

/// A wall-clock stamp for status: null while it was never set.
fn unix_ms_json(stamp: &AtomicU64) -> Value {
    match stamp.load(Ordering::Relaxed) {
        0 => Value::Null,
        ms => json!(ms),
    }
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

/// Logs the startup wait (DRBD's `wfc-timeout` / `degr-wfc-timeout`): when it starts,
/// every 30 s while it lasts, and how it ended. It does not decide whether the wait is
/// over — [`Running::waiting`] reads that from the link state at the moment of asking —
/// except that a link found standing alone ends it for good (`gave_up`).
async fn startup_wait_log(
    name: String,
    mut link: watch::Receiver<LinkState>,
    wait_ms: u64,
    started: Instant,
    gave_up: Arc<AtomicBool>,
) {
    if wait_ms == 0 {
        tracing::info!(disk = %name, "waiting for the peer (no timeout)");
    } else {
        tracing::info!(disk = %name, wait_ms, "waiting for the peer");
    }
    let wait = (wait_ms != 0).then(|| Duration::from_millis(wait_ms));
    let mut next_log = Duration::from_secs(30);
    loop {
        let waited = crate::clock::now().duration_since(started);
        let limit = wait
            .map_or(next_log, |w| w.min(next_log))
            .saturating_sub(waited);
        let ended = tokio::time::timeout(limit, link.wait_for(startup_over))
            .await
            .map(|r| r.map(|l| *l));
        match ended {
            Ok(Ok(l)) if l.handshakes > 0 => {
                tracing::info!(disk = %name, connection = ?l.connection, "peer connected");
                return;
            }
            Ok(Ok(_)) => {
                gave_up.store(true, Ordering::Relaxed);
                tracing::warn!(disk = %name, "standalone: not waiting for the peer any longer");
                return;
            }
            // The node stopped (`tandem disk down`).
            Ok(Err(_)) => return,
            Err(_) => {
                let waited = crate::clock::now().duration_since(started);
                if wait.is_some_and(|w| waited >= w) {
                    tracing::warn!(disk = %name, wait_ms, "no peer: going on alone (degraded)");
                    return;
                }
                if waited >= next_log {
                    tracing::info!(disk = %name, waited_s = waited.as_secs(), "still waiting for the peer");
                    next_log += Duration::from_secs(30);
                }
            }
        }
    }
}

/// Hands every `FencePeer` request of a disk's core to the cluster (the node counts
/// them in its published link state); ends when the node stops.
async fn forward_fence_peer_requests(name: String, mut link: watch::Receiver<LinkState>) {
    let mut seen = link.borrow().fence_peer_requests;
    while link.changed().await.is_ok() {
        let (asked, suspended) = {
            let l = link.borrow();
            (l.fence_peer_requests, l.suspended)
        };
        if asked > seen {
            seen = asked;
            if suspended {
                tracing::warn!(disk = %name, "replication link lost: I/O suspended until the peer is outdated or fenced");
            }
            ask_fence_peer(&name);
        }
    }
}

/// Keeps every running disk's role flag current and runs resync groups in order: only
/// the lowest group with a pending resync may resync (`groups_allowed`).
async fn monitor(service: &'static Service) {
    loop {
        tokio::time::sleep(MONITOR_INTERVAL).await;
        let disks: Vec<(u32, Arc<Running>, String)> = service
            .lock()
            .values()
            .filter_map(|s| {
                s.running
                    .clone()
                    .map(|r| (s.disk.resync_group, r, s.disk.name.clone()))
            })
            .collect();
        let mut pending = Vec::with_capacity(disks.len());
        for (group, r, name) in &disks {
            let needs = match r.driver.status().await {
                Ok(s) => {
                    r.primary.store(s.role == Role::Primary, Ordering::Relaxed);
                    if let Some(why) = &s.detach_reason
                        && !r.detach_logged.swap(true, Ordering::Relaxed)
                    {
                        tracing::error!(disk = %name, reason = %why, "backing disk detached (on-io-error detach): this node's copy is no longer used; I/O goes to the peer");
                    }
                    matches!(
                        s.connection,
                        ConnState::SyncTarget | ConnState::WaitBitmapTarget
                    )
                }
                Err(_) => false,
            };
            pending.push((*group, needs));
        }
        let allowed = tandem_disk::core::resync::groups_allowed(&pending);
        // With one group nothing is ever held back. With several, every disk that is not
        // allowed stays paused — also one with nothing to resync yet, so that a resync
        // starting between two looks cannot run ahead of a lower group.
        let several_groups = pending.windows(2).any(|w| w[0].0 != w[1].0);
        for ((_, r, _), ok) in disks.iter().zip(&allowed) {
            let pause = several_groups && !ok;
            if r.resync_paused.swap(pause, Ordering::Relaxed) != pause {
                let _ = r.driver.set_resync_paused(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn link_secrets_differ_per_disk_and_key() {
        let a = link_secret(b"key one 0123456789", "r0");
        assert_eq!(a.len(), 32);
        assert_ne!(a, link_secret(b"key one 0123456789", "r1"));
        assert_ne!(a, link_secret(b"key two 0123456789", "r0"));
        assert_eq!(a, link_secret(b"key one 0123456789", "r0"));
    }

    /// `cluster.nbd_group` names a group; its id comes from the system's group
    /// database, and a name it does not know is an error (the caller then keeps the
    /// sockets root-only).
    #[test]
    fn nbd_group_names_resolve_through_the_group_database() {
        assert_eq!(group_id("root").unwrap(), 0);
        let e = group_id("no-such-group-for-tandem").unwrap_err();
        assert!(format!("{e:#}").contains("no such group"), "{e:#}");
    }

    /// Two real nodes on loopback: the startup wait ends in the event loop's own step
    /// that completes the handshake (no polling task in between), stays over after the
    /// link drops again, and `disconnect` (stand alone) also ends it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_startup_wait_ends_when_the_node_reports_the_handshake() {
        use tandem_disk::meta::MetaStore;
        let dir = std::env::temp_dir().join(format!("tandem-disks-wait-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (pa, pb) = (port(), port());
        let cfg = |name: &str, id: u64, listen, peer| {
            let backing = dir.join(name);
            std::fs::File::create(&backing)
                .unwrap()
                .set_len(8 << 20)
                .unwrap();
            MetaStore::create(&backing, &MetaLocation::Internal, 7, id, false).unwrap();
            DriverConfig {
                backing,
                meta: MetaLocation::Internal,
                listen,
                peer,
                secret: b"wait test".to_vec(),
                connect_interval: Duration::from_secs(1),
                core: Default::default(),
            }
        };
        let a = driver::start(cfg("a.img", 1, pa, pb)).await.unwrap();
        let mut link = a.link();
        assert!(!startup_over(&link.borrow()), "{:?}", *link.borrow());
        let b = driver::start(cfg("b.img", 2, pb, pa)).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(20), link.wait_for(startup_over))
            .await
            .expect("no handshake within 20 s")
            .map(|l| *l)
            .expect("node stopped");
        assert_eq!(seen.handshakes, 1, "{seen:?}");
        // What the loop published is what status says.
        let status = a.status().await.unwrap();
        assert!(status.connection.replicating(), "{status:?}");
        // The peer goes away: connecting again, but the wait stays over.
        b.shutdown().await.unwrap();
        let gone = tokio::time::timeout(
            Duration::from_secs(20),
            link.wait_for(|l| l.connection == ConnState::Connecting),
        )
        .await
        .expect("the link never dropped")
        .map(|l| *l)
        .unwrap();
        assert!(startup_over(&gone), "{gone:?}");
        // A fresh node that stands alone is not waiting either.
        let c = driver::start(cfg("c.img", 3, port(), port()))
            .await
            .unwrap();
        let mut alone = c.link();
        assert!(!startup_over(&alone.borrow()));
        c.disconnect().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), alone.wait_for(startup_over))
            .await
            .expect("standalone not published")
            .unwrap();
        a.shutdown().await.unwrap();
        c.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_idle_link_is_pinged_within_its_timeout() {
        let text = r#"
[cluster]
name = "t"
key_file = "/etc/tandem/authkey"
[[node]]
name = "a"
[[node]]
name = "b"
[[link]]
type = "ucast"
interface = "eth1"
peers = ["10.0.0.1", "10.0.0.2"]
[[disk]]
name = "r0"
protocol = "A"
rate = "5M"
after_sb_0pri = "discard-older-primary"
[disk.on.a]
device = "/dev/drbd0"
backing = "/dev/sdb1"
address = "10.0.0.1:7788"
[disk.on.b]
device = "/dev/drbd0"
backing = "/dev/sdb1"
address = "10.0.0.2:7788"
"#;
        let (config, _) = tandem_config::Config::parse_str("test.toml", text).expect("config");
        let core = core_config(&config.disks[0]);
        assert_eq!(core.protocol, tandem_config::Protocol::A);
        assert_eq!(core.resync_rate_bytes_per_s, Some(5 << 20));
        assert_eq!(core.ping_timeout_ms, 6000);
        // Not in a group: resource-only, as the configuration resolved it.
        assert_eq!(core.fencing, tandem_config::DiskFencing::ResourceOnly);
        assert!(core.ping_interval_ms * 2 < core.ping_timeout_ms);
        assert_eq!(
            core.after_split_brain.no_primary,
            SplitBrainPolicy::DiscardOlderPrimary
        );
        assert!(meta_location(&Meta::Internal).is_ok());
        assert!(
            meta_location(&Meta::External {
                path: "/dev/md".into(),
                index: Some(1)
            })
            .is_err()
        );
    }
}
