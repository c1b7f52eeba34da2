//! A blocking driver: runs a coordinator with the device runner on this thread until
//! the target is fenced or every device failed. The CLI's `tandem fence NODE --direct`
//! uses it, and so do the tests, so they run the production walk over levels.

use std::thread;
use std::time::{Duration, Instant};

use tandem_config::FenceDevice;

use crate::action::FenceAction;
use crate::coordinator::{Command, Coordinator, CoordinatorConfig, FenceState, RequestError};
use crate::device::ProgramPaths;
use crate::result::FenceRecord;
use crate::runner::run_device;

/// Carries out one [`Command::RunDevice`] (blocking, bounded by the device timeout):
/// the daemon calls this on a worker thread (e.g. tokio's `spawn_blocking`) and feeds
/// the pair back with [`Coordinator::device_result`]. `None` for other commands, or a
/// device name not in `devices`.
pub fn execute(
    devices: &[FenceDevice],
    cmd: &Command,
    paths: &ProgramPaths,
) -> Option<(u64, crate::result::FenceResult)> {
    let Command::RunDevice {
        id,
        device,
        action,
        target,
        ..
    } = cmd
    else {
        return None;
    };
    let dev = devices.iter().find(|d| &d.name == device)?;
    Some((*id, run_device(dev, *action, Some(target), paths)))
}

/// What a direct fence did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectOutcome {
    /// Final state: `FencedOk`, `Failed`, or `Required` when only an operator can
    /// confirm (a manual device, or none at all).
    pub state: FenceState,
    /// Every attempt, in order.
    pub records: Vec<FenceRecord>,
}

#[allow(clippy::disallowed_methods)]
fn clock() -> (Instant, u64) {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (Instant::now(), wall)
}

/// Fences `target` once through every level of `devices` (one round, no delay), running
/// each device on this thread. Manual devices are skipped over: nobody is there to
/// confirm, so a walk that reaches one stops and says so.
pub fn fence_direct(
    devices: Vec<FenceDevice>,
    target: &str,
    action: FenceAction,
    reason: &str,
    paths: &ProgramPaths,
) -> Result<DirectOutcome, RequestError> {
    let mut cfg = CoordinatorConfig::with_devices(devices);
    cfg.action = action;
    cfg.priority_delay = Duration::ZERO;
    cfg.max_rounds = 1;
    let (now, wall) = clock();
    let mut c = Coordinator::new(cfg, wall, now, wall);
    c.request(target, reason, false, now)?;
    loop {
        while let Some(cmd) = c.poll_command() {
            if let Some((id, result)) = execute(&c.config().devices, &cmd, paths) {
                c.device_result(id, result, clock().0);
            }
        }
        let state = c.state(target);
        if matches!(state, FenceState::FencedOk | FenceState::Failed) || c.awaits_operator(target) {
            return Ok(DirectOutcome {
                state: if c.awaits_operator(target) {
                    FenceState::Required
                } else {
                    state
                },
                records: c.history().records().cloned().collect(),
            });
        }
        let now = clock().0;
        if let Some(at) = c.poll_timeout() {
            thread::sleep(
                at.saturating_duration_since(now)
                    .min(Duration::from_millis(200)),
            );
        }
        c.tick(clock().0);
    }
}
