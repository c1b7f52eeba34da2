//! The lab's power switch (`fence_tandem_lab`) driven through the fence-agents runner and
//! the coordinator's walk, exactly as a `fence_apc` would be: a real lab with two hosts,
//! a real power-off. Needs root (see `root()`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem_config::{FenceAgent, FenceDevice};
use tandem_fencing::{
    FenceAction, FenceState, Outcome, Plug, ProgramPaths, fence_direct, run_device, run_program,
};
use tandem_lab::{HostSpec, Lab, NetSpec, Topology};

/// Root-gated: under CI it must run, elsewhere it says why it skips.
fn root() -> bool {
    if tandem_lab::require_root().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the lab switch test needs root, and CI=true: run it as root");
    }
    eprintln!("skipping: the lab needs root (namespaces, cgroups, mounts)");
    false
}

fn two_hosts() -> Topology {
    let host = |n: &str| HostSpec {
        name: n.into(),
        private_dirs: vec![],
    };
    Topology {
        hosts: vec![host("ox1"), host("ox2")],
        nets: vec![NetSpec {
            name: "lan".into(),
            subnet: "10.78.1.0/24".into(),
            hosts: BTreeMap::from([
                ("ox1".to_string(), Ipv4Addr::new(10, 78, 1, 20)),
                ("ox2".to_string(), Ipv4Addr::new(10, 78, 1, 10)),
            ]),
        }],
    }
}

fn lab_paths() -> ProgramPaths {
    let mut p = ProgramPaths::default();
    p.overrides.insert(
        "fence_tandem_lab".into(),
        vec![OsString::from(env!("CARGO_BIN_EXE_fence_tandem_lab"))],
    );
    p
}

fn switch(lab: &Lab) -> FenceDevice {
    FenceDevice {
        name: "lab-switch".into(),
        agent: FenceAgent::FenceAgents("fence_tandem_lab".into()),
        params: BTreeMap::from([("ipaddr".to_string(), lab.name().to_string())]),
        plugs: BTreeMap::new(),
        run_on: vec![],
        level: 1,
        timeout: Duration::from_secs(30),
    }
}

/// Starts a daemon in `host`: a shell that exits at once, leaving `sleep` (and a child of
/// its own) to the host's init, as a real service's daemons are.
fn start_daemon(lab: &Lab, host: &str) {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "(sleep 1000 & sleep 1000) >/dev/null 2>&1 &"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = lab.spawn(host, cmd).expect("spawn in host");
    p.wait().expect("shell exits");
}

#[test]
fn lab_switch_powers_a_host_off_and_on_through_the_fence_agents_path() {
    if !root() {
        return;
    }
    let lab = Lab::up_auto(two_hosts()).expect("lab up");
    start_daemon(&lab, "ox1");
    start_daemon(&lab, "ox2");
    let before = lab.processes("ox1").expect("processes");
    assert!(before.len() >= 3, "init and two sleeps: {before:?}");
    let dev = switch(&lab);
    let paths = lab_paths();

    let st = run_device(&dev, FenceAction::Status, Some("ox1"), &paths);
    assert_eq!(st.plug(), Some(Plug::On), "{st:?}");
    let list = run_device(&dev, FenceAction::List, None, &paths);
    assert_eq!(list.outcome, Outcome::Success, "{list:?}");
    assert_eq!(
        list.stdout.lines().collect::<Vec<_>>(),
        ["ox1,ox1", "ox2,ox2"]
    );
    let mon = run_device(&dev, FenceAction::Monitor, None, &paths);
    assert_eq!(mon.outcome, Outcome::Success, "{mon:?}");

    // Fence ox1 the way the daemon does: the coordinator's walk over the device.
    let done =
        fence_direct(vec![dev.clone()], "ox1", FenceAction::Off, "test", &paths).expect("direct");
    assert_eq!(done.state, FenceState::FencedOk, "{done:?}");
    eprintln!("fence_tandem_lab off: {} ms", done.records[0].duration_ms);
    assert!(!lab.is_powered("ox1").expect("state"));
    assert!(
        lab.processes("ox1").expect("processes").is_empty(),
        "every process of ox1 is gone"
    );
    for pid in &before {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} of ox1 still exists (not reaped)"
        );
    }
    // The other host was not touched.
    assert!(lab.is_powered("ox2").expect("state"));
    assert!(lab.processes("ox2").expect("processes").len() >= 3);

    let st = run_device(&dev, FenceAction::Status, Some("ox1"), &paths);
    assert_eq!(st.plug(), Some(Plug::Off), "{st:?}");

    let on = run_device(&dev, FenceAction::On, Some("ox1"), &paths);
    assert_eq!(on.outcome, Outcome::Success, "{on:?}");
    assert!(lab.is_powered("ox1").expect("state"));
    let st = run_device(&dev, FenceAction::Status, Some("ox1"), &paths);
    assert_eq!(st.plug(), Some(Plug::On));
    // A cold boot: the host runs again, its old processes do not come back. (A `Lab`
    // handle caches the host's init from when it was opened; the switch ran in another
    // process, so a fresh handle sees the new init.)
    let fresh = Lab::open(lab.name()).expect("open");
    let out = fresh
        .run("ox1", &["sh", "-c", "echo up"])
        .expect("run after boot");
    assert_eq!(out.trim(), "up");

    // Bad requests fail cleanly with exit 1 and change nothing.
    let mut bad = dev.clone();
    bad.params.insert("ipaddr".into(), "nosuchlab".into());
    let r = run_device(&bad, FenceAction::Off, Some("ox2"), &paths);
    assert!(
        matches!(r.outcome, Outcome::Failed { exit: Some(1), .. }),
        "{r:?}"
    );
    let r = run_device(&dev, FenceAction::Off, Some("ox9"), &paths);
    assert!(
        matches!(r.outcome, Outcome::Failed { exit: Some(1), .. }),
        "{r:?}"
    );
    assert!(lab.is_powered("ox2").expect("state"));

    // Metadata, as real agents print it.
    let (oc, xml) = run_program(
        &[env!("CARGO_BIN_EXE_fence_tandem_lab").into()],
        b"action=metadata\n",
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(oc, Outcome::Success);
    assert!(
        xml.contains("<resource-agent name=\"fence_tandem_lab\""),
        "{xml}"
    );
    lab.down().expect("teardown");
}

