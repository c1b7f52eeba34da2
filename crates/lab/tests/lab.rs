//! The lab, for real: namespaces, bridges, cgroups, mounts. Needs root (see `root()`).
//! Every test builds its own lab with a unique name, so they run in parallel threads.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem_lab::{HostSpec, Lab, NetSpec, Topology};

/// Root-gated tests: under CI they must run, elsewhere they say why they skip.
fn root() -> bool {
    if tandem_lab::require_root().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("these lab tests need root, and CI=true: run them as root");
    }
    eprintln!("skipping: the lab needs root (namespaces, cgroups, mounts)");
    false
}

/// Two hosts on two networks; `private_dirs` empty keeps the machine's tree untouched.
fn two_hosts() -> Topology {
    let host = |n: &str| HostSpec {
        name: n.into(),
        private_dirs: vec![],
    };
    let net = |name: &str, third: u8| NetSpec {
        name: name.into(),
        subnet: format!("10.77.{third}.0/24"),
        hosts: BTreeMap::from([
            ("a".to_string(), Ipv4Addr::new(10, 77, third, 1)),
            ("b".to_string(), Ipv4Addr::new(10, 77, third, 2)),
        ]),
    };
    Topology {
        hosts: vec![host("a"), host("b")],
        nets: vec![net("lan", 1), net("hb", 2)],
    }
}

fn ping(lab: &Lab, from: &str, to: Ipv4Addr) -> bool {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "1", "-W", "1", "-n", "-q", &to.to_string()]);
    let out = lab.output(from, cmd).expect("run ping in the lab");
    out.status.success()
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID: "alive" here means not reaped.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn hosts_ping_each_other_over_two_networks() {
    if !root() {
        return;
    }
    let lab = Lab::up_auto(two_hosts()).unwrap();
    for net in ["lan", "hb"] {
        let b = lab.address("b", net).unwrap();
        let a = lab.address("a", net).unwrap();
        assert!(ping(&lab, "a", b), "a cannot ping b on {net}");
        assert!(ping(&lab, "b", a), "b cannot ping a on {net}");
    }
    // ARP resolved b's lan address to the MAC the lab promised.
    let mac = lab.mac("b", "lan").unwrap();
    let neigh = lab.neighbors("a").unwrap();
    let b_lan = lab.address("b", "lan").unwrap().to_string();
    assert!(
        neigh
            .iter()
            .any(|n| n.address == b_lan && n.mac.as_deref() == Some(mac.as_str())),
        "a's neighbour table {neigh:?} lacks {b_lan} at {mac}"
    );
    // Nothing of the lab in the machine's own namespace, and no default route inside.
    let own = Command::new("ip").args(["-4", "addr"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&own.stdout).contains("10.77."));
    let routes = lab.run("a", &["ip", "route", "show", "default"]).unwrap();
    assert!(routes.trim().is_empty(), "a has a default route: {routes}");
    // The host's own view: its /proc shows its PID namespace (init is PID 1).
    let comm = lab.read_file("a", "/proc/1/comm").unwrap();
    assert_eq!(String::from_utf8_lossy(&comm).trim(), "tandem-lab-init");
}

