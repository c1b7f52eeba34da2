//! The demo's client in the lab's client host: it writes numbered records through the
//! virtual IP and prints one line per outcome; this side keeps every outcome with its
//! wall-clock time, so the outage and the acknowledged set come from what the client
//! actually saw.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tandem_lab::HostProcess;

use super::service::Service;
use crate::labcluster::LabCluster;

/// One outcome: when, acknowledged or not, which record.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Wall-clock ms when the client saw it.
    pub at_ms: u64,
    /// Acknowledged (the service answered after making it durable).
    pub ack: bool,
    /// The record's number.
    pub record: u64,
}

/// The running client and what it reported so far.
pub struct Client {
    process: Option<HostProcess>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    /// The reason the client gave with its last failure, if any.
    last_failure: Arc<Mutex<Option<String>>>,
}

impl Client {
    /// Starts the service's client in the client host, in a process group of its own.
    pub fn start(cluster: &LabCluster, service: &Service) -> anyhow::Result<Self> {
        Self::spawn(cluster, service.client(cluster.tandem_binary(), 20))
    }

    /// Starts `cmd`, a client that prints the records client's lines, in the client
    /// host, in a process group of its own.
    pub fn spawn(cluster: &LabCluster, mut cmd: std::process::Command) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        let mut process = cluster
            .lab
            .spawn("client", cmd)
            .context("start the client")?;
        let stdout = process.stdout.take().context("the client's output")?;
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let last_failure = Arc::new(Mutex::new(None));
        let (collected, reason) = (Arc::clone(&outcomes), Arc::clone(&last_failure));
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(o) = parse(&line) {
                    if !o.ack {
                        *lock(&reason) = failure_reason(&line);
                    }
                    lock(&collected).push(o);
                }
            }
        });
        Ok(Client {
            process: Some(process),
            outcomes,
            last_failure,
        })
    }

    /// Every outcome so far, in order.
    pub fn outcomes(&self) -> Vec<Outcome> {
        lock(&self.outcomes).clone()
    }

    /// The reason the client printed with its last failed attempt.
    pub fn last_failure(&self) -> Option<String> {
        lock(&self.last_failure).clone()
    }

    /// The acknowledged outcomes so far, in order.
    pub fn acks(&self) -> Vec<Outcome> {
        lock(&self.outcomes)
            .iter()
            .filter(|o| o.ack)
            .copied()
            .collect()
    }

    /// Acknowledged records so far.
    pub fn acked_count(&self) -> usize {
        lock(&self.outcomes).iter().filter(|o| o.ack).count()
    }

    /// Pauses the client (SIGSTOP): no new record is sent until [`Client::resume`].
    /// An audit uses it to compare the two copies of the disk while nothing writes.
    pub fn pause(&self) {
        if let Some(p) = &self.process {
            p.signal(libc::SIGSTOP);
        }
    }

    /// Resumes a paused client (SIGCONT).
    pub fn resume(&self) {
        if let Some(p) = &self.process {
            p.signal(libc::SIGCONT);
        }
    }

    /// Stops the client (SIGKILL: it holds nothing) and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.process.take() {
            p.signal(libc::SIGKILL);
            p.wait_timeout(std::time::Duration::from_secs(10))?;
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// What the client saw around the power-off at `off_ms`.
pub struct Summary {
    /// Last acknowledgement before the power-off and first after it (wall ms).
    pub last_before: Option<u64>,
    /// First acknowledgement after the power-off.
    pub first_after: Option<u64>,
    /// Attempts that failed in between (timeouts, refused connections, resets).
    pub failed: usize,
    /// Every acknowledged record.
    pub acked: BTreeSet<u64>,
}

/// Sums up `outcomes` around `off_ms`.
pub fn summarize(outcomes: &[Outcome], off_ms: u64) -> Summary {
    let last_before = outcomes
        .iter()
        .filter(|o| o.ack && o.at_ms <= off_ms)
        .map(|o| o.at_ms)
        .max();
    let first_after = outcomes
        .iter()
        .filter(|o| o.ack && o.at_ms > off_ms)
        .map(|o| o.at_ms)
        .min();
    let failed = outcomes
        .iter()
        .filter(|o| {
            !o.ack
                && last_before.is_none_or(|a| o.at_ms > a)
                && first_after.is_none_or(|b| o.at_ms < b)
        })
        .count();
    Summary {
        last_before,
        first_after,
        failed,
        acked: outcomes
            .iter()
            .filter(|o| o.ack)
            .map(|o| o.record)
            .collect(),
    }
}

fn parse(line: &str) -> Option<Outcome> {
    let mut words = line.split_whitespace();
    let at_ms = words.next()?.parse().ok()?;
    let ack = match words.next()? {
        "ack" => true,
        "fail" => false,
        _ => return None,
    };
    let record = words.next()?.parse().ok()?;
    Some(Outcome { at_ms, ack, record })
}

/// What follows `WALL fail N` on a failure line, if anything.
fn failure_reason(line: &str) -> Option<String> {
    let why = line.splitn(4, ' ').nth(3)?.trim();
    (!why.is_empty()).then(|| why.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_the_outage_spans_the_acknowledgements_around_the_power_off() {
        let lines = [
            "100 ack 1",
            "130 ack 2",
            "garbage",
            "160 fail 3",
            "2160 fail 3 connection refused (os error 111)",
            "2500 ack 3",
            "2520 ack 4",
        ];
        let outcomes: Vec<Outcome> = lines.iter().filter_map(|l| parse(l)).collect();
        assert_eq!(outcomes.len(), 6);
        let s = summarize(&outcomes, 150);
        assert_eq!(s.last_before, Some(130));
        assert_eq!(s.first_after, Some(2500));
        assert_eq!(s.failed, 2);
        assert_eq!(s.acked, BTreeSet::from([1, 2, 3, 4]));
        assert_eq!(failure_reason(lines[3]), None);
        assert_eq!(
            failure_reason(lines[4]).as_deref(),
            Some("connection refused (os error 111)")
        );
    }
}
