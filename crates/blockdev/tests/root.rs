//! Root tests: real FUSE mounts, real loop devices, real ext4. Each test runs in a mount
//! namespace of its own thread (its mounts die with it) under a tmpfs, so nothing but
//! loop devices could outlive it — and every test checks that none does.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_blockdev::{Error, LocalDevice, Options, Paths, holders, loopdev};
use tandem_nbd::{BlockDevice, BufResult, DeviceError, DeviceFuture, MemoryDevice};
use tandem_testkit::root_or_skip;

const MIB: usize = 1 << 20;
/// The start of every 4 KiB block of the test file: found again in the device's writes.
const MARKER: &[u8; 16] = b"TANDEM-FLUSH-MRK";
const CHILD_ENV: &str = "TANDEM_BLOCKDEV_CRASH_CHILD";

/// A private mount namespace for the calling thread (and the processes it starts), with
/// a fresh tmpfs at a new directory; returns that directory.
fn private_scratch(test: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    // SAFETY: unshare/mount with valid arguments; CLONE_NEWNS only affects this thread.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare");
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private"
        );
    }
    let dir = std::env::temp_dir().join(format!(
        "tandem-blockdev-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    run("mount", &["-t", "tmpfs", "tmpfs", dir.to_str().unwrap()]);
    dir
}

fn paths(dir: &Path) -> Paths {
    Paths {
        link: dir.join("dev/tandem/r0"),
        mount_dir: dir.join("run/r0.fuse"),
        file_name: tandem_blockdev::file_name("r0", &dir.join("backing/r0.img")),
    }
}

fn options(dir: &Path) -> Options {
    Options {
        paths: paths(dir),
        name: "r0".into(),
        fuse_threads: 2,
    }
}

/// Runs the stale cleanup when dropped: a failing test leaves no loop device behind.
struct Leftovers(Paths);

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Err(e) = tandem_blockdev::clean_stale(&self.0) {
            eprintln!("cleanup after the test: {e}");
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Nothing of `paths` is left: no loop device backed by its file, no FUSE mount, no
/// link, nothing mounted below `dir` but the scratch tmpfs itself.
fn assert_nothing_left(dir: &Path, paths: &Paths) {
    let loops: Vec<_> = loopdev::list()
        .into_iter()
        .filter(|(_, f)| f.to_string_lossy().contains(&paths.file_name))
        .collect();
    assert!(loops.is_empty(), "loop devices left: {loops:?}");
    let mounts: Vec<_> = holders::mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir) && m.mount_point != dir)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(
        std::fs::symlink_metadata(&paths.link).is_err(),
        "{} left",
        paths.link.display()
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write { marker: bool },
    Flush,
}

/// A memory device that logs every completed write (and whether it carried the
/// marker) and every completed flush, in completion order.
struct Recording {
    inner: MemoryDevice,
    log: Mutex<Vec<Op>>,
}

impl Recording {
    fn new(size: usize) -> Self {
        Recording {
            inner: MemoryDevice::new(size),
            log: Mutex::new(Vec::new()),
        }
    }
    fn log(&self) -> Vec<Op> {
        self.log.lock().unwrap().clone()
    }
}

impl BlockDevice for Recording {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn writable(&self) -> bool {
        self.inner.writable()
    }
    fn read(&self, offset: u64, buf: Vec<u8>) -> DeviceFuture<'_, BufResult> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> DeviceFuture<'_, BufResult> {
        let marker = data.chunks(512).any(|c| c.starts_with(MARKER));
        Box::pin(async move {
            let r = self.inner.write(offset, data, fua).await;
            if r.1.is_ok() {
                self.log.lock().unwrap().push(Op::Write { marker });
            }
            r
        })
    }
    fn flush(&self) -> DeviceFuture<'_, Result<(), DeviceError>> {
        Box::pin(async move {
            let r = self.inner.flush().await;
            self.log.lock().unwrap().push(Op::Flush);
            r
        })
    }
    fn trim(&self, o: u64, l: u64, fua: bool) -> DeviceFuture<'_, Result<(), DeviceError>> {
        self.inner.trim(o, l, fua)
    }
    fn write_zeroes(
        &self,
        o: u64,
        l: u64,
        fua: bool,
        may_trim: bool,
    ) -> DeviceFuture<'_, Result<(), DeviceError>> {
        self.inner.write_zeroes(o, l, fua, may_trim)
    }
}

