//! The built-in `filesystem` agent: mount(2) / umount2(2), the mount table from
//! `/proc/self/mountinfo`, and a `stop` that first ends the processes holding the mount.
//!
//! ```text
//!  start:   mounted here already? ─yes─► ok
//!              │ no (something else mounted there ─► error, never stack)
//!              ▼
//!           mkdir -p DIR; mount(DEVICE, DIR, TYPE, flags, data)
//!
//!  stop:    attempt 1: umount ─busy─► SIGTERM holders, wait ─► attempt 2: umount
//!           ─busy─► SIGKILL holders, wait ─► attempts 3.. : umount (+KILL) ─► error
//! ```
//! No lazy (`MNT_DETACH`) unmount: a detached but still-written file system is exactly
//! what must not exist when the peer mounts the same device.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::exec::{Cancel, sleep_until};
use crate::result::{Action, ActionResult, ExecStatus, OcfExit};
use crate::{RunOptions, now};

/// How many unmount attempts `stop` makes.
pub const UNMOUNT_ATTEMPTS: u32 = 4;
/// How long `stop` waits for signalled holders to go before the next attempt.
pub const HOLDER_GRACE: Duration = Duration::from_secs(3);

/// One mount as the agent sees it.
#[derive(Debug, Clone)]
pub struct FilesystemAgent {
    /// What to mount: a device path, `UUID=…`, `LABEL=…`, or a source string for
    /// virtual/network file systems.
    pub device: String,
    /// Mount point (absolute).
    pub directory: PathBuf,
    /// File-system type (`ext4`, `xfs`, …).
    pub fstype: String,
    /// `-o` options as written.
    pub options: Option<String>,
}

/// `-o` options split into mount(2) flags and the file-system specific data string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountOptions {
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// Everything the kernel passes to the file system (`data` argument).
    pub data: String,
}

/// A bad `-o` option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    /// An option that makes no sense for a cluster mount.
    #[error("mount option `{0}` is not supported here: {1}")]
    Unsupported(String, &'static str),
    /// A NUL byte.
    #[error("mount options contain a NUL byte")]
    Nul,
}

/// Parses `mount -o` style options.
pub fn parse_mount_options(s: &str) -> Result<MountOptions, OptionError> {
    if s.contains('\0') {
        return Err(OptionError::Nul);
    }
    let mut o = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match item {
            "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev" | "nofail"
            | "owner" | "group" | "noowner" | "nogroup" => (0, 0),
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, libc::MS_STRICTATIME),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, libc::MS_RELATIME),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "lazytime" => (libc::MS_LAZYTIME, 0),
            "nolazytime" => (0, libc::MS_LAZYTIME),
            "silent" => (libc::MS_SILENT, 0),
            "loud" => (0, libc::MS_SILENT),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "remount" => {
                return Err(OptionError::Unsupported(
                    item.into(),
                    "start mounts, it never remounts",
                ));
            }
            "move" => {
                return Err(OptionError::Unsupported(
                    item.into(),
                    "a move is not a mount",
                ));
            }
            i if i == "loop" || i.starts_with("loop=") => {
                return Err(OptionError::Unsupported(
                    item.into(),
                    "set up the loop device first and mount it",
                ));
            }
            other => {
                data.push(other);
                continue;
            }
        };
        o.flags = (o.flags & !clear) | set;
    }
    o.data = data.join(",");
    Ok(o)
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount id.
    pub id: u32,
    /// Parent mount id.
    pub parent: u32,
    /// Device major number (`st_dev` of files on it).
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Root of the mount within its file system.
    pub root: PathBuf,
    /// Mount point.
    pub mount_point: PathBuf,
    /// Per-mount options.
    pub options: String,
    /// File-system type.
    pub fstype: String,
    /// Mount source (device).
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

/// A malformed mountinfo line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mountinfo line {line}: {what}")]
pub struct MountInfoError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 255 {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn path_field(field: &str) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(field)))
}

