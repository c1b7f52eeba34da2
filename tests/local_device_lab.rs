//! The local block device of a primary (`/dev/tandem/r0`) for real: two `tandem daemon`s
//! in lab hosts ox1 and ox2 replicate r0 (protocol C); ext4 is made, mounted and written
//! inside ox1 on the device the daemon publishes there.

mod common;

use std::path::Path;
use std::time::Duration;

use common::disks::{Cluster, as_is};
use common::wait_for;
use serde_json::Value;
use tandem_testkit::root_or_skip;

const DEV: &str = "/dev/tandem/r0";

/// Loop devices whose backing file serves a backing store in `data_dir` (the lab's):
/// (device, backing file as sysfs shows it).
fn lab_loops(data_dir: &Path) -> Vec<(String, String)> {
    let marker = format!("@{}!", data_dir.display().to_string().replace('/', "!"));
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if b.contains(&marker) {
                out.push((format!("/dev/{name}"), b.trim().to_string()));
            }
        }
    }
    out
}

fn mountinfo(c: &Cluster, node: &str) -> String {
    c.lab.run(node, &["cat", "/proc/self/mountinfo"]).unwrap()
}

fn local_device(c: &Cluster, node: &str) -> Value {
    c.status(node).expect("status")["local_device"].clone()
}

fn exists_in(c: &Cluster, node: &str, path: &str) -> bool {
    c.lab.run(node, &["test", "-e", path]).is_ok()
}

fn kill_daemon(c: &mut Cluster, node: &str) {
    let i = c.daemons.iter().position(|(n, _)| n == node).unwrap();
    let (_, p) = c.daemons.remove(i);
    assert!(p.signal(libc::SIGKILL));
    assert!(p.wait_timeout(Duration::from_secs(10)).unwrap().is_some());
}

/// A local device's FUSE mount in mountinfo (its type field; the lab's lossy disks are
/// `fuse.tandem-lab-disk`).
const LOCAL_FUSE: &str = " - fuse.tandem ";

/// What a crashed publisher leaves is gone once the daemon is back: no loop device of
/// the lab, no FUSE mount, no file system from the old device, no link.
fn assert_clean_after_restart(c: &Cluster, mnt: &Path) {
    assert!(
        lab_loops(&c.lab.data_dir()).is_empty(),
        "{:?}",
        lab_loops(&c.lab.data_dir())
    );
    let mi = mountinfo(c, "ox1");
    assert!(!mi.contains(LOCAL_FUSE), "{mi}");
    assert!(!mi.contains(&mnt.display().to_string()), "{mi}");
    assert!(!exists_in(c, "ox1", DEV));
    assert!(local_device(c, "ox1").is_null());
}

