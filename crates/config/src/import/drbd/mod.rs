//! DRBD 0.7's `drbd.conf`: `resource NAME { … }` blocks of `keyword values… ;`
//! statements and nested sections, `#` comments, quoted or bare words.

mod syntax;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;

use syntax::Stmt;
use values::{choice, err, error_count, expect_block, number, seconds, unknown, value};

use crate::diag::{Sink, Source};
use crate::model::*;
use crate::units;

/// Parses drbd.conf into disks, each with whether the file set its `fencing` policy.
/// `nodes` are the cluster's node names (from ha.cf), so an `on HOST` naming anything
/// else is reported here, at the host name. The handlers tandem has an event for
/// (`split-brain`, `out-of-sync`, `after-resync-target`) go to `notify`.
pub fn parse(
    src: &Source<'_>,
    sink: &mut Sink,
    nodes: &[String],
    notify: &mut Vec<Notify>,
) -> Vec<(Disk, bool)> {
    let Some(stmts) = syntax::statements(src, sink) else {
        return Vec::new();
    };
    let mut disks: Vec<(Disk, bool)> = Vec::new();
    let mut seen_global = false;
    for s in &stmts {
        match s.key.text.as_str() {
            "global" => {
                if seen_global {
                    err(
                        src,
                        sink,
                        &s.key,
                        "a second `global` section: at most one is allowed",
                    );
                }
                if !disks.is_empty() {
                    err(
                        src,
                        sink,
                        &s.key,
                        "`global` after a resource: it must precede every `resource` section",
                    );
                }
                seen_global = true;
                let Some(block) = expect_block(src, sink, s, "global") else {
                    continue;
                };
                for o in block {
                    match o.key.text.as_str() {
                        // Kernel-module settings with no meaning for tandem.
                        "minor-count"
                        | "dialog-refresh"
                        | "disable-io-hints"
                        | "disable-ip-verification"
                        | "usage-count" => {}
                        other => err(
                            src,
                            sink,
                            &o.key,
                            &format!(
                                "unknown option `{other}` in `global`: expected minor-count, dialog-refresh or disable-io-hints"
                            ),
                        ),
                    }
                }
            }
            "resource" => {
                if let Some((d, explicit)) = resource(src, sink, s, nodes, notify) {
                    if let Some((first, _)) = disks.iter().find(|(x, _)| x.name == d.name) {
                        err(
                            src,
                            sink,
                            &s.args[0],
                            &format!(
                                "duplicate resource name `{}`: names must be unique",
                                first.name
                            ),
                        );
                    } else {
                        disks.push((d, explicit));
                    }
                }
            }
            other => err(
                src,
                sink,
                &s.key,
                &format!(
                    "unknown section `{other}`: expected `global {{ … }}` or `resource NAME {{ … }}`"
                ),
            ),
        }
    }
    if disks.is_empty() && error_count(sink) == 0 {
        sink.push(src.warning(0..0, "drbd.conf defines no resource"));
    }
    disks
}

