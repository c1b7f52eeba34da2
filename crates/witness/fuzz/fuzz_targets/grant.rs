//! Feeds arbitrary bytes to the decoder of the witness's stored grant: never a panic,
//! and a grant that decodes re-encodes to the same grant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_witness::Grant;

fuzz_target!(|data: &[u8]| {
    if let Ok(grant) = Grant::decode(data) {
        assert_eq!(Grant::decode(&grant.encode()), Ok(grant));
    }
});
