//! tandem's policy engine: a pure planner that decides what the local node does next.
//!
//! ```text
//!   Config (groups, homes, auto_failback, fencing, ping)   ─┐
//!   ClusterView (peer membership + its reports, fencing    ─┼─► plan() ─► Transition
//!     state, resource states + failures, requests, ping,    │              actions with `after` ids:
//!     maintenance, initdead passed)                         ┘              Fence, WaitFor, Stop, Start,
//!                                                                         Restart, Monitor, NotifyPeer
//!                                                                         + Blocked groups + Notes
//!   check(config, view, transition) ─► Ok | Violation      (independent safety rules)
//!   render::summary(...)            ─► the one-screen text of golden files and `tandem simulate`
//! ```
//!
//! What it decides: where each resource group should run (home, stickiness,
//! `auto_failback`, standby/takeover requests, failure thresholds, ping connectivity),
//! whether the peer must be fenced first, and the ordered local actions to get there.
//! What it is given: the typed configuration and a [`ClusterView`] in which everything
//! time-dependent is already decided by the caller (initdead passed, failure expired).
//! What it hands back: a [`Transition`] — no clock, no I/O, same inputs same plan. The
//! daemon executes the actions in order, honouring `after`, feeds results back into the
//! view and plans again. The rules in words are in docs/policy.md.
#![warn(missing_docs)]

pub mod case;
pub mod check;
pub mod plan;
pub mod render;
pub mod transition;
pub mod view;

pub use check::{Violation, check};
pub use plan::plan;
pub use transition::{
    Action, ActionId, ActionKind, Blocked, Note, NoteLevel, PeerMessage, Transition, WaitReason,
};
pub use view::{
    ClusterView, FailedOp, Failure, FenceState, GroupView, PeerState, PeerView, Request,
    RequestKind, ResourceState, ResourceView, Scope, ViewError, WitnessVote,
};
