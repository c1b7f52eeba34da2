//! The membership packet: heartbeats, reliable cluster messages and their acks.
//!
//! ```text
//!  0      4   5    6      8            16       20     24            32     40   42   44       48
//!  +------+---+----+------+------------+--------+------+-------------+------+----+----+--------+
//!  |magic |ver|kind|flags | cluster id | sender | dest | incarnation | seq  |link|rsvd|body len|
//!  +------+---+----+------+------------+--------+------+-------------+------+----+----+--------+
//!  | body (body len bytes, layout by kind)                                                     |
//!  +-------------------------------------------------------------------------------------------+
//!  | HMAC-SHA256(key, header ‖ body)  (32 bytes)                                               |
//!  +-------------------------------------------------------------------------------------------+
//! ```
//!
//! All integers are big-endian. The MAC covers every byte before it, so the link field,
//! the destination and the sequence number cannot be altered or moved to another link
//! without the receiver noticing.
//!
//! Decoding happens in two steps so that a receiver can count *why* it dropped a packet:
//! [`decode_header`] checks structure only (lengths, magic, version, kind, flags) and is
//! safe to call on any bytes; [`open`] additionally verifies the MAC and parses the body.
//! Neither ever panics.

use std::fmt;
use std::mem::{offset_of, size_of};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The four bytes every packet starts with.
pub const MAGIC: [u8; 4] = *b"TNDM";
/// The packet format version this code writes and accepts.
pub const VERSION: u8 = 1;
/// Length of the HMAC-SHA256 trailer.
pub const MAC_LEN: usize = 32;
/// The largest packet on the wire: a UDP payload that fits an Ethernet MTU of 1500 bytes
/// without IP fragmentation (1500 − 20 IPv4 − 8 UDP). Fragments are lost more often and
/// reassembly is a memory sink for garbage, so heartbeats never need them.
pub const MAX_PACKET_LEN: usize = 1472;
/// The largest body that fits in [`MAX_PACKET_LEN`].
pub const MAX_BODY_LEN: usize = MAX_PACKET_LEN - HEADER_LEN - MAC_LEN;
/// Most entries a heartbeat's view may carry (each is [`VIEW_ENTRY_LEN`] bytes).
pub const MAX_VIEW_ENTRIES: usize = 64;
/// Bytes of one view entry in a heartbeat body.
pub const VIEW_ENTRY_LEN: usize = 17;
/// Fixed part of a heartbeat body: config digest, keepalive, view count.
const HEARTBEAT_FIXED_LEN: usize = 32 + 4 + 2;
/// Fixed part of a message body: destination incarnation, epoch, message sequence.
pub const MESSAGE_FIXED_LEN: usize = 8 + 4 + 8;
/// The largest payload one reliable message can carry.
pub const MAX_MESSAGE_PAYLOAD_LEN: usize = MAX_BODY_LEN - MESSAGE_FIXED_LEN;
/// Exact length of an ack body.
const ACK_LEN: usize = 8 + 4 + 8;

/// The header's byte layout. Only used for its offsets and size: encoding and decoding
/// go field by field so that no byte from the network is ever transmuted.
#[repr(C)]
#[allow(dead_code)] // the fields exist to define offsets, which `offset_of!` reads
struct HeaderLayout {
    magic: [u8; 4],
    version: u8,
    kind: u8,
    flags: [u8; 2],
    cluster_id: [u8; 8],
    sender: [u8; 4],
    dest: [u8; 4],
    incarnation: [u8; 8],
    seq: [u8; 8],
    link: [u8; 2],
    reserved: [u8; 2],
    body_len: [u8; 4],
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 48;
const _: () = assert!(size_of::<HeaderLayout>() == HEADER_LEN);
const _: () = assert!(MAX_BODY_LEN > HEARTBEAT_FIXED_LEN + MAX_VIEW_ENTRIES * VIEW_ENTRY_LEN);

/// What a packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// Periodic liveness packet with the sender's view of the cluster.
    Heartbeat = 1,
    /// A reliable cluster message (retransmitted until acknowledged).
    Message = 2,
    /// Acknowledgement of reliable messages.
    Ack = 3,
}

impl PacketKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Heartbeat),
            2 => Some(Self::Message),
            3 => Some(Self::Ack),
            _ => None,
        }
    }
}

