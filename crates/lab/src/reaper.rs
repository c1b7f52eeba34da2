//! Reaps, in the background, the processes this process started in lab hosts and the
//! keepers of hosts it booted.
//!
//! Power-off is complete only when every process of the host is reaped, and the reaping
//! must be done by the parent. The parent of a process started with [`crate::Lab::spawn`]
//! is this process, while the power-off may come from anywhere: another `Lab` handle,
//! the power-switch daemon, `tandem lab power off`. A thread that collects exits every
//! few milliseconds makes all of them work; the `HostProcess` handle keeps the status.

use std::process::Child;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

static CHILDREN: Mutex<Vec<Arc<Mutex<Child>>>> = Mutex::new(Vec::new());
static KEEPERS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static START: Once = Once::new();

/// Poll period: a zombie waits at most this long for us.
const SWEEP_PERIOD_MS: u64 = 10;

fn start() {
    START.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("tandem-lab-reaper".into())
            .spawn(|| {
                loop {
                    sweep();
                    std::thread::sleep(Duration::from_millis(SWEEP_PERIOD_MS));
                }
            });
    });
}

/// Registers a child started in a lab host.
pub fn register_child(child: Arc<Mutex<Child>>) {
    CHILDREN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(child);
    start();
}

/// Registers the keeper of a host's init (a direct child of this process).
pub fn register_keeper(pid: u32) {
    KEEPERS.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
    start();
}

/// Reaps whatever has exited; forgets what is reaped.
pub fn sweep() {
    CHILDREN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|c| {
            let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
            matches!(c.try_wait(), Ok(None))
        });
    KEEPERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|k| !crate::sys::try_reap(*k));
}
