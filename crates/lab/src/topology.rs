//! The shape of a lab: hosts, networks, who is on which network with which address.
//!
//! A topology is plain data: it is parsed from a small TOML file or built from command-line
//! flags, validated once, and then stored in the lab's state file so that every later
//! command sees the same picture.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::LabError;

/// Longest host or network name: interface names in the switch namespace are built as
/// `HOST-NET` and Linux allows 15 bytes.
pub const NAME_LEN_MAX: usize = 7;

/// Directories that every host gets privately by default (see [`HostSpec::private_dirs`]):
/// the daemon's socket and state, and its configuration, so that `tandem` run inside a lab
/// host finds *that host's* daemon at the default paths; and `/dev/tandem`, where a
/// primary publishes its disks' local devices, so that two hosts (or two labs) never
/// meet at `/dev/tandem/r0` in the machine's shared `/dev`.
pub const DEFAULT_PRIVATE_DIRS: &[&str] = &[
    "/run/tandem",
    "/var/lib/tandem",
    "/etc/tandem",
    "/dev/tandem",
];

/// Default bound on a lossy disk's unflushed data: far above what a test writes between
/// two flushes (64-128 MiB disks), far below the machine's memory.
pub const DEFAULT_DISK_CACHE_MIB: u64 = 1024;
/// Largest bound accepted (the cache lives in the serving process's memory).
pub const DISK_CACHE_MIB_MAX: u64 = 16 * 1024;

/// One lab host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Host name (`ox1`), short lowercase letters, digits and `_`.
    pub name: String,
    /// Absolute directories of the machine that this host sees as its own: each is
    /// replaced inside the host's mount namespace by a per-host directory. Paths under
    /// `/run`, `/tmp` or `/dev` are volatile (a fresh tmpfs at every power-on, as on a
    /// real machine); others persist across power cycles (they live in the lab's data
    /// dir).
    #[serde(default = "default_private_dirs")]
    pub private_dirs: Vec<String>,
    /// Gives the host a *lossy disk* (docs/lab.md): a directory, `Lab::host_disk_dir`,
    /// whose files forget every write not flushed by `fsync` when the host loses power.
    #[serde(default)]
    pub lossy_disk: bool,
    /// Bound on the lossy disk's unflushed data in MiB; a write past it fails (ENOSPC).
    #[serde(default = "default_disk_cache_mib")]
    pub disk_cache_mib: u64,
}

impl HostSpec {
    /// A host with the default private directories and no lossy disk.
    pub fn new(name: &str) -> HostSpec {
        HostSpec {
            name: name.to_string(),
            private_dirs: default_private_dirs(),
            lossy_disk: false,
            disk_cache_mib: DEFAULT_DISK_CACHE_MIB,
        }
    }

    /// The same host with a lossy disk.
    pub fn with_lossy_disk(mut self) -> HostSpec {
        self.lossy_disk = true;
        self
    }
}

fn default_private_dirs() -> Vec<String> {
    DEFAULT_PRIVATE_DIRS.iter().map(|s| s.to_string()).collect()
}

fn default_disk_cache_mib() -> u64 {
    DEFAULT_DISK_CACHE_MIB
}

/// One network: a bridge in the switch namespace, and an address per attached host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// Network name (`lan`, `hb`).
    pub name: String,
    /// The subnet, `192.168.1.0/24`; every host address must lie inside it.
    pub subnet: String,
    /// Attached hosts and their addresses. The order of networks in the topology decides
    /// interface names: a host's first network is its `eth0`, the next `eth1`.
    pub hosts: BTreeMap<String, Ipv4Addr>,
}

/// A whole lab topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The hosts, in order.
    #[serde(rename = "host", default)]
    pub hosts: Vec<HostSpec>,
    /// The networks, in order.
    #[serde(rename = "net", default)]
    pub nets: Vec<NetSpec>,
}

/// A host's attachment to one network, as computed from the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Network name.
    pub net: String,
    /// Interface name inside the host (`eth0`, `eth1`, …).
    pub ifname: String,
    /// The host's address on that network.
    pub address: Ipv4Addr,
    /// Prefix length of the network.
    pub prefix_len: u8,
}

impl Topology {
    /// The whitepaper's cluster: `ox1` and `ox2` on `lan` (192.168.1.0/24, their `eth0`)
    /// with a `client`, and a dedicated heartbeat/replication network `hb`
    /// (192.168.180.0/24, their `eth1`) with ox1 at .20 and ox2 at .10 as in the
    /// whitepaper's drbd.conf and ha.cf. The two nodes have lossy disks, for data that
    /// must survive a power cut only if flushed (backing files, service data).
    pub fn whitepaper() -> Topology {
        let lan = NetSpec {
            name: "lan".into(),
            subnet: "192.168.1.0/24".into(),
            hosts: BTreeMap::from([
                ("ox1".to_string(), Ipv4Addr::new(192, 168, 1, 20)),
                ("ox2".to_string(), Ipv4Addr::new(192, 168, 1, 10)),
                ("client".to_string(), Ipv4Addr::new(192, 168, 1, 50)),
            ]),
        };
        let hb = NetSpec {
            name: "hb".into(),
            subnet: "192.168.180.0/24".into(),
            hosts: BTreeMap::from([
                ("ox1".to_string(), Ipv4Addr::new(192, 168, 180, 20)),
                ("ox2".to_string(), Ipv4Addr::new(192, 168, 180, 10)),
            ]),
        };
        Topology {
            hosts: vec![
                HostSpec::new("ox1").with_lossy_disk(),
                HostSpec::new("ox2").with_lossy_disk(),
                HostSpec::new("client"),
            ],
            nets: vec![lan, hb],
        }
    }

