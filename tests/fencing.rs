//! STONITH for real: the lab's power switch is the cluster's fence device
//! (`fence_tandem_lab`, through the same runner and coordinator as any fence-agents
//! program). A sampler looks at both nodes every 50 ms for the whole test and fails it
//! if both ever hold the service address at once; a powered-off host holds nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Cluster, Opts, Sampler, middle};
use common::labconfig;
use common::wait_for;
use tandem_config::{FenceAgent, FencingPolicy};
use tandem_testkit::root_or_skip;

fn fenced_opts() -> Opts {
    Opts {
        fencing: FencingPolicy::Required,
        edit: Arc::new(|c| {
            c.lab_switch();
        }),
        ..Opts::default()
    }
}

fn fence_history(c: &Cluster, node: &str) -> Vec<serde_json::Value> {
    c.status(node)
        .and_then(|s| s["fencing"]["history"].as_array().cloned())
        .unwrap_or_default()
}

fn fenced_successfully(c: &Cluster, node: &str, target: &str) -> bool {
    fence_history(c, node).iter().any(|r| {
        r["target"] == target && r["device"] == "lab-switch" && r["outcome"]["kind"] == "success"
    })
}

#[test]
fn a_powered_off_active_node_is_fenced_through_the_switch_before_the_takeover() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let mut c = Cluster::start(fenced_opts());
    c.wait_owner("ox2", "ox1");
    let sampler = Sampler::start(c.lab.name());
    c.lab.power_off("ox1").unwrap();
    c.wait_owner("ox2", "ox2");
    assert!(
        fenced_successfully(&c, "ox2", "ox1"),
        "ox2 took over without a successful fence of ox1 (the ox1 plug): {:?}",
        fence_history(&c, "ox2")
    );
    assert!(c.client_connects());
    assert!(sampler.finish() > 10);
}

#[test]
fn split_brain_leaves_exactly_one_node_serving_and_powers_the_other_off() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let rounds: usize = std::env::var("TANDEM_SPLIT_BRAIN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut c = Cluster::start(fenced_opts());
    let sampler = Sampler::start(c.lab.name());
    for round in 0..rounds {
        c.wait_owner("ox2", "ox1");
        // Every heartbeat link cut, both nodes alive.
        c.lab.partition("hb", &[]).unwrap();
        c.lab.partition("lan", &[]).unwrap();
        // ox1 serves the group, so it fences at once; ox2 waits its priority delay.
        wait_for(Duration::from_secs(30), "one node powered off", || {
            (!c.lab.is_powered("ox2").ok()?).then_some(())
        });
        assert!(
            c.lab.is_powered("ox1").unwrap(),
            "round {round}: the serving node was fenced"
        );
        c.lab.heal(None, &[]).unwrap();
        c.wait_owner("ox1", "ox1");
        assert!(c.client_connects(), "round {round}: service lost");
        // The fenced node boots and rejoins.
        c.lab.power_on("ox2").unwrap();
        c.restart_agent("ox2");
        wait_for(Duration::from_secs(20), "ox2 rejoins", || {
            let s = c.status("ox1")?;
            let up = s["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["name"] == "ox2" && n["state"] == "up");
            up.then_some(())
        });
    }
    sampler.finish();
}

#[test]
fn a_frozen_active_node_is_fenced_and_holds_nothing_after_thaw() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let mut c = Cluster::start(fenced_opts());
    c.wait_owner("ox2", "ox1");
    let sampler = Sampler::start(c.lab.name());
    c.lab.freeze("ox1").unwrap();
    c.wait_owner("ox2", "ox2");
    assert!(fenced_successfully(&c, "ox2", "ox1"));
    assert!(
        !c.lab.is_powered("ox1").unwrap(),
        "the frozen node was powered off"
    );
    let _ = c.lab.thaw("ox1");
    assert!(c.lab.processes("ox1").unwrap_or_default().is_empty());
    sampler.finish();
}

