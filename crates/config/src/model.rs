//! The typed cluster configuration: what every other crate builds on.
//!
//! Every value here is already validated and has its default filled in: durations are
//! [`Duration`]s, sizes are bytes, choices are enums, and cross references (a resource
//! naming a disk, a disk host naming a node) are known to resolve. Nothing here keeps
//! source positions; the loader reports errors before a `Config` exists. Durations are
//! whole milliseconds (the finest unit the file format has).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A whole cluster: identical on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[cluster]`: name, timing, policy and local paths.
    pub cluster: Cluster,
    /// `[log]`: where the daemon logs (imported from ha.cf's log directives).
    pub log: Log,
    /// `[[node]]`, in file order.
    pub nodes: Vec<Node>,
    /// `[[link]]`: heartbeat media, in file order.
    pub links: Vec<Link>,
    /// `[[fence_device]]`, in file order (levels are tried lowest first).
    pub fence_devices: Vec<FenceDevice>,
    /// `[[disk]]`: replicated block devices, in file order.
    pub disks: Vec<Disk>,
    /// `[[group]]`: ordered resource groups, in file order.
    pub groups: Vec<Group>,
    /// `[witness]`: a third machine that gives one node the vote when the two lose each
    /// other (absent: no witness, fencing waits `fencing_delay` as before).
    pub witness: Option<Witness>,
    /// `[metrics]`: the daemon's HTTP listener for `/metrics` and `/status`.
    pub metrics: Metrics,
    /// `[[notify]]`: commands run on cluster events, in file order.
    pub notify: Vec<Notify>,
}

/// `[witness]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// Its name in membership: `tandem witness --node NAME` on the third machine. Not a
    /// `[[node]]`; it runs no groups. Its addresses go into the links (ucast `peers`)
    /// like the nodes'.
    pub name: String,
    /// How long the witness waits for the second node's request when the nodes lost
    /// each other but it hears both and the first asker holds no group (default:
    /// deadtime).
    pub tie_wait: Duration,
    /// How often a node repeats a request the witness has not answered, or refused
    /// (default: twice the keepalive).
    pub vote_retry: Duration,
    /// Where the witness stores its grant, so a restart cannot grant twice (default:
    /// `STATE_DIR/witness-grant.json`).
    pub state_file: PathBuf,
}

/// `[cluster]`: cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Cluster name; goes into every heartbeat so two clusters on one wire never mix.
    pub name: String,
    /// Interval between heartbeats on every link.
    pub keepalive: Duration,
    /// Silence after which a node is declared dead. Always > 2 × keepalive.
    pub deadtime: Duration,
    /// Silence after which a late heartbeat is logged as a warning.
    pub warntime: Duration,
    /// Grace period after the daemon starts before the peer may be declared dead
    /// (networks and switches take a while to come up). Always ≥ deadtime.
    pub initdead: Duration,
    /// Whether groups move back to their home node when it returns.
    pub auto_failback: AutoFailback,
    /// Default UDP port for `ucast`/`bcast` links.
    pub udp_port: u16,
    /// The authentication key file: a native key file or a Heartbeat `authkeys` file.
    pub key_file: PathBuf,
    /// Whether takeover of shared data requires a successful fence.
    pub fencing: FencingPolicy,
    /// Where the daemon keeps its persistent state (incarnation, disk metadata defaults).
    pub state_dir: PathBuf,
    /// The daemon's Unix control socket (root-only).
    pub control_socket: PathBuf,
    /// ipfail-style ping targets: each one is a separate reachability test.
    pub ping: Vec<IpAddr>,
    /// ipfail-style ping groups: a group is reachable while any member answers.
    pub ping_groups: Vec<PingGroup>,
    /// Silence after which a ping target (or whole group) counts as unreachable.
    pub deadping: Duration,
    /// How long the node that holds no group waits before fencing its peer, so that
    /// in a partition the node serving the groups fences first and keeps serving
    /// (Pacemaker's priority-fencing-delay).
    pub fencing_delay: Duration,
    /// The group (by name) whose members may use the disks' NBD sockets besides root;
    /// `None`: root only.
    pub nbd_group: Option<String>,
}

