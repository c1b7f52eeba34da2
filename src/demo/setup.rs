//! The demo's cluster: its configuration, the disk's bootstrap as the whitepaper's §4.3
//! does it (outside any group), and the start of the cluster with the group.
//!
//! ```text
//!  [[disk]] r0, protocol C, fencing resource-and-stonith, backing on each node's lossy
//!  disk (a power cut loses what was not flushed), replicated over `hb`
//!  group ox (home ox1):  r0 (disk) → fs (ext4 on /dev/tandem/r0) → service → vip
//! ```

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use tandem_config::DiskFencing;

use super::interrupt;
use super::service::Service;
use crate::labcluster::LabCluster;
use crate::labconfig::{self, LabConfig};

/// The virtual IP the client writes through.
pub const VIP: &str = "192.168.1.160";
/// The local device of r0 on its primary.
pub const DEVICE: &str = "/dev/tandem/r0";
/// The group's name.
pub const GROUP: &str = "ox";

/// Where the file system is mounted in ox1 and ox2: a directory of the lab's own data
/// directory (each host mounts it in its own mount namespace; the teardown removes it).
pub fn mount_point(cluster: &LabCluster) -> String {
    cluster.lab.data_dir().join("data").display().to_string()
}

/// The fence device (the lab's power switch) and the disk r0, protocol C,
/// `resource-and-stonith`, backing on each node's lossy disk.
pub fn disk_tables(lab: &tandem_lab::Lab, config: &mut LabConfig) -> anyhow::Result<()> {
    let backing = |node: &str| -> anyhow::Result<std::path::PathBuf> {
        Ok(lab
            .host_disk_dir(node)
            .with_context(|| format!("{node}'s lossy disk"))?
            .join("r0.img"))
    };
    config.lab_switch();
    config.disk("r0", 7788, [backing("ox1")?, backing("ox2")?]);
    config.disk_fencing("r0", DiskFencing::ResourceAndStonith);
    Ok(())
}

/// The group: disk → file system → the service → the address, started in that order
/// and stopped in reverse (the address goes first, the disk demotes last, after the
/// unmount). The service describes itself as a `[[group.resource]]` table.
fn group_tables(config: &mut LabConfig, mount: &str, service_resource: &str) -> anyhow::Result<()> {
    let service = labconfig::resource_from_toml(service_resource)
        .map_err(|e| anyhow::anyhow!("the service's resource: {e}"))?;
    let vip = VIP.parse().context("the VIP")?;
    config.group(
        GROUP,
        "ox1",
        vec![
            labconfig::disk_resource("r0", "r0"),
            labconfig::filesystem("fs", DEVICE, mount, "ext4"),
            service,
            labconfig::ipaddr("vip", vip, 24, "eth0"),
        ],
    );
    Ok(())
}

/// Creates the backing files (flushed, so a power cut keeps them) on both nodes'
/// lossy disks.
pub fn create_backing(cluster: &LabCluster, size_mib: u64) -> anyhow::Result<()> {
    for node in ["ox1", "ox2"] {
        let path = cluster.lab.host_disk_dir(node)?.join("r0.img");
        let f =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        f.set_len(size_mib << 20)?;
        f.sync_all()?;
    }
    Ok(())
}

