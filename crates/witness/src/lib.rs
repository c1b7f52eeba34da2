//! The witness of a two-node cluster (DESIGN §3.3), after corosync-qnetd's `ffsplit`
//! and SBD: a third machine that hears both nodes' heartbeats and, when they lose each
//! other, gives its vote to one of them — so the survivor of a power loss fences at
//! once instead of waiting `fencing_delay`, and a node cut off from both peer and
//! witness knows it must stop.
//!
//! Two sans-IO state machines, each driven by membership events and the messages of
//! [`message`]:
//!
//! - [`Arbiter`] runs in `tandem witness`: at most one grant per loss of contact,
//!   recorded durably ([`ArbiterCommand::Persist`] comes before the answer it allows),
//!   so a restarted witness cannot grant twice.
//! - [`Ballot`] runs in each node's controller: it asks when the peer is lost and turns
//!   the answers, the witness's own liveness and time into the planner's
//!   [`tandem_policy::WitnessVote`].
//!
//! The messages travel as membership reliable messages, so they are authenticated with
//! the cluster key and follow the same replay rules as everything else.

mod arbiter;
mod ballot;
pub mod message;

pub use arbiter::{Arbiter, ArbiterCommand, Grant};
pub use ballot::Ballot;
pub use message::WitnessMessage;
