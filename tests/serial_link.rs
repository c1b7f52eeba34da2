//! A serial heartbeat link on its own: two agents whose only link is a tty, joined by a
//! null-modem cable made of two pseudo-terminals and a relay between their masters.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TANDEM, wait_for, write_private};
use serde_json::Value;
use tandem_testkit::root_or_skip;

/// A pseudo-terminal: the master end (held by the relay) and the slave's path.
struct Pty {
    master: OwnedFd,
    slave_path: PathBuf,
    _slave: OwnedFd,
}

fn openpty() -> Pty {
    let (mut master, mut slave) = (0, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the out-pointers are valid; termios and winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            name.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty wrote a NUL-terminated name.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: both descriptors were just returned to us and are owned here. The slave is
    // kept open so the line does not hang up between the daemon's opens.
    unsafe {
        let master = OwnedFd::from_raw_fd(master);
        let slave = OwnedFd::from_raw_fd(slave);
        // Raw mode on the master side too: the relay moves bytes, not lines.
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(slave.as_raw_fd(), &mut t);
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
        Pty {
            master,
            slave_path: PathBuf::from(path),
            _slave: slave,
        }
    }
}

/// Copies bytes between two pty masters until `running` turns false: the cable.
fn relay(a: OwnedFd, b: OwnedFd, running: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut buf = [0u8; 4096];
        while running.load(Ordering::Relaxed) {
            // SAFETY: fds is a valid array for the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) } <= 0 {
                continue;
            }
            for (from, to) in [(0, 1), (1, 0)] {
                if fds[from].revents & libc::POLLIN == 0 {
                    continue;
                }
                // SAFETY: buf is valid for writes of its length; the fds are open.
                let n = unsafe { libc::read(fds[from].fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    // SAFETY: writes the n bytes just read.
                    unsafe { libc::write(fds[to].fd, buf.as_ptr().cast(), n as usize) };
                }
            }
        }
    })
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(socket: &PathBuf) -> Option<Value> {
    let out = Command::new(TANDEM)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn peer_state(socket: &PathBuf, peer: &str) -> Option<String> {
    let s = status(socket)?;
    s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == peer)
        .and_then(|n| n["state"].as_str().map(str::to_owned))
}

#[test]
fn a_serial_link_alone_carries_heartbeats_and_its_loss_is_detected() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tandem-serial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_private(&dir.join("key"), "serial-test-secret-0123456789\n");

    let (pty_a, pty_b) = (openpty(), openpty());
    let mut sockets = Vec::new();
    let mut agents = Vec::new();
    for (node, pty) in [("a", &pty_a), ("b", &pty_b)] {
        let config = dir.join(format!("{node}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[cluster]
name = "serial"
keepalive = "200ms"
deadtime = "1s"
warntime = "500ms"
initdead = "3s"
key_file = "{key}"
fencing = "none"

[[node]]
name = "a"
[[node]]
name = "b"

[[link]]
name = "ttyS0"
type = "serial"
device = "{tty}"
baud = 115200
"#,
                key = dir.join("key").display(),
                tty = pty.slave_path.display()
            ),
        )
        .unwrap();
        let socket = dir.join(format!("{node}.sock"));
        let log = std::fs::File::create(dir.join(format!("{node}.log"))).unwrap();
        let child = Command::new(TANDEM)
            .arg("-c")
            .arg(&config)
            .args(["daemon", "--node", node, "--state-dir"])
            .arg(dir.join(format!("{node}.state")))
            .arg("--control-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        agents.push(Agent(child));
        sockets.push(socket);
    }

    // The two configurations differ only in the tty path; the digest check would flag
    // that, so the test looks at liveness only.
    let running = Arc::new(AtomicBool::new(true));
    let cable = relay(
        pty_a.master.try_clone().unwrap(),
        pty_b.master.try_clone().unwrap(),
        Arc::clone(&running),
    );
    wait_for(Duration::from_secs(10), "a hears b over the tty", || {
        (peer_state(&sockets[0], "b")? == "up").then_some(())
    });
    wait_for(Duration::from_secs(10), "b hears a over the tty", || {
        (peer_state(&sockets[1], "a")? == "up").then_some(())
    });
    let packets = status(&sockets[0]).unwrap()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "b")
        .unwrap()["links"][0]["packets"]
        .as_u64()
        .unwrap();
    assert!(packets > 0, "heartbeats counted on the serial link");

    // Pull the cable: both sides declare the other dead.
    running.store(false, Ordering::Relaxed);
    cable.join().unwrap();
    wait_for(Duration::from_secs(10), "a declares b dead", || {
        (peer_state(&sockets[0], "b")? == "dead").then_some(())
    });
    wait_for(Duration::from_secs(10), "b declares a dead", || {
        (peer_state(&sockets[1], "a")? == "dead").then_some(())
    });
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
}
