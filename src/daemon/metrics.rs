//! `/metrics`: the status document (`tandem status --json`) in Prometheus' text
//! exposition format (version 0.0.4).
//!
//! ```text
//!   status_json() ──► render(status, peer) ──► text ──► HTTP listener (agent/http.rs)
//! ```
//!
//! A pure function of the same document `/status` serves, so the two never disagree and
//! the renderer is tested without a daemon. Disk metrics keep the names and labels of
//! drbd-reactor's Prometheus plugin where the meaning is the same (`drbd_resource_role`,
//! `drbd_connection_state`, `drbd_device_state`, `drbd_peerdevice_outofsync_bytes` …,
//! states as a label set to 1 on the current one), so its dashboards work; everything
//! else is `tandem_*` (docs/operations.md lists every metric).

use std::fmt::Write;

use serde_json::Value;

/// The replication peer, as drbd-reactor labels a connection (`conn_name`,
/// `peer_node_id`).
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its node name.
    pub name: String,
    /// Its node id (position in `[[node]]`, from 1).
    pub id: u32,
}

/// One histogram's samples, as status gives them.
struct Histogram<'a> {
    labels: &'a [(&'a str, &'a str)],
    /// (upper bound, cumulative count).
    buckets: &'a [(f64, f64)],
    sum: f64,
    count: f64,
}

impl<'a> Histogram<'a> {
    /// From status's `{"buckets": [[le, cumulative]…], "sum", "count"}`.
    fn from_status(
        v: &Value,
        labels: &'a [(&'a str, &'a str)],
        buckets: &'a mut Vec<(f64, f64)>,
    ) -> Option<Histogram<'a>> {
        *buckets = items(&v["buckets"])
            .iter()
            .filter_map(|b| Some((num(&b[0])?, num(&b[1])?)))
            .collect();
        Some(Histogram {
            labels,
            buckets,
            sum: num(&v["sum"])?,
            count: num(&v["count"])?,
        })
    }
}

/// One metric family: its samples, rendered as they are added.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: String,
}

