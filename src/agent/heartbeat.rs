//! The heartbeat thread: drives the membership core over the link sockets.
//!
//! One loop, no async runtime: wait in poll(2) until a socket is readable or the core's
//! next timer is due, feed the core, then carry out what it returns (send packets, log
//! and record events, publish a status snapshot). Nothing on this thread blocks on
//! anything but poll.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tandem_membership::{Event, Membership};

use super::links::LinkIo;
use super::{EVENT_HISTORY_LEN, EventRecord, Shared};
use crate::clock;

/// Real-time priority of the heartbeat thread (SCHED_RR, 1–99). Above ordinary threads
/// and most kernel threads' defaults, below watchdogs (which run at 99).
const REALTIME_PRIORITY: i32 = 50;

/// Starts the heartbeat thread. It runs until the process exits.
pub fn spawn(
    core: Membership,
    links: Vec<LinkIo>,
    shared: Arc<Mutex<Shared>>,
    realtime: bool,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            if realtime {
                set_realtime_priority();
            }
            Loop {
                core,
                links,
                shared,
            }
            .run()
        })
        .context("start the heartbeat thread")?;
    Ok(())
}

struct Loop {
    core: Membership,
    links: Vec<LinkIo>,
    shared: Arc<Mutex<Shared>>,
}

impl Loop {
    fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = self
            .links
            .iter()
            .map(|l| libc::pollfd {
                fd: l.fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        loop {
            let now = clock::now();
            if self.core.poll_timeout().is_none_or(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            self.flush();
            let wait = self
                .core
                .poll_timeout()
                .map_or(Duration::from_secs(1), |t| {
                    t.saturating_duration_since(clock::now())
                });
            poll(&mut fds, wait);
            for (index, pollfd) in fds.iter_mut().enumerate() {
                if pollfd.revents == 0 {
                    continue;
                }
                pollfd.revents = 0;
                let link_id = index as u16;
                let core = &mut self.core;
                let result = self.links[index].receive(|bytes| {
                    core.handle_packet(link_id, bytes, clock::now());
                });
                if let Err(err) = result {
                    tracing::debug!(link = %self.links[index].name, "receive: {err}");
                }
            }
            self.flush();
        }
    }

    /// Sends what the core wants sent, records its events, publishes a snapshot.
    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            let Some(link) = self.links.get_mut(usize::from(t.link)) else {
                continue;
            };
            if let Err(err) = link.send(&t.bytes) {
                // A down interface fails every send until it comes back: the core sees
                // the silence on the other side; here it is only worth a debug line.
                tracing::debug!(link = %link.name, "send: {err}");
            }
        }
        let mut records = Vec::new();
        while let Some(event) = self.core.poll_event() {
            if let Some(record) = self.record(&event) {
                records.push(record);
            }
        }
        let snapshot = self.core.status(clock::now());
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.membership = Some(snapshot);
        for r in records {
            if shared.events.len() == EVENT_HISTORY_LEN {
                shared.events.pop_front();
            }
            shared.events.push_back(r);
        }
    }

    /// Logs an event and turns it into a status record.
    fn record(&self, event: &Event) -> Option<EventRecord> {
        let config = self.core.config();
        let node_name = |id| {
            config
                .nodes
                .iter()
                .find(|n| n.id == id)
                .map_or_else(|| format!("#{id}"), |n| n.name.clone())
        };
        let link_name = |id: u16| {
            config
                .links
                .iter()
                .find(|l| l.id == id)
                .map_or_else(|| format!("#{id}"), |l| l.name.clone())
        };
        let (kind, node, link, detail) = match event {
            Event::NodeUp { node, incarnation } => {
                tracing::info!(node = %node_name(*node), incarnation, "node up");
                (
                    "node_up",
                    Some(*node),
                    None,
                    format!("incarnation {incarnation}"),
                )
            }
            Event::NodeLate { node, gap } => {
                tracing::warn!(node = %node_name(*node), gap_ms = gap.as_millis() as u64, "late heartbeat");
                (
                    "node_late",
                    Some(*node),
                    None,
                    format!("gap {} ms", gap.as_millis()),
                )
            }
            Event::NodeDead { node, incarnation } => {
                tracing::warn!(node = %node_name(*node), ?incarnation, "node dead");
                ("node_dead", Some(*node), None, String::new())
            }
            Event::LinkUp { node, link } => {
                tracing::info!(node = %node_name(*node), link = %link_name(*link), "link up");
                ("link_up", Some(*node), Some(*link), String::new())
            }
            Event::LinkDown { node, link } => {
                tracing::warn!(node = %node_name(*node), link = %link_name(*link), "link down");
                ("link_down", Some(*node), Some(*link), String::new())
            }
            Event::NodeReturnedAfterPartition { node, incarnation } => {
                tracing::error!(
                    node = %node_name(*node),
                    incarnation,
                    "node returned after a partition: it was alive while declared dead"
                );
                (
                    "node_returned_after_partition",
                    Some(*node),
                    None,
                    format!("incarnation {incarnation}"),
                )
            }
            Event::NodeRestarted {
                node,
                incarnation,
                previous,
            } => {
                tracing::info!(node = %node_name(*node), incarnation, previous, "node restarted");
                (
                    "node_restarted",
                    Some(*node),
                    None,
                    format!("incarnation {previous} -> {incarnation}"),
                )
            }
            Event::ConfigMismatch { node } => {
                tracing::error!(node = %node_name(*node), "configuration differs from ours");
                ("config_mismatch", Some(*node), None, String::new())
            }
            Event::Message { .. } | Event::MessageAcked { .. } | Event::MessageFailed { .. } => {
                return None;
            }
        };
        Some(EventRecord {
            time_ms: clock::wall_ms(),
            event: kind,
            node: node.map(node_name),
            link: link.map(link_name),
            detail,
        })
    }
}

/// Waits until a descriptor is readable or `wait` has passed (rounded up to 1 ms so a
/// timer due in 0.4 ms does not spin).
fn poll(fds: &mut [libc::pollfd], wait: Duration) {
    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid slice of pollfd for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            tracing::error!("poll: {err}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn set_realtime_priority() {
    let param = libc::sched_param {
        sched_priority: REALTIME_PRIORITY,
    };
    // SAFETY: sets the calling thread's policy; `param` is valid for the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_RR, &param) };
    if rc != 0 {
        tracing::warn!(
            "SCHED_RR for the heartbeat thread refused ({}): heartbeats may be late on a busy machine",
            std::io::Error::from_raw_os_error(rc)
        );
    }
}
