//! What the controller shows and tells: the planner's view, and the resource part of
//! `tandem status --json` (docs/status.md).

use std::collections::BTreeMap;

use tandem_config::{FencingPolicy, ResourceKind};
use tandem_policy::{
    ClusterView, Failure, GroupView, NoteLevel, PeerState, PeerView, ResourceState, ResourceView,
};

use crate::controller::Controller;
use crate::messages::state_code;

impl Controller {
    /// What the planner is told.
    pub(crate) fn view(&self) -> ClusterView {
        let now = self.now;
        let mut groups: BTreeMap<String, GroupView> = BTreeMap::new();
        for g in &self.config.groups {
            groups
                .entry(g.name.clone())
                .or_default()
                .migration_threshold = Some(g.migration_threshold);
        }
        for ((group, resource), r) in &self.resources {
            let timeout = self.failure_timeout(group);
            let failures = r
                .failures
                .iter()
                .map(|(op, at)| Failure {
                    op: *op,
                    expired: now >= *at + timeout,
                })
                .collect();
            groups
                .entry(group.clone())
                .or_default()
                .on
                .entry(self.local.clone())
                .or_default()
                .insert(
                    resource.clone(),
                    ResourceView {
                        state: r.state,
                        failures,
                    },
                );
        }
        for (group, rs) in &self.peer_groups {
            let on = groups
                .entry(group.clone())
                .or_default()
                .on
                .entry(self.peer.clone())
                .or_default();
            for (resource, view) in rs {
                on.insert(resource.clone(), view.clone());
            }
        }
        for group in self.claims.peer.keys() {
            if let Some((resource, view)) = self.claimed_view(group) {
                groups
                    .entry(group.clone())
                    .or_default()
                    .on
                    .entry(self.peer.clone())
                    .or_default()
                    .insert(resource, view);
            }
        }
        ClusterView {
            description: None,
            local: self.local.clone(),
            initdead_passed: now >= self.started_at + self.config.cluster.initdead,
            maintenance: self.maintenance,
            peer: PeerView {
                // A goodbye already made it `LeftCleanly`, so it is never `Dead` with one.
                state: self.peer_state,
                reported: self
                    .config
                    .groups
                    .iter()
                    .all(|g| self.peer_reported.contains(&g.name)),
            },
            fencing: self.coordinator.states().into_iter().collect(),
            ping: self.ping.clone(),
            requests: self.requests.iter().map(|(_, r)| r.clone()).collect(),
            groups,
            witness: self.witness.vote(),
        }
    }

    pub(crate) fn fencing_status(&self) -> serde_json::Value {
        let history = self.coordinator.history().to_json();
        serde_json::json!({
            "states": self.coordinator.states(),
            "history": history,
            "devices": self.config.fence_devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        })
    }

    /// The resource part of `tandem status --json` (docs/status.md).
    pub fn status(&self) -> serde_json::Value {
        let mut groups = Vec::new();
        // A peer that is silent and fenced (or confirmed down) runs nothing, whatever
        // it reported last: show that, not its last report.
        let peer_off = !matches!(
            self.peer_state,
            PeerState::Up | PeerState::ReturnedAfterPartition
        ) && self.coordinator.state(&self.peer).is_down();
        for group in &self.config.groups {
            let mut resources = Vec::new();
            let mut local_states = Vec::new();
            let peer_states = self.peer_groups.get(&group.name).filter(|_| !peer_off);
            for r in &group.resources {
                let key = (group.name.clone(), r.name.clone());
                let lr = self.resources.get(&key);
                let state = lr.map_or(ResourceState::Unknown, |l| l.state);
                local_states.push(state);
                // Only unexpired failures are kept.
                let failcount = lr.map_or(0, |l| l.failures.len());
                let peer_state = peer_states
                    .and_then(|p| p.get(&r.name))
                    .map_or(ResourceState::Stopped, |v| v.state);
                resources.push(serde_json::json!({
                    "name": r.name,
                    "type": r.kind.type_name(),
                    "disk": match &r.kind {
                        ResourceKind::Disk { disk } => Some(disk),
                        _ => None,
                    },
                    "state": state_code(state),
                    "peer_state": state_code(peer_state),
                    "failcount": failcount,
                    "monitor_interval_ms": r.monitor_interval.map(|d| d.as_millis() as u64),
                    "last_action": lr.and_then(|l| l.last.clone()),
                }));
            }
            let local_all = local_states.iter().all(|s| *s == ResourceState::Started);
            let local_any = local_states.iter().any(|s| s.holds());
            let peer_all = !group.resources.is_empty()
                && group.resources.iter().all(|r| {
                    peer_states
                        .and_then(|p| p.get(&r.name))
                        .is_some_and(|v| v.state == ResourceState::Started)
                });
            let owner = if local_all {
                serde_json::Value::from(self.local.clone())
            } else if peer_all {
                serde_json::Value::from(self.peer.clone())
            } else if local_any {
                serde_json::Value::from(self.local.clone())
            } else {
                serde_json::Value::Null
            };
            let blocked = self
                .last_transition
                .blocked
                .iter()
                .find(|b| b.group == group.name)
                .map(|b| b.reason.clone());
            let state = if blocked.is_some() {
                "blocked"
            } else if local_all || peer_all {
                "started"
            } else if local_states.iter().any(|s| {
                matches!(
                    s,
                    ResourceState::FailedStart
                        | ResourceState::FailedStop
                        | ResourceState::FailedMonitor
                )
            }) {
                "failed"
            } else if local_any {
                "partial"
            } else {
                "stopped"
            };
            groups.push(serde_json::json!({
                "name": group.name,
                "home": group.home,
                "owner": owner,
                "state": state,
                "blocked": blocked,
                "resources": resources,
            }));
        }
        let unsafe_notes: Vec<&str> = self
            .last_transition
            .notes
            .iter()
            .filter(|n| n.level == NoteLevel::Unsafe)
            .map(|n| n.text.as_str())
            .collect();
        serde_json::json!({
            "groups": groups,
            "maintenance": self.maintenance,
            "requests": self.requests.iter().map(|(at_ms, r)| serde_json::json!({
                "node": r.node, "kind": r.kind, "scope": r.scope, "at_ms": at_ms,
            })).collect::<Vec<_>>(),
            "ping": self.ping,
            "fencing": self.fencing_status(),
            "witness": self.witness_status(),
            "fencing_policy": match self.config.cluster.fencing {
                FencingPolicy::None => "none",
                _ => "required",
            },
            "unsafe": unsafe_notes,
            "disk_fencing": self.outdater.waiting(),
            "peer_state": format!("{:?}", self.peer_state),
            "actions": self.history,
            "transition": tandem_policy::render::summary(&self.config, &self.view(), &self.last_transition),
            "counters": self.counters.to_json(),
        })
    }
}

