//! systemd's service protocol, by hand (a datagram on `$NOTIFY_SOCKET`; a crate for
//! twenty lines is not worth its build): `READY=1` once the heartbeat links run and the
//! control socket listens (`Type=notify`), and `WATCHDOG=1` every half of
//! `$WATCHDOG_USEC` for as long as the heartbeat thread answers — a wedged heartbeat
//! thread stops the pings and systemd kills the daemon, so it never runs on unheard.
//! Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tandem_membership::driver::Driver;

/// Sends one notification (`READY=1`, `WATCHDOG=1`, `STATUS=…`) to `socket` (a path, or
/// `@name` for an abstract socket).
fn send_to(socket: &str, state: &str) -> std::io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Tells systemd `state`, if it is listening.
pub fn notify(state: &str) {
    if let Ok(socket) = std::env::var("NOTIFY_SOCKET") {
        if let Err(err) = send_to(&socket, state) {
            tracing::warn!("sd_notify {state:?} to {socket}: {err}");
        }
    }
}

/// Half the watchdog period systemd asked for (`WatchdogSec=`), if any, and if it is
/// meant for this process (`$WATCHDOG_PID`, when set, names it).
fn ping_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Starts the watchdog pings, if systemd asked for them: a ping only while the heartbeat
/// thread answers a status request.
pub fn spawn_watchdog(driver: Arc<Driver>) -> anyhow::Result<()> {
    let Some(interval) = ping_interval() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                match driver.status() {
                    Ok(_) => notify("WATCHDOG=1"),
                    Err(err) => tracing::error!(
                        "the heartbeat thread does not answer ({err}): no watchdog ping"
                    ),
                }
                std::thread::sleep(interval);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_reaches_the_socket_systemd_listens_on() {
        let dir = std::env::temp_dir().join(format!("tandem-sd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        // An abstract socket, as systemd may hand out.
        let name = format!("tandem-sd-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "WATCHDOG=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
