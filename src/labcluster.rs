//! A tandem cluster inside a lab: the whitepaper's hosts, a configuration written into
//! the lab's data directory (built by [`crate::labconfig`] and rendered by the config
//! crate's emitter), daemons started in their hosts, and status read back. Used by
//! `tandem bench`, the scenarios and the demo; the integration tests build their
//! configurations with the same [`LabConfig`].

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tandem_config::FencingPolicy;
use tandem_lab::{HostProcess, Lab, Topology};

use crate::labconfig::LabConfig;

/// Membership timing of a lab cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeat interval.
    pub keepalive: Duration,
    /// Silence before a node is declared dead.
    pub deadtime: Duration,
}

pub use crate::labconfig::WITNESS;

/// A lab with a tandem configuration for ox1 and ox2 (links `hb` ucast on eth1 and
/// `lan` bcast on eth0), and optionally a witness host running `tandem witness`. The
/// configuration is a [`LabConfig`], rendered by the config crate's emitter each time
/// it changes.
pub struct LabCluster {
    /// The lab.
    pub lab: Lab,
    /// The configuration file, inside the lab's data directory.
    pub config: PathBuf,
    /// What the configuration file holds.
    settings: LabConfig,
    tandem: PathBuf,
    /// The daemons (and the witness) started and not stopped since, by host.
    daemons: Vec<(String, HostProcess)>,
    /// Whether the lab has the [`WITNESS`] host and the configuration a `[witness]`.
    witness: bool,
}

impl LabCluster {
    /// Builds the whitepaper's lab and writes the configuration (membership only).
    pub fn up(timing: Timing) -> anyhow::Result<Self> {
        Self::up_with(timing, "none", |_| {})
    }

    /// As [`LabCluster::up`], with `fencing` (`none` or `required`) and `edit` applied
    /// to the configuration.
    pub fn up_with(
        timing: Timing,
        fencing: &str,
        edit: impl FnOnce(&mut LabConfig),
    ) -> anyhow::Result<Self> {
        Self::up_with_lab(timing, fencing, |_, c| {
            edit(c);
            Ok(())
        })
    }

    /// As [`LabCluster::up_with`], with the lab at hand once it is up (paths that only
    /// exist then, such as a host's lossy disk).
    pub fn up_with_lab(
        timing: Timing,
        fencing: &str,
        edit: impl FnOnce(&Lab, &mut LabConfig) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::build(timing, fencing, false, edit)
    }

    /// As [`LabCluster::up_with_lab`], with a third host [`WITNESS`] on both networks
    /// and `[witness]` in the configuration ([`LabCluster::start_witness`] runs it).
    pub fn up_with_witness(
        timing: Timing,
        fencing: &str,
        edit: impl FnOnce(&Lab, &mut LabConfig) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::build(timing, fencing, true, edit)
    }

    /// As [`LabCluster::up_with_lab`] (or [`LabCluster::up_with_witness`] when
    /// `witness`), ox1 and ox2 each with `private_dirs` of their own besides tandem's
    /// (`/run` first: a fresh tmpfs at every power-on).
    pub fn up_with_private_dirs(
        timing: Timing,
        fencing: &str,
        private_dirs: &[&str],
        witness: bool,
        edit: impl FnOnce(&Lab, &mut LabConfig) -> anyhow::Result<()>,
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
        Self::build_from(topology, timing, fencing, witness, edit)
    }

    fn build(
        timing: Timing,
        fencing: &str,
        witness: bool,
        edit: impl FnOnce(&Lab, &mut LabConfig) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::build_from(Topology::whitepaper(), timing, fencing, witness, edit)
    }

    fn build_from(
        mut topology: Topology,
        timing: Timing,
        fencing: &str,
        witness: bool,
        edit: impl FnOnce(&Lab, &mut LabConfig) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let fencing = match fencing {
            "none" => FencingPolicy::None,
            "required" => FencingPolicy::Required,
            other => bail!("fencing {other:?}: a lab cluster takes none or required"),
        };
        if witness {
            crate::labconfig::add_witness_host(&mut topology);
        }
        let lab = Lab::up_auto(topology).context("build the lab")?;
        let dir = lab.data_dir();
        let mut settings = LabConfig::new("lab", lab.name(), &dir, "authkey");
        settings
            .timing(
                timing.keepalive,
                timing.deadtime,
                (timing.deadtime / 2).max(timing.keepalive),
                timing.deadtime * 2,
            )
            .fencing(fencing)
            .node_addresses()
            .hb_link()
            .lan_bcast();
        if witness {
            settings.witness();
        }
        edit(&lab, &mut settings)?;
        write_private(
            &dir.join("authkey"),
            "lab cluster key, not for production\n",
        )?;
        let cluster = Self {
            config: dir.join("cluster.toml"),
            lab,
            settings,
            tandem: std::env::current_exe().context("find the tandem binary")?,
            daemons: Vec::new(),
            witness,
        };
        cluster.write_config()?;
        Ok(cluster)
    }

