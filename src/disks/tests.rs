use tandem_config::Meta;
use tandem_disk::core::policy::SplitBrainPolicy;
use tandem_disk::driver::{self, DriverConfig};
use tandem_disk::meta::MetaLocation;

use super::settings::{core_config, link_secret};
use super::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn link_secrets_differ_per_disk_and_key() {
    let a = link_secret(b"key one 0123456789", "r0");
    // HMAC-SHA256(key, "tandem disk link v1: r0"), as docs/disk.md gives it: nodes of
    // every version derive the same secret.
    assert_eq!(
        hex(&a),
        "bb3bbf9892c9d60e8aa61bb1bc30685d9cb824fa82f714969b52546d783055d2"
    );
    assert_ne!(a, link_secret(b"key one 0123456789", "r1"));
    assert_ne!(a, link_secret(b"key two 0123456789", "r0"));
    assert_eq!(a, link_secret(b"key one 0123456789", "r0"));
}

/// `cluster.nbd_group` names a group; its id comes from the system's group
/// database, and a name it does not know is an error (the caller then keeps the
/// sockets root-only).
#[test]
fn nbd_group_names_resolve_through_the_group_database() {
    assert_eq!(group_id("root").unwrap(), 0);
    let e = group_id("no-such-group-for-tandem").unwrap_err();
    assert!(format!("{e:#}").contains("no such group"), "{e:#}");
}

/// Two real nodes on loopback: the startup wait ends in the event loop's own step
/// that completes the handshake (no polling task in between), stays over after the
/// link drops again, and `disconnect` (stand alone) also ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_wait_ends_when_the_node_reports_the_handshake() {
    use tandem_disk::meta::MetaStore;
    let dir = std::env::temp_dir().join(format!("tandem-disks-wait-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (pa, pb) = (port(), port());
    let cfg = |name: &str, id: u64, listen, peer| {
        let backing = dir.join(name);
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        MetaStore::create(&backing, &MetaLocation::Internal, 7, id, false).unwrap();
        DriverConfig {
            backing,
            meta: MetaLocation::Internal,
            listen,
            peer,
            secret: b"wait test".to_vec(),
            connect_interval: Duration::from_secs(1),
            core: Default::default(),
        }
    };
    let a = driver::start(cfg("a.img", 1, pa, pb)).await.unwrap();
    let mut link = a.link();
    assert!(!startup_over(&link.borrow()), "{:?}", *link.borrow());
    let b = driver::start(cfg("b.img", 2, pb, pa)).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(20), link.wait_for(startup_over))
        .await
        .expect("no handshake within 20 s")
        .map(|l| *l)
        .expect("node stopped");
    assert_eq!(seen.handshakes, 1, "{seen:?}");
    // What the loop published is what status says.
    let status = a.status().await.unwrap();
    assert!(status.connection.replicating(), "{status:?}");
    // The peer goes away: connecting again, but the wait stays over.
    b.shutdown().await.unwrap();
    let gone = tokio::time::timeout(
        Duration::from_secs(20),
        link.wait_for(|l| l.connection == ConnState::Connecting),
    )
    .await
    .expect("the link never dropped")
    .map(|l| *l)
    .unwrap();
    assert!(startup_over(&gone), "{gone:?}");
    // A fresh node that stands alone is not waiting either.
    let c = driver::start(cfg("c.img", 3, port(), port()))
        .await
        .unwrap();
    let mut alone = c.link();
    assert!(!startup_over(&alone.borrow()));
    c.disconnect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), alone.wait_for(startup_over))
        .await
        .expect("standalone not published")
        .unwrap();
    a.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_idle_link_is_pinged_within_its_timeout() {
    let text = r#"
[cluster]
name = "t"
key_file = "/etc/tandem/authkey"
[[node]]
name = "a"
[[node]]
name = "b"
[[link]]
type = "ucast"
interface = "eth1"
peers = ["10.0.0.1", "10.0.0.2"]
[[disk]]
name = "r0"
protocol = "A"
rate = "5M"
after_sb_0pri = "discard-older-primary"
[disk.on.a]
device = "/dev/drbd0"
backing = "/dev/sdb1"
address = "10.0.0.1:7788"
[disk.on.b]
device = "/dev/drbd0"
backing = "/dev/sdb1"
address = "10.0.0.2:7788"
"#;
    let (config, _) = tandem_config::Config::parse_str("test.toml", text).expect("config");
    let core = core_config(&config.disks[0]);
    assert_eq!(core.protocol, tandem_config::Protocol::A);
    assert_eq!(core.resync_rate_bytes_per_s, Some(5 << 20));
    assert_eq!(core.ping_timeout_ms, 6000);
    // Not in a group: resource-only, as the configuration resolved it.
    assert_eq!(core.fencing, tandem_config::DiskFencing::ResourceOnly);
    assert!(core.ping_interval_ms * 2 < core.ping_timeout_ms);
    assert_eq!(
        core.after_split_brain.no_primary,
        SplitBrainPolicy::DiscardOlderPrimary
    );
    assert!(meta_location(&Meta::Internal).is_ok());
    assert!(
        meta_location(&Meta::External {
            path: "/dev/md".into(),
            index: Some(1)
        })
        .is_err()
    );
}
