//! fio-based NBD benchmark: tandem-nbd against `qemu-nbd` and `nbdkit file`.
//!
//! Every server exports a fresh, preallocated file of the same size in the same directory
//! over a Unix socket; fio's `nbd` engine (libnbd) drives the same jobs against each, job
//! by job with the servers interleaved, so drift over the run hits all of them alike.
//! Ratios are against `qemu-nbd` measured in the same run.
//!
//! The pieces are public so that `tandem bench replication` can add targets (a replicated
//! disk under protocol C or A) with [`run_fio_job`] and print them with [`format_table`].

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::{FileDevice, Server, ServerConfig};

/// Errors of a benchmark run.
#[derive(Debug, Error)]
pub enum BenchError {
    /// A tool could not be started.
    #[error("start {tool}: {source}")]
    Spawn {
        /// Program name.
        tool: String,
        /// The error.
        source: std::io::Error,
    },
    /// fio failed or printed something that is not its JSON report.
    #[error("fio job {job} against {target}: {detail}")]
    Fio {
        /// Job name.
        job: String,
        /// Target name.
        target: String,
        /// What went wrong.
        detail: String,
    },
    /// A server's socket never became connectable.
    #[error("{0} did not start listening")]
    NotListening(String),
    /// Setting up files or the in-process server failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

/// One fio job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FioJob {
    /// Short name shown in the table.
    pub name: String,
    /// fio `rw=` value.
    pub rw: String,
    /// Block size in bytes.
    pub block_bytes: u64,
    /// Queue depth.
    pub iodepth: u32,
}

impl FioJob {
    fn new(name: &str, rw: &str, block_bytes: u64, iodepth: u32) -> Self {
        FioJob {
            name: name.into(),
            rw: rw.into(),
            block_bytes,
            iodepth,
        }
    }
}

/// The four standard jobs: 1 MiB sequential write QD8, 4 KiB random write QD1 and QD16,
/// 4 KiB random read QD16.
pub fn standard_jobs() -> Vec<FioJob> {
    vec![
        FioJob::new("seq-write 1M QD8", "write", 1 << 20, 8),
        FioJob::new("rand-write 4K QD1", "randwrite", 4096, 1),
        FioJob::new("rand-write 4K QD16", "randwrite", 4096, 16),
        FioJob::new("rand-read 4K QD16", "randread", 4096, 16),
    ]
}

/// One measured cell.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// Server name (e.g. `tandem-nbd`, `qemu-nbd`).
    pub target: String,
    /// Job name.
    pub job: String,
    /// Throughput in bytes per second.
    pub bytes_per_s: f64,
    /// Operations per second.
    pub iops: f64,
    /// Server CPU time (user + system, all threads) per I/O, when the server's PID was
    /// given: unlike throughput, this barely moves when other work shares the machine.
    pub server_cpu_us_per_op: Option<f64>,
}

/// Parameters of [`run_nbd_bench`].
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Directory for the backing files and sockets (same file system for every server).
    pub work_dir: PathBuf,
    /// Size of each backing file.
    pub file_size_bytes: u64,
    /// Measured seconds per job.
    pub runtime_s: u64,
    /// Jobs to run.
    pub jobs: Vec<FioJob>,
    /// Rounds; each round runs every job against every server, and the median round is
    /// reported (the machine is shared, so single runs are noisy).
    pub rounds: u32,
    /// Servers to run (`tandem-nbd`, `qemu-nbd`, `nbdkit`); `qemu-nbd` is the baseline.
    pub targets: Vec<String>,
    /// Override of [`FileDevice::with_inline_max_bytes`] for the tandem-nbd target.
    pub tandem_inline_max_bytes: Option<usize>,
}