/// Upper bounds (seconds) of the transition-duration histogram's buckets: a failover's
/// transition takes fractions of a second to minutes (a journal replay, a resync wait).
pub(crate) const TRANSITION_BUCKETS_S: [f64; 10] =
    [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Monotonic counts since the daemon started, for `/metrics` (docs/operations.md): what
/// the controller did, kept by it because only it knows (counting is not I/O).
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    /// Transitions with at least one action that were started.
    pub(crate) transitions: u64,
    /// How long finished transitions took: per bucket of [`TRANSITION_BUCKETS_S`] the
    /// count that took at most that long (not cumulative here), their sum and count.
    transition_buckets: [u64; TRANSITION_BUCKETS_S.len()],
    transition_sum: std::time::Duration,
    transition_count: u64,
    /// Per (target, device): device runs asked for, and their results by outcome.
    fence: BTreeMap<(String, String), FenceCount>,
    /// Messages dropped as malformed, by sender: `peer` (a cluster message, or a fence
    /// record inside one, that does not decode) and `witness`.
    dropped: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default, Clone)]
struct FenceCount {
    attempts: u64,
    results: BTreeMap<&'static str, u64>,
}

impl Counters {
    /// A transition finished after `took`.
    pub(crate) fn transition_finished(&mut self, took: std::time::Duration) {
        let s = took.as_secs_f64();
        if let Some(i) = TRANSITION_BUCKETS_S.iter().position(|le| s <= *le) {
            self.transition_buckets[i] += 1;
        }
        self.transition_sum += took;
        self.transition_count += 1;
    }

    /// A malformed message from `from` (`peer` or `witness`) was dropped.
    pub(crate) fn message_dropped(&mut self, from: &'static str) {
        *self.dropped.entry(from).or_default() += 1;
    }

    pub(crate) fn fence_attempt(&mut self, target: &str, device: &str) {
        let c = self
            .fence
            .entry((target.to_string(), device.to_string()))
            .or_default();
        c.attempts += 1;
    }

    pub(crate) fn fence_result(&mut self, result: &tandem_fencing::FenceResult) {
        let Some(target) = &result.target else {
            return;
        };
        let c = self
            .fence
            .entry((target.clone(), result.device.clone()))
            .or_default();
        *c.results.entry(outcome_kind(&result.outcome)).or_default() += 1;
    }

    /// `{"transitions": N, "fence": [{"target", "device", "attempts", "results": {kind: N}}],
    /// "transition_seconds": {"buckets": [[le, cumulative count]…], "sum", "count"},
    /// "dropped_messages": {"peer": N, "witness": N}}`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let fence: Vec<serde_json::Value> = self
            .fence
            .iter()
            .map(|((target, device), c)| {
                serde_json::json!({
                    "target": target, "device": device,
                    "attempts": c.attempts, "results": c.results,
                })
            })
            .collect();
        let mut cumulative = 0;
        let buckets: Vec<serde_json::Value> = TRANSITION_BUCKETS_S
            .iter()
            .zip(self.transition_buckets)
            .map(|(le, n)| {
                cumulative += n;
                serde_json::json!([le, cumulative])
            })
            .collect();
        serde_json::json!({
            "transitions": self.transitions,
            "fence": fence,
            "transition_seconds": {
                "buckets": buckets,
                "sum": self.transition_sum.as_secs_f64(),
                "count": self.transition_count,
            },
            "dropped_messages": {
                "peer": self.dropped.get("peer").copied().unwrap_or(0),
                "witness": self.dropped.get("witness").copied().unwrap_or(0),
            },
        })
    }
}

/// The outcome's `kind` as fencing history shows it.
fn outcome_kind(outcome: &tandem_fencing::Outcome) -> &'static str {
    use tandem_fencing::Outcome;
    match outcome {
        Outcome::Success => "success",
        Outcome::Failed { .. } => "failed",
        Outcome::Timeout => "timeout",
        Outcome::NotInstalled => "not-installed",
        Outcome::Error { .. } => "error",
    }
}
