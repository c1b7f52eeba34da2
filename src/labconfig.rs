//! The configuration of a cluster in the whitepaper's lab, built as the config crate's
//! model ([`tandem_config::Config`]) and written by its emitter, so every lab cluster
//! (the demo, the benchmarks, the scenarios, the integration tests) loads a file that
//! the product itself renders — never TOML written by hand.
//!
//! ```text
//!  LabConfig::new(name, key) ─► timing, links, witness, fence device, disks, groups,
//!                                metrics, notify (typed; `edit` for anything else)
//!        └─► config(): the model, with the loader's context defaults resolved
//!              └─► render(): tandem_config::to_toml — what the daemons read
//! ```
//!
//! The integration tests include this file as a module of their own (`tests/common`),
//! so it depends on nothing of the binary.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_config::defaults;
use tandem_config::{
    AutoFailback, Cluster, Config, Disk, DiskFencing, DiskHost, FenceAgent, FenceDevice,
    FencingPolicy, Group, Link, LinkKind, Log, Meta, Metrics, Node, Notify, Resource, ResourceKind,
    Witness,
};
use tandem_lab::{HostSpec, Topology};

/// The nodes of every lab cluster, in configuration order.
pub const NODES: [&str; 2] = ["ox1", "ox2"];
/// The nodes' addresses on `hb` (the replication and heartbeat network).
pub const HB: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 180, 20),
    Ipv4Addr::new(192, 168, 180, 10),
];
/// The witness host of a lab cluster built with one.
pub const WITNESS: &str = "quorum";
/// The witness's address on `hb`.
pub const WITNESS_HB: Ipv4Addr = Ipv4Addr::new(192, 168, 180, 30);
/// The witness's address on `lan`.
pub const WITNESS_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 30);
/// The lab's power switch as a fence device.
pub const LAB_SWITCH: &str = "lab-switch";

/// Adds the [`WITNESS`] host to `topology`, on both networks.
pub fn add_witness_host(topology: &mut Topology) {
    topology.hosts.push(HostSpec::new(WITNESS));
    for net in &mut topology.nets {
        let address = if net.name == "lan" {
            WITNESS_LAN
        } else {
            WITNESS_HB
        };
        net.hosts.insert(WITNESS.to_string(), address);
    }
}

/// `[witness]` for the [`WITNESS`] host (tie wait one deadtime, vote retry two
/// keepalives), and its address among the peers of each ucast link on one of its
/// networks: what a configuration needs for a lab built with [`add_witness_host`] —
/// the lab cluster's own, or one imported from Heartbeat's files.
pub fn add_witness(config: &mut Config) {
    let c = &config.cluster;
    config.witness = Some(Witness {
        name: WITNESS.into(),
        tie_wait: c.deadtime,
        vote_retry: (c.keepalive * 2).max(Duration::from_millis(100)),
        state_file: c.state_dir.join("witness-grant.json"),
    });
    for link in &mut config.links {
        let LinkKind::Ucast { peers, .. } = &mut link.kind else {
            continue;
        };
        let same_net = |a: &IpAddr, w: Ipv4Addr| matches!(a, IpAddr::V4(a) if a.octets()[..3] == w.octets()[..3]);
        for w in [WITNESS_HB, WITNESS_LAN] {
            if peers.iter().any(|p| same_net(p, w)) && !peers.contains(&IpAddr::V4(w)) {
                peers.push(IpAddr::V4(w));
            }
        }
    }
}

/// A lab cluster's configuration under construction.
#[derive(Debug, Clone)]
pub struct LabConfig {
    config: Config,
    /// Disks whose `fencing` was chosen; the others get the loader's default for where
    /// they stand (in a group or not, in a cluster that fences or not) when rendered.
    fencing_chosen: BTreeSet<String>,
    /// Whether [`add_witness`] applies.
    with_witness: bool,
    dir: PathBuf,
    lab: String,
}

