use super::*;

fn key() -> FrameKey {
    FrameKey::session(b"s3cret", &[1; 32], &[2; 32], true)
}

fn reseal(b: &mut [u8], seq: u64) {
    super::reseal(b, &key(), seq);
}

/// A header field the frame type does not use must be zero (found by libFuzzer: a
/// `BarrierAck` with a sector decoded, and re-encoded to other bytes).
#[test]
fn unused_header_fields_are_refused() {
    for (f, at) in [
        (Frame::BarrierAck { epoch: 3 }, 16..24), // sector
        (Frame::Ping, 24..32),                    // id
        (
            Frame::ResyncAck {
                sector: 8,
                len_bytes: 4096,
            },
            24..32,
        ), // id
    ] {
        let mut b = f.to_bytes(&key(), 0);
        b[at.end - 1] = 1;
        reseal(&mut b, 0);
        assert!(
            matches!(
                Frame::decode(&b, &key(), 0),
                Err(DecodeError::BadField { .. })
            ),
            "{f:?}: {:?}",
            Frame::decode(&b, &key(), 0)
        );
    }
}

/// A frame encoded in two parts (head, then the data from where it lies) is byte
/// for byte the frame encoded whole, and a shared decode hands back the data as a
/// view of the received buffer instead of a copy.
#[test]
fn split_encoding_and_shared_decoding_match_the_whole_forms() {
    for (seq, f) in samples().into_iter().enumerate() {
        let seq = seq as u64;
        let whole = f.to_bytes(&key(), seq);
        let mut head = Vec::new();
        let mut joined = match f.encode_split(&mut head, &key(), seq) {
            Some(bulk) => {
                assert!(matches!(
                    f,
                    Frame::Data { .. } | Frame::ResyncData { .. } | Frame::ReadReply { .. }
                ));
                let mut j = head.clone();
                j.extend_from_slice(&bulk);
                j
            }
            None => head.clone(),
        };
        assert_eq!(joined, whole, "{f:?}");
        let received = Bytes::from(std::mem::take(&mut joined));
        let header = Header::decode(&received).unwrap();
        let payload = received.slice(HEADER_LEN..);
        let shared =
            Frame::decode_payload_shared(&header, &received[..HEADER_LEN], &payload, &key(), seq)
                .unwrap();
        assert_eq!(shared, f);
        if let Frame::Data { data, .. }
        | Frame::ResyncData { data, .. }
        | Frame::ReadReply { data, .. } = &shared
        {
            let range = payload.as_ptr_range();
            assert!(range.contains(&data.as_ptr()), "data not copied");
        }
    }
}

fn samples() -> Vec<Frame> {
    vec![
        Frame::AuthChallenge { nonce: [7; 32] },
        Frame::AuthResponse { mac: [9; 32] },
        Frame::State(StateReport {
            protocol: b'C',
            role: 1,
            disk: 4,
            node_id: 0xdead_beef,
            generations: [1, 2, 3, 4],
            bitmap_bits: 42,
            size_bytes: 1 << 30,
            flags: state_flags::CRASHED_PRIMARY,
        }),
        Frame::Data {
            id: 5,
            sector: 8,
            epoch: 3,
            fua: true,
            data: Bytes::from(vec![0xab; 4096]),
        },
        Frame::AckReceived { id: 5 },
        Frame::AckWritten { id: 6 },
        Frame::Barrier { epoch: 3 },
        Frame::BarrierAck { epoch: 3 },
        Frame::ResyncRequest {
            id: 1,
            sector: 16,
            len_bytes: 65536,
        },
        Frame::ResyncData {
            id: 1,
            sector: 16,
            data: Bytes::from(vec![1u8; 512]),
        },
        Frame::ResyncAck {
            sector: 16,
            len_bytes: 512,
        },
        Frame::Bitmap {
            word_offset: 12,
            words: vec![1, u64::MAX, 0],
            last: true,
        },
        Frame::ChecksumRequest {
            id: 2,
            sector: 0,
            len_bytes: 4096,
            digest: [3; 32],
        },
        Frame::ChecksumReply {
            id: 2,
            sector: 0,
            len_bytes: 4096,
            in_sync: false,
        },
        Frame::ReadRequest {
            id: 4,
            sector: 0,
            len_bytes: 4096,
        },
        Frame::ReadReply {
            id: 4,
            data: Bytes::from(vec![2u8; 4096]),
        },
        Frame::ReadError { id: 4 },
        Frame::ResyncChecksum {
            id: 8,
            sector: 64,
            len_bytes: 8192,
            digest: [5; 32],
        },
        Frame::ResyncInSync {
            id: 8,
            sector: 64,
            len_bytes: 8192,
        },
        Frame::ResyncFinished,
        Frame::ResyncComplete {
            generations: [9, 0, 8, 7],
        },
        Frame::VerifyFinished,
        Frame::Ping,
        Frame::PingAck,
    ]
}

#[test]
fn every_frame_type_round_trips() {
    for f in samples() {
        let bytes = f.to_bytes(&key(), 7);
        assert_eq!(bytes.len(), f.encoded_len());
        let (g, used) = Frame::decode(&bytes, &key(), 7).expect("decode");
        assert_eq!(used, bytes.len());
        assert_eq!(f, g);
    }
}

#[test]
fn a_flipped_bit_anywhere_is_refused() {
    for f in samples() {
        let bytes = f.to_bytes(&key(), 0);
        for i in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    Frame::decode(&b, &key(), 0).is_err(),
                    "{f:?} byte {i} bit {bit}"
                );
            }
        }
    }
}

