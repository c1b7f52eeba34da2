//! Running an agent process with a timeout.
//!
//! The child gets its own process group (so a timeout can kill the agent *and* whatever
//! it forked), stdin from /dev/null, and pipes for stdout/stderr. One thread waits on a
//! pidfd, the two pipes and an optional cancel eventfd with `poll(2)`; it returns as
//! soon as the agent exits, even if a daemon the agent started still holds the pipes
//! open (a classic way for init scripts to hang their callers).
//!
//! The agent does not inherit the daemon's environment (which may hold anything the
//! daemon was started with, secrets included, and a locale that changes the text
//! agents parse): it starts from [`AGENT_ENVIRONMENT`] and gets only what its runner
//! adds (the OCF variables for an OCF agent).

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::now;

/// Bytes of stdout and of stderr kept per action (the rest is read and dropped, so the
/// agent never blocks on a full pipe).
pub const OUTPUT_LIMIT_BYTES: usize = 64 * 1024;

/// A cancellation handle: cloning shares it; [`Cancel::cancel`] wakes every action
/// waiting on it, which then kills its agent and returns `ExecStatus::Cancelled`.
#[derive(Debug, Clone)]
pub struct Cancel {
    fd: Arc<OwnedFd>,
}

impl Cancel {
    /// A new, not yet cancelled handle (an eventfd).
    pub fn new() -> io::Result<Cancel> {
        // SAFETY: plain syscall; the returned descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Cancel {
            fd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    /// Cancels every action using this handle (now and later).
    pub fn cancel(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// True once [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The environment every agent starts from, whatever the daemon's own holds: a fixed
/// search path and the C locale (so `status` texts and tool output parse the same on
/// every node). docs/agents.md lists it with what each kind of agent adds.
pub const AGENT_ENVIRONMENT: [(&str, &str); 3] = [
    ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    ("LANG", "C"),
    ("LC_ALL", "C"),
];

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Variables added to [`AGENT_ENVIRONMENT`] (a name in both takes this value).
    pub env: Vec<(String, String)>,
}

/// How the process ended.
#[derive(Debug)]
pub(crate) enum ProcessEnd {
    Exited(i32),
    Signaled(i32),
    Timeout,
    Cancelled,
    SpawnFailed(io::Error),
}

/// A finished run.
#[derive(Debug)]
pub(crate) struct ProcessRun {
    pub end: ProcessEnd,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor returned by the kernel, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Kills the whole process group led by `pgid` (the agent and anything it forked that
/// did not start a session of its own).
fn kill_group(pgid: u32) {
    // SAFETY: plain syscall.
    unsafe {
        libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
    }
}

struct Sink<R> {
    reader: Option<R>,
    kept: Vec<u8>,
}

impl<R: Read + AsRawFd> Sink<R> {
    fn fd(&self) -> RawFd {
        self.reader.as_ref().map_or(-1, |r| r.as_raw_fd())
    }

    /// Reads what is available now; drops the reader at EOF or on error.
    fn drain(&mut self) {
        let Some(r) = self.reader.as_mut() else {
            return;
        };
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) => {
                    self.reader = None;
                    return;
                }
                Ok(n) => {
                    let room = OUTPUT_LIMIT_BYTES.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.reader = None;
                    return;
                }
            }
        }
    }

    fn text(self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }
}

/// Spawns, retrying briefly on `ETXTBSY`: a script that was just written can be "busy"
/// for a moment because another thread's fork inherited the writer's descriptor until
/// its exec (close-on-exec only closes it at exec).
fn spawn_retrying_busy_text(
    cmd: &mut Command,
    deadline: Instant,
) -> io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 && now() < deadline => {
                tries += 1;
                sleep_until(now() + Duration::from_millis(10), None);
            }
            other => return other,
        }
    }
}

