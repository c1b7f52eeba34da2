//! The resource manager: the shell around the pure planner.
//!
//! ```text
//!  membership events ─┐                          ┌─► agent actions (worker threads)
//!  peer messages ─────┤                          │        │ results
//!  operator requests ─┼─► inputs ─► view ─► plan ─┤        ▼
//!  action results ────┤                          ├─► peer messages (reports, released)
//!  ticks (monitors) ──┘                          └─► fencing requests
//! ```
//!
//! Like Pacemaker's controller, it runs one transition at a time: actions whose
//! dependencies are done start (in parallel where the graph allows); a failed action or
//! a new outside event stops the transition from starting anything more, and once what
//! is in flight has finished the planner is asked again with the new view. The planner
//! never sees time: this module decides "initdead has passed" and "this failure has
//! expired" from the clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_agents::{Action, ActionResult, Agent, Outcome, Paths, RunOptions};
use tandem_config::{Config, FencingPolicy, ResourceKind};
use tandem_fencing::{
    Coordinator, CoordinatorConfig, DiskPolicy, FenceRecord, FenceResult, OutdateCommand, Outdater,
    PeerReach, ProgramPaths,
};
use tandem_membership::driver::Driver;
use tandem_membership::{Event, NodeId};
use tandem_policy::{
    ActionId, ActionKind, ClusterView, FailedOp, Failure, FenceState, GroupView, NoteLevel,
    PeerState, PeerView, Request, RequestKind, ResourceState, ResourceView, Scope, Transition,
};

use super::messages::{
    PeerMessage, Reported, failure_code, failure_from_code, state_code, state_from_code,
};
use crate::clock;

/// How often the manager looks at monitors and expiries when nothing else happens.
const TICK: Duration = Duration::from_millis(100);

/// Resource actions kept for status.
const ACTION_HISTORY_LEN: usize = 64;

/// How long a clean shutdown waits for the peer to acknowledge its goodbye.
const GOODBYE_WAIT: Duration = Duration::from_secs(3);

/// What the manager reacts to.
pub enum Input {
    /// A membership event.
    Membership(Event),
    /// A resource action finished on a worker thread.
    Done {
        action: ActionId,
        group: String,
        resource: String,
        op: Op,
        result: ActionResult,
    },
    /// A recurring monitor finished.
    MonitorDone {
        group: String,
        resource: String,
        result: ActionResult,
    },
    /// An operator request from the control socket.
    Operator(Operator, Sender<Result<serde_json::Value, String>>),
    /// The outside-connectivity verdict of this node changed (ipfail).
    Ping(bool),
    /// A fence device run finished.
    FenceDone { id: u64, result: FenceResult },
    /// A local disk's core needs its peer outdated or fenced (disk fencing).
    DiskFencePeer { disk: String },
    /// This node's copy of `disk` was outdated at the peer's request (or not: why).
    OutdateDone {
        disk: String,
        request: u64,
        result: Result<(), String>,
    },
    /// Stop every group, say goodbye, exit.
    Shutdown,
}

/// Operator requests the manager handles.
#[derive(Debug, Clone)]
pub enum Operator {
    /// `tandem standby SCOPE` / `tandem takeover SCOPE`.
    Request(RequestKind, Scope),
    /// `tandem maintenance on|off`.
    Maintenance(bool),
    /// `tandem fence NODE`: fence it now.
    Fence(String),
    /// `tandem fence confirm NODE`: the operator made sure it is down (meatware).
    FenceConfirm(String),
    /// `tandem fence history`.
    FenceHistory,
    /// `tandem status`: the resource part.
    Status,
}

/// The operation a worker ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Start.
    Start,
    /// Stop.
    Stop,
    /// Stop then start.
    Restart,
    /// A one-shot monitor (a probe).
    Probe,
}

struct LocalResource {
    state: ResourceState,
    failures: Vec<(FailedOp, Instant)>,
    /// The recurring monitor: interval and next due time; `None` = not monitored now.
    monitor: Option<(Duration, Instant)>,
    monitor_in_flight: bool,
    last: Option<ActionRecord>,
}

/// One finished action, for status.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    time_ms: u64,
    group: String,
    resource: String,
    action: &'static str,
    ok: bool,
    result: String,
}

struct Running {
    transition: Transition,
    done: BTreeSet<ActionId>,
    in_flight: BTreeSet<ActionId>,
    /// Fence actions in flight and their targets: done when the coordinator says the
    /// node is down, failed when it gives up.
    fences: BTreeMap<ActionId, String>,
    /// Start nothing more of this transition (an action failed or the view changed).
    abandoned: bool,
}

/// The manager's state; owned by its thread.
pub struct Manager {
    config: Arc<Config>,
    local: String,
    peer: String,
    peer_id: NodeId,
    started_at: Instant,
    driver: Arc<Driver>,
    inputs: Sender<Input>,
    agents: BTreeMap<(String, String), Result<Exec, String>>,
    resources: BTreeMap<(String, String), LocalResource>,
    peer_state: PeerState,
    /// Groups the peer's current incarnation has reported; its view is trusted once
    /// every configured group has been (reports come one group per message).
    peer_reported: BTreeSet<String>,
    peer_said_goodbye: bool,
    /// The disk service was told the peer is down (see `fencing_commands`).
    peer_down_told_disks: bool,
    peer_groups: BTreeMap<String, BTreeMap<String, ResourceView>>,
    requests: Vec<Request>,
    maintenance: bool,
    /// Outside connectivity of this node and of the peer (absent = not known yet,
    /// which the planner reads as reachable).
    ping: BTreeMap<String, bool>,
    coordinator: Coordinator,
    /// Disk fencing, the cluster's side: outdating the peer's copies (or fencing it).
    outdater: Outdater,
    /// Outdate requests in flight as reliable messages, to match their failure.
    outdate_messages: BTreeMap<tandem_membership::MessageId, u64>,
    fence_paths: ProgramPaths,
    running: Option<Running>,
    replan: bool,
    /// Whether initdead had passed at the last tick.
    initdead_over: bool,
    /// Unexpired local failures at the last tick (a drop means some expired).
    unexpired_failures: usize,
    last_transition: Transition,
    history: VecDeque<ActionRecord>,
}

