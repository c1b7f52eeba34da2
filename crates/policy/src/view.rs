//! What the planner is told about the cluster: [`ClusterView`].
//!
//! The daemon builds a view from membership events, the executor's resource results,
//! the peer's state reports (cluster messages), the fencing coordinator and operator
//! requests. Everything time-dependent arrives already decided: "initdead has passed",
//! "this failure has expired". The view deserializes from TOML so that golden cases and
//! `tandem simulate` use exactly the type the daemon fills in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_config::Config;

/// Migration threshold used when a group's view does not give one: after this many
/// unexpired monitor failures of one resource, a node no longer runs the group.
pub const DEFAULT_MIGRATION_THRESHOLD: u32 = 3;

/// Everything the planner needs to know, as seen from the local node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterView {
    /// A one-line description, shown at the top of a summary (cases only).
    #[serde(default)]
    pub description: Option<String>,
    /// The node this plan is for; the other configured node is the peer.
    pub local: String,
    /// Whether the startup grace period (`initdead`) is over.
    #[serde(default = "yes")]
    pub initdead_passed: bool,
    /// Maintenance mode: the planner plans nothing at all.
    #[serde(default)]
    pub maintenance: bool,
    /// The peer as membership and its reports show it.
    pub peer: PeerView,
    /// Fencing state per node name; a node absent here is `not-needed`.
    #[serde(default)]
    pub fencing: BTreeMap<String, FenceState>,
    /// Outside connectivity per node name (ipfail): `true` = the ping targets answer.
    /// Consulted only when the configuration has ping targets; absent = reachable.
    #[serde(default)]
    pub ping: BTreeMap<String, bool>,
    /// Standing operator requests (`tandem standby` / `tandem takeover`), oldest first.
    /// For each group the newest request that covers it decides.
    #[serde(default)]
    pub requests: Vec<Request>,
    /// Per group name: resource states on both nodes. A group absent here is stopped
    /// everywhere (as far as the reports go).
    #[serde(default)]
    pub groups: BTreeMap<String, GroupView>,
    /// The witness's vote for the current loss of contact with the peer.
    #[serde(default)]
    pub witness: WitnessVote,
}

/// Where this node stands with the witness while it has lost its peer (DESIGN §3.3). It
/// matters only while the peer is dead or never heard; otherwise it is `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WitnessVote {
    /// No witness configured, or it was gone well before the peer: fencing works as
    /// without one (the node holding no group waits `fencing_delay`).
    #[default]
    None,
    /// The vote was asked for; no answer yet. No fence and no takeover meanwhile.
    Asking,
    /// This node has the vote: it fences its peer at once, without `fencing_delay`.
    Granted,
    /// The witness gave the vote to the peer, or will not give it to this node: it
    /// neither fences nor takes over.
    Refused,
    /// This node lost the peer and the witness together: it neither fences nor takes
    /// over, and runs nothing (it stops what it holds; the peer may have the vote).
    Isolated,
}

fn yes() -> bool {
    true
}

/// The peer's membership state and whether it has reported its groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerView {
    /// Membership verdict.
    pub state: PeerState,
    /// Whether a state report from the peer's current incarnation has arrived; until
    /// then its entries in [`ClusterView::groups`] are not trusted.
    #[serde(default = "yes")]
    pub reported: bool,
}

/// Membership state of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Heard and healthy (membership `NodeUp`, also after `NodeRestarted`).
    Up,
    /// Declared dead (`NodeDead`): silent for deadtime.
    Dead,
    /// Never heard since this daemon started. Before initdead passes the planner waits;
    /// after, it treats the peer as dead (it may be about to start groups).
    Unknown,
    /// Declared dead, then heard again with the same incarnation
    /// (`NodeReturnedAfterPartition`): alive all along, maybe running groups.
    ReturnedAfterPartition,
    /// Said goodbye after releasing its groups: known to run nothing, no fencing.
    LeftCleanly,
}

/// Fencing state of one node, from the fencing coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceState {
    /// No fencing wanted or under way.
    #[default]
    NotNeeded,
    /// Someone decided the node must be fenced; no attempt yet.
    Required,
    /// An attempt (or its retries) is under way.
    InProgress,
    /// A device confirmed the node is off. Reset to `not-needed` when the node comes
    /// back with a new incarnation.
    FencedOk,
    /// Every device and retry of the current round failed.
    Failed,
    /// An operator ran `tandem fence confirm NODE` (Heartbeat's meatware).
    ConfirmedByOperator,
}

impl FenceState {
    /// Whether the node is known to be down by fencing or by an operator.
    pub fn is_down(self) -> bool {
        matches!(self, FenceState::FencedOk | FenceState::ConfirmedByOperator)
    }
}

/// An operator request, carried as a cluster message so both nodes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The node the command ran on.
    pub node: String,
    /// Standby or takeover.
    pub kind: RequestKind,
    /// Which groups, relative to `node`.
    #[serde(default)]
    pub scope: Scope,
}

/// `tandem standby` (give groups away) or `tandem takeover` (pull groups here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestKind {
    /// `hb_standby`: the node gives up the groups in scope to the other node.
    Standby,
    /// `hb_takeover`: the node takes the groups in scope from the other node.
    Takeover,
}

/// `all|local|foreign`, as `hb_standby` / `hb_takeover` read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every group.
    #[default]
    All,
    /// Groups whose home is the requesting node.
    Local,
    /// Groups whose home is the other node.
    Foreign,
}

impl Scope {
    /// Whether a group with home `home` is covered when `node` asks.
    pub fn covers(self, node: &str, home: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Local => node == home,
            Scope::Foreign => node != home,
        }
    }
}

