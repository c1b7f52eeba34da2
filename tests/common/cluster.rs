//! A two-node cluster in the whitepaper's lab for the resource and fencing tests: a group
//! of a service address (built-in ipaddr), a middle resource (Debian's
//! `ocf:heartbeat:Dummy` by default) and an LSB init script that serves TCP, which the
//! client host reaches through the address.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tandem_config::{AutoFailback, FencingPolicy, Resource};
use tandem_lab::{HostProcess, Lab, PowerSwitch, Topology};

use super::labconfig::{self, LabConfig};
use super::{TANDEM, wait_for, write_private};

pub const VIP: &str = "192.168.1.100";

/// An LSB init script: a TCP service on port 8080 with a pid file in the host's own /run.
pub const WEB_SCRIPT: &str = r#"#!/bin/sh
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

/// What differs between the clusters the tests build.
#[derive(Clone)]
pub struct Opts {
    /// `auto_failback`.
    pub auto_failback: AutoFailback,
    /// `fencing`: `none` or `required` (then `edit` adds a device, e.g.
    /// [`LabConfig::lab_switch`]).
    pub fencing: FencingPolicy,
    /// A witness host `quorum` (lan 192.168.1.30, hb 192.168.180.30) running
    /// `tandem witness`, and `[witness]` in the configuration.
    pub witness: bool,
    /// Changes to the configuration after the rest: fence devices, `[metrics]`,
    /// `[[notify]]`, more `[cluster]` or `[[group]]` keys, another middle resource
    /// ([`middle`]).
    pub edit: Arc<dyn Fn(&mut LabConfig) + Send + Sync>,
}

pub use super::labconfig::WITNESS;

impl Default for Opts {
    fn default() -> Self {
        Opts {
            auto_failback: AutoFailback::Off,
            fencing: FencingPolicy::None,
            witness: false,
            edit: Arc::new(|_| {}),
        }
    }
}

/// The group `web` (home ox1): the service address, a middle resource (Debian's
/// `ocf:heartbeat:Dummy`), and the LSB script [`WEB_SCRIPT`] at `DIR/web`.
fn lab_config(lab: &Lab, o: &Opts) -> LabConfig {
    let dir = lab.data_dir();
    let mut c = LabConfig::new("failover", lab.name(), &dir, "authkey");
    c.timing(
        Duration::from_millis(200),
        Duration::from_secs(1),
        Duration::from_millis(500),
        Duration::from_secs(3),
    )
    .fencing(o.fencing)
    .hb_link()
    .lan_bcast()
    .cluster_mut()
    .auto_failback = o.auto_failback;
    if o.witness {
        c.witness();
    }
    let web = dir.join("web");
    c.group(
        "web",
        "ox1",
        vec![
            labconfig::ipaddr("vip", VIP.parse().unwrap(), 24, "eth0"),
            labconfig::ocf(
                "dummy",
                "heartbeat",
                "Dummy",
                &[("state", "/run/tandem/dummy.state")],
            ),
            labconfig::lsb("httpd", web.to_str().unwrap()),
        ],
    );
    (o.edit)(&mut c);
    c
}

/// Puts `resource` in the middle of the group `web`, in place of the Dummy.
pub fn middle(c: &mut LabConfig, resource: Resource) {
    c.group_mut("web").resources[1] = resource;
}

/// Two agents in the whitepaper's lab, with the lab's power switch running in this
/// process (so that fencing from inside a host works, and reaps what it kills).
pub struct Cluster {
    // Fields drop in order: the switch stops before the lab is torn down.
    _switch: PowerSwitch,
    /// The lab (ox1, ox2, client).
    pub lab: Lab,
    /// The configuration file.
    pub config: PathBuf,
    daemons: Vec<(String, HostProcess)>,
    witness: Option<HostProcess>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        super::print_agent_logs_on_panic(&self.lab, 200);
    }
}

impl Cluster {
    /// Builds the lab, writes the configuration and starts both daemons.
    pub fn start(opts: Opts) -> Cluster {
        Self::start_with_files(opts, &[])
    }

