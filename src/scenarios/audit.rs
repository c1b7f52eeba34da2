//! The audit after every scenario and chaos round (Pacemaker's CTS audits, with data):
//!
//! | check | how |
//! |---|---|
//! | the cluster is whole | both daemons agree on the owner; r0 connected, both up to date, 0 bytes out of sync |
//! | one node runs the group, all of it | every resource `started` on the owner and `stopped` on the peer; the VIP, the mount and the service process only on the owner |
//! | one primary | r0 primary on the owner, secondary on the peer |
//! | both copies identical | with the client paused: the data areas of both backing files have the same checksum |
//! | no acknowledged write lost | every record the client saw acknowledged is in the file on the owner |
//! | operator commands work | `tandem takeover` on the peer moves the group there; the records are checked again |

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::cluster::{DataCluster, NODES, RECOVERY_TIMEOUT, peer};
use crate::demo::interrupt;
use crate::demo::setup::GROUP;

/// Audits the cluster; `move_group`: finish with a `tandem takeover` on the peer. A
/// line of what was audited, or an error saying what failed.
pub fn audit(dc: &mut DataCluster, move_group: bool) -> anyhow::Result<String> {
    let owner = dc
        .wait_healthy(RECOVERY_TIMEOUT)
        .context("audit: cluster whole")?;
    let other = peer(&owner);
    check_placement(dc, &owner).context("audit: placement")?;
    let checksum = identical_copies(dc).context("audit: identical copies")?;
    let (acked, lost) = dc.lost_records(&owner).context("audit: records")?;
    if !lost.is_empty() {
        bail!(
            "audit: {} acknowledged records missing on {owner}: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
    }
    let mut summary = format!(
        "{owner} runs all of {GROUP}; 1 primary; copies identical ({checksum:016x}); {acked} acked, 0 lost"
    );
    if move_group {
        dc.cluster
            .tandem(other, &["takeover"])
            .context("audit: tandem takeover")?;
        dc.wait_owner(other, Duration::from_secs(60))
            .with_context(|| format!("audit: takeover on {other}"))?;
        let moved_ms = crate::clock::wall_ms();
        // The client back on the new owner before the next scenario starts.
        interrupt::wait(
            Duration::from_secs(30),
            "an acknowledgement after the takeover",
            || {
                Ok(dc
                    .client
                    .outcomes()
                    .iter()
                    .any(|o| o.ack && o.at_ms > moved_ms))
            },
        )?;
        let (acked, lost) = dc.lost_records(other).context("audit: records")?;
        if !lost.is_empty() {
            bail!(
                "audit: after the takeover, {} acknowledged records missing on {other}: {:?}",
                lost.len(),
                &lost[..lost.len().min(20)]
            );
        }
        summary.push_str(&format!("; takeover to {other} ok, {acked} acked, 0 lost"));
    }
    Ok(summary)
}

/// Every resource started on `owner` and stopped on the peer, as each sees itself; the
/// VIP, the mount and the service only on `owner`; r0 primary only there.
pub fn check_placement(dc: &DataCluster, owner: &str) -> anyhow::Result<()> {
    for node in NODES {
        let want = if node == owner { "started" } else { "stopped" };
        let status = dc
            .cluster
            .status(node)
            .with_context(|| format!("{node}'s status"))?;
        let group = status["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == GROUP))
            .with_context(|| format!("no group {GROUP} in {node}'s status"))?;
        let wrong: Vec<String> = group["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["state"] != want)
            .map(|r| format!("{} {}", r["name"], r["state"]))
            .collect();
        if !wrong.is_empty() {
            bail!(
                "on {node} expected every resource {want}: {}",
                wrong.join(", ")
            );
        }
        let role = dc
            .disk(node)
            .map(|d| d["role"].clone())
            .unwrap_or(Value::Null);
        let want_role = if node == owner {
            "primary"
        } else {
            "secondary"
        };
        if role != want_role {
            bail!("r0 is {role} on {node}, expected {want_role}");
        }
    }
    let holding = dc.sampler.now();
    for (node, h) in NODES.iter().zip(holding) {
        let serving = *node == owner;
        if h.vip != serving {
            bail!("VIP on {node}: {}, expected {serving}", h.vip);
        }
        let pids = dc.service_pids(node);
        if pids.is_empty() == serving {
            bail!("service processes on {node}: {pids:?}");
        }
        let mounts = dc.cluster.lab.run(node, &["cat", "/proc/self/mountinfo"])?;
        let mounted = mounts
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(dc.mount()));
        if mounted != serving {
            bail!("file system mounted on {node}: {mounted}, expected {serving}");
        }
    }
    Ok(())
}

/// Pauses the client and compares the data areas of both backing files (retrying a
/// few times: the file system may still be committing its journal); their checksum.
pub fn identical_copies(dc: &DataCluster) -> anyhow::Result<u64> {
    dc.client.pause();
    let result = (|| {
        let mut last = String::new();
        for _ in 0..5 {
            interrupt::sleep(Duration::from_millis(500))?;
            let sums: Vec<u64> = NODES
                .iter()
                .map(|n| data_checksum(dc, n))
                .collect::<anyhow::Result<_>>()?;
            if sums[0] == sums[1] {
                return Ok(sums[0]);
            }
            last = format!("ox1 {:016x}, ox2 {:016x}", sums[0], sums[1]);
        }
        bail!("the copies of r0 differ: {last}")
    })();
    dc.client.resume();
    result
}

/// FNV-1a (over 64-bit words) over the data area of `node`'s backing file of r0 (as its lossy disk holds
/// it, cache included).
fn data_checksum(dc: &DataCluster, node: &str) -> anyhow::Result<u64> {
    use std::io::Read as _;
    let path = dc.cluster.lab.host_disk_dir(node)?.join("r0.img");
    let mut f = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let size = data_bytes(dc, node)?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n])
            .with_context(|| format!("read {}", path.display()))?;
        // Word by word: 64 MiB in a debug build must not take seconds.
        for w in buf[..n].chunks(8) {
            let mut word = [0u8; 8];
            word[..w.len()].copy_from_slice(w);
            hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(0x0100_0000_01b3);
        }
        left -= n as u64;
    }
    Ok(hash)
}

/// The size of r0's data area on `node` (its backing file less the internal metadata).
pub fn data_bytes(dc: &DataCluster, node: &str) -> anyhow::Result<u64> {
    let path = dc.cluster.lab.host_disk_dir(node)?.join("r0.img");
    let len = std::fs::metadata(&path)
        .with_context(|| format!("size of {}", path.display()))?
        .len();
    Ok(tandem_disk::meta::Layout::internal(len)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .size_bytes)
}
