//! The one-screen human summary of a plan (golden files, `tandem simulate`), in the
//! spirit of Pacemaker's `crm_simulate` summaries: the state the plan starts from, the
//! actions in order with their dependencies, blocked groups with reasons, and notes.

use std::fmt::Write as _;
use std::time::Duration;

use tandem_config::{AutoFailback, Config, FencingPolicy};

use crate::plan::peer_name;
use crate::transition::{ActionKind, NoteLevel, PeerMessage, Transition, WaitReason};
use crate::view::{ClusterView, FailedOp, PeerState, RequestKind, ResourceView, Scope};

/// Renders the summary. Deterministic: the golden tests compare it byte for byte.
pub fn summary(config: &Config, view: &ClusterView, t: &Transition) -> String {
    let mut o = String::new();
    // `write!` into a String cannot fail; the results are ignored on purpose.
    if let Some(d) = &view.description {
        let _ = writeln!(o, "# {d}");
    }
    let _ = writeln!(
        o,
        "Policy: auto_failback {}, fencing {}, {}",
        match config.cluster.auto_failback {
            AutoFailback::On => "on",
            AutoFailback::Off => "off",
            AutoFailback::Legacy => "legacy",
        },
        match config.cluster.fencing {
            FencingPolicy::Required => "required",
            FencingPolicy::None => "none (UNSAFE)",
        },
        if config.fence_devices.is_empty() {
            "no fence device".to_string()
        } else {
            let names: Vec<&str> = config
                .fence_devices
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            format!("devices: {}", names.join(", "))
        }
    );
    let peer = peer_name(config, &view.local).unwrap_or("?");
    let ping_on = !config.cluster.ping.is_empty() || !config.cluster.ping_groups.is_empty();
    let _ = writeln!(o, "\nCurrent state:");
    for (node, role) in [(view.local.as_str(), "local"), (peer, "peer")] {
        let mut line = format!("  {node:<8} {role:<6} ");
        if role == "local" {
            line.push_str("up");
        } else {
            line.push_str(peer_state(view.peer.state));
            if !view.peer.reported
                && matches!(
                    view.peer.state,
                    PeerState::Up | PeerState::ReturnedAfterPartition
                )
            {
                line.push_str(", no state report yet");
            }
        }
        let fence = view.fence_state(node);
        if fence != Default::default() {
            let _ = write!(line, ", fencing {}", kebab(&format!("{fence:?}")));
        }
        if ping_on {
            let ok = view.ping.get(node).copied().unwrap_or(true);
            line.push_str(if ok { ", ping ok" } else { ", ping LOST" });
        }
        let _ = writeln!(o, "{}", line.trim_end());
    }
    if !view.initdead_passed {
        let _ = writeln!(o, "  initdead not passed yet");
    }
    if view.maintenance {
        let _ = writeln!(o, "  MAINTENANCE MODE");
    }
    for r in &view.requests {
        let _ = writeln!(
            o,
            "  request: {} by {} ({})",
            match r.kind {
                RequestKind::Standby => "standby",
                RequestKind::Takeover => "takeover",
            },
            r.node,
            match r.scope {
                Scope::All => "all",
                Scope::Local => "local",
                Scope::Foreign => "foreign",
            }
        );
    }
    for g in &config.groups {
        let threshold = view.groups.get(&g.name).map(|v| v.threshold());
        let _ = writeln!(
            o,
            "  group {} (home {}, migration threshold {})",
            g.name,
            g.home,
            threshold.unwrap_or(crate::view::DEFAULT_MIGRATION_THRESHOLD)
        );
        let width = g.resources.iter().map(|r| r.name.len()).max().unwrap_or(0);
        let cells: Vec<(String, String)> = g
            .resources
            .iter()
            .map(|r| {
                (
                    cell(view.resource(&g.name, &view.local, &r.name)),
                    cell(view.resource(&g.name, peer, &r.name)),
                )
            })
            .collect();
        let lw = cells.iter().map(|c| c.0.len()).max().unwrap_or(0);
        for (r, (l, p)) in g.resources.iter().zip(&cells) {
            let _ = writeln!(
                o,
                "    {:<width$}  {}: {:<lw$}  {}: {}",
                r.name, view.local, l, peer, p
            );
        }
    }

    let _ = writeln!(o, "\nTransition on {}:", t.local);
    if t.actions.is_empty() {
        let _ = writeln!(o, "  (nothing to do)");
    }
    let lines: Vec<String> = t.actions.iter().map(|a| describe(&a.kind)).collect();
    let w = lines.iter().map(|l| l.len()).max().unwrap_or(0);
    for (a, l) in t.actions.iter().zip(&lines) {
        let id = format!("#{}", a.id.0);
        if a.after.is_empty() {
            let _ = writeln!(o, "  {id:>3} {l}");
        } else {
            let after: Vec<String> = a.after.iter().map(|p| format!("#{}", p.0)).collect();
            let _ = writeln!(o, "  {id:>3} {l:<w$}  after {}", after.join(", "));
        }
    }
    if !t.blocked.is_empty() {
        let _ = writeln!(o, "\nBlocked:");
        for b in &t.blocked {
            let _ = writeln!(o, "  {}: {}", b.group, b.reason);
        }
    }
    if !t.notes.is_empty() {
        let _ = writeln!(o, "\nNotes:");
        for n in &t.notes {
            let level = match n.level {
                NoteLevel::Info => "info",
                NoteLevel::Unsafe => "UNSAFE",
            };
            match &n.group {
                Some(g) => {
                    let _ = writeln!(o, "  {level} {g}: {}", n.text);
                }
                None => {
                    let _ = writeln!(o, "  {level}: {}", n.text);
                }
            }
        }
    }
    o
}

