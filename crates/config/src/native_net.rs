//! `[[link]]` and `[[fence_device]]`: heartbeat media and the devices that fence nodes.
//!
//! A child module of `native`, so it reads its tables with the same helpers and its
//! complaints carry the same `FILE:LINE:COL: error: …` positions.

use super::*;

impl Walker<'_> {
    pub(super) fn link(&mut self, t: &Tbl<'_, '_>, udp_port: u16) -> Option<(Link, Range<usize>)> {
        self.check_keys(t, LINK_KEYS);
        let type_v = self.required(t, "type", "the link type: ucast, bcast, mcast or serial");
        let kind = type_v.and_then(|v| self.string(v, "type"));
        let allowed: &[&str] = match kind.as_deref() {
            Some("ucast") => &["interface", "peers", "port"],
            Some("bcast") => &["interface", "port"],
            Some("mcast") => &["interface", "group", "port", "ttl", "loop"],
            Some("serial") => &["device", "baud"],
            Some(other) => {
                let other = other.to_string();
                self.err(
                    type_v.map(|v| v.span()).unwrap_or(t.span.clone()),
                    format!(
                        "invalid link type {other:?}: expected one of ucast, bcast, mcast, serial"
                    ),
                );
                return None;
            }
            None => return None,
        };
        let kind = kind.unwrap_or_default();
        self.type_specific(t, &kind, allowed, &["name", "type"], "link");
        let port = self
            .opt_integer(t, "port", 1, 65535)
            .map(|p| p as u16)
            .unwrap_or(udp_port);
        let interface = |w: &mut Self| -> Option<String> {
            let v = w.required(t, "interface", "the network interface (e.g. \"eth1\")")?;
            w.name(v, "interface")
        };
        let link_kind = match kind.as_str() {
            "ucast" => {
                let interface = interface(self);
                let peers = match self.required(
                    t,
                    "peers",
                    "the peer addresses, e.g. [\"192.168.180.10\", \"192.168.180.20\"]",
                ) {
                    Some(v) => self.ips(v, "peers"),
                    None => Vec::new(),
                };
                LinkKind::Ucast {
                    interface: interface?,
                    peers,
                    port,
                }
            }
            "bcast" => LinkKind::Bcast {
                interface: interface(self)?,
                port,
            },
            "mcast" => {
                let interface = interface(self);
                let group = self
                    .required(t, "group", "the multicast group address, e.g. \"239.0.0.1\"")
                    .and_then(|v| {
                        let ip = self.ip_val(v, "group")?;
                        if !ip.is_multicast() {
                            self.err(v.span(), format!("`group` = \"{ip}\" is not a multicast address: expected 224.0.0.0/4 or ff00::/8"));
                            return None;
                        }
                        Some(ip)
                    });
                let ttl = self
                    .opt_integer(t, "ttl", 1, 255)
                    .map(|n| n as u8)
                    .unwrap_or(defaults::MCAST_TTL);
                let multicast_loop = self.boolean(t, "loop", false);
                LinkKind::Mcast {
                    interface: interface?,
                    group: group?,
                    port,
                    ttl,
                    multicast_loop,
                }
            }
            _ => {
                let device = self
                    .required(t, "device", "the tty device, e.g. \"/dev/ttyS0\"")
                    .and_then(|v| self.string(v, "device"));
                let baud = self
                    .opt_integer(t, "baud", 300, 4_000_000)
                    .map(|n| n as u32)
                    .unwrap_or(defaults::BAUD);
                LinkKind::Serial {
                    device: PathBuf::from(device?),
                    baud,
                }
            }
        };
        let (name, span) = match t.get("name") {
            Some(v) => (self.name(v, "name")?, v.span()),
            None => (derive_link_name(&link_kind), t.span.clone()),
        };
        Some((
            Link {
                name,
                kind: link_kind,
            },
            span,
        ))
    }

    /// Keys of a typed table that belong to another type get a message naming the type.
    pub(super) fn type_specific(
        &mut self,
        t: &Tbl<'_, '_>,
        kind: &str,
        allowed: &[&str],
        common: &[&str],
        what: &str,
    ) {
        for (k, _) in t.t.iter() {
            let key = k.get_ref().as_ref();
            if common.contains(&key) || allowed.contains(&key) {
                continue;
            }
            self.err(
                k.span(),
                format!(
                    "key `{key}` is not valid for a {what} of type {kind}; expected one of: {}",
                    common
                        .iter()
                        .chain(allowed)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }

    pub(super) fn node_ref(
        &mut self,
        nodes: &HashMap<String, Range<usize>>,
        name: &str,
        span: Range<usize>,
        what: &str,
    ) -> bool {
        if nodes.contains_key(name) {
            return true;
        }
        if nodes.is_empty() {
            // "no [[node]] defined" was reported once; naming each reference adds noise.
            return false;
        }
        let mut known: Vec<&str> = nodes.keys().map(String::as_str).collect();
        known.sort_unstable();
        self.err(
            span,
            format!(
                "{what} names unknown node `{name}`: expected one of the [[node]] names ({})",
                known.join(", ")
            ),
        );
        false
    }

    pub(super) fn fence_device(
        &mut self,
        t: &Tbl<'_, '_>,
        nodes: &HashMap<String, Range<usize>>,
    ) -> Option<(FenceDevice, Range<usize>)> {
        self.check_keys(t, FENCE_KEYS);
        let name_v = self.required(t, "name", "the device name (a string)");
        let name = name_v.and_then(|v| self.name(v, "name"));
        let agent = self
            .required(t, "agent", "\"fence_NAME\", \"external/NAME\" or \"manual\"")
            .and_then(|v| {
                let s = self.string(v, "agent")?;
                let agent = if s == "manual" {
                    Some(FenceAgent::Manual)
                } else if let Some(n) = s.strip_prefix("external/").filter(|n| valid_word(n)) {
                    Some(FenceAgent::External(n.to_string()))
                } else if s.starts_with("fence_") && valid_word(&s) {
                    Some(FenceAgent::FenceAgents(s.clone()))
                } else if s.starts_with('/')
                    && std::path::Path::new(&s)
                        .file_name()
                        .and_then(|f| f.to_str())
                        .is_some_and(|f| f.starts_with("fence_") && valid_word(f))
                {
                    // A fence-agents program outside the standard directories.
                    Some(FenceAgent::FenceAgents(s.clone()))
                } else {
                    None
                };
                if agent.is_none() {
                    self.err(v.span(), format!("invalid fence agent {s:?}: expected \"fence_NAME\" or \"/PATH/fence_NAME\" (fence-agents), \"external/NAME\" (Heartbeat plugin) or \"manual\""));
                }
                agent
            });
        let params = t
            .get("params")
            .map(|v| self.string_map(v, "params"))
            .unwrap_or_default()
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect();
        let mut plugs = BTreeMap::new();
        if let Some(v) = t.get("plugs") {
            for (node, (plug, span)) in self.string_map(v, "plugs") {
                if self.node_ref(nodes, &node, span, "`plugs`") {
                    plugs.insert(node, plug);
                }
            }
        }
        let mut run_on = Vec::new();
        if let Some(v) = t.get("run_on") {
            for (node, span) in self.strings(v, "run_on") {
                if self.node_ref(nodes, &node, span, "`run_on`") {
                    run_on.push(node);
                }
            }
        }
        let level = self
            .opt_integer(t, "level", 1, 9)
            .map(|n| n as u32)
            .unwrap_or(defaults::FENCE_LEVEL);
        let timeout = self.duration(t, "timeout", defaults::FENCE_TIMEOUT);
        Some((
            FenceDevice {
                name: name?,
                agent: agent?,
                params,
                plugs,
                run_on,
                level,
                timeout,
            },
            name_v?.span(),
        ))
    }
}
