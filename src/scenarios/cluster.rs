//! The data-demo cluster the scenarios and chaos rounds run on, and the faults they
//! inject into it.
//!
//! ```text
//!  client ──lan── VIP ── ox1 / ox2      group ox: r0 → ext4 → records → VIP
//!  ox1 ══hb══ ox2   heartbeats on hb and lan; r0's replication on hb
//! ```
//!
//! Built exactly as `tandem demo` builds it (src/demo/setup.rs: the §4.3 bootstrap,
//! the group, the lab's power switch as fence device), with a shorter fencing delay;
//! the demo's client writes numbered records through the VIP from the start to the end
//! of the run, and a [`Sampler`] counts the moments two nodes serve. Faults name a
//! node; [`DataCluster::restore`] undoes every fault (heals, thaws, powers on, starts
//! daemons) and [`DataCluster::wait_healthy`] waits for the cluster to be whole again.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::sampler::{Sampler, is_service};
use crate::demo::client::Client;
use crate::demo::interrupt;
use crate::demo::service::{Kind, Service};
use crate::demo::setup::{self, GROUP};
use crate::labcluster::{LabCluster, Timing};
use crate::labconfig::LabConfig;

/// The two cluster nodes.
pub const NODES: [&str; 2] = ["ox1", "ox2"];

/// The other node.
pub fn peer(node: &str) -> &'static str {
    if node == "ox1" { "ox2" } else { "ox1" }
}

/// Membership timing of the scenario cluster: the demo's.
pub const TIMING: Timing = Timing {
    keepalive: Duration::from_millis(200),
    deadtime: Duration::from_millis(1000),
};

/// How long the node without groups waits before fencing in a partition: long enough
/// for the holder's fence (the lab switch answers in milliseconds) to win the race.
const FENCING_DELAY: Duration = Duration::from_secs(1);

/// How long a recovery may take before the cluster counts as broken: detection,
/// fencing, a promotion, a journal replay, a resync of the changes, on a busy machine.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether `e` says a host's init died under the lab (a concurrent power-off).
fn host_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<tandem_lab::LabError>(),
            Some(tandem_lab::LabError::Boot(_) | tandem_lab::LabError::PoweredOff(_))
        )
    })
}

/// The cluster, its client and its dual-active watch.
pub struct DataCluster {
    /// The lab cluster (lab, configuration, daemons).
    pub cluster: LabCluster,
    /// The client writing through the VIP.
    pub client: Client,
    /// The dual-active watch.
    pub sampler: Sampler,
    service: Service,
    mount: String,
    /// The lab's power switch (the fence device); `None` while unplugged.
    switch: Option<tandem_lab::PowerSwitch>,
}

impl DataCluster {
    /// Builds the lab, bootstraps r0, starts the cluster with the group on ox1 and the
    /// client, and waits for its first acknowledged records.
    pub fn build() -> anyhow::Result<Self> {
        let cluster = LabCluster::up_with_lab(TIMING, "required", setup::disk_tables)?;
        Self::bootstrap(cluster).context("bootstrap the data cluster")
    }

    fn bootstrap(mut cluster: LabCluster) -> anyhow::Result<Self> {
        cluster.configure(|c| c.cluster_mut().fencing_delay = FENCING_DELAY)?;
        let switch = cluster
            .lab
            .power_switch()
            .context("start the lab's power switch")?;
        let service = Service::new(Kind::Records)?;
        setup::create_backing(&cluster, service.disk_mib())?;
        setup::bootstrap(&mut cluster, &service)?;
        let mount = setup::mount_point(&cluster);
        let client = Client::start(&cluster, &service)?;
        interrupt::wait(Duration::from_secs(30), "the client's first writes", || {
            Ok(client.acked_count() >= 20)
        })?;
        let sampler = Sampler::start(&cluster)?;
        Ok(DataCluster {
            cluster,
            client,
            sampler,
            service,
            mount,
            switch: Some(switch),
        })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        self.cluster.lab.name()
    }

    /// Where the file system is mounted on the node that runs the group.
    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// The group's owner as `node` sees it, once started there; an error when the
    /// group failed.
    pub fn owner_seen_by(&self, node: &str) -> anyhow::Result<Option<String>> {
        setup::owner(&self.cluster, node)
    }

    /// The node running the group, as both daemons agree (or the only one that
    /// answers), waiting up to `timeout` for it.
    pub fn active(&self, timeout: Duration) -> anyhow::Result<String> {
        let mut found = None;
        interrupt::wait(timeout, &format!("group {GROUP} started"), || {
            let seen: Vec<Option<String>> = NODES
                .iter()
                .filter(|n| self.cluster.daemon_running(n))
                .map(|n| self.owner_seen_by(n))
                .collect::<anyhow::Result<_>>()?;
            found = match seen.as_slice() {
                [Some(a)] => Some(a.clone()),
                [Some(a), Some(b)] if a == b => Some(a.clone()),
                _ => None,
            };
            Ok(found.is_some())
        })?;
        found.context("no owner")
    }

