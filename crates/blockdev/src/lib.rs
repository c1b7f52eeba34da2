//! A block device of the local kernel for any [`BlockDevice`]: the device as one regular
//! file on a FUSE mount, that file attached to a loop device with direct I/O, the loop
//! device published under a stable path (a symbolic link, e.g. `/dev/tandem/r0` →
//! `/dev/loop3`). File systems then live on a replicated disk like on any disk. It works
//! where the kernel has neither `nbd` nor `ublk`.
//!
//! ```text
//!  mount /dev/tandem/r0 ─► /dev/loop3 (direct I/O, 512-byte sectors)
//!     ─► /run/tandem/disk/r0.fuse/r0@!srv!r0.img   (FUSE, FOPEN_DIRECT_IO, async DIO)
//!     ─► fuser threads ─► tokio tasks ─► BlockDevice (read / write / flush / write_zeroes)
//! ```
//!
//! What it is given: an `Arc<dyn BlockDevice>`, a tokio runtime handle to run requests
//! on, and three names ([`Paths`]). What it hands back: a [`LocalDevice`] (the loop
//! device, request counters, its holders) and, on the way out, either a clean teardown
//! or [`Error::Busy`] naming who holds the device ("mounted at /var/lib/pgsql").
//!
//! Flushes: a file system's flush (fsync, a journal commit's `REQ_PREFLUSH`, FUA — which
//! the loop device emulates with a flush) reaches the loop device as a flush, which a
//! direct-I/O loop device turns into `vfs_fsync` of its backing file, which FUSE sends as
//! `FSYNC`, which [`BlockDevice::flush`] answers.
//!
//! Crash safety: the FUSE file's name carries the identity of what it serves
//! ([`file_name`]: the disk's name and its backing path with `/` written `!`, as the
//! kernel writes `/` in sysfs names), and sysfs shows every loop device's backing file
//! by path. So after a crash [`clean_stale`] finds this disk's old loop devices by name
//! alone — wherever their FUSE mount was, even in a mount namespace that is gone —
//! without asking any file system (a dead FUSE daemon cannot answer).
#![warn(missing_docs)]

pub mod fs;
pub mod holders;
pub mod loopdev;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tandem_nbd::BlockDevice;
use thiserror::Error;

pub use fs::{Stats, StatsSnapshot, mark_io_flusher, max_write_bytes};
pub use holders::Holder;
pub use loopdev::LoopDevice;

/// FUSE subtype of the mounts (`fuse.tandem` in mountinfo).
pub const FUSE_SUBTYPE: &str = "tandem";
/// How long a teardown waits for the loop device to let go of its backing file.
const DETACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of this crate.
#[derive(Debug, Error)]
pub enum Error {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The device is in use and was left as it is.
    #[error("in use: {}", holders::describe(.0))]
    Busy(Vec<Holder>),
    /// The publication path exists and is not a symbolic link (never replaced).
    #[error("{0} exists and is not a symbolic link: refusing to replace it")]
    LinkOccupied(PathBuf),
    /// Something is mounted where the FUSE file system goes.
    #[error("{0} is already a mount point (a stale mount: run the stale cleanup first)")]
    AlreadyMounted(PathBuf),
    /// The loop device did not let go of its backing file in time (opened after the
    /// holder check); the kernel detaches it at its last close.
    #[error(
        "{0} is still bound after {1} s (opened by someone meanwhile); it detaches at its last close"
    )]
    StillBound(PathBuf, u64),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Where a device is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The stable path: a symbolic link to the loop device (`/dev/tandem/r0`).
    pub link: PathBuf,
    /// The FUSE mount point (`/run/tandem/disk/r0.fuse`), created if absent.
    pub mount_dir: PathBuf,
    /// The FUSE file's name: the device's identity ([`file_name`]).
    pub file_name: String,
}

