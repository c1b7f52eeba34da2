//! Feeds arbitrary bytes to the packet decoder: it must never panic, and nothing but a
//! packet encoded with the key may authenticate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_wire::{PacketKey, decode_header, encode, open};

fuzz_target!(|data: &[u8]| {
    let _ = decode_header(data);
    let key = PacketKey::from_bytes([0x5a; 32]);
    if let Ok((header, body)) = open(data, &key) {
        // Whatever authenticates must re-encode to the very same bytes.
        let again = encode(&header, &body, &key).expect("authentic packet re-encodes");
        assert_eq!(again, data);
    }
});