/// One group on both nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupView {
    /// Unexpired monitor failures of one resource on one node at which that node stops
    /// running the group (Pacemaker's migration-threshold). Default 3.
    #[serde(default)]
    pub migration_threshold: Option<u32>,
    /// Node name → resource name → state. Absent node or resource = stopped.
    #[serde(default)]
    pub on: BTreeMap<String, BTreeMap<String, ResourceView>>,
}

impl GroupView {
    /// The effective migration threshold (never below 1).
    pub fn threshold(&self) -> u32 {
        self.migration_threshold
            .unwrap_or(DEFAULT_MIGRATION_THRESHOLD)
            .max(1)
    }
}

/// One resource on one node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceView {
    /// What the executor (locally) or the peer's report says.
    #[serde(default)]
    pub state: ResourceState,
    /// Recorded failures, oldest first, each already judged expired or not by the
    /// caller (failure timeout against its clock). A failure that just happened is
    /// already in this list when the state says `failed-*`.
    #[serde(default)]
    pub failures: Vec<Failure>,
}

/// State of one resource on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceState {
    /// Not running.
    #[default]
    Stopped,
    /// A start is in flight.
    Starting,
    /// Running (last start or monitor succeeded).
    Started,
    /// A stop is in flight.
    Stopping,
    /// The last start failed; the resource may be partly up.
    FailedStart,
    /// The last stop failed: the resource may still run and cannot be stopped.
    FailedStop,
    /// The last monitor failed: the resource is not healthy.
    FailedMonitor,
    /// Not known (e.g. after the daemon restarted): must be probed before anything else.
    Unknown,
}

impl ResourceState {
    /// Whether a node in this state may hold (run, partly run) the resource.
    pub fn holds(self) -> bool {
        self != ResourceState::Stopped
    }
}

/// One recorded failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// Which operation failed.
    pub op: FailedOp,
    /// Whether it is older than the failure timeout (it no longer counts).
    #[serde(default)]
    pub expired: bool,
}

/// The operation a [`Failure`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailedOp {
    /// Start failures are fatal for the node while they have not expired (as
    /// Pacemaker's start-failure-is-fatal).
    Start,
    /// Monitor failures count against the migration threshold.
    Monitor,
    /// Stop failures make the node a fencing target (the state says so while current).
    Stop,
}

/// A view that does not fit the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The configuration does not have exactly two nodes.
    #[error("the planner needs exactly two [[node]] entries, the configuration has {0}")]
    NodeCount(usize),
    /// `local` is not a configured node.
    #[error("local node `{0}` is not a configured [[node]]")]
    UnknownLocal(String),
    /// A node name in the view is not configured.
    #[error("{context}: unknown node `{node}`")]
    UnknownNode {
        /// Where in the view.
        context: String,
        /// The name.
        node: String,
    },
    /// A group name in the view is not configured.
    #[error("groups.{0}: no [[group]] of that name in the configuration")]
    UnknownGroup(String),
    /// A resource name in the view is not in its group.
    #[error("groups.{group}.on.{node}.{resource}: group `{group}` has no such resource")]
    UnknownResource {
        /// Group.
        group: String,
        /// Node.
        node: String,
        /// Resource.
        resource: String,
    },
}

impl ClusterView {
    /// Checks that every name in the view is configured, so that nothing is silently
    /// ignored. [`crate::plan`] itself tolerates a view that fails this check (unknown
    /// names are ignored), because a daemon must never crash on a stale report.
    pub fn validate(&self, config: &Config) -> Result<(), ViewError> {
        if config.nodes.len() != 2 {
            return Err(ViewError::NodeCount(config.nodes.len()));
        }
        if config.node(&self.local).is_none() {
            return Err(ViewError::UnknownLocal(self.local.clone()));
        }
        let known = |context: &str, node: &str| -> Result<(), ViewError> {
            if config.node(node).is_none() {
                return Err(ViewError::UnknownNode {
                    context: context.to_string(),
                    node: node.to_string(),
                });
            }
            Ok(())
        };
        for node in self.fencing.keys() {
            known("fencing", node)?;
        }
        for node in self.ping.keys() {
            known("ping", node)?;
        }
        for r in &self.requests {
            known("requests", &r.node)?;
        }
        for (name, g) in &self.groups {
            let Some(group) = config.group(name) else {
                return Err(ViewError::UnknownGroup(name.clone()));
            };
            for (node, resources) in &g.on {
                known(&format!("groups.{name}.on"), node)?;
                for res in resources.keys() {
                    if !group.resources.iter().any(|r| &r.name == res) {
                        return Err(ViewError::UnknownResource {
                            group: name.clone(),
                            node: node.clone(),
                            resource: res.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The state of `resource` of `group` on `node` (stopped when not reported).
    pub fn resource(&self, group: &str, node: &str, resource: &str) -> Option<&ResourceView> {
        self.groups.get(group)?.on.get(node)?.get(resource)
    }

    /// The fencing state of `node`.
    pub fn fence_state(&self, node: &str) -> FenceState {
        self.fencing.get(node).copied().unwrap_or_default()
    }

    /// Whether the peer is alive by membership (up, or back after a partition).
    pub fn peer_alive(&self) -> bool {
        matches!(
            self.peer.state,
            PeerState::Up | PeerState::ReturnedAfterPartition
        )
    }

    /// The peer's fencing state as the planner uses it: "fenced" or "confirmed down"
    /// from a peer that membership hears right now is stale (it came back, or the
    /// operator confirmed the wrong node) and counts as `not-needed`.
    pub fn peer_fence_state(&self, peer: &str) -> FenceState {
        let s = self.fence_state(peer);
        if s.is_down() && self.peer_alive() {
            FenceState::NotNeeded
        } else {
            s
        }
    }
}
