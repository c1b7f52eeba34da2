//! Who holds a block device: mounts (`/proc/thread-self/mountinfo`, by major:minor),
//! stacked devices (`/sys/block/NAME/holders`), processes with it open (`/proc/*/fd`),
//! and exclusive openers nothing else names (an `O_EXCL` open fails with `EBUSY`).
//!
//! Mount tables are read from `/proc/thread-self`, not `/proc/self`: a thread may have
//! its own mount namespace (the tests give each test thread one), and `/proc/self`
//! would show the main thread's.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// (major, minor) of the mounted file system's device.
    pub dev: (u32, u32),
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// File system type, e.g. `fuse.tandem`, `ext4`.
    pub fstype: String,
    /// Mount source, e.g. `/dev/loop3`, `tandem:r0`.
    pub source: String,
}

/// Parses mountinfo text (proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let _id = l.next()?;
            let _parent = l.next()?;
            let (major, minor) = l.next()?.split_once(':')?;
            let _root = l.next()?;
            let mount_point = PathBuf::from(unescape(l.next()?));
            let mut r = right.split(' ');
            let fstype = unescape(r.next()?);
            let source = unescape(r.next()?);
            Some(MountEntry {
                dev: (major.parse().ok()?, minor.parse().ok()?),
                mount_point,
                fstype,
                source,
            })
        })
        .collect()
}

/// Decodes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            && b[i + 1] <= b'3'
        {
            let v = (u32::from(b[i + 1] - b'0') << 6)
                | (u32::from(b[i + 2] - b'0') << 3)
                | u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The calling thread's mount table.
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/thread-self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// Something that keeps a device from going away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A file system on it is mounted here (in this mount namespace).
    Mounted(PathBuf),
    /// A stacked device (device-mapper, md, …) is built on it.
    Device(String),
    /// A process has it open.
    Process {
        /// Process id.
        pid: u32,
        /// Its command name.
        comm: String,
    },
    /// Someone holds it exclusively and nothing above names them: a mount in another
    /// mount namespace, swap, or a program that opened it with `O_EXCL`.
    Exclusive,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Mounted(p) => write!(f, "mounted at {}", p.display()),
            Holder::Device(d) => write!(f, "used by device {d}"),
            Holder::Process { pid, comm } => write!(f, "open in process {pid} ({comm})"),
            Holder::Exclusive => write!(
                f,
                "opened exclusively by someone not visible here (a mount in another mount namespace, swap, or an O_EXCL opener)"
            ),
        }
    }
}

/// Mounts, stacked devices and processes (other than this one) holding the block device
/// `dev` whose sysfs name is `sysname`. Does not try an exclusive open.
pub fn find(dev: (u32, u32), sysname: &str) -> Vec<Holder> {
    let mut out: Vec<Holder> = mounts()
        .into_iter()
        .filter(|m| m.dev == dev)
        .map(|m| Holder::Mounted(m.mount_point))
        .collect();
    if let Ok(rd) = std::fs::read_dir(format!("/sys/block/{sysname}/holders")) {
        for e in rd.flatten() {
            out.push(Holder::Device(e.file_name().to_string_lossy().into_owned()));
        }
    }
    out.extend(processes_with_open(dev));
    out
}

/// Processes other than this one with the block device `dev` open.
pub fn processes_with_open(dev: (u32, u32)) -> Vec<Holder> {
    let want = libc::makedev(dev.0, dev.1);
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            // readlink first: only device nodes are worth a stat (a stat of a FUSE file
            // of some other process could wait for its daemon).
            std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with("/dev/"))
                && std::fs::metadata(fd.path()).is_ok_and(|m| is_block(&m) && m.rdev() == want)
        });
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            out.push(Holder::Process { pid, comm });
        }
    }
    out
}

fn is_block(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_block_device()
}

/// Joins holders for a message: "mounted at /var/lib/pgsql, open in process 12 (dd)".
pub fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `path` is a mount point in this thread's namespace.
pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_optional_fields_and_escapes() {
        let text = "\
36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 0:52 / /run/tandem/disk/r0.fuse rw,nosuid,nodev,relatime - fuse.tandem tandem:r0 rw,user_id=0
41 22 7:3 / /var/lib/my\\040data rw shared:5 - ext4 /dev/loop3 rw
garbage line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].dev, (98, 0));
        assert_eq!(m[1].fstype, "fuse.tandem");
        assert_eq!(m[1].source, "tandem:r0");
        assert_eq!(m[1].mount_point, PathBuf::from("/run/tandem/disk/r0.fuse"));
        assert_eq!(m[2].mount_point, PathBuf::from("/var/lib/my data"));
        assert_eq!(m[2].dev, (7, 3));
    }

    #[test]
    fn holders_read_as_an_operator_would_write_them() {
        let h = [
            Holder::Mounted("/var/lib/pgsql".into()),
            Holder::Process {
                pid: 12,
                comm: "dd".into(),
            },
        ];
        assert_eq!(
            describe(&h),
            "mounted at /var/lib/pgsql, open in process 12 (dd)"
        );
    }
}
