//! Resource groups for real: two agents in lab hosts run a group of a service address
//! (built-in ipaddr), Debian's `ocf:heartbeat:Dummy` and an LSB init script that serves
//! TCP; a client host reaches the service through the address.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Cluster, Opts, VIP, middle};
use common::labconfig;
use common::wait_for;
use tandem_config::AutoFailback;
use tandem_testkit::root_or_skip;

#[test]
fn group_moves_in_order_to_the_peer_when_its_home_stops_cleanly() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let mut c = Cluster::start(Opts::default());
    c.wait_owner("ox1", "ox1");
    c.wait_owner("ox2", "ox1");
    assert_eq!(c.starts("ox1"), ["vip", "dummy", "httpd"]);
    assert!(c.client_connects(), "the client reaches the service on ox1");
    let ox1_mac = c.lab.mac("ox1", "lan").unwrap();
    let ox2_mac = c.lab.mac("ox2", "lan").unwrap();
    assert_eq!(c.client_neighbour_mac().as_deref(), Some(ox1_mac.as_str()));

    c.stop_daemon("ox1");
    c.wait_owner("ox2", "ox2");
    assert_eq!(
        c.starts("ox2"),
        ["vip", "dummy", "httpd"],
        "started in order"
    );
    // Nothing of the group is left on ox1: its address is gone.
    let addrs = c
        .lab
        .run("ox1", &["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(!addrs.contains(VIP), "ox1 still holds the address: {addrs}");
    // The gratuitous ARP moved the client's neighbour entry to ox2.
    wait_for(
        Duration::from_secs(5),
        "client neighbour entry on ox2's MAC",
        || (c.client_neighbour_mac()? == ox2_mac).then_some(()),
    );
    assert!(c.client_connects(), "the client reaches the service on ox2");
}

#[test]
fn standby_takeover_and_auto_failback() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let mut c = Cluster::start(Opts {
        auto_failback: AutoFailback::On,
        ..Opts::default()
    });
    c.wait_owner("ox2", "ox1");

    // hb_standby on ox1: its groups go to ox2.
    c.tandem("ox1", &["standby", "all"]);
    c.wait_owner("ox1", "ox2");
    assert!(c.client_connects());

    // hb_takeover on ox1: they come back.
    c.tandem("ox1", &["takeover", "all"]);
    c.wait_owner("ox2", "ox1");
    assert!(c.client_connects());

    // auto_failback on: when ox1 leaves, ox2 runs the group; when ox1 returns, the
    // group goes back to its home.
    c.stop_daemon("ox1");
    c.wait_owner("ox2", "ox2");
    // A standby with nobody to take the group is refused, with the reason and a
    // non-zero exit — not "requested" and then nothing.
    let refused = c.tandem_refused("ox2", &["standby", "all"]);
    assert!(
        refused.contains("exit status: 1") && refused.contains("no node would take over"),
        "{refused}"
    );
    c.start_daemon("ox1");
    c.wait_owner("ox2", "ox1");
    assert!(c.client_connects());
}

#[test]
fn a_failing_middle_resource_leaves_nothing_of_the_group_on_that_node() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    // The middle resource is an OCF agent that does not exist on this machine.
    let c = Cluster::start(Opts {
        edit: Arc::new(|c| {
            middle(
                c,
                labconfig::lsb("broken", "/nonexistent/tandem-test-missing-script"),
            )
        }),
        ..Opts::default()
    });
    wait_for(
        Duration::from_secs(30),
        "the failed start to be handled",
        || {
            let g = c.group("ox1")?;
            let failed = g["resources"]
                .as_array()?
                .iter()
                .any(|r| r["name"] == "broken" && r["failcount"].as_u64() > Some(0));
            let vip = g["resources"]
                .as_array()?
                .iter()
                .find(|r| r["name"] == "vip")?;
            (failed && vip["state"] == "stopped" && vip["peer_state"] != "started").then_some(())
        },
    );
    let addrs = c
        .lab
        .run("ox1", &["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(
        !addrs.contains(VIP),
        "ox1 kept the address of a failed group: {addrs}"
    );
}

