//! A tandem cluster inside a lab: the whitepaper's hosts, a configuration written into
//! the lab's data directory, agents started in their hosts, and status read back. Used
//! by `tandem bench` and the demo; the integration tests build the same thing in
//! their own words so that they check the product rather than share its helpers.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tandem_lab::{HostProcess, Lab, Topology};

/// Membership timing of a lab cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeat interval.
    pub keepalive: Duration,
    /// Silence before a node is declared dead.
    pub deadtime: Duration,
}

/// The witness host of a lab cluster built with one (lan .30, hb .30).
pub const WITNESS: &str = "quorum";

/// A lab with a tandem configuration for ox1 and ox2 (links `hb` ucast on eth1 and
/// `lan` bcast on eth0), and optionally a witness host running `tandem witness`.
pub struct LabCluster {
    /// The lab.
    pub lab: Lab,
    /// The configuration file, inside the lab's data directory.
    pub config: PathBuf,
    tandem: PathBuf,
    /// The agents (and the witness) started and not stopped since, by host.
    agents: Vec<(String, HostProcess)>,
    /// Whether the lab has the [`WITNESS`] host and the configuration a `[witness]`.
    witness: bool,
}

impl LabCluster {
    /// Builds the whitepaper's lab and writes the configuration (membership only).
    pub fn up(timing: Timing) -> anyhow::Result<Self> {
        Self::up_with(timing, "none", "")
    }

    /// As [`LabCluster::up`], with `fencing` (`none` or `required`) and more tables
    /// appended to the configuration; `{dir}` in them is the lab's data directory and
    /// `{lab}` the lab's name.
    pub fn up_with(timing: Timing, fencing: &str, tables: &str) -> anyhow::Result<Self> {
        Self::up_with_lab(timing, fencing, |_| Ok(tables.to_string()))
    }

    /// As [`LabCluster::up_with`], with the tables made from the lab once it is up
    /// (paths that only exist then, such as a host's lossy disk).
    pub fn up_with_lab(
        timing: Timing,
        fencing: &str,
        tables: impl FnOnce(&Lab) -> anyhow::Result<String>,
    ) -> anyhow::Result<Self> {
        Self::build(timing, fencing, false, tables)
    }

    /// As [`LabCluster::up_with_lab`], with a third host [`WITNESS`] on both networks
    /// and `[witness]` in the configuration ([`LabCluster::start_witness`] runs it).
    pub fn up_with_witness(
        timing: Timing,
        fencing: &str,
        tables: impl FnOnce(&Lab) -> anyhow::Result<String>,
    ) -> anyhow::Result<Self> {
        Self::build(timing, fencing, true, tables)
    }

    /// As [`LabCluster::up_with_lab`], ox1 and ox2 each with `private_dirs` of their
    /// own besides tandem's (`/run` first: a fresh tmpfs at every power-on).
    pub fn up_with_private_dirs(
        timing: Timing,
        fencing: &str,
        private_dirs: &[&str],
        tables: impl FnOnce(&Lab) -> anyhow::Result<String>,
    ) -> anyhow::Result<Self> {
        let mut topology = Topology::whitepaper();
        for h in topology
            .hosts
            .iter_mut()
            .filter(|h| h.name.starts_with("ox"))
        {
            let mut dirs: Vec<String> = private_dirs.iter().map(|d| d.to_string()).collect();
            dirs.sort_by_key(|d| d != "/run");
            dirs.splice(
                1.min(dirs.len())..1.min(dirs.len()),
                h.private_dirs.drain(..),
            );
            h.private_dirs = dirs;
        }
        Self::build_from(topology, timing, fencing, false, tables)
    }

    fn build(
        timing: Timing,
        fencing: &str,
        witness: bool,
        tables: impl FnOnce(&Lab) -> anyhow::Result<String>,
    ) -> anyhow::Result<Self> {
        Self::build_from(Topology::whitepaper(), timing, fencing, witness, tables)
    }

