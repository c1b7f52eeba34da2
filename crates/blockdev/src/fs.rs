//! The FUSE file system: a root directory holding one regular file of the device's
//! size, whose reads, writes, flushes and fallocates go to a [`BlockDevice`].
//!
//! Every request is answered from a task on a tokio runtime: the FUSE thread that read
//! the request spawns it and goes back to reading, so as many requests are in flight as
//! the kernel sends (the loop device's queue depth, bounded by `max_background`).
//! fuser's `Reply*` objects are `Send`; a reply dropped unanswered (the runtime shut
//! down) is answered `EIO` by fuser itself.
//!
//! The file is opened with `FOPEN_DIRECT_IO`: the FUSE file keeps no page cache (the
//! loop device's users have their own), and with `FUSE_ASYNC_DIO` the loop device's
//! asynchronous direct I/O becomes asynchronous FUSE requests. `FOPEN_PARALLEL_DIRECT_WRITES`
//! lets the kernel submit direct writes without holding the inode lock exclusively.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};
use tandem_nbd::{BlockDevice, DeviceError};

const ROOT: INodeNo = INodeNo::ROOT;
const FILE: INodeNo = INodeNo(2);
/// Attributes never change while mounted: let the kernel cache them for good, so that
/// a `stat` of the file (`LOOP_GET_STATUS64` does one) never waits for this daemon.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Background FUSE requests the kernel keeps in flight before it queues the rest
/// (asynchronous direct I/O requests are background requests; fuser's default is 16).
const MAX_BACKGROUND: u16 = 256;
/// fuser reads each request into a buffer of 16 MiB: no request may be larger.
const MAX_WRITE_CEILING: u32 = 16 << 20;
/// The kernel's default `fs.fuse.max_pages_limit` (Linux 4.20+).
const DEFAULT_MAX_PAGES: u32 = 256;
/// `prctl(PR_SET_IO_FLUSHER)` (Linux 5.6+).
const PR_SET_IO_FLUSHER: libc::c_int = 57;
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// Request counters of one published device.
#[derive(Debug, Default)]
pub struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    zeroes: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    errors: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Reads served.
    pub reads: u64,
    /// Writes served.
    pub writes: u64,
    /// Flushes (FUSE `fsync` and `flush`) passed to the device.
    pub flushes: u64,
    /// Ranges zeroed (`fallocate` punch-hole or zero-range: discard and write-zeroes of
    /// the loop device).
    pub zeroes: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub written_bytes: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

impl Stats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            reads: g(&self.reads),
            writes: g(&self.writes),
            flushes: g(&self.flushes),
            zeroes: g(&self.zeroes),
            read_bytes: g(&self.read_bytes),
            written_bytes: g(&self.written_bytes),
            errors: g(&self.errors),
        }
    }
    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// The largest request the kernel lets a FUSE file system take: `fs.fuse.max_pages_limit`
/// pages (256 = 1 MiB by default), within fuser's buffer.
pub fn max_write_bytes() -> u32 {
    let pages = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(DEFAULT_MAX_PAGES);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
    pages.saturating_mul(page).clamp(4096, MAX_WRITE_CEILING)
}

/// The FUSE side of a published device.
pub(crate) struct DeviceFs {
    device: Arc<dyn BlockDevice>,
    file_name: OsString,
    size_bytes: u64,
    runtime: tokio::runtime::Handle,
    stats: Arc<Stats>,
}

impl DeviceFs {
    pub(crate) fn new(
        device: Arc<dyn BlockDevice>,
        file_name: &str,
        runtime: tokio::runtime::Handle,
        stats: Arc<Stats>,
    ) -> Self {
        DeviceFs {
            size_bytes: device.size_bytes(),
            device,
            file_name: file_name.into(),
            runtime,
            stats,
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            ROOT => (FileType::Directory, 0o700, 0, 2),
            FILE => (FileType::RegularFile, 0o600, self.size_bytes, 1),
            _ => return None,
        };
        let t: SystemTime = UNIX_EPOCH;
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The bytes of `offset..offset+len` that lie inside the file.
    fn clamp(&self, offset: u64, len: u64) -> u64 {
        self.size_bytes.saturating_sub(offset).min(len)
    }
}

/// Marks the calling thread an I/O flusher (`PF_MEMALLOC_NOIO`): this thread serves the
/// writes that memory reclaim may be waiting for (dirty pages of a file system on the
/// loop device), so its own allocations must not wait for that reclaim — as NBD and
/// loop servers in user space do. Once per thread; failure (no CAP_SYS_RESOURCE) only
/// loses the protection.
pub fn mark_io_flusher() {
    thread_local!(static DONE: Cell<bool> = const { Cell::new(false) });
    DONE.with(|done| {
        if !done.replace(true) {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) };
        }
    });
}

/// Memory alignment that lets a device write the bytes with `O_DIRECT` as they are.
const DIRECT_ALIGN_BYTES: usize = 4096;

/// The one copy on the way (fuser reuses its request buffer once `write` returns), made
/// into page-aligned memory: a device that writes with `O_DIRECT` (the replicated
/// disk's large writes) would otherwise copy the bytes once more to align them.
fn aligned_copy(data: &[u8]) -> bytes::Bytes {
    if data.len() < DIRECT_ALIGN_BYTES {
        return bytes::Bytes::copy_from_slice(data);
    }
    let mut buf: Vec<u8> = Vec::with_capacity(data.len() + DIRECT_ALIGN_BYTES - 1);
    let skip = buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
    buf.resize(skip, 0);
    buf.extend_from_slice(data);
    bytes::Bytes::from(buf).slice(skip..)
}

