//! Legacy import: Heartbeat 1 (`ha.cf`, `haresources`, `authkeys`) and DRBD 0.7
//! (`drbd.conf`) files → one native [`Config`].
//!
//! ```text
//!   ha.cf ─────► nodes, timing, links, fencing, ping ─┐
//!   drbd.conf ─► disks (hosts checked against nodes) ─┼─► Config ─► native check ─► TOML
//!   haresources► groups (disks checked against drbd) ─┤
//!   authkeys ──► key_file (format and mode checked) ──┘
//! ```
//!
//! Files are read in that order because each later file refers to names the earlier
//! ones define. Every error names the file, line and column; on any error nothing is
//! returned. Warnings say what was completed, defaulted or dropped.

pub mod drbd;
pub mod hacf;
pub mod haresources;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, Diagnostics, Severity, Sink, Source, Warning};
use crate::model::*;
use crate::units::format_duration;

/// The files to import. Paths are shown in messages as given.
#[derive(Debug, Clone, Default)]
pub struct HaFiles {
    /// `/etc/ha.d/ha.cf`.
    pub ha_cf: PathBuf,
    /// `/etc/ha.d/haresources`.
    pub haresources: PathBuf,
    /// `/etc/ha.d/authkeys`: becomes `cluster.key_file` (as an absolute path).
    pub authkeys: Option<PathBuf>,
    /// `/etc/drbd.conf`.
    pub drbd_conf: Option<PathBuf>,
    /// Cluster name; derived from the node names when absent (`ox1`, `ox2` → `ox`).
    pub cluster_name: Option<String>,
    /// A copy of `/etc/ha.d/resource.d`: names found there get the Heartbeat calling
    /// convention even without arguments.
    pub resource_d: Option<PathBuf>,
}

fn read(path: &Path) -> Result<String, Diagnostics> {
    std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            severity: Severity::Error,
            message: format!("cannot read: {e}"),
        }])
    })
}

/// Imports the files into a validated [`Config`] and the warnings to show.
pub fn import(files: &HaFiles) -> Result<(Config, Vec<Warning>), Diagnostics> {
    let ha_cf_text = read(&files.ha_cf)?;
    let har_text = read(&files.haresources)?;
    let drbd_text = match &files.drbd_conf {
        Some(p) => Some(read(p)?),
        None => None,
    };
    import_texts(files, &ha_cf_text, &har_text, drbd_text.as_deref())
}

