//! The group's failover timeline, and the data checks on the node that runs the group.
//!
//! Each step's time comes from its source: the survivor's `tandem status --json`
//! (`events[]` node_dead, `fencing.history[]`, `disks[].promoted_unix_ms`, the `start`
//! of each resource in `actions[]`) or a client's own line for its first success.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use anyhow::Context;
use serde_json::Value;

use super::hosts::{ADMIN_DN, ADMIN_PW, RECORDS_OU, USER, USER_PW};
use super::mail::Imap;
use crate::demo::client::Outcome;
use crate::demo::setup::VIP;
use crate::labcluster::LabCluster;

/// What has been seen of one failover (or move) of the group to `survivor`.
pub struct Timeline {
    off_ms: u64,
    failed: String,
    survivor: String,
    /// Every step seen: its key, wall ms, text.
    seen: BTreeMap<String, (u64, String)>,
    /// The keys a complete timeline has.
    expected: BTreeSet<String>,
}

impl Timeline {
    /// Starts at `off_ms` (the power-off, or the move's command); `resources` are the
    /// group's, `disks` its disks, `clients` the clients' names; `fenced` whether a
    /// death and a fence are expected (a power loss) or not (a move).
    pub fn start(
        off_ms: u64,
        failed: &str,
        survivor: &str,
        resources: &[String],
        disks: &[&str],
        clients: &[&str],
        fenced: bool,
    ) -> Self {
        let mut expected: BTreeSet<String> =
            resources.iter().map(|r| format!("start {r}")).collect();
        expected.extend(disks.iter().map(|d| format!("promote {d}")));
        expected.extend(clients.iter().map(|c| format!("client {c}")));
        if fenced {
            expected.insert("dead".into());
            expected.insert("fenced".into());
        }
        Timeline {
            off_ms,
            failed: failed.into(),
            survivor: survivor.into(),
            seen: BTreeMap::new(),
            expected,
        }
    }

    /// Reads a status of the survivor and the clients' outcomes; prints the new steps in
    /// the order they happened.
    pub fn update(&mut self, status: Option<&Value>, clients: &[(&str, Vec<Outcome>)]) {
        let mut found: Vec<(String, u64, String)> = Vec::new();
        let after = |t: Option<u64>| t.filter(|&t| t >= self.off_ms);
        let (failed, survivor) = (self.failed.as_str(), self.survivor.as_str());
        if let Some(status) = status {
            for e in status["events"].as_array().into_iter().flatten() {
                if e["event"] == "node_dead" && e["node"] == failed {
                    if let Some(t) = after(e["time_ms"].as_u64()) {
                        found.push((
                            "dead".into(),
                            t,
                            format!("{survivor} declares {failed} dead"),
                        ));
                    }
                }
            }
            for r in status["fencing"]["history"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if r["target"] == failed && r["outcome"]["kind"] == "success" {
                    if let Some(t) = after(r["at_unix_ms"].as_u64()) {
                        found.push((
                            "fenced".into(),
                            t,
                            format!(
                                "{survivor} fenced {failed} through {}",
                                r["device"].as_str().unwrap_or("?")
                            ),
                        ));
                    }
                }
            }
            for d in status["disks"].as_array().into_iter().flatten() {
                let name = d["name"].as_str().unwrap_or("?");
                if let Some(t) = after(d["promoted_unix_ms"].as_u64()) {
                    found.push((
                        format!("promote {name}"),
                        t,
                        format!("{name} promoted to primary on {survivor}"),
                    ));
                }
            }
            for a in status["actions"].as_array().into_iter().flatten() {
                if a["action"] != "start" || a["ok"] != true {
                    continue;
                }
                if let (Some(t), Some(r)) = (after(a["time_ms"].as_u64()), a["resource"].as_str()) {
                    found.push((format!("start {r}"), t, start_text(r, survivor)));
                }
            }
        }
        // A client's first success on the survivor: its first acknowledgement after the
        // address came up there (before that, an acknowledgement of a move's source).
        let address_up = self
            .seen
            .iter()
            .map(|(k, (t, _))| (k, *t))
            .chain(found.iter().map(|(k, t, _)| (k, *t)))
            .filter(|(k, _)| k.starts_with("start ip-"))
            .map(|(_, t)| t)
            .min();
        for (name, outcomes) in clients {
            let Some(up) = address_up else { break };
            if let Some(o) = outcomes.iter().find(|o| o.ack && o.at_ms > up) {
                found.push((
                    format!("client {name}"),
                    o.at_ms,
                    format!("{name} client: first success (item {})", o.record),
                ));
            }
        }
        found.sort_by_key(|(_, t, _)| *t);
        for (key, t, text) in found {
            if self.seen.contains_key(&key) {
                continue;
            }
            println!("  {:>7} ms  {text}", t as i64 - self.off_ms as i64);
            self.seen.insert(key, (t, text));
        }
    }

    /// Whether every expected step was seen.
    pub fn complete(&self) -> bool {
        self.expected.iter().all(|k| self.seen.contains_key(k))
    }

