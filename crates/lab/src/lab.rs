//! The `Lab` handle: builds, drives and tears down one lab.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::sys::{self, io_err};
use crate::topology::{Attachment, Topology};

mod power_net;
mod teardown;

pub use teardown::{down, down_all, lab_owner};
use teardown::{lab_netns, teardown_lab};

/// Where lab state lives (tmpfs: a reboot forgets labs, as it forgets their namespaces).
pub const STATE_ROOT: &str = "/run/tandem-lab";
/// Where lab data lives: per-host persistent directories, and files tests put there
/// (disk images); loop devices backed by files here are detached at teardown.
pub const DATA_ROOT: &str = "/var/lib/tandem-lab";
/// The cgroup directory (under the v2 root) that holds every lab.
const CGROUP_DIR: &str = "tandem-lab";
/// Bound on power-off/teardown waits: the kernel kills in milliseconds; a process that
/// is still not reaped after this long has a parent that does not reap.
const KILL_TIMEOUT_MS: u64 = 10_000;
/// Bound on waiting for `frozen 1` / `frozen 0`.
const FREEZE_TIMEOUT_MS: u64 = 10_000;
/// Bound on waiting for a `tandem lab diskd` to mount its disks and answer.
const DISKD_START_TIMEOUT_MS: u64 = 10_000;

const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    version: u32,
    name: String,
    topology: Topology,
    hosts: BTreeMap<String, HostState>,
    #[serde(default)]
    partitions: Vec<Partition>,
    /// The `tandem lab switchd` daemon serving this lab's power switch, if any.
    #[serde(default)]
    switch_pid: Option<u32>,
    /// The process whose `Lab` handle owns the lab (tears it down when dropped), with
    /// its start time; `down --all` leaves labs of live owners alone.
    #[serde(default)]
    owner: Option<(u32, u64)>,
    /// Cables pulled with `set_link` (host, net): they stay out across power cycles.
    #[serde(default)]
    links_down: Vec<(String, String)>,
    /// The `tandem lab diskd` daemon serving this lab's lossy disks, if one does.
    #[serde(default)]
    disk_pid: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HostState {
    powered: bool,
    init_pid: Option<u32>,
    #[serde(default)]
    init_start: u64,
    keeper_pid: Option<u32>,
}

/// A cut on one network: with no hosts the whole network drops every frame; with hosts,
/// each listed host is cut off from everyone else on that network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Network name.
    pub net: String,
    /// Isolated hosts (empty: the whole network).
    pub hosts: Vec<String>,
}

/// How a lab is built, beyond its topology.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// Who serves the hosts' lossy disks.
    pub disk_server: DiskServer,
}

/// Who serves a lab's lossy disks (their FUSE file systems and control socket). It must
/// outlive every power cycle of the hosts, so it runs outside them.
#[derive(Debug, Clone, Default)]
pub enum DiskServer {
    /// Threads of the process that builds the lab (tests, `tandem demo`): they stop at
    /// teardown, or die with the process (the kernel then fails every access at once:
    /// nothing hangs, and `down` removes the dead mounts).
    #[default]
    InProcess,
    /// A daemon started with this command line, which calls [`serve_disks`]: for labs
    /// that outlive the command that built them (`tandem lab up` passes
    /// `tandem lab diskd --name NAME`). Teardown stops it.
    Daemon(Vec<std::ffi::OsString>),
}

/// Serves the lossy disks of lab `name` in this process until the lab is taken down
/// (its state directory disappears): what `tandem lab diskd` runs.
pub fn serve_disks(name: &str) -> Result<(), LabError> {
    require_root()?;
    check_lab_name(name)?;
    let st = load_state(name)?;
    crate::disk::start(name, &data_dir(name), &st.topology)?;
    while state_dir(name).exists() {
        sys::pause_ms(200);
    }
    for p in crate::disk::stop(name) {
        eprintln!("tandem-lab: stopping the lossy disks of {name}: {p}");
    }
    Ok(())
}

/// A handle on one lab. Created by [`Lab::up`] (tears the lab down when dropped, unless
/// [`Lab::keep`] was called) or [`Lab::open`] (leaves the lab alone when dropped).
pub struct Lab {
    name: String,
    state: State,
    owned: bool,
}

/// A process running inside a lab host. Its stdio handles can be taken; waiting is safe
/// even after power-off (the lab reaps the process and this handle keeps the status).
pub struct HostProcess {
    host: String,
    pid: u32,
    child: Arc<Mutex<Child>>,
    /// The child's stdin, if it was piped.
    pub stdin: Option<ChildStdin>,
    /// The child's stdout, if it was piped.
    pub stdout: Option<ChildStdout>,
    /// The child's stderr, if it was piped.
    pub stderr: Option<ChildStderr>,
}

impl HostProcess {
    /// PID in the machine's namespace (inside the host it has another, smaller one).
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// The host it runs in.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// Exit status if it has exited (reaps it).
    pub fn try_wait(&self) -> std::io::Result<Option<ExitStatus>> {
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        c.try_wait()
    }
    /// Waits for the exit.
    pub fn wait(&self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            sys::pause_ms(5);
        }
    }
    /// Waits at most `timeout` for the exit.
    pub fn wait_timeout(&self, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
        let start = sys::now();
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            sys::pause_ms(5);
        }
    }
    /// Sends a signal (e.g. `libc::SIGTERM`) unless it was already reaped.
    pub fn signal(&self, sig: i32) -> bool {
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match c.try_wait() {
            Ok(None) => sys::kill(self.pid, sig),
            _ => false,
        }
    }
    /// SIGKILL and wait.
    pub fn kill(&self) -> std::io::Result<ExitStatus> {
        self.signal(libc::SIGKILL);
        self.wait()
    }
}

