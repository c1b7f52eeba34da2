//! Arbitrary strings as durations and sizes: never a panic, and what parses formats
//! back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_config::units::*;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(d) = parse_duration(&s) {
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
    if let Ok(n) = parse_size(&s) {
        assert_eq!(parse_size(&format_size(n)), Ok(n));
    }
});
