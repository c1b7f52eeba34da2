//! The systemd units in `packaging/` pass `systemd-analyze verify` (with the built
//! binary standing in for /usr/sbin/tandem), and the commands they start exist.

mod common;

use common::TANDEM;
use tandem_testkit::skip_unless;

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(format!("{}/packaging/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("read the unit")
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    if !skip_unless(analyze.exists(), "needs systemd-analyze (Debian's systemd)") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tandem-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for unit in ["tandem.service", "tandem-witness.service"] {
        let path = dir.join(unit);
        std::fs::write(&path, unit_text(unit).replace("/usr/sbin/tandem", TANDEM)).unwrap();
        let out = std::process::Command::new(analyze)
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}: {said}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_units_start_commands_that_exist_and_notify_systemd() {
    for (unit, command) in [
        ("tandem.service", "daemon"),
        ("tandem-witness.service", "witness"),
    ] {
        let text = unit_text(unit);
        assert!(
            text.contains(&format!("cluster.toml {command}\n")),
            "{unit}"
        );
        assert!(
            text.contains("Type=notify") && text.contains("WatchdogSec="),
            "{unit}"
        );
        let help = std::process::Command::new(TANDEM)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(help.status.success(), "tandem {command} --help");
    }
}

/// The manual pages and completions come from the command line itself: one page per
/// visible subcommand, and completions that know every subcommand.
#[test]
fn man_pages_and_completions_cover_every_subcommand() {
    let dir = std::env::temp_dir().join(format!("tandem-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ok = std::process::Command::new(TANDEM)
        .args(["generate", "man"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(ok.success());
    let bash = std::process::Command::new(TANDEM)
        .args(["generate", "completions", "bash"])
        .output()
        .unwrap();
    assert!(bash.status.success());
    let bash = String::from_utf8_lossy(&bash.stdout);
    for sub in [
        "daemon",
        "witness",
        "status",
        "standby",
        "takeover",
        "maintenance",
        "disk",
        "fence",
        "config",
        "lab",
        "bench",
        "simulate",
        "demo",
    ] {
        let page = std::fs::read_to_string(dir.join(format!("tandem-{sub}.1")))
            .unwrap_or_else(|e| panic!("tandem-{sub}.1: {e}"));
        assert!(page.contains(&format!("tandem {sub}")), "tandem-{sub}.1");
        assert!(bash.contains(sub), "bash completions lack {sub}");
    }
    let main = std::fs::read_to_string(dir.join("tandem.1")).unwrap();
    assert!(main.contains("witness") && !dir.join("tandem-generate.1").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

/// The package's example configuration passes `tandem config check` with a key made the
/// way its maintainer script makes one (the pipeline is read from the script itself).
#[test]
fn the_example_configuration_checks_with_the_key_the_postinst_makes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let postinst = std::fs::read_to_string(format!("{root}/packaging/debian/postinst")).unwrap();
    let keygen = postinst
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("head -c 32 /dev/urandom"))
        .expect("the postinst makes a key")
        .replace("/etc/tandem/authkey", "\"$1\"");
    let dir = std::env::temp_dir().join(format!("tandem-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("authkey");
    let made = std::process::Command::new("sh")
        .args(["-c", &format!("umask 077; {keygen}; echo >> \"$1\""), "sh"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let example = std::fs::read_to_string(format!("{root}/testdata/config/example.toml"))
        .unwrap()
        .replace("/etc/tandem/authkey", key.to_str().unwrap());
    let config = dir.join("cluster.toml");
    std::fs::write(&config, example).unwrap();
    let out = std::process::Command::new(TANDEM)
        .arg("-c")
        .arg(&config)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(dir).unwrap();
}
