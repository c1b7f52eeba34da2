use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tandem_config::Notify;
use tandem_controller::Notice;

use super::{disk_notices, environment, utc_iso8601, wants};

fn notice(event: &'static str, disk: Option<&str>) -> Notice {
    Notice {
        event,
        node: Some("ox1".into()),
        group: None,
        disk: disk.map(String::from),
        detail: String::new(),
        time_ms: 1_796_406_693_078,
    }
}

fn command(events: &[&str], disks: &[&str]) -> Notify {
    Notify {
        name: "mail".into(),
        command: "/bin/true".into(),
        args: vec![],
        events: events.iter().map(|e| e.to_string()).collect(),
        disks: disks.iter().map(|d| d.to_string()).collect(),
        timeout: Duration::from_secs(1),
    }
}

#[test]
fn a_command_runs_on_its_events_and_its_disks_only() {
    let all = command(&[], &[]);
    assert!(wants(&all, &notice("node_dead", None)));
    let dead = command(&["node_dead"], &[]);
    assert!(wants(&dead, &notice("node_dead", None)));
    assert!(!wants(&dead, &notice("fenced", None)));
    let r0 = command(&["split_brain"], &["r0"]);
    assert!(wants(&r0, &notice("split_brain", Some("r0"))));
    assert!(!wants(&r0, &notice("split_brain", Some("r1"))));
    // The disk filter leaves events about no disk alone.
    assert!(wants(&command(&[], &["r0"]), &notice("node_dead", None)));
}

#[test]
fn the_environment_names_the_event_in_the_manner_of_pacemaker_alerts() {
    let env: BTreeMap<String, String> = environment(&notice("split_brain", Some("r0")), 3, "mail")
        .into_iter()
        .collect();
    assert_eq!(env["TANDEM_EVENT"], "split_brain");
    assert_eq!(env["TANDEM_KIND"], "disk");
    assert_eq!(env["TANDEM_NODE"], "ox1");
    assert_eq!(env["TANDEM_GROUP"], "");
    assert_eq!(env["TANDEM_DISK"], "r0");
    assert_eq!(env["DRBD_RESOURCE"], "r0");
    assert_eq!(env["TANDEM_SEQUENCE"], "3");
    assert_eq!(env["TANDEM_NOTIFY_NAME"], "mail");
    assert_eq!(env["TANDEM_TIMESTAMP_MS"], "1796406693078");
    assert_eq!(env["TANDEM_TIMESTAMP"], "2026-12-04T17:51:33.078Z");
    let env = environment(&notice("fenced", None), 1, "mail");
    assert!(env.iter().all(|(k, _)| k != "DRBD_RESOURCE"));
}

#[test]
fn utc_timestamps_are_right_across_leap_days_and_the_epoch() {
    assert_eq!(utc_iso8601(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(utc_iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(utc_iso8601(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
}

#[test]
fn disk_events_are_told_on_change_and_never_on_the_first_look() {
    let mut seen = BTreeMap::new();
    let look = |seen: &mut BTreeMap<_, _>, conn: &str, decision: serde_json::Value, oos: u64| {
        let disks = json!([{"name": "r0", "connection": conn, "last_decision": decision,
                            "verify_out_of_sync_blocks": oos}]);
        disk_notices(seen, &disks, 5)
            .into_iter()
            .map(|n| n.event)
            .collect::<Vec<_>>()
    };
    // Already split brain when the daemon starts: no news.
    assert!(look(&mut seen, "stand_alone", json!({"split_brain": {}}), 0).is_empty());
    assert!(
        look(
            &mut seen,
            "sync_target",
            json!({"bitmap_sync": "target"}),
            0
        )
        .is_empty()
    );
    assert_eq!(
        look(&mut seen, "connected", json!(null), 0),
        ["resync_done"]
    );
    assert!(look(&mut seen, "connected", json!(null), 0).is_empty());
    // The sync source's end of the same resync tells nothing (DRBD's
    // after-resync-target runs on the target only).
    assert!(look(&mut seen, "sync_source", json!(null), 0).is_empty());
    assert!(look(&mut seen, "connected", json!(null), 0).is_empty());
    assert_eq!(
        look(
            &mut seen,
            "stand_alone",
            json!({"split_brain": {"bitmaps_cover": true}}),
            0
        ),
        ["split_brain"]
    );
    assert!(look(&mut seen, "verify_source", json!(null), 0).is_empty());
    assert_eq!(
        look(&mut seen, "connected", json!(null), 4),
        ["out_of_sync"]
    );
}