    /// Waits until every running daemon sees the group started on `owner`.
    pub fn wait_owner(&self, owner: &str, timeout: Duration) -> anyhow::Result<()> {
        let mut last = Vec::new();
        interrupt::wait(
            timeout,
            &format!("group {GROUP} started on {owner}"),
            || {
                last = NODES
                    .iter()
                    .filter(|n| self.cluster.daemon_running(n))
                    .map(|n| self.owner_seen_by(n))
                    .collect::<anyhow::Result<_>>()?;
                Ok(!last.is_empty() && last.iter().all(|o| o.as_deref() == Some(owner)))
            },
        )
        .with_context(|| format!("owner as the running daemons see it: {last:?}"))
    }

    /// `tandem disk status --json r0` on `node`.
    pub fn disk(&self, node: &str) -> Option<Value> {
        setup::disk_status(&self.cluster, node)
    }

    /// PIDs of the records service on `node`.
    pub fn service_pids(&self, node: &str) -> Vec<u32> {
        self.cluster
            .lab
            .processes(node)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| is_service(*p))
            .collect()
    }

    // ------------------------------------------------------------ faults

    /// Cuts `node`'s power (its lossy disk drops what was not flushed).
    pub fn power_off(&mut self, node: &str) -> anyhow::Result<()> {
        self.cluster
            .lab
            .power_off(node)
            .with_context(|| format!("power off {node}"))?;
        self.cluster.forget_daemon(node);
        Ok(())
    }

    /// Powers `node` on and starts its daemon.
    pub fn boot(&mut self, node: &str) -> anyhow::Result<()> {
        self.cluster
            .lab
            .power_on(node)
            .with_context(|| format!("power on {node}"))?;
        self.cluster.forget_daemon(node);
        self.cluster.start_daemon(node, &[])
    }

    /// SIGKILLs `node`'s daemon (its resources keep running, unmanaged).
    pub fn kill_daemon(&mut self, node: &str) -> anyhow::Result<()> {
        self.cluster.signal_daemon(node, libc::SIGKILL)
    }

    /// Freezes every process of `node`.
    pub fn freeze(&mut self, node: &str) -> anyhow::Result<()> {
        Ok(self.cluster.lab.freeze(node)?)
    }

    /// Thaws `node` if it is still frozen (a fence powers a frozen node off).
    pub fn thaw(&mut self, node: &str) -> anyhow::Result<()> {
        if self.cluster.lab.is_powered(node)? && self.cluster.lab.is_frozen(node)? {
            self.cluster.lab.thaw(node)?;
        }
        Ok(())
    }

    /// Cuts network `net` between `hosts` and the rest (all of it when empty).
    pub fn cut(&mut self, net: &str, hosts: &[&str]) -> anyhow::Result<()> {
        Ok(self.cluster.lab.partition(net, hosts)?)
    }

    /// Unplugs the lab's power switch: every fence through it fails (the fence agent finds
    /// no switch to talk to) until [`DataCluster::plug_switch`].
    pub fn unplug_switch(&mut self) {
        self.switch = None;
    }

    /// Plugs the lab's power switch back in.
    pub fn plug_switch(&mut self) -> anyhow::Result<()> {
        if self.switch.is_none() {
            self.switch = Some(
                self.cluster
                    .lab
                    .power_switch()
                    .context("start the lab's power switch")?,
            );
        }
        Ok(())
    }

    /// Stops both daemons cleanly (the group stops, nobody is fenced), changes the
    /// configuration with `edit`, starts both daemons at once and waits for the cluster
    /// to be whole. The owner. Operator requests end with the restarts.
    pub fn reconfigure(&mut self, edit: impl FnOnce(&mut LabConfig)) -> anyhow::Result<String> {
        let a = self.active(RECOVERY_TIMEOUT)?;
        self.cluster.stop_daemon(peer(&a))?;
        self.cluster.stop_daemon(&a)?;
        self.cluster
            .configure(edit)
            .context("change the configuration")?;
        for n in NODES {
            self.cluster.start_daemon(n, &[])?;
        }
        self.wait_healthy(RECOVERY_TIMEOUT)
            .context("the cluster whole with the new configuration")
    }

    /// Undoes every fault: partitions healed, frozen nodes thawed, nodes powered on,
    /// and a daemon started wherever none runs.
    pub fn restore(&mut self) -> anyhow::Result<()> {
        self.plug_switch()?;
        if !self.cluster.lab.partitions().is_empty() {
            self.cluster.lab.heal(None, &[])?;
        }
        for node in NODES {
            self.thaw(node)?;
            if !self.cluster.lab.is_powered(node)? {
                self.boot(node)?;
            } else if !self.cluster.daemon_running(node) {
                self.cluster.forget_daemon(node);
                self.cluster.start_daemon(node, &[])?;
            }
        }
        Ok(())
    }

    /// Undoes every fault and waits for the cluster to be whole, undoing again what
    /// happens meanwhile: a node thawed or healed before its peer's fence lands is
    /// powered off after the first undo, and must be powered on again. The owner.
    pub fn recover(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = crate::clock::now() + timeout;
        loop {
            if let Err(e) = self.restore() {
                if interrupt::interrupted() || crate::clock::now() >= deadline || !host_gone(&e) {
                    return Err(e);
                }
                // A fence through the lab's switch powered the node off while this undo
                // powered it on or started its daemon (chaos seed 2026, round 25: "its
                // init is gone; power-cycle it"): power-cycle it, as the error says.
                for node in NODES {
                    if self.cluster.lab.is_powered(node)? && !self.cluster.daemon_running(node) {
                        let _ = self.power_off(node);
                    }
                }
                interrupt::sleep(Duration::from_millis(200))?;
                continue;
            }
            match self.wait_healthy(Duration::from_secs(2)) {
                Ok(owner) => return Ok(owner),
                Err(e) if interrupt::interrupted() || crate::clock::now() >= deadline => {
                    return Err(e);
                }
                Err(_) => {}
            }
        }
    }

    /// Waits until the cluster is whole: both daemons answer and agree on the group's
    /// owner, r0 is connected with both copies up to date and nothing out of sync.
    /// The owner.
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<String> {
        let mut last = String::new();
        let mut owner = None;
        let waited = interrupt::wait(timeout, "the cluster whole again", || {
            let seen: Vec<Option<String>> = NODES
                .iter()
                .map(|n| self.owner_seen_by(n))
                .collect::<anyhow::Result<_>>()?;
            let disks: Vec<Option<Value>> = NODES.iter().map(|n| self.disk(n)).collect();
            let in_sync = disks.iter().all(|d| {
                d.as_ref().is_some_and(|s| {
                    s["connection"] == "connected"
                        && s["disk_state"] == "up_to_date"
                        && s["peer_disk_state"] == "up_to_date"
                        && s["out_of_sync_bytes"] == 0
                })
            });
            last = format!(
                "owner as ox1/ox2 see it: {:?}/{:?}; r0: {}",
                seen[0],
                seen[1],
                disks
                    .iter()
                    .zip(NODES)
                    .map(|(d, n)| match d {
                        Some(s) => format!(
                            "{n} {} {} {}/{} oos {}",
                            s["role"],
                            s["connection"],
                            s["disk_state"],
                            s["peer_disk_state"],
                            s["out_of_sync_bytes"]
                        ),
                        None => format!("{n} no answer"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            owner = match (&seen[0], &seen[1]) {
                (Some(a), Some(b)) if a == b && in_sync => Some(a.clone()),
                _ => None,
            };
            Ok(owner.is_some())
        });
        waited.with_context(|| format!("last seen: {last}"))?;
        owner.context("no owner")
    }

    /// The records the client saw acknowledged, and those of them missing from the
    /// records file on `owner`.
    pub fn lost_records(&self, owner: &str) -> anyhow::Result<(usize, Vec<u64>)> {
        // Acknowledged before the file is read: each of them is in it.
        let acked: BTreeSet<u64> = self.client.acks().iter().map(|o| o.record).collect();
        let (stored, unreadable) = self.service.stored(&self.cluster, owner, &self.mount)?;
        if unreadable > 0 {
            bail!("{unreadable} lines of the records file on {owner} are not records");
        }
        Ok((acked.len(), acked.difference(&stored).copied().collect()))
    }

    /// The longest time the client went without an acknowledgement since `t0_ms`
    /// (wall ms; counted from its last acknowledgement before), up to its latest one.
    pub fn outage_since(&self, t0_ms: u64) -> u64 {
        let acks: Vec<u64> = self.client.acks().iter().map(|o| o.at_ms).collect();
        let start = acks
            .iter()
            .rev()
            .find(|t| **t <= t0_ms)
            .copied()
            .unwrap_or(t0_ms);
        let mut prev = start;
        let mut longest = 0;
        for t in acks.into_iter().filter(|t| *t > start) {
            longest = longest.max(t - prev);
            prev = t;
        }
        longest
    }

    /// Takes the lab down; the problems its teardown reported, if any.
    pub fn down(self) -> anyhow::Result<Vec<String>> {
        let DataCluster {
            cluster,
            mut client,
            sampler,
            ..
        } = self;
        drop(sampler);
        client.stop()?;
        cluster.down()
    }
}
