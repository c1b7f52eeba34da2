//! Operator commands carried to the local daemon (and from it to the peer):
//! `tandem standby`, `tandem takeover` (as Heartbeat's hb_standby / hb_takeover) and
//! `tandem maintenance`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::Global;
use crate::control::{self, Request};

/// Which groups a standby or takeover concerns, relative to this node.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum ScopeArg {
    /// Every group.
    #[default]
    All,
    /// Groups whose home is this node.
    Local,
    /// Groups whose home is the other node.
    Foreign,
}

impl From<ScopeArg> for tandem_policy::Scope {
    fn from(s: ScopeArg) -> Self {
        match s {
            ScopeArg::All => tandem_policy::Scope::All,
            ScopeArg::Local => tandem_policy::Scope::Local,
            ScopeArg::Foreign => tandem_policy::Scope::Foreign,
        }
    }
}

/// `tandem standby|takeover` arguments.
#[derive(Debug, clap::Args)]
pub struct ScopeArgs {
    /// all | local | foreign.
    #[arg(value_enum, default_value_t = ScopeArg::All)]
    pub scope: ScopeArg,
    /// The daemon's control socket (default: the configuration's).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// `tandem maintenance` arguments.
#[derive(Debug, clap::Args)]
pub struct MaintenanceArgs {
    /// on: stop managing (nothing is started, stopped or monitored); off: resume.
    #[arg(value_parser = ["on", "off"])]
    pub mode: String,
    /// The daemon's control socket (default: the configuration's).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// Sends a standby request. One the cluster would not carry out comes back refused with
/// the reason, which `main` prints to stderr before exiting 1.
pub fn standby(global: &Global, args: ScopeArgs) -> anyhow::Result<ExitCode> {
    let socket = super::status::control_socket(global, args.socket);
    control::request(
        &socket,
        &Request::Standby {
            scope: args.scope.into(),
        },
    )?;
    println!("standby accepted; `tandem status` shows the groups move");
    Ok(ExitCode::SUCCESS)
}

/// Sends a takeover request.
pub fn takeover(global: &Global, args: ScopeArgs) -> anyhow::Result<ExitCode> {
    let socket = super::status::control_socket(global, args.socket);
    control::request(
        &socket,
        &Request::Takeover {
            scope: args.scope.into(),
        },
    )?;
    println!("takeover accepted; `tandem status` shows the groups move");
    Ok(ExitCode::SUCCESS)
}

/// Switches maintenance mode.
pub fn maintenance(global: &Global, args: MaintenanceArgs) -> anyhow::Result<ExitCode> {
    let socket = super::status::control_socket(global, args.socket);
    let on = args.mode == "on";
    control::request(&socket, &Request::Maintenance { on })?;
    println!("maintenance mode {}", args.mode);
    Ok(ExitCode::SUCCESS)
}
