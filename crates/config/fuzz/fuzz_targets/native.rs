//! Arbitrary bytes as a native cluster.toml: an error or a config, never a panic; and
//! whatever loads must survive a round trip through the emitter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_config::{Config, to_toml};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok((config, _)) = Config::parse_str("fuzz.toml", &text) {
        let again = to_toml(&config);
        let (back, _) = Config::parse_str("again.toml", &again).expect("emitted TOML loads");
        assert_eq!(back, config);
    }
});