/// The whitepaper's §4.3, with tandem's commands, then the cluster with the group:
/// `create-md` and `up` on both nodes, `primary --force` on ox1 and the full sync,
/// `mkfs.ext4` on `/dev/tandem/r0`, the service's data put on it, `secondary` — all
/// outside any group; then both daemons restart with the group, which ox1 starts.
pub fn bootstrap(cluster: &mut LabCluster, service: &Service) -> anyhow::Result<()> {
    let mount = mount_point(cluster);
    say("§4.3 bootstrap, outside any group:");
    for node in ["ox1", "ox2"] {
        step(&format!("{node}: tandem disk create-md r0"));
        cluster.tandem(node, &["disk", "create-md", "r0", "--node", node])?;
    }
    cluster.start_daemon("ox1", &[])?;
    cluster.start_daemon("ox2", &[])?;
    for node in ["ox1", "ox2"] {
        step(&format!("{node}: tandem daemon; tandem disk up r0"));
        interrupt::wait(Duration::from_secs(30), "the daemon to answer", || {
            Ok(disk_status(cluster, node).is_some())
        })?;
        cluster.tandem(node, &["disk", "up", "r0"])?;
    }
    for node in ["ox1", "ox2"] {
        interrupt::wait(Duration::from_secs(30), "r0 to connect", || {
            Ok(disk_status(cluster, node).is_some_and(|s| s["connection"] == "connected"))
        })?;
    }
    step("ox1: tandem disk primary --force r0   (this copy counts: full sync to ox2)");
    cluster.tandem("ox1", &["disk", "primary", "--force", "r0"])?;
    wait_in_sync(cluster, Duration::from_secs(120))?;
    step(&format!("ox1: mkfs.ext4 {DEVICE}"));
    cluster
        .lab
        .run("ox1", &["mkfs.ext4", "-q", "-F", DEVICE])
        .context("mkfs.ext4 on ox1")?;
    step(&format!(
        "ox1: mount {DEVICE} {mount}; {}",
        service.bootstrap_note()
    ));
    std::fs::create_dir_all(&mount)?;
    cluster
        .lab
        .run("ox1", &["mount", "-t", "ext4", DEVICE, &mount])
        .context("mount on ox1")?;
    let prepared = service.prepare(cluster, &mount);
    // Unmount whatever happened: a mounted file system keeps the disk primary.
    let unmounted = cluster.lab.run("ox1", &["umount", &mount]);
    prepared?;
    unmounted.context("umount on ox1")?;
    step("ox1: umount; tandem disk secondary r0");
    cluster.tandem("ox1", &["disk", "secondary", "r0"])?;
    wait_in_sync(cluster, Duration::from_secs(60))?;
    cluster.stop_daemon("ox2")?;
    cluster.stop_daemon("ox1")?;

    say(&format!(
        "the cluster with group {GROUP}: r0 → ext4 on {DEVICE} at {mount} → {} → {VIP}",
        service.label()
    ));
    let service_resource = service.resource(cluster.tandem_binary(), &mount)?;
    let mut grouped = Ok(());
    cluster.configure(|c| grouped = group_tables(c, &mount, &service_resource))?;
    grouped?;
    if cluster.has_witness() {
        say("the witness: tandem witness on quorum, a third machine on both networks");
        cluster.start_witness()?;
    }
    cluster.start_daemon("ox1", &[])?;
    cluster.start_daemon("ox2", &[])?;
    interrupt::wait(Duration::from_secs(60), "the group on ox1", || {
        Ok(owner(cluster, "ox1")?.as_deref() == Some("ox1"))
    })?;
    wait_in_sync(cluster, Duration::from_secs(60))?;
    Ok(())
}

/// `tandem disk status --json r0` in `node`, if its daemon answers.
pub fn disk_status(cluster: &LabCluster, node: &str) -> Option<Value> {
    let out = cluster
        .tandem(node, &["disk", "status", "--json", "r0"])
        .ok()?;
    serde_json::from_str(&out).ok()
}

/// Both copies connected, up to date, nothing out of sync.
pub fn wait_in_sync(cluster: &LabCluster, timeout: Duration) -> anyhow::Result<()> {
    for node in ["ox1", "ox2"] {
        interrupt::wait(timeout, &format!("r0 in sync on {node}"), || {
            Ok(disk_status(cluster, node).is_some_and(|s| {
                s["connection"] == "connected"
                    && s["disk_state"] == "up_to_date"
                    && s["peer_disk_state"] == "up_to_date"
                    && s["out_of_sync_bytes"] == 0
            }))
        })?;
    }
    Ok(())
}

/// The node running the group as `node` sees it, once it is started; an error when the
/// group failed or is blocked (the demo then stops instead of waiting out its time).
pub fn owner(cluster: &LabCluster, node: &str) -> anyhow::Result<Option<String>> {
    let Some(status) = cluster.status(node) else {
        return Ok(None);
    };
    let Some(g) = status["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == GROUP))
    else {
        return Ok(None);
    };
    match g["state"].as_str() {
        Some("started") => Ok(g["owner"].as_str().map(str::to_owned)),
        Some("failed") => bail!(
            "group {GROUP} failed on {node}: {}",
            failed_resources(g).unwrap_or_default()
        ),
        _ => Ok(None),
    }
}

fn failed_resources(group: &Value) -> Option<String> {
    let list: Vec<String> = group["resources"]
        .as_array()?
        .iter()
        .filter(|r| r["last_action"]["ok"] == false)
        .map(|r| {
            format!(
                "{} {}: {}",
                r["name"].as_str().unwrap_or("?"),
                r["last_action"]["action"].as_str().unwrap_or("?"),
                r["last_action"]["result"].as_str().unwrap_or("?")
            )
        })
        .collect();
    Some(list.join("; "))
}

/// A line of the demo's own narration.
pub fn say(what: &str) {
    println!("demo: {what}");
}

/// A bootstrap step, as an operator would type it.
pub(crate) fn step(what: &str) {
    println!("        {what}");
}
