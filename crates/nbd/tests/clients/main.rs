//! Real NBD clients (qemu-io, nbdinfo, nbdcopy, fio) against tandem-nbd.

#[path = "../common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;

use common::{Counting, Harness, RawClient, backing_file, have_tool, pseudo_random, run};
use tandem_nbd::proto::{cmd, errno, tflag};
use tandem_nbd::{BlockDevice, FileDevice, MemoryDevice};

const MIB: u64 = 1 << 20;

fn file_export(size: u64) -> (tempfile::TempDir, std::path::PathBuf, FileDevice) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    backing_file(&path, size);
    let dev = FileDevice::open(&path, false).unwrap();
    (dir, path, dev)
}

fn qemu_io(uri: &str, cmds: &[&str]) -> std::process::Output {
    qemu_io_opts(&[], uri, cmds)
}

fn qemu_io_opts(opts: &[&str], uri: &str, cmds: &[&str]) -> std::process::Output {
    let mut c = Command::new("qemu-io");
    c.args(opts);
    c.args(["-f", "raw", uri]);
    for x in cmds {
        c.args(["-c", x]);
    }
    run(&mut c)
}

fn assert_clean(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for bad in ["failed", "error", "Error", "mismatch"] {
        assert!(
            !stdout.contains(bad) && !stderr.contains(bad),
            "{bad:?} in output:\n{stdout}\n{stderr}"
        );
    }
}

#[test]
fn qemu_io_patterns_zeroes_discard_flush_and_fua() {
    if !have_tool("qemu-io") {
        return;
    }
    let (_d, path, dev) = file_export(64 * MIB);
    let dev = Arc::new(Counting::new(dev));
    let h = Harness::start(vec![("vm1", dev.clone() as Arc<dyn BlockDevice>)]);
    let uri = h.uri("vm1");
    let out = qemu_io(
        &uri,
        &[
            "write -P 0xab 0 4M",
            "write -P 0xcd 4M 512",
            "read -P 0xab 0 4M",
            "read -P 0xcd 4M 512",
            "write -z 1M 64k",
            "read -P 0 1M 64k",
            "read -P 0xab 2M 64k",
            "discard 8M 1M",
            "flush",
            "write -f -P 0x5a 16M 64k",
            "read -P 0x5a 16M 64k",
        ],
    );
    assert_clean(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wrote 65536/65536 bytes at offset 16777216")
    );
    // What the client wrote is what the backing file holds.
    let file = std::fs::read(&path).unwrap();
    assert!(file[0..MIB as usize].iter().all(|&b| b == 0xab));
    assert!(
        file[MIB as usize..(MIB + 65536) as usize]
            .iter()
            .all(|&b| b == 0)
    );
    assert!(
        file[(4 * MIB) as usize..(4 * MIB + 512) as usize]
            .iter()
            .all(|&b| b == 0xcd)
    );
    assert!(
        file[(16 * MIB) as usize..(16 * MIB + 65536) as usize]
            .iter()
            .all(|&b| b == 0x5a)
    );
    // FUA and flush reached the device.
    assert!(dev.fua() >= 1, "write -f did not arrive with FUA");
    assert!(dev.flushes() >= 1, "flush did not reach the device");
    let s = h.server.stats();
    assert!(s.trims >= 1 && s.write_zeroes >= 1, "{s:?}");
    assert_eq!(s.rejected_total, 0, "{s:?}");

    // A second connection sees the data (a new qemu-io process).
    assert_clean(&qemu_io(&uri, &["read -P 0xab 3M 1M"]));
    // And a pattern mismatch is detected (the check is not vacuous).
    let bad = qemu_io(&uri, &["read -P 0x00 0 4096"]);
    let text =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(text.contains("Pattern verification failed"), "{text}");
}

#[test]
fn nbdinfo_reports_size_and_capabilities() {
    if !have_tool("nbdinfo") {
        return;
    }
    let (_d, _p, dev) = file_export(48 * MIB);
    let h = Harness::start(vec![("disk0", Arc::new(dev) as Arc<dyn BlockDevice>)]);
    let out = run(Command::new("nbdinfo").args(["--json", &h.uri("disk0")]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nbdinfo json");
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "disk0");
    assert_eq!(e["export-size"], 48 * MIB);
    for cap in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(e[cap], true, "{cap} in {e}");
    }
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["block_size_maximum"], 32 * MIB);
    for cap in ["flush", "fua", "trim", "zero"] {
        let st = Command::new("nbdinfo")
            .args(["--can", cap, &h.uri("disk0")])
            .status()
            .unwrap();
        assert!(st.success(), "nbdinfo --can {cap}");
    }
    let size = run(Command::new("nbdinfo").args(["--size", &h.uri("disk0")]));
    assert_eq!(
        String::from_utf8_lossy(&size.stdout).trim(),
        (48 * MIB).to_string()
    );
    // An unknown export is refused with an error, not a hang or a crash.
    let missing = run(Command::new("nbdinfo").arg(h.uri("nope")));
    assert!(!missing.status.success());
}

