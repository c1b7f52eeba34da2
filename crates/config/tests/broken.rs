//! The broken-configuration corpus: every file under `testdata/config/broken/` must be
//! rejected with exactly the message in its `.expected` file.
//!
//! - `native/NAME.toml` + `native/NAME.expected`: a native file (`@DIR@` stands for the
//!   corpus directory, so key files can be referenced by absolute path).
//! - `import/NAME/` holds the broken legacy file(s) and `expected`; files it lacks come
//!   from the whitepaper fixtures, and a `no-drbd.conf` marker means none is passed.
//!
//! Set `TANDEM_BLESS=1` to (re)write the expected files after checking them by eye.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tandem_config::import::{HaFiles, import};
use tandem_config::native::{FileChecks, parse};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/config")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn bless() -> bool {
    std::env::var_os("TANDEM_BLESS").is_some()
}

/// Compares (or blesses) one case; returns a failure description.
fn compare(name: &str, expected_path: &Path, actual: &str) -> Option<String> {
    if bless() {
        std::fs::write(expected_path, format!("{actual}\n")).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(expected_path)
        .unwrap_or_else(|e| panic!("{name}: read {}: {e}", expected_path.display()));
    (expected.trim_end() != actual).then(|| {
        format!(
            "--- {name}\nexpected:\n{}\nactual:\n{actual}\n",
            expected.trim_end()
        )
    })
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn every_broken_file_is_rejected_with_its_exact_message() {
    let native = root().join("broken/native");
    let keys = native.join("keys");
    chmod(&keys.join("good.key"), 0o600);
    chmod(&keys.join("bad-method.key"), 0o600);
    chmod(&keys.join("readable.key"), 0o644);
    let dir = native.canonicalize().unwrap().display().to_string();

    let mut failures = Vec::new();
    let mut count = 0;
    for path in sorted_entries(&native) {
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        count += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("@DIR@", &dir);
        let actual = match parse(&name, &text, FileChecks::On) {
            Ok(_) => "(accepted: expected an error)".to_string(),
            Err(d) => d.to_string().replace(&dir, "@DIR@"),
        };
        if let Some(f) = compare(&name, &path.with_extension("expected"), &actual) {
            failures.push(f);
        }
    }

    let whitepaper = root().join("whitepaper").canonicalize().unwrap();
    for case in sorted_entries(&root().join("broken/import")) {
        count += 1;
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let case = case.canonicalize().unwrap();
        let pick = |file: &str| {
            let p = case.join(file);
            if p.exists() { p } else { whitepaper.join(file) }
        };
        let authkeys = case.join("authkeys");
        if authkeys.exists() {
            chmod(
                &authkeys,
                if name.contains("readable") {
                    0o644
                } else {
                    0o600
                },
            );
        }
        let files = HaFiles {
            ha_cf: pick("ha.cf"),
            haresources: pick("haresources"),
            drbd_conf: (!case.join("no-drbd.conf").exists()).then(|| pick("drbd.conf")),
            authkeys: authkeys.exists().then_some(authkeys),
            ..HaFiles::default()
        };
        let actual = match import(&files) {
            Ok(_) => "(accepted: expected an error)".to_string(),
            Err(d) => d
                .to_string()
                .replace(&format!("{}/", case.display()), "")
                .replace(&format!("{}/", whitepaper.display()), ""),
        };
        if let Some(f) = compare(&name, &case.join("expected"), &actual) {
            failures.push(f);
        }
    }
    assert!(count >= 30, "only {count} broken cases");
    assert!(
        failures.is_empty(),
        "{} of {count} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
