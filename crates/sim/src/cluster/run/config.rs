//! The simulated cluster's configuration: the TOML both nodes load, and the membership
//! and disk settings derived from it as the daemon derives them.

use super::*;

pub(super) fn config_text(variant: Unsafe, witness: bool) -> String {
    let witness = if witness {
        "[witness]\nname = \"w\"\n"
    } else {
        ""
    };
    let fencing = if variant == Unsafe::NoFencing {
        "none"
    } else {
        "required"
    };
    let disk_fencing = if variant == Unsafe::DiskDontCare {
        "fencing = \"dont-care\""
    } else {
        ""
    };
    let device = if variant == Unsafe::NoFencing {
        ""
    } else {
        "[[fence_device]]\nname = \"switch\"\nagent = \"fence_sim\"\nplugs = { n1 = \"1\", n2 = \"2\" }\ntimeout = \"10s\"\n"
    };
    format!(
        r#"[cluster]
name = "sim"
key_file = "/etc/tandem/authkey"
keepalive = "100ms"
deadtime = "1s"
warntime = "500ms"
initdead = "2s"
fencing = "{fencing}"
fencing_delay = "1s"
auto_failback = "off"

[[node]]
name = "n1"
[[node]]
name = "n2"

[[link]]
name = "hb"
type = "ucast"
interface = "eth1"
peers = ["10.0.1.1", "10.0.1.2"]

[[link]]
name = "lan"
type = "ucast"
interface = "eth0"
peers = ["10.0.0.1", "10.0.0.2"]

{witness}
{device}
[[disk]]
name = "r0"
protocol = "C"
net_timeout = "2s"
ping_interval = "500ms"
{disk_fencing}

[disk.on.n1]
device = "/dev/tandem/r0"
backing = "/sim/n1-r0"
address = "10.0.1.1:7788"

[disk.on.n2]
device = "/dev/tandem/r0"
backing = "/sim/n2-r0"
address = "10.0.1.2:7788"

[[group]]
name = "g"
home = "n1"
failure_timeout = "20s"

[[group.resource]]
name = "r0"
type = "disk"
disk = "r0"
monitor_interval = "1s"
timeout = "20s"

[[group.resource]]
name = "svc"
type = "lsb"
script = "svc"
monitor_interval = "1s"
timeout = "5s"

[[group.resource]]
name = "vip"
type = "ipaddr"
address = "10.0.0.100/24"
monitor_interval = "1s"
timeout = "5s"
"#
    )
}

/// The membership configuration of host `local` (a node's index, or [`WITNESS_HOST`]):
/// host `h` is member `h + 1`, the witness numbered after the nodes, as the daemon does.
pub(super) fn membership_config(config: &tandem_config::Config, local: usize) -> MembershipConfig {
    let witness = config.witness.iter().map(|w| w.name.clone());
    MembershipConfig {
        cluster_id: 0x0051_57c1_u64,
        local_node: local as u32 + 1,
        nodes: config
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .chain(witness)
            .enumerate()
            .map(|(i, name)| NodeConfig {
                id: i as u32 + 1,
                name,
            })
            .collect(),
        links: config
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| LinkConfig {
                id: i as u16,
                name: l.name.clone(),
            })
            .collect(),
        keepalive: config.cluster.keepalive,
        deadtime: config.cluster.deadtime,
        warntime: config.cluster.warntime,
        initdead: config.cluster.initdead,
        key: PacketKey::from_bytes([0x42; 32]),
        config_digest: [0x11; 32],
        retransmit: RetransmitConfig::for_keepalive(config.cluster.keepalive),
    }
}

pub(super) fn disk_config(disk: &tandem_config::Disk) -> tandem_disk::core::Config {
    tandem_disk::core::Config {
        protocol: tandem_disk::core::Protocol::C,
        al_extents: 7,
        ping_interval_ms: disk.ping_interval.as_millis() as u64,
        ping_timeout_ms: disk.net_timeout.as_millis() as u64,
        fencing: disk.fencing,
        ..tandem_disk::core::Config::default()
    }
}
