//! The cluster's configuration, imported from the seed's own files, and §4.3's
//! bootstrap of its four disks: created on both nodes, activated, synced, formatted,
//! each service's initial data put on its disk, unmounted, demoted.
//!
//! The seed's files are `testdata/config/whitepaper/{ha.cf,haresources,drbd.conf}`,
//! extracted from the whitepaper by `extract.sh`. They are imported as written,
//! adjusted only where the lab differs from the whitepaper's machines: drbd.conf's
//! `disk /dev/sdbN` become backing files on each node's lossy disk, ha.cf gets the
//! lab's timing (keepalive 200ms, deadtime 2: the seed sets none and tandem's
//! defaults would make the demo wait 10 s), the import's reiserfs become ext4 as its
//! note says, and the fence device is the lab's power switch (the seed has no stonith
//! line; the whitepaper's machines had none either).

use std::time::Duration;

use anyhow::{Context, bail};

use super::hosts::{self, PG_CLUSTER};
use crate::demo::interrupt;
use crate::demo::setup::{say, step};
use crate::labcluster::LabCluster;

const HA_CF: &str = include_str!("../../../testdata/config/whitepaper/ha.cf");
const HARESOURCES: &str = include_str!("../../../testdata/config/whitepaper/haresources");
const DRBD_CONF: &str = include_str!("../../../testdata/config/whitepaper/drbd.conf");

/// The four disks: name, size in MiB, mount points as haresources orders them.
pub const DISKS: [(&str, u64, &str); 4] = [
    ("r1", 32, "/var/lib/ldap"),
    ("r0", 128, "/var/lib/pgsql"),
    ("r2", 32, "/var/lib/imap"),
    ("r3", 64, "/var/spool/imap"),
];

/// The timing lines added to the seed's ha.cf.
const LAB_TIMING: &str = "keepalive 200ms\ndeadtime 2\nwarntime 1\ninitdead 4\n";

