//! Heartbeat's `ha.cf`: one directive per line, `#` comments, whitespace-separated
//! values.

use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use crate::diag::{Sink, Source};
use crate::key::words;
use crate::model::{AutoFailback, FenceAgent, FenceDevice, Log, PingGroup, defaults};
use crate::units;

/// Every directive the importer understands (for the "expected one of" message).
const DIRECTIVES: &[&str] = &[
    "keepalive",
    "deadtime",
    "warntime",
    "initdead",
    "udpport",
    "baud",
    "bcast",
    "mcast",
    "ucast",
    "serial",
    "auto_failback",
    "node",
    "stonith",
    "stonith_host",
    "ping",
    "ping_group",
    "deadping",
    "logfacility",
    "logfile",
    "debugfile",
    "crm",
    "respawn",
];

/// Directives Heartbeat knows that have no meaning in tandem: accepted with a warning
/// that says why, so a real-world ha.cf imports without hand editing.
const IGNORED: &[(&str, &str)] = &[
    (
        "realtime",
        "tandem's heartbeat thread always runs locked in memory with high priority",
    ),
    ("use_logd", "tandem logs directly to syslog/stderr"),
    (
        "watchdog",
        "not imported: configure a watchdog device outside tandem",
    ),
    ("coredumps", "core dumps follow the system's settings"),
    ("uuidfrom", "tandem identifies nodes by name"),
    ("hopfudge", "not applicable to two-node membership"),
    (
        "compression",
        "tandem's messages are small and not compressed",
    ),
    (
        "compression_threshold",
        "tandem's messages are small and not compressed",
    ),
    (
        "traditional_compression",
        "tandem's messages are small and not compressed",
    ),
    ("debug", "use RUST_LOG=debug"),
    ("conn_logd_time", "tandem does not use logd"),
    ("apiauth", "tandem has no Heartbeat API clients"),
    ("msgfmt", "tandem has its own wire format"),
    ("autojoin", "nodes are listed explicitly"),
    ("max_rexmit_delay", "tandem bounds retransmission itself"),
    (
        "rtprio",
        "tandem's heartbeat thread always runs with high priority",
    ),
];

/// A heartbeat medium as written in ha.cf.
#[derive(Debug, Clone)]
pub enum Medium {
    /// `bcast IFACE` (one per interface).
    Bcast {
        /// Interface.
        interface: String,
    },
    /// `mcast IFACE GROUP PORT TTL LOOP`.
    Mcast {
        /// Interface.
        interface: String,
        /// Group.
        group: IpAddr,
        /// Port.
        port: u16,
        /// TTL.
        ttl: u8,
        /// Loopback.
        multicast_loop: bool,
    },
    /// `ucast IFACE ADDR` lines merged per interface.
    Ucast {
        /// Interface.
        interface: String,
        /// Addresses with the byte offset of each in ha.cf.
        peers: Vec<(IpAddr, usize)>,
    },
    /// `serial DEVICE` (one per device).
    Serial {
        /// tty device.
        device: PathBuf,
    },
}

/// What ha.cf says, with positions kept where later checks need them.
#[derive(Debug, Default)]
pub struct HaCf {
    /// `keepalive`, with the value's offset.
    pub keepalive: Option<(Duration, usize)>,
    /// `deadtime`.
    pub deadtime: Option<(Duration, usize)>,
    /// `warntime`.
    pub warntime: Option<(Duration, usize)>,
    /// `initdead`.
    pub initdead: Option<(Duration, usize)>,
    /// `udpport`.
    pub udp_port: Option<u16>,
    /// `baud`.
    pub baud: Option<u32>,
    /// Media in file order.
    pub media: Vec<Medium>,
    /// `auto_failback`.
    pub auto_failback: Option<AutoFailback>,
    /// `node` names with offsets.
    pub nodes: Vec<(String, usize)>,
    /// Fence devices from `stonith` / `stonith_host`.
    pub fence_devices: Vec<FenceDevice>,
    /// `ping` targets.
    pub ping: Vec<IpAddr>,
    /// `ping_group`s.
    pub ping_groups: Vec<PingGroup>,
    /// `deadping`.
    pub deadping: Option<Duration>,
    /// Log settings.
    pub log: Log,
    /// Node names given as `stonith_host FROM`, checked against `node` lines later.
    pub stonith_hosts: Vec<(String, usize)>,
}

