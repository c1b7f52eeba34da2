//! The volatile cache of one file on a lossy disk: what a power cut forgets.
//!
//! Plain bookkeeping over the file's *durable* copy (a [`Backing`]: the lower file,
//! which only flushes change). It decides what a read sees, what a write leaves behind
//! and what `fsync` writes down; it never opens, stats or mounts anything.
//!
//! ```text
//!   durable (lower file)   |AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA|.....
//!   valid_len              |<--------- still counts --->|            (a shrink cut it)
//!   pages (4 KiB)                 [data]        [zero]       [data]
//!   size                   |<------------------------------------------------->|
//!   what a reader sees: a cached page if any, else the durable bytes below
//!   `valid_len`, else zeros, up to `size`.
//! ```
//!
//! `fsync` cuts the durable copy to `valid_len`, writes every cached page, sets its length
//! to `size` and empties the cache. A power cut empties the cache without writing: the
//! file is again its durable copy.

use std::collections::BTreeMap;
use std::io;

/// Cache granularity: one page, as the kernel's page cache and LazyFS use.
pub const PAGE_BYTES: usize = 4096;
const PAGE: u64 = PAGE_BYTES as u64;

/// What a zero page costs against the bound: about its map entry. Charged so that
/// punching a huge durable range cannot grow the cache without limit.
pub const ZERO_PAGE_BYTES: u64 = 64;

/// Most pages written with one `pwritev` (the kernel's `IOV_MAX` is 1024).
const IOV_PAGES_MAX: usize = 256;

/// The durable copy of a file, as the cache needs it.
pub trait Backing {
    /// Reads at `offset`; fewer bytes than asked at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `bufs`, one after the other, from `offset`.
    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()>;
    /// Turns `[offset, offset + len)` into zeros, inside the current length.
    fn punch(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Sets the length (cuts or extends with zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The current length.
    fn len(&self) -> io::Result<u64>;
}

/// One cached page.
#[derive(Debug, Clone)]
enum Page {
    /// Its whole content.
    Data(Box<[u8; PAGE_BYTES]>),
    /// All zeros (a punched hole): costs a map entry, not a page of memory.
    Zero,
}

impl Page {
    /// Its charge against the disk's bound.
    fn cost(&self) -> u64 {
        match self {
            Page::Data(_) => PAGE,
            Page::Zero => ZERO_PAGE_BYTES,
        }
    }
}

/// The unflushed state of one file.
#[derive(Debug, Clone)]
pub struct FileCache {
    /// The length readers see.
    size: u64,
    /// Durable bytes at or past this offset no longer count: a shrink cut them (they
    /// read as zeros) though the durable copy still holds them until `fsync`.
    /// Invariant: `valid_len <= size`, and every cached byte past `size` is zero.
    valid_len: u64,
    pages: BTreeMap<u64, Page>,
    /// Memory charged for the pages (`Page::cost`): what the disk's bound counts.
    mem_bytes: u64,
}

impl FileCache {
    /// A clean cache over a durable copy of `durable_len` bytes.
    pub fn new(durable_len: u64) -> FileCache {
        FileCache {
            size: durable_len,
            valid_len: durable_len,
            pages: BTreeMap::new(),
            mem_bytes: 0,
        }
    }

    /// The length readers see.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Memory held by cached pages, as charged against the bound.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_bytes
    }

    /// Whether a flush would change nothing over a durable copy of `durable_len` bytes.
    pub fn is_clean(&self, durable_len: u64) -> bool {
        self.pages.is_empty() && self.size == durable_len && self.valid_len == durable_len
    }

    /// The memory a write of `len` bytes at `offset` may add (an upper bound), so that
    /// the caller can reserve it against the disk's bound first.
    pub fn bytes_to_write(&self, offset: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let (first, last) = (offset / PAGE, (offset + len - 1) / PAGE);
        let cached: u64 = self.pages.range(first..=last).map(|(_, p)| p.cost()).sum();
        (last - first + 1) * PAGE - cached
    }

    /// The memory zeroing `[offset, offset + len)` may add (an upper bound): its two
    /// partial end pages may become data pages, its whole pages below `valid_len`
    /// zero pages (whole pages past it read as zeros already and are left alone).
    pub fn bytes_to_zero(&self, offset: u64, len: u64) -> u64 {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return 0;
        }
        let first_full = offset.div_ceil(PAGE);
        let end_full = end / PAGE;
        let head = offset % PAGE != 0;
        let tail = end % PAGE != 0 && (!head || end / PAGE != offset / PAGE);
        let partial = u64::from(head) + u64::from(tail);
        let full_below_valid = end_full
            .min(self.valid_len.div_ceil(PAGE))
            .saturating_sub(first_full);
        partial * PAGE + full_below_valid * ZERO_PAGE_BYTES
    }

