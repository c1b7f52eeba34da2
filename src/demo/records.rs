//! The demo's data service and its client, built into the binary so the demo needs
//! nothing installed (`tandem demo-records serve|client`, hidden from help).
//!
//! The service appends each record the client sends — a number, one per line — to
//! `DIR/records` and makes it durable (`fdatasync`) before it answers `ok N`: an
//! acknowledged record is on the file system, and through it on the replicated disk's
//! flush, on both nodes. The client sends numbered records through the virtual IP, one
//! at a time, retrying a number until it is acknowledged, and prints a line per
//! outcome (`WALL_MS ack N` or `WALL_MS fail N`) for the demo to read. `probe` is the
//! service's health check (the OCF `anything` agent's monitor hook), and `pg-client`
//! the same client for PostgreSQL (src/demo/postgres.rs).

use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// `tandem demo-records` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Serve: append each record to DIR/records, fdatasync, answer.
    Serve {
        /// Directory of the records file (on the replicated file system).
        #[arg(long)]
        dir: PathBuf,
        /// TCP port.
        #[arg(long, default_value_t = PORT)]
        port: u16,
    },
    /// Send numbered records to ADDR until killed; one line per outcome on stdout.
    Client {
        /// The service's address (the virtual IP and port).
        #[arg(long)]
        addr: SocketAddr,
        /// Pause between two acknowledged records.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
    },
    /// Exit 0 once ADDR accepts a connection; 1 if it does not within the timeout.
    Probe {
        /// The service's address.
        #[arg(long)]
        addr: SocketAddr,
        /// How long to keep trying.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Commit numbered rows to PostgreSQL at HOST through psql until killed; one line
    /// per outcome on stdout.
    PgClient {
        /// The server's address (the virtual IP).
        #[arg(long)]
        host: String,
        /// The psql binary.
        #[arg(long)]
        psql: PathBuf,
        /// Pause between two acknowledged rows.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
    },
    /// One of the whitepaper stack's clients (tandem demo --stack whitepaper).
    StackClient {
        /// Which client.
        #[arg(long, value_enum)]
        kind: super::whitepaper::clients::Kind,
        /// The group's virtual IP.
        #[arg(long)]
        vip: std::net::Ipv4Addr,
        /// Pause between two acknowledged items.
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
    },
    /// The Open-Xchange stand-in: an HTTP service using LDAP, PostgreSQL and IMAP.
    Openexchange {
        /// TCP port.
        #[arg(long, default_value_t = super::whitepaper::hosts::OX_PORT)]
        port: u16,
    },
    /// Print the Subject of every message in the demo user's INBOX at ADDR.
    ImapSubjects {
        /// The IMAP server's address.
        #[arg(long)]
        addr: SocketAddr,
    },
}

/// The service's port.
pub const PORT: u16 = 7070;

/// Longest record line accepted (a number and a newline).
const MAX_LINE_BYTES: usize = 32;

/// Runs `tandem demo-records …`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Sub::Serve { dir, port } => serve(dir, port),
        Sub::Client { addr, interval_ms } => client(addr, Duration::from_millis(interval_ms)),
        Sub::Probe { addr, timeout_ms } => probe(addr, Duration::from_millis(timeout_ms)),
        Sub::PgClient {
            host,
            psql,
            interval_ms,
        } => super::postgres::client(&host, &psql, Duration::from_millis(interval_ms)),
        Sub::StackClient {
            kind,
            vip,
            interval_ms,
        } => super::whitepaper::clients::run(kind, vip, Duration::from_millis(interval_ms)),
        Sub::Openexchange { port } => super::whitepaper::standin::serve(port),
        Sub::ImapSubjects { addr } => super::whitepaper::checks::print_subjects(addr),
    }
}

fn serve(dir: PathBuf, port: u16) -> anyhow::Result<()> {
    let path = dir.join("records");
    // The file first: once the port answers, records can be stored.
    // One writer at a time: records from several connections never interleave in a line.
    let file = std::sync::Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?,
    ));
    // The file's name durable too (it may have just been created).
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))?;
    let listener =
        TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("listen on port {port}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let file = file.clone();
        std::thread::spawn(move || {
            let _ = handle(conn, &file);
        });
    }
    Ok(())
}

fn handle(conn: TcpStream, file: &std::sync::Mutex<std::fs::File>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        let Ok(record) = line.trim().parse::<u64>() else {
            out.write_all(b"error: expected a number\n")?;
            return Ok(());
        };
        {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            writeln!(f, "{record}")?;
            f.sync_data()?;
        }
        writeln!(out, "ok {record}")?;
    }
}

fn probe(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = crate::clock::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if crate::clock::now() >= deadline => {
                anyhow::bail!("{addr} does not answer: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn client(addr: SocketAddr, interval: Duration) -> anyhow::Result<()> {
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    write_numbered(interval, |next| {
        let result = (|| -> std::io::Result<()> {
            if conn.is_none() {
                let s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.set_nodelay(true)?;
                let r = BufReader::new(s.try_clone()?);
                conn = Some((s, r));
            }
            let Some((s, r)) = conn.as_mut() else {
                return Err(std::io::ErrorKind::NotConnected.into());
            };
            writeln!(s, "{next}")?;
            let mut line = String::new();
            r.read_line(&mut line)?;
            if line.trim() == format!("ok {next}") {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("unexpected answer {line:?}")))
            }
        })();
        if result.is_err() {
            // A new connection for the retry: the old one may hang on a dead node.
            conn = None;
        }
        result
    })
}

/// The clients' loop: records 1, 2, 3 … through `attempt`, each retried until it is
/// acknowledged; one line per outcome on stdout (`WALL_MS ack N`, `WALL_MS fail N`).
pub fn write_numbered(
    interval: Duration,
    mut attempt: impl FnMut(u64) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut next = 1u64;
    let stdout = std::io::stdout();
    loop {
        let result = attempt(next);
        let mut out = stdout.lock();
        match result {
            Ok(()) => {
                writeln!(out, "{} ack {next}", crate::clock::wall_ms())?;
                next += 1;
                drop(out);
                std::thread::sleep(interval);
            }
            Err(e) => {
                // The reason on the same line, one line of it: the demo shows a
                // client's last reason when it gets nothing acknowledged.
                let why: String = e
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let why: String = why.chars().take(200).collect();
                writeln!(out, "{} fail {next} {why}", crate::clock::wall_ms())?;
                drop(out);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