fn resource(
    src: &Source<'_>,
    sink: &mut Sink,
    s: &Stmt,
    nodes: &[String],
    notify: &mut Vec<Notify>,
) -> Option<(Disk, bool)> {
    let name = match s.args.as_slice() {
        [n] => n.text.clone(),
        [] => {
            err(
                src,
                sink,
                &s.key,
                "`resource` needs a name: expected `resource NAME { … }`",
            );
            return None;
        }
        [_, extra, ..] => {
            err(
                src,
                sink,
                extra,
                &format!(
                    "unexpected `{}`: expected `resource NAME {{ … }}`",
                    extra.text
                ),
            );
            return None;
        }
    };
    let block = expect_block(src, sink, s, "resource")?;
    let errors_before = error_count(sink);
    let mut d = Disk {
        name: name.clone(),
        protocol: Protocol::C,
        // DRBD 0.7's syncer rate default: 250 KiB/s.
        rate_bytes_per_s: Some(250 * 1024),
        resync_group: defaults::RESYNC_GROUP,
        al_extents: defaults::AL_EXTENTS,
        // DRBD 0.7's default is pass_on (tandem's native default is detach): an imported
        // resource without the option keeps DRBD's meaning.
        on_io_error: OnIoError::PassOn,
        wfc_timeout: None,
        degr_wfc_timeout: Some(defaults::DEGR_WFC_TIMEOUT),
        net_timeout: defaults::NET_TIMEOUT,
        connect_interval: defaults::CONNECT_INTERVAL,
        ping_interval: defaults::PING_INTERVAL,
        after_sb_0pri: AfterSb0Pri::Disconnect,
        after_sb_1pri: AfterSb1Pri::Disconnect,
        after_sb_2pri: AfterSb2Pri::Disconnect,
        // Replaced by the default for its place once the groups are known, unless the
        // file says (`disk { fencing …; }`, DRBD 8).
        fencing: DiskFencing::ResourceOnly,
        hosts: Vec::new(),
    };
    let mut fencing_explicit = false;
    for st in block {
        match st.key.text.as_str() {
            "protocol" => {
                if let Some(p) = choice(
                    src,
                    sink,
                    st,
                    &[("A", Protocol::A), ("B", Protocol::B), ("C", Protocol::C)],
                ) {
                    d.protocol = p;
                }
            }
            "incon-degr-cmd" => {
                // Kept out of the model on purpose: tandem refuses to promote
                // inconsistent data unless forced, instead of running a command.
                value(src, sink, st, "\"COMMAND\"");
            }
            "startup" => {
                for o in expect_block(src, sink, st, "startup").unwrap_or(&[]) {
                    match o.key.text.as_str() {
                        "wfc-timeout" => {
                            if let Some(t) = seconds(src, sink, o, 1000) {
                                d.wfc_timeout = (!t.is_zero()).then_some(t);
                            }
                        }
                        "degr-wfc-timeout" => {
                            if let Some(t) = seconds(src, sink, o, 1000) {
                                d.degr_wfc_timeout = (!t.is_zero()).then_some(t);
                            }
                        }
                        _ => unknown(
                            src,
                            sink,
                            o,
                            "startup",
                            &["wfc-timeout", "degr-wfc-timeout"],
                        ),
                    }
                }
            }
            "disk" if st.block.is_some() => {
                for o in expect_block(src, sink, st, "disk").unwrap_or(&[]) {
                    match o.key.text.as_str() {
                        "on-io-error" => {
                            if let Some(v) = choice(
                                src,
                                sink,
                                o,
                                &[
                                    ("detach", OnIoError::Detach),
                                    ("pass_on", OnIoError::PassOn),
                                    ("panic", OnIoError::Panic),
                                ],
                            ) {
                                d.on_io_error = v;
                            }
                        }
                        // Size limits the device; tandem uses the whole backing store.
                        "size" => {
                            value(src, sink, o, "SIZE");
                        }
                        "fencing" => {
                            if let Some(v) = choice(
                                src,
                                sink,
                                o,
                                &[
                                    ("dont-care", DiskFencing::DontCare),
                                    ("resource-only", DiskFencing::ResourceOnly),
                                    ("resource-and-stonith", DiskFencing::ResourceAndStonith),
                                ],
                            ) {
                                d.fencing = v;
                                fencing_explicit = true;
                                if v == DiskFencing::DontCare {
                                    sink.push(src.warning(o.key.at..o.key.at, format!(
                                        "resource {name}: `fencing dont-care` is kept: a primary that loses its replication link goes on writing alone, and a failover to the peer then loses those acknowledged writes; `resource-and-stonith` prevents it"
                                    )));
                                }
                            }
                        }
                        _ => unknown(src, sink, o, "disk", &["on-io-error", "size", "fencing"]),
                    }
                }
            }
            "net" => {
                for o in expect_block(src, sink, st, "net").unwrap_or(&[]) {
                    match o.key.text.as_str() {
                        // DRBD's `timeout` counts tenths of a second.
                        "timeout" => {
                            d.net_timeout = seconds(src, sink, o, 100).unwrap_or(d.net_timeout)
                        }
                        "connect-int" => {
                            d.connect_interval =
                                seconds(src, sink, o, 1000).unwrap_or(d.connect_interval)
                        }
                        "ping-int" => {
                            d.ping_interval = seconds(src, sink, o, 1000).unwrap_or(d.ping_interval)
                        }
                        "after-sb-0pri" => {
                            if let Some(v) = choice(src, sink, o, AfterSb0Pri::NAMES) {
                                d.after_sb_0pri = v;
                            }
                        }
                        "after-sb-1pri" => {
                            if let Some(v) = choice(src, sink, o, AfterSb1Pri::NAMES) {
                                d.after_sb_1pri = v;
                            }
                        }
                        "after-sb-2pri" => {
                            if let Some(v) = choice(src, sink, o, AfterSb2Pri::NAMES) {
                                d.after_sb_2pri = v;
                            }
                        }
                        // Buffer and queue tuning: tandem sizes its own buffers.
                        "sndbuf-size" | "max-buffers" | "max-epoch-size" | "ko-count"
                        | "on-disconnect" | "unplug-watermark" => {
                            value(src, sink, o, "VALUE");
                        }
                        _ => unknown(
                            src,
                            sink,
                            o,
                            "net",
                            &[
                                "timeout",
                                "connect-int",
                                "ping-int",
                                "sndbuf-size",
                                "max-buffers",
                                "max-epoch-size",
                                "ko-count",
                                "on-disconnect",
                                "after-sb-0pri",
                                "after-sb-1pri",
                                "after-sb-2pri",
                            ],
                        ),
                    }
                }
            }
            "syncer" => {
                for o in expect_block(src, sink, st, "syncer").unwrap_or(&[]) {
                    match o.key.text.as_str() {
                        "rate" => {
                            if let Some(v) = value(src, sink, o, "RATE") {
                                // A bare number is KiB/s in drbd.conf.
                                match units::parse_size_with_unit(&v.text, 1024) {
                                    Ok(0) => err(src, sink, v, "`rate` must be greater than 0"),
                                    Ok(n) => d.rate_bytes_per_s = Some(n),
                                    Err(msg) => err(src, sink, v, &format!("`rate`: {msg}")),
                                }
                            }
                        }
                        "group" => {
                            d.resync_group = number(src, sink, o, 0, 1000)
                                .map(|n| n as u32)
                                .unwrap_or(d.resync_group)
                        }
                        "al-extents" => {
                            d.al_extents = number(src, sink, o, 7, 6433)
                                .map(|n| n as u32)
                                .unwrap_or(d.al_extents)
                        }
                        _ => unknown(src, sink, o, "syncer", &["rate", "group", "al-extents"]),
                    }
                }
            }
            "handlers" => {
                for o in expect_block(src, sink, st, "handlers").unwrap_or(&[]) {
                    let command = value(src, sink, o, "\"COMMAND\"");
                    if let (Some(event), Some(command)) = (handler_event(&o.key.text), command) {
                        notify.push(handler_notify(&name, &o.key.text, event, &command.text));
                        sink.push(src.warning(
                            o.key.at..o.key.at,
                            format!(
                                "resource {name}: handler `{}` becomes a [[notify]] on `{event}` run as /bin/sh -c (DRBD_RESOURCE is set as DRBD does)",
                                o.key.text
                            ),
                        ));
                        continue;
                    }
                    let why = match o.key.text.as_str() {
                        "fence-peer" => {
                            "tandem outdates the peer over the cluster's heartbeat links and fences it through [[fence_device]] itself (the disk's `fencing` policy), instead of running a fence-peer handler"
                        }
                        _ => {
                            "tandem has no such event; it runs the `split-brain`, `out-of-sync` and `after-resync-target` handlers as [[notify]] commands"
                        }
                    };
                    sink.push(src.warning(
                        o.key.at..o.key.at,
                        format!(
                            "resource {name}: handler `{}` is not imported: {why}",
                            o.key.text
                        ),
                    ));
                }
            }
            "on" => {
                if let Some(h) = host(src, sink, st, nodes, &name) {
                    if d.hosts.iter().any(|x| x.node == h.node) {
                        err(
                            src,
                            sink,
                            &st.args[0],
                            &format!(
                                "`on {}` appears twice in resource `{name}`: expected one section per host",
                                h.node
                            ),
                        );
                    } else {
                        d.hosts.push(h);
                    }
                }
            }
            _ => unknown(
                src,
                sink,
                st,
                &format!("resource {name}"),
                &[
                    "protocol",
                    "incon-degr-cmd",
                    "startup",
                    "disk",
                    "net",
                    "syncer",
                    "handlers",
                    "on",
                ],
            ),
        }
    }
    if d.hosts.len() != 2 && error_count(sink) == errors_before {
        err(
            src,
            sink,
            &s.args[0],
            &format!(
                "resource `{name}` has {} `on HOST` section(s): expected exactly two, one per node",
                d.hosts.len()
            ),
        );
        return None;
    }
    Some((d, fencing_explicit))
}

