//! The whitepaper's own drbd.conf, ha.cf and haresources (verbatim fixtures) import
//! without error into exactly the cluster the whitepaper describes.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_config::import::{HaFiles, import, render};
use tandem_config::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/config/whitepaper")
        .join(name)
}

fn files() -> HaFiles {
    HaFiles {
        ha_cf: fixture("ha.cf"),
        haresources: fixture("haresources"),
        drbd_conf: Some(fixture("drbd.conf")),
        ..HaFiles::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn whitepaper_disks_import_field_by_field() {
    let (c, _) = import(&files()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = c.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["r0", "r1", "r2", "r3"]);
    for (i, d) in c.disks.iter().enumerate() {
        assert_eq!(d.protocol, Protocol::C, "{}", d.name);
        assert_eq!(d.rate_bytes_per_s, Some(5 * 1024 * 1024), "{}", d.name);
        assert_eq!(d.resync_group, 1, "{}", d.name);
        assert_eq!(d.on_io_error, OnIoError::Detach, "{}", d.name);
        assert_eq!(
            d.degr_wfc_timeout,
            Some(Duration::from_secs(120)),
            "{}",
            d.name
        );
        if i == 0 {
            assert_eq!(d.al_extents, 257);
        } else {
            // r1–r3 say `wfc-timeout 0` (= wait forever) and leave al-extents at
            // DRBD's default.
            assert_eq!(d.wfc_timeout, None, "{}", d.name);
            assert_eq!(d.al_extents, defaults::AL_EXTENTS, "{}", d.name);
        }
        let port = 7788 + i as u16;
        let hosts: Vec<(&str, &Path, &Path, SocketAddr, &Meta)> = d
            .hosts
            .iter()
            .map(|h| {
                (
                    h.node.as_str(),
                    h.device.as_path(),
                    h.backing.as_path(),
                    h.address,
                    &h.meta,
                )
            })
            .collect();
        // drbd.conf's `device /dev/drbdN` becomes the path tandem publishes the disk at.
        let dev = format!("/dev/tandem/r{i}");
        let backing = format!("/dev/sdb{}", i + 1);
        assert_eq!(
            hosts,
            [
                (
                    "ox1",
                    Path::new(&dev),
                    Path::new(&backing),
                    sock(&format!("192.168.180.20:{port}")),
                    &Meta::Internal
                ),
                (
                    "ox2",
                    Path::new(&dev),
                    Path::new(&backing),
                    sock(&format!("192.168.180.10:{port}")),
                    &Meta::Internal
                ),
            ],
            "{}",
            d.name
        );
    }
    // r0 has no wfc-timeout line: DRBD's default, which is also "forever".
    assert_eq!(c.disks[0].wfc_timeout, None);
}

#[test]
fn whitepaper_group_imports_in_seed_order() {
    let (c, _) = import(&files()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.groups.len(), 1);
    let g = &c.groups[0];
    assert_eq!(g.home, "ox1");
    assert_eq!(g.resources.len(), 15);
    let fs = |dev: &str, dir: &str| ResourceKind::Filesystem {
        device: dev.into(),
        directory: dir.into(),
        fstype: "reiserfs".into(),
        options: None,
    };
    let disk = |d: &str| ResourceKind::Disk { disk: d.into() };
    let lsb = |s: &str| ResourceKind::Lsb {
        script: s.into(),
        args: vec![],
        heartbeat: false,
    };
    let expected = [
        ResourceKind::IpAddr {
            address: ip("192.168.1.160"),
            prefix_len: None,
            interface: None,
            broadcast: None,
            garp_count: 10,
            garp_interval: Duration::from_millis(500),
        },
        disk("r1"),
        fs("/dev/tandem/r1", "/var/lib/ldap"),
        lsb("ldap"),
        lsb("saslauthd"),
        disk("r0"),
        fs("/dev/tandem/r0", "/var/lib/pgsql"),
        lsb("postgresql"),
        disk("r2"),
        disk("r3"),
        fs("/dev/tandem/r2", "/var/lib/imap"),
        fs("/dev/tandem/r3", "/var/spool/imap"),
        lsb("cyrus"),
        lsb("postfix"),
        lsb("openexchange"),
    ];
    let got: Vec<&ResourceKind> = g.resources.iter().map(|r| &r.kind).collect();
    assert_eq!(got, expected.iter().collect::<Vec<_>>());
    let names: Vec<&str> = g.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ip-192.168.1.160",
            "disk-r1",
            "fs-var-lib-ldap",
            "ldap",
            "saslauthd",
            "disk-r0",
            "fs-var-lib-pgsql",
            "postgresql",
            "disk-r2",
            "disk-r3",
            "fs-var-lib-imap",
            "fs-var-spool-imap",
            "cyrus",
            "postfix",
            "openexchange"
        ]
    );
}