#[test]
fn a_killed_service_is_restarted_in_place_and_past_the_threshold_the_group_moves() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let c = Cluster::start(Opts::default());
    c.wait_owner("ox2", "ox1");
    let failcount = |c: &Cluster| -> Option<u64> {
        c.group("ox1")?["resources"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == "httpd")?["failcount"]
            .as_u64()
    };
    let kill_service = |c: &Cluster| {
        c.lab
            .run("ox1", &["sh", "-c", "kill -9 $(cat /run/tandem/web.pid)"])
            .expect("kill the service on ox1");
    };
    // Below the migration threshold (3): each kill is detected by the monitor and the
    // service is restarted where it was.
    for n in 1..=2u64 {
        kill_service(&c);
        wait_for(Duration::from_secs(20), "monitor failure counted", || {
            (failcount(&c)? == n).then_some(())
        });
        c.wait_owner("ox1", "ox1");
        assert!(c.client_connects(), "service back on ox1 after kill {n}");
    }
    // The third failure reaches the threshold: the group moves to ox2.
    kill_service(&c);
    c.wait_owner("ox2", "ox2");
    assert!(c.client_connects(), "service reachable on ox2");
    let addrs = c
        .lab
        .run("ox1", &["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(!addrs.contains(VIP), "ox1 kept the address: {addrs}");
}

#[test]
fn the_node_that_loses_outside_connectivity_hands_its_group_over() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    // The client is the outside world both nodes must reach (Heartbeat's ipfail).
    let mut c = Cluster::start(Opts {
        edit: Arc::new(|c| {
            let cluster = c.cluster_mut();
            cluster.ping = vec!["192.168.1.50".parse().unwrap()];
            cluster.deadping = Duration::from_secs(2);
        }),
        ..Opts::default()
    });
    c.wait_owner("ox2", "ox1");
    // ox1 loses the lan (and so the client); the hb link keeps the nodes together.
    c.lab.partition("lan", &["ox1"]).unwrap();
    c.wait_owner("ox2", "ox2");
    let ox1 = c.status("ox1").unwrap();
    assert_eq!(ox1["ping"]["ox1"], false, "{ox1}");
    assert!(
        ox1["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "ox2" && n["state"] == "up"),
        "the nodes stayed up over hb"
    );
    assert!(c.client_connects(), "the client reaches the service on ox2");
}

#[test]
fn maintenance_mode_stops_managing_without_stopping_anything() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let c = Cluster::start(Opts::default());
    c.wait_owner("ox2", "ox1");
    // The human status flags the missing fencing.
    let text = c.tandem("ox1", &["status"]);
    assert!(text.contains("FENCING DISABLED"), "{text}");
    assert!(text.contains("web"), "{text}");

    c.tandem("ox1", &["maintenance", "on"]);
    wait_for(Duration::from_secs(5), "maintenance on both nodes", || {
        (c.status("ox2")?["maintenance"] == true).then_some(())
    });
    // Nothing was stopped, and a dead service is left alone.
    assert!(c.client_connects());
    c.lab
        .run("ox1", &["sh", "-c", "kill -9 $(cat /run/tandem/web.pid)"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !c.client_connects(),
        "maintenance mode restarted the service"
    );
    let failures = c.group("ox1").unwrap()["resources"][2]["failcount"].as_u64();
    assert_eq!(failures, Some(0), "no monitor ran in maintenance mode");

    // Managing again: the monitor finds the dead service and restarts it.
    c.tandem("ox1", &["maintenance", "off"]);
    wait_for(Duration::from_secs(20), "service restarted", || {
        c.client_connects().then_some(())
    });
}

#[test]
fn failures_expire_and_the_group_fails_back_to_its_home() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let c = Cluster::start(Opts {
        auto_failback: AutoFailback::On,
        edit: Arc::new(|c| {
            let web = c.group_mut("web");
            web.migration_threshold = 1;
            web.failure_timeout = Duration::from_secs(4);
        }),
        ..Opts::default()
    });
    c.wait_owner("ox2", "ox1");
    // One failure reaches the threshold of 1: the group leaves its home.
    c.lab
        .run("ox1", &["sh", "-c", "kill -9 $(cat /run/tandem/web.pid)"])
        .unwrap();
    c.wait_owner("ox2", "ox2");
    // Once the failure is older than failure_timeout, ox1 may run the group again, and
    // auto_failback brings it home.
    c.wait_owner("ox2", "ox1");
    let g = c.group("ox1").unwrap();
    let httpd = g["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "httpd")
        .unwrap()
        .clone();
    assert_eq!(httpd["failcount"], 0, "the failure expired: {httpd}");
    assert!(c.client_connects());
}
