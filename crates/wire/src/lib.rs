//! Wire formats shared by tandem's protocols: heartbeat packets and replication frames.
//!
//! Pure encoding and decoding, no I/O. Every decoder returns an error for bad bytes and
//! never panics; each has a fuzz target.
//!
//! - [`packet`]: the membership packet (heartbeat, reliable message, ack): a fixed
//!   48-byte header, a typed body and an HMAC-SHA256 trailer, plus the derivation of the
//!   32-byte HMAC key from a native key file or a Heartbeat `authkeys` entry.
//! - [`serial`]: framing of those packets on a serial line (COBS + CRC-32).
//! - [`frame`]: the replication frame of the disk link: a fixed header and typed frames,
//!   HMAC challenge/response for the handshake, then a keyed-BLAKE3 MAC with an implicit
//!   sequence number on every frame.
#![warn(missing_docs)]

pub mod frame;
pub mod packet;
pub mod serial;

pub use packet::{
    AckBody, Body, DecodeError, EncodeError, HEADER_LEN, Header, HeartbeatBody, KeyError, MAC_LEN,
    MAGIC, MAX_BODY_LEN, MAX_MESSAGE_PAYLOAD_LEN, MAX_PACKET_LEN, MAX_VIEW_ENTRIES, MessageBody,
    PacketKey, PacketKind, VERSION, ViewEntry, ViewState, decode_header, encode, hmac_sha256, open,
    sha256,
};