#[test]
fn whitepaper_cluster_settings() {
    let (c, warnings) = import(&files()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.cluster.name, "ox");
    assert_eq!(c.cluster.auto_failback, AutoFailback::Off);
    let nodes: Vec<(&str, Option<IpAddr>)> = c
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.address))
        .collect();
    assert_eq!(
        nodes,
        [
            ("ox1", Some(ip("192.168.180.20"))),
            ("ox2", Some(ip("192.168.180.10")))
        ]
    );
    // The ucast link on eth1 to 192.168.180.10, completed with ox1's own address so the
    // same file serves ox2 too (each node skips its own address).
    assert_eq!(c.links.len(), 1);
    assert_eq!(c.links[0].name, "ucast-eth1");
    assert_eq!(
        c.links[0].kind,
        LinkKind::Ucast {
            interface: "eth1".into(),
            peers: vec![ip("192.168.180.10"), ip("192.168.180.20")],
            port: 694
        }
    );
    assert_eq!(
        c.links[0].ucast_peers_excluding(&[ip("192.168.180.20")]),
        [ip("192.168.180.10")]
    );
    assert_eq!(
        c.links[0].ucast_peers_excluding(&[ip("192.168.180.10")]),
        [ip("192.168.180.20")]
    );
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    let ha_cf = fixture("ha.cf").display().to_string();
    assert!(
        text.contains(&format!("{ha_cf}:2:12: warning: `ucast eth1 192.168.180.10` names only ox2's address: added ox1's address 192.168.180.20 (from drbd.conf, same subnet) so one file serves both nodes; each node skips its own address")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|w| w.contains("incon-degr-cmd is not imported")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|w| w.contains("no stonith device")),
        "{text:#?}"
    );
}

#[test]
fn import_output_loads_and_validates() {
    let f = files();
    let (c, warnings) = import(&f).unwrap_or_else(|e| panic!("{e}"));
    let text = render(&c, &f, &warnings);
    let (back, _) =
        Config::parse_str("imported.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, c);
}

/// `Filesystem::/dev/drbdN` mounts what tandem publishes for the disk whose drbd.conf
/// `device` is /dev/drbdN, and the seed's reiserfs is reported with what to use instead.
#[test]
fn whitepaper_file_systems_mount_the_tandem_devices_and_reiserfs_is_reported() {
    let (_, warnings) = import(&files()).unwrap_or_else(|e| panic!("{e}"));
    let w: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter().any(|w| w.contains("/dev/drbd0 → /dev/tandem/r0")
            && w.contains("/dev/drbd3 → /dev/tandem/r3")),
        "{w:?}"
    );
    let reiser: Vec<&String> = w
        .iter()
        .filter(|w| w.contains("reiserfs was removed"))
        .collect();
    assert_eq!(reiser.len(), 4, "one per file system: {w:?}");
    assert!(reiser[0].contains("mkfs.ext4 /dev/tandem/r1"), "{w:?}");
}