impl LabConfig {
    /// Cluster `name` of ox1 and ox2 for the lab `lab` whose data directory is `dir`
    /// (the key file is `dir/key_file`): no link yet, fencing `none`, the loader's
    /// defaults elsewhere.
    pub fn new(name: &str, lab: &str, dir: &Path, key_file: &str) -> LabConfig {
        let cluster = Cluster {
            name: name.to_string(),
            keepalive: defaults::KEEPALIVE,
            deadtime: defaults::DEADTIME,
            warntime: defaults::WARNTIME,
            initdead: defaults::INITDEAD,
            auto_failback: AutoFailback::Off,
            udp_port: defaults::UDP_PORT,
            key_file: dir.join(key_file),
            fencing: FencingPolicy::None,
            state_dir: PathBuf::from(defaults::STATE_DIR),
            control_socket: PathBuf::from(defaults::CONTROL_SOCKET),
            ping: Vec::new(),
            ping_groups: Vec::new(),
            deadping: defaults::DEADPING,
            fencing_delay: defaults::FENCING_DELAY,
            nbd_group: None,
        };
        LabConfig {
            config: Config {
                cluster,
                log: Log::default(),
                nodes: NODES
                    .iter()
                    .map(|n| Node {
                        name: n.to_string(),
                        address: None,
                    })
                    .collect(),
                links: Vec::new(),
                fence_devices: Vec::new(),
                disks: Vec::new(),
                groups: Vec::new(),
                witness: None,
                metrics: Metrics::default(),
                notify: Vec::new(),
            },
            fencing_chosen: BTreeSet::new(),
            with_witness: false,
            dir: dir.to_path_buf(),
            lab: lab.to_string(),
        }
    }

    /// A cluster for replicated disks alone, as the disk labs run it: keepalive 200 ms,
    /// deadtime 2 s, membership over `hb` only, no fencing, no group yet.
    pub fn disks_only(name: &str, lab: &str, dir: &Path, key_file: &str) -> LabConfig {
        let mut c = LabConfig::new(name, lab, dir, key_file);
        c.timing(
            Duration::from_millis(200),
            Duration::from_secs(2),
            Duration::from_secs(1),
            Duration::from_secs(4),
        )
        .hb_link();
        c
    }

    /// The lab's data directory (where scripts and backing files of tests live).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lab's name (the lab switch's address).
    pub fn lab(&self) -> &str {
        &self.lab
    }

    /// Heartbeat timing.
    pub fn timing(
        &mut self,
        keepalive: Duration,
        deadtime: Duration,
        warntime: Duration,
        initdead: Duration,
    ) -> &mut Self {
        let c = &mut self.config.cluster;
        (c.keepalive, c.deadtime, c.warntime, c.initdead) =
            (keepalive, deadtime, warntime, initdead);
        self
    }

    /// `fencing` for the cluster (`required` needs a device: [`LabConfig::lab_switch`]).
    pub fn fencing(&mut self, fencing: FencingPolicy) -> &mut Self {
        self.config.cluster.fencing = fencing;
        self
    }

    /// Each node's `address`: its `hb` address.
    pub fn node_addresses(&mut self) -> &mut Self {
        for (n, a) in self.config.nodes.iter_mut().zip(HB) {
            n.address = Some(IpAddr::V4(a));
        }
        self
    }

    /// The link `hb`: ucast on eth1 between the nodes' `hb` addresses (and the
    /// witness's, with one).
    pub fn hb_link(&mut self) -> &mut Self {
        self.ucast_link("hb", "eth1", HB.map(IpAddr::V4))
    }

    /// The link `lan`: bcast on eth0.
    pub fn lan_bcast(&mut self) -> &mut Self {
        self.config.links.push(Link {
            name: "lan".into(),
            kind: LinkKind::Bcast {
                interface: "eth0".into(),
                port: defaults::UDP_PORT,
            },
        });
        self
    }

    /// A ucast link `name` on `interface` between `peers`.
    pub fn ucast_link(&mut self, name: &str, interface: &str, peers: [IpAddr; 2]) -> &mut Self {
        self.config.links.push(Link {
            name: name.into(),
            kind: LinkKind::Ucast {
                interface: interface.into(),
                peers: peers.to_vec(),
                port: defaults::UDP_PORT,
            },
        });
        self
    }

    /// With the [`WITNESS`] ([`add_witness`], applied when rendered, so that the
    /// links and timing set before or after count).
    pub fn witness(&mut self) -> &mut Self {
        self.with_witness = true;
        self
    }

    /// The lab's power switch as the fence device [`LAB_SWITCH`] (`tandem lab
    /// fence-agent`, installed as `fence_tandem_lab`), 20 s timeout.
    pub fn lab_switch(&mut self) -> &mut Self {
        let lab = self.lab.clone();
        self.fence_device(
            LAB_SWITCH,
            FenceAgent::FenceAgents("fence_tandem_lab".into()),
        )
        .params
        .insert("ipaddr".into(), lab);
        self
    }

