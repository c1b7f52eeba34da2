//! The native TOML file: syntax, types, defaults and semantic checks.
//!
//! The text is parsed into toml's spanned document tree (every key and value keeps its
//! byte range), then walked by hand rather than through serde, so that every complaint —
//! an unknown key, a bad unit, a node nobody defined — points at the exact token, says
//! what was expected, and all of them are reported in one run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostics, Sink, Source, Warning};
use crate::model::*;
use crate::units;

// `[metrics]` and `[[notify]]`: a child module, so it walks with this module's helpers.
#[path = "native_ops.rs"]
mod ops;
// `[[disk]]`: likewise.
#[path = "native_disk.rs"]
mod disk;
#[path = "native_group.rs"]
mod group;
#[path = "native_net.rs"]
mod net;

type Val<'i> = Spanned<DeValue<'i>>;

/// Keys allowed in `[cluster]`.
const CLUSTER_KEYS: &[&str] = &[
    "name",
    "keepalive",
    "deadtime",
    "warntime",
    "initdead",
    "auto_failback",
    "udpport",
    "key_file",
    "fencing",
    "state_dir",
    "control_socket",
    "ping",
    "ping_group",
    "deadping",
    "fencing_delay",
    "nbd_group",
];
const LOG_KEYS: &[&str] = &["syslog_facility", "file", "debug_file"];
const NODE_KEYS: &[&str] = &["name", "address"];
const LINK_KEYS: &[&str] = &[
    "name",
    "type",
    "interface",
    "peers",
    "port",
    "group",
    "ttl",
    "loop",
    "device",
    "baud",
];
const FENCE_KEYS: &[&str] = &[
    "name", "agent", "params", "plugs", "run_on", "level", "timeout",
];
const DISK_KEYS: &[&str] = &[
    "name",
    "protocol",
    "rate",
    "resync_group",
    "al_extents",
    "on_io_error",
    "wfc_timeout",
    "degr_wfc_timeout",
    "net_timeout",
    "connect_interval",
    "ping_interval",
    "after_sb_0pri",
    "after_sb_1pri",
    "after_sb_2pri",
    "fencing",
    "port",
    "on",
];
const DISK_HOST_KEYS: &[&str] = &["device", "backing", "address", "meta", "meta_index"];
const GROUP_KEYS: &[&str] = &[
    "name",
    "home",
    "migration_threshold",
    "failure_timeout",
    "resource",
];
const RESOURCE_COMMON_KEYS: &[&str] = &["type", "name", "timeout", "monitor_interval"];
const WITNESS_KEYS: &[&str] = &["name", "tie_wait", "vote_retry", "state_file"];
const TOP_KEYS: &[&str] = &[
    "cluster",
    "log",
    "witness",
    "node",
    "link",
    "fence_device",
    "disk",
    "group",
    "metrics",
    "notify",
];

/// Type-specific resource keys.
fn resource_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "ipaddr" => &[
            "address",
            "interface",
            "broadcast",
            "garp_count",
            "garp_interval",
        ],
        "disk" => &["disk"],
        "filesystem" => &["device", "directory", "fstype", "options"],
        "ocf" => &["provider", "agent", "params"],
        "lsb" => &["script", "args", "heartbeat"],
        "systemd" => &["unit"],
        _ => &[],
    }
}

/// Whether file-system checks (the key file) run while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChecks {
    /// Check the key file's permissions and syntax if it exists (what `load` does).
    On,
    /// Skip: the text is checked on another machine than the one it will run on.
    Off,
}

/// Parses and validates native TOML `text` read from the file called `name`.
pub fn parse(
    name: &str,
    text: &str,
    checks: FileChecks,
) -> Result<(Config, Vec<Warning>), Diagnostics> {
    let src = Source::new(name, text);
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            return Err(Diagnostics(vec![
                src.error(span, format!("invalid TOML: {}", e.message().trim_end())),
            ]));
        }
    };
    let mut w = Walker {
        src: &src,
        sink: Sink::default(),
    };
    let config = w.document(doc.get_ref(), checks);
    let warnings = w.sink.finish()?;
    Ok((config, warnings))
}