/// Families in first-use order; a family's samples stay together, as the format wants.
#[derive(Default)]
struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    fn add(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    help,
                    kind,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        let out = &mut self.families[i].samples;
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (n, (k, v)) in labels.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
        self.add(name, "gauge", help, l, v);
    }

    fn counter(&mut self, name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
        self.add(name, "counter", help, l, v);
    }

    /// One histogram of a family: `NAME_bucket{LABELS,le=…}` (cumulative, `+Inf` =
    /// count), `NAME_sum{LABELS}` and `NAME_count{LABELS}`.
    fn histogram(&mut self, name: &'static str, help: &'static str, h: Histogram<'_>) {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    help,
                    kind: "histogram",
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        let labels = |extra: Option<String>| {
            let mut all: Vec<String> = h
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            all.extend(extra);
            if all.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", all.join(","))
            }
        };
        let out = &mut self.families[i].samples;
        for (le, n) in h.buckets {
            let _ = writeln!(
                out,
                "{name}_bucket{} {n}",
                labels(Some(format!("le=\"{le}\"")))
            );
        }
        let inf = labels(Some("le=\"+Inf\"".to_string()));
        let _ = writeln!(out, "{name}_bucket{inf} {}", h.count);
        let _ = writeln!(out, "{name}_sum{} {}", labels(None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", labels(None), h.count);
    }

    /// An enumeration the drbd-reactor way: one sample per possible state, labelled
    /// with the metric's own name, 1 on the current state and 0 on the others.
    fn states(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        all: &[&str],
        current: &str,
    ) {
        for s in all {
            let mut l = labels.to_vec();
            l.push((name, s));
            self.gauge(name, help, &l, f64::from(u8::from(*s == current)));
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            out.push_str(&f.samples);
        }
        out
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn flag(v: &Value) -> f64 {
    f64::from(u8::from(v.as_bool().unwrap_or(false)))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

const NODE_STATES: &[&str] = &["up", "dead", "unknown"];
const GROUP_STATES: &[&str] = &["started", "stopped", "partial", "failed", "blocked"];
const DRBD_ROLES: &[&str] = &["Primary", "Secondary", "Unknown"];
const DRBD_CONNECTION_STATES: &[&str] = &["StandAlone", "Connecting", "Connected"];
const DRBD_DISK_STATES: &[&str] = &[
    "Diskless",
    "Inconsistent",
    "Outdated",
    "DUnknown",
    "Consistent",
    "UpToDate",
];
const REPLICATION_STATES: &[&str] = &[
    "stand_alone",
    "connecting",
    "handshaking",
    "wait_bitmap_source",
    "wait_bitmap_target",
    "connected",
    "sync_source",
    "sync_target",
    "verify_source",
];

/// The status document as Prometheus text.
pub fn render(status: &Value, peer: Option<&Peer>) -> String {
    let mut e = Exposition::default();
    let node = text(&status["node"]);
    e.gauge(
        "tandem_daemon_incarnation",
        "This daemon's incarnation (bumped at every start)",
        &[("node", node)],
        num(&status["incarnation"]).unwrap_or(0.0),
    );
    nodes(&mut e, status);
    groups(&mut e, status);
    disks(&mut e, status, peer);
    e.text()
}

fn nodes(e: &mut Exposition, status: &Value) {
    for n in items(&status["nodes"]) {
        let name = text(&n["name"]);
        let l = [("node", name)];
        e.states(
            "tandem_node_state",
            "Membership verdict on the node",
            &l,
            NODE_STATES,
            text(&n["state"]),
        );
        if let Some(ms) = num(&n["last_heard_ms_ago"]) {
            e.gauge(
                "tandem_node_last_heard_seconds",
                "Time since an authentic packet from the node",
                &l,
                ms / 1000.0,
            );
        }
        e.counter(
            "tandem_node_late_heartbeats_total",
            "Heartbeats from the node that came after more than warntime",
            &l,
            num(&n["late_count"]).unwrap_or(0.0),
        );
        for link in items(&n["links"]) {
            let l = [("node", name), ("link", text(&link["name"]))];
            e.gauge(
                "tandem_link_up",
                "Whether the node is heard on the link",
                &l,
                flag(&link["up"]),
            );
            if let Some(ms) = num(&link["last_heard_ms_ago"]) {
                e.gauge(
                    "tandem_link_last_heard_seconds",
                    "Time since the node's last heartbeat on the link (its lateness)",
                    &l,
                    ms / 1000.0,
                );
            }
            e.counter(
                "tandem_link_late_heartbeats_total",
                "Heartbeats on the link that came after more than warntime",
                &l,
                num(&link["late_count"]).unwrap_or(0.0),
            );
        }
    }
    for link in items(&status["links"]) {
        let name = text(&link["name"]);
        let l = [("link", name)];
        e.counter(
            "tandem_link_packets_sent_total",
            "Packets this node sent on the link",
            &l,
            num(&link["packets_sent"]).unwrap_or(0.0),
        );
        e.counter(
            "tandem_link_packets_received_total",
            "Packets this node received on the link",
            &l,
            num(&link["packets_received"]).unwrap_or(0.0),
        );
        if let Some(drops) = link["drops"].as_object() {
            for (reason, n) in drops {
                e.counter(
                    "tandem_link_drops_total",
                    "Datagrams dropped on the link, by reason",
                    &[("link", name), ("reason", reason)],
                    num(n).unwrap_or(0.0),
                );
            }
        }
    }
}

fn groups(e: &mut Exposition, status: &Value) {
    let nodes: Vec<&str> = items(&status["nodes"])
        .iter()
        .map(|n| text(&n["name"]))
        .collect();
    for g in items(&status["groups"]) {
        let group = text(&g["name"]);
        e.states(
            "tandem_group_state",
            "The group's state",
            &[("group", group)],
            GROUP_STATES,
            text(&g["state"]),
        );
        let owner = g["owner"].as_str();
        for n in &nodes {
            e.gauge(
                "tandem_group_location",
                "1 on the node running the group",
                &[("group", group), ("node", n)],
                f64::from(u8::from(owner == Some(n))),
            );
        }
        for r in items(&g["resources"]) {
            e.gauge(
                "tandem_resource_failcount",
                "Unexpired failures of the resource on this node",
                &[("group", group), ("resource", text(&r["name"]))],
                num(&r["failcount"]).unwrap_or(0.0),
            );
        }
    }
    if status.get("maintenance").is_some() {
        e.gauge(
            "tandem_maintenance",
            "Whether maintenance mode is on",
            &[],
            flag(&status["maintenance"]),
        );
    }
    let counters = &status["counters"];
    if let Some(n) = num(&counters["transitions"]) {
        e.counter(
            "tandem_transitions_total",
            "Transitions this node's controller started",
            &[],
            n,
        );
    }
    let mut buckets = Vec::new();
    if let Some(h) = Histogram::from_status(&counters["transition_seconds"], &[], &mut buckets) {
        e.histogram(
            "tandem_transition_duration_seconds",
            "How long this node's finished transitions took",
            h,
        );
    }
    for (from, n) in counters["dropped_messages"]
        .as_object()
        .into_iter()
        .flatten()
    {
        e.counter(
            "tandem_cluster_messages_dropped_total",
            "Cluster messages dropped as malformed, by sender (peer or witness)",
            &[("from", from.as_str())],
            num(n).unwrap_or(0.0),
        );
    }
    for f in items(&counters["fence"]) {
        let (target, device) = (text(&f["target"]), text(&f["device"]));
        e.counter(
            "tandem_fence_attempts_total",
            "Fence device runs against the target",
            &[("target", target), ("device", device)],
            num(&f["attempts"]).unwrap_or(0.0),
        );
        for (result, n) in f["results"].as_object().into_iter().flatten() {
            e.counter(
                "tandem_fence_results_total",
                "Fence device results against the target, by outcome",
                &[("target", target), ("device", device), ("result", result)],
                num(n).unwrap_or(0.0),
            );
        }
    }
}

/// drbd-reactor's spelling of a role, connection and disk state.
fn drbd_role(role: &Value) -> &'static str {
    match role.as_str() {
        Some("primary") => "Primary",
        Some("secondary") => "Secondary",
        _ => "Unknown",
    }
}

fn drbd_connection(c: &str) -> &'static str {
    match c {
        "stand_alone" | "" => "StandAlone",
        "connecting" | "handshaking" => "Connecting",
        _ => "Connected",
    }
}

fn drbd_disk(d: &Value) -> &'static str {
    match d.as_str() {
        Some("diskless") => "Diskless",
        Some("inconsistent") => "Inconsistent",
        Some("outdated") => "Outdated",
        Some("consistent") => "Consistent",
        Some("up_to_date") => "UpToDate",
        _ => "DUnknown",
    }
}

