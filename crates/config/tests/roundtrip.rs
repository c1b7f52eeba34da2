//! Property: any valid model written by `to_toml` loads back to the same model, and
//! the text is a fixed point. Strings include quotes, backslashes, control characters
//! and non-ASCII text, so the emitter's escaping is exercised too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use tandem_config::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.-]{0,8}"
}

/// Free text: anything TOML strings can hold, escaped or not.
fn text() -> impl Strategy<Value = String> {
    "[ -~äé\"\\\\\t\u{1}]{1,12}"
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
    ]
}

fn dur_ms(max_ms: u64) -> impl Strategy<Value = Duration> {
    (1..max_ms).prop_map(Duration::from_millis)
}

fn params() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(name(), text(), 0..3)
}

/// Whether `kind` takes nothing an earlier resource took (a disk, an address, a mount
/// point belong to one resource each; `config check` refuses a second).
fn one_each(kind: &ResourceKind, claimed: &mut std::collections::HashSet<String>) -> bool {
    let key = match kind {
        ResourceKind::Disk { disk } => format!("disk {disk}"),
        ResourceKind::IpAddr { address, .. } => format!("address {address}"),
        ResourceKind::Filesystem { directory, .. } => format!("dir {}", directory.display()),
        _ => return true,
    };
    claimed.insert(key)
}

