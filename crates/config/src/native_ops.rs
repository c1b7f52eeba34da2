//! `[metrics]` and `[[notify]]`: what an operator runs tandem with in production.
//!
//! A child module of `native`, so it reads its tables with the same helpers and its
//! complaints carry the same `FILE:LINE:COL: error: …` positions.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use toml::de::DeValue;

use super::{Tbl, Walker};
use crate::model::{Metrics, NOTIFY_EVENTS, Notify, defaults};

const METRICS_KEYS: &[&str] = &["listen"];
const NOTIFY_KEYS: &[&str] = &["name", "command", "args", "events", "disks", "timeout"];

/// `listen` as written: `"ADDR:PORT"`, `"[V6]:PORT"`, `"ADDR"` (default port), or
/// `"PORT"` / `":PORT"` (loopback). `None` when it is none of these.
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Some(SocketAddr::new(loopback, port));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, defaults::METRICS_PORT))
}

impl Walker<'_> {
    /// `[metrics]`: present means on; `listen` defaults to loopback.
    pub(super) fn metrics(&mut self, t: &Tbl<'_, '_>) -> Metrics {
        self.check_keys(t, METRICS_KEYS);
        let default = parse_listen(defaults::METRICS_LISTEN);
        let Some(v) = t.get("listen") else {
            return Metrics { listen: default };
        };
        let Some(s) = self.string(v, "listen") else {
            return Metrics { listen: default };
        };
        match parse_listen(&s) {
            Some(addr) if addr.port() != 0 => Metrics { listen: Some(addr) },
            _ => {
                self.err(
                    v.span(),
                    format!(
                        "`listen` = {s:?} is not an address to listen on: expected \"ADDR:PORT\" (e.g. \"127.0.0.1:{port}\" or \"[::1]:{port}\"), \"ADDR\" or \"PORT\" (loopback), port 1–65535",
                        port = defaults::METRICS_PORT
                    ),
                );
                Metrics { listen: default }
            }
        }
    }

    /// Every `[[notify]]`; `disks` names must be configured disks.
    pub(super) fn notifies(&mut self, root: &Tbl<'_, '_>, disks: &HashSet<String>) -> Vec<Notify> {
        let mut out: Vec<Notify> = Vec::new();
        let mut seen = HashMap::new();
        for t in self.array_of_tables(root, "notify", "notify") {
            let Some((mut n, explicit)) = self.notify(&t, disks) else {
                continue;
            };
            match explicit {
                Some(span) => {
                    if !self.unique(&mut seen, &n.name, span, "notify") {
                        continue;
                    }
                }
                None => {
                    // A derived name that collides gets -2, -3 … (as resources do).
                    let base = n.name.clone();
                    let mut i = 2;
                    while seen.contains_key(&n.name) {
                        n.name = format!("{base}-{i}");
                        i += 1;
                    }
                    seen.insert(n.name.clone(), t.span.clone());
                }
            }
            out.push(n);
        }
        out
    }

    fn notify(
        &mut self,
        t: &Tbl<'_, '_>,
        disks: &HashSet<String>,
    ) -> Option<(Notify, Option<std::ops::Range<usize>>)> {
        self.check_keys(t, NOTIFY_KEYS);
        let v = self.required(t, "command", "the program to run (an absolute path)")?;
        let command = self.string(v, "command")?;
        if !command.starts_with('/') {
            self.err(
                v.span(),
                format!("`command` = {command:?}: expected an absolute path (starting with /); it runs without a shell, e.g. \"/usr/local/sbin/tandem-mail\""),
            );
            return None;
        }
        let command = PathBuf::from(command);
        let args = t
            .get("args")
            .map(|v| {
                self.strings(v, "args")
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect()
            })
            .unwrap_or_default();
        let mut events = Vec::new();
        if let Some(v) = t.get("events") {
            for (e, span) in self.strings(v, "events") {
                if NOTIFY_EVENTS.contains(&e.as_str()) {
                    if !events.contains(&e) {
                        events.push(e);
                    }
                } else {
                    self.err(
                        span,
                        format!(
                            "unknown event `{e}`{}; expected one of: {}",
                            crate::diag::did_you_mean(&e, NOTIFY_EVENTS),
                            NOTIFY_EVENTS.join(", ")
                        ),
                    );
                }
            }
            if events.is_empty() && matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()) {
                self.err(
                    v.span(),
                    "`events` is empty: expected at least one event (leave `events` out for every event)",
                );
            }
        }
        let mut disk_filter = Vec::new();
        if let Some(v) = t.get("disks") {
            for (d, span) in self.strings(v, "disks") {
                if disks.contains(&d) {
                    disk_filter.push(d);
                } else {
                    let mut known: Vec<&str> = disks.iter().map(String::as_str).collect();
                    known.sort_unstable();
                    if known.is_empty() {
                        known.push("none is defined");
                    }
                    self.err(
                        span,
                        format!(
                            "`disks` names unknown disk `{d}`: expected one of the [[disk]] names ({})",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        let timeout = self.duration(t, "timeout", defaults::NOTIFY_TIMEOUT);
        if timeout.is_zero()
            && let Some(v) = t.get("timeout")
        {
            self.err(
                v.span(),
                "`timeout` must be greater than 0: expected e.g. \"30s\"",
            );
        }
        let (name, explicit) = match t.get("name") {
            Some(v) => (self.name(v, "name")?, Some(v.span())),
            None => (
                command
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "notify".into()),
                None,
            ),
        };
        Some((
            Notify {
                name,
                command,
                args,
                events,
                disks: disk_filter,
                timeout,
            },
            explicit,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_forms() {
        let p = |s| parse_listen(s).map(|a| a.to_string());
        assert_eq!(p("9100").as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(p(":9100").as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(p("0.0.0.0:9100").as_deref(), Some("0.0.0.0:9100"));
        assert_eq!(p("[::1]:9100").as_deref(), Some("[::1]:9100"));
        assert_eq!(p("10.0.0.1").as_deref(), Some("10.0.0.1:9694"));
        assert_eq!(p("::").as_deref(), Some("[::]:9694"));
        assert_eq!(p("localhost:80"), None);
        assert_eq!(p("1.2.3.4:99999"), None);
    }
}
