//! Shared test plumbing: unique names, network namespaces, loop devices.
//! Every resource made here is torn down by a Drop guard, also when a test fails.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process: `tdag<pid>x<n>` (short: interface names ≤ 15).
pub fn unique(tag: &str) -> String {
    format!(
        "tdag{}{}{}",
        std::process::id() % 100_000,
        tag,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring failure (cleanup).
pub fn sh_quiet(cmd: &str) {
    let _ = Command::new("sh").arg("-c").arg(cmd).output();
}

/// A network namespace we created; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh(&format!("ip netns add {name}"));
        let ns = Netns { name };
        sh(&format!("ip -n {} link set lo up", ns.name));
        ns
    }

    /// Runs `f` on a fresh thread that has entered this namespace (the test thread and
    /// the host namespace stay untouched).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only, with a namespace fd we hold.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    pub fn ip(&self, args: &str) -> String {
        sh(&format!("ip -n {} {args}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh_quiet(&format!("ip netns del {}", self.name));
    }
}

/// Two namespaces joined by a veth pair: `ours` (where the agent runs) with `if_ours`,
/// and `peer` (a neighbour on the same link) with `if_peer`.
pub struct Lab {
    pub ours: Netns,
    pub peer: Netns,
    pub if_ours: String,
    pub if_peer: String,
}

impl Lab {
    /// Subnets 10.`n`.0.0/24 and fd`n`::/64; ours is .1 / ::1, the peer .2 / ::2.
    pub fn new(n: u8) -> Lab {
        let ours = Netns::new("o");
        let peer = Netns::new("p");
        let if_ours = "va".to_string();
        let if_peer = "vb".to_string();
        sh(&format!(
            "ip -n {} link add {if_ours} type veth peer name {if_peer} netns {}",
            ours.name, peer.name
        ));
        for (ns, ifn, host) in [(&ours, &if_ours, 1), (&peer, &if_peer, 2)] {
            ns.ip(&format!("addr add 10.{n}.0.{host}/24 dev {ifn}"));
            ns.ip(&format!("-6 addr add fd{n:02x}::{host}/64 dev {ifn} nodad"));
            ns.ip(&format!("link set {ifn} up"));
        }
        Lab {
            ours,
            peer,
            if_ours,
            if_peer,
        }
    }

    pub fn mac_ours(&self) -> String {
        let out = self.ours.ip(&format!("-o link show {}", self.if_ours));
        let i = out.find("link/ether ").expect("mac") + "link/ether ".len();
        out[i..i + 17].to_string()
    }

    /// The peer's neighbour entry for `addr`, as `ip neigh` prints it.
    pub fn peer_neigh(&self, addr: &str) -> String {
        self.peer
            .ip(&format!("neigh show {addr} dev {}", self.if_peer))
    }

    /// Gives the peer a stale entry for `addr` pointing at a MAC that is not ours, as a
    /// client has after the address lived on another node.
    pub fn peer_stale(&self, addr: &str) {
        self.peer.ip(&format!(
            "neigh replace {addr} lladdr 02:00:00:00:00:99 dev {} nud stale",
            self.if_peer
        ));
    }

    /// Polls the peer's neighbour entry until it names `mac` (generous bound).
    pub fn wait_peer_neigh(&self, addr: &str, mac: &str) -> String {
        let mut last = String::new();
        for _ in 0..100 {
            last = self.peer_neigh(addr);
            if last.contains(mac) {
                return last;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("peer never learned {addr} at {mac}; last entry: {last:?}");
    }
}

/// A scratch directory, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An ext4 file system on a loop device over a file, with a mount point; on drop the
/// mount point is unmounted if still mounted, the loop device detached, files removed.
pub struct LoopExt4 {
    pub dir: TempDir,
    pub device: String,
    pub mount_point: PathBuf,
}

impl LoopExt4 {
    pub fn new() -> LoopExt4 {
        let dir = TempDir::new("fs");
        let image = dir.path.join("image");
        sh(&format!(
            "truncate -s 64M {0} && mkfs.ext4 -q -F {0}",
            image.display()
        ));
        let device = sh(&format!("losetup -f --show {}", image.display()))
            .trim()
            .to_string();
        let mount_point = dir.path.join("mnt");
        std::fs::create_dir_all(&mount_point).unwrap();
        LoopExt4 {
            dir,
            device,
            mount_point,
        }
    }

    pub fn mounted(&self) -> bool {
        let mp = self.mount_point.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(mp.as_str()))
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        for _ in 0..3 {
            if !self.mounted() {
                break;
            }
            sh_quiet(&format!("umount {}", self.mount_point.display()));
        }
        if self.mounted() {
            // Last resort in test cleanup only; the agent itself never detaches lazily.
            sh_quiet(&format!("umount -l {}", self.mount_point.display()));
        }
        sh_quiet(&format!("losetup -d {}", self.device));
    }
}

/// Writes an executable script.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
