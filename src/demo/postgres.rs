//! `tandem demo --service postgresql`: Debian's PostgreSQL with its data directory on
//! the replicated file system, run by the OCF `pgsql` agent of Debian's
//! resource-agents, and a client that commits numbered rows through the virtual IP
//! with `psql` (one persistent session; a new one after each failure).
//!
//! Everything of a node's PostgreSQL that is not data lives in that host's private
//! `/run/tandem` (socket, log, the daemon's temporary directory): the machine's
//! `/run/postgresql` is shared by every lab host and by the machine itself.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::setup::VIP;
use crate::labcluster::LabCluster;

/// Socket directory, private to each lab host.
const SOCKET_DIR: &str = "/run/tandem/pg";
/// How long the client waits for a commit's answer before it gives the session up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Debian's PostgreSQL server binaries (`/usr/lib/postgresql/VERSION/bin`).
pub struct Postgres {
    bin: PathBuf,
}

impl Postgres {
    /// The newest installed version; a clear error when there is none.
    pub fn find() -> anyhow::Result<Self> {
        let root = Path::new("/usr/lib/postgresql");
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                ["initdb", "pg_ctl", "postgres", "psql"]
                    .iter()
                    .all(|b| bin.join(b).is_file())
                    .then_some((v, bin))
            })
            .collect();
        versions.sort();
        let Some((_, bin)) = versions.pop() else {
            bail!(
                "PostgreSQL is not installed (no /usr/lib/postgresql/VERSION/bin with initdb, pg_ctl, postgres and psql): \
                 scripts/install-deps installs it (Debian package postgresql), or run the demo without --service"
            );
        };
        if !Path::new("/usr/lib/ocf/resource.d/heartbeat/pgsql").is_file() {
            bail!(
                "the OCF agent pgsql is not installed (/usr/lib/ocf/resource.d/heartbeat/pgsql): scripts/install-deps installs it (Debian package resource-agents)"
            );
        }
        Ok(Postgres { bin })
    }

    fn tool(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    /// `psql` of this version.
    pub fn psql(&self) -> PathBuf {
        self.bin.join("psql")
    }

    /// The bootstrap's data step.
    pub fn bootstrap_note(&self) -> String {
        format!(
            "initdb {}; CREATE TABLE records",
            self.bin.parent().map_or("", |v| v.to_str().unwrap_or(""))
        )
    }

    /// On ox1, the file system mounted at `mount`: `initdb` as postgres, the settings
    /// the cluster needs (listen on every address, the socket in the host's private
    /// `/run/tandem`, the client's network trusted — a demo, not a production
    /// `pg_hba.conf`), the table, PostgreSQL stopped again.
    pub fn prepare(&self, cluster: &LabCluster, mount: &str) -> anyhow::Result<()> {
        let data = format!("{mount}/pgdata");
        let lab = &cluster.lab;
        let root = |argv: &[&str]| -> anyhow::Result<String> {
            lab.run("ox1", argv)
                .with_context(|| format!("{} on ox1", argv.join(" ")))
        };
        let postgres = |argv: &[&str]| -> anyhow::Result<String> {
            let mut full = vec!["runuser", "-u", "postgres", "--"];
            full.extend_from_slice(argv);
            root(&full)
        };
        root(&[
            "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "700", &data,
        ])?;
        root(&[
            "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "2775", SOCKET_DIR,
        ])?;
        let log = "/run/tandem/pg-bootstrap.log";
        root(&[
            "install",
            "-o",
            "postgres",
            "-g",
            "postgres",
            "-m",
            "600",
            "/dev/null",
            log,
        ])?;
        postgres(&[
            &self.tool("initdb"),
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ])?;
        let conf = format!(
            "\n# tandem demo\nlisten_addresses = '*'\nunix_socket_directories = '{SOCKET_DIR}'\n"
        );
        append(lab, &format!("{data}/postgresql.conf"), &conf)?;
        append(
            lab,
            &format!("{data}/pg_hba.conf"),
            "\n# tandem demo: the lab's public network\nhost all postgres 192.168.1.0/24 trust\n",
        )?;
        postgres(&[&self.tool("pg_ctl"), "-D", &data, "-l", log, "-w", "start"])?;
        let created = postgres(&[
            &self.tool("psql"),
            "-X",
            "-h",
            SOCKET_DIR,
            "-d",
            "postgres",
            "-c",
            "CREATE TABLE records (n bigint NOT NULL)",
        ]);
        let stopped = postgres(&[
            &self.tool("pg_ctl"),
            "-D",
            &data,
            "-w",
            "-m",
            "fast",
            "stop",
        ]);
        created?;
        stopped?;
        Ok(())
    }

    /// The group's resource: Debian's `ocf:heartbeat:pgsql` (plain mode, no
    /// replication: the data is replicated underneath it).
    pub fn resource(&self, mount: &str) -> String {
        format!(
            r#"[[group.resource]]
name = "postgresql"
type = "ocf"
provider = "heartbeat"
agent = "pgsql"
params = {{ pgctl = "{pg_ctl}", psql = "{psql}", pgdata = "{mount}/pgdata", pgdb = "postgres", socketdir = "{SOCKET_DIR}", logfile = "/run/tandem/postgresql.log", tmpdir = "/run/tandem/pgsql-tmp" }}
monitor_interval = "2s"
timeout = "60s"
"#,
            pg_ctl = self.tool("pg_ctl"),
            psql = self.tool("psql"),
        )
    }

    /// Every row's `n`, one per line, read by a client through the virtual IP.
    pub fn select_all(&self, cluster: &LabCluster) -> anyhow::Result<String> {
        cluster
            .lab
            .run(
                "client",
                &[
                    &self.tool("psql"),
                    "-X",
                    "-h",
                    VIP,
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-A",
                    "-t",
                    "-c",
                    "SELECT n FROM records",
                ],
            )
            .context("read the table through the virtual IP")
    }
}

