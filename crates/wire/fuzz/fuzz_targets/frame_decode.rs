//! Feeds arbitrary bytes to the replication frame decoder: it must return an error or a
//! frame that re-encodes to the same bytes, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_wire::frame::Frame;

fuzz_target!(|data: &[u8]| {
    if let Ok((frame, used)) = Frame::decode(data) {
        assert_eq!(frame.to_bytes(), &data[..used]);
    }
});
