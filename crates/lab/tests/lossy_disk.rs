//! Lossy disks, for real: a FUSE layer per host that forgets unflushed writes when the
//! host loses power. Writers run inside lab hosts (Python, with and without fsync);
//! the test reads what survived from outside. Needs root (`tandem_testkit::root_or_skip`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tandem_lab::{HostSpec, Lab, NetSpec, Topology};

use tandem_testkit::root_or_skip;

/// Host `a` with a lossy disk whose cache may hold `cache_mib`, and host `b` without
/// one, on one network; no private directories (the machine's tree stays untouched).
fn topology(cache_mib: u64) -> Topology {
    let host = |n: &str| HostSpec {
        private_dirs: vec![],
        ..HostSpec::new(n)
    };
    let mut a = host("a").with_lossy_disk();
    a.disk_cache_mib = cache_mib;
    Topology {
        hosts: vec![a, host("b")],
        nets: vec![NetSpec {
            name: "lan".into(),
            subnet: "10.78.1.0/24".into(),
            hosts: BTreeMap::from([
                ("a".to_string(), Ipv4Addr::new(10, 78, 1, 1)),
                ("b".to_string(), Ipv4Addr::new(10, 78, 1, 2)),
            ]),
        }],
    }
}

fn lossy_lab() -> Lab {
    Lab::up_auto(topology(1024)).expect("lab up")
}

/// Runs a Python program in `host`, with the disk directory of `a` as `D`; returns
/// its stdout, or panics with its stderr.
fn py(lab: &Lab, host: &str, program: &str) -> String {
    let dir = lab.host_disk_dir("a").unwrap();
    let prelude = "import os, sys, mmap, errno\nD = sys.argv[1]\n\
        def put(name, data, sync, flags=0):\n    \
            fd = os.open(os.path.join(D, name), os.O_CREAT | os.O_WRONLY | os.O_TRUNC | flags, 0o644)\n    \
            os.write(fd, data)\n    \
            if sync: os.fsync(fd)\n    \
            os.close(fd)\n\
        def get(name):\n    \
            with open(os.path.join(D, name), 'rb') as f: return f.read()\n";
    let text = format!("{prelude}{program}");
    let out = lab
        .run(host, &["python3", "-c", &text, dir.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("python in {host}: {e}\n{program}"));
    out.trim().to_string()
}

/// A file of `a`'s lossy disk as the machine sees it (from outside every host).
fn outside(lab: &Lab, name: &str) -> Vec<u8> {
    let p = lab.host_disk_dir("a").unwrap().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn exists_outside(lab: &Lab, name: &str) -> bool {
    lab.host_disk_dir("a")
        .unwrap()
        .join(name)
        .symlink_metadata()
        .is_ok()
}

#[test]
fn an_unflushed_write_is_gone_after_power_off_and_a_flushed_one_survives() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let mut lab = lossy_lab();
    py(
        &lab,
        "a",
        "put('flushed', b'kept', True)\n\
         put('unflushed', b'lost', False)\n\
         fd = os.open(D + '/flushed', os.O_WRONLY | os.O_APPEND); os.write(fd, b'+lost'); os.close(fd)\n\
         fd = os.open(D + '/datasync', os.O_CREAT | os.O_WRONLY, 0o644)\n\
         os.write(fd, b'fdatasync counts'); os.fdatasync(fd); os.close(fd)\n\
         put('osync', b'O_SYNC counts', False, os.O_SYNC)\n",
    );
    assert_eq!(outside(&lab, "flushed"), b"kept+lost");

    lab.power_off("a").unwrap();

    assert_eq!(
        outside(&lab, "flushed"),
        b"kept",
        "the unflushed append survived"
    );
    assert_eq!(outside(&lab, "unflushed"), b"", "unflushed data survived");
    assert!(
        exists_outside(&lab, "unflushed"),
        "a created name is durable at once"
    );
    assert_eq!(outside(&lab, "datasync"), b"fdatasync counts");
    assert_eq!(outside(&lab, "osync"), b"O_SYNC counts");
    lab.power_on("a").unwrap();
    assert_eq!(
        py(
            &lab,
            "a",
            "print(get('flushed').decode(), len(get('unflushed')))"
        ),
        "kept 0"
    );
    // Writes after power-on are cached again, and lost again: the truncation (O_TRUNC)
    // and the new contents both.
    py(&lab, "a", "put('flushed', b'second boot', False)");
    lab.power_off("a").unwrap();
    assert_eq!(outside(&lab, "flushed"), b"kept");
}

#[test]
fn reads_see_unflushed_writes_from_the_host_other_hosts_and_outside() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let lab = lossy_lab();
    let got = py(
        &lab,
        "a",
        "put('f', b'0123456789' * 1000, True)\n\
         fd = os.open(D + '/f', os.O_RDWR)\n\
         os.pwrite(fd, b'ABC', 4094)\n\
         os.pwrite(fd, b'tail', 20000)\n\
         print(os.pread(fd, 7, 4092), os.fstat(fd).st_size, os.pread(fd, 4, 20000))\n",
    );
    assert_eq!(got, "b'23ABC78' 20004 b'tail'");
    let seen = outside(&lab, "f");
    assert_eq!(seen.len(), 20_004);
    assert_eq!(&seen[4092..4099], b"23ABC78");
    assert!(
        seen[10_000..20_000].iter().all(|&b| b == 0),
        "the gap reads as zeros"
    );
    // Host b sees a's disk at the same path (the machine's tree), with the same cache.
    let path = lab.host_disk_dir("a").unwrap().join("f");
    let b_view = lab.run("b", &["md5sum", path.to_str().unwrap()]).unwrap();
    let here = Command::new("md5sum").arg(&path).output().unwrap();
    assert_eq!(
        b_view.split_whitespace().next(),
        String::from_utf8_lossy(&here.stdout)
            .split_whitespace()
            .next()
    );
}

