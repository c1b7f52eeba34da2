//! The lab's power switch as a fence-agents program (`fence_tandem_lab`, also
//! `tandem lab-fence-agent`): the coordinator runs it exactly as it runs `fence_apc`.
//!
//! Input (stdin `name=value` lines, or `-o/-n/-a/--name=value` options):
//! `action` = off | on | reboot | status | monitor | list | metadata,
//! `port`/`plug` (or `nodename`) = the lab host, `ipaddr` (or `ip`, `lab`) = the lab name,
//! as a real switch takes its address. Exit codes follow the FenceAgentAPI: 0 success
//! (status: plug on), 1 failure, 2 (status only) plug off.
//!
//! Run on the machine, it acts on the lab directly. Run inside a lab host (where a
//! node's agent runs it), it cannot: the host sees neither the lab's cgroups nor the
//! machine's processes. There it forwards the request over the Unix socket
//! `/run/tandem-lab/NAME/switch.sock` to a [`SwitchServer`] running on the machine —
//! the lab's equivalent of a power switch on a management network.
//!
//! ```text
//!  host ox2: agent ─► fence_tandem_lab ──(switch.sock: name=value lines)──┐
//!  machine:                          SwitchServer ─► Lab::power_off("ox1") ◄┘
//! ```

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_lab::Lab;

use crate::agent_input::AgentInput;

/// The agent's name, as written in `[[fence_device]] agent = "fence_tandem_lab"`.
pub const AGENT_NAME: &str = "fence_tandem_lab";

