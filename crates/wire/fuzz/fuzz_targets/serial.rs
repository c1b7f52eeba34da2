#![no_main]
//! Arbitrary bytes on a serial line: the SLIP decoder never panics and never yields an
//! empty or oversized frame.

use libfuzzer_sys::fuzz_target;
use tandem_wire::serial::{FRAME_BYTES_MAX, SlipDecoder};

fuzz_target!(|data: &[u8]| {
    let mut decoder = SlipDecoder::new();
    decoder.push(data, |frame| {
        assert!(!frame.is_empty() && frame.len() <= FRAME_BYTES_MAX);
    });
});
