//! The event thread: turns the membership driver's events into log lines and the event
//! history that `tandem status` shows.

use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tandem_membership::driver::{Driver, TimedEvent};
use tandem_membership::{Event, LinkId, MembershipConfig, NodeId};

use super::manager::Input;
use super::{EVENT_HISTORY_LEN, EventRecord, Shared};
use crate::clock;

/// Node and link names by id, for logs and status.
pub struct Names {
    nodes: Vec<(NodeId, String)>,
    links: Vec<(LinkId, String)>,
}

impl Names {
    /// The names of `config`'s nodes and links.
    pub fn new(config: &MembershipConfig) -> Self {
        Self {
            nodes: config
                .nodes
                .iter()
                .map(|n| (n.id, n.name.clone()))
                .collect(),
            links: config
                .links
                .iter()
                .map(|l| (l.id, l.name.clone()))
                .collect(),
        }
    }

    fn node(&self, id: NodeId) -> String {
        self.nodes
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(|| format!("#{id}"), |(_, n)| n.clone())
    }

    fn link(&self, id: LinkId) -> String {
        self.links
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(|| format!("#{id}"), |(_, n)| n.clone())
    }
}

/// The daemon's exit status when its heartbeat thread ended (EX_SOFTWARE): it must not
/// run on without it — resources kept running on a node that no longer speaks for them
/// are what the peer will fence — so it exits, loudly, and systemd restarts it.
pub const EXIT_HEARTBEAT_THREAD_ENDED: i32 = 70;

/// Starts the thread. Every event also goes to the resource manager, when there is
/// one. The driver lives as long as the daemon, so its events end only when its
/// thread died: then the whole daemon exits with [`EXIT_HEARTBEAT_THREAD_ENDED`].
pub fn spawn(
    driver: Arc<Driver>,
    names: Names,
    shared: Arc<Mutex<Shared>>,
    manager: Option<SyncSender<Input>>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            let events = driver.events();
            while let Ok(timed) = events.recv() {
                let record = record(&names, &timed);
                if let Some(manager) = &manager {
                    let _ = manager.send(tandem_controller::Input::Membership(timed.event).into());
                }
                let Some(record) = record else {
                    continue;
                };
                let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
                if shared.events.len() == EVENT_HISTORY_LEN {
                    shared.events.pop_front();
                }
                shared.events.push_back(record);
            }
            let why = driver
                .failure()
                .unwrap_or_else(|| "it ended without saying why".into());
            tracing::error!(
                "the heartbeat thread stopped ({why}): exiting with status {EXIT_HEARTBEAT_THREAD_ENDED} rather than running on unheard"
            );
            eprintln!("tandem daemon: the heartbeat thread stopped ({why}); exiting");
            std::process::exit(EXIT_HEARTBEAT_THREAD_ENDED);
        })
        .context("start the event thread")?;
    Ok(())
}

/// Logs an event and turns it into a status record stamped with the wall-clock time the
/// driver saw it (not the time this thread got to it).
fn record(names: &Names, timed: &TimedEvent) -> Option<EventRecord> {
    let (kind, node, link, detail) = match &timed.event {
        Event::NodeUp { node, incarnation } => {
            tracing::info!(node = %names.node(*node), incarnation, "node up");
            (
                "node_up",
                Some(*node),
                None,
                format!("incarnation {incarnation}"),
            )
        }
        Event::NodeLate { node, gap } => {
            tracing::warn!(node = %names.node(*node), gap_ms = gap.as_millis() as u64, "late heartbeat");
            (
                "node_late",
                Some(*node),
                None,
                format!("gap {} ms", gap.as_millis()),
            )
        }
        Event::NodeDead { node, incarnation } => {
            tracing::warn!(node = %names.node(*node), ?incarnation, "node dead");
            ("node_dead", Some(*node), None, String::new())
        }
        Event::LinkUp { node, link } => {
            tracing::info!(node = %names.node(*node), link = %names.link(*link), "link up");
            ("link_up", Some(*node), Some(*link), String::new())
        }
        Event::LinkDown { node, link } => {
            tracing::warn!(node = %names.node(*node), link = %names.link(*link), "link down");
            ("link_down", Some(*node), Some(*link), String::new())
        }
        Event::LinkClosed { link, error } => {
            tracing::error!(link = %names.link(*link), %error, "link closed after an error; reopening it");
            ("link_closed", None, Some(*link), error.clone())
        }
        Event::LinkReopened { link } => {
            tracing::info!(link = %names.link(*link), "link reopened");
            ("link_reopened", None, Some(*link), String::new())
        }
        Event::NodeReturnedAfterPartition { node, incarnation } => {
            tracing::error!(
                node = %names.node(*node),
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
            tracing::info!(node = %names.node(*node), incarnation, previous, "node restarted");
            (
                "node_restarted",
                Some(*node),
                None,
                format!("incarnation {previous} -> {incarnation}"),
            )
        }
        Event::ConfigMismatch { node } => {
            tracing::error!(node = %names.node(*node), "its configuration differs from ours");
            ("config_mismatch", Some(*node), None, String::new())
        }
        Event::Message { .. } | Event::MessageAcked { .. } | Event::MessageFailed { .. } => {
            return None;
        }
    };
    let age_ms = clock::now().saturating_duration_since(timed.at).as_millis() as u64;
    Some(EventRecord {
        time_ms: clock::wall_ms().saturating_sub(age_ms),
        event: kind,
        node: node.map(|n| names.node(n)),
        link: link.map(|l| names.link(l)),
        detail,
    })
}
