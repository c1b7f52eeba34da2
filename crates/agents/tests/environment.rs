//! Resource agents run with a clean, documented environment (docs/agents.md), not the
//! daemon's: a variable the daemon has is not passed on; PATH and the locale are fixed;
//! an OCF agent gets its OCF variables. One test in this binary, because it sets a
//! variable in the test process's own environment.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{TempDir, script};
use tandem_agents::{Action, Agent, Paths, RunOptions};
use tandem_config::{Resource, ResourceKind};

/// A script that writes its whole environment to `out`, one `NAME=value` a line
/// (`env -0` would be safer, but none of these values hold a newline).
fn env_dumper(path: &Path, out: &Path) {
    script(
        path,
        &format!("#!/bin/sh\n/usr/bin/env > {}\nexit 0\n", out.display()),
    );
}

fn read_env(out: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The documented base: the daemon's secret absent, PATH and the locale fixed.
fn assert_clean(env: &BTreeMap<String, String>) {
    assert!(!env.contains_key("TANDEM_TEST_SECRET"), "{env:?}");
    assert_eq!(env["PATH"], "/usr/sbin:/usr/bin:/sbin:/bin");
    assert_eq!(env["LANG"], "C");
    assert_eq!(env["LC_ALL"], "C");
}

fn resource(name: &str, kind: ResourceKind) -> Resource {
    Resource {
        name: name.into(),
        timeout: Duration::from_secs(30),
        monitor_interval: None,
        kind,
    }
}

#[test]
fn agents_get_a_clean_documented_environment_not_the_daemons() {
    // SAFETY: the only test in this binary; no other thread reads the environment.
    unsafe {
        std::env::set_var("TANDEM_TEST_SECRET", "must-not-leak");
        std::env::set_var("LANG", "de_DE.UTF-8");
        std::env::set_var("PATH", "/opt/daemon-only/bin:/usr/bin:/bin");
    }
    let dir = TempDir::new("env");
    let init_d = dir.path.join("init.d");
    let resource_d = dir.path.join("resource.d");
    let ocf_root = dir.path.join("ocf");
    let ocf_dir = ocf_root.join("resource.d/acme");
    for d in [&init_d, &resource_d, &ocf_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let lsb_out = dir.path.join("lsb.env");
    let ocf_out = dir.path.join("ocf.env");
    env_dumper(&init_d.join("dump"), &lsb_out);
    env_dumper(&ocf_dir.join("Dump"), &ocf_out);
    let paths = Paths {
        ocf_root: ocf_root.clone(),
        init_dir: init_d,
        heartbeat_dir: resource_d,
        ..Paths::default()
    };
    let opts = RunOptions::new(Duration::from_secs(30));

    let lsb = resource(
        "dump",
        ResourceKind::Lsb {
            script: "dump".into(),
            args: vec![],
            heartbeat: false,
        },
    );
    let r = Agent::new(&lsb, &paths).unwrap().run(Action::Start, &opts);
    assert!(r.is_success(), "{r}");
    let env = read_env(&lsb_out);
    assert_clean(&env);
    let mut names: Vec<&str> = env.keys().map(String::as_str).collect();
    // What the shell adds by itself (working directory, nesting level).
    names.retain(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n));
    assert_eq!(
        names,
        ["LANG", "LC_ALL", "PATH"],
        "an init script gets only these"
    );

    let ocf = resource(
        "dumper",
        ResourceKind::Ocf {
            provider: "acme".into(),
            agent: "Dump".into(),
            params: BTreeMap::from([("ip".to_string(), "10.0.0.9".to_string())]),
        },
    );
    let r = Agent::new(&ocf, &paths).unwrap().run(Action::Start, &opts);
    assert!(r.is_success(), "{r}");
    let env = read_env(&ocf_out);
    assert_clean(&env);
    assert_eq!(env["OCF_ROOT"], ocf_root.display().to_string());
    assert_eq!(env["OCF_RESOURCE_INSTANCE"], "dumper");
    assert_eq!(env["OCF_RESOURCE_TYPE"], "Dump");
    assert_eq!(env["OCF_RESOURCE_PROVIDER"], "acme");
    assert_eq!(env["OCF_RESKEY_ip"], "10.0.0.9");
    assert_eq!(env["OCF_RESKEY_CRM_meta_timeout"], "30000");
    assert_eq!(env["OCF_RA_VERSION_MAJOR"], "1");
}
