//! Taking labs down: one by name, every lab (and what killed runs left), and the
//! report of what could not be removed.

use super::*;

/// Takes down the lab `name`, built by this or another process, even half-built or
/// left over by a killed run.
pub fn down(name: &str) -> Result<TeardownReport, LabError> {
    require_root()?;
    check_lab_name(name)?;
    let keepers: Vec<u32> = load_state(name)
        .map(|s| s.hosts.values().filter_map(|h| h.keeper_pid).collect())
        .unwrap_or_default();
    let known = state_dir(name).exists()
        || data_dir(name).exists()
        || cg_path(&lab_cgroup_rel(name)).exists()
        || lab_netns(name).next().is_some();
    if !known {
        return Err(LabError::NoSuchLab(name.to_string()));
    }
    teardown_lab(name, &|| {
        for k in &keepers {
            sys::try_reap(*k);
        }
    })
}

/// The live process that owns a lab through a `Lab` handle, if any.
pub fn lab_owner(name: &str) -> Option<u32> {
    let (pid, start) = load_state(name).ok()?.owner?;
    match sys::proc_stat(pid) {
        Some((info, s)) if s == start && info.state != 'Z' => Some(pid),
        _ => None,
    }
}

/// Takes down every lab found — state directories, `tl-*` namespaces, lab cgroups and
/// data directories, whatever a killed run left — except labs whose owning process is
/// still alive (a test running right now), unless `force`.
pub fn down_all(force: bool) -> Result<Vec<TeardownReport>, LabError> {
    require_root()?;
    let mut names = std::collections::BTreeSet::new();
    for root in [STATE_ROOT, DATA_ROOT] {
        if let Ok(rd) = fs::read_dir(root) {
            for e in rd.flatten() {
                names.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    if let Ok(rd) = fs::read_dir(cg_path(&format!("/{CGROUP_DIR}"))) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = n.strip_prefix("tl-") {
                names.insert(rest.to_string());
            }
        }
    }
    if let Ok(rd) = fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = n.strip_prefix("tl-") {
                if let Some((lab, _)) = rest.split_once('-') {
                    names.insert(lab.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for n in names {
        if check_lab_name(&n).is_err() {
            continue;
        }
        if let (false, Some(pid)) = (force, lab_owner(&n)) {
            out.push(TeardownReport {
                name: n,
                skipped: Some(format!("in use by live process {pid} (use --force)")),
                ..Default::default()
            });
            continue;
        }
        out.push(down(&n)?);
    }
    Ok(out)
}

pub(super) fn lab_netns(name: &str) -> impl Iterator<Item = String> {
    let prefix = netns_prefix(name);
    fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(move |n| n.starts_with(&prefix))
}

/// Stops a daemon of the lab (checked by its command line, so a reused PID is left
/// alone) and waits a moment for it to exit.
pub(super) fn stop_daemon(pid: u32, verb: &str, rep: &mut TeardownReport) {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(verb) {
        return;
    }
    sys::kill(pid, libc::SIGTERM);
    let gone = sys::wait_until(
        &format!("tandem lab {verb} (pid {pid}) to exit"),
        3_000,
        || {
            sys::try_reap(pid);
            Ok(!matches!(sys::proc_stat(pid), Some((info, _)) if info.state != 'Z'))
        },
    );
    if let Err(e) = gone {
        rep.problems.push(e.to_string());
    }
}

pub(super) fn teardown_lab(name: &str, reap: &dyn Fn()) -> Result<TeardownReport, LabError> {
    let mut rep = TeardownReport {
        name: name.to_string(),
        ..Default::default()
    };
    // 0. The power-switch daemon, if `tandem lab up` left one (checked by its command
    //    line, so a reused PID is left alone).
    if let Some(pid) = load_state(name).ok().and_then(|s| s.switch_pid) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("switchd") {
            sys::kill(pid, libc::SIGTERM);
        }
    }
    // 1. Processes: kill every host cgroup, wait until empty and reaped (bounded).
    let lab_rel = lab_cgroup_rel(name);
    let lab_cg = cg_path(&lab_rel);
    if lab_cg.exists() {
        rep.killed = sys::procs_in_cgroup(&lab_rel).len();
        let _ = sys::cg_kill(&lab_cg);
        if let Ok(rd) = fs::read_dir(&lab_cg) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let _ = sys::cg_kill(&e.path());
                let _ = sys::cg_write(&e.path(), "cgroup.freeze", "0");
            }
        }
        let _ = sys::cg_write(&lab_cg, "cgroup.freeze", "0");
        let r = sys::wait_until(
            "lab processes to die and be reaped",
            KILL_TIMEOUT_MS,
            || {
                reap();
                if sys::cg_event(&lab_cg, "populated")? {
                    // Stragglers: forks that raced the kill, or no `cgroup.kill` at all.
                    if let Ok(rd) = fs::read_dir(&lab_cg) {
                        for e in rd.flatten().filter(|e| e.path().is_dir()) {
                            let _ = sys::cg_kill(&e.path());
                        }
                    }
                    return Ok(false);
                }
                // A zombie keeps its cgroup until reaped: wait for the scan to come up empty.
                Ok(sys::procs_in_cgroup(&lab_rel).is_empty())
            },
        );
        if let Err(e) = r {
            let left: Vec<String> = sys::procs_in_cgroup(&lab_rel)
                .iter()
                .map(|p| format!("{} ({}, {}, parent {})", p.pid, p.comm, p.state, p.ppid))
                .collect();
            rep.problems.push(format!("{e}: left {}", left.join(", ")));
        }
    }
    reap();
    // 1b. Lossy disks, once no host process uses them: those this process serves stop
    //     cleanly; a disk daemon is stopped; whatever FUSE connection is still up under
    //     the lab's dirs (a server that is stuck, or serves from a live process that
    //     does not own the lab any more) is aborted, so no access can hang on it.
    rep.problems.extend(crate::disk::stop(name));
    let dirs = [state_dir(name), data_dir(name)];
    if let Some(pid) = load_state(name).ok().and_then(|s| s.disk_pid) {
        stop_daemon(pid, "diskd", &mut rep);
    }
    let conns: Vec<u32> = sys::fuse_mounts_under(&dirs)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    if let Err(e) = sys::fuse_abort(&conns) {
        rep.problems.push(e.to_string());
    }
    // 2. Mounts in the machine's namespace that belong to the lab: anything mounted
    //    under its directories, or from a loop device backed by a file there.
    let loops = sys::loop_devices_under(&dirs);
    let mut targets: Vec<PathBuf> = sys::machine_mounts()
        .into_iter()
        .filter(|(src, target)| {
            dirs.iter().any(|d| target.starts_with(d)) || loops.iter().any(|(dev, _)| dev == src)
        })
        .map(|(_, t)| t)
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
    targets.dedup();
    for t in targets {
        match sys::umount_lazy(&t) {
            Ok(()) => rep.unmounted.push(t.display().to_string()),
            Err(e) => rep.problems.push(e.to_string()),
        }
    }
    // 3. Loop devices backed by the lab's files (after the unmounts that held them).
    //    A loop device set up by `mount -o loop` inside a host clears itself once the
    //    host's mount namespace is gone, which the kernel finishes asynchronously: keep
    //    detaching for a moment rather than racing it.
    let start = sys::now();
    loop {
        let left = sys::loop_devices_under(&dirs);
        if left.is_empty() {
            break;
        }
        if start.elapsed() > Duration::from_millis(3000) {
            for (dev, file) in left {
                rep.problems.push(format!(
                    "loop device {dev} ({}) could not be detached",
                    file.display()
                ));
            }
            break;
        }
        for (dev, _) in left {
            if sys::run("losetup", &["-d", &dev]).is_ok() && !rep.loop_devices.contains(&dev) {
                rep.loop_devices.push(dev);
            }
        }
        sys::pause_ms(50);
    }
    // 4. Namespaces (hosts and the switch): their veths and bridges go with them.
    let nss: Vec<String> = lab_netns(name).collect();
    for ns in nss {
        match sys::run("ip", &["netns", "del", &ns]) {
            Ok(_) => rep.netns.push(ns),
            Err(e) => rep.problems.push(e.to_string()),
        }
    }
    // 5. Cgroups, children first.
    if lab_cg.exists() {
        if let Ok(rd) = fs::read_dir(&lab_cg) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                if let Err(err) = fs::remove_dir(e.path()) {
                    rep.problems
                        .push(format!("rmdir {}: {err}", e.path().display()));
                }
            }
        }
        if let Err(err) = fs::remove_dir(&lab_cg) {
            rep.problems
                .push(format!("rmdir {}: {err}", lab_cg.display()));
        }
    }
    // 6. Directories, unless something is still mounted below (never delete through a
    //    mount into someone's filesystem).
    for d in &dirs {
        let still_mounted = sys::machine_mounts().iter().any(|(_, t)| t.starts_with(d));
        if still_mounted {
            rep.problems
                .push(format!("{} still has mounts; left in place", d.display()));
            continue;
        }
        if d.exists() {
            if let Err(err) = fs::remove_dir_all(d) {
                rep.problems.push(format!("remove {}: {err}", d.display()));
            }
        }
    }
    Ok(rep)
}
