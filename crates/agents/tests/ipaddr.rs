//! The built-in `ipaddr` agent in our own network namespaces: IPv4 and IPv6 added over
//! netlink, found by monitor, announced (the peer's neighbour entry moves to our MAC),
//! removed, and stop on an absent address succeeds.

mod common;

use std::time::Duration;

use common::Lab;
use tandem_agents::{Action, Agent, OcfExit, Paths, RunOptions, check_resource};
use tandem_config::{Resource, ResourceKind};
use tandem_testkit::root_or_skip;

fn vip(address: &str, prefix_len: Option<u8>, interface: Option<&str>) -> Resource {
    Resource {
        name: format!("vip-{address}"),
        timeout: Duration::from_secs(20),
        monitor_interval: Some(Duration::from_secs(5)),
        kind: ResourceKind::IpAddr {
            address: address.parse().unwrap(),
            prefix_len,
            interface: interface.map(String::from),
            broadcast: None,
            garp_count: 5,
            garp_interval: Duration::from_millis(200),
        },
    }
}

fn opts() -> RunOptions {
    RunOptions::new(Duration::from_secs(20))
}

#[test]
fn ipv4_and_ipv6_added_announced_monitored_and_removed() {
    if !root_or_skip("network namespaces, mounts, loop devices") {
        return;
    }
    let lab = Lab::new(72);
    let mac = lab.mac_ours();
    let v4 = "10.72.0.100";
    let v6 = "fd48::100";
    lab.peer_stale(v4);
    lab.peer_stale(v6);
    // v4 on the interface whose subnet matches (none named, prefix taken from it);
    // v6 on a named interface with an explicit prefix.
    let r4 = vip(v4, None, None);
    let r6 = vip(v6, Some(64), Some(&lab.if_ours));
    let (a4, a6, before, started, monitored) = lab.ours.run(move || {
        let a4 = Agent::new(&r4, &Paths::default()).unwrap();
        let a6 = Agent::new(&r6, &Paths::default()).unwrap();
        let before = [
            a4.run(Action::Monitor, &opts()),
            a6.run(Action::Monitor, &opts()),
        ];
        let started = [
            a4.run(Action::Start, &opts()),
            a6.run(Action::Start, &opts()),
        ];
        let monitored = [
            a4.run(Action::Monitor, &opts()),
            a6.run(Action::Monitor, &opts()),
        ];
        (a4, a6, before, started, monitored)
    });
    for r in &before {
        assert_eq!(r.exit, Some(OcfExit::NotRunning), "{r}");
    }
    for r in &started {
        println!("start: {r}");
        assert!(r.is_success(), "{r}");
        assert!(!r.reason.contains("failed"), "{r}");
    }
    for r in &monitored {
        assert_eq!(r.exit, Some(OcfExit::Success), "{r}");
    }
    let shown = lab.ours.ip(&format!("-o addr show dev {}", lab.if_ours));
    assert!(
        shown.contains(&format!("{v4}/24")),
        "prefix from the matching subnet: {shown}"
    );
    assert!(
        shown.contains("brd 10.72.0.255"),
        "derived broadcast: {shown}"
    );
    assert!(shown.contains(&format!("{v6}/64")), "{shown}");
    let v6_line = shown.lines().find(|l| l.contains(v6)).unwrap();
    assert!(
        !v6_line.contains("tentative"),
        "start waits for DAD: {v6_line}"
    );

    // The peer had stale entries pointing elsewhere; our announcements moved them.
    let n4 = lab.wait_peer_neigh(v4, &mac);
    let n6 = lab.wait_peer_neigh(v6, &mac);
    println!(
        "peer neighbour entries after start:\n  {}  {}",
        n4.trim(),
        n6.trim()
    );

    let (stopped, after, again) = lab.ours.run(move || {
        let stopped = [a4.run(Action::Stop, &opts()), a6.run(Action::Stop, &opts())];
        let after = [
            a4.run(Action::Monitor, &opts()),
            a6.run(Action::Monitor, &opts()),
        ];
        let again = [a4.run(Action::Stop, &opts()), a6.run(Action::Stop, &opts())];
        (stopped, after, again)
    });
    for r in stopped.iter().chain(&again) {
        assert!(r.is_success(), "{r}");
    }
    for r in &after {
        assert_eq!(r.exit, Some(OcfExit::NotRunning), "{r}");
    }
    let shown = lab.ours.ip("-o addr show");
    assert!(!shown.contains(v4) && !shown.contains(v6), "{shown}");
}

