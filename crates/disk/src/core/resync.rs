//! Resync planning: which dirty ranges to fetch next, how fast, and which resource's
//! resync may run now (resync groups).
//!
//! The sync target plans: it walks its bitmap in order from a cursor, asks the source for
//! runs of dirty blocks, and spends tokens from a bucket refilled at the configured rate
//! (`now_ms` is passed in). Because bits are cleared only once the data is durable, an
//! interrupted resync resumes where it stopped: the first set bit is the resume point.

use super::bitmap::{BLOCK_BYTES, Bitmap};

/// A token bucket: `rate_bytes_per_s` refill, holding at most `burst_bytes`.
/// Tokens are counted in thousandths of a byte so that millisecond steps lose nothing.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    burst_milli: u128,
    tokens_milli: u128,
    last_ms: u64,
}

impl TokenBucket {
    /// A bucket that starts full.
    pub fn new(rate_bytes_per_s: u64, burst_bytes: u64, now_ms: u64) -> Self {
        let burst_milli = u128::from(burst_bytes) * 1000;
        TokenBucket {
            rate_bytes_per_s: rate_bytes_per_s.max(1),
            burst_milli,
            tokens_milli: burst_milli,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms > self.last_ms {
            // One millisecond at rate R bytes/s is R thousandths of a byte.
            let add = u128::from(now_ms - self.last_ms) * u128::from(self.rate_bytes_per_s);
            self.tokens_milli = (self.tokens_milli + add).min(self.burst_milli);
        }
        self.last_ms = now_ms;
    }

    /// Takes `n` tokens if there are enough.
    pub fn try_take(&mut self, n: u64, now_ms: u64) -> bool {
        self.refill(now_ms);
        let need = u128::from(n) * 1000;
        if self.tokens_milli >= need {
            self.tokens_milli -= need;
            true
        } else {
            false
        }
    }

    /// When `n` tokens will be there (`now_ms` if they are): when the driver's next tick
    /// is due for a request the rate held back.
    pub fn ready_at_ms(&self, n: u64, now_ms: u64) -> u64 {
        let add =
            u128::from(now_ms.saturating_sub(self.last_ms)) * u128::from(self.rate_bytes_per_s);
        let tokens_milli = (self.tokens_milli + add).min(self.burst_milli);
        let need = u128::from(n) * 1000;
        if tokens_milli >= need {
            return now_ms;
        }
        let missing = need - tokens_milli;
        let ms = missing.div_ceil(u128::from(self.rate_bytes_per_s));
        now_ms.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// Limits of one resync.
#[derive(Debug, Clone, Copy)]
pub struct ResyncLimits {
    /// Bytes per second, or None for as fast as the link goes.
    pub rate_bytes_per_s: Option<u64>,
    /// Largest single request.
    pub max_request_bytes: u64,
    /// Requests in flight at once.
    pub max_inflight: usize,
}

/// The target side's plan: cursor, in-flight requests, rate.
#[derive(Debug, Clone)]
pub struct ResyncPlanner {
    limits: ResyncLimits,
    cursor_block: u64,
    bucket: Option<TokenBucket>,
    inflight: Vec<(u64, u64)>,
    /// The size of the request the rate held back on the last pass, if it did: only then
    /// is a tick due for pacing.
    rate_held_bytes: Option<u64>,
    /// Bytes whose resync finished (durable on the target).
    pub done_bytes: u64,
    /// Bytes to resync when it started (plus any set later).
    pub total_bytes: u64,
    started_ms: u64,
}

impl ResyncPlanner {
    /// Plans a resync of `bitmap`'s set bits, starting now.
    pub fn new(limits: ResyncLimits, bitmap: &Bitmap, now_ms: u64) -> Self {
        let bucket = limits.rate_bytes_per_s.map(|r| {
            // A burst of one request, or 100 ms of rate, whichever is larger: small enough
            // that the rate holds over a second, large enough to send whole requests.
            TokenBucket::new(r.max(1), (r / 10).max(limits.max_request_bytes), now_ms)
        });
        ResyncPlanner {
            limits,
            cursor_block: 0,
            bucket,
            inflight: Vec::new(),
            rate_held_bytes: None,
            done_bytes: 0,
            total_bytes: bitmap.dirty_bytes(),
            started_ms: now_ms,
        }
    }

    /// The next range to request, as `(first_block, n_blocks)`, or None when the rate,
    /// the in-flight limit or the bitmap says wait. Ranges in flight are skipped.
    pub fn next_request(&mut self, bitmap: &Bitmap, now_ms: u64) -> Option<(u64, u64)> {
        self.rate_held_bytes = None;
        if self.inflight.len() >= self.limits.max_inflight {
            return None;
        }
        let max_blocks = (self.limits.max_request_bytes / BLOCK_BYTES).max(1);
        let mut from = self.cursor_block;
        let mut wrapped = false;
        loop {
            let Some((s, n)) = bitmap.next_run(from, max_blocks) else {
                if wrapped || self.cursor_block == 0 {
                    return None;
                }
                // Bits set behind the cursor (writes during resync, failed requests).
                wrapped = true;
                from = 0;
                continue;
            };
            // Clip the run where it meets a range already in flight.
            let mut n = n;
            let mut skip_to = None;
            for (fs, fnb) in &self.inflight {
                if *fs <= s && s < fs + fnb {
                    skip_to = Some(fs + fnb);
                    break;
                }
                if s < *fs && *fs < s + n {
                    n = fs - s;
                }
            }
            if let Some(t) = skip_to {
                from = t;
                if wrapped && from >= self.cursor_block {
                    return None;
                }
                continue;
            }
            if wrapped && s >= self.cursor_block {
                return None;
            }
            if let Some(b) = &mut self.bucket
                && !b.try_take(n * BLOCK_BYTES, now_ms)
            {
                self.rate_held_bytes = Some(n * BLOCK_BYTES);
                return None;
            }
            self.inflight.push((s, n));
            self.cursor_block = s + n;
            return Some((s, n));
        }
    }

    /// A requested range came back and is durable (or failed: `ok == false`, it stays
    /// dirty and is asked again on a later pass).
    pub fn complete(&mut self, first_block: u64, n_blocks: u64, ok: bool) {
        if let Some(i) = self
            .inflight
            .iter()
            .position(|r| *r == (first_block, n_blocks))
        {
            self.inflight.swap_remove(i);
        }
        if ok {
            self.done_bytes += n_blocks * BLOCK_BYTES;
            self.total_bytes = self.total_bytes.max(self.done_bytes);
        }
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether `(first_block, n_blocks)` is in flight (exactly).
    pub fn is_inflight(&self, first_block: u64, n_blocks: u64) -> bool {
        self.inflight.contains(&(first_block, n_blocks))
    }

    /// When the rate lets the request it held back on the last pass go, if it held one
    /// back: the tick that sends it is due then.
    pub fn ready_at_ms(&self, now_ms: u64) -> Option<u64> {
        let bytes = self.rate_held_bytes?;
        Some(
            self.bucket
                .as_ref()
                .map_or(now_ms, |b| b.ready_at_ms(bytes, now_ms)),
        )
    }

    /// Average rate since the start.
    pub fn rate_bytes_per_s(&self, now_ms: u64) -> u64 {
        let ms = now_ms.saturating_sub(self.started_ms).max(1);
        self.done_bytes.saturating_mul(1000) / ms
    }
}

/// Which resync may run now across resources: all those in the lowest group that still
/// needs a resync (the whitepaper's `syncer { group N; }`: group 0 first, then 1...).
/// `pending` holds `(group, needs_resync)` per resource; returns one flag per resource.
pub fn groups_allowed(pending: &[(u32, bool)]) -> Vec<bool> {
    let lowest = pending.iter().filter(|(_, n)| *n).map(|(g, _)| *g).min();
    pending
        .iter()
        .map(|(g, n)| *n && Some(*g) == lowest)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_holds_the_rate() {
        let mut b = TokenBucket::new(5 << 20, 512 << 10, 0);
        let mut sent = 0u64;
        // Ask for 64 KiB every millisecond for 10 s: only ~5 MiB/s may pass.
        for ms in 0..10_000 {
            while b.try_take(64 << 10, ms) {
                sent += 64 << 10;
            }
        }
        let expect = 10 * (5u64 << 20) + (512 << 10);
        assert!(
            sent <= expect && sent >= expect * 95 / 100,
            "{sent} vs {expect}"
        );
        while b.try_take(64 << 10, 10_000) {}
        let ready = b.ready_at_ms(64 << 10, 10_000);
        assert!(ready > 10_000);
        assert!(!b.try_take(64 << 10, ready - 1), "not before it says");
        assert!(b.try_take(64 << 10, ready), "at the time it says");
    }

    #[test]
    fn planner_walks_in_order_and_resumes() {
        let mut bm = Bitmap::new(1000 * BLOCK_BYTES);
        bm.set_range(10, 5);
        bm.set_range(100, 40);
        bm.set_range(900, 1);
        let limits = ResyncLimits {
            rate_bytes_per_s: None,
            max_request_bytes: 16 * BLOCK_BYTES,
            max_inflight: 2,
        };
        let mut p = ResyncPlanner::new(limits, &bm, 0);
        assert_eq!(p.total_bytes, 46 * BLOCK_BYTES);
        assert_eq!(p.next_request(&bm, 0), Some((10, 5)));
        assert_eq!(p.next_request(&bm, 0), Some((100, 16)));
        assert_eq!(p.next_request(&bm, 0), None, "in-flight limit");
        bm.clear_range(10, 5);
        p.complete(10, 5, true);
        assert_eq!(p.next_request(&bm, 0), Some((116, 16)));
        // A failed request stays dirty and is asked again after a wrap.
        p.complete(100, 16, false);
        assert_eq!(p.next_request(&bm, 0), Some((132, 8)));
        bm.clear_range(116, 16);
        p.complete(116, 16, true);
        assert_eq!(p.next_request(&bm, 0), Some((900, 1)));
        bm.clear_range(132, 8);
        p.complete(132, 8, true);
        bm.clear_range(900, 1);
        p.complete(900, 1, true);
        assert_eq!(p.next_request(&bm, 0), Some((100, 16)));
        // A new planner over the same bitmap starts at the first set bit: resume.
        let mut q = ResyncPlanner::new(limits, &bm, 0);
        assert_eq!(q.next_request(&bm, 0), Some((100, 16)));
    }

    #[test]
    fn rate_limited_planner() {
        let mut bm = Bitmap::new(100_000 * BLOCK_BYTES);
        bm.set_all();
        let limits = ResyncLimits {
            rate_bytes_per_s: Some(1 << 20),
            max_request_bytes: 64 << 10,
            max_inflight: 1000,
        };
        let mut p = ResyncPlanner::new(limits, &bm, 0);
        let mut bytes = 0;
        for ms in 0..5000 {
            while let Some((_, n)) = p.next_request(&bm, ms) {
                bytes += n * BLOCK_BYTES;
            }
        }
        let expect = 5u64 << 20;
        assert!(
            bytes <= expect + (128 << 10) && bytes >= expect * 9 / 10,
            "{bytes}"
        );
    }

    #[test]
    fn groups_run_in_order() {
        assert_eq!(
            groups_allowed(&[(1, true), (0, true), (0, false)]),
            vec![false, true, false]
        );
        assert_eq!(groups_allowed(&[(1, true), (0, false)]), vec![true, false]);
        assert_eq!(groups_allowed(&[(2, true), (2, true)]), vec![true, true]);
    }
}