    /// Reads `[offset, offset + len)` as a reader sees it (short at the end of the file).
    pub fn read(&self, durable: &dyn Backing, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        // Walk the cached pages of the range; the gaps between them come from the
        // durable copy, each gap in one read.
        let mut pos = offset;
        for (&idx, page) in self.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let page_start = idx * PAGE;
            if page_start > pos {
                self.read_durable(durable, &mut out, offset, pos, page_start)?;
                pos = page_start;
            }
            let stop = (page_start + PAGE).min(end);
            let dst = &mut out[(pos - offset) as usize..(stop - offset) as usize];
            match page {
                Page::Data(d) => dst
                    .copy_from_slice(&d[(pos - page_start) as usize..(stop - page_start) as usize]),
                Page::Zero => dst.fill(0),
            }
            pos = stop;
        }
        if pos < end {
            self.read_durable(durable, &mut out, offset, pos, end)?;
        }
        Ok(out)
    }

    /// Fills `out[from - base .. to - base]` from the durable copy: bytes past
    /// `valid_len` or past its end stay zero.
    fn read_durable(
        &self,
        durable: &dyn Backing,
        out: &mut [u8],
        base: u64,
        from: u64,
        to: u64,
    ) -> io::Result<()> {
        let stop = to.min(self.valid_len);
        if from >= stop {
            return Ok(());
        }
        let buf = &mut out[(from - base) as usize..(stop - base) as usize];
        read_full(durable, buf, from)
    }

    /// Caches a write; the file grows if it ends past `size`. The caller reserved
    /// [`FileCache::bytes_to_write`] bytes. Returns the change of `mem_bytes`.
    pub fn write(&mut self, durable: &dyn Backing, offset: u64, data: &[u8]) -> io::Result<u64> {
        if data.is_empty() {
            // POSIX: writing nothing does not extend the file.
            return Ok(0);
        }
        let before = self.mem_bytes;
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let page_start = idx * PAGE;
            let stop = (page_start + PAGE).min(end);
            let src = &data[(pos - offset) as usize..(stop - offset) as usize];
            let within = (pos - page_start) as usize;
            let page = self.page_mut(durable, idx, src.len() == PAGE_BYTES)?;
            page[within..within + src.len()].copy_from_slice(src);
            pos = stop;
        }
        self.size = self.size.max(end);
        Ok(self.mem_bytes - before)
    }

    /// The data page `idx`, made so: from a cached page, or (unless the caller will
    /// overwrite it whole) from what a reader sees there now.
    fn page_mut(
        &mut self,
        durable: &dyn Backing,
        idx: u64,
        overwritten: bool,
    ) -> io::Result<&mut [u8; PAGE_BYTES]> {
        let fresh = match self.pages.get(&idx) {
            Some(Page::Data(_)) => None,
            Some(Page::Zero) => Some(Box::new([0u8; PAGE_BYTES])),
            None => {
                let mut page = Box::new([0u8; PAGE_BYTES]);
                if !overwritten {
                    let start = idx * PAGE;
                    let stop = (start + PAGE).min(self.valid_len).min(self.size);
                    if start < stop {
                        read_full(durable, &mut page[..(stop - start) as usize], start)?;
                    }
                }
                Some(page)
            }
        };
        if let Some(page) = fresh {
            if let Some(old) = self.pages.insert(idx, Page::Data(page)) {
                self.mem_bytes -= old.cost();
            }
            self.mem_bytes += PAGE;
        }
        match self.pages.get_mut(&idx) {
            Some(Page::Data(d)) => Ok(d),
            // Inserted just above.
            _ => Err(io::Error::other("lossy disk: page vanished")),
        }
    }

    /// Sets the length readers see: a shrink drops the pages past it (and zeros the
    /// rest of the last one), a growth reads as zeros. Returns the memory freed.
    pub fn set_size(&mut self, size: u64) -> u64 {
        let before = self.mem_bytes;
        if size < self.size {
            let keep = size.div_ceil(PAGE);
            let dropped = self.pages.split_off(&keep);
            self.mem_bytes -= dropped.values().map(Page::cost).sum::<u64>();
            if size % PAGE != 0 {
                if let Some(Page::Data(d)) = self.pages.get_mut(&(size / PAGE)) {
                    d[(size % PAGE) as usize..].fill(0);
                }
            }
            self.valid_len = self.valid_len.min(size);
        }
        self.size = size;
        before - self.mem_bytes
    }

    /// Turns `[offset, offset + len)` into zeros without changing the size (a punched
    /// hole; `fallocate` zero-range). The caller reserved [`FileCache::bytes_to_zero`].
    /// Returns the change of `mem_bytes` (positive: memory added).
    pub fn zero(&mut self, durable: &dyn Backing, offset: u64, len: u64) -> io::Result<i64> {
        let before = self.mem_bytes as i64;
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(0);
        }
        // Partial pages: zero their part of the content (unless nothing is there: an
        // uncached page past `valid_len` reads as zeros already).
        let mut partial = vec![(offset, end.min((offset / PAGE + 1) * PAGE))];
        if end % PAGE != 0 && end / PAGE != offset / PAGE {
            partial.push(((end / PAGE) * PAGE, end));
        }
        for (from, to) in partial {
            let idx = from / PAGE;
            let page_start = idx * PAGE;
            if to - from == PAGE {
                continue; // a whole page: below
            }
            if self.pages.contains_key(&idx) || page_start < self.valid_len {
                let within = (from - page_start) as usize;
                let page = self.page_mut(durable, idx, false)?;
                page[within..within + (to - from) as usize].fill(0);
            }
        }
        // Whole pages: cached ones become zero pages; uncached ones too where durable
        // bytes would show through (below `valid_len`); past it there is nothing to do.
        let (first_full, end_full) = (offset.div_ceil(PAGE), end / PAGE);
        if first_full < end_full {
            for (_, page) in self.pages.range_mut(first_full..end_full) {
                self.mem_bytes -= page.cost();
                *page = Page::Zero;
                self.mem_bytes += ZERO_PAGE_BYTES;
            }
            let below_valid = end_full.min(self.valid_len.div_ceil(PAGE));
            for idx in first_full..below_valid {
                if let std::collections::btree_map::Entry::Vacant(e) = self.pages.entry(idx) {
                    e.insert(Page::Zero);
                    self.mem_bytes += ZERO_PAGE_BYTES;
                }
            }
        }
        Ok(self.mem_bytes as i64 - before)
    }

    /// Writes everything down: cuts the durable copy to `valid_len`, writes the cached
    /// pages (in runs, one `pwritev` per run), sets its length to `size`, and empties
    /// the cache. Returns the memory freed. On an error the cache is kept (a retry
    /// writes it again).
    pub fn flush(&mut self, durable: &dyn Backing) -> io::Result<u64> {
        let mut durable_len = durable.len()?;
        if self.valid_len < durable_len {
            durable.set_len(self.valid_len)?;
            durable_len = self.valid_len;
        }
        let mut run: Vec<&[u8]> = Vec::new();
        let mut run_start = 0u64;
        let mut zero_run: Option<(u64, u64)> = None;
        for (&idx, page) in &self.pages {
            let start = idx * PAGE;
            // The last page holds bytes past `size` (zeros): write only up to `size`.
            let len = PAGE.min(self.size.saturating_sub(start)) as usize;
            if len == 0 {
                continue;
            }
            match page {
                Page::Data(d) => {
                    if let Some((zs, ze)) = zero_run.take() {
                        punch_within(durable, zs, ze, durable_len)?;
                    }
                    let contiguous = run_start + run_len(&run) == start;
                    if !run.is_empty() && (!contiguous || run.len() == IOV_PAGES_MAX) {
                        durable.write_all_at(&run, run_start)?;
                        durable_len = durable_len.max(run_start + run_len(&run));
                        run.clear();
                    }
                    if run.is_empty() {
                        run_start = start;
                    }
                    run.push(&d[..len]);
                }
                Page::Zero => {
                    if !run.is_empty() {
                        durable.write_all_at(&run, run_start)?;
                        durable_len = durable_len.max(run_start + run_len(&run));
                        run.clear();
                    }
                    zero_run = match zero_run {
                        Some((zs, ze)) if ze == start => Some((zs, start + len as u64)),
                        Some((zs, ze)) => {
                            punch_within(durable, zs, ze, durable_len)?;
                            Some((start, start + len as u64))
                        }
                        None => Some((start, start + len as u64)),
                    };
                }
            }
        }
        if !run.is_empty() {
            durable.write_all_at(&run, run_start)?;
        }
        if let Some((zs, ze)) = zero_run {
            punch_within(durable, zs, ze, durable.len()?)?;
        }
        if durable.len()? != self.size {
            durable.set_len(self.size)?;
        }
        let freed = self.mem_bytes;
        self.pages.clear();
        self.mem_bytes = 0;
        self.valid_len = self.size;
        Ok(freed)
    }
}

