//! The lab, for real: namespaces, bridges, cgroups, mounts. Needs root (`tandem_testkit::root_or_skip`).
//! Every test builds its own lab with a unique name, so they run in parallel threads.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem_lab::{HostSpec, Lab, NetSpec, Topology};

use tandem_testkit::root_or_skip;

/// Two hosts on two networks; `private_dirs` empty keeps the machine's tree untouched.
fn two_hosts() -> Topology {
    let host = |n: &str| HostSpec {
        private_dirs: vec![],
        ..HostSpec::new(n)
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

fn ping_once(lab: &Lab, from: &str, to: Ipv4Addr) -> bool {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "1", "-W", "1", "-n", "-q", &to.to_string()]);
    let out = lab.output(from, cmd).expect("run ping in the lab");
    out.status.success()
}

/// A reply within a few tries (a loaded machine may delay one ping process).
fn reachable(lab: &Lab, from: &str, to: Ipv4Addr) -> bool {
    (0..3).any(|_| ping_once(lab, from, to))
}

/// No reply to one ping with a 1 s wait: a cut that leaks answers in microseconds.
fn unreachable(lab: &Lab, from: &str, to: Ipv4Addr) -> bool {
    !ping_once(lab, from, to)
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
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let lab = Lab::up_auto(two_hosts()).unwrap();
    for net in ["lan", "hb"] {
        let b = lab.address("b", net).unwrap();
        let a = lab.address("a", net).unwrap();
        assert!(reachable(&lab, "a", b), "a cannot ping b on {net}");
        assert!(reachable(&lab, "b", a), "b cannot ping a on {net}");
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
    // Each host is named as the lab names it (`tandem` finds its node by host name),
    // and the machine's own name is untouched.
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for host in ["a", "b"] {
        assert_eq!(lab.run(host, &["hostname"]).unwrap().trim(), host);
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        machine
    );
}

#[test]
fn power_off_kills_and_reaps_every_process_and_downs_links() {
    if !root_or_skip("namespaces, cgroups, mounts") {
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
    assert!(unreachable(&lab, "b", lab.address("a", "hb").unwrap()));
    // Processes cannot be started in a host without power.
    assert!(lab.run("a", &["true"]).is_err());

    // Cold boot: reachable again, nothing came back, an address added before is gone.
    lab.power_on("a").unwrap();
    assert!(reachable(&lab, "b", lab.address("a", "hb").unwrap()));
    let procs = lab.processes("a").unwrap();
    assert_eq!(procs.len(), 1, "only the new init runs: {procs:?}");
    lab.run("a", &["ip", "addr", "add", "10.77.1.99/24", "dev", "eth0"])
        .unwrap();
    let vip = ("eth0".to_string(), "10.77.1.99/24".to_string());
    assert!(lab.addresses("a").unwrap().contains(&vip));
    lab.power_off("a").unwrap();
    lab.power_on("a").unwrap();
    let addrs = lab.addresses("a").unwrap();
    assert!(!addrs.contains(&vip), "{addrs:?}");
    assert!(addrs.contains(&("eth1".to_string(), "10.77.2.1/24".to_string())));
    assert_eq!(lab.mac("a", "lan").unwrap(), {
        let l = lab
            .run("a", &["cat", "/sys/class/net/eth0/address"])
            .unwrap();
        l.trim().to_string()
    });
}

#[test]
fn partition_cuts_one_network_and_heal_restores_it() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let mut lab = Lab::up_auto(two_hosts()).unwrap();
    let b_hb = lab.address("b", "hb").unwrap();
    let b_lan = lab.address("b", "lan").unwrap();
    assert!(reachable(&lab, "a", b_hb) && reachable(&lab, "a", b_lan));

    lab.partition("hb", &[]).unwrap();
    assert!(
        unreachable(&lab, "a", b_hb),
        "hb still carries traffic after partition"
    );
    assert!(reachable(&lab, "a", b_lan), "lan must keep working");
    lab.heal(Some("hb"), &[]).unwrap();
    assert!(reachable(&lab, "a", b_hb), "heal did not restore hb");

    // Isolating one host on one network.
    lab.partition("lan", &["b"]).unwrap();
    assert!(unreachable(&lab, "a", b_lan));
    assert!(reachable(&lab, "a", b_hb));
    assert_eq!(lab.partitions().len(), 1);
    lab.heal(None, &[]).unwrap();
    assert!(reachable(&lab, "a", b_lan));
    assert!(lab.partitions().is_empty());
}

#[test]
fn freeze_stops_processes_and_thaw_resumes_them() {
    if !root_or_skip("namespaces, cgroups, mounts") {
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
    let counter = lab.spawn("a", cmd).unwrap();
    let count = |lab: &Lab| -> u64 {
        let b = lab.read_file("a", "/mnt/count").unwrap();
        String::from_utf8_lossy(&b).trim().parse().unwrap_or(0)
    };
    // Generous bounds: the machine may be loaded; only "never" is a failure.
    let advances_beyond = |lab: &Lab, n: u64| {
        (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            count(lab) > n
        })
    };
    assert!(advances_beyond(&lab, 0), "the counter never ran");

    lab.freeze("a").unwrap();
    assert!(lab.is_frozen("a").unwrap());
    let frozen_at = count(&lab);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&lab), frozen_at, "a frozen host's counter advanced");

    lab.thaw("a").unwrap();
    assert!(
        advances_beyond(&lab, frozen_at),
        "the counter did not resume after thaw"
    );

    // A frozen host can be powered off (a hung node gets fenced), and a later thaw
    // changes nothing: its processes are gone for good.
    lab.freeze("a").unwrap();
    lab.power_off("a").unwrap();
    assert!(!pid_alive(counter.pid()));
    assert!(lab.processes("a").unwrap().is_empty());
    lab.thaw("a").unwrap();
    assert!(!lab.is_frozen("a").unwrap());
    assert!(lab.processes("a").unwrap().is_empty());
}