/// drbd.conf with each `on NODE { disk /dev/sdbN; }` replaced by NODE's backing file.
fn lab_drbd_conf(cluster: &LabCluster) -> anyhow::Result<String> {
    let mut node: Option<String> = None;
    let mut disk: Option<String> = None;
    let mut out = String::new();
    for line in DRBD_CONF.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("resource ") {
            disk = Some(
                rest.trim_end_matches('{')
                    .trim()
                    .trim_matches('"')
                    .to_string(),
            );
        } else if let Some(rest) = t.strip_prefix("on ") {
            node = Some(rest.trim_end_matches('{').trim().to_string());
        }
        if t.starts_with("disk ") && t.contains("/dev/sdb") {
            let (Some(n), Some(d)) = (&node, &disk) else {
                bail!("drbd.conf: a disk line outside `resource` / `on`: {t}");
            };
            let path = cluster.lab.host_disk_dir(n)?.join(format!("{d}.img"));
            out.push_str(&format!("    disk {};\n", path.display()));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// Imports the seed's files with `tandem config import` and writes the result as the
/// cluster's configuration; the import's notes are printed.
pub fn import(cluster: &LabCluster) -> anyhow::Result<()> {
    let dir = cluster.lab.data_dir().join("seed");
    std::fs::create_dir_all(&dir)?;
    let ha_cf = dir.join("ha.cf");
    std::fs::write(&ha_cf, format!("{HA_CF}{LAB_TIMING}"))?;
    std::fs::write(dir.join("haresources"), HARESOURCES)?;
    std::fs::write(dir.join("drbd.conf"), lab_drbd_conf(cluster)?)?;
    let authkeys = dir.join("authkeys");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(&authkeys, "auth 1\n1 sha1 lab cluster secret\n")?;
        std::fs::set_permissions(&authkeys, std::fs::Permissions::from_mode(0o600))?;
    }
    let d = dir.display();
    say(&format!(
        "tandem config import --ha-cf {d}/ha.cf --haresources {d}/haresources --drbd-conf {d}/drbd.conf --authkeys {d}/authkeys"
    ));
    let out = std::process::Command::new(cluster.tandem_binary())
        .args(["config", "import", "--ha-cf"])
        .arg(&ha_cf)
        .arg("--haresources")
        .arg(dir.join("haresources"))
        .arg("--drbd-conf")
        .arg(dir.join("drbd.conf"))
        .arg("--authkeys")
        .arg(&authkeys)
        .output()
        .context("run tandem config import")?;
    if !out.status.success() {
        bail!(
            "tandem config import refused the seed's files: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for l in String::from_utf8_lossy(&out.stderr).lines() {
        let short = l.rsplit_once(": warning: ").map_or(l, |(_, w)| w);
        step(&format!(
            "note: {}",
            short.chars().take(150).collect::<String>()
        ));
    }
    let imported = String::from_utf8(out.stdout)?;
    let reiserfs = imported.matches("fstype = \"reiserfs\"").count();
    say(&format!(
        "as the import says: ext4 instead of reiserfs ({reiserfs} file systems); the lab's power switch as the fence device"
    ));
    let toml = imported.replace("fstype = \"reiserfs\"", "fstype = \"ext4\"")
        + &format!(
            r#"
[[fence_device]]
name = "lab-switch"
agent = "fence_tandem_lab"
params = {{ ipaddr = "{}" }}
timeout = "20s"
"#,
            cluster.lab.name()
        );
    let toml = if cluster.has_witness() {
        say(&format!(
            "--witness: [witness] {} added, its address among the ucast link's peers",
            crate::labconfig::WITNESS
        ));
        with_witness(&toml, &cluster.config)?
    } else {
        toml
    };
    std::fs::write(&cluster.config, toml)?;
    let checked = cluster.tandem("ox1", &["config", "check"])?;
    step(checked.lines().nth(1).unwrap_or(""));
    Ok(())
}

/// Creates each disk's backing file, flushed, on both nodes' lossy disks; and the
/// mount points, empty directories, where the packages did not make them (Debian's
/// Cyrus uses /var/lib/cyrus and /var/spool/cyrus, its PostgreSQL /var/lib/postgresql:
/// the whitepaper's paths are SUSE's). Nothing is ever mounted on them outside a node.
pub fn create_backing(cluster: &LabCluster) -> anyhow::Result<()> {
    for (_, _, mount) in DISKS {
        std::fs::create_dir_all(mount).with_context(|| format!("create mount point {mount}"))?;
    }
    for node in ["ox1", "ox2"] {
        for (disk, mib, _) in DISKS {
            let path = cluster.lab.host_disk_dir(node)?.join(format!("{disk}.img"));
            let f = std::fs::File::create(&path)
                .with_context(|| format!("create {}", path.display()))?;
            f.set_len(mib << 20)?;
            f.sync_all()?;
        }
    }
    Ok(())
}

/// `tandem disk status --json DISK` in `node`, if its daemon answers.
pub fn disk_status(cluster: &LabCluster, node: &str, disk: &str) -> Option<serde_json::Value> {
    let out = cluster
        .tandem(node, &["disk", "status", "--json", disk])
        .ok()?;
    serde_json::from_str(&out).ok()
}

/// Every disk connected and up to date on both nodes, nothing out of sync.
pub fn wait_all_in_sync(cluster: &LabCluster, timeout: Duration) -> anyhow::Result<()> {
    for node in ["ox1", "ox2"] {
        for (disk, _, _) in DISKS {
            interrupt::wait(timeout, &format!("{disk} in sync on {node}"), || {
                Ok(disk_status(cluster, node, disk).is_some_and(|s| {
                    s["connection"] == "connected"
                        && s["disk_state"] == "up_to_date"
                        && s["peer_disk_state"] == "up_to_date"
                        && s["out_of_sync_bytes"] == 0
                }))
            })?;
        }
    }
    Ok(())
}

/// §4.3: the disks made, synced and formatted, the services' data put on them; then
/// the daemons stop (the cluster starts with the group afterwards).
pub fn disks_and_data(cluster: &mut LabCluster) -> anyhow::Result<()> {
    say("§4.3 bootstrap, outside the group: four disks created, activated, synced, formatted");
    for node in ["ox1", "ox2"] {
        for (disk, _, _) in DISKS {
            cluster.tandem(node, &["disk", "create-md", disk, "--node", node])?;
        }
        step(&format!("{node}: tandem disk create-md r0 r1 r2 r3"));
    }
    // No group yet: the daemons only serve the disks.
    let full = std::fs::read_to_string(&cluster.config)?;
    std::fs::write(&cluster.config, without_groups(&full)?)?;
    cluster.start_daemon("ox1", &[])?;
    cluster.start_daemon("ox2", &[])?;
    for node in ["ox1", "ox2"] {
        interrupt::wait(Duration::from_secs(30), "the daemon to answer", || {
            Ok(disk_status(cluster, node, "r0").is_some())
        })?;
        for (disk, _, _) in DISKS {
            cluster.tandem(node, &["disk", "up", disk])?;
        }
        step(&format!(
            "{node}: tandem daemon; tandem disk up r0 r1 r2 r3"
        ));
    }
    for (disk, _, _) in DISKS {
        interrupt::wait(
            Duration::from_secs(30),
            &format!("{disk} to connect"),
            || Ok(disk_status(cluster, "ox1", disk).is_some_and(|s| s["connection"] == "connected")),
        )?;
        cluster.tandem("ox1", &["disk", "primary", "--force", disk])?;
    }
    step("ox1: tandem disk primary --force r0 r1 r2 r3   (full sync to ox2)");
    wait_all_in_sync(cluster, Duration::from_secs(300))?;
    let run = |argv: &[&str]| -> anyhow::Result<String> {
        cluster
            .lab
            .run("ox1", argv)
            .with_context(|| format!("{} on ox1", argv.join(" ")))
    };
    for (disk, _, mount) in DISKS {
        let dev = format!("/dev/tandem/{disk}");
        run(&["mkfs.ext4", "-q", "-F", &dev])?;
        run(&["mount", "-t", "ext4", &dev, mount])?;
    }
    step(
        "ox1: mkfs.ext4 and mount each: r1 /var/lib/ldap, r0 /var/lib/pgsql, r2 /var/lib/imap, r3 /var/spool/imap",
    );
    let data = initial_data(cluster);
    // Unmount whatever happened: a mounted file system keeps its disk primary.
    let mut unmounted = Ok(String::new());
    for (_, _, mount) in DISKS.iter().rev() {
        let r = run(&["umount", mount]);
        if unmounted.is_ok() {
            unmounted = r;
        }
    }
    data?;
    unmounted?;
    for (disk, _, _) in DISKS {
        cluster.tandem("ox1", &["disk", "secondary", disk])?;
    }
    step("ox1: umount all four; tandem disk secondary r0 r1 r2 r3");
    wait_all_in_sync(cluster, Duration::from_secs(120))?;
    cluster.stop_daemon("ox2")?;
    cluster.stop_daemon("ox1")?;
    std::fs::write(&cluster.config, full)?;
    Ok(())
}

/// Each service's first data, made on ox1 with the disks mounted where the services
/// expect them: slapd's database with the base, the user and the client's branch;
/// PostgreSQL's cluster (Debian's pg_createcluster, its data on r0) with the tables;
/// Cyrus's configuration directory and spool (Cyrus's mkimap). ox2 gets the same
/// node-local configuration (`/etc/postgresql`).
fn initial_data(cluster: &LabCluster) -> anyhow::Result<()> {
    let lab = &cluster.lab;
    let run = |argv: &[&str]| -> anyhow::Result<String> {
        lab.run("ox1", argv)
            .with_context(|| format!("{} on ox1", argv.join(" ")))
    };
    hosts::write(
        cluster,
        "ox1",
        "/etc/ldap/tandem-data.ldif",
        &hosts::ldap_data(),
        0o600,
    )?;
    run(&[
        "slapadd",
        "-n",
        "1",
        "-F",
        "/etc/ldap/slapd.d",
        "-l",
        "/etc/ldap/tandem-data.ldif",
    ])?;
    run(&["chown", "-R", "openldap:openldap", "/var/lib/ldap"])?;
    run(&["chmod", "700", "/var/lib/ldap"])?;
    step(&format!(
        "ox1: slapadd: {} with the user {} and {}",
        hosts::BASE_DN,
        hosts::USER,
        hosts::RECORDS_OU
    ));

    let version = pg_version()?;
    let data = format!("/var/lib/pgsql/{version}/{PG_CLUSTER}");
    run(&[
        "install",
        "-d",
        "-o",
        "postgres",
        "-g",
        "postgres",
        "-m",
        "700",
        "/var/lib/pgsql",
    ])?;
    run(&[
        "pg_createcluster",
        &version,
        PG_CLUSTER,
        "-d",
        &data,
        "--locale",
        "C.UTF-8",
        "-p",
        "5432",
        "--",
        "--auth-local=peer",
        "--auth-host=scram-sha-256",
    ])?;
    let conf_dir = format!("/etc/postgresql/{version}/{PG_CLUSTER}");
    append(
        cluster,
        &format!("{conf_dir}/postgresql.conf"),
        "\n# tandem demo --stack whitepaper\nlisten_addresses = '*'\nmax_wal_size = 64MB\nmin_wal_size = 32MB\n",
    )?;
    // pg_hba.conf is first match: these lines go before Debian's.
    prepend(
        cluster,
        &format!("{conf_dir}/pg_hba.conf"),
        "# tandem demo --stack whitepaper: the stand-in on the node, the clients on the lab's public network (a demo's trust, not production's)\nhost all postgres 127.0.0.1/32 trust\nhost all postgres 192.168.1.0/24 trust\n",
    )?;
    run(&["pg_ctlcluster", &version, PG_CLUSTER, "start"])?;
    let made = run(&[
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-X",
        "-q",
        "-c",
        "CREATE TABLE records (n bigint NOT NULL); CREATE TABLE appointments (n bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())",
    ]);
    let stopped = run(&["pg_ctlcluster", &version, PG_CLUSTER, "stop"]);
    made?;
    stopped?;
    step(&format!(
        "ox1: pg_createcluster {version} {PG_CLUSTER} -d {data}; CREATE TABLE records, appointments"
    ));
    copy_tree(cluster, "/etc/postgresql")?;

    run(&["chown", "cyrus:mail", "/var/lib/imap", "/var/spool/imap"])?;
    run(&["chmod", "750", "/var/lib/imap", "/var/spool/imap"])?;
    // Debian's cyrus-makedirs reads /etc/imapd.conf only: run it on the node's own.
    run(&[
        "sh",
        "-c",
        "sed 's#^CONF=/etc/imapd.conf#CONF=/etc/cyrus/imapd.conf#' /usr/lib/cyrus/bin/makedirs | sh -s",
    ])?;
    run(&[
        "chown",
        "-R",
        "cyrus:mail",
        "/var/lib/imap",
        "/var/spool/imap",
    ])?;
    step(
        "ox1: cyrus-makedirs with /etc/cyrus/imapd.conf (Cyrus's configuration directory and spool)",
    );
    Ok(())
}

/// The installed PostgreSQL major version (Debian's /usr/lib/postgresql/VERSION).
pub fn pg_version() -> anyhow::Result<String> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|v| v.to_string())
        .context("no PostgreSQL under /usr/lib/postgresql")
}

