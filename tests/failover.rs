//! Resource groups for real: two agents in lab hosts run a group of a service address
//! (built-in ipaddr), Debian's `ocf:heartbeat:Dummy` and an LSB init script that serves
//! TCP; a client host reaches the service through the address.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{TANDEM, root_or_skip, wait_for, write_private};
use serde_json::Value;
use tandem_lab::{HostProcess, Lab, Topology};

const VIP: &str = "192.168.1.100";

/// An LSB init script: a TCP service on port 8080 with a pid file in the host's own /run.
const WEB_SCRIPT: &str = r#"#!/bin/sh
PIDFILE=/run/tandem/web.pid
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
case "$1" in
  start)
    running && exit 0
    python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 &
    echo $! > "$PIDFILE"
    # Ready when the port answers.
    for i in $(seq 50); do
      python3 -c "import socket; socket.create_connection(('127.0.0.1', 8080), 0.2)" 2>/dev/null && exit 0
      sleep 0.1
    done
    exit 1 ;;
  stop)
    if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null; rm -f "$PIDFILE"; fi
    exit 0 ;;
  status)
    running && exit 0
    exit 3 ;;
  *) exit 2 ;;
esac
"#;

fn cluster_toml(dir: &std::path::Path, auto_failback: &str, middle: &str, extra: &str) -> String {
    format!(
        r#"[cluster]
name = "failover"
{extra}
keepalive = "200ms"
deadtime = "1s"
warntime = "500ms"
initdead = "3s"
auto_failback = "{auto_failback}"
key_file = "{dir}/authkey"
fencing = "none"

[[node]]
name = "ox1"
[[node]]
name = "ox2"

[[link]]
name = "hb"
type = "ucast"
interface = "eth1"
peers = ["192.168.180.20", "192.168.180.10"]

[[link]]
name = "lan"
type = "bcast"
interface = "eth0"

[[group]]
name = "web"
home = "ox1"

[[group.resource]]
name = "vip"
type = "ipaddr"
address = "{VIP}/24"
interface = "eth0"
monitor_interval = "1s"

{middle}

[[group.resource]]
name = "httpd"
type = "lsb"
script = "{dir}/web"
monitor_interval = "1s"
"#,
        dir = dir.display()
    )
}

const DUMMY: &str = r#"[[group.resource]]
name = "dummy"
type = "ocf"
provider = "heartbeat"
agent = "Dummy"
params = { state = "/run/tandem/dummy.state" }
monitor_interval = "1s""#;

struct Cluster {
    lab: Lab,
    config: PathBuf,
    agents: Vec<(String, HostProcess)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in ["ox1", "ox2"] {
                let log = self.lab.data_dir().join(format!("{node}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                eprintln!("----- {node} agent log -----\n{text}");
            }
        }
    }
}

impl Cluster {
    fn start(auto_failback: &str, middle: &str) -> Cluster {
        Self::start_with(auto_failback, middle, "")
    }

    fn start_with(auto_failback: &str, middle: &str, extra: &str) -> Cluster {
        let lab = Lab::up_auto(Topology::whitepaper()).expect("lab up");
        let dir = lab.data_dir();
        let config = dir.join("cluster.toml");
        std::fs::write(&config, cluster_toml(&dir, auto_failback, middle, extra)).unwrap();
        write_private(&dir.join("authkey"), "failover test key 0123456789\n");
        std::fs::write(dir.join("web"), WEB_SCRIPT).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("web"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let mut c = Cluster {
            lab,
            config,
            agents: Vec::new(),
        };
        c.start_agent("ox1");
        c.start_agent("ox2");
        c
    }

    fn start_agent(&mut self, node: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.lab.data_dir().join(format!("{node}.log")))
            .unwrap();
        let mut cmd = Command::new(TANDEM);
        cmd.arg("-c")
            .arg(&self.config)
            .args(["agent", "--node", node])
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let p = self.lab.spawn(node, cmd).expect("spawn agent");
        self.agents.push((node.to_string(), p));
    }

