//! Feeds arbitrary bytes to the serial frame decoder: it must never panic, and any
//! packet it yields must frame back into bytes it decodes to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_wire::serial::{FrameDecoder, encode_frame};

fuzz_target!(|data: &[u8]| {
    let mut d = FrameDecoder::new();
    for frame in d.push(data).into_iter().flatten() {
        let again = FrameDecoder::new().push(&encode_frame(&frame));
        assert_eq!(again, vec![Ok(frame)]);
    }
});