/// As [`import`], with ha.cf, haresources and drbd.conf already read (`files` still
/// names them in messages; the authkeys file, if any, is read and checked here).
pub fn import_texts(
    files: &HaFiles,
    ha_cf_text: &str,
    har_text: &str,
    drbd_text: Option<&str>,
) -> Result<(Config, Vec<Warning>), Diagnostics> {
    let ha_cf_name = files.ha_cf.display().to_string();
    let har_name = files.haresources.display().to_string();
    let drbd = match (&files.drbd_conf, drbd_text) {
        (Some(p), Some(t)) => Some((p.display().to_string(), t)),
        (None, Some(t)) => Some(("drbd.conf".to_string(), t)),
        _ => None,
    };

    let mut sink = Sink::default();
    let ha_src = Source::new(&ha_cf_name, ha_cf_text);
    let hacf = hacf::parse(&ha_src, &mut sink);
    let node_names: Vec<String> = hacf.nodes.iter().map(|(n, _)| n.clone()).collect();
    for (from, p) in &hacf.stonith_hosts {
        if !node_names.contains(from) {
            sink.push(ha_src.error(*p..*p, format!("`stonith_host {from}` names unknown node `{from}`: expected `*` or one of the nodes ({})", node_names.join(", "))));
        }
    }
    timing_checks(&ha_src, &mut sink, &hacf);

    let errors_before = error_count(&sink);
    let mut notify = Vec::new();
    let parsed_disks = match &drbd {
        Some((name, text)) => drbd::parse(
            &Source::new(name, text),
            &mut sink,
            &node_names,
            &mut notify,
        ),
        None => Vec::new(),
    };
    let fencing_explicit: Vec<String> = parsed_disks
        .iter()
        .filter(|(_, explicit)| *explicit)
        .map(|(d, _)| d.name.clone())
        .collect();
    let mut disks: Vec<Disk> = parsed_disks.into_iter().map(|(d, _)| d).collect();
    let drbd_ok = error_count(&sink) == errors_before;
    let har_src = Source::new(&har_name, har_text);
    let raw_groups = haresources::parse(
        &har_src,
        &mut sink,
        &node_names,
        drbd_ok.then_some(disks.as_slice()),
        files.resource_d.as_deref(),
    );

    let key_file = match &files.authkeys {
        Some(p) => {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            match crate::key::check_file(p) {
                Ok((_, warnings)) => warnings.into_iter().for_each(|w| sink.push(w)),
                Err(crate::key::KeyFileError::Invalid(d)) => {
                    d.0.into_iter().for_each(|e| sink.push(e))
                }
                Err(crate::key::KeyFileError::Missing) => sink.push(file_error(
                    p,
                    "cannot read: file does not exist".to_string(),
                )),
                Err(e) => sink.push(file_error(p, e.to_string())),
            }
            abs
        }
        None => {
            sink.push(ha_src.warning(0..0, format!("no --authkeys given: key_file is the default {}; create it (mode 0600) before starting tandem", defaults::KEY_FILE)));
            PathBuf::from(defaults::KEY_FILE)
        }
    };

    if sink.has_errors() {
        return Err(sink.finish().err().unwrap_or_default());
    }

    // Node addresses: the address each node uses in every drbd.conf resource, if they
    // all agree (DRBD's replication link runs over the admin/heartbeat network here).
    let nodes: Vec<Node> = node_names
        .iter()
        .map(|n| {
            let mut addrs: Vec<IpAddr> = disks
                .iter()
                .filter_map(|d| d.host(n).map(|h| h.address.ip()))
                .collect();
            addrs.dedup();
            Node {
                name: n.clone(),
                address: (addrs.len() == 1).then(|| addrs[0]),
            }
        })
        .collect();

    let links = links(&ha_src, &mut sink, &hacf, &nodes);
    if links.is_empty() {
        sink.push(ha_src.warning(
            0..0,
            "ha.cf defines no heartbeat medium (ucast, bcast, mcast, serial): add a [[link]]",
        ));
    }

    let (keepalive, deadtime, warntime, initdead) = timing(&hacf);
    if hacf.keepalive.is_none()
        && hacf.deadtime.is_none()
        && hacf.warntime.is_none()
        && hacf.initdead.is_none()
    {
        sink.push(ha_src.warning(0..0, format!(
            "ha.cf sets none of keepalive, deadtime, warntime, initdead: tandem's defaults apply (keepalive {}, deadtime {}, warntime {}, initdead {})",
            format_duration(keepalive), format_duration(deadtime), format_duration(warntime), format_duration(initdead)
        )));
    }
    let mut fence_devices = hacf.fence_devices.clone();
    for f in &mut fence_devices {
        f.run_on.sort();
        f.run_on.dedup();
    }
    if fence_devices.is_empty() {
        sink.push(ha_src.warning(0..0, "ha.cf configures no stonith device: fencing stays required, so takeover of shared data waits for `tandem fence confirm NODE`; add a [[fence_device]] (e.g. fence_apc for the whitepaper's power switch)"));
    }
    if let Some((name, text)) = &drbd {
        if let Some(at) = first_incon_degr_cmd(text) {
            let src = Source::new(name, text);
            sink.push(src.warning(at..at, "incon-degr-cmd is not imported: tandem refuses to become primary on inconsistent data unless an operator forces it, instead of running a command"));
        }
    }

    let cluster_name = files
        .cluster_name
        .clone()
        .unwrap_or_else(|| derive_cluster_name(&node_names));
    let mut groups = make_groups(&cluster_name, raw_groups);
    publish_disks_as_tandem_devices(&mut disks, &mut groups, &mut sink, &har_src);
    for disk in &mut disks {
        if !fencing_explicit.contains(&disk.name) {
            let in_group = groups
                .iter()
                .flat_map(|g| &g.resources)
                .any(|r| matches!(&r.kind, ResourceKind::Disk { disk: d } if *d == disk.name));
            disk.fencing = DiskFencing::default_for(in_group, FencingPolicy::Required);
        }
    }

    let config = Config {
        cluster: Cluster {
            name: cluster_name,
            keepalive,
            deadtime,
            warntime,
            initdead,
            auto_failback: hacf.auto_failback.unwrap_or(AutoFailback::Legacy),
            udp_port: hacf.udp_port.unwrap_or(defaults::UDP_PORT),
            key_file,
            fencing: FencingPolicy::Required,
            state_dir: PathBuf::from(defaults::STATE_DIR),
            control_socket: PathBuf::from(defaults::CONTROL_SOCKET),
            ping: hacf.ping.clone(),
            ping_groups: hacf.ping_groups.clone(),
            deadping: hacf.deadping.unwrap_or(defaults::DEADPING),
            fencing_delay: defaults::FENCING_DELAY,
            nbd_group: None,
        },
        log: hacf.log.clone(),
        nodes,
        links,
        fence_devices,
        witness: None,
        disks,
        groups,
        metrics: Metrics::default(),
        notify,
    };
    if hacf.auto_failback.is_none() {
        sink.push(ha_src.warning(0..0, "ha.cf has no auto_failback: Heartbeat's default `legacy` is kept; say `auto_failback off` or `on` explicitly"));
    }

    // The result must pass the native checks; anything they find is a gap in the
    // importer's own checks, reported against the generated text rather than hidden.
    let text = crate::emit::to_toml(&config);
    match crate::native::parse("<imported>", &text, crate::native::FileChecks::Off) {
        Ok((back, native_warnings)) => {
            // Native warnings duplicate the importer's (fencing, links); keep ours.
            drop(native_warnings);
            Ok((back, sink.finish()?))
        }
        Err(d) => Err(d),
    }
}