#[test]
fn o_direct_writes_are_lost_unless_fsynced() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let mut lab = lossy_lab();
    // O_DIRECT promises no durability: the drive's cache (here, the layer's) may hold it.
    let got = py(
        &lab,
        "a",
        "for n in ('direct', 'direct_synced'): put(n, b'a' * 16384, True)\n\
         buf = mmap.mmap(-1, 4096); buf.write(b'b' * 4096)\n\
         back = mmap.mmap(-1, 4096)\n\
         fd = os.open(D + '/direct', os.O_RDWR | os.O_DIRECT)\n\
         os.pwrite(fd, buf, 4096); os.preadv(fd, [back], 4096); os.close(fd)\n\
         fd = os.open(D + '/direct_synced', os.O_RDWR | os.O_DIRECT)\n\
         os.pwrite(fd, buf, 8192); os.fsync(fd); os.close(fd)\n\
         print(back[:4])\n",
    );
    assert_eq!(got, "b'bbbb'", "an O_DIRECT read sees the O_DIRECT write");
    lab.power_off("a").unwrap();
    assert_eq!(outside(&lab, "direct"), vec![b'a'; 16384]);
    let synced = outside(&lab, "direct_synced");
    assert_eq!(&synced[..8192], &[b'a'; 8192][..]);
    assert_eq!(&synced[8192..12288], &[b'b'; 4096][..]);
    assert_eq!(&synced[12288..], &[b'a'; 4096][..]);
}

