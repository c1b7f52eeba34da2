//! `tandem config` end to end: the real binary imports the whitepaper's files, checks
//! and shows the result, and rejects broken input with exit code 1, the exact message
//! on stderr and nothing on stdout.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tandem")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn whitepaper(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/config/whitepaper")
        .join(file)
        .display()
        .to_string()
}

/// A scratch directory removed on drop (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p =
            std::env::temp_dir().join(format!("tandem-config-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn whitepaper_import_is_accepted_by_check_and_show_once_its_reiserfs_is_ext4() {
    let dir = Scratch::new("import");
    let authkeys = dir.path("authkeys");
    std::fs::write(&authkeys, "auth 1\n1 sha1 ox cluster secret\n").unwrap();
    std::fs::set_permissions(&authkeys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tandem(&[
        "config",
        "import",
        "--ha-cf",
        &whitepaper("ha.cf"),
        "--haresources",
        &whitepaper("haresources"),
        "--drbd-conf",
        &whitepaper("drbd.conf"),
        "--authkeys",
        authkeys.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(":2:12: warning: `ucast eth1 192.168.180.10` names only ox2's address"),
        "{stderr}"
    );
    let toml = text(&out.stdout);
    assert!(
        toml.contains(&format!("key_file = \"{}\"", authkeys.display())),
        "{toml}"
    );
    let file = dir.path("cluster.toml");
    std::fs::write(&file, &toml).unwrap();

    // The whitepaper's reiserfs is gone from today's kernels: check refuses each one,
    // located, with the way out; the operator moves the data to ext4.
    let out = tandem(&["-c", file.to_str().unwrap(), "config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr
            .matches("file-system type reiserfs cannot be mounted here")
            .count(),
        4,
        "{stderr}"
    );
    assert!(stderr.contains("mkfs.ext4 /dev/tandem/r0"), "{stderr}");
    let toml = toml.replace("fstype = \"reiserfs\"", "fstype = \"ext4\"");
    std::fs::write(&file, &toml).unwrap();

    let out = tandem(&["-c", file.to_str().unwrap(), "config", "check"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout,
        format!(
            "{}: ok\ncluster ox: 2 node(s) (ox1, ox2), 1 link(s), 0 fence device(s), 4 disk(s), 1 group(s) with 15 resource(s)\ntiming: keepalive 1s, deadtime 10s, warntime 5s, initdead 20s\n",
            file.display()
        )
    );

    // `show` prints the normalized file: the same model, without the import's notes.
    let out = tandem(&["-c", file.to_str().unwrap(), "config", "show"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("[cluster]\nname = \"ox\"\n"), "{shown}");
    let body = toml.find("[cluster]").unwrap();
    assert_eq!(shown, toml[body..]);

    // The same key file made readable by others: check refuses, pointing at key_file.
    std::fs::set_permissions(&authkeys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = tandem(&["-c", file.to_str().unwrap(), "config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let line = toml
        .lines()
        .position(|l| l.starts_with("key_file"))
        .unwrap()
        + 1;
    assert_eq!(
        text(&out.stderr),
        format!(
            "{f}:{line}:12: error: key file {k} is readable by group or others (mode 0644): expected mode 0600 or stricter (chmod 600 {k})\n",
            f = file.display(),
            k = authkeys.display()
        )
    );
}

#[test]
fn broken_native_file_fails_with_exact_message() {
    let dir = Scratch::new("broken");
    let file = dir.path("cluster.toml");
    std::fs::write(
        &file,
        "[cluster]\nname = \"ox\"\nkeepalive = \"2s\"\ndeadtime = \"4s\"\n\n[[node]]\nname = \"ox1\"\n\n[[group]]\nname = \"g\"\nhome = \"ox2\"\n",
    )
    .unwrap();
    let f = file.display();
    for sub in ["check", "show"] {
        let out = tandem(&["-c", file.to_str().unwrap(), "config", sub]);
        assert_eq!(out.status.code(), Some(1), "{sub}");
        assert!(out.stdout.is_empty(), "{sub}: {}", text(&out.stdout));
        assert_eq!(
            text(&out.stderr),
            format!(
                "{f}:4:12: error: deadtime (4s) must be greater than 2 × keepalive (2s): expected deadtime > 4s\n\
                 {f}:11:8: error: `home` names unknown node `ox2`: expected one of the [[node]] names (ox1)\n"
            ),
            "{sub}"
        );
    }
}

#[test]
fn missing_file_fails_cleanly() {
    let out = tandem(&["-c", "/nonexistent/tandem/cluster.toml", "config", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr)
            .starts_with("/nonexistent/tandem/cluster.toml:1:1: error: cannot read configuration:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn broken_import_writes_nothing_and_exits_1() {
    let dir = Scratch::new("crm");
    let ha_cf = dir.path("ha.cf");
    std::fs::write(
        &ha_cf,
        "keepalive 2\ndeadtime 30\nnode ox1\nnode ox2\ncrm respawn\nucast eth1 192.168.180.10\n",
    )
    .unwrap();
    let out = tandem(&[
        "config",
        "import",
        "--ha-cf",
        ha_cf.to_str().unwrap(),
        "--haresources",
        &whitepaper("haresources"),
        "--drbd-conf",
        &whitepaper("drbd.conf"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{}:5:5: error: `crm respawn`: CRM/CIB configurations (Heartbeat 2 / Pacemaker) are out of scope: tandem imports Heartbeat 1 clusters described by haresources; expected `crm off` or no `crm` line\n",
            ha_cf.display()
        )
    );
}