/// Runs `spec` to completion or until `timeout` / `cancel`, whichever comes first.
pub(crate) fn run(spec: &CommandSpec, timeout: Duration, cancel: Option<&Cancel>) -> ProcessRun {
    let started = now();
    let deadline = started + timeout;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(AGENT_ENVIRONMENT)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a timeout kills the agent's whole tree with one killpg.
        .process_group(0);
    let mut child = match spawn_retrying_busy_text(&mut cmd, deadline) {
        Ok(c) => c,
        Err(e) => {
            return ProcessRun {
                end: ProcessEnd::SpawnFailed(e),
                stdout: String::new(),
                stderr: String::new(),
                duration: now() - started,
            };
        }
    };
    let pgid = child.id();
    let mut out = Sink {
        reader: child.stdout.take(),
        kept: Vec::new(),
    };
    let mut err = Sink {
        reader: child.stderr.take(),
        kept: Vec::new(),
    };
    for fd in [out.fd(), err.fd()] {
        if fd >= 0 {
            set_nonblocking(fd);
        }
    }
    let pidfd = match pidfd_open(pgid) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd we cannot wait with a timeout; do not leave the child.
            kill_group(pgid);
            let _ = child.wait();
            return ProcessRun {
                end: ProcessEnd::SpawnFailed(e),
                stdout: String::new(),
                stderr: String::new(),
                duration: now() - started,
            };
        }
    };
    let cancel_fd = cancel.map_or(-1, |c| c.raw_fd());
    let end = loop {
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            kill_group(pgid);
            let _ = child.wait();
            break ProcessEnd::Timeout;
        }
        let mut fds = [
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: out.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: err.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: cancel_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let wait_ms = left.as_millis().clamp(1, 60_000) as libc::c_int;
        // SAFETY: fds is a valid array; negative fds are ignored by poll.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            kill_group(pgid);
            let _ = child.wait();
            break ProcessEnd::SpawnFailed(e);
        }
        if fds[1].revents != 0 {
            out.drain();
        }
        if fds[2].revents != 0 {
            err.drain();
        }
        if fds[3].revents != 0 {
            kill_group(pgid);
            let _ = child.wait();
            break ProcessEnd::Cancelled;
        }
        if fds[0].revents != 0 {
            match child.wait() {
                Ok(status) => {
                    // Take what is already in the pipes; a daemon the agent started may
                    // keep them open forever, so do not wait for EOF.
                    out.drain();
                    err.drain();
                    break match (status.code(), status.signal()) {
                        (Some(code), _) => ProcessEnd::Exited(code),
                        (None, Some(sig)) => ProcessEnd::Signaled(sig),
                        (None, None) => ProcessEnd::Signaled(0),
                    };
                }
                Err(e) => break ProcessEnd::SpawnFailed(e),
            }
        }
    };
    ProcessRun {
        end,
        stdout: out.text(),
        stderr: err.text(),
        duration: now() - started,
    }
}

/// Sleeps until `deadline` or until cancelled; returns false when cancelled.
pub(crate) fn sleep_until(deadline: Instant, cancel: Option<&Cancel>) -> bool {
    loop {
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            return true;
        }
        let mut pfd = libc::pollfd {
            fd: cancel.map_or(-1, |c| c.raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 60_000) as libc::c_int;
        // SAFETY: one valid pollfd (a negative fd only sleeps).
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return false;
        }
    }
}

/// The last `ocf-exit-reason:` line of an agent's stderr, if any.
pub(crate) fn exit_reason(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("ocf-exit-reason:"))
        .map(|s| s.trim().to_string())
}

/// The tail of the combined output, bounded for logs.
pub(crate) fn output_tail(run: &ProcessRun) -> String {
    const TAIL: usize = 2048;
    let mut s = String::new();
    s.push_str(run.stdout.trim_end());
    if !run.stderr.trim().is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(run.stderr.trim_end());
    }
    if s.len() > TAIL {
        let mut cut = s.len() - TAIL;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = s[cut..].to_string();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> CommandSpec {
        CommandSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("TANDEM_X".into(), "42".into())],
        }
    }

    #[test]
    fn captures_exit_code_output_and_environment() {
        let r = run(
            &sh("echo out $TANDEM_X; echo err >&2; exit 3"),
            Duration::from_secs(10),
            None,
        );
        assert!(matches!(r.end, ProcessEnd::Exited(3)), "{:?}", r.end);
        assert_eq!(r.stdout, "out 42\n");
        assert_eq!(r.stderr, "err\n");
    }

    #[test]
    fn the_agent_gets_the_fixed_environment_not_the_daemons() {
        // SAFETY: tests in this binary do not read this variable concurrently.
        unsafe { std::env::set_var("TANDEM_EXEC_SECRET", "leak") };
        let r = run(&sh("env"), Duration::from_secs(10), None);
        let mut got: Vec<&str> = r.stdout.lines().collect();
        got.retain(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="));
        got.sort();
        assert_eq!(
            got,
            [
                "LANG=C",
                "LC_ALL=C",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "TANDEM_X=42"
            ],
            "the shell's own PWD, SHLVL and _ aside"
        );
    }

    #[test]
    fn returns_when_the_agent_exits_even_if_a_daemon_keeps_the_pipe() {
        // The background sleep inherits stdout; we must not wait for it.
        let r = run(&sh("sleep 60 & echo $!"), Duration::from_secs(50), None);
        assert!(matches!(r.end, ProcessEnd::Exited(0)), "{:?}", r.end);
        assert!(r.duration < Duration::from_secs(40), "{:?}", r.duration);
        // Clean up the "daemon" this test started, by its pid.
        let pid: i32 = r.stdout.trim().parse().unwrap();
        // SAFETY: plain syscall on a pid we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    #[test]
    fn missing_program_is_a_spawn_failure() {
        let spec = CommandSpec {
            program: "/nonexistent/agent".into(),
            args: vec![],
            env: vec![],
        };
        let r = run(&spec, Duration::from_secs(1), None);
        match r.end {
            ProcessEnd::SpawnFailed(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_kills_the_agent() {
        let c = Cancel::new().unwrap();
        c.cancel();
        assert!(c.is_cancelled());
        let r = run(&sh("sleep 30"), Duration::from_secs(20), Some(&c));
        assert!(matches!(r.end, ProcessEnd::Cancelled), "{:?}", r.end);
    }

    #[test]
    fn exit_reason_takes_the_last_marker_line() {
        let e = "noise\nocf-exit-reason:first\nocf-exit-reason: second one\n";
        assert_eq!(exit_reason(e).as_deref(), Some("second one"));
        assert_eq!(exit_reason("nothing"), None);
    }
}
