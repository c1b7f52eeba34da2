//! The lossy disk as a FUSE file system: a pass-through to a lower directory (the
//! durable copy, "the platter") that keeps every file's writes in a [`FileCache`] until
//! that file is `fsync`ed.
//!
//! What is volatile and what is not:
//! - file data, and file size changes (write past the end, truncate, `fallocate`):
//!   volatile until `fsync`/`fdatasync` of that file, or a write on an `O_SYNC`/`O_DSYNC`
//!   descriptor;
//! - names and attributes (create, mkdir, unlink, rename, link, symlink, chmod, chown,
//!   utimes): durable at once — kinder than ext4, where a new name needs a directory
//!   `fsync`; a created file survives a power cut empty.
//!
//! Every open gets `FOPEN_DIRECT_IO`, so the kernel keeps no copy of file data in its
//! page cache: this cache is the only one, and dropping it is the whole power cut.
//! Attributes are handed out with a zero lifetime (sizes change under the kernel when a
//! power cut drops a growth). Node ids are the lower inode numbers (the root is 1).

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use super::cache::{Backing, FileCache};

/// Largest write (and read) request: 1 MiB is what the kernel allows by default
/// (`fuse.max_pages_limit` = 256 pages), and it makes a 1 MiB write one request.
pub const MAX_WRITE_BYTES: u32 = 1 << 20;
/// How long the kernel may trust a name lookup: names change only through this file
/// system, which the kernel sees.
const ENTRY_TTL: Duration = Duration::from_secs(1);
/// Attributes are never trusted: a power cut changes sizes behind the kernel's back.
const ATTR_TTL: Duration = Duration::ZERO;
/// Bound on directory listings open at once (each holds a snapshot of its entries).
const OPEN_DIRS_MAX: usize = 4096;

/// A directory's entries (node id, type, name), as listed at `opendir`.
type Listing = Vec<(u64, FileType, OsString)>;

/// What a `setattr` changes.
struct Changes {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

/// One lossy disk: the lower directory, the nodes the kernel knows, the caches.
pub struct Volume {
    root: OwnedFd,
    root_ino: u64,
    root_dev: u64,
    nodes: RwLock<HashMap<u64, Arc<Node>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
    /// Memory held by every cache of this disk.
    cached_bytes: AtomicU64,
    /// The bound on `cached_bytes`: a write past it fails with ENOSPC.
    bound_bytes: u64,
    /// Writes refused at the bound, for status.
    refused_writes: AtomicU64,
    /// Tells the kernel to forget sizes after a power cut; set once the session exists.
    notifier: Mutex<Option<Notifier>>,
}

/// A file, directory or other object of the lower directory.
struct Node {
    /// Lower inode number.
    ino: u64,
    kind: FileType,
    /// `O_PATH` descriptor: names the object whatever it is renamed to.
    path: OwnedFd,
    /// Kernel references (lookups) and open file handles.
    refs: Mutex<Refs>,
    state: RwLock<NodeState>,
}

#[derive(Default)]
struct Refs {
    lookups: u64,
    open: u64,
}

#[derive(Default)]
struct NodeState {
    /// A read-write descriptor of a regular file: kept while it is open or dirty.
    data: Option<File>,
    /// Unflushed state; `None` while the file is its durable copy.
    cache: Option<FileCache>,
    /// Access and modification times set explicitly (utimes) since the last cached
    /// write: the flush's writes would move the lower file's, so it sets them again
    /// (`cp -a` then `fsync` keeps the copied times).
    times: Option<[libc::timespec; 2]>,
}

/// What a power cut or a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes of cached pages dropped or written.
    pub bytes: u64,
    /// Files whose cache was dropped or written.
    pub files: u64,
}

/// A disk's counters, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Memory held by unflushed pages.
    pub cached_bytes: u64,
    /// Files with unflushed data or size.
    pub dirty_files: u64,
    /// The bound on `cached_bytes`.
    pub bound_bytes: u64,
    /// Writes refused at the bound since the disk was mounted.
    pub refused_writes: u64,
}

/// The durable copy of one file, for the cache.
struct Lower<'a>(&'a File);

