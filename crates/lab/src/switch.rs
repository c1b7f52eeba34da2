//! The lab's power switch as a network device: a Unix socket in the lab's state dir.
//!
//! A fence agent runs where the cluster agent runs — *inside* a lab host — and from there
//! it cannot reach the machine's cgroups and namespaces, nor create processes outside
//! its host's PID namespace (a host it powers on would die with the fencer). So, like a
//! real cluster's power switch, the lab's is a separate device: a server in the machine's
//! namespaces listening on `/run/tandem-lab/NAME/power.sock` (a path-bound Unix socket
//! is reachable from every network namespace; hosts see the path through their copy of
//! the machine's mount tree). One request line, one reply:
//!
//! ```text
//! → off ox1        ← ok
//! → status ox1     ← off
//! → list           ← ox1 on / ox2 off / … / end
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Lab, LabError};

/// Longest request line accepted (host names are short).
const REQUEST_LEN_MAX: usize = 256;
/// How long a client waits for a reply: power-off waits up to 10 s for reaping.
const REPLY_TIMEOUT_MS: u64 = 60_000;

/// A request to the power switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchRequest {
    /// Power the host on.
    On(String),
    /// Power the host off (kill and reap everything, links down).
    Off(String),
    /// Off, then on.
    Reboot(String),
    /// Report `on` or `off`.
    Status(String),
    /// Every host with its power state.
    List,
}

impl SwitchRequest {
    /// Parses one request line; errors say what was expected.
    pub fn parse(line: &str) -> Result<SwitchRequest, String> {
        let mut words = line.split_whitespace();
        let verb = words.next().ok_or("empty request")?;
        let host = words.next().map(str::to_string);
        if words.next().is_some() {
            return Err("too many words (expected: VERB [HOST])".into());
        }
        let need = |h: Option<String>| h.ok_or_else(|| format!("{verb} needs a host"));
        Ok(match verb {
            "on" => SwitchRequest::On(need(host)?),
            "off" => SwitchRequest::Off(need(host)?),
            "reboot" => SwitchRequest::Reboot(need(host)?),
            "status" => SwitchRequest::Status(need(host)?),
            "list" if host.is_none() => SwitchRequest::List,
            "list" => return Err("list takes no host".into()),
            other => {
                return Err(format!(
                    "unknown verb {other:?} (on, off, reboot, status, list)"
                ));
            }
        })
    }

    fn line(&self) -> String {
        match self {
            SwitchRequest::On(h) => format!("on {h}"),
            SwitchRequest::Off(h) => format!("off {h}"),
            SwitchRequest::Reboot(h) => format!("reboot {h}"),
            SwitchRequest::Status(h) => format!("status {h}"),
            SwitchRequest::List => "list".into(),
        }
    }
}

/// The socket of a lab's power switch.
pub fn switch_socket(lab: &str) -> PathBuf {
    crate::lab::state_dir(lab).join("power.sock")
}

/// A running power-switch server (a thread of this process); stops when dropped.
pub struct PowerSwitch {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// The listening socket, kept to wake the accept loop on drop.
    listener: Arc<UnixListener>,
    thread: Option<JoinHandle<()>>,
}

impl PowerSwitch {
    /// The socket path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for PowerSwitch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept. shutdown(2) on the listening socket does it even when
        // its path is gone already (the lab's teardown removes the state directory).
        // SAFETY: the descriptor stays open (we hold an Arc of the listener) for the call.
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&*self.listener),
                libc::SHUT_RDWR,
            )
        };
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind(path: &PathBuf) -> Result<UnixListener, LabError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(LabError::Command {
                cmd: format!("bind {}", path.display()),
                detail: "another power switch already serves this lab".into(),
            });
        }
        // A stale socket of a switch that died.
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(crate::sys::io_err(format!("bind {}", path.display())))
}

