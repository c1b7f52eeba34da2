//! tandem disk: a replicated block device (protocols A/B/C, generations, bitmap resync,
//! activity log), with a sans-IO core and the I/O around it.
//!
//! - [`core`] decides everything: it is given frontend requests, peer frames, I/O
//!   completions, link events and the time (`Instant`), and hands back I/O to do, frames to send and
//!   answers for the frontend. No clock, no sockets, no files.
//! - [`meta`] reads and writes the on-disk metadata (superblock, bitmap, activity log),
//!   every block checksummed, and refuses corrupted or foreign metadata.
//! - [`driver`] runs a core for real: file or block-device backing store, metadata, an
//!   authenticated TCP replication link (tokio); the frontend and the admin commands
//!   talk to it through a `DriverHandle`.
//!
//! The semantics (states, generations, the handshake decision table, split-brain
//! policies, activity log, resync, protocols) and the on-disk and wire formats are in
//! docs/disk.md.
#![warn(missing_docs)]

pub mod core;
pub mod driver;
pub mod meta;
pub mod offline;
