//! Disk fencing, the cluster's side: a primary disk that lost its replication link (or a
//! disk about to be promoted alone) needs its peer's copy made unpromotable — outdated
//! by the peer itself over the cluster's other paths, or the peer fenced. DRBD calls a
//! fence-peer handler for this (Heartbeat's dopd, Pacemaker's crm-fence-peer); here it
//! is a small sans-IO state machine the resource manager drives.
//!
//! ```text
//!  disk asks ─► request(disk, policy, peer reach) ─┬─ peer up ──► Ask{disk, request} ─► peer
//!                                                  │                       reply ◄──────┘
//!                                                  │      ok ─► Outdated{disk}
//!                                                  │      refused / no answer in time /
//!                                                  │      message failed / peer died:
//!                                                  ├─ resource-only ─► Unreachable{disk}
//!                                                  └─ resource-and-stonith ─► Fence{reason}
//!  the peer is fenced (any cause) ─► peer_fenced() ─► Fenced{disk} for every waiting disk
//! ```
//!
//! It decides nothing about the disks themselves (their cores keep I/O suspended until
//! told) and never reports a peer fenced: that comes only from the fencing coordinator.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A disk's fencing policy, as far as the cluster acts on it (`dont-care` never asks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskPolicy {
    /// Outdate the peer; if it cannot be reached, the disk goes on alone.
    ResourceOnly,
    /// Outdate the peer; if it cannot be, fence it.
    ResourceAndStonith,
}

/// What the cluster knows of the peer when a disk asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerReach {
    /// Heard on the heartbeat links: a cluster message reaches it.
    Up,
    /// Not heard (dead, never seen, or gone after a goodbye) and not fenced.
    Unreachable,
    /// Fenced, or confirmed down by an operator.
    Fenced,
}

/// What the outdater asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutdateCommand {
    /// Ask the peer, with a reliable cluster message, to outdate its copy of `disk`
    /// and answer once that is durable, quoting `request`.
    Ask {
        /// The disk.
        disk: String,
        /// Quoted in the answer.
        request: u64,
    },
    /// The peer's copy of `disk` is outdated: tell the local disk.
    Outdated {
        /// The disk.
        disk: String,
    },
    /// The peer was fenced: tell the local disk.
    Fenced {
        /// The disk.
        disk: String,
    },
    /// The peer cannot be reached and the policy lets `disk` go on alone: tell it.
    Unreachable {
        /// The disk.
        disk: String,
    },
    /// The peer's copy could not be outdated: fence the peer.
    Fence {
        /// Why, for the fencing history.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    policy: DiskPolicy,
    /// The request in flight to the peer, and when it was sent.
    asked: Option<(u64, Instant)>,
    /// A fence was asked for this disk; waiting for the coordinator.
    fencing: bool,
}

/// One disk waiting for its peer's fate, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Waiting {
    /// The disk.
    pub disk: String,
    /// `asking the peer` or `fencing the peer`.
    pub step: &'static str,
}

/// The state machine (see the module documentation).
#[derive(Debug)]
pub struct Outdater {
    reply_timeout: Duration,
    pending: BTreeMap<String, Pending>,
    next_request: u64,
    commands: VecDeque<OutdateCommand>,
}

impl Outdater {
    /// An outdater that waits `reply_timeout` for the peer's answer before it counts
    /// the peer as unreachable (a peer heard on the links answers in a few keepalives;
    /// one that cannot answer within a deadtime is as good as gone).
    pub fn new(reply_timeout: Duration) -> Outdater {
        Outdater {
            reply_timeout,
            pending: BTreeMap::new(),
            next_request: 1,
            commands: VecDeque::new(),
        }
    }

    /// `disk` needs its peer outdated or fenced. Idempotent while it waits.
    pub fn request(&mut self, disk: &str, policy: DiskPolicy, peer: PeerReach, now: Instant) {
        if self.pending.contains_key(disk) {
            return;
        }
        self.pending.insert(
            disk.to_string(),
            Pending {
                policy,
                asked: None,
                fencing: false,
            },
        );
        match peer {
            PeerReach::Fenced => self.settle(disk, |d| OutdateCommand::Fenced { disk: d }),
            PeerReach::Up => self.ask(disk, now),
            PeerReach::Unreachable => self.give_up_asking(disk, "the peer is not reachable"),
        }
    }