/// DRBD's device nodes become tandem's: a disk is published on its primary as
/// `/dev/tandem/NAME`, so each host's `device` says that, and a `Filesystem` on
/// `/dev/drbdN` (drbd.conf's `device` line of disk NAME) mounts `/dev/tandem/NAME`.
/// File systems this stack cannot mount anywhere are reported with what to use instead.
fn publish_disks_as_tandem_devices(
    disks: &mut [Disk],
    groups: &mut [Group],
    sink: &mut Sink,
    har_src: &Source<'_>,
) {
    let mut renamed: Vec<(String, String)> = Vec::new();
    for d in disks.iter_mut() {
        let published = PathBuf::from(format!("/dev/tandem/{}", d.name));
        for h in &mut d.hosts {
            if h.device != published {
                let old = h.device.display().to_string();
                if !renamed.iter().any(|(o, _)| *o == old) {
                    renamed.push((old, d.name.clone()));
                }
                h.device = published.clone();
            }
        }
    }
    for r in groups.iter_mut().flat_map(|g| g.resources.iter_mut()) {
        let ResourceKind::Filesystem { device, fstype, .. } = &mut r.kind else {
            continue;
        };
        if let Some((_, name)) = renamed.iter().find(|(old, _)| old == device) {
            *device = format!("/dev/tandem/{name}");
        }
        if let Some(why) = crate::model::removed_fstype(fstype) {
            sink.push(har_src.warning(0..0, format!(
                "resource {}: file system {fstype} on {device}: {why}; the imported file keeps {fstype} as written, and `tandem config check` refuses it where the kernel lacks it: create ext4 on the disk (mkfs.ext4 {device} on its primary, then copy the data) and set fstype = \"ext4\"",
                r.name
            )));
        }
    }
    if !renamed.is_empty() {
        let list: Vec<String> = renamed
            .iter()
            .map(|(old, name)| format!("{old} → /dev/tandem/{name}"))
            .collect();
        sink.push(har_src.warning(0..0, format!(
            "DRBD devices are published by tandem as /dev/tandem/NAME on the disk's primary; Filesystem resources mount those: {}",
            list.join(", ")
        )));
    }
}

fn error_count(sink: &Sink) -> usize {
    sink.items
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
}

fn file_error(p: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: p.display().to_string(),
        line: 1,
        col: 1,
        severity: Severity::Error,
        message,
    }
}

