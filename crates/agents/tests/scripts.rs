//! LSB init scripts, Heartbeat resource.d scripts, and the timeout that kills an agent
//! with everything it forked.

mod common;

use std::time::Duration;

use common::{TempDir, script};
use tandem_agents::filesystem::process_alive;
use tandem_agents::{Action, Agent, ExecStatus, OcfExit, Outcome, Paths, RunOptions};
use tandem_config::{Resource, ResourceKind};

fn opts() -> RunOptions {
    RunOptions::new(Duration::from_secs(30))
}

fn lsb_resource(name: &str, script: &str, args: Vec<String>, heartbeat: bool) -> Resource {
    Resource {
        name: name.into(),
        timeout: Duration::from_secs(30),
        monitor_interval: None,
        kind: ResourceKind::Lsb {
            script: script.into(),
            args,
            heartbeat,
        },
    }
}

/// An init script with LSB status codes whose `stop` misbehaves on a stopped service
/// (exits 1, as many real scripts do).
fn init_script(dir: &TempDir) -> std::path::PathBuf {
    let state = dir.path.join("svc.running");
    let path = dir.path.join("svc");
    script(
        &path,
        &format!(
            r#"#!/bin/sh
STATE={state}
case "$1" in
  start) touch "$STATE"; exit 0 ;;
  stop) [ -e "$STATE" ] || {{ echo "not running" >&2; exit 1; }}; rm -f "$STATE"; exit 0 ;;
  status) [ -e "$STATE" ] && {{ echo "svc is running"; exit 0; }}; echo "svc is stopped"; exit 3 ;;
  *) exit 3 ;;
esac
"#,
            state = state.display()
        ),
    );
    path
}

#[test]
fn lsb_script_start_status_stop_and_stop_on_stopped_succeeds() {
    let dir = TempDir::new("lsb");
    init_script(&dir);
    let paths = Paths {
        init_dir: dir.path.clone(),
        ..Paths::default()
    };
    let agent = Agent::new(&lsb_resource("svc", "svc", vec![], false), &paths).unwrap();

    let r = agent.run(Action::Monitor, &opts());
    assert_eq!(r.exit, Some(OcfExit::NotRunning), "status 3 = stopped: {r}");
    assert_eq!(r.outcome(Action::Monitor), Outcome::NotRunning);

    let r = agent.run(Action::Stop, &opts());
    assert!(
        r.is_success(),
        "stop on a stopped service must succeed: {r}"
    );
    assert!(
        r.reason.contains("status reports the service stopped"),
        "{}",
        r.reason
    );

    assert!(agent.run(Action::Start, &opts()).is_success());
    assert!(dir.path.join("svc.running").exists());
    let r = agent.run(Action::Monitor, &opts());
    assert_eq!(r.exit, Some(OcfExit::Success), "{r}");
    assert!(r.output.contains("svc is running"));

    assert!(agent.run(Action::Stop, &opts()).is_success());
    assert!(!dir.path.join("svc.running").exists());
    assert_eq!(
        agent.run(Action::Monitor, &opts()).exit,
        Some(OcfExit::NotRunning)
    );
}

#[test]
fn lsb_stop_that_fails_while_running_is_a_failure() {
    let dir = TempDir::new("lsbf");
    let path = dir.path.join("stuck");
    // status says running, stop fails: a real failure, not "already stopped".
    script(
        &path,
        "#!/bin/sh\ncase \"$1\" in status) exit 0;; stop) exit 1;; *) exit 0;; esac\n",
    );
    let agent = Agent::new(
        &lsb_resource("stuck", path.to_str().unwrap(), vec![], false),
        &Paths::default(),
    )
    .unwrap();
    let r = agent.run(Action::Stop, &opts());
    assert_eq!(r.exit, Some(OcfExit::Generic), "{r}");
    assert!(!r.is_success());
}

#[test]
fn missing_script_is_not_installed() {
    let dir = TempDir::new("lsbm");
    let paths = Paths {
        init_dir: dir.path.clone(),
        ..Paths::default()
    };
    let agent = Agent::new(&lsb_resource("x", "no-such-script", vec![], false), &paths).unwrap();
    let r = agent.run(Action::Start, &opts());
    assert_eq!(r.exec_status, ExecStatus::NotInstalled, "{r}");
    assert_eq!(r.exit, None);
}

#[test]
fn heartbeat_script_gets_args_before_the_action_and_status_is_read_as_text() {
    let dir = TempDir::new("hb");
    let log = dir.path.join("calls");
    let state = dir.path.join("up");
    // Exit codes are deliberately useless (always 0), as in many Heartbeat scripts.
    script(
        &dir.path.join("Svc"),
        &format!(
            r#"#!/bin/sh
echo "$@" >> {log}
eval ACTION=\${{$#}}
case "$ACTION" in
  start) touch {state} ;;
  stop) rm -f {state} ;;
  status) if [ -e {state} ]; then echo "Svc is running"; else echo "Svc is stopped"; fi ;;
esac
exit 0
"#,
            log = log.display(),
            state = state.display()
        ),
    );
    let paths = Paths {
        heartbeat_dir: dir.path.clone(),
        ..Paths::default()
    };
    let res = lsb_resource(
        "svc",
        "Svc",
        vec!["10.0.0.1/24".into(), "eth0".into()],
        true,
    );
    let agent = Agent::new(&res, &paths).unwrap();

    let r = agent.run(Action::Monitor, &opts());
    assert_eq!(
        r.exit,
        Some(OcfExit::NotRunning),
        "'stopped' in the text: {r}"
    );
    assert!(
        agent.run(Action::Stop, &opts()).is_success(),
        "stop on stopped"
    );
    assert!(agent.run(Action::Start, &opts()).is_success());
    let r = agent.run(Action::Monitor, &opts());
    assert_eq!(r.exit, Some(OcfExit::Success), "'running' in the text: {r}");
    assert!(agent.run(Action::Stop, &opts()).is_success());
    assert_eq!(
        agent.run(Action::Monitor, &opts()).exit,
        Some(OcfExit::NotRunning)
    );

    let calls = std::fs::read_to_string(&log).unwrap();
    let first: Vec<&str> = calls.lines().collect();
    assert_eq!(first[0], "10.0.0.1/24 eth0 status");
    assert_eq!(first[2], "10.0.0.1/24 eth0 start");
}

