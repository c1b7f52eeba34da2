//! The controller's state and its inputs: membership events, the peer's messages,
//! operator requests, action and monitor results, fence results, disk fencing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_agents::{Action, ActionResult, Outcome};
use tandem_config::{Config, ResourceKind};
use tandem_fencing::{Coordinator, CoordinatorConfig, Outdater};
use tandem_membership::{MessageId, NodeId};
use tandem_policy::{
    ActionId, FailedOp, PeerState, Request, ResourceState, ResourceView, Transition,
};
use tandem_witness::Ballot;

use crate::claim::Claims;
use crate::messages::{PeerMessage, Reported};
use crate::types::{Command, Input, Op, Operator, SendTag};

/// Resource actions kept for status.
pub const ACTION_HISTORY_LEN: usize = 64;

/// Failures kept per resource (the newest; only unexpired ones are kept at all).
pub const FAILURES_KEPT: usize = 32;

/// Operator requests kept (older ones that a newer one fully covers are dropped first).
pub const REQUESTS_KEPT: usize = 32;

/// How long a clean shutdown waits for the peer to acknowledge its goodbye.
pub const GOODBYE_WAIT: Duration = Duration::from_secs(3);

pub(crate) struct LocalResource {
    pub(crate) state: ResourceState,
    /// Unexpired failures (pruned as they expire, at most [`FAILURES_KEPT`]).
    pub(crate) failures: VecDeque<(FailedOp, Instant)>,
    /// The recurring monitor: interval and next due time; `None` = not monitored now.
    pub(crate) monitor: Option<(Duration, Instant)>,
    pub(crate) monitor_in_flight: bool,
    pub(crate) last: Option<ActionRecord>,
}

/// One finished action, for status.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub(crate) time_ms: u64,
    pub(crate) group: String,
    pub(crate) resource: String,
    pub(crate) action: &'static str,
    pub(crate) ok: bool,
    pub(crate) result: String,
}

pub(crate) struct Running {
    pub(crate) transition: Transition,
    pub(crate) done: BTreeSet<ActionId>,
    pub(crate) in_flight: BTreeSet<ActionId>,
    /// Fence actions in flight and their targets.
    pub(crate) fences: BTreeMap<ActionId, String>,
    /// Start nothing more of this transition (an action failed or the view changed).
    pub(crate) abandoned: bool,
    /// When it started (its duration goes to the counters when it finishes).
    pub(crate) started: Instant,
}

/// A clean shutdown under way.
pub(crate) enum Shutdown {
    /// Waiting for the running transition's actions to finish.
    Draining,
    /// Stopping what runs here, one resource at a time (group order, right to left).
    Resources {
        queue: VecDeque<(String, String)>,
        in_flight: bool,
        /// Groups that had something to stop: released to the peer once done.
        to_release: BTreeSet<String>,
    },
    /// Goodbye sent; waiting for its acknowledgement until the deadline.
    Goodbye {
        id: Option<MessageId>,
        deadline: Instant,
    },
    /// Done: nothing more happens.
    Done,
}