/// What `status` reports about a host.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    /// Host name.
    pub name: String,
    /// Network namespace name.
    pub netns: String,
    /// Power state.
    pub powered: bool,
    /// Whether its cgroup is frozen.
    pub frozen: bool,
    /// Its init's PID (machine namespace), when powered.
    pub init_pid: Option<u32>,
    /// Number of live processes in its cgroup.
    pub processes: usize,
    /// Its interfaces.
    pub interfaces: Vec<InterfaceStatus>,
    /// Its lossy disk, if it has one.
    pub disk: Option<crate::DiskStatus>,
}

/// One interface of a host.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceStatus {
    /// Network.
    pub net: String,
    /// Name inside the host.
    pub ifname: String,
    /// Address with prefix length.
    pub address: String,
    /// MAC address.
    pub mac: String,
    /// The switch-side port name.
    pub port: String,
    /// Whether the switch-side port is up.
    pub link_up: bool,
}

/// One network.
#[derive(Debug, Clone, Serialize)]
pub struct NetStatus {
    /// Name.
    pub name: String,
    /// Subnet.
    pub subnet: String,
    /// Bridge name in the switch namespace.
    pub bridge: String,
    /// Active partitions ("all" or the isolated hosts).
    pub partitioned: Vec<String>,
}

/// A whole lab's status.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    /// Lab name.
    pub name: String,
    /// Switch namespace.
    pub switch_netns: String,
    /// Hosts.
    pub hosts: Vec<HostStatus>,
    /// Networks.
    pub nets: Vec<NetStatus>,
    /// The live process owning the lab through a `Lab` handle (none: built by the CLI).
    pub owner_pid: Option<u32>,
    /// The power switch's socket, when something serves it.
    pub power_switch: Option<String>,
}

/// One entry of a host's neighbour (ARP) table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    /// The neighbour's address.
    pub address: String,
    /// Interface.
    pub dev: String,
    /// Link-layer address, if resolved.
    pub mac: Option<String>,
    /// Kernel states (`REACHABLE`, `STALE`, `FAILED`, …).
    pub state: Vec<String>,
}

/// What teardown removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TeardownReport {
    /// Lab name.
    pub name: String,
    /// Processes killed.
    pub killed: usize,
    /// Mounts removed from the machine's namespace.
    pub unmounted: Vec<String>,
    /// Loop devices detached.
    pub loop_devices: Vec<String>,
    /// Network namespaces deleted.
    pub netns: Vec<String>,
    /// Problems met on the way (teardown carries on past them).
    pub problems: Vec<String>,
    /// Why the lab was left alone (`down --all` and a live owner).
    pub skipped: Option<String>,
}

/// Fails unless we run as root.
pub fn require_root() -> Result<(), LabError> {
    match sys::euid() {
        0 => Ok(()),
        uid => Err(LabError::NotRoot(uid)),
    }
}

fn check_lab_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::BadName(name.to_string()))
    }
}

pub(crate) fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}
fn data_dir(name: &str) -> PathBuf {
    Path::new(DATA_ROOT).join(name)
}
fn netns_prefix(name: &str) -> String {
    format!("tl-{name}-")
}
fn host_netns(name: &str, host: &str) -> String {
    format!("tl-{name}-{host}")
}
fn switch_netns(name: &str) -> String {
    format!("tl-{name}-sw")
}
fn lab_cgroup_rel(name: &str) -> String {
    format!("/{CGROUP_DIR}/tl-{name}")
}
fn host_cgroup_rel(name: &str, host: &str) -> String {
    format!("{}/{host}", lab_cgroup_rel(name))
}
fn cg_path(rel: &str) -> PathBuf {
    sys::cgroup_root().join(rel.trim_start_matches('/'))
}
fn bridge_name(net: &str) -> String {
    format!("br-{net}")
}
fn port_name(host: &str, net: &str) -> String {
    format!("{host}-{net}")
}
fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// A locally administered MAC, stable for (lab, host, network): tests can predict it and a
/// power cycle keeps it, as real hardware would.
fn mac_for(lab: &str, host_index: usize, net_index: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in lab.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    format!(
        "02:7e:{:02x}:{:02x}:{:02x}:{:02x}",
        (h >> 8) & 0xff,
        h & 0xff,
        host_index & 0xff,
        net_index & 0xff
    )
}

/// Every lab with a state directory.
pub fn list_labs() -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(STATE_ROOT)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("state.json").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Holds the per-lab lock file (flock) for one mutation; separate `tandem lab`
/// invocations on the same lab take turns.
struct LockGuard(File);

