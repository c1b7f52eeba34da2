//! Real OCF agents from Debian's resource-agents, run through tandem's `ocf` agent:
//! Dummy, IPaddr2 (inside our own network namespaces) and Filesystem (ext4 on a loop
//! device). Exit codes and real effects are both asserted.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{Lab, LoopExt4, TempDir};
use tandem_agents::{Action, Agent, OcfExit, Paths, RunOptions, check_resource};
use tandem_config::{Resource, ResourceKind};
use tandem_testkit::{root_or_skip, skip_unless};

fn ocf(name: &str, agent: &str, params: &[(&str, &str)]) -> Resource {
    Resource {
        name: name.into(),
        timeout: Duration::from_secs(60),
        monitor_interval: Some(Duration::from_secs(10)),
        kind: ResourceKind::Ocf {
            provider: "heartbeat".into(),
            agent: agent.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        },
    }
}

fn opts() -> RunOptions {
    RunOptions::new(Duration::from_secs(60))
}

fn installed(agent: &str) -> bool {
    let p = Paths::default()
        .ocf_root
        .join("resource.d/heartbeat")
        .join(agent);
    skip_unless(
        p.exists(),
        &format!("{} not installed (resource-agents)", p.display()),
    )
}

fn expect(agent: &Agent, action: Action, exit: OcfExit) {
    let r = agent.run(action, &opts());
    println!("{action}: {r}");
    assert_eq!(r.exit, Some(exit), "{action}: {r}\n{}", r.output);
}

#[test]
fn dummy_start_monitor_stop_restart() {
    if !installed("Dummy") {
        return;
    }
    let dir = TempDir::new("dummy");
    let state = dir.path.join("Dummy.state");
    let res = ocf("dummy1", "Dummy", &[("state", state.to_str().unwrap())]);
    let agent = Agent::new(&res, &Paths::default()).unwrap();

    expect(&agent, Action::Monitor, OcfExit::NotRunning);
    expect(&agent, Action::Start, OcfExit::Success);
    assert!(state.exists(), "Dummy's state file is its 'service'");
    expect(&agent, Action::Monitor, OcfExit::Success);
    expect(&agent, Action::Start, OcfExit::Success); // idempotent
    expect(&agent, Action::Stop, OcfExit::Success);
    assert!(!state.exists());
    expect(&agent, Action::Monitor, OcfExit::NotRunning);
    expect(&agent, Action::Stop, OcfExit::Success); // stop on stopped
    // restart = stop + start
    expect(&agent, Action::Start, OcfExit::Success);
    expect(&agent, Action::Stop, OcfExit::Success);
    expect(&agent, Action::Start, OcfExit::Success);
    expect(&agent, Action::Monitor, OcfExit::Success);
    expect(&agent, Action::ValidateAll, OcfExit::Success);
    expect(&agent, Action::Stop, OcfExit::Success);
}

#[test]
fn config_check_reports_unknown_type_and_missing_required_parameter() {
    if !installed("IPaddr2") {
        return;
    }
    let paths = Paths::default();
    assert_eq!(check_resource(&ocf("d", "Dummy", &[]), &paths), vec![]);

    let issues = check_resource(&ocf("x", "NoSuchAgentType", &[]), &paths);
    assert!(
        issues
            .iter()
            .any(|i| i.error && i.message.contains("unknown OCF agent")),
        "{issues:?}"
    );

    let issues = check_resource(&ocf("vip", "IPaddr2", &[("nic", "eth0")]), &paths);
    assert!(
        issues
            .iter()
            .any(|i| i.error && i.message.contains("missing required parameter `ip`")),
        "{issues:?}"
    );

    let issues = check_resource(
        &ocf("vip", "IPaddr2", &[("ip", "10.1.1.1"), ("nick", "eth0")]),
        &paths,
    );
    assert!(issues.iter().all(|i| !i.error), "{issues:?}");
    assert!(
        issues
            .iter()
            .any(|i| i.message.contains("`nick` is not declared")),
        "{issues:?}"
    );

    let fs = ocf("fs", "Filesystem", &[("device", "/dev/x")]);
    let issues = check_resource(&fs, &paths);
    for p in ["directory", "fstype"] {
        assert!(
            issues
                .iter()
                .any(|i| i.error && i.message.contains(&format!("`{p}`"))),
            "{p}: {issues:?}"
        );
    }
}

