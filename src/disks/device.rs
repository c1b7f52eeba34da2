//! The NBD face of a replicated disk: a [`BlockDevice`] over a [`NodeHandle`].
//!
//! The core takes requests of whole 512-byte sectors, at most 1 MiB each; NBD clients
//! may send any byte range up to 32 MiB. Larger requests are split into 1 MiB pieces
//! submitted at once (in order, on the first poll, as the server expects); requests that
//! are not sector-aligned are widened to sectors — a write then becomes a
//! read-modify-write, done under an exclusive lock so no other write can slip in
//! between the read and the write of the shared sectors.
//!
//! Roles: only a primary serves I/O. On a secondary the core refuses reads and writes
//! (`NotPrimary`), which the server answers with `EPERM`; FLUSH succeeds (nothing to do).
//! TRIM is a hint the disk ignores (NBD lets trimmed data read back as anything, and
//! ignoring it keeps both sides identical); WRITE_ZEROES writes zeroes through the
//! replication path like any write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tandem_disk::core::RequestError;
use tandem_disk::node::{NodeError, NodeHandle};
use tandem_nbd::{BlockDevice, BufResult, Capabilities, DeviceError, DeviceFuture};

/// Sector size the core works in.
const SECTOR_BYTES: u64 = 512;
/// Largest request the core takes.
const PIECE_BYTES: u64 = 1 << 20;
/// Zeroes for WRITE_ZEROES pieces.
static ZEROES: [u8; PIECE_BYTES as usize] = [0; PIECE_BYTES as usize];

/// A replicated disk as an NBD block device.
pub struct ReplicatedDevice {
    node: NodeHandle,
    size_bytes: u64,
    primary: Arc<AtomicBool>,
    /// Read (shared) for aligned writes, write (exclusive) for read-modify-writes.
    rmw: tokio::sync::RwLock<()>,
}

impl ReplicatedDevice {
    /// Serves `node`; `primary` is kept current by the disk service (the core checks the
    /// role again on every request).
    pub fn new(node: NodeHandle, primary: Arc<AtomicBool>) -> Self {
        ReplicatedDevice {
            size_bytes: node.size_bytes(),
            node,
            primary,
            rmw: tokio::sync::RwLock::new(()),
        }
    }
}

fn request_error(e: RequestError) -> DeviceError {
    match e {
        RequestError::NotPrimary => DeviceError::ReadOnly,
        RequestError::OutOfRange | RequestError::Misaligned => DeviceError::OutOfRange {
            offset: 0,
            length: 0,
            size_bytes: 0,
        },
        RequestError::Io(why) => DeviceError::Io(std::io::Error::other(why)),
        RequestError::DuplicateId => DeviceError::Io(std::io::Error::other("duplicate id")),
    }
}

fn node_error(_: NodeError) -> DeviceError {
    DeviceError::Shutdown
}

fn aligned(offset: u64, len: u64) -> bool {
    offset % SECTOR_BYTES == 0 && len % SECTOR_BYTES == 0 && len > 0
}

/// The sector-aligned range covering `offset..offset+len`.
fn widen(offset: u64, len: u64) -> (u64, u64) {
    let start = offset / SECTOR_BYTES * SECTOR_BYTES;
    let end = (offset + len).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    (start, end - start)
}

impl ReplicatedDevice {
    /// Reads an aligned range of any length, piece by piece (all pieces in flight).
    async fn read_aligned(&self, offset: u64, len: u64) -> Result<Vec<u8>, DeviceError> {
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(PIECE_BYTES);
            pieces.push(self.node.read(offset + at, n as u32));
            at += n;
        }
        let mut out = Vec::with_capacity(len as usize);
        for r in futures_join(pieces).await {
            let data = r.map_err(node_error)?.map_err(request_error)?;
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    /// Writes an aligned buffer, in pieces submitted at once.
    async fn write_aligned(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), DeviceError> {
        let len = data.len() as u64;
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(PIECE_BYTES);
            pieces.push(self.node.write(
                offset + at,
                data.slice(at as usize..(at + n) as usize),
                fua,
            ));
            at += n;
        }
        for r in futures_join(pieces).await {
            r.map_err(node_error)?.map_err(request_error)?;
        }
        Ok(())
    }

    async fn write_any(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), DeviceError> {
        let len = data.len() as u64;
        if aligned(offset, len) {
            // Shared lock: taken at once unless a read-modify-write runs.
            let _guard = self.rmw.read().await;
            return self.write_aligned(offset, data, fua).await;
        }
        let _guard = self.rmw.write().await;
        let (start, wide) = widen(offset, len);
        let mut buf = self.read_aligned(start, wide).await?;
        let skip = (offset - start) as usize;
        buf[skip..skip + data.len()].copy_from_slice(&data);
        self.write_aligned(start, Bytes::from(buf), fua).await
    }
}

