//! Feeds arbitrary bytes to the replication frame decoder: it must return an error or a
//! frame that re-encodes to the same bytes (whole, and split into head and data), the
//! shared (zero-copy) decode must agree with the copying one, and nothing may panic.
//!
//! The first input byte picks the sequence number (low 7 bits) and whether the frame's
//! tag is recomputed first (high bit): a fuzzer can no more guess a tag than an attacker,
//! so without that it would never get past the MAC to the payload decoders.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tandem_wire::frame::{Frame, FrameKey, HEADER_LEN, Header, reseal};

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let seq = u64::from(first & 0x7f);
    let key = FrameKey::preauth();
    let mut owned = rest.to_vec();
    if first & 0x80 != 0 {
        reseal(&mut owned, &key, seq);
    }
    let data = &owned[..];
    let copied = Frame::decode(data, &key, seq);
    if let Ok((frame, used)) = &copied {
        assert_eq!(frame.to_bytes(&key, seq), &data[..*used]);
        let mut head = Vec::new();
        if let Some(bulk) = frame.encode_split(&mut head, &key, seq) {
            head.extend_from_slice(&bulk);
        }
        assert_eq!(head, &data[..*used]);
        // The same bytes are some other frame's forgery everywhere else in the stream.
        assert!(Frame::decode(data, &key, seq.wrapping_add(1)).is_err());
    }
    if let Ok(header) = Header::decode(data) {
        assert!(header.length as usize <= header.kind.max_payload_len());
        let total = HEADER_LEN + header.length as usize;
        if data.len() >= total {
            let payload = Bytes::copy_from_slice(&data[HEADER_LEN..total]);
            let shared =
                Frame::decode_payload_shared(&header, &data[..HEADER_LEN], &payload, &key, seq);
            assert_eq!(shared.ok(), copied.ok().map(|(f, _)| f));
        }
    }
});