#[test]
fn ipaddr2_in_a_network_namespace() {
    if !root_or_skip("network namespaces, mounts, loop devices") || !installed("IPaddr2") {
        return;
    }
    let lab = Lab::new(71);
    let vip = "10.71.0.100";
    lab.peer_stale(vip);
    let mac = lab.mac_ours();
    let res = ocf(
        "vip",
        "IPaddr2",
        &[("ip", vip), ("cidr_netmask", "24"), ("nic", &lab.if_ours)],
    );
    let if_ours = lab.if_ours.clone();
    let results = lab.ours.run(move || {
        let agent = Agent::new(&res, &Paths::default()).unwrap();
        let mut seen = Vec::new();
        for action in [Action::Monitor, Action::Start, Action::Monitor] {
            seen.push((action, agent.run(action, &opts())));
        }
        (agent, seen)
    });
    let (agent, seen) = results;
    assert_eq!(seen[0].1.exit, Some(OcfExit::NotRunning), "{}", seen[0].1);
    assert_eq!(
        seen[1].1.exit,
        Some(OcfExit::Success),
        "{}\n{}",
        seen[1].1,
        seen[1].1.output
    );
    assert_eq!(seen[2].1.exit, Some(OcfExit::Success), "{}", seen[2].1);
    assert!(
        lab.ours
            .ip(&format!("-o addr show dev {if_ours}"))
            .contains(&format!("{vip}/24"))
    );
    // IPaddr2's send_arp announced us: the peer's stale entry now points at our MAC.
    lab.wait_peer_neigh(vip, &mac);

    let (stop, after, stop2) = lab.ours.run(move || {
        let s = agent.run(Action::Stop, &opts());
        let m = agent.run(Action::Monitor, &opts());
        let s2 = agent.run(Action::Stop, &opts());
        (s, m, s2)
    });
    assert_eq!(stop.exit, Some(OcfExit::Success), "{stop}");
    assert_eq!(after.exit, Some(OcfExit::NotRunning), "{after}");
    assert_eq!(stop2.exit, Some(OcfExit::Success), "{stop2}");
    assert!(!lab.ours.ip("-o addr show").contains(vip));
}

#[test]
fn filesystem_agent_on_an_ext4_loop_device() {
    if !root_or_skip("network namespaces, mounts, loop devices") || !installed("Filesystem") {
        return;
    }
    let fs = LoopExt4::new();
    let mp = fs.mount_point.to_str().unwrap().to_string();
    let res = ocf(
        "data",
        "Filesystem",
        &[
            ("device", &fs.device),
            ("directory", &mp),
            ("fstype", "ext4"),
        ],
    );
    let agent = Agent::new(&res, &Paths::default()).unwrap();

    expect(&agent, Action::Monitor, OcfExit::NotRunning);
    expect(&agent, Action::Start, OcfExit::Success);
    assert!(fs.mounted());
    std::fs::write(Path::new(&mp).join("hello"), b"tandem").unwrap();
    expect(&agent, Action::Monitor, OcfExit::Success);
    expect(&agent, Action::Stop, OcfExit::Success);
    assert!(!fs.mounted());
    expect(&agent, Action::Monitor, OcfExit::NotRunning);
    // restart: the data is still there
    expect(&agent, Action::Start, OcfExit::Success);
    assert_eq!(
        std::fs::read(Path::new(&mp).join("hello")).unwrap(),
        b"tandem"
    );
    expect(&agent, Action::Stop, OcfExit::Success);
    assert!(!fs.mounted());
}
