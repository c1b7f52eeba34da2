//! Cluster messages between the two nodes' controllers, carried by membership's reliable
//! messages (delivered once, in order). Compact JSON; every message must fit one
//! membership payload ([`MAX_PAYLOAD_BYTES`]): reports go one group per message, and
//! `config check` (and the daemon at start) refuses a group whose largest report cannot
//! fit ([`oversized_reports`]); a fence record carries at most
//! [`FENCE_TEXT_IN_MESSAGE_MAX_BYTES`] of device output (its end) and of reason, which
//! makes it fit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_policy::{FailedOp, RequestKind, ResourceState, Scope};

/// The most a message may take on the wire (one membership packet's payload).
pub const MAX_PAYLOAD_BYTES: usize = tandem_wire::MAX_MESSAGE_PAYLOAD_LEN;

/// What one node's controller tells the other's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "snake_case")]
pub enum PeerMessage {
    /// The sender's state of every resource of one group (sent whenever one changes, and
    /// when the peer comes up). Resources stopped with no current failure are left out.
    Report {
        /// The group.
        group: String,
        /// Resource → its state and current failures.
        resources: BTreeMap<String, Reported>,
    },
    /// The sender forgot what the receiver runs (it declared the receiver dead, and
    /// the receiver came back without having seen that): report every group again.
    AskReport,
    /// The sender stopped `group` so that the receiver can start it.
    Released {
        /// The group.
        group: String,
    },
    /// The sender asks for `group` before starting it (docs: `claim.rs`).
    Claim {
        /// The group.
        group: String,
        /// Quoted in the answer.
        id: u64,
    },
    /// The answer to [`PeerMessage::Claim`].
    ClaimAnswer {
        /// The group.
        group: String,
        /// The claim answered.
        id: u64,
        /// Granted, or refused (the sender holds the group or its own claim wins).
        granted: bool,
    },
    /// The sender cannot stop a resource and asks to be fenced.
    FenceMe {
        /// Why.
        reason: String,
    },
    /// An operator's `tandem standby` / `tandem takeover`, so both nodes apply it.
    Request {
        /// The node it was typed on.
        node: String,
        /// Standby or takeover.
        kind: RequestKind,
        /// all | local | foreign.
        scope: Scope,
        /// When it was typed (the node's wall clock, ms): both nodes order standing
        /// requests by it, so the newest decides the same way on each.
        #[serde(default)]
        at_ms: u64,
    },
    /// Maintenance mode switched on or off cluster-wide, or (before each report) this
    /// node's setting: the one switched last wins on both nodes, so a node that was away
    /// when an operator switched it learns it when they meet again.
    Maintenance {
        /// On or off.
        on: bool,
        /// When it was switched (the switching node's wall clock, ms; 0: never).
        #[serde(default)]
        at_ms: u64,
    },
    /// A fencing attempt's record, so both nodes' histories show it and a node waiting
    /// for the same fence learns it is done.
    Fence {
        /// The record as JSON (decoded with its size caps by `FenceRecord::from_json`).
        record: String,
    },
    /// The sender's outside connectivity (ipfail): its ping targets answer or not.
    Ping {
        /// Reachable.
        ok: bool,
    },
    /// The sender stopped all its groups and is leaving: no fencing needed.
    Goodbye,
    /// Disk fencing: the sender's copy of `disk` lost its replication link (or is to be
    /// promoted alone); the receiver outdates its own copy, durably, then answers.
    Outdate {
        /// The disk.
        disk: String,
        /// Quoted in the answer.
        request: u64,
    },
    /// The answer to [`PeerMessage::Outdate`]: outdated (`error` absent), or why not.
    Outdated {
        /// The disk.
        disk: String,
        /// The request answered.
        request: u64,
        /// Why the copy was not outdated.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl PeerMessage {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        // Plain strings, maps and integers: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes from the wire; `None` for anything malformed (counted by the caller).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// One resource in a [`PeerMessage::Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    /// State code (see [`state_code`]).
    pub state: String,
    /// Unexpired failures, one letter each: `s` start, `m` monitor, `t` stop. The peer's
    /// planner needs them to know when this node may no longer run a group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failures: String,
}

/// The most of a fence device's output (or a run's error detail, or a fence's reason)
/// that a [`PeerMessage::Fence`] carries: the output's *last* bytes, where fence agents
/// print why they failed, after a `…`; the reason's first. The local history keeps up to
/// `tandem_fencing::OUTPUT_MAX_BYTES`. With names as long as the configuration allows
/// (node and device names are short identifiers) such a record fits one message.
pub const FENCE_TEXT_IN_MESSAGE_MAX_BYTES: usize = 512;

/// The size of `group`'s largest possible report: every resource in the longest state,
/// with as many failures as the controller keeps
/// ([`FAILURES_KEPT`](crate::controller::FAILURES_KEPT)).
pub fn largest_report_bytes(group: &tandem_config::Group) -> usize {
    let resources = group
        .resources
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                Reported {
                    state: state_code(ResourceState::FailedMonitor).to_string(),
                    failures: "m".repeat(crate::controller::FAILURES_KEPT),
                },
            )
        })
        .collect();
    PeerMessage::Report {
        group: group.name.clone(),
        resources,
    }
    .encode()
    .len()
}

