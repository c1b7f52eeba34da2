//! The replicated-disk lab: two `tandem daemon`s in lab hosts ox1 and ox2 replicate disks
//! over the `hb` network (192.168.180.20 ↔ .10); clients write through the NBD socket each
//! agent serves (`/run/tandem/disk/r0.nbd` inside the host), with qemu-io and nbdcopy.
//! Backing files live in the lab's data directory, one per host.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tandem_config::FencingPolicy;
use tandem_lab::{HostProcess, Lab, Topology};

use super::labconfig::{self, LabConfig};
use super::{TANDEM, wait_for, write_private};

pub const SOCK: &str = "/run/tandem/disk/r0.nbd";
pub const URI: &str = "nbd+unix:///r0?socket=/run/tandem/disk/r0.nbd";
pub const MIB: u64 = 1 << 20;

/// A change to a disk lab's configuration (a disk's keys, a group).
pub type Edit = fn(&mut LabConfig);

/// No change.
pub fn as_is(_: &mut LabConfig) {}

/// A node's configuration: membership over `hb`, no fencing, the disk `r0` (protocol C;
/// `disk_extra` applied after it) and, with `r1`, a second disk `r1` (`r1` applied after
/// it); the key file is `DIR/key`.
pub fn lab_config(lab: &Lab, key: &str, disk_extra: Edit, r1: Option<Edit>) -> LabConfig {
    let dir = lab.data_dir();
    let mut c = LabConfig::disks_only("disklab", lab.name(), &dir, key);
    for (disk, port, edit) in [("r0", 7788, Some(disk_extra)), ("r1", 7789, r1)] {
        let Some(edit) = edit else { continue };
        let backing = ["ox1", "ox2"].map(|node| dir.join(format!("{node}-{disk}.img")));
        c.disk(disk, port, backing);
        edit(&mut c);
    }
    c
}

pub struct Cluster {
    pub lab: Lab,
    pub configs: [PathBuf; 2],
    /// What the configuration files hold, by node.
    settings: [LabConfig; 2],
    pub daemons: Vec<(String, HostProcess)>,
    pub size_bytes: u64,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        super::print_agent_logs_on_panic(&self.lab, 60);
    }
}

pub fn idx(node: &str) -> usize {
    if node == "ox1" { 0 } else { 1 }
}

impl Cluster {
    /// A lab with backing files of `backing_mib` MiB and metadata created on both nodes;
    /// `same_key = false` gives the nodes different key files.
    pub fn new(backing_mib: u64, disk_extra: Edit, same_key: bool) -> Cluster {
        Self::with_r1(backing_mib, disk_extra, same_key, None)
    }

    /// As `new`, with a second disk `r1` (`r1` applied after it) when given.
    pub fn with_r1(
        backing_mib: u64,
        disk_extra: Edit,
        same_key: bool,
        r1: Option<Edit>,
    ) -> Cluster {
        let lab = Lab::up_auto(Topology::whitepaper()).expect("lab up");
        let dir = lab.data_dir();
        write_private(&dir.join("authkey"), "disk lab key 0123456789abcdef\n");
        write_private(&dir.join("otherkey"), "another key entirely 987654321\n");
        let key2 = if same_key { "authkey" } else { "otherkey" };
        let settings = [
            lab_config(&lab, "authkey", disk_extra, r1),
            lab_config(&lab, key2, disk_extra, r1),
        ];
        for node in ["ox1", "ox2"] {
            for disk in ["r0", "r1"] {
                let f = std::fs::File::create(dir.join(format!("{node}-{disk}.img"))).unwrap();
                f.set_len(backing_mib * MIB).unwrap();
            }
        }
        let size_bytes = tandem_disk::meta::Layout::internal(backing_mib * MIB)
            .unwrap()
            .size_bytes;
        let c = Cluster {
            lab,
            configs: [dir.join("ox1.toml"), dir.join("ox2.toml")],
            settings,
            daemons: Vec::new(),
            size_bytes,
        };
        c.write_configs();
        for node in ["ox1", "ox2"] {
            let out = c.tandem(node, &["disk", "create-md", "r0", "--node", node]);
            assert!(out.contains("metadata written"), "{out}");
            if r1.is_some() {
                c.tandem(node, &["disk", "create-md", "r1", "--node", node]);
            }
        }
        c
    }

    pub fn start_daemon(&mut self, node: &str) {
        let p = super::spawn_agent(&self.lab, &self.configs[idx(node)], node);
        self.daemons.push((node.to_string(), p));
        wait_for(Duration::from_secs(20), "the disk to come up", || {
            self.status(node).filter(|s| s["up"] == true)
        });
    }

