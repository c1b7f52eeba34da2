//! Feeds arbitrary bytes to the witness message decoder, and what decodes to an arbiter
//! as a node's message: never a panic, and whatever decodes re-encodes to a message that
//! decodes the same.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tandem_witness::{Arbiter, WitnessMessage};

fuzz_target!(|data: &[u8]| {
    let Some(message) = WitnessMessage::decode(data) else {
        return;
    };
    assert_eq!(
        WitnessMessage::decode(&message.encode()).as_ref(),
        Some(&message)
    );
    let now = Instant::now();
    let mut a = Arbiter::new(["ox1".into(), "ox2".into()], Duration::from_secs(2), None);
    a.node_up("ox1", 1, now);
    a.node_up("ox2", 2, now);
    a.node_dead("ox2", now);
    a.message("ox1", message, now);
    a.tick(now + Duration::from_secs(3));
    while a.poll_command().is_some() {}
});
