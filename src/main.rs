//! `tandem`: the one binary. Every subcommand lives in its own module under `cmd/`; this
//! file only parses the command line, sets up logging and dispatches.

mod bench;
mod clock;
mod cmd;
mod control;
mod daemon;
mod demo;
mod disks;
mod labcluster;
// Shared with the integration tests (tests/common), which use parts the binary does not.
#[allow(dead_code)]
mod labconfig;
#[cfg(test)]
mod labconfig_tests;
mod scenarios;
mod state;
mod witness;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Options every subcommand understands.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// The cluster configuration file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "/etc/tandem/cluster.toml"
    )]
    pub config: PathBuf,
}

/// The whole command line (also the source of the manual pages and completions).
#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "A high-availability stack for two Linux servers"
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fail the whitepaper's cluster over in a lab on this machine, and show the timeline (root).
    Demo(demo::Args),
    /// Check, import and show the cluster configuration.
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// Build and drive lab clusters in network namespaces (root).
    Lab(cmd::lab::Args),
    /// Run this node's daemon in the foreground.
    Daemon(cmd::daemon::Args),
    /// The daemon's disk service (started by `tandem daemon`, not by operators).
    #[command(hide = true)]
    DiskService(disks::process::Args),
    /// Run the witness of a two-node cluster in the foreground (on a third machine).
    Witness(witness::Args),
    /// Show nodes, links and events as the local daemon sees them.
    Status(cmd::status::Args),
    /// Hand this node's groups to the peer (Heartbeat's hb_standby).
    Standby(cmd::operator::ScopeArgs),
    /// Take groups over from the peer (Heartbeat's hb_takeover).
    Takeover(cmd::operator::ScopeArgs),
    /// Stop or resume managing resources, without starting or stopping anything.
    Maintenance(cmd::operator::MaintenanceArgs),
    /// Measure and print tables (root: runs in a lab).
    #[command(subcommand)]
    Bench(cmd::bench::Command),
    /// Replicated disks, in the manner of drbdadm (create-md, up, primary, status …).
    Disk(cmd::disk::Args),
    /// Print the transition the policy engine plans for a case file.
    Simulate(cmd::simulate::Args),
    /// Fence a node, or check the fence devices.
    Fence(cmd::fence::Args),
    /// Manual pages and shell completions, generated from this command line.
    #[command(subcommand, hide = true)]
    Generate(cmd::generate::Command),
    /// The demo's data service and client (run inside the lab by `tandem demo`).
    #[command(hide = true)]
    DemoRecords(demo::records::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a).map(|()| ExitCode::SUCCESS),
        Command::Config(c) => cmd::config::run(&cli.global, c),
        Command::Lab(a) => cmd::lab::run(&cli.global, a),
        Command::Daemon(a) => cmd::daemon::run(&cli.global, a),
        Command::DiskService(a) => disks::process::run(&cli.global, a),
        Command::Witness(a) => witness::run(&cli.global, a),
        Command::Status(a) => cmd::status::run(&cli.global, a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Standby(a) => cmd::operator::standby(&cli.global, a),
        Command::Takeover(a) => cmd::operator::takeover(&cli.global, a),
        Command::Maintenance(a) => cmd::operator::maintenance(&cli.global, a),
        Command::Simulate(a) => cmd::simulate::run(&cli.global, a),
        Command::Disk(a) => cmd::disk::run(&cli.global, a),
        Command::Fence(a) => cmd::fence::run(&cli.global, a),
        Command::Generate(c) => cmd::generate::run(c),
        Command::DemoRecords(a) => demo::records::run(a).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tandem: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` picks the level (default `info`).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd (its journal holds our stderr): to the journal itself, with every
    // event's fields (node, group, resource, disk…) as journal fields.
    if logs_to_journal(std::env::var_os("JOURNAL_STREAM").is_some()) {
        if let Ok(journal) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journal.with_syslog_identifier("tandem".into()))
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Whether logs go to the journal: when systemd connected stderr to it
/// (`$JOURNAL_STREAM`), unless `TANDEM_LOG_STDERR=1` asks for plain stderr.
fn logs_to_journal(journal_stream: bool) -> bool {
    journal_stream && std::env::var("TANDEM_LOG_STDERR").as_deref() != Ok("1")
}
