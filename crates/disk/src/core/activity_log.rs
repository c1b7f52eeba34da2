//! The activity log: the set of 4 MiB extents a primary may be writing to.
//!
//! Before a write touches an extent that is not *hot*, the extent enters the log and a
//! transaction recording the new set is made durable. After a crash of the primary, only
//! the hot extents can differ from the peer, so only they are resynced (instead of the
//! whole disk). `al_extents` bounds the set: more means fewer transactions under random
//! writes but a longer resync after a crash. The coldest extent without writes in flight
//! leaves first (LRU); its bitmap bits must be on disk before it leaves.

use std::collections::HashMap;

/// Bytes per activity-log extent.
pub const EXTENT_BYTES: u64 = 4 << 20;

/// The most extents one transaction block can hold (see docs/disk.md, metadata layout).
pub const MAX_AL_EXTENTS: u32 = 1018;

/// One durable change of the hot set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlTransaction {
    /// Increases by one per transaction; the reader takes the highest valid one.
    pub number: u64,
    /// The whole hot set after this transaction.
    pub extents: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Slot {
    /// Writes in flight in this extent.
    users: u32,
    /// Last use, for LRU eviction.
    used_at: u64,
}

/// The in-memory activity log.
#[derive(Debug, Clone)]
pub struct ActivityLog {
    capacity: u32,
    hot: HashMap<u32, Slot>,
    clock: u64,
    transaction: u64,
}

/// Result of asking to start a write in some extents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// All extents were hot: the write may go ahead now (users were counted).
    Hot,
    /// A transaction is needed: persist it (after the bitmap of `evicted` extents), then
    /// go ahead. Users were counted.
    Transaction {
        /// The transaction to persist.
        transaction: AlTransaction,
        /// Extents that left the log; their bitmap bits must be persisted first.
        evicted: Vec<u32>,
    },
    /// The log is full of extents with writes in flight: retry when one completes.
    Busy,
}

impl ActivityLog {
    /// An empty log with room for `capacity` extents (clamped to 1..=MAX_AL_EXTENTS).
    pub fn new(capacity: u32) -> Self {
        ActivityLog {
            capacity: capacity.clamp(1, MAX_AL_EXTENTS),
            hot: HashMap::new(),
            clock: 0,
            transaction: 0,
        }
    }

    /// A log restored from the last durable transaction.
    pub fn restore(capacity: u32, last: Option<&AlTransaction>) -> Self {
        let mut al = ActivityLog::new(capacity);
        if let Some(t) = last {
            al.transaction = t.number;
            for e in t.extents.iter().take(al.capacity as usize) {
                al.hot.insert(
                    *e,
                    Slot {
                        users: 0,
                        used_at: 0,
                    },
                );
            }
        }
        al
    }

