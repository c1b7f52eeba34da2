//! What the benchmarks share: fio jobs and their runs, the result table, the baseline
//! servers' command lines, and the processes and files a run sets up.
//!
//! fio's `nbd` engine (libnbd) drives NBD servers over a Unix socket; `libaio` with
//! `O_DIRECT` drives block devices. Ratios are always against a baseline measured in the
//! same run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// The run's shape, shared by every fio benchmark (`#[command(flatten)]`).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Size of every backing file, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Measured seconds per fio job.
    #[arg(long, default_value_t = 5)]
    pub runtime_s: u64,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Only jobs whose name contains this.
    #[arg(long)]
    pub jobs: Option<String>,
}

impl RunArgs {
    /// The standard jobs that `--jobs` selects.
    pub fn jobs(&self) -> Vec<FioJob> {
        standard_jobs()
            .into_iter()
            .filter(|j| {
                self.jobs
                    .as_ref()
                    .is_none_or(|f| j.name.contains(f.as_str()))
            })
            .collect()
    }

    /// Rounds, at least one.
    pub fn rounds(&self) -> u32 {
        self.rounds.clamp(1, 100)
    }

    /// Seconds per job, at least one.
    pub fn runtime_s(&self) -> u64 {
        self.runtime_s.max(1)
    }
}

/// The targets of `known` named in the comma-separated `list` (all without one), in
/// `known`'s order.
pub fn select_targets<'a>(known: &[&'a str], list: Option<&str>) -> Vec<&'a str> {
    known
        .iter()
        .copied()
        .filter(|t| list.is_none_or(|l| l.split(',').any(|x| x == *t)))
        .collect()
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
    pub(crate) fn new(name: &str, rw: &str, block_bytes: u64, iodepth: u32) -> Self {
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
) -> anyhow::Result<BenchRow> {
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
) -> anyhow::Result<BenchRow> {
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
) -> anyhow::Result<BenchRow> {
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
    let fail = |detail: String| anyhow::anyhow!("fio job {} against {target}: {detail}", job.name);
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
        .context("start fio")?;
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

/// Runs every job against every target, `rounds` times with the targets interleaved job
/// by job (so drift over the run hits all of them alike), printing each result as it
/// comes; returns the median round of each job and target.
pub fn interleave(
    jobs: &[FioJob],
    rounds: u32,
    targets: &[&str],
    mut measure: impl FnMut(&str, &FioJob) -> anyhow::Result<BenchRow>,
) -> anyhow::Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for job in jobs {
        let mut samples: Vec<Vec<BenchRow>> = vec![Vec::new(); targets.len()];
        for _ in 0..rounds {
            for (i, t) in targets.iter().enumerate() {
                let row = measure(t, job)?;
                eprintln!(
                    "{:<20} {:<13} {:>9.1} MiB/s {:>9.0} IOPS",
                    job.name,
                    t,
                    row.bytes_per_s / 1048576.0,
                    row.iops
                );
                samples[i].push(row);
            }
        }
        rows.extend(samples.into_iter().filter_map(median));
    }
    Ok(rows)
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

/// The median (by throughput) of several rows of one job and target.
fn median(mut rows: Vec<BenchRow>) -> Option<BenchRow> {
    rows.sort_by(|a, b| a.bytes_per_s.total_cmp(&b.bytes_per_s));
    let mid = rows.len() / 2;
    rows.into_iter().nth(mid)
}

/// A child process (a baseline server), killed by its own PID and reaped when dropped.
pub struct ChildGuard(Child);

impl ChildGuard {
    /// Starts `tool` with `args`, its standard streams closed.
    pub fn spawn(tool: &str, args: &[String]) -> anyhow::Result<ChildGuard> {
        Command::new(tool)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(ChildGuard)
            .with_context(|| format!("start {tool}"))
    }

    /// The child's PID (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates `path` afresh with `size` bytes allocated, so no target pays for first-touch
/// allocation differently.
pub fn preallocate(path: &Path, size: u64) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let _ = std::fs::remove_file(path);
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let len = i64::try_from(size).context("file size")?;
    // SAFETY: plain syscall on an owned descriptor; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
    if rc != 0 {
        bail!(
            "fallocate {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        );
    }
    Ok(())
}

/// Polls `f` every 200 ms until it gives a value, for at most `timeout`.
#[allow(clippy::disallowed_methods)]
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
