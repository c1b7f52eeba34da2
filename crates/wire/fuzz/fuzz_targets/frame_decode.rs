//! Feeds arbitrary bytes to the replication frame decoder: it must return an error or a
//! frame that re-encodes to the same bytes (whole, and split into head and data), the
//! shared (zero-copy) decode must agree with the copying one, and nothing may panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tandem_wire::frame::{Frame, HEADER_LEN, Header};

fuzz_target!(|data: &[u8]| {
    let copied = Frame::decode(data);
    if let Ok((frame, used)) = &copied {
        assert_eq!(frame.to_bytes(), &data[..*used]);
        let mut head = Vec::new();
        if let Some(bulk) = frame.encode_split(&mut head) {
            head.extend_from_slice(&bulk);
        }
        assert_eq!(head, &data[..*used]);
    }
    if let Ok(header) = Header::decode(data) {
        let total = HEADER_LEN + header.length as usize;
        if data.len() >= total {
            let payload = Bytes::copy_from_slice(&data[HEADER_LEN..total]);
            let shared = Frame::decode_payload_shared(&header, &data[..HEADER_LEN], &payload);
            assert_eq!(shared.ok(), copied.ok().map(|(f, _)| f));
        }
    }
});
