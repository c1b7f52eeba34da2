//! A netlink datagram as the kernel would hand it to us.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tandem_agents::ipaddr::netlink::parse_datagram(data);
});
