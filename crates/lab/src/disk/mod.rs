//! Lossy disks: per-host storage that forgets unflushed writes when the host loses power.
//!
//! ```text
//!  host ox1 (and every other process)            process serving the lab's disks
//!  write(/var/lib/tandem-lab/L/disks/ox1/f) ──FUSE──▶ LossyFs ─▶ FileCache per file
//!  fsync ──────────────────────────────────────FUSE──▶ flush  ─▶ lower dir hosts/ox1/disk
//!  Lab::power_off(ox1) ── disk.sock "drop ox1" ──────▶ every cache dropped, unwritten
//! ```
//!
//! Each lossy host has one FUSE mount, made in the machine's mount namespace before the
//! host boots (so the host's mount namespace, a copy, has it too), served by threads of
//! the process that built the lab — or of `tandem lab diskd`, for labs built by the
//! CLI — outside every host's cgroup, so a power-off does not kill the server. A control
//! socket (`/run/tandem-lab/NAME/disk.sock`) carries power cuts, syncs and status from
//! any process: one request line, one reply.

pub(crate) mod cache;
pub(crate) mod fs;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::LabError;
use crate::sys::{self, io_err};
use crate::topology::Topology;
use fs::{LossyFs, Outcome, Usage, Volume};

/// FUSE worker threads per disk: several requests at once (a read while a write
/// waits for its file's lock; two files), without an idle crowd per lab.
const WORKER_THREADS: usize = 3;
/// Longest control request line.
const REQUEST_LEN_MAX: u64 = 256;
/// How long a client waits for a reply (a sync may write a GiB).
const REPLY_TIMEOUT_MS: u64 = 120_000;
/// How often the control thread looks at its stop flag and the lab's state dir.
const POLL_MS: i32 = 200;
/// Bound on waiting for a disk's FUSE threads to end after its unmount or abort.
const STOP_TIMEOUT_MS: u64 = 3_000;

/// The directory a lab host's lossy disk is mounted on (the same path inside every
/// host and outside).
pub(crate) fn mount_dir(data_dir: &Path, host: &str) -> PathBuf {
    data_dir.join("disks").join(host)
}

/// Where a host's lossy disk keeps its durable copy (its "platter").
pub(crate) fn lower_dir(data_dir: &Path, host: &str) -> PathBuf {
    data_dir.join("hosts").join(host).join("disk")
}

/// The control socket of a lab's lossy disks.
pub(crate) fn control_socket(lab: &str) -> PathBuf {
    crate::lab::state_dir(lab).join("disk.sock")
}

/// A request to the process serving a lab's lossy disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DiskRequest {
    /// A power cut: drop every unflushed write of the host's disk.
    Drop(String),
    /// Write every unflushed write of the host's disk down.
    Sync(String),
    /// Every disk's counters.
    Status,
}

impl DiskRequest {
    fn line(&self) -> String {
        match self {
            DiskRequest::Drop(h) => format!("drop {h}"),
            DiskRequest::Sync(h) => format!("sync {h}"),
            DiskRequest::Status => "status".into(),
        }
    }

    fn parse(line: &str) -> Result<DiskRequest, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["drop", h] => Ok(DiskRequest::Drop(h.to_string())),
            ["sync", h] => Ok(DiskRequest::Sync(h.to_string())),
            ["status"] => Ok(DiskRequest::Status),
            _ => Err("expected `drop HOST`, `sync HOST` or `status`".into()),
        }
    }
}

/// A lossy disk's state as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiskStatus {
    /// Where it is mounted (the same path inside the host and outside).
    pub dir: String,
    /// Whether its server answers (no: the process serving it has exited).
    pub served: bool,
    /// Memory held by unflushed pages (a data page counts 4 KiB, a punched page 64
    /// bytes): what a power cut would drop now, as the bound counts it.
    pub cached_bytes: u64,
    /// Files with unflushed data or size.
    pub dirty_files: u64,
    /// Bound on `cached_bytes`; a write past it fails with ENOSPC.
    pub bound_bytes: u64,
    /// Writes refused at the bound since the disk was mounted.
    pub refused_writes: u64,
}