/// Byte offset of the first `incon-degr-cmd` outside a comment.
fn first_incon_degr_cmd(text: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let code = line.split('#').next().unwrap_or("");
        if let Some(i) = code.find("incon-degr-cmd") {
            return Some(offset + i);
        }
        offset += line.len();
    }
    None
}

/// Timing with Heartbeat's relations filled in for what ha.cf leaves out.
fn timing(
    h: &hacf::HaCf,
) -> (
    std::time::Duration,
    std::time::Duration,
    std::time::Duration,
    std::time::Duration,
) {
    let keepalive = h.keepalive.map(|x| x.0).unwrap_or(defaults::KEEPALIVE);
    let deadtime = h.deadtime.map(|x| x.0).unwrap_or(defaults::DEADTIME);
    let warntime = h.warntime.map(|x| x.0).unwrap_or(if h.deadtime.is_some() {
        crate::units::whole_ms(deadtime / 2)
    } else {
        defaults::WARNTIME
    });
    let initdead = h.initdead.map(|x| x.0).unwrap_or(if h.deadtime.is_some() {
        (deadtime * 2).max(defaults::INITDEAD)
    } else {
        defaults::INITDEAD
    });
    (keepalive, deadtime, warntime, initdead)
}

/// The native timing rules, reported at the ha.cf value that breaks them.
fn timing_checks(src: &Source<'_>, sink: &mut Sink, h: &hacf::HaCf) {
    let (keepalive, deadtime, warntime, initdead) = timing(h);
    let f = format_duration;
    let pos = |x: Option<(std::time::Duration, usize)>, y: Option<(std::time::Duration, usize)>| {
        let p = x.or(y).map(|v| v.1).unwrap_or(0);
        p..p
    };
    if keepalive.is_zero() {
        sink.push(src.error(pos(h.keepalive, None), "`keepalive` must be greater than 0"));
    }
    if deadtime <= keepalive * 2 {
        sink.push(src.error(
            pos(h.deadtime, h.keepalive),
            format!(
                "deadtime ({}) must be greater than 2 × keepalive ({}): expected deadtime > {}",
                f(deadtime),
                f(keepalive),
                f(keepalive * 2)
            ),
        ));
    }
    if initdead < deadtime {
        sink.push(src.error(
            pos(h.initdead, h.deadtime),
            format!(
                "initdead ({}) must not be less than deadtime ({}): expected initdead >= {}",
                f(initdead),
                f(deadtime),
                f(deadtime)
            ),
        ));
    }
    if warntime >= deadtime {
        sink.push(src.error(pos(h.warntime, h.deadtime), format!(
            "warntime ({}) must be less than deadtime ({}): a late-heartbeat warning after the node is already dead warns nobody",
            f(warntime), f(deadtime)
        )));
    }
}

/// Same subnet, judged without a netmask: /24 for IPv4, /64 for IPv6 (what a
/// dedicated heartbeat network between two machines nearly always is).
fn same_subnet(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..4] == b.segments()[..4],
        _ => false,
    }
}