#[test]
fn no_takeover_while_the_device_fails_and_takeover_once_it_works() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    // A fence-agents program that fails until a file appears, then hands over to the
    // lab's switch: a broken power switch that gets repaired.
    let opts = Opts {
        edit: Arc::new(|c| {
            let (agent, lab) = (c.dir().join("fence_flaky"), c.lab().to_string());
            let device = c.fence_device(
                "flaky",
                FenceAgent::FenceAgents(agent.display().to_string()),
            );
            device.params.insert("ipaddr".into(), lab);
            device.timeout = Duration::from_secs(5);
        }),
        ..fenced_opts()
    };
    let mut c = Cluster::start_with_files(
        opts,
        &[(
            "fence_flaky",
            "#!/bin/sh\n[ -e \"$(dirname \"$0\")/repaired\" ] || { echo 'switch unreachable' >&2; exit 1; }\nexec '{tandem}' lab fence-agent\n",
        )],
    );
    c.wait_owner("ox2", "ox1");
    c.lab.power_off("ox1").unwrap();
    // Attempts fail: the group stays down and status says why.
    wait_for(
        Duration::from_secs(30),
        "failed attempts in the history",
        || {
            let failed = fence_history(&c, "ox2")
                .iter()
                .filter(|r| r["target"] == "ox1" && r["outcome"]["kind"] != "success")
                .count();
            (failed >= 1).then_some(())
        },
    );
    let g = c.group("ox2").unwrap();
    assert_ne!(g["owner"], "ox2", "ox2 took over without fencing: {g}");
    // The device works again: the next attempt fences and the takeover proceeds.
    std::fs::write(c.lab.data_dir().join("repaired"), "").unwrap();
    c.wait_owner("ox2", "ox2");
    assert!(
        fence_history(&c, "ox2").iter().any(|r| r["target"] == "ox1"
            && r["device"] == "flaky"
            && r["outcome"]["kind"] == "success"),
        "{:?}",
        fence_history(&c, "ox2")
    );
}

#[test]
fn a_resource_whose_stop_fails_gets_its_node_fenced_and_the_group_moves() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    // The middle resource cannot be stopped.
    let c = Cluster::start_with_files(
        Opts {
            edit: Arc::new(|c| {
                c.lab_switch();
                let stuck = c.dir().join("stuck");
                middle(c, labconfig::lsb("stuck", stuck.to_str().unwrap()));
            }),
            ..fenced_opts()
        },
        &[(
            "stuck",
            "#!/bin/sh\nS=/run/tandem/stuck\ncase \"$1\" in\n start) touch $S; exit 0;;\n stop) exit 1;;\n status) [ -e $S ] && exit 0; exit 3;;\nesac\nexit 2\n",
        )],
    );
    c.wait_owner("ox2", "ox1");
    let sampler = Sampler::start(c.lab.name());
    c.tandem("ox1", &["standby", "all"]);
    wait_for(Duration::from_secs(60), "ox1 powered off by ox2", || {
        (!c.lab.is_powered("ox1").ok()?).then_some(())
    });
    c.wait_owner("ox2", "ox2");
    assert!(fenced_successfully(&c, "ox2", "ox1"));
    sampler.finish();
}

#[test]
fn a_node_that_leaves_cleanly_is_not_fenced() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    let mut c = Cluster::start(fenced_opts());
    c.wait_owner("ox2", "ox1");
    let sampler = Sampler::start(c.lab.name());
    c.stop_daemon("ox1");
    c.wait_owner("ox2", "ox2");
    assert!(
        c.lab.is_powered("ox1").unwrap(),
        "ox1 said goodbye and was fenced anyway"
    );
    assert!(
        fence_history(&c, "ox2").is_empty(),
        "no fencing after a goodbye: {:?}",
        fence_history(&c, "ox2")
    );
    sampler.finish();
}
