//! The whole cluster in one deterministic process, after TigerBeetle's VOPR and
//! FoundationDB's simulation: two nodes, each the real membership core + the real
//! controller (with its fencing coordinator and disk-fencing outdater) + the real
//! replication core of disk `r0`, over simulated heartbeat networks, a simulated
//! replication link, simulated storage that forgets unflushed writes at a power loss,
//! simulated resource agents that can fail or hang, a simulated power switch, clocks
//! that jump, and a client writing to whichever node is primary. Odd seeds add a
//! witness: the real membership core and the real `Arbiter` on a third host, its grant
//! file durable across its power losses.
//!
//! ```text
//!  seed ─► Rng ─► faults: power off/on, freeze/thaw, cut hb / lan, link loss, clock
//!                 jumps, agent failures and hangs, a broken power switch, operator
//!                 standby/takeover, clean stops; with a witness: its power losses,
//!                 node↔witness cuts, a node isolated from both, a partition in which
//!                 the witness hears one side only (cuts are per pair of hosts)
//!   ┌───────────────── node n1 ─────────────────┐   ┌──────── node n2 ────────┐
//!   │ Membership ◄─► Controller ◄─► disk Core   │   │  (the same)             │
//!   │      ▲ packets      │ RunAction …  ▲ frames│   │                         │
//!   └──────┼──────────────┼──────────────┼──────┘   └─────────────────────────┘
//!          ├ hb, lan ─────┼─ agents ─────┴ replication link (over hb) ─┘
//!          └─ hb, lan ─► witness w: Membership ◄─► Arbiter ─► grant file
//!  checked after every step: one node runs a group's resources; one primary of r0; a
//!  promotion without --force serves every acknowledged write; cores validate; with a
//!  witness, a takeover follows a granted vote or a confirmed fence, and no two nodes
//!  hold a vote; after the faults stop: the cluster converges within a bound
//! ```
//!
//! Run it: `cargo run --release -p tandem-sim --bin cluster-sim -- --seeds 200`.
//! A failing seed replays exactly (`--seed S`) and prints the last steps.

mod node;
mod run;

pub use run::{Options, Summary, Unsafe, run_seed};
