//! What one device invocation did, and the fencing history.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::action::FenceAction;

/// Most bytes of an agent's stdout or stderr that a result keeps (the tail: the last
/// lines say why an agent failed).
pub const OUTPUT_MAX_BYTES: usize = 4096;

/// Whether the device program ran, and if so what it said. "Did it run" (timeout, not
/// installed, error) is kept apart from "what it said" (its exit code), as Pacemaker's
/// `exec_status` is kept apart from the agent's return code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Outcome {
    /// The program ran and exited 0: the device says the action was done.
    Success,
    /// The program ran and said no: a non-zero exit (or death by a signal, `exit` is
    /// then `None`). For `status`, exit 2 means "plug off", see [`FenceResult::plug`].
    Failed {
        /// Exit code, `None` when killed by a signal.
        exit: Option<i32>,
        /// The tail of stderr and stdout.
        output: String,
    },
    /// The program did not finish within the device timeout; it and its process group
    /// were killed. A timeout is a failure, never a success (FenceAgentAPI).
    Timeout,
    /// The program does not exist (or is not executable).
    NotInstalled,
    /// It could not be run, or its result was lost.
    Error {
        /// What went wrong.
        detail: String,
    },
}

impl Outcome {
    /// Whether the device said the action was done.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// One short line for status and logs.
    pub fn summary(&self) -> String {
        match self {
            Outcome::Success => "success".into(),
            Outcome::Failed { exit: Some(c), .. } => format!("failed (exit {c})"),
            Outcome::Failed { exit: None, .. } => "failed (killed by a signal)".into(),
            Outcome::Timeout => "timed out".into(),
            Outcome::NotInstalled => "not installed".into(),
            Outcome::Error { detail } => format!("error: {detail}"),
        }
    }
}

/// The power state a `status` answer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plug {
    /// Exit 0: reachable, plug on.
    On,
    /// Exit 2: reachable, plug off.
    Off,
}

/// The result of one device invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceResult {
    /// Device name from the configuration.
    pub device: String,
    /// What it was asked to do.
    pub action: FenceAction,
    /// The node it acted on (`None` for device-wide actions: monitor, list).
    pub target: Option<String>,
    /// Whether it ran and what it said.
    pub outcome: Outcome,
    /// Standard output on success (e.g. a `list` answer), bounded; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// How long it took.
    pub duration_ms: u64,
}

impl FenceResult {
    /// For a `status` action: on (exit 0), off (exit 2), or `None` when the device could
    /// not tell (exit 1, timeout, …). Meaningless for other actions.
    pub fn plug(&self) -> Option<Plug> {
        match &self.outcome {
            Outcome::Success => Some(Plug::On),
            Outcome::Failed { exit: Some(2), .. } => Some(Plug::Off),
            _ => None,
        }
    }
}

/// Who produced a history record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A device run by this node.
    Local,
    /// A result the peer sent as a cluster message.
    Peer,
    /// `tandem fence confirm NODE` (Heartbeat's meatware).
    Operator,
    /// This node's coordinator gave up waiting (lost result, manual device timeout).
    Coordinator,
}

/// One line of the fencing history (shown by `tandem status` / `tandem fence history`)
/// and the cluster message that tells the peer about an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// Wall-clock time of the end of the attempt, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// The node that ran the device (or took the confirmation).
    pub executor: String,
    /// The node fenced.
    pub target: String,
    /// Device name (`operator` for a confirmation).
    pub device: String,
    /// Action.
    pub action: FenceAction,
    /// Result.
    pub outcome: Outcome,
    /// How long the attempt took.
    pub duration_ms: u64,
    /// Where the record came from.
    pub origin: Origin,
    /// Why the node was fenced (the planner's reason).
    pub reason: String,
}

/// Longest string field a decoded [`FenceRecord`] may carry: a peer's message must not
/// make the history grow without bound.
pub const RECORD_FIELD_MAX_BYTES: usize = OUTPUT_MAX_BYTES + 512;

