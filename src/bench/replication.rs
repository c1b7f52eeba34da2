//! `tandem bench replication`: what replication costs, through the product's own path.
//!
//! Two `tandem daemon`s run in lab hosts ox1 and ox2 (whitepaper topology) with three
//! disks on preallocated files of the same size: `r0` protocol C and `r1` protocol A,
//! replicated over the `hb` network, and `r2` (protocol C) disconnected after its initial
//! sync, so it writes locally only. ox1 is primary for all three; fio's `nbd` engine
//! drives each through the daemon's NBD socket (reached from outside the host through
//! `/proc/INIT/root`). As baselines, `qemu-nbd` and `nbdkit file` serve plain files in
//! the same directory. Jobs and the table come from [`super::fio`]; every cell is
//! the median of the rounds, and ratios are against qemu-nbd in the same run.
//!
//! The local device: `tandem-dev` is fio (`libaio`, `O_DIRECT`) on ox1's
//! `/dev/tandem/r0` — the same protocol C disk as `tandem-C`, through FUSE and a loop
//! device instead of NBD — and `loop-file` its baseline, fio on a direct-I/O loop device
//! over a plain preallocated file in the same directory. A second table gives their
//! ratios against `loop-file`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tandem_config::Protocol;
use tandem_lab::{HostProcess, Lab, Topology};

use crate::labconfig::LabConfig;

use super::fio::{
    BenchRow, ChildGuard, RunArgs, format_table, interleave, nbdkit_args, preallocate,
    qemu_nbd_args, run_fio_job, run_fio_job_on_device, select_targets, wait_for,
};

/// `tandem bench replication` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run: RunArgs,
    /// Comma-separated subset of: tandem-C, tandem-A, tandem-local, qemu-nbd, nbdkit,
    /// loop-file, tandem-dev.
    #[arg(long)]
    pub targets: Option<String>,
}

const TARGETS: [&str; 7] = [
    "qemu-nbd",
    "tandem-C",
    "tandem-A",
    "tandem-local",
    "nbdkit",
    "tandem-dev",
    "loop-file",
];

/// The tandem targets: (target, disk, protocol, replication port).
const DISKS: [(&str, &str, Protocol, u16); 3] = [
    ("tandem-C", "r0", Protocol::C, 7788),
    ("tandem-A", "r1", Protocol::A, 7789),
    ("tandem-local", "r2", Protocol::C, 7790),
];

/// Three disks (one per tandem target) over `hb`, no group, no fencing.
fn config(lab: &Lab) -> String {
    let dir = lab.data_dir();
    let mut c = LabConfig::disks_only("benchrepl", lab.name(), &dir, "authkey");
    for (_, disk, protocol, port) in DISKS {
        let backing = ["ox1", "ox2"].map(|node| dir.join(format!("{node}-{disk}.img")));
        let d = c.disk(disk, port, backing);
        d.protocol = protocol;
        d.al_extents = 1000;
    }
    c.render()
}

/// A loop device over a plain file (the local device's baseline), detached when
/// dropped.
struct LoopGuard(String);