/// `auto_failback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoFailback {
    /// A group returns to its home node as soon as that node is back.
    On,
    /// A group stays where it runs until an operator moves it (the whitepaper's choice).
    Off,
    /// Heartbeat's `legacy`: on, unless the peer does not support failback; tandem
    /// treats it as `On` and keeps the value only so imported files read the same.
    Legacy,
}

/// `fencing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencingPolicy {
    /// A node takes over shared data only after the peer is fenced or an operator
    /// confirmed it down (`tandem fence confirm`).
    Required,
    /// Explicit opt-out: take over on a dead verdict alone. Risks split brain.
    None,
}

/// One ping group (`ping_group NAME addr…` in ha.cf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingGroup {
    /// Group name, unique among ping groups.
    pub name: String,
    /// Member addresses.
    pub addresses: Vec<IpAddr>,
}

/// `[metrics]`: off unless the table is present.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metrics {
    /// Where the daemon serves `/metrics` and `/status` over HTTP; `None`: no listener.
    pub listen: Option<SocketAddr>,
}

/// The events a `[[notify]]` command can be run on (docs/operations.md).
pub const NOTIFY_EVENTS: &[&str] = &[
    "node_dead",
    "node_up",
    "node_returned_after_partition",
    "fenced",
    "fence_failed",
    "group_moved",
    "group_started",
    "group_stopped",
    "split_brain",
    "resync_done",
    "out_of_sync",
];

/// `[[notify]]`: a command run on events, with the event in its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Name in logs and metrics (default: the command's file name).
    pub name: String,
    /// The program (absolute path), run without a shell.
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The events it runs on (names from [`NOTIFY_EVENTS`]); empty: every event.
    pub events: Vec<String>,
    /// Only events about these disks (disk events) — empty: any disk. Events that
    /// concern no disk are not filtered by it.
    pub disks: Vec<String>,
    /// How long one run may take before its process group is killed.
    pub timeout: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Log {
    /// Syslog facility (`daemon`, `local0` …); `None` logs to stderr/journal only.
    pub syslog_facility: Option<String>,
    /// A file to append log lines to, besides stderr.
    pub file: Option<PathBuf>,
    /// A file to append debug-level lines to.
    pub debug_file: Option<PathBuf>,
}

/// `[[node]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node's name: its `uname -n`, as in Heartbeat.
    pub name: String,
    /// The node's administrative address (not moved on failover), if known.
    pub address: Option<IpAddr>,
}

/// `[[link]]`: one heartbeat medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Link name, unique; shown in status.
    pub name: String,
    /// What kind of medium and its settings.
    pub kind: LinkKind,
}

/// The medium of a [`Link`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// UDP unicast to every address in `peers`. A node skips its own addresses, so one
    /// list naming both nodes serves both (Heartbeat's rule).
    Ucast {
        /// Interface to send from.
        interface: String,
        /// Peer addresses.
        peers: Vec<IpAddr>,
        /// UDP port.
        port: u16,
    },
    /// UDP broadcast on an interface.
    Bcast {
        /// Interface to broadcast on.
        interface: String,
        /// UDP port.
        port: u16,
    },
    /// UDP multicast.
    Mcast {
        /// Interface to join the group on.
        interface: String,
        /// Multicast group address.
        group: IpAddr,
        /// UDP port.
        port: u16,
        /// Multicast TTL (1–255).
        ttl: u8,
        /// Whether our own packets loop back to us.
        multicast_loop: bool,
    },
    /// A serial line (null-modem cable).
    Serial {
        /// tty device, e.g. `/dev/ttyS0`.
        device: PathBuf,
        /// Line speed in baud.
        baud: u32,
    },
}

