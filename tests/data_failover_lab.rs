//! Groups with data, for real: r0 (protocol C) bootstrapped outside any group with ext4
//! made on ox1's `/dev/tandem/r0`, then the group `data` — the disk, then the file
//! system on its local device — run by two `tandem daemon`s fenced through the lab's
//! power switch. What a file system on a replicated disk must keep across a failover:
//! an fsync'ed write across a power-off of the primary, and buffered writes across a
//! clean move or stop, whose unmount (killing what holds the mount) comes before the
//! demotion.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::disks::{Cluster, Heartbeats, as_is, disk_group};
use common::labconfig::{self, LabConfig};
use serde_json::Value;
use tandem_testkit::root_or_skip;

const DEV: &str = "/dev/tandem/r0";

/// The group: the disk, then ext4 on its local device at `DIR/mnt`.
fn fs_group(c: &mut LabConfig) {
    let mnt = c.dir().join("mnt");
    disk_group(c);
    c.group_mut("data").resources.push(labconfig::filesystem(
        "fs",
        DEV,
        mnt.to_str().unwrap(),
        "ext4",
    ));
}

/// The cluster with the group running on ox1 and ext4 mounted there, and the mount
/// point: `mnt` in the lab's data dir, the same path in every host (each mounts it in
/// its own namespace; the lab's teardown removes it).
fn cluster_with_fs() -> (Cluster, tandem_lab::PowerSwitch, String) {
    let mkfs = |c: &Cluster| {
        c.lab
            .run("ox1", &["mkfs.ext4", "-q", "-F", DEV])
            .expect("mkfs.ext4 on ox1's /dev/tandem/r0");
    };
    let (c, switch) = Cluster::fenced_with_group(
        32,
        as_is,
        Heartbeats::HbAndLan,
        Duration::from_secs(1),
        mkfs,
        fs_group,
    );
    let mnt = c.lab.data_dir().join("mnt").display().to_string();
    (c, switch, mnt)
}

/// A pattern of `len` bytes that differs from zeroes and from any shifted copy of
/// itself (a deterministic generator: the test is reproducible).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn status(c: &Cluster, node: &str) -> Value {
    serde_json::from_str(&c.tandem(node, &["status", "--json"])).unwrap()
}

fn mounted_in(c: &Cluster, node: &str, mnt: &str) -> bool {
    c.lab
        .run(node, &["cat", "/proc/self/mountinfo"])
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(mnt))
}

/// Writes `bytes` into `path` inside `node` through a file of the lab's data dir
/// (`cp`: buffered, no fsync) or `dd … conv=fsync` (fsync'ed before it exits).
fn write_in(c: &Cluster, node: &str, path: &str, bytes: &[u8], fsync: bool) {
    let src: PathBuf = c.lab.data_dir().join(format!("src-{}", bytes.len()));
    std::fs::write(&src, bytes).unwrap();
    let src = src.to_str().unwrap();
    let argv: Vec<String> = if fsync {
        [
            "dd",
            &format!("if={src}"),
            &format!("of={path}"),
            "bs=64k",
            "conv=fsync",
            "status=none",
        ]
        .map(String::from)
        .to_vec()
    } else {
        ["cp", src, path].map(String::from).to_vec()
    };
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    c.lab.run(node, &argv).unwrap();
}

#[test]
fn an_fsynced_write_on_ext4_survives_a_power_off_of_the_primary() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let (mut c, _switch, mnt) = cluster_with_fs();
    assert!(
        mounted_in(&c, "ox1", &mnt),
        "the group mounted nothing on ox1"
    );

    // 1 MiB written and fsync'ed inside ox1; the power goes the moment dd returns.
    let data = pattern(1 << 20, 7);
    write_in(&c, "ox1", &format!("{mnt}/fsynced"), &data, true);
    c.lab.power_off("ox1").unwrap();
    c.daemons.retain(|(n, _)| n != "ox1");

    // ox2 fences ox1, promotes r0, mounts the file system (replaying its journal): the
    // file is there, whole.
    c.wait_group_on("ox2", "ox2", 60);
    let st = status(&c, "ox2");
    let fenced = st["fencing"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["target"] == "ox1" && r["outcome"]["kind"] == "success");
    assert!(
        fenced,
        "ox2 took over without fencing ox1: {}",
        st["fencing"]
    );
    assert!(mounted_in(&c, "ox2", &mnt));
    let got = c.lab.read_file("ox2", &format!("{mnt}/fsynced")).unwrap();
    assert_eq!(got.len(), data.len(), "the fsync'ed file's size on ox2");
    assert!(got == data, "the fsync'ed file differs on ox2");
}

