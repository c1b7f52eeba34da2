//! Outside connectivity, as Heartbeat's ipfail judged it: every `ping` target, and every
//! `ping_group` (reachable while any member answers), must have answered within
//! `deadping`. A node that loses this while its peer keeps it hands its groups over.
//!
//! The probes are the system's `ping` (iputils), one echo per target per round.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use tandem_config::Config;

use super::manager::Input;
use crate::clock;

/// Starts the prober if the configuration has targets. It reports every change of
/// the verdict (and the first verdict once `deadping` has passed).
pub fn spawn(config: &Config, manager: SyncSender<Input>) -> anyhow::Result<()> {
    let mut tests: Vec<Vec<IpAddr>> = config.cluster.ping.iter().map(|a| vec![*a]).collect();
    tests.extend(
        config
            .cluster
            .ping_groups
            .iter()
            .map(|g| g.addresses.clone()),
    );
    if tests.is_empty() {
        return Ok(());
    }
    let deadping = config.cluster.deadping;
    let round = (deadping / 4).clamp(Duration::from_millis(200), Duration::from_secs(2));
    std::thread::Builder::new()
        .name("ping".into())
        .spawn(move || {
            let start = clock::now();
            let mut last_answer: Vec<Instant> = vec![start; tests.len()];
            let mut reported: Option<bool> = None;
            loop {
                let round_start = clock::now();
                for (i, addresses) in tests.iter().enumerate() {
                    if addresses.iter().any(|a| echo(*a, round)) {
                        last_answer[i] = clock::now();
                    }
                }
                let now = clock::now();
                let ok = last_answer
                    .iter()
                    .all(|t| now.duration_since(*t) < deadping);
                if reported != Some(ok) && (ok || now.duration_since(start) >= deadping) {
                    if ok {
                        tracing::info!("ping targets reachable");
                    } else {
                        tracing::warn!(
                            "ping targets unreachable for {deadping:?}: outside connectivity lost"
                        );
                    }
                    if manager
                        .send(tandem_controller::Input::Ping(ok).into())
                        .is_err()
                    {
                        return;
                    }
                    reported = Some(ok);
                }
                std::thread::sleep(round.saturating_sub(round_start.elapsed()));
            }
        })?;
    Ok(())
}

/// One ICMP echo to `address`, waiting at most `wait` for the answer.
fn echo(address: IpAddr, wait: Duration) -> bool {
    let seconds = wait.as_secs_f64().max(0.2);
    Command::new("ping")
        .args(["-n", "-q", "-c", "1", "-W", &format!("{seconds:.1}")])
        .arg(address.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
