//! Feeds arbitrary bytes to the case-file loader and, when a case loads, plans it and
//! checks the plan: neither may panic, and every plan must pass `check`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(case) = tandem_policy::case::load("fuzz.toml", text) {
        let t = tandem_policy::plan(&case.config, &case.view);
        assert!(tandem_policy::check(&case.config, &case.view, &t).is_ok());
        let _ = tandem_policy::render::summary(&case.config, &case.view, &t);
    }
});
