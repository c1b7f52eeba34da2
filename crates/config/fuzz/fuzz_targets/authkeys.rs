//! Arbitrary bytes as a key file (native or Heartbeat authkeys): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tandem_config::key::parse("authkeys", &String::from_utf8_lossy(data));
});