/// A table being read: its entries, where it starts, and how to name it in messages.
struct Tbl<'a, 'i> {
    t: &'a DeTable<'i>,
    span: Range<usize>,
    what: String,
}

impl<'a, 'i> Tbl<'a, 'i> {
    fn get(&self, key: &str) -> Option<&'a Val<'i>> {
        self.t.get(key)
    }
}

struct Walker<'s> {
    src: &'s Source<'s>,
    sink: Sink,
}

/// A disk's `fencing` key as written: whether its value was valid, and where it is
/// (the default is resolved, and `resource-and-stonith` checked, once groups are read).
type FencingKey = (bool, Range<usize>);

/// Spans kept for the cross checks that run once everything is read.
#[derive(Default)]
struct Spans {
    keepalive: Option<Range<usize>>,
    deadtime: Option<Range<usize>>,
    warntime: Option<Range<usize>>,
    initdead: Option<Range<usize>>,
    key_file: Option<Range<usize>>,
    cluster: Range<usize>,
}

impl<'s> Walker<'s> {
    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let d = self.src.error(span, msg);
        self.sink.push(d);
    }

    fn warn(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let d = self.src.warning(span, msg);
        self.sink.push(d);
    }

    /// Reports keys of `t` that are not in `allowed`.
    fn check_keys(&mut self, t: &Tbl<'_, '_>, allowed: &[&str]) {
        for (k, _) in t.t.iter() {
            if t.what == "the top level" && !allowed.contains(&k.get_ref().as_ref()) {
                self.err(
                    k.span(),
                    format!(
                        "unknown table `{}`{}; expected one of: [cluster], [log], [[node]], [[link]], [[fence_device]], [[disk]], [[group]], [witness], [metrics], [[notify]]",
                        k.get_ref(),
                        crate::diag::did_you_mean(k.get_ref(), allowed)
                    ),
                );
            } else if !allowed.contains(&k.get_ref().as_ref()) {
                self.err(
                    k.span(),
                    format!(
                        "unknown key `{}` in {}{}; expected one of: {}",
                        k.get_ref(),
                        t.what,
                        crate::diag::did_you_mean(k.get_ref(), allowed),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn table<'a, 'i>(&mut self, v: &'a Val<'i>, what: String) -> Option<Tbl<'a, 'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(Tbl {
                t,
                span: v.span(),
                what,
            }),
            other => {
                self.err(
                    v.span(),
                    format!("{what} must be a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// `[[what]]` entries: an array of tables (absent = empty).
    fn array_of_tables<'a, 'i>(
        &mut self,
        parent: &Tbl<'a, 'i>,
        key: &str,
        what: &str,
    ) -> Vec<Tbl<'a, 'i>> {
        let Some(v) = parent.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.err(
                v.span(),
                format!("`{key}` must be an array of tables written [[{what}]]"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(t) = self.table(item, format!("[[{what}]] #{}", i + 1)) {
                out.push(t);
            }
        }
        out
    }

    fn required<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str, hint: &str) -> Option<&'a Val<'i>> {
        let v = t.get(key);
        if v.is_none() {
            self.err(
                t.span.clone(),
                format!("missing key `{key}` in {}: expected {hint}", t.what),
            );
        }
        v
    }

    fn type_err(&mut self, v: &Val<'_>, key: &str, expected: &str) {
        self.err(
            v.span(),
            format!(
                "`{key}` must be {expected}, found {}",
                v.get_ref().type_str()
            ),
        );
    }

    fn string(&mut self, v: &Val<'_>, key: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.type_err(v, key, "a string");
                None
            }
        }
    }

    /// A non-empty string without whitespace, usable as a name.
    fn name(&mut self, v: &Val<'_>, key: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.err(
                v.span(),
                format!("`{key}` = {s:?}: expected a non-empty name without spaces"),
            );
            return None;
        }
        Some(s)
    }

    fn opt_string(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<String> {
        let v = t.get(key)?;
        self.string(v, key)
    }

    fn integer(&mut self, v: &Val<'_>, key: &str, min: i64, max: i64) -> Option<i64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.type_err(v, key, "an integer");
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.err(
                    v.span(),
                    format!("`{key}` is out of range: expected an integer from {min} to {max}"),
                );
                None
            }
        }
    }

    fn opt_integer(&mut self, t: &Tbl<'_, '_>, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = t.get(key)?;
        self.integer(v, key, min, max)
    }

    fn boolean(&mut self, t: &Tbl<'_, '_>, key: &str, default: bool) -> bool {
        match t.get(key) {
            None => default,
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => *b,
                _ => {
                    self.type_err(v, key, "true or false");
                    default
                }
            },
        }
    }

    /// A duration: a string with a unit, or a bare number of seconds.
    fn duration_val(&mut self, v: &Val<'_>, key: &str) -> Option<Duration> {
        let text = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) => i.as_str().to_string(),
            DeValue::Float(f) => f.as_str().to_string(),
            _ => {
                self.type_err(v, key, "a duration such as \"500ms\" or \"2s\"");
                return None;
            }
        };
        match units::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(msg) => {
                self.err(v.span(), format!("`{key}`: {msg}"));
                None
            }
        }
    }

    fn duration(&mut self, t: &Tbl<'_, '_>, key: &str, default: Duration) -> Duration {
        t.get(key)
            .and_then(|v| self.duration_val(v, key))
            .unwrap_or(default)
    }

    /// A duration where 0 means "never/forever": `None`.
    fn duration_or_zero(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        default: Option<Duration>,
    ) -> Option<Duration> {
        match t.get(key) {
            None => default,
            Some(v) => match self.duration_val(v, key) {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => default,
            },
        }
    }

    /// One of a fixed set of words.
    fn choice<T: Copy>(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(v) = t.get(key) else {
            return default;
        };
        let Some(s) = self.string(v, key) else {
            return default;
        };
        if let Some((_, val)) = options.iter().find(|(n, _)| *n == s) {
            return *val;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.err(
            v.span(),
            format!(
                "invalid value {s:?} for `{key}`: expected one of {}",
                names.join(", ")
            ),
        );
        default
    }

    fn ip_val(&mut self, v: &Val<'_>, key: &str) -> Option<IpAddr> {
        let s = self.string(v, key)?;
        match s.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.err(
                    v.span(),
                    format!("`{key}` = {s:?} is not an IP address: expected e.g. \"192.168.1.10\" or \"fd00::1\""),
                );
                None
            }
        }
    }

    fn strings(&mut self, v: &Val<'_>, key: &str) -> Vec<(String, Range<usize>)> {
        let DeValue::Array(items) = v.get_ref() else {
            self.type_err(v, key, "an array of strings");
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            if let Some(s) = self.string(item, key) {
                out.push((s, item.span()));
            }
        }
        out
    }

    fn ips(&mut self, v: &Val<'_>, key: &str) -> Vec<IpAddr> {
        let DeValue::Array(items) = v.get_ref() else {
            self.type_err(v, key, "an array of IP addresses");
            return Vec::new();
        };
        items.iter().filter_map(|i| self.ip_val(i, key)).collect()
    }

    /// An absolute path.
    fn path(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        default: &str,
    ) -> (PathBuf, Option<Range<usize>>) {
        let Some(v) = t.get(key) else {
            return (PathBuf::from(default), None);
        };
        match self.absolute(v, key, default) {
            Some(s) => (PathBuf::from(s), Some(v.span())),
            None => (PathBuf::from(default), None),
        }
    }

    /// The string value of `key`, which must be an absolute path (the daemon runs from
    /// `/`, and a path relative to wherever it was started means another file after a
    /// restart); `example` shows one in the error.
    pub(super) fn absolute(&mut self, v: &Val<'_>, key: &str, example: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if s.starts_with('/') {
            Some(s)
        } else {
            self.err(
                v.span(),
                format!("`{key}` = {s:?}: expected an absolute path, e.g. \"{example}\""),
            );
            None
        }
    }

    /// A table of string values (agent parameters). Numbers and booleans are accepted
    /// and written as text, since agents receive text anyway.
    fn string_map(&mut self, v: &Val<'_>, key: &str) -> BTreeMap<String, (String, Range<usize>)> {
        let mut out = BTreeMap::new();
        let DeValue::Table(t) = v.get_ref() else {
            self.type_err(v, key, "a table of strings");
            return out;
        };
        for (k, val) in t.iter() {
            let text = match val.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(i) => i.as_str().to_string(),
                DeValue::Float(f) => f.as_str().to_string(),
                DeValue::Boolean(b) => b.to_string(),
                _ => {
                    self.type_err(val, &format!("{key}.{}", k.get_ref()), "a string");
                    continue;
                }
            };
            out.insert(k.get_ref().to_string(), (text, k.span()));
        }
        out
    }

    /// Reports a duplicate name; returns whether `name` was new.
    fn unique(
        &mut self,
        seen: &mut HashMap<String, Range<usize>>,
        name: &str,
        span: Range<usize>,
        what: &str,
    ) -> bool {
        if let Some(first) = seen.get(name) {
            let (line, col) = self.src.position(first.start);
            self.err(
                span,
                format!("duplicate {what} name `{name}`: already defined at line {line}, column {col}; names must be unique"),
            );
            false
        } else {
            seen.insert(name.to_string(), span);
            true
        }
    }

    fn document(&mut self, doc: &DeTable<'_>, checks: FileChecks) -> Config {
        let root = Tbl {
            t: doc,
            span: 0..0,
            what: "the top level".to_string(),
        };
        self.check_keys(&root, TOP_KEYS);
        let mut spans = Spans::default();
        let cluster = match root.get("cluster") {
            Some(v) => match self.table(v, "[cluster]".to_string()) {
                Some(t) => self.cluster(&t, &mut spans),
                None => self.cluster(&empty_table("[cluster]"), &mut spans),
            },
            None => {
                self.err(
                    0..0,
                    "missing table [cluster]: expected at least `name = \"...\"`",
                );
                self.cluster(&empty_table("[cluster]"), &mut spans)
            }
        };
        let log = match root
            .get("log")
            .and_then(|v| self.table(v, "[log]".to_string()))
        {
            Some(t) => self.log(&t),
            None => Log::default(),
        };

        let mut node_names = HashMap::new();
        let mut nodes = Vec::new();
        for t in self.array_of_tables(&root, "node", "node") {
            if let Some((node, span)) = self.node(&t) {
                if self.unique(&mut node_names, &node.name, span, "node") {
                    nodes.push(node);
                }
            }
        }
        if nodes.is_empty() && !root.t.contains_key("node") {
            self.err(0..0, "no [[node]] defined: expected one [[node]] table per cluster node (name and address)");
        }
        if nodes.len() > 2 {
            self.warn(0..0, format!("{} nodes defined: tandem's built-in heartbeat membership supports two; more nodes need the corosync backend", nodes.len()));
        }

        let mut seen = HashMap::new();
        let mut links = Vec::new();
        for t in self.array_of_tables(&root, "link", "link") {
            if let Some((link, span)) = self.link(&t, cluster.udp_port) {
                if self.unique(&mut seen, &link.name, span, "link") {
                    links.push(link);
                }
            }
        }
        if links.is_empty() && !nodes.is_empty() {
            self.warn(0..0, "no [[link]] defined: nodes cannot hear each other; add at least one heartbeat link (two are better)");
        }

        let mut seen = HashMap::new();
        let mut fence_devices = Vec::new();
        for t in self.array_of_tables(&root, "fence_device", "fence_device") {
            if let Some((dev, span)) = self.fence_device(&t, &node_names) {
                if self.unique(&mut seen, &dev.name, span, "fence_device") {
                    fence_devices.push(dev);
                }
            }
        }
        if cluster.fencing == FencingPolicy::Required && fence_devices.is_empty() {
            self.warn(spans.cluster.clone(), "fencing = \"required\" but no [[fence_device]] is defined: takeover of shared data will wait for an operator to run `tandem fence confirm NODE`");
        }

        let mut seen = HashMap::new();
        let mut disks = Vec::new();
        let mut fencing_keys = HashMap::new();
        for t in self.array_of_tables(&root, "disk", "disk") {
            if let Some((disk, span, fencing)) = self.disk(&t, &node_names) {
                if self.unique(&mut seen, &disk.name, span, "disk") {
                    if let Some(key) = fencing {
                        fencing_keys.insert(disk.name.clone(), key);
                    }
                    disks.push(disk);
                }
            }
        }
        self.disk_conflicts(&root, &disks);

        let disk_names: HashSet<String> = disks.iter().map(|d| d.name.clone()).collect();
        let mut seen = HashMap::new();
        let mut resource_names = HashMap::new();
        let mut claimed = HashMap::new();
        let mut groups = Vec::new();
        for t in self.array_of_tables(&root, "group", "group") {
            if let Some((group, span)) = self.group(
                &t,
                &node_names,
                &disks,
                &disk_names,
                &mut resource_names,
                &mut claimed,
            ) {
                if self.unique(&mut seen, &group.name, span, "group") {
                    groups.push(group);
                }
            }
        }

        let metrics = match root
            .get("metrics")
            .and_then(|v| self.table(v, "[metrics]".to_string()))
        {
            Some(t) => self.metrics(&t),
            None => Metrics::default(),
        };
        let notify = self.notifies(&root, &disk_names);

        self.resolve_disk_fencing(&cluster, &mut disks, &groups, &fencing_keys);
        self.timing(&cluster, &spans);
        if checks == FileChecks::On {
            let span = spans.key_file.clone().unwrap_or(spans.cluster.clone());
            self.key_file(&cluster.key_file, span);
        }

        let witness = root
            .get("witness")
            .and_then(|v| self.table(v, "[witness]".to_string()))
            .and_then(|t| self.witness(&t, &cluster, &node_names));

        Config {
            cluster,
            log,
            nodes,
            links,
            fence_devices,
            disks,
            groups,
            witness,
            metrics,
            notify,
        }
    }

    fn witness(
        &mut self,
        t: &Tbl<'_, '_>,
        cluster: &Cluster,
        node_names: &HashMap<String, Range<usize>>,
    ) -> Option<Witness> {
        self.check_keys(t, WITNESS_KEYS);
        let v = self.required(
            t,
            "name",
            "the witness's name (`tandem witness --node NAME`)",
        )?;
        let name = self.name(v, "name")?;
        if node_names.contains_key(&name) {
            self.err(
                v.span(),
                format!("the witness `{name}` is also a [[node]]: it must be a third machine"),
            );
            return None;
        }
        let tie_wait = self.duration(t, "tie_wait", cluster.deadtime);
        let vote_retry = self.duration(
            t,
            "vote_retry",
            (cluster.keepalive * 2).max(Duration::from_millis(100)),
        );
        let state_file = match t.get("state_file") {
            Some(_) => self.path(t, "state_file", "/").0,
            None => cluster.state_dir.join("witness-grant.json"),
        };
        Some(Witness {
            name,
            tie_wait,
            vote_retry,
            state_file,
        })
    }

    fn cluster(&mut self, t: &Tbl<'_, '_>, spans: &mut Spans) -> Cluster {
        self.check_keys(t, CLUSTER_KEYS);
        spans.cluster = t.span.clone();
        let name = self
            .required(t, "name", "the cluster name (a string)")
            .and_then(|v| self.name(v, "name"))
            .unwrap_or_default();
        spans.keepalive = t.get("keepalive").map(|v| v.span());
        spans.deadtime = t.get("deadtime").map(|v| v.span());
        spans.warntime = t.get("warntime").map(|v| v.span());
        spans.initdead = t.get("initdead").map(|v| v.span());
        let keepalive = self.duration(t, "keepalive", defaults::KEEPALIVE);
        let deadtime = self.duration(t, "deadtime", defaults::DEADTIME);
        // Heartbeat's rules: warntime defaults to half of deadtime when deadtime is set,
        // initdead to twice deadtime (and never below the default).
        let warntime_default = if t.get("deadtime").is_some() {
            units::whole_ms(deadtime / 2)
        } else {
            defaults::WARNTIME
        };
        let warntime = self.duration(t, "warntime", warntime_default);
        let initdead_default = if t.get("deadtime").is_some() {
            (deadtime * 2).max(defaults::INITDEAD)
        } else {
            defaults::INITDEAD
        };
        let initdead = self.duration(t, "initdead", initdead_default);
        let auto_failback = self.choice(
            t,
            "auto_failback",
            &[
                ("on", AutoFailback::On),
                ("off", AutoFailback::Off),
                ("legacy", AutoFailback::Legacy),
            ],
            AutoFailback::Off,
        );
        let udp_port = self
            .opt_integer(t, "udpport", 1, 65535)
            .map(|p| p as u16)
            .unwrap_or(defaults::UDP_PORT);
        let (key_file, key_span) = self.path(t, "key_file", defaults::KEY_FILE);
        spans.key_file = key_span;
        let fencing = self.choice(
            t,
            "fencing",
            &[
                ("required", FencingPolicy::Required),
                ("none", FencingPolicy::None),
            ],
            FencingPolicy::Required,
        );
        let (state_dir, _) = self.path(t, "state_dir", defaults::STATE_DIR);
        let (control_socket, _) = self.path(t, "control_socket", defaults::CONTROL_SOCKET);
        let ping = t
            .get("ping")
            .map(|v| self.ips(v, "ping"))
            .unwrap_or_default();
        let mut ping_groups = Vec::new();
        if let Some(v) = t.get("ping_group") {
            let mut seen = HashMap::new();
            match v.get_ref() {
                DeValue::Table(groups) => {
                    for (k, members) in groups.iter() {
                        let name = k.get_ref().to_string();
                        if self.unique(&mut seen, &name, k.span(), "ping_group") {
                            let addresses = self.ips(members, &format!("ping_group.{name}"));
                            ping_groups.push(PingGroup { name, addresses });
                        }
                    }
                }
                _ => self.type_err(v, "ping_group", "a table of NAME = [addresses]"),
            }
        }
        let deadping = self.duration(t, "deadping", defaults::DEADPING);
        let fencing_delay = self.duration(t, "fencing_delay", defaults::FENCING_DELAY);
        let nbd_group = t.get("nbd_group").and_then(|v| self.name(v, "nbd_group"));
        Cluster {
            name,
            keepalive,
            deadtime,
            warntime,
            initdead,
            auto_failback,
            udp_port,
            key_file,
            fencing,
            state_dir,
            control_socket,
            ping,
            ping_groups,
            deadping,
            fencing_delay,
            nbd_group,
        }
    }

    fn timing(&mut self, c: &Cluster, spans: &Spans) {
        let at = |s: &Option<Range<usize>>| s.clone().unwrap_or(spans.cluster.clone());
        let f = units::format_duration;
        if c.keepalive.is_zero() {
            self.err(at(&spans.keepalive), "`keepalive` must be greater than 0");
        }
        if c.deadtime <= c.keepalive * 2 {
            let span = spans.deadtime.clone().or(spans.keepalive.clone());
            self.err(
                span.unwrap_or(spans.cluster.clone()),
                format!(
                    "deadtime ({}) must be greater than 2 × keepalive ({}): expected deadtime > {}",
                    f(c.deadtime),
                    f(c.keepalive),
                    f(c.keepalive * 2)
                ),
            );
        }
        if c.initdead < c.deadtime {
            let span = spans.initdead.clone().or(spans.deadtime.clone());
            self.err(
                span.unwrap_or(spans.cluster.clone()),
                format!(
                    "initdead ({}) must not be less than deadtime ({}): expected initdead >= {}",
                    f(c.initdead),
                    f(c.deadtime),
                    f(c.deadtime)
                ),
            );
        }
        if c.warntime >= c.deadtime {
            let span = spans.warntime.clone().or(spans.deadtime.clone());
            self.err(
                span.unwrap_or(spans.cluster.clone()),
                format!(
                    "warntime ({}) must be less than deadtime ({}): a late-heartbeat warning after the node is already dead warns nobody",
                    f(c.warntime),
                    f(c.deadtime)
                ),
            );
        }
    }

    fn key_file(&mut self, path: &Path, span: Range<usize>) {
        match crate::key::check_file(path) {
            Ok((_, warnings)) => warnings.into_iter().for_each(|w| self.sink.push(w)),
            Err(crate::key::KeyFileError::Invalid(d)) => d.0.into_iter().for_each(|e| self.sink.push(e)),
            Err(crate::key::KeyFileError::Missing) => self.warn(
                span,
                format!(
                    "key file {} does not exist yet: the daemon will not start without it (create it with mode 0600)",
                    path.display()
                ),
            ),
            Err(e) => self.err(span, e.to_string()),
        }
    }

    fn log(&mut self, t: &Tbl<'_, '_>) -> Log {
        self.check_keys(t, LOG_KEYS);
        let syslog_facility = self.opt_string(t, "syslog_facility");
        let file = t.get("file").map(|_| self.path(t, "file", "/").0);
        let debug_file = t
            .get("debug_file")
            .map(|_| self.path(t, "debug_file", "/").0);
        Log {
            syslog_facility,
            file,
            debug_file,
        }
    }

    fn node(&mut self, t: &Tbl<'_, '_>) -> Option<(Node, Range<usize>)> {
        self.check_keys(t, NODE_KEYS);
        let v = self.required(t, "name", "the node's host name (uname -n)")?;
        let name = self.name(v, "name")?;
        let address = t.get("address").and_then(|a| self.ip_val(a, "address"));
        Some((Node { name, address }, v.span()))
    }
}