impl Lab {
    /// Starts the lab's power switch in a thread of this process.
    pub fn power_switch(&self) -> Result<PowerSwitch, LabError> {
        let path = switch_socket(self.name());
        let listener = Arc::new(bind(&path)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let listener2 = Arc::clone(&listener);
        let mut lab = self.handle();
        let thread = std::thread::Builder::new()
            .name(format!("lab-switch-{}", self.name()))
            .spawn(move || serve(&listener2, &mut lab, &stop2))
            .map_err(crate::sys::io_err("spawn the power switch thread"))?;
        Ok(PowerSwitch {
            path,
            stop,
            listener,
            thread: Some(thread),
        })
    }

    /// Serves the power switch in this thread until the lab's state dir disappears (for
    /// `tandem lab switchd`, the daemon `tandem lab up` leaves behind).
    pub fn serve_power_switch(&self) -> Result<(), LabError> {
        let path = switch_socket(self.name());
        let listener = bind(&path)?;
        let stop = AtomicBool::new(false);
        let mut lab = self.handle();
        serve(&listener, &mut lab, &stop);
        Ok(())
    }
}

fn serve(listener: &UnixListener, lab: &mut Lab, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) || !crate::lab::state_dir(lab.name()).exists() {
            return;
        }
        let Ok(stream) = conn else {
            // A listener shut down from another thread keeps failing: stop.
            if stop.load(Ordering::SeqCst) {
                return;
            }
            continue;
        };
        let _ = handle(stream, lab);
    }
}

fn handle(stream: UnixStream, lab: &mut Lab) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(REQUEST_LEN_MAX as u64)).read_line(&mut line)?;
    let reply = match SwitchRequest::parse(&line) {
        Err(e) => format!("error: {e}"),
        Ok(req) => match execute(lab, &req) {
            Ok(r) => r,
            Err(e) => format!("error: {e}"),
        },
    };
    let mut w = &stream;
    w.write_all(reply.as_bytes())?;
    w.write_all(b"\n")
}

fn execute(lab: &mut Lab, req: &SwitchRequest) -> Result<String, LabError> {
    match req {
        SwitchRequest::On(h) => lab.power_on(h).map(|_| "ok".into()),
        SwitchRequest::Off(h) => lab.power_off(h).map(|_| "ok".into()),
        SwitchRequest::Reboot(h) => {
            lab.power_off(h)?;
            lab.power_on(h).map(|_| "ok".into())
        }
        SwitchRequest::Status(h) => Ok(if lab.is_powered(h)? { "on" } else { "off" }.into()),
        SwitchRequest::List => {
            let mut out = String::new();
            for h in lab.topology().hosts.clone() {
                let on = lab.is_powered(&h.name)?;
                out.push_str(&format!("{} {}\n", h.name, if on { "on" } else { "off" }));
            }
            out.push_str("end");
            Ok(out)
        }
    }
}

/// Sends one request to a lab's power switch and returns the reply (without the
/// trailing newline); an `error: …` reply becomes an error.
pub fn switch_request(lab: &str, req: &SwitchRequest) -> Result<String, LabError> {
    let path = switch_socket(lab);
    let shown = format!("power switch {}: {}", path.display(), req.line());
    let mut s = UnixStream::connect(&path).map_err(crate::sys::io_err(shown.clone()))?;
    s.set_read_timeout(Some(Duration::from_millis(REPLY_TIMEOUT_MS)))
        .map_err(crate::sys::io_err(shown.clone()))?;
    s.write_all(format!("{}\n", req.line()).as_bytes())
        .map_err(crate::sys::io_err(shown.clone()))?;
    let mut reply = String::new();
    s.take(64 * 1024)
        .read_to_string(&mut reply)
        .map_err(crate::sys::io_err(shown.clone()))?;
    let reply = reply.trim_end().to_string();
    if let Some(e) = reply.strip_prefix("error: ") {
        return Err(LabError::Command {
            cmd: shown,
            detail: e.to_string(),
        });
    }
    if reply.is_empty() {
        return Err(LabError::Command {
            cmd: shown,
            detail: "the switch closed the connection without a reply".into(),
        });
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(
            SwitchRequest::parse("off ox1\n"),
            Ok(SwitchRequest::Off("ox1".into()))
        );
        assert_eq!(SwitchRequest::parse(" list "), Ok(SwitchRequest::List));
        for bad in ["", "off", "list ox1", "explode ox1", "on a b"] {
            assert!(SwitchRequest::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_requests_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5000 {
            let mut bytes = Vec::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b"on off list status reboot ox1\n\t\0\xff";
                bytes.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let s = String::from_utf8_lossy(&bytes);
            let _ = SwitchRequest::parse(&s);
        }
    }
}