    /// Stops a node's agent cleanly (SIGTERM) and waits for it to exit.
    fn stop_agent(&mut self, node: &str) {
        let i = self.agents.iter().position(|(n, _)| n == node).unwrap();
        let (_, p) = self.agents.remove(i);
        assert!(p.signal(libc::SIGTERM), "{node}'s agent was not running");
        let status = p.wait_timeout(Duration::from_secs(30)).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "{node}'s agent did not exit cleanly: {status:?}"
        );
    }

    fn tandem(&self, node: &str, args: &[&str]) -> String {
        let mut argv = vec![TANDEM, "-c", self.config.to_str().unwrap()];
        argv.extend_from_slice(args);
        self.lab.run(node, &argv).expect("tandem command")
    }

    fn status(&self, node: &str) -> Option<Value> {
        let config = self.config.to_str().unwrap();
        let out = self
            .lab
            .run(node, &[TANDEM, "-c", config, "status", "--json"])
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    fn group(&self, node: &str) -> Option<Value> {
        self.status(node)?["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == "web")
            .cloned()
    }

    /// Waits until `node` reports the group started with `owner` owning it.
    fn wait_owner(&self, node: &str, owner: &str) {
        wait_for(Duration::from_secs(30), &format!("web on {owner}"), || {
            let g = self.group(node)?;
            (g["owner"] == owner && g["state"] == "started").then_some(())
        });
    }

    fn client_connects(&self) -> bool {
        self.lab
            .run(
                "client",
                &[
                    "python3",
                    "-c",
                    &format!("import socket; socket.create_connection(('{VIP}', 8080), 2)"),
                ],
            )
            .is_ok()
    }

    fn client_neighbour_mac(&self) -> Option<String> {
        self.lab
            .neighbors("client")
            .ok()?
            .into_iter()
            .find(|n| n.address == VIP)
            .and_then(|n| n.mac)
    }

    /// Local resource start actions on `node`, in the order they ran.
    fn starts(&self, node: &str) -> Vec<String> {
        self.status(node)
            .and_then(|s| s["actions"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["action"] == "start" && a["ok"] == true)
            .map(|a| a["resource"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

#[test]
fn group_moves_in_order_to_the_peer_when_its_home_stops_cleanly() {
    if !root_or_skip("failover on clean stop") {
        return;
    }
    let mut c = Cluster::start("off", DUMMY);
    c.wait_owner("ox1", "ox1");
    c.wait_owner("ox2", "ox1");
    assert_eq!(c.starts("ox1"), ["vip", "dummy", "httpd"]);
    assert!(c.client_connects(), "the client reaches the service on ox1");
    let ox1_mac = c.lab.mac("ox1", "lan").unwrap();
    let ox2_mac = c.lab.mac("ox2", "lan").unwrap();
    assert_eq!(c.client_neighbour_mac().as_deref(), Some(ox1_mac.as_str()));

    c.stop_agent("ox1");
    c.wait_owner("ox2", "ox2");
    assert_eq!(
        c.starts("ox2"),
        ["vip", "dummy", "httpd"],
        "started in order"
    );
    // Nothing of the group is left on ox1: its address is gone.
    let addrs = c
        .lab
        .run("ox1", &["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(!addrs.contains(VIP), "ox1 still holds the address: {addrs}");
    // The gratuitous ARP moved the client's neighbour entry to ox2.
    wait_for(
        Duration::from_secs(5),
        "client neighbour entry on ox2's MAC",
        || (c.client_neighbour_mac()? == ox2_mac).then_some(()),
    );
    assert!(c.client_connects(), "the client reaches the service on ox2");
}

#[test]
fn standby_takeover_and_auto_failback() {
    if !root_or_skip("standby and takeover") {
        return;
    }
    let mut c = Cluster::start("on", DUMMY);
    c.wait_owner("ox2", "ox1");

    // hb_standby on ox1: its groups go to ox2.
    c.tandem("ox1", &["standby", "all"]);
    c.wait_owner("ox1", "ox2");
    assert!(c.client_connects());

    // hb_takeover on ox1: they come back.
    c.tandem("ox1", &["takeover", "all"]);
    c.wait_owner("ox2", "ox1");
    assert!(c.client_connects());

    // auto_failback on: when ox1 leaves, ox2 runs the group; when ox1 returns, the
    // group goes back to its home.
    c.stop_agent("ox1");
    c.wait_owner("ox2", "ox2");
    c.start_agent("ox1");
    c.wait_owner("ox2", "ox1");
    assert!(c.client_connects());
}

#[test]
fn a_failing_middle_resource_leaves_nothing_of_the_group_on_that_node() {
    if !root_or_skip("failed start in the middle") {
        return;
    }
    // The middle resource is an OCF agent that does not exist on this machine.
    let broken = r#"[[group.resource]]
name = "broken"
type = "lsb"
script = "/nonexistent/tandem-test-missing-script""#;
    let c = Cluster::start("off", broken);
    wait_for(
        Duration::from_secs(30),
        "the failed start to be handled",
        || {
            let g = c.group("ox1")?;
            let failed = g["resources"]
                .as_array()?
                .iter()
                .any(|r| r["name"] == "broken" && r["failcount"].as_u64() > Some(0));
            let vip = g["resources"]
                .as_array()?
                .iter()
                .find(|r| r["name"] == "vip")?;
            (failed && vip["state"] == "stopped" && vip["peer_state"] != "started").then_some(())
        },
    );
    let addrs = c
        .lab
        .run("ox1", &["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(
        !addrs.contains(VIP),
        "ox1 kept the address of a failed group: {addrs}"
    );
}

#[test]
fn a_killed_service_is_restarted_in_place_and_past_the_threshold_the_group_moves() {
    if !root_or_skip("monitor failures") {
        return;
    }
    let c = Cluster::start("off", DUMMY);
    c.wait_owner("ox2", "ox1");
    let failcount = |c: &Cluster| -> Option<u64> {
        c.group("ox1")?["resources"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == "httpd")?["failcount"]
            .as_u64()
    };
    let kill_service = |c: &Cluster| {
        c.lab
            .run("ox1", &["sh", "-c", "kill -9 $(cat /run/tandem/web.pid)"])
            .expect("kill the service on ox1");
    };
    // Below the migration threshold (3): each kill is detected by the monitor and the
    // service is restarted where it was.
    for n in 1..=2u64 {
        kill_service(&c);
        wait_for(Duration::from_secs(20), "monitor failure counted", || {
            (failcount(&c)? == n).then_some(())
        });
        c.wait_owner("ox1", "ox1");
        assert!(c.client_connects(), "service back on ox1 after kill {n}");
    }
    // The third failure reaches the threshold: the group moves to ox2.
    kill_service(&c);
    c.wait_owner("ox2", "ox2");
    assert!(c.client_connects(), "service reachable on ox2");
    let addrs = c
        .lab
        .run("ox1", &["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(!addrs.contains(VIP), "ox1 kept the address: {addrs}");
}

#[test]
fn the_node_that_loses_outside_connectivity_hands_its_group_over() {
    if !root_or_skip("ping targets") {
        return;
    }
    // The client is the outside world both nodes must reach (Heartbeat's ipfail).
    let mut c = Cluster::start_with("off", DUMMY, "ping = [\"192.168.1.50\"]\ndeadping = \"2s\"");
    c.wait_owner("ox2", "ox1");
    // ox1 loses the lan (and so the client); the hb link keeps the nodes together.
    c.lab.partition("lan", &["ox1"]).unwrap();
    c.wait_owner("ox2", "ox2");
    let ox1 = c.status("ox1").unwrap();
    assert_eq!(ox1["ping"]["ox1"], false, "{ox1}");
    assert!(
        ox1["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "ox2" && n["state"] == "up"),
        "the nodes stayed up over hb"
    );
    assert!(c.client_connects(), "the client reaches the service on ox2");
}

#[test]
fn maintenance_mode_stops_managing_without_stopping_anything() {
    if !root_or_skip("maintenance mode") {
        return;
    }
    let c = Cluster::start("off", DUMMY);
    c.wait_owner("ox2", "ox1");
    // The human status flags the missing fencing.
    let text = c.tandem("ox1", &["status"]);
    assert!(text.contains("FENCING DISABLED"), "{text}");
    assert!(text.contains("web"), "{text}");

    c.tandem("ox1", &["maintenance", "on"]);
    wait_for(Duration::from_secs(5), "maintenance on both nodes", || {
        (c.status("ox2")?["maintenance"] == true).then_some(())
    });
    // Nothing was stopped, and a dead service is left alone.
    assert!(c.client_connects());
    c.lab
        .run("ox1", &["sh", "-c", "kill -9 $(cat /run/tandem/web.pid)"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !c.client_connects(),
        "maintenance mode restarted the service"
    );
    let failures = c.group("ox1").unwrap()["resources"][2]["failcount"].as_u64();
    assert_eq!(failures, Some(0), "no monitor ran in maintenance mode");

    // Managing again: the monitor finds the dead service and restarts it.
    c.tandem("ox1", &["maintenance", "off"]);
    wait_for(Duration::from_secs(20), "service restarted", || {
        c.client_connects().then_some(())
    });
}