    /// The peer answered request `request` for `disk`: outdated (durably), or why not.
    pub fn reply(&mut self, disk: &str, request: u64, result: Result<(), String>) {
        let matches = self
            .pending
            .get(disk)
            .and_then(|p| p.asked)
            .is_some_and(|(r, _)| r == request);
        if !matches {
            return;
        }
        match result {
            Ok(()) => self.settle(disk, |d| OutdateCommand::Outdated { disk: d }),
            Err(why) => {
                let why = format!("the peer did not outdate its copy: {why}");
                self.give_up_asking(disk, &why);
            }
        }
    }

    /// The reliable message carrying `request` was given up by the messaging layer.
    pub fn message_failed(&mut self, request: u64) {
        let disk = self
            .pending
            .iter()
            .find(|(_, p)| p.asked.is_some_and(|(r, _)| r == request))
            .map(|(d, _)| d.clone());
        if let Some(disk) = disk {
            self.give_up_asking(&disk, "the request did not reach the peer");
        }
    }

    /// The peer stopped being heard (dead, or gone): nobody will answer.
    pub fn peer_unreachable(&mut self) {
        let asking: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.asked.is_some())
            .map(|(d, _)| d.clone())
            .collect();
        for disk in asking {
            self.give_up_asking(&disk, "the peer is not reachable");
        }
    }

    /// The peer is fenced (by a disk's request or for any other reason, or confirmed by
    /// an operator): every waiting disk may go on.
    pub fn peer_fenced(&mut self) {
        let disks: Vec<String> = self.pending.keys().cloned().collect();
        for disk in disks {
            self.settle(&disk, |d| OutdateCommand::Fenced { disk: d });
        }
    }

    /// The coordinator gave up fencing the peer: the disks keep waiting (an operator's
    /// `tandem fence confirm` ends it); a later request asks again.
    pub fn fence_failed(&mut self) {
        self.pending.retain(|_, p| !p.fencing);
    }

    /// Time passed: answers that did not come in time count as unreachable.
    pub fn tick(&mut self, now: Instant) {
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.asked
                    .is_some_and(|(_, at)| now.saturating_duration_since(at) >= self.reply_timeout)
            })
            .map(|(d, _)| d.clone())
            .collect();
        for disk in late {
            self.give_up_asking(&disk, "the peer did not answer in time");
        }
    }

    /// The next command for the driver.
    pub fn poll_command(&mut self) -> Option<OutdateCommand> {
        self.commands.pop_front()
    }

    /// The earliest time [`Outdater::tick`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|p| p.asked.map(|(_, at)| at + self.reply_timeout))
            .min()
    }

    /// The disks waiting, for status.
    pub fn waiting(&self) -> Vec<Waiting> {
        self.pending
            .iter()
            .map(|(disk, p)| Waiting {
                disk: disk.clone(),
                step: if p.fencing {
                    "fencing the peer"
                } else {
                    "asking the peer"
                },
            })
            .collect()
    }

    fn ask(&mut self, disk: &str, now: Instant) {
        let request = self.next_request;
        self.next_request += 1;
        if let Some(p) = self.pending.get_mut(disk) {
            p.asked = Some((request, now));
        }
        self.commands.push_back(OutdateCommand::Ask {
            disk: disk.to_string(),
            request,
        });
    }

    /// Asking did not work: the policy decides between going on and fencing.
    fn give_up_asking(&mut self, disk: &str, why: &str) {
        let Some(p) = self.pending.get_mut(disk) else {
            return;
        };
        p.asked = None;
        match p.policy {
            DiskPolicy::ResourceOnly => {
                self.settle(disk, |d| OutdateCommand::Unreachable { disk: d });
            }
            DiskPolicy::ResourceAndStonith => {
                if !p.fencing {
                    p.fencing = true;
                    self.commands.push_back(OutdateCommand::Fence {
                        reason: format!("disk {disk}: {why}"),
                    });
                }
            }
        }
    }

    fn settle(&mut self, disk: &str, command: impl FnOnce(String) -> OutdateCommand) {
        if self.pending.remove(disk).is_some() {
            self.commands.push_back(command(disk.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(o: &mut Outdater) -> Vec<OutdateCommand> {
        std::iter::from_fn(|| o.poll_command()).collect()
    }

    const T: Duration = Duration::from_secs(2);

    /// Any instant will do: only differences count.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_reachable_peer_is_asked_once_and_its_answer_settles_the_disk() {
        let now = t0();
        let mut o = Outdater::new(T);
        o.request("r0", DiskPolicy::ResourceAndStonith, PeerReach::Up, now);
        o.request("r0", DiskPolicy::ResourceAndStonith, PeerReach::Up, now);
        let c = drain(&mut o);
        assert_eq!(
            c,
            [OutdateCommand::Ask {
                disk: "r0".into(),
                request: 1
            }]
        );
        assert_eq!(o.poll_timeout(), Some(now + T));
        // A stale answer (another request) changes nothing.
        o.reply("r0", 7, Ok(()));
        assert!(drain(&mut o).is_empty());
        o.reply("r0", 1, Ok(()));
        assert_eq!(
            drain(&mut o),
            [OutdateCommand::Outdated { disk: "r0".into() }]
        );
        assert!(o.waiting().is_empty());
    }

    #[test]
    fn without_an_answer_resource_only_goes_on_and_stonith_fences() {
        let now = t0();
        let mut o = Outdater::new(T);
        o.request("a", DiskPolicy::ResourceOnly, PeerReach::Up, now);
        o.request("b", DiskPolicy::ResourceAndStonith, PeerReach::Up, now);
        drain(&mut o);
        o.tick(now + T / 2);
        assert!(drain(&mut o).is_empty());
        o.tick(now + T);
        let c = drain(&mut o);
        assert!(c.contains(&OutdateCommand::Unreachable { disk: "a".into() }));
        assert!(c.iter().any(
            |c| matches!(c, OutdateCommand::Fence { reason } if reason.contains("did not answer"))
        ));
        assert_eq!(o.waiting()[0].step, "fencing the peer");
        // Only the coordinator's success lets the stonith disk go on.
        o.peer_fenced();
        assert_eq!(drain(&mut o), [OutdateCommand::Fenced { disk: "b".into() }]);
    }

    #[test]
    fn a_refusal_a_lost_message_and_a_dead_peer_all_count_as_unreachable() {
        let now = t0();
        let mut o = Outdater::new(T);
        o.request("a", DiskPolicy::ResourceOnly, PeerReach::Up, now);
        o.request("b", DiskPolicy::ResourceOnly, PeerReach::Up, now);
        o.request("c", DiskPolicy::ResourceOnly, PeerReach::Up, now);
        drain(&mut o);
        o.reply("a", 1, Err("the peer is primary".into()));
        o.message_failed(2);
        o.peer_unreachable();
        let c = drain(&mut o);
        for d in ["a", "b", "c"] {
            assert!(c.contains(&OutdateCommand::Unreachable { disk: d.into() }));
        }
    }

    #[test]
    fn a_fenced_or_unheard_peer_is_not_asked() {
        let now = t0();
        let mut o = Outdater::new(T);
        o.request("a", DiskPolicy::ResourceAndStonith, PeerReach::Fenced, now);
        o.request(
            "b",
            DiskPolicy::ResourceAndStonith,
            PeerReach::Unreachable,
            now,
        );
        let c = drain(&mut o);
        assert_eq!(c[0], OutdateCommand::Fenced { disk: "a".into() });
        assert!(matches!(&c[1], OutdateCommand::Fence { .. }));
        // The fence failed for good: the disk keeps waiting; a new request asks again.
        o.fence_failed();
        assert!(o.waiting().is_empty());
        o.request("b", DiskPolicy::ResourceAndStonith, PeerReach::Up, now);
        assert!(matches!(drain(&mut o)[..], [OutdateCommand::Ask { .. }]));
    }
}