fn host(
    src: &Source<'_>,
    sink: &mut Sink,
    s: &Stmt,
    nodes: &[String],
    res: &str,
) -> Option<DiskHost> {
    let Some(host) = s.args.first() else {
        err(
            src,
            sink,
            &s.key,
            "`on` needs a host name: expected `on HOST { … }`",
        );
        return None;
    };
    let block = expect_block(src, sink, s, "on HOST")?;
    let errors_before = error_count(sink);
    let known = nodes.is_empty() || nodes.contains(&host.text);
    // With no ha.cf nodes at all, that error was already reported once.
    if !known {
        err(
            src,
            sink,
            host,
            &format!(
                "`on {}` in resource `{res}` names unknown node `{}`: expected one of the ha.cf nodes ({})",
                host.text,
                host.text,
                nodes.join(", ")
            ),
        );
    }
    let (mut device, mut backing, mut address, mut meta) = (None, None, None, None);
    for o in block {
        match o.key.text.as_str() {
            "device" => device = value(src, sink, o, "/dev/drbdN").map(|v| PathBuf::from(&v.text)),
            "disk" => backing = value(src, sink, o, "/dev/sdXN").map(|v| PathBuf::from(&v.text)),
            "address" => {
                if let Some(v) = value(src, sink, o, "IP:PORT") {
                    match v.text.parse::<SocketAddr>() {
                        Ok(a) => address = Some(a),
                        Err(_) => err(
                            src,
                            sink,
                            v,
                            &format!(
                                "`address`: `{}` is not IP:PORT: expected e.g. 192.168.180.20:7788",
                                v.text
                            ),
                        ),
                    }
                }
            }
            "meta-disk" => {
                let words: Vec<&str> = o.args.iter().map(|a| a.text.as_str()).collect();
                let joined = words.concat();
                meta = match joined.as_str() {
                    "internal" => Some(Meta::Internal),
                    "" => {
                        err(src, sink, &o.key, "`meta-disk` needs a value: expected `meta-disk internal;` or `meta-disk DEVICE [INDEX];`");
                        None
                    }
                    other => parse_meta(other).or_else(|| {
                        err(src, sink, &o.args[0], &format!("`meta-disk`: `{}` is not valid: expected `internal` or `DEVICE [INDEX]` (e.g. /dev/sdc1 [0])", words.join(" ")));
                        None
                    }),
                };
            }
            _ => unknown(
                src,
                sink,
                o,
                &format!("on {}", host.text),
                &["device", "disk", "address", "meta-disk"],
            ),
        }
    }
    let mut missing = Vec::new();
    if device.is_none() {
        missing.push("device");
    }
    if backing.is_none() {
        missing.push("disk");
    }
    if address.is_none() {
        missing.push("address");
    }
    if meta.is_none() {
        missing.push("meta-disk");
    }
    if !missing.is_empty() {
        if error_count(sink) == errors_before {
            err(
                src,
                sink,
                host,
                &format!(
                    "`on {}` in resource `{res}` lacks {}: expected device, disk, address and meta-disk",
                    host.text,
                    missing.join(", ")
                ),
            );
        }
        return None;
    }
    known.then(|| DiskHost {
        node: host.text.clone(),
        device: device.unwrap_or_default(),
        backing: backing.unwrap_or_default(),
        address: address.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        meta: meta.unwrap_or(Meta::Internal),
    })
}

