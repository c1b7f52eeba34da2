//! The blocking driver over real sockets and a real pty pair, on loopback only.
//! Run with `cargo test -p tandem-membership --features driver`.
#![cfg(feature = "driver")]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_membership::driver::{Driver, LinkSpec, Medium, TimedEvent};
use tandem_membership::{
    DropReason, Event, LinkConfig, Membership, MembershipConfig, NodeConfig, NodeState, PacketKey,
    RetransmitConfig,
};

const KEEPALIVE: Duration = Duration::from_millis(50);
const DEADTIME: Duration = Duration::from_millis(300);

fn config(local: u32, links: &[(u16, &str)]) -> MembershipConfig {
    MembershipConfig {
        cluster_id: 77,
        local_node: local,
        nodes: vec![
            NodeConfig {
                id: 1,
                name: "alpha".into(),
            },
            NodeConfig {
                id: 2,
                name: "beta".into(),
            },
        ],
        links: links
            .iter()
            .map(|&(id, name)| LinkConfig {
                id,
                name: name.into(),
            })
            .collect(),
        keepalive: KEEPALIVE,
        deadtime: DEADTIME,
        warntime: DEADTIME / 2,
        initdead: DEADTIME * 2,
        key: PacketKey::from_native_key_file(b"a test key of more than sixteen bytes").unwrap(),
        config_digest: [5; 32],
        retransmit: RetransmitConfig::for_keepalive(KEEPALIVE),
    }
}

#[allow(clippy::disallowed_methods)] // tests drive real time through the driver
fn now() -> Instant {
    Instant::now()
}

fn core(local: u32, incarnation: u64, links: &[(u16, &str)]) -> Membership {
    Membership::new(config(local, links), incarnation, now()).unwrap()
}

/// A port free on `ip` right now (bound and released).
fn free(ip: &str) -> SocketAddr {
    UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap()
}

