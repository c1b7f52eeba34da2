//! Golden cases: every `testdata/policy/NAME.toml` is planned, checked against the
//! safety rules, rendered, and compared with `NAME.summary`. `UPDATE_GOLDEN=1` rewrites
//! the summaries instead (then read every changed one: they are the specification).

use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/policy")
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("read testdata/policy")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 28, "only {} golden cases", names.len());
    let mut failures = Vec::new();
    for path in &names {
        let text = std::fs::read_to_string(path).expect("read case");
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let case = match tandem_policy::case::load(&file, &text) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{file}: does not load: {e}"));
                continue;
            }
        };
        let t = tandem_policy::plan(&case.config, &case.view);
        if let Err(v) = tandem_policy::check(&case.config, &case.view, &t) {
            failures.push(format!("{file}: plan violates safety: {v}"));
        }
        assert_eq!(
            t,
            tandem_policy::plan(&case.config, &case.view),
            "{file}: not deterministic"
        );
        let got = tandem_policy::render::summary(&case.config, &case.view, &t);
        let golden = path.with_extension("summary");
        if update {
            std::fs::write(&golden, &got).expect("write summary");
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{file}: summary differs\n--- want ({})\n{want}--- got\n{got}",
                golden.display()
            )),
            Err(_) => failures.push(format!(
                "{file}: no {} (run with UPDATE_GOLDEN=1, then review it)",
                golden.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
