//! Helpers shared by the integration tests: the root gate, the binary, polling.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod cluster;
pub mod disks;
/// The lab clusters' configuration builder, the binary's own (`src/labconfig.rs`).
#[path = "../../src/labconfig.rs"]
pub mod labconfig;

use std::path::Path;
use std::time::{Duration, Instant};

/// The `tandem` binary under test.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
#[allow(clippy::disallowed_methods)]
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wall-clock milliseconds since the epoch (the daemons stamp their events the same way).
#[allow(clippy::disallowed_methods)]
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Writes a file with mode 0600 (key files must not be readable by others).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Starts `tandem -c CONFIG daemon --node NODE` in lab host `node`, its output appended
/// to `NODE.log` in the lab's data directory.
pub fn spawn_agent(lab: &tandem_lab::Lab, config: &Path, node: &str) -> tandem_lab::HostProcess {
    spawn_tandem(lab, config, node, "daemon")
}

/// Starts `tandem -c CONFIG DAEMON --node NODE` (`agent` or `witness`) in lab host
/// `node`, its output appended to `NODE.log` in the lab's data directory.
#[allow(dead_code)]
pub fn spawn_tandem(
    lab: &tandem_lab::Lab,
    config: &Path,
    node: &str,
    daemon: &str,
) -> tandem_lab::HostProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lab.data_dir().join(format!("{node}.log")))
        .unwrap();
    let mut cmd = std::process::Command::new(TANDEM);
    cmd.arg("-c")
        .arg(config)
        .args([daemon, "--node", node])
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    lab.spawn(node, cmd).expect("spawn tandem")
}

/// Prints the last `lines` lines of ox1's and ox2's agent logs when the test is
/// failing: the first thing to read, and gone once the lab is torn down.
pub fn print_agent_logs_on_panic(lab: &tandem_lab::Lab, lines: usize) {
    if !std::thread::panicking() {
        return;
    }
    for node in ["ox1", "ox2", "quorum"] {
        let Ok(text) = std::fs::read_to_string(lab.data_dir().join(format!("{node}.log"))) else {
            continue;
        };
        let all: Vec<&str> = text.lines().collect();
        eprintln!("----- {node} agent log (last {lines} lines) -----");
        for l in &all[all.len().saturating_sub(lines)..] {
            eprintln!("{l}");
        }
    }
}