#[test]
fn size_changes_are_undone_unless_fsynced() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let mut lab = lossy_lab();
    let sizes = py(
        &lab,
        "a",
        "for n in ('grow', 'shrink', 'regrow', 'alloc'): put(n, b'x' * 10000, True)\n\
         os.truncate(D + '/grow', 1 << 20)\n\
         fd = os.open(D + '/grow', os.O_WRONLY); os.pwrite(fd, b'y', 2 << 20); os.close(fd)\n\
         os.truncate(D + '/shrink', 100)\n\
         os.truncate(D + '/regrow', 100); os.truncate(D + '/regrow', 5000)\n\
         fd = os.open(D + '/alloc', os.O_RDWR); os.posix_fallocate(fd, 0, 1 << 20); os.close(fd)\n\
         put('synced_growth', b'x' * 100, True)\n\
         fd = os.open(D + '/synced_growth', os.O_RDWR); os.ftruncate(fd, 50000); os.fsync(fd); os.close(fd)\n\
         r = get('regrow')\n\
         print([os.stat(D + '/' + n).st_size for n in ('grow', 'shrink', 'regrow', 'alloc')],\n\
               r[:100] == b'x' * 100 and r[100:] == bytes(4900))\n",
    );
    assert_eq!(
        sizes, "[2097153, 100, 5000, 1048576] True",
        "a shrink then a growth reads zeros, not the old bytes"
    );
    lab.power_off("a").unwrap();
    for n in ["grow", "shrink", "regrow", "alloc"] {
        assert_eq!(
            outside(&lab, n),
            vec![b'x'; 10_000],
            "{n} kept an unsynced size change"
        );
    }
    let g = outside(&lab, "synced_growth");
    assert_eq!(g.len(), 50_000);
    assert!(g[..100].iter().all(|&b| b == b'x') && g[100..].iter().all(|&b| b == 0));
}

#[test]
fn names_are_durable_at_once_but_their_data_is_not() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let mut lab = lossy_lab();
    py(
        &lab,
        "a",
        "os.mkdir(D + '/dir')\n\
         put('dir/f', b'data', False)\n\
         os.rename(D + '/dir/f', D + '/dir/g')\n\
         os.symlink('g', D + '/dir/link')\n\
         os.link(D + '/dir/g', D + '/dir/h')\n\
         put('gone', b'x', True); os.unlink(D + '/gone')\n\
         put('config.tmp', b'new contents', False)\n\
         os.rename(D + '/config.tmp', D + '/config')\n\
         put('timed', b'x', False); os.utime(D + '/timed', (1e9, 1e9))\n\
         fd = os.open(D + '/timed', os.O_RDONLY); os.fsync(fd); os.close(fd)\n",
    );
    lab.power_off("a").unwrap();
    let dir = lab.host_disk_dir("a").unwrap();
    assert!(dir.join("dir").is_dir());
    assert!(!exists_outside(&lab, "dir/f"));
    assert_eq!(outside(&lab, "dir/g"), b"", "the name survives, empty");
    assert_eq!(
        std::fs::read_link(dir.join("dir/link")).unwrap(),
        Path::new("g")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(dir.join("dir/h")).unwrap().nlink(), 2);
    assert!(!exists_outside(&lab, "gone"));
    // Write, rename over, no fsync: the classic way to lose a file's contents.
    assert_eq!(outside(&lab, "config"), b"");
    // Times set explicitly (cp -a, touch -d) survive the flush's writes.
    assert_eq!(outside(&lab, "timed"), b"x");
    let mtime = std::fs::metadata(dir.join("timed")).unwrap().mtime();
    assert_eq!(mtime, 1_000_000_000);
}

#[test]
fn keep_cache_power_off_keeps_unflushed_writes() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let mut lab = lossy_lab();
    py(&lab, "a", "put('f', b'survives', False)");
    lab.power_off_keep_cache("a").unwrap();
    assert_eq!(outside(&lab, "f"), b"survives");
    assert_eq!(lab.disk_status("a").unwrap().cached_bytes, 0);
    // Written down, not merely kept: a real power cut later does not take it.
    lab.power_on("a").unwrap();
    lab.power_off("a").unwrap();
    assert_eq!(outside(&lab, "f"), b"survives");
}

