//! Membership: heartbeat links, the failure detector and reliable cluster messages, as a
//! sans-IO core (events and `now` in; transmissions, timeouts and events out).
//!
//! ```text
//!              driver (tandem daemon, or tandem-sim)
//!   datagrams ──handle_packet(link, bytes, now)──┐      ┌── poll_transmit() → Transmit{link, to, bytes}
//!   timer     ──handle_timeout(now)──────────────┤      ├── poll_timeout()  → next deadline
//!   app       ──send_message(to, payload, now)───┼─► Membership ─┼── poll_event()    → Event
//!   netlink   ──link_up/link_down(link, now)─────┘      └── status(now)     → Status (serde)
//! ```
//!
//! **What it decides**: whether each peer is `up`, `dead` or still `unknown`, whether
//! each peer is heard on each link, whether a peer restarted or came back from behind a
//! partition, and which reliable messages were delivered, acknowledged or abandoned.
//!
//! **What it is given**: the cluster's nodes, links, timing (keepalive, deadtime,
//! warntime, initdead) and HMAC key ([`MembershipConfig`]), this node's incarnation, and
//! then received datagrams, timer expiries and `now`. It never reads a clock, sleeps or
//! touches a socket; time that goes backwards is treated as standing still.
//!
//! **What it hands back**: packets to send on a link ([`Transmit`]), the next deadline,
//! [`Event`]s and a [`Status`] snapshot. The driver loop is: feed every input, then drain
//! `poll_transmit` and `poll_event`, then sleep until `poll_timeout` or the next datagram.
//!
//! Timing follows Heartbeat: a peer is declared dead when *nothing authentic* was heard
//! from it on *any* link for `deadtime`; a packet arriving after a silence of at least
//! `warntime` raises `NodeLate` with the gap; a peer never heard stays `unknown` for
//! `initdead` after start. Each (peer, link) pair is up while heard within `deadtime`.
#![warn(missing_docs)]

mod config;
mod core;
#[cfg(feature = "driver")]
pub mod driver;
mod status;

pub use config::{
    ConfigError, LinkConfig, LinkId, MAX_LINKS, MAX_NODES, MembershipConfig, NodeConfig, NodeId,
    RetransmitConfig,
};
pub use core::{Event, FailReason, Membership, MessageId, SendError, Transmit, Verdict};
pub use status::{
    DropCounts, DropReason, LinkStatus, NodeLinkStatus, NodeState, NodeStatus, Status,
};
pub use tandem_wire::PacketKey;