    fn build_from(
        mut topology: Topology,
        timing: Timing,
        fencing: &str,
        witness: bool,
        tables: impl FnOnce(&Lab) -> anyhow::Result<String>,
    ) -> anyhow::Result<Self> {
        let (witness_peer, witness_table) = if witness {
            topology.hosts.push(tandem_lab::HostSpec::new(WITNESS));
            for net in &mut topology.nets {
                let [a, b, c] = if net.name == "lan" {
                    [192, 168, 1]
                } else {
                    [192, 168, 180]
                };
                net.hosts
                    .insert(WITNESS.to_string(), std::net::Ipv4Addr::new(a, b, c, 30));
            }
            (
                r#", "192.168.180.30""#.to_string(),
                format!("[witness]\nname = \"{WITNESS}\"\n"),
            )
        } else {
            (String::new(), String::new())
        };
        let lab = Lab::up_auto(topology).context("build the lab")?;
        let tables = tables(&lab)?;
        let dir = lab.data_dir();
        let config = dir.join("cluster.toml");
        let ms = |d: Duration| d.as_millis();
        std::fs::write(
            &config,
            format!(
                r#"[cluster]
name = "lab"
keepalive = "{keepalive}ms"
deadtime = "{deadtime}ms"
warntime = "{warntime}ms"
initdead = "{initdead}ms"
key_file = "{dir}/authkey"
fencing = "{fencing}"

[[node]]
name = "ox1"
address = "192.168.180.20"

[[node]]
name = "ox2"
address = "192.168.180.10"

[[link]]
name = "hb"
type = "ucast"
interface = "eth1"
peers = ["192.168.180.20", "192.168.180.10"{witness_peer}]

[[link]]
name = "lan"
type = "bcast"
interface = "eth0"

{witness_table}
{tables}
"#,
                keepalive = ms(timing.keepalive),
                deadtime = ms(timing.deadtime),
                warntime = ms(timing.deadtime / 2).max(ms(timing.keepalive)),
                initdead = ms(timing.deadtime * 2),
                dir = dir.display(),
                tables = tables
                    .replace("{dir}", &dir.display().to_string())
                    .replace("{lab}", lab.name()),
            ),
        )?;
        write_private(
            &dir.join("authkey"),
            "lab cluster key, not for production\n",
        )?;
        Ok(Self {
            lab,
            config,
            tandem: std::env::current_exe().context("find the tandem binary")?,
            agents: Vec::new(),
            witness,
        })
    }

    /// The tandem binary the lab's hosts run.
    pub fn tandem_binary(&self) -> &std::path::Path {
        &self.tandem
    }

