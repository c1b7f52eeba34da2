//! `tandem demo`: the whitepaper's cluster, failing over for real, on this machine.
//!
//! Builds the lab (ox1, ox2 and a client; `lan` 192.168.1.0/24 and the dedicated `hb`
//! network), runs `tandem agent` on both nodes with the lab's power switch as their
//! fence device, and a group like the whitepaper's front: the virtual IP
//! 192.168.1.160, `ocf:heartbeat:Dummy` and an LSB service answering TCP on port 8080.
//! The client probes the service every 50 ms. Then ox1, the active node, loses power,
//! and the demo prints what happened, when, and the outage the client saw.

pub mod records;

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::labcluster::{LabCluster, Timing};

const VIP: &str = "192.168.1.160";

/// The service: an LSB init script running a TCP server with its pid file in the host's
/// own /run (each lab host has a private /run/tandem).
const SERVICE: &str = r#"#!/bin/sh
PIDFILE=/run/tandem/web.pid
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
case "$1" in
  start)
    running && exit 0
    python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 &
    echo $! > "$PIDFILE"
    for i in $(seq 50); do
      python3 -c "import socket; socket.create_connection(('127.0.0.1', 8080), 0.2)" 2>/dev/null && exit 0
      sleep 0.1
    done
    exit 1 ;;
  stop)
    if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null; rm -f "$PIDFILE"; fi
    exit 0 ;;
  status) running && exit 0; exit 3 ;;
  *) exit 2 ;;
esac
"#;

/// The client's probe: one TCP connect every 50 ms, a line per answer.
const PROBE: &str = r#"
import socket, sys, time
while True:
    t = int(time.time() * 1000)
    try:
        socket.create_connection((sys.argv[1], 8080), 0.2).close()
        print(t, "ok", flush=True)
    except OSError:
        print(t, "fail", flush=True)
    time.sleep(0.05)
"#;

const TABLES: &str = r#"[[fence_device]]
name = "lab-switch"
agent = "fence_tandem_lab"
params = { ipaddr = "{lab}" }
timeout = "20s"

[[group]]
name = "ox"
home = "ox1"

[[group.resource]]
name = "vip"
type = "ipaddr"
address = "192.168.1.160/24"
interface = "eth0"
monitor_interval = "1s"

[[group.resource]]
name = "dummy"
type = "ocf"
provider = "heartbeat"
agent = "Dummy"
params = { state = "/run/tandem/dummy.state" }
monitor_interval = "1s"

[[group.resource]]
name = "service"
type = "lsb"
script = "{dir}/service"
monitor_interval = "1s"
"#;

/// `tandem demo` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub keepalive_ms: u64,
    /// Deadtime in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub deadtime_ms: u64,
}

/// Runs the demo and prints its timeline.
pub fn run(args: Args) -> anyhow::Result<()> {
    let timing = Timing {
        keepalive: Duration::from_millis(args.keepalive_ms),
        deadtime: Duration::from_millis(args.deadtime_ms),
    };
    say("building the lab: ox1, ox2 and a client; networks lan and hb");
    let mut cluster = LabCluster::up_with(timing, "required", TABLES)?;
    let _switch = cluster
        .lab
        .power_switch()
        .context("start the lab's power switch")?;
    let dir = cluster.lab.data_dir();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join("service"), SERVICE)?;
        std::fs::set_permissions(dir.join("service"), std::fs::Permissions::from_mode(0o755))?;
    }
    say("starting tandem agent on ox1 and ox2 (fencing through the lab's power switch)");
    cluster.start_agent("ox1", &[])?;
    cluster.start_agent("ox2", &[])?;
    wait(Duration::from_secs(30), "the group on ox1", || {
        owner(&cluster, "ox2").as_deref() == Some("ox1")
    })?;
    say(&format!(
        "group ox runs on ox1: {VIP} → ocf:heartbeat:Dummy → service on :8080"
    ));

    let mut probe = std::process::Command::new("python3");
    probe
        .args(["-c", PROBE, VIP])
        .stdout(std::process::Stdio::piped());
    let mut probe = cluster
        .lab
        .spawn("client", probe)
        .context("start the client probe")?;
    let stdout = probe.stdout.take().context("probe output")?;
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, bool)>::new()));
    let collected = std::sync::Arc::clone(&answers);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let mut words = line.split_whitespace();
            if let (Some(t), Some(ok)) = (words.next().and_then(|t| t.parse().ok()), words.next()) {
                collected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((t, ok == "ok"));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    say("the client reaches the service through the virtual IP; now ox1 loses power");

    let off_ms = crate::clock::wall_ms();
    cluster.lab.power_off("ox1").context("power off ox1")?;
    wait(Duration::from_secs(60), "the group on ox2", || {
        owner(&cluster, "ox2").as_deref() == Some("ox2")
    })?;
    wait(
        Duration::from_secs(10),
        "the client to get answers again",
        || {
            answers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|(t, ok)| *ok && *t > off_ms)
        },
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let _ = probe.kill();

    let status = cluster.status("ox2").context("status of ox2")?;
    print_timeline(
        off_ms,
        &status,
        &answers.lock().unwrap_or_else(|p| p.into_inner()),
    );
    Ok(())
}