/// The switch run from inside a lab host, as ox2's agent runs it to fence ox1: without
/// the machine's switch server it must fail (it cannot see ox1's processes), never claim
/// success; with the server it powers ox1 off and on.
#[test]
fn lab_switch_run_from_inside_a_peer_host_goes_through_the_switch_server() {
    if !root() {
        return;
    }
    let lab = Lab::up_auto(two_hosts()).expect("lab up");
    start_daemon(&lab, "ox1");
    let run_in_ox2 = |action: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fence_tandem_lab"));
        cmd.stdin(Stdio::piped());
        cmd.args(["-o", action, "-n", "ox1", "-a", lab.name()]);
        let out = lab.output("ox2", cmd).expect("run in ox2");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, _, err) = run_in_ox2("off");
    assert_eq!(code, Some(1), "no switch server: must fail ({err})");
    assert!(err.contains("switch.sock"), "{err}");
    assert!(lab.is_powered("ox1").expect("state"));
    assert!(lab.processes("ox1").expect("processes").len() >= 3);

    let server = tandem_fencing::lab_switch::SwitchServer::start(lab.name()).expect("server");
    let (code, out, err) = run_in_ox2("off");
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(!lab.is_powered("ox1").expect("state"));
    assert!(lab.processes("ox1").expect("processes").is_empty());
    let (code, out, _) = run_in_ox2("status");
    assert_eq!((code, out.trim()), (Some(2), "Status: OFF"));
    let (code, _, err) = run_in_ox2("on");
    assert_eq!(code, Some(0), "{err}");
    let fresh = Lab::open(lab.name()).expect("open");
    assert_eq!(fresh.run("ox1", &["echo", "up"]).expect("run").trim(), "up");
    drop(server);
    assert!(!tandem_fencing::lab_switch::socket_path(lab.name()).exists());
    lab.down().expect("teardown");
}

/// The usual lab test: the harness spawned the hosts' daemons itself (they are its
/// children), and ox2's agent fences ox1. Through a switch server sharing the harness's
/// `Lab` handle, the power-off reaps them at once; the harness sees them killed.
#[test]
fn shared_switch_server_reaps_the_harness_children() {
    if !root() {
        return;
    }
    let lab = Lab::up_auto(two_hosts()).expect("lab up");
    let name = lab.name().to_string();
    let mut sleep = Command::new("sleep");
    sleep.arg("1000");
    let daemon = lab.spawn("ox1", sleep).expect("spawn");
    let lab = std::sync::Arc::new(std::sync::Mutex::new(lab));
    let server =
        tandem_fencing::lab_switch::SwitchServer::start_shared(lab.clone()).expect("server");
    // Another handle runs the agent in ox2: the shared one stays free for the server.
    let runner = Lab::open(&name).expect("open");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fence_tandem_lab"));
    cmd.args(["-o", "off", "-n", "ox1", "-a", &name]);
    let started = clock();
    let out = runner.output("ox2", cmd).expect("run in ox2");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("fence from ox2 through the shared switch: {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "no wait for reaping: {took:?}"
    );
    use std::os::unix::process::ExitStatusExt;
    let status = daemon.try_wait().expect("try_wait").expect("reaped");
    assert_eq!(status.signal(), Some(9), "killed by the power-off");
    let lab = lab.lock().expect("lock");
    assert!(!lab.is_powered("ox1").expect("state"));
    assert!(lab.processes("ox1").expect("processes").is_empty());
    drop(lab);
    drop(server);
}

#[allow(clippy::disallowed_methods)]
fn clock() -> std::time::Instant {
    std::time::Instant::now()
}
