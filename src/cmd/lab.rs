//! `tandem lab …`: lab clusters in network namespaces (see docs/lab.md).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_lab::{DiskServer, Lab, LabOptions, LabStatus, Topology};

use crate::Global;

/// `println!` that ignores a closed stdout (`tandem lab status | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `tandem lab` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, clap::Args)]
struct Which {
    /// The lab (default: $TANDEM_LAB, or the only lab that is up).
    #[arg(short = 'n', long = "name")]
    name: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum LabCommand {
    /// Build a lab (default topology: the whitepaper's ox1, ox2, client on lan + hb).
    Up {
        /// Lab name, 1-12 of a-z 0-9 (default: `lab`).
        #[arg(short = 'n', long = "name", default_value = "lab")]
        name: String,
        /// Topology file (TOML with [[host]] and [[net]] tables; see docs/lab.md).
        #[arg(short = 't', long = "topology", conflicts_with_all = ["hosts", "nets"])]
        topology: Option<PathBuf>,
        /// Hosts, comma separated (every host on every network unless a net lists some).
        #[arg(long, value_delimiter = ',', requires = "nets")]
        hosts: Vec<String>,
        /// Networks, comma separated: NAME[=CIDR][:HOST+HOST...].
        #[arg(long, value_delimiter = ',', requires = "hosts")]
        nets: Vec<String>,
        /// Hosts (of --hosts) that get a lossy disk, comma separated.
        #[arg(long, value_delimiter = ',', requires = "hosts")]
        lossy_disks: Vec<String>,
    },
    /// Take a lab down, or every lab and leftover of killed runs (--all).
    Down {
        /// The lab to take down.
        name: Option<String>,
        /// Every lab found (state, namespaces, cgroups, data directories), except labs
        /// owned by a live process (a running test).
        #[arg(long, conflicts_with = "name")]
        all: bool,
        /// With --all: also labs whose owner is alive.
        #[arg(long, requires = "all")]
        force: bool,
    },
    /// Show hosts, networks, addresses, power and freeze state.
    Status {
        #[command(flatten)]
        which: Which,
        /// Every lab that is up.
        #[arg(long)]
        all: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a host (its namespaces and cgroup), stdio inherited.
    Exec {
        #[command(flatten)]
        which: Which,
        /// The host.
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Power a host off (kill every process and reap it, links down, unflushed writes
    /// of its lossy disk dropped) or on (cold boot).
    Power {
        #[command(flatten)]
        which: Which,
        /// `off`, `on` or `cycle`.
        action: PowerAction,
        /// The host.
        host: String,
        /// With off or cycle: the lossy disk keeps the host's unflushed writes (writes
        /// them down) instead of dropping them, as if its cache had a battery.
        #[arg(long)]
        keep_cache: bool,
    },
    /// Write a host's unflushed writes down to its lossy disk, as `sync` would on a
    /// real machine (inside a lab host `sync` does not reach it).
    Sync {
        #[command(flatten)]
        which: Which,
        /// The host.
        host: String,
    },
    /// Pull (down) or plug back (up) one host's cable on one network (carrier loss).
    Link {
        #[command(flatten)]
        which: Which,
        /// The host.
        host: String,
        /// The network.
        net: String,
        /// `up` or `down`.
        state: LinkState,
    },
    /// Freeze every process of a host (cgroup.freeze).
    Freeze {
        #[command(flatten)]
        which: Which,
        /// The host.
        host: String,
    },
    /// Thaw a frozen host.
    Thaw {
        #[command(flatten)]
        which: Which,
        /// The host.
        host: String,
    },
    /// Cut a network: all of it, or only the listed hosts from the rest.
    Partition {
        #[command(flatten)]
        which: Which,
        /// The network.
        net: String,
        /// Hosts to isolate on it (none: the whole network).
        hosts: Vec<String>,
    },
    /// Remove partitions: all, those of one network, or one host set on a network.
    Heal {
        #[command(flatten)]
        which: Which,
        /// The network (none: every partition).
        net: Option<String>,
        /// The host set given to `partition`.
        hosts: Vec<String>,
    },
    /// Build a lab, check networks, partition, power and freeze, take it down.
    Smoke,
    /// Run named failure scenarios (after Pacemaker's CTS) on the data demo's cluster,
    /// each followed by an audit; a report table, exit 1 if any failed (docs/scenarios.md).
    Scenarios(crate::scenarios::ScenarioArgs),
    /// Random power-offs, freezes, daemon kills and partitions under the data demo's
    /// write load, reproducible from --seed; every acknowledged write checked each round.
    Chaos(crate::scenarios::ChaosArgs),
    /// Serve a lab's lossy disks (started by `up`; internal).
    #[command(hide = true)]
    Diskd {
        /// The lab.
        #[arg(short = 'n', long = "name")]
        name: String,
    },
    /// Serve a lab's power switch on its socket (started by `up`; internal).
    #[command(hide = true)]
    Switchd {
        /// The lab.
        #[arg(short = 'n', long = "name")]
        name: String,
    },
    /// The lab's power switch as a fence-agents program: options as name=value lines on
    /// stdin (action, plug or port, lab or ipaddr), or as --action/--plug/--lab flags.
    FenceAgent {
        /// Action: on, off, reboot, status, monitor, list, metadata.
        #[arg(short = 'o', long)]
        action: Option<String>,
        /// The host to act on.
        #[arg(short = 'n', long, alias = "port")]
        plug: Option<String>,
        /// The lab (also accepted as `ipaddr`).
        #[arg(short = 'a', long, alias = "ip")]
        lab: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LinkState {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PowerAction {
    Off,
    On,
    Cycle,
}

fn pick(which: &Which) -> anyhow::Result<String> {
    if let Some(n) = &which.name {
        return Ok(n.clone());
    }
    if let Ok(n) = std::env::var("TANDEM_LAB") {
        if !n.is_empty() {
            return Ok(n);
        }
    }
    let labs = tandem_lab::list_labs();
    match labs.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no lab is up (start one with `tandem lab up`)"),
        many => bail!(
            "several labs are up ({}); name one with --name or TANDEM_LAB",
            many.join(", ")
        ),
    }
}

fn open(which: &Which) -> anyhow::Result<Lab> {
    let name = pick(which)?;
    Ok(Lab::open(&name)?)
}

/// Runs a `tandem lab` subcommand.
pub fn run(_global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        LabCommand::Up {
            name,
            topology,
            hosts,
            nets,
            lossy_disks,
        } => {
            let mut topo = match topology {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("read topology {}", path.display()))?;
                    Topology::from_toml(&text).with_context(|| path.display().to_string())?
                }
                None if !hosts.is_empty() => Topology::from_flags(&hosts, &nets)?,
                None => Topology::whitepaper(),
            };
            for h in &lossy_disks {
                match topo.hosts.iter_mut().find(|s| s.name == *h) {
                    Some(spec) => spec.lossy_disk = true,
                    None => bail!("--lossy-disks names {h:?}, which is not in --hosts"),
                }
            }
            // The lossy disks must be served after this command exits: by a daemon.
            let exe = std::env::current_exe().context("find the tandem binary")?;
            let options = LabOptions {
                disk_server: DiskServer::Daemon(vec![
                    exe.into_os_string(),
                    "lab".into(),
                    "diskd".into(),
                    "--name".into(),
                    name.clone().into(),
                ]),
            };
            let mut lab = Lab::up_with(&name, topo, options)?;
            lab.keep();
            if let Err(e) = start_switchd(&mut lab) {
                let _ = lab.down();
                return Err(e.context("start the lab's power switch"));
            }
            print_status(&lab.status()?);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { name, all, force } => {
            let reports = if all {
                tandem_lab::down_all(force)?
            } else {
                let name = pick(&Which { name })?;
                vec![tandem_lab::down(&name)?]
            };
            let mut ok = true;
            for r in &reports {
                if let Some(why) = &r.skipped {
                    out!("lab {}: left alone, {why}", r.name);
                    continue;
                }
                out!(
                    "lab {}: killed {} processes, removed {} namespaces, {} mounts, {} loop devices",
                    r.name,
                    r.killed,
                    r.netns.len(),
                    r.unmounted.len(),
                    r.loop_devices.len()
                );
                for p in &r.problems {
                    ok = false;
                    eprintln!("  problem: {p}");
                }
            }
            if reports.is_empty() {
                out!("no lab found");
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Status { which, all, json } => {
            let names = if all {
                tandem_lab::list_labs()
            } else {
                vec![pick(&which)?]
            };
            let mut statuses = Vec::new();
            for n in names {
                statuses.push(Lab::open(&n)?.status()?);
            }
            if json {
                out!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                for s in &statuses {
                    print_status(s);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec {
            which,
            host,
            command,
        } => {
            let lab = open(&which)?;
            let (prog, rest) = command
                .split_first()
                .context("exec needs a command after --")?;
            let mut cmd = Command::new(prog);
            cmd.args(rest);
            let p = lab.spawn(&host, cmd)?;
            let status = p.wait().context("wait for the command")?;
            Ok(exit_code_of(status))
        }
        LabCommand::Power {
            which,
            action,
            host,
            keep_cache,
        } => {
            let mut lab = open(&which)?;
            if keep_cache && matches!(action, PowerAction::On) {
                bail!("--keep-cache goes with off or cycle");
            }
            if matches!(action, PowerAction::Off | PowerAction::Cycle) {
                if keep_cache {
                    lab.power_off_keep_cache(&host)?;
                } else {
                    lab.power_off(&host)?;
                }
            }
            if matches!(action, PowerAction::On | PowerAction::Cycle) {
                lab.power_on(&host)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Sync { which, host } => {
            let f = open(&which)?.sync_disk(&host)?;
            out!("{host}: wrote {} down ({} files)", size(f.bytes), f.files);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Link {
            which,
            host,
            net,
            state,
        } => {
            open(&which)?.set_link(&host, &net, matches!(state, LinkState::Up))?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Freeze { which, host } => {
            open(&which)?.freeze(&host)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Thaw { which, host } => {
            open(&which)?.thaw(&host)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Partition { which, net, hosts } => {
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            open(&which)?.partition(&net, &hosts)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Heal { which, net, hosts } => {
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            open(&which)?.heal(net.as_deref(), &hosts)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Smoke => smoke(),
        LabCommand::Scenarios(a) => crate::scenarios::scenarios(a),
        LabCommand::Chaos(a) => crate::scenarios::chaos(a),
        LabCommand::Diskd { name } => {
            tandem_lab::serve_disks(&name)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Switchd { name } => {
            Lab::open(&name)?.serve_power_switch()?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::FenceAgent { action, plug, lab } => fence_agent(action, plug, lab),
    }
}

/// Leaves `tandem lab switchd` running in the background (its own session, output in the
/// lab's state dir) and waits until its socket answers, so fencing works right away.
fn start_switchd(lab: &mut Lab) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("find the tandem binary")?;
    let sock = tandem_lab::switch_socket(lab.name());
    let log_path = sock.with_file_name("switchd.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "switchd", "--name", lab.name()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().context("spawn tandem lab switchd")?;
    lab.record_switch_daemon(child.id())?;
    lab.write_fence_agent(&std::env::current_exe()?)?;
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "the power switch did not open {} within 5 s",
        sock.display()
    )
}

fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::FAILURE,
    }
}

fn print_status(s: &LabStatus) {
    out!("lab {} (switch namespace {})", s.name, s.switch_netns);
    if let Some(p) = s.owner_pid {
        out!("  owned by process {p} (a test): `down --all` leaves it alone");
    }
    if let Some(sock) = &s.power_switch {
        out!("  power switch on {sock}");
    }
    for h in &s.hosts {
        let power = if h.powered { "on" } else { "OFF" };
        let frozen = if h.frozen { ", FROZEN" } else { "" };
        let init = h
            .init_pid
            .map(|p| format!(", init pid {p}"))
            .unwrap_or_default();
        out!(
            "  host {:<8} power {power}{frozen}, {} processes{init}, netns {}",
            h.name,
            h.processes,
            h.netns
        );
        if let Some(d) = &h.disk {
            if d.served {
                let refused = if d.refused_writes > 0 {
                    format!(", {} writes REFUSED at the bound", d.refused_writes)
                } else {
                    String::new()
                };
                out!(
                    "    disk  {}: {} unflushed in {} files (bound {}){refused}",
                    d.dir,
                    size(d.cached_bytes),
                    d.dirty_files,
                    size(d.bound_bytes)
                );
            } else {
                out!("    disk  {}: NOT SERVED (its server has exited)", d.dir);
            }
        }
        for i in &h.interfaces {
            out!(
                "    {:<5} {:<6} {:<20} {}  port {} {}",
                i.ifname,
                i.net,
                i.address,
                i.mac,
                i.port,
                if i.link_up { "up" } else { "DOWN" }
            );
        }
    }
    for n in &s.nets {
        let cut = if n.partitioned.is_empty() {
            String::new()
        } else {
            format!(", PARTITIONED: {}", n.partitioned.join(", "))
        };
        out!("  net  {:<8} {} bridge {}{cut}", n.name, n.subnet, n.bridge);
    }
}

/// Bytes for status lines: exact below 1 KiB, else KiB or MiB with one decimal.
fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

// ------------------------------------------------------------------ smoke

/// Reads the clock for the smoke run's step timings (a driver, not a core).
#[allow(clippy::disallowed_methods)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn step<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let _ = write!(std::io::stdout(), "{what} ... ");
    let _ = std::io::stdout().flush();
    let start = now();
    match f() {
        Ok(v) => {
            out!("ok ({} ms)", start.elapsed().as_millis());
            Ok(v)
        }
        Err(e) => {
            out!("FAILED");
            Err(e.context(format!("smoke step: {what}")))
        }
    }
}

/// A reply within three tries (a loaded machine may delay one ping process).
fn reach(lab: &Lab, from: &str, to: &str, net: &str) -> anyhow::Result<bool> {
    for _ in 0..3 {
        if ping(lab, from, to, net)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn ping(lab: &Lab, from: &str, to: &str, net: &str) -> anyhow::Result<bool> {
    let addr = lab.address(to, net)?.to_string();
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "1", "-W", "1", "-n", "-q", &addr]);
    Ok(lab.output(from, cmd)?.status.success())
}

fn expect(ok: bool, what: &str) -> anyhow::Result<()> {
    if ok { Ok(()) } else { bail!("{what}") }
}

fn smoke() -> anyhow::Result<ExitCode> {
    tandem_lab::require_root()?;
    let name = format!("smoke{}", std::process::id() % 100_000);
    let mut lab = step(
        &format!("up lab {name} (ox1, ox2, client; lan + hb)"),
        || Ok(Lab::up(&name, Topology::whitepaper())?),
    )?;
    step(
        "ping ox1 -> ox2 on lan and hb, client -> ox1 on lan",
        || {
            expect(
                ping(&lab, "ox1", "ox2", "lan")?,
                "ox1 cannot reach ox2 on lan",
            )?;
            expect(
                ping(&lab, "ox1", "ox2", "hb")?,
                "ox1 cannot reach ox2 on hb",
            )?;
            expect(
                ping(&lab, "client", "ox1", "lan")?,
                "client cannot reach ox1",
            )
        },
    )?;
    step("partition hb: hb silent, lan still works", || {
        lab.partition("hb", &[])?;
        expect(!ping(&lab, "ox1", "ox2", "hb")?, "hb still carries traffic")?;
        expect(reach(&lab, "ox1", "ox2", "lan")?, "lan broke with hb")
    })?;
    step("heal hb", || {
        lab.heal(Some("hb"), &[])?;
        expect(reach(&lab, "ox1", "ox2", "hb")?, "hb did not come back")
    })?;
    let sleeper = step("start a daemon on ox2", || {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000").stdout(Stdio::null());
        Ok(lab.spawn("ox2", cmd)?)
    })?;
    let disk = lab.host_disk_dir("ox2")?;
    step(
        "write to ox2's lossy disk: one file flushed, one not",
        || {
            let program = "import os, sys\n\
            for name, sync in (('flushed', True), ('unflushed', False)):\n    \
                fd = os.open(os.path.join(sys.argv[1], name), os.O_CREAT | os.O_WRONLY, 0o644)\n    \
                os.write(fd, b'data')\n    \
                if sync: os.fsync(fd)\n";
            let path = disk.display().to_string();
            lab.run("ox2", &["python3", "-c", program, &path])?;
            expect(
                std::fs::read(disk.join("unflushed"))? == b"data",
                "the unflushed write is not visible before the power cut",
            )
        },
    )?;
    step(
        "power off ox2: every process reaped, links down, unflushed writes gone",
        || {
            lab.power_off("ox2")?;
            expect(
                !std::path::Path::new(&format!("/proc/{}", sleeper.pid())).exists(),
                "the daemon's pid still exists",
            )?;
            expect(
                lab.processes("ox2")?.is_empty(),
                "ox2's cgroup is not empty",
            )?;
            expect(!ping(&lab, "ox1", "ox2", "hb")?, "ox2 still answers")?;
            expect(
                std::fs::read(disk.join("flushed"))? == b"data",
                "the flushed write is gone",
            )?;
            expect(
                std::fs::read(disk.join("unflushed"))?.is_empty(),
                "the unflushed write survived the power cut",
            )
        },
    )?;
    step("power on ox2 (cold boot)", || {
        lab.power_on("ox2")?;
        expect(
            ping(&lab, "ox1", "ox2", "hb")?,
            "ox2 unreachable after power-on",
        )?;
        expect(lab.processes("ox2")?.len() == 1, "processes came back")
    })?;
    step("freeze and thaw ox1", || {
        lab.freeze("ox1")?;
        expect(lab.is_frozen("ox1")?, "cgroup does not report frozen")?;
        lab.thaw("ox1")?;
        expect(!lab.is_frozen("ox1")?, "cgroup still frozen")?;
        expect(
            ping(&lab, "ox2", "ox1", "hb")?,
            "ox1 unreachable after thaw",
        )
    })?;
    step("down: no namespace, cgroup or state left", || {
        let report = lab.down()?;
        if !report.problems.is_empty() {
            bail!("teardown problems: {:?}", report.problems);
        }
        let out = Command::new("ip").args(["netns", "list"]).output()?;
        let left = String::from_utf8_lossy(&out.stdout).contains(&format!("tl-{name}-"));
        expect(!left, "namespaces left behind")
    })?;
    out!("smoke: all steps passed");
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------ fence agent

const FENCE_METADATA: &str = r#"<?xml version="1.0" ?>
<resource-agent name="tandem-lab-fence" shortdesc="Power switch of a tandem lab">
<longdesc>Powers lab hosts off and on through `tandem lab`: off kills every process of the host and waits until all are reaped.</longdesc>
<parameters>
  <parameter name="action" unique="0" required="1"><getopt mixed="-o, --action=[action]"/><content type="string" default="reboot"/><shortdesc lang="en">Fencing action</shortdesc></parameter>
  <parameter name="plug" unique="0" required="1" obsoletes="port"><getopt mixed="-n, --plug=[host]"/><content type="string"/><shortdesc lang="en">Lab host to act on</shortdesc></parameter>
  <parameter name="port" unique="0" required="0" deprecated="1"><getopt mixed="-n, --plug=[host]"/><content type="string"/><shortdesc lang="en">Lab host to act on</shortdesc></parameter>
  <parameter name="ipaddr" unique="0" required="0"><getopt mixed="-a, --ip=[lab]"/><content type="string"/><shortdesc lang="en">Lab name</shortdesc></parameter>
</parameters>
<actions>
  <action name="on"/><action name="off"/><action name="reboot"/><action name="status"/>
  <action name="list"/><action name="monitor"/><action name="metadata"/>
</actions>
</resource-agent>"#;

/// The fence-agents calling convention: options as `name=value` lines on stdin (or
/// flags); exit 0 on success, 1 on failure; `status` exits 0 for on and 2 for off.
fn fence_agent(
    action: Option<String>,
    plug: Option<String>,
    lab: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut action = action;
    let mut plug = plug;
    let mut lab_name = lab;
    if action.is_none() || plug.is_none() {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("read options from stdin")?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                eprintln!("tandem lab fence-agent: ignoring option without '=': {line:?}");
                continue;
            };
            let v = v.trim().to_string();
            match k.trim() {
                "action" | "option" => action = Some(v),
                "plug" | "port" | "nodename" => plug = plug.or(Some(v)),
                "lab" | "ipaddr" => lab_name = lab_name.or(Some(v)),
                // Options every fence agent may be given and that a lab does not need.
                _ => {}
            }
        }
    }
    let action = action.unwrap_or_else(|| "reboot".to_string());
    if action == "metadata" {
        out!("{FENCE_METADATA}");
        return Ok(ExitCode::SUCCESS);
    }
    let name = pick(&Which { name: lab_name })?;
    let need_plug = || plug.clone().context("no plug (port) given");
    use tandem_lab::SwitchRequest as R;
    let req = match action.as_str() {
        "off" => R::Off(need_plug()?),
        "on" => R::On(need_plug()?),
        "reboot" => R::Reboot(need_plug()?),
        "status" => R::Status(need_plug()?),
        "list" | "list-status" | "monitor" => R::List,
        other => {
            bail!("unknown action {other:?} (on, off, reboot, status, list, monitor, metadata)")
        }
    };
    // The switch is a device on its own socket: this works from inside a lab host.
    let reply = tandem_lab::switch_request(&name, &req)?;
    match action.as_str() {
        "status" => {
            let on = reply == "on";
            out!("Status: {}", if on { "ON" } else { "OFF" });
            return Ok(ExitCode::from(if on { 0 } else { 2 }));
        }
        "list" | "list-status" => {
            for l in reply.lines().filter(|l| *l != "end") {
                let (h, st) = l.split_once(' ').unwrap_or((l, "unknown"));
                if action == "list" {
                    out!("{h},{h}");
                } else {
                    out!("{h},{h},{st}");
                }
            }
        }
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}
