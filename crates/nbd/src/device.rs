//! The block-device trait the server serves, its errors, and an in-memory device.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use thiserror::Error;

use crate::proto::errno;

/// A boxed future returned by [`BlockDevice`] methods (the trait is object safe so one
/// server can serve devices of different types).
pub type DeviceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Result of a read or write: the buffer comes back so the server can reuse it. A device
/// that cannot give it back (e.g. it handed the data to a replication link) returns an
/// empty `Vec`.
pub type BufResult = (Vec<u8>, Result<(), DeviceError>);

/// A per-request failure; [`DeviceError::nbd_errno`] gives the value sent to the client.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The device does not accept writes now (a secondary, or a read-only export).
    #[error("device is read-only")]
    ReadOnly,
    /// The range lies outside the device.
    #[error("range {offset}+{length} outside device of {size_bytes} bytes")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u64,
        /// Device size.
        size_bytes: u64,
    },
    /// The operation is not supported by this device.
    #[error("operation not supported")]
    Unsupported,
    /// The device is going away (disk down, server stopping).
    #[error("device shutting down")]
    Shutdown,
    /// An operating-system error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl DeviceError {
    /// Map to the restricted set of NBD error values (`doc/proto.md`, "Error values"):
    /// `EDQUOT`/`EFBIG` become `ENOSPC`; unknown errno values become `EIO`.
    pub fn nbd_errno(&self) -> u32 {
        match self {
            DeviceError::ReadOnly => errno::EPERM,
            DeviceError::OutOfRange { .. } => errno::EINVAL,
            DeviceError::Unsupported => errno::ENOTSUP,
            DeviceError::Shutdown => errno::ESHUTDOWN,
            DeviceError::Io(e) => match e.raw_os_error() {
                Some(libc::EPERM | libc::EROFS | libc::EACCES) => errno::EPERM,
                Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => errno::ENOSPC,
                Some(libc::EINVAL) => errno::EINVAL,
                Some(libc::ENOMEM) => errno::ENOMEM,
                Some(libc::EOVERFLOW) => errno::EOVERFLOW,
                Some(libc::EOPNOTSUPP) => errno::ENOTSUP,
                Some(libc::ESHUTDOWN) => errno::ESHUTDOWN,
                _ => errno::EIO,
            },
        }
    }
}

/// What a device can do; turned into transmission flags at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `flush` and FUA are meaningful (always true for persistent devices).
    pub flush: bool,
    /// `trim` is offered.
    pub trim: bool,
    /// `write_zeroes` is offered.
    pub write_zeroes: bool,
    /// Flush/FUA on one connection cover writes made on every other connection (one
    /// shared cache), so clients may open several connections.
    pub multi_conn: bool,
    /// The medium rotates (a scheduling hint for the client).
    pub rotational: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            flush: true,
            trim: true,
            write_zeroes: true,
            multi_conn: true,
            rotational: false,
        }
    }
}

/// A device the NBD server can serve.
///
/// The server checks ranges, flags and [`BlockDevice::writable`] before calling, but a
/// device must still refuse what it cannot do safely: the writable flag can change between
/// the check and the call (a primary demoted to secondary), so a replicated device checks
/// its role again, atomically with the write, and returns [`DeviceError::ReadOnly`].
///
/// Semantics required by the protocol:
/// - `write`/`trim`/`write_zeroes` with `fua == true` complete only when the data is on
///   stable storage (for a replicated disk: at the level its protocol promises).
/// - `flush` completes only when every write that completed before it was called is on
///   stable storage.
/// - Several calls run concurrently (requests are pipelined and several connections may
///   be open); overlapping writes have no defined order, as on a real disk.
///
/// How the server drives the futures: on one connection, methods are called and their
/// futures polled for the first time in request arrival order, on the connection's reader
/// task, before the next request is read. A future that is ready at once is answered
/// without spawning; a pending one continues as its own task. So the first poll must not
/// block (submit work and return `Pending`), and a device may rely on that order, e.g. to
/// number writes for replication.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes (read when a client negotiates; fixed for that connection).
    fn size_bytes(&self) -> u64;
    /// Whether writes are accepted now. A secondary answers `false`: the server then
    /// advertises `NBD_FLAG_READ_ONLY` and answers writes with `EPERM`.
    fn writable(&self) -> bool;
    /// What the device supports.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    /// Fill `buf` (its length is the request length) from `offset`.
    fn read(&self, offset: u64, buf: Vec<u8>) -> DeviceFuture<'_, BufResult>;
    /// Write `data` at `offset`.
    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceFuture<'_, BufResult>;
    /// Write `data`, a shared buffer, at `offset`: for callers that cannot hand over a
    /// `Vec` without copying, or that place the bytes themselves (page-aligned, so a
    /// device writing with `O_DIRECT` need not copy them again). The default copies
    /// into a `Vec` for [`BlockDevice::write`]; devices that keep the bytes as they are
    /// (a replicated disk hands them to its link and its disk) override it.
    fn write_shared(
        &self,
        offset: u64,
        data: bytes::Bytes,
        fua: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        Box::pin(async move { self.write(offset, data.to_vec(), fua).await.1 })
    }
    /// Make every completed write durable.
    fn flush(&self) -> DeviceFuture<'_, Result<(), DeviceError>>;
    /// Discard a range (a hint: doing nothing is correct).
    fn trim(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>>;
    /// Make a range read back as zeroes; deallocating is allowed when `may_trim`.
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
        may_trim: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>>;
}

