//! Helpers shared by the lab's test binaries.

/// Root-gated tests: under CI they must run, elsewhere they say why they skip.
pub fn root() -> bool {
    if tandem_lab::require_root().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("these lab tests need root, and CI=true: run them as root");
    }
    eprintln!("skipping: the lab needs root (namespaces, cgroups, mounts)");
    false
}
