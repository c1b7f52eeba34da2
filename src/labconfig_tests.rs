//! The lab configuration builder's tests (kept out of `labconfig.rs`, which the
//! integration tests include as a module of their own: its tests would run in each).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use tandem_config::{Config, DiskFencing, FencingPolicy, LinkKind};

use crate::labconfig::*;

/// Everything the lab clusters use, rendered and read back, is the model built.
#[test]
fn a_rendered_lab_configuration_reads_back_to_the_model() {
    let dir = Path::new("/var/lib/tandem-lab/t1");
    let mut c = LabConfig::new("lab", "t1", dir, "authkey");
    c.timing(
        Duration::from_millis(200),
        Duration::from_secs(1),
        Duration::from_millis(500),
        Duration::from_secs(3),
    )
    .fencing(FencingPolicy::Required)
    .node_addresses()
    .hb_link()
    .lan_bcast()
    .witness()
    .lab_switch()
    .metrics("127.0.0.1:9465".parse().unwrap());
    c.cluster_mut().fencing_delay = Duration::from_secs(8);
    c.cluster_mut().ping = vec!["192.168.1.50".parse().unwrap()];
    let r0 = c.disk("r0", 7788, [dir.join("ox1-r0.img"), dir.join("ox2-r0.img")]);
    r0.rate_bytes_per_s = Some(4 << 20);
    r0.al_extents = 7;
    c.disk("r1", 7789, [dir.join("ox1-r1.img"), dir.join("ox2-r1.img")]);
    c.disk_fencing("r1", DiskFencing::DontCare);
    c.group(
        "data",
        "ox1",
        vec![
            disk_resource("r0", "r0"),
            filesystem("fs", "/dev/tandem/r0", "/srv/data", "ext4"),
            ocf(
                "dummy",
                "heartbeat",
                "Dummy",
                &[("state", "/run/tandem/dummy.state")],
            ),
            lsb("httpd", "/srv/web"),
            ipaddr("vip", Ipv4Addr::new(192, 168, 1, 100), 24, "eth0"),
        ],
    )
    .migration_threshold = 1;
    c.notify(
        "record",
        dir.join("record-env"),
        &[dir.join("events").display().to_string()],
        &["node_dead", "fenced"],
    );
    let model = c.config();
    let (back, _) = Config::parse_str("lab.toml", &c.render()).unwrap();
    assert_eq!(back, model);
    // The loader's defaults were applied where nothing was chosen.
    assert_eq!(model.disks[0].fencing, DiskFencing::ResourceAndStonith);
    assert_eq!(model.disks[1].fencing, DiskFencing::DontCare);
    let LinkKind::Ucast { peers, .. } = &model.links[0].kind else {
        panic!("hb is ucast")
    };
    assert_eq!(peers.len(), 3, "the witness joins hb");
}

/// A resource's own table reads into the model; two tables are refused.
#[test]
fn a_resource_table_reads_into_the_model() {
    let r = resource_from_toml(
        "[[group.resource]]\nname = \"records\"\ntype = \"ocf\"\nprovider = \"heartbeat\"\nagent = \"anything\"\nparams = { binfile = \"/usr/sbin/tandem\" }\nmonitor_interval = \"1s\"\n",
    )
    .unwrap();
    assert_eq!(
        r,
        ocf(
            "records",
            "heartbeat",
            "anything",
            &[("binfile", "/usr/sbin/tandem")]
        )
    );
    let two = "[[group.resource]]\nname = \"a\"\ntype = \"lsb\"\nscript = \"a\"\n[[group.resource]]\nname = \"b\"\ntype = \"lsb\"\nscript = \"b\"\n";
    assert!(resource_from_toml(two).is_err());
}

/// A minimal cluster (no witness, no disk in a group) reads back the same too, and
/// a disk outside any group keeps the default for that case.
#[test]
fn a_minimal_lab_configuration_reads_back_to_the_model() {
    let dir = Path::new("/var/lib/tandem-lab/t2");
    let mut c = LabConfig::new("disklab", "t2", dir, "otherkey");
    c.hb_link();
    c.disk("r0", 7788, [dir.join("a"), dir.join("b")])
        .wfc_timeout = Some(Duration::from_secs(4));
    let (back, _) = Config::parse_str("lab.toml", &c.render()).unwrap();
    assert_eq!(back, c.config());
    assert_eq!(back.disks[0].fencing, DiskFencing::ResourceOnly);
    assert_eq!(back.cluster.key_file, dir.join("otherkey"));
}

/// The whitepaper's ha.cf has one ucast link on the dedicated network: `add_witness`
/// puts the witness's address there (not its lan address) and adds the table, and the
/// result is a configuration the loader takes.
#[test]
fn a_witness_added_to_the_imported_whitepaper_cluster_joins_its_ucast_link() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/config/whitepaper");
    let files = tandem_config::import::HaFiles {
        ha_cf: seed.join("ha.cf"),
        haresources: seed.join("haresources"),
        drbd_conf: Some(seed.join("drbd.conf")),
        ..Default::default()
    };
    let (mut config, _) = tandem_config::import::import(&files).unwrap();
    assert!(config.witness.is_none());
    add_witness(&mut config);
    let witness = config.witness.as_ref().expect("[witness]");
    assert_eq!(witness.name, WITNESS);
    assert_eq!(witness.tie_wait, config.cluster.deadtime);
    let ucast: Vec<_> = config
        .links
        .iter()
        .filter_map(|l| match &l.kind {
            LinkKind::Ucast { peers, .. } => Some(peers.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ucast.len(), 1, "{:?}", config.links);
    assert!(ucast[0].contains(&WITNESS_HB.into()), "{:?}", ucast[0]);
    assert!(!ucast[0].contains(&WITNESS_LAN.into()), "{:?}", ucast[0]);
    // Twice changes nothing; the rendered file reads back the same.
    let once = config.clone();
    add_witness(&mut config);
    assert_eq!(config, once);
    let text = tandem_config::to_toml(&config);
    let (read, _) = Config::parse_str("imported.toml", &text).unwrap();
    assert_eq!(read.witness, config.witness);
    assert_eq!(read.links, config.links);
}
