//! NBD wire constants and pure decoders/encoders (no I/O).
//!
//! Every value here was taken from the protocol document (`doc/proto.md` of the
//! NetworkBlockDevice project). Decoders return [`ProtoError`] and never panic; they are
//! fed arbitrary bytes by the fuzz targets under `fuzz/` and by the unit tests below.

use thiserror::Error;

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second server magic and the magic in front of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic in front of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client wants no zero padding after `NBD_OPT_EXPORT_NAME`.
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag bits (16 bits, sent with the export size).
pub mod tflag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Export refuses writes.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is understood.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is understood.
    pub const SEND_FUA: u16 = 1 << 3;
    /// The medium rotates (a hint).
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_CMD_TRIM` is understood.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` and `NBD_CMD_FLAG_NO_HOLE` are understood.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Flush/FUA effects are visible across all connections to the export.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_CACHE` is understood.
    pub const SEND_CACHE: u16 = 1 << 10;
}

/// Option codes (client → server during the handshake).
pub mod opt {
    /// Choose an export and enter transmission (no error reply possible).
    pub const EXPORT_NAME: u32 = 1;
    /// End the negotiation.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS.
    pub const STARTTLS: u32 = 5;
    /// Ask about an export.
    pub const INFO: u32 = 6;
    /// Ask about an export and enter transmission.
    pub const GO: u32 = 7;
    /// Negotiate structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Negotiate extended headers.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types.
pub mod rep {
    /// Success / end of a list.
    pub const ACK: u32 = 1;
    /// One export in a `NBD_OPT_LIST` answer.
    pub const SERVER: u32 = 2;
    /// One item of information for `NBD_OPT_INFO` / `NBD_OPT_GO`.
    pub const INFO: u32 = 3;
    /// Option not known.
    pub const ERR_UNSUP: u32 = 0x8000_0001;
    /// Option known but forbidden by policy.
    pub const ERR_POLICY: u32 = 0x8000_0002;
    /// Option known but malformed.
    pub const ERR_INVALID: u32 = 0x8000_0003;
    /// Option needs TLS.
    pub const ERR_TLS_REQD: u32 = 0x8000_0005;
    /// Export does not exist.
    pub const ERR_UNKNOWN: u32 = 0x8000_0006;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = 0x8000_0007;
    /// Request or reply too large.
    pub const ERR_TOO_BIG: u32 = 0x8000_0009;
}

/// Information types inside `NBD_REP_INFO`.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Canonical export name.
    pub const NAME: u16 = 1;
    /// Human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission command types.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (payload follows the header).
    pub const WRITE: u16 = 1;
    /// Disconnect (no reply).
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Discard (a hint).
    pub const TRIM: u16 = 4;
    /// Prefetch (a hint).
    pub const CACHE: u16 = 5;
    /// Write zeroes without a payload.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status (needs structured replies; not offered).
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flag bits.
pub mod cflag {
    /// Force unit access: durable before the reply.
    pub const FUA: u16 = 1 << 0;
    /// `WRITE_ZEROES`: do not leave a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `READ`: do not fragment (structured replies only).
    pub const DF: u16 = 1 << 2;
    /// `BLOCK_STATUS`: one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `WRITE_ZEROES`: fail fast if not faster than writing.
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// NBD error values (the `error` field of a reply); a restricted set of errno numbers.
pub mod errno {
    /// Operation not permitted (write to a read-only export).
    pub const EPERM: u32 = 1;
    /// Input/output error.
    pub const EIO: u32 = 5;
    /// Cannot allocate memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space left (write beyond the end).
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Operation not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Size of the server greeting (`NBDMAGIC`, `IHAVEOPT`, handshake flags).
pub const GREETING_LEN: usize = 18;
/// Size of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Size of a request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Longest string (export name, description) the protocol allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Largest READ/WRITE payload accepted: the protocol's interoperable maximum, 32 MiB.
pub const MAX_PAYLOAD_BYTES: u32 = 32 * 1024 * 1024;
/// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE`.
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;

const _: () = assert!(REQUEST_HEADER_LEN == 4 + 2 + 2 + 8 + 8 + 4);
const _: () = assert!(SIMPLE_REPLY_LEN == 4 + 4 + 8);

/// A decoding error: the peer broke a MUST of the protocol; the session is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// An option header did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// A request header did not start with `NBD_REQUEST_MAGIC`.
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    /// The client set flags the server did not offer.
    #[error("unknown client flags {0:#010x}")]
    UnknownClientFlags(u32),
    /// The buffer is shorter than the fixed-size structure.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
