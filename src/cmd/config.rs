//! `tandem config …`: check and show the native file, import Heartbeat/DRBD files.
//!
//! Diagnostics and warnings go to stderr, results to stdout; on any error nothing is
//! written to stdout and the exit code is 1.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use tandem_config::import::{HaFiles, import, render};
use tandem_config::{Config, Warning, to_toml};

use crate::Global;

/// `tandem config` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate the native configuration file (syntax and semantics).
    Check,
    /// Print the native file normalized: every key, defaults filled in.
    Show,
    /// Convert Heartbeat (ha.cf, haresources, authkeys) and DRBD 0.7 (drbd.conf) files
    /// into a native file on stdout.
    Import(ImportArgs),
}

/// `tandem config import` arguments.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Heartbeat's ha.cf.
    #[arg(long = "ha-cf", value_name = "FILE")]
    ha_cf: PathBuf,
    /// Heartbeat's haresources.
    #[arg(long, value_name = "FILE")]
    haresources: PathBuf,
    /// Heartbeat's authkeys (becomes cluster.key_file; must be mode 0600).
    #[arg(long, value_name = "FILE")]
    authkeys: Option<PathBuf>,
    /// DRBD 0.7's drbd.conf.
    #[arg(long = "drbd-conf", value_name = "FILE")]
    drbd_conf: Option<PathBuf>,
    /// Cluster name (default: the node names' common prefix, e.g. ox1, ox2 → ox).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// A copy of /etc/ha.d/resource.d: scripts found there are called Heartbeat-style.
    #[arg(long = "resource-d", value_name = "DIR")]
    resource_d: Option<PathBuf>,
}

/// Runs a `tandem config` subcommand.
pub fn run(global: &Global, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check => check(global),
        Command::Show => show(global),
        Command::Import(args) => import_cmd(args),
    }
}

fn print_warnings(warnings: &[Warning]) {
    let mut err = std::io::stderr().lock();
    for w in warnings {
        let _ = writeln!(err, "{w}");
    }
}

fn failed(d: &tandem_config::Diagnostics) -> ExitCode {
    eprintln!("{d}");
    ExitCode::FAILURE
}

fn check(global: &Global) -> anyhow::Result<ExitCode> {
    let (c, warnings) = match Config::load_with_warnings(&global.config) {
        Ok(x) => x,
        Err(d) => return Ok(failed(&d)),
    };
    print_warnings(&warnings);
    let oversized = oversized_report_errors(&global.config, &c);
    if !oversized.is_empty() {
        eprintln!("{}", oversized.join("\n"));
        return Ok(ExitCode::FAILURE);
    }
    // Resource definitions are checked against this node's agents now, not at failover
    // time: an unknown OCF type or a missing required parameter is an error here.
    let issues = tandem_agents::check_config(&c, &tandem_agents::Paths::default());
    if !issues.is_empty() {
        let text = std::fs::read_to_string(&global.config).unwrap_or_default();
        let mut errors = false;
        for issue in &issues {
            let (line, col) = locate_resource(&text, &c, &issue.resource);
            let kind = if issue.error { "error" } else { "warning" };
            errors |= issue.error;
            eprintln!(
                "{}:{line}:{col}: {kind}: resource {}: {}",
                global.config.display(),
                issue.resource,
                issue.message
            );
        }
        if errors {
            return Ok(ExitCode::FAILURE);
        }
    }
    let resources: usize = c.groups.iter().map(|g| g.resources.len()).sum();
    let nodes: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
    let f = tandem_config::units::format_duration;
    println!("{}: ok", global.config.display());
    println!(
        "cluster {}: {} node(s) ({}), {} link(s), {} fence device(s), {} disk(s), {} group(s) with {} resource(s)",
        c.cluster.name,
        c.nodes.len(),
        nodes.join(", "),
        c.links.len(),
        c.fence_devices.len(),
        c.disks.len(),
        c.groups.len(),
        resources
    );
    println!(
        "timing: keepalive {}, deadtime {}, warntime {}, initdead {}",
        f(c.cluster.keepalive),
        f(c.cluster.deadtime),
        f(c.cluster.warntime),
        f(c.cluster.initdead)
    );
    Ok(ExitCode::SUCCESS)
}