/// `[[fence_device]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceDevice {
    /// Device name, unique.
    pub name: String,
    /// The program that drives it.
    pub agent: FenceAgent,
    /// Parameters handed to the agent (`name=value` lines, or environment for
    /// `external/*`).
    pub params: BTreeMap<String, String>,
    /// Node name → plug/port on this device. A node absent here is fenced with its own
    /// name as the plug (Heartbeat matched plugs by host name).
    pub plugs: BTreeMap<String, String>,
    /// Nodes allowed to run this device; empty means any node.
    pub run_on: Vec<String>,
    /// Fencing level: lower levels are tried first.
    pub level: u32,
    /// Timeout for one agent invocation.
    pub timeout: Duration,
}

/// What program drives a fence device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceAgent {
    /// A fence-agents program, e.g. `fence_apc` (name as written, `fence_` prefix).
    FenceAgents(String),
    /// A Heartbeat `external/NAME` stonith plugin script (holds `NAME`).
    External(String),
    /// Operator confirmation (Heartbeat's meatware): `tandem fence confirm NODE`.
    Manual,
}

/// `[[disk]]`: one replicated block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Disk name (DRBD's resource name), unique.
    pub name: String,
    /// Replication protocol.
    pub protocol: Protocol,
    /// Resync rate limit in bytes per second; `None` = as fast as the link allows.
    pub rate_bytes_per_s: Option<u64>,
    /// Resync group: disks with a lower group resync first; equal groups in parallel.
    pub resync_group: u32,
    /// Number of 4 MiB activity-log extents.
    pub al_extents: u32,
    /// What a local I/O error does.
    pub on_io_error: OnIoError,
    /// How long to wait for the peer at startup; `None` = forever.
    pub wfc_timeout: Option<Duration>,
    /// As `wfc_timeout`, when this node was already degraded before the restart.
    pub degr_wfc_timeout: Option<Duration>,
    /// Network timeout for one request (DRBD `timeout`).
    pub net_timeout: Duration,
    /// Interval between connection attempts (DRBD `connect-int`).
    pub connect_interval: Duration,
    /// Keep-alive ping interval on an idle link (DRBD `ping-int`).
    pub ping_interval: Duration,
    /// Split-brain policy when neither side is primary.
    pub after_sb_0pri: AfterSb0Pri,
    /// Split-brain policy when one side is primary.
    pub after_sb_1pri: AfterSb1Pri,
    /// Split-brain policy when both sides are primary.
    pub after_sb_2pri: AfterSb2Pri,
    /// What a primary does when the replication link drops (DRBD's `fencing`).
    pub fencing: DiskFencing,
    /// Per-node settings, one per node the disk lives on (exactly two), in file order.
    pub hosts: Vec<DiskHost>,
}

/// Replication protocol of a [`Disk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A write is complete when on the local disk and sent.
    A,
    /// A write is complete when on the local disk and received by the peer.
    B,
    /// A write is complete when durable on both disks.
    C,
}

/// A disk's fencing policy (DRBD's `disk { fencing …; }`): what a primary does when it
/// loses the replication link while the peer's copy could still be promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFencing {
    /// Go on writing alone. A peer promoted later lacks those writes: acknowledged data
    /// can be lost (DRBD `dont-care`).
    DontCare,
    /// Outdate the peer through the cluster's other paths before completing any further
    /// write; if the peer cannot be reached, go on alone (DRBD `resource-only`).
    ResourceOnly,
    /// Suspend I/O until the peer is known outdated or has been fenced (DRBD
    /// `resource-and-stonith`): nothing is acknowledged that a promotable peer lacks.
    ResourceAndStonith,
}

impl DiskFencing {
    /// The configuration's spelling (DRBD's).
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFencing::DontCare => "dont-care",
            DiskFencing::ResourceOnly => "resource-only",
            DiskFencing::ResourceAndStonith => "resource-and-stonith",
        }
    }

    /// The policy of a disk whose configuration does not say: `resource-and-stonith`
    /// for a disk that a resource group promotes in a cluster that fences (the group's
    /// failover must never promote a copy that lacks acknowledged writes), else
    /// `resource-only` (nothing can fence for it; the peer is still outdated when it
    /// can be reached).
    pub fn default_for(in_group: bool, cluster_fencing: FencingPolicy) -> DiskFencing {
        if in_group && cluster_fencing == FencingPolicy::Required {
            DiskFencing::ResourceAndStonith
        } else {
            DiskFencing::ResourceOnly
        }
    }
}