#[test]
fn many_concurrent_writers_keep_exactly_what_they_flushed() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    const WRITERS: usize = 8;
    let mut lab = lossy_lab();
    py(&lab, "a", "put('shared', b'', True)");
    let dir = lab.host_disk_dir("a").unwrap();
    // Each writer: 1 MiB of its letter, fsync; its 64 KiB slot of a shared file, no
    // fsync; then unflushed writes for as long as the power lasts.
    let writer = "import os, sys\n\
        D, i = sys.argv[1], int(sys.argv[2])\n\
        chunk = bytes([65 + i]) * 65536\n\
        fd = os.open(f'{D}/w{i}', os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)\n\
        for _ in range(16): os.write(fd, chunk)\n\
        os.fsync(fd)\n\
        sh = os.open(f'{D}/shared', os.O_WRONLY); os.pwrite(sh, chunk, i * 65536)\n\
        print('synced', flush=True)\n\
        n = 0\n\
        while True:\n    \
            os.pwrite(fd, b'z' * 65536, (1 << 20) + (n % 64) * 65536); n += 1\n";
    let mut procs = Vec::new();
    for i in 0..WRITERS {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", writer, dir.to_str().unwrap(), &i.to_string()])
            .stdout(Stdio::piped());
        procs.push(lab.spawn("a", cmd).unwrap());
    }
    for p in &mut procs {
        let mut line = String::new();
        BufReader::new(p.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "synced", "writer {} failed", p.pid());
    }
    let shared = outside(&lab, "shared");
    assert_eq!(
        shared.len(),
        WRITERS * 65536,
        "every slot is visible before the cut"
    );
    // Cut while the writers are mid-stream.
    std::thread::sleep(Duration::from_millis(200));
    lab.power_off("a").unwrap();
    for i in 0..WRITERS {
        let got = outside(&lab, &format!("w{i}"));
        assert_eq!(got.len(), 1 << 20, "writer {i}: size");
        assert!(
            got.iter().all(|&b| b == b'A' + i as u8),
            "writer {i}: not exactly what it flushed"
        );
    }
    assert_eq!(
        outside(&lab, "shared"),
        b"",
        "nobody flushed the shared file"
    );
    assert_eq!(lab.disk_status("a").unwrap().cached_bytes, 0);
}

#[test]
fn the_cache_bound_refuses_writes_with_enospc() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let lab = Lab::up_auto(topology(1)).unwrap();
    let got = py(
        &lab,
        "a",
        "fd = os.open(D + '/big', os.O_CREAT | os.O_WRONLY, 0o644)\n\
         os.write(fd, b'a' * (512 * 1024))\n\
         try:\n    os.write(fd, b'b' * (1 << 20)); print('accepted')\n\
         except OSError as e: print('refused', errno.errorcode[e.errno])\n\
         os.fsync(fd)\n\
         print(os.write(fd, b'c' * (1 << 20)))\n",
    );
    assert_eq!(got, "refused ENOSPC\n1048576", "a flush frees the cache");
    let st = lab.disk_status("a").unwrap();
    assert_eq!(st.bound_bytes, 1 << 20);
    assert_eq!(st.refused_writes, 1);
    assert_eq!(st.cached_bytes, 1 << 20);
}

#[test]
fn status_counts_unflushed_data_and_lab_sync_writes_it_down() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let mut lab = lossy_lab();
    py(
        &lab,
        "a",
        "put('two_pages', b'x' * 5000, False)\nput('one_page', b'y', False)\nos.system('sync')",
    );
    let st = lab.disk_status("a").unwrap();
    // sync(1) in a host does not reach a FUSE server (the kernel sends FUSE_SYNCFS
    // only to virtiofs): everything is still unflushed.
    assert_eq!((st.cached_bytes, st.dirty_files), (3 * 4096, 2), "{st:?}");
    let status = lab.status().unwrap();
    let a = status.hosts.iter().find(|h| h.name == "a").unwrap();
    assert_eq!(a.disk.as_ref().unwrap().cached_bytes, 3 * 4096);
    assert!(
        status
            .hosts
            .iter()
            .find(|h| h.name == "b")
            .unwrap()
            .disk
            .is_none()
    );
    assert!(matches!(
        lab.host_disk_dir("b"),
        Err(tandem_lab::LabError::NoDisk { .. })
    ));

    let written = lab.sync_disk("a").unwrap();
    assert_eq!((written.bytes, written.files), (3 * 4096, 2));
    assert_eq!(lab.disk_status("a").unwrap().cached_bytes, 0);
    lab.power_off("a").unwrap();
    assert_eq!(outside(&lab, "two_pages"), vec![b'x'; 5000]);
    assert_eq!(outside(&lab, "one_page"), b"y");
}

