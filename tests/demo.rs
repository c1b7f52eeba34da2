//! `tandem demo` — the README's main command — runs to the end: ox1 loses power under
//! load, ox2 fences it, promotes the replicated disk, mounts it, starts the service and
//! takes the address, and no record the client saw acknowledged is missing. Also with
//! PostgreSQL, and a Ctrl-C in the middle: in every case the lab leaves nothing behind.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TANDEM, wait_for};
use tandem_testkit::root_or_skip;

/// The timeline's lines, in the order the steps must happen.
const STEPS: [&str; 8] = [
    "ox2 declares ox1 dead",
    "ox2 fenced ox1 through lab-switch (off: success)",
    "r0 promoted to primary on ox2",
    "/dev/tandem/r0 up on ox2",
    "ext4 on /dev/tandem/r0 mounted on ox2",
    " up on ox2", // the service (the next line is the address)
    "192.168.1.160 up on ox2",
    "first acknowledged write after",
];

/// Runs `tandem demo ARGS` to the end; its stdout.
fn run_demo(args: &[&str]) -> String {
    let out = Command::new(TANDEM)
        .arg("demo")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The demo's lab name, from its "demo: lab NAME:" line.
fn lab_name(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("demo: lab "))
        .unwrap_or_else(|| panic!("no lab line in:\n{stdout}"));
    line.split(':').next().unwrap().to_string()
}

/// What a lab could leave behind, looked up by name: namespaces, directories, mounts,
/// loop devices backed by its files, its cgroup.
fn assert_nothing_left(name: &str) {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("tl-{name}-")) {
            left.push(n);
        }
    }
    for d in [
        format!("/var/lib/tandem-lab/{name}"),
        format!("/run/tandem-lab/{name}"),
        format!("/sys/fs/cgroup/unified/tandem-lab/tl-{name}"),
        format!("/sys/fs/cgroup/tandem-lab/tl-{name}"),
    ] {
        if Path::new(&d).exists() {
            left.push(d);
        }
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(
        mi.lines()
            .filter(|l| l.contains(&format!("tandem-lab/{name}")))
            .map(str::to_owned),
    );
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if b.contains(&format!("tandem-lab/{name}/"))
                || b.contains(&format!("!tandem-lab!{name}!"))
            {
                left.push(format!("{:?}: {}", e.file_name(), b.trim()));
            }
        }
    }
    assert!(left.is_empty(), "lab {name} left: {left:#?}");
}

/// The data check's line: `acknowledged N, lost 0` with N > 0.
fn assert_nothing_lost(stdout: &str) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("acknowledged "))
        .unwrap_or_else(|| panic!("no data check in:\n{stdout}"));
    let n: u64 = line
        .trim_start_matches("acknowledged ")
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 0, "{line}");
    assert!(line.ends_with(", lost 0"), "{line}");
}

/// Every step is printed, each once, in order — except that the client's first
/// acknowledgement may come before the address's start action has ended (its stamp is
/// after the gratuitous ARP): it must only follow the service.
fn assert_timeline(stdout: &str) {
    let timeline = stdout
        .split("timeline (ms after the power-off")
        .nth(1)
        .unwrap_or_else(|| panic!("no timeline in:\n{stdout}"));
    let mut from = 0;
    let mut after_service = 0;
    for step in STEPS {
        let start = if step == STEPS[7] {
            after_service
        } else {
            from
        };
        let at = timeline[start..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order in:\n{timeline}"));
        if step == STEPS[5] {
            after_service = start + at + step.len();
        }
        if step != STEPS[7] {
            from = start + at + step.len();
        }
    }
    assert!(stdout.contains("outage seen by the client: "), "{stdout}");
}

/// The demo with `args` runs to its end: the whole timeline with `service_up` in it,
/// nothing lost, nothing left.
fn end_to_end(args: &[&str], service_up: &str) {
    let stdout = run_demo(args);
    assert_timeline(&stdout);
    assert!(
        stdout.contains(service_up),
        "{service_up:?} missing in:\n{stdout}"
    );
    assert_nothing_lost(&stdout);
    assert_nothing_left(&lab_name(&stdout));
}

#[test]
fn the_demo_fails_over_with_its_data_and_loses_no_acknowledged_record() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    end_to_end(&[], "records service (ocf:heartbeat:anything) up on ox2");
}

#[test]
fn the_demo_with_postgresql_loses_no_committed_row() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    if !tandem_testkit::skip_unless(
        Path::new("/usr/lib/postgresql").exists(),
        "PostgreSQL is not installed (scripts/install-deps installs it)",
    ) {
        return;
    }
    end_to_end(
        &["--service", "postgresql"],
        "PostgreSQL (ocf:heartbeat:pgsql) up on ox2",
    );
}

#[test]
fn ctrl_c_in_the_middle_of_the_demo_leaves_nothing_behind() {
    if !root_or_skip("network namespaces, cgroups, mounts") {
        return;
    }
    // As a terminal does it: SIGINT to the demo's whole process group, once the group
    // runs on ox1 with its file system mounted and the client writing.
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(TANDEM)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let name = wait_for(
        Duration::from_secs(120),
        "the demo's client writing",
        || {
            while let Ok(line) = rx.try_recv() {
                seen.push(line);
            }
            seen.iter()
                .any(|l| l.contains("the client writes"))
                .then(|| lab_name(&seen.join("\n")))
        },
    );
    // SAFETY: kill(2) on the process group this test created.
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGINT) }, 0);
    let status = wait_for(Duration::from_secs(60), "the demo to exit", || {
        child.try_wait().unwrap()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    while let Ok(line) = rx.try_recv() {
        seen.push(line);
    }
    assert!(!status.success(), "an interrupted demo exited 0: {seen:#?}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        !seen.iter().any(|l| l.starts_with("acknowledged ")),
        "the demo ran to its end before the interrupt: {seen:#?}"
    );
    assert_nothing_left(&name);
}