impl Paths {
    /// The FUSE file's full path.
    pub fn file(&self) -> PathBuf {
        self.mount_dir.join(&self.file_name)
    }
}

/// The FUSE file's name for disk `name` whose backing store is `backing`:
/// `NAME@` followed by the absolute backing path with `/` written `!`
/// (`r0@!var!lib!tandem!r0.img`). Unique per machine (two disks never share a backing
/// store), readable in `losetup -a`, and what [`clean_stale`] and the lab's teardown
/// match. A name that would pass 255 bytes keeps its head and ends in a hash.
pub fn file_name(name: &str, backing: &Path) -> String {
    let path = backing.as_os_str().to_string_lossy().replace('/', "!");
    let full = format!("{name}@{path}");
    if full.len() <= 255 {
        return full;
    }
    // FNV-1a: stable, dependency-free; the name only has to stay unique per machine.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut head = 230;
    while !full.is_char_boundary(head) {
        head -= 1;
    }
    format!("{}~{hash:016x}", &full[..head])
}

/// Polls `done` every 5 ms until it holds or about `timeout` has passed (counted in
/// sleeps, not read from the clock).
pub(crate) fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let step = Duration::from_millis(5);
    let tries = (timeout.as_millis() / step.as_millis()).max(1);
    for _ in 0..tries {
        if done() {
            return true;
        }
        std::thread::sleep(step);
    }
    done()
}

/// How to publish.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where.
    pub paths: Paths,
    /// A short name for the FUSE mount's source (`tandem:NAME`) and for logs.
    pub name: String,
    /// FUSE threads reading requests (each with its own cloned `/dev/fuse` descriptor).
    pub fuse_threads: usize,
}

/// A published device: FUSE mounted, loop device bound, link in place.
#[derive(Debug)]
pub struct LocalDevice {
    paths: Paths,
    name: String,
    loop_dev: LoopDevice,
    session: Option<fuser::BackgroundSession>,
    stats: Arc<Stats>,
    direct_io: bool,
    linked: bool,
    /// The loop device let go of the file; only the FUSE mount is left to take down.
    detached: bool,
}