/// Waits (generously) for an event matching `pred`, keeping the others in `seen`.
fn wait_for(
    d: &Driver,
    seen: &mut Vec<Event>,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> TimedEvent {
    let deadline = now() + Duration::from_secs(10);
    while now() < deadline {
        if let Ok(e) = d.events().recv_timeout(Duration::from_millis(100)) {
            seen.push(e.event.clone());
            if pred(&e.event) {
                return e;
            }
        }
    }
    panic!("timed out waiting for {what}; saw {seen:?}");
}

#[test]
fn two_nodes_over_two_udp_links_detect_forgeries_death_and_restart() {
    let links = [(0, "lo-a"), (1, "lo-b")];
    let (a0, b0, a1, b1) = (
        free("127.0.0.11"),
        free("127.0.0.12"),
        free("127.0.0.21"),
        free("127.0.0.22"),
    );
    // A spy on B's link-0 peer list captures real packets for the forgery checks.
    let spy = UdpSocket::bind("127.0.0.99:0").unwrap();
    spy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let b_links = || {
        vec![
            LinkSpec {
                id: 0,
                medium: Medium::Ucast {
                    bind: b0,
                    peers: vec![a0, spy.local_addr().unwrap()],
                    device: None,
                },
            },
            LinkSpec {
                id: 1,
                medium: Medium::Ucast {
                    bind: b1,
                    peers: vec![a1],
                    device: None,
                },
            },
        ]
    };
    let a = Driver::start(
        core(1, 1, &links),
        vec![
            LinkSpec {
                id: 0,
                medium: Medium::Ucast {
                    bind: a0,
                    peers: vec![b0],
                    device: None,
                },
            },
            LinkSpec {
                id: 1,
                medium: Medium::Ucast {
                    bind: a1,
                    peers: vec![b1],
                    device: None,
                },
            },
        ],
    )
    .unwrap();
    let b = Driver::start(core(2, 1, &links), b_links()).unwrap();
    let (mut sa, mut sb) = (vec![], vec![]);
    wait_for(&a, &mut sa, "A: beta up", |e| {
        *e == Event::NodeUp {
            node: 2,
            incarnation: 1,
        }
    });
    wait_for(&a, &mut sa, "A: link 0", |e| {
        *e == Event::LinkUp { node: 2, link: 0 }
    });
    wait_for(&a, &mut sa, "A: link 1", |e| {
        *e == Event::LinkUp { node: 2, link: 1 }
    });
    wait_for(&b, &mut sb, "B: alpha up", |e| {
        matches!(e, Event::NodeUp { node: 1, .. })
    });

    // A reliable message crosses once although it travels on both links.
    let id = a.send_message(2, b"standby ox1".to_vec()).unwrap();
    wait_for(&b, &mut sb, "B: message", |e| {
        *e == Event::Message {
            from: 1,
            payload: b"standby ox1".to_vec(),
        }
    });
    wait_for(&a, &mut sa, "A: ack", |e| {
        *e == Event::MessageAcked { to: 2, id }
    });

    // Forgeries from a third socket: a captured packet replayed on its link and on the
    // other link, one with a flipped bit, and garbage.
    let mut captured = vec![0u8; 2048];
    let n = spy.recv(&mut captured).unwrap();
    let captured = &captured[..n];
    std::thread::sleep(KEEPALIVE); // let A process the original first
    let attacker = UdpSocket::bind("127.0.0.98:0").unwrap();
    attacker.send_to(captured, a0).unwrap();
    attacker.send_to(captured, a1).unwrap();
    let mut flipped = captured.to_vec();
    flipped[60] ^= 1;
    attacker.send_to(&flipped, a0).unwrap();
    attacker.send_to(b"GET / HTTP/1.0\r\n\r\n", a0).unwrap();
    std::thread::sleep(KEEPALIVE * 2);
    let st = a.status().unwrap();
    let drops = |l: usize, r: DropReason| st.links[l].drops.get(r);
    assert_eq!(drops(0, DropReason::Replay), 1, "{:?}", st.links[0].drops);
    assert_eq!(
        drops(1, DropReason::WrongLink),
        1,
        "{:?}",
        st.links[1].drops
    );
    assert_eq!(drops(0, DropReason::BadMac), 1);
    assert_eq!(drops(0, DropReason::Malformed), 1);
    assert_eq!(st.nodes[1].state, NodeState::Up);
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["nodes"][1]["links"][0]["up"], true);
    assert_eq!(json["links"][0]["drops"]["replay"], 1);

    // Power-off of B (its thread and sockets go away): A declares it dead after
    // deadtime, counted from B's last heartbeat (at most one keepalive before the stop).
    let stopped = now();
    b.stop().unwrap();
    let dead = wait_for(&a, &mut sa, "A: beta dead", |e| {
        matches!(e, Event::NodeDead { node: 2, .. })
    });
    let detection = dead.at - stopped;
    println!(
        "detection after stop: {detection:?} (deadtime {DEADTIME:?}, keepalive {KEEPALIVE:?})"
    );
    // Exactly: the verdict came no earlier than deadtime after the last packet A heard
    // (status says how long ago that was; 1 ms for its rounding).
    let asked = now();
    let st = a.status().unwrap();
    let ago = Duration::from_millis(st.nodes[1].last_heard_ms_ago.unwrap());
    let silence_at_verdict =
        (dead.at + ago + Duration::from_millis(1)).saturating_duration_since(asked);
    assert!(
        silence_at_verdict >= DEADTIME,
        "dead after only {silence_at_verdict:?} of silence"
    );
    // The last heartbeat left B at most about one keepalive before the stop.
    assert!(
        detection + KEEPALIVE + Duration::from_millis(20) >= DEADTIME,
        "dead too early: {detection:?}"
    );
    // Generous: a loaded CI machine may run the thread late, but not by seconds.
    assert!(detection < DEADTIME + KEEPALIVE + Duration::from_secs(2));

    // B restarts with a new incarnation on the same addresses.
    let b = Driver::start(core(2, 2, &links), b_links()).unwrap();
    wait_for(&a, &mut sa, "A: beta restarted", |e| {
        *e == Event::NodeRestarted {
            node: 2,
            incarnation: 2,
            previous: 1,
        }
    });
    wait_for(&a, &mut sa, "A: beta up again", |e| {
        *e == Event::NodeUp {
            node: 2,
            incarnation: 2,
        }
    });
    assert!(
        !sa.iter()
            .any(|e| matches!(e, Event::NodeReturnedAfterPartition { .. }))
    );
    b.stop().unwrap();
    a.stop().unwrap();
}