fn append(lab: &tandem_lab::Lab, path: &str, text: &str) -> anyhow::Result<()> {
    let host = lab.host_path("ox1", path)?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&host)
        .with_context(|| format!("open {path} on ox1"))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// One `psql` session: rows go in on its stdin, their numbers come back on stdout.
struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn start(psql: &Path, host: &str) -> std::io::Result<Self> {
        let mut child = Command::new(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", host, "-U", "postgres", "-d", "postgres"])
            .env("PGCONNECT_TIMEOUT", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("psql without pipes"));
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Session {
            child,
            stdin,
            lines,
        })
    }

    /// Commits row `n` (psql autocommits each statement; PostgreSQL answers once the
    /// commit record is flushed) and waits for its number to come back.
    fn commit(&mut self, n: u64) -> std::io::Result<()> {
        writeln!(
            self.stdin,
            "INSERT INTO records (n) VALUES ({n}) RETURNING n;"
        )?;
        self.stdin.flush()?;
        match self.lines.recv_timeout(ANSWER_TIMEOUT) {
            Ok(line) if line.trim() == n.to_string() => Ok(()),
            Ok(line) => Err(std::io::Error::other(format!("unexpected answer {line:?}"))),
            Err(_) => Err(std::io::Error::other("no answer")),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Our own child: killed by its handle, then reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tandem demo-records pg-client`: commits rows 1, 2, 3 … to `host`, retrying a
/// number until it is acknowledged; prints `WALL_MS ack N` or `WALL_MS fail N`.
pub fn client(host: &str, psql: &Path, interval: Duration) -> anyhow::Result<()> {
    let mut session: Option<Session> = None;
    super::records::write_numbered(interval, |next| {
        let result = match session.as_mut() {
            Some(s) => s.commit(next),
            None => Session::start(psql, host).and_then(|mut s| {
                let r = s.commit(next);
                session = Some(s);
                r
            }),
        };
        if result.is_err() {
            // A new session for the retry (dropping this one kills its psql).
            session = None;
        }
        result
    })
}
