//! The dirty bitmap: one bit per 4 KiB block, set where this side may differ from its
//! peer. The count of set bits is kept up to date so status never scans.

/// Bytes covered by one bit.
pub const BLOCK_BYTES: u64 = 4096;

/// A dirty bitmap over a disk of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    blocks: u64,
    set: u64,
}

impl Bitmap {
    /// An all-clear bitmap for `size_bytes` of data (rounded up to whole blocks).
    pub fn new(size_bytes: u64) -> Self {
        let blocks = size_bytes.div_ceil(BLOCK_BYTES);
        Bitmap {
            words: vec![0; blocks.div_ceil(64) as usize],
            blocks,
            set: 0,
        }
    }

    /// Rebuilds a bitmap from stored words; bits past the end are ignored and cleared.
    pub fn from_words(size_bytes: u64, stored: &[u64]) -> Self {
        let mut b = Bitmap::new(size_bytes);
        let n = b.words.len().min(stored.len());
        b.words[..n].copy_from_slice(&stored[..n]);
        b.clear_tail();
        b.set = b.words.iter().map(|w| u64::from(w.count_ones())).sum();
        b
    }

    fn clear_tail(&mut self) {
        let extra = self.words.len() as u64 * 64 - self.blocks;
        if extra > 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= u64::MAX >> extra;
        }
    }

    /// Number of blocks (bits).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The words, bit i of word w standing for block 64*w + i.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.set
    }

    /// Bytes marked out of sync.
    pub fn dirty_bytes(&self) -> u64 {
        self.set * BLOCK_BYTES
    }

    /// Whether block `b` is set.
    pub fn get(&self, b: u64) -> bool {
        b < self.blocks && self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// Sets blocks `first..first+n`; returns how many were newly set.
    pub fn set_range(&mut self, first: u64, n: u64) -> u64 {
        self.change_range(first, n, true)
    }

    /// Clears blocks `first..first+n`; returns how many were cleared.
    pub fn clear_range(&mut self, first: u64, n: u64) -> u64 {
        self.change_range(first, n, false)
    }

    fn change_range(&mut self, first: u64, n: u64, on: bool) -> u64 {
        let end = first.saturating_add(n).min(self.blocks);
        let mut b = first;
        let mut changed = 0;
        while b < end {
            let w = (b / 64) as usize;
            let lo = b % 64;
            let hi = (end - (b - lo)).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let before = self.words[w];
            self.words[w] = if on { before | mask } else { before & !mask };
            changed += u64::from((before ^ self.words[w]).count_ones());
            b = b - lo + hi;
        }
        if on {
            self.set += changed;
        } else {
            self.set -= changed;
        }
        changed
    }

    /// Sets the blocks touched by the byte range `[offset, offset+len)`.
    pub fn set_bytes(&mut self, offset: u64, len: u64) -> u64 {
        let (first, n) = blocks_touched(offset, len);
        self.set_range(first, n)
    }

    /// Sets every bit (full sync).
    pub fn set_all(&mut self) {
        let n = self.blocks;
        self.set_range(0, n);
    }

    /// ORs `other`'s words starting at word `word_offset` into this bitmap.
    pub fn merge_words(&mut self, word_offset: u64, other: &[u64]) {
        for (i, w) in other.iter().enumerate() {
            let idx = word_offset as usize + i;
            if idx >= self.words.len() {
                break;
            }
            let before = self.words[idx];
            self.words[idx] |= w;
            self.set += u64::from((before ^ self.words[idx]).count_ones());
        }
        let before: u64 = self.words.last().map_or(0, |w| u64::from(w.count_ones()));
        self.clear_tail();
        let after: u64 = self.words.last().map_or(0, |w| u64::from(w.count_ones()));
        self.set -= before - after;
    }

    /// The first run of set bits at or after block `from`, at most `max_blocks` long:
    /// `(first_block, n_blocks)`.
    pub fn next_run(&self, from: u64, max_blocks: u64) -> Option<(u64, u64)> {
        let start = self.next_set(from)?;
        let mut n = 1;
        while n < max_blocks && self.get(start + n) {
            n += 1;
        }
        Some((start, n))
    }

    /// The first set bit at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.blocks {
            return None;
        }
        let mut w = (from / 64) as usize;
        let mut word = self.words[w] & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let b = w as u64 * 64 + u64::from(word.trailing_zeros());
                return (b < self.blocks).then_some(b);
            }
            w += 1;
            if w >= self.words.len() {
                return None;
            }
            word = self.words[w];
        }
    }

    /// Iterates the runs of set bits in order, each at most `max_blocks` long.
    pub fn runs(&self, max_blocks: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let (s, n) = self.next_run(at, max_blocks)?;
            at = s + n;
            Some((s, n))
        })
    }
}

/// The blocks a byte range touches: `(first_block, n_blocks)`.
pub fn blocks_touched(offset: u64, len: u64) -> (u64, u64) {
    if len == 0 {
        return (offset / BLOCK_BYTES, 0);
    }
    let first = offset / BLOCK_BYTES;
    let last = (offset + len - 1) / BLOCK_BYTES;
    (first, last - first + 1)
}

/// The whole blocks a byte range covers completely: `(first_block, n_blocks)`.
pub fn blocks_covered(offset: u64, len: u64) -> (u64, u64) {
    let first = offset.div_ceil(BLOCK_BYTES);
    let end = (offset + len) / BLOCK_BYTES;
    (first, end.saturating_sub(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_follows_a_reference_model() {
        let mut s: u64 = 12345;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let blocks = 1000u64;
        let mut b = Bitmap::new(blocks * BLOCK_BYTES - 100);
        let mut model = vec![false; blocks as usize];
        for _ in 0..5000 {
            let first = next() % (blocks + 10);
            let n = next() % 150;
            let on = next() % 2 == 0;
            let changed = if on {
                b.set_range(first, n)
            } else {
                b.clear_range(first, n)
            };
            let mut want = 0;
            for i in first..(first + n).min(blocks) {
                if model[i as usize] != on {
                    want += 1;
                }
                model[i as usize] = on;
            }
            assert_eq!(changed, want);
            assert_eq!(b.count(), model.iter().filter(|x| **x).count() as u64);
        }
        // Runs visit exactly the set bits, in order.
        let mut seen = vec![false; blocks as usize];
        let mut last_end = 0;
        for (s, n) in b.runs(7) {
            assert!(s >= last_end && (1..=7).contains(&n));
            last_end = s + n;
            for i in s..s + n {
                seen[i as usize] = true;
            }
        }
        assert_eq!(seen, model);
        let copy = Bitmap::from_words(blocks * BLOCK_BYTES - 100, b.words());
        assert_eq!(copy, b);
    }

    #[test]
    fn merge_and_byte_ranges() {
        let mut a = Bitmap::new(100 * BLOCK_BYTES);
        let mut b = Bitmap::new(100 * BLOCK_BYTES);
        a.set_bytes(4095, 2); // blocks 0 and 1
        b.set_bytes(10 * BLOCK_BYTES, BLOCK_BYTES); // block 10 only
        a.merge_words(0, b.words());
        assert_eq!(a.count(), 3);
        assert!(a.get(0) && a.get(1) && a.get(10) && !a.get(11));
        a.merge_words(0, &[u64::MAX, u64::MAX, u64::MAX]);
        assert_eq!(a.count(), 100, "bits past the end stay clear");
        assert_eq!(blocks_covered(100, 8192), (1, 1));
        assert_eq!(blocks_touched(100, 8192), (0, 3));
    }
}