/// The errno a FUSE reply carries for a device error.
fn errno(e: &DeviceError) -> Errno {
    Errno::from_i32(match e {
        DeviceError::ReadOnly => libc::EROFS,
        DeviceError::OutOfRange { .. } => libc::EINVAL,
        DeviceError::Unsupported => libc::EOPNOTSUPP,
        DeviceError::Shutdown => libc::ESHUTDOWN,
        DeviceError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
    })
}

impl Filesystem for DeviceFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        mark_io_flusher();
        if config.add_capabilities(InitFlags::FUSE_ASYNC_DIO).is_err() {
            tracing::warn!(
                "the kernel's FUSE has no asynchronous direct I/O: one request at a time per loop worker"
            );
        }
        if let Err(nearest) = config.set_max_write(max_write_bytes()) {
            let _ = config.set_max_write(nearest);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(FILE) {
            Some(attr) if parent == ROOT && name == self.file_name => {
                reply.entry(&TTL, &attr, Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The file is the device: its size is fixed. Mode, owner and times are not
        // kept (nothing but the loop device opens it).
        match self.attr(ino) {
            Some(_) if size.is_some_and(|s| ino != FILE || s != self.size_bytes) => {
                reply.error(Errno::EPERM)
            }
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE {
            reply.error(Errno::EISDIR);
            return;
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        mark_io_flusher();
        if ino != FILE {
            reply.error(Errno::EISDIR);
            return;
        }
        let len = self.clamp(offset, u64::from(size));
        if len == 0 {
            reply.data(&[]);
            return;
        }
        let device = self.device.clone();
        let stats = self.stats.clone();
        self.runtime.spawn(async move {
            let (buf, r) = device.read(offset, vec![0; len as usize]).await;
            match r {
                Ok(()) => {
                    Stats::add(&stats.reads, 1);
                    Stats::add(&stats.read_bytes, len);
                    reply.data(&buf);
                }
                Err(e) => {
                    Stats::add(&stats.errors, 1);
                    tracing::debug!(offset, len, "local device read failed: {e}");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        mark_io_flusher();
        if ino != FILE {
            reply.error(Errno::EISDIR);
            return;
        }
        let len = data.len() as u64;
        if self.clamp(offset, len) != len {
            // A device does not grow.
            reply.error(Errno::from_i32(libc::EFBIG));
            return;
        }
        let data = aligned_copy(data);
        let device = self.device.clone();
        let stats = self.stats.clone();
        self.runtime.spawn(async move {
            let r = device.write_shared(offset, data, false).await;
            match r {
                Ok(()) => {
                    Stats::add(&stats.writes, 1);
                    Stats::add(&stats.written_bytes, len);
                    reply.written(len as u32);
                }
                Err(e) => {
                    Stats::add(&stats.errors, 1);
                    tracing::debug!(offset, len, "local device write failed: {e}");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) of a descriptor of the file. Rare (the loop device keeps the file
        // open), and a close that makes writes durable is what a user of a device file
        // would expect anyway.
        self.flush_device(reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // What the loop device sends for a REQ_PREFLUSH (and for FUA, which it emulates
        // with a flush after the write): vfs_fsync of the backing file.
        self.flush_device(reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        mark_io_flusher();
        if ino != FILE {
            reply.error(Errno::EISDIR);
            return;
        }
        let len = self.clamp(offset, length);
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) == 0 {
            // Plain allocation: every byte of a device is there already.
            if mode & !FALLOC_FL_KEEP_SIZE == 0 && len == length {
                reply.ok();
            } else {
                reply.error(Errno::from_i32(libc::EOPNOTSUPP));
            }
            return;
        }
        // The loop device turns both DISCARD and WRITE_ZEROES into a punch-hole (or a
        // zero-range with REQ_NOUNMAP), and a punched range of a file reads back as
        // zeroes: so both must zero the range, never merely drop it.
        let may_trim = mode & FALLOC_FL_PUNCH_HOLE != 0;
        if len == 0 {
            reply.ok();
            return;
        }
        let device = self.device.clone();
        let stats = self.stats.clone();
        self.runtime.spawn(async move {
            match device.write_zeroes(offset, len, false, may_trim).await {
                Ok(()) => {
                    Stats::add(&stats.zeroes, 1);
                    reply.ok();
                }
                Err(e) => {
                    Stats::add(&stats.errors, 1);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries: [(INodeNo, FileType, &OsStr); 3] = [
            (ROOT, FileType::Directory, OsStr::new(".")),
            (ROOT, FileType::Directory, OsStr::new("..")),
            (FILE, FileType::RegularFile, &self.file_name),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.size_bytes / 4096;
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }
}

impl DeviceFs {
    fn flush_device(&self, reply: ReplyEmpty) {
        mark_io_flusher();
        let device = self.device.clone();
        let stats = self.stats.clone();
        self.runtime.spawn(async move {
            match device.flush().await {
                Ok(()) => {
                    Stats::add(&stats.flushes, 1);
                    reply.ok();
                }
                Err(e) => {
                    Stats::add(&stats.errors, 1);
                    tracing::warn!("local device flush failed: {e}");
                    reply.error(errno(&e));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_writes_are_copied_into_page_aligned_memory() {
        let data: Vec<u8> = (0..(1 << 20) + 7).map(|i| i as u8).collect();
        for len in [1, 4095, 4096, 65536, data.len()] {
            let b = aligned_copy(&data[..len]);
            assert_eq!(&b[..], &data[..len]);
            if len >= DIRECT_ALIGN_BYTES {
                assert_eq!(b.as_ptr().align_offset(DIRECT_ALIGN_BYTES), 0, "{len}");
            }
        }
    }
}
