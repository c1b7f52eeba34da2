//! Membership for real: two `tandem daemon`s in lab hosts, heartbeats over a unicast link
//! on the dedicated `hb` network and a broadcast link on `lan`, and a serial link over a
//! pty pair. Each test names the behaviour it proves.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::labconfig::LabConfig;
use common::{TANDEM, wait_for, wall_ms, write_private};
use serde_json::Value;
use tandem_lab::{Lab, Topology};
use tandem_testkit::root_or_skip;

const KEEPALIVE_MS: u64 = 200;
const DEADTIME_MS: u64 = 1000;
const SECRET: &str = "lab-secret-0123456789abcdef";

/// The daemons' configuration: node order gives ids (ox1 = 1, ox2 = 2), link order gives
/// link ids (hb = 0, lan = 1).
fn cluster_toml(lab: &Lab) -> String {
    let mut c = LabConfig::new("labcluster", lab.name(), &lab.data_dir(), "authkeys");
    c.timing(
        Duration::from_millis(KEEPALIVE_MS),
        Duration::from_millis(DEADTIME_MS),
        Duration::from_millis(500),
        Duration::from_secs(3),
    )
    .node_addresses()
    .hb_link()
    .lan_bcast();
    c.render()
}

struct Cluster {
    lab: Lab,
    config: PathBuf,
}

impl Drop for Cluster {
    /// On failure, the daemons' logs are the first thing to read: print them before the
    /// lab (and its data directory) is torn down.
    fn drop(&mut self) {
        common::print_agent_logs_on_panic(&self.lab, 200);
    }
}

impl Cluster {
    fn start() -> Cluster {
        let lab = Lab::up_auto(Topology::whitepaper()).expect("lab up");
        let dir = lab.data_dir();
        let config = dir.join("cluster.toml");
        std::fs::write(&config, cluster_toml(&lab)).unwrap();
        write_private(&dir.join("authkeys"), &format!("auth 1\n1 sha1 {SECRET}\n"));
        let cluster = Cluster { lab, config };
        for node in ["ox1", "ox2"] {
            cluster.start_daemon(node);
        }
        cluster
    }

    fn start_daemon(&self, node: &str) {
        common::spawn_agent(&self.lab, &self.config, node);
    }

