//! `/proc/self/mountinfo` text and `-o` option strings.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = tandem_agents::filesystem::parse_mountinfo(&text);
    let _ = tandem_agents::filesystem::parse_mount_options(&text);
});
