//! The native format: a full example loads with the right values, and what `to_toml`
//! writes loads back to the same model.

use std::path::Path;
use std::time::Duration;

use tandem_config::*;

fn testdata(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/config")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[test]
fn example_loads_with_typed_values() {
    let (c, warnings) = Config::parse_str("example.toml", &testdata("example.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.cluster.keepalive, Duration::from_millis(500));
    assert_eq!(c.cluster.deadtime, Duration::from_secs(5));
    assert_eq!(c.cluster.ping_groups[0].addresses.len(), 2);
    assert_eq!(c.cluster.nbd_group.as_deref(), Some("disk"));
    assert_eq!(c.links[1].name, "serial-ttyS0");
    assert_eq!(c.links[2].name, "mcast-eth0");
    let r0 = c.disk("r0").unwrap();
    assert_eq!(r0.rate_bytes_per_s, Some(5 * 1024 * 1024));
    assert_eq!(r0.wfc_timeout, None);
    assert_eq!(r0.hosts.len(), 2);
    assert_eq!(r0.hosts[0].node, "ox1");
    assert_eq!(r0.host("ox2").unwrap().meta, Meta::Internal);
    let g = c.group("ox").unwrap();
    let names: Vec<&str> = g.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ip-192.168.1.160",
            "disk-r0",
            "fs-var-lib-pgsql",
            "postgresql",
            "Dummy",
            "mail-alert"
        ]
    );
    assert_eq!(g.resources[3].timeout, Duration::from_secs(120));
    assert_eq!(g.resources[5].monitor_interval, None);
    assert_eq!(c.fence_devices[1].agent, FenceAgent::Manual);
}

#[test]
fn emitted_toml_round_trips() {
    let (c, _) = Config::parse_str("example.toml", &testdata("example.toml")).unwrap();
    let text = to_toml(&c);
    let (back, _) =
        Config::parse_str("emitted.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, c, "{text}");
    // And the emitter is a fixed point: writing the re-read model gives the same text.
    assert_eq!(to_toml(&back), text);
}

#[test]
fn defaults_fill_a_minimal_file() {
    let text = "[cluster]\nname = \"x\"\n[[node]]\nname = \"a\"\n[[link]]\ntype = \"bcast\"\ninterface = \"eth0\"\n";
    let (c, warnings) = Config::parse_str("min.toml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.cluster.keepalive, defaults::KEEPALIVE);
    assert_eq!(c.cluster.deadtime, defaults::DEADTIME);
    assert_eq!(c.cluster.auto_failback, AutoFailback::Off);
    assert_eq!(c.cluster.fencing, FencingPolicy::Required);
    assert_eq!(
        c.cluster.nbd_group, None,
        "NBD sockets are root-only by default"
    );
    assert_eq!(
        c.links[0].kind,
        LinkKind::Bcast {
            interface: "eth0".into(),
            port: 694
        }
    );
    // No fence device while fencing is required: accepted, but said out loud.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].message.contains("tandem fence confirm"));
}

#[test]
fn random_input_never_panics() {
    let base = testdata("example.toml");
    let bytes = base.as_bytes();
    let mut x: u64 = 7;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut m = bytes.to_vec();
        // Flip, delete or duplicate a few bytes of a valid file: near-misses reach far
        // deeper into the checks than pure noise does.
        for k in 0..3 {
            let pos = ((x >> (k * 16)) as usize) % m.len();
            match (x >> (48 + k)) % 3 {
                0 => m[pos] = (x >> 8) as u8,
                1 => {
                    m.remove(pos);
                }
                _ => m.insert(pos, m[pos]),
            }
        }
        let text = String::from_utf8_lossy(&m);
        let _ = Config::parse_str("fuzz.toml", &text);
    }
}

/// A disk's fencing policy: DRBD's names; the default is `resource-and-stonith` for a
/// disk that a group promotes in a fencing cluster and `resource-only` otherwise, and
/// `dont-care` loads with a warning that names the data loss.
#[test]
fn disk_fencing_defaults_follow_the_group_and_the_cluster() {
    let text = testdata("example.toml");
    let (c, _) = Config::parse_str("example.toml", &text).unwrap();
    assert_eq!(
        c.disk("r0").unwrap().fencing,
        DiskFencing::ResourceAndStonith
    );

    // Not in any group: nothing fences for it by itself. (The example's blocks are
    // separated by blank lines; the group's `disk` resource is one of them.)
    let no_group: String = text
        .split("\n\n")
        .filter(|block| !block.contains("type = \"disk\""))
        .collect::<Vec<_>>()
        .join("\n\n");
    let (c, _) = Config::parse_str("no-group.toml", &no_group).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.disk("r0").unwrap().fencing, DiskFencing::ResourceOnly);

    let dont_care = text.replace(
        "name = \"r0\"\n",
        "name = \"r0\"\nfencing = \"dont-care\"\n",
    );
    let (c, warnings) = Config::parse_str("dont-care.toml", &dont_care).unwrap();
    assert_eq!(c.disk("r0").unwrap().fencing, DiskFencing::DontCare);
    let w: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter()
            .any(|w| w.contains("dont-care") && w.contains("loses those acknowledged writes")),
        "{w:?}"
    );
    // The emitter writes the policy, so what a node runs is what its file says.
    assert!(to_toml(&c).contains("fencing = \"dont-care\""));
}

/// A disk, an address or a mount point managed by two resources — in a second group
/// with the other home, or twice in one — is refused at the second, with where the
/// first is: both groups would promote the disk, add the address, mount the directory.
#[test]
fn a_disk_address_or_mount_point_belongs_to_one_resource() {
    let text = testdata("example.toml")
        + r#"
[[group]]
name = "twin"
home = "ox2"

[[group.resource]]
type = "disk"
disk = "r0"

[[group.resource]]
type = "ipaddr"
address = "192.168.1.160/24"

[[group.resource]]
type = "filesystem"
device = "/dev/drbd0"
directory = "/var/lib/pgsql"
fstype = "ext4"
"#;
    let errors = Config::parse_str("twin.toml", &text)
        .unwrap_err()
        .to_string();
    for (what, first) in [
        ("disk `r0`", "disk-r0"),
        ("address 192.168.1.160", "ip-192.168.1.160"),
        ("mount point /var/lib/pgsql", "fs-var-lib-pgsql"),
    ] {
        let line = errors
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no error for {what}:\n{errors}"));
        assert!(line.starts_with("twin.toml:"), "{line}");
        assert!(
            line.contains(&format!("already managed by resource `{first}`")),
            "{line}"
        );
    }
    // Twice in one group is the same mistake.
    let twice = testdata("example.toml").replace(
        "[[group.resource]]\ntype = \"systemd\"",
        "[[group.resource]]\ntype = \"disk\"\ndisk = \"r0\"\nname = \"again\"\n\n[[group.resource]]\ntype = \"systemd\"",
    );
    let errors = Config::parse_str("twice.toml", &twice)
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("resource `again`: disk `r0` is already managed"),
        "{errors}"
    );
}