/// `/dev/sdc1[0]` or `/dev/sdc1` (tokens already joined).
fn parse_meta(s: &str) -> Option<Meta> {
    let (path, index) = match s.split_once('[') {
        Some((p, rest)) => {
            let n = rest.strip_suffix(']')?.parse::<u32>().ok()?;
            (p, Some(n))
        }
        None => (s, None),
    };
    path.starts_with('/').then(|| Meta::External {
        path: PathBuf::from(path),
        index,
    })
}

/// The tandem event a DRBD handler runs on, for the handlers that have one.
fn handler_event(handler: &str) -> Option<&'static str> {
    match handler {
        "split-brain" => Some("split_brain"),
        "out-of-sync" => Some("out_of_sync"),
        "after-resync-target" => Some("resync_done"),
        _ => None,
    }
}

/// A `[[notify]]` that runs a handler's command line as DRBD does (`/bin/sh -c`), for
/// one disk's events.
fn handler_notify(disk: &str, handler: &str, event: &str, command: &str) -> Notify {
    Notify {
        name: format!("{disk}-{handler}"),
        command: "/bin/sh".into(),
        args: vec!["-c".into(), command.to_string()],
        events: vec![event.to_string()],
        disks: vec![disk.to_string()],
        timeout: crate::model::defaults::NOTIFY_TIMEOUT,
    }
}
