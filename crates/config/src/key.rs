//! The authentication key file: a native key file or a Heartbeat `authkeys` file.
//!
//! Both are accepted at `cluster.key_file`, told apart by their first significant line:
//! `auth N` starts a Heartbeat file, anything else is a native key. The secret's bytes
//! are what the wire layer keys its MAC with; tandem never speaks Heartbeat's wire
//! format, so `sha1`/`md5`/`crc` only say which line held the secret (and `crc`, which
//! has none, is refused by the daemon as it gives no authentication at all).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::diag::{Diagnostics, Sink, Source, Warning};

/// Minimum length of a native secret, in bytes.
pub const MIN_NATIVE_SECRET_LEN: usize = 16;

/// A Heartbeat authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatMethod {
    /// CRC: no secret, no security.
    Crc,
    /// HMAC-MD5 in Heartbeat.
    Md5,
    /// HMAC-SHA1 in Heartbeat.
    Sha1,
}

/// Where the secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A native key file: the first non-comment line.
    Native,
    /// A Heartbeat `authkeys` file: the line selected by `auth N`.
    Heartbeat {
        /// The selected index.
        index: u32,
        /// Its method.
        method: HeartbeatMethod,
    },
}

/// A loaded key.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey {
    /// Which format and line it came from.
    pub source: KeySource,
    /// The secret's bytes (empty for Heartbeat `crc`).
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for AuthKey {
    // Never print the secret, not even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthKey")
            .field("source", &self.source)
            .field("secret_len", &self.secret.len())
            .finish()
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file does not exist.
    #[error("key file does not exist")]
    Missing,
    /// It exists but is not a regular file.
    #[error("key file {path} is not a regular file: expected a file with mode 0600")]
    NotAFile {
        /// The path.
        path: String,
    },
    /// Group or others may access it.
    #[error(
        "key file {path} is readable by group or others (mode {mode:04o}): expected mode 0600 or stricter (chmod 600 {path})"
    )]
    Permissions {
        /// The path.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// It could not be read.
    #[error("cannot read key file {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Its contents are malformed.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Checks permissions, then reads and parses the key file at `path`.
pub fn check_file(path: &Path) -> Result<(AuthKey, Vec<Warning>), KeyFileError> {
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyFileError::Missing),
        Err(source) => {
            return Err(KeyFileError::Io {
                path: shown,
                source,
            });
        }
    };
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile { path: shown });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: shown, mode });
    }
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Io {
        path: shown.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    parse(&shown, &text).map_err(KeyFileError::Invalid)
}

/// Parses key file `text` (native or Heartbeat `authkeys`).
pub fn parse(name: &str, text: &str) -> Result<(AuthKey, Vec<Warning>), Diagnostics> {
    let src = Source::new(name, text);
    let first = significant_lines(text).next();
    match first {
        Some((_, line)) if line.split_whitespace().next() == Some("auth") => {
            parse_authkeys(&src)
        }
        Some((offset, line)) => {
            let secret = line.trim();
            if secret.len() < MIN_NATIVE_SECRET_LEN {
                return Err(Diagnostics(vec![src.error(
                    offset..offset,
                    format!(
                        "native key is {} bytes long: expected at least {MIN_NATIVE_SECRET_LEN} (e.g. `openssl rand -hex 32 > FILE`)",
                        secret.len()
                    ),
                )]));
            }
            Ok((
                AuthKey {
                    source: KeySource::Native,
                    secret: secret.as_bytes().to_vec(),
                },
                Vec::new(),
            ))
        }
        None => Err(Diagnostics(vec![src.error(
            0..0,
            "empty key file: expected a secret line (native) or `auth N` and `N sha1 SECRET` (Heartbeat authkeys)",
        )])),
    }
}

/// Lines with comments stripped and blanks skipped: (byte offset of first non-blank,
/// text without the comment).
fn significant_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut offset = 0;
    text.split_inclusive('\n').filter_map(move |raw| {
        let start = offset;
        offset += raw.len();
        let line = raw.split('#').next().unwrap_or("").trim_end();
        let lead = line.len() - line.trim_start().len();
        let line = line.trim_start();
        (!line.is_empty()).then_some((start + lead, line))
    })
}

/// Splits a line into (byte offset within the text, word) pairs.
pub(crate) fn words(base: usize, line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                out.push((base + s, &line[s..i]));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push((base + s, &line[s..]));
    }
    out
}