/// The fixed header of a packet (the body length is derived from the body on encode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Kind of body.
    pub kind: PacketKind,
    /// Reserved flag bits; version 1 defines none and rejects any that are set.
    pub flags: u16,
    /// Cluster this packet belongs to; other clusters on a shared segment are ignored.
    pub cluster_id: u64,
    /// Sending node id (never 0).
    pub sender: u32,
    /// Destination node id, or 0 for every node.
    pub dest: u32,
    /// The sender's incarnation (bumped on every start of its agent).
    pub incarnation: u64,
    /// Per-sender packet sequence number, strictly increasing within an incarnation.
    pub seq: u64,
    /// The link id the sender sent this copy on; a copy seen on another link is a replay.
    pub link: u16,
    /// Body length in bytes (filled in by [`encode`], checked by the decoder).
    pub body_len: u32,
}

/// A node's state as one heartbeat's sender sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViewState {
    /// Not heard since the sender started.
    Unknown = 0,
    /// Alive.
    Up = 1,
    /// Declared dead.
    Dead = 2,
}

/// One node in a heartbeat's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewEntry {
    /// Node id.
    pub node: u32,
    /// State the sender holds for it.
    pub state: ViewState,
    /// Incarnation the sender last heard from it (0 if none).
    pub incarnation: u64,
    /// Bit `i` set when the sender hears that node on link id `i` (ids ≥ 32 not shown).
    pub links_up_mask: u32,
}

/// Body of a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatBody {
    /// SHA-256 digest of the sender's cluster configuration, so mismatches show in status.
    pub config_digest: [u8; 32],
    /// The sender's keepalive interval, for diagnostics.
    pub keepalive_ms: u32,
    /// The sender's view of the cluster.
    pub view: Vec<ViewEntry>,
}

/// Body of a reliable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody {
    /// Incarnation of the destination the sender addressed; a restarted destination
    /// drops messages meant for its previous life.
    pub dest_incarnation: u64,
    /// Stream epoch: bumped by the sender each time it abandons undelivered messages, so
    /// the receiver restarts its expected sequence at 1.
    pub epoch: u32,
    /// Sequence number of this message within (sender incarnation, epoch), from 1.
    pub msg_seq: u64,
    /// Application payload (at most [`MAX_MESSAGE_PAYLOAD_LEN`] bytes).
    pub payload: Vec<u8>,
}

/// Body of an ack: everything up to `cumulative` in the stream was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckBody {
    /// Incarnation of the message sender that the acker received from.
    pub dest_incarnation: u64,
    /// Epoch of the acknowledged stream.
    pub epoch: u32,
    /// Highest message sequence delivered in order.
    pub cumulative: u64,
}

/// A decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A heartbeat.
    Heartbeat(HeartbeatBody),
    /// A reliable message.
    Message(MessageBody),
    /// An ack.
    Ack(AckBody),
}

impl Body {
    /// The packet kind this body is sent as.
    pub fn kind(&self) -> PacketKind {
        match self {
            Body::Heartbeat(_) => PacketKind::Heartbeat,
            Body::Message(_) => PacketKind::Message,
            Body::Ack(_) => PacketKind::Ack,
        }
    }
}

/// Why bytes were not accepted as a packet. One variant per reason, so a receiver can
/// count drops by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a header plus MAC, or shorter than the header's body length says.
    #[error("truncated packet: {len} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Longer than [`MAX_PACKET_LEN`].
    #[error("oversized packet: {len} bytes, limit {MAX_PACKET_LEN}")]
    Oversized {
        /// Bytes received.
        len: usize,
    },
    /// Does not start with [`MAGIC`].
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not speak.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// An unknown packet kind.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// Flag bits or reserved bytes set that this version does not define.
    #[error("unknown flags {0:#06x} or reserved bits set")]
    BadFlags(u16),
    /// Bytes left over after header, body and MAC.
    #[error("length mismatch: {len} bytes, header says {expected}")]
    LengthMismatch {
        /// Bytes received.
        len: usize,
        /// Bytes the header implies.
        expected: usize,
    },
    /// The MAC does not match: wrong key, corruption or forgery.
    #[error("bad MAC")]
    BadMac,
    /// Authentic, but the body does not parse for its kind.
    #[error("malformed {0:?} body")]
    BadBody(PacketKind),
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The body would exceed [`MAX_BODY_LEN`].
    #[error("body of {len} bytes exceeds the {MAX_BODY_LEN}-byte limit")]
    Oversized {
        /// Body length that was asked for.
        len: usize,
    },
    /// More than [`MAX_VIEW_ENTRIES`] view entries.
    #[error("{0} view entries, limit {MAX_VIEW_ENTRIES}")]
    TooManyViewEntries(usize),
    /// The header's kind does not match the body.
    #[error("header kind {header:?} does not match body kind {body:?}")]
    KindMismatch {
        /// Kind in the header.
        header: PacketKind,
        /// Kind of the body.
        body: PacketKind,
    },
}

