//! The resource manager as a sans-IO state machine, in the manner of the membership
//! core and the fencing coordinator: inputs and `now` in, commands out; it never
//! reads the clock, spawns, sleeps or touches a socket.
//!
//! ```text
//!  membership events ─┐                                  ┌─► RunAction / RunMonitor
//!  peer messages ─────┤                                  │     (agents, on workers)
//!  action results ────┼─► Controller::handle(now, input) ┼─► Send (cluster messages)
//!  fence results ─────┤        │ view ─► plan ─► run     ├─► RunFenceDevice
//!  disk fencing ──────┤        │ transition, timers      ├─► Disks (peer fenced, outdate…)
//!  ping ──────────────┤        │ notices                 ├─► Notify ([[notify]] commands)
//!  Tick / Shutdown ───┘        ▼                          └─► Exit (after a clean stop)
//!  operator requests ──► Controller::operator(now, op) ─► answer (JSON or refusal)
//!                        Controller::poll_timeout() ─► when to Tick next
//! ```
//!
//! What it decides: the planner's view (initdead, failure expiry, the peer's reports),
//! when monitors run, which transition runs and in what order its actions start, when
//! the peer is fenced (through [`tandem_fencing::Coordinator`]), disk fencing's side
//! (through [`tandem_fencing::Outdater`]), and a clean shutdown's order. The daemon
//! (`src/daemon/manager.rs`) is a thin shell that carries out the commands and feeds the
//! results back; the cluster simulator drives the same controller.
//!
//! Bounded state: failures are dropped as they expire (and at most
//! [`controller::FAILURES_KEPT`] per resource), operator requests that a newer one fully
//! replaces are dropped (and at most [`controller::REQUESTS_KEPT`] are kept), the action
//! history holds [`controller::ACTION_HISTORY_LEN`] records.
#![warn(missing_docs)]

mod claim;
pub mod controller;
mod disk_fencing;
pub mod messages;
mod notices;
mod peer;
mod requests;
mod status;
mod transition;
mod types;
mod witness;

pub use controller::Controller;
pub use messages::PeerMessage;
pub use types::{Command, DiskOrder, Input, Notice, Op, Operator, SendTag};
pub use witness::witness_node_id;
