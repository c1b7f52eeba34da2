//! `tandem status [--json]`: what the local agent knows, from its control socket.

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
    /// The agent's control socket (default: `cluster.control_socket` of the configuration).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// Runs `tandem status`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let socket = control_socket(global, args.socket);
    let status = control::request(&socket, &Request::Status)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// The socket to talk to: the flag, else the configuration's, else the default.
pub fn control_socket(global: &Global, flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        tandem_config::Config::load(&global.config)
            .map(|c| c.cluster.control_socket)
            .unwrap_or_else(|_| PathBuf::from("/run/tandem/tandem.sock"))
    })
}

fn render(status: &serde_json::Value) -> String {
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
                s(&e["time_ms"]),
                s(&e["event"]),
                e["node"].as_str().unwrap_or(""),
                e["link"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            );
        }
    }
    out
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
