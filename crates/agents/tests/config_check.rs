//! The configuration check the CLI runs: a bad resource definition (unknown OCF type,
//! missing required parameter, missing script) is reported before any failover.

use tandem_agents::{Paths, check_config};
use tandem_config::native::{FileChecks, parse};

const CONFIG: &str = r#"
[cluster]
name = "ox"
fencing = "none"

[[node]]
name = "ox1"
address = "127.0.0.1"

[[node]]
name = "ox2"
address = "127.0.0.2"

[[link]]
type = "ucast"
interface = "lo"
peers = ["127.0.0.1", "127.0.0.2"]

[[group]]
name = "svc"
home = "ox1"

[[group.resource]]
name = "dummy"
type = "ocf"
provider = "heartbeat"
agent = "Dummy"

[[group.resource]]
name = "vip"
type = "ocf"
provider = "heartbeat"
agent = "IPaddr2"
params = { nic = "eth0" }

[[group.resource]]
name = "typo"
type = "ocf"
provider = "heartbeat"
agent = "Dumy"

[[group.resource]]
name = "legacy"
type = "lsb"
script = "tandem-no-such-init-script"
"#;

#[test]
fn config_check_reports_bad_resources_by_name() {
    if !tandem_testkit::skip_unless(
        Paths::default()
            .ocf_root
            .join("resource.d/heartbeat/IPaddr2")
            .exists(),
        "resource-agents not installed",
    ) {
        return;
    }
    let (config, _warnings) =
        parse("check.toml", CONFIG, FileChecks::Off).expect("valid TOML model");
    let issues = check_config(&config, &Paths::default());
    let errors: Vec<(&str, &str)> = issues
        .iter()
        .filter(|i| i.error)
        .map(|i| (i.resource.as_str(), i.message.as_str()))
        .collect();
    assert!(!issues.iter().any(|i| i.resource == "dummy"), "{issues:?}");
    assert!(
        errors
            .iter()
            .any(|(r, m)| *r == "vip" && m.contains("missing required parameter `ip`")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(r, m)| *r == "typo" && m.contains("unknown OCF agent ocf:heartbeat:Dumy")),
        "{errors:?}"
    );
    // A missing script is this node's state, not a definition error: a warning.
    assert!(
        issues
            .iter()
            .any(|i| i.resource == "legacy" && !i.error && i.message.contains("does not exist")),
        "{issues:?}"
    );
    for i in &issues {
        println!(
            "{}: {}: {}",
            i.resource,
            if i.error { "error" } else { "warning" },
            i.message
        );
    }
}