impl Backing for Lower<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        pwritev_all(self.0.as_raw_fd(), bufs, offset)
    }
    fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a descriptor we own.
        let r = unsafe { libc::fallocate(self.0.as_raw_fd(), mode, offset as i64, len as i64) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
        // A lower file system without holes: write the zeros.
        let zeros = vec![0u8; 1 << 20];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeros.len() as u64) as usize;
            self.0.write_all_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// `pwritev` until everything is written (a short write continues where it stopped).
fn pwritev_all(fd: RawFd, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut first = 0;
    let mut pos = offset;
    while first < iov.len() {
        let count = (iov.len() - first).min(1024) as i32;
        // SAFETY: the iovecs point into `bufs`, which outlive the call.
        let n = unsafe { libc::pwritev(fd, iov[first..].as_ptr(), count, pos as i64) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        pos += n as u64;
        let mut left = n as usize;
        while left > 0 && first < iov.len() {
            if left >= iov[first].iov_len {
                left -= iov[first].iov_len;
                first += 1;
            } else {
                // SAFETY: advancing within the same buffer.
                iov[first].iov_base = unsafe { (iov[first].iov_base as *mut u8).add(left) }.cast();
                iov[first].iov_len -= left;
                left = 0;
            }
        }
    }
    Ok(())
}

fn last_errno() -> Errno {
    Errno::from(io::Error::last_os_error())
}

fn cvt(r: libc::c_int) -> Result<libc::c_int, Errno> {
    if r < 0 { Err(last_errno()) } else { Ok(r) }
}

fn cname(name: &OsStr) -> Result<CString, Errno> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// `/proc/self/fd/N`: reopens an `O_PATH` descriptor (the kernel follows this link to the
/// object itself, whatever its current name).
fn proc_path(fd: &OwnedFd) -> CString {
    // The string has no NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn openat(dir: &OwnedFd, name: &CString, flags: i32, mode: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: openat on a descriptor we own and a NUL-terminated name.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // SAFETY: a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_fd(fd: &OwnedFd) -> Result<libc::stat, Errno> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: fstatat with an empty path on a descriptor we own.
    cvt(unsafe { libc::fstatat(fd.as_raw_fd(), c"".as_ptr(), &mut st, flags) })?;
    Ok(st)
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (sec, nsec) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => (-(e.duration().as_secs() as i64), 0),
            };
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            }
        }
    }
}

