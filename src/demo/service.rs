//! The data service the demo's group runs on the replicated file system, and the
//! client that writes to it through the virtual IP: tandem's own records service
//! (`tandem demo-records serve`, run by Debian's `ocf:heartbeat:anything`), or
//! PostgreSQL (Debian's package, run by `ocf:heartbeat:pgsql`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::postgres::Postgres;
use super::records;
use super::setup::VIP;
use crate::labcluster::LabCluster;

/// Which service `tandem demo --service` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// tandem's records service: appends each record to a file and fsyncs it.
    Records,
    /// PostgreSQL: the client commits numbered rows.
    Postgresql,
}

/// A service with what it needs on this machine.
pub enum Service {
    /// `tandem demo-records serve`.
    Records,
    /// PostgreSQL from Debian's package.
    Postgres(Postgres),
}

impl Service {
    /// The service of `kind`; a clear error when what it needs is not installed.
    pub fn new(kind: Kind) -> anyhow::Result<Self> {
        Ok(match kind {
            Kind::Records => Service::Records,
            Kind::Postgresql => Service::Postgres(Postgres::find()?),
        })
    }

    /// Size of the replicated disk (PostgreSQL's data directory needs some 40 MiB).
    pub fn disk_mib(&self) -> u64 {
        match self {
            Service::Records => 64,
            Service::Postgres(_) => 192,
        }
    }

    /// How status and the timeline call it.
    pub fn label(&self) -> &'static str {
        match self {
            Service::Records => "records service (ocf:heartbeat:anything)",
            Service::Postgres(_) => "PostgreSQL (ocf:heartbeat:pgsql)",
        }
    }

    /// What the client's records are.
    pub fn record_word(&self) -> &'static str {
        match self {
            Service::Records => "record",
            Service::Postgres(_) => "row",
        }
    }

    /// The bootstrap's data step, as an operator would write it.
    pub fn bootstrap_note(&self) -> String {
        match self {
            Service::Records => "nothing to copy in (the service creates its file)".into(),
            Service::Postgres(pg) => pg.bootstrap_note(),
        }
    }

    /// Puts the service's data on the file system mounted at `mount` in ox1.
    pub fn prepare(&self, cluster: &LabCluster, mount: &str) -> anyhow::Result<()> {
        match self {
            Service::Records => Ok(()),
            Service::Postgres(pg) => pg.prepare(cluster, mount),
        }
    }

    /// The group's resource (TOML) that runs the service.
    pub fn resource(&self, tandem: &Path, mount: &str) -> anyhow::Result<String> {
        let tandem = tandem.to_str().context("tandem binary path")?;
        Ok(match self {
            // anything's start returns once its monitor passes, and the monitor hook
            // waits until the service answers on its port: "started" means serving.
            Service::Records => format!(
                r#"[[group.resource]]
name = "records"
type = "ocf"
provider = "heartbeat"
agent = "anything"
params = {{ binfile = "{tandem}", cmdline_options = "demo-records serve --dir {mount}", pidfile = "/run/tandem/records.pid", logfile = "/run/tandem/records.log", monitor_hook = "{tandem} demo-records probe --addr 127.0.0.1:{port}" }}
monitor_interval = "1s"
"#,
                port = records::PORT
            ),
            Service::Postgres(pg) => pg.resource(mount),
        })
    }

    /// The client, to run in the client host: one line per outcome on stdout,
    /// `WALL_MS ack N` or `WALL_MS fail N`.
    pub fn client(&self, tandem: &Path, interval_ms: u64) -> Command {
        let mut cmd = Command::new(tandem);
        cmd.arg("demo-records");
        match self {
            Service::Records => {
                cmd.args(["client", "--addr", &format!("{VIP}:{}", records::PORT)]);
            }
            Service::Postgres(pg) => {
                cmd.args(["pg-client", "--host", VIP, "--psql"])
                    .arg(pg.psql());
            }
        }
        cmd.args(["--interval-ms", &interval_ms.to_string()]);
        cmd
    }

    /// The records the survivor `node` holds: the file on its mounted file system, or
    /// the table as a client reads it through the virtual IP. Also the number of
    /// lines that were not a record (none expected: fsync'ed appends are whole).
    pub fn stored(
        &self,
        cluster: &LabCluster,
        node: &str,
        mount: &str,
    ) -> anyhow::Result<(BTreeSet<u64>, usize)> {
        let text = match self {
            Service::Records => {
                let path = format!("{mount}/records");
                let bytes = cluster
                    .lab
                    .read_file(node, &path)
                    .with_context(|| format!("read {path} on {node}"))?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Service::Postgres(pg) => pg.select_all(cluster)?,
        };
        let mut set = BTreeSet::new();
        let mut bad = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line.trim().parse() {
                Ok(n) => {
                    set.insert(n);
                }
                Err(_) => bad += 1,
            }
        }
        Ok((set, bad))
    }
}