fn run_len(run: &[&[u8]]) -> u64 {
    run.iter().map(|b| b.len() as u64).sum()
}

/// Punches `[start, end)` where the durable copy has bytes (past its end it reads
/// as zeros already, and will when it grows).
fn punch_within(durable: &dyn Backing, start: u64, end: u64, durable_len: u64) -> io::Result<()> {
    let end = end.min(durable_len);
    if start < end {
        durable.punch(start, end - start)?;
    }
    Ok(())
}

/// Reads as much of `buf` as the durable copy has; the rest stays zero.
fn read_full(durable: &dyn Backing, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match durable.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// An in-memory durable copy.
    #[derive(Default)]
    struct Mem(RefCell<Vec<u8>>);

    impl Backing for Mem {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let v = self.0.borrow();
            let start = (offset as usize).min(v.len());
            let n = buf.len().min(v.len() - start);
            buf[..n].copy_from_slice(&v[start..start + n]);
            Ok(n)
        }
        fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
            let mut v = self.0.borrow_mut();
            let mut pos = offset as usize;
            for b in bufs {
                if v.len() < pos + b.len() {
                    v.resize(pos + b.len(), 0);
                }
                v[pos..pos + b.len()].copy_from_slice(b);
                pos += b.len();
            }
            Ok(())
        }
        fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
            let mut v = self.0.borrow_mut();
            let end = ((offset + len) as usize).min(v.len());
            v[offset as usize..end].fill(0);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.borrow_mut().resize(len as usize, 0);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.borrow().len() as u64)
        }
    }

    fn read_all(c: &FileCache, m: &Mem) -> Vec<u8> {
        c.read(m, 0, u64::MAX / 2).unwrap()
    }

    #[test]
    fn a_write_is_seen_until_dropped_and_kept_once_flushed() {
        let m = Mem(RefCell::new(b"durable".to_vec()));
        let mut c = FileCache::new(7);
        c.write(&m, 2, b"XY").unwrap();
        assert_eq!(read_all(&c, &m), b"duXYble");
        assert_eq!(
            &*m.0.borrow(),
            b"durable",
            "nothing reaches the durable copy"
        );
        assert_eq!(c.mem_bytes(), PAGE);
        // A power cut: the cache goes, the durable copy is what remains.
        let c = FileCache::new(m.len().unwrap());
        assert_eq!(read_all(&c, &m), b"durable");
        let mut c = c;
        c.write(&m, 2, b"XY").unwrap();
        assert_eq!(c.flush(&m).unwrap(), PAGE);
        assert_eq!(&*m.0.borrow(), b"duXYble");
        assert!(c.is_clean(7));
    }

    #[test]
    fn shrink_then_grow_reads_zeros_not_old_bytes() {
        let m = Mem(RefCell::new(vec![7u8; 10_000]));
        let mut c = FileCache::new(10_000);
        c.set_size(100);
        c.set_size(9_000);
        let seen = read_all(&c, &m);
        assert_eq!(&seen[..100], &[7u8; 100][..]);
        assert!(seen[100..].iter().all(|&b| b == 0));
        c.flush(&m).unwrap();
        assert_eq!(&*m.0.borrow(), &seen);
    }

    #[test]
    fn bytes_to_write_counts_only_new_pages() {
        let m = Mem::default();
        let mut c = FileCache::new(0);
        assert_eq!(c.bytes_to_write(4000, 200), 2 * PAGE);
        c.write(&m, 4000, &[1; 200]).unwrap();
        assert_eq!(c.bytes_to_write(0, 3 * PAGE), PAGE);
        assert_eq!(c.bytes_to_zero(10, 10), PAGE, "an upper bound");
        // Punching a huge durable range costs map entries, and is charged for them.
        let mut big = FileCache::new(1 << 40);
        assert_eq!(big.bytes_to_zero(0, 1 << 40), (1 << 28) * ZERO_PAGE_BYTES);
        // Past `valid_len` nothing reads through: nothing to charge, nothing to walk.
        big.set_size(0);
        big.set_size(1 << 40);
        assert_eq!(big.bytes_to_zero(0, 1 << 40), 0);
        assert_eq!(big.zero(&m, 0, 1 << 40).unwrap(), 0);
    }

    /// Random writes, truncations, zeroings, flushes and power cuts against a reference
    /// made of two plain byte vectors (what readers see, what is durable).
    #[test]
    fn random_operations_match_the_reference() {
        let mut x: u64 = 0x51f1_5eed_0000_0001;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        for round in 0..200 {
            let m = Mem::default();
            let mut c = FileCache::new(0);
            let mut seen: Vec<u8> = Vec::new();
            for step in 0..60 {
                match next(10) {
                    0..=3 => {
                        let off = next(40_000);
                        let len = next(9_000) as usize;
                        let byte = (next(255) + 1) as u8;
                        c.write(&m, off, &vec![byte; len]).unwrap();
                        if len > 0 {
                            if seen.len() < off as usize + len {
                                seen.resize(off as usize + len, 0);
                            }
                            seen[off as usize..off as usize + len].fill(byte);
                        }
                    }
                    4 | 5 => {
                        let size = next(45_000);
                        c.set_size(size);
                        seen.resize(size as usize, 0);
                    }
                    6 => {
                        let off = next(40_000);
                        let len = next(20_000);
                        c.zero(&m, off, len).unwrap();
                        let end = ((off + len) as usize).min(seen.len());
                        if (off as usize) < end {
                            seen[off as usize..end].fill(0);
                        }
                    }
                    7 | 8 => {
                        c.flush(&m).unwrap();
                        assert_eq!(&*m.0.borrow(), &seen, "round {round} step {step}: flush");
                    }
                    _ => {
                        c = FileCache::new(m.len().unwrap());
                        seen = m.0.borrow().clone();
                    }
                }
                assert_eq!(c.size(), seen.len() as u64, "round {round} step {step}");
                let off = next(seen.len() as u64 + 1);
                let len = next(20_000);
                let got = c.read(&m, off, len).unwrap();
                let end = ((off + len) as usize).min(seen.len());
                let want = seen.get(off as usize..end).unwrap_or(&[]);
                assert_eq!(got, want, "round {round} step {step}: read {off}+{len}");
                let charged: u64 = c.pages.values().map(Page::cost).sum();
                assert_eq!(c.mem_bytes(), charged, "round {round} step {step}");
                let past_end = c.pages.keys().any(|&i| i * PAGE >= c.size());
                assert!(!past_end, "round {round} step {step}: a page past the end");
            }
        }
    }
}