#[test]
fn nbdinfo_lists_several_exports_and_serves_each() {
    if !have_tool("nbdinfo") || !have_tool("qemu-io") {
        return;
    }
    let a = Arc::new(MemoryDevice::new(MIB as usize));
    let b = Arc::new(MemoryDevice::new(2 * MIB as usize));
    let h = Harness::start(vec![
        ("alpha", a.clone() as Arc<dyn BlockDevice>),
        ("beta", b.clone() as Arc<dyn BlockDevice>),
    ]);
    let list = run(Command::new("nbdinfo").args([
        "--list",
        "--json",
        &format!("nbd+unix://?socket={}", h.socket.display()),
    ]));
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let names: Vec<&str> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_clean(&qemu_io(&h.uri("beta"), &["write -P 0x42 1M 4096"]));
    assert!(
        b.snapshot()[MIB as usize..MIB as usize + 4096]
            .iter()
            .all(|&x| x == 0x42)
    );
    assert!(a.snapshot().iter().all(|&x| x == 0));
    // The empty export name means the socket's default export (the first one).
    let size = run(Command::new("nbdinfo").args([
        "--size",
        &format!("nbd+unix://?socket={}", h.socket.display()),
    ]));
    assert_eq!(
        String::from_utf8_lossy(&size.stdout).trim(),
        MIB.to_string()
    );
}

#[test]
fn nbdcopy_round_trip_is_byte_identical() {
    if !have_tool("nbdcopy") {
        return;
    }
    let size = 24 * MIB;
    let (_d, _p, dev) = file_export(size);
    let h = Harness::start(vec![("copy", Arc::new(dev) as Arc<dyn BlockDevice>)]);
    let src = h.path("src.bin");
    let data = pseudo_random(size as usize, 42);
    std::fs::write(&src, &data).unwrap();
    let out = run(Command::new("nbdcopy").args([src.to_str().unwrap(), &h.uri("copy")]));
    assert!(out.status.success());
    let dst = h.path("dst.bin");
    let out = run(Command::new("nbdcopy").args([&h.uri("copy"), dst.to_str().unwrap()]));
    assert!(out.status.success());
    let back = std::fs::read(&dst).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "nbdcopy round trip differs");
    // nbdcopy opens several connections (multi-conn is advertised).
    assert!(h.server.stats().connections_accepted >= 2);
}

fn fio(uri: &str, args: &[&str]) -> serde_json::Value {
    let mut c = Command::new("fio");
    c.args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--output-format=json",
        // fio would otherwise leave `local-verify-0-verify.state` in the crate directory.
        "--verify_state_save=0",
    ]);
    c.args(args);
    let out = run(&mut c);
    assert!(out.status.success(), "fio failed");
    // fio prints "connected to NBD server" notes before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').expect("fio json");
    serde_json::from_str(&text[start..]).expect("fio json parse")
}

#[test]
fn fio_nbd_engine_writes_verify_with_crc32c() {
    if !have_tool("fio") {
        return;
    }
    let (_d, _p, dev) = file_export(64 * MIB);
    let h = Harness::start(vec![("fio", Arc::new(dev) as Arc<dyn BlockDevice>)]);
    let uri = h.uri("fio");
    for job in [
        &["--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M"][..],
        &["--rw=write", "--bs=1M", "--iodepth=8", "--size=64M"][..],
        &[
            "--rw=randrw",
            "--bs=64k",
            "--iodepth=4",
            "--size=16M",
            "--offset=16M",
        ][..],
    ] {
        let mut args = job.to_vec();
        args.extend(["--verify=crc32c", "--do_verify=1", "--verify_fatal=1"]);
        let v = fio(&uri, &args);
        let j = &v["jobs"][0];
        assert_eq!(j["error"], 0, "{job:?}: {j}");
        assert!(j["write"]["io_bytes"].as_u64().unwrap() > 0, "{job:?}");
        // Verification reads everything back.
        assert!(j["read"]["io_bytes"].as_u64().unwrap() > 0, "{job:?}");
    }
    assert_eq!(h.server.stats().device_errors, 0);
}