fn parse_authkeys(src: &Source<'_>) -> Result<(AuthKey, Vec<Warning>), Diagnostics> {
    let mut sink = Sink::default();
    let mut auth: Option<(u32, usize)> = None;
    let mut keys: BTreeMap<u32, (HeartbeatMethod, String, usize)> = BTreeMap::new();
    // Indexes whose line was already reported, so `auth N` does not repeat the news.
    let mut broken = Vec::new();
    for (offset, line) in significant_lines(src.text) {
        let w = words(offset, line);
        let (p0, first) = w[0];
        if first == "auth" {
            match w.get(1).map(|(p, s)| (*p, s.parse::<u32>())) {
                Some((p, Ok(n))) if w.len() == 2 => auth = Some((n, p)),
                Some((p, _)) if w.len() == 2 => sink.push(src.error(
                    p..p,
                    "`auth` needs a key index: expected `auth N` with N a number from 1 to 15",
                )),
                _ => sink.push(src.error(p0..p0, "expected `auth N` (one key index)")),
            }
            continue;
        }
        let Ok(index) = first.parse::<u32>() else {
            sink.push(src.error(p0..p0, format!("unexpected `{first}`: expected `auth N` or a key line `N sha1|md5|crc [SECRET]`")));
            continue;
        };
        broken.push(index);
        let Some(&(pm, method)) = w.get(1) else {
            sink.push(src.error(
                p0..p0,
                format!("key {index} has no method: expected `{index} sha1|md5|crc [SECRET]`"),
            ));
            continue;
        };
        let method = match method {
            "sha1" => HeartbeatMethod::Sha1,
            "md5" => HeartbeatMethod::Md5,
            "crc" => HeartbeatMethod::Crc,
            other => {
                sink.push(src.error(
                    pm..pm,
                    format!("unknown authentication method `{other}`: expected sha1, md5 or crc"),
                ));
                continue;
            }
        };
        let secret = match w.get(2) {
            Some(&(ps, _)) => line[ps - offset..].trim().to_string(),
            None => String::new(),
        };
        if method != HeartbeatMethod::Crc && secret.is_empty() {
            sink.push(src.error(
                pm..pm,
                format!(
                    "key {index} has no secret: expected `{index} {} SECRET`",
                    method_name(method)
                ),
            ));
            continue;
        }
        broken.pop();
        if keys.insert(index, (method, secret, p0)).is_some() {
            sink.push(src.error(
                p0..p0,
                format!("key index {index} defined twice: expected each index once"),
            ));
        }
    }
    let chosen = match auth {
        None => {
            sink.push(src.error(
                0..0,
                "no `auth N` line: expected `auth N` selecting one of the key lines",
            ));
            None
        }
        Some((n, p)) => match keys.get(&n) {
            None if broken.contains(&n) => None,
            None => {
                sink.push(src.error(p..p, format!("`auth {n}` selects key {n}, which is not defined: expected a line `{n} sha1 SECRET`")));
                None
            }
            Some((method, secret, p0)) => {
                if *method == HeartbeatMethod::Crc {
                    sink.push(src.warning(*p0..*p0, "crc authentication has no secret and gives no security: anyone on the link can forge heartbeats; use `sha1 SECRET`"));
                } else if secret.len() < MIN_NATIVE_SECRET_LEN {
                    sink.push(src.warning(*p0..*p0, format!("key {n}'s secret is {} bytes: it authenticates the heartbeats and keys every replication link, and so short a secret can be guessed; use at least {MIN_NATIVE_SECRET_LEN} (e.g. `openssl rand -hex 32`)", secret.len())));
                }
                Some(AuthKey {
                    source: KeySource::Heartbeat {
                        index: n,
                        method: *method,
                    },
                    secret: secret.as_bytes().to_vec(),
                })
            }
        },
    };
    let warnings = sink.finish()?;
    match chosen {
        Some(k) => Ok((k, warnings)),
        None => Err(Diagnostics(vec![src.error(0..0, "no usable key")])),
    }
}

fn method_name(m: HeartbeatMethod) -> &'static str {
    match m {
        HeartbeatMethod::Crc => "crc",
        HeartbeatMethod::Md5 => "md5",
        HeartbeatMethod::Sha1 => "sha1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_authkeys_selects_the_auth_line() {
        let (k, w) = parse(
            "authkeys",
            "# comment\nauth 2\n1 crc\n2 sha1 Hello There, friend # x\n3 md5 m\n",
        )
        .unwrap();
        assert_eq!(
            k.source,
            KeySource::Heartbeat {
                index: 2,
                method: HeartbeatMethod::Sha1
            }
        );
        assert_eq!(k.secret, b"Hello There, friend");
        assert!(w.is_empty());
    }

    #[test]
    fn a_short_secret_warns() {
        let (k, w) = parse("authkeys", "auth 1\n1 sha1 x\n").unwrap();
        assert_eq!(k.secret, b"x");
        assert_eq!(w.len(), 1);
        assert!(
            w[0].to_string()
                .starts_with("authkeys:2:1: warning: key 1's secret is 1 bytes"),
            "{}",
            w[0]
        );
        let (_, w) = parse("authkeys", "auth 1\n1 sha1 0123456789abcdef\n").unwrap();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn crc_warns() {
        let (k, w) = parse("authkeys", "auth 1\n1 crc\n").unwrap();
        assert!(k.secret.is_empty());
        assert_eq!(w.len(), 1);
        assert!(
            w[0].to_string().starts_with("authkeys:2:1: warning: crc"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn errors_point_at_the_token() {
        let e = parse("ak", "auth 1\n1 sha256 x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ak:2:3: error: unknown authentication method `sha256`: expected sha1, md5 or crc"
        );
        let e = parse("ak", "auth 3\n1 sha1 x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ak:1:6: error: `auth 3` selects key 3, which is not defined: expected a line `3 sha1 SECRET`"
        );
    }

    #[test]
    fn native_key_needs_length() {
        assert!(parse("k", "short\n").is_err());
        let (k, _) = parse("k", "# tandem key\n0123456789abcdef0123\n").unwrap();
        assert_eq!(k.source, KeySource::Native);
        assert_eq!(k.secret, b"0123456789abcdef0123");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 42;
        for _ in 0..5000 {
            let mut s = Vec::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(b"auth 12 sha1md5crc\n#x"[(x % 21) as usize]);
            }
            let _ = parse("k", &String::from_utf8_lossy(&s));
        }
    }
}