fn resource_kind() -> impl Strategy<Value = ResourceKind> {
    prop_oneof![
        (
            ip(),
            prop::option::of(0u8..=32),
            prop::option::of(name()),
            0u32..20,
            dur_ms(5000)
        )
            .prop_map(|(address, prefix, interface, garp_count, garp_interval)| {
                let max = if address.is_ipv4() { 32 } else { 128 };
                ResourceKind::IpAddr {
                    address,
                    prefix_len: prefix.map(|p| p.min(max)),
                    interface,
                    broadcast: None,
                    garp_count,
                    garp_interval,
                }
            }),
        Just(ResourceKind::Disk { disk: "d0".into() }),
        (text(), "/[a-z/]{0,10}", name(), prop::option::of(text())).prop_map(
            |(device, directory, fstype, options)| ResourceKind::Filesystem {
                device,
                directory: directory.into(),
                fstype,
                options,
            }
        ),
        (name(), name(), params()).prop_map(|(provider, agent, params)| ResourceKind::Ocf {
            provider,
            agent,
            params
        }),
        (name(), prop::collection::vec(text(), 0..3), any::<bool>()).prop_map(
            |(script, args, heartbeat)| ResourceKind::Lsb {
                script,
                args,
                heartbeat
            }
        ),
        name().prop_map(|unit| ResourceKind::Systemd { unit }),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    let cluster = (
        name(),
        dur_ms(3000),
        1u64..20_000,
        any::<bool>(),
        prop::collection::vec(ip(), 0..3),
        0..3u8,
    );
    let link_kind = prop_oneof![
        (name(), prop::collection::vec(ip(), 1..3), 1u16..).prop_map(|(interface, peers, port)| {
            LinkKind::Ucast {
                interface,
                peers,
                port,
            }
        }),
        (name(), 1u16..).prop_map(|(interface, port)| LinkKind::Bcast { interface, port }),
        (name(), any::<[u8; 3]>(), 1u16.., 1u8.., any::<bool>()).prop_map(
            |(interface, g, port, ttl, multicast_loop)| LinkKind::Mcast {
                interface,
                group: IpAddr::V4(Ipv4Addr::new(239, g[0], g[1], g[2])),
                port,
                ttl,
                multicast_loop,
            }
        ),
        ("/dev/tty[A-Z]{1,3}[0-9]", 300u32..1_000_000).prop_map(|(device, baud)| {
            LinkKind::Serial {
                device: device.into(),
                baud,
            }
        }),
    ];
    let disk = (
        prop::option::of(1u64..1 << 40),
        0u32..1000,
        7u32..6433,
        prop::option::of(dur_ms(1_000_000)),
        any::<[u8; 4]>(),
        1u16..,
    );
    let resources = prop::collection::vec(
        (
            resource_kind(),
            dur_ms(100_000),
            prop::option::of(dur_ms(100_000)),
        ),
        1..6,
    );
    (
        cluster,
        prop::collection::vec(link_kind, 0..4),
        disk,
        resources,
        params(),
        prop::option::of(text()),
    )
        .prop_map(
            |(
                (cname, keepalive, extra_ms, on, ping, fencing),
                links,
                d,
                resources,
                fparams,
                facility,
            )| {
                let deadtime = keepalive * 2 + Duration::from_millis(extra_ms);
                Config {
                    cluster: Cluster {
                        name: cname,
                        keepalive,
                        deadtime,
                        warntime: units::whole_ms(deadtime / 2),
                        initdead: deadtime * 2,
                        auto_failback: if on {
                            AutoFailback::On
                        } else {
                            AutoFailback::Off
                        },
                        udp_port: 694,
                        key_file: "/etc/tandem/authkey".into(),
                        fencing: if fencing == 0 {
                            FencingPolicy::None
                        } else {
                            FencingPolicy::Required
                        },
                        state_dir: "/var/lib/tandem".into(),
                        control_socket: "/run/tandem/tandem.sock".into(),
                        ping: ping.clone(),
                        ping_groups: if ping.is_empty() {
                            vec![]
                        } else {
                            vec![PingGroup {
                                name: "g".into(),
                                addresses: ping,
                            }]
                        },
                        deadping: deadtime,
                        fencing_delay: deadtime,
                        nbd_group: None,
                    },
                    log: Log {
                        syslog_facility: facility,
                        file: Some("/var/log/tandem".into()),
                        debug_file: None,
                    },
                    nodes: vec![
                        Node {
                            name: "a".into(),
                            address: None,
                        },
                        Node {
                            name: "b".into(),
                            address: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
                        },
                    ],
                    links: links
                        .into_iter()
                        .enumerate()
                        .map(|(i, kind)| Link {
                            name: format!("l{i}"),
                            kind,
                        })
                        .collect(),
                    fence_devices: vec![FenceDevice {
                        name: "f".into(),
                        agent: FenceAgent::FenceAgents("fence_apc".into()),
                        params: fparams,
                        plugs: [("a".to_string(), "1".to_string())].into(),
                        run_on: vec!["b".into()],
                        level: 2,
                        timeout: Duration::from_secs(30),
                    }],
                    disks: vec![Disk {
                        name: "d0".into(),
                        protocol: Protocol::B,
                        rate_bytes_per_s: d.0,
                        resync_group: d.1,
                        al_extents: d.2,
                        on_io_error: OnIoError::Panic,
                        wfc_timeout: d.3,
                        degr_wfc_timeout: None,
                        net_timeout: Duration::from_millis(6500),
                        connect_interval: Duration::from_secs(10),
                        ping_interval: Duration::from_secs(10),
                        after_sb_0pri: AfterSb0Pri::DiscardZeroChanges,
                        after_sb_1pri: AfterSb1Pri::Consensus,
                        after_sb_2pri: AfterSb2Pri::Disconnect,
                        fencing: DiskFencing::ResourceOnly,
                        hosts: ["a", "b"]
                            .iter()
                            .enumerate()
                            .map(|(i, n)| DiskHost {
                                node: n.to_string(),
                                device: "/dev/drbd0".into(),
                                backing: format!("/dev/sd{i}").into(),
                                address: SocketAddr::new(
                                    IpAddr::V4(Ipv4Addr::from(d.4)),
                                    d.5.wrapping_add(i as u16).max(1),
                                ),
                                meta: if i == 0 {
                                    Meta::Internal
                                } else {
                                    Meta::External {
                                        path: "/dev/md".into(),
                                        index: Some(3),
                                    }
                                },
                            })
                            .collect(),
                    }],
                    groups: vec![Group {
                        name: "g".into(),
                        home: "b".into(),
                        migration_threshold: 3,
                        failure_timeout: deadtime,
                        resources: resources
                            .into_iter()
                            .filter({
                                let mut claimed = std::collections::HashSet::new();
                                move |(kind, _, _)| one_each(kind, &mut claimed)
                            })
                            .enumerate()
                            .map(|(i, (kind, timeout, monitor_interval))| Resource {
                                name: format!("r{i}"),
                                timeout,
                                monitor_interval,
                                kind,
                            })
                            .collect(),
                    }],
                    // A witness in every other case (keyed on a drawn bool).
                    witness: on.then(|| Witness {
                        name: "quorum".into(),
                        tie_wait: deadtime,
                        vote_retry: keepalive * 2,
                        state_file: "/var/lib/tandem/witness-grant.json".into(),
                    }),
                    metrics: Metrics {
                        listen: on.then(|| "[::1]:9100".parse().unwrap()),
                    },
                    notify: vec![Notify {
                        name: "mail".into(),
                        command: "/usr/local/sbin/ha-mail".into(),
                        args: vec!["root@example.org".into(), "with \"quotes\"".into()],
                        events: if on {
                            vec![]
                        } else {
                            vec!["node_dead".into(), "split_brain".into()]
                        },
                        disks: vec![],
                        timeout: keepalive,
                    }],
                }
            },
        )
}

proptest! {
    // Fixed case count and no regression files: the seed is proptest's default, and a
    // failure prints the minimal model, which is what a fix needs.
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn to_toml_round_trips(c in config()) {
        let text = to_toml(&c);
        let (back, _) = Config::parse_str("rt.toml", &text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &c, "{}", text);
        prop_assert_eq!(to_toml(&back), text);
    }
}