/// Parses ha.cf; errors and warnings go to `sink`.
pub fn parse(src: &Source<'_>, sink: &mut Sink) -> HaCf {
    let mut h = HaCf::default();
    let mut offset = 0;
    for raw in src.text.split_inclusive('\n') {
        let base = offset;
        offset += raw.len();
        let line = raw.split('#').next().unwrap_or("");
        let w = words(base, line);
        let Some(&(p0, directive)) = w.first() else {
            continue;
        };
        let args = &w[1..];
        directive_line(src, sink, &mut h, p0, directive, args);
    }
    if h.nodes.is_empty() {
        sink.push(src.error(
            0..0,
            "no `node` line: expected `node NAME` for each cluster node (their `uname -n`)",
        ));
    }
    h
}

fn at(p: usize) -> Range<usize> {
    p..p
}

fn one<'a>(
    src: &Source<'_>,
    sink: &mut Sink,
    p0: usize,
    directive: &str,
    args: &[(usize, &'a str)],
    hint: &str,
) -> Option<(usize, &'a str)> {
    match args {
        [] => {
            sink.push(src.error(
                at(p0),
                format!("`{directive}` needs a value: expected {hint}"),
            ));
            None
        }
        [a] => Some(*a),
        [_, (p, extra), ..] => {
            sink.push(src.error(
                at(*p),
                format!("unexpected `{extra}`: `{directive}` takes one value ({hint})"),
            ));
            None
        }
    }
}

fn duration(
    src: &Source<'_>,
    sink: &mut Sink,
    p0: usize,
    d: &str,
    args: &[(usize, &str)],
) -> Option<(Duration, usize)> {
    let (p, v) = one(
        src,
        sink,
        p0,
        d,
        args,
        "a duration such as 2 (seconds) or 500ms",
    )?;
    match units::parse_duration(v) {
        Ok(x) => Some((x, p)),
        Err(msg) => {
            sink.push(src.error(at(p), format!("`{d}`: {msg}")));
            None
        }
    }
}

fn ip(src: &Source<'_>, sink: &mut Sink, p: usize, v: &str, what: &str) -> Option<IpAddr> {
    match v.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            sink.push(src.error(
                at(p),
                format!("{what}: `{v}` is not an IP address: expected e.g. 192.168.180.10"),
            ));
            None
        }
    }
}

