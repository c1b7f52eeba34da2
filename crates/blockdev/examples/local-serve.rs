//! Publish one file (or an in-memory disk) as a local block device until SIGINT or
//! SIGTERM, then take it down — for measuring the FUSE + loop path alone (no
//! replication) with fio, and for profiling it.
//!
//! ```text
//! local-serve (--file PATH | --memory-mib N) [--link PATH] [--fuse-threads N] [--workers N]
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use tandem_blockdev::{LocalDevice, Options, Paths};
use tandem_nbd::{BlockDevice, FileDevice, MemoryDevice};

fn usage() -> ! {
    eprintln!(
        "usage: local-serve (--file PATH | --memory-mib N) [--link PATH] [--fuse-threads N] [--workers N]"
    );
    std::process::exit(2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Blocked before any thread exists, so only sigwait below takes them.
    // SAFETY: signal-set manipulation on a local sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let (mut file, mut memory_mib) = (None, None::<usize>);
    let mut link = PathBuf::from("/dev/tandem/bench");
    let (mut fuse_threads, mut workers) = (2, 1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--file" => file = Some(PathBuf::from(val())),
            "--memory-mib" => memory_mib = Some(val().parse()?),
            "--link" => link = PathBuf::from(val()),
            "--fuse-threads" => fuse_threads = val().parse()?,
            "--workers" => workers = val().parse()?,
            _ => usage(),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .on_thread_start(tandem_blockdev::mark_io_flusher)
        .enable_all()
        .build()?;
    let (device, identity): (Arc<dyn BlockDevice>, PathBuf) = match (file, memory_mib) {
        (Some(f), None) => (Arc::new(FileDevice::open(&f, false)?), f),
        (None, Some(m)) => (Arc::new(MemoryDevice::new(m << 20)), "memory".into()),
        _ => usage(),
    };
    let options = Options {
        paths: Paths {
            link: link.clone(),
            mount_dir: PathBuf::from(format!("/run/tandem-local-serve-{}", std::process::id())),
            file_name: tandem_blockdev::file_name("bench", &identity),
        },
        name: "bench".into(),
        fuse_threads,
    };
    let mut local = LocalDevice::publish(device, runtime.handle().clone(), &options)?;
    println!(
        "{} -> {} (direct I/O: {})",
        link.display(),
        local.loop_device().path().display(),
        local.direct_io()
    );
    let mut signal = 0;
    // SAFETY: waits for one of the blocked signals in `set`.
    unsafe { libc::sigwait(&set, &mut signal) };
    println!("{:?}", local.stats());
    local.unpublish()?;
    Ok(())
}
