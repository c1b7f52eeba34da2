//! Simulated storage for disk cores: a data area with a volatile write cache that a
//! power loss partly forgets, and metadata that lands (or not) as a whole.
//!
//! Completed writes sit in the cache until a flush; FUA writes are durable when they
//! complete. A crash keeps a random subset of the cached writes (a disk's cache drains
//! in no particular order), and a metadata write in flight either landed — with the
//! data flush its contract puts before it — or did not.

use bytes::Bytes;
use tandem_disk::core::activity_log::AlTransaction;
use tandem_disk::core::bitmap::Bitmap;
use tandem_disk::core::generation::Generations;
use tandem_disk::core::{BITMAP_WORDS_PER_BLOCK, MetaFlags, MetaState, MetaWrite};

use tandem_rng::Rng;

/// The data area: durable bytes plus a volatile cache of completed writes.
#[derive(Debug, Clone)]
pub struct DiskModel {
    durable: Vec<u8>,
    cache: Vec<(u64, Bytes, bool)>,
}

impl DiskModel {
    /// A zeroed disk of `size` bytes.
    pub fn new(size: usize) -> DiskModel {
        DiskModel {
            durable: vec![0; size],
            cache: Vec::new(),
        }
    }

    /// What a read sees now (cache over durable data).
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = self.durable[offset as usize..offset as usize + len].to_vec();
        for (o, d, _) in &self.cache {
            let (s, e) = (*o, *o + d.len() as u64);
            let (rs, re) = (offset, offset + len as u64);
            if s < re && rs < e {
                let from = s.max(rs);
                let to = e.min(re);
                out[(from - rs) as usize..(to - rs) as usize]
                    .copy_from_slice(&d[(from - s) as usize..(to - s) as usize]);
            }
        }
        out
    }

    /// A completed write (kept across a crash when `fua`; in order with the cache
    /// either way, so a newer write is never hidden under an older cached one).
    pub fn write(&mut self, offset: u64, data: Bytes, fua: bool) {
        self.cache.push((offset, data, fua));
    }

    /// Makes every completed write durable.
    pub fn flush(&mut self) {
        for (o, d, _) in std::mem::take(&mut self.cache) {
            self.durable[o as usize..o as usize + d.len()].copy_from_slice(&d);
        }
    }

    /// A power loss: FUA writes and a random half of the other cached writes reach the
    /// medium (in completion order).
    pub fn crash(&mut self, rng: &mut Rng) {
        for (o, d, fua) in std::mem::take(&mut self.cache) {
            if fua || rng.below(2) == 0 {
                self.durable[o as usize..o as usize + d.len()].copy_from_slice(&d);
            }
        }
    }
}

/// The metadata as stored.
#[derive(Debug, Clone)]
pub struct StoredMeta {
    /// Node id of the metadata.
    pub node_id: u64,
    /// Generations.
    pub generations: Generations,
    /// Flags.
    pub flags: MetaFlags,
    /// Bitmap words.
    pub bitmap_words: Vec<u64>,
    /// Newest activity-log transaction.
    pub al: Option<AlTransaction>,
}

impl StoredMeta {
    /// Fresh metadata (`create-md`) for a disk of `size` bytes.
    pub fn fresh(node_id: u64, size: u64) -> StoredMeta {
        StoredMeta {
            node_id,
            generations: Generations::just_created(),
            flags: MetaFlags::default(),
            bitmap_words: Bitmap::new(size).words().to_vec(),
            al: None,
        }
    }

    /// Applies one durable metadata write.
    pub fn apply(&mut self, w: &MetaWrite) {
        match w {
            MetaWrite::Superblock(s) => {
                self.generations = s.generations;
                self.flags = s.flags;
            }
            MetaWrite::BitmapBlock { index, words } => {
                let start = *index as usize * BITMAP_WORDS_PER_BLOCK;
                for (i, w) in words.iter().enumerate() {
                    if let Some(x) = self.bitmap_words.get_mut(start + i) {
                        *x = *w;
                    }
                }
            }
            MetaWrite::ActivityLog(t) => self.al = Some(t.clone()),
        }
    }

    /// What a core attaches to.
    pub fn state(&self, size: u64, al_extents: u32) -> MetaState {
        MetaState {
            node_id: self.node_id,
            size_bytes: size,
            generations: self.generations,
            flags: self.flags,
            al_extents,
            bitmap: Bitmap::from_words(size, &self.bitmap_words),
            al: self.al.clone(),
        }
    }
}

/// Local I/O a core asked for and the simulator has not completed yet.
#[derive(Debug, Clone)]
pub enum PendingIo {
    /// A write.
    Write {
        /// Offset.
        offset: u64,
        /// Data.
        data: Bytes,
        /// Force unit access.
        fua: bool,
    },
    /// A read.
    Read {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// A flush.
    Flush,
    /// A metadata write.
    Meta(MetaWrite),
}

/// One simulated node's storage for one disk.
#[derive(Debug, Clone)]
pub struct Storage {
    /// The data area.
    pub disk: DiskModel,
    /// The metadata.
    pub meta: StoredMeta,
}

impl Storage {
    /// Carries out one I/O; returns what the core is told.
    pub fn complete(
        &mut self,
        io: PendingIo,
    ) -> Result<Option<Bytes>, tandem_disk::core::IoFailure> {
        match io {
            PendingIo::Write { offset, data, fua } => {
                self.disk.write(offset, data, fua);
                Ok(None)
            }
            PendingIo::Read { offset, len } => {
                Ok(Some(Bytes::from(self.disk.read(offset, len as usize))))
            }
            PendingIo::Flush => {
                self.disk.flush();
                Ok(None)
            }
            PendingIo::Meta(w) => {
                // PersistMeta's contract: data written before it is durable first.
                self.disk.flush();
                self.meta.apply(&w);
                Ok(None)
            }
        }
    }

    /// A power loss with `pending` I/O in flight: a metadata write may have landed.
    pub fn crash(&mut self, pending: Vec<PendingIo>, rng: &mut Rng) {
        for io in pending {
            if let PendingIo::Meta(w) = io
                && rng.below(2) == 0
            {
                self.disk.flush();
                self.meta.apply(&w);
            }
        }
        self.disk.crash(rng);
    }
}