    pub fn tandem_result(&self, node: &str, args: &[&str]) -> Result<String, String> {
        let mut argv = vec![TANDEM, "-c", self.configs[idx(node)].to_str().unwrap()];
        argv.extend_from_slice(args);
        self.lab.run(node, &argv).map_err(|e| e.to_string())
    }

    pub fn tandem(&self, node: &str, args: &[&str]) -> String {
        self.tandem_result(node, args)
            .unwrap_or_else(|e| panic!("tandem {args:?} on {node}: {e}"))
    }

    pub fn status(&self, node: &str) -> Option<Value> {
        self.disk_status(node, "r0")
    }

    pub fn disk_status(&self, node: &str, disk: &str) -> Option<Value> {
        let out = self
            .tandem_result(node, &["disk", "status", "--json", disk])
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    pub fn wait_state(
        &self,
        node: &str,
        what: &str,
        timeout_s: u64,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let last = std::cell::RefCell::new(None);
        let guard = PrintOnPanic(&last);
        let v = wait_for(
            Duration::from_secs(timeout_s),
            &format!("{node}: {what}"),
            || {
                let s = self.status(node);
                *last.borrow_mut() = s.clone();
                s.filter(|s| f(s))
            },
        );
        drop(guard);
        v
    }

    /// Both connected, in sync, up to date.
    pub fn wait_in_sync(&self, timeout_s: u64) {
        for node in ["ox1", "ox2"] {
            self.wait_state(node, "connected and in sync", timeout_s, |s| {
                s["connection"] == "connected"
                    && s["disk_state"] == "up_to_date"
                    && s["peer_disk_state"] == "up_to_date"
                    && s["out_of_sync_bytes"] == 0
            });
        }
    }

    /// Both agents up and connected, ox1 primary after the initial full sync.
    pub fn start_primary_ox1(&mut self) {
        self.start_daemon("ox1");
        self.start_daemon("ox2");
        for node in ["ox1", "ox2"] {
            self.wait_state(node, "connected", 30, |s| s["connection"] == "connected");
        }
        self.tandem("ox1", &["disk", "primary", "--force", "r0"]);
        self.wait_in_sync(120);
    }

    pub fn qemu_io(&self, node: &str, cmd: &str) -> String {
        self.lab
            .run(node, &["qemu-io", "-f", "raw", "-c", cmd, URI])
            .unwrap_or_else(|e| panic!("qemu-io {cmd} on {node}: {e}"))
    }

    pub fn qemu_io_result(&self, node: &str, cmd: &str) -> Result<String, String> {
        self.lab
            .run(node, &["qemu-io", "-f", "raw", "-c", cmd, URI])
            .map_err(|e| e.to_string())
    }

    pub fn data(&self, node: &str) -> Vec<u8> {
        let path = self.lab.data_dir().join(format!("{node}-r0.img"));
        let mut b = std::fs::read(path).unwrap();
        b.truncate(self.size_bytes as usize);
        b
    }

    pub fn assert_identical(&self) {
        let a = self.data("ox1");
        let b = self.data("ox2");
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        assert!(
            first.is_none(),
            "backing files differ first at byte {first:?} (data area {} bytes)",
            self.size_bytes
        );
    }
}

/// Which networks carry heartbeats (the replication link always runs over `hb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeats {
    /// Only `hb`: cutting it looks like a dead peer.
    Hb,
    /// `hb` and `lan`, as the whitepaper advises: cutting `hb` leaves the peer heard.
    HbAndLan,
}

/// Prints the last status seen when a wait times out.
pub struct PrintOnPanic<'a>(&'a std::cell::RefCell<Option<Value>>);

impl Drop for PrintOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("last status: {:?}", self.0.borrow());
        }
    }
}

pub fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The group `data` (home ox1) that holds the disk r0.
pub fn disk_group(c: &mut LabConfig) {
    c.group("data", "ox1", vec![labconfig::disk_resource("r0", "r0")]);
}

impl Cluster {
    /// Two agents with the lab's power switch as fence device (`fencing_delay` 1 s) and
    /// the group `data` (home ox1) holding r0, forced primary and in sync on ox1.
    pub fn fenced_with_disk_group(disk_extra: Edit) -> (Cluster, tandem_lab::PowerSwitch) {
        Self::fenced_with_disk_group_on(disk_extra, Heartbeats::Hb, Duration::from_secs(1))
    }