/// Why a key could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key material is shorter than 16 bytes: too easy to guess.
    #[error("key material is {0} bytes; at least 16 are required")]
    TooShort(usize),
    /// An authkeys method that tandem does not know.
    #[error("unknown authkeys method {0:?} (expected sha1 or md5)")]
    UnknownMethod(String),
    /// The authkeys `crc` method: no secret at all, so packets could be forged by anyone.
    #[error("authkeys method crc has no secret; tandem requires sha1 or md5 with a key")]
    InsecureMethod,
}

/// The 32-byte HMAC-SHA256 key that authenticates packets. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct PacketKey([u8; 32]);

impl fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketKey(<redacted>)")
    }
}

/// Domain-separation labels: the same secret used elsewhere never yields this key.
const NATIVE_LABEL: &[u8] = b"tandem membership key v1: native";
const AUTHKEYS_LABEL: &[u8] = b"tandem membership key v1: authkeys";

impl PacketKey {
    /// A key from raw bytes (tests, or a caller with its own derivation).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Derives the key from the whole content of a native key file:
    /// `HMAC-SHA256(key = "tandem membership key v1: native", message = content)`.
    /// The content is used byte for byte (a trailing newline is part of it), so the file
    /// must be copied, not retyped. At least 16 bytes are required.
    pub fn from_native_key_file(content: &[u8]) -> Result<Self, KeyError> {
        if content.len() < 16 {
            return Err(KeyError::TooShort(content.len()));
        }
        Ok(Self(hmac_sha256(NATIVE_LABEL, &[content])))
    }

    /// Derives the key from a Heartbeat `authkeys` entry (`N method secret`):
    /// `HMAC-SHA256(key = "tandem membership key v1: authkeys",
    ///  message = lowercase(method) ‖ 0x00 ‖ secret)`.
    /// `sha1` and `md5` are accepted (the method only selects the derivation input:
    /// tandem always authenticates with HMAC-SHA256); `crc` is refused because it has no
    /// secret. The secret must be at least 16 bytes.
    pub fn from_authkeys(method: &str, secret: &str) -> Result<Self, KeyError> {
        let method = method.to_ascii_lowercase();
        match method.as_str() {
            "sha1" | "md5" => {}
            "crc" => return Err(KeyError::InsecureMethod),
            _ => return Err(KeyError::UnknownMethod(method)),
        }
        if secret.len() < 16 {
            return Err(KeyError::TooShort(secret.len()));
        }
        Ok(Self(hmac_sha256(
            AUTHKEYS_LABEL,
            &[method.as_bytes(), &[0], secret.as_bytes()],
        )))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail for 32 bytes.
        <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }
}

