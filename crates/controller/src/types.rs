//! What goes in and out of the controller: inputs, operator requests, commands.

use std::time::Duration;

use serde::Serialize;
use tandem_agents::ActionResult;
use tandem_fencing::FenceResult;
use tandem_membership::{Event, MessageId};
use tandem_policy::{ActionId, RequestKind, Scope};

use crate::messages::PeerMessage;

/// What the controller reacts to (besides operator requests, which answer at once:
/// [`Controller::operator`]).
#[derive(Debug)]
pub enum Input {
    /// A membership event.
    Membership(Event),
    /// A resource action finished (`action` is `None` for the stops of a shutdown).
    ActionDone {
        /// The transition's action, if any.
        action: Option<ActionId>,
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// What ran.
        op: Op,
        /// The result.
        result: ActionResult,
    },
    /// A recurring monitor finished.
    MonitorDone {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// The result.
        result: ActionResult,
    },
    /// This node's outside connectivity changed (ipfail).
    Ping(bool),
    /// A fence device run finished.
    FenceDone {
        /// The coordinator's run id.
        id: u64,
        /// The result.
        result: FenceResult,
    },
    /// A local disk's core needs its peer outdated or fenced.
    DiskFencePeer {
        /// The disk.
        disk: String,
    },
    /// This node's copy of `disk` was outdated at the peer's request (or why not).
    OutdateDone {
        /// The disk.
        disk: String,
        /// The peer's request.
        request: u64,
        /// Outdated, or why not.
        result: Result<(), String>,
    },
    /// A [`Command::Send`] went out as reliable message `id`.
    Sent {
        /// The command's tag.
        tag: SendTag,
        /// The membership message id (its ack or failure comes as an event).
        id: MessageId,
    },
    /// A [`Command::Send`] could not be queued.
    SendFailed {
        /// The command's tag.
        tag: SendTag,
    },
    /// Time passed ([`Controller::poll_timeout`] was reached).
    Tick,
    /// Stop every group, leave cleanly, then [`Command::Exit`].
    Shutdown,
}

/// Operator requests; each is answered at once.
#[derive(Debug, Clone)]
pub enum Operator {
    /// `tandem standby SCOPE` / `tandem takeover SCOPE`.
    Request(RequestKind, Scope),
    /// `tandem maintenance on|off`.
    Maintenance(bool),
    /// `tandem fence NODE`.
    Fence(String),
    /// `tandem fence confirm NODE`.
    FenceConfirm(String),
    /// `tandem fence history`.
    FenceHistory,
    /// `tandem status`: the resource part.
    Status,
}

/// The operation an action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Start.
    Start,
    /// Stop.
    Stop,
    /// Stop then start.
    Restart,
    /// A one-shot monitor (a probe).
    Probe,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Restart => "restart",
            Op::Probe => "probe",
        }
    }
}

/// Why a message is sent, so its fate can be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTag {
    /// Nothing waits for it.
    Plain,
    /// A disk-fencing outdate request.
    Outdate(u64),
    /// The goodbye of a clean shutdown.
    Goodbye,
}

/// An order for the node's disk service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOrder {
    /// The peer is fenced (or confirmed down): every disk drops its link and counts the
    /// peer as outdated. Carry out before anything that follows.
    PeerFenced,
    /// The peer outdated its copy of the disk.
    PeerOutdated(String),
    /// The peer cannot be reached to outdate the disk.
    PeerUnreachable(String),
    /// Outdate this node's copy at the peer's request; answer with
    /// [`Input::OutdateDone`] (may take a moment: run it off the controller's thread).
    Outdate {
        /// The disk.
        disk: String,
        /// Quoted in the answer.
        request: u64,
    },
    /// A clean shutdown: each secondary whose up-to-date peer goes on outdates itself.
    /// Carry out before the goodbye that follows.
    Leave,
    /// A clean shutdown begins: demote every primary disk that no group manages (the
    /// groups' own disks are demoted by their `disk` resources, in order).
    StopUnmanaged,
    /// A clean shutdown in maintenance mode: the disks stay as they are, serving what
    /// runs on them, until the next daemon takes them over. Carry out before the exit.
    Detach,
}

/// What the controller asks its shell to do, in order.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run a resource action on a worker; answer with [`Input::ActionDone`].
    RunAction {
        /// The transition's action (`None`: a shutdown's stop).
        action: Option<ActionId>,
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// What to run.
        op: Op,
        /// Its timeout.
        timeout: Duration,
    },
    /// Run a recurring monitor on a worker; answer with [`Input::MonitorDone`].
    RunMonitor {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// Its interval (agents get it as `OCF_RESKEY_CRM_meta_interval`).
        interval: Duration,
        /// Its timeout.
        timeout: Duration,
    },
    /// Send a reliable message to the peer; answer with [`Input::Sent`] or
    /// [`Input::SendFailed`] (for [`SendTag::Plain`] too, or not at all).
    Send {
        /// The message.
        message: PeerMessage,
        /// What it is for.
        tag: SendTag,
    },
    /// Send a reliable message to the witness (membership node
    /// [`crate::witness_node_id`]); nothing is fed back (an unanswered request is
    /// repeated).
    SendToWitness(tandem_witness::WitnessMessage),
    /// Run a fence device ([`tandem_fencing::Command::RunDevice`]); answer with
    /// [`Input::FenceDone`].
    RunFenceDevice(tandem_fencing::Command),
    /// An order for the disk service.
    Disks(DiskOrder),
    /// Tell the operator's `[[notify]]` commands (run off the controller's thread,
    /// bounded; nothing is fed back).
    Notify(Notice),
    /// The shutdown is complete: exit the process.
    Exit,
}

/// An event for the `[[notify]]` commands (names from `tandem_config::NOTIFY_EVENTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `node_dead`, `fenced`, `group_moved` …
    pub event: &'static str,
    /// The node concerned (the dead or fenced peer; where a group started or stopped).
    pub node: Option<String>,
    /// The group concerned.
    pub group: Option<String>,
    /// The disk concerned.
    pub disk: Option<String>,
    /// More words (`from ox1` for a move).
    pub detail: String,
    /// Wall-clock milliseconds since the Unix epoch.
    pub time_ms: u64,
}