const METADATA: &str = r#"<?xml version="1.0" ?>
<resource-agent name="fence_tandem_lab" shortdesc="Power switch of a tandem lab">
<longdesc>fence_tandem_lab powers hosts of a tandem lab (network namespaces and cgroups on one machine) off and on. Power-off kills every process of the host at once and returns only when all of them are reaped.</longdesc>
<vendor-url>https://example.invalid/tandem</vendor-url>
<parameters>
	<parameter name="action" unique="0" required="1">
		<getopt mixed="-o, --action=[action]" />
		<content type="string" default="off" />
		<shortdesc lang="en">Fencing action</shortdesc>
	</parameter>
	<parameter name="ipaddr" unique="0" required="1">
		<getopt mixed="-a, --ip=[lab]" />
		<content type="string" />
		<shortdesc lang="en">Name of the lab (the switch's address)</shortdesc>
	</parameter>
	<parameter name="port" unique="0" required="1">
		<getopt mixed="-n, --plug=[host]" />
		<content type="string" />
		<shortdesc lang="en">Lab host to act on</shortdesc>
	</parameter>
</parameters>
<actions>
	<action name="on" automatic="0"/>
	<action name="off" />
	<action name="reboot" />
	<action name="status" />
	<action name="list" />
	<action name="monitor" />
	<action name="metadata" />
</actions>
</resource-agent>
"#;

/// Runs one request and returns the exit code; answers go to `out`, messages to `err`.
pub fn run(input: &AgentInput, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    run_inner(input, out, err, true)
}

fn run_inner(input: &AgentInput, out: &mut dyn Write, err: &mut dyn Write, forward: bool) -> i32 {
    match serve(input, out, err, forward) {
        Ok(code) => code,
        Err(msg) => {
            let _ = writeln!(err, "{AGENT_NAME}: Failed: {msg}");
            1
        }
    }
}

fn serve(
    input: &AgentInput,
    out: &mut dyn Write,
    err: &mut dyn Write,
    forward: bool,
) -> Result<i32, String> {
    let action = input.action().unwrap_or("off").to_ascii_lowercase();
    if action == "metadata" {
        out.write_all(METADATA.as_bytes())
            .map_err(|e| e.to_string())?;
        return Ok(0);
    }
    let lab_name = input
        .first(&["ipaddr", "ip", "lab"])
        .ok_or("no lab named: give ipaddr=<lab name>")?;
    let mut lab = Lab::open(lab_name).map_err(|e| e.to_string())?;
    if !sees_lab(&lab) {
        // Inside a lab host: only the switch server on the machine can act.
        if !forward {
            return Err("the lab's cgroups are not visible here".into());
        }
        let reply = forward_request(lab_name, input)?;
        let _ = out.write_all(reply.stdout.as_bytes());
        let _ = err.write_all(reply.stderr.as_bytes());
        return Ok(reply.exit);
    }
    act(&mut lab, &action, input, out)
}

/// Carries out `action` on `lab` (which this process can see).
fn act(
    lab: &mut Lab,
    action: &str,
    input: &AgentInput,
    out: &mut dyn Write,
) -> Result<i32, String> {
    if action == "metadata" {
        out.write_all(METADATA.as_bytes())
            .map_err(|e| e.to_string())?;
        return Ok(0);
    }
    let plug = || input.plug().ok_or("no host named: give port=<lab host>");
    let hosts: Vec<String> = lab
        .topology()
        .hosts
        .iter()
        .map(|h| h.name.clone())
        .collect();
    match action {
        "off" => {
            let h = plug()?;
            lab.power_off(h).map_err(|e| e.to_string())?;
            verify(lab, h, false)?;
            let _ = writeln!(out, "Success: Powered OFF");
            Ok(0)
        }
        "on" => {
            let h = plug()?;
            lab.power_on(h).map_err(|e| e.to_string())?;
            verify(lab, h, true)?;
            let _ = writeln!(out, "Success: Powered ON");
            Ok(0)
        }
        "reboot" => {
            // The API counts a reboot by its off part: a failing `on` is logged, not
            // reported, since the cluster recovers safely from a node left off.
            let h = plug()?;
            lab.power_off(h).map_err(|e| e.to_string())?;
            verify(lab, h, false)?;
            match lab.power_on(h) {
                Ok(()) => {
                    let _ = writeln!(out, "Success: Rebooted");
                }
                Err(e) => {
                    let _ = writeln!(out, "Success: Powered OFF; power on failed: {e}");
                }
            }
            Ok(0)
        }
        "status" => {
            let h = plug()?;
            if lab.is_powered(h).map_err(|e| e.to_string())? {
                let _ = writeln!(out, "Status: ON");
                Ok(0)
            } else {
                let _ = writeln!(out, "Status: OFF");
                Ok(2)
            }
        }
        "monitor" => {
            // Reachable: the lab's state could be read. Checking every host answers too.
            for h in &hosts {
                lab.is_powered(h).map_err(|e| e.to_string())?;
            }
            Ok(0)
        }
        "list" | "list-status" => {
            for h in &hosts {
                if action == "list" {
                    let _ = writeln!(out, "{h},{h}");
                } else {
                    let on = lab.is_powered(h).map_err(|e| e.to_string())?;
                    let _ = writeln!(out, "{h},{h},{}", if on { "on" } else { "off" });
                }
            }
            Ok(0)
        }
        other => Err(format!(
            "unknown action {other:?}: expected off, on, reboot, status, monitor, list or metadata"
        )),
    }
}

/// Whether this process sees the lab's cgroups, i.e. runs in the machine's namespaces
/// (a power-off from anywhere else would kill nothing).
fn sees_lab(lab: &Lab) -> bool {
    lab.topology()
        .hosts
        .first()
        .and_then(|h| lab.cgroup(&h.name).ok())
        .and_then(|p| p.parent().map(|d| d.is_dir()))
        .unwrap_or(false)
}

/// Verifiable operation (FenceAgentAPI): read the state back after changing it. For
/// off, the host's cgroup must be readable and empty: an unreadable one is a failure,
/// never an assumed success.
fn verify(lab: &Lab, host: &str, want_on: bool) -> Result<(), String> {
    let on = lab.is_powered(host).map_err(|e| e.to_string())?;
    let procs_gone = want_on
        || match lab.cgroup(host) {
            Ok(cg) => match std::fs::read_to_string(cg.join("cgroup.procs")) {
                Ok(procs) => procs.trim().is_empty(),
                // Power-off may remove the host's cgroup: gone means empty, as long as
                // the lab's own cgroup is still visible.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => sees_lab(lab),
                Err(_) => false,
            },
            Err(_) => false,
        };
    if on == want_on && procs_gone {
        Ok(())
    } else {
        Err(format!(
            "host {host} is still {} after the switch was set",
            if on { "on" } else { "running processes" }
        ))
    }
}

/// The whole program: reads stdin (or options when given), runs, returns the exit code.
pub fn main_with(args: &[String]) -> i32 {
    let mut stderr = std::io::stderr();
    let input = if args.is_empty() {
        let mut buf = Vec::new();
        use std::io::Read;
        if let Err(e) = std::io::stdin()
            .take(crate::agent_input::INPUT_MAX_BYTES as u64 + 1)
            .read_to_end(&mut buf)
        {
            let _ = writeln!(stderr, "{AGENT_NAME}: Failed: read stdin: {e}");
            return 1;
        }
        AgentInput::parse(&buf)
    } else {
        AgentInput::from_args(args)
    };
    match input {
        Ok(i) => run(&i, &mut std::io::stdout(), &mut stderr),
        Err(e) => {
            let _ = writeln!(stderr, "{AGENT_NAME}: Failed: {e}");
            1
        }
    }
}

/// The switch server's answer.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    exit: i32,
    stdout: String,
    stderr: String,
}