/// What a power cut or a sync did to a lossy disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskFlush {
    /// Bytes of pages dropped or written.
    pub bytes: u64,
    /// Files concerned.
    pub files: u64,
}

/// One mounted lossy disk.
struct Disk {
    host: String,
    mount: PathBuf,
    volume: Arc<Volume>,
    session: Option<fuser::BackgroundSession>,
}

/// Everything this process serves for one lab.
struct Served {
    disks: Vec<Disk>,
    stop: Arc<AtomicBool>,
    control: Option<JoinHandle<()>>,
}

/// The labs whose disks this process serves. Per process, like the reaper's lists:
/// a disk's FUSE threads belong to whoever mounted it, and teardown in this process
/// stops them.
static SERVED: Mutex<BTreeMap<String, Served>> = Mutex::new(BTreeMap::new());

/// Mounts and serves the lossy disk of every host of `topology` that has one, and the
/// lab's control socket, in threads of this process. On an error, what was mounted is
/// taken down again.
pub(crate) fn start(lab: &str, data_dir: &Path, topology: &Topology) -> Result<(), LabError> {
    raise_fd_limit();
    let mut served = Served {
        disks: Vec::new(),
        stop: Arc::new(AtomicBool::new(false)),
        control: None,
    };
    for h in topology.hosts.iter().filter(|h| h.lossy_disk) {
        match mount_disk(&h.name, data_dir, h.disk_cache_mib << 20) {
            Ok(d) => served.disks.push(d),
            Err(e) => {
                stop_served(served);
                return Err(e);
            }
        }
    }
    let listener = match bind(lab) {
        Ok(l) => l,
        Err(e) => {
            stop_served(served);
            return Err(e);
        }
    };
    let volumes: Vec<(String, PathBuf, Arc<Volume>)> = served
        .disks
        .iter()
        .map(|d| (d.host.clone(), d.mount.clone(), Arc::clone(&d.volume)))
        .collect();
    let stop = Arc::clone(&served.stop);
    let lab_name = lab.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("lab-disks-{lab}"))
        .spawn(move || control_loop(&lab_name, &listener, &volumes, &stop));
    match spawned {
        Ok(t) => served.control = Some(t),
        Err(e) => {
            stop_served(served);
            return Err(io_err("spawn the lossy disks' control thread")(e));
        }
    }
    SERVED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(lab.to_string(), served);
    Ok(())
}

/// Stops what this process serves for `lab` (if anything): unmounts each disk (lazily),
/// aborts its FUSE connection if its threads do not end, joins them. Returns problems.
pub(crate) fn stop(lab: &str) -> Vec<String> {
    let served = SERVED.lock().unwrap_or_else(|p| p.into_inner()).remove(lab);
    match served {
        Some(s) => stop_served(s),
        None => Vec::new(),
    }
}

fn stop_served(mut s: Served) -> Vec<String> {
    let mut problems = Vec::new();
    s.stop.store(true, Ordering::SeqCst);
    if let Some(t) = s.control.take() {
        let _ = t.join();
    }
    // Unmount, then abort the connections: a lazy unmount alone leaves each connection
    // up as long as some mount namespace holds a copy of the mount — and every lab
    // host booted on this machine since the disk was mounted (other labs' too) holds
    // one. Aborting ends the FUSE threads at once; those copies then fail, not hang.
    let mounts: Vec<PathBuf> = s.disks.iter().map(|d| d.mount.clone()).collect();
    let conns: Vec<u32> = sys::fuse_mounts_under(&mounts)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    for d in &s.disks {
        if let Err(e) = sys::umount_lazy(&d.mount) {
            // Already gone (a `down` from another process got there first) is fine.
            if sys::machine_mounts().iter().any(|(_, t)| *t == d.mount) {
                problems.push(e.to_string());
            }
        }
    }
    if let Err(e) = sys::fuse_abort(&conns) {
        problems.push(e.to_string());
    }
    for mut d in s.disks.drain(..) {
        let Some(session) = d.session.take() else {
            continue;
        };
        let ended = sys::wait_until("", STOP_TIMEOUT_MS, || Ok(session.guard.is_finished()));
        if ended.is_err() {
            problems.push(format!(
                "lossy disk of {}: its FUSE threads did not end (left running)",
                d.host
            ));
            continue;
        }
        let _ = session.join();
    }
    problems
}

