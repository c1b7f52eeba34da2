//! The power switch reads request lines from any process of any lab host.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let _ = tandem_lab::SwitchRequest::parse(&line);
});
