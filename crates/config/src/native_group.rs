//! `[[group]]` and `[[group.resource]]`: ordered resources, the disk fencing a group's
//! disks get, and the order of mounts and the disks they need.
//!
//! A child module of `native`, so it reads its tables with the same helpers and its
//! complaints carry the same `FILE:LINE:COL: error: …` positions.

use super::*;

impl Walker<'_> {
    pub(super) fn group(
        &mut self,
        t: &Tbl<'_, '_>,
        nodes: &HashMap<String, Range<usize>>,
        all_disks: &[Disk],
        disks: &HashSet<String>,
        resource_names: &mut HashMap<String, Range<usize>>,
        claimed: &mut HashMap<String, (String, Range<usize>)>,
    ) -> Option<(Group, Range<usize>)> {
        self.check_keys(t, GROUP_KEYS);
        let name_v = self.required(t, "name", "the group name (a string)");
        let name = name_v.and_then(|v| self.name(v, "name"));
        let home = self
            .required(t, "home", "the node the group prefers")
            .and_then(|v| {
                let h = self.name(v, "home")?;
                self.node_ref(nodes, &h, v.span(), "`home`").then_some(h)
            });
        let migration_threshold = self
            .opt_integer(t, "migration_threshold", 1, 1_000_000)
            .map(|n| n as u32)
            .unwrap_or(defaults::MIGRATION_THRESHOLD);
        let failure_timeout = self.duration(t, "failure_timeout", defaults::FAILURE_TIMEOUT);
        let mut resources = Vec::new();
        let entries = self.array_of_tables(t, "resource", "group.resource");
        if entries.is_empty() {
            self.warn(
                t.span.clone(),
                "group has no [[group.resource]]: it will do nothing",
            );
        }
        let mut pending_derived = Vec::new();
        let mut table_spans = Vec::new();
        for rt in entries {
            if let Some((r, explicit_span)) = self.resource(&rt, disks) {
                match explicit_span {
                    Some(span) => {
                        if self.unique(resource_names, &r.name, span, "resource") {
                            resources.push(r);
                            table_spans.push(rt.span.clone());
                        }
                    }
                    None => {
                        pending_derived.push(resources.len());
                        resources.push(r);
                        table_spans.push(rt.span.clone());
                    }
                }
            }
        }
        self.mount_order(&resources, &table_spans, all_disks);
        // Derived names take a numeric suffix when they would collide, so two
        // `postfix` scripts in different groups still get distinct names.
        for i in pending_derived {
            let base = resources[i].name.clone();
            let mut candidate = base.clone();
            let mut n = 2;
            while resource_names.contains_key(&candidate) {
                candidate = format!("{base}-{n}");
                n += 1;
            }
            resource_names.insert(candidate.clone(), t.span.clone());
            resources[i].name = candidate;
        }
        self.one_resource_each(&resources, &table_spans, claimed);
        Some((
            Group {
                name: name?,
                home: home?,
                migration_threshold,
                failure_timeout,
                resources,
            },
            name_v?.span(),
        ))
    }

    /// A disk, an address and a mount point each belong to one resource of the whole
    /// configuration: two resources for one (in one group or two) would fight over it —
    /// two groups with different homes would each promote the disk, add the address,
    /// mount the directory on their own node. `claimed` holds what earlier resources
    /// took, with the resource's name and table.
    fn one_resource_each(
        &mut self,
        resources: &[Resource],
        spans: &[Range<usize>],
        claimed: &mut HashMap<String, (String, Range<usize>)>,
    ) {
        for (r, span) in resources.iter().zip(spans) {
            let (noun, what) = match &r.kind {
                ResourceKind::Disk { disk } => ("disk", format!("disk `{disk}`")),
                ResourceKind::IpAddr { address, .. } => ("address", format!("address {address}")),
                ResourceKind::Filesystem { directory, .. } => (
                    "mount point",
                    format!("mount point {}", directory.display()),
                ),
                _ => continue,
            };
            match claimed.get(&what) {
                Some((first, at)) => {
                    let (line, col) = self.src.position(at.start);
                    self.err(
                        span.clone(),
                        format!(
                            "resource `{}`: {what} is already managed by resource `{first}` (line {line}, column {col}): one resource per {noun}, or the two would fight over it",
                            r.name,
                        ),
                    );
                }
                None => {
                    claimed.insert(what, (r.name.clone(), span.clone()));
                }
            }
        }
    }

    /// Gives every disk without a `fencing` key its default (which depends on whether a
    /// group promotes it), and refuses `resource-and-stonith` where nothing can fence.
    pub(super) fn resolve_disk_fencing(
        &mut self,
        cluster: &Cluster,
        disks: &mut [Disk],
        groups: &[Group],
        keys: &HashMap<String, FencingKey>,
    ) {
        for disk in disks {
            match keys.get(&disk.name) {
                None => {
                    let in_group = groups.iter().flat_map(|g| &g.resources).any(
                        |r| matches!(&r.kind, ResourceKind::Disk { disk: d } if *d == disk.name),
                    );
                    disk.fencing = DiskFencing::default_for(in_group, cluster.fencing);
                }
                Some((true, span))
                    if disk.fencing == DiskFencing::ResourceAndStonith
                        && cluster.fencing == FencingPolicy::None =>
                {
                    self.err(
                        span.clone(),
                        format!(
                            "disk `{}`: fencing = \"resource-and-stonith\" needs a cluster that fences, but [cluster] says fencing = \"none\": set fencing = \"required\" with a [[fence_device]], or use \"resource-only\"",
                            disk.name
                        ),
                    );
                }
                Some((true, span)) if disk.fencing == DiskFencing::DontCare => {
                    self.warn(
                        span.clone(),
                        format!(
                            "disk `{}`: fencing = \"dont-care\": a primary that loses its replication link goes on writing alone, and a failover to the peer then loses those acknowledged writes (docs/disk.md, \"Disk fencing\")",
                            disk.name
                        ),
                    );
                }
                Some(_) => {}
            }
        }
    }

    /// A filesystem on a replicated disk's device must come after the `disk` resource
    /// that promotes it: mounting a secondary fails, and on stop the unmount has to
    /// happen before the demote.
    pub(super) fn mount_order(
        &mut self,
        resources: &[Resource],
        spans: &[Range<usize>],
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
            let promoter = resources
                .iter()
                .position(|x| matches!(&x.kind, ResourceKind::Disk { disk: n } if *n == disk.name));
            match promoter {
                Some(j) if j < i => {}
                Some(j) => self.err(
                    spans[i].clone(),
                    format!(
                        "filesystem `{}` on {device} would start before disk `{}` is promoted (resource `{}` comes later): expected the disk resource before the filesystem",
                        r.name, disk.name, resources[j].name
                    ),
                ),
                None => self.warn(
                    spans[i].clone(),
                    format!(
                        "filesystem `{}` is on {device}, the device of disk `{}`, but its group has no `disk` resource for `{}`: the disk must already be primary when the group starts",
                        r.name, disk.name, disk.name
                    ),
                ),
            }
        }
    }

    /// Returns the resource and, when its name was written out, the name's span.
    pub(super) fn resource(
        &mut self,
        t: &Tbl<'_, '_>,
        disks: &HashSet<String>,
    ) -> Option<(Resource, Option<Range<usize>>)> {
        let type_v = self.required(
            t,
            "type",
            "the resource type: ipaddr, disk, filesystem, ocf, lsb or systemd",
        );
        let Some(type_v) = type_v else {
            self.check_keys(t, RESOURCE_COMMON_KEYS);
            return None;
        };
        let kind_name = self.string(type_v, "type")?;
        let allowed = resource_keys(&kind_name);
        if allowed.is_empty() {
            self.err(type_v.span(), format!("invalid resource type {kind_name:?}: expected one of ipaddr, disk, filesystem, ocf, lsb, systemd"));
            return None;
        }
        self.type_specific(t, &kind_name, allowed, RESOURCE_COMMON_KEYS, "resource");
        let timeout = self.duration(t, "timeout", defaults::RESOURCE_TIMEOUT);
        if timeout.is_zero() {
            if let Some(v) = t.get("timeout") {
                self.err(v.span(), "`timeout` must be greater than 0");
            }
        }
        let monitor_interval =
            self.duration_or_zero(t, "monitor_interval", Some(defaults::MONITOR_INTERVAL));
        let req_str = |w: &mut Self, key: &str, hint: &str| -> Option<String> {
            let v = w.required(t, key, hint)?;
            let s = w.string(v, key)?;
            if s.is_empty() {
                w.err(
                    v.span(),
                    format!("`{key}` must not be empty: expected {hint}"),
                );
                return None;
            }
            Some(s)
        };
        let kind = match kind_name.as_str() {
            "ipaddr" => {
                let v = self.required(t, "address", "the address, \"IP\" or \"IP/PREFIX\"")?;
                let s = self.string(v, "address")?;
                let (address, prefix_len) = match parse_ip_prefix(&s) {
                    Some(x) => x,
                    None => {
                        self.err(v.span(), format!("`address` = {s:?}: expected \"IP\" or \"IP/PREFIX\", e.g. \"192.168.1.160/24\""));
                        return None;
                    }
                };
                let interface = self.opt_string(t, "interface");
                let broadcast = t.get("broadcast").and_then(|b| self.ip_val(b, "broadcast"));
                let garp_count = self
                    .opt_integer(t, "garp_count", 0, 100)
                    .map(|n| n as u32)
                    .unwrap_or(defaults::GARP_COUNT);
                let garp_interval = self.duration(t, "garp_interval", defaults::GARP_INTERVAL);
                ResourceKind::IpAddr {
                    address,
                    prefix_len,
                    interface,
                    broadcast,
                    garp_count,
                    garp_interval,
                }
            }
            "disk" => {
                let v = self.required(t, "disk", "the name of a [[disk]]")?;
                let d = self.string(v, "disk")?;
                if !disks.contains(&d) {
                    let mut known: Vec<&str> = disks.iter().map(String::as_str).collect();
                    known.sort_unstable();
                    self.err(v.span(), format!("resource names unknown disk `{d}`: expected one of the [[disk]] names ({})", known.join(", ")));
                    return None;
                }
                ResourceKind::Disk { disk: d }
            }
            "filesystem" => {
                let device = req_str(self, "device", "the device to mount, e.g. \"/dev/drbd1\"");
                let directory =
                    req_str(self, "directory", "the mount point, e.g. \"/var/lib/ldap\"");
                let fstype = req_str(self, "fstype", "the filesystem type, e.g. \"ext4\"");
                let options = self.opt_string(t, "options");
                ResourceKind::Filesystem {
                    device: device?,
                    directory: PathBuf::from(directory?),
                    fstype: fstype?,
                    options,
                }
            }
            "ocf" => {
                let provider = req_str(self, "provider", "the OCF provider, e.g. \"heartbeat\"");
                let agent = req_str(self, "agent", "the OCF agent, e.g. \"IPaddr2\"");
                let params = t
                    .get("params")
                    .map(|v| self.string_map(v, "params"))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, (v, _))| (k, v))
                    .collect();
                ResourceKind::Ocf {
                    provider: provider?,
                    agent: agent?,
                    params,
                }
            }
            "lsb" => {
                let script = req_str(self, "script", "the init script name, e.g. \"postfix\"");
                let args = t
                    .get("args")
                    .map(|v| {
                        self.strings(v, "args")
                            .into_iter()
                            .map(|(s, _)| s)
                            .collect()
                    })
                    .unwrap_or_default();
                let heartbeat = self.boolean(t, "heartbeat", false);
                ResourceKind::Lsb {
                    script: script?,
                    args,
                    heartbeat,
                }
            }
            _ => {
                let unit = req_str(
                    self,
                    "unit",
                    "the systemd unit, e.g. \"postgresql.service\"",
                )?;
                ResourceKind::Systemd { unit }
            }
        };
        let (name, span) = match t.get("name") {
            Some(v) => (self.name(v, "name")?, Some(v.span())),
            None => (derive_resource_name(&kind), None),
        };
        Some((
            Resource {
                name,
                timeout,
                monitor_interval,
                kind,
            },
            span,
        ))
    }
}