    /// The hot extents, sorted.
    pub fn hot_extents(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.hot.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Number of the last transaction.
    pub fn transaction_number(&self) -> u64 {
        self.transaction
    }

    /// Extents a byte range touches.
    pub fn extents_of(offset: u64, len: u64) -> std::ops::RangeInclusive<u32> {
        let first = (offset / EXTENT_BYTES) as u32;
        let last = ((offset + len.max(1) - 1) / EXTENT_BYTES) as u32;
        first..=last
    }

    /// Starts a write in `extents`: counts it as a user of each and, if some were cold,
    /// makes them hot and returns the transaction to persist first.
    pub fn begin(&mut self, extents: std::ops::RangeInclusive<u32>) -> Begin {
        self.clock += 1;
        let cold: Vec<u32> = extents
            .clone()
            .filter(|e| !self.hot.contains_key(e))
            .collect();
        let mut evicted = Vec::new();
        if !cold.is_empty() {
            let need = (self.hot.len() + cold.len()).saturating_sub(self.capacity as usize);
            let mut idle: Vec<(u64, u32)> = self
                .hot
                .iter()
                .filter(|(e, s)| s.users == 0 && !extents.contains(e))
                .map(|(e, s)| (s.used_at, *e))
                .collect();
            if idle.len() < need || cold.len() > self.capacity as usize {
                return Begin::Busy;
            }
            idle.sort_unstable();
            for (_, e) in idle.into_iter().take(need) {
                self.hot.remove(&e);
                evicted.push(e);
            }
        }
        for e in extents {
            let slot = self.hot.entry(e).or_insert(Slot {
                users: 0,
                used_at: 0,
            });
            slot.users += 1;
            slot.used_at = self.clock;
        }
        if cold.is_empty() {
            return Begin::Hot;
        }
        self.transaction += 1;
        Begin::Transaction {
            transaction: AlTransaction {
                number: self.transaction,
                extents: self.hot_extents(),
            },
            evicted,
        }
    }

    /// Takes one more reference on extents that are already hot (a replicated write
    /// keeps its extents in the log until the peer has flushed it).
    pub fn hold(&mut self, extents: std::ops::RangeInclusive<u32>) {
        for e in extents {
            if let Some(s) = self.hot.get_mut(&e) {
                s.users += 1;
            }
        }
    }

    /// A write in `extents` completed.
    pub fn end(&mut self, extents: std::ops::RangeInclusive<u32>) {
        for e in extents {
            if let Some(s) = self.hot.get_mut(&e) {
                s.users = s.users.saturating_sub(1);
            }
        }
    }

    /// Writes in flight in any extent.
    pub fn users(&self) -> u32 {
        self.hot.values().map(|s| s.users).sum()
    }

    /// Empties the log when no write is in flight (a clean demotion: every write is
    /// done, flushed and on the peer): the transaction to persist, after the bitmap
    /// bits of the extents leaving. None when it is empty already or still in use.
    /// Without it the set only ever grows until LRU eviction — with `al_extents`
    /// 257 (1 GiB) every extent a small disk ever wrote — and a later crash as
    /// primary would resync all of them.
    pub fn cool(&mut self) -> Option<AlTransaction> {
        if self.hot.is_empty() || self.users() > 0 {
            return None;
        }
        self.hot.clear();
        self.transaction += 1;
        Some(AlTransaction {
            number: self.transaction,
            extents: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooling_empties_an_idle_log_only() {
        let mut al = ActivityLog::new(4);
        assert_eq!(al.cool(), None, "empty already");
        assert!(matches!(al.begin(0..=1), Begin::Transaction { .. }));
        assert_eq!(al.cool(), None, "a write is in flight");
        al.end(0..=1);
        let t = al.cool().expect("idle: it empties");
        assert!(t.extents.is_empty());
        assert_eq!(
            t.number, 2,
            "a transaction after the one that made 0 and 1 hot"
        );
        assert!(al.hot_extents().is_empty());
        // Restored from that transaction, nothing is hot.
        assert!(ActivityLog::restore(4, Some(&t)).hot_extents().is_empty());
    }

    #[test]
    fn lru_eviction_and_busy() {
        let mut al = ActivityLog::new(2);
        assert!(
            matches!(al.begin(0..=0), Begin::Transaction { ref evicted, .. } if evicted.is_empty())
        );
        assert_eq!(al.begin(0..=0), Begin::Hot);
        assert!(matches!(al.begin(1..=1), Begin::Transaction { .. }));
        // Both extents busy: a third cannot enter.
        assert_eq!(al.begin(2..=2), Begin::Busy);
        al.end(0..=0);
        al.end(0..=0);
        // Extent 0 is idle and coldest: it leaves.
        match al.begin(2..=2) {
            Begin::Transaction {
                transaction,
                evicted,
            } => {
                assert_eq!(evicted, vec![0]);
                assert_eq!(transaction.extents, vec![1, 2]);
                assert_eq!(transaction.number, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(al.users(), 2);
        let r = ActivityLog::restore(
            2,
            Some(&AlTransaction {
                number: 3,
                extents: vec![1, 2],
            }),
        );
        assert_eq!(r.hot_extents(), vec![1, 2]);
        assert_eq!(ActivityLog::extents_of(EXTENT_BYTES - 1, 2), 0..=1);
    }
}