/// Parses the whole of `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, MountInfoError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |what| MountInfoError { line: n + 1, what };
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or(err("no ` - ` separator"))?;
        if sep < 6 || fields.len() < sep + 3 {
            return Err(err("too few fields"));
        }
        let (major, minor) = fields[2].split_once(':').ok_or(err("bad major:minor"))?;
        out.push(MountEntry {
            id: fields[0].parse().map_err(|_| err("bad mount id"))?,
            parent: fields[1].parse().map_err(|_| err("bad parent id"))?,
            major: major.parse().map_err(|_| err("bad major"))?,
            minor: minor.parse().map_err(|_| err("bad minor"))?,
            root: path_field(fields[3]),
            mount_point: path_field(fields[4]),
            options: fields[5].to_string(),
            fstype: fields[sep + 1].to_string(),
            source: String::from_utf8_lossy(&unescape(fields[sep + 2])).into_owned(),
            super_options: fields.get(sep + 3).map_or(String::new(), |s| s.to_string()),
        });
    }
    Ok(out)
}

/// The mount table, or the result an action returns when it cannot be read.
fn mount_table() -> Result<Vec<MountEntry>, ActionResult> {
    read_mountinfo().map_err(|e| {
        ActionResult::not_done(
            ExecStatus::Error(format!("read mountinfo: {e}")),
            "",
            Duration::ZERO,
        )
    })
}

