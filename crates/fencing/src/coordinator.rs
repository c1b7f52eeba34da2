//! The fencing coordinator: sans-IO, it decides which device to run when, and what the
//! planner may believe about each node.
//!
//! ```text
//!  request(target, reason, delayed, now) ─┐            ┌─► poll_command(): RunDevice{id,…}
//!  device_result(id, FenceResult, now) ───┤            │                  SendToPeer(record)
//!  operator_confirmed(node, now) ─────────┼─► Coordinator ─► state(node): FenceState
//!  peer_reported(record, now) ────────────┤            ├─► history(): bounded FenceRecords
//!  node_returned_with_new_incarnation ────┤            └─► poll_timeout(): next tick
//!  cancel(node, now) / tick(now) ─────────┘
//! ```
//!
//! Per target: an optional priority delay, then *rounds*. A round walks the levels in
//! ascending order; a level succeeds when every one of its devices succeeds (two power
//! supplies need two switches), and any failure moves on to the next level. A failed round
//! is retried after an exponential backoff with jitter from the seeded RNG, up to
//! `max_rounds`; then the target is `Failed` for `failed_cooldown`, after which a new
//! series of rounds starts on its own (so a device that works again ends the outage).
//!
//! Safety rule: a target becomes `FencedOk` only from a `Success` result of a fencing
//! action (off/reboot) that answers the attempt under way — or a success the peer reports
//! while a fence is wanted — and `ConfirmedByOperator` only from a confirmation. A
//! timeout, a lost result, a stale result, an unknown id: never success.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use tandem_config::{Config, FenceAgent, FenceDevice};
use tandem_rng::Rng;

use crate::action::FenceAction;
use crate::result::{FenceRecord, FenceResult, History, Origin, Outcome};

/// Default wait of the node that holds no group before it fences (priority-fencing-delay).
pub const DEFAULT_PRIORITY_DELAY: Duration = Duration::from_secs(5);
/// Default rounds through all levels before a target is `Failed`.
pub const DEFAULT_MAX_ROUNDS: u32 = 3;
/// Default backoff before the second round; it doubles per round.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Default cap of the backoff.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default time a target stays `Failed` before a new series of rounds starts.
pub const DEFAULT_FAILED_COOLDOWN: Duration = Duration::from_secs(30);
/// How long after a device's timeout a missing result counts as lost.
pub const DEFAULT_RESULT_GRACE: Duration = Duration::from_secs(10);
/// Default number of history records kept.
pub const DEFAULT_HISTORY_CAPACITY: usize = 200;

/// Fencing state of one node: the planner's own type, so the coordinator's verdicts
/// reach it unchanged.
pub use tandem_policy::FenceState;

/// What the daemon must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run a device (blocking: on a worker thread) and feed the result back with
    /// [`Coordinator::device_result`] and this `id`.
    RunDevice {
        /// Attempt id.
        id: u64,
        /// Device name.
        device: String,
        /// Action.
        action: FenceAction,
        /// Node to fence.
        target: String,
        /// The device timeout the runner enforces.
        timeout: Duration,
    },
    /// Send this record to the peer as a cluster message.
    SendToPeer(FenceRecord),
}

/// Coordinator settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// This node: it runs only devices whose `run_on` is empty or names it, never fences
    /// itself, and is the executor in records. `None` (the CLI's `--direct`): any device.
    pub local_node: Option<String>,
    /// The configured devices.
    pub devices: Vec<FenceDevice>,
    /// The fencing action: `Off` (default; the node stays down until an operator or
    /// the lab powers it on) or `Reboot`.
    pub action: FenceAction,
    /// Wait before the first attempt of a `delayed` request.
    pub priority_delay: Duration,
    /// Rounds through all levels before `Failed` (at least 1).
    pub max_rounds: u32,
    /// Backoff after the first failed round.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Time in `Failed` before a new series starts.
    pub failed_cooldown: Duration,
    /// Slack after a device timeout before a missing result counts as lost.
    pub result_grace: Duration,
    /// History records kept.
    pub history_capacity: usize,
}