fn fuse_mounts_of(name: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(name) && l.contains(" - fuse"))
        .map(str::to_string)
        .collect()
}

#[test]
fn teardown_unmounts_even_with_a_file_held_open() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let lab = lossy_lab();
    let name = lab.name().to_string();
    py(&lab, "a", "put('f', b'unflushed', False)");
    assert_eq!(fuse_mounts_of(&name).len(), 1);
    // A busy mount: the connection would outlive a lazy unmount; teardown aborts it.
    let held = std::fs::File::open(lab.host_disk_dir("a").unwrap().join("f")).unwrap();
    let report = lab.down().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(
        fuse_mounts_of(&name).is_empty(),
        "{:?}",
        fuse_mounts_of(&name)
    );
    assert!(!Path::new(tandem_lab::DATA_ROOT).join(&name).exists());
    // The held file fails at once instead of hanging.
    let mut buf = [0u8; 4];
    assert!(std::os::unix::fs::FileExt::read_at(&held, &mut buf, 0).is_err());
}

/// Not a test on its own: builds a lab with a lossy disk, writes to it, says so, and
/// hangs, for the tests below to kill or stop it.
#[test]
#[ignore]
fn helper_lossy_lab_then_hang() {
    let Ok(name) = std::env::var("TANDEM_LAB_LOSSY_HELPER") else {
        return;
    };
    let lab = Lab::up(&name, topology(64)).unwrap();
    py(
        &lab,
        "a",
        "put('f', b'flushed', True)\nput('g', b'unflushed', False)",
    );
    std::fs::write(lab.data_dir().join("ready"), b"").unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Starts the helper above as a child process and waits until its lab is up.
fn start_helper(name: &str) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_lossy_lab_then_hang"])
        .env("TANDEM_LAB_LOSSY_HELPER", name)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ready = Path::new(tandem_lab::DATA_ROOT).join(name).join("ready");
    let mut waited_ms = 0;
    while !ready.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the helper died early");
        assert!(waited_ms < 60_000, "the helper's lab never came up");
        std::thread::sleep(Duration::from_millis(20));
        waited_ms += 20;
    }
    child
}

/// Runs `f` in a thread; panics if it takes longer than `secs` (a hang).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} hung for more than {secs} s"))
}

#[test]
fn a_killed_lab_owner_leaves_no_hung_mount() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let name = format!("pk{:x}", std::process::id());
    let mut child = start_helper(&name);
    child.kill().unwrap();
    child.wait().unwrap();
    // The server died with its process: the kernel fails every access at once.
    let f = Path::new(tandem_lab::DATA_ROOT)
        .join(&name)
        .join("disks/a/f");
    let read = within(10, "a read of a dead lossy disk", move || std::fs::read(f));
    assert!(read.is_err(), "{read:?}");
    let report = within(60, "down", {
        let name = name.clone();
        move || tandem_lab::down(&name).unwrap()
    });
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(fuse_mounts_of(&name).is_empty());
    assert!(!Path::new(tandem_lab::DATA_ROOT).join(&name).exists());
}

#[test]
fn a_stuck_disk_server_cannot_hang_teardown() {
    if !root_or_skip("namespaces, cgroups, mounts") {
        return;
    }
    let name = format!("ps{:x}", std::process::id());
    let mut child = start_helper(&name);
    // A server that answers nothing (stopped): any access would wait for it forever.
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) }, 0);
    let report = within(60, "down with a stopped disk server", {
        let name = name.clone();
        move || tandem_lab::down(&name).unwrap()
    });
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(fuse_mounts_of(&name).is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
}