fn directive_line(
    src: &Source<'_>,
    sink: &mut Sink,
    h: &mut HaCf,
    p0: usize,
    d: &str,
    args: &[(usize, &str)],
) {
    match d {
        "keepalive" => h.keepalive = duration(src, sink, p0, d, args).or(h.keepalive),
        "deadtime" => h.deadtime = duration(src, sink, p0, d, args).or(h.deadtime),
        "warntime" => h.warntime = duration(src, sink, p0, d, args).or(h.warntime),
        "initdead" => h.initdead = duration(src, sink, p0, d, args).or(h.initdead),
        "deadping" => h.deadping = duration(src, sink, p0, d, args).map(|x| x.0).or(h.deadping),
        "udpport" => {
            if let Some((p, v)) = one(src, sink, p0, d, args, "a UDP port number") {
                match v.parse::<u16>() {
                    Ok(n) if n > 0 => h.udp_port = Some(n),
                    _ => sink.push(src.error(
                        at(p),
                        format!(
                            "`udpport`: `{v}` is not a port: expected a number from 1 to 65535"
                        ),
                    )),
                }
            }
        }
        "baud" => {
            if let Some((p, v)) = one(src, sink, p0, d, args, "a line speed such as 19200") {
                match v.parse::<u32>() {
                    Ok(n) if (300..=4_000_000).contains(&n) => h.baud = Some(n),
                    _ => sink.push(src.error(
                        at(p),
                        format!("`baud`: `{v}` is not a line speed: expected e.g. 19200 or 115200"),
                    )),
                }
            }
        }
        "bcast" => {
            if args.is_empty() {
                sink.push(src.error(
                    at(p0),
                    "`bcast` needs an interface: expected `bcast IFACE [IFACE…]`",
                ));
            }
            for (_, iface) in args {
                h.media.push(Medium::Bcast {
                    interface: iface.to_string(),
                });
            }
        }
        "serial" => {
            if args.is_empty() {
                sink.push(src.error(
                    at(p0),
                    "`serial` needs a device: expected `serial /dev/ttyS0 [DEVICE…]`",
                ));
            }
            for (p, dev) in args {
                if !dev.starts_with('/') {
                    sink.push(src.error(
                        at(*p),
                        format!("`serial`: `{dev}` is not a device path: expected e.g. /dev/ttyS0"),
                    ));
                    continue;
                }
                h.media.push(Medium::Serial {
                    device: PathBuf::from(dev),
                });
            }
        }
        "ucast" => {
            let [(_, iface), (p, addr)] = args else {
                let p = args.get(2).map(|a| a.0).unwrap_or(p0);
                sink.push(src.error(
                    at(p),
                    "`ucast` takes an interface and an address: expected `ucast IFACE ADDRESS`",
                ));
                return;
            };
            let Some(addr) = ip(src, sink, *p, addr, "`ucast`") else {
                return;
            };
            // Lines for one interface form one link, as Heartbeat sends to each address.
            for m in &mut h.media {
                if let Medium::Ucast { interface, peers } = m {
                    if interface == iface {
                        if !peers.iter().any(|(a, _)| *a == addr) {
                            peers.push((addr, *p));
                        }
                        return;
                    }
                }
            }
            h.media.push(Medium::Ucast {
                interface: iface.to_string(),
                peers: vec![(addr, *p)],
            });
        }
        "mcast" => {
            let [(_, iface), (pg, group), (pp, port), (pt, ttl), (pl, lp)] = args else {
                sink.push(src.error(at(p0), "`mcast` takes five values: expected `mcast IFACE GROUP PORT TTL LOOP` (e.g. `mcast eth0 239.0.0.1 694 1 0`)"));
                return;
            };
            let group = ip(src, sink, *pg, group, "`mcast` group");
            if let Some(g) = group {
                if !g.is_multicast() {
                    sink.push(src.error(at(*pg), format!("`mcast`: `{g}` is not a multicast address: expected 224.0.0.0/4 or ff00::/8")));
                    return;
                }
            }
            let port_v = port.parse::<u16>().ok().filter(|n| *n > 0);
            if port_v.is_none() {
                sink.push(src.error(
                    at(*pp),
                    format!("`mcast`: `{port}` is not a port: expected a number from 1 to 65535"),
                ));
            }
            let ttl_v = ttl.parse::<u8>().ok().filter(|n| *n > 0);
            if ttl_v.is_none() {
                sink.push(src.error(
                    at(*pt),
                    format!("`mcast`: `{ttl}` is not a TTL: expected a number from 1 to 255"),
                ));
            }
            let loop_v = match *lp {
                "0" => Some(false),
                "1" => Some(true),
                other => {
                    sink.push(
                        src.error(at(*pl), format!("`mcast`: loop `{other}`: expected 0 or 1")),
                    );
                    None
                }
            };
            if let (Some(group), Some(port), Some(ttl), Some(multicast_loop)) =
                (group, port_v, ttl_v, loop_v)
            {
                h.media.push(Medium::Mcast {
                    interface: iface.to_string(),
                    group,
                    port,
                    ttl,
                    multicast_loop,
                });
            }
        }
        "auto_failback" => {
            if let Some((p, v)) = one(src, sink, p0, d, args, "on, off or legacy") {
                h.auto_failback = match v {
                    "on" | "yes" | "true" => Some(AutoFailback::On),
                    "off" | "no" | "false" => Some(AutoFailback::Off),
                    "legacy" => Some(AutoFailback::Legacy),
                    other => {
                        sink.push(src.error(at(p), format!("`auto_failback`: invalid value `{other}`: expected on, off or legacy")));
                        h.auto_failback
                    }
                };
            }
        }
        "node" => {
            if args.is_empty() {
                sink.push(src.error(at(p0), "`node` needs a name: expected `node NAME [NAME…]`"));
            }
            for (p, name) in args {
                if let Some((_, first)) = h.nodes.iter().find(|(n, _)| n == name) {
                    let (line, _) = src.position(*first);
                    sink.push(src.error(
                        at(*p),
                        format!("duplicate node name `{name}`: already listed on line {line}"),
                    ));
                } else {
                    h.nodes.push((name.to_string(), *p));
                }
            }
        }
        "ping" => {
            if args.is_empty() {
                sink.push(src.error(
                    at(p0),
                    "`ping` needs an address: expected `ping ADDRESS [ADDRESS…]`",
                ));
            }
            for (p, a) in args {
                if let Some(a) = ip(src, sink, *p, a, "`ping`") {
                    h.ping.push(a);
                }
            }
        }
        "ping_group" => {
            let Some(((_, name), members)) = args.split_first() else {
                sink.push(src.error(
                    at(p0),
                    "`ping_group` needs a name and addresses: expected `ping_group NAME ADDRESS…`",
                ));
                return;
            };
            if members.is_empty() {
                sink.push(src.error(
                    at(p0),
                    format!(
                        "`ping_group {name}` has no addresses: expected `ping_group NAME ADDRESS…`"
                    ),
                ));
                return;
            }
            let addresses = members
                .iter()
                .filter_map(|(p, a)| ip(src, sink, *p, a, "`ping_group`"))
                .collect();
            h.ping_groups.push(PingGroup {
                name: name.to_string(),
                addresses,
            });
        }
        "logfacility" => {
            if let Some((_, v)) = one(
                src,
                sink,
                p0,
                d,
                args,
                "a syslog facility such as local0, or none",
            ) {
                h.log.syslog_facility = (v != "none").then(|| v.to_string());
            }
        }
        "logfile" | "debugfile" => {
            if let Some((p, v)) = one(src, sink, p0, d, args, "an absolute file path") {
                if !v.starts_with('/') {
                    sink.push(src.error(
                        at(p),
                        format!(
                            "`{d}`: `{v}` is not an absolute path: expected e.g. /var/log/ha-log"
                        ),
                    ));
                } else if d == "logfile" {
                    h.log.file = Some(PathBuf::from(v));
                } else {
                    h.log.debug_file = Some(PathBuf::from(v));
                }
            }
        }
        "crm" | "pacemaker" => {
            if let Some((p, v)) = one(src, sink, p0, d, args, "off") {
                match v {
                    "off" | "no" | "false" => {}
                    other => sink.push(src.error(at(p), format!(
                        "`{d} {other}`: CRM/CIB configurations (Heartbeat 2 / Pacemaker) are out of scope: tandem imports Heartbeat 1 clusters described by haresources; expected `{d} off` or no `{d}` line"
                    ))),
                }
            }
        }
        "respawn" => {
            let what = args.iter().map(|(_, a)| *a).collect::<Vec<_>>().join(" ");
            let extra = if what.contains("ipfail") {
                "; ipfail's job is built in: use `ping`/`ping_group`"
            } else {
                ""
            };
            sink.push(src.warning(at(p0), format!("`respawn {what}` is not supported and was skipped: tandem does not run helper programs{extra}")));
        }
        "stonith" => stonith(src, sink, h, p0, args, false),
        "stonith_host" => stonith(src, sink, h, p0, args, true),
        other => {
            if let Some((_, why)) = IGNORED.iter().find(|(n, _)| *n == other) {
                sink.push(src.warning(at(p0), format!("`{other}` ignored: {why}")));
            } else {
                sink.push(src.error(
                    at(p0),
                    format!(
                        "unknown ha.cf directive `{other}`{}: expected one of {}",
                        crate::diag::did_you_mean(other, DIRECTIVES),
                        DIRECTIVES.join(", ")
                    ),
                ));
            }
        }
    }
}