fn need(b: &[u8], n: usize) -> Result<(), ProtoError> {
    if b.len() < n {
        Err(ProtoError::Truncated {
            need: n,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}

/// The 18-byte server greeting of fixed newstyle negotiation.
pub fn encode_greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// The client's answer to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientFlags {
    /// The client speaks fixed newstyle.
    pub fixed_newstyle: bool,
    /// The server must not send the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
    pub no_zeroes: bool,
}

/// Decode the 4-byte client flags; unknown bits mean the session must be dropped.
pub fn decode_client_flags(b: &[u8]) -> Result<ClientFlags, ProtoError> {
    need(b, 4)?;
    let v = be_u32(b, 0);
    let known = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;
    if v & !known != 0 {
        return Err(ProtoError::UnknownClientFlags(v));
    }
    Ok(ClientFlags {
        fixed_newstyle: v & CLIENT_FLAG_FIXED_NEWSTYLE != 0,
        no_zeroes: v & CLIENT_FLAG_NO_ZEROES != 0,
    })
}

/// Header of one client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option code (see [`opt`]).
    pub option: u32,
    /// Length of the option data that follows.
    pub length: u32,
}

/// Decode a 16-byte option header.
pub fn decode_option_header(b: &[u8]) -> Result<OptionHeader, ProtoError> {
    need(b, OPTION_HEADER_LEN)?;
    let magic = be_u64(b, 0);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadOptionMagic(magic));
    }
    Ok(OptionHeader {
        option: be_u32(b, 8),
        length: be_u32(b, 12),
    })
}

/// A parsed client option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`.
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_INFO` (`go == false`) or `NBD_OPT_GO` (`go == true`).
    Info {
        /// Whether this is `NBD_OPT_GO`.
        go: bool,
        /// Requested export name (empty = default export).
        name: String,
        /// Information types the client asked for.
        requests: Vec<u16>,
    },
    /// Any option this server does not implement (answered with `NBD_REP_ERR_UNSUP`).
    Unsupported(u32),
}

/// Why an option's data is malformed (answered with `NBD_REP_ERR_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionDataError {
    /// A length field points past the option data.
    #[error("length field exceeds option data")]
    Overrun,
    /// Bytes left over after the last field.
    #[error("trailing bytes after option data")]
    Trailing,
    /// The option must not carry data.
    #[error("option takes no data")]
    UnexpectedData,
    /// A string is not UTF-8 or contains NUL.
    #[error("string is not valid UTF-8 without NUL")]
    BadString,
    /// A string is longer than 4096 bytes.
    #[error("string longer than {MAX_STRING_LEN} bytes")]
    StringTooLong,
}

fn parse_string(b: &[u8]) -> Result<String, OptionDataError> {
    if b.len() > MAX_STRING_LEN {
        return Err(OptionDataError::StringTooLong);
    }
    if b.contains(&0) {
        return Err(OptionDataError::BadString);
    }
    String::from_utf8(b.to_vec()).map_err(|_| OptionDataError::BadString)
}

/// Parse an option's data. Pure; never panics on any input.
pub fn parse_option(option: u32, data: &[u8]) -> Result<ClientOption, OptionDataError> {
    match option {
        opt::EXPORT_NAME => Ok(ClientOption::ExportName(parse_string(data)?)),
        // The document asks servers to ignore data sent with ABORT.
        opt::ABORT => Ok(ClientOption::Abort),
        opt::LIST => {
            if data.is_empty() {
                Ok(ClientOption::List)
            } else {
                Err(OptionDataError::UnexpectedData)
            }
        }
        opt::INFO | opt::GO => {
            if data.len() < 4 {
                return Err(OptionDataError::Overrun);
            }
            let name_len = be_u32(data, 0) as usize;
            let rest = &data[4..];
            if name_len > rest.len() || rest.len() - name_len < 2 {
                return Err(OptionDataError::Overrun);
            }
            let name = parse_string(&rest[..name_len])?;
            let rest = &rest[name_len..];
            let count = be_u16(rest, 0) as usize;
            let list = &rest[2..];
            if list.len() < count * 2 {
                return Err(OptionDataError::Overrun);
            }
            if list.len() > count * 2 {
                return Err(OptionDataError::Trailing);
            }
            let requests = list.chunks_exact(2).map(|c| be_u16(c, 0)).collect();
            Ok(ClientOption::Info {
                go: option == opt::GO,
                name,
                requests,
            })
        }
        other => Ok(ClientOption::Unsupported(other)),
    }
}

