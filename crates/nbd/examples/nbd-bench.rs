//! Print the NBD benchmark table (tandem-nbd vs qemu-nbd vs nbdkit file, fio nbd engine).
//!
//! ```text
//! nbd-bench [WORK_DIR]        # TANDEM_BENCH_RUNTIME_S=5 TANDEM_BENCH_SIZE_MIB=1024
//! ```

use std::path::PathBuf;

use tandem_nbd::bench::{BenchConfig, format_table, run_nbd_bench};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tandem-nbd-bench"));
    let cfg = BenchConfig::from_env(dir);
    eprintln!(
        "fio nbd engine, {} s per job, {} MiB preallocated files in {}",
        cfg.runtime_s,
        cfg.file_size_bytes >> 20,
        cfg.work_dir.display()
    );
    let rows = run_nbd_bench(&cfg)?;
    print!("{}", format_table(&rows, "qemu-nbd"));
    Ok(())
}
