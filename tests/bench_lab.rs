//! Each lab benchmark once on a tiny size: it completes and prints its table (the
//! figures themselves are recorded in docs/benchmarks.md, never asserted here).

mod common;

use common::TANDEM;
use tandem_testkit::root_or_skip;

fn bench(args: &[&str]) -> String {
    let out = std::process::Command::new(TANDEM)
        .arg("bench")
        .args(args)
        .output()
        .expect("run tandem bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tandem bench {}: {}\n{stdout}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_failover_bench_runs_a_trial_of_each_system() {
    if !root_or_skip("bench failover") {
        return;
    }
    let out = bench(&["failover", "--trials", "1"]);
    for row in [
        "| tandem (fencing",
        "| keepalived (VRRPv3",
        "| dead verdict",
        "| vote and fence done",
    ] {
        assert!(out.contains(row), "no {row:?} row:\n{out}");
    }
}

#[test]
fn the_footprint_bench_measures_both_daemons() {
    if !root_or_skip("bench footprint") {
        return;
    }
    let out = bench(&["footprint", "--seconds", "2"]);
    for row in [
        "| tandem daemon, idle",
        "| tandem daemon + disk service, connected disk",
        "| keepalived",
    ] {
        assert!(out.contains(row), "no {row:?} row:\n{out}");
    }
}