/// Opens a pty pair: (master, path of the slave, slave kept open so the line does not
/// hang up while the driver reopens it by path).
fn openpty() -> (OwnedFd, PathBuf, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors; null name/termios/winsize are allowed.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ttyname_r writes a NUL-terminated name into the buffer of the given size.
    let r = unsafe {
        libc::ttyname_r(
            std::os::fd::AsRawFd::as_raw_fd(&slave),
            name.as_mut_ptr(),
            name.len(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: ttyname_r succeeded, so the buffer holds a C string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    (master, PathBuf::from(path), slave)
}

#[test]
fn serial_link_over_a_pty_pair_carries_heartbeats_alone() {
    let links = [(0, "pty")];
    let (master, slave_path, _slave) = openpty();
    let a = Driver::start(
        core(1, 1, &links),
        vec![LinkSpec {
            id: 0,
            medium: Medium::Serial {
                path: slave_path,
                baud: 115200,
            },
        }],
    )
    .unwrap();
    let b = Driver::start(
        core(2, 1, &links),
        vec![LinkSpec {
            id: 0,
            medium: Medium::SerialFd { fd: master },
        }],
    )
    .unwrap();
    let (mut sa, mut sb) = (vec![], vec![]);
    wait_for(&a, &mut sa, "A: beta up over serial", |e| {
        *e == Event::LinkUp { node: 2, link: 0 }
    });
    wait_for(&b, &mut sb, "B: alpha up over serial", |e| {
        *e == Event::LinkUp { node: 1, link: 0 }
    });
    let id = b.send_message(1, vec![0u8, 1, 0, 0, 255]).unwrap();
    wait_for(&a, &mut sa, "A: message over serial", |e| {
        *e == Event::Message {
            from: 2,
            payload: vec![0u8, 1, 0, 0, 255],
        }
    });
    wait_for(&b, &mut sb, "B: ack over serial", |e| {
        *e == Event::MessageAcked { to: 1, id }
    });
    // Stays up over several deadtimes with nothing but the serial line.
    std::thread::sleep(DEADTIME * 3);
    let st = a.status().unwrap();
    assert_eq!(st.nodes[1].state, NodeState::Up);
    assert!(st.nodes[1].links[0].packets >= 10, "{:?}", st.nodes[1]);
    assert_eq!(st.links[0].drops.total(), 0, "{:?}", st.links[0].drops);
    assert!(
        !sa.iter()
            .chain(&sb)
            .any(|e| matches!(e, Event::NodeDead { .. } | Event::LinkDown { .. }))
    );
    a.stop().unwrap();
    b.stop().unwrap();
}

/// Runs `ip`/`sysctl` inside the calling thread's network namespace (a child process
/// inherits the namespace of the thread that spawns it).
fn sh(cmd: &str) {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `body` on a thread in an anonymous network namespace of its own (loopback up):
/// it and every interface and socket in it vanish with the thread, whatever happens.
/// Needs root: skips with a message, or fails under `CI=true`.
fn in_private_namespace(body: impl FnOnce() + Send + 'static) {
    if !tandem_testkit::root_or_skip("a network namespace and a veth pair") {
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: unshare affects only the calling thread's namespaces.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
        sh("ip link set lo up");
        body();
    })
    .join()
    .unwrap();
}

/// A veth pair `a`/`b` with `NET.1/24` and `NET.2/24`, up.
fn make_veth(a: &str, b: &str, net: &str) {
    sh(&format!(
        "ip link add {a} type veth peer name {b} \
         && ip addr add {net}.1/24 dev {a} && ip addr add {net}.2/24 dev {b} \
         && ip link set {a} up && ip link set {b} up"
    ));
    // Both ends live in one namespace, so each sees the other's source address as
    // local: allow that (a lab with one namespace per host does not need it).
    for dev in ["all", a, b] {
        sh(&format!(
            "sysctl -qw net.ipv4.conf.{dev}.accept_local=1 net.ipv4.conf.{dev}.rp_filter=0"
        ));
    }
}

#[test]
fn bcast_and_mcast_links_with_bound_devices_in_a_private_namespace() {
    in_private_namespace(|| {
        make_veth("tdm-a", "tdm-b", "10.99.0");
        let links = [(0, "bcast"), (1, "mcast")];
        let group = "239.192.0.94".parse().unwrap();
        let spec = |dev: &str, ip: &str| {
            vec![
                LinkSpec {
                    id: 0,
                    medium: Medium::Bcast {
                        bind: "0.0.0.0:6940".parse().unwrap(),
                        broadcast: "10.99.0.255:6940".parse().unwrap(),
                        device: Some(dev.into()),
                    },
                },
                LinkSpec {
                    id: 1,
                    medium: Medium::Mcast {
                        group,
                        port: 6941,
                        interface: ip.parse().unwrap(),
                        ttl: 1,
                        loopback: true,
                        device: Some(dev.into()),
                    },
                },
            ]
        };
        let a = Driver::start(core(1, 1, &links), spec("tdm-a", "10.99.0.1")).unwrap();
        let b = Driver::start(core(2, 1, &links), spec("tdm-b", "10.99.0.2")).unwrap();
        let (mut sa, mut sb) = (vec![], vec![]);
        for link in [0, 1] {
            wait_for(&a, &mut sa, "A hears B", |e| {
                *e == Event::LinkUp { node: 2, link }
            });
            wait_for(&b, &mut sb, "B hears A", |e| {
                *e == Event::LinkUp { node: 1, link }
            });
        }
        let id = a.send_message(2, b"over bcast and mcast".to_vec()).unwrap();
        wait_for(&a, &mut sa, "ack", |e| {
            *e == Event::MessageAcked { to: 2, id }
        });
        let delivered = wait_for(&b, &mut sb, "delivery", |e| {
            matches!(e, Event::Message { .. })
        });
        assert_eq!(
            delivered.event,
            Event::Message {
                from: 1,
                payload: b"over bcast and mcast".to_vec()
            }
        );
        std::thread::sleep(DEADTIME);
        let st = a.status().unwrap();
        assert!(st.nodes[1].links.iter().all(|l| l.up && l.packets > 0));
        // Looped-back own packets are counted apart, never as a sign of life.
        assert_eq!(st.links[0].drops.get(DropReason::BadMac), 0);
        assert!(
            st.links[1].drops.get(DropReason::OwnPacket) > 0,
            "{:?}",
            st.links[1].drops
        );
        assert!(
            !sb.iter()
                .chain(&sa)
                .any(|e| matches!(e, Event::Message { from: 2, .. })),
            "a node delivered its own message"
        );
        a.stop().unwrap();
        b.stop().unwrap();
    });
}

#[test]
fn a_link_whose_interface_is_deleted_is_closed_and_reopened_while_the_other_keeps_the_peer() {
    in_private_namespace(|| {
        make_veth("tdr-a", "tdr-b", "10.97.0");
        let links = [(0, "veth"), (1, "lo")];
        let spec = |dev: &str, lo_bind: &str, lo_peer: &str| {
            vec![
                LinkSpec {
                    id: 0,
                    medium: Medium::Bcast {
                        bind: "0.0.0.0:6950".parse().unwrap(),
                        broadcast: "10.97.0.255:6950".parse().unwrap(),
                        device: Some(dev.into()),
                    },
                },
                LinkSpec {
                    id: 1,
                    medium: Medium::Ucast {
                        bind: lo_bind.parse().unwrap(),
                        peers: vec![lo_peer.parse().unwrap()],
                        device: None,
                    },
                },
            ]
        };
        let a = Driver::start(
            core(1, 1, &links),
            spec("tdr-a", "127.0.0.1:6951", "127.0.0.2:6951"),
        )
        .unwrap();
        let b = Driver::start(
            core(2, 1, &links),
            spec("tdr-b", "127.0.0.2:6951", "127.0.0.1:6951"),
        )
        .unwrap();
        let (mut sa, mut sb) = (vec![], vec![]);
        for link in [0, 1] {
            wait_for(&a, &mut sa, "A hears B", |e| {
                *e == Event::LinkUp { node: 2, link }
            });
            wait_for(&b, &mut sb, "B hears A", |e| {
                *e == Event::LinkUp { node: 1, link }
            });
        }

        // Deleting the interface makes the next send on the bound socket fail with
        // ENODEV: that link closes, and only that link.
        sh("ip link del tdr-a");
        let closed = wait_for(&a, &mut sa, "A closes the veth link", |e| {
            matches!(e, Event::LinkClosed { link: 0, .. })
        });
        let Event::LinkClosed { error, .. } = closed.event else {
            unreachable!()
        };
        assert!(error.contains("No such device"), "{error}");
        std::thread::sleep(DEADTIME * 2);
        let st = a.status().expect("A's heartbeat thread runs on");
        assert_eq!(st.nodes[1].state, NodeState::Up, "{st:?}");
        assert!(st.links[0].closed.is_some(), "{:?}", st.links[0]);
        assert_eq!(
            b.status().expect("B's heartbeat thread runs on").nodes[0].state,
            NodeState::Up
        );
        // The other link carried the peer: nobody was declared dead.
        for e in a.events().try_iter().chain(b.events().try_iter()) {
            sa.push(e.event);
        }
        assert!(
            !sa.iter()
                .chain(&sb)
                .any(|e| matches!(e, Event::NodeDead { .. })),
            "{sa:?} {sb:?}"
        );

        // The interface comes back (a new one, same name): reopened, heard again.
        make_veth("tdr-a", "tdr-b", "10.97.0");
        wait_for(&a, &mut sa, "A reopens the veth link", |e| {
            *e == Event::LinkReopened { link: 0 }
        });
        wait_for(&a, &mut sa, "A hears B on the veth link again", |e| {
            *e == Event::LinkUp { node: 2, link: 0 }
        });
        wait_for(&b, &mut sb, "B hears A on the veth link again", |e| {
            *e == Event::LinkUp { node: 1, link: 0 }
        });
        assert_eq!(a.status().unwrap().links[0].closed, None);
        a.stop().unwrap();
        b.stop().unwrap();
    });
}

#[test]
fn heartbeat_thread_can_run_round_robin() {
    if !tandem_testkit::root_or_skip("SCHED_RR") {
        return;
    }
    let links = [(0, "lo")];
    let d = tandem_membership::driver::Driver::start_with(
        core(1, 1, &links),
        vec![LinkSpec {
            id: 0,
            medium: Medium::Ucast {
                bind: free("127.0.0.31"),
                peers: vec![free("127.0.0.32")],
                device: None,
            },
        }],
        tandem_membership::driver::Options {
            realtime_priority: Some(10),
        },
    )
    .unwrap();
    assert_eq!(d.realtime(), Ok(()));
    // SAFETY: queries the policy of a thread id that exists while `d` runs.
    let policy = unsafe { libc::sched_getscheduler(d.thread_id()) };
    assert_eq!(policy, libc::SCHED_RR);
    d.stop().unwrap();
}

/// Benchmark, not a pass/fail timing test: false verdicts between two local agents
/// while stress-ng loads every CPU, with and without SCHED_RR.
/// `TANDEM_HOG_SECS=60 cargo test -p tandem-membership --test driver -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: loads every CPU with stress-ng"]
fn cpu_hog_false_dead_benchmark() {
    let secs: u64 = std::env::var("TANDEM_HOG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let links = [(0, "lo-a"), (1, "lo-b")];
    let mk = |local: u32| {
        let mut c = config(local, &links);
        c.keepalive = Duration::from_millis(100);
        c.deadtime = Duration::from_millis(500);
        c.warntime = Duration::from_millis(250);
        c.initdead = Duration::from_millis(1000);
        c.retransmit = RetransmitConfig::for_keepalive(c.keepalive);
        Membership::new(c, 1, now()).unwrap()
    };
    for (i, rt) in [None, Some(10)].into_iter().enumerate() {
        let ip = |n: u8| free(&format!("127.0.{}.{n}", 50 + i));
        let (a0, b0, a1, b1) = (ip(1), ip(2), ip(3), ip(4));
        let spec = |x: SocketAddr, y: SocketAddr, p: SocketAddr, q: SocketAddr| {
            vec![
                LinkSpec {
                    id: 0,
                    medium: Medium::Ucast {
                        bind: x,
                        peers: vec![y],
                        device: None,
                    },
                },
                LinkSpec {
                    id: 1,
                    medium: Medium::Ucast {
                        bind: p,
                        peers: vec![q],
                        device: None,
                    },
                },
            ]
        };
        let opts = tandem_membership::driver::Options {
            realtime_priority: rt,
        };
        let a = Driver::start_with(mk(1), spec(a0, b0, a1, b1), opts.clone()).unwrap();
        let b = Driver::start_with(mk(2), spec(b0, a0, b1, a1), opts).unwrap();
        let (mut sa, mut sb) = (vec![], vec![]);
        wait_for(&a, &mut sa, "A up", |e| matches!(e, Event::NodeUp { .. }));
        wait_for(&b, &mut sb, "B up", |e| matches!(e, Event::NodeUp { .. }));
        let mut hog = std::process::Command::new("stress-ng")
            .args(["--cpu", "0", "--cpu-method", "matrixprod", "--timeout"])
            .arg(format!("{secs}s"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("stress-ng");
        let (mut dead, mut late, mut max_gap) = (0, 0, Duration::ZERO);
        let end = now() + Duration::from_secs(secs);
        while now() < end {
            for d in [&a, &b] {
                while let Ok(e) = d.events().try_recv() {
                    match e.event {
                        Event::NodeDead { .. } => dead += 1,
                        Event::NodeLate { gap, .. } => {
                            late += 1;
                            max_gap = max_gap.max(gap);
                        }
                        _ => {}
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = hog.wait();
        println!(
            "cpu hog {secs}s, keepalive 100 ms, deadtime 500 ms, {}: {dead} false dead, {late} late heartbeats (largest gap {max_gap:?})",
            match rt {
                Some(p) => format!("SCHED_RR {p}"),
                None => "normal scheduling".into(),
            }
        );
        a.stop().unwrap();
        b.stop().unwrap();
    }
}