    /// Builds a topology from flags: every host on every network; network `i` gets
    /// `10.(i+1).0.0/24` unless given as `NAME=CIDR`, and host `j` gets `.(10+j)`.
    /// A network may list its hosts: `NAME[=CIDR][:HOST+HOST…]`.
    pub fn from_flags(hosts: &[String], nets: &[String]) -> Result<Topology, LabError> {
        let host_specs: Vec<HostSpec> = hosts.iter().map(|h| HostSpec::new(h.trim())).collect();
        let mut net_specs = Vec::new();
        for (i, spec) in nets.iter().enumerate() {
            let (head, members) = match spec.split_once(':') {
                Some((h, m)) => (h, Some(m)),
                None => (spec.as_str(), None),
            };
            let (name, subnet) = match head.split_once('=') {
                Some((n, s)) => (n.trim().to_string(), s.trim().to_string()),
                None => (head.trim().to_string(), format!("10.{}.0.0/24", i + 1)),
            };
            let (base, len) = parse_cidr(&subnet)?;
            let member_names: Vec<String> = match members {
                Some(m) => m.split('+').map(|s| s.trim().to_string()).collect(),
                None => host_specs.iter().map(|h| h.name.clone()).collect(),
            };
            let mut map = BTreeMap::new();
            for name_h in member_names {
                let j = host_specs
                    .iter()
                    .position(|h| h.name == name_h)
                    .ok_or_else(|| {
                        LabError::Topology(format!(
                            "network {name:?} lists host {name_h:?}, which is not in --hosts"
                        ))
                    })?;
                let offset = 10 + j as u32;
                if len > 24 {
                    return Err(LabError::Topology(format!(
                        "network {name:?}: subnet {subnet} is too small for automatic addresses (use /24 or larger)"
                    )));
                }
                map.insert(name_h, Ipv4Addr::from(u32::from(base) + offset));
            }
            net_specs.push(NetSpec {
                name,
                subnet,
                hosts: map,
            });
        }
        let t = Topology {
            hosts: host_specs,
            nets: net_specs,
        };
        t.validate()?;
        Ok(t)
    }

    /// Parses and validates a topology file's text.
    pub fn from_toml(text: &str) -> Result<Topology, LabError> {
        let t: Topology =
            toml::from_str(text).map_err(|e| LabError::Topology(e.to_string().trim().into()))?;
        t.validate()?;
        Ok(t)
    }