impl Volume {
    /// Opens the lower directory `lower` as a disk whose caches may hold `bound_bytes`.
    pub fn open(lower: &Path, bound_bytes: u64) -> io::Result<Volume> {
        let c = CString::new(lower.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the lower path"))?;
        // SAFETY: open on a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = stat_fd(&root).map_err(|e| io::Error::from_raw_os_error(i32::from(e)))?;
        let path = root.try_clone()?;
        let root_node = Arc::new(Node {
            ino: st.st_ino,
            kind: FileType::Directory,
            path,
            refs: Mutex::new(Refs {
                lookups: 1,
                open: 0,
            }),
            state: RwLock::new(NodeState::default()),
        });
        Ok(Volume {
            root,
            root_ino: st.st_ino,
            root_dev: st.st_dev,
            nodes: RwLock::new(HashMap::from([(st.st_ino, root_node)])),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            cached_bytes: AtomicU64::new(0),
            bound_bytes,
            refused_writes: AtomicU64::new(0),
            notifier: Mutex::new(None),
        })
    }

    /// Hands over the session's notifier (for telling the kernel that sizes changed).
    pub fn set_notifier(&self, n: Notifier) {
        *self.notifier.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
    }

    /// FUSE node id of a lower inode, and back: the root is 1 (and a lower inode 1, if
    /// any, takes the root's number). The map is its own inverse.
    fn swap_root(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            1
        } else if ino == 1 {
            self.root_ino
        } else {
            ino
        }
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Node>, Errno> {
        let lower = self.swap_root(ino.0);
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&lower)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    /// Attributes as readers see them: the lower object's, with the cached size.
    fn attr(&self, node: &Node) -> Result<FileAttr, Errno> {
        let st = stat_fd(&node.path)?;
        let mut size = st.st_size as u64;
        if let Some(c) = &node.state.read().unwrap_or_else(|p| p.into_inner()).cache {
            size = c.size();
        }
        Ok(FileAttr {
            ino: INodeNo(self.swap_root(st.st_ino)),
            size,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: kind_of(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Looks `name` up in `parent` and counts one kernel reference to it.
    fn lookup_child(&self, parent: &Node, name: &OsStr) -> Result<FileAttr, Errno> {
        let c = cname(name)?;
        let fd = openat(
            &parent.path,
            &c,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )?;
        let st = stat_fd(&fd)?;
        if st.st_dev != self.root_dev {
            // Another file system mounted below the lower directory: its inode numbers
            // would collide with ours.
            return Err(Errno::EXDEV);
        }
        // Counted under the map's lock: a FORGET of the same inode racing this lookup
        // (the kernel evicted it meanwhile) must not remove a node we are handing out.
        let node = {
            let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
            let node = nodes
                .entry(st.st_ino)
                .or_insert_with(|| {
                    Arc::new(Node {
                        ino: st.st_ino,
                        kind: kind_of(st.st_mode),
                        path: fd,
                        refs: Mutex::new(Refs::default()),
                        state: RwLock::new(NodeState::default()),
                    })
                })
                .clone();
            node.refs.lock().unwrap_or_else(|p| p.into_inner()).lookups += 1;
            node
        };
        let attr = self.attr(&node);
        if attr.is_err() {
            // The kernel counts only the lookups it was answered.
            let mut refs = node.refs.lock().unwrap_or_else(|p| p.into_inner());
            refs.lookups = refs.lookups.saturating_sub(1);
        }
        attr
    }

    /// Sets the owner of a new object to the caller (the server runs as root), with the
    /// directory's group where it is set-group-ID, as Linux file systems do.
    fn own(&self, parent: &Node, name: &CString, req: &Request) -> Result<(), Errno> {
        let pst = stat_fd(&parent.path)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            req.gid()
        };
        // SAFETY: fchownat on a descriptor we own and a NUL-terminated name.
        cvt(unsafe {
            libc::fchownat(
                parent.path.as_raw_fd(),
                name.as_ptr(),
                req.uid(),
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(())
    }

    /// The memory of `bytes` more cached pages, unless the bound is reached.
    fn reserve(&self, bytes: u64) -> Result<(), Errno> {
        let mut cur = self.cached_bytes.load(Ordering::Relaxed);
        loop {
            if cur + bytes > self.bound_bytes {
                self.refused_writes.fetch_add(1, Ordering::Relaxed);
                return Err(Errno::ENOSPC);
            }
            match self.cached_bytes.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    fn release(&self, bytes: u64) {
        self.cached_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Opens the read-write descriptor of a regular file if it is not open yet.
    fn ensure_data(node: &Node, st: &mut NodeState) -> Result<(), Errno> {
        if st.data.is_none() {
            if node.kind != FileType::RegularFile {
                return Err(Errno::EINVAL);
            }
            let p = proc_path(&node.path);
            // SAFETY: open on a NUL-terminated path.
            let fd = cvt(unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
            // SAFETY: a fresh descriptor.
            st.data = Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        Ok(())
    }

    /// The node's cache, made if the file was clean.
    fn cache_of<'s>(
        node: &Node,
        st: &'s mut NodeState,
    ) -> Result<(&'s File, &'s mut FileCache), Errno> {
        Self::ensure_data(node, st)?;
        let NodeState { data, cache, .. } = st;
        let file = data.as_ref().ok_or(Errno::EBADF)?;
        if cache.is_none() {
            let len = file.metadata().map_err(Errno::from)?.len();
            *cache = Some(FileCache::new(len));
        }
        let cache = cache.as_mut().ok_or(Errno::EIO)?;
        Ok((file, cache))
    }

    /// Forgets a clean cache, and the data descriptor of a file nobody has open.
    fn settle(node: &Node, st: &mut NodeState) {
        if let (Some(c), Some(f)) = (&st.cache, &st.data) {
            if let Ok(m) = f.metadata() {
                if c.is_clean(m.len()) {
                    st.cache = None;
                }
            }
        }
        let open = node.refs.lock().unwrap_or_else(|p| p.into_inner()).open;
        if open == 0 && st.cache.is_none() {
            st.data = None;
        }
    }

    /// Writes one file's cache down to the lower file.
    fn flush_node(&self, node: &Node, st: &mut NodeState) -> Result<u64, Errno> {
        let freed = match (&mut st.cache, &st.data) {
            (Some(c), Some(f)) => c.flush(&Lower(f)).map_err(Errno::from)?,
            _ => 0,
        };
        if let (Some(times), Some(f)) = (st.times.take(), &st.data) {
            // SAFETY: futimens on a descriptor we own with a two-element array.
            cvt(unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) })?;
        }
        self.release(freed);
        st.cache = None;
        Self::settle(node, st);
        Ok(freed)
    }

    fn all_nodes(&self) -> Vec<Arc<Node>> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The power cut: every cache is dropped unwritten; every file is again its
    /// durable copy. The kernel is told to forget the attributes (sizes) it holds.
    pub fn drop_unflushed(&self) -> Outcome {
        let mut out = Outcome::default();
        let mut touched = Vec::new();
        for node in self.all_nodes() {
            let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
            st.times = None;
            if let Some(c) = st.cache.take() {
                self.release(c.mem_bytes());
                out.bytes += c.mem_bytes();
                out.files += 1;
                touched.push(node.ino);
            }
            Self::settle(&node, &mut st);
        }
        self.sweep();
        self.invalidate(&touched);
        out
    }

    /// Writes every cache down (what `sync` would do; the kernel does not pass `sync`
    /// or `syncfs` on to a FUSE server, see docs/lab.md).
    pub fn sync_all(&self) -> Result<Outcome, Errno> {
        let mut out = Outcome::default();
        let mut first_error = None;
        for node in self.all_nodes() {
            let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
            if st.cache.is_some() {
                match self.flush_node(&node, &mut st) {
                    Ok(bytes) => {
                        out.bytes += bytes;
                        out.files += 1;
                    }
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
        }
        self.sweep();
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The disk's counters.
    pub fn usage(&self) -> Usage {
        let dirty_files = self
            .all_nodes()
            .iter()
            .filter(|n| {
                n.state
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .cache
                    .is_some()
            })
            .count() as u64;
        Usage {
            cached_bytes: self.cached_bytes.load(Ordering::Relaxed),
            dirty_files,
            bound_bytes: self.bound_bytes,
            refused_writes: self.refused_writes.load(Ordering::Relaxed),
        }
    }

    fn invalidate(&self, lower_inos: &[u64]) {
        let n = self.notifier.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = n.as_ref() {
            for ino in lower_inos {
                // Offset 0, length 0: attributes and any page of a private mapping.
                // ENOENT (the kernel forgot the inode) is fine.
                let _ = n.inval_inode(INodeNo(self.swap_root(*ino)), 0, 0);
            }
        }
    }

    /// Removes nodes the kernel forgot that hold nothing unflushed.
    fn sweep(&self) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.retain(|ino, node| *ino == self.root_ino || !Self::removable(node));
    }

    fn removable(node: &Node) -> bool {
        let refs = node.refs.lock().unwrap_or_else(|p| p.into_inner());
        if refs.lookups > 0 || refs.open > 0 {
            return false;
        }
        match node.state.try_read() {
            Ok(st) => st.cache.is_none(),
            Err(_) => false,
        }
    }

    /// A node the kernel dropped: gone if it holds nothing, or if its file was unlinked
    /// (its unflushed data can never be read again).
    fn forget_node(&self, ino: INodeNo, count: u64) {
        let lower = self.swap_root(ino.0);
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let Some(node) = nodes.get(&lower).cloned() else {
            return;
        };
        {
            let mut refs = node.refs.lock().unwrap_or_else(|p| p.into_inner());
            refs.lookups = refs.lookups.saturating_sub(count);
            if refs.lookups > 0 || refs.open > 0 || lower == self.root_ino {
                return;
            }
        }
        let unlinked = stat_fd(&node.path).map(|s| s.st_nlink == 0).unwrap_or(true);
        if let Ok(mut st) = node.state.try_write() {
            if unlinked {
                if let Some(c) = st.cache.take() {
                    self.release(c.mem_bytes());
                }
            }
            if st.cache.is_none() {
                nodes.remove(&lower);
            }
        }
    }

    fn entry_reply(&self, attr: Result<FileAttr, Errno>, reply: ReplyEntry) {
        match attr {
            Ok(a) => reply.entry_with_ttls(&ATTR_TTL, &ENTRY_TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn do_setattr(&self, ino: INodeNo, ch: Changes) -> Result<FileAttr, Errno> {
        let Changes {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = ch;
        let node = self.node(ino)?;
        let symlink = node.kind == FileType::Symlink;
        if let Some(m) = mode.filter(|_| !symlink) {
            let p = proc_path(&node.path);
            // SAFETY: chmod on a NUL-terminated path.
            cvt(unsafe { libc::chmod(p.as_ptr(), m & 0o7777) })?;
        }
        if uid.is_some() || gid.is_some() {
            let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
            let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
            // SAFETY: fchownat with an empty path on a descriptor we own; -1 keeps a field.
            cvt(unsafe { libc::fchownat(node.path.as_raw_fd(), c"".as_ptr(), u, g, flags) })?;
        }
        if let Some(new_size) = size {
            match node.kind {
                FileType::RegularFile => {}
                FileType::Directory => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
            let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
            let (_, cache) = Self::cache_of(&node, &mut st)?;
            let freed = cache.set_size(new_size);
            self.release(freed);
            Self::settle(&node, &mut st);
        }
        if (atime.is_some() || mtime.is_some()) && !symlink {
            let times = [timespec(atime), timespec(mtime)];
            let p = proc_path(&node.path);
            // SAFETY: utimensat on a NUL-terminated path and a two-element array.
            cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) })?;
            let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
            if st.cache.is_some() {
                // Resolved (UTIME_NOW, UTIME_OMIT) from what the lower file now says.
                let l = stat_fd(&node.path)?;
                st.times = Some([
                    libc::timespec {
                        tv_sec: l.st_atime,
                        tv_nsec: l.st_atime_nsec,
                    },
                    libc::timespec {
                        tv_sec: l.st_mtime,
                        tv_nsec: l.st_mtime_nsec,
                    },
                ]);
            }
        }
        self.attr(&node)
    }

    fn do_write(&self, ino: INodeNo, offset: u64, data: &[u8], flags: i32) -> Result<u32, Errno> {
        let node = self.node(ino)?;
        let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
        st.times = None; // a write moves mtime again
        let (file, cache) = Self::cache_of(&node, &mut st)?;
        let need = cache.bytes_to_write(offset, data.len() as u64);
        self.reserve(need)?;
        match cache.write(&Lower(file), offset, data) {
            Ok(added) => self.release(need - added),
            Err(e) => {
                self.release(need);
                return Err(Errno::from(e));
            }
        }
        // O_SYNC and O_DSYNC (the former includes the latter's bit): durable at once.
        if flags & libc::O_DSYNC != 0 {
            self.flush_node(&node, &mut st)?;
        }
        Ok(data.len() as u32)
    }

    fn do_read(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let node = self.node(ino)?;
        let st = node.state.read().unwrap_or_else(|p| p.into_inner());
        let file = st.data.as_ref().ok_or(Errno::EBADF)?;
        match &st.cache {
            Some(c) => c
                .read(&Lower(file), offset, size as u64)
                .map_err(Errno::from),
            None => {
                let mut buf = vec![0u8; size as usize];
                let mut done = 0;
                while done < buf.len() {
                    match file.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Errno::from(e)),
                    }
                }
                buf.truncate(done);
                Ok(buf)
            }
        }
    }

    fn do_fallocate(&self, ino: INodeNo, offset: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let node = self.node(ino)?;
        let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
        let (file, cache) = Self::cache_of(&node, &mut st)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let zeroing = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep_size) {
            return Err(Errno::EOPNOTSUPP);
        }
        if !keep_size && end > cache.size() {
            // Allocation past the end grows the file (volatile, like any growth).
            cache.set_size(end);
        }
        if zeroing {
            let need = cache.bytes_to_zero(offset, len);
            self.reserve(need)?;
            match cache.zero(&Lower(file), offset, len) {
                Ok(delta) => self.release((need as i64 - delta).max(0) as u64),
                Err(e) => {
                    self.release(need);
                    return Err(Errno::from(e));
                }
            }
        }
        Self::settle(&node, &mut st);
        Ok(())
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<FileAttr, Errno> {
        let parent = self.node(parent)?;
        let c = cname(name)?;
        let oflags = libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC | (flags & libc::O_EXCL);
        let data = openat(&parent.path, &c, oflags, mode & 0o7777)?;
        // The server's umask must not narrow the caller's mode (the kernel applied the
        // caller's umask already).
        // SAFETY: fchmod on a descriptor we own.
        cvt(unsafe { libc::fchmod(data.as_raw_fd(), mode & 0o7777) })?;
        self.own(&parent, &c, req)?;
        let attr = self.lookup_child(&parent, name)?;
        let node = self.node(attr.ino)?;
        node.refs.lock().unwrap_or_else(|p| p.into_inner()).open += 1;
        let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
        if st.data.is_none() {
            st.data = Some(File::from(data));
        }
        Ok(attr)
    }

    fn do_make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(&OwnedFd, &CString) -> libc::c_int,
        mode: Option<u32>,
    ) -> Result<FileAttr, Errno> {
        let parent = self.node(parent)?;
        let c = cname(name)?;
        cvt(make(&parent.path, &c))?;
        if let Some(m) = mode {
            // SAFETY: fchmodat on a descriptor we own and a NUL-terminated name.
            cvt(unsafe { libc::fchmodat(parent.path.as_raw_fd(), c.as_ptr(), m & 0o7777, 0) })?;
        }
        self.own(&parent, &c, req)?;
        self.lookup_child(&parent, name)
    }

    fn read_dir(&self, node: &Node) -> Result<Listing, Errno> {
        let p = proc_path(&node.path);
        let path = Path::new(OsStr::from_bytes(p.as_bytes()));
        let mut out = vec![
            (
                self.swap_root(node.ino),
                FileType::Directory,
                OsString::from("."),
            ),
            (
                self.swap_root(node.ino),
                FileType::Directory,
                OsString::from(".."),
            ),
        ];
        for e in std::fs::read_dir(path).map_err(Errno::from)? {
            let e = e.map_err(Errno::from)?;
            let kind = e
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            out.push((self.swap_root(e.ino()), kind, e.file_name()));
        }
        Ok(out)
    }
}

/// The [`Filesystem`] the FUSE session drives: a thin shell over a shared [`Volume`]
/// (the lab's control socket holds the other reference, for power cuts).
pub struct LossyFs(pub Arc<Volume>);

impl Filesystem for LossyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Large requests: a 1 MiB write is one round trip. The kernel caps it at
        // max_pages; errors here mean a smaller cap, which is fine.
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let attr = self
            .0
            .node(parent)
            .and_then(|p| self.0.lookup_child(&p, name));
        self.0.entry_reply(attr, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.0.forget_node(ino, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.node(ino).and_then(|n| self.0.attr(&n)) {
            Ok(a) => reply.attr(&ATTR_TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ch = Changes {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        match self.0.do_setattr(ino, ch) {
            Ok(a) => reply.attr(&ATTR_TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.0.node(ino).and_then(|n| {
            let mut buf = vec![0u8; libc::PATH_MAX as usize];
            // SAFETY: readlinkat with an empty path on a descriptor we own, into `buf`.
            let len = unsafe {
                libc::readlinkat(
                    n.path.as_raw_fd(),
                    c"".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if len < 0 {
                return Err(last_errno());
            }
            buf.truncate(len as usize);
            Ok(buf)
        });
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let attr = self.0.do_make(
            req,
            parent,
            name,
            // SAFETY: mknodat on a descriptor we own and a NUL-terminated name.
            |dir, c| unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev as u64) },
            Some(mode),
        );
        self.0.entry_reply(attr, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let attr = self.0.do_make(
            req,
            parent,
            name,
            // SAFETY: mkdirat on a descriptor we own and a NUL-terminated name.
            |dir, c| unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode & 0o7777) },
            Some(mode),
        );
        self.0.entry_reply(attr, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.0.node(parent).and_then(|p| {
            let c = cname(name)?;
            // SAFETY: unlinkat on a descriptor we own and a NUL-terminated name.
            cvt(unsafe { libc::unlinkat(p.path.as_raw_fd(), c.as_ptr(), 0) })
        });
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.0.node(parent).and_then(|p| {
            let c = cname(name)?;
            // SAFETY: unlinkat on a descriptor we own and a NUL-terminated name.
            cvt(unsafe { libc::unlinkat(p.path.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
        });
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let attr = cname(target.as_os_str()).and_then(|t| {
            self.0.do_make(
                req,
                parent,
                link_name,
                // SAFETY: symlinkat with NUL-terminated strings on a descriptor we own.
                |dir, c| unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) },
                None,
            )
        });
        self.0.entry_reply(attr, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let (p, np) = (self.0.node(parent)?, self.0.node(newparent)?);
            let (c, nc) = (cname(name)?, cname(newname)?);
            // SAFETY: renameat2 on descriptors we own and NUL-terminated names.
            cvt(unsafe {
                libc::renameat2(
                    p.path.as_raw_fd(),
                    c.as_ptr(),
                    np.path.as_raw_fd(),
                    nc.as_ptr(),
                    flags.bits(),
                )
            })
        })();
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let attr = (|| {
            let (n, np) = (self.0.node(ino)?, self.0.node(newparent)?);
            let nc = cname(newname)?;
            // SAFETY: linkat with an empty source path (AT_EMPTY_PATH) on descriptors we own.
            cvt(unsafe {
                libc::linkat(
                    n.path.as_raw_fd(),
                    c"".as_ptr(),
                    np.path.as_raw_fd(),
                    nc.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            })?;
            self.0.lookup_child(&np, newname)
        })();
        self.0.entry_reply(attr, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.0.node(ino).and_then(|node| {
            let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
            Volume::ensure_data(&node, &mut st)?;
            node.refs.lock().unwrap_or_else(|p| p.into_inner()).open += 1;
            Ok(())
        });
        match r {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
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
        match self.0.do_read(ino, offset, size) {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.0.do_write(ino, offset, data, flags.0) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) promises no durability.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(node) = self.0.node(ino) {
            {
                let mut refs = node.refs.lock().unwrap_or_else(|p| p.into_inner());
                refs.open = refs.open.saturating_sub(1);
            }
            let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
            Volume::settle(&node, &mut st);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.0.node(ino).and_then(|node| {
            let mut st = node.state.write().unwrap_or_else(|p| p.into_inner());
            self.0.flush_node(&node, &mut st)
        });
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.0.node(ino).and_then(|node| {
            let entries = self.0.read_dir(&node)?;
            let mut dirs = self.0.dirs.lock().unwrap_or_else(|p| p.into_inner());
            if dirs.len() >= OPEN_DIRS_MAX {
                return Err(Errno::EMFILE);
            }
            let fh = self.0.next_fh.fetch_add(1, Ordering::Relaxed);
            dirs.insert(fh, Arc::new(entries));
            Ok(fh)
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = self
            .0
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(entries) = entries else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable at once.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // SAFETY: a zeroed statvfs is a valid out-buffer; fstatvfs on our descriptor.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatvfs(self.0.root.as_raw_fd(), &mut s) } != 0 {
            reply.error(last_errno());
            return;
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.0.do_create(req, parent, name, mode, flags) {
            Ok(a) => reply.created(
                &ATTR_TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
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
        match self.0.do_fallocate(ino, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
