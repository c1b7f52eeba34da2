//! `tandem demo` — the README's main command — runs to the end: the group fails over
//! through a fence, and the client is answered again.

mod common;

use common::{TANDEM, root_or_skip};

#[test]
fn the_demo_fails_over_through_a_fence_and_reports_the_outage() {
    if !root_or_skip("tandem demo") {
        return;
    }
    let out = std::process::Command::new(TANDEM)
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "ox2 declares ox1 dead",
        "ox2 fenced ox1 through lab-switch (off: success)",
        "192.168.1.160 up on ox2",
        "the client is answered again",
        "outage seen by the client",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The fence comes before the address: never both nodes serving.
    let at = |needle: &str| stdout.find(needle).unwrap();
    assert!(
        at("ox2 fenced ox1") < at("192.168.1.160 up on ox2"),
        "{stdout}"
    );
}
