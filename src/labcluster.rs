//! A tandem cluster inside a lab: the whitepaper's hosts, a configuration written into
//! the lab's data directory, agents started in their hosts, and status read back. Used
//! by `tandem bench` and the demo; the integration tests build the same thing in
//! their own words so that they check the product rather than share its helpers.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tandem_lab::{Lab, Topology};

/// Membership timing of a lab cluster.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Heartbeat interval.
    pub keepalive: Duration,
    /// Silence before a node is declared dead.
    pub deadtime: Duration,
}

/// A lab with a tandem configuration for ox1 and ox2 (links `hb` ucast on eth1 and
/// `lan` bcast on eth0).
pub struct LabCluster {
    /// The lab.
    pub lab: Lab,
    /// The configuration file, inside the lab's data directory.
    pub config: PathBuf,
    tandem: PathBuf,
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
        let lab = Lab::up_auto(Topology::whitepaper()).context("build the lab")?;
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
peers = ["192.168.180.20", "192.168.180.10"]

[[link]]
name = "lan"
type = "bcast"
interface = "eth0"

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
        })
    }

    /// Starts `tandem agent` in `node`, logging to `NODE.log` in the data directory.
    pub fn start_agent(&self, node: &str, extra: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.lab.data_dir().join(format!("{node}.log")))?;
        let mut cmd = Command::new(&self.tandem);
        cmd.arg("-c")
            .arg(&self.config)
            .args(["agent", "--node", node])
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log);
        self.lab.spawn(node, cmd)?;
        Ok(())
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
