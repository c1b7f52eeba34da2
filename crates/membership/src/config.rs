//! What the core is given at start: the cluster's nodes and links, the timing, the key.

use std::collections::HashSet;
use std::time::Duration;

use tandem_wire::PacketKey;

/// A node's id in the cluster configuration (never 0: 0 means "every node" on the wire).
pub type NodeId = u32;
/// A heartbeat link's id, the same on every node (both ends of a link agree on it).
pub type LinkId = u16;

/// Most nodes one heartbeat view can describe.
pub const MAX_NODES: usize = tandem_wire::MAX_VIEW_ENTRIES;
/// Most links per node (link ids up to 31 show in a heartbeat's link mask).
pub const MAX_LINKS: usize = 16;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Its id.
    pub id: NodeId,
    /// Its name (`uname -n` in Heartbeat terms).
    pub name: String,
}

/// One heartbeat link (a UDP medium or a serial line); the driver maps it to a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Its id.
    pub id: LinkId,
    /// Its name, shown in status (e.g. `eth1`, `ttyS0`).
    pub name: String,
}

/// Bounds of the reliable-message layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// Time before the first retransmission.
    pub initial: Duration,
    /// Cap of the exponential backoff.
    pub max: Duration,
    /// Transmissions of one message (first send included) before it is abandoned.
    pub attempts: u32,
    /// Messages in flight per destination (sent, not yet acknowledged).
    pub window: usize,
    /// Messages queued per destination, in flight included; `send_message` refuses more.
    pub queue_limit: usize,
}

impl RetransmitConfig {
    /// Defaults scaled to the keepalive: first retry after half a keepalive (at least
    /// 10 ms), doubling up to four keepalives, ten transmissions in all. With the default
    /// deadtime this gives up at about the time the peer would be declared dead anyway.
    pub fn for_keepalive(keepalive: Duration) -> Self {
        Self {
            initial: (keepalive / 2).max(Duration::from_millis(10)),
            max: keepalive * 4,
            attempts: 10,
            window: 32,
            queue_limit: 256,
        }
    }
}

/// Everything the membership core is configured with.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Cluster id carried in every packet; packets of other clusters are dropped.
    pub cluster_id: u64,
    /// This node's id (must be in `nodes`).
    pub local_node: NodeId,
    /// Every node of the cluster, this one included.
    pub nodes: Vec<NodeConfig>,
    /// The heartbeat links.
    pub links: Vec<LinkConfig>,
    /// Interval between heartbeats.
    pub keepalive: Duration,
    /// Silence (on every link) after which a node is declared dead.
    pub deadtime: Duration,
    /// A heartbeat arriving after a silence this long is reported late.
    pub warntime: Duration,
    /// At start, how long a never-heard node stays `unknown` before it is declared dead.
    pub initdead: Duration,
    /// The HMAC key.
    pub key: PacketKey,
    /// Digest of the cluster configuration, carried in heartbeats for comparison.
    pub config_digest: [u8; 32],
    /// Reliable-message bounds.
    pub retransmit: RetransmitConfig,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The keepalive is zero.
    #[error("keepalive must be greater than zero")]
    ZeroKeepalive,
    /// deadtime ≤ 2 × keepalive: one lost heartbeat and a little delay would kill a node.
    #[error("deadtime {deadtime:?} must be more than twice keepalive {keepalive:?}")]
    DeadtimeTooShort {
        /// Configured deadtime.
        deadtime: Duration,
        /// Configured keepalive.
        keepalive: Duration,
    },
    /// warntime must lie in [keepalive, deadtime).
    #[error("warntime {warntime:?} must be at least keepalive and less than deadtime")]
    BadWarntime {
        /// Configured warntime.
        warntime: Duration,
    },
    /// initdead must be at least deadtime.
    #[error("initdead {initdead:?} must be at least deadtime {deadtime:?}")]
    InitdeadTooShort {
        /// Configured initdead.
        initdead: Duration,
        /// Configured deadtime.
        deadtime: Duration,
    },
    /// The local node is not among the nodes.
    #[error("local node {0} is not in the node list")]
    LocalNodeMissing(NodeId),
    /// Node id 0 or a duplicate id or name.
    #[error("node id {0} is 0 or used twice, or its name is used twice")]
    BadNodeId(NodeId),
    /// A duplicate link id or name.
    #[error("link id {0} is used twice, or its name is used twice")]
    DuplicateLink(LinkId),
    /// No links, or too many links or nodes.
    #[error("need 1..={MAX_LINKS} links and 2..={MAX_NODES} nodes")]
    BadCounts,
    /// Incarnation 0 is reserved for "never heard".
    #[error("incarnation must be at least 1")]
    ZeroIncarnation,
    /// A retransmit bound is zero.
    #[error("retransmit initial, attempts, window and queue_limit must be non-zero")]
    BadRetransmit,
}

impl MembershipConfig {
    /// Checks the configuration; the core refuses to start on any error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keepalive.is_zero() {
            return Err(ConfigError::ZeroKeepalive);
        }
        if self.deadtime <= self.keepalive * 2 {
            return Err(ConfigError::DeadtimeTooShort {
                deadtime: self.deadtime,
                keepalive: self.keepalive,
            });
        }
        if self.warntime < self.keepalive || self.warntime >= self.deadtime {
            return Err(ConfigError::BadWarntime {
                warntime: self.warntime,
            });
        }
        if self.initdead < self.deadtime {
            return Err(ConfigError::InitdeadTooShort {
                initdead: self.initdead,
                deadtime: self.deadtime,
            });
        }
        if self.links.is_empty()
            || self.links.len() > MAX_LINKS
            || self.nodes.len() < 2
            || self.nodes.len() > MAX_NODES
        {
            return Err(ConfigError::BadCounts);
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for n in &self.nodes {
            if n.id == 0 || !ids.insert(n.id) || !names.insert(n.name.as_str()) {
                return Err(ConfigError::BadNodeId(n.id));
            }
        }
        if !ids.contains(&self.local_node) {
            return Err(ConfigError::LocalNodeMissing(self.local_node));
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for l in &self.links {
            if !ids.insert(l.id) || !names.insert(l.name.as_str()) {
                return Err(ConfigError::DuplicateLink(l.id));
            }
        }
        let r = &self.retransmit;
        if r.initial.is_zero() || r.attempts == 0 || r.window == 0 || r.queue_limit == 0 {
            return Err(ConfigError::BadRetransmit);
        }
        Ok(())
    }
}