impl Manager {
    /// A manager for `local`; resources start in state unknown (they are probed first).
    pub fn new(
        config: Arc<Config>,
        local: &str,
        peer_id: NodeId,
        driver: Arc<Driver>,
        inputs: Sender<Input>,
    ) -> anyhow::Result<Self> {
        let peer = tandem_policy::plan::peer_name(&config, local)
            .ok_or_else(|| anyhow::anyhow!("resource groups need exactly two nodes"))?
            .to_string();
        let paths = Paths::default();
        let mut agents = BTreeMap::new();
        let mut resources = BTreeMap::new();
        for group in &config.groups {
            for r in &group.resources {
                let key = (group.name.clone(), r.name.clone());
                let agent = match &r.kind {
                    ResourceKind::Disk { disk } => Ok(Exec::Disk(disk.clone())),
                    _ => Agent::new(r, &paths)
                        .map(Exec::Agent)
                        .map_err(|e| e.to_string()),
                };
                agents.insert(key.clone(), agent);
                resources.insert(
                    key,
                    LocalResource {
                        state: ResourceState::Unknown,
                        failures: Vec::new(),
                        monitor: None,
                        monitor_in_flight: false,
                        last: None,
                    },
                );
            }
        }
        let fence_config = Arc::clone(&config);
        Ok(Self {
            config,
            local: local.to_string(),
            peer,
            peer_id,
            started_at: clock::now(),
            driver,
            inputs,
            agents,
            resources,
            peer_state: PeerState::Unknown,
            peer_reported: BTreeSet::new(),
            peer_said_goodbye: false,
            peer_down_told_disks: false,
            peer_groups: BTreeMap::new(),
            requests: Vec::new(),
            maintenance: false,
            ping: BTreeMap::new(),
            coordinator: Coordinator::new(
                CoordinatorConfig::from_config(&fence_config, local),
                seed(),
                clock::now(),
                clock::wall_ms(),
            ),
            // A peer heard on the links answers within a few keepalives; one that does
            // not within a deadtime is as good as gone.
            outdater: Outdater::new(fence_config.cluster.deadtime),
            outdate_messages: BTreeMap::new(),
            fence_paths: crate::cmd::fence::program_paths(
                &[],
                tandem_fencing::device::EXTERNAL_PLUGIN_DIR.into(),
            ),
            running: None,
            replan: true,
            initdead_over: false,
            unexpired_failures: 0,
            last_transition: Transition::new(local),
            history: VecDeque::new(),
        })
    }

