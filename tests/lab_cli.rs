//! `tandem lab` from the command line: a lab built by `tandem lab up` outlives the
//! command, so its lossy disks are served by `tandem lab diskd`; power cuts from the
//! CLI and from the fence agent (through the power-switch daemon) reach them.

mod common;

use std::process::Command;

use common::TANDEM;
use tandem_testkit::root_or_skip;

/// Runs `tandem ARGS`; returns stdout, or panics with stderr.
fn tandem(args: &[&str]) -> String {
    let out = Command::new(TANDEM).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tandem {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes the lab down however the test ends.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(TANDEM).args(["lab", "down", &self.0]).output();
    }
}

#[test]
fn lossy_disks_of_a_cli_lab_are_served_by_a_daemon_and_cut_by_every_power_path() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let name = format!("cli{:x}", std::process::id() % 0xf_ffff);
    let _down = Down(name.clone());
    let up = tandem(&["lab", "up", "-n", &name]);
    let dir = |host: &str| format!("/var/lib/tandem-lab/{name}/disks/{host}");
    assert!(up.contains(&format!("disk  {}", dir("ox1"))), "{up}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/tandem-lab/{name}/state.json")).unwrap(),
    )
    .unwrap();
    let diskd = state["disk_pid"].as_u64().expect("a disk daemon") as u32;
    let cmdline = std::fs::read(format!("/proc/{diskd}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("diskd"));

    let write = |host: &str, file: &str, data: &str, sync: bool| {
        let program = format!(
            "import os\nfd = os.open('{}/{file}', os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)\n\
             os.write(fd, b'{data}')\nif {}: os.fsync(fd)\n",
            dir(host),
            if sync { "True" } else { "False" }
        );
        tandem(&[
            "lab", "exec", "-n", &name, host, "--", "python3", "-c", &program,
        ]);
    };
    let read =
        |host: &str, file: &str| std::fs::read_to_string(format!("{}/{file}", dir(host))).unwrap();

    write("ox1", "flushed", "kept", true);
    write("ox1", "unflushed", "lost", false);
    let status: serde_json::Value =
        serde_json::from_str(&tandem(&["lab", "status", "-n", &name, "--json"])).unwrap();
    let disk = &status[0]["hosts"][0]["disk"];
    assert_eq!(disk["cached_bytes"], 4096, "{status}");
    assert_eq!(disk["dirty_files"], 1, "{status}");
    let text = tandem(&["lab", "status", "-n", &name]);
    assert!(text.contains("4.0 KiB unflushed in 1 files"), "{text}");

    tandem(&["lab", "power", "off", "-n", &name, "ox1"]);
    assert_eq!(read("ox1", "flushed"), "kept");
    assert_eq!(read("ox1", "unflushed"), "");

    write("ox2", "kept", "battery", false);
    tandem(&["lab", "power", "cycle", "--keep-cache", "-n", &name, "ox2"]);
    assert_eq!(read("ox2", "kept"), "battery");

    write("ox2", "synced", "by lab sync", false);
    let synced = tandem(&["lab", "sync", "-n", &name, "ox2"]);
    assert!(synced.contains("wrote 4.0 KiB down (1 files)"), "{synced}");
    // The fence agent powers off through the switch daemon, which asks the disk
    // daemon for the cut: the synced file stays, a later unflushed one goes.
    write("ox2", "late", "lost", false);
    let agent = Command::new(TANDEM)
        .args(["lab", "fence-agent", "-o", "off", "-n", "ox2", "-a", &name])
        .status()
        .unwrap();
    assert!(agent.success());
    assert_eq!(read("ox2", "synced"), "by lab sync");
    assert_eq!(read("ox2", "late"), "");

    let down = tandem(&["lab", "down", &name]);
    assert!(down.contains("2 mounts"), "{down}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&name), "{mounts}");
    let alive = std::fs::read_to_string(format!("/proc/{diskd}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    assert!(!alive, "the disk daemon outlived the lab");
}