/// The resource manager as a state machine (see the crate documentation).
pub struct Controller {
    pub(crate) config: Arc<Config>,
    pub(crate) local: String,
    pub(crate) peer: String,
    pub(crate) peer_id: NodeId,
    pub(crate) started_at: Instant,
    /// Wall-clock milliseconds at `started_at` (records carry wall time).
    pub(crate) wall_ms_at_start: u64,
    pub(crate) resources: BTreeMap<(String, String), LocalResource>,
    pub(crate) peer_state: PeerState,
    /// Groups the peer's current incarnation has reported.
    pub(crate) peer_reported: BTreeSet<String>,
    pub(crate) peer_said_goodbye: bool,
    /// The disks were told the peer is down (fenced or confirmed).
    pub(crate) peer_down_told_disks: bool,
    pub(crate) peer_groups: BTreeMap<String, BTreeMap<String, ResourceView>>,
    /// Standing operator requests in cluster order: (time of the request in wall ms,
    /// request), sorted by time then node, so both nodes hold the same list in the same
    /// order once they have exchanged it.
    pub(crate) requests: Vec<(u64, Request)>,
    pub(crate) maintenance: bool,
    /// When maintenance mode was last switched, on either node (wall clock, ms; 0:
    /// never): the newer switch wins when the nodes compare.
    pub(crate) maintenance_at_ms: u64,
    pub(crate) ping: BTreeMap<String, bool>,
    pub(crate) coordinator: Coordinator,
    /// Claims of groups about to be started, both ways.
    pub(crate) claims: Claims,
    /// This node's dealings with the witness (inert without `[witness]`).
    pub(crate) witness: Ballot,
    /// The witness's membership node id, if one is configured.
    pub(crate) witness_id: Option<NodeId>,
    pub(crate) outdater: Outdater,
    /// Outdate requests in flight as reliable messages.
    pub(crate) outdate_messages: BTreeMap<MessageId, u64>,
    pub(crate) running: Option<Running>,
    pub(crate) replan: bool,
    pub(crate) initdead_over: bool,
    pub(crate) last_transition: Transition,
    pub(crate) history: VecDeque<ActionRecord>,
    pub(crate) commands: VecDeque<Command>,
    /// What `/metrics` counts: transitions run, fence device runs and results.
    pub(crate) counters: crate::status::Counters,
    /// What notifications compare with (`notices.rs`).
    pub(crate) watch: crate::notices::Watch,
    pub(crate) shutdown: Option<Shutdown>,
    pub(crate) now: Instant,
}

impl Controller {
    /// A controller for `local` at `now` (`wall_ms`: the wall clock then); resources
    /// start unknown and are probed first. `seed` drives the fencing retry jitter.
    pub fn new(
        config: Arc<Config>,
        local: &str,
        peer_id: NodeId,
        now: Instant,
        wall_ms: u64,
        seed: u64,
    ) -> Result<Controller, String> {
        let peer = tandem_policy::plan::peer_name(&config, local)
            .ok_or("the cluster needs exactly two nodes")?
            .to_string();
        let mut resources = BTreeMap::new();
        for group in &config.groups {
            for r in &group.resources {
                resources.insert(
                    (group.name.clone(), r.name.clone()),
                    LocalResource {
                        state: ResourceState::Unknown,
                        failures: VecDeque::new(),
                        monitor: None,
                        monitor_in_flight: false,
                        last: None,
                    },
                );
            }
        }
        let coordinator = Coordinator::new(
            CoordinatorConfig::from_config(&config, local),
            seed,
            now,
            wall_ms,
        );
        let witness_id = crate::witness::witness_node_id(&config);
        let witness = Ballot::new(
            &peer,
            config.witness.is_some(),
            config.cluster.deadtime,
            config
                .witness
                .as_ref()
                .map_or(config.cluster.deadtime, |w| w.vote_retry),
        );
        Ok(Controller {
            // A peer heard on the links answers an outdate within a few keepalives; one
            // that does not within a deadtime is as good as gone.
            outdater: Outdater::new(config.cluster.deadtime),
            config,
            local: local.to_string(),
            peer,
            peer_id,
            started_at: now,
            wall_ms_at_start: wall_ms,
            resources,
            peer_state: PeerState::Unknown,
            peer_reported: BTreeSet::new(),
            peer_said_goodbye: false,
            peer_down_told_disks: false,
            peer_groups: BTreeMap::new(),
            requests: Vec::new(),
            maintenance: false,
            maintenance_at_ms: 0,
            ping: BTreeMap::new(),
            coordinator,
            claims: Claims::default(),
            witness,
            witness_id,
            outdate_messages: BTreeMap::new(),
            running: None,
            replan: true,
            initdead_over: false,
            last_transition: Transition::new(local),
            history: VecDeque::new(),
            commands: VecDeque::new(),
            counters: Default::default(),
            watch: Default::default(),
            shutdown: None,
            now,
        })
    }

