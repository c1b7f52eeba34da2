//! The failover's timeline, printed as it happens. Each step's time comes from the
//! source that knows it, never from the moment the demo noticed it:
//!
//! | step | source (the survivor's `tandem status --json`, or the client) |
//! |---|---|
//! | dead verdict | `events[]`: `node_dead` of the peer, stamped by the heartbeat thread |
//! | fenced | `fencing.history[]`: the fence device's result, `at_unix_ms` |
//! | promoted | `disks[].promoted_unix_ms` |
//! | device up | `disks[].local_device.published_unix_ms` |
//! | mounted, service up, address up | `actions[]`: the `start` of `fs`, the service, `vip` |
//! | first acknowledged write | the client's own line for it |

use std::collections::BTreeSet;

use serde_json::Value;

use super::client::Outcome;
use super::setup::{DEVICE, VIP};

/// The steps of a failover, in the order they must happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The survivor declares the peer dead.
    Dead,
    /// The fence device reports the peer off.
    Fenced,
    /// The disk is primary on the survivor.
    Promoted,
    /// `/dev/tandem/r0` exists on the survivor.
    DeviceUp,
    /// The file system is mounted.
    Mounted,
    /// The service's start succeeded.
    ServiceUp,
    /// The virtual IP is on the survivor.
    AddressUp,
    /// The client's first acknowledged write after the power-off.
    FirstAck,
}

const ALL: [Step; 8] = [
    Step::Dead,
    Step::Fenced,
    Step::Promoted,
    Step::DeviceUp,
    Step::Mounted,
    Step::ServiceUp,
    Step::AddressUp,
    Step::FirstAck,
];

/// What has been printed of one failover (from `failed` to `survivor`).
pub struct Timeline {
    off_ms: u64,
    dead_ms: u64,
    failed: String,
    survivor: String,
    service_resource: String,
    service_label: String,
    record_word: String,
    seen: BTreeSet<Step>,
    /// When each step happened, for the checks after the run.
    times: Vec<(Step, u64)>,
}

impl Timeline {
    /// Starts the timeline at the power-off (wall ms: `off_ms` when it began, `dead_ms`
    /// once every process of the node was gone) and prints its first lines.
    pub fn start(
        off_ms: u64,
        dead_ms: u64,
        failed: &str,
        survivor: &str,
        service_resource: &str,
        service_label: &str,
        record_word: &str,
    ) -> Self {
        println!();
        println!(
            "timeline (ms after the power-off; times from {survivor}'s status and the client)"
        );
        line(
            0,
            &format!("{failed} loses power (the lab's switch: its unflushed disk writes are lost)"),
        );
        line(
            dead_ms as i64 - off_ms as i64,
            &format!("every process of {failed} killed and reaped"),
        );
        Timeline {
            off_ms,
            dead_ms,
            failed: failed.to_string(),
            survivor: survivor.to_string(),
            service_resource: service_resource.to_string(),
            service_label: service_label.to_string(),
            record_word: record_word.to_string(),
            seen: BTreeSet::new(),
            times: Vec::new(),
        }
    }

    /// Reads one status of the survivor and what the client saw; prints the steps that
    /// newly appear, in the order they happened.
    pub fn update(&mut self, status: Option<&Value>, outcomes: &[Outcome]) {
        let mut found: Vec<(u64, Step, String)> = Vec::new();
        if let Some(status) = status {
            self.read_status(status, &mut found);
        }
        if let Some(o) = outcomes.iter().find(|o| o.ack && o.at_ms > self.dead_ms) {
            found.push((
                o.at_ms,
                Step::FirstAck,
                format!(
                    "first acknowledged write after: {} {}",
                    self.record_word, o.record
                ),
            ));
        }
        found.sort_by_key(|(t, step, _)| (*t, *step));
        for (t, step, text) in found {
            if self.seen.insert(step) {
                self.times.push((step, t));
                line(t as i64 - self.off_ms as i64, &text);
            }
        }
    }

