//! `tandem bench failover`: the outage a client sees when the active node loses power,
//! tandem (with fencing and the witness) against keepalived (VRRP, no fencing at all)
//! with the same detection budget, trial by trial in the same run.
//!
//! Both systems only move an address: a TCP responder already listens on both nodes,
//! as with keepalived, so the outage is detection + (for tandem) vote and fence +
//! address up + gratuitous ARP. The client host starts a TCP connect to the address
//! every 10 ms (each with a 50 ms timeout) and prints the wall-clock millisecond of
//! every success; the outage is from the power-off to the first success after every
//! process of the old node was reaped (one read before may still be its answer).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_lab::{Lab, Topology};

use crate::labcluster::{LabCluster, Timing};
use crate::labconfig;

/// `tandem bench failover` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Power-offs per system.
    #[arg(long, default_value_t = 10)]
    pub trials: u32,
    /// Heartbeat (and VRRP advertisement) interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub keepalive_ms: u64,
    /// tandem's deadtime, in milliseconds (keepalived declares its master down after
    /// three advertisements plus its skew: the same budget at the defaults).
    #[arg(long, default_value_t = 300)]
    pub deadtime_ms: u64,
}

const VIP: &str = "192.168.1.160";

/// A TCP responder: accepts and closes, for ever.
const RESPONDER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen(512)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// The client: a connect every 10 ms, the wall-clock ms of each success on stdout.
const PROBER: &str = r#"
import socket, time
while True:
    t = time.time()
    try:
        c = socket.create_connection(("192.168.1.160", 7000), 0.05)
        c.close()
        print(int(time.time() * 1000), flush=True)
    except OSError:
        pass
    time.sleep(max(0.0, 0.01 - (time.time() - t)))
"#;

/// One trial's figures, in ms after the power-off.
#[derive(Debug, Clone, Default)]
struct Trial {
    outage: u64,
    dead: Option<u64>,
    fenced: Option<u64>,
    address: Option<u64>,
}

/// Runs the benchmark and prints its tables.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.trials == 0 {
        bail!("--trials must be at least 1");
    }
    let timing = Timing {
        keepalive: Duration::from_millis(args.keepalive_ms),
        deadtime: Duration::from_millis(args.deadtime_ms),
    };
    let mut tandem = Vec::new();
    let mut keepalived = Vec::new();
    for trial in 0..args.trials {
        let t = tandem_trial(timing).with_context(|| format!("tandem, trial {trial}"))?;
        eprintln!("trial {trial}: tandem {} ms", t.outage);
        tandem.push(t);
        let k = keepalived_trial(args.keepalive_ms)
            .with_context(|| format!("keepalived, trial {trial}"))?;
        eprintln!("trial {trial}: keepalived {k} ms");
        keepalived.push(k);
    }
    print_tables(&args, &tandem, &keepalived);
    Ok(())
}

fn print_tables(args: &Args, tandem: &[Trial], keepalived: &[u64]) {
    let t: Vec<u64> = tandem.iter().map(|t| t.outage).collect();
    let (tm, tp, tx) = stats(&t);
    let (km, kp, kx) = stats(keepalived);
    println!(
        "VIP outage after a power-off of the active node ({} trials each, interleaved; keepalive/advert {} ms, tandem deadtime {} ms)",
        args.trials, args.keepalive_ms, args.deadtime_ms
    );
    println!(
        "| system                                       | median ms | p95 ms | max ms | median ratio |"
    );
    println!(
        "|----------------------------------------------|-----------|--------|--------|--------------|"
    );
    println!(
        "| tandem (fencing through the switch, witness) | {tm:>9} | {tp:>6} | {tx:>6} | {:>12.2} |",
        tm as f64 / km.max(1) as f64
    );
    println!(
        "| keepalived (VRRPv3, unicast, no fencing)     | {km:>9} | {kp:>6} | {kx:>6} | {:>12.2} |",
        1.0
    );
    println!();
    println!("tandem's timeline (median ms after the power-off)");
    println!("| step                         | median ms |");
    println!("|------------------------------|-----------|");
    let median_of = |f: fn(&Trial) -> Option<u64>| {
        let v: Vec<u64> = tandem.iter().filter_map(f).collect();
        if v.is_empty() {
            "-".to_string()
        } else {
            stats(&v).0.to_string()
        }
    };
    println!(
        "| dead verdict                 | {:>9} |",
        median_of(|t| t.dead)
    );
    println!(
        "| vote and fence done          | {:>9} |",
        median_of(|t| t.fenced)
    );
    println!(
        "| address start done (+ ARP)   | {:>9} |",
        median_of(|t| t.address)
    );
    println!("| first answer to the client   | {:>9} |", stats(&t).0);
}