/// Append one option reply (header and data) to `out`.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // Option data we produce is bounded by MAX_STRING_LEN-sized strings.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, flags and (unless `no_zeroes`) 124 zeroes.
pub fn encode_export_name_reply(out: &mut Vec<u8>, size_bytes: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size_bytes.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

/// A transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (see [`cflag`]).
    pub flags: u16,
    /// Command type (see [`cmd`]).
    pub kind: u16,
    /// Opaque handle echoed in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// Decode a 28-byte request header. A wrong magic means the stream is out of sync.
pub fn decode_request_header(b: &[u8]) -> Result<RequestHeader, ProtoError> {
    need(b, REQUEST_HEADER_LEN)?;
    let magic = be_u32(b, 0);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadRequestMagic(magic));
    }
    Ok(RequestHeader {
        flags: be_u16(b, 4),
        kind: be_u16(b, 6),
        handle: be_u64(b, 8),
        offset: be_u64(b, 16),
        length: be_u32(b, 24),
    })
}

/// Encode a request header (used by tests and the fuzz corpus; clients send these).
pub fn encode_request_header(h: &RequestHeader) -> [u8; REQUEST_HEADER_LEN] {
    let mut b = [0u8; REQUEST_HEADER_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&h.flags.to_be_bytes());
    b[6..8].copy_from_slice(&h.kind.to_be_bytes());
    b[8..16].copy_from_slice(&h.handle.to_be_bytes());
    b[16..24].copy_from_slice(&h.offset.to_be_bytes());
    b[24..28].copy_from_slice(&h.length.to_be_bytes());
    b
}

/// Encode a simple reply header.
pub fn encode_simple_reply(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// What the connection knows when it judges a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmissionContext {
    /// Export size fixed at the handshake.
    pub size_bytes: u64,
    /// Transmission flags sent at the handshake.
    pub flags: u16,
    /// Whether the device accepts writes right now (a secondary does not).
    pub writable: bool,
}

/// A request that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `length` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u32,
    },
    /// Write the `length` payload bytes that follow at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Discard a range (a hint).
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Zero a range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u32,
        /// Durable before the reply.
        fua: bool,
        /// The server may deallocate (no `NBD_CMD_FLAG_NO_HOLE`).
        may_trim: bool,
    },
    /// Prefetch hint: answered with success after range checks.
    Cache,
}

/// Why a request is refused; each maps to one rejection counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Command type not known or not offered.
    UnknownCommand,
    /// A command flag not valid for the command, or not negotiated.
    BadFlags,
    /// Offset + length past the end of the export (or overflowing).
    OutOfRange,
    /// Payload larger than [`MAX_PAYLOAD_BYTES`].
    Oversized,
    /// A write to an export that is read-only (a secondary).
    ReadOnly,
    /// Nonzero offset/length where the document demands zero.
    BadArguments,
}

/// The verdict on one request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Carry the command out.
    Execute(Command),
    /// Reply with `errno`; first read and drop `discard_bytes` of payload.
    Reject {
        /// NBD error value for the reply.
        errno: u32,
        /// Payload bytes that follow the header and must be consumed.
        discard_bytes: u32,
        /// Reason (for counters and logs).
        reason: RejectReason,
    },
    /// `NBD_CMD_DISC`: finish in-flight requests, then close.
    Disconnect,
    /// The request cannot be answered safely (a write payload too large to consume):
    /// drop the connection.
    HardDisconnect(RejectReason),
}

