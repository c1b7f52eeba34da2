//! Heartbeat's `haresources`: one group per logical line, `NODE res res …`, where a
//! resource is `Script::arg1::arg2`, a bare address (`ip[/prefix[/iface[/broadcast]]]`)
//! or a script name; `\` at the end of a line continues it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diag::{Sink, Source};
use crate::model::*;

/// Heartbeat's own `/etc/ha.d/resource.d` scripts: named in haresources without
/// arguments they still use the resource.d calling convention, not init's.
const HEARTBEAT_SCRIPTS: &[&str] = &[
    "AudibleAlarm",
    "Delay",
    "ICP",
    "IPsrcaddr",
    "IPv6addr",
    "LVM",
    "LVSSyncDaemonSwap",
    "LinuxSCSI",
    "MailTo",
    "OCF",
    "Raid1",
    "SendArp",
    "ServeRAID",
    "WAS",
    "WinPopup",
    "Xinetd",
    "apache",
    "db2",
    "hto-mapfuncs",
    "portblock",
];

/// A group as written: home node and resources in order.
#[derive(Debug)]
pub struct RawGroup {
    /// Home node.
    pub home: String,
    /// Resources (names derived, not yet made unique).
    pub resources: Vec<Resource>,
}

/// One word with its byte offset in the original text.
#[derive(Debug, Clone)]
struct Word {
    text: String,
    at: usize,
}