fn show(global: &Global) -> anyhow::Result<ExitCode> {
    let (c, warnings) = match Config::load_with_warnings(&global.config) {
        Ok(x) => x,
        Err(d) => return Ok(failed(&d)),
    };
    print_warnings(&warnings);
    print!("{}", to_toml(&c));
    Ok(ExitCode::SUCCESS)
}

fn import_cmd(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let files = HaFiles {
        ha_cf: args.ha_cf,
        haresources: args.haresources,
        authkeys: args.authkeys,
        drbd_conf: args.drbd_conf,
        cluster_name: args.name,
        resource_d: args.resource_d,
    };
    let (c, warnings) = match import(&files) {
        Ok(x) => x,
        Err(d) => return Ok(failed(&d)),
    };
    print_warnings(&warnings);
    // Render fully before writing, so a failure never leaves half a file on stdout.
    let text = render(&c, &files, &warnings);
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `FILE:LINE:COL: error: …` for each group whose largest report to the peer cannot fit
/// one cluster message (the peer would never see that group's whole state), located at
/// the group's name. `config check` and the daemon at start refuse such a file.
pub fn oversized_report_errors(path: &std::path::Path, config: &Config) -> Vec<String> {
    use tandem_controller::messages::{MAX_PAYLOAD_BYTES, oversized_reports};
    let groups = oversized_reports(config);
    if groups.is_empty() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    groups
        .into_iter()
        .map(|(group, bytes)| {
            let (line, col) = locate_group(&text, &group.name);
            format!(
                "{}:{line}:{col}: error: group {}: its report to the peer can take {bytes} bytes ({} resources, each failed with {} failures kept), more than the {MAX_PAYLOAD_BYTES} bytes of one cluster message; split it into smaller groups or use shorter resource names",
                path.display(),
                group.name,
                group.resources.len(),
                tandem_controller::controller::FAILURES_KEPT,
            )
        })
        .collect()
}

/// Where a group is named: the `name = "…"` line of its `[[group]]` table; 1:1 if none.
fn locate_group(text: &str, group: &str) -> (usize, usize) {
    let needle = format!("\"{group}\"");
    let mut in_group = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_group = t.starts_with("[[group]]");
            continue;
        }
        let is_name = t
            .strip_prefix("name")
            .is_some_and(|r| r.trim_start().starts_with('='));
        if in_group && is_name && t.contains(needle.as_str()) {
            return (i + 1, line.len() - t.len() + 1);
        }
    }
    (1, 1)
}

/// Where a resource is defined in the file: its `name = "…"` line if it has one, else
/// the line of its agent or script (derived names come from them); 1:1 if neither.
fn locate_resource(text: &str, config: &Config, resource: &str) -> (usize, usize) {
    let mut needles = vec![format!("\"{resource}\"")];
    if let Some(r) = config
        .groups
        .iter()
        .flat_map(|g| g.resources.iter())
        .find(|r| r.name == resource)
    {
        match &r.kind {
            tandem_config::ResourceKind::Ocf { agent, .. } => needles.push(format!("\"{agent}\"")),
            tandem_config::ResourceKind::Lsb { script, .. } => {
                needles.push(format!("\"{script}\""))
            }
            tandem_config::ResourceKind::Systemd { unit } => needles.push(format!("\"{unit}\"")),
            _ => {}
        }
    }
    for needle in &needles {
        for (i, line) in text.lines().enumerate() {
            if let Some(at) = line.find(needle.as_str()) {
                if line.trim_start().starts_with('#') {
                    continue;
                }
                let key_at = line[..at]
                    .rfind(|c: char| !c.is_whitespace() && c != '=')
                    .map_or(at, |_| line.len() - line.trim_start().len());
                return (i + 1, key_at + 1);
            }
        }
    }
    (1, 1)
}