    /// The expected steps not seen.
    pub fn missing(&self) -> Vec<String> {
        self.expected
            .iter()
            .filter(|k| !self.seen.contains_key(*k))
            .cloned()
            .collect()
    }

    /// Milliseconds from the start to step `key`, if seen.
    pub fn at(&self, key: &str) -> Option<u64> {
        self.seen
            .get(key)
            .map(|(t, _)| t.saturating_sub(self.off_ms))
    }
}

fn start_text(resource: &str, node: &str) -> String {
    if let Some(d) = resource.strip_prefix("disk-") {
        format!("{d} started (primary, /dev/tandem/{d} up) on {node}")
    } else if resource.starts_with("fs-") {
        format!("{resource}: ext4 mounted on {node}")
    } else if resource.starts_with("ip-") {
        format!("{resource}: address up on {node} (gratuitous ARP sent)")
    } else {
        format!("{resource} up on {node} (its init script's start returned 0)")
    }
}

/// What the node running the group holds, read by clients through the virtual IP.
pub struct Stored {
    pub ldap: BTreeSet<u64>,
    pub rows: BTreeSet<u64>,
    pub appointments: BTreeSet<u64>,
    pub mails: BTreeSet<u64>,
    pub appends: BTreeSet<u64>,
}

/// Reads every item back through the virtual IP, from the client host.
pub fn stored(cluster: &LabCluster) -> anyhow::Result<Stored> {
    let lab = &cluster.lab;
    let ldap = lab
        .run(
            "client",
            &[
                "ldapsearch",
                "-x",
                "-LLL",
                "-H",
                &format!("ldap://{VIP}"),
                "-b",
                RECORDS_OU,
                // As the directory's administrator: no size limit (slapd's default
                // is 500 entries for everyone else).
                "-D",
                ADMIN_DN,
                "-w",
                ADMIN_PW,
                "-z",
                "max",
                "-s",
                "one",
                "cn",
            ],
        )
        .context("ldapsearch through the virtual IP")?;
    let psql = format!(
        "/usr/lib/postgresql/{}/bin/psql",
        super::bootstrap::pg_version()?
    );
    let select = |table: &str| {
        lab.run(
            "client",
            &[
                &psql,
                "-X",
                "-A",
                "-t",
                "-h",
                VIP,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                &format!("SELECT n FROM {table}"),
            ],
        )
        .with_context(|| format!("SELECT n FROM {table} through the virtual IP"))
    };
    let rows = select("records")?;
    let appointments = select("appointments")?;
    // IMAP from this process: the machine reaches the VIP only through the client host.
    let subjects = lab
        .run(
            "client",
            &[
                cluster.tandem_binary().to_str().context("tandem path")?,
                "demo-records",
                "imap-subjects",
                "--addr",
                &format!("{VIP}:143"),
            ],
        )
        .context("IMAP subjects through the virtual IP")?;
    let numbers = |text: &str, prefix: &str| -> BTreeSet<u64> {
        text.lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix(prefix)?
                    .trim()
                    .trim_end_matches(']')
                    .parse()
                    .ok()
            })
            .collect()
    };
    Ok(Stored {
        ldap: numbers(&ldap, "cn:"),
        rows: numbers(&rows, ""),
        appointments: numbers(&appointments, ""),
        mails: numbers(&subjects, "[mail "),
        appends: numbers(&subjects, "[append "),
    })
}

/// `tandem demo-records imap-subjects`: prints the Subject of every message in the
/// user's INBOX at `addr`, one per line.
pub fn print_subjects(addr: SocketAddr) -> anyhow::Result<()> {
    let mut imap = Imap::login(addr, USER, USER_PW).context("IMAP login")?;
    let count = imap.examine("INBOX")?;
    if count > 0 {
        for s in imap.subjects()? {
            println!("{s}");
        }
    }
    Ok(())
}

/// Compares what each client was told was stored with what is there; prints a line
/// per client; the number of items missing in all.
pub fn compare(acked: &BTreeMap<&str, BTreeSet<u64>>, stored: &Stored, node: &str) -> usize {
    let mut lost_total = 0;
    for (name, acks) in acked {
        let (have, word) = match *name {
            "ldap" => (&stored.ldap, "LDAP entries"),
            "pg" => (&stored.rows, "committed rows"),
            "smtp" => (&stored.mails, "delivered mails"),
            "imap" => (&stored.appends, "appended messages"),
            _ => (&stored.appointments, "stand-in appointments"),
        };
        let lost: Vec<u64> = acks.difference(have).copied().collect();
        lost_total += lost.len();
        println!(
            "  {word:<22} acknowledged {:>5}, on {node} {:>5}, lost {}{}",
            acks.len(),
            have.len(),
            lost.len(),
            if lost.is_empty() {
                String::new()
            } else {
                format!(" ({:?})", lost.iter().take(10).collect::<Vec<_>>())
            }
        );
    }
    lost_total
}
