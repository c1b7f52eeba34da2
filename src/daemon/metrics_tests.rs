use serde_json::json;

use super::{Peer, render};

/// ox2 after it fenced ox1 and took the group over; its disk resyncs from nothing.
fn after_failover() -> serde_json::Value {
    json!({
        "node": "ox2",
        "incarnation": 7,
        "nodes": [
            {"name": "ox1", "local": false, "state": "dead", "incarnation": 3,
             "last_heard_ms_ago": 4500, "late_count": 2, "config_matches": true,
             "links": [{"name": "hb", "up": false, "packets": 40, "late_count": 1,
                        "last_heard_ms_ago": 4500, "hears_us": false}]},
            {"name": "ox2", "local": true, "state": "up", "incarnation": 7,
             "last_heard_ms_ago": null, "late_count": 0, "config_matches": null, "links": []}
        ],
        "links": [{"name": "hb", "packets_sent": 100, "packets_received": 40,
                   "drops": {"bad_mac": 1, "replay": 0}}],
        "groups": [{"name": "web", "home": "ox1", "owner": "ox2", "state": "started",
                    "resources": [{"name": "vip", "failcount": 0}]}],
        "maintenance": false,
        "counters": {"transitions": 3, "fence": [
            {"target": "ox1", "device": "lab-switch", "attempts": 1, "results": {"success": 1}}
        ], "transition_seconds": {"buckets": [[0.5, 1], [1.0, 2], [2.5, 3]], "sum": 2.75,
                                  "count": 3},
                     "dropped_messages": {"peer": 2, "witness": 0}},
        "disks": [{"name": "r0", "up": true, "role": "primary", "connection": "stand_alone",
                   "disk_state": "up_to_date", "out_of_sync_bytes": 1048576,
                   "resync": {"done_bytes": 0, "total_bytes": 0, "rate_bytes_per_s": 0},
                   "sent_bytes": 8192, "received_bytes": 0, "suspended": null,
                   "write_latency": {"buckets": [[0.001, 5], [0.002, 7]], "sum": 0.009,
                                     "count": 8}}]
    })
}

fn peer() -> Peer {
    Peer {
        name: "ox1".into(),
        id: 1,
    }
}

