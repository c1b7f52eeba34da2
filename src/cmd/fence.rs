//! `tandem fence`: the parts that work without the daemon.
//!
//! - `tandem fence NODE --direct [--action off|reboot]` runs the configured devices for
//!   NODE from this process, level by level, through the same coordinator walk the
//!   daemon uses, and prints every attempt (as Heartbeat's `stonith -t … -T off NODE`
//!   tested a device setup).
//! - `tandem fence check` asks every device `monitor`, and each node's plug `status`.
//!
//! - Through the local daemon: `tandem fence NODE` (the daemon's coordinator fences it and
//!   tells the peer), `tandem fence confirm NODE`, `tandem fence history`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tandem_config::{Config, FenceAgent};
use tandem_fencing::{FenceAction, FenceState, Outcome, Plug, ProgramPaths, fence_direct};

use crate::Global;
use crate::control::{self, Request};

/// `tandem fence` arguments.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Sub>,
    /// The node to fence.
    pub node: Option<String>,
    /// What to do to it.
    #[arg(long, default_value = "off", value_parser = ["off", "reboot"])]
    pub action: String,
    /// Run the devices from this process instead of asking the local daemon.
    #[arg(long)]
    pub direct: bool,
    /// Print the attempts as JSON records.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Where device programs are looked for.
#[derive(Debug, Clone, clap::Args)]
pub struct PathArgs {
    /// A directory searched for fence_* programs before /usr/sbin, /sbin, /usr/local/sbin.
    #[arg(long = "agent-dir", global = true)]
    pub agent_dirs: Vec<PathBuf>,
    /// The directory of Heartbeat external/* plugins.
    #[arg(
        long = "external-dir",
        global = true,
        default_value = tandem_fencing::device::EXTERNAL_PLUGIN_DIR
    )]
    pub external_dir: PathBuf,
}

/// `tandem fence` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Tell the daemon that NODE is down (Heartbeat's meatware): its groups may start
    /// elsewhere. Only after making sure, e.g. by pulling its power cord.
    Confirm {
        /// The node that is down.
        node: String,
        /// The daemon's control socket (default: the configuration's).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Every fencing attempt the daemon knows of: time, target, device, action, result.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket (default: the configuration's).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Ask every device whether it is reachable (`monitor`) and each node's plug state.
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The fence-agents name of the lab's power switch.
pub const LAB_FENCE_AGENT: &str = "fence_tandem_lab";

/// Where the daemon and the CLI find device programs: the Debian locations, extra
/// directories first, and `fence_tandem_lab` (the lab's power switch) as this very
/// binary's `lab fence-agent` subcommand, so the lab needs nothing installed.
pub fn program_paths(extra_agent_dirs: &[PathBuf], external_dir: PathBuf) -> ProgramPaths {
    let mut p = ProgramPaths::default();
    let mut dirs = extra_agent_dirs.to_vec();
    dirs.append(&mut p.fence_agent_dirs);
    p.fence_agent_dirs = dirs;
    p.external_dir = external_dir;
    if let Ok(exe) = std::env::current_exe() {
        p.overrides.insert(
            LAB_FENCE_AGENT.to_string(),
            vec![exe.into_os_string(), "lab".into(), "fence-agent".into()],
        );
    }
    p
}

/// Runs `tandem fence`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let paths = program_paths(&args.paths.agent_dirs, args.paths.external_dir.clone());
    let config = Config::load(&global.config)
        .map_err(|d| anyhow::anyhow!("{d}"))
        .with_context(|| format!("load {}", global.config.display()))?;
    match args.command {
        Some(Sub::Check { json }) => check(&config, &paths, json),
        Some(Sub::Confirm { node, socket }) => {
            let socket = socket.unwrap_or_else(|| config.cluster.control_socket.clone());
            control::request(&socket, &Request::FenceConfirm { node: node.clone() })?;
            println!("{node} confirmed down: its groups may now start elsewhere");
            Ok(ExitCode::SUCCESS)
        }
        Some(Sub::History { json, socket }) => {
            let socket = socket.unwrap_or_else(|| config.cluster.control_socket.clone());
            let body = control::request(&socket, &Request::FenceHistory)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print_history(&body);
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let Some(node) = args.node else {
                anyhow::bail!(
                    "name the node to fence: `tandem fence NODE [--direct]`, or `tandem fence check`"
                );
            };
            if !args.direct {
                if args.action != "off" {
                    anyhow::bail!(
                        "the daemon fences with the configured action; use --direct for --action {}",
                        args.action
                    );
                }
                control::request(
                    &config.cluster.control_socket,
                    &Request::Fence { node: node.clone() },
                )?;
                println!("fencing {node}: `tandem fence history` shows the attempts");
                return Ok(ExitCode::SUCCESS);
            }
            let action: FenceAction = args.action.parse()?;
            direct(&config, &node, action, &paths, args.json)
        }
    }
}