    /// As [`Cluster::start`], with extra executable files in the lab's data directory
    /// ([`LabConfig::dir`] in the configuration; `{tandem}` in a file is the tandem
    /// binary).
    pub fn start_with_files(opts: Opts, files: &[(&str, &str)]) -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let mut topology = Topology::whitepaper();
        if opts.witness {
            labconfig::add_witness_host(&mut topology);
        }
        let lab = Lab::up_auto(topology).expect("lab up");
        let switch = lab.power_switch().expect("lab power switch");
        let dir = lab.data_dir();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text.replace("{tandem}", TANDEM)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = dir.join("cluster.toml");
        std::fs::write(&config, lab_config(&lab, &opts).render()).unwrap();
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
            daemons: Vec::new(),
            witness: None,
            _switch: switch,
        };
        if opts.witness {
            c.start_witness();
        }
        c.start_daemon("ox1");
        c.start_daemon("ox2");
        c
    }

    /// Starts `tandem witness` in the witness host.
    pub fn start_witness(&mut self) {
        self.witness = Some(super::spawn_tandem(
            &self.lab,
            &self.config,
            WITNESS,
            "witness",
        ));
    }

    /// Kills the witness (SIGKILL, as a crash or a power loss would) and waits for it.
    pub fn kill_witness(&mut self) {
        let p = self.witness.take().expect("the witness runs");
        p.signal(libc::SIGKILL);
        let _ = p.wait_timeout(Duration::from_secs(10));
    }

    pub fn start_daemon(&mut self, node: &str) {
        let p = super::spawn_agent(&self.lab, &self.config, node);
        self.daemons.push((node.to_string(), p));
    }

    /// Starts a node's agent again after its host was powered off and on.
    pub fn restart_agent(&mut self, node: &str) {
        self.daemons.retain(|(n, _)| n != node);
        self.start_daemon(node);
    }

    /// Stops a node's agent cleanly (SIGTERM) and waits for it to exit.
    pub fn stop_daemon(&mut self, node: &str) {
        let i = self.daemons.iter().position(|(n, _)| n == node).unwrap();
        let (_, p) = self.daemons.remove(i);
        assert!(p.signal(libc::SIGTERM), "{node}'s agent was not running");
        let status = p.wait_timeout(Duration::from_secs(30)).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "{node}'s agent did not exit cleanly: {status:?}"
        );
    }

    pub fn tandem(&self, node: &str, args: &[&str]) -> String {
        let mut argv = vec![TANDEM, "-c", self.config.to_str().unwrap()];
        argv.extend_from_slice(args);
        self.lab.run(node, &argv).expect("tandem command")
    }

    /// Runs a `tandem` command that must fail: its exit status and stderr.
    pub fn tandem_refused(&self, node: &str, args: &[&str]) -> String {
        let mut argv = vec![TANDEM, "-c", self.config.to_str().unwrap()];
        argv.extend_from_slice(args);
        match self.lab.run(node, &argv) {
            Ok(out) => panic!("`tandem {}` on {node} succeeded: {out}", args.join(" ")),
            Err(e) => e.to_string(),
        }
    }

    pub fn status(&self, node: &str) -> Option<Value> {
        let config = self.config.to_str().unwrap();
        let out = self
            .lab
            .run(node, &[TANDEM, "-c", config, "status", "--json"])
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    pub fn group(&self, node: &str) -> Option<Value> {
        self.status(node)?["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == "web")
            .cloned()
    }

    /// Waits until `node` reports the group started with `owner` owning it.
    pub fn wait_owner(&self, node: &str, owner: &str) {
        wait_for(Duration::from_secs(30), &format!("web on {owner}"), || {
            let g = self.group(node)?;
            (g["owner"] == owner && g["state"] == "started").then_some(())
        });
    }

    pub fn client_connects(&self) -> bool {
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

    pub fn client_neighbour_mac(&self) -> Option<String> {
        self.lab
            .neighbors("client")
            .ok()?
            .into_iter()
            .find(|n| n.address == VIP)
            .and_then(|n| n.mac)
    }

    /// Local resource start actions on `node`, in the order they ran.
    pub fn starts(&self, node: &str) -> Vec<String> {
        self.status(node)
            .and_then(|s| s["actions"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["action"] == "start" && a["ok"] == true)
            .map(|a| a["resource"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// Samples both nodes every 50 ms: counts the samples in which both held the address.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    both: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(lab_name: &str) -> Sampler {
        let lab = tandem_lab::Lab::open(lab_name).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let both = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, b, n) = (Arc::clone(&stop), Arc::clone(&both), Arc::clone(&samples));
        let thread = std::thread::spawn(move || {
            let holds = |host: &str| {
                lab.is_powered(host).unwrap_or(false)
                    && lab
                        .addresses(host)
                        .map(|a| a.iter().any(|(_, addr)| addr == VIP))
                        .unwrap_or(false)
            };
            while !s.load(Ordering::Relaxed) {
                if holds("ox1") && holds("ox2") {
                    b.fetch_add(1, Ordering::Relaxed);
                }
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            stop,
            both,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops sampling; panics if both nodes ever held the address.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let both = self.both.load(Ordering::Relaxed);
        assert_eq!(both, 0, "both nodes held {VIP} in {both} samples");
        self.samples.load(Ordering::Relaxed)
    }
}