impl Drop for LockGuard {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn lock(name: &str) -> Result<LockGuard, LabError> {
    let p = state_dir(name).join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(io_err(format!("open {}", p.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err("flock the lab state")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(LockGuard(f))
}

fn load_state(name: &str) -> Result<State, LabError> {
    let p = state_dir(name).join("state.json");
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NoSuchLab(name.to_string()));
        }
        Err(e) => return Err(io_err(format!("read {}", p.display()))(e)),
    };
    let st: State = serde_json::from_str(&text).map_err(|e| LabError::State {
        path: p.display().to_string(),
        detail: e.to_string(),
    })?;
    if st.version != STATE_VERSION {
        return Err(LabError::State {
            path: p.display().to_string(),
            detail: format!("version {} (this tandem knows {STATE_VERSION})", st.version),
        });
    }
    Ok(st)
}

fn save_state(st: &State) -> Result<(), LabError> {
    let dir = state_dir(&st.name);
    let tmp = dir.join("state.json.tmp");
    let text = serde_json::to_string_pretty(st).map_err(|e| LabError::State {
        path: tmp.display().to_string(),
        detail: e.to_string(),
    })?;
    fs::write(&tmp, text).map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, dir.join("state.json")).map_err(io_err("rename state.json"))
}

static AUTO_NAME: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds a lab named `name` (1–12 of a-z, 0-9) from `topology`, every host powered on.
    /// The handle tears it down when dropped; on a failure half-way, what was built is
    /// removed before the error is returned.
    pub fn up(name: &str, topology: Topology) -> Result<Lab, LabError> {
        Lab::up_with(name, topology, LabOptions::default())
    }

    /// As [`Lab::up`], with options (who serves the lossy disks).
    pub fn up_with(name: &str, topology: Topology, options: LabOptions) -> Result<Lab, LabError> {
        require_root()?;
        check_lab_name(name)?;
        topology.validate()?;
        if topology.host("sw").is_some() {
            return Err(LabError::Topology(
                "host name \"sw\" is reserved for the switch namespace".into(),
            ));
        }
        // Leftovers of a killed run with this name (namespaces, cgroup, data) count as
        // "exists" too: building over them would fail half-way or adopt them.
        if data_dir(name).exists()
            || cg_path(&lab_cgroup_rel(name)).exists()
            || lab_netns(name).next().is_some()
        {
            return Err(LabError::Exists(name.to_string()));
        }
        fs::create_dir_all(STATE_ROOT).map_err(io_err(format!("create {STATE_ROOT}")))?;
        match fs::create_dir(state_dir(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LabError::Exists(name.to_string()));
            }
            Err(e) => return Err(io_err(format!("create {}", state_dir(name).display()))(e)),
        }
        let hosts = topology
            .hosts
            .iter()
            .map(|h| (h.name.clone(), HostState::default()))
            .collect();
        let state = State {
            version: STATE_VERSION,
            name: name.to_string(),
            topology,
            hosts,
            partitions: Vec::new(),
            switch_pid: None,
            owner: sys::proc_stat(std::process::id()).map(|(_, start)| (std::process::id(), start)),
            links_down: Vec::new(),
            disk_pid: None,
        };
        // Record the lab before building anything, so `down` finds a half-built one.
        save_state(&state)?;
        let mut lab = Lab {
            name: name.to_string(),
            state,
            owned: true,
        };
        if let Err(e) = lab.build(&options) {
            let _ = lab.teardown();
            lab.owned = false;
            return Err(e);
        }
        Ok(lab)
    }

    /// As [`Lab::up`] with a fresh unique name (`t` + pid + counter), for tests that run
    /// in parallel threads.
    pub fn up_auto(topology: Topology) -> Result<Lab, LabError> {
        loop {
            let n = AUTO_NAME.fetch_add(1, Ordering::Relaxed);
            let name = format!("t{:x}x{n:x}", std::process::id());
            match Lab::up(&name, topology.clone()) {
                Err(LabError::Exists(_)) => continue,
                r => return r,
            }
        }
    }

    /// Opens an existing lab (built by another process); dropping it changes nothing.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        check_lab_name(name)?;
        let state = load_state(name)?;
        Ok(Lab {
            name: name.to_string(),
            state,
            owned: false,
        })
    }

    /// A second, non-owning handle on the same lab.
    pub(crate) fn handle(&self) -> Lab {
        Lab {
            name: self.name.clone(),
            state: self.state.clone(),
            owned: false,
        }
    }

    /// Keeps the lab up after this handle is dropped (the CLI's `up`): the lab then
    /// belongs to nobody, and `down --all` takes it down like any leftover.
    pub fn keep(&mut self) {
        self.owned = false;
        if let Ok(_g) = self.refresh() {
            self.state.owner = None;
            let _ = save_state(&self.state);
        }
    }

    /// Records the PID of a daemon serving this lab's power switch (`tandem lab
    /// switchd`), so that teardown stops it.
    pub fn record_switch_daemon(&mut self, pid: u32) -> Result<(), LabError> {
        let _g = self.refresh()?;
        self.state.switch_pid = Some(pid);
        save_state(&self.state)
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topology it was built from.
    pub fn topology(&self) -> &Topology {
        &self.state.topology
    }

    /// The lab's data directory (`/var/lib/tandem-lab/NAME`): put disk images here;
    /// teardown detaches loop devices backed by files under it and removes it.
    pub fn data_dir(&self) -> PathBuf {
        data_dir(&self.name)
    }

    /// The host's persistent directory under the data dir (its private dirs live below).
    pub fn host_dir(&self, host: &str) -> Result<PathBuf, LabError> {
        self.check_host(host)?;
        Ok(data_dir(&self.name).join("hosts").join(host))
    }

    /// The directory of the host's lossy disk (`/var/lib/tandem-lab/NAME/disks/HOST`):
    /// the same path inside every host and outside. Files here forget their unflushed
    /// writes when the host loses power (docs/lab.md, "Lossy disks").
    pub fn host_disk_dir(&self, host: &str) -> Result<PathBuf, LabError> {
        self.check_disk(host)?;
        Ok(crate::disk::mount_dir(&data_dir(&self.name), host))
    }

    fn check_disk(&self, host: &str) -> Result<(), LabError> {
        self.check_host(host)?;
        match self.state.topology.host(host) {
            Some(h) if h.lossy_disk => Ok(()),
            _ => Err(LabError::NoDisk {
                lab: self.name.clone(),
                host: host.to_string(),
            }),
        }
    }

    /// Writes every unflushed write of the host's lossy disk down, as `sync` would on a
    /// real machine (inside a lab host, `sync` does not reach the disk: docs/lab.md).
    pub fn sync_disk(&self, host: &str) -> Result<crate::DiskFlush, LabError> {
        self.check_disk(host)?;
        let r = crate::disk::request(&self.name, &crate::disk::DiskRequest::Sync(host.into()))?;
        crate::disk::parse_outcome(&r)
    }

    /// The state of the host's lossy disk (unflushed bytes and files, bound).
    pub fn disk_status(&self, host: &str) -> Result<crate::DiskStatus, LabError> {
        self.check_disk(host)?;
        let r = crate::disk::request(&self.name, &crate::disk::DiskRequest::Status)?;
        let m = crate::disk::parse_status(&r);
        let [cached_bytes, dirty_files, bound_bytes, refused_writes] =
            m.get(host).copied().ok_or_else(|| LabError::Disk {
                detail: format!("the disk server does not report host {host:?}"),
            })?;
        Ok(crate::DiskStatus {
            dir: self.host_disk_dir(host)?.display().to_string(),
            served: true,
            cached_bytes,
            dirty_files,
            bound_bytes,
            refused_writes,
        })
    }

    /// The host's network namespace name (for `ip -n`).
    pub fn netns(&self, host: &str) -> Result<String, LabError> {
        self.check_host(host)?;
        Ok(host_netns(&self.name, host))
    }

    /// The switch namespace's name.
    pub fn switch_netns(&self) -> String {
        switch_netns(&self.name)
    }

    /// The host's cgroup directory.
    pub fn cgroup(&self, host: &str) -> Result<PathBuf, LabError> {
        self.check_host(host)?;
        Ok(cg_path(&host_cgroup_rel(&self.name, host)))
    }

    fn check_host(&self, host: &str) -> Result<(), LabError> {
        if self.state.topology.host(host).is_some() {
            Ok(())
        } else {
            Err(LabError::UnknownHost {
                lab: self.name.clone(),
                host: host.to_string(),
            })
        }
    }

    fn attachment(&self, host: &str, net: &str) -> Result<Attachment, LabError> {
        self.check_host(host)?;
        if self.state.topology.net(net).is_none() {
            return Err(LabError::UnknownNet {
                lab: self.name.clone(),
                detail: format!("no network {net:?}"),
            });
        }
        self.state
            .topology
            .attachments(host)
            .into_iter()
            .find(|a| a.net == net)
            .ok_or_else(|| LabError::UnknownNet {
                lab: self.name.clone(),
                detail: format!("host {host:?} is not on network {net:?}"),
            })
    }

    /// The host's address on a network.
    pub fn address(&self, host: &str, net: &str) -> Result<Ipv4Addr, LabError> {
        Ok(self.attachment(host, net)?.address)
    }

    /// The host's interface name on a network (`eth0`, …).
    pub fn ifname(&self, host: &str, net: &str) -> Result<String, LabError> {
        Ok(self.attachment(host, net)?.ifname)
    }

    /// The host's MAC address on a network (`02:7e:…`), stable across power cycles.
    pub fn mac(&self, host: &str, net: &str) -> Result<String, LabError> {
        self.attachment(host, net)?;
        Ok(self.mac_unchecked(host, net))
    }

    fn mac_unchecked(&self, host: &str, net: &str) -> String {
        let t = &self.state.topology;
        let hi = t.hosts.iter().position(|h| h.name == host).unwrap_or(0);
        let ni = t.nets.iter().position(|n| n.name == net).unwrap_or(0);
        mac_for(&self.name, hi, ni)
    }

    /// The switch-side port of a host on a network.
    pub fn port(&self, host: &str, net: &str) -> Result<String, LabError> {
        self.attachment(host, net)?;
        Ok(port_name(host, net))
    }

    // ---------------------------------------------------------------- building

    fn build(&mut self, options: &LabOptions) -> Result<(), LabError> {
        let sw = switch_netns(&self.name);
        sys::run("ip", &["netns", "add", &sw])?;
        let mut lines = vec!["link set lo up".to_string()];
        for n in &self.state.topology.nets {
            // Multicast snooping off: without an IGMP querier the bridge would starve
            // mcast heartbeat links.
            lines.push(format!(
                "link add {} type bridge mcast_snooping 0",
                bridge_name(&n.name)
            ));
            lines.push(format!("link set {} up", bridge_name(&n.name)));
        }
        sys::ip_batch(Some(&sw), &lines)?;
        self.apply_partitions()?;
        let data = data_dir(&self.name);
        fs::create_dir_all(&data).map_err(io_err(format!("create {}", data.display())))?;
        let lab_cg = cg_path(&lab_cgroup_rel(&self.name));
        fs::create_dir_all(&lab_cg).map_err(io_err(format!("create {}", lab_cg.display())))?;
        // Before any host boots: a host's mount namespace is a copy of the machine's
        // taken at boot, so the disks must be mounted by then.
        self.start_disks(&options.disk_server)?;
        let hosts: Vec<String> = self
            .state
            .topology
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .collect();
        for h in &hosts {
            self.build_host_net(h)?;
            self.boot(h)?;
            if let Some(hs) = self.state.hosts.get_mut(h) {
                hs.powered = true;
            }
            save_state(&self.state)?;
        }
        Ok(())
    }

    fn start_disks(&mut self, server: &DiskServer) -> Result<(), LabError> {
        if !self.state.topology.hosts.iter().any(|h| h.lossy_disk) {
            return Ok(());
        }
        let argv = match server {
            DiskServer::InProcess => {
                return crate::disk::start(&self.name, &data_dir(&self.name), &self.state.topology);
            }
            DiskServer::Daemon(argv) => argv,
        };
        use std::os::unix::process::CommandExt;
        let (prog, args) = argv.split_first().ok_or_else(|| LabError::Command {
            cmd: String::new(),
            detail: "empty disk daemon command".into(),
        })?;
        let log_path = state_dir(&self.name).join("diskd.log");
        let log =
            File::create(&log_path).map_err(io_err(format!("create {}", log_path.display())))?;
        let log2 = log.try_clone().map_err(io_err("dup the diskd log"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let shown = format!("{cmd:?}");
        let child = cmd.spawn().map_err(|e| LabError::Command {
            cmd: shown.clone(),
            detail: e.to_string(),
        })?;
        self.state.disk_pid = Some(child.id());
        save_state(&self.state)?;
        // Ready once it answers for every disk (it mounts them all before listening).
        let child = Mutex::new(child);
        sys::wait_until(
            "the lossy disk daemon to answer",
            DISKD_START_TIMEOUT_MS,
            || {
                if crate::disk::request(&self.name, &crate::disk::DiskRequest::Status).is_ok() {
                    return Ok(true);
                }
                let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
                match c.try_wait() {
                    Ok(Some(status)) => Err(LabError::Command {
                        cmd: shown.clone(),
                        detail: format!(
                            "{status}: {}",
                            fs::read_to_string(&log_path).unwrap_or_default().trim()
                        ),
                    }),
                    _ => Ok(false),
                }
            },
        )
    }

    /// Creates the host's network namespace, veth pairs, addresses (a fresh one each
    /// power-on: addresses or rules added by software in the host do not survive).
    fn build_host_net(&self, host: &str) -> Result<(), LabError> {
        let ns = host_netns(&self.name, host);
        let sw = switch_netns(&self.name);
        sys::run("ip", &["netns", "add", &ns])?;
        let atts = self.state.topology.attachments(host);
        let mut sw_lines = Vec::new();
        let mut host_lines = vec!["link set lo up".to_string()];
        for a in &atts {
            let port = port_name(host, &a.net);
            sw_lines.push(format!(
                "link add {port} type veth peer name {} address {} netns {ns}",
                a.ifname,
                self.mac_unchecked(host, &a.net)
            ));
            sw_lines.push(format!("link set {port} master {}", bridge_name(&a.net)));
            let pulled = self
                .state
                .links_down
                .iter()
                .any(|(h, n)| h == host && *n == a.net);
            if !pulled {
                sw_lines.push(format!("link set {port} up"));
            }
            host_lines.push(format!(
                "addr add {}/{} dev {}",
                a.address, a.prefix_len, a.ifname
            ));
            host_lines.push(format!("link set {} up", a.ifname));
        }
        sys::ip_batch(Some(&sw), &sw_lines)?;
        sys::ip_batch(Some(&ns), &host_lines)?;
        Ok(())
    }

    fn boot(&mut self, host: &str) -> Result<(), LabError> {
        let cg = cg_path(&host_cgroup_rel(&self.name, host));
        fs::create_dir_all(&cg).map_err(io_err(format!("create {}", cg.display())))?;
        // A fresh boot is never frozen.
        sys::cg_write(&cg, "cgroup.freeze", "0")?;
        let spec =
            self.state
                .topology
                .host(host)
                .cloned()
                .ok_or_else(|| LabError::UnknownHost {
                    lab: self.name.clone(),
                    host: host.to_string(),
                })?;
        let mut mounts = vec![
            sys::BootMount::fresh("proc", "/proc", None)?,
            sys::BootMount::fresh("sysfs", "/sys", None)?,
        ];
        let root = data_dir(&self.name).join("hosts").join(host).join("root");
        // A private /run (a fresh tmpfs) would hide the lab's own state directory, where
        // the power switch and the lossy disks listen: it is held by a bind mount made
        // before the tmpfs and bound back over /run/tandem-lab/NAME right after it.
        let lab_run = Path::new(STATE_ROOT).join(&self.name);
        let held = data_dir(&self.name)
            .join("hosts")
            .join(host)
            .join("lab-run");
        let run_private = spec.private_dirs.iter().any(|d| d == "/run");
        // Mount points below a fresh /run do not exist yet: each is created first.
        let mkdirs = |mounts: &mut Vec<sys::BootMount>, target: &Path| -> Result<(), LabError> {
            if run_private && target.starts_with("/run") && target != Path::new("/run") {
                let mut path = PathBuf::from("/");
                for part in target.iter().skip(1) {
                    path.push(part);
                    mounts.push(sys::BootMount::fresh_dir(&path.to_string_lossy())?);
                }
            }
            Ok(())
        };
        if run_private {
            fs::create_dir_all(&held).map_err(io_err(format!("create {}", held.display())))?;
            mounts.push(sys::BootMount::bind(&lab_run, &held.to_string_lossy())?);
        }
        for d in &spec.private_dirs {
            // The mount point must exist in the machine's tree (the host's mount
            // namespace starts as a copy of it); an empty directory is all we add.
            fs::create_dir_all(d).map_err(io_err(format!("create mount point {d}")))?;
            if d.starts_with("/run/")
                || d == "/run"
                || d.starts_with("/tmp")
                || d.starts_with("/dev/")
            {
                mkdirs(&mut mounts, Path::new(d))?;
                mounts.push(sys::BootMount::fresh("tmpfs", d, Some("mode=0755"))?);
                if d == "/run" {
                    mkdirs(&mut mounts, &lab_run)?;
                    mounts.push(sys::BootMount::bind(&held, &lab_run.to_string_lossy())?);
                }
            } else {
                let src = root.join(d.trim_start_matches('/'));
                fs::create_dir_all(&src).map_err(io_err(format!("create {}", src.display())))?;
                mounts.push(sys::BootMount::bind(&src, d)?);
            }
        }
        let netns_file = netns_path(&host_netns(&self.name, host));
        let plan = sys::InitPlan {
            cgroup_procs: OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .map_err(io_err(format!("open {}/cgroup.procs", cg.display())))?,
            netns: File::open(&netns_file)
                .map_err(io_err(format!("open {}", netns_file.display())))?,
            mounts,
            hostname: host.as_bytes().to_vec(),
        };
        let started = sys::start_init(&plan)?;
        crate::reaper::register_keeper(started.keeper_pid);
        let hs = self.state.hosts.entry(host.to_string()).or_default();
        hs.init_pid = Some(started.init_pid);
        hs.init_start = started.init_start;
        hs.keeper_pid = Some(started.keeper_pid);
        Ok(())
    }

    fn refresh(&mut self) -> Result<LockGuard, LabError> {
        let g = lock(&self.name)?;
        self.state = load_state(&self.name)?;
        Ok(g)
    }

    fn host_state(&self, host: &str) -> Result<HostState, LabError> {
        self.check_host(host)?;
        // From the state file, not this handle's copy: another handle or process (the
        // power switch, `tandem lab power`) may have power-cycled the host since.
        let state = load_state(&self.name)?;
        Ok(state.hosts.get(host).cloned().unwrap_or_default())
    }

    fn entry(&self, host: &str) -> Result<sys::Entry, LabError> {
        let hs = self.host_state(host)?;
        if !hs.powered {
            return Err(LabError::PoweredOff(host.to_string()));
        }
        let init = hs
            .init_pid
            .ok_or_else(|| LabError::PoweredOff(host.to_string()))?;
        match sys::proc_stat(init) {
            Some((_, start)) if start == hs.init_start => {}
            _ => {
                return Err(LabError::Boot(format!(
                    "host {host:?}: its init (pid {init}) is gone; power-cycle it"
                )));
            }
        }
        let cg = cg_path(&host_cgroup_rel(&self.name, host));
        if sys::cg_event(&cg, "frozen")? {
            return Err(LabError::Frozen(host.to_string()));
        }
        // The init may die between the look above and the open (a fence through the
        // switch powering the host off right now): the same error, not an I/O one.
        sys::Entry::open(&cg, &netns_path(&host_netns(&self.name, host)), init).map_err(|err| {
            match sys::proc_stat(init) {
                Some((_, start)) if start == hs.init_start => err,
                _ => LabError::Boot(format!(
                    "host {host:?}: its init (pid {init}) went away; power-cycle it"
                )),
            }
        })
    }

    // ---------------------------------------------------------------- processes

    /// Runs `cmd` inside `host` (its network, mount and PID namespaces and its cgroup) and
    /// returns a handle. The working directory is kept by path (set `cmd.current_dir` to
    /// choose another). Power-off kills and reaps it; the handle then reports the status.
    pub fn spawn(&self, host: &str, mut cmd: Command) -> Result<HostProcess, LabError> {
        let entry = self.entry(host)?;
        sys::prepare_command(&mut cmd, &entry, None)?;
        let shown = format!("{:?}", cmd.get_program());
        // A fork into a PID namespace whose init has exited fails with ENOMEM: the host
        // lost power (a fence, a power-off) between the look at it and the spawn.
        let mut child = sys::with_pid_ns(&entry.pidns, || cmd.spawn())?.map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOMEM) {
                LabError::PoweredOff(host.to_string())
            } else {
                io_err(format!("spawn {shown} in host {host}"))(e)
            }
        })?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let child = Arc::new(Mutex::new(child));
        crate::reaper::register_child(Arc::clone(&child));
        Ok(HostProcess {
            host: host.to_string(),
            pid,
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Runs `cmd` in `host` to completion and captures its output (stdin is /dev/null).
    pub fn output(&self, host: &str, mut cmd: Command) -> Result<Output, LabError> {
        let entry = self.entry(host)?;
        sys::prepare_command(&mut cmd, &entry, None)?;
        cmd.stdin(std::process::Stdio::null());
        let shown = format!("{:?}", cmd.get_program());
        sys::with_pid_ns(&entry.pidns, || cmd.output())?
            .map_err(io_err(format!("run {shown} in host {host}")))
    }

    /// Runs `argv` in `host`; returns stdout, or an error with the exit status and stderr.
    pub fn run(&self, host: &str, argv: &[&str]) -> Result<String, LabError> {
        let (prog, args) = argv.split_first().ok_or_else(|| LabError::Command {
            cmd: String::new(),
            detail: "empty command".into(),
        })?;
        let mut cmd = Command::new(prog);
        cmd.args(args);
        let out = self.output(host, cmd)?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("[{host}] {}", argv.join(" ")),
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The machine-side path of `path` as the host sees it: through its init's root
    /// (`/proc/INIT/root/…`), so the host's own mounts and private directories apply.
    /// Works for files and for Unix sockets (e.g. an NBD socket under the host's
    /// private `/run/tandem`), while the host is powered on.
    pub fn host_path(&self, host: &str, path: &str) -> Result<PathBuf, LabError> {
        let hs = load_state(&self.name)?
            .hosts
            .get(host)
            .cloned()
            .ok_or_else(|| LabError::UnknownHost {
                lab: self.name.clone(),
                host: host.to_string(),
            })?;
        let init = match (hs.powered, hs.init_pid) {
            (true, Some(p)) => p,
            _ => return Err(LabError::PoweredOff(host.to_string())),
        };
        Ok(PathBuf::from(format!(
            "/proc/{init}/root/{}",
            path.trim_start_matches('/')
        )))
    }

    /// Reads a file as the host sees it (see [`Lab::host_path`]).
    pub fn read_file(&self, host: &str, path: &str) -> Result<Vec<u8>, LabError> {
        let p = self.host_path(host, path)?;
        fs::read(&p).map_err(io_err(format!("read {path} in host {host}")))
    }

    /// Writes `/run/tandem-lab/NAME/fence_lab`, a fence-agents program for this lab's
    /// power switch (`exec TANDEM lab fence-agent --lab NAME "$@"`), and returns its
    /// path: fencing configuration can name it like any `fence_*` agent, from inside
    /// any lab host. `tandem` is the tandem binary to run.
    pub fn write_fence_agent(&self, tandem: &Path) -> Result<PathBuf, LabError> {
        use std::os::unix::fs::PermissionsExt;
        let path = state_dir(&self.name).join("fence_lab");
        let quoted = tandem.display().to_string().replace('\'', "'\\''");
        let text = format!(
            "#!/bin/sh\n# The power switch of lab {name} (fence-agents protocol).\n\
             exec '{quoted}' lab fence-agent --lab {name} \"$@\"\n",
            name = self.name
        );
        fs::write(&path, text).map_err(io_err(format!("write {}", path.display())))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", path.display())))?;
        Ok(path)
    }

    /// The host's neighbour (ARP) table, from `ip -j neigh` run in its network namespace
    /// (this works while the host is powered off or frozen).
    pub fn neighbors(&self, host: &str) -> Result<Vec<Neighbor>, LabError> {
        let ns = self.netns(host)?;
        let text = sys::run("ip", &["-n", &ns, "-j", "neigh", "show"])?;
        let v: serde_json::Value =
            serde_json::from_str(text.trim()).map_err(|e| LabError::Command {
                cmd: format!("ip -n {ns} -j neigh show"),
                detail: format!("unexpected output: {e}"),
            })?;
        let mut out = Vec::new();
        for e in v.as_array().into_iter().flatten() {
            let s = |k: &str| e.get(k).and_then(|x| x.as_str()).map(str::to_string);
            out.push(Neighbor {
                address: s("dst").unwrap_or_default(),
                dev: s("dev").unwrap_or_default(),
                mac: s("lladdr"),
                state: e
                    .get("state")
                    .and_then(|x| x.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// The host's IPv4 addresses per interface (`("eth0", "192.168.1.160/24")`), read
    /// from its network namespace without entering the host: cheap enough to sample
    /// every few milliseconds (e.g. "never both nodes hold the VIP"), and it works
    /// while the host is frozen or off.
    pub fn addresses(&self, host: &str) -> Result<Vec<(String, String)>, LabError> {
        let ns = self.netns(host)?;
        let text = sys::run("ip", &["-n", &ns, "-j", "-4", "addr", "show"])?;
        let v: serde_json::Value =
            serde_json::from_str(text.trim()).map_err(|e| LabError::Command {
                cmd: format!("ip -n {ns} -j -4 addr show"),
                detail: format!("unexpected output: {e}"),
            })?;
        let mut out = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            let ifname = link.get("ifname").and_then(|x| x.as_str()).unwrap_or("");
            for a in link
                .get("addr_info")
                .and_then(|x| x.as_array())
                .into_iter()
                .flatten()
            {
                if let (Some(local), Some(len)) = (
                    a.get("local").and_then(|x| x.as_str()),
                    a.get("prefixlen").and_then(|x| x.as_u64()),
                ) {
                    out.push((ifname.to_string(), format!("{local}/{len}")));
                }
            }
        }
        Ok(out)
    }

    /// Live processes of a host (PIDs in the machine's namespace).
    pub fn processes(&self, host: &str) -> Result<Vec<u32>, LabError> {
        self.check_host(host)?;
        Ok(sys::cg_procs(&cg_path(&host_cgroup_rel(&self.name, host))))
    }

    // ---------------------------------------------------------------- status

    /// Everything about the lab, for `tandem lab status`.
    pub fn status(&self) -> Result<LabStatus, LabError> {
        let st = load_state(&self.name)?;
        let sw = switch_netns(&self.name);
        let links = sys::run("ip", &["-n", &sw, "-j", "link", "show"]).unwrap_or_default();
        let links: serde_json::Value = serde_json::from_str(links.trim()).unwrap_or_default();
        let port_up = |port: &str| {
            links.as_array().into_iter().flatten().any(|l| {
                l.get("ifname").and_then(|x| x.as_str()) == Some(port)
                    && l.get("flags")
                        .and_then(|f| f.as_array())
                        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP")))
            })
        };
        // One question to the disk server for every host (none if no host has a disk).
        let disks = if st.topology.hosts.iter().any(|h| h.lossy_disk) {
            crate::disk::request(&self.name, &crate::disk::DiskRequest::Status)
                .ok()
                .map(|r| crate::disk::parse_status(&r))
        } else {
            None
        };
        let mut hosts = Vec::new();
        for h in &st.topology.hosts {
            let hs = st.hosts.get(&h.name).cloned().unwrap_or_default();
            let disk = h.lossy_disk.then(|| {
                let counts = disks.as_ref().and_then(|m| m.get(&h.name)).copied();
                let [cached_bytes, dirty_files, bound_bytes, refused_writes] =
                    counts.unwrap_or([0, 0, h.disk_cache_mib << 20, 0]);
                crate::DiskStatus {
                    dir: crate::disk::mount_dir(&data_dir(&self.name), &h.name)
                        .display()
                        .to_string(),
                    served: counts.is_some(),
                    cached_bytes,
                    dirty_files,
                    bound_bytes,
                    refused_writes,
                }
            });
            let cg = cg_path(&host_cgroup_rel(&self.name, &h.name));
            let interfaces = st
                .topology
                .attachments(&h.name)
                .into_iter()
                .map(|a| {
                    let port = port_name(&h.name, &a.net);
                    InterfaceStatus {
                        link_up: port_up(&port),
                        mac: self.mac_unchecked(&h.name, &a.net),
                        address: format!("{}/{}", a.address, a.prefix_len),
                        net: a.net,
                        ifname: a.ifname,
                        port,
                    }
                })
                .collect();
            hosts.push(HostStatus {
                name: h.name.clone(),
                netns: host_netns(&self.name, &h.name),
                powered: hs.powered,
                frozen: sys::cg_event(&cg, "frozen").unwrap_or(false),
                init_pid: hs.init_pid.filter(|_| hs.powered),
                processes: sys::cg_procs(&cg).len(),
                interfaces,
                disk,
            });
        }
        let nets = st
            .topology
            .nets
            .iter()
            .map(|n| NetStatus {
                name: n.name.clone(),
                subnet: n.subnet.clone(),
                bridge: bridge_name(&n.name),
                partitioned: st
                    .partitions
                    .iter()
                    .filter(|p| p.net == n.name)
                    .map(|p| {
                        if p.hosts.is_empty() {
                            "all".to_string()
                        } else {
                            p.hosts.join("+")
                        }
                    })
                    .collect(),
            })
            .collect();
        let sock = crate::switch::switch_socket(&self.name);
        let serving = std::os::unix::net::UnixStream::connect(&sock).is_ok();
        Ok(LabStatus {
            name: self.name.clone(),
            switch_netns: sw,
            hosts,
            nets,
            owner_pid: lab_owner(&self.name),
            power_switch: serving.then(|| sock.display().to_string()),
        })
    }

    // ---------------------------------------------------------------- teardown

    /// Tears the lab down now (what dropping an owning handle does), reporting what it
    /// removed. Processes this handle spawned are reaped first.
    pub fn down(mut self) -> Result<TeardownReport, LabError> {
        self.owned = false;
        self.teardown()
    }

    fn teardown(&mut self) -> Result<TeardownReport, LabError> {
        let keepers: Vec<u32> = self
            .state
            .hosts
            .values()
            .filter_map(|h| h.keeper_pid)
            .collect();
        let reap = move || {
            crate::reaper::sweep();
            for k in &keepers {
                sys::try_reap(*k);
            }
        };
        teardown_lab(&self.name, &reap)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            self.owned = false;
            match self.teardown() {
                Ok(r) if r.problems.is_empty() => {}
                Ok(r) => eprintln!("tandem-lab: teardown of {}: {:?}", self.name, r.problems),
                Err(e) => eprintln!("tandem-lab: teardown of {}: {e}", self.name),
            }
        }
    }
}
