//! `tandem status [--json]`: what the local daemon knows, from its control socket.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::Global;
use crate::control::{self, Request};

/// `tandem status` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the stable JSON document (see docs/status.md) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The daemon's control socket (default: `cluster.control_socket` of the configuration).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// A live view, redrawn until interrupted (as crm_mon does): on a terminal the
    /// screen is cleared and redrawn whenever the view changes; otherwise each changed
    /// view is printed after a line with the time.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    /// How often `--watch` asks the daemon, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    pub interval_ms: u64,
}

/// Runs `tandem status`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let socket = control_socket(global, args.socket);
    if args.watch {
        return watch(&socket, std::time::Duration::from_millis(args.interval_ms));
    }
    let status = control::request(&socket, &Request::Status)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status, crate::clock::wall_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--watch`: asks the daemon every `interval` and redraws when the view changed; an
/// daemon that does not answer is shown as such, and asked again.
fn watch(socket: &std::path::Path, interval: std::time::Duration) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let now = crate::clock::wall_ms();
        let view = match control::request(socket, &Request::Status) {
            Ok(status) => render(&status, now),
            Err(err) => format!(
                "the daemon does not answer on {}: {err:#}\n",
                socket.display()
            ),
        };
        if view != last {
            let mut out = std::io::stdout().lock();
            out.write_all(watch_frame(&view, now, tty).as_bytes())?;
            out.flush()?;
            last = view;
        }
        std::thread::sleep(interval);
    }
}

/// One frame of `--watch`: on a terminal, home and clear first; otherwise a line with
/// the local time before the view.
fn watch_frame(view: &str, now_ms: u64, tty: bool) -> String {
    if tty {
        format!("\x1b[H\x1b[2J{view}")
    } else {
        format!("---- {} ----\n{view}", local_time(now_ms))
    }
}

/// The socket to talk to: the flag, else the configuration's, else the default.
pub fn control_socket(global: &Global, flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        tandem_config::Config::load(&global.config)
            .map(|c| c.cluster.control_socket)
            .unwrap_or_else(|_| PathBuf::from("/run/tandem/tandem.sock"))
    })
}

/// The status as text; `now_ms` (wall clock) for the events' ages.
fn render(status: &serde_json::Value, now_ms: u64) -> String {
    let mut out = String::new();
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "node {} (incarnation {})",
        s(&status["node"]),
        s(&status["incarnation"])
    );
    let _ = writeln!(out, "\nNODE        STATE    INCARNATION  LAST HEARD  LINKS");
    for n in status["nodes"].as_array().into_iter().flatten() {
        let heard = n["last_heard_ms_ago"]
            .as_u64()
            .map_or("-".into(), |ms| format!("{ms} ms ago"));
        let links: Vec<String> = n["links"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                let up = if l["up"].as_bool() == Some(true) {
                    "up"
                } else {
                    "DOWN"
                };
                format!(
                    "{}:{} ({} pkts, {} late)",
                    s(&l["name"]),
                    up,
                    s(&l["packets"]),
                    s(&l["late_count"])
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<11} {:<8} {:<12} {:<11} {}",
            s(&n["name"]),
            s(&n["state"]),
            s(&n["incarnation"]),
            heard,
            links.join("  ")
        );
    }
    let _ = writeln!(out, "\nLINK        SENT      RECEIVED  DROPPED");
    for l in status["links"].as_array().into_iter().flatten() {
        let drops: Vec<String> = l["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<11} {:<9} {:<9} {}",
            s(&l["name"]),
            s(&l["packets_sent"]),
            s(&l["packets_received"]),
            if drops.is_empty() {
                "0".into()
            } else {
                drops.join(" ")
            }
        );
        if let Some(error) = l["closed"].as_str() {
            let _ = writeln!(out, "            CLOSED after an error, reopening: {error}");
        }
    }
    render_groups(&mut out, status);
    let disks = status["disks"].as_array().cloned().unwrap_or_default();
    if !disks.is_empty() {
        let _ = writeln!(out, "\nDISKS");
        for d in &disks {
            out.push_str(&super::disk::render(d));
        }
    }
    let events = status["events"].as_array().cloned().unwrap_or_default();
    if !events.is_empty() {
        let _ = writeln!(out, "\nRECENT EVENTS");
        for e in events.iter().rev().take(10).rev() {
            let _ = writeln!(
                out,
                "  {} {} {} {} {}",
                e["time_ms"]
                    .as_u64()
                    .map_or_else(|| s(&e["time_ms"]), |t| event_time(t, now_ms)),
                s(&e["event"]),
                e["node"].as_str().unwrap_or(""),
                e["link"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            );
        }
    }
    out
}

/// `2026-12-04 18:51:33 (12s ago)`: local time, to the second, and age; the
/// issue's operator read raw epoch milliseconds during an initial sync.
fn event_time(time_ms: u64, now_ms: u64) -> String {
    format!(
        "{} ({} ago)",
        local_time(time_ms),
        age(now_ms.saturating_sub(time_ms))
    )
}

/// `12s`, `3m04s`, `2h05m`, `3d04h`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in the local time zone (localtime_r reads TZ).
fn local_time(ms: u64) -> String {
    let t = (ms / 1000) as libc::time_t;
    // SAFETY: localtime_r writes only the tm it is given; a zeroed tm is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return format!("@{}", ms / 1000);
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Groups and resources; what risks data is printed in red (on a terminal).
fn render_groups(out: &mut String, status: &serde_json::Value) {
    let Some(groups) = status["groups"].as_array().filter(|g| !g.is_empty()) else {
        return;
    };
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let red = |text: &str| {
        if color {
            format!("\x1b[1;31m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    if status["fencing_policy"] == "none" {
        let _ = writeln!(
            out,
            "\n{}",
            red(
                "FENCING DISABLED (fencing = \"none\"): a node that is only silent may still run its groups"
            )
        );
    }
    if status["maintenance"] == true {
        let _ = writeln!(
            out,
            "\nMAINTENANCE MODE: nothing is started, stopped or monitored"
        );
    }
    for note in status["unsafe"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{}",
            red(&format!("UNSAFE: {}", note.as_str().unwrap_or("")))
        );
    }
    if let Some(w) = status["witness"].as_object() {
        let _ = writeln!(
            out,
            "\nWITNESS {} ({}), vote: {}{}",
            w["name"].as_str().unwrap_or("?"),
            if w["heard"] == true {
                "heard"
            } else {
                "not heard"
            },
            w["vote"].as_str().unwrap_or("?"),
            w["reason"]
                .as_str()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "\nGROUP       HOME     OWNER    STATE");
    for g in groups {
        let owner = g["owner"].as_str().unwrap_or("-");
        let _ = writeln!(
            out,
            "{:<11} {:<8} {:<8} {}{}",
            g["name"].as_str().unwrap_or(""),
            g["home"].as_str().unwrap_or(""),
            owner,
            g["state"].as_str().unwrap_or(""),
            g["blocked"]
                .as_str()
                .map(|b| format!(" ({})", red(b)))
                .unwrap_or_default()
        );
        for s in g["suspended"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {} {}: {} (for {:.1} s)",
                red("SUSPENDED"),
                s["disk"].as_str().unwrap_or("?"),
                s["reason"].as_str().unwrap_or(""),
                s["for_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            );
        }
        for r in g["resources"].as_array().into_iter().flatten() {
            let last = &r["last_action"];
            let last = if last.is_null() {
                String::new()
            } else {
                format!(
                    "last {} {}",
                    last["action"].as_str().unwrap_or(""),
                    if last["ok"] == true {
                        "ok".to_string()
                    } else {
                        red("FAILED")
                    }
                )
            };
            let _ = writeln!(
                out,
                "  {:<18} {:<10} here {:<14} peer {:<14} failcount {}  {}",
                r["name"].as_str().unwrap_or(""),
                r["type"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                r["peer_state"].as_str().unwrap_or(""),
                r["failcount"],
                last
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{age, render, watch_frame};

    /// A live view of a resync: the sync source's progress bar, its rate and the time
    /// left, redrawn in place on a terminal and printed after a time line otherwise.
    #[test]
    fn the_watch_view_of_a_resync_shows_a_progress_bar_with_rate_and_time_left() {
        let status = serde_json::json!({
            "node": "ox1",
            "disks": [{
                "name": "r0", "up": true, "role": "primary", "peer_role": "secondary",
                "connection": "sync_source", "disk_state": "up_to_date",
                "peer_disk_state": "inconsistent", "out_of_sync_bytes": 629_145_600u64,
                "sent_bytes": 0, "received_bytes": 0,
                "resync": {"done_bytes": 419_430_400u64, "total_bytes": 1_048_576_000u64,
                           "rate_bytes_per_s": 104_857_600u64}
            }]
        });
        let view = render(&status, 1_796_406_705_078);
        assert!(view.contains("[========>"), "{view}");
        assert!(view.contains("sync'ed: 40.0%"), "{view}");
        assert!(
            view.contains("finish: 0:00:06 speed: 102400 K/sec"),
            "{view}"
        );
        let tty = watch_frame(&view, 1_796_406_705_078, true);
        assert!(tty.starts_with("\x1b[H\x1b[2J") && tty.ends_with(&view));
        let plain = watch_frame(&view, 1_796_406_705_078, false);
        assert!(
            plain.starts_with("---- 2026-12-0") && !plain.contains('\x1b'),
            "{plain}"
        );
    }

    #[test]
    fn recent_events_show_local_time_and_age_not_epoch_milliseconds() {
        let status = serde_json::json!({"events": [
            {"time_ms": 1_796_406_693_078u64, "event": "node_up", "node": "ox2"}
        ]});
        let text = render(&status, 1_796_406_705_078);
        let line = text.lines().find(|l| l.contains("node_up")).unwrap();
        assert!(!line.contains("1796406693"), "{line}");
        assert!(line.contains("(12s ago) node_up ox2"), "{line}");
        assert!(line.trim_start().starts_with("2026-12-0"), "{line}");
    }

    #[test]
    fn ages_read_in_the_largest_two_units() {
        assert_eq!(age(999), "0s");
        assert_eq!(age(59_000), "59s");
        assert_eq!(age(184_000), "3m04s");
        assert_eq!(age(7_500_000), "2h05m");
        assert_eq!(age(273_600_000), "3d04h");
    }
}