#[test]
fn each_reason_has_its_error() {
    let k = key();
    let good = Frame::Ping.to_bytes(&k, 0);
    assert!(matches!(
        Frame::decode(&good[..10], &k, 0),
        Err(DecodeError::Truncated { .. })
    ));
    let mut b = good.clone();
    b[0] = 0;
    assert!(matches!(
        Frame::decode(&b, &k, 0),
        Err(DecodeError::BadMagic(_))
    ));
    let mut b = good.clone();
    b[5] = 9;
    assert_eq!(
        Frame::decode(&b, &k, 0),
        Err(DecodeError::UnsupportedVersion(9))
    );
    let mut b = good.clone();
    b[7] = 200;
    assert_eq!(Frame::decode(&b, &k, 0), Err(DecodeError::UnknownType(200)));
    let mut b = good.clone();
    b[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        Frame::decode(&b, &k, 0),
        Err(DecodeError::TooLarge(u32::MAX))
    );
    let mut b = good.clone();
    b[HEADER_LEN - 1] ^= 1;
    assert_eq!(Frame::decode(&b, &k, 0), Err(DecodeError::BadMac));
    // A ping longer than a ping can be: refused from the header alone.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&1u32.to_be_bytes());
    assert!(matches!(
        Header::decode(&b),
        Err(DecodeError::TooLargeForType { .. })
    ));
    // A bitmap with an odd length: tag right, length wrong for the type.
    let mut b = Frame::Bitmap {
        word_offset: 0,
        words: vec![1],
        last: true,
    }
    .to_bytes(&k, 0);
    b[8..12].copy_from_slice(&9u32.to_be_bytes());
    b.push(0);
    reseal(&mut b, 0);
    assert!(matches!(
        Frame::decode(&b, &k, 0),
        Err(DecodeError::BadLength { .. })
    ));
}

#[test]
fn random_bytes_never_panic() {
    // A small xorshift generator: deterministic, no dependency.
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let templates: Vec<Vec<u8>> = samples().iter().map(|f| f.to_bytes(&key(), 0)).collect();
    for round in 0..20_000 {
        let mut buf = if round % 2 == 0 {
            let len = (next() % 200) as usize;
            (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
        } else {
            // Start from a valid frame and damage it, so deeper code paths run.
            let mut t = templates[(next() as usize) % templates.len()].clone();
            let n = 1 + next() % 4;
            for _ in 0..n {
                let i = (next() as usize) % t.len();
                t[i] = next() as u8;
            }
            t
        };
        if round % 3 == 0 {
            // Fix the tag so the payload decoders see the damage.
            reseal(&mut buf, 0);
        }
        let _ = Frame::decode(&buf, &key(), 0);
    }
}

/// The MAC binds a frame to its key and its place in the stream: a frame replayed,
/// reordered (or seen after a dropped one), sent the other way, on another
/// connection, or forged with only a checksum never decodes.
#[test]
fn frames_verify_only_under_their_key_and_sequence_number() {
    let secret = b"s3cret";
    let (ni, na) = ([1u8; 32], [2u8; 32]);
    let i2a = FrameKey::session(secret, &ni, &na, true);
    let a2i = FrameKey::session(secret, &ni, &na, false);
    let other_conn = FrameKey::session(secret, &[3u8; 32], &na, true);
    let wrong_secret = FrameKey::session(b"guess", &ni, &na, true);
    assert_ne!(i2a, a2i);
    let f = Frame::Data {
        id: 1,
        sector: 8,
        epoch: 1,
        fua: false,
        data: Bytes::from(vec![7u8; 4096]),
    };
    let b = f.to_bytes(&i2a, 5);
    assert_eq!(Frame::decode(&b, &i2a, 5).unwrap().0, f);
    for (k, seq, what) in [
        (&i2a, 6, "replayed as the next frame"),
        (&i2a, 4, "an earlier frame's place"),
        (&a2i, 5, "the other direction"),
        (&other_conn, 5, "another connection"),
        (&wrong_secret, 5, "a key from a wrong secret"),
    ] {
        assert_eq!(
            Frame::decode(&b, k, seq),
            Err(DecodeError::BadMac),
            "{what}"
        );
    }
    // What an attacker on the path could make before: a frame whose only protection
    // is a checksum over the bytes (here: the public pre-authentication key).
    let forged = f.to_bytes(&FrameKey::preauth(), 5);
    assert_eq!(Frame::decode(&forged, &i2a, 5), Err(DecodeError::BadMac));
    // The key never shows in a log.
    assert_eq!(format!("{i2a:?}"), "FrameKey(..)");
}

/// An authentication frame may only be as long as it is: a header that asks for a
/// megabyte is refused before any of it is read.
#[test]
fn every_type_has_its_largest_payload_checked_in_the_header() {
    for f in samples() {
        let b = f.to_bytes(&key(), 0);
        let h = Header::decode(&b).unwrap();
        assert!(h.length as usize <= h.kind.max_payload_len(), "{f:?}");
    }
    let mut b = Frame::AuthChallenge { nonce: [0; 32] }.to_bytes(&FrameKey::preauth(), 0);
    b[8..12].copy_from_slice(&(1u32 << 20).to_be_bytes());
    assert_eq!(
        Header::decode(&b[..HEADER_LEN]),
        Err(DecodeError::TooLargeForType {
            kind: FrameType::AuthChallenge,
            len: 1 << 20,
            max: 32
        })
    );
}

#[test]
fn auth_accepts_the_secret_and_refuses_others() {
    let nonce = [42u8; 32];
    let mac = auth_response(b"s3cret", &nonce, true);
    assert!(auth_verify(b"s3cret", &nonce, true, &mac));
    assert!(!auth_verify(b"wrong", &nonce, true, &mac));
    // A reflected answer (other direction) does not verify.
    assert!(!auth_verify(b"s3cret", &nonce, false, &mac));
    assert!(!auth_verify(b"s3cret", &[0u8; 32], true, &mac));
}