#[test]
fn the_local_device_exists_exactly_while_primary_and_outlives_no_agent() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let mut c = Cluster::new(64, as_is, true);
    let data_dir = c.lab.data_dir();
    c.start_daemon("ox1");
    c.start_daemon("ox2");
    for node in ["ox1", "ox2"] {
        c.wait_state(node, "connected", 30, |s| s["connection"] == "connected");
        assert!(!exists_in(&c, node, DEV), "{node} has {DEV} as secondary");
    }

    // Promoted by the operator: the device appears on ox1, and only there.
    c.tandem("ox1", &["disk", "primary", "--force", "r0"]);
    c.wait_in_sync(60);
    let local = local_device(&c, "ox1");
    assert_eq!(local["path"], DEV, "{local}");
    assert_eq!(local["direct_io"], true, "{local}");
    let loop_dev = local["loop_device"].as_str().unwrap().to_string();
    c.lab
        .run("ox1", &["test", "-b", DEV])
        .expect("a block device");
    assert_eq!(
        c.lab.run("ox1", &["readlink", DEV]).unwrap().trim(),
        loop_dev
    );
    assert!(!exists_in(&c, "ox2", DEV), "the secondary has {DEV}");
    assert!(local_device(&c, "ox2").is_null());
    // Private per host: nothing in the machine's /dev/tandem.
    assert!(!Path::new(DEV).exists());
    assert_eq!(lab_loops(&data_dir).len(), 1, "{:?}", lab_loops(&data_dir));

    // ext4 on the replicated disk; a write + fsync inside ox1 reaches the device's
    // flush and, through a barrier, the secondary's disk.
    let mnt = data_dir.join("mnt-ox1");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_s = mnt.to_str().unwrap();
    c.lab
        .run("ox1", &["mkfs.ext4", "-q", "-F", DEV])
        .expect("mkfs");
    c.lab.run("ox1", &["mount", DEV, mnt_s]).expect("mount");
    let (p0, s0) = (c.status("ox1").unwrap(), c.status("ox2").unwrap());
    c.lab
        .run(
            "ox1",
            &[
                "dd",
                "if=/dev/urandom",
                &format!("of={mnt_s}/data"),
                "bs=1M",
                "count=4",
                "conv=fsync",
            ],
        )
        .expect("write + fsync");
    let (p1, s1) = (c.status("ox1").unwrap(), c.status("ox2").unwrap());
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    eprintln!(
        "during the write + fsync: local device flushes {} -> {}, barrier acks received by ox1 {} -> {}, sent by ox2 {} -> {}",
        n(&p0["local_device"], "flushes"),
        n(&p1["local_device"], "flushes"),
        n(&p0, "barrier_acks_received"),
        n(&p1, "barrier_acks_received"),
        n(&s0, "barrier_acks_sent"),
        n(&s1, "barrier_acks_sent"),
    );
    assert!(n(&p1["local_device"], "flushes") > n(&p0["local_device"], "flushes"));
    assert!(n(&p1, "barrier_acks_received") > n(&p0, "barrier_acks_received"));
    assert!(n(&s1, "barrier_acks_sent") > n(&s0, "barrier_acks_sent"));
    assert!(n(&p1["local_device"], "written_bytes") >= 4 << 20);

    // Demote while mounted: refused, naming the mount point; nothing changes.
    let err = c
        .tandem_result("ox1", &["disk", "secondary", "r0"])
        .unwrap_err();
    assert!(err.contains(&format!("mounted at {mnt_s}")), "{err}");
    let err = c.tandem_result("ox1", &["disk", "down", "r0"]).unwrap_err();
    assert!(err.contains(&format!("mounted at {mnt_s}")), "{err}");
    assert_eq!(c.status("ox1").unwrap()["role"], "primary");
    assert!(exists_in(&c, "ox1", DEV));
    c.lab.run("ox1", &["umount", mnt_s]).expect("umount");
    c.tandem("ox1", &["disk", "secondary", "r0"]);
    assert!(!exists_in(&c, "ox1", DEV), "{DEV} left after demote");
    assert!(local_device(&c, "ox1").is_null());
    assert!(
        lab_loops(&data_dir).is_empty(),
        "{:?}",
        lab_loops(&data_dir)
    );
    let mounts = mountinfo(&c, "ox1");
    assert!(!mounts.contains(LOCAL_FUSE), "{mounts}");

    // The daemon killed while primary, its file system mounted: the restarted daemon
    // removes the dead mounts and the loop device before anything else.
    c.tandem("ox1", &["disk", "primary", "r0"]);
    c.lab
        .run("ox1", &["mount", DEV, mnt_s])
        .expect("mount again");
    c.lab
        .run(
            "ox1",
            &[
                "sh",
                "-c",
                &format!("echo kept > {mnt_s}/note; sync -f {mnt_s}/note"),
            ],
        )
        .unwrap();
    kill_daemon(&mut c, "ox1");
    assert_eq!(lab_loops(&data_dir).len(), 1, "{:?}", lab_loops(&data_dir));
    let mi = mountinfo(&c, "ox1");
    assert!(mi.contains(LOCAL_FUSE) && mi.contains(mnt_s), "{mi}");
    c.start_daemon("ox1");
    assert_clean_after_restart(&c, &mnt);
    assert!(
        c.log("ox1")
            .contains("removed the local device a previous disk service left")
    );

    // Back in sync (the crashed primary's activity log comes from ox2), primary again:
    // the file system written before the crash is intact.
    c.wait_in_sync(60);
    c.tandem("ox1", &["disk", "primary", "r0"]);
    c.lab
        .run("ox1", &["mount", DEV, mnt_s])
        .expect("mount after the crash");
    assert_eq!(
        c.lab
            .run("ox1", &["cat", &format!("{mnt_s}/note")])
            .unwrap()
            .trim(),
        "kept"
    );

    // A power-off takes the host's mount namespace (and its mounts) with it but leaves
    // the loop device, bound to a file of a FUSE mount that no namespace shows any more;
    // the next daemon finds it by its name.
    c.lab.power_off("ox1").unwrap();
    c.daemons.retain(|(n, _)| n != "ox1");
    wait_for(
        Duration::from_secs(10),
        "the dead namespace to let go",
        || {
            let l = lab_loops(&data_dir);
            (l.len() == 1 && !l[0].1.starts_with("/run/")).then_some(())
        },
    );
    c.lab.power_on("ox1").unwrap();
    c.start_daemon("ox1");
    assert_clean_after_restart(&c, &mnt);

    // Primary and mounted when the lab goes: its teardown leaves no loop device.
    c.wait_in_sync(60);
    c.tandem("ox1", &["disk", "primary", "r0"]);
    c.lab
        .run("ox1", &["mount", DEV, mnt_s])
        .expect("mount at the end");
    assert_eq!(lab_loops(&data_dir).len(), 1);
    drop(c);
    assert!(
        lab_loops(&data_dir).is_empty(),
        "{:?}",
        lab_loops(&data_dir)
    );
}