pub(crate) fn check_range(offset: u64, length: u64, size_bytes: u64) -> Result<(), DeviceError> {
    match offset.checked_add(length) {
        Some(end) if end <= size_bytes => Ok(()),
        _ => Err(DeviceError::OutOfRange {
            offset,
            length,
            size_bytes,
        }),
    }
}

/// An in-memory device for tests: byte-exact, with counters for flushes and FUA writes.
#[derive(Debug)]
pub struct MemoryDevice {
    data: Mutex<Vec<u8>>,
    writable: AtomicBool,
    flushes: AtomicU64,
    fua_writes: AtomicU64,
}

impl MemoryDevice {
    /// A zero-filled device of `size_bytes`.
    pub fn new(size_bytes: usize) -> Self {
        MemoryDevice {
            data: Mutex::new(vec![0; size_bytes]),
            writable: AtomicBool::new(true),
            flushes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
        }
    }
    /// Switch between primary (writable) and secondary (read-only) behaviour.
    pub fn set_writable(&self, writable: bool) {
        self.writable.store(writable, Ordering::SeqCst);
    }
    /// Copy of the contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().clone()
    }
    /// Flushes served so far.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
    /// FUA writes (write, trim, write_zeroes) served so far.
    pub fn fua_count(&self) -> u64 {
        self.fua_writes.load(Ordering::Relaxed)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A poisoned lock only means another test thread panicked; the bytes are intact.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn modify(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
        f: impl FnOnce(&mut [u8]),
    ) -> Result<(), DeviceError> {
        if !self.writable() {
            return Err(DeviceError::ReadOnly);
        }
        let mut d = self.lock();
        check_range(offset, length, d.len() as u64)?;
        f(&mut d[offset as usize..(offset + length) as usize]);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl BlockDevice for MemoryDevice {
    fn size_bytes(&self) -> u64 {
        self.lock().len() as u64
    }
    fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }
    fn read(&self, offset: u64, mut buf: Vec<u8>) -> DeviceFuture<'_, BufResult> {
        let d = self.lock();
        let r = check_range(offset, buf.len() as u64, d.len() as u64).map(|()| {
            let start = offset as usize;
            let end = start + buf.len();
            buf.copy_from_slice(&d[start..end]);
        });
        drop(d);
        Box::pin(std::future::ready((buf, r)))
    }
    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceFuture<'_, BufResult> {
        let r = self.modify(offset, data.len() as u64, fua, |dst| {
            dst.copy_from_slice(&data)
        });
        Box::pin(std::future::ready((data, r)))
    }
    fn write_shared(
        &self,
        offset: u64,
        data: bytes::Bytes,
        fua: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        let r = self.modify(offset, data.len() as u64, fua, |dst| {
            dst.copy_from_slice(&data)
        });
        Box::pin(std::future::ready(r))
    }
    fn flush(&self) -> DeviceFuture<'_, Result<(), DeviceError>> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }
    fn trim(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        // Zeroing keeps tests deterministic; trim allows any content afterwards.
        let r = self.modify(offset, length, fua, |dst| dst.fill(0));
        Box::pin(std::future::ready(r))
    }
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
        _may_trim: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        let r = self.modify(offset, length, fua, |dst| dst.fill(0));
        Box::pin(std::future::ready(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_follows_the_document() {
        let io = |e| DeviceError::Io(std::io::Error::from_raw_os_error(e));
        assert_eq!(io(libc::EDQUOT).nbd_errno(), errno::ENOSPC);
        assert_eq!(io(libc::EFBIG).nbd_errno(), errno::ENOSPC);
        assert_eq!(io(libc::EROFS).nbd_errno(), errno::EPERM);
        assert_eq!(io(libc::ENXIO).nbd_errno(), errno::EIO);
        assert_eq!(DeviceError::ReadOnly.nbd_errno(), errno::EPERM);
        assert_eq!(DeviceError::Shutdown.nbd_errno(), errno::ESHUTDOWN);
    }

    #[tokio::test]
    async fn memory_device_reads_back_writes_and_refuses_when_secondary() {
        let d = MemoryDevice::new(8192);
        let (_, r) = d.write(4096, vec![7; 512], true).await;
        r.unwrap();
        let (b, r) = d.read(4096, vec![0; 512]).await;
        r.unwrap();
        assert!(b.iter().all(|&x| x == 7));
        assert_eq!(d.fua_count(), 1);
        d.set_writable(false);
        let (_, r) = d.write(0, vec![1; 512], false).await;
        assert!(matches!(r, Err(DeviceError::ReadOnly)));
        let (_, r) = d.read(8000, vec![0; 512]).await;
        assert!(matches!(r, Err(DeviceError::OutOfRange { .. })));
    }
}