/// Prints the daemon's fencing states and history as a table.
fn print_history(body: &serde_json::Value) {
    for (node, state) in body["states"].as_object().into_iter().flatten() {
        println!("{node}: {}", state.as_str().unwrap_or("?"));
    }
    println!("TIME (ms since epoch)  TARGET    DEVICE        ACTION  RESULT");
    for r in body["history"]["records"]
        .as_array()
        .or_else(|| body["history"].as_array())
        .into_iter()
        .flatten()
    {
        println!(
            "{:<22} {:<9} {:<13} {:<7} {}",
            r["at_unix_ms"],
            r["target"].as_str().unwrap_or(""),
            r["device"].as_str().unwrap_or(""),
            r["action"].as_str().unwrap_or(""),
            r["outcome"]
        );
    }
}

fn direct(
    config: &Config,
    node: &str,
    action: FenceAction,
    paths: &ProgramPaths,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !config.nodes.iter().any(|n| n.name == node) {
        let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        anyhow::bail!(
            "unknown node {node:?}: expected one of {}",
            names.join(", ")
        );
    }
    if config.fence_devices.is_empty() {
        anyhow::bail!("no [[fence_device]] is configured: nothing can fence {node}");
    }
    let done = fence_direct(
        config.fence_devices.clone(),
        node,
        action,
        "tandem fence --direct",
        paths,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&done.records)?);
    } else {
        for r in &done.records {
            println!(
                "{node}: device {} (level {}) {} → {} in {} ms",
                r.device,
                config
                    .fence_devices
                    .iter()
                    .find(|d| d.name == r.device)
                    .map_or(0, |d| d.level),
                r.action,
                r.outcome.summary(),
                r.duration_ms
            );
            if let Outcome::Failed { output, .. } = &r.outcome {
                for line in last_lines(output, 3) {
                    println!("    {line}");
                }
            }
        }
    }
    let ok = done.state == FenceState::FencedOk;
    match done.state {
        FenceState::FencedOk => eprintln!("{node} is fenced ({action})"),
        FenceState::Required => eprintln!(
            "{node} is NOT fenced: the walk reached a manual device; once {node} is off, run `tandem fence confirm {node}`"
        ),
        _ => eprintln!("{node} is NOT fenced: every device failed"),
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check(config: &Config, paths: &ProgramPaths, json: bool) -> anyhow::Result<ExitCode> {
    let mut all_ok = true;
    let mut out = Vec::new();
    for dev in &config.fence_devices {
        if dev.agent == FenceAgent::Manual {
            out.push(serde_json::json!({
                "device": dev.name, "level": dev.level, "monitor": "manual", "plugs": {},
            }));
            if !json {
                println!(
                    "{} (level {}): manual — an operator confirms with `tandem fence confirm NODE`",
                    dev.name, dev.level
                );
            }
            continue;
        }
        let mon = tandem_fencing::run_device(dev, FenceAction::Monitor, None, paths);
        all_ok &= mon.outcome.is_success();
        let mut plugs = serde_json::Map::new();
        let mut plug_text = Vec::new();
        // Heartbeat plugins have no per-plug status: their `status` is the monitor.
        if matches!(dev.agent, FenceAgent::FenceAgents(_)) {
            for n in &config.nodes {
                let st = tandem_fencing::run_device(dev, FenceAction::Status, Some(&n.name), paths);
                let s = match st.plug() {
                    Some(Plug::On) => "on".to_string(),
                    Some(Plug::Off) => "off".to_string(),
                    None => st.outcome.summary(),
                };
                plug_text.push(format!(
                    "{}[{}]={s}",
                    n.name,
                    tandem_fencing::plug_for(dev, &n.name)
                ));
                plugs.insert(n.name.clone(), serde_json::Value::String(s));
            }
        }
        if !json {
            println!(
                "{} (level {}): monitor {} in {} ms{}{}",
                dev.name,
                dev.level,
                mon.outcome.summary(),
                mon.duration_ms,
                if plug_text.is_empty() { "" } else { "; " },
                plug_text.join(" ")
            );
            if let Outcome::Failed { output, .. } = &mon.outcome {
                for line in last_lines(output, 3) {
                    println!("    {line}");
                }
            }
        }
        out.push(serde_json::json!({
            "device": dev.name, "level": dev.level,
            "monitor": mon.outcome, "monitor_ms": mon.duration_ms, "plugs": plugs,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if config.fence_devices.is_empty() {
        eprintln!("no [[fence_device]] configured: takeover waits for `tandem fence confirm NODE`");
        all_ok = false;
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The last `n` non-empty lines of an agent's output, for a short report.
fn last_lines(output: &str, n: usize) -> Vec<&str> {
    let mut v: Vec<&str> = output
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect();
    v.reverse();
    v
}
