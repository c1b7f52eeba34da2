//! `[[notify]]`: the operator's commands, run on cluster events with the event in their
//! environment, in the manner of Pacemaker's alert agents (`CRM_alert_kind`,
//! `CRM_alert_node` …) and DRBD's handlers (`DRBD_RESOURCE`).
//!
//! ```text
//!  controller (Command::Notify) ─┐  bounded queue   ┌─► [[notify]] commands, one at a
//!  disk watcher (split brain,    ├─► (QUEUE_LEN) ───┤    time, each with a timeout and
//!   resync done, out of sync) ───┘  full: dropped,  │    a log line
//!                                   counted, logged └─► (the `notify` thread)
//! ```
//!
//! The controller decides that something happened and never waits: a full queue drops
//! the notice (with a counted log line) instead of blocking it. Disk events come from
//! the disk service, which the controller does not see, through a watcher that compares
//! the disks' status every second.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tandem_config::{Config, Notify};
use tandem_controller::Notice;

use crate::clock;

/// Notices waiting for their commands at most; beyond, new ones are dropped.
pub const QUEUE_LEN: usize = 64;

/// How often the disk watcher compares the disks' status.
const DISK_POLL: Duration = Duration::from_secs(1);

/// How often a running command is looked at for its exit.
const WAIT_STEP: Duration = Duration::from_millis(20);

/// The events the disk watcher tells.
const DISK_EVENTS: &[&str] = &["split_brain", "resync_done", "out_of_sync"];

/// Where notices go; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Notifier {
    queue: SyncSender<Notice>,
    dropped: Arc<AtomicU64>,
}

