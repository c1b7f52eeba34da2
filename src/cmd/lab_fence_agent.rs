//! `tandem lab-fence-agent` (hidden): the lab's power switch as a fence-agents program,
//! the same code as the `fence_tandem_lab` binary. With `--serve LAB` it runs the switch
//! server that agents inside lab hosts reach through `/run/tandem-lab/LAB/switch.sock`.

use std::process::ExitCode;

/// `tandem lab-fence-agent` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve lab LAB's switch socket in the foreground instead of handling one request.
    #[arg(long, value_name = "LAB")]
    pub serve: Option<String>,
    /// fence-agents options (`-o ACTION -n HOST -a LAB`); without any, `name=value`
    /// lines are read from stdin.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub options: Vec<String>,
}

/// Runs one request (exit code per the FenceAgentAPI), or serves the switch.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(lab) = args.serve {
        let server = tandem_fencing::lab_switch::SwitchServer::start(&lab)
            .map_err(|e| anyhow::anyhow!("serve the switch of lab {lab}: {e}"))?;
        eprintln!("lab {lab}: switch listening on {}", server.path().display());
        server.wait();
        return Ok(ExitCode::SUCCESS);
    }
    let code = tandem_fencing::lab_switch::main_with(&args.options);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