    /// As [`Cluster::fenced_with_disk_group`], with heartbeats on `heartbeats` and the
    /// given `fencing_delay`.
    pub fn fenced_with_disk_group_on(
        disk_extra: Edit,
        heartbeats: Heartbeats,
        fencing_delay: Duration,
    ) -> (Cluster, tandem_lab::PowerSwitch) {
        Self::fenced_with_group(
            24,
            disk_extra,
            heartbeats,
            fencing_delay,
            |_| {},
            disk_group,
        )
    }

    /// Two agents with the lab's power switch as fence device and `group` (the group
    /// `data`, home ox1) added to both configurations. Before that, the disk
    /// (`backing_mib`) is bootstrapped outside any group: forced primary on ox1, in
    /// sync, and `bootstrap` run while it is (e.g. `mkfs` on its local device); then
    /// demoted and the cluster restarted with the group, which ox1 starts.
    pub fn fenced_with_group(
        backing_mib: u64,
        disk_extra: Edit,
        heartbeats: Heartbeats,
        fencing_delay: Duration,
        bootstrap: impl FnOnce(&Cluster),
        group: impl Fn(&mut LabConfig),
    ) -> (Cluster, tandem_lab::PowerSwitch) {
        let mut c = Cluster::new(backing_mib, disk_extra, true);
        let switch = c.lab.power_switch().expect("lab power switch");
        let lan = match heartbeats {
            Heartbeats::Hb => None,
            Heartbeats::HbAndLan => {
                Some(["ox1", "ox2"].map(|node| IpAddr::V4(c.lab.address(node, "lan").unwrap())))
            }
        };
        c.configure(|config| {
            config
                .fencing(FencingPolicy::Required)
                .cluster_mut()
                .fencing_delay = fencing_delay;
            config.lab_switch();
            if let Some(peers) = lan {
                config.ucast_link("lan", "eth0", peers);
            }
        });
        // Fresh disks: bootstrapped outside any group as the whitepaper's §4.3 does it (the
        // operator forces one side, once, and waits for the full sync); then the
        // cluster restarts with the group, which promotes the disk by itself.
        c.start_daemon("ox1");
        c.start_daemon("ox2");
        c.wait_state("ox1", "connected", 30, |s| s["connection"] == "connected");
        c.tandem("ox1", &["disk", "primary", "--force", "r0"]);
        c.wait_in_sync(60);
        bootstrap(&c);
        c.tandem("ox1", &["disk", "secondary", "r0"]);
        c.stop_daemon("ox2");
        c.stop_daemon("ox1");
        c.configure(group);
        c.start_daemon("ox1");
        c.start_daemon("ox2");
        c.wait_state("ox1", "the group running", 60, |s| s["role"] == "primary");
        c.wait_in_sync(60);
        c.wait_group_on("ox1", "ox1", 30);
        (c, switch)
    }

    /// Waits until `node` sees the group `data` started on `owner`.
    pub fn wait_group_on(&self, node: &str, owner: &str, timeout_s: u64) {
        wait_for(
            Duration::from_secs(timeout_s),
            &format!("group data started on {owner}, as {node} sees it"),
            || {
                let st: Value =
                    serde_json::from_str(&self.tandem_result(node, &["status", "--json"]).ok()?)
                        .ok()?;
                (st["groups"][0]["state"] == "started" && st["groups"][0]["owner"] == owner)
                    .then_some(())
            },
        );
    }

    /// SIGTERM to `node`'s agent; waits for it to exit.
    pub fn stop_daemon(&mut self, node: &str) {
        let i = self.daemons.iter().position(|(n, _)| n == node).unwrap();
        let (_, p) = self.daemons.remove(i);
        assert!(p.signal(libc::SIGTERM));
        let status = p.wait_timeout(Duration::from_secs(30)).unwrap();
        assert!(status.is_some(), "{node}'s agent did not stop within 30 s");
    }

    /// Changes both nodes' configurations with `edit` and writes them again (agents
    /// read them when they start).
    pub fn configure(&mut self, edit: impl Fn(&mut LabConfig)) {
        for settings in &mut self.settings {
            edit(settings);
        }
        self.write_configs();
    }

    fn write_configs(&self) {
        for (path, settings) in self.configs.iter().zip(&self.settings) {
            std::fs::write(path, settings.render()).unwrap();
        }
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.lab.data_dir().join(format!("{node}.log"))).unwrap()
    }
}