/// Raises this process's soft limit on descriptors to the hard one: a lossy disk holds
/// one per file the kernel remembers.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Mounts one host's lossy disk: FUSE over `hosts/HOST/disk`, on `disks/HOST`.
fn mount_disk(host: &str, data_dir: &Path, bound_bytes: u64) -> Result<Disk, LabError> {
    let lower = lower_dir(data_dir, host);
    let mount = mount_dir(data_dir, host);
    for d in [&lower, &mount] {
        std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
    }
    let volume = Arc::new(
        Volume::open(&lower, bound_bytes).map_err(io_err(format!("open {}", lower.display())))?,
    );
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(io_err("open /dev/fuse"))?
        .into();
    // Mounted by hand (as root no fusermount is needed) so that unmounting stays ours:
    // lazily, at teardown. allow_other + default_permissions: every user of every host
    // may use it, with the kernel checking modes as on a local file system.
    let options = format!(
        "fd={},rootmode=40755,user_id=0,group_id=0,allow_other,default_permissions,max_read={}",
        dev.as_raw_fd(),
        fs::MAX_WRITE_BYTES
    );
    sys::mount_fuse(&mount, "tandem-lab-disk", &options)?;
    let mut config = fuser::Config::default();
    config.n_threads = Some(WORKER_THREADS);
    config.clone_fd = true;
    let session = fuser::Session::from_fd(
        LossyFs(Arc::clone(&volume)),
        dev,
        fuser::SessionACL::All,
        config,
    )
    .and_then(|s| {
        volume.set_notifier(s.notifier());
        s.spawn()
    });
    match session {
        Ok(s) => Ok(Disk {
            host: host.to_string(),
            mount,
            volume,
            session: Some(s),
        }),
        Err(e) => {
            let _ = sys::umount_lazy(&mount);
            Err(io_err(format!(
                "serve the lossy disk on {}",
                mount.display()
            ))(e))
        }
    }
}

fn bind(lab: &str) -> Result<UnixListener, LabError> {
    let path = control_socket(lab);
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(LabError::Command {
                cmd: format!("bind {}", path.display()),
                detail: "another process already serves this lab's lossy disks".into(),
            });
        }
        let _ = std::fs::remove_file(&path);
    }
    UnixListener::bind(&path).map_err(io_err(format!("bind {}", path.display())))
}

fn control_loop(
    lab: &str,
    listener: &UnixListener,
    volumes: &[(String, PathBuf, Arc<Volume>)],
    stop: &AtomicBool,
) {
    loop {
        if stop.load(Ordering::SeqCst) || !crate::lab::state_dir(lab).exists() {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one descriptor we hold, with a timeout, so that the stop flag
        // is seen without a wake-up connection.
        if unsafe { libc::poll(&mut pfd, 1, POLL_MS) } <= 0 {
            continue;
        }
        if let Ok((stream, _)) = listener.accept() {
            let _ = answer(stream, volumes);
        }
    }
}

fn answer(stream: UnixStream, volumes: &[(String, PathBuf, Arc<Volume>)]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(REQUEST_LEN_MAX)).read_line(&mut line)?;
    let find = |h: &str| volumes.iter().find(|(n, _, _)| n == h).map(|(_, _, v)| v);
    let reply = match DiskRequest::parse(&line) {
        Err(e) => format!("error: {e}"),
        Ok(DiskRequest::Drop(h)) => match find(&h) {
            None => format!("error: no lossy disk for host {h:?}"),
            Some(v) => outcome_line(v.drop_unflushed()),
        },
        Ok(DiskRequest::Sync(h)) => match find(&h) {
            None => format!("error: no lossy disk for host {h:?}"),
            Some(v) => match v.sync_all() {
                Ok(o) => outcome_line(o),
                Err(e) => format!(
                    "error: writing the cache down: {}",
                    std::io::Error::from_raw_os_error(i32::from(e))
                ),
            },
        },
        Ok(DiskRequest::Status) => {
            let mut out = String::new();
            for (h, _, v) in volumes {
                let Usage {
                    cached_bytes,
                    dirty_files,
                    bound_bytes,
                    refused_writes,
                } = v.usage();
                out.push_str(&format!(
                    "{h} {cached_bytes} {dirty_files} {bound_bytes} {refused_writes}\n"
                ));
            }
            out.push_str("end");
            out
        }
    };
    let mut w = &stream;
    w.write_all(reply.as_bytes())?;
    w.write_all(b"\n")
}