    /// Feeds one input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Membership(event) => self.membership(event),
            Input::ActionDone {
                action,
                group,
                resource,
                op,
                result,
            } => self.action_done(action, &group, &resource, op, result),
            Input::MonitorDone {
                group,
                resource,
                result,
            } => self.monitor_done(&group, &resource, result),
            Input::Ping(ok) => {
                self.ping.insert(self.local.clone(), ok);
                self.send(PeerMessage::Ping { ok });
                self.replan = true;
            }
            Input::FenceDone { id, result } => {
                self.counters.fence_result(&result);
                tracing::info!(
                    device = %result.device,
                    target = ?result.target,
                    "fence device: {}",
                    result.outcome.summary()
                );
                self.coordinator.device_result(id, result, self.now);
            }
            Input::DiskFencePeer { disk } => self.disk_fence_peer(&disk),
            Input::OutdateDone {
                disk,
                request,
                result,
            } => self.send(PeerMessage::Outdated {
                disk,
                request,
                error: result.err(),
            }),
            Input::Sent { tag, id } => match tag {
                SendTag::Plain => {}
                SendTag::Outdate(request) => {
                    self.outdate_messages.insert(id, request);
                }
                SendTag::Goodbye => {
                    if let Some(Shutdown::Goodbye { id: waiting, .. }) = &mut self.shutdown {
                        *waiting = Some(id);
                    }
                }
            },
            Input::SendFailed { tag } => match tag {
                SendTag::Plain => {}
                SendTag::Outdate(request) => self.outdater.message_failed(request),
                SendTag::Goodbye => {
                    tracing::info!("all groups stopped; the peer is not up to hear a goodbye");
                    self.finish_shutdown();
                }
            },
            Input::Tick => {}
            Input::Shutdown => self.begin_shutdown(),
        }
        self.step();
    }

    /// Maintenance mode and when it was last switched (wall clock, ms; 0: never). The
    /// shell keeps both on disk, so that a daemon restarted in maintenance mode starts
    /// in it and the nodes agree on which switch came last.
    pub fn maintenance(&self) -> (bool, u64) {
        (self.maintenance, self.maintenance_at_ms)
    }

    /// Starts with maintenance mode as the last daemon left it: on, a daemon that
    /// stopped in it left every group and disk running, and this one probes them
    /// without starting or stopping anything. Call before the first input.
    pub fn resume_maintenance(&mut self, on: bool, at_ms: u64) {
        if on {
            tracing::info!(
                "maintenance mode (kept from the last run): nothing starts or stops until `tandem maintenance off`"
            );
        }
        self.maintenance = on;
        self.maintenance_at_ms = at_ms;
        self.replan = true;
    }

    /// The next command for the shell.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Input::Tick`] is next due (monitors, initdead, failure expiry, fencing
    /// and disk-fencing timers, the goodbye's wait).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Vec<Instant> = Vec::new();
        if !self.initdead_over {
            next.push(self.started_at + self.config.cluster.initdead);
        }
        for ((group, _), r) in &self.resources {
            if let Some((_, due)) = r.monitor
                && !r.monitor_in_flight
                && r.state == ResourceState::Started
                && !self.maintenance
            {
                next.push(due);
            }
            let timeout = self.failure_timeout(group);
            next.extend(r.failures.iter().map(|(_, at)| *at + timeout));
        }
        next.extend(self.claims.peer.values().copied());
        next.extend(self.coordinator.poll_timeout());
        next.extend(self.outdater.poll_timeout());
        next.extend(self.witness.poll_timeout());
        if let Some(Shutdown::Goodbye { deadline, .. }) = &self.shutdown {
            next.push(*deadline);
        }
        next.into_iter().min()
    }

    /// Whether the shutdown has finished ([`Command::Exit`] was issued).
    pub fn finished(&self) -> bool {
        matches!(self.shutdown, Some(Shutdown::Done))
    }

    /// Everything that follows an input: timers, fencing, disk fencing, planning.
    fn step(&mut self) {
        self.timers();
        self.fencing_commands();
        self.outdate_commands();
        if self.shutdown.is_some() {
            self.shutdown_step();
        } else {
            self.advance();
        }
        self.notice_changes();
    }

    /// Wall-clock milliseconds at `now`.
    pub(crate) fn wall_ms(&self) -> u64 {
        self.wall_ms_at_start
            + self
                .now
                .saturating_duration_since(self.started_at)
                .as_millis() as u64
    }

    // ------------------------------------------------------------------ inputs
    /// Answers an operator request.
    pub fn operator(&mut self, now: Instant, op: Operator) -> Result<serde_json::Value, String> {
        self.now = self.now.max(now);
        let answer = match op {
            Operator::Request(..) if self.config.groups.is_empty() => {
                Err("this cluster has no resource groups: nothing to move".into())
            }
            Operator::Request(..) if self.shutdown.is_some() => {
                Err("this node is shutting down".into())
            }
            Operator::Request(kind, scope) => match self.request_refusal(kind, scope) {
                Some(why) => {
                    tracing::warn!(?kind, ?scope, "operator request refused: {why}");
                    Err(why)
                }
                None => Ok(self.accept_request(kind, scope)),
            },
            Operator::Maintenance(on) => {
                self.maintenance = on;
                self.maintenance_at_ms = self.wall_ms().max(self.maintenance_at_ms + 1);
                self.send(PeerMessage::Maintenance {
                    on,
                    at_ms: self.maintenance_at_ms,
                });
                self.replan = true;
                Ok(serde_json::json!({"maintenance": on}))
            }
            Operator::Status => Ok(self.status()),
            Operator::Fence(node) | Operator::FenceConfirm(node)
                if node != self.local && node != self.peer =>
            {
                return Err(format!(
                    "{node} is not a node of this cluster (its nodes: {}, {})",
                    self.local, self.peer
                ));
            }
            Operator::Fence(node) => {
                let now = self.now;
                self.coordinator
                    .request(&node, "operator request (tandem fence)", false, now)
                    .map_err(|e| e.to_string())?;
                self.replan = true;
                Ok(serde_json::json!({"fencing": node}))
            }
            Operator::FenceConfirm(node) => {
                if node == self.local {
                    return Err("a node cannot confirm that it is itself down".into());
                }
                // A confirmation tells the cluster the node runs nothing any more; one
                // this node still hears is running (a partition healed, or never cut):
                // confirming it would let its groups start here while they run there.
                if matches!(
                    self.peer_state,
                    PeerState::Up | PeerState::ReturnedAfterPartition
                ) {
                    return Err(format!(
                        "{node} is up: this node hears its heartbeats, so it is not down. Power it off first (or `tandem fence {node}`); confirm once it is silent"
                    ));
                }
                tracing::warn!(%node, "operator confirms the node is down");
                let now = self.now;
                self.coordinator.operator_confirmed(&node, now);
                self.replan = true;
                Ok(serde_json::json!({"confirmed": node}))
            }
            Operator::FenceHistory => Ok(self.fencing_status()),
        };
        self.step();
        answer
    }

    fn action_done(
        &mut self,
        action: Option<ActionId>,
        group: &str,
        resource: &str,
        op: Op,
        result: ActionResult,
    ) {
        let now = self.now;
        let agent_action = match op {
            Op::Start | Op::Restart => Action::Start,
            Op::Stop => Action::Stop,
            Op::Probe => Action::Monitor,
        };
        let outcome = result.outcome(agent_action);
        let ok = matches!(outcome, Outcome::Ok | Outcome::NotRunning);
        let interval = self
            .config
            .group(group)
            .and_then(|g| g.resources.iter().find(|r| r.name == resource))
            .and_then(|r| r.monitor_interval)
            .filter(|d| !d.is_zero());
        let record = ActionRecord {
            time_ms: self.wall_ms(),
            group: group.to_string(),
            resource: resource.to_string(),
            action: op.name(),
            ok,
            result: result.to_string(),
        };
        if let Some(r) = self
            .resources
            .get_mut(&(group.to_string(), resource.to_string()))
        {
            let failed = |r: &mut LocalResource, op| {
                r.failures.push_back((op, now));
                if r.failures.len() > FAILURES_KEPT {
                    r.failures.pop_front();
                }
            };
            r.state = match (op, outcome) {
                (Op::Start | Op::Restart, Outcome::Ok) => ResourceState::Started,
                (Op::Start | Op::Restart, _) => {
                    failed(r, FailedOp::Start);
                    ResourceState::FailedStart
                }
                (Op::Stop, Outcome::Ok) => ResourceState::Stopped,
                (Op::Stop, _) => {
                    failed(r, FailedOp::Stop);
                    ResourceState::FailedStop
                }
                (Op::Probe, Outcome::Ok) => ResourceState::Started,
                (Op::Probe, Outcome::NotRunning) => ResourceState::Stopped,
                (Op::Probe, _) => {
                    failed(r, FailedOp::Monitor);
                    ResourceState::FailedMonitor
                }
            };
            if ok {
                tracing::info!(%group, %resource, action = record.action, "{result}");
            } else {
                tracing::error!(%group, %resource, action = record.action, "failed: {result}");
            }
            // A running resource is watched whatever becomes of the transition that
            // started it (a new event may abandon it before its monitor step).
            if r.state == ResourceState::Started && r.monitor.is_none() {
                r.monitor = interval.map(|i| (i, now + i));
            }
            r.last = Some(record.clone());
            self.remember(record);
        }
        match action {
            Some(action) => {
                if let Some(running) = &mut self.running {
                    running.in_flight.remove(&action);
                    if ok {
                        running.done.insert(action);
                    } else {
                        running.abandoned = true;
                    }
                }
            }
            None => {
                if let Some(Shutdown::Resources { in_flight, .. }) = &mut self.shutdown {
                    *in_flight = false;
                }
            }
        }
        self.send_report();
    }

    fn monitor_done(&mut self, group: &str, resource: &str, result: ActionResult) {
        let now = self.now;
        let time_ms = self.wall_ms();
        let Some(r) = self
            .resources
            .get_mut(&(group.to_string(), resource.to_string()))
        else {
            return;
        };
        r.monitor_in_flight = false;
        // A monitor that was cancelled by a stop in the meantime says nothing.
        if r.monitor.is_none() || r.state != ResourceState::Started {
            return;
        }
        if result.outcome(Action::Monitor) == Outcome::Ok {
            return;
        }
        tracing::error!(%group, %resource, "monitor failed: {result}");
        r.state = ResourceState::FailedMonitor;
        r.failures.push_back((FailedOp::Monitor, now));
        if r.failures.len() > FAILURES_KEPT {
            r.failures.pop_front();
        }
        r.monitor = None;
        let record = ActionRecord {
            time_ms,
            group: group.to_string(),
            resource: resource.to_string(),
            action: "monitor",
            ok: false,
            result: result.to_string(),
        };
        r.last = Some(record.clone());
        self.remember(record);
        self.send_report();
        self.replan = true;
    }

    fn remember(&mut self, record: ActionRecord) {
        if self.history.len() == ACTION_HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(record);
    }

    // ------------------------------------------------------------------ time

    /// Monitors that are due, the end of initdead, expired failures.
    fn timers(&mut self) {
        let now = self.now;
        self.coordinator.tick(now);
        self.outdater.tick(now);
        if self.shutdown.is_none() && !self.maintenance {
            let due: Vec<(String, String, Duration)> = self
                .resources
                .iter()
                .filter(|(_, r)| !r.monitor_in_flight && r.state == ResourceState::Started)
                .filter_map(|(k, r)| {
                    r.monitor
                        .filter(|(_, next)| *next <= now)
                        .map(|(i, _)| (k.0.clone(), k.1.clone(), i))
                })
                .collect();
            for (group, resource, interval) in due {
                if let Some(r) = self.resources.get_mut(&(group.clone(), resource.clone())) {
                    r.monitor = Some((interval, now + interval));
                    r.monitor_in_flight = true;
                }
                let timeout = self.resource_timeout(&group, &resource);
                self.commands.push_back(Command::RunMonitor {
                    group,
                    resource,
                    interval,
                    timeout,
                });
            }
        }
        // The end of initdead and the expiry of a failure change the view by themselves.
        let initdead_over = now >= self.started_at + self.config.cluster.initdead;
        if initdead_over != self.initdead_over {
            self.initdead_over = initdead_over;
            if self.peer_state == PeerState::Unknown {
                // Never heard within initdead: lost, as far as the witness goes.
                let holds = self.holds_any();
                self.witness.peer_lost(now, holds);
            }
            self.replan = true;
        }
        let before = self.witness.vote();
        let holds = self.holds_any();
        self.witness.tick(now, holds);
        self.witness_messages();
        self.replan |= self.witness.vote() != before;
        let mut expired = false;
        let timeouts: BTreeMap<String, Duration> = self
            .config
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.failure_timeout))
            .collect();
        for ((group, _), r) in &mut self.resources {
            let timeout = timeouts
                .get(group)
                .copied()
                .unwrap_or(tandem_config::defaults::FAILURE_TIMEOUT);
            let before = r.failures.len();
            r.failures.retain(|(_, at)| now < *at + timeout);
            expired |= r.failures.len() < before;
        }
        if expired {
            // The peer's planner counts our failures from our reports: tell it.
            self.send_report();
            self.replan = true;
        }
        if self.expire_claims() {
            self.replan = true;
        }
    }

    // ------------------------------------------------------------------ output

    pub(crate) fn peer_reachable(&self) -> bool {
        !matches!(
            self.peer_state,
            PeerState::Dead | PeerState::Unknown | PeerState::LeftCleanly
        )
    }

    /// Queues a message to the peer, if it can hear one.
    pub(crate) fn send(&mut self, message: PeerMessage) {
        if self.peer_reachable() {
            self.commands.push_back(Command::Send {
                message,
                tag: SendTag::Plain,
            });
        }
    }

    pub(crate) fn send_report(&mut self) {
        // Until every local resource has been probed this node does not know what it
        // runs; a report saying "unknown" would read as "may hold everything" and make
        // the peer fence a node that is only starting. The peer waits for the report.
        if self
            .resources
            .values()
            .any(|r| r.state == ResourceState::Unknown)
        {
            return;
        }
        if let Some(ok) = self.ping.get(&self.local).copied() {
            self.send(PeerMessage::Ping { ok });
        }
        // Before the report: a peer that was away when maintenance mode was last
        // switched (or has a fresh state directory) learns it before it acts on it.
        if self.maintenance_at_ms > 0 {
            self.send(PeerMessage::Maintenance {
                on: self.maintenance,
                at_ms: self.maintenance_at_ms,
            });
        }
        let mut groups: BTreeMap<String, BTreeMap<String, Reported>> = self
            .config
            .groups
            .iter()
            .map(|group| (group.name.clone(), BTreeMap::new()))
            .collect();
        for ((group, resource), r) in &self.resources {
            let failures: String = r
                .failures
                .iter()
                .map(|(op, _)| crate::messages::failure_code(*op))
                .collect();
            if r.state != ResourceState::Stopped || !failures.is_empty() {
                groups.entry(group.clone()).or_default().insert(
                    resource.clone(),
                    Reported {
                        state: crate::messages::state_code(r.state).to_string(),
                        failures,
                    },
                );
            }
        }
        for (group, resources) in groups {
            self.send(PeerMessage::Report { group, resources });
        }
    }

    /// The age at which a failure of `group` stops counting.
    pub(crate) fn failure_timeout(&self, group: &str) -> Duration {
        self.config
            .group(group)
            .map_or(tandem_config::defaults::FAILURE_TIMEOUT, |g| {
                g.failure_timeout
            })
    }

    pub(crate) fn resource_timeout(&self, group: &str, resource: &str) -> Duration {
        self.config
            .group(group)
            .and_then(|g| g.resources.iter().find(|r| r.name == resource))
            .map_or(Duration::from_secs(60), |r| r.timeout)
    }

    /// The disks that a group of this cluster promotes (the shell leaves their demotion
    /// at a clean stop to the groups).
    pub fn managed_disks(&self) -> Vec<String> {
        self.config
            .groups
            .iter()
            .flat_map(|g| &g.resources)
            .filter_map(|r| match &r.kind {
                ResourceKind::Disk { disk } => Some(disk.clone()),
                _ => None,
            })
            .collect()
    }
}
