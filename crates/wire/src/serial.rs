//! Framing of membership packets on a serial line (a tty: a byte stream with no
//! boundaries, and line noise when a cable is plugged or a port opened).
//!
//! ```text
//!   0x00 | COBS( packet ‖ CRC-32(packet) ) | 0x00
//! ```
//!
//! Consistent Overhead Byte Stuffing removes every zero byte from the frame body, so
//! `0x00` only ever appears as a delimiter: after any corruption the decoder is back in
//! step at the next zero, losing at most the frame it was in. The leading zero flushes
//! whatever noise preceded the frame. The CRC-32 (IEEE) catches line errors cheaply
//! before the packet's MAC is even computed; authenticity is still the MAC's job.
//! The overhead is at most 2 + 4 + ⌈n/254⌉ bytes per packet.

use crate::packet::MAX_PACKET_LEN;

/// Largest encoded frame body (COBS of a maximal packet plus its CRC), delimiters
/// excluded. The decoder discards anything longer.
pub const MAX_FRAME_LEN: usize = MAX_PACKET_LEN + 4 + (MAX_PACKET_LEN + 4) / 254 + 1;

/// Why a frame was discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More bytes than [`MAX_FRAME_LEN`] without a delimiter (noise, or a lost zero).
    #[error("frame longer than {MAX_FRAME_LEN} bytes")]
    TooLong,
    /// The bytes are not valid COBS.
    #[error("invalid byte stuffing")]
    BadStuffing,
    /// Shorter than a CRC.
    #[error("frame too short")]
    TooShort,
    /// The CRC does not match: a line error.
    #[error("CRC mismatch")]
    BadCrc,
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE 802.3, as in Ethernet, zlib and PNG).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// Frames one packet for the serial line.
pub fn encode_frame(packet: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(packet.len() + 4);
    body.extend_from_slice(packet);
    body.extend_from_slice(&crc32(packet).to_be_bytes());
    let mut out = Vec::with_capacity(body.len() + body.len() / 254 + 3);
    out.push(0);
    // COBS: each block is a code byte (distance to the next zero, ≤ 255) and up to 254
    // non-zero bytes; the zero itself is implied.
    let mut code_at = out.len();
    out.push(0);
    let mut code = 1u8;
    for &b in &body {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out.push(0);
    out
}

fn cobs_decode(frame: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(frame.len());
    let mut i = 0;
    while i < frame.len() {
        let code = frame[i] as usize;
        i += 1;
        // A code byte says how many data bytes follow (code − 1); they must be there.
        let data = frame
            .get(i..i + code.saturating_sub(1))
            .filter(|_| code != 0)
            .ok_or(FrameError::BadStuffing)?;
        out.extend_from_slice(data);
        i += data.len();
        // Every block but a full one (0xFF) ends in an implied zero, except the last.
        if code < 0xFF && i < frame.len() {
            out.push(0);
        }
    }
    Ok(out)
}

/// Reassembles packets from serial bytes. Memory is bounded by [`MAX_FRAME_LEN`].
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Discarding until the next delimiter (after an over-long frame).
    skipping: bool,
}

impl FrameDecoder {
    /// A decoder waiting for the first delimiter-separated frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the line; returns every complete frame, as a packet or as
    /// the reason it was discarded. Empty frames (two delimiters in a row) are skipped.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == 0 {
                if self.skipping {
                    self.skipping = false;
                } else if !self.buf.is_empty() {
                    out.push(Self::finish(&self.buf));
                }
                self.buf.clear();
                continue;
            }
            if self.skipping {
                continue;
            }
            if self.buf.len() == MAX_FRAME_LEN {
                self.buf.clear();
                self.skipping = true;
                out.push(Err(FrameError::TooLong));
                continue;
            }
            self.buf.push(b);
        }
        out
    }

    fn finish(frame: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut body = cobs_decode(frame)?;
        if body.len() < 4 {
            return Err(FrameError::TooShort);
        }
        let crc_at = body.len() - 4;
        let crc = u32::from_be_bytes([
            body[crc_at],
            body[crc_at + 1],
            body[crc_at + 2],
            body[crc_at + 3],
        ]);
        body.truncate(crc_at);
        if crc32(&body) != crc {
            return Err(FrameError::BadCrc);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_all_shapes() {
        let mut s = 99u64;
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0, 0],
            vec![1; 253],
            vec![1; 254],
            vec![1; 255],
            vec![0xFF; 600],
        ];
        for len in [1, 100, 253, 254, 255, 508, 1000, MAX_PACKET_LEN] {
            cases.push((0..len).map(|_| xorshift(&mut s) as u8).collect());
        }
        let mut d = FrameDecoder::new();
        for c in &cases {
            let f = encode_frame(c);
            assert!(f.len() - 2 <= MAX_FRAME_LEN);
            assert!(!f[1..f.len() - 1].contains(&0));
            assert_eq!(d.push(&f), vec![Ok(c.clone())], "len {}", c.len());
        }
        // All in one stream, split at arbitrary points.
        let stream: Vec<u8> = cases.iter().flat_map(|c| encode_frame(c)).collect();
        let mut d = FrameDecoder::new();
        let mut got = vec![];
        let mut at = 0;
        while at < stream.len() {
            let n = 1 + (xorshift(&mut s) % 40) as usize;
            let end = (at + n).min(stream.len());
            got.extend(d.push(&stream[at..end]));
            at = end;
        }
        let want: Vec<_> = cases.into_iter().map(Ok).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn noise_and_corruption_lose_only_their_frame() {
        let a = b"first packet".to_vec();
        let b = b"second packet".to_vec();
        let mut stream = b"\x13\x37 line noise \xff".to_vec();
        stream.extend(encode_frame(&a));
        let mut bad = encode_frame(&b);
        bad[5] ^= 0x40;
        stream.extend(bad);
        stream.extend(encode_frame(&b));
        let got = FrameDecoder::new().push(&stream);
        // The noise and the corrupted frame are reported; both good frames get through.
        let ok: Vec<_> = got.iter().filter_map(|r| r.clone().ok()).collect();
        assert_eq!(ok, vec![a, b]);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            got.iter()
                .any(|r| *r == Err(FrameError::BadCrc) || *r == Err(FrameError::BadStuffing))
        );
    }

    #[test]
    fn overlong_frame_is_bounded_and_recovers() {
        let mut d = FrameDecoder::new();
        let noise = vec![7u8; MAX_FRAME_LEN * 3];
        let got = d.push(&noise);
        assert_eq!(got, vec![Err(FrameError::TooLong)]);
        let got = d.push(&encode_frame(b"after"));
        assert_eq!(got, vec![Ok(b"after".to_vec())]);
    }

    #[test]
    fn random_streams_never_panic_and_rarely_pass_crc() {
        let mut s = 7u64;
        let mut d = FrameDecoder::new();
        let mut passed = 0;
        for _ in 0..20_000 {
            let len = (xorshift(&mut s) % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let x = xorshift(&mut s) as u8;
                    if x < 8 { 0 } else { x }
                })
                .collect();
            passed += d.push(&bytes).iter().filter(|r| r.is_ok()).count();
        }
        // A random frame passes a 32-bit CRC with probability 2^-32 (plus tiny frames).
        assert!(passed < 5, "{passed} random frames passed the CRC");
    }
}
