//! `tandem config check` runs each resource's agent checks on this node, so that a bad
//! resource definition shows up at check time rather than at failover time.

mod common;

use std::process::Command;

use common::{TANDEM, write_private};

fn config(dir: &std::path::Path, resource: &str) -> String {
    format!(
        r#"[cluster]
name = "check"
key_file = "{dir}/key"
fencing = "none"

[[node]]
name = "a"
[[node]]
name = "b"

[[link]]
name = "hb"
type = "ucast"
interface = "eth0"
peers = ["10.0.0.1", "10.0.0.2"]

[[group]]
name = "g"
home = "a"

{resource}
"#,
        dir = dir.display()
    )
}

fn check(name: &str, resource: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("tandem-check-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_private(&dir.join("key"), "a key of sixteen bytes or more\n");
    let file = dir.join("cluster.toml");
    std::fs::write(&file, config(&dir, resource)).unwrap();
    let out = Command::new(TANDEM)
        .arg("-c")
        .arg(&file)
        .args(["config", "check"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&file.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn an_unknown_ocf_agent_is_an_error_at_check_time() {
    let (code, stderr) = check(
        "unknown",
        r#"[[group.resource]]
name = "svc"
type = "ocf"
provider = "heartbeat"
agent = "NoSuchAgentAnywhere""#,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("FILE:22:1: error: resource svc: "),
        "{stderr}"
    );
    assert!(stderr.contains("NoSuchAgentAnywhere"), "{stderr}");
}

#[test]
fn a_missing_required_ocf_parameter_is_an_error_at_check_time() {
    if !tandem_testkit::skip_unless(
        std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/IPaddr2").exists(),
        "resource-agents is not installed (scripts/install-deps installs it)",
    ) {
        return;
    }
    let (code, stderr) = check(
        "missing-param",
        r#"[[group.resource]]
name = "vip2"
type = "ocf"
provider = "heartbeat"
agent = "IPaddr2"
params = { cidr_netmask = "24" }"#,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("FILE:22:1: error: resource vip2: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("ip"),
        "names the missing parameter: {stderr}"
    );
}

/// The whitepaper's reiserfs was removed from Linux: `config check` says so where the
/// resource is written, with what to use instead; a type the kernel has is fine.
#[test]
fn a_file_system_type_the_kernel_lacks_is_an_error_with_a_suggestion() {
    let fs = |fstype: &str| {
        format!(
            r#"[[group.resource]]
name = "pgsql-fs"
type = "filesystem"
device = "/dev/tandem/r0"
directory = "/var/lib/pgsql"
fstype = "{fstype}""#
        )
    };
    let (code, stderr) = check("reiserfs", &fs("reiserfs"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("FILE:22:1: error: resource pgsql-fs: file-system type reiserfs cannot be mounted here: reiserfs was removed from Linux in 6.13"),
        "{stderr}"
    );
    assert!(
        stderr.contains("use ext4 (mkfs.ext4 /dev/tandem/r0"),
        "{stderr}"
    );
    let (code, stderr) = check("ext4", &fs("ext4"));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_group_whose_report_cannot_fit_one_message_is_an_error_at_its_name() {
    let resources: String = (1..=40)
        .map(|i| {
            format!(
                "[[group.resource]]\nname = \"address-{i:03}\"\ntype = \"ipaddr\"\naddress = \"10.0.1.{i}/24\"\n"
            )
        })
        .collect();
    let (code, stderr) = check("oversized-report", &resources);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with("FILE:18:1: error: group g: its report to the peer can take "),
        "{stderr}"
    );
    assert!(stderr.contains("40 resources"), "{stderr}");
    // Nine resources (the whitepaper's group) fit.
    let nine: String =
        resources
            .split("[[group.resource]]")
            .skip(1)
            .take(9)
            .fold(String::new(), |mut s, r| {
                s.push_str("[[group.resource]]");
                s.push_str(r);
                s
            });
    let (code, stderr) = check("nine", &nine);
    assert_eq!(code, 0, "{stderr}");
}
