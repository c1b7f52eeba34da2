//! Drop reasons and the status snapshot the daemon serializes for `tandem status --json`.

use serde::Serialize;
use serde::ser::SerializeMap;
use tandem_wire::DecodeError;

use crate::config::{LinkId, NodeId};

/// Why a received datagram was dropped. Counted per local link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than its header says, or than a header.
    Truncated,
    /// Longer than the largest packet.
    Oversized,
    /// Not a tandem packet, or a version/kind/flag this code does not speak.
    Malformed,
    /// Bytes left over after the packet.
    LengthMismatch,
    /// MAC does not verify: wrong key, corruption or forgery.
    BadMac,
    /// Another cluster's packet (shared segment).
    OtherCluster,
    /// Sender id not in the configuration.
    UnknownNode,
    /// Our own packet looped back (broadcast or multicast loop).
    OwnPacket,
    /// Authentic, but sent on another link than it arrived on (a cross-link replay).
    WrongLink,
    /// Authentic, but from an incarnation older than the sender's current one.
    OldIncarnation,
    /// Authentic, but its sequence number was seen already or is older than the window.
    Replay,
    /// Authentic, but its body does not parse.
    BadBody,
    /// A message or ack addressed to another node (normal on shared media).
    OtherDestination,
    /// A message or ack addressed to a previous incarnation of this node, or an old
    /// stream epoch.
    Stale,
    /// A message too far ahead of the receive window.
    OutOfWindow,
}

impl DropReason {
    /// Every reason, in the order status lists them.
    pub const ALL: [DropReason; 15] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::Malformed,
        DropReason::LengthMismatch,
        DropReason::BadMac,
        DropReason::OtherCluster,
        DropReason::UnknownNode,
        DropReason::OwnPacket,
        DropReason::WrongLink,
        DropReason::OldIncarnation,
        DropReason::Replay,
        DropReason::BadBody,
        DropReason::OtherDestination,
        DropReason::Stale,
        DropReason::OutOfWindow,
    ];

    /// The reason's name in status JSON (snake case).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::LengthMismatch => "length_mismatch",
            DropReason::BadMac => "bad_mac",
            DropReason::OtherCluster => "other_cluster",
            DropReason::UnknownNode => "unknown_node",
            DropReason::OwnPacket => "own_packet",
            DropReason::WrongLink => "wrong_link",
            DropReason::OldIncarnation => "old_incarnation",
            DropReason::Replay => "replay",
            DropReason::BadBody => "bad_body",
            DropReason::OtherDestination => "other_destination",
            DropReason::Stale => "stale",
            DropReason::OutOfWindow => "out_of_window",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<DecodeError> for DropReason {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Truncated { .. } => DropReason::Truncated,
            DecodeError::Oversized { .. } => DropReason::Oversized,
            DecodeError::BadMagic
            | DecodeError::BadVersion(_)
            | DecodeError::UnknownKind(_)
            | DecodeError::BadFlags(_) => DropReason::Malformed,
            DecodeError::LengthMismatch { .. } => DropReason::LengthMismatch,
            DecodeError::BadMac => DropReason::BadMac,
            DecodeError::BadBody(_) => DropReason::BadBody,
        }
    }
}

/// Drop counters by reason. Serializes as a map with every reason's name as a key, so
/// the JSON has the same keys whether or not anything was dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// Count one drop.
    pub fn add(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }

    /// Drops counted for a reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Serialize for DropCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(DropReason::ALL.len()))?;
        for r in DropReason::ALL {
            map.serialize_entry(r.name(), &self.get(r))?;
        }
        map.end()
    }
}

/// A node's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not heard since start, and initdead has not passed.
    Unknown,
    /// Heard within deadtime.
    Up,
    /// Declared dead.
    Dead,
}

/// Snapshot of the membership core, for `tandem status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Cluster id.
    pub cluster_id: u64,
    /// This node's id.
    pub local_node: NodeId,
    /// This node's incarnation.
    pub incarnation: u64,
    /// Every node, this one included (its state is always `up`).
    pub nodes: Vec<NodeStatus>,
    /// Local link counters (datagrams sent, received, dropped by reason).
    pub links: Vec<LinkStatus>,
}

/// One node in [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// True for this node.
    pub local: bool,
    /// `up`, `dead` or `unknown`.
    pub state: NodeState,
    /// Incarnation last heard (this node's own for the local entry).
    pub incarnation: Option<u64>,
    /// Milliseconds since an authentic packet was last heard from it on any link.
    pub last_heard_ms_ago: Option<u64>,
    /// Late heartbeats (arrived after a silence of at least warntime).
    pub late_count: u64,
    /// Whether its configuration digest equals ours (`None` until heard).
    pub config_matches: Option<bool>,
    /// Whether its last heartbeat said it holds *this* node up (`None` until heard):
    /// `false` while we hear it shows a one-way failure.
    pub hears_us: Option<bool>,
    /// Per link: whether we hear it there.
    pub links: Vec<NodeLinkStatus>,
}

/// One link of one node in [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeLinkStatus {
    /// Link id.
    pub id: LinkId,
    /// Link name.
    pub name: String,
    /// Heard on this link within deadtime (for the local node: the link is not down).
    pub up: bool,
    /// Whether its last heartbeat said it hears this node on this link.
    pub hears_us: Option<bool>,
    /// Authentic packets accepted from the node on this link.
    pub packets: u64,
    /// Late packets on this link.
    pub late_count: u64,
    /// Milliseconds since the last accepted packet on this link.
    pub last_heard_ms_ago: Option<u64>,
}

/// One local link in [`Status`].
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// Link id.
    pub id: LinkId,
    /// Link name.
    pub name: String,
    /// The driver reported the link down (no sending on it).
    pub down_hint: bool,
    /// Set by the driver while it has the link closed after an error: the error, and
    /// that it is being reopened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
    /// Packets handed out for this link.
    pub packets_sent: u64,
    /// Datagrams received on this link (accepted or not).
    pub packets_received: u64,
    /// Datagrams dropped, by reason.
    pub drops: DropCounts,
}
