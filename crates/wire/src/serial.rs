//! Framing for serial heartbeat links: SLIP (RFC 1055).
//!
//! A serial line is a byte stream, so packets need a frame boundary. SLIP ends every
//! frame with `END` (0xC0) and escapes `END` and `ESC` (0xDB) inside it. It
//! resynchronises after any line noise at the next `END`, and it costs at most two bytes
//! per escaped byte. Frame integrity is not SLIP's job: every packet carries a MAC, and
//! the membership core drops (and counts) anything that does not verify.

const END: u8 = 0xC0;
const ESC: u8 = 0xDB;
const ESC_END: u8 = 0xDC;
const ESC_ESC: u8 = 0xDD;

/// Longest frame the decoder accepts; longer garbage is discarded up to the next `END`.
pub const FRAME_BYTES_MAX: usize = crate::MAX_PACKET_LEN;

/// Encodes one packet as a SLIP frame. A leading `END` flushes any noise the line picked
/// up since the last frame.
pub fn slip_encode(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packet.len() + packet.len() / 32 + 2);
    out.push(END);
    for &b in packet {
        match b {
            END => out.extend_from_slice(&[ESC, ESC_END]),
            ESC => out.extend_from_slice(&[ESC, ESC_ESC]),
            _ => out.push(b),
        }
    }
    out.push(END);
    out
}

/// Incremental SLIP decoder: feed it bytes as they arrive, get whole frames back.
#[derive(Debug, Default)]
pub struct SlipDecoder {
    frame: Vec<u8>,
    escaped: bool,
    /// The current frame is garbage (too long or a bad escape): skip to the next `END`.
    discarding: bool,
    /// Frames thrown away for being too long or badly escaped.
    pub frames_discarded: u64,
}

impl SlipDecoder {
    /// A decoder waiting for the first frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes`, calling `on_frame` for every complete, non-empty frame.
    pub fn push(&mut self, bytes: &[u8], mut on_frame: impl FnMut(&[u8])) {
        for &b in bytes {
            if b == END {
                if !self.discarding && !self.escaped && !self.frame.is_empty() {
                    on_frame(&self.frame);
                } else if self.discarding || self.escaped {
                    self.frames_discarded += 1;
                }
                self.frame.clear();
                self.escaped = false;
                self.discarding = false;
                continue;
            }
            if self.discarding {
                continue;
            }
            let byte = if self.escaped {
                self.escaped = false;
                match b {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    _ => {
                        self.discarding = true;
                        continue;
                    }
                }
            } else if b == ESC {
                self.escaped = true;
                continue;
            } else {
                b
            };
            if self.frame.len() == FRAME_BYTES_MAX {
                self.discarding = true;
                continue;
            }
            self.frame.push(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, u64) {
        let mut d = SlipDecoder::new();
        let mut frames = Vec::new();
        for part in stream.chunks(chunk.max(1)) {
            d.push(part, |f| frames.push(f.to_vec()));
        }
        (frames, d.frames_discarded)
    }

    #[test]
    fn round_trips_frames_with_special_bytes_split_anywhere() {
        let packets = [
            vec![1, 2, 3],
            vec![END, ESC, END, 0, ESC_END, ESC_ESC],
            (0..=255).collect::<Vec<u8>>(),
        ];
        let stream: Vec<u8> = packets.iter().flat_map(|p| slip_encode(p)).collect();
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let (frames, discarded) = decode_all(&stream, chunk);
            assert_eq!(frames, packets, "chunk size {chunk}");
            assert_eq!(discarded, 0);
        }
    }

    #[test]
    fn noise_before_a_frame_is_resynchronised() {
        let mut stream = vec![0x55, ESC, 0x01, 0x99];
        stream.extend(slip_encode(b"heartbeat"));
        let (frames, discarded) = decode_all(&stream, 5);
        assert_eq!(frames, vec![b"heartbeat".to_vec()]);
        assert_eq!(discarded, 1, "the badly escaped noise is counted");
    }

    #[test]
    fn oversized_frames_are_dropped_and_the_next_one_survives() {
        let mut stream = slip_encode(&vec![7u8; FRAME_BYTES_MAX + 10]);
        stream.extend(slip_encode(b"ok"));
        let (frames, discarded) = decode_all(&stream, 100);
        assert_eq!(frames, vec![b"ok".to_vec()]);
        assert_eq!(discarded, 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_frames_stay_bounded() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let len = (x % 3000) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut d = SlipDecoder::new();
            d.push(&bytes, |f| {
                assert!(!f.is_empty() && f.len() <= FRAME_BYTES_MAX)
            });
        }
    }
}
