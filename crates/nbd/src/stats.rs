//! Server counters (lock-free) and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::RejectReason;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, shared by every connection of a server.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`Stats`].
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            /// Copy every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        impl StatsSnapshot {
            /// Counters as (name, value) pairs, for status output.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Connections accepted by a listener.
    connections_accepted,
    /// Connections closed at once because the connection limit was reached.
    connections_refused,
    /// Unix-socket connections closed at once because the peer is neither root, nor the
    /// server's own user, nor in the allowed group (`UnixAccess`).
    connections_refused_credentials,
    /// Connections open now.
    connections_active,
    /// Negotiations that ended without entering transmission (abort, error, timeout).
    handshakes_failed,
    /// Negotiations that entered transmission.
    handshakes_completed,
    /// READ requests served.
    reads,
    /// WRITE requests served.
    writes,
    /// FLUSH requests served.
    flushes,
    /// TRIM requests served.
    trims,
    /// WRITE_ZEROES requests served.
    write_zeroes,
    /// Bytes returned by reads.
    bytes_read,
    /// Bytes accepted by writes.
    bytes_written,
    /// Requests the device failed (errors other than validation).
    device_errors,
    /// Requests refused by validation (sum of the `rejected_*` counters below).
    rejected_total,
    /// Requests whose header magic was wrong (the connection is dropped).
    rejected_bad_magic,
    /// Requests past the end of the export.
    rejected_out_of_range,
    /// Requests larger than the 32 MiB payload limit.
    rejected_oversized,
    /// Unknown or not negotiated command types.
    rejected_unknown_command,
    /// Flags not valid for the command.
    rejected_bad_flags,
    /// Writes to a read-only export (a secondary).
    rejected_read_only,
    /// Nonzero offset/length where zero is required.
    rejected_bad_arguments,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn reject(&self, reason: RejectReason) {
        Self::add(&self.rejected_total, 1);
        let c = match reason {
            RejectReason::UnknownCommand => &self.rejected_unknown_command,
            RejectReason::BadFlags => &self.rejected_bad_flags,
            RejectReason::OutOfRange => &self.rejected_out_of_range,
            RejectReason::Oversized => &self.rejected_oversized,
            RejectReason::ReadOnly => &self.rejected_read_only,
            RejectReason::BadArguments => &self.rejected_bad_arguments,
        };
        Self::add(c, 1);
    }

    pub(crate) fn reject_bad_magic(&self) {
        Self::add(&self.rejected_total, 1);
        Self::add(&self.rejected_bad_magic, 1);
    }
}
