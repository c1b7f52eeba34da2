//! The stack's clients, each a `tandem demo-records stack-client --kind KIND` process
//! in the lab's client host writing numbered items through the virtual IP and printing
//! `WALL_MS ack N` once it was told item N is stored (the records client's protocol,
//! read by [`crate::demo::client::Client`]):
//!
//! | kind | item N | acknowledged when |
//! |---|---|---|
//! | ldap | entry `cn=N,ou=records` added by `ldapadd` | ldapadd exits 0 (or the entry already exists: an earlier try's answer was lost) |
//! | pg | row N committed by `psql` | its `RETURNING n` comes back (the records demo's client) |
//! | smtp | a mail `[mail N]` to the user, submitted to Postfix | Postfix answered 250 to DATA *and* the message is in the user's INBOX (delivered over LMTP into Cyrus) |
//! | imap | a message `[append N]` appended to the INBOX | Cyrus answered OK to APPEND |
//! | ox | `GET /appointment/N` to the Open-Xchange stand-in | it answered `200 OK` (LDAP bind, the row, the mailbox all worked) |

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::hosts::{ADMIN_DN, ADMIN_PW, DOMAIN, OX_PORT, RECORDS_OU, USER, USER_PW};
use super::mail::{self, Imap};
use crate::demo::records::write_numbered;

/// Which client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// LDAP adds of numbered entries (ldapadd).
    Ldap,
    /// SMTP submissions delivered into the mailbox.
    Smtp,
    /// IMAP APPENDs.
    Imap,
    /// Requests to the Open-Xchange stand-in.
    Ox,
}

/// How long the SMTP client looks for its mail in the INBOX after Postfix took it.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs one client against the virtual IP `vip` until killed.
pub fn run(kind: Kind, vip: Ipv4Addr, interval: Duration) -> anyhow::Result<()> {
    let imap_addr = SocketAddr::from((vip, 143));
    match kind {
        Kind::Ldap => write_numbered(interval, |n| ldap_add(vip, n)),
        Kind::Imap => {
            let mut session: Option<Imap> = None;
            write_numbered(interval, |n| {
                let r = (|| {
                    if session.is_none() {
                        session = Some(Imap::login(imap_addr, USER, USER_PW)?);
                    }
                    let s = session
                        .as_mut()
                        .ok_or_else(|| std::io::Error::other("no session"))?;
                    s.append("INBOX", &format!("[append {n}]"))
                })();
                if r.is_err() {
                    session = None;
                }
                r
            })
        }
        Kind::Smtp => write_numbered(interval, |n| {
            let subject = format!("[mail {n}]");
            mail::smtp_send(
                SocketAddr::from((vip, 25)),
                "client@lab",
                &format!("{USER}@{DOMAIN}"),
                &subject,
            )?;
            let deadline = crate::clock::now() + DELIVERY_TIMEOUT;
            loop {
                let mut s = Imap::login(imap_addr, USER, USER_PW)?;
                s.examine("INBOX")?;
                if s.has_subject(&subject)? {
                    return Ok(());
                }
                if crate::clock::now() >= deadline {
                    return Err(std::io::Error::other("accepted, not delivered"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }),
        Kind::Ox => write_numbered(interval, |n| {
            let answer = http_get(
                SocketAddr::from((vip, OX_PORT)),
                &format!("/appointment/{n}"),
            )?;
            if answer.starts_with("HTTP/1.0 200") && answer.contains("\r\n\r\nOK") {
                Ok(())
            } else {
                Err(std::io::Error::other(answer))
            }
        }),
    }
}

/// `ldapadd` of entry `n` as the directory's administrator.
fn ldap_add(vip: Ipv4Addr, n: u64) -> std::io::Result<()> {
    let mut child = Command::new("ldapadd")
        .args([
            "-x",
            "-H",
            &format!("ldap://{vip}"),
            "-D",
            ADMIN_DN,
            "-w",
            ADMIN_PW,
        ])
        .args(["-o", "nettimeout=2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        write!(
            stdin,
            "dn: cn={n},{RECORDS_OU}\nobjectClass: organizationalRole\ncn: {n}\n"
        )?;
    }
    let out = child.wait_with_output()?;
    // 68: already exists (an earlier try stored it and its answer was lost).
    match out.status.code() {
        Some(0) | Some(68) => Ok(()),
        _ => Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
    }
}

/// One HTTP/1.0 GET; the whole answer.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: ox\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}