/// Reads this process's mount table.
pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    parse_mountinfo(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `major`/`minor` of a `dev_t`.
fn dev_major_minor(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// Resolves `UUID=`/`LABEL=` to their `/dev/disk/by-*` links.
fn device_path(device: &str) -> PathBuf {
    if let Some(u) = device.strip_prefix("UUID=") {
        return Path::new("/dev/disk/by-uuid").join(u);
    }
    if let Some(l) = device.strip_prefix("LABEL=") {
        return Path::new("/dev/disk/by-label").join(l);
    }
    PathBuf::from(device)
}

/// What is mounted at a directory, relative to what should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    /// Our device is mounted there (top-most mount).
    Mounted(MountEntry),
    /// Something else is mounted there.
    Other(MountEntry),
    /// Nothing is mounted there.
    NotMounted,
}

impl FilesystemAgent {
    fn mount_point(&self) -> PathBuf {
        // Compare canonical paths: mountinfo shows resolved mount points.
        fs::canonicalize(&self.directory).unwrap_or_else(|_| self.directory.clone())
    }

    fn is_our_source(&self, e: &MountEntry) -> bool {
        let path = device_path(&self.device);
        if let Ok(md) = fs::metadata(&path) {
            if md.file_type().is_block_device() {
                return dev_major_minor(md.rdev()) == (e.major, e.minor);
            }
        }
        e.source == self.device || fs::canonicalize(&path).is_ok_and(|p| Path::new(&e.source) == p)
    }

    /// True when the mount is read-only but was not asked to be.
    pub fn went_read_only(&self, e: &MountEntry) -> bool {
        let wanted_ro = parse_mount_options(self.options.as_deref().unwrap_or(""))
            .is_ok_and(|o| o.flags & libc::MS_RDONLY != 0);
        let is_ro = |opts: &str| opts.split(',').any(|o| o == "ro");
        !wanted_ro && (is_ro(&e.options) || is_ro(&e.super_options))
    }

    /// Looks the mount point up in a mount table.
    pub fn state_in(&self, table: &[MountEntry]) -> MountState {
        let mp = self.mount_point();
        match table.iter().rev().find(|e| e.mount_point == mp) {
            Some(e) if self.is_our_source(e) => MountState::Mounted(e.clone()),
            Some(e) => MountState::Other(e.clone()),
            None => MountState::NotMounted,
        }
    }

    /// Runs one action.
    pub fn run(&self, action: Action, opts: &RunOptions) -> ActionResult {
        let started = now();
        let deadline = started + opts.timeout;
        let mut r = match action {
            Action::Start => self.start(),
            Action::Stop => self.stop(deadline, opts.cancel.as_ref()),
            Action::Monitor => self.monitor(),
            Action::ValidateAll => self.validate(),
            Action::MetaData => {
                ActionResult::done(OcfExit::Unimplemented, "built-in agent", Duration::ZERO)
            }
        };
        r.duration = now() - started;
        r
    }

    fn validate(&self) -> ActionResult {
        if !self.directory.is_absolute() {
            return ActionResult::done(
                OcfExit::NotConfigured,
                "directory must be an absolute path",
                Duration::ZERO,
            );
        }
        if self.device.is_empty() || self.fstype.is_empty() {
            return ActionResult::done(
                OcfExit::NotConfigured,
                "device and fstype must be set",
                Duration::ZERO,
            );
        }
        if let Err(e) = parse_mount_options(self.options.as_deref().unwrap_or("")) {
            return ActionResult::done(OcfExit::NotConfigured, e.to_string(), Duration::ZERO);
        }
        ActionResult::done(OcfExit::Success, "", Duration::ZERO)
    }

    fn monitor(&self) -> ActionResult {
        let table = match mount_table() {
            Ok(t) => t,
            Err(failed) => return failed,
        };
        match self.state_in(&table) {
            // ext4 `errors=remount-ro` (and xfs shutdowns) leave a mount that looks
            // present but cannot serve writes: that is a failed resource.
            MountState::Mounted(e) if self.went_read_only(&e) => ActionResult::done(
                OcfExit::Generic,
                format!(
                    "{} on {} is read-only although mounted read-write (file-system errors?)",
                    e.source,
                    e.mount_point.display()
                ),
                Duration::ZERO,
            ),
            MountState::Mounted(e) => ActionResult::done(
                OcfExit::Success,
                format!("{} mounted on {}", e.source, e.mount_point.display()),
                Duration::ZERO,
            ),
            MountState::Other(e) => ActionResult::done(
                OcfExit::Generic,
                format!(
                    "{} has {} mounted, not {}",
                    e.mount_point.display(),
                    e.source,
                    self.device
                ),
                Duration::ZERO,
            ),
            MountState::NotMounted => ActionResult::done(
                OcfExit::NotRunning,
                format!("{} is not mounted", self.directory.display()),
                Duration::ZERO,
            ),
        }
    }

    fn start(&self) -> ActionResult {
        let v = self.validate();
        if !v.is_success() {
            return v;
        }
        let m = self.monitor();
        if m.exec_status != ExecStatus::Done || m.exit != Some(OcfExit::NotRunning) {
            // Already ours (success) or someone else's (error): never mount on top.
            return m;
        }
        let opts = match parse_mount_options(self.options.as_deref().unwrap_or("")) {
            Ok(o) => o,
            Err(e) => {
                return ActionResult::done(OcfExit::NotConfigured, e.to_string(), Duration::ZERO);
            }
        };
        if let Err(e) = fs::create_dir_all(&self.directory) {
            return ActionResult::done(
                OcfExit::Generic,
                format!("create {}: {e}", self.directory.display()),
                Duration::ZERO,
            );
        }
        let dev = device_path(&self.device);
        match mount(&dev, &self.directory, &self.fstype, opts.flags, &opts.data) {
            Ok(()) => ActionResult::done(
                OcfExit::Success,
                format!("mounted {} on {}", self.device, self.directory.display()),
                Duration::ZERO,
            ),
            Err(e) => {
                let exit = match e.raw_os_error() {
                    // Unknown fs type, or the device is not on this node: hard.
                    Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ENOTBLK)
                    | Some(libc::ENXIO) => OcfExit::NotInstalled,
                    Some(libc::EACCES) | Some(libc::EPERM) => OcfExit::Perm,
                    _ => OcfExit::Generic,
                };
                ActionResult::done(
                    exit,
                    format!(
                        "mount {} on {} ({}): {e}",
                        self.device,
                        self.directory.display(),
                        self.fstype
                    ),
                    Duration::ZERO,
                )
            }
        }
    }

    fn stop(&self, deadline: Instant, cancel: Option<&Cancel>) -> ActionResult {
        let mut killed: Vec<i32> = Vec::new();
        let mut last_err = String::new();
        for attempt in 0..UNMOUNT_ATTEMPTS {
            let table = match mount_table() {
                Ok(t) => t,
                Err(failed) => return failed,
            };
            let entry = match self.state_in(&table) {
                MountState::NotMounted => {
                    let why = if attempt == 0 {
                        "not mounted (already stopped)".to_string()
                    } else {
                        format!("unmounted after ending holder processes {killed:?}")
                    };
                    return ActionResult::done(OcfExit::Success, why, Duration::ZERO);
                }
                MountState::Other(e) => {
                    return ActionResult::done(
                        OcfExit::Success,
                        format!(
                            "{} is not mounted there ({} is); nothing to stop",
                            self.device, e.source
                        ),
                        Duration::ZERO,
                    );
                }
                MountState::Mounted(e) => e,
            };
            match umount(&entry.mount_point) {
                Ok(()) => continue, // confirmed by the table on the next turn
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    last_err = e.to_string();
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue, // raced: re-read
                Err(e) => {
                    return ActionResult::done(
                        OcfExit::Generic,
                        format!("umount {}: {e}", entry.mount_point.display()),
                        Duration::ZERO,
                    );
                }
            }
            if now() >= deadline {
                break;
            }
            let single_mount = table
                .iter()
                .filter(|e| (e.major, e.minor) == (entry.major, entry.minor))
                .count()
                == 1;
            let holders = find_holders(
                &entry.mount_point,
                single_mount.then_some((entry.major, entry.minor)),
            );
            let signal = if attempt == 0 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            for &pid in &holders {
                // SAFETY: plain syscall; pids come from /proc and exclude ourselves.
                unsafe { libc::kill(pid, signal) };
                if !killed.contains(&pid) {
                    killed.push(pid);
                }
            }
            let grace_end = (now() + HOLDER_GRACE).min(deadline);
            while now() < grace_end && holders.iter().any(|&p| process_alive(p)) {
                if !sleep_until((now() + Duration::from_millis(50)).min(grace_end), cancel) {
                    return ActionResult::not_done(
                        ExecStatus::Cancelled,
                        "cancelled while unmounting",
                        Duration::ZERO,
                    );
                }
            }
        }
        if now() >= deadline {
            return ActionResult::not_done(
                ExecStatus::Timeout,
                format!(
                    "{} still busy at the timeout ({last_err}); signalled {killed:?}",
                    self.directory.display()
                ),
                Duration::ZERO,
            );
        }
        ActionResult::done(
            OcfExit::Generic,
            format!(
                "{} still busy after {UNMOUNT_ATTEMPTS} attempts ({last_err}); signalled {killed:?}",
                self.directory.display()
            ),
            Duration::ZERO,
        )
    }
}