fn disks(e: &mut Exposition, status: &Value, peer: Option<&Peer>) {
    let list = items(&status["disks"]);
    e.gauge(
        "drbd_resource_resources",
        "Number of resources (replicated disks on this node)",
        &[],
        list.len() as f64,
    );
    let (peer_name, peer_id) = peer.map_or((String::new(), String::new()), |p| {
        (p.name.clone(), p.id.to_string())
    });
    for d in list {
        let name = text(&d["name"]);
        let l = [("name", name)];
        let up = d["up"].as_bool().unwrap_or(false);
        e.gauge(
            "tandem_disk_up",
            "Whether the disk runs",
            &l,
            flag(&d["up"]),
        );
        let role = if up { drbd_role(&d["role"]) } else { "Unknown" };
        e.states(
            "drbd_resource_role",
            "Role of the resource",
            &l,
            DRBD_ROLES,
            role,
        );
        e.gauge(
            "drbd_resource_suspended",
            "Boolean whether the resource's I/O is suspended (disk fencing)",
            &l,
            f64::from(u8::from(!d["suspended"].is_null() && up)),
        );
        let connection = text(&d["connection"]);
        let conn = [
            ("name", name),
            ("conn_name", peer_name.as_str()),
            ("peer_node_id", peer_id.as_str()),
        ];
        e.states(
            "drbd_connection_state",
            "Connection state",
            &conn,
            DRBD_CONNECTION_STATES,
            drbd_connection(connection),
        );
        e.states(
            "tandem_disk_replication_state",
            "Replication state (tandem's finer connection state)",
            &l,
            REPLICATION_STATES,
            connection,
        );
        let device = [("name", name), ("volume", "0")];
        e.states(
            "drbd_device_state",
            "Disk state",
            &device,
            DRBD_DISK_STATES,
            drbd_disk(&d["disk_state"]),
        );
        let peer_device = [
            ("name", name),
            ("conn_name", peer_name.as_str()),
            ("peer_node_id", peer_id.as_str()),
            ("volume", "0"),
        ];
        let mut buckets = Vec::new();
        let disk_label = [("name", name)];
        if let Some(h) = Histogram::from_status(&d["write_latency"], &disk_label, &mut buckets) {
            e.histogram(
                "tandem_disk_write_latency_seconds",
                "How long acknowledged writes took, arrival to acknowledgement (ms clock)",
                h,
            );
        }
        if let Some(v) = num(&d["out_of_sync_bytes"]) {
            e.gauge(
                "drbd_peerdevice_outofsync_bytes",
                "Bytes out of sync with the peer, by this node's bitmap",
                &peer_device,
                v,
            );
        }
        // Gauges, as drbd-reactor's are in effect: they start again from 0 when the
        // disk restarts (rate() copes), and a counter would have to be named *_total.
        if let Some(v) = num(&d["sent_bytes"]) {
            e.gauge(
                "drbd_peerdevice_sent_bytes",
                "Bytes replicated to the peer since the disk started",
                &peer_device,
                v,
            );
        }
        if let Some(v) = num(&d["received_bytes"]) {
            e.gauge(
                "drbd_peerdevice_received_bytes",
                "Bytes replicated from the peer since the disk started",
                &peer_device,
                v,
            );
        }
        let resync = &d["resync"];
        if let Some(v) = num(&resync["rate_bytes_per_s"]) {
            e.gauge(
                "tandem_disk_resync_rate_bytes_per_second",
                "Current resync rate",
                &l,
                v,
            );
        }
        if let (Some(done), Some(total)) = (num(&resync["done_bytes"]), num(&resync["total_bytes"]))
        {
            e.gauge(
                "tandem_disk_resync_done_bytes",
                "Bytes resynced in the current (or last) resync",
                &l,
                done,
            );
            e.gauge(
                "tandem_disk_resync_total_bytes",
                "Bytes to resync in the current (or last) resync",
                &l,
                total,
            );
        }
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
