//! Topology files come from users: any text must give a topology or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = tandem_lab::Topology::from_toml(text) {
            for h in &t.hosts {
                let _ = t.attachments(&h.name);
            }
        }
        let _ = tandem_lab::topology::parse_cidr(text);
    }
});