#[test]
fn a_failover_reads_as_prometheus_text_with_drbd_reactor_names() {
    let text = render(&after_failover(), Some(&peer()));
    for line in [
        r#"tandem_daemon_incarnation{node="ox2"} 7"#,
        r#"tandem_node_state{node="ox1",tandem_node_state="dead"} 1"#,
        r#"tandem_node_state{node="ox1",tandem_node_state="up"} 0"#,
        r#"tandem_node_last_heard_seconds{node="ox1"} 4.5"#,
        r#"tandem_link_up{node="ox1",link="hb"} 0"#,
        r#"tandem_link_late_heartbeats_total{node="ox1",link="hb"} 1"#,
        r#"tandem_link_drops_total{link="hb",reason="bad_mac"} 1"#,
        r#"tandem_group_state{group="web",tandem_group_state="started"} 1"#,
        r#"tandem_group_location{group="web",node="ox1"} 0"#,
        r#"tandem_group_location{group="web",node="ox2"} 1"#,
        "tandem_transitions_total 3",
        r#"tandem_cluster_messages_dropped_total{from="peer"} 2"#,
        r#"tandem_cluster_messages_dropped_total{from="witness"} 0"#,
        r#"tandem_fence_attempts_total{target="ox1",device="lab-switch"} 1"#,
        r#"tandem_fence_results_total{target="ox1",device="lab-switch",result="success"} 1"#,
        "drbd_resource_resources 1",
        r#"drbd_resource_role{name="r0",drbd_resource_role="Primary"} 1"#,
        r#"drbd_connection_state{name="r0",conn_name="ox1",peer_node_id="1",drbd_connection_state="StandAlone"} 1"#,
        r#"drbd_device_state{name="r0",volume="0",drbd_device_state="UpToDate"} 1"#,
        r#"drbd_peerdevice_outofsync_bytes{name="r0",conn_name="ox1",peer_node_id="1",volume="0"} 1048576"#,
        r#"drbd_peerdevice_sent_bytes{name="r0",conn_name="ox1",peer_node_id="1",volume="0"} 8192"#,
        r#"tandem_disk_replication_state{name="r0",tandem_disk_replication_state="stand_alone"} 1"#,
        r#"tandem_disk_resync_rate_bytes_per_second{name="r0"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // The local node has never been "heard": no lateness for it.
    assert!(!text.contains(r#"tandem_node_last_heard_seconds{node="ox2"}"#));
}

/// Each family once, HELP then TYPE, its samples together and nothing else between:
/// what promtool and the Prometheus parser require.
#[test]
fn every_family_is_declared_once_and_its_samples_stay_together() {
    let text = render(&after_failover(), Some(&peer()));
    let mut declared: Vec<&str> = Vec::new();
    let mut current = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!declared.contains(&name), "{name} declared twice");
            declared.push(name);
            current = name;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split(' ');
            assert_eq!(w.next(), Some(current));
            let kind = w.next().unwrap();
            assert!(
                kind == "gauge" || kind == "counter" || kind == "histogram",
                "{line}"
            );
            assert_eq!(kind == "counter", current.ends_with("_total"), "{line}");
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let of_family = name == current
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(current));
            assert!(of_family, "sample outside its family: {line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
    assert!(declared.len() > 20, "{declared:?}");
}

#[test]
fn label_values_are_escaped_and_a_missing_disk_peer_or_group_is_not_an_error() {
    let status = json!({"node": "a\"b\\c\nd", "incarnation": 1, "nodes": [], "links": [],
                        "groups": [], "disks": []});
    let text = render(&status, None);
    assert!(
        text.contains(r#"tandem_daemon_incarnation{node="a\"b\\c\nd"} 1"#),
        "{text}"
    );
    assert!(text.contains("drbd_resource_resources 0"));
    // A document from a daemon without groups or disks at all.
    let text = render(&json!({"node": "a"}), None);
    assert!(text.contains("tandem_daemon_incarnation"));
}

#[test]
fn a_disk_that_is_down_has_role_unknown_and_no_connection() {
    let status = json!({"node": "a", "disks": [{"name": "r0", "up": false}]});
    let text = render(&status, None);
    assert!(text.contains(r#"drbd_resource_role{name="r0",drbd_resource_role="Unknown"} 1"#));
    assert!(text.contains(r#"drbd_connection_state{name="r0",conn_name="",peer_node_id="",drbd_connection_state="StandAlone"} 1"#));
    assert!(
        text.contains(r#"drbd_device_state{name="r0",volume="0",drbd_device_state="DUnknown"} 1"#)
    );
}

/// How long transitions took, as a Prometheus histogram (cumulative buckets, `+Inf` =
/// count, sum and count).
#[test]
fn transition_durations_read_as_a_histogram() {
    let text = render(&after_failover(), Some(&peer()));
    for line in [
        "# TYPE tandem_transition_duration_seconds histogram",
        "tandem_transition_duration_seconds_bucket{le=\"0.5\"} 1",
        "tandem_transition_duration_seconds_bucket{le=\"2.5\"} 3",
        "tandem_transition_duration_seconds_bucket{le=\"+Inf\"} 3",
        "tandem_transition_duration_seconds_sum 2.75",
        "tandem_transition_duration_seconds_count 3",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}

/// Each disk's write latency, as a histogram labelled with the disk.
#[test]
fn disk_write_latency_reads_as_a_histogram_per_disk() {
    let text = render(&after_failover(), Some(&peer()));
    for line in [
        "# TYPE tandem_disk_write_latency_seconds histogram",
        "tandem_disk_write_latency_seconds_bucket{name=\"r0\",le=\"0.001\"} 5",
        "tandem_disk_write_latency_seconds_bucket{name=\"r0\",le=\"+Inf\"} 8",
        "tandem_disk_write_latency_seconds_sum{name=\"r0\"} 0.009",
        "tandem_disk_write_latency_seconds_count{name=\"r0\"} 8",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}
