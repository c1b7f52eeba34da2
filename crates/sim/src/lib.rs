//! Deterministic simulator for tandem's sans-IO cores, and the invariants it checks.
//!
//! ```text
//!   seed ──► Rng ──► schedule of faults (loss, duplication, delay/reordering, cuts,
//!                    partitions, clock jumps, restarts, forged packets, messages)
//!                         │
//!   ┌─────────────────────▼──────────────────────────────────────────────┐
//!   │ Sim: global time; per-node clock offset; a priority queue of       │
//!   │ packets in flight; N membership cores fed packets and timers at    │
//!   │ exactly the instant they are due (their own local time)            │
//!   └─────────────────────┬──────────────────────────────────────────────┘
//!                         │ after every step: validate() of every core, and
//!                         ▼ the invariants in [`invariants`] (one per file)
//!   fault phase, then a calm phase that must converge ─► Summary | Err(seed, trace)
//! ```
//!
//! **What it decides**: whether the membership core keeps its promises under a given
//! seed. **What it is given**: a seed (and scenario). **What it hands back**: a
//! [`Summary`] of the run, or an error naming the broken invariant with the last steps.
//! The same seed always replays the same run: nothing here reads the clock except one
//! `Instant` used as the origin of simulated time.
#![warn(missing_docs)]

pub mod cluster;
pub mod invariants;
pub mod sim;
pub mod storage;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

pub use invariants::forgery::Forgery;
pub use sim::{Action, LinkFaults, Params, Sim, Summary};
pub use tandem_rng::Rng;

/// The calm phase that ends every scenario: long enough for restarted nodes to pass
/// initdead, for every partition to heal and for every retransmission to settle.
fn calm_len(p: &Params) -> Duration {
    p.initdead * 2 + p.deadtime * 4 + p.keepalive * 8
}

/// Ends a scenario: calm from `at`, messages that must arrive, then convergence.
fn finish(sim: &mut Sim, at: Duration) -> Result<Summary, String> {
    let p = sim.params.clone();
    sim.schedule(at, Action::Calm);
    let send_at = at + p.initdead + p.deadtime * 2;
    for from in 0..p.nodes {
        for to in 0..p.nodes {
            if from != to {
                sim.schedule(
                    send_at,
                    Action::Send {
                        from,
                        to,
                        count: 3,
                        must_deliver: true,
                    },
                );
            }
        }
    }
    sim.run_until(at + calm_len(&p))?;
    sim.check_converged()?;
    Ok(sim.summary())
}

/// The main randomized scenario: every kind of fault mixed, then calm.
pub fn random_faults(seed: u64) -> Result<Summary, String> {
    let mut rng = Rng::new(seed ^ 0x5EED_5EED);
    let p = Params::random(&mut rng);
    let mut sim = Sim::new(seed, p.clone());
    let n = p.nodes as u64;
    let fault_len = p.deadtime * rng.range(15, 30) as u32;
    let mut t = Duration::ZERO;
    let pick_pair = |rng: &mut Rng| {
        let a = rng.below(n) as usize;
        let b = (a + 1 + rng.below(n - 1) as usize) % n as usize;
        (a, b)
    };
    loop {
        let gap_us = rng.range(
            p.keepalive.as_micros() as u64 / 2,
            p.deadtime.as_micros() as u64 * 2,
        );
        t += Duration::from_micros(gap_us);
        if t >= fault_len {
            break;
        }
        let action = match rng.below(100) {
            0..20 => {
                let delay_min =
                    Duration::from_micros(rng.below(p.keepalive.as_micros() as u64 / 2));
                let spread = Duration::from_micros(rng.below(p.deadtime.as_micros() as u64 / 2));
                Action::SetFaults {
                    link: rng.below(p.links as u64) as usize,
                    faults: LinkFaults {
                        loss_ppm: rng.below(400_000) as u32,
                        dup_ppm: rng.below(200_000) as u32,
                        delay_min,
                        delay_max: delay_min + spread,
                    },
                }
            }
            20..30 => {
                let (from, to) = pick_pair(&mut rng);
                Action::Cut {
                    link: rng.below(p.links as u64) as usize,
                    from,
                    to,
                }
            }
            30..38 => {
                let (a, b) = pick_pair(&mut rng);
                Action::Partition { a, b }
            }
            38..43 => Action::CutAll,
            43..55 => Action::HealAll,
            55..60 => Action::JumpForward {
                node: rng.below(n) as usize,
                by: Duration::from_micros(rng.range(1000, p.deadtime.as_micros() as u64 * 2)),
            },
            60..64 => Action::JumpBackward {
                node: rng.below(n) as usize,
                by: Duration::from_micros(rng.range(1000, p.deadtime.as_micros() as u64)),
            },
            64..68 => Action::Restart {
                node: rng.below(n) as usize,
            },
            68..88 => {
                let (from, to) = pick_pair(&mut rng);
                Action::Send {
                    from,
                    to,
                    count: rng.range(1, 5) as u32,
                    must_deliver: false,
                }
            }
            _ => Action::Inject {
                to: rng.below(n) as usize,
                kind: [
                    Forgery::Garbage,
                    Forgery::BitFlip,
                    Forgery::Replay,
                    Forgery::CrossLinkReplay,
                ][rng.below(4) as usize],
            },
        };
        sim.schedule(t, action);
    }
    finish(&mut sim, fault_len)
}

