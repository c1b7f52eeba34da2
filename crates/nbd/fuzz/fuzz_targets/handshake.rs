//! Arbitrary bytes into the client-flag and option decoders and the option answerer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_nbd::handshake::{ExportCatalog, ExportSummary, answer_option};
use tandem_nbd::proto::{decode_client_flags, decode_option_header, tflag};

struct Catalog;

impl ExportCatalog for Catalog {
    fn resolve(&self, requested: &str) -> Option<ExportSummary> {
        (requested.is_empty() || requested == "disk").then(|| ExportSummary {
            name: "disk".into(),
            description: "fuzz".into(),
            size_bytes: 1 << 30,
            flags: tflag::HAS_FLAGS,
        })
    }
    fn list(&self) -> Vec<(String, String)> {
        vec![("disk".into(), "fuzz".into())]
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(client) = decode_client_flags(data) else {
        return;
    };
    let mut rest = &data[4..];
    // A sequence of options, each header followed by its (bounded) data.
    while let Ok(header) = decode_option_header(rest) {
        rest = &rest[16..];
        let n = (header.length as usize).min(rest.len());
        let answer = answer_option(header, &rest[..n], client, false, &Catalog);
        rest = &rest[n..];
        if !matches!(answer.step, tandem_nbd::handshake::Step::Continue) {
            break;
        }
    }
});