/// `stonith TYPE CONFIGFILE` and `stonith_host FROM TYPE PARAMS…`.
fn stonith(
    src: &Source<'_>,
    sink: &mut Sink,
    h: &mut HaCf,
    p0: usize,
    args: &[(usize, &str)],
    host_form: bool,
) {
    let (run_on, rest) = if host_form {
        let Some(((pf, from), rest)) = args.split_first() else {
            sink.push(src.error(at(p0), "`stonith_host` needs a host, a type and parameters: expected `stonith_host FROM|* TYPE PARAMS…`"));
            return;
        };
        let run_on = if *from == "*" {
            Vec::new()
        } else {
            vec![(from.to_string(), *pf)]
        };
        (run_on, rest)
    } else {
        (Vec::new(), args)
    };
    let Some(((pt, kind), params)) = rest.split_first() else {
        let form = if host_form {
            "stonith_host FROM TYPE PARAMS…"
        } else {
            "stonith TYPE CONFIGFILE"
        };
        sink.push(src.error(at(p0), format!("missing stonith type: expected `{form}`")));
        return;
    };
    let values: Vec<&str> = params.iter().map(|(_, v)| *v).collect();
    let positional = |names: &[&str]| -> Option<std::collections::BTreeMap<String, String>> {
        if !host_form {
            return Some(Default::default());
        }
        (values.len() == names.len()).then(|| {
            names
                .iter()
                .zip(&values)
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        })
    };
    let mut reported = false;
    let (agent, params_map, usage): (FenceAgent, Option<_>, &str) = match *kind {
        "meatware" => (FenceAgent::Manual, Some(Default::default()), ""),
        "apcmaster" => (
            FenceAgent::FenceAgents("fence_apc".into()),
            positional(&["ip", "username", "password"]),
            "IP LOGIN PASSWORD",
        ),
        "apcmastersnmp" => (
            FenceAgent::FenceAgents("fence_apc_snmp".into()),
            positional(&["ip", "ipport", "community"]),
            "IP PORT COMMUNITY",
        ),
        "wti_nps" => (
            FenceAgent::FenceAgents("fence_wti".into()),
            positional(&["ip", "password"]),
            "IP PASSWORD",
        ),
        "ssh" => (
            FenceAgent::External("ssh".into()),
            positional(&["hostlist"]),
            "HOSTLIST",
        ),
        k if k.starts_with("external/") && k.len() > "external/".len() => {
            let mut map = std::collections::BTreeMap::new();
            let mut ok = true;
            if host_form {
                for (p, v) in params {
                    match v.split_once('=') {
                        Some((n, val)) if !n.is_empty() => {
                            map.insert(n.to_string(), val.to_string());
                        }
                        _ => {
                            sink.push(src.error(
                                at(*p),
                                format!("`{v}`: expected NAME=VALUE parameters for {k}"),
                            ));
                            ok = false;
                            reported = true;
                        }
                    }
                }
            }
            (
                FenceAgent::External(k["external/".len()..].to_string()),
                ok.then_some(map),
                "NAME=VALUE…",
            )
        }
        other => {
            sink.push(src.error(at(*pt), format!(
                "stonith type `{other}` has no tandem equivalent: expected one of apcmaster, apcmastersnmp, wti_nps, meatware, ssh, external/NAME (or define a [[fence_device]] by hand)"
            )));
            return;
        }
    };
    let Some(params_map) = params_map else {
        if !reported {
            sink.push(src.error(
                at(*pt),
                format!("`{kind}` takes {usage}: expected `stonith_host FROM {kind} {usage}`"),
            ));
        }
        return;
    };
    if !host_form {
        let file = values.first().copied().unwrap_or("(none)");
        if *kind != "meatware" {
            sink.push(src.warning(at(*pt), format!("`stonith {kind} {file}`: the device's parameters live in {file}, which import does not read; fill in `params` of fence device `{}` by hand", kind.replace('/', "-"))));
        }
    }
    let base = kind.replace('/', "-");
    let mut name = base.clone();
    let mut n = 2;
    while h.fence_devices.iter().any(|f| f.name == name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    h.fence_devices.push(FenceDevice {
        name,
        agent,
        params: params_map,
        plugs: Default::default(),
        run_on: run_on.iter().map(|(n, _)| n.clone()).collect(),
        level: defaults::FENCE_LEVEL,
        timeout: defaults::FENCE_TIMEOUT,
    });
    // `stonith_host` names a node that runs the device: it must exist; checked here so
    // the message points at ha.cf.
    h.stonith_hosts.extend(run_on);
}