/// Judge a request header against the negotiated export. Pure; never panics.
pub fn validate_request(h: &RequestHeader, ctx: &TransmissionContext) -> Verdict {
    // DISC has no reply, so it cannot be refused: whatever its flags, close.
    if h.kind == cmd::DISC {
        return Verdict::Disconnect;
    }
    let fua_ok = ctx.flags & tflag::SEND_FUA != 0;
    let base_flags = if fua_ok { cflag::FUA } else { 0 };
    let payload = if h.kind == cmd::WRITE { h.length } else { 0 };
    let reject = |errno: u32, reason: RejectReason| {
        if payload > MAX_PAYLOAD_BYTES {
            Verdict::HardDisconnect(reason)
        } else {
            Verdict::Reject {
                errno,
                discard_bytes: payload,
                reason,
            }
        }
    };
    let allowed = match h.kind {
        cmd::READ | cmd::WRITE | cmd::FLUSH => base_flags,
        cmd::TRIM if ctx.flags & tflag::SEND_TRIM != 0 => base_flags,
        cmd::CACHE if ctx.flags & tflag::SEND_CACHE != 0 => base_flags,
        cmd::WRITE_ZEROES if ctx.flags & tflag::SEND_WRITE_ZEROES != 0 => {
            base_flags | cflag::NO_HOLE
        }
        _ => return reject(errno::EINVAL, RejectReason::UnknownCommand),
    };
    if h.flags & !allowed != 0 {
        return reject(errno::EINVAL, RejectReason::BadFlags);
    }
    let fua = h.flags & cflag::FUA != 0;
    if h.kind == cmd::FLUSH {
        if h.offset != 0 || h.length != 0 {
            return reject(errno::EINVAL, RejectReason::BadArguments);
        }
        return Verdict::Execute(Command::Flush);
    }
    let writes = matches!(h.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if (h.kind == cmd::READ || h.kind == cmd::WRITE) && h.length > MAX_PAYLOAD_BYTES {
        return reject(errno::EINVAL, RejectReason::Oversized);
    }
    if writes && (!ctx.writable || ctx.flags & tflag::READ_ONLY != 0) {
        return reject(errno::EPERM, RejectReason::ReadOnly);
    }
    let in_range = h
        .offset
        .checked_add(u64::from(h.length))
        .is_some_and(|end| end <= ctx.size_bytes);
    if !in_range {
        // The document asks for ENOSPC on writes past the end, EINVAL otherwise.
        let e = if matches!(h.kind, cmd::WRITE | cmd::WRITE_ZEROES) {
            errno::ENOSPC
        } else {
            errno::EINVAL
        };
        return reject(e, RejectReason::OutOfRange);
    }
    let (offset, length) = (h.offset, h.length);
    Verdict::Execute(match h.kind {
        cmd::READ => Command::Read { offset, length },
        cmd::WRITE => Command::Write {
            offset,
            length,
            fua,
        },
        cmd::TRIM => Command::Trim {
            offset,
            length,
            fua,
        },
        cmd::WRITE_ZEROES => Command::WriteZeroes {
            offset,
            length,
            fua,
            may_trim: h.flags & cflag::NO_HOLE == 0,
        },
        _ => Command::Cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift so failures are reproducible from the printed seed.
    pub(crate) struct XorShift(pub u64);
    impl XorShift {
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        pub fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn ctx() -> TransmissionContext {
        TransmissionContext {
            size_bytes: 1 << 20,
            flags: tflag::HAS_FLAGS
                | tflag::SEND_FLUSH
                | tflag::SEND_FUA
                | tflag::SEND_TRIM
                | tflag::SEND_WRITE_ZEROES
                | tflag::SEND_CACHE,
            writable: true,
        }
    }

    fn hdr(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            handle: 7,
            offset,
            length,
        }
    }

    #[test]
    fn request_header_round_trips() {
        let h = hdr(cmd::WRITE, cflag::FUA, 4096, 512);
        let b = encode_request_header(&h);
        assert_eq!(decode_request_header(&b), Ok(h));
    }

    #[test]
    fn bad_request_magic_is_an_error() {
        let mut b = encode_request_header(&hdr(cmd::READ, 0, 0, 512));
        b[0] ^= 0xff;
        assert!(matches!(
            decode_request_header(&b),
            Err(ProtoError::BadRequestMagic(_))
        ));
        assert!(matches!(
            decode_request_header(&b[..10]),
            Err(ProtoError::Truncated { need: 28, have: 10 })
        ));
    }

    #[test]
    fn validate_accepts_in_range_io() {
        let c = ctx();
        assert_eq!(
            validate_request(&hdr(cmd::READ, 0, 0, 4096), &c),
            Verdict::Execute(Command::Read {
                offset: 0,
                length: 4096
            })
        );
        assert_eq!(
            validate_request(&hdr(cmd::WRITE_ZEROES, cflag::NO_HOLE, 0, 1 << 20), &c),
            Verdict::Execute(Command::WriteZeroes {
                offset: 0,
                length: 1 << 20,
                fua: false,
                may_trim: false
            })
        );
    }

    #[test]
    fn validate_rejects_out_of_range_with_the_documented_errno() {
        let c = ctx();
        let v = validate_request(&hdr(cmd::WRITE, 0, (1 << 20) - 512, 1024), &c);
        assert_eq!(
            v,
            Verdict::Reject {
                errno: errno::ENOSPC,
                discard_bytes: 1024,
                reason: RejectReason::OutOfRange
            }
        );
        let v = validate_request(&hdr(cmd::READ, 0, u64::MAX, 1), &c);
        assert!(matches!(
            v,
            Verdict::Reject {
                errno: errno::EINVAL,
                discard_bytes: 0,
                ..
            }
        ));
    }

    #[test]
    fn validate_rejects_unknown_command_bad_flags_and_oversize() {
        let c = ctx();
        assert!(matches!(
            validate_request(&hdr(99, 0, 0, 0), &c),
            Verdict::Reject {
                errno: errno::EINVAL,
                reason: RejectReason::UnknownCommand,
                ..
            }
        ));
        assert!(matches!(
            validate_request(&hdr(cmd::READ, cflag::DF, 0, 512), &c),
            Verdict::Reject {
                reason: RejectReason::BadFlags,
                ..
            }
        ));
        assert!(matches!(
            validate_request(&hdr(cmd::BLOCK_STATUS, 0, 0, 512), &c),
            Verdict::Reject {
                reason: RejectReason::UnknownCommand,
                ..
            }
        ));
        assert_eq!(
            validate_request(&hdr(cmd::WRITE, 0, 0, MAX_PAYLOAD_BYTES + 1), &c),
            Verdict::HardDisconnect(RejectReason::Oversized)
        );
        assert!(matches!(
            validate_request(&hdr(cmd::READ, 0, 0, MAX_PAYLOAD_BYTES + 1), &c),
            Verdict::Reject {
                reason: RejectReason::Oversized,
                ..
            }
        ));
        assert!(matches!(
            validate_request(&hdr(cmd::FLUSH, 0, 1, 0), &c),
            Verdict::Reject {
                reason: RejectReason::BadArguments,
                ..
            }
        ));
    }

    #[test]
    fn secondary_answers_writes_with_eperm() {
        let mut c = ctx();
        c.writable = false;
        for kind in [cmd::WRITE, cmd::TRIM, cmd::WRITE_ZEROES] {
            assert!(matches!(
                validate_request(&hdr(kind, 0, 0, 512), &c),
                Verdict::Reject {
                    errno: errno::EPERM,
                    reason: RejectReason::ReadOnly,
                    ..
                }
            ));
        }
        assert!(matches!(
            validate_request(&hdr(cmd::READ, 0, 0, 512), &c),
            Verdict::Execute(_)
        ));
    }

    #[test]
    fn info_option_parses_and_rejects_overruns() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"vm1");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&info::NAME.to_be_bytes());
        assert_eq!(
            parse_option(opt::GO, &d),
            Ok(ClientOption::Info {
                go: true,
                name: "vm1".into(),
                requests: vec![info::BLOCK_SIZE, info::NAME]
            })
        );
        assert_eq!(
            parse_option(opt::GO, &d[..d.len() - 1]),
            Err(OptionDataError::Overrun)
        );
        let mut long = d.clone();
        long.push(0);
        assert_eq!(
            parse_option(opt::INFO, &long),
            Err(OptionDataError::Trailing)
        );
        assert_eq!(
            parse_option(opt::LIST, b"x"),
            Err(OptionDataError::UnexpectedData)
        );
        assert_eq!(
            parse_option(opt::EXPORT_NAME, b"a\0b"),
            Err(OptionDataError::BadString)
        );
        assert_eq!(parse_option(77, b""), Ok(ClientOption::Unsupported(77)));
    }

    #[test]
    fn client_flags_reject_unknown_bits() {
        assert_eq!(
            decode_client_flags(&3u32.to_be_bytes()),
            Ok(ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            })
        );
        assert!(decode_client_flags(&4u32.to_be_bytes()).is_err());
    }

    #[test]
    fn decoders_survive_random_bytes() {
        let seed = 0x9e37_79b9_7f4a_7c15;
        let mut rng = XorShift(seed);
        let c = ctx();
        for i in 0..20_000 {
            let n = (rng.next() % 64) as usize;
            let mut b = rng.bytes(n);
            // Half the time give the request decoder a valid magic so validation runs.
            if i % 2 == 0 && b.len() >= 4 {
                b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            }
            if let Ok(h) = decode_request_header(&b) {
                let _ = validate_request(&h, &c);
            }
            let _ = decode_option_header(&b);
            let _ = decode_client_flags(&b);
            let option = (rng.next() % 12) as u32;
            let _ = parse_option(option, &b);
        }
    }
}
