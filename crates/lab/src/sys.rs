//! Thin wrappers over the kernel and iproute2/nftables: commands, cgroup files, /proc
//! scans, namespace switches, and the fork of a host's init. Everything unsafe lives here.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::LabError;

/// Root of the cgroup v2 hierarchy on this kind of machine (cgroup v1 controllers plus a
/// v2 hierarchy without controllers at `unified`); falls back to a pure v2 mount.
pub fn cgroup_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// Runs a command, returns stdout; a non-zero exit becomes an error with stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    run_input(program, args, None)
}

/// As [`run`], feeding `input` on stdin.
pub fn run_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, LabError> {
    let shown = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| LabError::Command {
        cmd: shown.clone(),
        detail: e.to_string(),
    })?;
    if let Some(text) = input {
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| LabError::Command {
                    cmd: shown.clone(),
                    detail: format!("writing stdin: {e}"),
                })?;
        }
    }
    let out = child.wait_with_output().map_err(|e| LabError::Command {
        cmd: shown.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: shown,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS -batch -` with one command per line: one process for many changes.
pub fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let text = lines.join("\n") + "\n";
    run_input("ip", &args, Some(&text)).map(|_| ())
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Writes a cgroup control file (e.g. `cgroup.kill`).
pub fn cg_write(cg: &Path, file: &str, value: &str) -> Result<(), LabError> {
    let p = cg.join(file);
    fs::write(&p, value).map_err(io_err(format!("write {value:?} to {}", p.display())))
}

/// SIGKILLs every process of a cgroup: `cgroup.kill` (Linux 5.14+) does it atomically,
/// forks included; without it, kill each listed PID (callers loop until empty).
pub fn cg_kill(cg: &Path) -> Result<(), LabError> {
    match fs::write(cg.join("cgroup.kill"), "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            for pid in cg_procs(cg) {
                kill(pid, libc::SIGKILL);
            }
            Ok(())
        }
        Err(e) => Err(io_err(format!("write 1 to {}/cgroup.kill", cg.display()))(
            e,
        )),
    }
}

/// Reads `key value` lines of `cgroup.events`.
pub fn cg_event(cg: &Path, key: &str) -> Result<bool, LabError> {
    let p = cg.join("cgroup.events");
    let text = fs::read_to_string(&p).map_err(io_err(format!("read {}", p.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .any(|(k, v)| k == key && v.trim() == "1"))
}

/// PIDs listed in `cgroup.procs` (live processes; zombies are not listed).
pub fn cg_procs(cg: &Path) -> Vec<u32> {
    fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A process as seen in /proc.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    /// PID in the machine's namespace.
    pub pid: u32,
    /// Parent PID.
    pub ppid: u32,
    /// State letter (`Z` for a zombie).
    pub state: char,
    /// Command name.
    pub comm: String,
}

/// Parses /proc/PID/stat (the comm field may contain spaces and parentheses).
pub fn proc_stat(pid: u32) -> Option<(ProcInfo, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    // Field 22 (starttime) is index 19 after the state field.
    let start = rest.get(19)?.parse().ok()?;
    Some((
        ProcInfo {
            pid,
            ppid,
            state,
            comm,
        },
        start,
    ))
}

/// Every process (live or zombie) whose cgroup v2 path is `cg_rel` or below it.
/// A zombie keeps its cgroup until its parent reaps it, while `cgroup.procs` and
/// `populated` already forget it: this scan is how power-off sees zombies.
pub fn procs_in_cgroup(cg_rel: &str) -> Vec<ProcInfo> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    let want = format!("0::{cg_rel}");
    let want_sub = format!("0::{cg_rel}/");
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        let hit = text
            .lines()
            .any(|l| l.trim_end() == want || l.starts_with(&want_sub));
        if hit {
            if let Some((info, _)) = proc_stat(pid) {
                out.push(info);
            }
        }
    }
    out
}

/// Sleeps a little between polls of kernel state; the lab is a test driver, not a core.
pub fn pause_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Reads the monotonic clock for timeouts (the lab is a driver; cores never do this).
#[allow(clippy::disallowed_methods)]
pub fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Polls `cond` every few milliseconds until it holds or `timeout_ms` passes.
pub fn wait_until(
    what: &str,
    timeout_ms: u64,
    mut cond: impl FnMut() -> Result<bool, LabError>,
) -> Result<(), LabError> {
    let start = now();
    loop {
        if cond()? {
            return Ok(());
        }
        if start.elapsed() > Duration::from_millis(timeout_ms) {
            return Err(LabError::Timeout {
                what: what.to_string(),
                ms: timeout_ms,
            });
        }
        pause_ms(5);
    }
}

fn cstr(s: &str) -> Result<CString, LabError> {
    CString::new(s).map_err(|_| LabError::Topology(format!("path {s:?} contains a NUL byte")))
}

/// One mount the host's init makes while it boots.
pub struct BootMount {
    source: CString,
    target: CString,
    fstype: CString,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// Not a mount: the target directory is created (mode 0755; an existing one is
    /// fine), for a mount point on a file system mounted earlier in the boot.
    mkdir: bool,
}

impl BootMount {
    /// A fresh filesystem of `fstype` at `target` (proc, sysfs, tmpfs).
    pub fn fresh(fstype: &str, target: &str, data: Option<&str>) -> Result<Self, LabError> {
        Ok(BootMount {
            source: cstr(fstype)?,
            target: cstr(target)?,
            fstype: cstr(fstype)?,
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: data.map(cstr).transpose()?,
            mkdir: false,
        })
    }

    /// The directory `target` created (a mount point on a fresh tmpfs).
    pub fn fresh_dir(target: &str) -> Result<Self, LabError> {
        Ok(BootMount {
            source: cstr("none")?,
            target: cstr(target)?,
            fstype: cstr("none")?,
            flags: 0,
            data: None,
            mkdir: true,
        })
    }
    /// A bind mount of `source` (a per-host directory) over `target`.
    pub fn bind(source: &Path, target: &str) -> Result<Self, LabError> {
        Ok(BootMount {
            source: cstr(&source.to_string_lossy())?,
            target: cstr(target)?,
            fstype: cstr("none")?,
            flags: libc::MS_BIND,
            data: None,
            mkdir: false,
        })
    }
}

/// Everything the init needs, prepared before `fork` (the child may not allocate).
pub struct InitPlan {
    /// `cgroup.procs` of the host, open for writing.
    pub cgroup_procs: File,
    /// The host's network namespace (`/run/netns/NAME`).
    pub netns: File,
    /// Mounts made in the host's fresh mount namespace, in order.
    pub mounts: Vec<BootMount>,
    /// The host's name, as its own UTS namespace's host name: what `hostname` and
    /// `uname -n` say inside, so a program that finds its node by host name (as
    /// `tandem` and Heartbeat do) finds the host's.
    pub hostname: Vec<u8>,
}

/// What `start_init` learned.
pub struct InitStarted {
    /// The keeper: outside the host, parent of the init, reaps it and then exits.
    pub keeper_pid: u32,
    /// The host's init (PID 1 of the host's PID namespace), as seen from the machine.
    pub init_pid: u32,
    /// Its start time (clock ticks since boot), to recognise PID reuse.
    pub init_start: u64,
}

/// Boots a host: forks a *keeper* that unshares a mount, a UTS and a PID namespace (the
/// UTS one named after the host) and forks
/// the host's *init* (PID 1 there). The init joins the host's cgroup and network
/// namespace, mounts /proc, /sys and the private directories, and then reaps orphans
/// forever. The init is the only thing that holds the host's mount and PID namespaces,
/// so when power-off kills it the kernel kills every process of the PID namespace and
/// drops every mount made inside the host — a cold boot gets a clean slate.
///
/// The keeper exists because a process must reap the init after power-off, and the
/// `tandem lab` command that booted the host is gone by then; the keeper waits for the
/// init and exits right after.
pub fn start_init(plan: &InitPlan) -> Result<InitStarted, LabError> {
    let mut fds = [0i32; 2];
    // SAFETY: plain syscall on a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io_err("pipe2")(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh descriptors that we now own.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let devnull = c"/dev/null";
    let comm = c"tandem-lab-init";
    let root = c"/";
    // SAFETY: fork in a possibly multi-threaded process: the child only makes raw
    // system calls on data prepared above (no allocation, no locks) and ends in _exit.
    let keeper = unsafe { libc::fork() };
    if keeper < 0 {
        return Err(io_err("fork")(std::io::Error::last_os_error()));
    }
    if keeper == 0 {
        // SAFETY: see above; this is the keeper child, it never returns.
        unsafe { keeper_main(plan, writer.as_raw_fd(), devnull, comm, root) }
    }
    drop(writer);
    let mut msg = Vec::new();
    File::from(reader)
        .read_to_end(&mut msg)
        .map_err(io_err("read the host init's status pipe"))?;
    // Messages: b'P' + 4 bytes init pid (from the keeper), then b'K' (booted) or
    // b'E' + step byte + 4 bytes errno (from the init or the keeper).
    let mut init_pid = None;
    let mut i = 0;
    let mut failure = None;
    let mut ok = false;
    while i < msg.len() {
        match msg[i] {
            b'P' if i + 5 <= msg.len() => {
                let mut b = [0u8; 4];
                b.copy_from_slice(&msg[i + 1..i + 5]);
                init_pid = Some(u32::from_ne_bytes(b));
                i += 5;
            }
            b'K' => {
                ok = true;
                i += 1;
            }
            b'E' if i + 6 <= msg.len() => {
                let step = msg[i + 1];
                let mut b = [0u8; 4];
                b.copy_from_slice(&msg[i + 2..i + 6]);
                failure = Some((step, i32::from_ne_bytes(b)));
                i += 6;
            }
            _ => break,
        }
    }
    if let Some((step, errno)) = failure.filter(|_| !ok) {
        reap(keeper as u32);
        return Err(LabError::Boot(format!(
            "{}: {}",
            step_name(step),
            std::io::Error::from_raw_os_error(errno)
        )));
    }
    let (Some(init_pid), true) = (init_pid, ok) else {
        reap(keeper as u32);
        return Err(LabError::Boot(
            "the host's init exited without reporting".into(),
        ));
    };
    let init_start = proc_stat(init_pid).map(|(_, s)| s).unwrap_or(0);
    Ok(InitStarted {
        keeper_pid: keeper as u32,
        init_pid,
        init_start,
    })
}

fn step_name(step: u8) -> String {
    match step {
        1 => "keeper: unshare mount+uts+pid namespaces".into(),
        2 => "keeper: make / private".into(),
        3 => "keeper: fork the init".into(),
        4 => "init: join the host cgroup".into(),
        5 => "init: join the host network namespace".into(),
        6 => "init: mount /proc".into(),
        7 => "init: mount /sys".into(),
        8 => "keeper: set the host name".into(),
        s => format!("init: boot mount #{}", s.saturating_sub(10)),
    }
}

/// Reaps one of our own children without blocking for long (gives up after ~2 s, e.g. if
/// it is not our child at all).
pub fn reap(pid: u32) {
    for _ in 0..400 {
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with a local status word.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if r != 0 {
            return; // reaped, or not our child (ECHILD)
        }
        pause_ms(5);
    }
}

/// Non-blocking reap; true when the pid is gone (reaped now, earlier, or not ours).
pub fn try_reap(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: as in `reap`.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    r != 0
}

unsafe fn report(fd: i32, step: u8) {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let e = errno.to_ne_bytes();
    let msg = [b'E', step, e[0], e[1], e[2], e[3]];
    // SAFETY: writing a local buffer to our pipe.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(1);
    }
}

/// The keeper and the init, after fork: raw system calls only.
unsafe fn keeper_main(
    plan: &InitPlan,
    pipe: i32,
    devnull: &std::ffi::CStr,
    comm: &std::ffi::CStr,
    root: &std::ffi::CStr,
) -> ! {
    // SAFETY: every call below is a system call on prepared data; see `start_init`.
    unsafe {
        // Leave the terminal's session: ^C on `tandem lab up` must not hit the lab.
        libc::setsid();
        if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWPID) != 0 {
            report(pipe, 1);
        }
        if libc::sethostname(plan.hostname.as_ptr().cast(), plan.hostname.len()) != 0 {
            report(pipe, 8);
        }
        // Mounts made inside the host must never propagate back to the machine.
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            report(pipe, 2);
        }
        let init = libc::fork();
        if init < 0 {
            report(pipe, 3);
        }
        if init == 0 {
            init_main(plan, pipe, devnull, comm);
        }
        let p = (init as u32).to_ne_bytes();
        let msg = [b'P', p[0], p[1], p[2], p[3]];
        libc::write(pipe, msg.as_ptr().cast(), msg.len());
        // Drop every descriptor inherited from the lab process (sockets, pipes of other
        // children) so that nothing stays open because of us.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let fd = libc::open(devnull.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
        let mut status = 0;
        while libc::waitpid(init, &mut status, 0) < 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        libc::_exit(0);
    }
}

unsafe fn init_main(
    plan: &InitPlan,
    pipe: i32,
    devnull: &std::ffi::CStr,
    comm: &std::ffi::CStr,
) -> ! {
    // SAFETY: raw system calls on prepared data, in a single-threaded child.
    unsafe {
        let zero = b"0";
        if libc::write(plan.cgroup_procs.as_raw_fd(), zero.as_ptr().cast(), 1) != 1 {
            report(pipe, 4);
        }
        if libc::setns(plan.netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            report(pipe, 5);
        }
        for (i, m) in plan.mounts.iter().enumerate() {
            if m.mkdir {
                if libc::mkdir(m.target.as_ptr(), 0o755) != 0
                    && *libc::__errno_location() != libc::EEXIST
                {
                    report(pipe, 10 + i as u8);
                }
                continue;
            }
            let data = m
                .data
                .as_ref()
                .map(|d| d.as_ptr().cast())
                .unwrap_or(std::ptr::null());
            if libc::mount(
                m.source.as_ptr(),
                m.target.as_ptr(),
                m.fstype.as_ptr(),
                m.flags,
                data,
            ) != 0
            {
                report(pipe, if i < 2 { 6 + i as u8 } else { 10 + i as u8 });
            }
        }
        libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0);
        let ok = [b'K'];
        libc::write(pipe, ok.as_ptr().cast(), 1);
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let fd = libc::open(devnull.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
        // PID 1 of the host: reap whatever is orphaned inside it, forever. With no
        // children, waitpid fails at once (ECHILD): sleep a little and look again.
        let nap = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        loop {
            let mut status = 0;
            if libc::waitpid(-1, &mut status, libc::__WALL) < 0 {
                libc::nanosleep(&nap, std::ptr::null_mut());
            }
        }
    }
}

/// Namespaces and cgroup a process must enter to run inside a host.
pub struct Entry {
    /// `cgroup.procs` of the host.
    pub cgroup_procs: File,
    /// Network namespace.
    pub netns: File,
    /// Mount namespace (the init's).
    pub mntns: File,
    /// PID namespace (the init's).
    pub pidns: File,
    /// UTS namespace (the init's): the host name.
    pub utsns: File,
}

impl Entry {
    /// Opens the handles of a running host.
    pub fn open(cg: &Path, netns: &Path, init_pid: u32) -> Result<Entry, LabError> {
        let procs = cg.join("cgroup.procs");
        Ok(Entry {
            cgroup_procs: OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(io_err(format!("open {}", procs.display())))?,
            netns: File::open(netns).map_err(io_err(format!("open {}", netns.display())))?,
            mntns: File::open(format!("/proc/{init_pid}/ns/mnt")).map_err(io_err(format!(
                "open the mount namespace of init {init_pid}"
            )))?,
            pidns: File::open(format!("/proc/{init_pid}/ns/pid"))
                .map_err(io_err(format!("open the PID namespace of init {init_pid}")))?,
            utsns: File::open(format!("/proc/{init_pid}/ns/uts"))
                .map_err(io_err(format!("open the UTS namespace of init {init_pid}")))?,
        })
    }
}

/// Prepares `cmd` to enter the host in the child, between fork and exec: join the
/// cgroup first (so power-off can never miss it), then the network and mount namespaces,
/// then go back to the working directory by name (entering a mount namespace resets it).
pub fn prepare_command(
    cmd: &mut Command,
    entry: &Entry,
    cwd: Option<&Path>,
) -> Result<(), LabError> {
    use std::os::unix::process::CommandExt;
    let cg = entry
        .cgroup_procs
        .try_clone()
        .map_err(io_err("dup cgroup.procs"))?;
    let net = entry.netns.try_clone().map_err(io_err("dup netns"))?;
    let mnt = entry.mntns.try_clone().map_err(io_err("dup mntns"))?;
    let uts = entry.utsns.try_clone().map_err(io_err("dup utsns"))?;
    let cwd = match cwd {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::current_dir().ok(),
    };
    let cwd = cwd.and_then(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok());
    // SAFETY: the closure runs in the forked child and only makes system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(cg.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(uts.as_raw_fd(), libc::CLONE_NEWUTS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = match &cwd {
                Some(c) => libc::chdir(c.as_ptr()) == 0,
                None => false,
            };
            if !ok {
                libc::chdir(c"/".as_ptr());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `f` (which spawns) with this thread's "PID namespace for children" set to the
/// host's, then switches back. setns(CLONE_NEWPID) only affects children created later
/// by this thread, so other threads are untouched.
pub fn with_pid_ns<T>(pidns: &File, f: impl FnOnce() -> T) -> Result<T, LabError> {
    let own = File::open("/proc/thread-self/ns/pid").map_err(io_err("open own PID namespace"))?;
    // SAFETY: setns on descriptors we hold.
    if unsafe { libc::setns(pidns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        return Err(io_err("enter the host's PID namespace")(
            std::io::Error::last_os_error(),
        ));
    }
    let out = f();
    // SAFETY: as above; returning to our own (active) PID namespace is always allowed.
    if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        // A thread that cannot switch back would put every later child in the lab.
        panic!(
            "tandem-lab: cannot return to own PID namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(out)
}

/// Loop devices whose backing file lies under one of `dirs`, or is a tandem local
/// device's FUSE file serving a backing store that does: (device, backing file).
///
/// A disk's local device is a loop device over a file on a FUSE mount inside a host's
/// mount namespace; sysfs shows that file by its path in the host (or, once the host's
/// namespace is gone, relative to the dead mount), never under the lab's directories.
/// Its name says what it serves — `r0@!var!lib!tandem-lab!NAME!ox1-r0.img`, the backing
/// path with `/` written `!` (`tandem_blockdev::file_name`) — which is what is matched.
pub fn loop_devices_under(dirs: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let markers: Vec<String> = dirs
        .iter()
        .map(|d| format!("{}!", d.to_string_lossy().replace('/', "!")))
        .collect();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = PathBuf::from(backing.trim().trim_end_matches(" (deleted)"));
        let serves_ours = backing
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split_once('@'))
            .is_some_and(|(_, path)| markers.iter().any(|m| path.starts_with(m.as_str())));
        if serves_ours || dirs.iter().any(|d| backing.starts_with(d)) {
            out.push((format!("/dev/{name}"), backing));
        }
    }
    out
}

/// Mount points of the machine's namespace (from /proc/self/mounts), with their
/// sources, octal escapes decoded.
pub fn machine_mounts() -> Vec<(String, PathBuf)> {
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            let src = unescape(it.next()?);
            let target = unescape(it.next()?);
            Some((src, PathBuf::from(target)))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts (lazily: a busy mount must not stop teardown).
pub fn umount_lazy(target: &Path) -> Result<(), LabError> {
    let c = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| LabError::Topology(format!("bad mount point {}", target.display())))?;
    // SAFETY: umount2 on a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io_err(format!("umount {}", target.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Mounts a FUSE file system served through the `/dev/fuse` descriptor named in
/// `options` (`fd=N,…`) on `target`, in this process's mount namespace.
pub fn mount_fuse(target: &Path, source: &str, options: &str) -> Result<(), LabError> {
    let t = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| LabError::Topology(format!("bad mount point {}", target.display())))?;
    let src = cstr(source)?;
    let fstype = cstr(&format!("fuse.{source}"))?;
    let data = cstr(options)?;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            t.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io_err(format!("mount FUSE on {}", target.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// FUSE mounts of the machine's namespace at or below one of `dirs`, with their
/// connection numbers (the minor device number: `/sys/fs/fuse/connections/N`).
pub fn fuse_mounts_under(dirs: &[PathBuf]) -> Vec<(PathBuf, u32)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for l in text.lines() {
        let fields: Vec<&str> = l.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(dev), Some(target), Some(fstype)) =
            (fields.get(2), fields.get(4), fields.get(sep + 1))
        else {
            continue;
        };
        if !(*fstype == "fuse" || fstype.starts_with("fuse.")) {
            continue;
        }
        let target = PathBuf::from(unescape(target));
        let minor = dev.split_once(':').and_then(|(_, m)| m.parse().ok());
        if let (Some(minor), true) = (minor, dirs.iter().any(|d| target.starts_with(d))) {
            out.push((target, minor));
        }
    }
    out
}

/// Aborts FUSE connections: every request fails at once and the server's reads end,
/// so no process can hang on a mount whose server is stuck or gone. Through the
/// `fusectl` file system, mounted for the purpose in a private mount namespace of a
/// helper (`unshare`) when the machine has it unmounted, so nothing is left behind.
pub fn fuse_abort(conns: &[u32]) -> Result<(), LabError> {
    let ctl = Path::new("/sys/fs/fuse/connections");
    if conns.is_empty() {
        return Ok(());
    }
    if ctl.join(conns[0].to_string()).exists() {
        for c in conns {
            // A connection that ended meanwhile has no directory: nothing to abort.
            let _ = fs::write(ctl.join(c.to_string()).join("abort"), "1");
        }
        return Ok(());
    }
    let script = "mount -t fusectl fusectl /sys/fs/fuse/connections || exit 1; \
                  for c in \"$@\"; do [ -e /sys/fs/fuse/connections/$c/abort ] && \
                  echo 1 > /sys/fs/fuse/connections/$c/abort; done; exit 0";
    let ids: Vec<String> = conns.iter().map(u32::to_string).collect();
    let mut args = vec![
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ];
    args.extend(ids.iter().map(String::as_str));
    run("unshare", &args).map(|_| ())
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Sends a signal to a pid.
pub fn kill(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) with a pid and a signal number.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("trail\\04"), "trail\\04");
    }
}
