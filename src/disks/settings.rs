//! What a disk runs with, from the configuration: the replication link's secret, the
//! metadata location, the core's settings, where its local device lives, the NBD
//! sockets' group, the local device's FUSE threads.

use std::time::Duration;

use anyhow::{Context, bail};
use tandem_config::{AfterSb0Pri, AfterSb1Pri, Disk, Meta};
use tandem_disk::core::policy::{AfterSplitBrain, SplitBrainPolicy};
use tandem_disk::meta::MetaLocation;

/// `HMAC-SHA256(key, "tandem disk link v1: " ‖ name)`: the replication link's secret.
pub fn link_secret(key_secret: &[u8], name: &str) -> Vec<u8> {
    tandem_wire::hmac_sha256(key_secret, &[b"tandem disk link v1: ", name.as_bytes()]).to_vec()
}

/// The disk's metadata location from its host entry.
pub fn meta_location(meta: &Meta) -> anyhow::Result<MetaLocation> {
    match meta {
        Meta::Internal => Ok(MetaLocation::Internal),
        Meta::External { path, index: None } => Ok(MetaLocation::External(path.clone())),
        Meta::External {
            path,
            index: Some(i),
        } => bail!(
            "meta {} [{i}]: indexed metadata slots are not supported; give each disk its own metadata file",
            path.display()
        ),
    }
}

/// The core's settings from the configuration.
pub fn core_config(disk: &Disk) -> tandem_disk::core::Config {
    let no_primary = match disk.after_sb_0pri {
        AfterSb0Pri::Disconnect => SplitBrainPolicy::Disconnect,
        AfterSb0Pri::DiscardYoungerPrimary => SplitBrainPolicy::DiscardYoungerPrimary,
        AfterSb0Pri::DiscardZeroChanges => SplitBrainPolicy::DiscardZeroChanges,
        AfterSb0Pri::DiscardLeastChanges => SplitBrainPolicy::DiscardLeastChanges,
        AfterSb0Pri::DiscardOlderPrimary => SplitBrainPolicy::DiscardOlderPrimary,
    };
    let one_primary = match disk.after_sb_1pri {
        AfterSb1Pri::Disconnect => SplitBrainPolicy::Disconnect,
        AfterSb1Pri::Consensus => SplitBrainPolicy::Consensus,
        AfterSb1Pri::DiscardSecondary => SplitBrainPolicy::DiscardSecondary,
    };
    let net_timeout_ms = (disk.net_timeout.as_millis() as u64).max(1000);
    tandem_disk::core::Config {
        protocol: disk.protocol,
        al_extents: disk.al_extents,
        resync_rate_bytes_per_s: disk.rate_bytes_per_s,
        after_split_brain: AfterSplitBrain {
            no_primary,
            one_primary,
            two_primaries: SplitBrainPolicy::Disconnect,
        },
        // The core drops the link after `ping_timeout_ms` of silence, so an idle link
        // must be pinged well within `net_timeout`.
        ping_interval_ms: (disk.ping_interval.as_millis() as u64).min(net_timeout_ms / 3),
        ping_timeout_ms: net_timeout_ms,
        fencing: disk.fencing,
        ..Default::default()
    }
}

pub(super) fn millis(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| (d.as_millis() as u64).max(1))
}

/// Where disk `name`'s local device lives on this node: the configured `device` path
/// (a link to the loop device), the FUSE mount beside the NBD socket
/// (`/run/tandem/disk/NAME.fuse`), and the FUSE file named after the backing store.
pub(super) fn local_paths(name: &str, host: &tandem_config::DiskHost) -> tandem_blockdev::Paths {
    let backing = std::path::absolute(&host.backing).unwrap_or_else(|_| host.backing.clone());
    tandem_blockdev::Paths {
        link: host.device.clone(),
        mount_dir: tandem_nbd::default_socket_path(name).with_file_name(format!("{name}.fuse")),
        file_name: tandem_blockdev::file_name(name, &backing),
    }
}

/// The id of group `name`, through the C library (so /etc/group, LDAP, whatever NSS
/// is set up for).
pub(super) fn group_id(name: &str) -> anyhow::Result<u32> {
    let c_name = std::ffi::CString::new(name).context("a group name with a NUL byte")?;
    // SAFETY: an all-zero `group` is a valid value of this plain C struct.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 << 10];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` for `buf.len()` bytes.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("look the group up");
    }
    if found.is_null() {
        bail!("no such group");
    }
    Ok(group.gr_gid)
}

/// FUSE threads of a local device (`TANDEM_FUSE_THREADS` overrides).
const DEFAULT_FUSE_THREADS: usize = 2;

pub(super) fn fuse_threads() -> usize {
    std::env::var("TANDEM_FUSE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_FUSE_THREADS)
        .clamp(1, 16)
}
