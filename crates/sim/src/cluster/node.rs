//! One simulated node: its cores while it has power, its storage always, and what the
//! daemon's shell would hold for it (actions under way, the disk service's promotion and
//! demotion retries).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tandem_controller::{Controller, Op};
use tandem_disk::core::Core;
use tandem_membership::Membership;
use tandem_policy::ActionId;

use crate::storage::{PendingIo, Storage};

/// A disk action the simulated disk service is carrying out (it retries, as the real
/// one does, until it succeeds or its time is up).
#[derive(Debug, Clone)]
pub struct DiskAction {
    /// The controller's action.
    pub action: Option<ActionId>,
    /// Group and resource.
    pub group: String,
    /// Resource name.
    pub resource: String,
    /// Start (promote), Stop (demote), Restart (demote, then promote).
    pub op: Op,
    /// Demoted already (a restart's first half).
    pub demoted: bool,
    /// Give up then.
    pub deadline: Duration,
    /// The cluster was asked to outdate or fence the peer for it.
    pub asked_fence_peer: bool,
}

/// One node of the simulated cluster.
pub struct SimNode {
    /// `n1`, `n2`.
    pub name: String,
    /// Power.
    pub powered: bool,
    /// Hung (every process stopped, as `tandem lab freeze`).
    pub frozen: bool,
    /// Boots so far (results of an earlier boot are dropped).
    pub boot: u64,
    /// Forward clock skew (jumps).
    pub skew: Duration,
    /// The membership core (while powered).
    pub membership: Option<Membership>,
    /// The controller (while powered).
    pub controller: Option<Controller>,
    /// The replication core of r0 (while powered).
    pub disk: Option<Core>,
    /// Storage for r0 (survives power loss, minus its volatile cache).
    pub storage: Storage,
    /// I/O the disk core asked for, not yet completed.
    pub ios: Vec<(u64, PendingIo)>,
    /// The resources the world sees running here (agents' truth, disks excluded).
    pub running: BTreeSet<String>,
    /// A disk action under way.
    pub disk_action: Option<DiskAction>,
    /// Outdates asked by the peer, waiting for their metadata: (request, ticket).
    pub outdates: Vec<(u64, u64)>,
    /// A handshake completed since this boot (the startup wait is over).
    pub handshaked: bool,
    /// The disk ran degraded when the node booted: its startup wait ends (the degraded
    /// wait, `degr_wfc_timeout`, is taken as over); otherwise it waits for its peer for
    /// ever (`wfc_timeout = "0"`), as the daemon does — decided at boot, as there.
    pub degraded_at_boot: bool,
    /// The replication connection this side believes in.
    pub conn: Option<u64>,
    /// The disk core's role at the last check (a promotion is checked when it changes).
    pub was_primary: bool,
    /// The last disk tick.
    pub last_disk_tick: Duration,
    /// The disk's (connection, disk state, peer disk state) at the last check, for the trace.
    pub disk_seen: String,
    /// A clean stop was asked; the node powers off (caches flushed) at its `Exit`.
    pub stopping: bool,
}

impl SimNode {
    /// A node that has never been powered on.
    pub fn new(name: &str, storage: Storage) -> SimNode {
        SimNode {
            name: name.to_string(),
            powered: false,
            frozen: false,
            boot: 0,
            skew: Duration::ZERO,
            membership: None,
            controller: None,
            disk: None,
            storage,
            ios: Vec::new(),
            running: BTreeSet::new(),
            disk_action: None,
            outdates: Vec::new(),
            handshaked: false,
            degraded_at_boot: false,
            conn: None,
            was_primary: false,
            last_disk_tick: Duration::ZERO,
            disk_seen: String::new(),
            stopping: false,
        }
    }

    /// Whether its processes run now.
    pub fn alive(&self) -> bool {
        self.powered && !self.frozen
    }

    /// The node's local clock at global time `now`.
    pub fn local(&self, base: Instant, now: Duration) -> Instant {
        base + now + self.skew
    }

    /// Loses power: every process dies, the cache forgets what it likes.
    pub fn power_off(&mut self, rng: &mut tandem_rng::Rng) {
        if !self.powered {
            return;
        }
        self.powered = false;
        self.frozen = false;
        self.membership = None;
        self.controller = None;
        self.disk = None;
        let pending = std::mem::take(&mut self.ios)
            .into_iter()
            .map(|(_, io)| io)
            .collect();
        self.storage.crash(pending, rng);
        self.running.clear();
        self.disk_action = None;
        self.outdates.clear();
        self.conn = None;
        self.was_primary = false;
        self.stopping = false;
    }

    /// A clean stop completed: caches are flushed (the OS syncs at shutdown).
    pub fn stop_cleanly(&mut self, rng: &mut tandem_rng::Rng) {
        let pending: Vec<(u64, PendingIo)> = std::mem::take(&mut self.ios);
        for (_, io) in pending {
            let _ = self.storage.complete(io);
        }
        self.storage.disk.flush();
        self.power_off(rng);
    }
}
