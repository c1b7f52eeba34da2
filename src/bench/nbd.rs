//! `tandem bench nbd`: tandem's NBD server against `qemu-nbd` and `nbdkit file`.
//!
//! Every server exports a fresh, preallocated file of the same size in the same directory
//! over a Unix socket; fio's `nbd` engine drives the same jobs against each, job by job
//! with the servers interleaved, so drift over the run hits all of them alike. Ratios are
//! against `qemu-nbd` measured in the same run; each cell is the median of the rounds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tandem_nbd::{FileDevice, Server, ServerConfig};

use super::fio::{
    ChildGuard, RunArgs, format_table, interleave, nbdkit_args, preallocate, qemu_nbd_args,
    run_fio_job, select_targets, wait_for,
};

/// `tandem bench nbd` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for the backing files and sockets (one file system for every server).
    #[arg(long, default_value = "/var/tmp/tandem-nbd-bench")]
    pub work_dir: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
    /// Comma-separated subset of: qemu-nbd, tandem-nbd, nbdkit.
    #[arg(long)]
    pub targets: Option<String>,
    /// Override of `FileDevice::with_inline_max_bytes` for tandem-nbd.
    #[arg(long)]
    pub inline_max_bytes: Option<usize>,
}

/// The servers this benchmark knows; `qemu-nbd` is the baseline.
const TARGETS: [&str; 3] = ["qemu-nbd", "tandem-nbd", "nbdkit"];

/// Runs the comparison and prints its table.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.work_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let size = args.run.size_mib << 20;
    let runtime_s = args.run.runtime_s();
    let jobs = args.run.jobs();
    let names = select_targets(&TARGETS, args.targets.as_deref());
    eprintln!(
        "fio nbd engine, {runtime_s} s per job, {} MiB preallocated files in {}",
        args.run.size_mib,
        dir.display()
    );
    let file = |n: &str| dir.join(format!("{n}.img"));
    let sock = |n: &str| dir.join(format!("{n}.nbd"));
    let wanted = |n: &str| names.contains(&n);
    for &n in &names {
        preallocate(&file(n), size)?;
        let _ = std::fs::remove_file(sock(n));
    }
    let path_str = |p: PathBuf| p.to_string_lossy().into_owned();
    let (qf, qs) = (path_str(file("qemu-nbd")), path_str(sock("qemu-nbd")));
    let qemu = wanted("qemu-nbd")
        .then(|| ChildGuard::spawn("qemu-nbd", &qemu_nbd_args(&qf, &qs)))
        .transpose()?;
    let (kf, ks) = (path_str(file("nbdkit")), path_str(sock("nbdkit")));
    let nbdkit = wanted("nbdkit")
        .then(|| ChildGuard::spawn("nbdkit", &nbdkit_args(&kf, &ks)))
        .transpose()?;

    // tandem-nbd in this process, on its own runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let server = Server::new(ServerConfig::default());
    let dev = FileDevice::open(&file("tandem-nbd"), false).context("open tandem-nbd file")?;
    let dev = match args.inline_max_bytes {
        Some(n) => dev.with_inline_max_bytes(n),
        None => dev,
    };
    server
        .add_export("bench", "benchmark", Arc::new(dev))
        .map_err(|e| anyhow::anyhow!("add export: {e}"))?;
    let listener = runtime
        .block_on(tandem_nbd::bind_unix(
            &sock("tandem-nbd"),
            &tandem_nbd::UnixAccess::default(),
        ))
        .map_err(|e| anyhow::anyhow!("bind tandem-nbd socket: {e}"))?;
    runtime.spawn(server.clone().serve_unix(listener, Some("bench".into())));

    for &n in &names {
        wait_for(Duration::from_secs(10), &format!("{n} listening"), || {
            std::os::unix::net::UnixStream::connect(sock(n)).ok()
        })?;
    }
    let rows = interleave(&jobs, args.run.rounds(), &names, |n, job| {
        let uri = format!("nbd+unix:///bench?socket={}", sock(n).display());
        let pid = match n {
            "qemu-nbd" => qemu.as_ref().map(ChildGuard::pid),
            "nbdkit" => nbdkit.as_ref().map(ChildGuard::pid),
            // In process: fio is a child, so this process's CPU is the server's.
            _ => Some(std::process::id()),
        };
        run_fio_job(n, &uri, job, size, runtime_s, pid.as_slice())
    })?;
    server.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(5));
    for &n in &names {
        let _ = std::fs::remove_file(file(n));
        let _ = std::fs::remove_file(sock(n));
    }
    print!("{}", format_table(&rows, "qemu-nbd"));
    Ok(())
}
