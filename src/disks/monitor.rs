//! The disk service's background tasks: the startup wait's log, disk-fencing requests
//! handed to the cluster, and the monitor of roles and resync groups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem_disk::core::{ConnState, Role};
use tandem_disk::driver::LinkState;
use tokio::sync::watch;

use super::{MONITOR_INTERVAL, Running, Service, ask_fence_peer, startup_over};

/// Logs the startup wait (DRBD's `wfc-timeout` / `degr-wfc-timeout`): when it starts,
/// every 30 s while it lasts, and how it ended. It does not decide whether the wait is
/// over — [`Running::waiting`] reads that from the link state at the moment of asking —
/// except that a link found standing alone ends it for good (`gave_up`).
pub(super) async fn startup_wait_log(
    name: String,
    mut link: watch::Receiver<LinkState>,
    wait_ms: u64,
    started: Instant,
    gave_up: Arc<AtomicBool>,
) {
    if wait_ms == 0 {
        tracing::info!(disk = %name, "waiting for the peer (no timeout)");
    } else {
        tracing::info!(disk = %name, wait_ms, "waiting for the peer");
    }
    let wait = (wait_ms != 0).then(|| Duration::from_millis(wait_ms));
    let mut next_log = Duration::from_secs(30);
    loop {
        let waited = crate::clock::now().duration_since(started);
        let limit = wait
            .map_or(next_log, |w| w.min(next_log))
            .saturating_sub(waited);
        let ended = tokio::time::timeout(limit, link.wait_for(startup_over))
            .await
            .map(|r| r.map(|l| *l));
        match ended {
            Ok(Ok(l)) if l.handshakes > 0 => {
                tracing::info!(disk = %name, connection = ?l.connection, "peer connected");
                return;
            }
            Ok(Ok(_)) => {
                gave_up.store(true, Ordering::Relaxed);
                tracing::warn!(disk = %name, "standalone: not waiting for the peer any longer");
                return;
            }
            // The node stopped (`tandem disk down`).
            Ok(Err(_)) => return,
            Err(_) => {
                let waited = crate::clock::now().duration_since(started);
                if wait.is_some_and(|w| waited >= w) {
                    tracing::warn!(disk = %name, wait_ms, "no peer: going on alone (degraded)");
                    return;
                }
                if waited >= next_log {
                    tracing::info!(disk = %name, waited_s = waited.as_secs(), "still waiting for the peer");
                    next_log += Duration::from_secs(30);
                }
            }
        }
    }
}

/// Hands every `FencePeer` request of a disk's core to the cluster (the node counts
/// them in its published link state); ends when the node stops.
pub(super) async fn forward_fence_peer_requests(
    name: String,
    mut link: watch::Receiver<LinkState>,
) {
    let mut seen = link.borrow().fence_peer_requests;
    while link.changed().await.is_ok() {
        let (asked, suspended) = {
            let l = link.borrow();
            (l.fence_peer_requests, l.suspended)
        };
        if asked > seen {
            seen = asked;
            if suspended {
                tracing::warn!(disk = %name, "replication link lost: I/O suspended until the peer is outdated or fenced");
            }
            ask_fence_peer(&name);
        }
    }
}

/// Keeps every running disk's role flag current and runs resync groups in order: only
/// the lowest group with a pending resync may resync (`groups_allowed`).
pub(super) async fn monitor(service: &'static Service) {
    loop {
        tokio::time::sleep(MONITOR_INTERVAL).await;
        let disks: Vec<(u32, Arc<Running>, String)> = service
            .lock()
            .values()
            .filter_map(|s| {
                s.running
                    .clone()
                    .map(|r| (s.disk.resync_group, r, s.disk.name.clone()))
            })
            .collect();
        let mut pending = Vec::with_capacity(disks.len());
        for (group, r, name) in &disks {
            let needs = match r.driver.status().await {
                Ok(s) => {
                    r.primary.store(s.role == Role::Primary, Ordering::Relaxed);
                    if let Some(why) = &s.detach_reason
                        && !r.detach_logged.swap(true, Ordering::Relaxed)
                    {
                        tracing::error!(disk = %name, reason = %why, "backing disk detached (on-io-error detach): this node's copy is no longer used; I/O goes to the peer");
                    }
                    matches!(
                        s.connection,
                        ConnState::SyncTarget | ConnState::WaitBitmapTarget
                    )
                }
                Err(_) => false,
            };
            pending.push((*group, needs));
        }
        let allowed = tandem_disk::core::resync::groups_allowed(&pending);
        // With one group nothing is ever held back. With several, every disk that is not
        // allowed stays paused — also one with nothing to resync yet, so that a resync
        // starting between two looks cannot run ahead of a lower group.
        let several_groups = pending.windows(2).any(|w| w[0].0 != w[1].0);
        for ((_, r, _), ok) in disks.iter().zip(&allowed) {
            let pause = several_groups && !ok;
            if r.resync_paused.swap(pause, Ordering::Relaxed) != pause {
                let _ = r.driver.set_resync_paused(pause).await;
            }
        }
    }
}
