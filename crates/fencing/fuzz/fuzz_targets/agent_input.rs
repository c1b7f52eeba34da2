#![no_main]
//! Feeds arbitrary bytes to the fence-agents stdin parser the lab switch uses.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tandem_fencing::AgentInput::parse(data);
});