/// Why a file-system type cannot be mounted on any current Linux, if that is so (the
/// whitepaper's reiserfs). `config check` and the importer say it with what to use
/// instead.
pub fn removed_fstype(fstype: &str) -> Option<&'static str> {
    match fstype {
        "reiserfs" => Some("reiserfs was removed from Linux in 6.13 (deprecated since 5.18)"),
        _ => None,
    }
}

/// `on_io_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnIoError {
    /// Report the error to the upper layer (DRBD `pass_on`).
    PassOn,
    /// Drop the backing disk and go on diskless, serving I/O through the peer.
    Detach,
    /// Stop the node (DRBD `panic`): the peer takes over.
    Panic,
}

/// `after_sb_0pri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSb0Pri {
    /// Do not resolve; stay disconnected and let an operator decide.
    Disconnect,
    /// Discard the side that was primary most recently.
    DiscardYoungerPrimary,
    /// Discard the side that was primary first.
    DiscardOlderPrimary,
    /// If only one side wrote, discard the side that did not.
    DiscardZeroChanges,
    /// Discard the side with fewer changed blocks.
    DiscardLeastChanges,
}

impl AfterSb0Pri {
    /// The policy's names, in drbd.conf and in tandem's file alike.
    pub const NAMES: &[(&str, AfterSb0Pri)] = &[
        ("disconnect", AfterSb0Pri::Disconnect),
        (
            "discard-younger-primary",
            AfterSb0Pri::DiscardYoungerPrimary,
        ),
        ("discard-older-primary", AfterSb0Pri::DiscardOlderPrimary),
        ("discard-zero-changes", AfterSb0Pri::DiscardZeroChanges),
        ("discard-least-changes", AfterSb0Pri::DiscardLeastChanges),
    ];
}

/// `after_sb_1pri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSb1Pri {
    /// Do not resolve.
    Disconnect,
    /// Apply the 0pri policy if its victim is the secondary; else disconnect.
    Consensus,
    /// Discard the secondary's changes.
    DiscardSecondary,
}

impl AfterSb1Pri {
    /// The policy's names, in drbd.conf and in tandem's file alike.
    pub const NAMES: &[(&str, AfterSb1Pri)] = &[
        ("disconnect", AfterSb1Pri::Disconnect),
        ("consensus", AfterSb1Pri::Consensus),
        ("discard-secondary", AfterSb1Pri::DiscardSecondary),
    ];
}

/// `after_sb_2pri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSb2Pri {
    /// Do not resolve (the only safe choice with two primaries).
    Disconnect,
}

impl AfterSb2Pri {
    /// The policy's names, in drbd.conf and in tandem's file alike.
    pub const NAMES: &[(&str, AfterSb2Pri)] = &[("disconnect", AfterSb2Pri::Disconnect)];
}

/// `[disk.on.NODE]`: where a disk lives on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHost {
    /// Node name (a `[[node]]`).
    pub node: String,
    /// The device the node exposes, e.g. `/dev/drbd0` (tandem publishes
    /// `/dev/tandem/NAME`; the imported DRBD path is kept for reference and for stacks
    /// that still name it).
    pub device: PathBuf,
    /// Backing block device or file.
    pub backing: PathBuf,
    /// Replication address this node listens on.
    pub address: SocketAddr,
    /// Where the metadata lives.
    pub meta: Meta,
}

/// `meta` of a [`DiskHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meta {
    /// At the end of the backing device.
    Internal,
    /// On a separate device or file, optionally at an index (DRBD `meta-disk DEV [N]`).
    External {
        /// Metadata device or file.
        path: PathBuf,
        /// Slot index on a shared metadata device.
        index: Option<u32>,
    },
}

/// `[[group]]`: resources started left to right, stopped right to left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name, unique.
    pub name: String,
    /// The node the group prefers (haresources' first token).
    pub home: String,
    /// Unexpired monitor failures of one resource on a node after which that node no
    /// longer runs the group (Pacemaker's migration-threshold).
    pub migration_threshold: u32,
    /// Age after which a failure no longer counts (Pacemaker's failure-timeout).
    pub failure_timeout: Duration,
    /// Resources in start order.
    pub resources: Vec<Resource>,
}