impl CoordinatorConfig {
    /// Settings for `local_node` from the cluster configuration, defaults elsewhere.
    pub fn from_config(cfg: &Config, local_node: &str) -> CoordinatorConfig {
        CoordinatorConfig {
            local_node: Some(local_node.to_string()),
            devices: cfg.fence_devices.clone(),
            priority_delay: cfg.cluster.fencing_delay,
            ..CoordinatorConfig::with_devices(Vec::new())
        }
    }

    /// Defaults around a device list, no local node.
    pub fn with_devices(devices: Vec<FenceDevice>) -> CoordinatorConfig {
        CoordinatorConfig {
            local_node: None,
            devices,
            action: FenceAction::Off,
            priority_delay: DEFAULT_PRIORITY_DELAY,
            max_rounds: DEFAULT_MAX_ROUNDS,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            failed_cooldown: DEFAULT_FAILED_COOLDOWN,
            result_grace: DEFAULT_RESULT_GRACE,
            history_capacity: DEFAULT_HISTORY_CAPACITY,
        }
    }
}

/// A request the coordinator refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A node does not fence itself; its peer does.
    #[error("{0} is this node: a node is fenced by its peer, never by itself")]
    SelfFence(String),
    /// Empty node name.
    #[error("empty node name")]
    EmptyNode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting to start a round (priority delay or backoff). `attempted`: whether a
    /// device already ran in this series (decides Required vs InProgress).
    Waiting { at: Instant, attempted: bool },
    /// A device runs.
    Running {
        id: u64,
        device: usize,
        started: Instant,
        deadline: Instant,
    },
    /// A manual device: waiting for an operator until the deadline.
    AwaitOperator {
        device: usize,
        started: Instant,
        deadline: Instant,
    },
    /// No usable device: only an operator can end this.
    NoDevice,
    /// All rounds failed; a new series starts at `until`.
    Failed { until: Instant },
    /// Fenced.
    FencedOk,
    /// Confirmed by an operator.
    Confirmed,
}

#[derive(Debug, Clone)]
struct Target {
    reason: String,
    phase: Phase,
    /// Rounds failed in this series.
    rounds_failed: u32,
    /// Position in the walk: index into `levels`, and into that level's devices.
    level: usize,
    slot: usize,
}

/// The coordinator. See the module documentation.
#[derive(Debug, Clone)]
pub struct Coordinator {
    cfg: CoordinatorConfig,
    /// Usable device indices grouped by level, lowest level first.
    levels: Vec<Vec<usize>>,
    targets: BTreeMap<String, Target>,
    next_id: u64,
    rng: Rng,
    commands: VecDeque<Command>,
    history: History,
    /// (monotonic, wall ms) at construction: records carry wall time for people.
    anchor: (Instant, u64),
}