/// HMAC-SHA256 (RFC 2104) under `key` of the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256 of arbitrary bytes; used for configuration digests carried in heartbeats.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Encodes a packet: header (with `body_len` filled in), body, MAC.
pub fn encode(header: &Header, body: &Body, key: &PacketKey) -> Result<Vec<u8>, EncodeError> {
    if header.kind != body.kind() {
        return Err(EncodeError::KindMismatch {
            header: header.kind,
            body: body.kind(),
        });
    }
    let mut body_bytes = Vec::new();
    match body {
        Body::Heartbeat(hb) => {
            if hb.view.len() > MAX_VIEW_ENTRIES {
                return Err(EncodeError::TooManyViewEntries(hb.view.len()));
            }
            body_bytes.extend_from_slice(&hb.config_digest);
            body_bytes.extend_from_slice(&hb.keepalive_ms.to_be_bytes());
            body_bytes.extend_from_slice(&(hb.view.len() as u16).to_be_bytes());
            for e in &hb.view {
                body_bytes.extend_from_slice(&e.node.to_be_bytes());
                body_bytes.push(e.state as u8);
                body_bytes.extend_from_slice(&e.incarnation.to_be_bytes());
                body_bytes.extend_from_slice(&e.links_up_mask.to_be_bytes());
            }
        }
        Body::Message(m) => {
            body_bytes.extend_from_slice(&m.dest_incarnation.to_be_bytes());
            body_bytes.extend_from_slice(&m.epoch.to_be_bytes());
            body_bytes.extend_from_slice(&m.msg_seq.to_be_bytes());
            body_bytes.extend_from_slice(&m.payload);
        }
        Body::Ack(a) => {
            body_bytes.extend_from_slice(&a.dest_incarnation.to_be_bytes());
            body_bytes.extend_from_slice(&a.epoch.to_be_bytes());
            body_bytes.extend_from_slice(&a.cumulative.to_be_bytes());
        }
    }
    if body_bytes.len() > MAX_BODY_LEN {
        return Err(EncodeError::Oversized {
            len: body_bytes.len(),
        });
    }
    let mut out = vec![0u8; HEADER_LEN];
    put(&mut out, offset_of!(HeaderLayout, magic), &MAGIC);
    out[offset_of!(HeaderLayout, version)] = VERSION;
    out[offset_of!(HeaderLayout, kind)] = header.kind as u8;
    put(
        &mut out,
        offset_of!(HeaderLayout, flags),
        &header.flags.to_be_bytes(),
    );
    put(
        &mut out,
        offset_of!(HeaderLayout, cluster_id),
        &header.cluster_id.to_be_bytes(),
    );
    put(
        &mut out,
        offset_of!(HeaderLayout, sender),
        &header.sender.to_be_bytes(),
    );
    put(
        &mut out,
        offset_of!(HeaderLayout, dest),
        &header.dest.to_be_bytes(),
    );
    put(
        &mut out,
        offset_of!(HeaderLayout, incarnation),
        &header.incarnation.to_be_bytes(),
    );
    put(
        &mut out,
        offset_of!(HeaderLayout, seq),
        &header.seq.to_be_bytes(),
    );
    put(
        &mut out,
        offset_of!(HeaderLayout, link),
        &header.link.to_be_bytes(),
    );
    put(
        &mut out,
        offset_of!(HeaderLayout, body_len),
        &(body_bytes.len() as u32).to_be_bytes(),
    );
    out.extend_from_slice(&body_bytes);
    let mut mac = key.mac();
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&tag);
    Ok(out)
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Reads `N` bytes at `at`; `None` if out of range (never panics).
fn get<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Checks a packet's structure and returns its header, without verifying the MAC.
///
/// The fields are *unauthenticated*: use them only to count and classify drops (other
/// cluster, unknown node) before [`open`] verifies the MAC.
pub fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let len = bytes.len();
    if len > MAX_PACKET_LEN {
        return Err(DecodeError::Oversized { len });
    }
    if len < HEADER_LEN + MAC_LEN {
        // Check the magic on whatever is there first: a short non-tandem datagram is
        // more usefully counted as "not ours" than as truncated.
        if len >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        return Err(DecodeError::Truncated {
            len,
            need: HEADER_LEN + MAC_LEN,
        });
    }
    let field_err = DecodeError::Truncated {
        len,
        need: HEADER_LEN,
    };
    let magic: [u8; 4] = get(bytes, offset_of!(HeaderLayout, magic)).ok_or(field_err)?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = bytes[offset_of!(HeaderLayout, version)];
    if version != VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let kind_byte = bytes[offset_of!(HeaderLayout, kind)];
    let kind = PacketKind::from_u8(kind_byte).ok_or(DecodeError::UnknownKind(kind_byte))?;
    let flags = u16::from_be_bytes(get(bytes, offset_of!(HeaderLayout, flags)).ok_or(field_err)?);
    let reserved =
        u16::from_be_bytes(get(bytes, offset_of!(HeaderLayout, reserved)).ok_or(field_err)?);
    if flags != 0 || reserved != 0 {
        return Err(DecodeError::BadFlags(flags | reserved));
    }
    let body_len =
        u32::from_be_bytes(get(bytes, offset_of!(HeaderLayout, body_len)).ok_or(field_err)?);
    let expected = HEADER_LEN + MAC_LEN + body_len as usize;
    if len < expected {
        return Err(DecodeError::Truncated {
            len,
            need: expected,
        });
    }
    if len > expected {
        return Err(DecodeError::LengthMismatch { len, expected });
    }
    Ok(Header {
        kind,
        flags,
        cluster_id: u64::from_be_bytes(
            get(bytes, offset_of!(HeaderLayout, cluster_id)).ok_or(field_err)?,
        ),
        sender: u32::from_be_bytes(get(bytes, offset_of!(HeaderLayout, sender)).ok_or(field_err)?),
        dest: u32::from_be_bytes(get(bytes, offset_of!(HeaderLayout, dest)).ok_or(field_err)?),
        incarnation: u64::from_be_bytes(
            get(bytes, offset_of!(HeaderLayout, incarnation)).ok_or(field_err)?,
        ),
        seq: u64::from_be_bytes(get(bytes, offset_of!(HeaderLayout, seq)).ok_or(field_err)?),
        link: u16::from_be_bytes(get(bytes, offset_of!(HeaderLayout, link)).ok_or(field_err)?),
        body_len,
    })
}

