//! Running tandem in production, in the lab: the `[metrics]` listener read from inside
//! a node after a fenced failover (its loopback is the node's own), and checked by
//! Prometheus' own `promtool`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Cluster, Opts};
use common::labconfig::LabConfig;
use common::{TANDEM, wait_for};
use tandem_config::FencingPolicy;
use tandem_testkit::{root_or_skip, skip_unless};

const METRICS: &str = "127.0.0.1:9465";

/// Fenced by the lab's switch, `[metrics]` on [`METRICS`], and `notify` (or nothing).
fn opts(notify: fn(&mut LabConfig)) -> Opts {
    Opts {
        fencing: FencingPolicy::Required,
        edit: Arc::new(move |c| {
            c.lab_switch().metrics(METRICS.parse().unwrap());
            notify(c);
        }),
        ..Opts::default()
    }
}

/// `GET path` on the node's metrics listener, from inside the node.
fn get(c: &Cluster, node: &str, path: &str) -> Option<String> {
    let url = format!("http://{METRICS}{path}");
    let script = "import sys, urllib.request\n\
                  sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())";
    c.lab.run(node, &["python3", "-c", script, &url]).ok()
}

/// The value of the sample written exactly as `series`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn metrics_after_a_fenced_failover_show_the_dead_node_the_fence_and_the_new_location() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let mut c = Cluster::start(opts(|_| {}));
    c.wait_owner("ox2", "ox1");
    let before = wait_for(Duration::from_secs(10), "ox2's /metrics", || {
        get(&c, "ox2", "/metrics")
    });
    assert_eq!(
        value(&before, r#"tandem_group_location{group="web",node="ox1"}"#),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        value(&before, r#"tandem_link_up{node="ox1",link="hb"}"#),
        Some(1.0)
    );

    c.lab.power_off("ox1").unwrap();
    c.wait_owner("ox2", "ox2");
    let after = get(&c, "ox2", "/metrics").expect("ox2's /metrics after the failover");
    for (series, want) in [
        (
            r#"tandem_node_state{node="ox1",tandem_node_state="dead"}"#,
            1.0,
        ),
        (
            r#"tandem_node_state{node="ox2",tandem_node_state="up"}"#,
            1.0,
        ),
        (r#"tandem_link_up{node="ox1",link="hb"}"#, 0.0),
        (r#"tandem_group_location{group="web",node="ox2"}"#, 1.0),
        (r#"tandem_group_location{group="web",node="ox1"}"#, 0.0),
        (
            r#"tandem_group_state{group="web",tandem_group_state="started"}"#,
            1.0,
        ),
        (
            r#"tandem_fence_results_total{target="ox1",device="lab-switch",result="success"}"#,
            1.0,
        ),
    ] {
        assert_eq!(value(&after, series), Some(want), "{series} in:\n{after}");
    }
    let attempts = value(
        &after,
        r#"tandem_fence_attempts_total{target="ox1",device="lab-switch"}"#,
    );
    assert!(attempts.is_some_and(|n| n >= 1.0), "{after}");
    let transitions = value(&after, "tandem_transitions_total").unwrap();
    assert!(
        transitions > value(&before, "tandem_transitions_total").unwrap(),
        "the takeover is a transition: {after}"
    );
    let lateness = value(&after, r#"tandem_node_last_heard_seconds{node="ox1"}"#).unwrap();
    assert!(
        lateness >= 1.0,
        "ox1 silent for at least deadtime: {lateness}"
    );

    // Prometheus' own linter on the real output.
    let have_promtool = Command::new("promtool").arg("--version").output().is_ok();
    if skip_unless(
        have_promtool,
        "promtool (Debian package prometheus) is missing",
    ) {
        promtool_check(&after).unwrap_or_else(|why| panic!("promtool: {why}\n{after}"));
    }

    // /status is the document `tandem status --json` prints.
    let status: serde_json::Value =
        serde_json::from_str(&get(&c, "ox2", "/status").unwrap()).unwrap();
    let cli = c.status("ox2").unwrap();
    assert_eq!(status["node"], "ox2");
    assert_eq!(status["groups"][0]["owner"], "ox2");
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&status), keys(&cli));
    assert_eq!(get(&c, "ox2", "/nothing"), None, "404 for anything else");
}

/// Writes its environment to `DIR/LOCAL-EVENT.env` (both nodes share the lab's data
/// directory).
const RECORD_ENV: &str = r#"#!/bin/sh
mkdir -p "$1"
env | grep -E '^(TANDEM|DRBD)_' | sort > "$1/$TANDEM_LOCAL_NODE-$TANDEM_EVENT.tmp"
mv "$1/$TANDEM_LOCAL_NODE-$TANDEM_EVENT.tmp" "$1/$TANDEM_LOCAL_NODE-$TANDEM_EVENT.env"
"#;

/// `[[notify]]`: [`RECORD_ENV`] records four kinds of events in `DIR/events`.
fn notify(c: &mut LabConfig) {
    let dir = c.dir().to_path_buf();
    c.notify(
        "record",
        dir.join("record-env"),
        &[dir.join("events").display().to_string()],
        &["node_dead", "fenced", "group_started", "group_moved"],
    );
}

/// The variables a notify command saw for `event` on `node`, once it has run.
fn recorded(c: &Cluster, node: &str, event: &str) -> std::collections::BTreeMap<String, String> {
    let path = c.lab.data_dir().join(format!("events/{node}-{event}.env"));
    let text = wait_for(
        Duration::from_secs(20),
        &format!("{node}'s {event} notification"),
        || std::fs::read_to_string(&path).ok(),
    );
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_failover_runs_the_notify_command_with_the_event_in_its_environment() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let mut c = Cluster::start_with_files(opts(notify), &[("record-env", RECORD_ENV)]);
    c.wait_owner("ox2", "ox1");
    let started = recorded(&c, "ox1", "group_started");
    assert_eq!(started["TANDEM_GROUP"], "web");
    assert_eq!(started["TANDEM_NODE"], "ox1");

    c.lab.power_off("ox1").unwrap();
    c.wait_owner("ox2", "ox2");
    let dead = recorded(&c, "ox2", "node_dead");
    for (k, v) in [
        ("TANDEM_EVENT", "node_dead"),
        ("TANDEM_KIND", "node"),
        ("TANDEM_NODE", "ox1"),
        ("TANDEM_LOCAL_NODE", "ox2"),
        ("TANDEM_CLUSTER", "failover"),
        ("TANDEM_NOTIFY_NAME", "record"),
        ("TANDEM_GROUP", ""),
    ] {
        assert_eq!(dead.get(k).map(String::as_str), Some(v), "{k} in {dead:?}");
    }
    assert!(dead["TANDEM_TIMESTAMP"].ends_with('Z'), "{dead:?}");
    let fenced = recorded(&c, "ox2", "fenced");
    assert_eq!(fenced["TANDEM_NODE"], "ox1");
    assert_eq!(fenced["TANDEM_KIND"], "fencing");
    let moved = recorded(&c, "ox2", "group_moved");
    assert_eq!(moved["TANDEM_GROUP"], "web");
    assert_eq!(moved["TANDEM_NODE"], "ox2");
    assert_eq!(moved["TANDEM_DETAIL"], "from ox1");
    let sequence = |m: &std::collections::BTreeMap<String, String>| {
        m["TANDEM_SEQUENCE"].parse::<u64>().unwrap()
    };
    assert!(sequence(&dead) < sequence(&fenced) && sequence(&fenced) < sequence(&moved));
    // One log line for each run.
    let log = std::fs::read_to_string(c.lab.data_dir().join("ox2.log")).unwrap();
    let runs = log
        .lines()
        .filter(|l| l.contains("notify command exited 0") && l.contains("record"))
        .count();
    assert!(runs >= 3, "ox2's log:\n{log}");
}

/// `tandem status --watch` in a pseudo-terminal (util-linux's `script`): the live view
/// clears and redraws the screen, and shows the group where it runs.
#[test]
fn the_watch_view_redraws_in_a_terminal() {
    if !root_or_skip("status --watch in a lab") {
        return;
    }
    let c = Cluster::start(Opts::default());
    c.wait_owner("ox1", "ox1");
    let cmd = format!(
        "timeout 2 script -qfec '{TANDEM} -c {} status --watch --interval-ms 200' /dev/null; true",
        c.config.display()
    );
    let out = c.lab.run("ox1", &["sh", "-c", &cmd]).expect("run script");
    assert!(out.contains("\x1b[H\x1b[2J"), "no redraw in:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("web") && l.contains("ox1")),
        "no group line in:\n{out}"
    );
}