impl LocalDevice {
    /// Publishes `device`: mounts the FUSE file system at `paths.mount_dir`, attaches its
    /// file to a free loop device with direct I/O and points `paths.link` at it. Requests
    /// run as tasks on `runtime`. Blocking; on error nothing is left behind.
    pub fn publish(
        device: Arc<dyn BlockDevice>,
        runtime: tokio::runtime::Handle,
        options: &Options,
    ) -> Result<LocalDevice, Error> {
        let paths = &options.paths;
        if let Ok(m) = std::fs::symlink_metadata(&paths.link) {
            if !m.file_type().is_symlink() {
                return Err(Error::LinkOccupied(paths.link.clone()));
            }
        }
        create_private_dir(&paths.mount_dir)?;
        if holders::is_mount_point(&paths.mount_dir) {
            return Err(Error::AlreadyMounted(paths.mount_dir.clone()));
        }
        let stats = Arc::new(Stats::default());
        let fs = fs::DeviceFs::new(device, &paths.file_name, runtime, stats.clone());
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName(format!("tandem:{}", options.name)),
            // Passed to the kernel itself (fuser's `Subtype` only reaches fusermount),
            // so mountinfo says `fuse.tandem`.
            fuser::MountOption::CUSTOM(format!("subtype={FUSE_SUBTYPE}")),
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
            fuser::MountOption::NoExec,
            fuser::MountOption::NoAtime,
        ];
        config.n_threads = Some(options.fuse_threads.max(1));
        // One /dev/fuse descriptor per thread: each reads its own requests, no
        // thundering herd on one queue.
        config.clone_fd = true;
        let session = fuser::Session::new(fs, &paths.mount_dir, &config)
            .map_err(io_err(format!(
                "mount FUSE at {}",
                paths.mount_dir.display()
            )))?
            .spawn()
            .map_err(io_err("start the FUSE threads"))?;
        let mut dev = LocalDevice {
            paths: paths.clone(),
            name: options.name.clone(),
            loop_dev: LoopDevice { number: u32::MAX },
            session: Some(session),
            stats,
            direct_io: false,
            linked: false,
            detached: true,
        };
        match dev.attach_and_link() {
            Ok(()) => Ok(dev),
            Err(e) => {
                if let Err(undo) = dev.teardown() {
                    tracing::error!(device = %dev.name, "undoing a failed publish: {undo}");
                }
                Err(e)
            }
        }
    }

    fn attach_and_link(&mut self) -> Result<(), Error> {
        let file_path = self.paths.file();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(&file_path)
            .map_err(io_err(format!("open {}", file_path.display())))?;
        self.loop_dev = loopdev::attach(&file, &self.paths.file_name)?;
        self.detached = false;
        drop(file);
        self.direct_io = self.loop_dev.direct_io();
        if !self.direct_io {
            tracing::warn!(device = %self.name, loop_device = %self.loop_dev.path().display(),
                "the kernel refused direct I/O on the FUSE file: the loop device is buffered (slower, same durability)");
        }
        let link = &self.paths.link;
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("create {}", parent.display())))?;
        }
        // Replace atomically: a reader sees the old link or the new one, never none.
        let tmp = link.with_file_name(format!(
            ".{}.tmp",
            link.file_name()
                .map_or("link".into(), |n| n.to_string_lossy())
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(self.loop_dev.path(), &tmp)
            .map_err(io_err(format!("create {}", tmp.display())))?;
        std::fs::rename(&tmp, link).map_err(io_err(format!("create {}", link.display())))?;
        self.linked = true;
        Ok(())
    }

    /// The loop device (`/dev/loopN`).
    pub fn loop_device(&self) -> &LoopDevice {
        &self.loop_dev
    }

    /// The published path.
    pub fn link(&self) -> &Path {
        &self.paths.link
    }

    /// Where it is mounted and named.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Whether the loop device does direct I/O on the FUSE file.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    /// Request counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Who holds the device now (mounts in this thread's namespace, stacked devices,
    /// other processes); empty when free.
    pub fn holders(&self) -> Vec<Holder> {
        holders::find(self.loop_dev.dev(), &self.loop_dev.sysname())
    }

    /// Takes the device down: refused with [`Error::Busy`] (nothing changed) while a file
    /// system is mounted on it, a device is stacked on it or a process has it open; else
    /// flushes it (dirty pages of buffered writers included), removes the link, detaches
    /// the loop device and unmounts the FUSE file system. Blocking, and it drives I/O
    /// through the runtime: never call it from one of the runtime's worker threads.
    /// After an error other than `Busy`, call it again (it resumes where it stopped).
    pub fn unpublish(&mut self) -> Result<(), Error> {
        if !self.detached && !self.still_ours() {
            // Detached meanwhile (a deferred detach finished): the number may even
            // belong to someone else by now, so it is not touched again.
            self.detached = true;
        }
        if !self.detached {
            let holders = self.holders();
            if !holders.is_empty() {
                return Err(Error::Busy(holders));
            }
            let path = self.loop_dev.path();
            // An exclusive open fails while anyone holds the device exclusively (every
            // mount does, in any mount namespace), and keeps anyone from mounting it
            // while we take it down.
            let fd = match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let mut h = self.holders();
                    if h.is_empty() {
                        h.push(Holder::Exclusive);
                    }
                    return Err(Error::Busy(h));
                }
                Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
            };
            // Written back while the device can still take it: pages that buffered
            // writers left dirty in the device's page cache, then a flush.
            sync_fd(&fd).map_err(io_err(format!("flush {}", path.display())))?;
            self.remove_link();
            loopdev::clear(&fd, &self.loop_dev)?;
            drop(fd);
            if !loopdev::wait_detached(&self.loop_dev, DETACH_TIMEOUT) {
                return Err(Error::StillBound(path, DETACH_TIMEOUT.as_secs()));
            }
            self.detached = true;
        }
        self.teardown()
    }

    /// Whether the loop device is still bound to this device's FUSE file.
    fn still_ours(&self) -> bool {
        self.loop_dev.backing_file().is_some_and(|f| {
            f.file_name()
                .is_some_and(|n| n.as_bytes() == self.paths.file_name.as_bytes())
        })
    }

    fn remove_link(&mut self) {
        if !self.linked {
            return;
        }
        // Only our own link: something else put there meanwhile stays.
        if std::fs::read_link(&self.paths.link).is_ok_and(|t| t == self.loop_dev.path()) {
            if let Err(e) = std::fs::remove_file(&self.paths.link) {
                tracing::warn!(device = %self.name, "remove {}: {e}", self.paths.link.display());
            }
        }
        self.linked = false;
    }

    /// Unmounts the FUSE file system once the loop device let go of it.
    fn teardown(&mut self) -> Result<(), Error> {
        self.remove_link();
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                // Still busy (an open file on it): detach it from the tree; the kernel
                // ends the connection, and the threads, when the last user lets go.
                tracing::warn!(device = %self.name, "unmount {}: {e}; detaching it lazily", self.paths.mount_dir.display());
                umount_lazy(&self.paths.mount_dir)?;
            }
        }
        let _ = std::fs::remove_dir(&self.paths.mount_dir);
        Ok(())
    }
}