/// Every whitepaper disk is promoted by the group in a cluster that fences, so the
/// importer gives each `resource-and-stonith`: a failover can never promote a copy
/// that lacks acknowledged writes. A DRBD 8 `fencing` line and its `fence-peer`
/// handler are read: the policy is kept, the handler is replaced (and said so).
#[test]
fn whitepaper_disks_fence_by_default_and_drbd8_fencing_imports() {
    let (c, _) = import(&files()).unwrap_or_else(|e| panic!("{e}"));
    for d in &c.disks {
        assert_eq!(d.fencing, DiskFencing::ResourceAndStonith, "{}", d.name);
    }
    let drbd = std::fs::read_to_string(fixture("drbd.conf")).unwrap();
    let drbd8 = drbd.replacen(
        "on-io-error   detach;",
        "on-io-error   detach;\n    fencing resource-only;",
        1,
    ) + "\n";
    let drbd8 = drbd8.replacen(
        "protocol C;",
        "protocol C;\n  handlers { fence-peer \"/usr/lib/drbd/crm-fence-peer.sh\"; }",
        1,
    );
    let ha_cf = std::fs::read_to_string(fixture("ha.cf")).unwrap();
    let har = std::fs::read_to_string(fixture("haresources")).unwrap();
    let (c, warnings) = tandem_config::import::import_texts(&files(), &ha_cf, &har, Some(&drbd8))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.disks[0].fencing, DiskFencing::ResourceOnly);
    assert_eq!(c.disks[1].fencing, DiskFencing::ResourceAndStonith);
    let w: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter()
            .any(|w| w.contains("fence-peer") && w.contains("not imported")),
        "{w:?}"
    );
    let dont = drbd.replacen("on-io-error   detach;", "fencing dont-care;", 1);
    let (c, warnings) = tandem_config::import::import_texts(&files(), &ha_cf, &har, Some(&dont))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.disks[0].fencing, DiskFencing::DontCare);
    assert!(
        warnings
            .iter()
            .any(|w| w.to_string().contains("loses those acknowledged writes")),
        "{warnings:?}"
    );
}

/// DRBD's `split-brain`, `out-of-sync` and `after-resync-target` handlers become
/// `[[notify]]` commands for that disk's events, run through `/bin/sh -c` as DRBD runs
/// them; other handlers are still reported as not imported.
#[test]
fn drbd_handlers_import_as_notifications() {
    let drbd = std::fs::read_to_string(fixture("drbd.conf")).unwrap();
    let drbd = drbd.replacen(
        "protocol C;",
        "protocol C;\n  handlers {\n    split-brain \"/usr/lib/drbd/notify-split-brain.sh root\";\n    out-of-sync \"/usr/lib/drbd/notify-out-of-sync.sh root\";\n    after-resync-target \"/usr/local/sbin/resynced r0\";\n    pri-lost \"/usr/lib/drbd/notify-pri-lost.sh\";\n  }",
        1,
    );
    let ha_cf = std::fs::read_to_string(fixture("ha.cf")).unwrap();
    let har = std::fs::read_to_string(fixture("haresources")).unwrap();
    let (c, warnings) = tandem_config::import::import_texts(&files(), &ha_cf, &har, Some(&drbd))
        .unwrap_or_else(|e| panic!("{e}"));
    let disk = &c.disks[0].name;
    let got: Vec<(&str, &str, &[String], &[String])> = c
        .notify
        .iter()
        .map(|n| {
            (
                n.name.as_str(),
                n.command.to_str().unwrap(),
                n.args.as_slice(),
                n.events.as_slice(),
            )
        })
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].0, format!("{disk}-split-brain"));
    assert_eq!(got[0].1, "/bin/sh");
    assert_eq!(
        got[0].2,
        [
            "-c".to_string(),
            "/usr/lib/drbd/notify-split-brain.sh root".into()
        ]
    );
    assert_eq!(got[0].3, ["split_brain".to_string()]);
    assert_eq!(got[1].3, ["out_of_sync".to_string()]);
    assert_eq!(got[2].3, ["resync_done".to_string()]);
    assert!(c.notify.iter().all(|n| n.disks == [disk.clone()]));
    let w: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter()
            .any(|w| w.contains("pri-lost") && w.contains("not imported")),
        "{w:?}"
    );
    // What the importer prints loads back to the same notifications.
    let text = tandem_config::to_toml(&c);
    let (back, _) = tandem_config::Config::parse_str("imported.toml", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back.notify, c.notify);
}