/// A record from the peer that cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not JSON of the right shape.
    #[error("fence record: {0}")]
    Json(#[from] serde_json::Error),
    /// A field is longer than [`RECORD_FIELD_MAX_BYTES`].
    #[error("fence record: field {0} longer than {RECORD_FIELD_MAX_BYTES} bytes")]
    TooLong(&'static str),
}

impl FenceRecord {
    /// JSON encoding for the cluster message.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, integers and enums cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a record a peer sent; rejects bad shapes and oversized fields.
    pub fn from_json(bytes: &[u8]) -> Result<FenceRecord, RecordError> {
        let r: FenceRecord = serde_json::from_slice(bytes)?;
        let out_len = match &r.outcome {
            Outcome::Failed { output, .. } => output.len(),
            Outcome::Error { detail } => detail.len(),
            _ => 0,
        };
        for (name, len) in [
            ("executor", r.executor.len()),
            ("target", r.target.len()),
            ("device", r.device.len()),
            ("reason", r.reason.len()),
            ("outcome", out_len),
        ] {
            if len > RECORD_FIELD_MAX_BYTES {
                return Err(RecordError::TooLong(name));
            }
        }
        Ok(r)
    }
}

/// The newest fencing records, oldest first, bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    capacity: usize,
    records: VecDeque<FenceRecord>,
}

impl History {
    /// An empty history keeping at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> History {
        History {
            capacity: capacity.max(1),
            records: VecDeque::new(),
        }
    }

    /// Appends a record, dropping the oldest beyond the capacity.
    pub fn push(&mut self, r: FenceRecord) {
        while self.records.len() >= self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(r);
    }

    /// Records, oldest first.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &FenceRecord> + ExactSizeIterator {
        self.records.iter()
    }

    /// Number of records kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The JSON form for `tandem fence history --json` and status: an array of records.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.records).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> FenceRecord {
        FenceRecord {
            at_unix_ms: i,
            executor: "ox2".into(),
            target: "ox1".into(),
            device: "pdu".into(),
            action: FenceAction::Off,
            outcome: Outcome::Failed {
                exit: Some(1),
                output: "no route".into(),
            },
            duration_ms: 12,
            origin: Origin::Local,
            reason: "peer died".into(),
        }
    }

    #[test]
    fn history_keeps_the_newest_records() {
        let mut h = History::new(3);
        for i in 0..5 {
            h.push(rec(i));
        }
        let at: Vec<u64> = h.records().map(|r| r.at_unix_ms).collect();
        assert_eq!(at, vec![2, 3, 4]);
        assert_eq!(h.to_json().as_array().map(|a| a.len()), Some(3));
    }

    #[test]
    fn record_round_trips_and_rejects_oversized_fields() {
        let r = rec(7);
        assert_eq!(FenceRecord::from_json(&r.to_json()).ok(), Some(r.clone()));
        let mut big = r;
        big.reason = "x".repeat(RECORD_FIELD_MAX_BYTES + 1);
        assert!(matches!(
            FenceRecord::from_json(&big.to_json()),
            Err(RecordError::TooLong("reason"))
        ));
    }

    #[test]
    fn record_decoder_survives_random_bytes() {
        // A small deterministic generator: CI exercises the decoder without cargo-fuzz.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let valid = rec(1).to_json();
        for n in 0..4000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = valid.clone();
            // Mutate a few bytes of a valid record, or use pure noise.
            if n % 2 == 0 {
                for k in 0..(1 + (x % 4) as usize) {
                    let i = ((x >> (8 * k)) as usize) % bytes.len();
                    bytes[i] = (x >> (3 * k)) as u8;
                }
            } else {
                bytes = (0..(x % 64)).map(|k| (x >> (k % 57)) as u8).collect();
            }
            let _ = FenceRecord::from_json(&bytes);
        }
    }
}