fn empty_table(what: &str) -> Tbl<'static, 'static> {
    static EMPTY: std::sync::OnceLock<DeTable<'static>> = std::sync::OnceLock::new();
    Tbl {
        t: EMPTY.get_or_init(DeTable::new),
        span: 0..0,
        what: what.to_string(),
    }
}

/// The span of `key` in `[disk.on.NODE]` of disk `disk`, for conflict messages.
fn host_key_span(root: &Tbl<'_, '_>, disk: &str, node: &str, key: &str) -> Range<usize> {
    let find = || -> Option<Range<usize>> {
        let DeValue::Array(disks) = root.get("disk")?.get_ref() else {
            return None;
        };
        for d in disks.iter() {
            let DeValue::Table(dt) = d.get_ref() else {
                continue;
            };
            if dt.get("name").and_then(|n| n.get_ref().as_str()) != Some(disk) {
                continue;
            }
            let DeValue::Table(on) = dt.get("on")?.get_ref() else {
                return None;
            };
            let DeValue::Table(h) = on.get(node)?.get_ref() else {
                return None;
            };
            return h.get(key).map(|v| v.span());
        }
        None
    };
    find().unwrap_or(0..0)
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare IP (then `default_port`).
pub(crate) fn parse_socket_addr(s: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    s.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

/// `IP` or `IP/PREFIX` with a prefix valid for the address family.
pub(crate) fn parse_ip_prefix(s: &str) -> Option<(IpAddr, Option<u8>)> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => None,
        Some(p) => {
            let n: u8 = p.parse().ok()?;
            if n > max {
                return None;
            }
            Some(n)
        }
    };
    Some((ip, prefix))
}

