//! A netlink datagram as the kernel would hand it to us: parsing returns messages or an
//! error, and nothing escapes as a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

static DEFAULT_PANIC_HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on any panic, even one caught inside the code under test;
    // `parse_datagram` deliberately catches panics of netlink-packet-route (it indexes
    // some short attributes out of bounds). With the default hook back, a caught panic
    // only prints, and one that escapes still aborts (libfuzzer-sys checks each run).
    DEFAULT_PANIC_HOOK.call_once(|| drop(std::panic::take_hook()));
    let _ = tandem_agents::ipaddr::netlink::parse_datagram(data);
});