#[test]
fn a_clean_move_and_a_clean_stop_unmount_before_the_disk_demotes() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let (mut c, _switch, mnt) = cluster_with_fs();

    // On ox1: buffered writes (no fsync), a process with its cwd on the mount and one
    // holding a file of it open — an unmount must kill both first.
    let moved = pattern(512 << 10, 11);
    write_in(&c, "ox1", &format!("{mnt}/moved"), &moved, false);
    let holder = |node: &str, script: String| {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", &script]);
        c.lab.spawn(node, cmd).unwrap()
    };
    let cwd_holder = holder("ox1", format!("cd {mnt} && exec sleep 600"));
    let fd_holder = holder("ox1", format!("exec 3>>{mnt}/held; exec sleep 600"));
    std::thread::sleep(Duration::from_millis(300));
    for p in [&cwd_holder, &fd_holder] {
        assert!(p.try_wait().unwrap().is_none(), "a holder did not start");
    }

    // The move: ox1 hands the group over.
    c.tandem("ox1", &["standby"]);
    c.wait_group_on("ox2", "ox2", 60);
    for (what, p) in [("cwd", &cwd_holder), ("open file", &fd_holder)] {
        assert!(
            p.wait_timeout(Duration::from_secs(10)).unwrap().is_some(),
            "the {what} holder on ox1 outlived the unmount"
        );
    }
    assert!(!mounted_in(&c, "ox1", &mnt), "still mounted on ox1");
    assert!(
        c.lab.run("ox1", &["test", "-e", DEV]).is_err(),
        "{DEV} left on ox1"
    );
    assert_stopped_in_order(&c, "ox1");
    let st = status(&c, "ox2");
    assert_eq!(
        st["fencing"]["history"].as_array().map_or(0, Vec::len),
        0,
        "a clean move fenced: {}",
        st["fencing"]
    );
    assert!(c.lab.read_file("ox2", &format!("{mnt}/moved")).unwrap() == moved);

    // A clean stop of ox2's agent (SIGTERM) with a holder on ox2: the group comes
    // back to ox1, with what ox2 wrote (buffered) before the stop.
    let back = pattern(256 << 10, 13);
    write_in(&c, "ox2", &format!("{mnt}/back"), &back, false);
    let ox2_holder = holder("ox2", format!("cd {mnt} && exec sleep 600"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ox2_holder.try_wait().unwrap().is_none(),
        "the holder did not start"
    );
    c.stop_daemon("ox2");
    assert!(
        ox2_holder
            .wait_timeout(Duration::from_secs(10))
            .unwrap()
            .is_some(),
        "the holder on ox2 outlived the daemon's clean stop"
    );
    assert!(!mounted_in(&c, "ox2", &mnt), "still mounted on ox2");
    c.wait_group_on("ox1", "ox1", 60);
    assert!(c.lab.read_file("ox1", &format!("{mnt}/moved")).unwrap() == moved);
    assert!(c.lab.read_file("ox1", &format!("{mnt}/back")).unwrap() == back);
    let log = c.log("ox2");
    assert!(
        !log.contains("is in use"),
        "a demotion was refused for a busy device on ox2:\n{log}"
    );
}

/// `node`'s last stop of `fs` came before its last stop of `r0`, and both succeeded.
fn assert_stopped_in_order(c: &Cluster, node: &str) {
    let st = status(c, node);
    let actions = st["actions"].as_array().unwrap();
    let last_stop = |res: &str| {
        actions
            .iter()
            .rposition(|a| a["resource"] == res && a["action"] == "stop")
            .unwrap_or_else(|| panic!("no stop of {res} on {node}: {actions:?}"))
    };
    let (fs, disk) = (last_stop("fs"), last_stop("r0"));
    assert!(fs < disk, "r0 stopped before fs on {node}: {actions:?}");
    for i in [fs, disk] {
        assert_eq!(actions[i]["ok"], true, "{}", actions[i]);
    }
}