    /// Runs until shutdown; then stops every group and exits the process.
    pub fn run(mut self, inputs: Receiver<Input>) {
        loop {
            match inputs.recv_timeout(TICK) {
                Ok(Input::Shutdown) => {
                    self.shutdown(&inputs);
                    std::process::exit(0);
                }
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.tick();
            self.advance();
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Membership(event) => self.membership(event),
            Input::Done {
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
            Input::Operator(op, reply) => {
                let _ = reply.send(self.operator(op));
            }
            Input::Ping(ok) => {
                self.ping.insert(self.local.clone(), ok);
                self.send(&PeerMessage::Ping { ok });
                self.replan = true;
            }
            Input::FenceDone { id, result } => {
                tracing::info!(
                    device = %result.device,
                    target = ?result.target,
                    "fence device: {}",
                    result.outcome.summary()
                );
                self.coordinator.device_result(id, result, clock::now());
                self.fencing_commands();
            }
            Input::DiskFencePeer { disk } => self.disk_fence_peer(&disk),
            Input::OutdateDone {
                disk,
                request,
                result,
            } => {
                self.send(&PeerMessage::Outdated {
                    disk,
                    request,
                    error: result.err(),
                });
            }
            Input::Shutdown => {}
        }
    }

    // ------------------------------------------------------------------ disk fencing

    /// A local disk needs its peer's copy outdated, or the peer fenced.
    fn disk_fence_peer(&mut self, disk: &str) {
        let policy = match self.config.disk(disk).map(|d| d.fencing) {
            Some(tandem_config::DiskFencing::ResourceOnly) => DiskPolicy::ResourceOnly,
            Some(tandem_config::DiskFencing::ResourceAndStonith) => DiskPolicy::ResourceAndStonith,
            _ => return,
        };
        let reach = if self.coordinator.state(&self.peer).is_down() {
            PeerReach::Fenced
        } else if matches!(
            self.peer_state,
            PeerState::Up | PeerState::ReturnedAfterPartition
        ) {
            PeerReach::Up
        } else {
            PeerReach::Unreachable
        };
        tracing::warn!(%disk, ?reach, "disk fencing: the peer's copy must be outdated, or the peer fenced");
        self.outdater.request(disk, policy, reach, clock::now());
        self.outdate_commands();
    }

    /// Carries out what the outdater asks.
    fn outdate_commands(&mut self) {
        while let Some(command) = self.outdater.poll_command() {
            match command {
                OutdateCommand::Ask { disk, request } => {
                    match self.send(&PeerMessage::Outdate { disk, request }) {
                        Some(id) => {
                            self.outdate_messages.insert(id, request);
                        }
                        None => self.outdater.message_failed(request),
                    }
                }
                OutdateCommand::Outdated { disk } => crate::disks::peer_outdated(&disk),
                OutdateCommand::Fenced { .. } => crate::disks::peer_fenced(),
                OutdateCommand::Unreachable { disk } => crate::disks::peer_unreachable(&disk),
                OutdateCommand::Fence { reason } => {
                    tracing::error!(peer = %self.peer, "disk fencing: fencing the peer ({reason})");
                    let now = clock::now();
                    match self
                        .coordinator
                        .request(&self.peer.clone(), &reason, false, now)
                    {
                        Ok(()) => self.fencing_commands(),
                        Err(err) => tracing::error!("disk fencing: fence refused: {err}"),
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ inputs

    fn membership(&mut self, event: Event) {
        match event {
            Event::NodeUp { node, .. } if node == self.peer_id => {
                if self.peer_state != PeerState::ReturnedAfterPartition {
                    self.peer_state = PeerState::Up;
                }
                self.peer_said_goodbye = false;
                self.send_report();
                self.replan = true;
            }
            Event::NodeDead { node, .. } if node == self.peer_id => {
                self.peer_state = if self.peer_said_goodbye {
                    PeerState::LeftCleanly
                } else {
                    PeerState::Dead
                };
                self.outdater.peer_unreachable();
                self.outdate_commands();
                self.replan = true;
            }
            Event::NodeReturnedAfterPartition { node, .. } if node == self.peer_id => {
                self.peer_state = PeerState::ReturnedAfterPartition;
                self.peer_reported.clear();
                self.send_report();
                self.replan = true;
            }
            Event::NodeRestarted { node, .. } if node == self.peer_id => {
                // A new incarnation has lost its state: it runs nothing until it reports.
                self.peer_state = PeerState::Up;
                self.peer_reported.clear();
                self.peer_said_goodbye = false;
                self.peer_groups.clear();
                self.coordinator
                    .node_returned_with_new_incarnation(&self.peer);
                self.ping.remove(&self.peer.clone());
                self.send_report();
                self.replan = true;
            }
            Event::MessageFailed { id, .. } => {
                if let Some(request) = self.outdate_messages.remove(&id) {
                    self.outdater.message_failed(request);
                    self.outdate_commands();
                }
            }
            Event::MessageAcked { id, .. } => {
                self.outdate_messages.remove(&id);
            }
            Event::Message { from, payload } if from == self.peer_id => {
                match PeerMessage::decode(&payload) {
                    Some(m) => self.peer_message(m),
                    None => tracing::warn!("malformed cluster message from {} dropped", self.peer),
                }
            }
            _ => {}
        }
    }

    fn peer_message(&mut self, message: PeerMessage) {
        match message {
            PeerMessage::Report { g } => {
                // One report per group (so that a large cluster never outgrows one
                // message); each replaces what was known of its group.
                for (group, rs) in g {
                    let rs = rs
                        .into_iter()
                        .map(|(r, reported)| {
                            let view = ResourceView {
                                state: state_from_code(&reported.s),
                                failures: reported
                                    .f
                                    .chars()
                                    .filter_map(failure_from_code)
                                    .map(|op| Failure { op, expired: false })
                                    .collect(),
                            };
                            (r, view)
                        })
                        .collect();
                    self.peer_reported.insert(group.clone());
                    self.peer_groups.insert(group, rs);
                }
            }
            PeerMessage::Released { group } => {
                tracing::info!(%group, peer = %self.peer, "peer released group");
            }
            PeerMessage::FenceMe { reason } => {
                tracing::error!(peer = %self.peer, %reason, "peer asks to be fenced");
            }
            PeerMessage::Request { node, kind, scope } => {
                tracing::info!(%node, ?kind, ?scope, "operator request from the peer");
                self.requests.push(Request { node, kind, scope });
            }
            PeerMessage::Maintenance { on } => {
                tracing::info!(on, "maintenance mode set by the peer");
                self.maintenance = on;
            }
            PeerMessage::Fence { r } => match FenceRecord::from_json(r.as_bytes()) {
                Ok(record) => {
                    tracing::info!(target = %record.target, "fencing record from the peer: {}", record.outcome.summary());
                    self.coordinator.peer_reported(record, clock::now());
                    self.fencing_commands();
                }
                Err(err) => tracing::warn!("malformed fencing record from the peer: {err}"),
            },
            PeerMessage::Ping { ok } => {
                self.ping.insert(self.peer.clone(), ok);
            }
            PeerMessage::Outdate { disk, request } => {
                tracing::warn!(%disk, peer = %self.peer, "the peer lost its replication link: outdating this copy");
                let inputs = self.inputs.clone();
                std::thread::spawn(move || {
                    let result = crate::disks::outdate_local(&disk);
                    let _ = inputs.send(Input::OutdateDone {
                        disk,
                        request,
                        result,
                    });
                });
            }
            PeerMessage::Outdated {
                disk,
                request,
                error,
            } => {
                match &error {
                    None => tracing::info!(%disk, peer = %self.peer, "the peer outdated its copy"),
                    Some(why) => {
                        tracing::warn!(%disk, peer = %self.peer, "the peer did not outdate its copy: {why}")
                    }
                }
                self.outdater
                    .reply(&disk, request, error.map_or(Ok(()), Err));
                self.outdate_commands();
            }
            PeerMessage::Goodbye => {
                tracing::info!(peer = %self.peer, "peer stopped its groups and is leaving");
                self.peer_said_goodbye = true;
                // It runs nothing from here on: take over now, not a deadtime later when
                // its silence makes it dead (Heartbeat's graceful handover).
                self.peer_state = PeerState::LeftCleanly;
                self.coordinator.cancel(&self.peer);
                self.peer_groups.clear();
                self.peer_reported = self.config.groups.iter().map(|g| g.name.clone()).collect();
            }
        }
        self.replan = true;
    }

    fn operator(&mut self, op: Operator) -> Result<serde_json::Value, String> {
        match op {
            Operator::Request(..) if self.config.groups.is_empty() => {
                Err("this cluster has no resource groups: nothing to move".into())
            }
            Operator::Request(kind, scope) => {
                let request = Request {
                    node: self.local.clone(),
                    kind,
                    scope,
                };
                self.send(&PeerMessage::Request {
                    node: request.node.clone(),
                    kind,
                    scope,
                });
                self.requests.push(request);
                self.replan = true;
                Ok(serde_json::json!({"accepted": true}))
            }
            Operator::Maintenance(on) => {
                self.maintenance = on;
                self.send(&PeerMessage::Maintenance { on });
                self.replan = true;
                Ok(serde_json::json!({"maintenance": on}))
            }
            Operator::Status => Ok(self.status()),
            Operator::Fence(node) => {
                self.coordinator
                    .request(
                        &node,
                        "operator request (tandem fence)",
                        false,
                        clock::now(),
                    )
                    .map_err(|e| e.to_string())?;
                self.fencing_commands();
                self.replan = true;
                Ok(serde_json::json!({"fencing": node}))
            }
            Operator::FenceConfirm(node) => {
                if node == self.local {
                    return Err("a node cannot confirm that it is itself down".into());
                }
                tracing::warn!(%node, "operator confirms the node is down");
                self.coordinator.operator_confirmed(&node, clock::now());
                self.fencing_commands();
                self.replan = true;
                Ok(serde_json::json!({"confirmed": node}))
            }
            Operator::FenceHistory => Ok(self.fencing_status()),
        }
    }

    fn action_done(
        &mut self,
        action: ActionId,
        group: &str,
        resource: &str,
        op: Op,
        result: ActionResult,
    ) {
        let now = clock::now();
        let agent_action = match op {
            Op::Start | Op::Restart => Action::Start,
            Op::Stop => Action::Stop,
            Op::Probe => Action::Monitor,
        };
        let outcome = result.outcome(agent_action);
        let ok = matches!(outcome, Outcome::Ok | Outcome::NotRunning);
        let key = (group.to_string(), resource.to_string());
        let interval = self
            .config
            .group(group)
            .and_then(|g| g.resources.iter().find(|r| r.name == resource))
            .and_then(|r| r.monitor_interval)
            .filter(|d| !d.is_zero());
        if let Some(r) = self.resources.get_mut(&key) {
            r.state = match (op, outcome) {
                (Op::Start | Op::Restart, Outcome::Ok) => ResourceState::Started,
                (Op::Start | Op::Restart, _) => {
                    r.failures.push((FailedOp::Start, now));
                    ResourceState::FailedStart
                }
                (Op::Stop, Outcome::Ok) => ResourceState::Stopped,
                (Op::Stop, _) => {
                    r.failures.push((FailedOp::Stop, now));
                    ResourceState::FailedStop
                }
                (Op::Probe, Outcome::Ok) => ResourceState::Started,
                (Op::Probe, Outcome::NotRunning) => ResourceState::Stopped,
                (Op::Probe, _) => {
                    r.failures.push((FailedOp::Monitor, now));
                    ResourceState::FailedMonitor
                }
            };
            let record = ActionRecord {
                time_ms: clock::wall_ms(),
                group: group.to_string(),
                resource: resource.to_string(),
                action: match op {
                    Op::Start => "start",
                    Op::Stop => "stop",
                    Op::Restart => "restart",
                    Op::Probe => "probe",
                },
                ok,
                result: result.to_string(),
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
        if let Some(running) = &mut self.running {
            running.in_flight.remove(&action);
            if ok {
                running.done.insert(action);
            } else {
                running.abandoned = true;
            }
        }
        self.send_report();
    }

    fn monitor_done(&mut self, group: &str, resource: &str, result: ActionResult) {
        let now = clock::now();
        let key = (group.to_string(), resource.to_string());
        let Some(r) = self.resources.get_mut(&key) else {
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
        r.failures.push((FailedOp::Monitor, now));
        r.monitor = None;
        let record = ActionRecord {
            time_ms: clock::wall_ms(),
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

    fn tick(&mut self) {
        let now = clock::now();
        self.coordinator.tick(now);
        self.fencing_commands();
        self.outdater.tick(now);
        self.outdate_commands();
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
            if self.maintenance {
                break;
            }
            let key = (group.clone(), resource.clone());
            if let Some(r) = self.resources.get_mut(&key) {
                r.monitor = Some((interval, now + interval));
                r.monitor_in_flight = true;
            }
            let Some(Ok(agent)) = self.agents.get(&key).cloned() else {
                continue;
            };
            let timeout = self.resource_timeout(&group, &resource);
            let inputs = self.inputs.clone();
            std::thread::spawn(move || {
                let mut options = RunOptions::new(timeout);
                options.interval = interval;
                let result = agent.run(Action::Monitor, &options);
                let _ = inputs.send(Input::MonitorDone {
                    group,
                    resource,
                    result,
                });
            });
        }
        // The end of initdead and the expiry of a failure change the view by themselves.
        // Counted, not compared with a window of one tick: a late tick must not miss the
        // moment initdead ends or a failure expires.
        let initdead_over = now >= self.started_at + self.config.cluster.initdead;
        if initdead_over != self.initdead_over {
            self.initdead_over = initdead_over;
            self.replan = true;
        }
        let mut unexpired = 0;
        for ((group, _), r) in &self.resources {
            let timeout = self.failure_timeout(group);
            unexpired += r
                .failures
                .iter()
                .filter(|(_, at)| now < *at + timeout)
                .count();
        }
        let expired = unexpired < self.unexpired_failures;
        self.unexpired_failures = unexpired;
        if expired {
            // The peer's planner counts our failures from our reports: tell it.
            self.send_report();
            self.replan = true;
        }
    }

    // ------------------------------------------------------------------ planning

    fn advance(&mut self) {
        if let Some(running) = &self.running {
            let finished = running.transition.actions.iter().all(|a| {
                matches!(a.kind, ActionKind::WaitFor { .. }) || running.done.contains(&a.id)
            });
            if running.in_flight.is_empty() && (running.abandoned || self.replan || finished) {
                if finished && !running.abandoned {
                    // A finished transition always leads to a fresh look: the next plan
                    // is usually empty, but a partial group may continue.
                    self.replan = true;
                }
                self.running = None;
            } else if self.replan {
                if let Some(r) = &mut self.running {
                    r.abandoned = true;
                }
            }
        }
        if self.running.is_none() && self.replan {
            self.replan = false;
            let view = self.view();
            let transition = tandem_policy::plan(&self.config, &view);
            if let Err(violation) = tandem_policy::check(&self.config, &view, &transition) {
                // Never carry out a plan that breaks a safety rule; keep the last one for
                // status and wait for the view to change.
                tracing::error!("planner produced an unsafe transition, not executed: {violation}");
                return;
            }
            if transition != self.last_transition {
                log_transition(&transition);
            }
            self.last_transition = transition.clone();
            self.running = Some(Running {
                transition,
                done: BTreeSet::new(),
                in_flight: BTreeSet::new(),
                fences: BTreeMap::new(),
                abandoned: false,
            });
        }
        self.start_runnable();
    }

    fn start_runnable(&mut self) {
        let Some(running) = &self.running else {
            return;
        };
        if running.abandoned {
            return;
        }
        let runnable: Vec<_> = running
            .transition
            .actions
            .iter()
            .filter(|a| !running.done.contains(&a.id) && !running.in_flight.contains(&a.id))
            .filter(|a| a.after.iter().all(|d| running.done.contains(d)))
            .cloned()
            .collect();
        for action in runnable {
            self.start_action(action.id, action.kind);
        }
    }

    fn start_action(&mut self, id: ActionId, kind: ActionKind) {
        let now = clock::now();
        let mark = |m: &mut Self, done: bool| {
            if let Some(r) = &mut m.running {
                if done {
                    r.done.insert(id);
                } else {
                    r.in_flight.insert(id);
                }
            }
        };
        match kind {
            ActionKind::WaitFor { .. } => {}
            ActionKind::Start { group, resource } => {
                mark(self, false);
                self.spawn(id, group, resource, Op::Start, ResourceState::Starting);
            }
            ActionKind::Stop { group, resource } => {
                mark(self, false);
                self.spawn(id, group, resource, Op::Stop, ResourceState::Stopping);
            }
            ActionKind::Restart { group, resource } => {
                mark(self, false);
                self.spawn(id, group, resource, Op::Restart, ResourceState::Stopping);
            }
            ActionKind::Monitor {
                group,
                resource,
                interval_ms: None,
            } => {
                mark(self, false);
                let state = self
                    .resources
                    .get(&(group.clone(), resource.clone()))
                    .map_or(ResourceState::Unknown, |r| r.state);
                self.spawn(id, group, resource, Op::Probe, state);
            }
            ActionKind::Monitor {
                group,
                resource,
                interval_ms: Some(ms),
            } => {
                let interval = Duration::from_millis(ms);
                if let Some(r) = self.resources.get_mut(&(group, resource)) {
                    r.monitor = Some((interval, now + interval));
                }
                mark(self, true);
            }
            ActionKind::NotifyPeer { message } => {
                let m = match message {
                    tandem_policy::PeerMessage::Released { group } => {
                        PeerMessage::Released { group }
                    }
                    tandem_policy::PeerMessage::FenceMe { reason } => {
                        PeerMessage::FenceMe { reason }
                    }
                };
                self.send(&m);
                mark(self, true);
            }
            ActionKind::Fence {
                node,
                reason,
                delayed,
            } => match self.coordinator.request(&node, &reason, delayed, now) {
                Ok(()) => {
                    if let Some(r) = &mut self.running {
                        r.in_flight.insert(id);
                        r.fences.insert(id, node);
                    }
                    self.fencing_commands();
                }
                Err(err) => {
                    tracing::error!(%node, "fencing refused: {err}");
                    if let Some(r) = &mut self.running {
                        r.abandoned = true;
                    }
                    self.replan = true;
                }
            },
        }
    }

    fn spawn(
        &mut self,
        id: ActionId,
        group: String,
        resource: String,
        op: Op,
        state: ResourceState,
    ) {
        let key = (group.clone(), resource.clone());
        if let Some(r) = self.resources.get_mut(&key) {
            r.state = state;
            if matches!(op, Op::Stop | Op::Restart) {
                r.monitor = None;
            }
        }
        self.send_report();
        let agent = self.agents.get(&key).cloned();
        let timeout = self.resource_timeout(&group, &resource);
        let inputs = self.inputs.clone();
        tracing::info!(%group, %resource, ?op, "running");
        std::thread::spawn(move || {
            let options = RunOptions::new(timeout);
            let result = match agent {
                Some(Ok(agent)) => match op {
                    Op::Start => agent.run(Action::Start, &options),
                    Op::Stop => agent.run(Action::Stop, &options),
                    Op::Probe => agent.run(Action::Monitor, &options),
                    Op::Restart => {
                        let stopped = agent.run(Action::Stop, &options);
                        if stopped.outcome(Action::Stop) == Outcome::Ok {
                            agent.run(Action::Start, &options)
                        } else {
                            stopped
                        }
                    }
                },
                Some(Err(why)) => ActionResult {
                    exec_status: tandem_agents::ExecStatus::NotInstalled,
                    exit: None,
                    reason: why,
                    duration: Duration::ZERO,
                    output: String::new(),
                },
                None => ActionResult {
                    exec_status: tandem_agents::ExecStatus::Error("no such resource".into()),
                    exit: None,
                    reason: String::new(),
                    duration: Duration::ZERO,
                    output: String::new(),
                },
            };
            let _ = inputs.send(Input::Done {
                action: id,
                group,
                resource,
                op,
                result,
            });
        });
    }

    /// Carries out what the fencing coordinator asks (device runs on worker threads,
    /// records to the peer), then settles fence actions of the running transition.
    fn fencing_commands(&mut self) {
        // Once the peer is known down (fenced, or confirmed by an operator), its
        // replication links are dead whatever TCP thinks: drop them, once.
        let peer_state = self.coordinator.state(&self.peer);
        let peer_down = peer_state.is_down();
        if peer_down && !self.peer_down_told_disks {
            crate::disks::peer_fenced();
            self.outdater.peer_fenced();
        }
        if peer_state == tandem_fencing::FenceState::Failed {
            // Disks that waited for this fence keep waiting: only an operator's
            // confirmation (or a later success) lets them go on.
            self.outdater.fence_failed();
        }
        self.peer_down_told_disks = peer_down;
        while let Some(command) = self.coordinator.poll_command() {
            match command {
                tandem_fencing::Command::RunDevice { .. } => {
                    let devices = self.config.fence_devices.clone();
                    let paths = self.fence_paths.clone();
                    let inputs = self.inputs.clone();
                    std::thread::spawn(move || {
                        if let Some((id, result)) =
                            tandem_fencing::execute(&devices, &command, &paths)
                        {
                            let _ = inputs.send(Input::FenceDone { id, result });
                        }
                    });
                }
                tandem_fencing::Command::SendToPeer(record) => {
                    let r = String::from_utf8_lossy(&record.to_json()).into_owned();
                    self.send(&PeerMessage::Fence { r });
                }
            }
        }
        let Some(running) = &mut self.running else {
            return;
        };
        let mut settled = Vec::new();
        for (id, node) in &running.fences {
            match self.coordinator.state(node) {
                s if s.is_down() => settled.push((*id, true)),
                tandem_fencing::FenceState::Failed => settled.push((*id, false)),
                _ => {}
            }
        }
        for (id, ok) in settled {
            running.fences.remove(&id);
            running.in_flight.remove(&id);
            if ok {
                running.done.insert(id);
            } else {
                running.abandoned = true;
                self.replan = true;
            }
        }
    }

    fn fencing_status(&self) -> serde_json::Value {
        let history = self.coordinator.history().to_json();
        serde_json::json!({
            "states": self.coordinator.states(),
            "history": history,
            "devices": self.config.fence_devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        })
    }

    /// The age at which a failure of `group` stops counting.
    fn failure_timeout(&self, group: &str) -> Duration {
        self.config
            .group(group)
            .map_or(tandem_config::defaults::FAILURE_TIMEOUT, |g| {
                g.failure_timeout
            })
    }

    fn resource_timeout(&self, group: &str, resource: &str) -> Duration {
        self.config
            .group(group)
            .and_then(|g| g.resources.iter().find(|r| r.name == resource))
            .map_or(Duration::from_secs(60), |r| r.timeout)
    }

    /// What the planner is told.
    fn view(&self) -> ClusterView {
        let now = clock::now();
        let mut groups: BTreeMap<String, GroupView> = BTreeMap::new();
        for g in &self.config.groups {
            groups
                .entry(g.name.clone())
                .or_default()
                .migration_threshold = Some(g.migration_threshold);
        }
        for ((group, resource), r) in &self.resources {
            let timeout = self.failure_timeout(group);
            let failures = r
                .failures
                .iter()
                .map(|(op, at)| Failure {
                    op: *op,
                    expired: now >= *at + timeout,
                })
                .collect();
            groups
                .entry(group.clone())
                .or_default()
                .on
                .entry(self.local.clone())
                .or_default()
                .insert(
                    resource.clone(),
                    ResourceView {
                        state: r.state,
                        failures,
                    },
                );
        }
        for (group, rs) in &self.peer_groups {
            let on = groups
                .entry(group.clone())
                .or_default()
                .on
                .entry(self.peer.clone())
                .or_default();
            for (resource, view) in rs {
                on.insert(resource.clone(), view.clone());
            }
        }
        ClusterView {
            description: None,
            local: self.local.clone(),
            initdead_passed: now >= self.started_at + self.config.cluster.initdead,
            maintenance: self.maintenance,
            peer: PeerView {
                // A goodbye already made it `LeftCleanly`, so it is never `Dead` with one.
                state: self.peer_state,
                reported: self
                    .config
                    .groups
                    .iter()
                    .all(|g| self.peer_reported.contains(&g.name)),
            },
            fencing: self
                .coordinator
                .states()
                .into_iter()
                .map(|(node, state)| (node, policy_fence_state(state)))
                .collect(),
            ping: self.ping.clone(),
            requests: self.requests.clone(),
            groups,
        }
    }

    // ------------------------------------------------------------------ output

    fn send(&self, message: &PeerMessage) -> Option<tandem_membership::MessageId> {
        if matches!(
            self.peer_state,
            PeerState::Dead | PeerState::Unknown | PeerState::LeftCleanly
        ) {
            return None;
        }
        match self.driver.send_message(self.peer_id, message.encode()) {
            Ok(id) => Some(id),
            Err(err) => {
                tracing::warn!("cluster message to {} not sent: {err}", self.peer);
                None
            }
        }
    }

    fn send_report(&self) {
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
        if let Some(ok) = self.ping.get(&self.local) {
            self.send(&PeerMessage::Ping { ok: *ok });
        }
        let now = clock::now();
        let mut g: BTreeMap<String, BTreeMap<String, Reported>> = self
            .config
            .groups
            .iter()
            .map(|group| (group.name.clone(), BTreeMap::new()))
            .collect();
        for ((group, resource), r) in &self.resources {
            let timeout = self.failure_timeout(group);
            let f: String = r
                .failures
                .iter()
                .filter(|(_, at)| now < *at + timeout)
                .map(|(op, _)| failure_code(*op))
                .collect();
            if r.state != ResourceState::Stopped || !f.is_empty() {
                g.entry(group.clone()).or_default().insert(
                    resource.clone(),
                    Reported {
                        s: state_code(r.state).to_string(),
                        f,
                    },
                );
            }
        }
        for (group, rs) in g {
            self.send(&PeerMessage::Report {
                g: BTreeMap::from([(group, rs)]),
            });
        }
    }

    /// Clean shutdown: let in-flight actions finish, stop every local resource right to
    /// left, tell the peer (released + goodbye), wait briefly for its acknowledgement.
    fn shutdown(&mut self, inputs: &Receiver<Input>) {
        tracing::info!("shutting down: stopping every group on this node");
        self.maintenance = false;
        while self
            .running
            .as_ref()
            .is_some_and(|r| !r.in_flight.is_empty())
        {
            match inputs.recv_timeout(TICK) {
                Ok(Input::Done {
                    action,
                    group,
                    resource,
                    op,
                    result,
                }) => self.action_done(action, &group, &resource, op, result),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let paths_ok = self.config.groups.clone();
        for group in paths_ok.iter() {
            let mut released = false;
            for r in group.resources.iter().rev() {
                let key = (group.name.clone(), r.name.clone());
                let state = self
                    .resources
                    .get(&key)
                    .map_or(ResourceState::Stopped, |r| r.state);
                if state == ResourceState::Stopped {
                    continue;
                }
                released = true;
                if let Some(lr) = self.resources.get_mut(&key) {
                    lr.monitor = None;
                }
                let result = match self.agents.get(&key) {
                    Some(Ok(exec)) => exec.run(Action::Stop, &RunOptions::new(r.timeout)),
                    _ => continue,
                };
                let ok = result.outcome(Action::Stop) == Outcome::Ok;
                tracing::info!(group = %group.name, resource = %r.name, ok, "stop at shutdown: {result}");
                if let Some(lr) = self.resources.get_mut(&key) {
                    lr.state = if ok {
                        ResourceState::Stopped
                    } else {
                        ResourceState::FailedStop
                    };
                }
            }
            if released {
                self.send(&PeerMessage::Released {
                    group: group.name.clone(),
                });
            }
        }
        let failed_stop = self
            .resources
            .values()
            .any(|r| r.state == ResourceState::FailedStop);
        self.send_report();
        if failed_stop {
            tracing::error!(
                "a resource could not be stopped: leaving without goodbye, the peer must fence this node"
            );
            return;
        }
        // Each secondary disk whose up-to-date peer goes on says, durably, that this
        // copy is now stale: the peer writes alone without having to fence this node.
        crate::disks::leave();
        let Some(goodbye) = self.send(&PeerMessage::Goodbye) else {
            tracing::info!("all groups stopped; the peer is not up to hear a goodbye");
            return;
        };
        // Give the reliable layer time to deliver (and retransmit) the goodbye.
        let deadline = clock::now() + GOODBYE_WAIT;
        while clock::now() < deadline {
            match inputs.recv_timeout(TICK) {
                Ok(Input::Membership(Event::MessageAcked { id, .. })) if id == goodbye => {
                    tracing::info!("all groups stopped; the peer acknowledged our goodbye");
                    return;
                }
                Ok(Input::Membership(Event::MessageFailed { id, .. })) if id == goodbye => break,
                Err(RecvTimeoutError::Disconnected) => break,
                _ => {}
            }
        }
        tracing::warn!("all groups stopped; the peer did not acknowledge our goodbye");
    }

    /// The resource part of `tandem status --json`.
    fn status(&self) -> serde_json::Value {
        let now = clock::now();
        let mut groups = Vec::new();
        for group in &self.config.groups {
            let mut resources = Vec::new();
            let mut local_states = Vec::new();
            let peer_states = self.peer_groups.get(&group.name);
            for r in &group.resources {
                let key = (group.name.clone(), r.name.clone());
                let lr = self.resources.get(&key);
                let state = lr.map_or(ResourceState::Unknown, |l| l.state);
                local_states.push(state);
                let failcount = lr.map_or(0, |l| {
                    l.failures
                        .iter()
                        .filter(|(_, at)| now < *at + group.failure_timeout)
                        .count()
                });
                let peer_state = peer_states
                    .and_then(|p| p.get(&r.name))
                    .map_or(ResourceState::Stopped, |v| v.state);
                resources.push(serde_json::json!({
                    "name": r.name,
                    "type": r.kind.type_name(),
                    "disk": match &r.kind {
                        ResourceKind::Disk { disk } => Some(disk),
                        _ => None,
                    },
                    "state": state_code(state),
                    "peer_state": state_code(peer_state),
                    "failcount": failcount,
                    "monitor_interval_ms": r.monitor_interval.map(|d| d.as_millis() as u64),
                    "last_action": lr.and_then(|l| l.last.clone()),
                }));
            }
            let local_all = local_states.iter().all(|s| *s == ResourceState::Started);
            let local_any = local_states.iter().any(|s| s.holds());
            let peer_all = !group.resources.is_empty()
                && group.resources.iter().all(|r| {
                    peer_states
                        .and_then(|p| p.get(&r.name))
                        .is_some_and(|v| v.state == ResourceState::Started)
                });
            let owner = if local_all {
                serde_json::Value::from(self.local.clone())
            } else if peer_all {
                serde_json::Value::from(self.peer.clone())
            } else if local_any {
                serde_json::Value::from(self.local.clone())
            } else {
                serde_json::Value::Null
            };
            let blocked = self
                .last_transition
                .blocked
                .iter()
                .find(|b| b.group == group.name)
                .map(|b| b.reason.clone());
            let state = if blocked.is_some() {
                "blocked"
            } else if local_all || peer_all {
                "started"
            } else if local_states.iter().any(|s| {
                matches!(
                    s,
                    ResourceState::FailedStart
                        | ResourceState::FailedStop
                        | ResourceState::FailedMonitor
                )
            }) {
                "failed"
            } else if local_any {
                "partial"
            } else {
                "stopped"
            };
            groups.push(serde_json::json!({
                "name": group.name,
                "home": group.home,
                "owner": owner,
                "state": state,
                "blocked": blocked,
                "resources": resources,
            }));
        }
        let unsafe_notes: Vec<&str> = self
            .last_transition
            .notes
            .iter()
            .filter(|n| n.level == NoteLevel::Unsafe)
            .map(|n| n.text.as_str())
            .collect();
        serde_json::json!({
            "groups": groups,
            "maintenance": self.maintenance,
            "ping": self.ping,
            "fencing": self.fencing_status(),
            "fencing_policy": match self.config.cluster.fencing {
                FencingPolicy::None => "none",
                _ => "required",
            },
            "unsafe": unsafe_notes,
            "disk_fencing": self.outdater.waiting(),
            "peer_state": format!("{:?}", self.peer_state),
            "actions": self.history,
            "transition": tandem_policy::render::summary(&self.config, &self.view(), &self.last_transition),
        })
    }
}

/// The planner's name for a coordinator state (the two enums mirror each other).
fn policy_fence_state(state: tandem_fencing::FenceState) -> FenceState {
    use tandem_fencing::FenceState as F;
    match state {
        F::NotNeeded => FenceState::NotNeeded,
        F::Required => FenceState::Required,
        F::InProgress => FenceState::InProgress,
        F::FencedOk => FenceState::FencedOk,
        F::Failed => FenceState::Failed,
        F::ConfirmedByOperator => FenceState::ConfirmedByOperator,
    }
}

/// A seed for the coordinator's retry jitter: different on every start and node.
fn seed() -> u64 {
    clock::wall_ms() ^ (u64::from(std::process::id()) << 32)
}

fn log_transition(t: &Transition) {
    for a in &t.actions {
        tracing::info!(
            "plan #{} {}{}",
            a.id.0,
            tandem_policy::render::describe(&a.kind),
            if a.after.is_empty() {
                String::new()
            } else {
                format!(
                    " after {}",
                    a.after
                        .iter()
                        .map(|d| format!("#{}", d.0))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            }
        );
    }
    for b in &t.blocked {
        tracing::warn!(group = %b.group, "blocked: {}", b.reason);
    }
    for n in &t.notes {
        match n.level {
            NoteLevel::Unsafe => tracing::error!("UNSAFE: {}", n.text),
            NoteLevel::Info => tracing::info!("{}", n.text),
        }
    }
}

/// Starts the manager thread; returns the sender its inputs go to.
pub fn spawn(manager: Manager, inputs: Receiver<Input>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("manager".into())
        .spawn(move || manager.run(inputs))?;
    Ok(())
}

/// A fresh input channel.
pub fn channel() -> (Sender<Input>, Receiver<Input>) {
    mpsc::channel()
}

/// What runs a resource's actions: an agent from `tandem-agents`, or this node's disk
/// service for a `disk` resource (start = promote, stop = demote, monitor = role).
#[derive(Debug, Clone)]
pub enum Exec {
    /// A built-in, OCF, LSB or systemd agent.
    Agent(Agent),
    /// The replicated disk of that name (Heartbeat's `datadisk::NAME`).
    Disk(String),
}

impl Exec {
    /// Runs one action, blocking the calling (worker) thread.
    pub fn run(&self, action: Action, options: &RunOptions) -> ActionResult {
        let disk = match self {
            Exec::Agent(agent) => return agent.run(action, options),
            Exec::Disk(disk) => disk,
        };
        let start = clock::now();
        let deadline = start + options.timeout;
        use crate::disks::{Caller, DiskCommand};
        let is_up =
            || crate::disks::request(disk, DiskCommand::Status, Caller::Group).body["up"] == true;
        match action {
            // A disk that is not up is certainly not primary here.
            Action::Monitor | Action::Stop if !is_up() => {
                let exit = if action == Action::Stop {
                    tandem_agents::OcfExit::Success
                } else {
                    tandem_agents::OcfExit::NotRunning
                };
                let duration = clock::now().saturating_duration_since(start);
                return ActionResult::done(exit, format!("disk {disk} is not up"), duration);
            }
            // The disk service brings disks up in the background at agent start.
            Action::Start => {
                while !is_up() && clock::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            _ => {}
        }
        let command = match action {
            Action::Start => DiskCommand::Primary { force: false },
            Action::Stop => DiskCommand::Secondary,
            _ => DiskCommand::Status,
        };
        let response = crate::disks::request(disk, command, Caller::Group);
        let duration = clock::now().saturating_duration_since(start);
        if let Some(error) = response.error {
            return ActionResult::done(tandem_agents::OcfExit::Generic, error, duration);
        }
        let exit = match action {
            Action::Monitor => match response.body["role"].as_str() {
                Some("primary") => tandem_agents::OcfExit::Success,
                Some(_) => tandem_agents::OcfExit::NotRunning,
                None => tandem_agents::OcfExit::Generic,
            },
            _ => tandem_agents::OcfExit::Success,
        };
        ActionResult::done(exit, format!("disk {disk}"), duration)
    }
}