/// A script that records which copy ran (`TAG ARGS…`) in `log` and says "running".
fn tagged_script(path: &std::path::Path, tag: &str, log: &std::path::Path) {
    script(
        path,
        &format!(
            "#!/bin/sh\necho \"{tag} $*\" >> {log}\necho '{tag} is running'\nexit 0\n",
            log = log.display()
        ),
    );
}

#[test]
fn bare_name_is_looked_up_in_resource_d_first_then_init_d() {
    // Heartbeat's ResourceManager: /etc/ha.d/resource.d, then /etc/init.d.
    let resource_d = TempDir::new("rd");
    let init_d = TempDir::new("id");
    let log = init_d.path.join("calls");
    let paths = Paths {
        heartbeat_dir: resource_d.path.clone(),
        init_dir: init_d.path.clone(),
        ..Paths::default()
    };
    // Only in resource.d, named bare without arguments (`heartbeat = false`, what the
    // importer makes of an unknown name): found, and run by the resource.d convention.
    tagged_script(&resource_d.path.join("only_rd"), "rd", &log);
    let agent = Agent::new(&lsb_resource("a", "only_rd", vec![], false), &paths).unwrap();
    for action in [Action::Start, Action::Monitor, Action::Stop] {
        let r = agent.run(action, &opts());
        assert!(r.is_success(), "{action}: {r}");
    }
    let r = agent.run(Action::Monitor, &opts());
    assert!(r.reason.contains("read as running"), "text status: {r}");

    // In both: resource.d wins.
    tagged_script(&resource_d.path.join("both"), "rd", &log);
    tagged_script(&init_d.path.join("both"), "init", &log);
    // Only in init.d: found there.
    tagged_script(&init_d.path.join("only_init"), "init", &log);
    std::fs::remove_file(&log).unwrap();
    for name in ["both", "only_init"] {
        let agent = Agent::new(&lsb_resource(name, name, vec![], false), &paths).unwrap();
        assert!(agent.run(Action::Start, &opts()).is_success());
    }
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls, "rd start\ninit start\n");

    // In neither: not installed, and the reason names both places.
    let agent = Agent::new(&lsb_resource("n", "nowhere", vec![], false), &paths).unwrap();
    let r = agent.run(Action::Start, &opts());
    assert_eq!(r.exec_status, ExecStatus::NotInstalled, "{r}");
    assert!(
        r.reason.contains(&resource_d.path.display().to_string())
            && r.reason.contains(&init_d.path.display().to_string()),
        "{r}"
    );

    // Installed after the agent was built (the daemon builds agents at start): found.
    tagged_script(&resource_d.path.join("nowhere"), "rd", &log);
    assert!(agent.run(Action::Start, &opts()).is_success());
}

#[test]
fn heartbeat_status_ok_with_failing_exit_code_still_reads_as_running() {
    let dir = TempDir::new("hbok");
    script(
        &dir.path.join("Ok"),
        "#!/bin/sh\necho 'Status: OK'\nexit 1\n",
    );
    let paths = Paths {
        heartbeat_dir: dir.path.clone(),
        ..Paths::default()
    };
    let agent = Agent::new(&lsb_resource("ok", "Ok", vec![], true), &paths).unwrap();
    assert_eq!(
        agent.run(Action::Monitor, &opts()).exit,
        Some(OcfExit::Success)
    );
}

#[test]
fn timeout_kills_the_agent_and_its_children_and_reports_timeout_not_an_exit_code() {
    let dir = TempDir::new("to");
    let pids = dir.path.join("pids");
    script(
        &dir.path.join("hang"),
        &format!(
            "#!/bin/sh\nsleep 1000 &\necho $! > {p}\n(sleep 1000; echo never) &\necho $! >> {p}\necho $$ >> {p}\nsleep 1000\n",
            p = pids.display()
        ),
    );
    let paths = Paths {
        init_dir: dir.path.clone(),
        ..Paths::default()
    };
    let agent = Agent::new(&lsb_resource("hang", "hang", vec![], false), &paths).unwrap();
    let r = agent.run(Action::Start, &RunOptions::new(Duration::from_secs(2)));
    assert_eq!(r.exec_status, ExecStatus::Timeout, "{r}");
    assert_eq!(r.exit, None, "a timeout carries no exit code");
    assert!(r.duration >= Duration::from_secs(2));
    let pids: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{pids:?}");
    // SIGKILL to the group is immediate, but reaping by init may lag a moment.
    for _ in 0..50 {
        if pids.iter().all(|&p| !process_alive(p)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for p in pids {
        assert!(
            !process_alive(p),
            "process {p} of the timed-out agent survived"
        );
    }
}
