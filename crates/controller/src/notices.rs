//! Notifications: what the controller tells the operator's `[[notify]]` commands, as
//! [`Command::Notify`] values. It decides *that* something happened (the peer died, a
//! fence succeeded, a group started here); the shell runs the commands, off this
//! thread, bounded (src/daemon/notify.rs).
//!
//! Each node tells what it saw itself, so one event is told once in the cluster: the
//! survivor tells `node_dead` and `fenced`; `group_started`, `group_stopped` and
//! `group_moved` come from the node where the group started or stopped.

use std::collections::BTreeMap;

use tandem_membership::Event;
use tandem_policy::{FenceState, ResourceState};

use crate::controller::Controller;
use crate::types::{Command, Notice};

/// What the controller remembers to tell changes apart.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// Whether each group runs here (every resource started), once probed.
    here: BTreeMap<String, bool>,
    /// The node each group last ran on (here or the peer).
    last_owner: BTreeMap<String, String>,
    /// The peer's fence state when last looked at.
    fence: FenceState,
}

impl Controller {
    fn notify(&mut self, event: &'static str, node: Option<String>, group: Option<String>) {
        let detail = String::new();
        self.notify_with(Notice {
            event,
            node,
            group,
            disk: None,
            detail,
            time_ms: 0,
        });
    }

    fn notify_with(&mut self, mut notice: Notice) {
        notice.time_ms = self.wall_ms();
        self.commands.push_back(Command::Notify(notice));
    }

    /// The peer's membership events worth telling.
    pub(crate) fn notice_membership(&mut self, event: &Event) {
        let peer = Some(self.peer.clone());
        match event {
            // After a goodbye the peer left; it did not die.
            Event::NodeDead { node, .. } if *node == self.peer_id && !self.peer_said_goodbye => {
                self.notify("node_dead", peer, None);
            }
            Event::NodeUp { node, .. } if *node == self.peer_id => {
                self.notify("node_up", peer, None);
            }
            Event::NodeReturnedAfterPartition { node, .. } if *node == self.peer_id => {
                self.notify("node_returned_after_partition", peer, None);
            }
            _ => {}
        }
    }

    /// After every step: fence verdicts and groups that started, stopped or moved.
    pub(crate) fn notice_changes(&mut self) {
        let fence = self.coordinator.state(&self.peer);
        if fence != self.watch.fence {
            self.watch.fence = fence;
            let event = match fence {
                FenceState::FencedOk | FenceState::ConfirmedByOperator => Some("fenced"),
                FenceState::Failed => Some("fence_failed"),
                _ => None,
            };
            if let Some(event) = event {
                let detail = match fence {
                    FenceState::ConfirmedByOperator => "confirmed down by an operator",
                    FenceState::FencedOk => "a fence device confirmed it is off",
                    _ => "every device and retry of this round failed",
                };
                self.notify_with(Notice {
                    event,
                    node: Some(self.peer.clone()),
                    group: None,
                    disk: None,
                    detail: detail.into(),
                    time_ms: 0,
                });
            }
        }
        let groups: Vec<String> = self.config.groups.iter().map(|g| g.name.clone()).collect();
        for group in groups {
            self.notice_group(&group);
        }
    }

    fn notice_group(&mut self, group: &str) {
        let states: Vec<ResourceState> = self
            .resources
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|(_, r)| r.state)
            .collect();
        if states.is_empty() || states.contains(&ResourceState::Unknown) {
            return; // not probed yet: nothing to compare with
        }
        let here = states.iter().all(|s| *s == ResourceState::Started);
        let peer_runs = self.peer_groups.get(group).is_some_and(|rs| {
            !rs.is_empty() && rs.values().all(|v| v.state == ResourceState::Started)
        });
        let was = self.watch.here.insert(group.to_string(), here);
        let before = self.watch.last_owner.get(group).cloned();
        if here {
            self.watch
                .last_owner
                .insert(group.to_string(), self.local.clone());
        } else if peer_runs {
            self.watch
                .last_owner
                .insert(group.to_string(), self.peer.clone());
        }
        let Some(was) = was else {
            return; // the first look after the probes: what already ran is no news
        };
        let local = Some(self.local.clone());
        match (was, here) {
            (false, true) => {
                self.notify("group_started", local.clone(), Some(group.into()));
                if let Some(from) = before.filter(|n| *n != self.local) {
                    self.notify_with(Notice {
                        event: "group_moved",
                        node: local,
                        group: Some(group.into()),
                        disk: None,
                        detail: format!("from {from}"),
                        time_ms: 0,
                    });
                }
            }
            (true, false) => self.notify("group_stopped", local, Some(group.into())),
            _ => {}
        }
    }
}