/// Awaits every future in order (they were all submitted when created: the node's
/// channel sends happen on first poll, so poll them all before waiting on any).
async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

impl BlockDevice for ReplicatedDevice {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn writable(&self) -> bool {
        self.primary.load(Ordering::Relaxed)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            flush: true,
            trim: true,
            write_zeroes: true,
            // One core orders every connection's writes and its flush covers them all.
            multi_conn: true,
            rotational: false,
        }
    }

    fn read(&self, offset: u64, mut buf: Vec<u8>) -> DeviceFuture<'_, BufResult> {
        Box::pin(async move {
            let len = buf.len() as u64;
            if len == 0 {
                return (buf, Ok(()));
            }
            if aligned(offset, len) && len <= PIECE_BYTES {
                return match self.node.read(offset, len as u32).await {
                    Ok(Ok(data)) if data.len() == buf.len() => {
                        buf.copy_from_slice(&data);
                        (buf, Ok(()))
                    }
                    Ok(Ok(_)) => (
                        buf,
                        Err(DeviceError::Io(std::io::Error::other("short read"))),
                    ),
                    Ok(Err(e)) => (buf, Err(request_error(e))),
                    Err(e) => (buf, Err(node_error(e))),
                };
            }
            let (start, wide) = widen(offset, len);
            match self.read_aligned(start, wide).await {
                Ok(data) => {
                    let skip = (offset - start) as usize;
                    buf.copy_from_slice(&data[skip..skip + len as usize]);
                    (buf, Ok(()))
                }
                Err(e) => (buf, Err(e)),
            }
        })
    }

    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceFuture<'_, BufResult> {
        Box::pin(async move {
            if data.is_empty() {
                return (data, Ok(()));
            }
            // The data goes to the link and the local disk: no buffer comes back.
            (
                Vec::new(),
                self.write_any(offset, Bytes::from(data), fua).await,
            )
        })
    }

    fn write_shared(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        // Kept as they are: memory the caller aligned goes to `O_DIRECT` uncopied.
        Box::pin(async move {
            if data.is_empty() {
                return Ok(());
            }
            self.write_any(offset, data, fua).await
        })
    }

    fn flush(&self) -> DeviceFuture<'_, Result<(), DeviceError>> {
        Box::pin(async move {
            if !self.primary.load(Ordering::Relaxed) {
                // A secondary has nothing of the frontend's to make durable.
                return Ok(());
            }
            match self.node.flush().await {
                Ok(Ok(())) => Ok(()),
                // Demoted between the check and the flush: nothing left to flush.
                Ok(Err(RequestError::NotPrimary)) => Ok(()),
                Ok(Err(e)) => Err(request_error(e)),
                Err(e) => Err(node_error(e)),
            }
        })
    }

    fn trim(
        &self,
        _offset: u64,
        _length: u64,
        fua: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        Box::pin(async move {
            if !self.primary.load(Ordering::Relaxed) {
                return Err(DeviceError::ReadOnly);
            }
            if fua { self.flush().await } else { Ok(()) }
        })
    }

    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
        _may_trim: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        Box::pin(async move {
            if length == 0 {
                return Ok(());
            }
            let (start, wide) = widen(offset, length);
            if start != offset || wide != length {
                // Edges not sector-aligned: the general path (read-modify-write).
                return self
                    .write_any(offset, Bytes::from(vec![0; length as usize]), fua)
                    .await;
            }
            let _guard = self.rmw.read().await;
            // At most 32 pieces (32 MiB) in flight at once, so a huge range cannot
            // flood the node's queue.
            let mut at = 0;
            while at < length {
                let mut pieces = Vec::new();
                while at < length && pieces.len() < 32 {
                    let n = (length - at).min(PIECE_BYTES);
                    pieces.push(self.node.write(
                        offset + at,
                        Bytes::from_static(&ZEROES[..n as usize]),
                        fua,
                    ));
                    at += n;
                }
                for r in futures_join(pieces).await {
                    r.map_err(node_error)?.map_err(request_error)?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_covers_whole_sectors() {
        assert_eq!(widen(0, 512), (0, 512));
        assert_eq!(widen(1, 1), (0, 512));
        assert_eq!(widen(511, 2), (0, 1024));
        assert_eq!(widen(1000, 4096), (512, 4608));
        assert!(aligned(4096, 4096));
        assert!(!aligned(4096, 0));
        assert!(!aligned(4095, 4096));
    }
}
