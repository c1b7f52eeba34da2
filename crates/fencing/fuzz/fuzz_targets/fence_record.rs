#![no_main]
//! Feeds arbitrary bytes to the decoder of fencing results a peer sends.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tandem_fencing::FenceRecord::from_json(data);
});