fn owner(cluster: &LabCluster, node: &str) -> Option<String> {
    let status = cluster.status(node)?;
    let g = status["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == "ox")?;
    (g["state"] == "started").then(|| g["owner"].as_str().map(str::to_owned))?
}

fn print_timeline(off_ms: u64, status: &Value, answers: &[(u64, bool)]) {
    let rel = |t: u64| t as i64 - off_ms as i64;
    let mut lines: Vec<(i64, String)> = vec![(0, "ox1 powered off".into())];
    for e in status["events"].as_array().into_iter().flatten() {
        let t = e["time_ms"].as_u64().unwrap_or(0);
        if t >= off_ms && e["event"] == "node_dead" {
            lines.push((
                rel(t),
                "ox2 declares ox1 dead (no heartbeat on any link)".into(),
            ));
        }
    }
    for r in status["fencing"]["history"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let t = r["at_unix_ms"].as_u64().unwrap_or(0);
        if t >= off_ms {
            lines.push((
                rel(t),
                format!(
                    "ox2 fenced {} through {} ({}: {})",
                    r["target"].as_str().unwrap_or("?"),
                    r["device"].as_str().unwrap_or("?"),
                    r["action"].as_str().unwrap_or("?"),
                    r["outcome"]["kind"].as_str().unwrap_or("?")
                ),
            ));
        }
    }
    for a in status["actions"].as_array().into_iter().flatten() {
        let t = a["time_ms"].as_u64().unwrap_or(0);
        if t >= off_ms && a["action"] == "start" && a["ok"] == true {
            let what = match a["resource"].as_str().unwrap_or("") {
                "vip" => format!("{VIP} up on ox2 (gratuitous ARP sent)"),
                other => format!("{other} start finished on ox2"),
            };
            lines.push((rel(t), what));
        }
    }
    let last_before = answers
        .iter()
        .filter(|(t, ok)| *ok && *t <= off_ms)
        .map(|(t, _)| *t)
        .max();
    let first_after = answers
        .iter()
        .filter(|(t, ok)| *ok && *t > off_ms)
        .map(|(t, _)| *t)
        .min();
    if let Some(t) = first_after {
        lines.push((rel(t), "the client is answered again".into()));
    }
    lines.sort_by_key(|(t, _)| *t);
    println!();
    println!("timeline (ms after the power-off)");
    for (t, what) in &lines {
        println!("  {t:>6}  {what}");
    }
    if let (Some(a), Some(b)) = (last_before, first_after) {
        let failed = answers
            .iter()
            .filter(|(t, ok)| !ok && *t > a && *t < b)
            .count();
        println!();
        println!(
            "outage seen by the client: {} ms ({} failed probes between the last answer before and the first after)",
            b - a,
            failed
        );
    }
    println!(
        "between the verdict and the fence, ox2 waited cluster.fencing_delay (default 5 s): it held \
         no group, so in a partition (which it cannot tell from a power-off) the node serving the \
         group must win the fence race"
    );
    println!("data check: not part of this demo yet (the replicated disk joins it next)");
}

fn wait(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = crate::clock::now() + timeout;
    while crate::clock::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

fn say(what: &str) {
    println!("demo: {what}");
}