impl Drop for LocalDevice {
    fn drop(&mut self) {
        if self.session.is_some() && !self.detached {
            // Tearing down here could block on a mounted file system; the process exit
            // (or the next start's stale cleanup) takes it down instead.
            tracing::warn!(device = %self.name, loop_device = %self.loop_dev.path().display(),
                "local device dropped while published");
            if let Some(s) = self.session.take() {
                std::mem::forget(s);
            }
        }
    }
}

fn sync_fd(f: &File) -> std::io::Result<()> {
    // SAFETY: fsync on an owned descriptor.
    if unsafe { libc::fsync(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("create {}", dir.display())))
}

fn cstring(p: &Path) -> Result<std::ffi::CString, Error> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Io {
        what: format!("path {}", p.display()),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// `umount2(path, MNT_DETACH)`: gone from the tree now, released when unused.
pub fn umount_lazy(path: &Path) -> Result<(), Error> {
    let c = cstring(path)?;
    // SAFETY: umount2 with a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io_err(format!("unmount {}", path.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// What [`clean_stale`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StaleReport {
    /// FUSE connections aborted (their mount points).
    pub aborted: Vec<PathBuf>,
    /// Mount points lazily unmounted: file systems on old loop devices, old FUSE mounts.
    pub unmounted: Vec<PathBuf>,
    /// Loop devices detached.
    pub detached: Vec<PathBuf>,
    /// Loop devices that someone still holds open: they detach at their last close.
    pub deferred: Vec<PathBuf>,
    /// The stale link, removed.
    pub link_removed: Option<PathBuf>,
}

impl StaleReport {
    /// Whether anything was found.
    pub fn is_empty(&self) -> bool {
        *self == StaleReport::default()
    }
}

/// Removes what a crashed publisher of `paths` left (call before publishing again, with
/// nothing of `paths` published by this process): aborts the FUSE connections mounted at
/// `paths.mount_dir` (a daemon that died while a descendant kept `/dev/fuse` open would
/// otherwise leave every request hanging), lazily unmounts every file system of this
/// mount namespace that lives on a loop device backed by a file called
/// `paths.file_name`, detaches those loop devices (wherever their FUSE mount was),
/// lazily unmounts the old FUSE mounts, and removes a symbolic link at `paths.link`.
/// Never reads from or stats the old FUSE files.
pub fn clean_stale(paths: &Paths) -> Result<StaleReport, Error> {
    let mut report = StaleReport::default();
    let fuse: Vec<holders::MountEntry> = holders::mounts()
        .into_iter()
        .filter(|m| m.mount_point == paths.mount_dir && m.fstype.starts_with("fuse"))
        .collect();
    for m in &fuse {
        // Anonymous devices have major 0: the connection's number is the minor.
        match abort_fuse_connection(m.dev.1) {
            Ok(()) => report.aborted.push(m.mount_point.clone()),
            Err(e) => tracing::warn!(
                "abort the FUSE connection at {}: {e}",
                m.mount_point.display()
            ),
        }
    }
    let ours = |f: &PathBuf| {
        f.file_name()
            .is_some_and(|n| n.as_bytes() == paths.file_name.as_bytes())
    };
    for (dev, _) in loopdev::list().into_iter().filter(|(_, f)| ours(f)) {
        let mut on_it: Vec<PathBuf> = holders::mounts()
            .into_iter()
            .filter(|m| m.dev == dev.dev())
            .map(|m| m.mount_point)
            .collect();
        on_it.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for mp in on_it {
            umount_lazy(&mp)?;
            report.unmounted.push(mp);
        }
        loopdev::detach(&dev)?;
        // Nothing holding it, it goes within milliseconds; held (a process still has
        // files open on the lazily unmounted file system: a service the next probe
        // finds and stops), it goes by itself when let go. Waiting longer only delays
        // the restarted daemon (chaos seed 2026, round 18: 2 s of a 6 s recovery).
        if loopdev::wait_detached(&dev, Duration::from_millis(300)) {
            report.detached.push(dev.path());
        } else {
            report.deferred.push(dev.path());
        }
    }
    for m in fuse.iter().rev() {
        umount_lazy(&m.mount_point)?;
        report.unmounted.push(m.mount_point.clone());
    }
    if std::fs::symlink_metadata(&paths.link).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&paths.link)
            .map_err(io_err(format!("remove {}", paths.link.display())))?;
        report.link_removed = Some(paths.link.clone());
    }
    Ok(report)
}