fn prepend(cluster: &LabCluster, path: &str, text: &str) -> anyhow::Result<()> {
    let host = cluster.lab.host_path("ox1", path)?;
    let was = std::fs::read_to_string(&host).with_context(|| format!("read {path} on ox1"))?;
    std::fs::write(&host, format!("{text}{was}")).with_context(|| format!("write {path} on ox1"))
}

fn append(cluster: &LabCluster, path: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let host = cluster.lab.host_path("ox1", path)?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&host)
        .with_context(|| format!("open {path} on ox1"))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Copies ox1's private `dir` to ox2's, owners kept (node-local configuration both
/// nodes need the same).
fn copy_tree(cluster: &LabCluster, dir: &str) -> anyhow::Result<()> {
    let from = cluster
        .lab
        .host_dir("ox1")?
        .join("root")
        .join(dir.trim_start_matches('/'));
    let to = cluster
        .lab
        .host_dir("ox2")?
        .join("root")
        .join(dir.trim_start_matches('/'));
    let out = std::process::Command::new("cp")
        .args([
            "-a",
            &format!("{}/.", from.display()),
            &to.display().to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "copy {dir} from ox1 to ox2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The imported configuration `toml` (to be written at `path`) with the lab's witness.
fn with_witness(toml: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let name = path.display().to_string();
    let (mut config, _) = tandem_config::Config::parse_str(&name, toml)
        .map_err(|e| anyhow::anyhow!("the imported configuration: {e}"))?;
    crate::labconfig::add_witness(&mut config);
    Ok(tandem_config::to_toml_with_header(
        &config,
        &["imported from the whitepaper's ha.cf, haresources, drbd.conf and authkeys; the lab's witness added by tandem demo --witness".into()],
    ))
}

/// `toml` without its `[[group]]` tables (and their resources), the rest as written.
fn without_groups(toml: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut in_group = false;
    let mut groups = 0;
    for line in toml.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_group =
                t.starts_with("[[group]]") || t.starts_with("[[group.") || t.starts_with("[group.");
            groups += usize::from(t.starts_with("[[group]]"));
        }
        if !in_group {
            out.push_str(line);
            out.push('\n');
        }
    }
    anyhow::ensure!(
        groups == 1,
        "the imported configuration has {groups} groups, not one"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tandem_config::import::{HaFiles, import, render};

    use super::*;

    /// The seed's files imported as `tandem config import` writes them, with the lab's
    /// fence device after the group (the demo's layout) or re-emitted with a witness
    /// (the emitter's layout): without the group, the rest is still all there.
    #[test]
    fn the_bootstrap_configuration_is_the_imported_one_without_its_group() {
        let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/config/whitepaper");
        let files = HaFiles {
            ha_cf: seed.join("ha.cf"),
            haresources: seed.join("haresources"),
            drbd_conf: Some(seed.join("drbd.conf")),
            ..Default::default()
        };
        let (config, warnings) = import(&files).unwrap();
        let imported = render(&config, &files, &warnings).replace("reiserfs", "ext4")
            + "\n[[fence_device]]\nname = \"lab-switch\"\nagent = \"fence_tandem_lab\"\n";
        let with_witness = with_witness(&imported, Path::new("cluster.toml")).unwrap();
        for (text, witness) in [(imported, false), (with_witness, true)] {
            let bare = without_groups(&text).unwrap();
            let (bare, _) = tandem_config::Config::parse_str("bare.toml", &bare)
                .unwrap_or_else(|e| panic!("{e}\n{bare}"));
            assert!(bare.groups.is_empty());
            assert_eq!(bare.disks.len(), 4);
            assert_eq!(bare.fence_devices.len(), 1);
            assert_eq!(bare.links.len(), config.links.len());
            assert_eq!(bare.witness.is_some(), witness);
        }
        assert!(without_groups("[cluster]\nname = \"x\"\n").is_err());
    }
}