/// ext4 on the published device: an fsync of a file makes the device see the file's
/// data and then a flush, before fsync returns. If the FUSE `fsync` (or the loop
/// device's flush) were dropped on the way, no flush would follow the data.
#[test]
fn an_fsync_on_ext4_reaches_the_device_flush_after_the_data() {
    if !root_or_skip("FUSE, loop devices, mounts") {
        return;
    }
    let dir = private_scratch("fsync");
    let rt = runtime();
    let device = Arc::new(Recording::new(64 * MIB));
    let opts = options(&dir);
    let _leftovers = Leftovers(opts.paths.clone());
    let mut local =
        LocalDevice::publish(device.clone(), rt.handle().clone(), &opts).expect("publish");
    assert!(
        local.direct_io(),
        "the loop device fell back to buffered I/O"
    );
    let link = opts.paths.link.to_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        local.loop_device().path()
    );
    // mkfs discards the whole device first: the loop device's punch-hole must zero.
    run("mkfs.ext4", &["-q", "-F", &link]);
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run("mount", &["-t", "ext4", &link, mnt.to_str().unwrap()]);

    let mut block = vec![0x5au8; 4096];
    block[..16].copy_from_slice(MARKER);
    let mut f = std::fs::File::create(mnt.join("data")).unwrap();
    for _ in 0..64 {
        f.write_all(&block).unwrap();
    }
    let flushes_before = local.stats().flushes;
    let before = device.log().len();
    f.sync_all().unwrap();
    let log = device.log();
    let data_at = log
        .iter()
        .rposition(|op| *op == Op::Write { marker: true })
        .expect("the file's data never reached the device");
    let flush_at = log
        .iter()
        .rposition(|op| *op == Op::Flush)
        .expect("no flush at all");
    eprintln!(
        "ops during fsync: {:?}",
        &log[before..].iter().fold((0, 0), |(w, fl), op| match op {
            Op::Flush => (w, fl + 1),
            _ => (w + 1, fl),
        })
    );
    assert!(
        flush_at > data_at && flush_at >= before,
        "no device flush after the file's data (last data write #{data_at}, last flush #{flush_at}, fsync began at #{before})"
    );
    assert!(
        local.stats().flushes > flushes_before,
        "{:?}",
        local.stats()
    );

    // Demoting a mounted device is refused, naming the mount point; nothing changes.
    let err = local.unpublish().unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("mounted at {}", mnt.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        local.loop_device().path()
    );
    drop(f);
    run("umount", &[mnt.to_str().unwrap()]);
    // The file system survived on the device: fsck finds it clean.
    run("e2fsck", &["-f", "-n", &link]);
    local.unpublish().expect("unpublish");
    assert_nothing_left(&dir, &opts.paths);
}

/// A process holding the device open is named; after it exits the device goes.
#[test]
fn a_process_holding_the_device_is_named() {
    if !root_or_skip("FUSE, loop devices, mounts") {
        return;
    }
    let dir = private_scratch("holder");
    let rt = runtime();
    let opts = options(&dir);
    let _leftovers = Leftovers(opts.paths.clone());
    let mut local = LocalDevice::publish(
        Arc::new(MemoryDevice::new(8 * MIB)),
        rt.handle().clone(),
        &opts,
    )
    .expect("publish");
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!(
                "exec 3<>{}; echo ready; exec sleep 60",
                opts.paths.link.display()
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    // `exec sleep` keeps the pid and the descriptor; wait for the new command name.
    let comm = format!("/proc/{}/comm", child.id());
    for _ in 0..200 {
        if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = local.unpublish().unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("open in process {} (sleep)", child.id())),
        "{err}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    local.unpublish().expect("unpublish");
    assert_nothing_left(&dir, &opts.paths);
}

/// Writes and reads through the loop device land on the device byte for byte,
/// unaligned offsets of the FUSE file included (through the loop they never are).
#[test]
fn bytes_written_to_the_device_path_reach_the_device() {
    if !root_or_skip("FUSE, loop devices, mounts") {
        return;
    }
    let dir = private_scratch("bytes");
    let rt = runtime();
    let device = Arc::new(MemoryDevice::new(8 * MIB));
    let opts = options(&dir);
    let _leftovers = Leftovers(opts.paths.clone());
    let mut local =
        LocalDevice::publish(device.clone(), rt.handle().clone(), &opts).expect("publish");
    let pattern: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8).collect();
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&opts.paths.link)
            .unwrap();
        // O_DIRECT wants an aligned buffer.
        let mut aligned = vec![0u8; MIB + 4096];
        let off = aligned.as_ptr().align_offset(4096);
        aligned[off..off + MIB].copy_from_slice(&pattern);
        std::os::unix::fs::FileExt::write_all_at(&f, &aligned[off..off + MIB], 3 * MIB as u64)
            .unwrap();
        f.flush().unwrap();
    }
    let snap = device.snapshot();
    assert_eq!(&snap[3 * MIB..4 * MIB], &pattern[..]);
    // Read back through the device path (buffered, through the loop device).
    let back = std::fs::read(&opts.paths.link).unwrap();
    assert_eq!(back.len(), 8 * MIB);
    assert_eq!(&back[3 * MIB..4 * MIB], &pattern[..]);
    // The FUSE file itself, at an odd offset.
    let mut odd = [0u8; 100];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(opts.paths.file()).unwrap(),
        &mut odd,
        3 * MIB as u64 + 13,
    )
    .unwrap();
    assert_eq!(&odd[..], &pattern[13..113]);
    assert!(local.stats().written_bytes >= MIB as u64);
    local.unpublish().expect("unpublish");
    assert_nothing_left(&dir, &opts.paths);
}

