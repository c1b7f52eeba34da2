//! Helpers shared by the integration tests: the root gate, the binary, polling.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod cluster;

use std::path::Path;
use std::time::{Duration, Instant};

/// The `tandem` binary under test.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Whether a root-only test may run. Under `CI=true` a missing root is a failure, not a
/// skip: CI must never go green by skipping what it was meant to prove.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true forbids skipping it");
    }
    eprintln!("SKIP {test}: needs root (network namespaces, cgroups, mounts)");
    false
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
#[allow(clippy::disallowed_methods)]
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wall-clock milliseconds since the epoch (the agents stamp their events the same way).
#[allow(clippy::disallowed_methods)]
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Writes a file with mode 0600 (key files must not be readable by others).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
