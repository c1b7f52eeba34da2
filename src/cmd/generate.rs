//! `tandem generate man DIR` and `tandem generate completions SHELL`: the manual pages
//! and shell completions, generated from the command line's own definition (clap_mangen,
//! clap_complete) so that they never disagree with it. Packaging runs them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

/// What to generate.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Manual pages: `tandem.1` and one `tandem-SUBCOMMAND.1` per subcommand, into DIR.
    Man {
        /// The directory to write them to (created if missing).
        dir: PathBuf,
    },
    /// Shell completions for SHELL, on standard output.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Runs `tandem generate`.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let cli = crate::Cli::command();
    match command {
        Command::Man { dir } => man(cli, &dir)?,
        Command::Completions { shell } => {
            let mut cli = cli;
            clap_complete::generate(shell, &mut cli, "tandem", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the page of `cmd` and, recursively, of its visible subcommands.
fn man(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let cmd = cmd.disable_help_subcommand(true);
    write_page(&cmd, "tandem", dir)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("tandem-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("tandem {}", sub.get_name()));
        write_page(&page, &name, dir)?;
    }
    Ok(())
}

fn write_page(cmd: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("write {}", path.display()))
}
