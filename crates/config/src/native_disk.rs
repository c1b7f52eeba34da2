//! `[[disk]]` and its `[disk.on.NODE]` tables: replicated block devices, exactly two
//! hosts each, their addresses and metadata, and conflicts between disks.
//!
//! A child module of `native`, so it reads its tables with the same helpers and its
//! complaints carry the same `FILE:LINE:COL: error: …` positions.

use super::*;

impl Walker<'_> {
    pub(super) fn disk(
        &mut self,
        t: &Tbl<'_, '_>,
        nodes: &HashMap<String, Range<usize>>,
    ) -> Option<(Disk, Range<usize>, Option<FencingKey>)> {
        self.check_keys(t, DISK_KEYS);
        let name_v = self.required(t, "name", "the disk name, e.g. \"r0\"");
        let name = name_v.and_then(|v| self.name(v, "name"));
        let protocol = self.choice(
            t,
            "protocol",
            &[("A", Protocol::A), ("B", Protocol::B), ("C", Protocol::C)],
            Protocol::C,
        );
        let rate_bytes_per_s = match t.get("rate") {
            None => None,
            Some(v) => match v.get_ref() {
                DeValue::String(s) if s.as_ref() == "unlimited" => None,
                DeValue::String(s) => match units::parse_size(s) {
                    Ok(0) => {
                        self.err(
                            v.span(),
                            "`rate` must be greater than 0: use \"unlimited\" for no limit",
                        );
                        None
                    }
                    Ok(n) => Some(n),
                    Err(msg) => {
                        self.err(
                            v.span(),
                            format!("`rate`: {msg} (bytes per second), or \"unlimited\""),
                        );
                        None
                    }
                },
                DeValue::Integer(_) => self.integer(v, "rate", 1, i64::MAX).map(|n| n as u64),
                _ => {
                    self.type_err(
                        v,
                        "rate",
                        "a size per second such as \"5M\", or \"unlimited\"",
                    );
                    None
                }
            },
        };
        let resync_group = self
            .opt_integer(t, "resync_group", 0, 1000)
            .map(|n| n as u32)
            .unwrap_or(defaults::RESYNC_GROUP);
        let al_extents = self
            .opt_integer(t, "al_extents", 7, 6433)
            .map(|n| n as u32)
            .unwrap_or(defaults::AL_EXTENTS);
        let on_io_error = self.choice(
            t,
            "on_io_error",
            &[
                ("detach", OnIoError::Detach),
                ("pass_on", OnIoError::PassOn),
                ("panic", OnIoError::Panic),
            ],
            OnIoError::Detach,
        );
        let wfc_timeout = self.duration_or_zero(t, "wfc_timeout", None);
        let degr_wfc_timeout =
            self.duration_or_zero(t, "degr_wfc_timeout", Some(defaults::DEGR_WFC_TIMEOUT));
        let net_timeout = self.duration(t, "net_timeout", defaults::NET_TIMEOUT);
        let connect_interval = self.duration(t, "connect_interval", defaults::CONNECT_INTERVAL);
        let ping_interval = self.duration(t, "ping_interval", defaults::PING_INTERVAL);
        let after_sb_0pri = self.choice(
            t,
            "after_sb_0pri",
            AfterSb0Pri::NAMES,
            AfterSb0Pri::Disconnect,
        );
        let after_sb_1pri = self.choice(
            t,
            "after_sb_1pri",
            AfterSb1Pri::NAMES,
            AfterSb1Pri::Disconnect,
        );
        let after_sb_2pri = self.choice(
            t,
            "after_sb_2pri",
            AfterSb2Pri::NAMES,
            AfterSb2Pri::Disconnect,
        );
        let fencing = t.get("fencing").map(|v| {
            let choice = self.choice(
                t,
                "fencing",
                &[
                    ("dont-care", Some(DiskFencing::DontCare)),
                    ("resource-only", Some(DiskFencing::ResourceOnly)),
                    (
                        "resource-and-stonith",
                        Some(DiskFencing::ResourceAndStonith),
                    ),
                ],
                None,
            );
            (choice, v.span())
        });
        let port = self
            .opt_integer(t, "port", 1, 65535)
            .map(|p| p as u16)
            .unwrap_or(defaults::DISK_PORT);
        let disk_label = name.clone().unwrap_or_default();
        let mut hosts = Vec::new();
        let mut on_span = t.span.clone();
        match t.get("on") {
            None => {}
            Some(v) => match v.get_ref() {
                DeValue::Table(on) => {
                    on_span = v.span();
                    for (k, hv) in on.iter() {
                        let node = k.get_ref().to_string();
                        let known =
                            self.node_ref(nodes, &node, k.span(), &format!("disk `{disk_label}`"));
                        let what = format!("[disk.on.{node}]");
                        let Some(ht) = self.table(hv, what) else {
                            continue;
                        };
                        if let Some(h) = self.disk_host(&ht, &node, port) {
                            if known {
                                hosts.push((h, ht.span.start));
                            }
                        }
                    }
                }
                _ => self.type_err(v, "on", "a table of [disk.on.NODE] tables"),
            },
        }
        // Keep file order (the toml map is sorted by key).
        hosts.sort_by_key(|(_, start)| *start);
        let hosts: Vec<DiskHost> = hosts.into_iter().map(|(h, _)| h).collect();
        // Counted from the file, not from `hosts`: an unknown node was already reported
        // and should not also read as a missing one.
        let defined = match t.get("on").map(|v| v.get_ref()) {
            Some(DeValue::Table(on)) => on.len(),
            _ => 0,
        };
        if defined != 2 && name.is_some() {
            self.err(
                on_span,
                format!("disk `{disk_label}` is defined on {defined} node(s): expected exactly two [disk.on.NODE] tables, one per node"),
            );
        }
        Some((
            Disk {
                name: name?,
                protocol,
                rate_bytes_per_s,
                resync_group,
                al_extents,
                on_io_error,
                wfc_timeout,
                degr_wfc_timeout,
                net_timeout,
                connect_interval,
                ping_interval,
                after_sb_0pri,
                after_sb_1pri,
                after_sb_2pri,
                // Resolved once the groups are read (`resolve_disk_fencing`).
                fencing: fencing
                    .as_ref()
                    .and_then(|(f, _)| *f)
                    .unwrap_or(DiskFencing::ResourceOnly),
                hosts,
            },
            name_v?.span(),
            fencing.map(|(f, span)| (f.is_some(), span)),
        ))
    }

    pub(super) fn disk_host(&mut self, t: &Tbl<'_, '_>, node: &str, port: u16) -> Option<DiskHost> {
        self.check_keys(t, DISK_HOST_KEYS);
        let device = self
            .required(t, "device", "the device path, e.g. \"/dev/drbd0\"")
            .and_then(|v| self.absolute(v, "device", "/dev/tandem/r0"));
        let backing = self
            .required(
                t,
                "backing",
                "the backing device or file, e.g. \"/dev/sdb1\"",
            )
            .and_then(|v| self.absolute(v, "backing", "/dev/sdb1"));
        let address = self
            .required(t, "address", "the replication address, e.g. \"192.168.180.20:7788\"")
            .and_then(|v| {
                let s = self.string(v, "address")?;
                match parse_socket_addr(&s, port) {
                    Some(a) => Some(a),
                    None => {
                        self.err(v.span(), format!("`address` = {s:?}: expected IP:PORT (e.g. \"192.168.180.20:7788\") or an IP address"));
                        None
                    }
                }
            });
        let meta = match t.get("meta") {
            None => Meta::Internal,
            Some(v) => match self.string(v, "meta").as_deref() {
                None | Some("internal") => Meta::Internal,
                Some(p) if p.starts_with('/') => Meta::External {
                    path: PathBuf::from(p),
                    index: self
                        .opt_integer(t, "meta_index", 0, 1_000_000)
                        .map(|n| n as u32),
                },
                Some(p) => {
                    let p = p.to_string();
                    self.err(
                        v.span(),
                        format!("`meta` = {p:?}: expected \"internal\" or an absolute path"),
                    );
                    Meta::Internal
                }
            },
        };
        if t.get("meta_index").is_some() && meta == Meta::Internal {
            if let Some(v) = t.get("meta_index") {
                self.err(v.span(), "`meta_index` needs an external `meta` path");
            }
        }
        Some(DiskHost {
            node: node.to_string(),
            device: PathBuf::from(device?),
            backing: PathBuf::from(backing?),
            address: address?,
            meta,
        })
    }

    /// Two disks on one node must not share a device, backing store or address.
    pub(super) fn disk_conflicts(&mut self, root: &Tbl<'_, '_>, disks: &[Disk]) {
        let mut seen: HashMap<(String, String), String> = HashMap::new();
        for d in disks {
            for h in &d.hosts {
                for (what, value) in [
                    ("device", h.device.display().to_string()),
                    ("backing", h.backing.display().to_string()),
                    ("address", h.address.to_string()),
                ] {
                    let key = (h.node.clone(), format!("{what}={value}"));
                    if let Some(other) = seen.get(&key) {
                        let span = host_key_span(root, &d.name, &h.node, what);
                        self.err(span, format!("disks `{other}` and `{}` both use {what} {value} on node `{}`: expected each disk to have its own", d.name, h.node));
                    } else {
                        seen.insert(key, d.name.clone());
                    }
                }
            }
        }
    }
}