    fn status(&self, node: &str) -> Option<Value> {
        let config = self.config.to_str().unwrap();
        let out = self
            .lab
            .run(node, &[TANDEM, "-c", config, "status", "--json"])
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    fn peer(&self, node: &str, peer: &str) -> Option<Value> {
        let status = self.status(node)?;
        status["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == peer)
            .cloned()
    }

    fn events(&self, node: &str, kind: &str) -> Vec<Value> {
        self.status(node)
            .map(|s| {
                s["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["event"] == kind)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn link_up(&self, node: &str, peer: &str, link: &str) -> Option<bool> {
        let p = self.peer(node, peer)?;
        p["links"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == link)
            .and_then(|l| l["up"].as_bool())
    }

    fn drops(&self, node: &str, link: &str, reason: &str) -> u64 {
        self.status(node)
            .and_then(|s| {
                s["links"]
                    .as_array()?
                    .iter()
                    .find(|l| l["name"] == link)
                    .and_then(|l| l["drops"][reason].as_u64())
            })
            .unwrap_or(0)
    }

    fn wait_both_links_up(&self) {
        for (node, peer) in [("ox1", "ox2"), ("ox2", "ox1")] {
            wait_for(Duration::from_secs(10), "both links up", || {
                let up = self.link_up(node, peer, "hb")? && self.link_up(node, peer, "lan")?;
                up.then_some(())
            });
        }
    }
}

#[test]
fn one_link_cut_keeps_nodes_up_all_cut_declares_dead_in_time_heal_reports_partition() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let mut c = Cluster::start();
    c.wait_both_links_up();

    // One link cut: the link goes down in status, the nodes stay up.
    c.lab.partition("hb", &[]).unwrap();
    for (node, peer) in [("ox1", "ox2"), ("ox2", "ox1")] {
        wait_for(Duration::from_secs(10), "hb link down", || {
            (!c.link_up(node, peer, "hb")?).then_some(())
        });
        assert_eq!(c.peer(node, peer).unwrap()["state"], "up");
        assert_eq!(c.link_up(node, peer, "lan"), Some(true));
    }
    std::thread::sleep(Duration::from_millis(2 * DEADTIME_MS));
    for node in ["ox1", "ox2"] {
        assert!(
            c.events(node, "node_dead").is_empty(),
            "{node} declared its peer dead while the lan link carried heartbeats"
        );
    }

    // Every link cut: each side declares the other dead within deadtime + one keepalive
    // of the cut (the last packet was heard at most one keepalive before it).
    let cut_ms = wall_ms();
    c.lab.partition("lan", &[]).unwrap();
    for node in ["ox1", "ox2"] {
        let dead = wait_for(Duration::from_secs(10), "node_dead", || {
            c.events(node, "node_dead").first().cloned()
        });
        let delay = dead["time_ms"].as_u64().unwrap() as i64 - cut_ms as i64;
        // Scheduling slack for the nftables rule, the event stamp and a busy CI machine.
        let slack = 250;
        assert!(
            delay >= (DEADTIME_MS - KEEPALIVE_MS) as i64 - slack
                && delay <= (DEADTIME_MS + KEEPALIVE_MS) as i64 + slack,
            "{node}: dead declared {delay} ms after the cut; expected within \
             [deadtime - keepalive, deadtime + keepalive] = [{}, {}] ms",
            DEADTIME_MS - KEEPALIVE_MS,
            DEADTIME_MS + KEEPALIVE_MS
        );
    }

    // Heal: the same incarnations speak again, which is a return after a partition.
    c.lab.heal(None, &[]).unwrap();
    for (node, peer) in [("ox1", "ox2"), ("ox2", "ox1")] {
        wait_for(Duration::from_secs(10), "returned after partition", || {
            (!c.events(node, "node_returned_after_partition").is_empty()).then_some(())
        });
        wait_for(Duration::from_secs(10), "peer up again", || {
            (c.peer(node, peer)?["state"] == "up").then_some(())
        });
    }
    c.wait_both_links_up();
}

#[test]
fn forged_replayed_and_unknown_packets_from_a_lab_host_are_dropped_and_counted() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let c = Cluster::start();
    c.wait_both_links_up();
    let dir = c.lab.data_dir();

    // Capture a real heartbeat of ox2's on the lan (broadcast reaches the client).
    let pcap = dir.join("capture.pcap");
    c.lab
        .run(
            "client",
            &[
                "timeout",
                "10",
                "tcpdump",
                "-i",
                "eth0",
                "-c",
                "1",
                "-w",
                pcap.to_str().unwrap(),
                "udp port 694 and src host 192.168.1.10",
            ],
        )
        .expect("tcpdump in the client host");
    let captured = first_udp_payload(&std::fs::read(&pcap).unwrap());

    let send = |bytes: &[u8]| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        c.lab
            .run(
                "client",
                &[
                    "python3",
                    "-c",
                    "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\
                     .sendto(bytes.fromhex(sys.argv[1]), ('192.168.1.20', 694))",
                    &hex,
                ],
            )
            .expect("send from the client host");
    };

    // 1. A captured packet re-sent: authentic, but already seen.
    let replays = c.drops("ox1", "lan", "replay");
    send(&captured);
    wait_for(Duration::from_secs(5), "replay counted", || {
        (c.drops("ox1", "lan", "replay") > replays).then_some(())
    });

    // 2. The same packet with one bit of its MAC flipped.
    let mut forged = captured.clone();
    *forged.last_mut().unwrap() ^= 1;
    send(&forged);
    wait_for(Duration::from_secs(5), "bad MAC counted", || {
        (c.drops("ox1", "lan", "bad_mac") >= 1).then_some(())
    });

    // 3. A well-formed packet with the right key from a node id the cluster lacks.
    let key = tandem_wire::PacketKey::from_authkeys("sha1", SECRET).unwrap();
    let digest = tandem_wire::sha256(b"labcluster");
    let header = tandem_wire::Header {
        kind: tandem_wire::PacketKind::Heartbeat,
        flags: 0,
        cluster_id: u64::from_be_bytes(digest[..8].try_into().unwrap()),
        sender: 9,
        dest: 0,
        incarnation: 1,
        seq: 1,
        link: 1,
        body_len: 0,
    };
    let body = tandem_wire::Body::Heartbeat(tandem_wire::HeartbeatBody {
        config_digest: [0; 32],
        keepalive_ms: KEEPALIVE_MS as u32,
        view: Vec::new(),
    });
    send(&tandem_wire::encode(&header, &body, &key).unwrap());
    wait_for(Duration::from_secs(5), "unknown node counted", || {
        (c.drops("ox1", "lan", "unknown_node") >= 1).then_some(())
    });

    // 4. A truncated packet.
    send(&captured[..20]);
    wait_for(Duration::from_secs(5), "truncated counted", || {
        (c.drops("ox1", "lan", "truncated") >= 1).then_some(())
    });

    // None of it disturbed the membership.
    assert_eq!(c.peer("ox1", "ox2").unwrap()["state"], "up");
    assert!(c.events("ox1", "node_dead").is_empty());
}

/// The UDP payload of the first packet in a pcap file (Ethernet, IPv4, UDP).
fn first_udp_payload(pcap: &[u8]) -> Vec<u8> {
    assert!(pcap.len() > 24 + 16, "empty capture");
    let record = &pcap[24..];
    let captured_len = u32::from_le_bytes(record[8..12].try_into().unwrap()) as usize;
    let frame = &record[16..16 + captured_len];
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let udp = &ip[ihl..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp[8..udp_len].to_vec()
}
