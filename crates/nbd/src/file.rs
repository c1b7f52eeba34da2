//! [`FileDevice`]: a regular file or a block device served through positioned I/O.
//!
//! Blocking system calls (pread/pwrite/fdatasync/fallocate) run on tokio's blocking pool so
//! that a slow disk never stalls the socket loops.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};

use crate::device::{BlockDevice, BufResult, DeviceError, DeviceFuture, check_range};

/// Zero-filled chunk used when the file system cannot zero a range by itself.
const ZERO_CHUNK_BYTES: usize = 1024 * 1024;

/// Reads and non-FUA writes up to this size are first tried on the calling thread with
/// `RWF_NOWAIT`: a page-cache copy of a few KiB is cheaper than a hand-off to the blocking
/// pool and back, and `RWF_NOWAIT` makes the kernel refuse (instead of wait) whenever the
/// disk would be involved, in which case the request goes to the pool after all.
pub const DEFAULT_INLINE_MAX_BYTES: usize = 64 * 1024;

/// Writes sent to the pool after an inline write slept before inline writes are tried again.
const INLINE_BACKOFF_WRITES: u32 = 1024;

const FALLOC_UNKNOWN: u8 = 0;
const FALLOC_YES: u8 = 1;
const FALLOC_NO: u8 = 2;

#[derive(Debug)]
struct Inner {
    file: File,
    size_bytes: u64,
    opened_read_only: bool,
    /// Whether `pwritev2(RWF_DSYNC)` works here (otherwise FUA falls back to fdatasync).
    dsync_write: AtomicU8,
    nowait_read: AtomicU8,
    nowait_write: AtomicU8,
    /// Writes still to send to the pool after a slow inline write.
    inline_backoff_writes: AtomicU32,
    punch_hole: AtomicU8,
    zero_range: AtomicU8,
}

/// A file or block device exported over NBD.
#[derive(Debug, Clone)]
pub struct FileDevice {
    inner: Arc<Inner>,
    writable: Arc<AtomicBool>,
    inline_max_bytes: usize,
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, length: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(length)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: plain syscall on a valid, owned file descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV)
    )
}

/// Write all of `data` at `offset` with `RWF_DSYNC` (durable on return, like FUA).
fn pwrite_dsync(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        let iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let Ok(off) = i64::try_from(offset) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: `iov` points into `data`, which outlives the call; the kernel only reads it.
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, off, libc::RWF_DSYNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        data = &data[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// Voluntary context switches of the calling thread so far (0 if unknown).
fn voluntary_switches() -> i64 {
    // SAFETY: getrusage writes only into the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &mut u) == 0 {
            u.ru_nvcsw
        } else {
            0
        }
    }
}

/// Outcome of a non-blocking attempt.
enum Nowait {
    /// Completed (fully) or failed for good.
    Done(io::Result<()>),
    /// Would block (not cached, dirty throttling, short transfer): use the pool.
    WouldBlock,
    /// The file system does not support `RWF_NOWAIT` here.
    Unsupported,
}

/// Try `f` unless `RWF_NOWAIT` is known to be unsupported; `None` means "use the pool".
fn nowait(flag: &AtomicU8, f: impl FnOnce() -> Nowait) -> Option<io::Result<()>> {
    if flag.load(Ordering::Relaxed) == FALLOC_NO {
        return None;
    }
    match f() {
        Nowait::Done(r) => Some(r),
        Nowait::WouldBlock => None,
        Nowait::Unsupported => {
            flag.store(FALLOC_NO, Ordering::Relaxed);
            None
        }
    }
}

fn classify(n: isize, want: usize) -> Nowait {
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Nowait::WouldBlock,
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Nowait::Unsupported,
            _ => Nowait::Done(Err(e)),
        };
    }
    if n as usize == want {
        Nowait::Done(Ok(()))
    } else {
        // A short transfer (partly cached) is finished by the blocking path from scratch.
        Nowait::WouldBlock
    }
}

/// `preadv2(RWF_NOWAIT)`: succeeds only when the whole range is in the page cache, so
/// the calling (async) thread never waits for a disk.
fn preadv2_nowait(file: &File, buf: &mut [u8], offset: u64) -> Nowait {
    let Ok(off) = i64::try_from(offset) else {
        return Nowait::Done(Err(io::Error::from_raw_os_error(libc::EINVAL)));
    };
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is exclusively borrowed for the call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    classify(n, buf.len())
}

/// `pwritev2(RWF_NOWAIT)`: a buffered write that fails with `EAGAIN` instead of waiting
/// (for locks, block allocation or dirty-page throttling).
fn pwritev2_nowait(file: &File, data: &[u8], offset: u64) -> Nowait {
    let Ok(off) = i64::try_from(offset) else {
        return Nowait::Done(Err(io::Error::from_raw_os_error(libc::EINVAL)));
    };
    let iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `iov` points into `data`, which outlives the call; the kernel only reads it.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    classify(n, data.len())
}

