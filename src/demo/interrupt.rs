//! Ctrl-C during the demo: the lab must still come down. SIGINT (and SIGTERM) only set
//! a flag; every wait of the demo checks it and returns an error, so the lab's handle
//! is dropped on the way out and tears down its hosts, mounts, loop devices and files.
//! The daemons and the client run in process groups of their own (they never see the
//! terminal's Ctrl-C: only the teardown ends them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the flag (no `SA_RESTART`: a blocking read returns).
pub fn install() -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores an atomic; the
        // pointers passed are valid for the call.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!(
                "install the handler of signal {sig}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Whether the user asked the demo to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once the user asked the demo to stop.
pub fn check() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted (the lab is taken down)");
    }
    Ok(())
}

/// Sleeps `d` in short steps, returning early with an error when interrupted.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let deadline = crate::clock::now() + d;
    loop {
        check()?;
        let now = crate::clock::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// Polls `done` every 50 ms until it is true; an error after `timeout` (naming `what`)
/// or when interrupted.
pub fn wait(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = crate::clock::now() + timeout;
    loop {
        check()?;
        if done()? {
            return Ok(());
        }
        if crate::clock::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
