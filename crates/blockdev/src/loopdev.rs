//! Loop devices through their ioctls: attach a file with `LOOP_CONFIGURE` (direct I/O),
//! detach with `LOOP_CLR_FD`, list bound devices from sysfs.
//!
//! Written over `libc` by hand rather than with a crate: the maintained `loopdev` crates
//! generate their bindings with bindgen at build time (libclang on every build machine)
//! for what is four ioctl numbers and two `repr(C)` structs from `<linux/loop.h>`, which
//! have been stable since Linux 5.8.
//!
//! Listing never calls into the backing file's file system: a loop device's backing
//! file may sit on a FUSE mount whose daemon is dead or frozen, and `LOOP_GET_STATUS64`
//! stats the file (a FUSE request). sysfs' `backing_file` is a `d_path` of the open
//! file, computed by the kernel without asking the file system.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;

const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// Use direct I/O on the backing file (no page cache of the backing file).
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;
/// Major number of loop devices.
pub const LOOP_MAJOR: u32 = 7;
/// How often attach retries when another process takes the free device first.
const ATTACH_TRIES: usize = 16;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>` (Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// A bound loop device: `/dev/loopN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// N of `/dev/loopN`.
    pub number: u32,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/loop{}", self.number))
    }
    /// `loopN`, its name in `/sys/block`.
    pub fn sysname(&self) -> String {
        format!("loop{}", self.number)
    }
    /// (major, minor) — loop minors are the device number (no partitions: part_shift 0).
    pub fn dev(&self) -> (u32, u32) {
        read_dev(&self.sysname()).unwrap_or((LOOP_MAJOR, self.number))
    }
    /// The backing file as sysfs shows it, or None once detached.
    pub fn backing_file(&self) -> Option<PathBuf> {
        backing_file(&self.sysname())
    }
    /// Whether the kernel does direct I/O on the backing file (`loop/dio`): it falls back
    /// to buffered I/O silently when the file cannot take it.
    pub fn direct_io(&self) -> bool {
        std::fs::read_to_string(format!("/sys/block/{}/loop/dio", self.sysname()))
            .is_ok_and(|s| s.trim() == "1")
    }
}

fn read_dev(sysname: &str) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(format!("/sys/block/{sysname}/dev")).ok()?;
    let (major, minor) = s.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn backing_file(sysname: &str) -> Option<PathBuf> {
    let s = std::fs::read_to_string(format!("/sys/block/{sysname}/loop/backing_file")).ok()?;
    let s = s.trim_end_matches('\n');
    Some(PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(s)))
}

/// Every bound loop device with its backing file (from sysfs).
pub fn list() -> Vec<(LoopDevice, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(number) = name.strip_prefix("loop").and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(file) = backing_file(&name) {
            out.push((LoopDevice { number }, file));
        }
    }
    out.sort_by_key(|(d, _)| d.number);
    out
}

fn ioctl_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let what = format!("{what} {}", path.display());
    move |source| Error::Io { what, source }
}

/// Binds a free loop device to `file` with direct I/O, 512-byte sectors, and `name` in
/// `lo_file_name` (what `losetup` shows when sysfs cannot). The loop device takes its own
/// reference to the file; `file` may be closed afterwards. No `LO_FLAGS_AUTOCLEAR`: the
/// caller keeps no descriptor of the loop device open (a process that dies holding the
/// last descriptor of a loop device with dirty cached pages would write them back, to a
/// FUSE file it can no longer serve, from inside its own exit).
pub fn attach(file: &File, name: &str) -> Result<LoopDevice, Error> {
    let control_path = Path::new("/dev/loop-control");
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(control_path)
        .map_err(ioctl_err("open", control_path))?;
    let mut last = None;
    for _ in 0..ATTACH_TRIES {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(ioctl_err("LOOP_CTL_GET_FREE on", control_path)(
                std::io::Error::last_os_error(),
            ));
        }
        let dev = LoopDevice { number: n as u32 };
        let path = dev.path();
        let loop_file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            // The node may appear a moment after LOOP_CTL_GET_FREE created the device.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last = Some(ioctl_err("open", &path)(e));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(ioctl_err("open", &path)(e)),
        };
        // SAFETY: an all-zero loop_config is valid (zeroed plain integers and arrays).
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = file.as_raw_fd() as u32;
        config.block_size = 512;
        config.info.lo_flags = LO_FLAGS_DIRECT_IO;
        let bytes = name.as_bytes();
        let n = bytes.len().min(LO_NAME_SIZE - 1);
        config.info.lo_file_name[..n].copy_from_slice(&bytes[..n]);
        // SAFETY: LOOP_CONFIGURE reads a struct loop_config that lives across the call.
        let rc = unsafe { libc::ioctl(loop_file.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if rc == 0 {
            return Ok(dev);
        }
        let e = std::io::Error::last_os_error();
        // EBUSY: another process bound this device between GET_FREE and CONFIGURE.
        if e.raw_os_error() == Some(libc::EBUSY) {
            last = Some(ioctl_err("LOOP_CONFIGURE", &path)(e));
            continue;
        }
        return Err(ioctl_err("LOOP_CONFIGURE", &path)(e));
    }
    Err(last.unwrap_or(Error::Io {
        what: "find a free loop device".into(),
        source: std::io::Error::from_raw_os_error(libc::EBUSY),
    }))
}

/// `LOOP_CLR_FD` through `fd` (any open descriptor of the device). If other openers
/// remain, the kernel only marks the device to detach at its last close.
pub fn clear(fd: &File, dev: &LoopDevice) -> Result<(), Error> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), LOOP_CLR_FD, 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // ENXIO: not bound any more (someone else detached it).
        if e.raw_os_error() != Some(libc::ENXIO) {
            return Err(ioctl_err("LOOP_CLR_FD", &dev.path())(e));
        }
    }
    Ok(())
}

/// Opens `dev` (not exclusively) and detaches it; see [`clear`].
pub fn detach(dev: &LoopDevice) -> Result<(), Error> {
    let path = dev.path();
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(ioctl_err("open", &path))?;
    clear(&f, dev)
}

/// Waits until sysfs no longer shows `dev` bound (detaching finishes at the last close,
/// and its sysfs files go a moment later); false after about `timeout`.
pub fn wait_detached(dev: &LoopDevice, timeout: Duration) -> bool {
    crate::poll_until(timeout, || dev.backing_file().is_none())
}
