//! Just enough SMTP and IMAP to submit a message, append one, log in, select a mailbox
//! and list subjects: written by hand (a few lines each) rather than pulling in mail
//! crates. Every call has a timeout: a server on a dead node must not hang a client.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use std::io::Error;

/// Connect and read timeouts of every session.
const TIMEOUT: Duration = Duration::from_secs(3);

fn connect(addr: SocketAddr) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.set_nodelay(true)?;
    let r = BufReader::new(s.try_clone()?);
    Ok((s, r))
}

fn read_line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(Error::other("connection closed"));
    }
    Ok(line)
}

/// One SMTP reply (multi-line replies joined); an error unless its code is `want`.
fn smtp_reply(r: &mut BufReader<TcpStream>, want: &str) -> std::io::Result<String> {
    let mut all = String::new();
    loop {
        let line = read_line(r)?;
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            break;
        }
    }
    if all.starts_with(want) {
        Ok(all)
    } else {
        Err(Error::other(format!("SMTP: expected {want}, got {all:?}")))
    }
}

/// Submits a message with `subject` from `from` to `to` over SMTP at `addr`; Ok once
/// the server answered 250 to the end of DATA (it took responsibility for the message).
pub fn smtp_send(addr: SocketAddr, from: &str, to: &str, subject: &str) -> std::io::Result<()> {
    let (mut s, mut r) = connect(addr)?;
    smtp_reply(&mut r, "220")?;
    for (cmd, want) in [
        ("EHLO client.lab".to_string(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_string(), "354"),
    ] {
        write!(s, "{cmd}\r\n")?;
        smtp_reply(&mut r, want)?;
    }
    write!(
        s,
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\n{subject}\r\n.\r\n"
    )?;
    smtp_reply(&mut r, "250")?;
    let _ = write!(s, "QUIT\r\n");
    Ok(())
}

/// A logged-in IMAP session.
pub struct Imap {
    s: TcpStream,
    r: BufReader<TcpStream>,
    tag: u32,
}

impl Imap {
    /// Connects to `addr` and logs in (plain LOGIN: Cyrus hands it to saslauthd).
    pub fn login(addr: SocketAddr, user: &str, password: &str) -> std::io::Result<Imap> {
        let (s, mut r) = connect(addr)?;
        let greeting = read_line(&mut r)?;
        if !greeting.starts_with("* OK") {
            return Err(Error::other(format!("IMAP greeting {greeting:?}")));
        }
        let mut imap = Imap { s, r, tag: 0 };
        imap.command(&format!("LOGIN {user} \"{password}\""))?;
        Ok(imap)
    }

    /// Sends `cmd`; the untagged lines up to its tagged OK (an error on NO or BAD).
    pub fn command(&mut self, cmd: &str) -> std::io::Result<Vec<String>> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        write!(self.s, "{tag} {cmd}\r\n")?;
        self.finish(&tag)
    }

    fn finish(&mut self, tag: &str) -> std::io::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = read_line(&mut self.r)?;
            if let Some(rest) = line.strip_prefix(tag).and_then(|l| l.strip_prefix(' ')) {
                if rest.starts_with("OK") {
                    return Ok(lines);
                }
                return Err(Error::other(format!("IMAP {tag}: {}", rest.trim())));
            }
            lines.push(line);
        }
    }

    /// Appends a message with `subject` to `mailbox` (a synchronizing literal: the
    /// server says `+` before the message is sent); Ok once the server answered OK.
    pub fn append(&mut self, mailbox: &str, subject: &str) -> std::io::Result<()> {
        let msg = format!("From: <client@lab>\r\nSubject: {subject}\r\n\r\n{subject}\r\n");
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        write!(self.s, "{tag} APPEND {mailbox} {{{}}}\r\n", msg.len())?;
        let go = read_line(&mut self.r)?;
        if !go.starts_with('+') {
            return Err(Error::other(format!("IMAP APPEND: {}", go.trim())));
        }
        write!(self.s, "{msg}\r\n")?;
        self.finish(&tag).map(|_| ())
    }

    /// Selects `mailbox` read-only; its message count (`* N EXISTS`).
    pub fn examine(&mut self, mailbox: &str) -> std::io::Result<u64> {
        let lines = self.command(&format!("EXAMINE {mailbox}"))?;
        lines
            .iter()
            .find_map(|l| {
                l.strip_prefix("* ")?
                    .strip_suffix("EXISTS\r\n")?
                    .trim()
                    .parse()
                    .ok()
            })
            .ok_or_else(|| Error::other("IMAP EXAMINE without EXISTS"))
    }

    /// The Subject header of every message of the examined mailbox, as raw lines.
    pub fn subjects(&mut self) -> std::io::Result<Vec<String>> {
        let lines = self.command("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")?;
        Ok(lines
            .into_iter()
            .filter_map(|l| l.strip_prefix("Subject: ").map(|s| s.trim().to_string()))
            .collect())
    }

    /// Whether a message with exactly `subject` (bracketed: `[mail 7]`) is in the
    /// examined mailbox.
    pub fn has_subject(&mut self, subject: &str) -> std::io::Result<bool> {
        let lines = self.command(&format!("SEARCH HEADER Subject \"{subject}\""))?;
        Ok(lines.iter().any(|l| {
            l.strip_prefix("* SEARCH")
                .is_some_and(|rest| !rest.trim().is_empty())
        }))
    }
}

impl Drop for Imap {
    fn drop(&mut self) {
        let _ = write!(self.s, "z LOGOUT\r\n");
    }
}
