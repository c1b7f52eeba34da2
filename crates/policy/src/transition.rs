//! What the planner hands back: [`Transition`], a small graph of local actions.
//!
//! Every action runs on the local node (or, for `NotifyPeer`, is a message to the
//! peer). An action may run once every action in its `after` list has succeeded; ids
//! only ever point backwards, so the vector order is always a valid execution order.
//! When an action fails, the daemon abandons the rest of the transition, updates the
//! view with the result and plans again: the planner never plans for failure paths.

use serde::Serialize;

/// Id of an action: its 1-based position in [`Transition::actions`] (`#1`, `#2`… in
/// summaries, the same number in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ActionId(pub u32);

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Transition {
    /// The node the plan is for.
    pub local: String,
    /// Actions in a valid execution order.
    pub actions: Vec<Action>,
    /// Groups the planner cannot bring to their wanted state, with the reason status
    /// shows.
    pub blocked: Vec<Blocked>,
    /// Things the operator must know: unsafe takeovers, ignored requests.
    pub notes: Vec<Note>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// Its id (its 1-based position in [`Transition::actions`]).
    pub id: ActionId,
    /// Actions that must have succeeded before this one runs.
    pub after: Vec<ActionId>,
    /// What to do.
    pub kind: ActionKind,
}

/// What an [`Action`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ActionKind {
    /// Ask the fencing coordinator to fence `node` (power it off).
    Fence {
        /// Target.
        node: String,
        /// Why, for the fencing history.
        reason: String,
        /// Whether the coordinator should first wait its priority delay: true when the
        /// local node holds no group, so that in a partition the node serving the
        /// groups wins the fence race.
        delayed: bool,
    },
    /// Nothing more can happen until this condition changes; the daemon plans again
    /// when it does. Nothing ever depends on a `WaitFor`.
    WaitFor {
        /// The condition.
        reason: WaitReason,
    },
    /// Start a resource.
    Start {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
    },
    /// Stop a resource.
    Stop {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
    },
    /// Stop then start a resource in place (after a monitor failure).
    Restart {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
    },
    /// Run the resource's monitor: once (`interval_ms = None`, a probe of a resource
    /// in unknown state) or on an interval from now on (after a start).
    Monitor {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// Interval of a recurring monitor; `None` for a one-shot probe.
        interval_ms: Option<u64>,
    },
    /// Send a reliable cluster message to the peer.
    NotifyPeer {
        /// The message.
        message: PeerMessage,
    },
}

/// Why a transition waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "wait", rename_all = "kebab-case")]
pub enum WaitReason {
    /// The peer has not been heard yet and initdead has not passed.
    Initdead {
        /// The peer.
        peer: String,
    },
    /// The peer is up but its state report has not arrived.
    PeerReport {
        /// The peer.
        peer: String,
    },
    /// The peer holds a group that should run here; it stops it first.
    PeerRelease {
        /// The peer.
        peer: String,
        /// The group.
        group: String,
    },
    /// Fencing of a node is under way.
    Fencing {
        /// The node being fenced.
        node: String,
    },
    /// The witness's answer to this node's request for the vote.
    WitnessVote {
        /// The peer this node lost.
        peer: String,
    },
    /// The peer is expected to fence this node.
    FencedByPeer {
        /// The peer.
        peer: String,
    },
    /// A start or stop is in flight.
    InFlight {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
    },
}

/// Messages the planner asks the daemon to send to the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum PeerMessage {
    /// This node stopped `group` for the peer to start it.
    Released {
        /// The group.
        group: String,
    },
    /// This node cannot stop a resource: the peer should fence it.
    FenceMe {
        /// Why.
        reason: String,
    },
}

/// A group the planner cannot manage as wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    /// The group.
    pub group: String,
    /// Why, in words status can show.
    pub reason: String,
}

/// Severity of a [`Note`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoteLevel {
    /// For information.
    Info,
    /// The plan knowingly risks running a group on both nodes (`fencing = "none"`);
    /// status shows this in red.
    Unsafe,
}

/// Something the operator should know about this plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    /// Severity.
    pub level: NoteLevel,
    /// The group concerned, if one.
    pub group: Option<String>,
    /// The text.
    pub text: String,
}

impl Transition {
    /// An empty plan for `local`.
    pub fn new(local: &str) -> Transition {
        Transition {
            local: local.to_string(),
            ..Transition::default()
        }
    }

    /// Appends an action and returns its id.
    pub fn push(&mut self, kind: ActionKind, after: Vec<ActionId>) -> ActionId {
        let id = ActionId(
            u32::try_from(self.actions.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        );
        let mut after = after;
        after.sort();
        after.dedup();
        self.actions.push(Action { id, after, kind });
        id
    }

    /// The action with id `id`.
    pub fn action(&self, id: ActionId) -> Option<&Action> {
        self.actions.get((id.0 as usize).checked_sub(1)?)
    }

    /// Whether action `a` runs only after `b` (directly or through others).
    pub fn depends_on(&self, a: ActionId, b: ActionId) -> bool {
        let mut stack = vec![a];
        let mut seen = vec![false; self.actions.len()];
        while let Some(x) = stack.pop() {
            let Some(act) = self.action(x) else { continue };
            for &p in &act.after {
                if p == b {
                    return true;
                }
                if let Some(s) = (p.0 as usize).checked_sub(1).and_then(|i| seen.get_mut(i)) {
                    if !*s {
                        *s = true;
                        stack.push(p);
                    }
                }
            }
        }
        false
    }

    /// Whether the plan does anything at all (actions other than waiting).
    pub fn is_idle(&self) -> bool {
        self.actions
            .iter()
            .all(|a| matches!(a.kind, ActionKind::WaitFor { .. }))
    }
}