/// The groups of `config` whose largest report does not fit one message, with that
/// report's size: the peer would never see their complete state. `config check` and
/// the daemon refuse such a configuration.
pub fn oversized_reports(config: &tandem_config::Config) -> Vec<(&tandem_config::Group, usize)> {
    config
        .groups
        .iter()
        .map(|g| (g, largest_report_bytes(g)))
        .filter(|(_, bytes)| *bytes > MAX_PAYLOAD_BYTES)
        .collect()
}

/// The letter of a failed operation in a report.
pub fn failure_code(op: FailedOp) -> char {
    match op {
        FailedOp::Start => 's',
        FailedOp::Monitor => 'm',
        FailedOp::Stop => 't',
    }
}

/// The operation a report letter names, if any.
pub fn failure_from_code(c: char) -> Option<FailedOp> {
    match c {
        's' => Some(FailedOp::Start),
        'm' => Some(FailedOp::Monitor),
        't' => Some(FailedOp::Stop),
        _ => None,
    }
}

/// The short code of a resource state in reports and status.
pub fn state_code(state: ResourceState) -> &'static str {
    match state {
        ResourceState::Stopped => "stopped",
        ResourceState::Starting => "starting",
        ResourceState::Started => "started",
        ResourceState::Stopping => "stopping",
        ResourceState::FailedStart => "failed-start",
        ResourceState::FailedStop => "failed-stop",
        ResourceState::FailedMonitor => "failed-monitor",
        ResourceState::Unknown => "unknown",
    }
}

/// The state a code names; unknown codes read as `Unknown` (the planner then treats the
/// resource as possibly running, the safe reading).
pub fn state_from_code(code: &str) -> ResourceState {
    match code {
        "stopped" => ResourceState::Stopped,
        "starting" => ResourceState::Starting,
        "started" => ResourceState::Started,
        "stopping" => ResourceState::Stopping,
        "failed-start" => ResourceState::FailedStart,
        "failed-stop" => ResourceState::FailedStop,
        "failed-monitor" => ResourceState::FailedMonitor,
        _ => ResourceState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(resources: usize, name_len: usize) -> tandem_config::Config {
        let text = format!(
            "[cluster]\nname = \"c\"\nkey_file = \"/k\"\nfencing = \"none\"\n[[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\n[[link]]\nname = \"hb\"\ntype = \"ucast\"\ninterface = \"eth0\"\npeers = [\"10.0.0.1\", \"10.0.0.2\"]\n[[group]]\nname = \"g\"\nhome = \"a\"\n{}",
            (0..resources)
                .map(|i| format!(
                    "[[group.resource]]\nname = \"{i:0name_len$}\"\ntype = \"ipaddr\"\naddress = \"10.0.1.{}/24\"\n",
                    i + 1
                ))
                .collect::<String>()
        );
        let (config, _) =
            tandem_config::native::parse("c.toml", &text, tandem_config::native::FileChecks::Off)
                .expect("valid configuration");
        config
    }

    #[test]
    fn a_group_whose_largest_report_cannot_fit_is_found() {
        // The whitepaper's group: nine resources.
        let small = config(9, 12).groups[0].clone();
        assert!(largest_report_bytes(&small) <= MAX_PAYLOAD_BYTES);
        let mut config = config(40, 12);
        let big = config.groups[0].clone();
        assert!(largest_report_bytes(&big) > MAX_PAYLOAD_BYTES);
        config.groups.insert(0, small);
        let over = oversized_reports(&config);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].0, &big);
        // What the size says is what the controller would send.
        assert_eq!(over[0].1, largest_report_bytes(&big));
    }

    #[test]
    fn messages_round_trip_and_garbage_is_rejected() {
        let report = PeerMessage::Report {
            group: "ox".into(),
            resources: BTreeMap::from([(
                "vip".to_string(),
                Reported {
                    state: "started".into(),
                    failures: "mm".into(),
                },
            )]),
        };
        for m in [
            report,
            PeerMessage::Released { group: "ox".into() },
            PeerMessage::Request {
                node: "ox1".into(),
                kind: RequestKind::Standby,
                scope: Scope::Foreign,
                at_ms: 12,
            },
            PeerMessage::Goodbye,
            PeerMessage::Outdated {
                disk: "r0".into(),
                request: 3,
                error: Some("primary".into()),
            },
        ] {
            assert_eq!(PeerMessage::decode(&m.encode()), Some(m));
        }
        assert_eq!(PeerMessage::decode(b"{\"m\":\"nope\"}"), None);
        assert_eq!(PeerMessage::decode(&[0xff, 0x00]), None);
    }

    #[test]
    fn every_state_has_a_code_that_reads_back() {
        for s in [
            ResourceState::Stopped,
            ResourceState::Starting,
            ResourceState::Started,
            ResourceState::Stopping,
            ResourceState::FailedStart,
            ResourceState::FailedStop,
            ResourceState::FailedMonitor,
            ResourceState::Unknown,
        ] {
            assert_eq!(state_from_code(state_code(s)), s);
        }
        for op in [FailedOp::Start, FailedOp::Monitor, FailedOp::Stop] {
            assert_eq!(failure_from_code(failure_code(op)), Some(op));
        }
    }
}