impl LoopGuard {
    fn attach(file: &Path) -> anyhow::Result<LoopGuard> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(file)
            .output()
            .context("run losetup")?;
        if !out.status.success() {
            bail!(
                "losetup {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(LoopGuard(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

struct Bench {
    lab: Lab,
    tandem: String,
    config: PathBuf,
    daemons: Vec<HostProcess>,
}

impl Bench {
    fn tandem(&self, node: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut argv = vec![
            self.tandem.as_str(),
            "-c",
            self.config.to_str().unwrap_or(""),
        ];
        argv.extend_from_slice(args);
        self.lab
            .run(node, &argv)
            .map_err(|e| anyhow::anyhow!("tandem {args:?} on {node}: {e}"))
    }

    fn disk(&self, node: &str, disk: &str) -> Option<Value> {
        let out = self
            .tandem(node, &["disk", "status", "--json", disk])
            .ok()?;
        serde_json::from_str(&out).ok()
    }
}

/// Runs the benchmark and prints its table.
pub fn run(args: Args) -> anyhow::Result<()> {
    tandem_lab::require_root().context("tandem bench replication builds a lab")?;
    let targets = select_targets(&TARGETS, args.targets.as_deref());
    let jobs = args.run.jobs();
    let size = args.run.size_mib << 20;
    let data_bytes = tandem_disk::meta::Layout::internal(size)?.size_bytes;
    // The same extent for every target: the tandem disks' data area, whole MiB.
    let fio_bytes = data_bytes / (1 << 20) * (1 << 20);

    let lab = Lab::up_auto(Topology::whitepaper()).context("build the lab")?;
    let dir = lab.data_dir();
    let key = dir.join("authkey");
    std::fs::write(&key, "replication benchmark key 0123456789\n")?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, config(&lab))?;
    let mut bench = Bench {
        lab,
        tandem: std::env::current_exe()?.to_string_lossy().into_owned(),
        config: config_path,
        daemons: Vec::new(),
    };
    eprintln!("preallocating {} files of {} MiB", 8, args.run.size_mib);
    for node in ["ox1", "ox2"] {
        for (_, disk, _, _) in DISKS {
            preallocate(&dir.join(format!("{node}-{disk}.img")), size)?;
            bench.tandem(node, &["disk", "create-md", disk, "--node", node])?;
        }
    }
    for n in ["qemu-nbd", "nbdkit", "loop-file"] {
        preallocate(&dir.join(format!("{n}.img")), size)?;
    }
    for node in ["ox1", "ox2"] {
        let log = std::fs::File::create(dir.join(format!("{node}.log")))?;
        let mut cmd = Command::new(&bench.tandem);
        cmd.arg("-c")
            .arg(&bench.config)
            .args(["daemon", "--node", node])
            .stdout(log.try_clone()?)
            .stderr(log);
        bench.daemons.push(bench.lab.spawn(node, cmd)?);
    }
    for (_, disk, _, _) in DISKS {
        for node in ["ox1", "ox2"] {
            wait_for(
                Duration::from_secs(30),
                &format!("{disk} connected on {node}"),
                || {
                    bench
                        .disk(node, disk)
                        .filter(|s| s["connection"] == "connected")
                },
            )?;
        }
        bench.tandem("ox1", &["disk", "primary", "--force", disk])?;
    }
    eprintln!("initial full sync of {} MiB x 3", args.run.size_mib);
    for (_, disk, _, _) in DISKS {
        wait_for(Duration::from_secs(600), &format!("{disk} in sync"), || {
            bench
                .disk("ox2", disk)
                .filter(|s| s["connection"] == "connected" && s["disk_state"] == "up_to_date")
        })?;
    }
    bench.tandem("ox1", &["disk", "disconnect", "r2"])?;

    let path_str = |p: PathBuf| p.to_string_lossy().into_owned();
    let (qf, qs) = (
        path_str(dir.join("qemu-nbd.img")),
        path_str(dir.join("qemu-nbd.sock")),
    );
    let (kf, ks) = (
        path_str(dir.join("nbdkit.img")),
        path_str(dir.join("nbdkit.sock")),
    );
    let loop_file = LoopGuard::attach(&dir.join("loop-file.img"))?;
    let qemu = ChildGuard::spawn("qemu-nbd", &qemu_nbd_args(&qf, &qs))?;
    let nbdkit = ChildGuard::spawn("nbdkit", &nbdkit_args(&kf, &ks))?;
    for s in [&qs, &ks] {
        wait_for(Duration::from_secs(10), s, || {
            std::os::unix::net::UnixStream::connect(s).ok()
        })?;
    }
    // CPU is counted on both nodes for replicated disks (the secondary's work is part of
    // every write), on ox1 alone for the local-only one.
    // Each daemon with its disk service (a child process), where the disks run.
    let daemon_pids: Vec<u32> = bench
        .daemons
        .iter()
        .flat_map(|a| super::daemon_and_children(a.pid()))
        .collect();
    let primary_pid: Vec<u32> = bench
        .daemons
        .first()
        .map(|a| super::daemon_and_children(a.pid()))
        .unwrap_or_default();
    // The published device of r0 on ox1, as the machine reaches it.
    let tandem_dev = bench.lab.host_path("ox1", "/dev/tandem/r0")?;
    let target_uri = |t: &str| -> anyhow::Result<(String, Vec<u32>)> {
        Ok(match t {
            // Block devices: the "URI" is the device path.
            "loop-file" => (loop_file.0.clone(), Vec::new()),
            "tandem-dev" => (tandem_dev.display().to_string(), daemon_pids.clone()),
            "qemu-nbd" => (format!("nbd+unix:///bench?socket={qs}"), vec![qemu.pid()]),
            "nbdkit" => (format!("nbd+unix:///?socket={ks}"), vec![nbdkit.pid()]),
            _ => {
                let disk = DISKS
                    .iter()
                    .find(|d| d.0 == t)
                    .map(|d| d.1)
                    .context("unknown target")?;
                let sock = bench
                    .lab
                    .host_path("ox1", &format!("/run/tandem/disk/{disk}.nbd"))?;
                let pids = if t == "tandem-local" {
                    primary_pid.clone()
                } else {
                    daemon_pids.clone()
                };
                (
                    format!("nbd+unix:///{disk}?socket={}", sock.display()),
                    pids,
                )
            }
        })
    };
    let rows = interleave(&jobs, args.run.rounds(), &targets, |t, job| {
        // Every target writes to the same disk of this machine: what one job
        // left in its write-back (a loop device at 2 GB/s leaves a lot) must
        // not be paid for by the next.
        let _ = Command::new("sync").status();
        let (uri, pid) = target_uri(t)?;
        if matches!(t, "loop-file" | "tandem-dev") {
            run_fio_job_on_device(
                t,
                Path::new(&uri),
                job,
                fio_bytes,
                args.run.runtime_s(),
                &pid,
            )
        } else {
            run_fio_job(t, &uri, job, fio_bytes, args.run.runtime_s(), &pid)
        }
    })?;
    // How much crossed the link, as a sanity check that C and A did replicate.
    let mut link = String::new();
    for (t, disk, _, _) in DISKS {
        if let Some(s) = bench.disk("ox1", disk) {
            link.push_str(&format!(
                "{t} ({disk}): {} on ox1, sent {} MiB to the peer\n",
                s["connection"].as_str().unwrap_or("?"),
                s["sent_bytes"].as_u64().unwrap_or(0) >> 20
            ));
        }
    }
    println!(
        "Replication benchmark: fio {} s per job, {} round(s), {} MiB files, fio size {} MiB",
        args.run.runtime_s(),
        args.run.rounds(),
        args.run.size_mib,
        fio_bytes >> 20
    );
    println!();
    print!("{}", format_table(&rows, "qemu-nbd"));
    println!();
    if targets.contains(&"loop-file") && targets.contains(&"tandem-dev") {
        let local: Vec<BenchRow> = rows
            .iter()
            .filter(|r| matches!(r.target.as_str(), "loop-file" | "tandem-dev" | "tandem-C"))
            .cloned()
            .collect();
        println!(
            "The local device (/dev/tandem/r0 on ox1, protocol C) against a loop device over a plain file:"
        );
        println!();
        print!("{}", format_table(&local, "loop-file"));
        println!();
    }
    print!("{link}");
    println!(
        "server CPU/op: for tandem-C, tandem-A and tandem-dev both nodes' daemons and disk services (primary and replica; FUSE included), for tandem-local ox1's; none for loop-file (kernel threads)"
    );
    for a in &bench.daemons {
        let _ = a.kill();
    }
    Ok(())
}