#[test]
fn power_off_kills_and_reaps_every_process_and_downs_links() {
    if !root() {
        return;
    }
    let mut lab = Lab::up_auto(two_hosts()).unwrap();
    // A spawned daemon, a daemon that forks a grandchild and orphans it, and a process
    // ignoring SIGTERM: all must go.
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let direct = lab.spawn("a", cmd).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
        .stdout(Stdio::piped());
    let out = lab.output("a", cmd).unwrap();
    assert!(out.status.success());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' TERM; exec sleep 1000"]);
    let stubborn = lab.spawn("a", cmd).unwrap();
    let before = lab.processes("a").unwrap();
    assert!(
        before.len() >= 4,
        "expected init + 3 sleepers, got {before:?}"
    );
    assert!(before.contains(&direct.pid()) && before.contains(&stubborn.pid()));

    lab.power_off("a").unwrap();

    let cg = lab.cgroup("a").unwrap();
    assert!(
        std::fs::read_to_string(cg.join("cgroup.procs"))
            .unwrap()
            .trim()
            .is_empty()
    );
    assert!(
        std::fs::read_to_string(cg.join("cgroup.events"))
            .unwrap()
            .contains("populated 0")
    );
    for pid in &before {
        assert!(
            !pid_alive(*pid),
            "pid {pid} of host a still exists (zombie?)"
        );
    }
    // The handles saw the kill.
    assert!(direct.try_wait().unwrap().is_some());
    assert!(stubborn.try_wait().unwrap().is_some());
    // Switch-side links are down; b no longer reaches a.
    let status = lab.status().unwrap();
    let a = status.hosts.iter().find(|h| h.name == "a").unwrap();
    assert!(!a.powered);
    assert!(a.interfaces.iter().all(|i| !i.link_up), "{a:?}");
    assert!(!ping(&lab, "b", lab.address("a", "hb").unwrap()));
    // Processes cannot be started in a host without power.
    assert!(lab.run("a", &["true"]).is_err());

    // Cold boot: reachable again, nothing came back, an address added before is gone.
    lab.power_on("a").unwrap();
    assert!(ping(&lab, "b", lab.address("a", "hb").unwrap()));
    let procs = lab.processes("a").unwrap();
    assert_eq!(procs.len(), 1, "only the new init runs: {procs:?}");
    lab.run("a", &["ip", "addr", "add", "10.77.1.99/24", "dev", "eth0"])
        .unwrap();
    lab.power_off("a").unwrap();
    lab.power_on("a").unwrap();
    let addrs = lab.run("a", &["ip", "-4", "addr"]).unwrap();
    assert!(!addrs.contains("10.77.1.99"), "{addrs}");
    assert_eq!(lab.mac("a", "lan").unwrap(), {
        let l = lab
            .run("a", &["cat", "/sys/class/net/eth0/address"])
            .unwrap();
        l.trim().to_string()
    });
}

#[test]
fn partition_cuts_one_network_and_heal_restores_it() {
    if !root() {
        return;
    }
    let mut lab = Lab::up_auto(two_hosts()).unwrap();
    let b_hb = lab.address("b", "hb").unwrap();
    let b_lan = lab.address("b", "lan").unwrap();
    assert!(ping(&lab, "a", b_hb) && ping(&lab, "a", b_lan));

    lab.partition("hb", &[]).unwrap();
    assert!(
        !ping(&lab, "a", b_hb),
        "hb still carries traffic after partition"
    );
    assert!(ping(&lab, "a", b_lan), "lan must keep working");
    lab.heal(Some("hb"), &[]).unwrap();
    assert!(ping(&lab, "a", b_hb), "heal did not restore hb");

    // Isolating one host on one network.
    lab.partition("lan", &["b"]).unwrap();
    assert!(!ping(&lab, "a", b_lan));
    assert!(ping(&lab, "a", b_hb));
    assert_eq!(lab.partitions().len(), 1);
    lab.heal(None, &[]).unwrap();
    assert!(ping(&lab, "a", b_lan));
    assert!(lab.partitions().is_empty());
}

#[test]
fn freeze_stops_processes_and_thaw_resumes_them() {
    if !root() {
        return;
    }
    let mut lab = Lab::up_auto(two_hosts()).unwrap();
    // A counter that publishes its progress atomically (write + rename) in a file of the
    // host, on a tmpfs mounted inside it.
    lab.run("a", &["mount", "-t", "tmpfs", "lab-test", "/mnt"])
        .unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /mnt/tmp; mv /mnt/tmp /mnt/count; done",
    ]);
    let _counter = lab.spawn("a", cmd).unwrap();
    let count = |lab: &Lab| -> u64 {
        let b = lab.read_file("a", "/mnt/count").unwrap();
        String::from_utf8_lossy(&b).trim().parse().unwrap_or(0)
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(count(&lab) > 0, "the counter never ran");

    lab.freeze("a").unwrap();
    assert!(lab.is_frozen("a").unwrap());
    let frozen_at = count(&lab);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&lab), frozen_at, "a frozen host's counter advanced");

    lab.thaw("a").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        count(&lab) > frozen_at,
        "the counter did not resume after thaw"
    );
}