    /// Appends `text` to the configuration (agents read it when they start).
    pub fn append_config(&self, text: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .with_context(|| format!("open {}", self.config.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Sets `key = value` (`value` already in TOML syntax) in the configuration's
    /// `[cluster]` table, replacing an earlier setting of the key; agents read it when
    /// they start.
    pub fn set_cluster_key(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("read {}", self.config.display()))?;
        let prefix = format!("{key} = ");
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with(&prefix)).collect();
        let text = kept
            .join("\n")
            .replacen("[cluster]", &format!("[cluster]\n{key} = {value}"), 1);
        std::fs::write(&self.config, text + "\n")
            .with_context(|| format!("write {}", self.config.display()))
    }

    /// Runs `tandem -c CONFIG ARGS…` in `node`; its stdout, or an error with stderr.
    pub fn tandem(&self, node: &str, args: &[&str]) -> anyhow::Result<String> {
        let tandem = self.tandem.to_str().context("tandem binary path")?;
        let config = self.config.to_str().context("configuration path")?;
        let mut argv = vec![tandem, "-c", config];
        argv.extend_from_slice(args);
        self.lab
            .run(node, &argv)
            .with_context(|| format!("tandem {} on {node}", args.join(" ")))
    }

    /// Starts `tandem agent` in `node`, logging to `NODE.log` in the data directory.
    /// The agent gets a process group of its own: a Ctrl-C at the terminal reaches
    /// the command that built the lab (which tears it down), not the agents.
    pub fn start_agent(&mut self, node: &str, extra: &[&str]) -> anyhow::Result<()> {
        self.start_daemon(node, "agent", extra)
    }

    /// Whether this cluster has a witness.
    pub fn has_witness(&self) -> bool {
        self.witness
    }

    /// Starts `tandem witness` in the [`WITNESS`] host (logging to `quorum.log`).
    pub fn start_witness(&mut self) -> anyhow::Result<()> {
        self.start_daemon(WITNESS, "witness", &[])
    }

    fn start_daemon(&mut self, node: &str, daemon: &str, extra: &[&str]) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt as _;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.lab.data_dir().join(format!("{node}.log")))?;
        let mut cmd = Command::new(&self.tandem);
        cmd.arg("-c")
            .arg(&self.config)
            .args([daemon, "--node", node])
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let agent = self.lab.spawn(node, cmd)?;
        self.agents.push((node.to_string(), agent));
        Ok(())
    }

    /// Stops `node`'s agent cleanly (SIGTERM: groups stopped, disks demoted, goodbye)
    /// and waits for it to exit.
    pub fn stop_agent(&mut self, node: &str) -> anyhow::Result<()> {
        let i = self
            .agents
            .iter()
            .position(|(n, _)| n == node)
            .with_context(|| format!("no agent of {node} to stop"))?;
        let (_, agent) = self.agents.remove(i);
        agent.signal(libc::SIGTERM);
        match agent.wait_timeout(Duration::from_secs(60))? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("{node}'s agent exited with {status} when stopped"),
            None => bail!("{node}'s agent did not stop within 60 s"),
        }
    }

    /// Takes the lab down (every host process killed, mounts, loop devices, namespaces
    /// and files removed); the problems its teardown reported, if any.
    pub fn down(self) -> anyhow::Result<Vec<String>> {
        let report = self.lab.down().context("take the lab down")?;
        Ok(report.problems)
    }

    /// Sends `signal` to `node`'s agent (SIGKILL: the daemon dies at once, holding
    /// its resources); the agent stays listed until [`LabCluster::forget_agent`].
    pub fn signal_agent(&self, node: &str, signal: i32) -> anyhow::Result<()> {
        let (_, agent) = self
            .agents
            .iter()
            .find(|(n, _)| n == node)
            .with_context(|| format!("no agent of {node} is running"))?;
        if !agent.signal(signal) {
            bail!("{node}'s agent had already exited");
        }
        Ok(())
    }

    /// Whether `node`'s agent was started and has not exited (a fence's power-off or a
    /// kill ends it; [`LabCluster::start_agent`] starts a new one).
    pub fn agent_running(&self, node: &str) -> bool {
        self.agents
            .iter()
            .any(|(n, a)| n == node && matches!(a.try_wait(), Ok(None)))
    }

    /// The PID (in the machine's namespace) of `node`'s running agent.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents
            .iter()
            .find(|(n, a)| n == node && matches!(a.try_wait(), Ok(None)))
            .map(|(_, a)| a.pid())
    }

    /// Forgets `node`'s agent (its host lost power: the process is gone).
    pub fn forget_agent(&mut self, node: &str) {
        self.agents.retain(|(n, _)| n != node);
    }

    /// `tandem status --json` as seen in `node`, if its agent answers.
    pub fn status(&self, node: &str) -> Option<Value> {
        let tandem = self.tandem.to_str()?;
        let config = self.config.to_str()?;
        let out = self
            .lab
            .run(node, &[tandem, "-c", config, "status", "--json"])
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    /// `peer`'s state (`up`, `dead`, `unknown`) as `node` sees it.
    pub fn peer_state(&self, node: &str, peer: &str) -> Option<String> {
        self.status(node)?["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == peer)?["state"]
            .as_str()
            .map(str::to_owned)
    }

    /// The events of one kind in `node`'s history.
    pub fn events(&self, node: &str, kind: &str) -> Vec<Value> {
        self.status(node)
            .and_then(|s| s["events"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// Waits until `node` sees `peer` in `state`.
    pub fn wait_peer_state(
        &self,
        node: &str,
        peer: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = crate::clock::now() + timeout;
        while crate::clock::now() < deadline {
            if self.peer_state(node, peer).as_deref() == Some(state) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{node} did not see {peer} {state} within {timeout:?}")
    }
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
