//! The Open-Xchange stand-in (`tandem demo-records openexchange`): the group's last
//! resource, an HTTP service on the active node that does, per request, what
//! Open-Xchange did with the back-ends the whitepaper's group starts before it:
//!
//! 1. authenticates the user against LDAP (a simple bind as the user, `ldapwhoami`);
//! 2. stores an appointment: a row in PostgreSQL's `appointments` (`psql`, committed);
//! 3. reads the user's mailbox over IMAP (Cyrus checks the login through saslauthd,
//!    which binds to LDAP again).
//!
//! `GET /appointment/N` answers `200 OK` only when all three worked, else `503` naming
//! the step that failed. The back-ends are reached on the node itself (127.0.0.1), as
//! OX ran beside them.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;

use anyhow::Context;

use super::hosts::{USER, USER_DN, USER_PW};
use super::mail::Imap;

/// Requests served at once.
const MAX_REQUESTS: usize = 32;

/// Serves on `port` until killed.
pub fn serve(port: u16) -> anyhow::Result<()> {
    let psql = format!(
        "/usr/lib/postgresql/{}/bin/psql",
        super::bootstrap::pg_version()?
    );
    let listener =
        TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("listen on port {port}"))?;
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // One thread per request, at most MAX_REQUESTS at once: beyond, 503 at once.
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_REQUESTS {
            busy.fetch_sub(1, Ordering::AcqRel);
            let _ = conn.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy\n");
            continue;
        }
        let (psql, busy) = (psql.clone(), busy.clone());
        std::thread::spawn(move || {
            let _ = handle(conn, &psql);
            busy.fetch_sub(1, Ordering::AcqRel);
        });
    }
    Ok(())
}

fn handle(conn: TcpStream, psql: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut out = conn.try_clone()?;
    let mut first = String::new();
    BufReader::new(conn).read_line(&mut first)?;
    let n = first
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.strip_prefix("/appointment/"))
        .and_then(|n| n.parse::<u64>().ok());
    let (code, body) = match n {
        None => ("404 Not Found", "GET /appointment/N\n".to_string()),
        Some(n) => match appointment(n, psql) {
            Ok(count) => (
                "200 OK",
                format!("OK appointment {n} stored; {USER}'s INBOX holds {count} messages\n"),
            ),
            Err(e) => ("503 Service Unavailable", format!("failed: {e}\n")),
        },
    };
    write!(
        out,
        "HTTP/1.0 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn appointment(n: u64, psql: &str) -> anyhow::Result<u64> {
    run(
        Command::new("ldapwhoami").args([
            "-x",
            "-H",
            "ldap://127.0.0.1",
            "-D",
            USER_DN,
            "-w",
            USER_PW,
            "-o",
            "nettimeout=2",
        ]),
        "LDAP bind",
    )?;
    run(
        Command::new(psql)
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("INSERT INTO appointments (n) VALUES ({n})"))
            .env("PGCONNECT_TIMEOUT", "2"),
        "PostgreSQL insert",
    )?;
    let mut imap = Imap::login(SocketAddr::from(([127, 0, 0, 1], 143)), USER, USER_PW)
        .context("IMAP login")?;
    imap.examine("INBOX").context("IMAP EXAMINE INBOX")
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| what.to_string())?;
    if !out.status.success() {
        anyhow::bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
