//! OCF meta-data XML from an agent's stdout: must parse or return an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(md) = tandem_agents::MetaData::parse(&text) {
        let _ = md.check_params(&Default::default());
    }
});