fn cstring(p: &[u8]) -> io::Result<CString> {
    CString::new(p)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn mount(dev: &Path, dir: &Path, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let dev = cstring(dev.as_os_str().as_bytes())?;
    let dir = cstring(dir.as_os_str().as_bytes())?;
    let fstype = cstring(fstype.as_bytes())?;
    let data = cstring(data.as_bytes())?;
    let data_ptr = if data.as_bytes().is_empty() {
        std::ptr::null()
    } else {
        data.as_ptr().cast()
    };
    // SAFETY: all pointers are valid NUL-terminated strings (or null data).
    let rc = unsafe { libc::mount(dev.as_ptr(), dir.as_ptr(), fstype.as_ptr(), flags, data_ptr) };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn umount(dir: &Path) -> io::Result<()> {
    let dir = cstring(dir.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::umount2(dir.as_ptr(), libc::UMOUNT_NOFOLLOW) };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// True while a process exists and is not a zombie (a zombie holds no files).
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the last ')' (the command name may contain ')').
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

fn under(path: &Path, mount_point: &Path) -> bool {
    path.starts_with(mount_point)
}

/// Processes holding something under `mount_point`: open files, cwd, root, executable,
/// memory maps. With `dev`, files whose `st_dev` is the mount's device count too (only
/// safe when that file system is mounted once; bind mounts elsewhere do not block this
/// unmount). Never includes this process.
pub fn find_holders(mount_point: &Path, dev: Option<(u32, u32)>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for ent in dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || pid == 1 {
            continue;
        }
        let base = ent.path();
        let hit = |p: &Path| -> bool {
            if fs::read_link(p).is_ok_and(|t| under(&t, mount_point)) {
                return true;
            }
            dev.is_some_and(|d| fs::metadata(p).is_ok_and(|m| dev_major_minor(m.dev()) == d))
        };
        let mut holds = ["cwd", "root", "exe"].iter().any(|l| {
            // root "/" is under nothing but "/"; only count it when it is the mount.
            let p = base.join(l);
            if *l == "root" {
                fs::read_link(&p).is_ok_and(|t| t.starts_with(mount_point))
            } else {
                hit(&p)
            }
        });
        if !holds {
            if let Ok(fds) = fs::read_dir(base.join("fd")) {
                holds = fds.flatten().any(|fd| hit(&fd.path()));
            }
        }
        if !holds {
            if let Ok(maps) = fs::read_to_string(base.join("maps")) {
                holds = maps.lines().any(|l| {
                    let mut f = l.splitn(6, ' ');
                    let dev_field = f.nth(3);
                    let path = l.split_whitespace().nth(5);
                    path.is_some_and(|p| p.starts_with('/') && under(Path::new(p), mount_point))
                        || dev.is_some_and(|(ma, mi)| {
                            dev_field == Some(&format!("{ma:02x}:{mi:02x}")) && path.is_some()
                        })
                });
            }
        }
        if holds {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o = parse_mount_options("ro,noatime,nodev,data=ordered,,errors=remount-ro").unwrap();
        assert_eq!(o.flags, libc::MS_RDONLY | libc::MS_NOATIME | libc::MS_NODEV);
        assert_eq!(o.data, "data=ordered,errors=remount-ro");
        let o = parse_mount_options("ro,rw,defaults").unwrap();
        assert_eq!(o.flags, 0);
        assert_eq!(parse_mount_options("").unwrap(), MountOptions::default());
        assert!(matches!(
            parse_mount_options("loop"),
            Err(OptionError::Unsupported(..))
        ));
        assert!(matches!(
            parse_mount_options("remount,ro"),
            Err(OptionError::Unsupported(..))
        ));
        assert_eq!(parse_mount_options("a\0b"), Err(OptionError::Nul));
    }

    const SAMPLE: &str = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n\
36 22 7:3 / /mnt/with\\040space rw,noatime master:1 - ext4 /dev/loop3 rw\n\
37 22 0:5 / /proc rw - proc proc rw\n";

    #[test]
    fn mountinfo_parses_escapes_and_optional_fields() {
        let t = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[1].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!((t[1].major, t[1].minor), (7, 3));
        assert_eq!(t[1].source, "/dev/loop3");
        assert_eq!(t[1].fstype, "ext4");
        assert_eq!(t[2].fstype, "proc");
        assert_eq!(t[0].super_options, "rw,errors=remount-ro");
    }

    #[test]
    fn mountinfo_rejects_garbage_with_a_line_number() {
        assert_eq!(parse_mountinfo("x y z").unwrap_err().line, 1);
        assert!(parse_mountinfo("1 2 3:4 / /a rw -").is_err());
        assert!(parse_mountinfo("1 2 34 / /a rw - ext4 /dev/x rw").is_err());
    }

    proptest::proptest! {
        #[test]
        fn mountinfo_and_options_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse_mountinfo(&s);
            let _ = parse_mount_options(&s);
            let _ = unescape(&s);
        }
    }

    #[test]
    fn state_distinguishes_ours_from_someone_elses() {
        let a = FilesystemAgent {
            device: "/dev/loop3".into(),
            directory: "/mnt/with space".into(),
            fstype: "ext4".into(),
            options: None,
        };
        let t = parse_mountinfo(SAMPLE).unwrap();
        // /dev/loop3 may not exist here, so ours is matched by source text.
        assert!(matches!(a.state_in(&t), MountState::Mounted(_)));
        let b = FilesystemAgent {
            device: "/dev/nothere".into(),
            ..a.clone()
        };
        assert!(matches!(b.state_in(&t), MountState::Other(_)));
        let c = FilesystemAgent {
            directory: "/elsewhere".into(),
            ..a
        };
        assert_eq!(c.state_in(&t), MountState::NotMounted);
    }
}