impl Coordinator {
    /// A coordinator with `seed` for jitter; `now`/`wall_ms_now` anchor record times.
    pub fn new(cfg: CoordinatorConfig, seed: u64, now: Instant, wall_ms_now: u64) -> Coordinator {
        let mut by_level: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, d) in cfg.devices.iter().enumerate() {
            let usable = match &cfg.local_node {
                Some(me) => d.run_on.is_empty() || d.run_on.iter().any(|n| n == me),
                None => true,
            };
            if usable {
                by_level.entry(d.level).or_default().push(i);
            }
        }
        Coordinator {
            history: History::new(cfg.history_capacity),
            cfg,
            levels: by_level.into_values().collect(),
            targets: BTreeMap::new(),
            next_id: 1,
            rng: Rng::new(seed),
            commands: VecDeque::new(),
            anchor: (now, wall_ms_now),
        }
    }

    /// The settings.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.cfg
    }

    /// The planner wants `target` fenced. Idempotent while a fence is wanted or done;
    /// a `delayed` request waits the priority delay before its first attempt, and an
    /// undelayed one cuts a pending delay short.
    pub fn request(
        &mut self,
        target: &str,
        reason: &str,
        delayed: bool,
        now: Instant,
    ) -> Result<(), RequestError> {
        if target.is_empty() {
            return Err(RequestError::EmptyNode);
        }
        if self.cfg.local_node.as_deref() == Some(target) {
            return Err(RequestError::SelfFence(target.to_string()));
        }
        if let Some(t) = self.targets.get_mut(target) {
            if let Phase::Waiting {
                at,
                attempted: false,
            } = &mut t.phase
            {
                if !delayed && *at > now {
                    *at = now;
                    self.tick(now);
                }
            }
            return Ok(());
        }
        let mut t = Target {
            reason: reason.to_string(),
            phase: Phase::NoDevice,
            rounds_failed: 0,
            level: 0,
            slot: 0,
        };
        if delayed && !self.cfg.priority_delay.is_zero() {
            t.phase = Phase::Waiting {
                at: now + self.cfg.priority_delay,
                attempted: false,
            };
            self.targets.insert(target.to_string(), t);
        } else {
            self.targets.insert(target.to_string(), t);
            self.start_round(target, now);
        }
        Ok(())
    }

    /// The planner no longer wants `target` fenced (it left cleanly). A fenced or
    /// confirmed state is kept: the node is down until it returns.
    pub fn cancel(&mut self, target: &str) {
        if let Some(t) = self.targets.get(target) {
            if !matches!(t.phase, Phase::FencedOk | Phase::Confirmed) {
                self.targets.remove(target);
            }
        }
    }

    /// A device run finished. A result that does not answer the attempt under way
    /// (unknown or stale id) goes to the history only.
    pub fn device_result(&mut self, id: u64, result: FenceResult, now: Instant) {
        let found = self.targets.iter().find_map(|(name, t)| match t.phase {
            Phase::Running {
                id: rid,
                device,
                started,
                ..
            } if rid == id => Some((name.clone(), device, started)),
            _ => None,
        });
        let target_name = result
            .target
            .clone()
            .or_else(|| found.as_ref().map(|f| f.0.clone()))
            .unwrap_or_default();
        let reason = found
            .as_ref()
            .and_then(|f| self.targets.get(&f.0))
            .map(|t| t.reason.clone())
            .unwrap_or_else(|| "late result of a finished attempt".to_string());
        let record = self.record(
            &target_name,
            &result.device,
            result.action,
            result.outcome.clone(),
            result.duration_ms,
            Origin::Local,
            &reason,
            now,
        );
        self.history.push(record.clone());
        self.commands.push_back(Command::SendToPeer(record));
        let Some((name, device, _)) = found else {
            return;
        };
        // The answer must be about the device and action we asked for.
        let asked = &self.cfg.devices[device];
        let matches = result.device == asked.name
            && result.action == self.cfg.action
            && result.target.as_deref().is_none_or(|t| t == name);
        if matches && result.outcome.is_success() && result.action.fences() {
            self.device_succeeded(&name, now);
        } else {
            self.device_failed(&name, now);
        }
    }

    /// An operator confirmed `node` is down (`tandem fence confirm NODE`). Accepted in
    /// any state: the operator takes the responsibility, as with Heartbeat's meatware.
    pub fn operator_confirmed(&mut self, node: &str, now: Instant) {
        if node.is_empty() || self.cfg.local_node.as_deref() == Some(node) {
            return;
        }
        let reason = self
            .targets
            .get(node)
            .map(|t| t.reason.clone())
            .unwrap_or_else(|| "operator confirmation".into());
        let t = self.targets.entry(node.to_string()).or_insert(Target {
            reason: reason.clone(),
            phase: Phase::NoDevice,
            rounds_failed: 0,
            level: 0,
            slot: 0,
        });
        t.phase = Phase::Confirmed;
        let r = self.record(
            node,
            "operator",
            self.cfg.action,
            Outcome::Success,
            0,
            Origin::Operator,
            &reason,
            now,
        );
        self.history.push(r.clone());
        self.commands.push_back(Command::SendToPeer(r));
    }

    /// The peer sent a record. It goes to the history; a success (or confirmation) about
    /// a node this coordinator wants fenced ends that fence. A success about a node
    /// nobody wants fenced changes nothing: it may be old news about an earlier life.
    pub fn peer_reported(&mut self, record: FenceRecord, now: Instant) {
        let _ = now;
        let mut r = record;
        let success_kind = match r.origin {
            Origin::Operator => Some(Phase::Confirmed),
            _ if r.outcome.is_success() && r.action.fences() => Some(Phase::FencedOk),
            _ => None,
        };
        let from_operator = r.origin == Origin::Operator;
        r.origin = if from_operator {
            Origin::Operator
        } else {
            Origin::Peer
        };
        let target = r.target.clone();
        self.history.push(r);
        if self.cfg.local_node.as_deref() == Some(target.as_str()) {
            return;
        }
        if let (Some(phase), Some(t)) = (success_kind, self.targets.get_mut(&target)) {
            if !matches!(t.phase, Phase::FencedOk | Phase::Confirmed) {
                t.phase = phase;
            }
        }
    }

    /// `node` came back with a new incarnation: it rebooted, so whatever it ran is gone
    /// and the fence (done or pending) is over. Its state returns to `NotNeeded`.
    pub fn node_returned_with_new_incarnation(&mut self, node: &str) {
        self.targets.remove(node);
    }

    /// Advances timers: starts rounds whose delay or backoff is over, gives up on lost
    /// results and on manual devices nobody confirmed, re-arms failed targets.
    pub fn tick(&mut self, now: Instant) {
        let names: Vec<String> = self.targets.keys().cloned().collect();
        for name in names {
            let Some(t) = self.targets.get(&name) else {
                continue;
            };
            match t.phase.clone() {
                Phase::Waiting { at, .. } if now >= at => self.start_round(&name, now),
                Phase::Running {
                    device,
                    started,
                    deadline,
                    ..
                } if now >= deadline => {
                    let dev = self.cfg.devices[device].name.clone();
                    self.coordinator_gave_up(
                        &name,
                        &dev,
                        Outcome::Error {
                            detail: "no result from the device runner".into(),
                        },
                        started,
                        now,
                    );
                }
                Phase::AwaitOperator {
                    device,
                    started,
                    deadline,
                } if now >= deadline => {
                    let dev = self.cfg.devices[device].name.clone();
                    self.coordinator_gave_up(&name, &dev, Outcome::Timeout, started, now);
                }
                Phase::Failed { until } if now >= until => {
                    if let Some(t) = self.targets.get_mut(&name) {
                        t.rounds_failed = 0;
                    }
                    self.start_round(&name, now);
                }
                _ => {}
            }
        }
    }

    /// The next command for the daemon.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Coordinator::tick`] must run next, if any timer is armed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter_map(|t| match t.phase {
                Phase::Waiting { at, .. } => Some(at),
                Phase::Running { deadline, .. } | Phase::AwaitOperator { deadline, .. } => {
                    Some(deadline)
                }
                Phase::Failed { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// The fencing state of `node`.
    pub fn state(&self, node: &str) -> FenceState {
        self.targets
            .get(node)
            .map(|t| match t.phase {
                Phase::Waiting {
                    attempted: false, ..
                }
                | Phase::NoDevice => FenceState::Required,
                Phase::Waiting { .. } | Phase::Running { .. } | Phase::AwaitOperator { .. } => {
                    FenceState::InProgress
                }
                Phase::Failed { .. } => FenceState::Failed,
                Phase::FencedOk => FenceState::FencedOk,
                Phase::Confirmed => FenceState::ConfirmedByOperator,
            })
            .unwrap_or_default()
    }

    /// Every node with a state other than `NotNeeded`.
    pub fn states(&self) -> BTreeMap<String, FenceState> {
        self.targets
            .keys()
            .map(|n| (n.clone(), self.state(n)))
            .collect()
    }

    /// Whether `node` waits for an operator (a manual device, or no device at all).
    pub fn awaits_operator(&self, node: &str) -> bool {
        matches!(
            self.targets.get(node).map(|t| &t.phase),
            Some(Phase::AwaitOperator { .. } | Phase::NoDevice)
        )
    }

    /// The fencing history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Checks internal invariants (for simulation after every step): positions in range,
    /// attempt ids unique and issued, states reachable.
    pub fn validate(&self) -> Result<(), String> {
        let mut ids = Vec::new();
        for (name, t) in &self.targets {
            if let Phase::Running { id, device, .. } = t.phase {
                if id >= self.next_id || ids.contains(&id) {
                    return Err(format!("{name}: bad attempt id {id}"));
                }
                ids.push(id);
                if device >= self.cfg.devices.len() {
                    return Err(format!("{name}: device {device} out of range"));
                }
            }
            let running = matches!(t.phase, Phase::Running { .. } | Phase::AwaitOperator { .. });
            if running && (t.level >= self.levels.len() || t.slot >= self.levels[t.level].len()) {
                return Err(format!("{name}: walk position out of range"));
            }
            if t.rounds_failed > self.cfg.max_rounds.max(1) {
                return Err(format!("{name}: {} rounds failed", t.rounds_failed));
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ internals

    fn start_round(&mut self, name: &str, now: Instant) {
        let Some(t) = self.targets.get_mut(name) else {
            return;
        };
        t.level = 0;
        t.slot = 0;
        if self.levels.is_empty() {
            t.phase = Phase::NoDevice;
            return;
        }
        self.start_device(name, now);
    }

    fn start_device(&mut self, name: &str, now: Instant) {
        let Some(t) = self.targets.get_mut(name) else {
            return;
        };
        let device = self.levels[t.level][t.slot];
        let dev = &self.cfg.devices[device];
        if dev.agent == FenceAgent::Manual {
            t.phase = Phase::AwaitOperator {
                device,
                started: now,
                deadline: now + dev.timeout,
            };
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        t.phase = Phase::Running {
            id,
            device,
            started: now,
            deadline: now + dev.timeout + self.cfg.result_grace,
        };
        self.commands.push_back(Command::RunDevice {
            id,
            device: dev.name.clone(),
            action: self.cfg.action,
            target: name.to_string(),
            timeout: dev.timeout,
        });
    }

    fn device_succeeded(&mut self, name: &str, now: Instant) {
        let Some(t) = self.targets.get_mut(name) else {
            return;
        };
        t.slot += 1;
        if t.slot < self.levels[t.level].len() {
            // The level needs every device: go on with the next one.
            self.start_device(name, now);
        } else {
            t.phase = Phase::FencedOk;
        }
    }

    fn device_failed(&mut self, name: &str, now: Instant) {
        let Some(t) = self.targets.get_mut(name) else {
            return;
        };
        t.level += 1;
        t.slot = 0;
        if t.level < self.levels.len() {
            self.start_device(name, now);
            return;
        }
        // The round failed.
        t.level = 0;
        t.rounds_failed += 1;
        if t.rounds_failed < self.cfg.max_rounds.max(1) {
            let backoff = self.backoff(self.targets[name].rounds_failed);
            if let Some(t) = self.targets.get_mut(name) {
                t.phase = Phase::Waiting {
                    at: now + backoff,
                    attempted: true,
                };
            }
        } else if let Some(t) = self.targets.get_mut(name) {
            t.rounds_failed = 0;
            t.phase = Phase::Failed {
                until: now + self.cfg.failed_cooldown,
            };
        }
    }

    /// Exponential backoff after `rounds_failed` rounds, with "equal jitter": half the
    /// delay fixed, half random, so two nodes do not retry in lockstep.
    fn backoff(&mut self, rounds_failed: u32) -> Duration {
        let exp = rounds_failed.saturating_sub(1).min(20);
        let base = self
            .cfg
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.cfg.backoff_max);
        let half_ms = (base.as_millis() / 2) as u64;
        Duration::from_millis(half_ms + self.rng.below(half_ms + 1))
    }

    fn coordinator_gave_up(
        &mut self,
        name: &str,
        device: &str,
        outcome: Outcome,
        started: Instant,
        now: Instant,
    ) {
        let reason = self
            .targets
            .get(name)
            .map(|t| t.reason.clone())
            .unwrap_or_default();
        let r = self.record(
            name,
            device,
            self.cfg.action,
            outcome,
            now.saturating_duration_since(started).as_millis() as u64,
            Origin::Coordinator,
            &reason,
            now,
        );
        self.history.push(r.clone());
        self.commands.push_back(Command::SendToPeer(r));
        self.device_failed(name, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        target: &str,
        device: &str,
        action: FenceAction,
        outcome: Outcome,
        duration_ms: u64,
        origin: Origin,
        reason: &str,
        now: Instant,
    ) -> FenceRecord {
        let since = now.saturating_duration_since(self.anchor.0).as_millis() as u64;
        FenceRecord {
            at_unix_ms: self.anchor.1.saturating_add(since),
            executor: self.cfg.local_node.clone().unwrap_or_default(),
            target: target.to_string(),
            device: device.to_string(),
            action,
            outcome,
            duration_ms,
            origin,
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