/// One link cut for good, the other delivering with duplicates and reordering but no
/// loss: nobody may ever be declared dead, and every message arrives.
pub fn one_link_cut(seed: u64) -> Result<Summary, String> {
    let mut rng = Rng::new(seed ^ 0x0E1C);
    let mut p = Params::random(&mut rng);
    p.links = 2;
    let mut sim = Sim::new(seed, p.clone());
    let cut_at = Duration::from_micros(rng.below(p.initdead.as_micros() as u64 * 2));
    let n = p.nodes;
    for from in 0..n {
        for to in 0..n {
            if from != to {
                sim.schedule(cut_at, Action::Cut { link: 0, from, to });
            }
        }
    }
    // Delay spread below (deadtime − keepalive) / 2, so no gap reaches deadtime.
    let spread = (p.deadtime - p.keepalive) / 2 - Duration::from_millis(1);
    sim.schedule(
        Duration::ZERO,
        Action::SetFaults {
            link: 1,
            faults: LinkFaults {
                loss_ppm: 0,
                dup_ppm: rng.below(300_000) as u32,
                delay_min: Duration::from_millis(1),
                delay_max: Duration::from_millis(1) + spread,
            },
        },
    );
    let end = p.deadtime * 30;
    let mut t = p.initdead;
    while t < end {
        let from = rng.below(n as u64) as usize;
        let to = (from + 1) % n;
        sim.schedule(
            t,
            Action::Send {
                from,
                to,
                count: rng.range(1, 4) as u32,
                must_deliver: true,
            },
        );
        t += p.keepalive * rng.range(1, 10) as u32;
    }
    sim.run_until(end)?;
    if let Some((at, r, e)) = sim.log.iter().find(|(_, _, e)| {
        matches!(
            e,
            tandem_membership::Event::NodeDead { .. }
                | tandem_membership::Event::LinkDown { link: 1, .. }
        )
    }) {
        return Err(format!(
            "false verdict with link 1 delivering: node {} at {at:?}: {e:?}",
            r + 1
        ));
    }
    // Link 0 is cut both ways, so it must end up down everywhere.
    for r in 0..n {
        let st = sim.core(r).status(sim.local_now(r));
        for node in st.nodes.iter().filter(|x| !x.local) {
            if node.links[0].up || !node.links[1].up {
                return Err(format!(
                    "node {} link states wrong: {:?}",
                    r + 1,
                    node.links
                ));
            }
        }
    }
    finish(&mut sim, end)
}

/// Every link cut after the cluster formed: everyone declares everyone dead within
/// bounds; after heal, everyone reports everyone as returned after a partition.
pub fn all_links_cut_then_heal(seed: u64) -> Result<Summary, String> {
    let mut rng = Rng::new(seed ^ 0xA11C);
    let p = Params::random(&mut rng);
    let mut sim = Sim::new(seed, p.clone());
    let cut_at = p.initdead / 2 + Duration::from_micros(rng.below(p.initdead.as_micros() as u64));
    sim.schedule(cut_at, Action::CutAll);
    let heal_at = cut_at + p.deadtime + p.keepalive * rng.range(2, 10) as u32;
    sim.run_until(heal_at)?;
    let pairs = p.nodes * (p.nodes - 1);
    let dead = sim
        .log
        .iter()
        .filter(|(_, _, e)| matches!(e, tandem_membership::Event::NodeDead { .. }))
        .count();
    if dead != pairs {
        return Err(format!(
            "{dead} dead verdicts after cutting everything, expected {pairs}"
        ));
    }
    sim.schedule(heal_at, Action::HealAll);
    sim.run_until(heal_at + p.keepalive * 3)?;
    let returned = sim
        .log
        .iter()
        .filter(|(at, _, e)| {
            *at >= heal_at
                && matches!(
                    e,
                    tandem_membership::Event::NodeReturnedAfterPartition { .. }
                )
        })
        .count();
    if returned != pairs {
        return Err(format!(
            "{returned} returned-after-partition events after heal, expected {pairs}"
        ));
    }
    finish(&mut sim, heal_at + p.keepalive * 3)
}