    /// Checks names, subnets and addresses; every error names what is wrong.
    pub fn validate(&self) -> Result<(), LabError> {
        let err = |m: String| Err(LabError::Topology(m));
        if self.hosts.is_empty() {
            return err("a lab needs at least one host".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for h in &self.hosts {
            check_name("host", &h.name)?;
            if !seen.insert(h.name.clone()) {
                return err(format!("host {:?} is defined twice", h.name));
            }
            for d in &h.private_dirs {
                if !d.starts_with('/') || d == "/" || d.contains("..") || d.contains('\0') {
                    return err(format!(
                        "host {:?}: private dir {d:?} must be an absolute path below /",
                        h.name
                    ));
                }
            }
            if !(1..=DISK_CACHE_MIB_MAX).contains(&h.disk_cache_mib) {
                return err(format!(
                    "host {:?}: disk_cache_mib {} must be between 1 and {DISK_CACHE_MIB_MAX}",
                    h.name, h.disk_cache_mib
                ));
            }
        }
        let mut net_names = std::collections::BTreeSet::new();
        for n in &self.nets {
            check_name("network", &n.name)?;
            if !net_names.insert(n.name.clone()) {
                return err(format!("network {:?} is defined twice", n.name));
            }
            let (base, len) = parse_cidr(&n.subnet)?;
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let mut addrs = std::collections::BTreeSet::new();
            for (host, addr) in &n.hosts {
                if !seen.contains(host) {
                    return err(format!(
                        "network {:?} names host {host:?}, which is not defined",
                        n.name
                    ));
                }
                if u32::from(*addr) & mask != u32::from(base) {
                    return err(format!(
                        "network {:?}: address {addr} of {host:?} is outside {}",
                        n.name, n.subnet
                    ));
                }
                if !addrs.insert(*addr) {
                    return err(format!(
                        "network {:?}: address {addr} is used twice",
                        n.name
                    ));
                }
            }
        }
        for h in &self.hosts {
            let count = self.attachments(&h.name).len();
            if count > 10 {
                return err(format!("host {:?} is on more than 10 networks", h.name));
            }
        }
        Ok(())
    }

    /// The host's attachments in interface order (`eth0` first).
    pub fn attachments(&self, host: &str) -> Vec<Attachment> {
        let mut out = Vec::new();
        for n in &self.nets {
            if let Some(addr) = n.hosts.get(host) {
                let prefix_len = parse_cidr(&n.subnet).map(|(_, l)| l).unwrap_or(24);
                out.push(Attachment {
                    net: n.name.clone(),
                    ifname: format!("eth{}", out.len()),
                    address: *addr,
                    prefix_len,
                });
            }
        }
        out
    }

    /// The host spec by name.
    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The network spec by name.
    pub fn net(&self, name: &str) -> Option<&NetSpec> {
        self.nets.iter().find(|n| n.name == name)
    }
}

fn check_name(what: &str, name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(())
    } else {
        Err(LabError::Topology(format!(
            "{what} name {name:?}: expected 1 to {NAME_LEN_MAX} characters a-z, 0-9 or _, starting with a letter"
        )))
    }
}

/// Parses `a.b.c.d/len` and checks that no host bits are set.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), LabError> {
    let bad = || {
        LabError::Topology(format!(
            "subnet {s:?}: expected an IPv4 CIDR like 10.1.0.0/24"
        ))
    };
    let (a, l) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let len: u8 = l.trim().parse().map_err(|_| bad())?;
    if !(8..=30).contains(&len) {
        return Err(LabError::Topology(format!(
            "subnet {s:?}: prefix length must be between 8 and 30"
        )));
    }
    let mask = u32::MAX << (32 - len);
    if u32::from(addr) & !mask != 0 {
        return Err(LabError::Topology(format!(
            "subnet {s:?}: host bits are set (did you mean {}/{len}?)",
            Ipv4Addr::from(u32::from(addr) & mask)
        )));
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitepaper_topology_is_valid_and_orders_interfaces() {
        let t = Topology::whitepaper();
        t.validate().unwrap();
        let a = t.attachments("ox1");
        assert_eq!(a[0].ifname, "eth0");
        assert_eq!(a[0].net, "lan");
        assert_eq!(a[1].ifname, "eth1");
        assert_eq!(a[1].address, Ipv4Addr::new(192, 168, 180, 20));
        assert_eq!(t.attachments("client").len(), 1);
    }

    #[test]
    fn flags_build_addresses() {
        let t = Topology::from_flags(
            &["a".into(), "b".into(), "c".into()],
            &["hb".into(), "lan=192.168.7.0/24:a+c".into()],
        )
        .unwrap();
        assert_eq!(t.net("hb").unwrap().hosts["b"], Ipv4Addr::new(10, 1, 0, 11));
        assert_eq!(
            t.net("lan").unwrap().hosts["c"],
            Ipv4Addr::new(192, 168, 7, 12)
        );
        assert!(!t.net("lan").unwrap().hosts.contains_key("b"));
    }

    #[test]
    fn toml_round_trip_and_errors() {
        let text = r#"
[[host]]
name = "n1"
[[host]]
name = "n2"
private_dirs = []
[[net]]
name = "hb"
subnet = "10.9.0.0/24"
hosts = { n1 = "10.9.0.1", n2 = "10.9.0.2" }
"#;
        let t = Topology::from_toml(text).unwrap();
        assert_eq!(t.hosts[0].private_dirs.len(), DEFAULT_PRIVATE_DIRS.len());
        assert!(t.hosts[1].private_dirs.is_empty());
        let cases = [
            (text.replace("10.9.0.2", "10.8.0.2"), "outside"),
            (
                text.replace("n2 = \"10.9.0.2\"", "n3 = \"10.9.0.2\""),
                "not defined",
            ),
            (text.replace("10.9.0.0/24", "10.9.0.1/24"), "host bits"),
            (text.replace("name = \"n2\"", "name = \"N2!\""), "name"),
            (text.replace("10.9.0.2", "10.9.0.1"), "used twice"),
            (
                text.replace("name = \"hb\"", "name = \"hb\"\nbogus = 1"),
                "unknown field",
            ),
        ];
        for (bad, want) in cases {
            let e = Topology::from_toml(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn random_text_never_panics() {
        // A cheap deterministic byte generator (xorshift) keeps this reproducible.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let len = (x % 200) as usize;
            let mut s = String::new();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b"[]=\"\n hostnetsubname/.0123456789{}:,";
                let c = alphabet[(x % alphabet.len() as u64) as usize];
                s.push(c as char);
            }
            let _ = Topology::from_toml(&s);
            let _ = parse_cidr(&s);
        }
    }
}