#[test]
fn mounts_inside_a_host_stay_inside() {
    if !root() {
        return;
    }
    let mut lab = Lab::up_auto(two_hosts()).unwrap();
    let tag = format!("labmnt-{}", lab.name());
    lab.run("a", &["mount", "-t", "tmpfs", &tag, "/mnt"])
        .unwrap();
    let inside = String::from_utf8(lab.read_file("a", "/proc/1/mounts").unwrap()).unwrap();
    assert!(inside.contains(&tag));
    let outside = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !outside.contains(&tag),
        "host mount leaked into the machine"
    );
    // Host b does not see it either.
    let b = String::from_utf8(lab.read_file("b", "/proc/1/mounts").unwrap()).unwrap();
    assert!(!b.contains(&tag));
    // Power-off drops it with the host's mount namespace.
    lab.power_off("a").unwrap();
    lab.power_on("a").unwrap();
    let inside = String::from_utf8(lab.read_file("a", "/proc/1/mounts").unwrap()).unwrap();
    assert!(!inside.contains(&tag), "mount survived a power cycle");
}

#[test]
fn teardown_leaves_nothing_behind() {
    if !root() {
        return;
    }
    let lab = Lab::up_auto(two_hosts()).unwrap();
    let name = lab.name().to_string();
    let prefix = format!("tl-{name}-");
    assert!(netns_list().contains(&prefix));
    // A loop device on a lab file, mounted in the machine, and one mounted in a host.
    let img = lab.data_dir().join("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(16 << 20).unwrap();
    drop(f);
    let run = |args: &[&str]| {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    run(&["mkfs.ext4", "-q", img.to_str().unwrap()]);
    let dev = run(&["losetup", "-f", "--show", img.to_str().unwrap()]);
    let mnt = lab.data_dir().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(&["mount", &dev, mnt.to_str().unwrap()]);
    let mut sleeper = Command::new("sleep");
    sleeper.arg("1000");
    let p = lab.spawn("b", sleeper).unwrap();

    let report = lab.down().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(!pid_alive(p.pid()));
    assert!(!netns_list().contains(&prefix), "{}", netns_list());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&name), "{mounts}");
    assert!(!mounts.contains(&dev));
    let loops = run(&["losetup", "-a"]);
    assert!(!loops.contains(&name), "{loops}");
    assert!(!std::path::Path::new(&format!("/run/tandem-lab/{name}")).exists());
}

#[test]
fn down_by_name_cleans_a_lab_whose_owner_forgot_it() {
    if !root() {
        return;
    }
    let mut lab = Lab::up_auto(two_hosts()).unwrap();
    lab.keep(); // as if the process that built it had been killed
    let name = lab.name().to_string();
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let p = lab.spawn("a", cmd).unwrap();
    // Another handle (another `tandem lab` process) can drive it.
    let mut other = Lab::open(&name).unwrap();
    other.partition("hb", &["a"]).unwrap();
    assert_eq!(lab.partitions().len(), 1);
    drop(other);
    // Reap our child ourselves, the way a separate `tandem lab down` cannot.
    let waiter = std::thread::spawn(move || p.wait().map(|s| s.success()));
    let report = tandem_lab::down(&name).unwrap();
    assert!(report.killed >= 2, "{report:?}");
    assert!(
        !waiter.join().unwrap().unwrap(),
        "the killed sleeper cannot exit 0"
    );
    assert!(!netns_list().contains(&format!("tl-{name}-")));
    drop(lab);
    assert!(matches!(
        Lab::open(&name),
        Err(tandem_lab::LabError::NoSuchLab(_))
    ));
}