/// One line for an action, without id and dependencies.
pub fn describe(kind: &ActionKind) -> String {
    match kind {
        ActionKind::Fence {
            node,
            reason,
            delayed,
        } => format!(
            "fence {node}{} ({reason})",
            if *delayed {
                " after the priority delay"
            } else {
                ""
            }
        ),
        ActionKind::WaitFor { reason } => format!("wait for {}", wait(reason)),
        ActionKind::Start { group, resource } => format!("start   {group}:{resource}"),
        ActionKind::Stop { group, resource } => format!("stop    {group}:{resource}"),
        ActionKind::Restart { group, resource } => format!("restart {group}:{resource}"),
        ActionKind::Monitor {
            group,
            resource,
            interval_ms,
        } => match interval_ms {
            None => format!("probe   {group}:{resource}"),
            Some(ms) => format!(
                "monitor {group}:{resource} every {}",
                duration(Duration::from_millis(*ms))
            ),
        },
        ActionKind::NotifyPeer { message } => match message {
            PeerMessage::Released { group } => format!("tell peer: released {group}"),
            PeerMessage::FenceMe { reason } => format!("tell peer: fence me ({reason})"),
        },
    }
}

fn wait(r: &WaitReason) -> String {
    match r {
        WaitReason::Initdead { peer } => format!("{peer} to appear or initdead to pass"),
        WaitReason::PeerReport { peer } => format!("{peer}'s state report"),
        WaitReason::PeerRelease { peer, group } => format!("{peer} to release {group}"),
        WaitReason::Fencing { node } => format!("fencing of {node} (in progress)"),
        WaitReason::FencedByPeer { peer } => format!("{peer} to fence this node"),
        WaitReason::WitnessVote { peer } => {
            format!("the witness's vote (this node lost {peer})")
        }
        WaitReason::InFlight { group, resource } => {
            format!("the action in flight on {group}:{resource}")
        }
    }
}

fn peer_state(s: PeerState) -> &'static str {
    match s {
        PeerState::Up => "up",
        PeerState::Dead => "DEAD",
        PeerState::Unknown => "not heard yet",
        PeerState::ReturnedAfterPartition => "returned after a partition",
        PeerState::LeftCleanly => "left cleanly",
    }
}

fn cell(r: Option<&ResourceView>) -> String {
    let Some(r) = r else {
        return "stopped".to_string();
    };
    let mut s = kebab(&format!("{:?}", r.state));
    let live = r.failures.iter().filter(|f| !f.expired).count();
    let expired = r.failures.len() - live;
    if !r.failures.is_empty() {
        let ops: Vec<&str> = r
            .failures
            .iter()
            .filter(|f| !f.expired)
            .map(|f| match f.op {
                FailedOp::Start => "start",
                FailedOp::Monitor => "monitor",
                FailedOp::Stop => "stop",
            })
            .collect();
        let mut parts = Vec::new();
        if live > 0 {
            let mut uniq = ops.clone();
            uniq.sort_unstable();
            uniq.dedup();
            parts.push(format!("failures {live} {}", uniq.join("/")));
        }
        if expired > 0 {
            parts.push(format!("{expired} expired"));
        }
        let _ = write!(s, " [{}]", parts.join(", "));
    }
    s
}

/// `FailedMonitor` → `failed-monitor`.
fn kebab(s: &str) -> String {
    let mut o = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                o.push('-');
            }
            o.push(c.to_ascii_lowercase());
        } else {
            o.push(c);
        }
    }
    o
}

fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
