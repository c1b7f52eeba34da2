//! Safety checks on a plan, written independently of the planner's own reasoning so
//! that a planner bug shows up as a [`Violation`] (in the golden tests, the property
//! tests, and — cheaply — in the daemon before it executes anything).

use tandem_config::{Config, FencingPolicy};

use crate::plan::peer_name;
use crate::transition::{ActionId, ActionKind, NoteLevel, Transition};
use crate::view::{ClusterView, PeerState, ResourceState};

/// A plan that breaks a safety rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// An action names an id that is not an earlier action, or its own id is wrong.
    #[error("action #{0}: malformed dependency list")]
    BadGraph(u32),
    /// Maintenance mode, yet the plan does something.
    #[error("maintenance mode but the plan has {0} action(s)")]
    ActionsInMaintenance(usize),
    /// A start while the peer may run the group and is neither fenced, confirmed down,
    /// nor gone cleanly, and the start does not wait for a fence.
    #[error(
        "start of {group}:{resource} while {peer} may run {group} and is not known down (no fence before it)"
    )]
    StartWhilePeerMayRun {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// The peer.
        peer: String,
    },
    /// A start of a resource that may still be running here (failed or unknown state,
    /// or already started) without stopping it first.
    #[error("start of {group}:{resource} (now {state:?}) without stopping it first")]
    StartWithoutStop {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// Its current state.
        state: ResourceState,
    },
    /// A resource starts before one left of it is running, or stops before one right
    /// of it has stopped.
    #[error("{group}: {what}")]
    Order {
        /// Group.
        group: String,
        /// What is out of order.
        what: String,
    },
    /// Something is started or stopped in a group whose stop failed here.
    #[error("{group}: action on a group whose stop failed on this node")]
    ActionAfterFailedStop {
        /// Group.
        group: String,
    },
}

/// Checks `t` against the safety rules for `view`:
///
/// - the graph only points backwards; maintenance mode plans nothing;
/// - no start of a group while the peer may run it (its report says it holds the group,
///   or there is no trustworthy report) unless the peer left cleanly, is fenced or
///   confirmed down, or the start runs after a `Fence` of the peer — or, with
///   `fencing = "none"`, the plan flags the group as unsafe;
/// - no start of a resource that is started, failed or unknown here without a stop (or a
///   `Restart`) first;
/// - within a group, starts go left to right and stops right to left.
pub fn check(config: &Config, view: &ClusterView, t: &Transition) -> Result<(), Violation> {
    for (i, a) in t.actions.iter().enumerate() {
        let id = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1);
        if a.id != ActionId(id) || a.after.iter().any(|p| p.0 == 0 || p.0 >= id) {
            return Err(Violation::BadGraph(id));
        }
    }
    if view.maintenance && !t.actions.is_empty() {
        return Err(Violation::ActionsInMaintenance(t.actions.len()));
    }
    let Some(peer) = peer_name(config, &view.local) else {
        return Ok(());
    };
    let local = view.local.as_str();
    let fence_ids: Vec<ActionId> = t
        .actions
        .iter()
        .filter(|a| matches!(&a.kind, ActionKind::Fence { node, .. } if node == peer))
        .map(|a| a.id)
        .collect();
    let peer_reports = matches!(
        view.peer.state,
        PeerState::Up | PeerState::ReturnedAfterPartition
    ) && view.peer.reported;
    let peer_known_down =
        view.peer.state == PeerState::LeftCleanly || view.peer_fence_state(peer).is_down();

    for group in &config.groups {
        let g = group.name.as_str();
        let state = |node: &str, r: &str| {
            view.resource(g, node, r)
                .map(|rv| rv.state)
                .unwrap_or_default()
        };
        let peer_holds = group.resources.iter().any(|r| state(peer, &r.name).holds());
        let peer_may_run = !peer_known_down && (!peer_reports || peer_holds);
        let unsafe_flagged = config.cluster.fencing == FencingPolicy::None
            && t.notes
                .iter()
                .any(|n| n.level == NoteLevel::Unsafe && n.group.as_deref() == Some(g));
        let local_failed_stop = group
            .resources
            .iter()
            .any(|r| state(local, &r.name) == ResourceState::FailedStop);

        // Per resource index: ids of its stop and start/restart actions.
        let n = group.resources.len();
        let mut stops: Vec<Vec<ActionId>> = vec![Vec::new(); n];
        let mut starts: Vec<Vec<ActionId>> = vec![Vec::new(); n];
        let mut restarts: Vec<Vec<ActionId>> = vec![Vec::new(); n];
        for a in &t.actions {
            let (ag, ar) = match &a.kind {
                ActionKind::Start { group, resource }
                | ActionKind::Stop { group, resource }
                | ActionKind::Restart { group, resource } => (group, resource),
                _ => continue,
            };
            if ag != g {
                continue;
            }
            let Some(i) = group.resources.iter().position(|r| &r.name == ar) else {
                continue;
            };
            if local_failed_stop {
                return Err(Violation::ActionAfterFailedStop {
                    group: g.to_string(),
                });
            }
            match &a.kind {
                ActionKind::Start { .. } => starts[i].push(a.id),
                ActionKind::Stop { .. } => stops[i].push(a.id),
                _ => restarts[i].push(a.id),
            }
        }

        for (i, r) in group.resources.iter().enumerate() {
            let now = state(local, &r.name);
            for &s in starts[i].iter().chain(&restarts[i]) {
                // Peer safety.
                if peer_may_run && !fence_ids.iter().any(|&f| t.depends_on(s, f)) && !unsafe_flagged
                {
                    return Err(Violation::StartWhilePeerMayRun {
                        group: g.to_string(),
                        resource: r.name.clone(),
                        peer: peer.to_string(),
                    });
                }
                let is_restart = restarts[i].contains(&s);
                let stopped_first = stops[i].iter().any(|&x| t.depends_on(s, x));
                let ok_state = match now {
                    ResourceState::Stopped => true,
                    ResourceState::FailedMonitor | ResourceState::FailedStart => is_restart,
                    _ => false,
                };
                if !ok_state && !stopped_first {
                    return Err(Violation::StartWithoutStop {
                        group: g.to_string(),
                        resource: r.name.clone(),
                        state: now,
                    });
                }
                // Left of it: running and staying so, or (re)started before it.
                for (j, left) in group.resources.iter().enumerate().take(i) {
                    let up_before = starts[j]
                        .iter()
                        .chain(&restarts[j])
                        .any(|&x| t.depends_on(s, x));
                    let stays_up = state(local, &left.name) == ResourceState::Started
                        && stops[j].is_empty()
                        && restarts[j].is_empty();
                    if !up_before && !stays_up {
                        return Err(Violation::Order {
                            group: g.to_string(),
                            what: format!(
                                "{} starts while {} (left of it) is not running",
                                r.name, left.name
                            ),
                        });
                    }
                }
            }
            // Right of a stop (or restart): stopped already, or stopped before it.
            for &s in stops[i].iter().chain(&restarts[i]) {
                for (j, right) in group.resources.iter().enumerate().skip(i + 1) {
                    let down_before = stops[j].iter().any(|&x| t.depends_on(s, x));
                    let is_down = state(local, &right.name) == ResourceState::Stopped;
                    if !down_before && !is_down {
                        return Err(Violation::Order {
                            group: g.to_string(),
                            what: format!(
                                "{} stops while {} (right of it) may still run",
                                r.name, right.name
                            ),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}
