//! Metadata writes (superblock, bitmap blocks, activity log) queued one at a time,
//! the dirty bitmap's bookkeeping, and new generation identifiers.

use super::activity_log::{self};
use super::bitmap::BLOCK_BYTES;
use super::*;

impl Core {
    pub(super) fn enqueue_meta(&mut self, w: MetaWrite) {
        if self.disk == DiskState::Diskless {
            return;
        }
        self.meta_queue.push_back(w);
        self.meta_enqueued += 1;
    }

    pub(super) fn persist_superblock(&mut self) {
        let update = SuperblockUpdate {
            generations: self.gens,
            flags: self.flags,
        };
        self.enqueue_meta(MetaWrite::Superblock(update));
    }

    pub(super) fn bitmap_block(&self, index: u32) -> MetaWrite {
        let words = self.bitmap.words();
        let start = (index as usize * BITMAP_WORDS_PER_BLOCK).min(words.len());
        let end = (start + BITMAP_WORDS_PER_BLOCK).min(words.len());
        MetaWrite::BitmapBlock {
            index,
            words: words[start..end].to_vec(),
        }
    }

    pub(super) fn persist_bitmap_for_extent(&mut self, extent: u32) {
        let first_block = u64::from(extent) * (activity_log::EXTENT_BYTES / BLOCK_BYTES);
        let n = activity_log::EXTENT_BYTES / BLOCK_BYTES;
        let first = (first_block / 64 / BITMAP_WORDS_PER_BLOCK as u64) as u32;
        let last = ((first_block + n - 1) / 64 / BITMAP_WORDS_PER_BLOCK as u64) as u32;
        for b in first..=last {
            if self.bitmap_dirty_blocks.remove(&b) {
                let w = self.bitmap_block(b);
                self.enqueue_meta(w);
            }
        }
    }

    /// When the tick persists the dirty bitmap blocks, if there are any.
    pub(super) fn bitmap_persist_deadline_ms(&self) -> Option<u64> {
        (!self.bitmap_dirty_blocks.is_empty()).then(|| {
            self.bitmap_persisted_ms
                .saturating_add(self.cfg.bitmap_persist_interval_ms)
        })
    }

    pub(super) fn persist_all_dirty_bitmap(&mut self) {
        let blocks: Vec<u32> = std::mem::take(&mut self.bitmap_dirty_blocks)
            .into_iter()
            .collect();
        for b in blocks {
            let w = self.bitmap_block(b);
            self.enqueue_meta(w);
        }
        self.bitmap_persisted_ms = self.now_ms;
    }

    pub(super) fn persist_whole_bitmap(&mut self) {
        let n = self
            .bitmap
            .words()
            .len()
            .div_ceil(BITMAP_WORDS_PER_BLOCK)
            .max(1);
        self.bitmap_dirty_blocks.clear();
        for b in 0..n as u32 {
            let w = self.bitmap_block(b);
            self.enqueue_meta(w);
        }
    }

    pub(super) fn mark_bitmap_dirty(&mut self, first_block: u64, n: u64) {
        if n == 0 {
            return;
        }
        let per = 64 * BITMAP_WORDS_PER_BLOCK as u64;
        for b in (first_block / per)..=((first_block + n - 1) / per) {
            self.bitmap_dirty_blocks.insert(b as u32);
        }
    }

    pub(super) fn set_bits(&mut self, first: u64, n: u64) {
        if self.bitmap.set_range(first, n) > 0 {
            self.mark_bitmap_dirty(first, n);
        }
    }

    pub(super) fn clear_bits(&mut self, first: u64, n: u64) {
        if self.bitmap.clear_range(first, n) > 0 {
            self.mark_bitmap_dirty(first, n);
        }
    }

    pub(super) fn issue_meta(&mut self) {
        if self.meta_inflight {
            return;
        }
        if let Some(w) = self.meta_queue.pop_front() {
            let io = self.io(Io::Meta);
            self.meta_inflight = true;
            self.outputs.push_back(Output::PersistMeta { io, write: w });
        }
    }

    pub(super) fn new_generation(&mut self) -> u64 {
        // splitmix64 over the seeded state; never 0 or JUST_CREATED. The metadata's node
        // id is mixed into the state before the (bijective) output function: two nodes
        // handed the same seed still draw different generations at every draw, and
        // equal ones elsewhere only if their draw counts differ by an astronomical amount.
        let node = mix64(self.node_id);
        loop {
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let z = mix64(self.rng ^ node);
            if z > generation::JUST_CREATED {
                return z;
            }
        }
    }

    pub(super) fn safety_check_promotion(&self, force: bool) {
        assert!(
            force
                || matches!(
                    self.disk,
                    DiskState::UpToDate | DiskState::Consistent | DiskState::Diskless
                ),
            "promotion on {:?} data without force",
            self.disk
        );
    }
}

/// The splitmix64 output function: a bijection that spreads every input bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