/// A node is isolated for a while (possibly long enough to be declared dead) and
/// restarts: every peer reports the new incarnation as a restart, never as a return.
pub fn restart_reported(seed: u64) -> Result<Summary, String> {
    let mut rng = Rng::new(seed ^ 0x8E57);
    let p = Params::random(&mut rng);
    let mut sim = Sim::new(seed, p.clone());
    let node = rng.below(p.nodes as u64) as usize;
    let down_at = p.initdead + Duration::from_micros(rng.below(p.deadtime.as_micros() as u64));
    let down_for = Duration::from_micros(rng.below(p.deadtime.as_micros() as u64 * 3));
    for other in (0..p.nodes).filter(|&o| o != node) {
        sim.schedule(down_at, Action::Partition { a: node, b: other });
    }
    sim.schedule(down_at + down_for, Action::Restart { node });
    sim.schedule(down_at + down_for, Action::HealAll);
    let settle = down_at + down_for + p.keepalive * 3;
    sim.run_until(settle)?;
    for r in (0..p.nodes).filter(|&o| o != node) {
        let restarted = sim.log.iter().any(|(_, o, e)| {
            *o == r
                && *e
                    == tandem_membership::Event::NodeRestarted {
                        node: node as u32 + 1,
                        incarnation: 2,
                        previous: 1,
                    }
        });
        let returned = sim.log.iter().any(|(_, o, e)| {
            *o == r
                && matches!(
                    e,
                    tandem_membership::Event::NodeReturnedAfterPartition { .. }
                )
        });
        if !restarted || returned {
            return Err(format!(
                "node {} after node {}'s restart: restarted event {restarted}, returned event {returned}",
                r + 1,
                node + 1
            ));
        }
    }
    finish(&mut sim, settle)
}

/// Aggregate of many seeds.
#[derive(Debug, Default)]
pub struct Aggregate {
    /// Seeds run.
    pub seeds: u64,
    /// Sum of the per-run summaries (latencies concatenated).
    pub total: Summary,
}

impl Aggregate {
    fn add(&mut self, s: Summary) {
        let t = &mut self.total;
        t.packets_sent += s.packets_sent;
        t.packets_lost += s.packets_lost;
        t.packets_duplicated += s.packets_duplicated;
        t.packets_accepted += s.packets_accepted;
        t.packets_dropped += s.packets_dropped;
        t.forgeries += s.forgeries;
        t.dead_verdicts += s.dead_verdicts;
        t.returned += s.returned;
        t.restarted += s.restarted;
        t.messages_delivered += s.messages_delivered;
        t.messages_acked += s.messages_acked;
        t.other_destination += s.other_destination;
        t.dead_latencies.extend(s.dead_latencies);
        self.seeds += 1;
    }
}

/// Runs `scenario` over `default_count` seeds (`TANDEM_SIM_SEEDS=N` overrides the
/// count, `TANDEM_SIM_SEED=S` runs only seed S). Any failure — a broken invariant or a
/// panic inside a core — is returned with the seed and the command to replay it.
pub fn run_seeds(
    name: &str,
    default_count: u64,
    scenario: fn(u64) -> Result<Summary, String>,
) -> Result<Aggregate, String> {
    let seeds: Vec<u64> = match std::env::var("TANDEM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => {
            let count = std::env::var("TANDEM_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default_count);
            (0..count).collect()
        }
    };
    let mut agg = Aggregate::default();
    for seed in seeds {
        let outcome = catch_unwind(AssertUnwindSafe(|| scenario(seed))).unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic: {msg}"))
        });
        match outcome {
            Ok(s) => agg.add(s),
            Err(e) => {
                return Err(format!(
                    "{name}: seed {seed} failed: {e}\nreplay: TANDEM_SIM_SEED={seed} cargo test -p tandem-sim {name}"
                ));
            }
        }
    }
    Ok(agg)
}