impl BenchConfig {
    /// Defaults: 1 GiB files, 5 s per job, 1 round, all servers and jobs;
    /// `TANDEM_BENCH_RUNTIME_S`, `TANDEM_BENCH_SIZE_MIB`, `TANDEM_BENCH_ROUNDS`,
    /// `TANDEM_BENCH_TARGETS` (comma-separated) and `TANDEM_BENCH_JOBS` (substring of a job
    /// name) and `TANDEM_BENCH_INLINE_MAX_BYTES` override them.
    pub fn from_env(work_dir: PathBuf) -> Self {
        let env = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        BenchConfig {
            work_dir,
            file_size_bytes: env("TANDEM_BENCH_SIZE_MIB", 1024) << 20,
            runtime_s: env("TANDEM_BENCH_RUNTIME_S", 5).max(1),
            jobs: standard_jobs()
                .into_iter()
                .filter(|j| {
                    std::env::var("TANDEM_BENCH_JOBS").map_or(true, |f| j.name.contains(&f))
                })
                .collect(),
            rounds: env("TANDEM_BENCH_ROUNDS", 1).clamp(1, 100) as u32,
            targets: std::env::var("TANDEM_BENCH_TARGETS")
                .map(|t| t.split(',').map(str::to_string).collect())
                .unwrap_or_else(|_| TARGETS.iter().map(|t| t.to_string()).collect()),
            tandem_inline_max_bytes: std::env::var("TANDEM_BENCH_INLINE_MAX_BYTES")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }
}

/// CPU time (user + system) consumed so far by process `pid`, all threads.
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// Run one fio job with the nbd engine against `uri`; with `server_pids`, also measure
/// the CPU time those processes (together: a replicated disk's two nodes) spend per I/O.
pub fn run_fio_job(
    target: &str,
    uri: &str,
    job: &FioJob,
    size_bytes: u64,
    runtime_s: u64,
    server_pids: &[u32],
) -> Result<BenchRow, BenchError> {
    let engine = ["--ioengine=nbd".to_string(), format!("--uri={uri}")];
    run_fio(target, &engine, job, size_bytes, runtime_s, server_pids)
}

/// As [`run_fio_job`], on a block device of this kernel (`libaio`, `O_DIRECT`).
pub fn run_fio_job_on_device(
    target: &str,
    device: &Path,
    job: &FioJob,
    size_bytes: u64,
    runtime_s: u64,
    server_pids: &[u32],
) -> Result<BenchRow, BenchError> {
    let engine = [
        "--ioengine=libaio".to_string(),
        "--direct=1".to_string(),
        format!("--filename={}", device.display()),
    ];
    run_fio(target, &engine, job, size_bytes, runtime_s, server_pids)
}

fn run_fio(
    target: &str,
    engine: &[String],
    job: &FioJob,
    size_bytes: u64,
    runtime_s: u64,
    server_pids: &[u32],
) -> Result<BenchRow, BenchError> {
    let cpu_of = || -> Option<Duration> {
        (!server_pids.is_empty())
            .then(|| {
                server_pids
                    .iter()
                    .map(|p| process_cpu_time(*p))
                    .sum::<Option<Duration>>()
            })
            .flatten()
    };
    let cpu_before = cpu_of();
    let fail = |detail: String| BenchError::Fio {
        job: job.name.clone(),
        target: target.into(),
        detail,
    };
    let out = Command::new("fio")
        .arg("--name=bench")
        .args(engine)
        .args([
            &format!("--rw={}", job.rw),
            &format!("--bs={}", job.block_bytes),
            &format!("--iodepth={}", job.iodepth),
            &format!("--size={size_bytes}"),
            "--time_based",
            &format!("--runtime={runtime_s}"),
            "--randrepeat=1",
            "--output-format=json",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::Spawn {
            tool: "fio".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(fail(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    // fio's nbd engine prints a line before the JSON document.
    let start = text
        .find('{')
        .ok_or_else(|| fail("no JSON in output".into()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).map_err(|e| fail(format!("bad JSON: {e}")))?;
    let j = &v["jobs"][0];
    if j["error"].as_i64() != Some(0) {
        return Err(fail(format!("fio error {}", j["error"])));
    }
    let dir = if job.rw.contains("read") {
        "read"
    } else {
        "write"
    };
    let bytes_per_s = j[dir]["bw_bytes"]
        .as_f64()
        .ok_or_else(|| fail("no bw_bytes".into()))?;
    let iops = j[dir]["iops"]
        .as_f64()
        .ok_or_else(|| fail("no iops".into()))?;
    let cpu_after = cpu_of();
    let ios = j[dir]["total_ios"].as_f64().unwrap_or(0.0);
    let server_cpu_us_per_op = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if ios > 0.0 => Some((a - b).as_secs_f64() * 1e6 / ios),
        _ => None,
    };
    Ok(BenchRow {
        target: target.into(),
        job: job.name.clone(),
        bytes_per_s,
        iops,
        server_cpu_us_per_op,
    })
}

/// A table: one line per job and target, with MiB/s, IOPS and the ratio against
/// `baseline` in the same job.
pub fn format_table(rows: &[BenchRow], baseline: &str) -> String {
    let mut jobs: Vec<&str> = Vec::new();
    for r in rows {
        if !jobs.contains(&r.job.as_str()) {
            jobs.push(&r.job);
        }
    }
    let mut s = format!(
        "| {:<20} | {:<12} | {:>9} | {:>9} | {:>11} | {:>14} |\n|{:-<22}|{:-<14}|{:->11}|{:->11}|{:->13}|{:->16}|\n",
        "job",
        "server",
        "MiB/s",
        "IOPS",
        format!("x {baseline}"),
        "server CPU/op",
        "",
        "",
        "",
        "",
        "",
        ""
    );
    for job in jobs {
        let base = rows
            .iter()
            .find(|r| r.job == job && r.target == baseline)
            .map(|r| r.bytes_per_s);
        for r in rows.iter().filter(|r| r.job == job) {
            let ratio = match base {
                Some(b) if b > 0.0 => format!("{:.2}", r.bytes_per_s / b),
                _ => "-".into(),
            };
            let cpu = r
                .server_cpu_us_per_op
                .map_or("-".to_string(), |c| format!("{c:.1} us"));
            s.push_str(&format!(
                "| {:<20} | {:<12} | {:>9.1} | {:>9.0} | {:>11} | {:>14} |\n",
                r.job,
                r.target,
                r.bytes_per_s / (1024.0 * 1024.0),
                r.iops,
                ratio,
                cpu
            ));
        }
    }
    s
}

/// A child server process, killed (by its own PID) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(name: &str, socket: &Path) -> Result<(), BenchError> {
    for _ in 0..200 {
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BenchError::NotListening(name.into()))
}

fn preallocated_file(path: &Path, size: u64) -> Result<(), BenchError> {
    let _ = std::fs::remove_file(path);
    let f = std::fs::File::create(path).map_err(io_err(format!("create {}", path.display())))?;
    f.set_len(size)
        .map_err(io_err(format!("size {}", path.display())))?;
    // Allocate the blocks so no server pays for first-touch allocation differently.
    let rc = unsafe_fallocate(&f, size);
    if rc != 0 {
        return Err(BenchError::Io {
            context: format!("fallocate {}", path.display()),
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    Ok(())
}

fn unsafe_fallocate(f: &std::fs::File, size: u64) -> i32 {
    use std::os::fd::AsRawFd;
    let Ok(len) = i64::try_from(size) else {
        return libc::EINVAL;
    };
    // SAFETY: plain syscall on an owned descriptor; no memory is passed.
    unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) }
}

fn spawn(tool: &str, args: &[String]) -> Result<ChildGuard, BenchError> {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(ChildGuard)
        .map_err(|source| BenchError::Spawn {
            tool: tool.into(),
            source,
        })
}

/// The qemu-nbd baseline's command line (without the program): writeback cache and its
/// thread pool, as qemu-nbd defaults to, 16 connections allowed.
pub fn qemu_nbd_args(file: &str, socket: &str) -> Vec<String> {
    [
        "-f",
        "raw",
        "-x",
        "bench",
        "-k",
        socket,
        "-t",
        "-e",
        "16",
        "--cache=writeback",
        "--aio=threads",
        file,
    ]
    .map(str::to_string)
    .to_vec()
}

/// The nbdkit baseline's command line (without the program): its `file` plugin.
pub fn nbdkit_args(file: &str, socket: &str) -> Vec<String> {
    ["-f", "-U", socket, "file", file]
        .map(str::to_string)
        .to_vec()
}

/// The servers [`run_nbd_bench`] knows.
pub const TARGETS: [&str; 3] = ["qemu-nbd", "tandem-nbd", "nbdkit"];

/// Median (by throughput) of several rows of one job and target.
fn median(mut rows: Vec<BenchRow>) -> Option<BenchRow> {
    rows.sort_by(|a, b| a.bytes_per_s.total_cmp(&b.bytes_per_s));
    let mid = rows.len() / 2;
    rows.into_iter().nth(mid)
}

/// Run the standard comparison; returns one row per job and server (the median round).
pub fn run_nbd_bench(cfg: &BenchConfig) -> Result<Vec<BenchRow>, BenchError> {
    std::fs::create_dir_all(&cfg.work_dir)
        .map_err(io_err(format!("create {}", cfg.work_dir.display())))?;
    let file = |n: &str| cfg.work_dir.join(format!("{n}.img"));
    let sock = |n: &str| cfg.work_dir.join(format!("{n}.nbd"));
    let names: Vec<&str> = TARGETS
        .into_iter()
        .filter(|t| cfg.targets.iter().any(|c| c == t))
        .collect();
    let wanted = |n: &str| names.contains(&n);
    for &n in &names {
        preallocated_file(&file(n), cfg.file_size_bytes)?;
        let _ = std::fs::remove_file(sock(n));
    }
    let path_str = |p: PathBuf| p.to_string_lossy().into_owned();

    // qemu-nbd: writeback cache and its thread pool, as qemu-nbd defaults to.
    let (qf, qs) = (path_str(file("qemu-nbd")), path_str(sock("qemu-nbd")));
    let qemu_child = wanted("qemu-nbd")
        .then(|| spawn("qemu-nbd", &qemu_nbd_args(&qf, &qs)))
        .transpose()?;
    let (kf, ks) = (path_str(file("nbdkit")), path_str(sock("nbdkit")));
    let nbdkit_child = wanted("nbdkit")
        .then(|| spawn("nbdkit", &nbdkit_args(&kf, &ks)))
        .transpose()?;

    // tandem-nbd in this process, on its own runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("start tokio runtime"))?;
    let server = Server::new(ServerConfig::default());
    let dev = FileDevice::open(&file("tandem-nbd"), false)
        .map_err(io_err("open tandem-nbd backing file"))?;
    let dev = match cfg.tandem_inline_max_bytes {
        Some(n) => dev.with_inline_max_bytes(n),
        None => dev,
    };
    if let Err(e) = server.add_export("bench", "benchmark", Arc::new(dev)) {
        return Err(BenchError::Io {
            context: "add export".into(),
            source: std::io::Error::other(e.to_string()),
        });
    }
    let listener = runtime
        .block_on(crate::bind_unix(
            &sock("tandem-nbd"),
            &crate::UnixAccess::default(),
        ))
        .map_err(|e| BenchError::Io {
            context: "bind tandem-nbd socket".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    runtime.spawn(server.clone().serve_unix(listener, Some("bench".into())));

    for &n in &names {
        wait_listening(n, &sock(n))?;
    }
    let mut rows = Vec::new();
    for job in &cfg.jobs {
        let mut samples: Vec<Vec<BenchRow>> = vec![Vec::new(); names.len()];
        for _ in 0..cfg.rounds {
            for (i, &n) in names.iter().enumerate() {
                let uri = format!("nbd+unix:///bench?socket={}", sock(n).display());
                let pid = match n {
                    "qemu-nbd" => qemu_child.as_ref().map(|c| c.0.id()),
                    "nbdkit" => nbdkit_child.as_ref().map(|c| c.0.id()),
                    // In process: fio is a child, so this process's CPU is the server's.
                    _ => Some(std::process::id()),
                };
                let row = run_fio_job(
                    n,
                    &uri,
                    job,
                    cfg.file_size_bytes,
                    cfg.runtime_s,
                    pid.as_slice(),
                )?;
                tracing::info!(target = n, job = %job.name, mib_per_s = row.bytes_per_s / 1048576.0, iops = row.iops, "fio job done");
                samples[i].push(row);
            }
        }
        rows.extend(samples.into_iter().filter_map(median));
    }
    server.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(5));
    for &n in &names {
        let _ = std::fs::remove_file(file(n));
        let _ = std::fs::remove_file(sock(n));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_ratios_against_the_baseline() {
        let rows = vec![
            BenchRow {
                target: "qemu-nbd".into(),
                job: "j".into(),
                bytes_per_s: 100.0 * 1048576.0,
                iops: 100.0,
                server_cpu_us_per_op: None,
            },
            BenchRow {
                target: "tandem-nbd".into(),
                job: "j".into(),
                bytes_per_s: 150.0 * 1048576.0,
                iops: 150.0,
                server_cpu_us_per_op: Some(2.0),
            },
        ];
        let t = format_table(&rows, "qemu-nbd");
        assert!(
            t.contains("| tandem-nbd   |     150.0 |       150 |        1.50 |"),
            "{t}"
        );
        assert!(t.contains("1.00"));
    }
}
