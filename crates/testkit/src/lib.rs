//! What tandem's tests share, and nothing a product crate may need: a dev-dependency
//! only, with no tandem crate below it, so that any crate's tests can use it without a
//! new edge between product crates.
//!
//! The gate: a test that cannot run here (no root, a tool not installed) *fails loudly*
//! under `CI=true` — CI must never go green by skipping what it was meant to prove — and
//! elsewhere (a developer machine) returns early after printing why it skipped.
//!
//! ```ignore
//! #[test]
//! fn mounts_the_local_device() {
//!     if !tandem_testkit::root_or_skip("FUSE, loop devices") {
//!         return;
//!     }
//!     // …
//! }
//! ```
#![warn(missing_docs)]

/// Whether the calling test may run: `available`, or else a panic under `CI=true` and a
/// printed `SKIP <test>: <reason>` elsewhere. The test's name is its thread's, as the
/// test harness names it.
pub fn skip_unless(available: bool, reason: &str) -> bool {
    if available {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {reason}, and CI=true forbids skipping it");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// Whether the calling test, which needs root for `needs` (e.g. "network namespaces,
/// veth"), may run: see [`skip_unless`].
pub fn root_or_skip(needs: &str) -> bool {
    skip_unless(is_root(), &format!("needs root ({needs})"))
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The tests' clock for the sans-IO cores, which all take a monotonic [`Instant`]:
/// `ms` milliseconds after one fixed instant of the test process, so a test writes its
/// times as plain numbers (`core.handle(at(1_500), …)`).
///
/// [`Instant`]: std::time::Instant
#[allow(clippy::disallowed_methods)] // the origin of the tests' time; only offsets matter
pub fn at(ms: u64) -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now) + std::time::Duration::from_millis(ms)
}

/// The inverse of [`at`]: the milliseconds after the tests' fixed instant (0 before it).
pub fn ms(t: std::time::Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(at(0)).as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_available_test_runs() {
        assert!(skip_unless(true, "never said"));
    }

    #[test]
    fn a_missing_requirement_skips_or_fails_by_ci() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let r = std::panic::catch_unwind(|| skip_unless(false, "needs nothing"));
        match r {
            Ok(ran) => assert!(!ci && !ran),
            Err(_) => assert!(ci),
        }
    }
}