    /// A fence device `name` running `agent`, 20 s timeout, for editing.
    pub fn fence_device(&mut self, name: &str, agent: FenceAgent) -> &mut FenceDevice {
        self.config.fence_devices.push(FenceDevice {
            name: name.into(),
            agent,
            params: BTreeMap::new(),
            plugs: BTreeMap::new(),
            run_on: Vec::new(),
            level: defaults::FENCE_LEVEL,
            timeout: Duration::from_secs(20),
        });
        self.config.fence_devices.last_mut().expect("just pushed")
    }

    /// A disk `name` (protocol C, the loader's defaults) replicated between the nodes'
    /// `hb` addresses on `port`, published at `/dev/tandem/NAME`, with each node's
    /// backing store; for editing.
    pub fn disk(&mut self, name: &str, port: u16, backing: [PathBuf; 2]) -> &mut Disk {
        let hosts = NODES
            .iter()
            .zip(HB)
            .zip(backing)
            .map(|((node, address), backing)| DiskHost {
                node: node.to_string(),
                device: PathBuf::from(format!("/dev/tandem/{name}")),
                backing,
                address: SocketAddr::new(IpAddr::V4(address), port),
                meta: Meta::Internal,
            })
            .collect();
        self.config.disks.push(Disk {
            name: name.into(),
            protocol: tandem_config::Protocol::C,
            rate_bytes_per_s: None,
            resync_group: defaults::RESYNC_GROUP,
            al_extents: defaults::AL_EXTENTS,
            on_io_error: tandem_config::OnIoError::Detach,
            wfc_timeout: None,
            degr_wfc_timeout: Some(defaults::DEGR_WFC_TIMEOUT),
            net_timeout: defaults::NET_TIMEOUT,
            connect_interval: defaults::CONNECT_INTERVAL,
            ping_interval: defaults::PING_INTERVAL,
            after_sb_0pri: tandem_config::AfterSb0Pri::Disconnect,
            after_sb_1pri: tandem_config::AfterSb1Pri::Disconnect,
            after_sb_2pri: tandem_config::AfterSb2Pri::Disconnect,
            fencing: DiskFencing::ResourceOnly,
            hosts,
        });
        self.config.disks.last_mut().expect("just pushed")
    }

    /// Chooses disk `name`'s `fencing` (otherwise the loader's default applies).
    pub fn disk_fencing(&mut self, name: &str, fencing: DiskFencing) -> &mut Self {
        self.disk_mut(name).fencing = fencing;
        self.fencing_chosen.insert(name.to_string());
        self
    }

    /// A group `name` with its `home` and `resources` (the loader's defaults).
    pub fn group(&mut self, name: &str, home: &str, resources: Vec<Resource>) -> &mut Group {
        self.config.groups.push(Group {
            name: name.into(),
            home: home.into(),
            migration_threshold: defaults::MIGRATION_THRESHOLD,
            failure_timeout: defaults::FAILURE_TIMEOUT,
            resources,
        });
        self.config.groups.last_mut().expect("just pushed")
    }

    /// `[metrics]` listening on `listen`.
    pub fn metrics(&mut self, listen: SocketAddr) -> &mut Self {
        self.config.metrics.listen = Some(listen);
        self
    }

    /// A `[[notify]]` command for `events` (empty: all), 5 s timeout.
    pub fn notify(&mut self, name: &str, command: PathBuf, args: &[String], events: &[&str]) {
        self.config.notify.push(Notify {
            name: name.into(),
            command,
            args: args.to_vec(),
            events: events.iter().map(|e| e.to_string()).collect(),
            disks: Vec::new(),
            timeout: Duration::from_secs(5),
        });
    }

    /// `[cluster]`, for editing.
    pub fn cluster_mut(&mut self) -> &mut Cluster {
        &mut self.config.cluster
    }