    /// The tandem binary the lab's hosts run.
    pub fn tandem_binary(&self) -> &std::path::Path {
        &self.tandem
    }

    /// Changes the configuration with `edit` and writes it again (daemons read it when
    /// they start).
    pub fn configure(&mut self, edit: impl FnOnce(&mut LabConfig)) -> anyhow::Result<()> {
        edit(&mut self.settings);
        self.write_config()
    }

    fn write_config(&self) -> anyhow::Result<()> {
        std::fs::write(&self.config, self.settings.render())
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

    /// Starts `tandem daemon` in `node`, logging to `NODE.log` in the data directory.
    /// The daemon gets a process group of its own: a Ctrl-C at the terminal reaches
    /// the command that built the lab (which tears it down), not the daemons.
    pub fn start_daemon(&mut self, node: &str, extra: &[&str]) -> anyhow::Result<()> {
        self.spawn_daemon(node, "daemon", extra)
    }

    /// Whether this cluster has a witness.
    pub fn has_witness(&self) -> bool {
        self.witness
    }

    /// Starts `tandem witness` in the [`WITNESS`] host (logging to `quorum.log`).
    pub fn start_witness(&mut self) -> anyhow::Result<()> {
        self.spawn_daemon(WITNESS, "witness", &[])
    }

    fn spawn_daemon(&mut self, node: &str, daemon: &str, extra: &[&str]) -> anyhow::Result<()> {
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
        let daemon = self.lab.spawn(node, cmd)?;
        self.daemons.push((node.to_string(), daemon));
        Ok(())
    }

    /// Stops `node`'s daemon cleanly (SIGTERM: groups stopped, disks demoted, goodbye)
    /// and waits for it to exit.
    pub fn stop_daemon(&mut self, node: &str) -> anyhow::Result<()> {
        let i = self
            .daemons
            .iter()
            .position(|(n, _)| n == node)
            .with_context(|| format!("no daemon of {node} to stop"))?;
        let (_, daemon) = self.daemons.remove(i);
        daemon.signal(libc::SIGTERM);
        match daemon.wait_timeout(Duration::from_secs(60))? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("{node}'s daemon exited with {status} when stopped"),
            None => bail!("{node}'s daemon did not stop within 60 s"),
        }
    }

    /// Takes the lab down (every host process killed, mounts, loop devices, namespaces
    /// and files removed); the problems its teardown reported, if any.
    pub fn down(self) -> anyhow::Result<Vec<String>> {
        let report = self.lab.down().context("take the lab down")?;
        Ok(report.problems)
    }

    /// Sends `signal` to `node`'s daemon (SIGKILL: the daemon dies at once, holding
    /// its resources); the daemon stays listed until [`LabCluster::forget_daemon`].
    pub fn signal_daemon(&self, node: &str, signal: i32) -> anyhow::Result<()> {
        let (_, daemon) = self
            .daemons
            .iter()
            .find(|(n, _)| n == node)
            .with_context(|| format!("no daemon of {node} is running"))?;
        if !daemon.signal(signal) {
            bail!("{node}'s daemon had already exited");
        }
        Ok(())
    }

    /// Whether `node`'s daemon was started and has not exited (a fence's power-off or a
    /// kill ends it; [`LabCluster::start_daemon`] starts a new one).
    pub fn daemon_running(&self, node: &str) -> bool {
        self.daemons
            .iter()
            .any(|(n, a)| n == node && matches!(a.try_wait(), Ok(None)))
    }

    /// The PID (in the machine's namespace) of `node`'s running daemon.
    pub fn daemon_pid(&self, node: &str) -> Option<u32> {
        self.daemons
            .iter()
            .find(|(n, a)| n == node && matches!(a.try_wait(), Ok(None)))
            .map(|(_, a)| a.pid())
    }

    /// Forgets `node`'s daemon (its host lost power: the process is gone).
    pub fn forget_daemon(&mut self, node: &str) {
        self.daemons.retain(|(n, _)| n != node);
    }

    /// `tandem status --json` as seen in `node`, if its daemon answers.
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