/// Verifies a packet's MAC and decodes it completely.
pub fn open(bytes: &[u8], key: &PacketKey) -> Result<(Header, Body), DecodeError> {
    let header = decode_header(bytes)?;
    let mac_at = bytes.len() - MAC_LEN; // decode_header guaranteed len ≥ HEADER_LEN + MAC_LEN
    let mut mac = key.mac();
    mac.update(&bytes[..mac_at]);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&bytes[mac_at..])
        .map_err(|_| DecodeError::BadMac)?;
    let body = &bytes[HEADER_LEN..mac_at];
    let bad = DecodeError::BadBody(header.kind);
    let body = match header.kind {
        PacketKind::Heartbeat => {
            let config_digest: [u8; 32] = get(body, 0).ok_or(bad)?;
            let keepalive_ms = u32::from_be_bytes(get(body, 32).ok_or(bad)?);
            let count = u16::from_be_bytes(get(body, 36).ok_or(bad)?) as usize;
            if count > MAX_VIEW_ENTRIES
                || body.len() != HEARTBEAT_FIXED_LEN + count * VIEW_ENTRY_LEN
            {
                return Err(bad);
            }
            let mut view = Vec::with_capacity(count);
            for i in 0..count {
                let at = HEARTBEAT_FIXED_LEN + i * VIEW_ENTRY_LEN;
                let state = match body.get(at + 4) {
                    Some(0) => ViewState::Unknown,
                    Some(1) => ViewState::Up,
                    Some(2) => ViewState::Dead,
                    _ => return Err(bad),
                };
                view.push(ViewEntry {
                    node: u32::from_be_bytes(get(body, at).ok_or(bad)?),
                    state,
                    incarnation: u64::from_be_bytes(get(body, at + 5).ok_or(bad)?),
                    links_up_mask: u32::from_be_bytes(get(body, at + 13).ok_or(bad)?),
                });
            }
            Body::Heartbeat(HeartbeatBody {
                config_digest,
                keepalive_ms,
                view,
            })
        }
        PacketKind::Message => {
            if body.len() < MESSAGE_FIXED_LEN {
                return Err(bad);
            }
            Body::Message(MessageBody {
                dest_incarnation: u64::from_be_bytes(get(body, 0).ok_or(bad)?),
                epoch: u32::from_be_bytes(get(body, 8).ok_or(bad)?),
                msg_seq: u64::from_be_bytes(get(body, 12).ok_or(bad)?),
                payload: body[MESSAGE_FIXED_LEN..].to_vec(),
            })
        }
        PacketKind::Ack => {
            if body.len() != ACK_LEN {
                return Err(bad);
            }
            Body::Ack(AckBody {
                dest_incarnation: u64::from_be_bytes(get(body, 0).ok_or(bad)?),
                epoch: u32::from_be_bytes(get(body, 8).ok_or(bad)?),
                cumulative: u64::from_be_bytes(get(body, 12).ok_or(bad)?),
            })
        }
    };
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2, the message in two parts.
        assert_eq!(
            hex(&hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn key() -> PacketKey {
        PacketKey::from_bytes([7; 32])
    }

    fn header(kind: PacketKind) -> Header {
        Header {
            kind,
            flags: 0,
            cluster_id: 0xC1,
            sender: 1,
            dest: 0,
            incarnation: 5,
            seq: 42,
            link: 1,
            body_len: 0,
        }
    }

    fn heartbeat() -> Body {
        Body::Heartbeat(HeartbeatBody {
            config_digest: [9; 32],
            keepalive_ms: 1000,
            view: vec![
                ViewEntry {
                    node: 1,
                    state: ViewState::Up,
                    incarnation: 5,
                    links_up_mask: 0b11,
                },
                ViewEntry {
                    node: 2,
                    state: ViewState::Dead,
                    incarnation: 3,
                    links_up_mask: 0,
                },
            ],
        })
    }

    fn samples() -> Vec<Vec<u8>> {
        vec![
            encode(&header(PacketKind::Heartbeat), &heartbeat(), &key()).unwrap(),
            encode(
                &header(PacketKind::Message),
                &Body::Message(MessageBody {
                    dest_incarnation: 3,
                    epoch: 1,
                    msg_seq: 9,
                    payload: b"standby request".to_vec(),
                }),
                &key(),
            )
            .unwrap(),
            encode(
                &header(PacketKind::Ack),
                &Body::Ack(AckBody {
                    dest_incarnation: 5,
                    epoch: 1,
                    cumulative: 9,
                }),
                &key(),
            )
            .unwrap(),
        ]
    }

    #[test]
    fn round_trip_every_kind() {
        for bytes in samples() {
            let (h, body) = open(&bytes, &key()).unwrap();
            assert_eq!(h.body_len as usize, bytes.len() - HEADER_LEN - MAC_LEN);
            let again = encode(&h, &body, &key()).unwrap();
            assert_eq!(again, bytes);
        }
        let (h, body) = open(&samples()[0], &key()).unwrap();
        assert_eq!(h.seq, 42);
        assert_eq!(h.link, 1);
        assert_eq!(body, heartbeat());
    }

    #[test]
    fn wrong_key_is_bad_mac() {
        let bytes = &samples()[0];
        assert_eq!(
            open(bytes, &PacketKey::from_bytes([8; 32])),
            Err(DecodeError::BadMac)
        );
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        for bytes in samples() {
            for i in 0..bytes.len() * 8 {
                let mut b = bytes.clone();
                b[i / 8] ^= 1 << (i % 8);
                assert!(open(&b, &key()).is_err(), "bit {i} flipped was accepted");
            }
        }
    }

    #[test]
    fn each_structural_reason_is_reported() {
        let good = samples()[0].clone();
        assert!(matches!(
            decode_header(&good[..10]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_header(&good[..good.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode_header(&long),
            Err(DecodeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode_header(&vec![0; MAX_PACKET_LEN + 1]),
            Err(DecodeError::Oversized { .. })
        ));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(decode_header(&b), Err(DecodeError::BadMagic));
        assert_eq!(decode_header(b"GET / HTTP/1.0"), Err(DecodeError::BadMagic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(decode_header(&b), Err(DecodeError::BadVersion(2)));
        let mut b = good.clone();
        b[5] = 77;
        assert_eq!(decode_header(&b), Err(DecodeError::UnknownKind(77)));
        let mut b = good.clone();
        b[7] = 1;
        assert_eq!(decode_header(&b), Err(DecodeError::BadFlags(1)));
    }

    #[test]
    fn authentic_but_malformed_body_is_bad_body() {
        // A well-formed header + valid MAC around a body that is too short for its kind.
        let mut h = header(PacketKind::Ack);
        h.body_len = 3;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&[VERSION, PacketKind::Ack as u8, 0, 0]);
        bytes.extend_from_slice(&h.cluster_id.to_be_bytes());
        bytes.extend_from_slice(&h.sender.to_be_bytes());
        bytes.extend_from_slice(&h.dest.to_be_bytes());
        bytes.extend_from_slice(&h.incarnation.to_be_bytes());
        bytes.extend_from_slice(&h.seq.to_be_bytes());
        bytes.extend_from_slice(&h.link.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        let mut mac = key().mac();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes());
        assert_eq!(decode_header(&bytes).unwrap().body_len, 3);
        assert_eq!(
            open(&bytes, &key()),
            Err(DecodeError::BadBody(PacketKind::Ack))
        );
    }

    #[test]
    fn encode_limits() {
        let big = Body::Message(MessageBody {
            dest_incarnation: 1,
            epoch: 0,
            msg_seq: 1,
            payload: vec![0; MAX_MESSAGE_PAYLOAD_LEN + 1],
        });
        assert!(matches!(
            encode(&header(PacketKind::Message), &big, &key()),
            Err(EncodeError::Oversized { .. })
        ));
        let fits = Body::Message(MessageBody {
            dest_incarnation: 1,
            epoch: 0,
            msg_seq: 1,
            payload: vec![0; MAX_MESSAGE_PAYLOAD_LEN],
        });
        let bytes = encode(&header(PacketKind::Message), &fits, &key()).unwrap();
        assert_eq!(bytes.len(), MAX_PACKET_LEN);
        assert!(open(&bytes, &key()).is_ok());
        assert!(matches!(
            encode(&header(PacketKind::Ack), &heartbeat(), &key()),
            Err(EncodeError::KindMismatch { .. })
        ));
    }

    /// A small xorshift so the test is reproducible without a dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_bytes_never_panic_and_never_authenticate() {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let good = samples();
        for i in 0..200_000u32 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let len = (xorshift(&mut s) % 1600) as usize;
                (0..len).map(|_| xorshift(&mut s) as u8).collect()
            } else {
                // Mutate a real packet: structurally plausible, so it reaches the MAC check.
                let mut b = good[(i as usize / 2) % good.len()].clone();
                let n = 1 + xorshift(&mut s) % 4;
                for _ in 0..n {
                    let at = (xorshift(&mut s) as usize) % b.len();
                    b[at] = xorshift(&mut s) as u8;
                }
                if xorshift(&mut s) % 8 == 0 {
                    let cut = (xorshift(&mut s) as usize) % b.len();
                    b.truncate(cut);
                }
                b
            };
            let _ = decode_header(&bytes);
            if let Ok((h, body)) = open(&bytes, &key()) {
                // Only an unmodified copy may authenticate (a mutation that wrote the
                // same byte back).
                assert!(
                    good.contains(&bytes),
                    "forged packet accepted: {h:?} {body:?}"
                );
            }
        }
    }

    #[test]
    fn key_derivation() {
        let a = PacketKey::from_native_key_file(b"0123456789abcdef0123").unwrap();
        let b = PacketKey::from_native_key_file(b"0123456789abcdef0123\n").unwrap();
        assert_ne!(a, b, "every byte of the key file counts");
        assert_eq!(
            PacketKey::from_native_key_file(b"short"),
            Err(KeyError::TooShort(5))
        );
        let s1 = PacketKey::from_authkeys("sha1", "a long shared secret").unwrap();
        let s2 = PacketKey::from_authkeys("SHA1", "a long shared secret").unwrap();
        let m = PacketKey::from_authkeys("md5", "a long shared secret").unwrap();
        assert_eq!(s1, s2);
        assert_ne!(s1, m);
        assert_eq!(
            PacketKey::from_authkeys("crc", ""),
            Err(KeyError::InsecureMethod)
        );
        assert!(matches!(
            PacketKey::from_authkeys("rot13", "a long shared secret"),
            Err(KeyError::UnknownMethod(_))
        ));
        // Pinned values, computed independently (Python's hmac module), so a change of
        // derivation is noticed: it would silently split a cluster across versions.
        assert_eq!(
            hex(&PacketKey::from_authkeys("sha1", "0123456789abcdef")
                .unwrap()
                .0),
            "708c2a130b6407a9b50285c913f1b5efa5e5c197af49a6d675ac84830f23304f"
        );
        assert_eq!(
            hex(&PacketKey::from_native_key_file(b"0123456789abcdef")
                .unwrap()
                .0),
            "5ad975194a507aaeef7f0c044d1b5af2b151735ca5d45de1134950afbba08559"
        );
        assert_eq!(format!("{s1:?}"), "PacketKey(<redacted>)");
    }
}
