//! Writes a [`Config`] as native TOML that the loader reads back to the same value.
//!
//! Every key is written, defaults included, so the output doubles as the operator's
//! "what is actually in effect" view (`tandem config show`).

use std::fmt::Write as _;
use std::time::Duration;

use crate::model::*;
use crate::units::{format_duration, format_size};

/// The native TOML text for `config`.
pub fn to_toml(config: &Config) -> String {
    to_toml_with_header(config, &[])
}

/// As [`to_toml`], with `header` lines written first as `#` comments.
pub fn to_toml_with_header(config: &Config, header: &[String]) -> String {
    let mut o = String::new();
    for line in header {
        if line.is_empty() {
            o.push_str("#\n");
        }
        for l in line.lines() {
            if l.is_empty() {
                o.push_str("#\n");
            } else {
                let _ = writeln!(o, "# {l}");
            }
        }
    }
    if !header.is_empty() {
        o.push('\n');
    }
    let c = &config.cluster;
    o.push_str("[cluster]\n");
    kv(&mut o, "name", &q(&c.name));
    kv(&mut o, "keepalive", &d(c.keepalive));
    kv(&mut o, "deadtime", &d(c.deadtime));
    kv(&mut o, "warntime", &d(c.warntime));
    kv(&mut o, "initdead", &d(c.initdead));
    kv(
        &mut o,
        "auto_failback",
        &q(match c.auto_failback {
            AutoFailback::On => "on",
            AutoFailback::Off => "off",
            AutoFailback::Legacy => "legacy",
        }),
    );
    kv(&mut o, "udpport", &c.udp_port.to_string());
    kv(&mut o, "key_file", &q(&c.key_file.display().to_string()));
    kv(
        &mut o,
        "fencing",
        &q(match c.fencing {
            FencingPolicy::Required => "required",
            FencingPolicy::None => "none",
        }),
    );
    kv(&mut o, "state_dir", &q(&c.state_dir.display().to_string()));
    kv(
        &mut o,
        "control_socket",
        &q(&c.control_socket.display().to_string()),
    );
    kv(
        &mut o,
        "ping",
        &list(c.ping.iter().map(|p| q(&p.to_string()))),
    );
    kv(&mut o, "deadping", &d(c.deadping));
    kv(&mut o, "fencing_delay", &d(c.fencing_delay));
    if let Some(g) = &c.nbd_group {
        kv(&mut o, "nbd_group", &q(g));
    }
    if !c.ping_groups.is_empty() {
        let groups: Vec<String> = c
            .ping_groups
            .iter()
            .map(|g| {
                format!(
                    "{} = {}",
                    key(&g.name),
                    list(g.addresses.iter().map(|a| q(&a.to_string())))
                )
            })
            .collect();
        kv(
            &mut o,
            "ping_group",
            &format!("{{ {} }}", groups.join(", ")),
        );
    }

    let l = &config.log;
    if l.syslog_facility.is_some() || l.file.is_some() || l.debug_file.is_some() {
        o.push_str("\n[log]\n");
        if let Some(f) = &l.syslog_facility {
            kv(&mut o, "syslog_facility", &q(f));
        }
        if let Some(f) = &l.file {
            kv(&mut o, "file", &q(&f.display().to_string()));
        }
        if let Some(f) = &l.debug_file {
            kv(&mut o, "debug_file", &q(&f.display().to_string()));
        }
    }

    if let Some(w) = &config.witness {
        o.push_str("\n[witness]\n");
        kv(&mut o, "name", &q(&w.name));
        kv(&mut o, "tie_wait", &d(w.tie_wait));
        kv(&mut o, "vote_retry", &d(w.vote_retry));
        kv(
            &mut o,
            "state_file",
            &q(&w.state_file.display().to_string()),
        );
    }

    for n in &config.nodes {
        o.push_str("\n[[node]]\n");
        kv(&mut o, "name", &q(&n.name));
        if let Some(a) = n.address {
            kv(&mut o, "address", &q(&a.to_string()));
        }
    }

    for link in &config.links {
        o.push_str("\n[[link]]\n");
        kv(&mut o, "name", &q(&link.name));
        kv(&mut o, "type", &q(link.kind.type_name()));
        match &link.kind {
            LinkKind::Ucast {
                interface,
                peers,
                port,
            } => {
                kv(&mut o, "interface", &q(interface));
                kv(
                    &mut o,
                    "peers",
                    &list(peers.iter().map(|p| q(&p.to_string()))),
                );
                kv(&mut o, "port", &port.to_string());
            }
            LinkKind::Bcast { interface, port } => {
                kv(&mut o, "interface", &q(interface));
                kv(&mut o, "port", &port.to_string());
            }
            LinkKind::Mcast {
                interface,
                group,
                port,
                ttl,
                multicast_loop,
            } => {
                kv(&mut o, "interface", &q(interface));
                kv(&mut o, "group", &q(&group.to_string()));
                kv(&mut o, "port", &port.to_string());
                kv(&mut o, "ttl", &ttl.to_string());
                kv(&mut o, "loop", &multicast_loop.to_string());
            }
            LinkKind::Serial { device, baud } => {
                kv(&mut o, "device", &q(&device.display().to_string()));
                kv(&mut o, "baud", &baud.to_string());
            }
        }
    }

    for f in &config.fence_devices {
        o.push_str("\n[[fence_device]]\n");
        kv(&mut o, "name", &q(&f.name));
        let agent = match &f.agent {
            FenceAgent::FenceAgents(n) => n.clone(),
            FenceAgent::External(n) => format!("external/{n}"),
            FenceAgent::Manual => "manual".to_string(),
        };
        kv(&mut o, "agent", &q(&agent));
        kv(&mut o, "params", &inline_map(&f.params));
        kv(&mut o, "plugs", &inline_map(&f.plugs));
        kv(&mut o, "run_on", &list(f.run_on.iter().map(|n| q(n))));
        kv(&mut o, "level", &f.level.to_string());
        kv(&mut o, "timeout", &d(f.timeout));
    }

    for disk in &config.disks {
        o.push_str("\n[[disk]]\n");
        kv(&mut o, "name", &q(&disk.name));
        kv(
            &mut o,
            "protocol",
            &q(match disk.protocol {
                Protocol::A => "A",
                Protocol::B => "B",
                Protocol::C => "C",
            }),
        );
        kv(
            &mut o,
            "rate",
            &q(&disk
                .rate_bytes_per_s
                .map(format_size)
                .unwrap_or_else(|| "unlimited".to_string())),
        );
        kv(&mut o, "resync_group", &disk.resync_group.to_string());
        kv(&mut o, "al_extents", &disk.al_extents.to_string());
        kv(
            &mut o,
            "on_io_error",
            &q(match disk.on_io_error {
                OnIoError::Detach => "detach",
                OnIoError::PassOn => "pass_on",
                OnIoError::Panic => "panic",
            }),
        );
        kv(&mut o, "wfc_timeout", &opt_d(disk.wfc_timeout));
        kv(&mut o, "degr_wfc_timeout", &opt_d(disk.degr_wfc_timeout));
        kv(&mut o, "net_timeout", &d(disk.net_timeout));
        kv(&mut o, "connect_interval", &d(disk.connect_interval));
        kv(&mut o, "ping_interval", &d(disk.ping_interval));
        kv(
            &mut o,
            "after_sb_0pri",
            &q(match disk.after_sb_0pri {
                AfterSb0Pri::Disconnect => "disconnect",
                AfterSb0Pri::DiscardYoungerPrimary => "discard-younger-primary",
                AfterSb0Pri::DiscardOlderPrimary => "discard-older-primary",
                AfterSb0Pri::DiscardZeroChanges => "discard-zero-changes",
                AfterSb0Pri::DiscardLeastChanges => "discard-least-changes",
            }),
        );
        kv(
            &mut o,
            "after_sb_1pri",
            &q(match disk.after_sb_1pri {
                AfterSb1Pri::Disconnect => "disconnect",
                AfterSb1Pri::Consensus => "consensus",
                AfterSb1Pri::DiscardSecondary => "discard-secondary",
            }),
        );
        kv(
            &mut o,
            "after_sb_2pri",
            &q(match disk.after_sb_2pri {
                AfterSb2Pri::Disconnect => "disconnect",
            }),
        );
        kv(&mut o, "fencing", &q(disk.fencing.as_str()));
        for h in &disk.hosts {
            let _ = writeln!(o, "\n[disk.on.{}]", key(&h.node));
            kv(&mut o, "device", &q(&h.device.display().to_string()));
            kv(&mut o, "backing", &q(&h.backing.display().to_string()));
            kv(&mut o, "address", &q(&h.address.to_string()));
            match &h.meta {
                Meta::Internal => kv(&mut o, "meta", &q("internal")),
                Meta::External { path, index } => {
                    kv(&mut o, "meta", &q(&path.display().to_string()));
                    if let Some(i) = index {
                        kv(&mut o, "meta_index", &i.to_string());
                    }
                }
            }
        }
    }

    for g in &config.groups {
        o.push_str("\n[[group]]\n");
        kv(&mut o, "name", &q(&g.name));
        kv(&mut o, "home", &q(&g.home));
        kv(
            &mut o,
            "migration_threshold",
            &g.migration_threshold.to_string(),
        );
        kv(&mut o, "failure_timeout", &d(g.failure_timeout));
        for r in &g.resources {
            o.push_str("\n[[group.resource]]\n");
            kv(&mut o, "type", &q(r.kind.type_name()));
            kv(&mut o, "name", &q(&r.name));
            match &r.kind {
                ResourceKind::IpAddr {
                    address,
                    prefix_len,
                    interface,
                    broadcast,
                    garp_count,
                    garp_interval,
                } => {
                    let a = match prefix_len {
                        Some(p) => format!("{address}/{p}"),
                        None => address.to_string(),
                    };
                    kv(&mut o, "address", &q(&a));
                    if let Some(i) = interface {
                        kv(&mut o, "interface", &q(i));
                    }
                    if let Some(b) = broadcast {
                        kv(&mut o, "broadcast", &q(&b.to_string()));
                    }
                    kv(&mut o, "garp_count", &garp_count.to_string());
                    kv(&mut o, "garp_interval", &d(*garp_interval));
                }
                ResourceKind::Disk { disk } => kv(&mut o, "disk", &q(disk)),
                ResourceKind::Filesystem {
                    device,
                    directory,
                    fstype,
                    options,
                } => {
                    kv(&mut o, "device", &q(device));
                    kv(&mut o, "directory", &q(&directory.display().to_string()));
                    kv(&mut o, "fstype", &q(fstype));
                    if let Some(opts) = options {
                        kv(&mut o, "options", &q(opts));
                    }
                }
                ResourceKind::Ocf {
                    provider,
                    agent,
                    params,
                } => {
                    kv(&mut o, "provider", &q(provider));
                    kv(&mut o, "agent", &q(agent));
                    kv(&mut o, "params", &inline_map(params));
                }
                ResourceKind::Lsb {
                    script,
                    args,
                    heartbeat,
                } => {
                    kv(&mut o, "script", &q(script));
                    if !args.is_empty() {
                        kv(&mut o, "args", &list(args.iter().map(|a| q(a))));
                    }
                    kv(&mut o, "heartbeat", &heartbeat.to_string());
                }
                ResourceKind::Systemd { unit } => kv(&mut o, "unit", &q(unit)),
            }
            kv(&mut o, "timeout", &d(r.timeout));
            kv(&mut o, "monitor_interval", &opt_d(r.monitor_interval));
        }
    }
    if let Some(listen) = config.metrics.listen {
        o.push_str("\n[metrics]\n");
        kv(&mut o, "listen", &q(&listen.to_string()));
    }
    for n in &config.notify {
        o.push_str("\n[[notify]]\n");
        kv(&mut o, "name", &q(&n.name));
        kv(&mut o, "command", &q(&n.command.display().to_string()));
        kv(&mut o, "args", &list(n.args.iter().map(|a| q(a))));
        // Empty lists mean "every event" / "any disk": written by leaving them out.
        if !n.events.is_empty() {
            kv(&mut o, "events", &list(n.events.iter().map(|e| q(e))));
        }
        if !n.disks.is_empty() {
            kv(&mut o, "disks", &list(n.disks.iter().map(|e| q(e))));
        }
        kv(&mut o, "timeout", &d(n.timeout));
    }
    o
}

fn kv(o: &mut String, k: &str, v: &str) {
    let _ = writeln!(o, "{k} = {v}");
}

fn d(x: Duration) -> String {
    q(&format_duration(x))
}

/// `None` (never / forever) is written as `"0"`.
fn opt_d(x: Option<Duration>) -> String {
    match x {
        Some(x) => d(x),
        None => q("0"),
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

fn inline_map(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "{}".to_string();
    }
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{} = {}", key(k), q(v)))
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

/// A key: bare when TOML allows it, quoted otherwise.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        q(k)
    }
}

/// A TOML basic string.
pub(crate) fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