    /// Disk `name`, for editing.
    ///
    /// # Panics
    /// When there is no such disk (a mistake of the lab's own code).
    pub fn disk_mut(&mut self, name: &str) -> &mut Disk {
        self.config
            .disks
            .iter_mut()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("the lab configuration has no disk {name}"))
    }

    /// Group `name`, for editing.
    ///
    /// # Panics
    /// When there is no such group.
    pub fn group_mut(&mut self, name: &str) -> &mut Group {
        self.config
            .groups
            .iter_mut()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("the lab configuration has no group {name}"))
    }

    /// Fence device `name`, for editing.
    ///
    /// # Panics
    /// When there is no such device.
    pub fn fence_device_mut(&mut self, name: &str) -> &mut FenceDevice {
        self.config
            .fence_devices
            .iter_mut()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("the lab configuration has no fence device {name}"))
    }

    /// The model, as the loader would read it back: the witness on `hb`, and each
    /// disk whose fencing was not chosen given the loader's default.
    pub fn config(&self) -> Config {
        let mut c = self.config.clone();
        if self.with_witness {
            add_witness(&mut c);
        }
        let in_group: BTreeSet<String> = c
            .groups
            .iter()
            .flat_map(|g| &g.resources)
            .filter_map(|r| match &r.kind {
                ResourceKind::Disk { disk } => Some(disk.clone()),
                _ => None,
            })
            .collect();
        for disk in &mut c.disks {
            if !self.fencing_chosen.contains(&disk.name) {
                disk.fencing =
                    DiskFencing::default_for(in_group.contains(&disk.name), c.cluster.fencing);
            }
        }
        c
    }

    /// The configuration file's text, by the config crate's emitter.
    pub fn render(&self) -> String {
        tandem_config::to_toml_with_header(
            &self.config(),
            &[format!(
                "lab cluster {} (lab {}), rendered by tandem's lab configuration builder",
                self.config.cluster.name, self.lab
            )],
        )
    }
}

/// A resource of `kind` with a 1 s monitor and the default timeout.
pub fn resource(name: &str, kind: ResourceKind) -> Resource {
    Resource {
        name: name.into(),
        timeout: defaults::RESOURCE_TIMEOUT,
        monitor_interval: Some(Duration::from_secs(1)),
        kind,
    }
}

/// The `disk` resource that promotes disk `disk`.
pub fn disk_resource(name: &str, disk: &str) -> Resource {
    resource(name, ResourceKind::Disk { disk: disk.into() })
}

/// An `ipaddr` resource: `address` with `prefix_len` on `interface`.
pub fn ipaddr(name: &str, address: Ipv4Addr, prefix_len: u8, interface: &str) -> Resource {
    resource(
        name,
        ResourceKind::IpAddr {
            address: IpAddr::V4(address),
            prefix_len: Some(prefix_len),
            interface: Some(interface.into()),
            broadcast: None,
            garp_count: defaults::GARP_COUNT,
            garp_interval: defaults::GARP_INTERVAL,
        },
    )
}

/// A `filesystem` resource: `fstype` on `device` at `directory`.
pub fn filesystem(name: &str, device: &str, directory: &str, fstype: &str) -> Resource {
    resource(
        name,
        ResourceKind::Filesystem {
            device: device.into(),
            directory: directory.into(),
            fstype: fstype.into(),
            options: None,
        },
    )
}

/// An `ocf` resource: `ocf:PROVIDER:AGENT` with `params`.
pub fn ocf(name: &str, provider: &str, agent: &str, params: &[(&str, &str)]) -> Resource {
    resource(
        name,
        ResourceKind::Ocf {
            provider: provider.into(),
            agent: agent.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
    )
}

/// An `lsb` resource running `script`.
pub fn lsb(name: &str, script: &str) -> Resource {
    resource(
        name,
        ResourceKind::Lsb {
            script: script.into(),
            args: Vec::new(),
            heartbeat: false,
        },
    )
}

/// A resource that describes itself as one `[[group.resource]]` table (a demo
/// service), read into the model by the config crate's loader: the table is appended
/// to a rendered configuration whose last table is an empty group.
pub fn resource_from_toml(table: &str) -> Result<Resource, String> {
    let mut c = LabConfig::new("resource", "lab", Path::new("/"), "authkey");
    c.lan_bcast().group("g", NODES[0], Vec::new());
    let text = format!("{}\n{table}\n", c.render());
    let (config, _) = Config::parse_str("<resource>", &text).map_err(|e| e.to_string())?;
    let mut resources = config
        .groups
        .into_iter()
        .next()
        .map(|g| g.resources)
        .unwrap_or_default();
    match resources.len() {
        1 => Ok(resources.remove(0)),
        n => Err(format!("{n} resources in one resource's table")),
    }
}
