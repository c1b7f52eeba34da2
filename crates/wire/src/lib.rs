//! Wire formats shared by tandem's protocols: heartbeat packets and replication frames.
//!
//! Pure encoding and decoding, no I/O. Every decoder returns an error for bad bytes and
//! never panics; each has a fuzz target.
#![warn(missing_docs)]

pub mod frame;