/// A link's name when none is written: `TYPE-INTERFACE` (or the tty's base name).
pub(crate) fn derive_link_name(kind: &LinkKind) -> String {
    match kind {
        LinkKind::Ucast { interface, .. } => format!("ucast-{interface}"),
        LinkKind::Bcast { interface, .. } => format!("bcast-{interface}"),
        LinkKind::Mcast { interface, .. } => format!("mcast-{interface}"),
        LinkKind::Serial { device, .. } => format!(
            "serial-{}",
            device
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "tty".to_string())
        ),
    }
}

/// A resource's name when none is written: derived from its main value.
pub(crate) fn derive_resource_name(kind: &ResourceKind) -> String {
    match kind {
        ResourceKind::IpAddr { address, .. } => format!("ip-{address}"),
        ResourceKind::Disk { disk } => format!("disk-{disk}"),
        ResourceKind::Filesystem { directory, .. } => {
            let path = directory.display().to_string();
            let trimmed = path.trim_matches('/').replace('/', "-");
            if trimmed.is_empty() {
                "fs-root".to_string()
            } else {
                format!("fs-{trimmed}")
            }
        }
        ResourceKind::Ocf { agent, .. } => agent.clone(),
        ResourceKind::Lsb { script, .. } => script.rsplit('/').next().unwrap_or(script).to_string(),
        ResourceKind::Systemd { unit } => unit.strip_suffix(".service").unwrap_or(unit).to_string(),
    }
}