fn outcome_line(o: Outcome) -> String {
    format!("ok {} {}", o.bytes, o.files)
}

/// Sends one request to the process serving `lab`'s disks; `error: …` becomes an error.
pub(crate) fn request(lab: &str, req: &DiskRequest) -> Result<String, LabError> {
    let path = control_socket(lab);
    let shown = format!("lossy disks {}: {}", path.display(), req.line());
    let fail = |detail: String| LabError::Disk {
        detail: format!("{shown}: {detail}"),
    };
    let mut s = UnixStream::connect(&path).map_err(|e| {
        fail(format!(
            "{e} (nothing serves them: did the process that built the lab exit?)"
        ))
    })?;
    s.set_read_timeout(Some(Duration::from_millis(REPLY_TIMEOUT_MS)))
        .map_err(|e| fail(e.to_string()))?;
    s.write_all(format!("{}\n", req.line()).as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let mut reply = String::new();
    s.take(64 * 1024)
        .read_to_string(&mut reply)
        .map_err(|e| fail(e.to_string()))?;
    let reply = reply.trim_end().to_string();
    if let Some(e) = reply.strip_prefix("error: ") {
        return Err(fail(e.to_string()));
    }
    if reply.is_empty() {
        return Err(fail("closed without a reply".into()));
    }
    Ok(reply)
}

/// Parses `ok BYTES FILES`.
pub(crate) fn parse_outcome(reply: &str) -> Result<DiskFlush, LabError> {
    let bad = || LabError::Disk {
        detail: format!("unexpected reply {reply:?}"),
    };
    let words: Vec<&str> = reply.split_whitespace().collect();
    match words.as_slice() {
        ["ok", b, f] => Ok(DiskFlush {
            bytes: b.parse().map_err(|_| bad())?,
            files: f.parse().map_err(|_| bad())?,
        }),
        _ => Err(bad()),
    }
}

/// Parses the `status` reply: host → (cached, dirty files, bound, refused).
pub(crate) fn parse_status(reply: &str) -> BTreeMap<String, [u64; 4]> {
    let mut out = BTreeMap::new();
    for l in reply.lines().filter(|l| *l != "end") {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let [h, rest @ ..] = w.as_slice() {
            let nums: Vec<u64> = rest.iter().filter_map(|x| x.parse().ok()).collect();
            if let [a, b, c, d] = nums.as_slice() {
                out.insert(h.to_string(), [*a, *b, *c, *d]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_parse() {
        assert_eq!(
            DiskRequest::parse("drop ox1\n"),
            Ok(DiskRequest::Drop("ox1".into()))
        );
        assert_eq!(DiskRequest::parse("status"), Ok(DiskRequest::Status));
        for bad in ["", "drop", "sync a b", "status x", "explode ox1"] {
            assert!(DiskRequest::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_outcome("ok 8192 2").unwrap(),
            DiskFlush {
                bytes: 8192,
                files: 2
            }
        );
        assert!(parse_outcome("ok x 2").is_err());
        let st = parse_status("ox1 4096 1 1048576 0\nox2 0 0 1048576 3\nend");
        assert_eq!(st["ox2"], [0, 0, 1_048_576, 3]);
        assert!(parse_status("garbage\n\u{0}\nend").is_empty());
    }
}