/// `[[group.resource]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Name, unique across the cluster (derived from the type and main value if absent).
    pub name: String,
    /// Timeout for start, stop and monitor.
    pub timeout: Duration,
    /// Interval between monitor runs; `None` = not monitored.
    pub monitor_interval: Option<Duration>,
    /// Type and type-specific settings.
    pub kind: ResourceKind,
}

/// The type of a [`Resource`] with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    /// A service address, added over netlink, announced with gratuitous ARP / NA.
    IpAddr {
        /// The address.
        address: IpAddr,
        /// Prefix length; `None` = take the prefix of the interface's matching subnet.
        prefix_len: Option<u8>,
        /// Interface; `None` = the one whose subnet contains the address.
        interface: Option<String>,
        /// IPv4 broadcast address; `None` = derived from the prefix.
        broadcast: Option<IpAddr>,
        /// Number of gratuitous ARPs (IPv6: unsolicited NAs) sent after adding it.
        garp_count: u32,
        /// Gap between two gratuitous ARPs.
        garp_interval: Duration,
    },
    /// Promote/demote a replicated disk (`datadisk::r0`).
    Disk {
        /// The `[[disk]]` name.
        disk: String,
    },
    /// A mount.
    Filesystem {
        /// Device to mount (e.g. `/dev/drbd1`).
        device: String,
        /// Mount point.
        directory: PathBuf,
        /// Filesystem type.
        fstype: String,
        /// Mount options (`-o`), if any.
        options: Option<String>,
    },
    /// An OCF agent: `/usr/lib/ocf/resource.d/PROVIDER/AGENT`.
    Ocf {
        /// Provider directory (e.g. `heartbeat`).
        provider: String,
        /// Agent name (e.g. `IPaddr2`).
        agent: String,
        /// `OCF_RESKEY_*` parameters.
        params: BTreeMap<String, String>,
    },
    /// An init script, or a Heartbeat `/etc/ha.d/resource.d` script.
    Lsb {
        /// Script name (looked up in `/etc/ha.d/resource.d` first, then in
        /// `/etc/init.d`, as Heartbeat did), or an absolute path.
        script: String,
        /// Arguments before the action (Heartbeat's `Script::arg1::arg2`).
        args: Vec<String>,
        /// Heartbeat resource.d calling convention (`script args… start|stop|status`)
        /// for a script found in `/etc/init.d` or at an absolute path; one found in
        /// resource.d always follows it.
        heartbeat: bool,
    },
    /// A systemd unit.
    Systemd {
        /// Unit name, e.g. `postgresql.service`.
        unit: String,
    },
}

impl ResourceKind {
    /// The `type` key's value for this kind.
    pub fn type_name(&self) -> &'static str {
        match self {
            ResourceKind::IpAddr { .. } => "ipaddr",
            ResourceKind::Disk { .. } => "disk",
            ResourceKind::Filesystem { .. } => "filesystem",
            ResourceKind::Ocf { .. } => "ocf",
            ResourceKind::Lsb { .. } => "lsb",
            ResourceKind::Systemd { .. } => "systemd",
        }
    }
}

impl LinkKind {
    /// The `type` key's value for this kind.
    pub fn type_name(&self) -> &'static str {
        match self {
            LinkKind::Ucast { .. } => "ucast",
            LinkKind::Bcast { .. } => "bcast",
            LinkKind::Mcast { .. } => "mcast",
            LinkKind::Serial { .. } => "serial",
        }
    }
}

impl Config {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The disk called `name`.
    pub fn disk(&self, name: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.name == name)
    }

    /// The disk whose device on some node is `device` (e.g. `/dev/drbd1` → `r1`), so a
    /// `filesystem` resource written against a DRBD path can be resolved to the disk
    /// whose device tandem publishes.
    pub fn disk_by_device(&self, device: &std::path::Path) -> Option<&Disk> {
        self.disks
            .iter()
            .find(|d| d.hosts.iter().any(|h| h.device == device))
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }
}