fn links(src: &Source<'_>, sink: &mut Sink, h: &hacf::HaCf, nodes: &[Node]) -> Vec<Link> {
    let port = h.udp_port.unwrap_or(defaults::UDP_PORT);
    let mut out: Vec<Link> = Vec::new();
    for m in &h.media {
        let kind = match m {
            hacf::Medium::Bcast { interface } => LinkKind::Bcast {
                interface: interface.clone(),
                port,
            },
            hacf::Medium::Mcast {
                interface,
                group,
                port,
                ttl,
                multicast_loop,
            } => LinkKind::Mcast {
                interface: interface.clone(),
                group: *group,
                port: *port,
                ttl: *ttl,
                multicast_loop: *multicast_loop,
            },
            hacf::Medium::Serial { device } => LinkKind::Serial {
                device: device.clone(),
                baud: h.baud.unwrap_or(defaults::BAUD),
            },
            hacf::Medium::Ucast { interface, peers } => {
                let mut addrs: Vec<IpAddr> = peers.iter().map(|(a, _)| *a).collect();
                // Heartbeat's ha.cf for ucast differs per node (each names the other).
                // If this one names only one node's address, add the other node's
                // address when drbd.conf gives it on the same subnet, so that one file
                // serves both nodes: each node skips its own address.
                let named: Vec<&Node> = nodes
                    .iter()
                    .filter(|n| n.address.is_some_and(|a| addrs.contains(&a)))
                    .collect();
                if named.len() == 1 && nodes.len() == 2 {
                    let other = nodes.iter().find(|n| n.name != named[0].name);
                    if let (Some(other), Some(listed)) = (other, named[0].address) {
                        match other.address {
                            Some(addr) if same_subnet(addr, listed) => {
                                addrs.push(addr);
                                let p = peers[0].1;
                                sink.push(src.warning(p..p, format!(
                                    "`ucast {interface} {listed}` names only {}'s address: added {}'s address {addr} (from drbd.conf, same subnet) so one file serves both nodes; each node skips its own address",
                                    named[0].name, other.name
                                )));
                            }
                            _ => {
                                let p = peers[0].1;
                                sink.push(src.warning(p..p, format!(
                                    "`ucast {interface}` names only {}'s address and {}'s is unknown: add it to `peers` so this file also serves {}",
                                    named[0].name, other.name, other.name
                                )));
                            }
                        }
                    }
                }
                LinkKind::Ucast {
                    interface: interface.clone(),
                    peers: addrs,
                    port,
                }
            }
        };
        let base = crate::native::derive_link_name(&kind);
        let mut name = base.clone();
        let mut n = 2;
        while out.iter().any(|l| l.name == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        out.push(Link { name, kind });
    }
    out
}

/// `ox1`, `ox2` → `ox`: the node names' common prefix without trailing digits or
/// separators; `tandem` when there is none.
fn derive_cluster_name(nodes: &[String]) -> String {
    let Some(first) = nodes.first() else {
        return "tandem".to_string();
    };
    let mut prefix: &str = first;
    for n in &nodes[1..] {
        let common = prefix
            .chars()
            .zip(n.chars())
            .take_while(|(a, b)| a == b)
            .count();
        prefix = &prefix[..prefix
            .char_indices()
            .nth(common)
            .map(|(i, _)| i)
            .unwrap_or(prefix.len())];
    }
    let trimmed =
        prefix.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_' || c == '.');
    if trimmed.is_empty() {
        "tandem".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Names groups (the cluster's name for a single group, else `NAME-1`, `NAME-2` …)
/// and makes resource names unique across the cluster.
fn make_groups(cluster: &str, raw: Vec<haresources::RawGroup>) -> Vec<Group> {
    let single = raw.len() == 1;
    let mut used: Vec<String> = Vec::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, g)| {
            let resources = g
                .resources
                .into_iter()
                .map(|mut r| {
                    let base = r.name.clone();
                    let mut n = 2;
                    while used.contains(&r.name) {
                        r.name = format!("{base}-{n}");
                        n += 1;
                    }
                    used.push(r.name.clone());
                    r
                })
                .collect();
            Group {
                name: if single {
                    cluster.to_string()
                } else {
                    format!("{cluster}-{}", i + 1)
                },
                home: g.home,
                migration_threshold: defaults::MIGRATION_THRESHOLD,
                failure_timeout: defaults::FAILURE_TIMEOUT,
                resources,
            }
        })
        .collect()
}

/// The TOML `tandem config import` prints: a header naming the sources and repeating
/// the warnings, then the full native file.
pub fn render(config: &Config, files: &HaFiles, warnings: &[Warning]) -> String {
    let mut header =
        vec!["tandem cluster configuration, imported by `tandem config import` from:".to_string()];
    header.push(format!("  ha.cf:       {}", files.ha_cf.display()));
    header.push(format!("  haresources: {}", files.haresources.display()));
    if let Some(p) = &files.authkeys {
        header.push(format!("  authkeys:    {}", p.display()));
    }
    if let Some(p) = &files.drbd_conf {
        header.push(format!("  drbd.conf:   {}", p.display()));
    }
    if !warnings.is_empty() {
        header.push(String::new());
        header.push("Notes from the import:".to_string());
        for w in warnings {
            header.push(format!("- {w}"));
        }
    }
    header.push(String::new());
    header.push(
        "Every key is written out, defaults included; see docs/configuration.md.".to_string(),
    );
    crate::emit::to_toml_with_header(config, &header)
}
