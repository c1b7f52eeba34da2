//! The built-in `filesystem` agent on an ext4 loop device: mount, monitor, and a stop
//! that ends the processes holding the mount (one of which ignores SIGTERM) and then
//! unmounts.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::LoopExt4;
use tandem_agents::filesystem::process_alive;
use tandem_agents::{Action, Agent, ExecStatus, OcfExit, Paths, RunOptions, check_resource};
use tandem_config::{Resource, ResourceKind};
use tandem_testkit::root_or_skip;

fn fs_resource(device: &str, directory: PathBuf, options: Option<&str>) -> Resource {
    Resource {
        name: "data".into(),
        timeout: Duration::from_secs(60),
        monitor_interval: Some(Duration::from_secs(10)),
        kind: ResourceKind::Filesystem {
            device: device.into(),
            directory,
            fstype: "ext4".into(),
            options: options.map(String::from),
        },
    }
}

fn opts() -> RunOptions {
    RunOptions::new(Duration::from_secs(60))
}

#[test]
fn mount_monitor_and_stop_kills_holders_then_unmounts() {
    if !root_or_skip("network namespaces, mounts, loop devices") {
        return;
    }
    let fs = LoopExt4::new();
    let res = fs_resource(
        &fs.device,
        fs.mount_point.clone(),
        Some("noatime,nodev,data=ordered"),
    );
    let agent = Agent::new(&res, &Paths::default()).unwrap();

    assert_eq!(
        agent.run(Action::Monitor, &opts()).exit,
        Some(OcfExit::NotRunning)
    );
    let r = agent.run(Action::Start, &opts());
    assert!(r.is_success(), "{r}");
    assert!(fs.mounted());
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mi
        .lines()
        .find(|l| l.contains(fs.mount_point.to_str().unwrap()))
        .unwrap();
    assert!(
        line.contains("noatime") && line.contains("nodev"),
        "flags applied: {line}"
    );
    assert!(line.contains("data=ordered"), "data string passed: {line}");
    let r = agent.run(Action::Monitor, &opts());
    assert_eq!(r.exit, Some(OcfExit::Success), "{r}");
    assert!(
        agent.run(Action::Start, &opts()).is_success(),
        "start is idempotent"
    );

    // Two holders: one with a file open (dies on TERM), one with its cwd on the mount
    // that ignores TERM (needs the KILL escalation).
    let file = fs.mount_point.join("open-file");
    std::fs::write(&file, b"x").unwrap();
    let mut reader = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3<{}; exec sleep 1000", file.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut stubborn = Command::new("sh")
        .arg("-c")
        .arg("trap '' TERM; while :; do sleep 1; done")
        .current_dir(&fs.mount_point)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // let both settle on the mount

    let r = agent.run(Action::Stop, &opts());
    assert!(r.is_success(), "{r}");
    assert!(r.reason.contains("holder"), "{}", r.reason);
    assert!(!fs.mounted(), "unmounted");
    let _ = reader.wait();
    let _ = stubborn.wait();
    assert!(!process_alive(reader.id() as i32) && !process_alive(stubborn.id() as i32));
    println!("stop: {r}");

    assert_eq!(
        agent.run(Action::Monitor, &opts()).exit,
        Some(OcfExit::NotRunning)
    );
    assert!(
        agent.run(Action::Stop, &opts()).is_success(),
        "stop on stopped"
    );
}

#[test]
fn errors_are_classified_and_nothing_is_stacked() {
    if !root_or_skip("network namespaces, mounts, loop devices") {
        return;
    }
    let fs = LoopExt4::new();
    // A device that does not exist on this node: hard (move elsewhere).
    let missing = fs_resource("/dev/tandem-no-such-device", fs.mount_point.clone(), None);
    let r = Agent::new(&missing, &Paths::default())
        .unwrap()
        .run(Action::Start, &opts());
    assert_eq!(r.exit, Some(OcfExit::NotInstalled), "{r}");
    // An unsupported option: fatal configuration error, nothing mounted.
    let bad = fs_resource(&fs.device, fs.mount_point.clone(), Some("loop"));
    let r = Agent::new(&bad, &Paths::default())
        .unwrap()
        .run(Action::Start, &opts());
    assert_eq!(r.exit, Some(OcfExit::NotConfigured), "{r}");
    assert!(!fs.mounted());
    assert!(
        check_resource(&bad, &Paths::default())
            .iter()
            .any(|i| i.error)
    );
    // Something else already mounted there: refuse to mount on top.
    let good = Agent::new(
        &fs_resource(&fs.device, fs.mount_point.clone(), None),
        &Paths::default(),
    )
    .unwrap();
    assert!(good.run(Action::Start, &opts()).is_success());
    let other = fs_resource("/dev/tandem-other", fs.mount_point.clone(), None);
    let r = Agent::new(&other, &Paths::default())
        .unwrap()
        .run(Action::Start, &opts());
    assert_eq!(r.exit, Some(OcfExit::Generic), "{r}");
    assert_eq!(r.exec_status, ExecStatus::Done);
    assert!(good.run(Action::Stop, &opts()).is_success());
    assert!(!fs.mounted());
}

#[test]
fn monitor_fails_when_the_file_system_went_read_only() {
    if !root_or_skip("network namespaces, mounts, loop devices") {
        return;
    }
    let fs = LoopExt4::new();
    let agent = Agent::new(
        &fs_resource(&fs.device, fs.mount_point.clone(), None),
        &Paths::default(),
    )
    .unwrap();
    assert!(agent.run(Action::Start, &opts()).is_success());
    assert_eq!(
        agent.run(Action::Monitor, &opts()).exit,
        Some(OcfExit::Success)
    );
    // What ext4's errors=remount-ro does after an I/O error.
    common::sh(&format!("mount -o remount,ro {}", fs.mount_point.display()));
    let r = agent.run(Action::Monitor, &opts());
    assert_eq!(r.exit, Some(OcfExit::Generic), "{r}");
    assert!(r.reason.contains("read-only"), "{r}");
    assert!(agent.run(Action::Stop, &opts()).is_success());
    assert!(!fs.mounted());
    // Asked for read-only: then read-only is fine.
    let ro = Agent::new(
        &fs_resource(&fs.device, fs.mount_point.clone(), Some("ro")),
        &Paths::default(),
    )
    .unwrap();
    assert!(ro.run(Action::Start, &opts()).is_success());
    assert_eq!(
        ro.run(Action::Monitor, &opts()).exit,
        Some(OcfExit::Success)
    );
    assert!(ro.run(Action::Stop, &opts()).is_success());
}