impl Inner {
    /// A plain buffered write on the calling thread, or `None` to use the pool while a
    /// back-off from an inline write that slept is running.
    fn timed_inline_write(&self, data: &[u8], offset: u64) -> Option<io::Result<()>> {
        if self.inline_backoff_writes.load(Ordering::Relaxed) > 0 {
            let _ = self.inline_backoff_writes.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |n| n.checked_sub(1),
            );
            return None;
        }
        // A write that slept in the kernel (page under writeback, dirty throttling, a
        // lock) shows up as a voluntary context switch of this thread; being preempted on
        // a busy machine does not, so wall-clock time would be the wrong signal.
        let before = voluntary_switches();
        let r = self.file.write_all_at(data, offset);
        if voluntary_switches() != before {
            self.inline_backoff_writes
                .store(INLINE_BACKOFF_WRITES, Ordering::Relaxed);
        }
        Some(r)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        if fua && self.dsync_write.load(Ordering::Relaxed) != FALLOC_NO {
            match pwrite_dsync(&self.file, data, offset) {
                Ok(()) => {
                    self.dsync_write.store(FALLOC_YES, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if unsupported(&e) => self.dsync_write.store(FALLOC_NO, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, offset)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Try one fallocate mode, remembering when the file system does not support it.
    fn try_fallocate(
        &self,
        flag: &AtomicU8,
        mode: libc::c_int,
        offset: u64,
        length: u64,
    ) -> io::Result<bool> {
        if flag.load(Ordering::Relaxed) == FALLOC_NO {
            return Ok(false);
        }
        match fallocate(&self.file, mode, offset, length) {
            Ok(()) => {
                flag.store(FALLOC_YES, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if unsupported(&e) => {
                flag.store(FALLOC_NO, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn trim(&self, offset: u64, length: u64, fua: bool) -> io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        let punched = self.try_fallocate(
            &self.punch_hole,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            length,
        )?;
        // Trim is a hint: when the file system cannot punch holes, doing nothing is correct.
        if punched && fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, length: u64, fua: bool, may_trim: bool) -> io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        let mut done = may_trim
            && self.try_fallocate(
                &self.punch_hole,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                length,
            )?;
        if !done {
            // ZERO_RANGE keeps the blocks allocated, which is what NO_HOLE asks for.
            done = self.try_fallocate(
                &self.zero_range,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                length,
            )?;
        }
        if !done {
            let zeroes = vec![0u8; ZERO_CHUNK_BYTES.min(length as usize)];
            let mut at = offset;
            let end = offset + length;
            while at < end {
                let n = (end - at).min(zeroes.len() as u64) as usize;
                self.file.write_all_at(&zeroes[..n], at)?;
                at += n as u64;
            }
        }
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// Run a blocking closure on the blocking pool; a lost task becomes `EIO`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
    lost: impl FnOnce() -> T,
) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(_) => lost(),
    }
}

fn lost_task() -> DeviceError {
    DeviceError::Io(io::Error::other("I/O task was cancelled"))
}

impl FileDevice {
    /// Open `path` (a regular file or a block device). With `read_only` the file is opened
    /// without write access and the device can never become writable.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        // Seeking to the end gives the size of regular files and block devices alike.
        let size_bytes = file.seek(SeekFrom::End(0))?;
        Ok(FileDevice {
            inner: Arc::new(Inner {
                file,
                size_bytes,
                opened_read_only: read_only,
                dsync_write: AtomicU8::new(FALLOC_UNKNOWN),
                nowait_read: AtomicU8::new(FALLOC_UNKNOWN),
                nowait_write: AtomicU8::new(FALLOC_UNKNOWN),
                inline_backoff_writes: AtomicU32::new(0),
                punch_hole: AtomicU8::new(FALLOC_UNKNOWN),
                zero_range: AtomicU8::new(FALLOC_UNKNOWN),
            }),
            writable: Arc::new(AtomicBool::new(!read_only)),
            inline_max_bytes: DEFAULT_INLINE_MAX_BYTES,
        })
    }

    /// Largest read or non-FUA write tried on the calling thread (0 sends everything to
    /// the blocking pool).
    pub fn with_inline_max_bytes(mut self, bytes: usize) -> Self {
        self.inline_max_bytes = bytes;
        self
    }

    /// Accept or refuse writes from now on (primary / secondary). Has no effect on a device
    /// opened read-only, which stays read-only.
    pub fn set_writable(&self, writable: bool) -> bool {
        let v = writable && !self.inner.opened_read_only;
        self.writable.store(v, Ordering::SeqCst);
        v
    }

    /// Run `f` against the open file on the blocking pool (for helpers that need raw access).
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, DeviceError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, DeviceError>> + Send + 'static {
        let inner = self.inner.clone();
        blocking(move || f(&inner), || Err(lost_task()))
    }

    fn check_writable(&self) -> Result<(), DeviceError> {
        if self.writable.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(DeviceError::ReadOnly)
        }
    }
}

impl BlockDevice for FileDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes
    }
    fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }
    fn read(&self, offset: u64, mut buf: Vec<u8>) -> DeviceFuture<'_, BufResult> {
        if let Err(e) = check_range(offset, buf.len() as u64, self.inner.size_bytes) {
            return Box::pin(std::future::ready((buf, Err(e))));
        }
        if buf.len() <= self.inline_max_bytes {
            match nowait(&self.inner.nowait_read, || {
                preadv2_nowait(&self.inner.file, &mut buf, offset)
            }) {
                Some(Ok(())) => return Box::pin(std::future::ready((buf, Ok(())))),
                Some(Err(e)) => return Box::pin(std::future::ready((buf, Err(e.into())))),
                None => {}
            }
        }
        let inner = self.inner.clone();
        Box::pin(blocking(
            move || {
                let r = inner.file.read_exact_at(&mut buf, offset);
                (buf, r.map_err(DeviceError::from))
            },
            || (Vec::new(), Err(lost_task())),
        ))
    }
    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceFuture<'_, BufResult> {
        if let Err(e) = self
            .check_writable()
            .and_then(|()| check_range(offset, data.len() as u64, self.inner.size_bytes))
        {
            return Box::pin(std::future::ready((data, Err(e))));
        }
        if !fua && data.len() <= self.inline_max_bytes {
            // Where buffered RWF_NOWAIT writes are unsupported (ext4 on many kernels), a
            // small buffered write is still copied here, unless recent ones were slow
            // (a page under writeback, dirty throttling): then the next writes go to the
            // pool for a while, where several can wait at once.
            let inline = if self.inner.nowait_write.load(Ordering::Relaxed) == FALLOC_NO {
                self.inner.timed_inline_write(&data, offset)
            } else {
                nowait(&self.inner.nowait_write, || {
                    pwritev2_nowait(&self.inner.file, &data, offset)
                })
            };
            match inline {
                Some(Ok(())) => return Box::pin(std::future::ready((data, Ok(())))),
                Some(Err(e)) => return Box::pin(std::future::ready((data, Err(e.into())))),
                None => {}
            }
        }
        let inner = self.inner.clone();
        Box::pin(blocking(
            move || {
                let r = inner.write(offset, &data, fua);
                (data, r.map_err(DeviceError::from))
            },
            || (Vec::new(), Err(lost_task())),
        ))
    }
    fn flush(&self) -> DeviceFuture<'_, Result<(), DeviceError>> {
        Box::pin(self.spawn(|i| i.file.sync_data().map_err(DeviceError::from)))
    }
    fn trim(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        if let Err(e) = self
            .check_writable()
            .and_then(|()| check_range(offset, length, self.inner.size_bytes))
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        Box::pin(self.spawn(move |i| i.trim(offset, length, fua).map_err(DeviceError::from)))
    }
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
        may_trim: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        if let Err(e) = self
            .check_writable()
            .and_then(|()| check_range(offset, length, self.inner.size_bytes))
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        Box::pin(self.spawn(move |i| {
            i.write_zeroes(offset, length, fua, may_trim)
                .map_err(DeviceError::from)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_device_round_trip_zeroes_and_trim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0xAAu8; 1 << 20]).unwrap();
        let d = FileDevice::open(&path, false).unwrap();
        assert_eq!(d.size_bytes(), 1 << 20);
        let (_, r) = d.write(4096, vec![5; 8192], true).await;
        r.unwrap();
        let (b, r) = d.read(4096, vec![0; 8192]).await;
        r.unwrap();
        assert!(b.iter().all(|&x| x == 5));
        d.write_zeroes(0, 65536, false, false).await.unwrap();
        d.write_zeroes(65536, 65536, true, true).await.unwrap();
        let (b, r) = d.read(0, vec![1; 131072]).await;
        r.unwrap();
        assert!(b.iter().all(|&x| x == 0));
        d.trim(131072, 65536, false).await.unwrap();
        d.flush().await.unwrap();
        let (_, r) = d.read((1 << 20) - 10, vec![0; 20]).await;
        assert!(matches!(r, Err(DeviceError::OutOfRange { .. })));
        assert!(!d.set_writable(false));
        let (_, r) = d.write(0, vec![1; 512], false).await;
        assert!(matches!(r, Err(DeviceError::ReadOnly)));
        assert!(d.set_writable(true));
    }

    #[tokio::test]
    async fn read_only_file_device_stays_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let d = FileDevice::open(&path, true).unwrap();
        assert!(!d.writable());
        assert!(!d.set_writable(true));
        let (_, r) = d.write(0, vec![1; 512], false).await;
        assert!(matches!(r, Err(DeviceError::ReadOnly)));
    }
}
