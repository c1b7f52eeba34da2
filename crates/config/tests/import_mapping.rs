//! Every ha.cf directive and haresources form the importer understands, mapped onto
//! the native model (the whitepaper uses only a few of them).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_config::import::{HaFiles, import, render};
use tandem_config::key::{HeartbeatMethod, KeySource};
use tandem_config::*;

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("tandem-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const HA_CF: &str = "\
# every directive tandem imports
keepalive 500ms
deadtime 5
warntime 3
initdead 60
udpport 695
baud 38400
bcast eth0 eth2      # two links
mcast eth3 239.1.2.3 694 2 1
ucast eth1 10.0.0.1
ucast eth1 10.0.0.2
serial /dev/ttyS0
auto_failback on
node alpha
node beta
stonith_host alpha apcmaster 10.9.9.9 apc secret
stonith_host * external/ipmi hostname=beta ipaddr=10.9.9.10
stonith_host * meatware
ping 10.0.0.254
ping_group uplinks 10.0.1.1 10.0.1.2
deadping 20
logfacility local0
logfile /var/log/ha-log
debugfile /var/log/ha-debug
crm off
respawn hacluster /usr/lib/heartbeat/ipfail
realtime on
";

const HARESOURCES: &str = "\
# two groups, one per node
alpha 10.0.0.100/24/eth0/10.0.0.255 IPaddr2::10.0.0.101/24 \\
      Filesystem::/dev/sdc1::/srv/data::ext4::noatime,nodev \\
      MailTo::root@example.com::failover postfix
beta IPaddr::fd00::10 custom apache
";

#[test]
fn every_directive_maps_onto_the_model() {
    let dir = Scratch::new("mapping");
    let authkeys = dir.write("authkeys", "auth 3\n1 crc\n3 md5 hello there\n");
    std::fs::set_permissions(&authkeys, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir.write("resource.d/custom", "#!/bin/sh\n");
    let files = HaFiles {
        ha_cf: dir.write("ha.cf", HA_CF),
        haresources: dir.write("haresources", HARESOURCES),
        authkeys: Some(authkeys.clone()),
        drbd_conf: None,
        cluster_name: Some("lab".into()),
        resource_d: Some(dir.0.join("resource.d")),
    };
    let (c, warnings) = import(&files).unwrap_or_else(|e| panic!("{e}"));

    let k = &c.cluster;
    assert_eq!(k.name, "lab");
    assert_eq!(
        (k.keepalive, k.deadtime, k.warntime, k.initdead, k.deadping),
        (
            Duration::from_millis(500),
            Duration::from_secs(5),
            Duration::from_secs(3),
            Duration::from_secs(60),
            Duration::from_secs(20)
        )
    );
    assert_eq!(k.udp_port, 695);
    assert_eq!(k.auto_failback, AutoFailback::On);
    assert_eq!(k.key_file, authkeys);
    assert_eq!(k.ping, [ip("10.0.0.254")]);
    assert_eq!(
        k.ping_groups,
        [PingGroup {
            name: "uplinks".into(),
            addresses: vec![ip("10.0.1.1"), ip("10.0.1.2")]
        }]
    );
    assert_eq!(c.log.syslog_facility.as_deref(), Some("local0"));
    assert_eq!(c.log.file.as_deref(), Some(Path::new("/var/log/ha-log")));
    assert_eq!(
        c.log.debug_file.as_deref(),
        Some(Path::new("/var/log/ha-debug"))
    );
    assert_eq!(
        c.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["alpha", "beta"]
    );

    let links: Vec<(&str, &LinkKind)> =
        c.links.iter().map(|l| (l.name.as_str(), &l.kind)).collect();
    assert_eq!(
        links,
        [
            (
                "bcast-eth0",
                &LinkKind::Bcast {
                    interface: "eth0".into(),
                    port: 695
                }
            ),
            (
                "bcast-eth2",
                &LinkKind::Bcast {
                    interface: "eth2".into(),
                    port: 695
                }
            ),
            (
                "mcast-eth3",
                &LinkKind::Mcast {
                    interface: "eth3".into(),
                    group: ip("239.1.2.3"),
                    port: 694,
                    ttl: 2,
                    multicast_loop: true
                }
            ),
            (
                "ucast-eth1",
                &LinkKind::Ucast {
                    interface: "eth1".into(),
                    peers: vec![ip("10.0.0.1"), ip("10.0.0.2")],
                    port: 695
                }
            ),
            (
                "serial-ttyS0",
                &LinkKind::Serial {
                    device: "/dev/ttyS0".into(),
                    baud: 38400
                }
            ),
        ]
    );

    let f = &c.fence_devices;
    assert_eq!(f.len(), 3);
    assert_eq!(f[0].name, "apcmaster");
    assert_eq!(f[0].agent, FenceAgent::FenceAgents("fence_apc".into()));
    assert_eq!(
        f[0].params
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect::<Vec<_>>(),
        [
            ("ip", "10.9.9.9"),
            ("password", "secret"),
            ("username", "apc")
        ]
    );
    assert_eq!(f[0].run_on, ["alpha"]);
    assert_eq!(f[1].agent, FenceAgent::External("ipmi".into()));
    assert_eq!(
        f[1].params.get("hostname").map(String::as_str),
        Some("beta")
    );
    assert!(f[1].run_on.is_empty());
    assert_eq!(f[2].agent, FenceAgent::Manual);

    assert_eq!(c.groups.len(), 2);
    assert_eq!(
        (c.groups[0].name.as_str(), c.groups[0].home.as_str()),
        ("lab-1", "alpha")
    );
    assert_eq!(
        (c.groups[1].name.as_str(), c.groups[1].home.as_str()),
        ("lab-2", "beta")
    );
    let kinds: Vec<&ResourceKind> = c
        .groups
        .iter()
        .flat_map(|g| &g.resources)
        .map(|r| &r.kind)
        .collect();
    let lsb = |script: &str, args: &[&str], heartbeat: bool| ResourceKind::Lsb {
        script: script.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        heartbeat,
    };
    let expected = [
        ResourceKind::IpAddr {
            address: ip("10.0.0.100"),
            prefix_len: Some(24),
            interface: Some("eth0".into()),
            broadcast: Some(ip("10.0.0.255")),
            garp_count: 5,
            garp_interval: Duration::from_millis(200),
        },
        ResourceKind::IpAddr {
            address: ip("10.0.0.101"),
            prefix_len: Some(24),
            interface: None,
            broadcast: None,
            garp_count: 5,
            garp_interval: Duration::from_millis(200),
        },
        ResourceKind::Filesystem {
            device: "/dev/sdc1".into(),
            directory: "/srv/data".into(),
            fstype: "ext4".into(),
            options: Some("noatime,nodev".into()),
        },
        // Arguments make it a Heartbeat resource.d script.
        lsb("MailTo", &["root@example.com", "failover"], true),
        // A plain name is an init script...
        lsb("postfix", &[], false),
        // ...and IPaddr's spec may contain `::` (IPv6): 10 × 500 ms, as IPaddr did.
        ResourceKind::IpAddr {
            address: ip("fd00::10"),
            prefix_len: None,
            interface: None,
            broadcast: None,
            garp_count: 10,
            garp_interval: Duration::from_millis(500),
        },
        // ...unless it is in --resource-d, or one of Heartbeat's own scripts.
        lsb("custom", &[], true),
        lsb("apache", &[], true),
    ];
    assert_eq!(kinds, expected.iter().collect::<Vec<_>>());

    // authkeys: `auth 3` picks the md5 line; the crc line is not selected, so no warning.
    let (key, _) = tandem_config::key::check_file(&authkeys).unwrap();
    assert_eq!(
        key.source,
        KeySource::Heartbeat {
            index: 3,
            method: HeartbeatMethod::Md5
        }
    );
    assert_eq!(key.secret, b"hello there");

    let text: Vec<String> = warnings.iter().map(|w| w.message.clone()).collect();
    assert!(
        text.iter().any(|w| w
            .starts_with("`respawn hacluster /usr/lib/heartbeat/ipfail` is not supported")
            && w.contains("use `ping`/`ping_group`")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|w| w.starts_with("`realtime` ignored")),
        "{text:#?}"
    );

    // The rendered file loads back to the same model.
    let rendered = render(&c, &files, &warnings);
    let (back, _) =
        Config::parse_str("lab.toml", &rendered).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
    assert_eq!(back, c);
}

#[test]
fn crc_authkeys_imports_with_a_warning() {
    let dir = Scratch::new("crc");
    let authkeys = dir.write("authkeys", "auth 1\n1 crc\n");
    std::fs::set_permissions(&authkeys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let files = HaFiles {
        ha_cf: dir.write("ha.cf", "node a\nnode b\nbcast eth0\nauto_failback off\n"),
        haresources: dir.write("haresources", "a 10.0.0.1\n"),
        authkeys: Some(authkeys.clone()),
        ..HaFiles::default()
    };
    let (_, warnings) = import(&files).unwrap_or_else(|e| panic!("{e}"));
    let shown: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        shown.contains(&format!("{}:2:1: warning: crc authentication has no secret and gives no security: anyone on the link can forge heartbeats; use `sha1 SECRET`", authkeys.display())),
        "{shown:#?}"
    );
}
