//! The NBD face of a replicated disk: a [`BlockDevice`] over a [`DriverHandle`].
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
//! replication path like any write: whole sectors from a static zero buffer in 1 MiB
//! pieces, and a partial sector at either edge by read-modify-write of that one sector
//! ([`zero_plan`]) — never a buffer as long as the request (up to 4 GiB), which could
//! take down the disk service and the heartbeat thread with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tandem_disk::core::RequestError;
use tandem_disk::driver::{DriverError, DriverHandle};
use tandem_nbd::{BlockDevice, BufResult, Capabilities, DeviceError, DeviceFuture};

/// Sector size the core works in.
const SECTOR_BYTES: u64 = 512;
/// Largest request the core takes.
const PIECE_BYTES: u64 = 1 << 20;
/// Zeroes for WRITE_ZEROES pieces.
static ZEROES: [u8; PIECE_BYTES as usize] = [0; PIECE_BYTES as usize];

/// A replicated disk as an NBD block device.
pub struct ReplicatedDevice {
    node: DriverHandle,
    size_bytes: u64,
    primary: Arc<AtomicBool>,
    /// Read (shared) for aligned writes, write (exclusive) for read-modify-writes.
    rmw: tokio::sync::RwLock<()>,
}

impl ReplicatedDevice {
    /// Serves `node`; `primary` is kept current by the disk service (the core checks the
    /// role again on every request).
    pub fn new(node: DriverHandle, primary: Arc<AtomicBool>) -> Self {
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

fn node_error(_: DriverError) -> DeviceError {
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

/// How a WRITE_ZEROES of `length` bytes at `offset` is done: the partial sectors at its
/// edges (each within one sector, so read-modify-written with at most a sector of
/// memory) and the whole sectors between them (written from [`ZEROES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ZeroPlan {
    /// Unaligned bytes at the start: (offset, length), length < one sector.
    head: Option<(u64, u64)>,
    /// Whole sectors: (offset, length), both multiples of the sector size.
    middle: Option<(u64, u64)>,
    /// Unaligned bytes at the end: (offset, length), length < one sector.
    tail: Option<(u64, u64)>,
}

fn zero_plan(offset: u64, length: u64) -> ZeroPlan {
    let end = offset + length;
    let first_whole = offset.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    let last_whole = end / SECTOR_BYTES * SECTOR_BYTES;
    let head_end = first_whole.min(end);
    let head = (offset < head_end).then(|| (offset, head_end - offset));
    let middle = (first_whole < last_whole).then(|| (first_whole, last_whole - first_whole));
    // A tail inside the head's sector was covered by the head.
    let tail_start = last_whole.max(head_end);
    let tail = (tail_start < end).then(|| (tail_start, end - tail_start));
    ZeroPlan { head, middle, tail }
}

impl ReplicatedDevice {
    /// Writes zeroes over whole sectors from the static buffer: 1 MiB pieces, at most 32
    /// in flight at once, so a huge range neither allocates nor floods the node's queue.
    async fn zero_aligned(&self, offset: u64, length: u64, fua: bool) -> Result<(), DeviceError> {
        let _guard = self.rmw.read().await;
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
    }

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
            let plan = zero_plan(offset, length);
            // Edges: a read-modify-write of one sector each (under the exclusive lock).
            for (at, n) in plan.head.into_iter().chain(plan.tail) {
                self.write_any(at, Bytes::from(vec![0; n as usize]), fua)
                    .await?;
            }
            match plan.middle {
                Some((at, n)) => self.zero_aligned(at, n, fua).await,
                None => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WRITE_ZEROES is cut into at most one partial sector at each edge (the only
    /// memory it allocates) and whole sectors in between, which together cover exactly
    /// the requested bytes: even 4 GiB with unaligned edges needs under a KiB of buffers.
    #[test]
    fn zero_plans_cover_the_range_with_at_most_a_sector_per_edge() {
        let cases = [
            (0, 512),
            (1, 10),
            (511, 2),
            (1, 1023),
            (0, 10),
            (1000, 4096),
            (512, 4096),
            (3, (4 << 30) - 1),
            (1 << 20, (1 << 20) + 1),
        ];
        for (offset, length) in cases {
            let p = zero_plan(offset, length);
            let parts: Vec<(u64, u64)> = p.head.into_iter().chain(p.middle).chain(p.tail).collect();
            let mut at = offset;
            let mut sorted = parts.clone();
            sorted.sort_unstable();
            for (o, n) in sorted {
                assert_eq!(o, at, "{offset}+{length}: gap or overlap in {parts:?}");
                assert!(n > 0);
                at += n;
            }
            assert_eq!(at, offset + length, "{offset}+{length}: {parts:?}");
            for (o, n) in p.head.into_iter().chain(p.tail) {
                assert!(n < SECTOR_BYTES, "{offset}+{length}: edge {n} bytes");
                assert_eq!(
                    o / SECTOR_BYTES,
                    (o + n - 1) / SECTOR_BYTES,
                    "edge in one sector"
                );
            }
            if let Some((o, n)) = p.middle {
                assert!(aligned(o, n), "{offset}+{length}: middle {o}+{n}");
            }
        }
    }

    /// A large WRITE_ZEROES with unaligned edges on a real (standalone) replicated disk:
    /// exactly the requested bytes read back as zero, the bytes around them keep their
    /// data, and the edges of a range inside one sector work too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unaligned_write_zeroes_zero_exactly_their_range() {
        use tandem_disk::core::{Config, DiskFencing};
        use tandem_disk::driver::{self, DriverConfig};
        use tandem_disk::meta::{MetaLocation, MetaStore};
        let dir = std::env::temp_dir().join(format!("tandem-zeroes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let backing = dir.join("z.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(48 << 20)
            .unwrap();
        MetaStore::create(&backing, &MetaLocation::Internal, 7, 1, false).unwrap();
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let n = driver::start(DriverConfig {
            backing,
            meta: MetaLocation::Internal,
            listen: free(),
            peer: free(),
            secret: b"z".to_vec(),
            connect_interval: std::time::Duration::from_secs(1),
            core: Config {
                fencing: DiskFencing::DontCare,
                ..Config::default()
            },
        })
        .await
        .unwrap();
        n.disconnect().await.unwrap();
        n.promote(true).await.unwrap().unwrap();
        let dev = ReplicatedDevice::new(n.clone(), Arc::new(AtomicBool::new(true)));
        let len = 40u64 << 20;
        let (w, r) = dev.write(0, vec![0xee; len as usize], false).await;
        assert!(r.is_ok() && w.is_empty(), "{r:?}");
        let (offset, length) = (1000u64, (33u64 << 20) + 77);
        dev.write_zeroes(offset, length, false, true).await.unwrap();
        dev.write_zeroes(offset + length + 600, 7, true, true)
            .await
            .unwrap();
        let (back, r) = dev.read(0, vec![1; len as usize]).await;
        r.unwrap();
        let zero_end = (offset + length) as usize;
        assert!(
            back[..offset as usize].iter().all(|&b| b == 0xee),
            "before the range"
        );
        assert!(
            back[offset as usize..zero_end].iter().all(|&b| b == 0),
            "the range"
        );
        assert!(
            back[zero_end..zero_end + 600].iter().all(|&b| b == 0xee),
            "between"
        );
        assert!(
            back[zero_end + 600..zero_end + 607].iter().all(|&b| b == 0),
            "small range"
        );
        assert!(back[zero_end + 607..].iter().all(|&b| b == 0xee), "after");
        n.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

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
