//! The blocking device runner: runs one prepared invocation with a timeout.
//!
//! The program runs in its own process group; on timeout the whole group gets SIGKILL
//! (fence agents call `ssh`, `ipmitool`, `snmpset` … and a hung grandchild must not
//! survive its agent), and after a normal exit what is left of the group is killed too.
//! stdout and stderr are drained by threads and only their tails are kept.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tandem_config::FenceDevice;

use crate::action::FenceAction;
use crate::device::{ProgramPaths, prepare};
use crate::result::{FenceResult, OUTPUT_MAX_BYTES, Outcome};

/// How often the runner looks whether the program has exited.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How long output readers may take to see end-of-file after the group was killed (a
/// process that escaped the group may hold the pipe open; its output is then lost).
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// The runner's clock: drivers read the clock, cores are given it.
#[allow(clippy::disallowed_methods)]
fn clock() -> Instant {
    Instant::now()
}

/// Runs `action` on `dev` for `target` and waits, at most `dev.timeout`. A manual device
/// returns `Outcome::Error` (it has nothing to run: the coordinator waits for an operator).
pub fn run_device(
    dev: &FenceDevice,
    action: FenceAction,
    target: Option<&str>,
    paths: &ProgramPaths,
) -> FenceResult {
    let start = clock();
    let (outcome, stdout) = match prepare(dev, action, target, paths) {
        None => (
            Outcome::Error {
                detail: format!(
                    "device {} is manual: run `tandem fence confirm NODE` once the node is off",
                    dev.name
                ),
            },
            String::new(),
        ),
        Some(inv) => match inv.argv {
            None => (Outcome::NotInstalled, format!("{} not found", inv.wanted)),
            Some(argv) => run_program(&argv, &inv.stdin, &inv.env, dev.timeout),
        },
    };
    let stdout = if outcome.is_success() {
        stdout
    } else {
        String::new()
    };
    FenceResult {
        device: dev.name.clone(),
        action,
        target: target.filter(|_| action.has_target()).map(str::to_string),
        outcome,
        stdout,
        duration_ms: clock().duration_since(start).as_millis() as u64,
    }
}

/// Runs `argv` with `stdin` bytes and extra `env`, killing its process group after
/// `timeout`. Returns the outcome and the tail of stdout.
pub fn run_program(
    argv: &[std::ffi::OsString],
    stdin: &[u8],
    env: &[(String, String)],
    timeout: Duration,
) -> (Outcome, String) {
    let Some((prog, args)) = argv.split_first() else {
        return (
            Outcome::Error {
                detail: "empty command".into(),
            },
            String::new(),
        );
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout can kill the agent and everything it started.
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (Outcome::NotInstalled, String::new());
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return (Outcome::NotInstalled, String::new());
        }
        Err(e) => {
            return (
                Outcome::Error {
                    detail: format!("spawn {}: {e}", prog.to_string_lossy()),
                },
                String::new(),
            );
        }
    };
    let pgid = child.id() as i32;
    if let Some(mut w) = child.stdin.take() {
        // On a thread: an agent that never reads must not block us past the timeout
        // (the input is usually far below the pipe buffer, but parameters are the
        // operator's). The kill at the timeout closes the pipe and ends the thread. An
        // agent that exits without reading gives EPIPE: its business, not an error.
        let input = stdin.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let out_rx = drain(child.stdout.take());
    let err_rx = drain(child.stderr.take());
    let deadline = clock() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => {
                kill_group(pgid, &mut child);
                return (
                    Outcome::Error {
                        detail: format!("wait for {}: {e}", prog.to_string_lossy()),
                    },
                    String::new(),
                );
            }
        }
        if clock() >= deadline {
            break None;
        }
        thread::sleep(POLL_INTERVAL);
    };
    // Whatever the agent left behind in its group goes too (and on timeout, the agent).
    kill_group(pgid, &mut child);
    let stdout = out_rx.recv_timeout(DRAIN_GRACE).unwrap_or_default();
    let stderr = err_rx.recv_timeout(DRAIN_GRACE).unwrap_or_default();
    let Some(status) = status else {
        return (Outcome::Timeout, String::new());
    };
    if status.success() {
        return (Outcome::Success, lossy_tail(&stdout));
    }
    let mut both = stderr;
    if !stdout.is_empty() {
        if !both.is_empty() && !both.ends_with(b"\n") {
            both.push(b'\n');
        }
        both.extend_from_slice(&stdout);
    }
    let exit = status.code();
    let output = match (exit, status.signal()) {
        (None, Some(sig)) => format!("killed by signal {sig}\n{}", lossy_tail(&both)),
        _ => lossy_tail(&both),
    };
    (Outcome::Failed { exit, output }, String::new())
}

/// SIGKILL to the process group, then reap the leader if it is still there.
fn kill_group(pgid: i32, child: &mut Child) {
    // SAFETY: kill(2) with a negative pid signals a process group we created; it has no
    // memory-safety preconditions. ESRCH (group already empty) is fine.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Reads a pipe to its end on a thread, keeping the last [`OUTPUT_MAX_BYTES`].
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::sync_channel(1);
    thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        if let Some(mut p) = pipe {
            let mut buf = [0u8; 4096];
            loop {
                match p.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > 2 * OUTPUT_MAX_BYTES {
                            kept.drain(..kept.len() - OUTPUT_MAX_BYTES);
                        }
                    }
                }
            }
        }
        if kept.len() > OUTPUT_MAX_BYTES {
            kept.drain(..kept.len() - OUTPUT_MAX_BYTES);
        }
        let _ = tx.send(kept);
    });
    rx
}

fn lossy_tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.trim_end().to_string()
}