/// Most bytes of a reply a client accepts.
const REPLY_MAX_BYTES: u64 = 256 * 1024;
/// How long either side waits for the other; a power-off takes well under a second.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// The switch socket of lab `name`.
pub fn socket_path(name: &str) -> PathBuf {
    PathBuf::from(tandem_lab::STATE_ROOT)
        .join(name)
        .join("switch.sock")
}

fn forward_request(lab: &str, input: &AgentInput) -> Result<Reply, String> {
    let path = socket_path(lab);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        format!(
            "this runs inside a lab host, where the lab's switch is reachable only through \
             {}: {e} (is a SwitchServer running on the machine? `tandem lab-fence-agent --serve {lab}`)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(SOCKET_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(SOCKET_TIMEOUT)))
        .and_then(|_| s.write_all(input.to_lines().as_bytes()))
        .and_then(|_| s.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("send to {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    (&mut s)
        .take(REPLY_MAX_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| format!("read from {}: {e}", path.display()))?;
    serde_json::from_slice(&buf).map_err(|e| format!("bad reply from the switch server: {e}"))
}

/// The lab's power switch on the machine: answers `fence_tandem_lab` requests from
/// inside lab hosts over [`socket_path`]. One request at a time (power operations take
/// the lab's lock anyway). Stops and removes its socket when dropped.
///
/// Started with [`SwitchServer::start_shared`], it acts through the caller's own `Lab`
/// handle. That matters when the caller spawned the hosts' processes itself
/// ([`Lab::spawn`]): they are its children, only it can reap them, and a power-off from
/// any other process waits for that reaping in vain (the lab reports them unreaped).
#[derive(Debug)]
pub struct SwitchServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SwitchServer {
    /// Binds the socket of lab `name` (replacing a stale one) and serves on a thread.
    pub fn start(name: &str) -> std::io::Result<SwitchServer> {
        Self::spawn(name, None)
    }

    /// As [`SwitchServer::start`], acting through `lab` (see the type's documentation).
    pub fn start_shared(lab: Arc<Mutex<Lab>>) -> std::io::Result<SwitchServer> {
        let name = lab
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .name()
            .to_string();
        Self::spawn(&name, Some(lab))
    }

    fn spawn(name: &str, shared: Option<Arc<Mutex<Lab>>>) -> std::io::Result<SwitchServer> {
        let path = socket_path(name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("lab-switch-{name}"))
            .spawn(move || accept_loop(listener, &stop2, shared.as_ref()))?;
        Ok(SwitchServer {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket it listens on.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Serves until the process ends (`tandem lab-fence-agent --serve LAB`).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SwitchServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, stop: &AtomicBool, shared: Option<&Arc<Mutex<Lab>>>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => handle(stream, shared),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn handle(mut stream: UnixStream, shared: Option<&Arc<Mutex<Lab>>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(SOCKET_TIMEOUT));
    let _ = stream.set_write_timeout(Some(SOCKET_TIMEOUT));
    let mut buf = Vec::new();
    let read = (&mut stream)
        .take(crate::agent_input::INPUT_MAX_BYTES as u64 + 1)
        .read_to_end(&mut buf);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = match read
        .map_err(|e| e.to_string())
        .and_then(|_| AgentInput::parse(&buf).map_err(|e| e.to_string()))
    {
        Ok(input) => match shared {
            None => run_inner(&input, &mut out, &mut err, false),
            Some(lab) => {
                let mut lab = lab.lock().unwrap_or_else(|p| p.into_inner());
                let action = input.action().unwrap_or("off").to_ascii_lowercase();
                let named = input.first(&["ipaddr", "ip", "lab"]);
                let result = if named.is_some_and(|n| n != lab.name()) {
                    Err(format!("this switch serves lab {:?} only", lab.name()))
                } else {
                    act(&mut lab, &action, &input, &mut out)
                };
                result.unwrap_or_else(|e| {
                    let _ = writeln!(err, "{AGENT_NAME}: Failed: {e}");
                    1
                })
            }
        },
        Err(e) => {
            let _ = writeln!(err, "{AGENT_NAME}: Failed: {e}");
            1
        }
    };
    let reply = Reply {
        exit,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    };
    let _ = stream.write_all(&serde_json::to_vec(&reply).unwrap_or_default());
}