/// Writes to `/sys/fs/fuse/connections/N/abort`, mounting `fusectl` there first if
/// nothing is (systemd mounts it on most machines; a fresh sysfs in a container or lab
/// host has it empty).
fn abort_fuse_connection(connection: u32) -> Result<(), Error> {
    let base = Path::new("/sys/fs/fuse/connections");
    let abort = base.join(connection.to_string()).join("abort");
    if !abort.exists() && !holders::mounts().iter().any(|m| m.fstype == "fusectl") {
        let c = cstring(base)?;
        // SAFETY: mount with valid NUL-terminated strings and no data.
        let rc = unsafe {
            libc::mount(
                c"fusectl".as_ptr(),
                c.as_ptr(),
                c"fusectl".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io_err("mount fusectl")(std::io::Error::last_os_error()));
        }
    }
    std::fs::write(&abort, "1").map_err(io_err(format!("write {}", abort.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_the_backing_path_and_stay_short() {
        assert_eq!(
            file_name("r0", Path::new("/var/lib/tandem-lab/t1x0/ox1-r0.img")),
            "r0@!var!lib!tandem-lab!t1x0!ox1-r0.img"
        );
        let long = format!("/{}", "d/".repeat(200));
        let a = file_name("r0", Path::new(&long));
        let b = file_name("r0", Path::new(&format!("{long}x")));
        assert!(a.len() <= 255 && b.len() <= 255, "{}", a.len());
        assert_ne!(a, b);
        assert!(a.starts_with("r0@!d!d!"));
    }

    #[test]
    fn polling_is_bounded() {
        let mut n = 0;
        assert!(!poll_until(Duration::from_millis(20), || {
            n += 1;
            false
        }));
        assert!((2..=6).contains(&n), "{n}");
        assert!(poll_until(Duration::from_secs(10), || true));
    }
}
