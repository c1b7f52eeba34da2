//! The daemon's state directory: what must survive a restart of `tandem daemon`.
//!
//! That is the incarnation number and whether maintenance mode is on. It is bumped and made durable *before* the
//! daemon sends its first heartbeat, so that a peer can always tell a restarted daemon
//! (new incarnation) from one that returns after a partition (same incarnation).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The file that keeps maintenance mode across daemon restarts.
const MAINTENANCE: &str = "maintenance";

/// The state directory of one daemon.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens (and creates, mode 0700) the state directory.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("create state directory {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Reads the last incarnation, adds one — or takes `floor` if that is larger — and
    /// stores the result durably (write to a temporary file, fsync, rename, fsync the
    /// directory). The daemon passes the wall-clock microseconds as `floor`: a node
    /// whose state directory was lost (a replaced disk, a fresh lab host) then still
    /// starts with an incarnation newer than any its peers heard. With the same
    /// incarnation, its peer would take the new process for the old one: heartbeats
    /// dropped as replays, and the reliable messages of the two lives mixed up so that
    /// neither node ever received the other's state report.
    pub fn bump_incarnation(&self, floor: u64) -> anyhow::Result<u64> {
        let file = self.path.join("incarnation");
        let previous = match fs::read_to_string(&file) {
            Ok(text) => text.trim().parse::<u64>().with_context(|| {
                format!("{}: expected a decimal incarnation number", file.display())
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
            Err(err) => return Err(err).with_context(|| format!("read {}", file.display())),
        };
        let Some(next) = previous.checked_add(1).map(|n| n.max(floor)) else {
            bail!("{}: incarnation overflow", file.display());
        };
        self.write_durably("incarnation", format!("{next}\n").as_bytes())?;
        Ok(next)
    }

    /// Maintenance mode as the last daemon left it, and when it was last switched
    /// (wall clock, ms): `(false, 0)` when it never was.
    pub fn maintenance(&self) -> anyhow::Result<(bool, u64)> {
        let Some(bytes) = self.read(MAINTENANCE)? else {
            return Ok((false, 0));
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut words = text.split_whitespace();
        let on = match words.next() {
            Some("on") => true,
            Some("off") => false,
            _ => bail!(
                "{}: expected `on MS` or `off MS`, found {text:?}",
                self.path.join(MAINTENANCE).display()
            ),
        };
        let at_ms = words.next().and_then(|w| w.parse().ok()).with_context(|| {
            format!(
                "{}: expected `on MS` or `off MS`, found {text:?}",
                self.path.join(MAINTENANCE).display()
            )
        })?;
        Ok((on, at_ms))
    }

    /// Keeps maintenance mode and when it was switched for the next daemon (durably:
    /// a crash right after `tandem maintenance on` must not bring the next daemon up
    /// managing).
    pub fn set_maintenance(&self, on: bool, at_ms: u64) -> anyhow::Result<()> {
        let word = if on { "on" } else { "off" };
        self.write_durably(MAINTENANCE, format!("{word} {at_ms}\n").as_bytes())
    }

    /// Replaces `name` in the state directory atomically and durably.
    pub fn write_durably(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let target = self.path.join(name);
        let temporary = self.path.join(format!(".{name}.tmp"));
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .with_context(|| format!("create {}", temporary.display()))?;
        out.write_all(bytes)
            .and_then(|()| out.sync_all())
            .with_context(|| format!("write {}", temporary.display()))?;
        fs::rename(&temporary, &target)
            .with_context(|| format!("rename {} to {}", temporary.display(), target.display()))?;
        File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("sync {}", self.path.display()))?;
        Ok(())
    }
}

impl StateDir {
    /// Reads `name` from the state directory (`None` if it does not exist).
    pub fn read(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let file = self.path.join(name);
        match fs::read(&file) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("read {}", file.display())),
        }
    }

    /// Removes `name` from the state directory durably (the directory is synced).
    pub fn remove_durably(&self, name: &str) -> anyhow::Result<()> {
        let file = self.path.join(name);
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err).with_context(|| format!("remove {}", file.display())),
        }
        File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("sync {}", self.path.display()))
    }
}

/// The floor the daemon gives [`StateDir::bump_incarnation`]: wall-clock microseconds,
/// so two starts of a node never share an incarnation even when its state directory
/// was lost in between and it restarted within the same second.
pub fn incarnation_floor() -> u64 {
    crate::clock::wall_us()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_increases_across_opens_and_survives_restart() {
        let dir = tempdir();
        let first = StateDir::open(&dir).unwrap().bump_incarnation(0).unwrap();
        let second = StateDir::open(&dir).unwrap().bump_incarnation(0).unwrap();
        assert_eq!(first, 1);
        assert_eq!(second, 2);
        assert_eq!(fs::read_to_string(dir.join("incarnation")).unwrap(), "2\n");
        // A lost state directory starts again above anything used before.
        let third = StateDir::open(&dir)
            .unwrap()
            .bump_incarnation(1_000)
            .unwrap();
        assert_eq!(third, 1_000);
        assert_eq!(
            StateDir::open(&dir)
                .unwrap()
                .bump_incarnation(1_000)
                .unwrap(),
            1_001
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_node_restarted_within_a_second_on_a_fresh_state_directory_gets_a_new_incarnation() {
        // The daemon's floor, as `tandem daemon` passes it: a lost state directory and a
        // restart within the same second must still give a newer incarnation.
        let (a, b) = (tempdir(), tempdir());
        let first = StateDir::open(&a)
            .unwrap()
            .bump_incarnation(incarnation_floor())
            .unwrap();
        let second = StateDir::open(&b)
            .unwrap()
            .bump_incarnation(incarnation_floor())
            .unwrap();
        assert!(second > first, "{first} then {second}");
        for d in [a, b] {
            fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn maintenance_mode_survives_a_restart_and_a_corrupt_file_is_an_error() {
        let dir = tempdir();
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.maintenance().unwrap(), (false, 0), "never switched");
        state.set_maintenance(true, 1_234).unwrap();
        assert_eq!(
            StateDir::open(&dir).unwrap().maintenance().unwrap(),
            (true, 1_234)
        );
        state.set_maintenance(false, 5_678).unwrap();
        assert_eq!(state.maintenance().unwrap(), (false, 5_678));
        fs::write(dir.join("maintenance"), "maybe").unwrap();
        let err = state.maintenance().unwrap_err().to_string();
        assert!(err.contains("expected `on MS` or `off MS`"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_incarnation_is_an_error_not_a_reset() {
        let dir = tempdir();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("incarnation"), "garbage").unwrap();
        let err = StateDir::open(&dir)
            .unwrap()
            .bump_incarnation(0)
            .unwrap_err();
        assert!(format!("{err:#}").contains("expected a decimal incarnation number"));
        assert_eq!(
            fs::read_to_string(dir.join("incarnation")).unwrap(),
            "garbage"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tandem-state-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}