impl Notifier {
    /// Queues `notice` for the commands, or drops it (counted, logged) when the queue
    /// is full.
    pub fn send(&self, notice: Notice) {
        match self.queue.try_send(notice) {
            Ok(()) => {}
            Err(TrySendError::Full(n)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    event = n.event,
                    dropped,
                    "notification dropped: {QUEUE_LEN} are already waiting for their commands"
                );
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Starts the `notify` thread (and the disk watcher when a command wants disk events);
/// `None` without `[[notify]]`.
pub fn spawn(config: &Config, local: &str) -> anyhow::Result<Option<Notifier>> {
    if config.notify.is_empty() {
        return Ok(None);
    }
    let (queue, rx) = mpsc::sync_channel(QUEUE_LEN);
    let notifier = Notifier {
        queue,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    let commands = config.notify.clone();
    let base = vec![
        ("TANDEM_LOCAL_NODE".to_string(), local.to_string()),
        ("TANDEM_CLUSTER".to_string(), config.cluster.name.clone()),
    ];
    std::thread::Builder::new()
        .name("notify".into())
        .spawn(move || run_all(&commands, &base, rx))
        .context("start the notify thread")?;
    let wants_disks = config
        .notify
        .iter()
        .any(|n| n.events.is_empty() || n.events.iter().any(|e| DISK_EVENTS.contains(&e.as_str())));
    if wants_disks && config.disks.iter().any(|d| d.host(local).is_some()) {
        let to = notifier.clone();
        std::thread::Builder::new()
            .name("disk-watch".into())
            .spawn(move || watch_disks(&to))
            .context("start the disk watcher")?;
    }
    Ok(Some(notifier))
}

fn run_all(commands: &[Notify], base: &[(String, String)], rx: Receiver<Notice>) {
    let mut sequence = 0u64;
    for notice in rx {
        sequence += 1;
        for n in commands.iter().filter(|n| wants(n, &notice)) {
            let mut env = base.to_vec();
            env.extend(environment(&notice, sequence, &n.name));
            run(n, &notice, &env);
        }
    }
}

/// Whether `n` runs on `notice`: its events (none listed: every event), and for an
/// event about a disk, its disks (none listed: any disk).
pub fn wants(n: &Notify, notice: &Notice) -> bool {
    let event_ok = n.events.is_empty() || n.events.iter().any(|e| e == notice.event);
    let disk_ok = match &notice.disk {
        Some(d) => n.disks.is_empty() || n.disks.contains(d),
        None => true,
    };
    event_ok && disk_ok
}

/// The variables a command gets for `notice` (besides `TANDEM_LOCAL_NODE` and
/// `TANDEM_CLUSTER`); absent parts are empty strings, as Pacemaker's alerts do.
pub fn environment(notice: &Notice, sequence: u64, name: &str) -> Vec<(String, String)> {
    let kind = match notice.event {
        "node_dead" | "node_up" | "node_returned_after_partition" => "node",
        "fenced" | "fence_failed" => "fencing",
        e if e.starts_with("group_") => "group",
        _ => "disk",
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut env = vec![
        ("TANDEM_EVENT", notice.event.to_string()),
        ("TANDEM_KIND", kind.to_string()),
        ("TANDEM_NODE", opt(&notice.node)),
        ("TANDEM_GROUP", opt(&notice.group)),
        ("TANDEM_DISK", opt(&notice.disk)),
        ("TANDEM_DETAIL", notice.detail.clone()),
        ("TANDEM_TIMESTAMP_MS", notice.time_ms.to_string()),
        ("TANDEM_TIMESTAMP", utc_iso8601(notice.time_ms)),
        ("TANDEM_SEQUENCE", sequence.to_string()),
        ("TANDEM_NOTIFY_NAME", name.to_string()),
    ];
    // DRBD's handlers read the resource from DRBD_RESOURCE (drbd.conf imports them).
    if let Some(disk) = &notice.disk {
        env.push(("DRBD_RESOURCE", disk.clone()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// `2026-12-04T23:14:39.123Z`.
pub fn utc_iso8601(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs one command to its end or its timeout (then its process group is killed), and
/// logs one line about it.
fn run(n: &Notify, notice: &Notice, env: &[(String, String)]) {
    let start = clock::now();
    let child = Command::new(&n.command)
        .args(&n.args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!(notify = %n.name, event = notice.event, "notify command not run: {}: {err}", n.command.display());
            return;
        }
    };
    let status: Option<ExitStatus> = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if clock::now().saturating_duration_since(start) < n.timeout => {
                std::thread::sleep(WAIT_STEP);
            }
            _ => {
                // SAFETY: signals the process group the child leads (process_group(0)).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
        }
    };
    let ms = clock::now().saturating_duration_since(start).as_millis() as u64;
    match status {
        Some(s) if s.success() => {
            tracing::info!(notify = %n.name, event = notice.event, "notify command exited 0 after {ms} ms")
        }
        Some(s) => {
            tracing::warn!(notify = %n.name, event = notice.event, "notify command failed after {ms} ms: {s}")
        }
        None => tracing::warn!(
            notify = %n.name,
            event = notice.event,
            "notify command killed after its timeout of {} ms",
            n.timeout.as_millis()
        ),
    }
}

/// What the watcher remembers of a disk between two looks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskSeen {
    connection: String,
    split_brain: bool,
}

/// The disk events between two looks at the disks' status (`disks[]` of status.md):
/// split brain found, a resync finished, an online verify that found blocks out of
/// sync. A disk seen for the first time is no news.
pub fn disk_notices(
    seen: &mut BTreeMap<String, DiskSeen>,
    disks: &Value,
    time_ms: u64,
) -> Vec<Notice> {
    let mut out = Vec::new();
    for d in disks.as_array().into_iter().flatten() {
        let Some(name) = d["name"].as_str() else {
            continue;
        };
        let now = DiskSeen {
            connection: d["connection"].as_str().unwrap_or("").to_string(),
            split_brain: d["last_decision"].get("split_brain").is_some(),
        };
        let Some(before) = seen.insert(name.to_string(), now.clone()) else {
            continue;
        };
        let mut tell = |event: &'static str, detail: String| {
            out.push(Notice {
                event,
                node: None,
                group: None,
                disk: Some(name.to_string()),
                detail,
                time_ms,
            })
        };
        if now.split_brain && !before.split_brain {
            tell("split_brain", format!("{}", d["last_decision"]));
        }
        let was = before.connection.as_str();
        // Told where the data arrived, once: on the sync target, as DRBD runs its
        // after-resync-target handler (which imports to this event).
        if was == "sync_target" && now.connection == "connected" {
            tell("resync_done", "this copy is up to date again".to_string());
        }
        let out_of_sync = d["verify_out_of_sync_blocks"].as_u64().unwrap_or(0);
        if was == "verify_source" && now.connection != "verify_source" && out_of_sync > 0 {
            tell(
                "out_of_sync",
                format!("online verify found {out_of_sync} blocks out of sync"),
            );
        }
    }
    out
}

fn watch_disks(to: &Notifier) {
    let mut seen = BTreeMap::new();
    loop {
        for notice in disk_notices(
            &mut seen,
            &crate::disks::remote::status_json(),
            clock::wall_ms(),
        ) {
            to.send(notice);
        }
        std::thread::sleep(DISK_POLL);
    }
}

#[cfg(test)]
#[path = "notify_tests.rs"]
mod tests;
