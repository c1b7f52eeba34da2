//! The one place the daemon reads the clock. Cores are given `now`; clippy forbids clock
//! reads everywhere else, so every time value in tandem can be traced back to here.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Monotonic time, for every protocol decision.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock microseconds since the Unix epoch: the floor of a new incarnation
/// ([`crate::state::StateDir::bump_incarnation`]), so that a node whose state directory
/// was lost still starts above any incarnation it used before — even when it restarts
/// within the same second, which a floor in seconds did not cover.
#[allow(clippy::disallowed_methods)]
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Wall-clock milliseconds since the Unix epoch, for logs and status only.
#[allow(clippy::disallowed_methods)]
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