/// Median, p95 and max.
fn stats(v: &[u64]) -> (u64, u64, u64) {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return (0, 0, 0);
    }
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), s[s.len() - 1])
}

/// The client's prober in the lab's client host, reading its successes.
struct Prober {
    child: tandem_lab::HostProcess,
    successes: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Prober {
    fn start(lab: &Lab) -> anyhow::Result<Prober> {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", PROBER])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = lab.spawn("client", cmd)?;
        let out = child.stdout.take().context("prober stdout")?;
        let successes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = std::sync::Arc::clone(&successes);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(ms) = line.trim().parse::<u64>() {
                    s.lock().unwrap_or_else(|p| p.into_inner()).push(ms);
                }
            }
        });
        Ok(Prober { child, successes })
    }

    fn first_after(&self, ms: u64) -> Option<u64> {
        let s = self.successes.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().copied().find(|&t| t > ms)
    }

    fn wait_first_after(&self, ms: u64, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = crate::clock::now() + timeout;
        loop {
            if let Some(t) = self.first_after(ms) {
                return Ok(t);
            }
            if crate::clock::now() > deadline {
                bail!("the client got no answer within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn start_responders(lab: &Lab) -> anyhow::Result<Vec<tandem_lab::HostProcess>> {
    ["ox1", "ox2"]
        .iter()
        .map(|h| {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", RESPONDER])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            lab.spawn(h, cmd).map_err(anyhow::Error::from)
        })
        .collect()
}

/// Waits until the client's connects succeed (the address serves).
fn wait_serving(prober: &Prober) -> anyhow::Result<()> {
    let start = crate::clock::wall_ms();
    prober.wait_first_after(start, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn tandem_trial(timing: Timing) -> anyhow::Result<Trial> {
    let vip = VIP.parse().context("the VIP")?;
    let mut cluster = LabCluster::up_with_witness(timing, "required", |_, c| {
        c.lab_switch().group(
            "vip",
            "ox1",
            vec![labconfig::ipaddr("vip", vip, 24, "eth0")],
        );
        Ok(())
    })?;
    let _switch = cluster.lab.power_switch()?;
    let _responders = start_responders(&cluster.lab)?;
    cluster.start_witness()?;
    cluster.start_daemon("ox1", &[])?;
    cluster.start_daemon("ox2", &[])?;
    let prober = Prober::start(&cluster.lab)?;
    wait_serving(&prober)?;
    // The vote needs ox2 to hear the witness.
    let deadline = crate::clock::now() + Duration::from_secs(30);
    while cluster
        .status("ox2")
        .is_none_or(|s| s["witness"]["heard"] != true)
    {
        if crate::clock::now() > deadline {
            bail!("ox2 never heard the witness");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let off = crate::clock::wall_ms();
    cluster.lab.power_off("ox1")?;
    // An answer read before every process of ox1 was reaped may still be ox1's.
    let killed = crate::clock::wall_ms();
    cluster.forget_daemon("ox1");
    let first = match prober.wait_first_after(killed, Duration::from_secs(60)) {
        Ok(t) => t,
        Err(e) => {
            let status = cluster.status("ox2").unwrap_or_default();
            let log =
                std::fs::read_to_string(cluster.lab.data_dir().join("ox2.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            return Err(e.context(format!(
                "ox2's groups: {}; witness: {}; ox2's log ends:\n{}",
                status["groups"],
                status["witness"],
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
    };
    let status = cluster.status("ox2").unwrap_or_default();
    let after = |ms: Option<u64>| ms.map(|m| m.saturating_sub(off));
    let dead = status["events"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .rev()
                .find(|e| e["event"] == "node_dead" && e["node"] == "ox1")
        })
        .and_then(|e| e["time_ms"].as_u64());
    let fenced = status["fencing"]["history"]
        .as_array()
        .and_then(|h| h.iter().find(|r| r["outcome"]["kind"] == "success"))
        .and_then(|r| r["at_unix_ms"].as_u64());
    let address = status["actions"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .rev()
                .find(|r| r["resource"] == "vip" && r["action"] == "start" && r["ok"] == true)
        })
        .and_then(|r| r["time_ms"].as_u64());
    drop(prober);
    let problems = cluster.down()?;
    if !problems.is_empty() {
        bail!("the lab's teardown: {}", problems.join("; "));
    }
    Ok(Trial {
        outage: first.saturating_sub(off),
        dead: after(dead),
        fenced: after(fenced),
        address: after(address),
    })
}

/// keepalived's configuration for one node: VRRPv3, unicast over the hb network, the
/// address on the public one.
pub(crate) fn keepalived_conf(own: &str, peer: &str, priority: u8, advert_ms: u64) -> String {
    format!(
        r#"global_defs {{
  vrrp_version 3
  vrrp_garp_master_delay 0
  vrrp_garp_master_repeat 1
}}
vrrp_instance bench {{
  interface eth1
  virtual_router_id 51
  priority {priority}
  advert_int {advert:.2}
  unicast_src_ip {own}
  unicast_peer {{
    {peer}
  }}
  virtual_ipaddress {{
    {VIP}/24 dev eth0
  }}
}}
"#,
        advert = advert_ms as f64 / 1000.0
    )
}

fn keepalived_trial(advert_ms: u64) -> anyhow::Result<u64> {
    let mut lab = Lab::up_auto(Topology::whitepaper())?;
    let dir = lab.data_dir();
    let _responders = start_responders(&lab)?;
    let mut daemons = Vec::new();
    for (host, own, peer, priority) in [
        ("ox1", "192.168.180.20", "192.168.180.10", 150u8),
        ("ox2", "192.168.180.10", "192.168.180.20", 100),
    ] {
        let conf = dir.join(format!("keepalived-{host}.conf"));
        std::fs::write(&conf, keepalived_conf(own, peer, priority, advert_ms))?;
        let cmd = keepalived_command(&conf, host);
        daemons.push(lab.spawn(host, cmd)?);
    }
    let prober = Prober::start(&lab)?;
    wait_serving(&prober)?;
    let off = crate::clock::wall_ms();
    lab.power_off("ox1")?;
    let killed = crate::clock::wall_ms();
    let first = prober.wait_first_after(killed, Duration::from_secs(60))?;
    drop(prober);
    drop(daemons);
    let report = lab.down()?;
    if !report.problems.is_empty() {
        bail!("the lab's teardown: {}", report.problems.join("; "));
    }
    Ok(first.saturating_sub(off))
}

/// keepalived in the foreground, VRRP only, logging to the console (the lab captures
/// nothing: its output is dropped), pid files in the host's private /run.
pub(crate) fn keepalived_command(conf: &std::path::Path, host: &str) -> Command {
    let mut cmd = Command::new("keepalived");
    cmd.arg("--dont-fork")
        .arg("--log-console")
        .arg("--vrrp")
        .arg("--use-file")
        .arg(conf)
        .arg("--pid")
        .arg(format!("/run/tandem/keepalived-{host}.pid"))
        .arg("--vrrp_pid")
        .arg(format!("/run/tandem/keepalived-vrrp-{host}.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}
