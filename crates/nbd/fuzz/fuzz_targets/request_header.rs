//! Arbitrary bytes into the request-header decoder and the request validator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_nbd::proto::{TransmissionContext, decode_request_header, tflag, validate_request};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    if let Ok(h) = decode_request_header(rest) {
        let ctx = TransmissionContext {
            size_bytes: u64::from(ctl) << 20,
            flags: tflag::HAS_FLAGS | u16::from(ctl) << 1,
            writable: ctl & 1 == 0,
        };
        let _ = validate_request(&h, &ctx);
    }
});
