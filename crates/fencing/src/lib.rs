//! tandem's fencing: the devices that cut a node's power, and the coordinator that
//! decides when to use them.
//!
//! ```text
//!  planner: Fence{node, reason, delayed} ─► Coordinator (sans-IO) ─► FenceState per node
//!  operator: tandem fence confirm NODE ──►      │   ▲                 (read by the planner)
//!  peer: FenceRecord messages ──────────►      │   │ device_result
//!                                  RunDevice{…} ▼   │
//!                            runner (blocking, timeout, process-group kill)
//!                 ┌──────────────────┬──────────┴──────────┬──────────────────┐
//!            fence_* program    external/NAME script     manual (nothing runs,
//!            name=value stdin   $1 action, $2 node,       waits for confirm)
//!            exit 0 = success   params in environment
//! ```
//!
//! What it decides: which device of which level runs next, when to retry (bounded, with
//! backoff and seeded jitter), how long the node that holds no group waits before it
//! fences (the priority delay), and — the safety rule — that a node counts as fenced only
//! when a device said so or an operator confirmed it. What it is given: the configured
//! [`tandem_config::FenceDevice`]s, requests, device results, confirmations, peer records
//! and `now`. What it hands back: [`Command`]s (run a device, tell the peer), a
//! [`FenceState`] per node, and a bounded [`History`] that serializes to JSON.
//!
//! The runner ([`run_device`]) is the I/O side; the coordinator never touches it. The
//! lab's power switch is an ordinary fence-agents program (`tandem lab fence-agent`,
//! named `fence_tandem_lab` in configurations), so the lab exercises this same path.
#![warn(missing_docs)]

pub mod action;
pub mod agent_input;
pub mod coordinator;
pub mod device;
pub mod driver;
pub mod outdate;
pub mod result;
pub mod runner;

pub use action::{FenceAction, UnknownAction};
pub use agent_input::{AgentInput, InputError};
pub use coordinator::{Command, Coordinator, CoordinatorConfig, FenceState, RequestError};
pub use device::{ProgramPaths, plug_for, prepare};
pub use driver::{DirectOutcome, execute, fence_direct};
pub use outdate::{DiskPolicy, OutdateCommand, Outdater, PeerReach};
pub use result::{FenceRecord, FenceResult, History, Origin, Outcome, Plug, RecordError};
pub use runner::{run_device, run_program};