/// Splits the text into logical lines (continuations joined), each as words with
/// offsets into the original text so messages point at the physical line.
fn logical_lines(src: &Source<'_>, sink: &mut Sink) -> Vec<Vec<Word>> {
    let mut out = Vec::new();
    let mut current: Vec<Word> = Vec::new();
    let mut offset = 0;
    let mut last_continued_at = None;
    for raw in src.text.split_inclusive('\n') {
        let base = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        // A `#` that starts a word comments out the rest of the line.
        let mut words: Vec<Word> = crate::key::words(base, line)
            .into_iter()
            .map(|(at, w)| Word {
                text: w.to_string(),
                at,
            })
            .collect();
        if let Some(i) = words.iter().position(|w| w.text.starts_with('#')) {
            words.truncate(i);
        }
        // `\` as the last word (trailing spaces allowed, as in the whitepaper's copy)
        // or glued to the last word continues the line.
        let mut continued = false;
        if let Some(last) = words.last_mut() {
            if last.text == "\\" {
                continued = true;
                last_continued_at = Some(last.at);
                words.pop();
            } else if let Some(stripped) = last.text.strip_suffix('\\') {
                continued = true;
                last_continued_at = Some(last.at + stripped.len());
                last.text = stripped.to_string();
            }
        }
        current.extend(words);
        if !continued {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            last_continued_at = None;
        }
    }
    if let Some(at) = last_continued_at {
        sink.push(src.error(at..at, "`\\` continues the last line, but the file ends: expected another resource on the next line"));
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Parses haresources. `nodes` are the ha.cf nodes, `disks` the drbd.conf resources;
/// `resource_d`, when given, is a directory of Heartbeat resource scripts consulted to
/// decide the calling convention of otherwise unknown names.
pub fn parse(
    src: &Source<'_>,
    sink: &mut Sink,
    nodes: &[String],
    disks: Option<&[Disk]>,
    resource_d: Option<&Path>,
) -> Vec<RawGroup> {
    let names: Option<Vec<String>> = disks.map(|d| d.iter().map(|d| d.name.clone()).collect());
    let mut groups = Vec::new();
    for line in logical_lines(src, sink) {
        let Some((home, rest)) = line.split_first() else {
            continue;
        };
        if !nodes.contains(&home.text) && !nodes.is_empty() {
            sink.push(src.error(home.at..home.at, format!(
                "group's home `{}` is not a node: expected one of the ha.cf nodes ({}) as the first word of the line",
                home.text,
                nodes.join(", ")
            )));
            continue;
        }
        if rest.is_empty() {
            sink.push(src.error(
                home.at..home.at,
                format!(
                    "no resources after `{}`: expected `{} RESOURCE [RESOURCE…]`",
                    home.text, home.text
                ),
            ));
            continue;
        }
        let mut resources = Vec::new();
        let mut words = Vec::new();
        for w in rest {
            if let Some(r) = resource(src, sink, w, names.as_deref(), resource_d) {
                resources.push(r);
                words.push(w);
            }
        }
        mount_order(src, sink, &resources, &words, disks.unwrap_or(&[]));
        groups.push(RawGroup {
            home: home.text.clone(),
            resources,
        });
    }
    if groups.is_empty() && !sink.items.iter().any(|d| d.file == src.name) {
        sink.push(src.error(
            0..0,
            "no resource group: expected a line `NODE RESOURCE [RESOURCE…]`",
        ));
    }
    groups
}

/// A `Filesystem` on a drbd.conf device must follow the `datadisk` that promotes it;
/// the same rule as the native check, reported here at the haresources word.
fn mount_order(
    src: &Source<'_>,
    sink: &mut Sink,
    resources: &[Resource],
    words: &[&Word],
    disks: &[Disk],
) {
    for (i, r) in resources.iter().enumerate() {
        let ResourceKind::Filesystem { device, .. } = &r.kind else {
            continue;
        };
        let Some(disk) = disks.iter().find(|d| {
            d.hosts
                .iter()
                .any(|h| h.device.as_os_str() == device.as_str())
        }) else {
            continue;
        };
        let at = words[i].at..words[i].at;
        let promoter = resources
            .iter()
            .position(|x| matches!(&x.kind, ResourceKind::Disk { disk: n } if *n == disk.name));
        match promoter {
            Some(j) if j < i => {}
            Some(j) => sink.push(src.error(at, format!(
                "`{}` mounts {device}, the device of disk `{}`, before `{}` promotes it: expected `{}` earlier on the line",
                words[i].text, disk.name, words[j].text, words[j].text
            ))),
            None => sink.push(src.warning(at, format!(
                "`{}` mounts {device}, the device of disk `{}`, but this group has no `datadisk::{}`: the disk must already be primary when the group starts",
                words[i].text, disk.name, disk.name
            ))),
        }
    }
}

fn resource(
    src: &Source<'_>,
    sink: &mut Sink,
    w: &Word,
    disks: Option<&[String]>,
    resource_d: Option<&Path>,
) -> Option<Resource> {
    let parts: Vec<&str> = w.text.split("::").collect();
    let (script, args) = parts.split_first()?;
    let at = w.at..w.at;
    // The address scripts take one spec that may itself contain `::` (IPv6), so for
    // them everything after the first `::` is the spec.
    if matches!(*script, "IPaddr" | "IPaddr2" | "IPv6addr") {
        let spec = w.text.split_once("::").map(|(_, s)| s).unwrap_or("");
        if spec.is_empty() {
            sink.push(src.error(
                at,
                format!(
                    "`{}`: expected `{script}::IP[/PREFIX[/IFACE[/BROADCAST]]]`",
                    w.text
                ),
            ));
            return None;
        }
        let kind = ip_spec(src, sink, w, spec, *script == "IPaddr")?;
        return Some(Resource {
            name: crate::native::derive_resource_name(&kind),
            timeout: defaults::RESOURCE_TIMEOUT,
            monitor_interval: Some(defaults::MONITOR_INTERVAL),
            kind,
        });
    }
    if script.is_empty() || args.iter().any(|a| a.is_empty()) {
        sink.push(src.error(
            at,
            format!(
                "`{}`: empty name or argument: expected `SCRIPT` or `SCRIPT::ARG[::ARG…]`",
                w.text
            ),
        ));
        return None;
    }
    // A word whose first `/` field is an address is the bare IPaddr shorthand.
    let looks_like_ip = script
        .split('/')
        .next()
        .is_some_and(|a| a.parse::<IpAddr>().is_ok());
    let kind = if looks_like_ip {
        if !args.is_empty() {
            sink.push(src.error(at, format!("`{}`: an address takes no `::` arguments: expected IP[/PREFIX[/IFACE[/BROADCAST]]]", w.text)));
            return None;
        }
        ip_spec(src, sink, w, script, false)?
    } else {
        match *script {
            "datadisk" | "drbddisk" => {
                let [disk] = args else {
                    sink.push(src.error(
                        at,
                        format!(
                            "`{}`: expected `{script}::NAME` naming one drbd.conf resource",
                            w.text
                        ),
                    ));
                    return None;
                };
                // `None`: drbd.conf had errors of its own; do not repeat them here.
                if let Some(disks) = disks.filter(|d| !d.iter().any(|d| d == disk)) {
                    let known = if disks.is_empty() {
                        "none: pass --drbd-conf".to_string()
                    } else {
                        disks.join(", ")
                    };
                    sink.push(src.error(at, format!("`{}` names unknown disk `{disk}`: expected a drbd.conf resource ({known})", w.text)));
                    return None;
                }
                ResourceKind::Disk {
                    disk: disk.to_string(),
                }
            }
            "Filesystem" => {
                let (device, directory, fstype, options) = match args {
                    [d, m] => (d, m, "auto", None),
                    [d, m, t] => (d, m, *t, None),
                    [d, m, t, o] => (d, m, *t, Some(o.to_string())),
                    _ => {
                        sink.push(src.error(at, format!("`{}`: expected `Filesystem::DEVICE::DIRECTORY[::FSTYPE[::OPTIONS]]`", w.text)));
                        return None;
                    }
                };
                if !directory.starts_with('/') {
                    sink.push(src.error(
                        at,
                        format!(
                            "`{}`: mount point `{directory}` is not an absolute path",
                            w.text
                        ),
                    ));
                    return None;
                }
                ResourceKind::Filesystem {
                    device: device.to_string(),
                    directory: PathBuf::from(directory),
                    fstype: fstype.to_string(),
                    options,
                }
            }
            _ => {
                if script.contains('/') && !script.starts_with('/') {
                    sink.push(src.error(at, format!("`{}`: `{script}` is neither a script name nor an IP address: expected `SCRIPT[::ARG…]` or `IP[/PREFIX[/IFACE[/BROADCAST]]]`", w.text)));
                    return None;
                }
                let in_resource_d = resource_d.is_some_and(|d| d.join(script).is_file());
                ResourceKind::Lsb {
                    script: script.to_string(),
                    args: args.iter().map(|a| a.to_string()).collect(),
                    heartbeat: !args.is_empty()
                        || HEARTBEAT_SCRIPTS.contains(script)
                        || in_resource_d,
                }
            }
        }
    };
    Some(Resource {
        name: crate::native::derive_resource_name(&kind),
        timeout: defaults::RESOURCE_TIMEOUT,
        monitor_interval: Some(defaults::MONITOR_INTERVAL),
        kind,
    })
}

/// `IP[/PREFIX[/IFACE[/BROADCAST]]]`. Heartbeat's IPaddr announces with 10 ARPs at
/// 500 ms; IPaddr2 and the bare form with IPaddr2's 5 at 200 ms (tandem's default).
fn ip_spec(
    src: &Source<'_>,
    sink: &mut Sink,
    w: &Word,
    spec: &str,
    ipaddr1: bool,
) -> Option<ResourceKind> {
    let at = w.at..w.at;
    let fields: Vec<&str> = spec.split('/').collect();
    let bad = |sink: &mut Sink, why: String| {
        sink.push(src.error(
            at.clone(),
            format!(
                "`{}`: {why}: expected IP[/PREFIX[/IFACE[/BROADCAST]]], e.g. 192.168.1.160/24/eth0",
                w.text
            ),
        ));
    };
    if fields.len() > 4 {
        bad(sink, "too many `/` fields".to_string());
        return None;
    }
    let Ok(address) = fields[0].parse::<IpAddr>() else {
        bad(sink, format!("`{}` is not an IP address", fields[0]));
        return None;
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match fields.get(1).filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => Some(n),
            _ => {
                bad(
                    sink,
                    format!("prefix `{p}` is not a number from 0 to {max}"),
                );
                return None;
            }
        },
    };
    let interface = fields
        .get(2)
        .filter(|i| !i.is_empty())
        .map(|i| i.to_string());
    let broadcast = match fields.get(3).filter(|b| !b.is_empty()) {
        None => None,
        Some(b) => match b.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                bad(sink, format!("broadcast `{b}` is not an IP address"));
                return None;
            }
        },
    };
    let (garp_count, garp_interval) = if ipaddr1 {
        (10, Duration::from_millis(500))
    } else {
        (defaults::GARP_COUNT, defaults::GARP_INTERVAL)
    };
    Some(ResourceKind::IpAddr {
        address,
        prefix_len,
        interface,
        broadcast,
        garp_count,
        garp_interval,
    })
}