#[test]
fn start_is_idempotent_and_errors_are_classified() {
    if !root_or_skip("network namespaces, mounts, loop devices") {
        return;
    }
    let lab = Lab::new(73);
    let ok = vip("10.73.0.50", Some(24), Some(&lab.if_ours));
    let no_subnet = vip("192.0.2.1", None, None);
    let no_if = vip("10.73.0.51", Some(24), Some("nosuchif0"));
    let (first, second, e1, e2, stop) = lab.ours.run(move || {
        let a = Agent::new(&ok, &Paths::default()).unwrap();
        let first = a.run(Action::Start, &opts());
        let second = a.run(Action::Start, &opts());
        let e1 = Agent::new(&no_subnet, &Paths::default())
            .unwrap()
            .run(Action::Start, &opts());
        let e2 = Agent::new(&no_if, &Paths::default())
            .unwrap()
            .run(Action::Start, &opts());
        let stop = a.run(Action::Stop, &opts());
        (first, second, e1, e2, stop)
    });
    assert!(first.is_success(), "{first}");
    assert!(
        second.is_success() && second.reason.contains("already present"),
        "{second}"
    );
    assert_eq!(e1.exit, Some(OcfExit::NotConfigured), "{e1}");
    assert_eq!(e2.exit, Some(OcfExit::NotInstalled), "{e2}");
    assert!(stop.is_success());
}

#[test]
fn config_check_rejects_bad_prefix() {
    let mut r = vip("10.0.0.1", Some(33), None);
    let issues = check_resource(&r, &Paths::default());
    assert!(
        issues
            .iter()
            .any(|i| i.error && i.message.contains("prefix")),
        "{issues:?}"
    );
    r = vip("10.0.0.1", Some(24), None);
    assert!(check_resource(&r, &Paths::default()).is_empty());
}

#[test]
fn without_announcements_the_peer_keeps_its_stale_entry() {
    // Negative control for the test above: the peer's entry moves because of our
    // announcements, not because of anything else the kernel does.
    if !root_or_skip("network namespaces, mounts, loop devices") {
        return;
    }
    let lab = Lab::new(74);
    let v4 = "10.74.0.100";
    lab.peer_stale(v4);
    let mut res = vip(v4, Some(24), None);
    if let ResourceKind::IpAddr { garp_count, .. } = &mut res.kind {
        *garp_count = 0;
    }
    let r = lab.ours.run(move || {
        Agent::new(&res, &Paths::default())
            .unwrap()
            .run(Action::Start, &opts())
    });
    assert!(r.is_success(), "{r}");
    std::thread::sleep(Duration::from_millis(1500));
    let n = lab.peer_neigh(v4);
    assert!(n.contains("02:00:00:00:00:99"), "{n}");
}

#[test]
fn a_capture_on_the_peer_sees_count_pairs_spaced_by_the_interval() {
    if !root_or_skip("network namespaces, mounts, loop devices") {
        return;
    }
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let lab = Lab::new(75);
    let v4 = "10.75.0.100";
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.peer.name,
            "timeout",
            "20",
            "tcpdump",
            "-l",
            "-n",
            "-tt",
            "-c",
            "10",
            "-i",
        ])
        .arg(&lab.if_peer)
        .args(["arp", "and", "host", v4])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    // tcpdump says "listening on ..." once the capture is open.
    let mut stderr = BufReader::new(tcpdump.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "tcpdump ended before listening"
        );
    }
    let res = vip(v4, Some(24), None);
    let r = lab.ours.run(move || {
        Agent::new(&res, &Paths::default())
            .unwrap()
            .run(Action::Start, &opts())
    });
    assert!(r.is_success(), "{r}");
    let out = tcpdump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10, "5 pairs expected:\n{text}");
    let requests = lines
        .iter()
        .filter(|l| l.contains("Request who-has"))
        .count();
    let replies = lines.iter().filter(|l| l.contains("Reply")).count();
    assert_eq!((requests, replies), (5, 5), "{text}");
    let t = |l: &str| l.split_whitespace().next().unwrap().parse::<f64>().unwrap();
    let span = t(lines[9]) - t(lines[0]);
    // 4 gaps of 200 ms; generous bounds for a loaded 2-core machine.
    assert!(
        span >= 0.6,
        "announcements too close together: {span:.3} s\n{text}"
    );
    println!("5 GARP pairs over {span:.3} s:\n{text}");
}
