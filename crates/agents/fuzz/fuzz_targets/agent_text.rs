//! Agent output read as text: Heartbeat status, `systemctl is-active`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = tandem_agents::lsb::heartbeat_status_running(&text);
    let _ = tandem_agents::systemd::is_active_exit(&text);
});
