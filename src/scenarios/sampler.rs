//! The dual-active watch: a thread that looks, every [`PERIOD`], at who holds the
//! virtual IP and who runs the service, and counts the samples in which two nodes do.
//!
//! It reads the hosts from outside (`ip -n NETNS addr`, the host's `cgroup.procs` and
//! `/proc/PID/cmdline`), so it works while a host is frozen or off, and needs no
//! handle on the lab that the scenarios are busy driving. A host with no process left
//! is powered off: its network namespace may still list the address, but nothing
//! answers on it, so it does not count as holding anything.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::demo::setup::VIP;
use crate::labcluster::LabCluster;

/// How often the holders are sampled.
pub const PERIOD: Duration = Duration::from_millis(100);

/// One node as the watch reads it.
#[derive(Debug, Clone)]
struct Watched {
    netns: String,
    cgroup: PathBuf,
}

/// What one sample found on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    /// The virtual IP is configured on the node, and the node is on.
    pub vip: bool,
    /// The records service runs on the node.
    pub service: bool,
}

impl Holding {
    /// Whether the node serves (address or service).
    pub fn any(self) -> bool {
        self.vip || self.service
    }
}

/// The counters the watch keeps.
#[derive(Debug, Default)]
struct Counters {
    samples: AtomicU64,
    dual_vip: AtomicU64,
    dual_service: AtomicU64,
}

/// The running watch; stops when dropped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    nodes: Vec<Watched>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Samples taken and dual-active ones, since the watch started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Samples taken.
    pub samples: u64,
    /// Samples in which both nodes held the virtual IP.
    pub dual_vip: u64,
    /// Samples in which both nodes ran the service.
    pub dual_service: u64,
}

impl Counts {
    /// Samples with two active nodes, by either measure.
    pub fn dual(self) -> u64 {
        self.dual_vip + self.dual_service
    }
}

impl Sampler {
    /// Starts watching ox1 and ox2 of `cluster`.
    pub fn start(cluster: &LabCluster) -> anyhow::Result<Self> {
        let nodes = ["ox1", "ox2"]
            .iter()
            .map(|n| {
                Ok(Watched {
                    netns: cluster.lab.netns(n)?,
                    cgroup: cluster.lab.cgroup(n)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("find the nodes' namespaces and cgroups")?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let thread = {
            let (stop, counters, nodes) = (stop.clone(), counters.clone(), nodes.clone());
            std::thread::Builder::new()
                .name("dual-active-watch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let h: Vec<Holding> = nodes.iter().map(holding).collect();
                        counters.samples.fetch_add(1, Ordering::Relaxed);
                        if h.iter().all(|h| h.vip) {
                            counters.dual_vip.fetch_add(1, Ordering::Relaxed);
                        }
                        if h.iter().all(|h| h.service) {
                            counters.dual_service.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(PERIOD);
                    }
                })?
        };
        Ok(Sampler {
            stop,
            counters,
            nodes,
            thread: Some(thread),
        })
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        Counts {
            samples: self.counters.samples.load(Ordering::Relaxed),
            dual_vip: self.counters.dual_vip.load(Ordering::Relaxed),
            dual_service: self.counters.dual_service.load(Ordering::Relaxed),
        }
    }

    /// One sample now, of ox1 and ox2 (in that order).
    pub fn now(&self) -> [Holding; 2] {
        [holding(&self.nodes[0]), holding(&self.nodes[1])]
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn holding(node: &Watched) -> Holding {
    let pids: Vec<u32> = std::fs::read_to_string(node.cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if pids.is_empty() {
        return Holding::default();
    }
    let service = pids.iter().any(|p| is_service(*p));
    let vip = std::process::Command::new("ip")
        .args(["-n", &node.netns, "-o", "-4", "addr", "show"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w.split('/').next() == Some(VIP))
        })
        .unwrap_or(false);
    Holding { vip, service }
}

/// Whether `pid` is the records service (`tandem demo-records serve …`).
pub fn is_service(pid: u32) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"demo-records" && w[1] == b"serve")
}
