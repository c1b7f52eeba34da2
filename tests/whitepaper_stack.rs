//! The Open-Xchange whitepaper's own cluster (§4.3): its haresources, ha.cf and
//! drbd.conf imported as written give four disks, four file systems and six services in
//! haresources' order, and on a Debian node the bare service names resolve once the
//! three wrappers an operator writes are in /etc/ha.d/resource.d; and `tandem demo
//! --stack whitepaper --failback` runs to its end (docs/whitepaper-stack.md).

mod common;

use std::path::Path;
use std::process::Command;

use common::TANDEM;
use tandem_testkit::root_or_skip;

fn seed(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/config/whitepaper")
        .join(file)
        .display()
        .to_string()
}

/// `tandem config import` of the seed's files as written; the native file.
fn import(authkeys: &Path) -> String {
    common::write_private(authkeys, "auth 1\n1 sha1 lab secret 0123456789\n");
    let out = Command::new(TANDEM)
        .args(["config", "import", "--ha-cf", &seed("ha.cf")])
        .args(["--haresources", &seed("haresources")])
        .args(["--drbd-conf", &seed("drbd.conf")])
        .arg("--authkeys")
        .arg(authkeys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Each `[[group.resource]]`'s type and name, in order.
fn resources(toml: &str) -> Vec<(String, String)> {
    toml.split("[[group.resource]]")
        .skip(1)
        .map(|block| {
            let get = |key: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{key} = ")))
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string()
            };
            (get("type"), get("name"))
        })
        .collect()
}

#[test]
fn the_seeds_files_import_as_four_disks_four_file_systems_and_six_services_in_order() {
    let dir = std::env::temp_dir().join(format!("tandem-wp-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = import(&dir.join("authkeys"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(toml.matches("\n[[disk]]\n").count(), 4, "{toml}");
    let got = resources(&toml);
    let want: Vec<(String, String)> = [
        ("ipaddr", "ip-192.168.1.160"),
        ("disk", "disk-r1"),
        ("filesystem", "fs-var-lib-ldap"),
        ("lsb", "ldap"),
        ("lsb", "saslauthd"),
        ("disk", "disk-r0"),
        ("filesystem", "fs-var-lib-pgsql"),
        ("lsb", "postgresql"),
        ("disk", "disk-r2"),
        ("disk", "disk-r3"),
        ("filesystem", "fs-var-lib-imap"),
        ("filesystem", "fs-var-spool-imap"),
        ("lsb", "cyrus"),
        ("lsb", "postfix"),
        ("lsb", "openexchange"),
    ]
    .iter()
    .map(|(t, n)| (t.to_string(), n.to_string()))
    .collect();
    assert_eq!(got, want);
    let count = |t: &str| got.iter().filter(|(ty, _)| ty == t).count();
    assert_eq!(
        (count("disk"), count("filesystem"), count("lsb")),
        (4, 4, 6)
    );
    for (disk, dev) in [("r0", 0), ("r1", 1), ("r2", 2), ("r3", 3)] {
        assert!(
            toml.contains(&format!("device = \"/dev/tandem/{disk}\"")),
            "/dev/drbd{dev} → /dev/tandem/{disk}: {toml}"
        );
    }
}

/// In a lab node (its own /etc/ha.d), `tandem config check` of the imported file:
/// `ldap`, `cyrus` and `openexchange` are not Debian's script names, so check warns
/// about those three (and only those: saslauthd, postgresql and postfix are Debian's
/// own); with the wrappers in /etc/ha.d/resource.d every name resolves.
#[test]
fn in_a_lab_node_the_seeds_service_names_resolve_once_the_wrappers_exist() {
    if !root_or_skip("builds a lab") {
        return;
    }
    for script in ["slapd", "saslauthd", "postgresql", "cyrus-imapd", "postfix"] {
        assert!(
            Path::new("/etc/init.d").join(script).is_file(),
            "/etc/init.d/{script} missing: scripts/install-deps installs the stack's packages"
        );
    }
    let mut topology = tandem_lab::Topology::whitepaper();
    for h in &mut topology.hosts {
        h.private_dirs.push("/etc/ha.d".into());
    }
    let lab = tandem_lab::Lab::up_auto(topology).unwrap();
    let toml = import(&lab.data_dir().join("authkeys"))
        .replace("fstype = \"reiserfs\"", "fstype = \"ext4\"");
    let config = lab.data_dir().join("cluster.toml");
    std::fs::write(&config, toml).unwrap();
    let check = || {
        let mut cmd = Command::new(TANDEM);
        cmd.arg("-c").arg(&config).args(["config", "check"]);
        let out = lab.output("ox1", cmd).unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let warned = check();
    let missing: Vec<&str> = [
        "ldap",
        "saslauthd",
        "postgresql",
        "cyrus",
        "postfix",
        "openexchange",
    ]
    .into_iter()
    .filter(|s| {
        warned.contains(&format!(
            "/etc/ha.d/resource.d/{s} or /etc/init.d/{s} does not exist"
        ))
    })
    .collect();
    assert_eq!(missing, ["ldap", "cyrus", "openexchange"], "{warned}");
    let rd = lab
        .host_dir("ox1")
        .unwrap()
        .join("root/etc/ha.d/resource.d");
    std::fs::create_dir_all(&rd).unwrap();
    for (name, target) in [
        ("ldap", "slapd"),
        ("cyrus", "cyrus-imapd"),
        ("openexchange", "true"),
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let p = rd.join(name);
        std::fs::write(&p, format!("#!/bin/sh\nexec /etc/init.d/{target} \"$@\"\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let after = check();
    assert!(!after.contains("does not exist on this node"), "{after}");
    let report = lab.down().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// The whole demo: exit 0 only if every step happened and every check passed.
#[test]
fn the_whitepaper_stack_fails_over_and_back_and_loses_nothing_acknowledged() {
    if !root_or_skip("builds a lab") {
        return;
    }
    let out = Command::new(TANDEM)
        .args(["demo", "--stack", "whitepaper", "--failback"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "ox2 declares ox1 dead",
        "ox2 fenced ox1 through lab-switch",
        "r0 promoted to primary on ox2",
        "r3 promoted to primary on ox2",
        "fs-var-spool-imap: ext4 mounted on ox2",
        "ldap up on ox2",
        "cyrus up on ox2",
        "openexchange up on ox2",
        "ip-192.168.1.160: address up on ox2",
        "smtp client: first success",
        "ox client: first success",
        "auto_failback off: the group stays on ox2",
        "openexchange up on ox1",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert_eq!(
        stdout.matches("every acknowledged item is on").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("taken down: nothing left"), "{stdout}");
}
