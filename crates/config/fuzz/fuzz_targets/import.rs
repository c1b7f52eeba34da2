//! Arbitrary bytes split into ha.cf, haresources and drbd.conf: the importer returns
//! an error or a config that the native loader accepts, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_config::import::{HaFiles, import_texts};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{0}');
    let ha_cf = parts.next().unwrap_or("");
    let haresources = parts.next().unwrap_or("");
    let drbd = parts.next();
    let files = HaFiles {
        ha_cf: "ha.cf".into(),
        haresources: "haresources".into(),
        drbd_conf: drbd.map(|_| "drbd.conf".into()),
        ..HaFiles::default()
    };
    let _ = import_texts(&files, ha_cf, haresources, drbd);
});