    fn read_status(&self, status: &Value, found: &mut Vec<(u64, Step, String)>) {
        let (failed, survivor) = (&self.failed, &self.survivor);
        let after = |t: Option<u64>| t.filter(|t| *t >= self.off_ms);
        for e in status["events"].as_array().into_iter().flatten() {
            if e["event"] == "node_dead" && e["node"] == failed.as_str() {
                if let Some(t) = after(e["time_ms"].as_u64()) {
                    found.push((
                        t,
                        Step::Dead,
                        format!("{survivor} declares {failed} dead (no heartbeat on hb or lan)"),
                    ));
                }
            }
        }
        for r in status["fencing"]["history"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if r["target"] == failed.as_str() && r["outcome"]["kind"] == "success" {
                if let Some(t) = after(r["at_unix_ms"].as_u64()) {
                    found.push((
                        t,
                        Step::Fenced,
                        format!(
                            "{survivor} fenced {failed} through {} ({}: success)",
                            r["device"].as_str().unwrap_or("?"),
                            r["action"].as_str().unwrap_or("?"),
                        ),
                    ));
                }
            }
        }
        let disk = status["disks"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["name"] == "r0"));
        if let Some(d) = disk {
            if let Some(t) = after(d["promoted_unix_ms"].as_u64()) {
                found.push((
                    t,
                    Step::Promoted,
                    format!("r0 promoted to primary on {survivor}"),
                ));
            }
            let local = &d["local_device"];
            if let Some(t) = after(local["published_unix_ms"].as_u64()) {
                found.push((
                    t,
                    Step::DeviceUp,
                    format!(
                        "{DEVICE} up on {survivor} ({})",
                        local["loop_device"].as_str().unwrap_or("loop device")
                    ),
                ));
            }
        }
        for a in status["actions"].as_array().into_iter().flatten() {
            if a["action"] != "start" || a["ok"] != true {
                continue;
            }
            let Some(t) = after(a["time_ms"].as_u64()) else {
                continue;
            };
            let resource = a["resource"].as_str().unwrap_or("");
            let (step, text) = if resource == "fs" {
                (
                    Step::Mounted,
                    format!("ext4 on {DEVICE} mounted on {survivor}"),
                )
            } else if resource == self.service_resource {
                (
                    Step::ServiceUp,
                    format!("{} up on {survivor}", self.service_label),
                )
            } else if resource == "vip" {
                (
                    Step::AddressUp,
                    format!("{VIP} up on {survivor} (gratuitous ARP sent)"),
                )
            } else {
                continue;
            };
            found.push((t, step, text));
        }
    }

    /// Whether every step has been seen.
    pub fn complete(&self) -> bool {
        self.seen.len() == ALL.len()
    }

    /// The steps not seen yet, for an error message.
    pub fn missing(&self) -> Vec<Step> {
        ALL.iter()
            .filter(|s| !self.seen.contains(s))
            .copied()
            .collect()
    }

    /// The steps that happened out of order (each must follow the one before it: a
    /// service started before its disk was promoted, or an address before the fence,
    /// would be a bug). The stamps come from different clocks of one daemon (the wall
    /// clock, and the controller's monotonic clock anchored to it at start), so a few
    /// milliseconds backwards are tolerated. The address's stamp is its start action's
    /// end, after the gratuitous ARP went out, so the client's first acknowledgement may
    /// come before it: the first acknowledgement must only follow the service.
    pub fn out_of_order(&self) -> Vec<(Step, Step)> {
        const CLOCK_SLACK_MS: u64 = 20;
        let at = |s: Step| self.times.iter().find(|(x, _)| *x == s).map(|(_, t)| *t);
        let mut pairs: Vec<[Step; 2]> = ALL.windows(2).map(|w| [w[0], w[1]]).collect();
        if let Some(last) = pairs.last_mut() {
            *last = [Step::ServiceUp, Step::FirstAck];
        }
        pairs
            .iter()
            .filter_map(|w| match (at(w[0]), at(w[1])) {
                (Some(a), Some(b)) if b + CLOCK_SLACK_MS < a => Some((w[0], w[1])),
                _ => None,
            })
            .collect()
    }
}

fn line(rel_ms: i64, text: &str) {
    println!("  {rel_ms:>7} ms  {text}");
}