/// A publisher killed with SIGKILL (ext4 mounted on its device, the FUSE daemon gone
/// with it) leaves a loop device, a dead FUSE mount, a file system on a dead device and
/// a link; the stale cleanup removes all of them, and the device can be published again.
#[test]
fn the_stale_cleanup_removes_what_a_killed_publisher_left() {
    if !root_or_skip("FUSE, loop devices, mounts") {
        return;
    }
    let dir = private_scratch("crash");
    let opts = options(&dir);
    let _leftovers = Leftovers(opts.paths.clone());
    // The child shares this thread's mount namespace (it is forked from this thread).
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_publishes_mounts_and_waits",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .spawn()
        .unwrap();
    let ready = dir.join("ready");
    for _ in 0..600 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready.exists(), "the child never published");
    // SAFETY: kill by the pid of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();

    let mnt = dir.join("mnt");
    let stale_loops: Vec<_> = loopdev::list()
        .into_iter()
        .filter(|(_, f)| f.to_string_lossy().contains(&opts.paths.file_name))
        .collect();
    assert_eq!(stale_loops.len(), 1, "{stale_loops:?}");
    let mounts = holders::mounts();
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_point == opts.paths.mount_dir && m.fstype == "fuse.tandem")
    );
    assert!(mounts.iter().any(|m| m.mount_point == mnt));

    let report = tandem_blockdev::clean_stale(&opts.paths).expect("clean");
    eprintln!("{report:?}");
    assert_eq!(report.aborted, vec![opts.paths.mount_dir.clone()]);
    assert!(report.unmounted.contains(&mnt), "{report:?}");
    assert!(
        report.unmounted.contains(&opts.paths.mount_dir),
        "{report:?}"
    );
    assert_eq!(report.detached, vec![stale_loops[0].0.path()]);
    assert_eq!(report.link_removed, Some(opts.paths.link.clone()));
    assert_nothing_left(&dir, &opts.paths);
    // A second cleanup finds nothing.
    assert!(
        tandem_blockdev::clean_stale(&opts.paths)
            .unwrap()
            .is_empty()
    );
    // And the device publishes again at the same place.
    let rt = runtime();
    let mut again = LocalDevice::publish(
        Arc::new(MemoryDevice::new(8 * MIB)),
        rt.handle().clone(),
        &opts,
    )
    .expect("publish again");
    again.unpublish().unwrap();
    assert_nothing_left(&dir, &opts.paths);
}

/// The child of the crash test (does nothing unless started by it).
#[test]
#[ignore = "run by the_stale_cleanup_removes_what_a_killed_publisher_left"]
fn crash_child_publishes_mounts_and_waits() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let rt = runtime();
    let opts = options(&dir);
    let _leftovers = Leftovers(opts.paths.clone());
    let local = LocalDevice::publish(
        Arc::new(MemoryDevice::new(32 * MIB)),
        rt.handle().clone(),
        &opts,
    )
    .expect("publish");
    let link = opts.paths.link.to_str().unwrap();
    run("mkfs.ext4", &["-q", "-F", "-E", "nodiscard", link]);
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run("mount", &["-t", "ext4", link, mnt.to_str().unwrap()]);
    std::fs::write(mnt.join("hello"), "written before the crash").unwrap();
    std::fs::write(
        dir.join("ready"),
        local.loop_device().path().to_str().unwrap(),
    )
    .unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