#[test]
fn concurrent_connections_write_disjoint_regions() {
    if !have_tool("qemu-io") {
        return;
    }
    let (_d, path, dev) = file_export(32 * MIB);
    let h = Harness::start(vec![("multi", Arc::new(dev) as Arc<dyn BlockDevice>)]);
    let uri = h.uri("multi");
    let children: Vec<_> = (0..4u64)
        .map(|i| {
            Command::new("qemu-io")
                .args(["-f", "raw", &uri])
                .args(["-c", &format!("write -P {} {}M 4M", 0x10 + i, i * 8)])
                .output()
        })
        .map(|r| r.expect("spawn qemu-io"))
        .collect();
    for c in &children {
        assert!(c.status.success());
    }
    let file = std::fs::read(&path).unwrap();
    for i in 0..4u64 {
        let at = (i * 8 * MIB) as usize;
        assert!(
            file[at..at + 4 * MIB as usize]
                .iter()
                .all(|&b| b == 0x10 + i as u8)
        );
    }
    assert!(h.server.stats().connections_accepted >= 4);
}

#[test]
fn secondary_export_is_read_only_and_refuses_writes() {
    if !have_tool("nbdinfo") || !have_tool("qemu-io") {
        return;
    }
    let (_d, path, dev) = file_export(8 * MIB);
    std::fs::write(&path, vec![0x77u8; 8 * MIB as usize]).unwrap();
    dev.set_writable(false);
    let dev = Arc::new(dev);
    let h = Harness::start(vec![("sec", dev.clone() as Arc<dyn BlockDevice>)]);
    let info = run(Command::new("nbdinfo").args(["--json", &h.uri("sec")]));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["exports"][0]["is_read_only"], true);
    // Reads are served.
    assert_clean(&qemu_io_opts(
        &["-r"],
        &h.uri("sec"),
        &["read -P 0x77 0 1M"],
    ));
    // Writes fail: qemu refuses to open a read-only export read-write ...
    let w = qemu_io(&h.uri("sec"), &["write -P 1 0 4096"]);
    let text = String::from_utf8_lossy(&w.stdout).to_string() + &String::from_utf8_lossy(&w.stderr);
    assert!(
        !w.status.success(),
        "write to a secondary succeeded: {text}"
    );
    assert!(text.contains("Permission denied"), "{text}");
    // ... and the protocol answer to a write that is sent anyway is EPERM.
    let (mut c, _, flags) = RawClient::go(&h.socket, "sec");
    assert_ne!(flags & tflag::READ_ONLY, 0);
    c.request(cmd::WRITE, 0, 1, 0, 512);
    c.send(&[0u8; 512]);
    assert_eq!(c.reply(), (errno::EPERM, 1));
    c.request(cmd::WRITE_ZEROES, 0, 2, 0, 512);
    assert_eq!(c.reply(), (errno::EPERM, 2));
    c.request(cmd::TRIM, 0, 3, 0, 512);
    assert_eq!(c.reply(), (errno::EPERM, 3));
    let file = std::fs::read(&path).unwrap();
    assert!(
        file.iter().all(|&b| b == 0x77),
        "a secondary's data changed"
    );
    assert_eq!(h.server.stats().rejected_read_only, 3);
}

#[test]
fn demotion_mid_connection_turns_writes_into_eperm() {
    let dev = Arc::new(MemoryDevice::new(MIB as usize));
    let h = Harness::start(vec![("p", dev.clone() as Arc<dyn BlockDevice>)]);
    let (mut c, size, flags) = RawClient::go(&h.socket, "p");
    assert_eq!(size, MIB);
    assert_eq!(flags & tflag::READ_ONLY, 0);
    c.request(cmd::WRITE, 0, 1, 0, 4);
    c.send(b"abcd");
    assert_eq!(c.reply(), (0, 1));
    dev.set_writable(false); // primary → secondary
    c.request(cmd::WRITE, 0, 2, 0, 4);
    c.send(b"wxyz");
    assert_eq!(c.reply(), (errno::EPERM, 2));
    c.request(cmd::READ, 0, 3, 0, 4);
    assert_eq!(c.reply(), (0, 3));
    assert_eq!(c.read_n(4), b"abcd");
}

#[test]
fn tcp_listener_serves_qemu_io_and_nbdinfo() {
    if !have_tool("qemu-io") || !have_tool("nbdinfo") {
        return;
    }
    let dev = Arc::new(MemoryDevice::new(4 * MIB as usize));
    let h = Harness::start(vec![("tcpdisk", dev.clone() as Arc<dyn BlockDevice>)]);
    let port = h.listen_tcp("tcpdisk");
    let uri = format!("nbd://127.0.0.1:{port}/tcpdisk");
    assert_clean(&qemu_io(
        &uri,
        &["write -P 0x3c 512k 128k", "read -P 0x3c 512k 128k", "flush"],
    ));
    assert!(
        dev.snapshot()[512 * 1024..640 * 1024]
            .iter()
            .all(|&b| b == 0x3c)
    );
    let size = run(Command::new("nbdinfo").args(["--size", &uri]));
    assert_eq!(
        String::from_utf8_lossy(&size.stdout).trim(),
        (4 * MIB).to_string()
    );
}