impl Disk {
    /// This disk's settings on node `node`.
    pub fn host(&self, node: &str) -> Option<&DiskHost> {
        self.hosts.iter().find(|h| h.node == node)
    }
}

impl Link {
    /// The peers a node with addresses `own` sends to on a ucast link: every listed
    /// address except its own (Heartbeat's rule). Empty for other link kinds.
    pub fn ucast_peers_excluding(&self, own: &[IpAddr]) -> Vec<IpAddr> {
        match &self.kind {
            LinkKind::Ucast { peers, .. } => {
                peers.iter().copied().filter(|p| !own.contains(p)).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Defaults of the native format, shared by the loader, the importer and the docs.
pub mod defaults {
    use std::time::Duration;

    /// `cluster.keepalive`.
    pub const KEEPALIVE: Duration = Duration::from_secs(1);
    /// `cluster.deadtime`.
    pub const DEADTIME: Duration = Duration::from_secs(10);
    /// `cluster.warntime`.
    pub const WARNTIME: Duration = Duration::from_secs(5);
    /// `cluster.initdead`.
    pub const INITDEAD: Duration = Duration::from_secs(20);
    /// `cluster.udpport` (Heartbeat's registered port).
    pub const UDP_PORT: u16 = 694;
    /// `cluster.key_file`.
    pub const KEY_FILE: &str = "/etc/tandem/authkey";
    /// `cluster.state_dir`.
    pub const STATE_DIR: &str = "/var/lib/tandem";
    /// `cluster.control_socket`.
    pub const CONTROL_SOCKET: &str = "/run/tandem/tandem.sock";
    /// `group.migration_threshold`.
    pub const MIGRATION_THRESHOLD: u32 = 3;
    /// `group.failure_timeout`.
    pub const FAILURE_TIMEOUT: Duration = Duration::from_secs(600);
    /// `cluster.deadping`.
    pub const DEADPING: Duration = Duration::from_secs(30);
    /// `cluster.fencing_delay`.
    pub const FENCING_DELAY: Duration = Duration::from_secs(5);
    /// `link.baud` for serial links (Heartbeat's default).
    pub const BAUD: u32 = 19200;
    /// `link.ttl` for mcast links.
    pub const MCAST_TTL: u8 = 1;
    /// `fence_device.level`.
    pub const FENCE_LEVEL: u32 = 1;
    /// `fence_device.timeout`.
    pub const FENCE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `disk.al_extents` (DRBD 0.7's default).
    pub const AL_EXTENTS: u32 = 127;
    /// `disk.resync_group`.
    pub const RESYNC_GROUP: u32 = 0;
    /// `disk.degr_wfc_timeout` (DRBD's default).
    pub const DEGR_WFC_TIMEOUT: Duration = Duration::from_secs(60);
    /// `disk.net_timeout` (DRBD: 60 × 0.1 s).
    pub const NET_TIMEOUT: Duration = Duration::from_secs(6);
    /// `disk.connect_interval`.
    pub const CONNECT_INTERVAL: Duration = Duration::from_secs(10);
    /// `disk.ping_interval`.
    pub const PING_INTERVAL: Duration = Duration::from_secs(10);
    /// `disk.port`, when a host's address has no port.
    pub const DISK_PORT: u16 = 7788;
    /// `resource.timeout`.
    pub const RESOURCE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `resource.monitor_interval`.
    pub const MONITOR_INTERVAL: Duration = Duration::from_secs(10);
    /// `ipaddr.garp_count` (IPaddr2's behaviour).
    pub const GARP_COUNT: u32 = 5;
    /// `ipaddr.garp_interval`.
    pub const GARP_INTERVAL: Duration = Duration::from_millis(200);
    /// `metrics.listen` when the table gives no address.
    pub const METRICS_LISTEN: &str = "127.0.0.1:9694";
    /// `metrics.listen`'s port when it gives only an address or only a port.
    pub const METRICS_PORT: u16 = 9694;
    /// `notify.timeout`.
    pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);
}