#[test]
fn mounts_inside_a_host_stay_inside() {
    if !root_or_skip("namespaces, cgroups, mounts") {
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
    // A Unix socket on that host-only mount is reachable from outside by host_path
    // (how a test reaches an NBD server's socket in a host's private /run/tandem).
    let mut server = Command::new("python3");
    server.args([
        "-c",
        "import socket; s=socket.socket(socket.AF_UNIX); s.bind('/mnt/s.sock'); s.listen(); \
         c,_=s.accept(); c.sendall(b'hello from a'); c.close()",
    ]);
    let server = lab.spawn("a", server).unwrap();
    let sock = lab.host_path("a", "/mnt/s.sock").unwrap();
    let mut waited_ms = 0;
    let mut conn = loop {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(e) => {
                assert!(waited_ms < 20_000, "cannot connect {}: {e}", sock.display());
                std::thread::sleep(Duration::from_millis(20));
                waited_ms += 20;
            }
        }
    };
    let mut got = String::new();
    std::io::Read::read_to_string(&mut conn, &mut got).unwrap();
    assert_eq!(got, "hello from a");
    assert!(server.wait().unwrap().success());
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
    if !root_or_skip("namespaces, cgroups, mounts") {
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
    if !root_or_skip("namespaces, cgroups, mounts") {
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

#[test]
fn power_switch_serves_fencing_from_inside_a_host() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let lab = Lab::up_auto(two_hosts()).unwrap();
    assert_eq!(tandem_lab::lab_owner(lab.name()), Some(std::process::id()));
    let switch = lab.power_switch().unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let victim = lab.spawn("a", cmd).unwrap();
    // Host b talks to the switch over its socket, as a fence agent in b would.
    let sock = switch.path().display().to_string();
    let ask = |line: &str| -> String {
        let script = format!(
            "import socket; s=socket.socket(socket.AF_UNIX); s.connect('{sock}'); \
             s.sendall(b'{line}\\n'); print(s.makefile().read().strip())"
        );
        lab.run("b", &["python3", "-c", &script])
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(ask("status a"), "on");
    assert_eq!(ask("off a"), "ok");
    assert!(
        !pid_alive(victim.pid()),
        "the switch's power-off left the process"
    );
    assert!(victim.try_wait().unwrap().is_some());
    assert_eq!(ask("status a"), "off");
    assert!(ask("explode a").starts_with("error: unknown verb"));
    assert_eq!(ask("list"), "a off\nb on\nend");
    assert_eq!(ask("on a"), "ok");
    assert!(reachable(&lab, "b", lab.address("a", "hb").unwrap()));
    // The client side of the library says the same.
    let st = tandem_lab::switch_request(lab.name(), &tandem_lab::SwitchRequest::Status("a".into()));
    assert_eq!(st.unwrap(), "on");
}

/// Not a test on its own: `leftovers_of_a_killed_run_are_removed` runs this in a child
/// process and kills it with SIGKILL while the lab is up.
#[test]
#[ignore]
fn helper_build_lab_then_hang() {
    let Ok(name) = std::env::var("TANDEM_LAB_HELPER") else {
        return;
    };
    let lab = Lab::up(&name, two_hosts()).unwrap();
    let img = lab.data_dir().join("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(16 << 20).unwrap();
    drop(f);
    let st = Command::new("mkfs.ext4")
        .args(["-q", img.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    // A loop mount inside host a, and a daemon in host b.
    lab.run("a", &["mount", "-o", "loop", img.to_str().unwrap(), "/mnt"])
        .unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let _daemon = lab.spawn("b", cmd).unwrap();
    std::fs::write(lab.data_dir().join("ready"), b"").unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn leftovers_of_a_killed_run_are_removed() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let name = format!("k{:x}", std::process::id());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_build_lab_then_hang"])
        .env("TANDEM_LAB_HELPER", &name)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ready = std::path::Path::new(tandem_lab::DATA_ROOT)
        .join(&name)
        .join("ready");
    let mut waited_ms = 0;
    while !ready.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the helper died before the lab was up"
        );
        assert!(waited_ms < 60_000, "the helper's lab never came up");
        std::thread::sleep(Duration::from_millis(20));
        waited_ms += 20;
    }
    assert_eq!(tandem_lab::lab_owner(&name), Some(child.id()));
    let loops = |n: &str| {
        let o = Command::new("losetup").arg("-a").output().unwrap();
        String::from_utf8_lossy(&o.stdout).contains(n)
    };
    assert!(loops(&name), "the helper's loop device is missing");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        tandem_lab::lab_owner(&name),
        None,
        "a dead owner is no owner"
    );

    let report = tandem_lab::down(&name).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(report.killed >= 2, "{report:?}");
    assert!(!netns_list().contains(&format!("tl-{name}-")));
    assert!(!loops(&name), "loop device left behind");
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(&name)
    );
    assert!(
        !std::path::Path::new(tandem_lab::DATA_ROOT)
            .join(&name)
            .exists()
    );
    assert!(
        !std::path::Path::new(tandem_lab::STATE_ROOT)
            .join(&name)
            .exists()
    );
}

/// Not a test on its own: serves a lab's power switch from a separate process, as
/// `tandem lab switchd` does, for `power_off_from_another_process_reaps_our_children`.
#[test]
#[ignore]
fn helper_serve_switch() {
    let Ok(name) = std::env::var("TANDEM_LAB_SWITCH") else {
        return;
    };
    Lab::open(&name).unwrap().serve_power_switch().unwrap();
}

#[test]
fn power_off_from_another_process_reaps_our_children() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let lab = Lab::up_auto(two_hosts()).unwrap();
    let mut server = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_serve_switch"])
        .env("TANDEM_LAB_SWITCH", lab.name())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut waited_ms = 0;
    while std::os::unix::net::UnixStream::connect(tandem_lab::switch_socket(lab.name())).is_err() {
        assert!(waited_ms < 30_000, "the switch process never listened");
        std::thread::sleep(Duration::from_millis(20));
        waited_ms += 20;
    }
    // Our children in host a: only this process can reap them, yet the power-off is
    // done by the other process, which waits until they are reaped.
    let mut procs = Vec::new();
    for _ in 0..5 {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        procs.push(lab.spawn("a", cmd).unwrap());
    }
    let off = tandem_lab::SwitchRequest::Off("a".into());
    assert_eq!(tandem_lab::switch_request(lab.name(), &off).unwrap(), "ok");
    for p in &procs {
        assert!(!pid_alive(p.pid()), "pid {} survived power-off", p.pid());
        assert!(p.try_wait().unwrap().is_some());
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn multicast_and_broadcast_cross_the_bridge_until_partitioned() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let mut lab = Lab::up_auto(two_hosts()).unwrap();
    let b_hb = lab.address("b", "hb").unwrap();
    let a_hb = lab.address("a", "hb").unwrap();
    // b listens for one multicast and one broadcast datagram (Heartbeat's mcast and
    // bcast media), printing what arrives or "timeout".
    let receive = |lab: &Lab, timeout_s: u32| {
        let script = format!(
            "import socket,struct\n\
             m=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             m.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); m.bind(('',6940))\n\
             m.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,\
             struct.pack('4s4s',socket.inet_aton('239.1.2.3'),socket.inet_aton('{b_hb}')))\n\
             b=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             b.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); b.bind(('',6941))\n\
             print('ready',flush=True)\n\
             for s in (m,b):\n  s.settimeout({timeout_s})\n  try: print(s.recv(100).decode(),flush=True)\n  \
             except socket.timeout: print('timeout',flush=True)\n"
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-c", &script]).stdout(Stdio::piped());
        let mut p = lab.spawn("b", cmd).unwrap();
        let mut out = std::io::BufReader::new(p.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        (p, out)
    };
    let send = |lab: &Lab| {
        let script = format!(
            "import socket\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,socket.inet_aton('{a_hb}'))\n\
             s.sendto(b'mcast',('239.1.2.3',6940))\n\
             b=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             b.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\n\
             b.setsockopt(socket.SOL_SOCKET,socket.SO_BINDTODEVICE,b'eth1')\n\
             b.sendto(b'bcast',('255.255.255.255',6941))\n"
        );
        lab.run("a", &["python3", "-c", &script]).unwrap();
    };
    let rest = |p: tandem_lab::HostProcess, out: std::io::BufReader<std::process::ChildStdout>| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out.into_inner(), &mut text).unwrap();
        assert!(p.wait().unwrap().success());
        text
    };
    let (p, out) = receive(&lab, 10);
    send(&lab);
    assert_eq!(rest(p, out), "mcast\nbcast\n");

    lab.partition("hb", &["a"]).unwrap();
    // Datagrams cross a bridge in microseconds; 3 s after the send is plenty.
    let (p, out) = receive(&lab, 3);
    send(&lab);
    assert_eq!(rest(p, out), "timeout\ntimeout\n");
}

#[test]
fn a_pulled_cable_is_carrier_loss_and_survives_a_power_cycle() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let mut lab = Lab::up_auto(two_hosts()).unwrap();
    let carrier = |lab: &Lab| {
        let c = lab.read_file("a", "/sys/class/net/eth1/carrier").unwrap();
        String::from_utf8_lossy(&c).trim().to_string()
    };
    assert_eq!(carrier(&lab), "1");
    lab.set_link("a", "hb", false).unwrap();
    assert_eq!(carrier(&lab), "0", "host a should see no carrier on hb");
    assert!(unreachable(&lab, "b", lab.address("a", "hb").unwrap()));
    assert!(reachable(&lab, "b", lab.address("a", "lan").unwrap()));
    lab.power_off("a").unwrap();
    lab.power_on("a").unwrap();
    assert_eq!(carrier(&lab), "0", "the cable came back with a reboot");
    assert!(reachable(&lab, "b", lab.address("a", "lan").unwrap()));
    lab.set_link("a", "hb", true).unwrap();
    assert!(reachable(&lab, "b", lab.address("a", "hb").unwrap()));
    assert_eq!(carrier(&lab), "1");
}

/// A handle sees what another handle did: after a power cycle through one handle (as
/// the power switch or `tandem lab power` do from elsewhere), another runs commands on
/// the host's new init instead of failing on the old one.
#[test]
fn a_host_power_cycled_through_another_handle_is_usable_from_this_one() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let lab = Lab::up_auto(two_hosts()).unwrap();
    assert_eq!(lab.run("a", &["echo", "before"]).unwrap().trim(), "before");
    let mut other = Lab::open(lab.name()).unwrap();
    other.power_off("a").unwrap();
    assert!(
        lab.run("a", &["true"]).is_err(),
        "a powered-off host runs nothing"
    );
    other.power_on("a").unwrap();
    assert_eq!(lab.run("a", &["echo", "after"]).unwrap().trim(), "after");
}
