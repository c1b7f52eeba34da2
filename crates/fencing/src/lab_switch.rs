//! The lab's power switch as a fence-agents program (`fence_tandem_lab`, also
//! `tandem lab-fence-agent`): the coordinator runs it exactly as it runs `fence_apc`.
//!
//! Input (stdin `name=value` lines, or `-o/-n/-a/--name=value` options):
//! `action` = off | on | reboot | status | monitor | list | metadata,
//! `port`/`plug` (or `nodename`) = the lab host, `ipaddr` (or `ip`, `lab`) = the lab name,
//! as a real switch takes its address. Exit codes follow the FenceAgentAPI: 0 success
//! (status: plug on), 1 failure, 2 (status only) plug off.

use std::io::Write;

use tandem_lab::Lab;

use crate::agent_input::AgentInput;

/// The agent's name, as written in `[[fence_device]] agent = "fence_tandem_lab"`.
pub const AGENT_NAME: &str = "fence_tandem_lab";

const METADATA: &str = r#"<?xml version="1.0" ?>
<resource-agent name="fence_tandem_lab" shortdesc="Power switch of a tandem lab">
<longdesc>fence_tandem_lab powers hosts of a tandem lab (network namespaces and cgroups on one machine) off and on. Power-off kills every process of the host at once and returns only when all of them are reaped.</longdesc>
<vendor-url>https://example.invalid/tandem</vendor-url>
<parameters>
	<parameter name="action" unique="0" required="1">
		<getopt mixed="-o, --action=[action]" />
		<content type="string" default="off" />
		<shortdesc lang="en">Fencing action</shortdesc>
	</parameter>
	<parameter name="ipaddr" unique="0" required="1">
		<getopt mixed="-a, --ip=[lab]" />
		<content type="string" />
		<shortdesc lang="en">Name of the lab (the switch's address)</shortdesc>
	</parameter>
	<parameter name="port" unique="0" required="1">
		<getopt mixed="-n, --plug=[host]" />
		<content type="string" />
		<shortdesc lang="en">Lab host to act on</shortdesc>
	</parameter>
</parameters>
<actions>
	<action name="on" automatic="0"/>
	<action name="off" />
	<action name="reboot" />
	<action name="status" />
	<action name="list" />
	<action name="monitor" />
	<action name="metadata" />
</actions>
</resource-agent>
"#;

/// Runs one request and returns the exit code; answers go to `out`, messages to `err`.
pub fn run(input: &AgentInput, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match serve(input, out) {
        Ok(code) => code,
        Err(msg) => {
            let _ = writeln!(err, "{AGENT_NAME}: Failed: {msg}");
            1
        }
    }
}

fn serve(input: &AgentInput, out: &mut dyn Write) -> Result<i32, String> {
    let action = input.action().unwrap_or("off").to_ascii_lowercase();
    if action == "metadata" {
        out.write_all(METADATA.as_bytes())
            .map_err(|e| e.to_string())?;
        return Ok(0);
    }
    let lab_name = input
        .first(&["ipaddr", "ip", "lab"])
        .ok_or("no lab named: give ipaddr=<lab name>")?;
    let mut lab = Lab::open(lab_name).map_err(|e| e.to_string())?;
    let plug = || input.plug().ok_or("no host named: give port=<lab host>");
    let hosts: Vec<String> = lab
        .topology()
        .hosts
        .iter()
        .map(|h| h.name.clone())
        .collect();
    match action.as_str() {
        "off" => {
            let h = plug()?;
            lab.power_off(h).map_err(|e| e.to_string())?;
            verify(&lab, h, false)?;
            let _ = writeln!(out, "Success: Powered OFF");
            Ok(0)
        }
        "on" => {
            let h = plug()?;
            lab.power_on(h).map_err(|e| e.to_string())?;
            verify(&lab, h, true)?;
            let _ = writeln!(out, "Success: Powered ON");
            Ok(0)
        }
        "reboot" => {
            // The API counts a reboot by its off part: a failing `on` is logged, not
            // reported, since the cluster recovers safely from a node left off.
            let h = plug()?;
            lab.power_off(h).map_err(|e| e.to_string())?;
            verify(&lab, h, false)?;
            match lab.power_on(h) {
                Ok(()) => {
                    let _ = writeln!(out, "Success: Rebooted");
                }
                Err(e) => {
                    let _ = writeln!(out, "Success: Powered OFF; power on failed: {e}");
                }
            }
            Ok(0)
        }
        "status" => {
            let h = plug()?;
            if lab.is_powered(h).map_err(|e| e.to_string())? {
                let _ = writeln!(out, "Status: ON");
                Ok(0)
            } else {
                let _ = writeln!(out, "Status: OFF");
                Ok(2)
            }
        }
        "monitor" => {
            // Reachable: the lab's state could be read. Checking every host answers too.
            for h in &hosts {
                lab.is_powered(h).map_err(|e| e.to_string())?;
            }
            Ok(0)
        }
        "list" | "list-status" => {
            for h in &hosts {
                if action == "list" {
                    let _ = writeln!(out, "{h},{h}");
                } else {
                    let on = lab.is_powered(h).map_err(|e| e.to_string())?;
                    let _ = writeln!(out, "{h},{h},{}", if on { "on" } else { "off" });
                }
            }
            Ok(0)
        }
        other => Err(format!(
            "unknown action {other:?}: expected off, on, reboot, status, monitor, list or metadata"
        )),
    }
}

/// Verifiable operation (FenceAgentAPI): read the state back after changing it.
fn verify(lab: &Lab, host: &str, want_on: bool) -> Result<(), String> {
    let on = lab.is_powered(host).map_err(|e| e.to_string())?;
    let procs_gone = want_on || lab.processes(host).map(|p| p.is_empty()).unwrap_or(true);
    if on == want_on && procs_gone {
        Ok(())
    } else {
        Err(format!(
            "host {host} is still {} after the switch was set",
            if on { "on" } else { "running processes" }
        ))
    }
}

/// The whole program: reads stdin (or options when given), runs, returns the exit code.
pub fn main_with(args: &[String]) -> i32 {
    let mut stderr = std::io::stderr();
    let input = if args.is_empty() {
        let mut buf = Vec::new();
        use std::io::Read;
        if let Err(e) = std::io::stdin()
            .take(crate::agent_input::INPUT_MAX_BYTES as u64 + 1)
            .read_to_end(&mut buf)
        {
            let _ = writeln!(stderr, "{AGENT_NAME}: Failed: read stdin: {e}");
            return 1;
        }
        AgentInput::parse(&buf)
    } else {
        AgentInput::from_args(args)
    };
    match input {
        Ok(i) => run(&i, &mut std::io::stdout(), &mut stderr),
        Err(e) => {
            let _ = writeln!(stderr, "{AGENT_NAME}: Failed: {e}");
            1
        }
    }
}
