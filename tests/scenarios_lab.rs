//! `tandem lab scenarios --quick` and a short `tandem lab chaos` run to the end on the
//! data demo's cluster: every quick scenario passes its assertions and audit (one
//! owner, one primary, identical copies, no acknowledged record lost, operator
//! commands working), and ten seeded chaos rounds lose no acknowledged record and never
//! have two nodes serving. Also: every scenario of the issue is implemented, and an
//! unknown one is refused before anything is built.

mod common;

use std::process::Command;

use common::TANDEM;
use tandem_testkit::root_or_skip;

/// Runs `tandem lab ARGS`; exit success, stdout, stderr.
fn lab(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(TANDEM).arg("lab").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_scenario_is_implemented_and_an_unknown_one_is_refused_before_anything_is_built() {
    // Refused before the root check: no lab is needed to say no.
    let (ok, _, err) = lab(&["scenarios", "PowerOff", "NoSuchThing"]);
    assert!(!ok);
    assert!(err.contains("no scenario named \"NoSuchThing\""), "{err}");
    let (ok, out, _) = lab(&["scenarios", "--list"]);
    assert!(ok);
    for name in ["PowerOffBoth", "PartitionHeal", "Reattach", "FailbackOn"] {
        assert!(out.contains(name), "{out}");
    }
    assert!(!out.contains("(not implemented)"), "{out}");
}

#[test]
fn the_quick_scenarios_pass_with_their_audits() {
    if !root_or_skip("the_quick_scenarios_pass_with_their_audits") {
        return;
    }
    let (ok, out, err) = lab(&["scenarios", "--quick"]);
    assert!(ok, "scenarios failed:\n{out}\n{err}");
    let table: Vec<&str> = out.lines().filter(|l| l.starts_with("| ")).collect();
    // The header and one row per quick scenario, each a pass with 0 lost.
    assert!(table.len() > 10, "{out}");
    // The daemons restarted under running resources (maintenance mode) is among them.
    assert!(table.iter().any(|r| r.starts_with("| Reattach |")), "{out}");
    for row in &table[1..] {
        assert!(row.contains("| pass |"), "{row}");
        assert!(row.contains(", 0 lost"), "{row}");
    }
}

#[test]
fn a_short_chaos_run_loses_no_acknowledged_write_and_never_has_two_nodes_serving() {
    if !root_or_skip(
        "a_short_chaos_run_loses_no_acknowledged_write_and_never_has_two_nodes_serving",
    ) {
        return;
    }
    let (ok, out, err) = lab(&["chaos", "--rounds", "8", "--seed", "13"]);
    assert!(ok, "chaos failed:\n{out}\n{err}");
    let summary = out
        .lines()
        .find(|l| l.contains("chaos seed 13: rounds 8,"))
        .unwrap_or_else(|| panic!("no summary in:\n{out}"));
    assert!(summary.contains("lost writes 0,"), "{summary}");
    assert!(summary.contains("dual-active samples 0 of"), "{summary}");
}
