//! The planner: [`plan`] turns a configuration and a [`ClusterView`] into a
//! [`Transition`] for the local node.
//!
//! The order of decisions, each one documented in docs/policy.md:
//!
//! 1. Maintenance mode: nothing at all.
//! 2. The peer: can its reports be trusted (up and reported), must we wait for it
//!    (initdead, first report), must it be fenced (dead, never heard after initdead, a
//!    failed stop, lost a partition race), or is it known to run nothing (left cleanly,
//!    fenced, confirmed by an operator)?
//! 3. Per group, in configuration order: a failed stop here blocks the group; an action
//!    in flight waits; unknown resources are probed first; then the group is *placed*
//!    (which node should run it) and the local node starts, restarts or stops resources
//!    to match, starting only through a gate that proves the peer does not run it.
//!
//! Both nodes run the same function on the same facts (each side's reports), so they
//! agree on where a group belongs: one stops and says so, the other waits and starts.

mod peer;

use tandem_config::{AutoFailback, Config, FencingPolicy, Group};

use crate::transition::{
    ActionId, ActionKind, Blocked, Note, NoteLevel, PeerMessage, Transition, WaitReason,
};
use crate::view::{
    ClusterView, FailedOp, FenceState, PeerState, RequestKind, ResourceState, WitnessVote,
};

/// Plans the next transition of `view.local`. Pure: same inputs, same plan.
///
/// A view naming unknown groups, resources or nodes is tolerated (those entries are
/// ignored); use [`ClusterView::validate`] to reject it instead.
pub fn plan(config: &Config, view: &ClusterView) -> Transition {
    let mut t = Transition::new(&view.local);
    if view.maintenance {
        t.notes.push(Note {
            level: NoteLevel::Info,
            group: None,
            text: "maintenance mode: nothing is started, stopped, monitored or fenced".to_string(),
        });
        return t;
    }
    let Some(peer) = peer_name(config, &view.local) else {
        for g in &config.groups {
            t.blocked.push(Blocked {
                group: g.name.clone(),
                reason: format!(
                    "the configuration must name exactly two nodes, one of them `{}`",
                    view.local
                ),
            });
        }
        return t;
    };
    let mut p = Planner::new(config, view, peer, t);
    p.run();
    p.t
}

/// The other configured node, if the configuration has exactly two and one is `local`.
pub fn peer_name<'c>(config: &'c Config, local: &str) -> Option<&'c str> {
    if config.nodes.len() != 2 || config.node(local).is_none() {
        return None;
    }
    config
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .find(|n| *n != local)
}

/// Whether a start may happen, as far as the peer is concerned.
#[derive(Debug, Clone)]
enum Gate {
    /// Yes, once these actions (a fence) have succeeded.
    Open(Vec<ActionId>),
    /// Not yet: wait for this.
    Wait(WaitReason),
    /// No: the group is blocked for this reason.
    Block(String),
}

struct Planner<'a> {
    config: &'a Config,
    view: &'a ClusterView,
    local: &'a str,
    peer: &'a str,
    t: Transition,
    /// The peer's reports can be trusted and it takes part in placement.
    peer_available: bool,
    /// Gate for starts when the peer is not available (or for every group when the
    /// local node lost a partition race).
    peer_gate: Gate,
    /// The local node lost the partition race and must not start anything.
    local_loser: Option<String>,
    /// Groups held by both nodes (a healed partition), and the node that keeps them.
    winner: Option<String>,
    /// Whether a `WaitFor` was already emitted for a reason (one per reason).
    waits: Vec<WaitReason>,
    /// Whether `FenceMe` was already sent.
    fence_me_sent: bool,
}

impl<'a> Planner<'a> {
    fn new(config: &'a Config, view: &'a ClusterView, peer: &'a str, t: Transition) -> Self {
        Planner {
            config,
            view,
            local: view.local.as_str(),
            peer,
            t,
            peer_available: false,
            peer_gate: Gate::Open(Vec::new()),
            local_loser: None,
            winner: None,
            waits: Vec::new(),
            fence_me_sent: false,
        }
    }

    fn run(&mut self) {
        self.assess_peer();
        for group in &self.config.groups {
            self.plan_group(group);
        }
    }

    // ---- facts -------------------------------------------------------------------

    fn state(&self, group: &str, node: &str, resource: &str) -> ResourceState {
        self.view
            .resource(group, node, resource)
            .map(|r| r.state)
            .unwrap_or_default()
    }

    fn states(&self, group: &Group, node: &str) -> Vec<ResourceState> {
        group
            .resources
            .iter()
            .map(|r| self.state(&group.name, node, &r.name))
            .collect()
    }

    fn peer_reports_valid(&self) -> bool {
        matches!(
            self.view.peer.state,
            PeerState::Up | PeerState::ReturnedAfterPartition
        ) && self.view.peer.reported
    }

    fn holds(&self, group: &Group, node: &str) -> bool {
        self.states(group, node).iter().any(|s| s.holds())
    }

    fn other(&self, node: &str) -> &'a str {
        if node == self.local {
            self.peer
        } else {
            self.local
        }
    }

    fn fencing_none(&self) -> bool {
        self.config.cluster.fencing == FencingPolicy::None
    }

    // ---- what the transition records -------------------------------------------

    fn wait(&mut self, reason: WaitReason) {
        if !self.waits.contains(&reason) {
            self.waits.push(reason.clone());
            self.t.push(ActionKind::WaitFor { reason }, Vec::new());
        }
    }

    fn block(&mut self, group: &str, reason: String) {
        self.t.blocked.push(Blocked {
            group: group.to_string(),
            reason,
        });
    }

    fn note(&mut self, group: &str, text: String) {
        self.t.notes.push(Note {
            level: NoteLevel::Info,
            group: Some(group.to_string()),
            text,
        });
    }

    fn unsafe_note(&mut self, group: &str, text: String) {
        self.t.notes.push(Note {
            level: NoteLevel::Unsafe,
            group: Some(group.to_string()),
            text,
        });
    }

    // ---- placement -----------------------------------------------------------------

    /// Whether `node` can run `group`, ignoring operator requests; `Err` says why not.
    fn eligible(&self, group: &Group, node: &str) -> Result<(), String> {
        if node == self.peer && !self.peer_available {
            return Err(format!("{} is {}", self.peer, self.peer_condition()));
        }
        // Isolated, this node runs nothing until it hears the peer or the witness again,
        // or an operator confirms the peer down (`tandem fence confirm`).
        if node == self.local
            && self.view.witness == WitnessVote::Isolated
            && !self.view.peer_fence_state(self.peer).is_down()
        {
            return Err(format!(
                "{node} lost {} and the witness together (it runs nothing until it hears one of them)",
                self.peer
            ));
        }
        let threshold = self
            .view
            .groups
            .get(&group.name)
            .map(|g| g.threshold())
            .unwrap_or(crate::view::DEFAULT_MIGRATION_THRESHOLD);
        for r in &group.resources {
            let Some(rv) = self.view.resource(&group.name, node, &r.name) else {
                continue;
            };
            match rv.state {
                ResourceState::FailedStop => {
                    return Err(format!("stop of {} failed on {node}", r.name));
                }
                ResourceState::FailedStart => {
                    return Err(format!("start of {} failed on {node}", r.name));
                }
                _ => {}
            }
            let live = rv.failures.iter().filter(|f| !f.expired);
            let mut monitor_failures = 0u32;
            for f in live {
                match f.op {
                    FailedOp::Start => {
                        return Err(format!(
                            "start of {} failed on {node} (failure not expired)",
                            r.name
                        ));
                    }
                    FailedOp::Monitor => monitor_failures = monitor_failures.saturating_add(1),
                    FailedOp::Stop => {}
                }
            }
            if monitor_failures >= threshold {
                return Err(format!(
                    "{} failed {monitor_failures} times on {node} (migration threshold {threshold})",
                    r.name
                ));
            }
        }
        if self.ping_configured() {
            let other = self.other(node);
            let other_counts = other == self.local || self.peer_available;
            if !self.ping_ok(node) && other_counts && self.ping_ok(other) {
                return Err(format!(
                    "{node} lost outside connectivity (ping) while {other} has it"
                ));
            }
        }
        Ok(())
    }

    fn peer_condition(&self) -> &'static str {
        match self.view.peer.state {
            PeerState::Up if !self.view.peer.reported => "up but has not reported its state",
            PeerState::Up => "up but must be fenced",
            PeerState::Dead => "dead",
            PeerState::Unknown => "not heard yet",
            PeerState::ReturnedAfterPartition if !self.view.peer.reported => {
                "back after a partition but has not reported its state"
            }
            PeerState::ReturnedAfterPartition => "back after a partition and must be fenced",
            PeerState::LeftCleanly => "gone (left cleanly)",
        }
    }

    fn ping_configured(&self) -> bool {
        !self.config.cluster.ping.is_empty() || !self.config.cluster.ping_groups.is_empty()
    }

    fn ping_ok(&self, node: &str) -> bool {
        self.view.ping.get(node).copied().unwrap_or(true)
    }

    /// Where `group` should run: `Ok(node)` or `Err(reason nobody can)`.
    fn place(&mut self, group: &Group) -> Result<&'a str, String> {
        let local = self.local;
        let peer = self.peer;
        let mut elig_local = self.eligible(group, local);
        let mut elig_peer = self.eligible(group, peer);
        let mut preferred: Option<&'a str> = None;

        // The newest request that covers this group decides (Heartbeat's
        // hb_standby / hb_takeover, kept standing until replaced).
        let request = self
            .view
            .requests
            .iter()
            .rev()
            .find(|r| (r.node == local || r.node == peer) && r.scope.covers(&r.node, &group.home))
            .cloned();
        if let Some(req) = request {
            let asker: &'a str = if req.node == local { local } else { peer };
            let other = self.other(asker);
            let elig = |n: &str, l: &Result<(), String>, p: &Result<(), String>| {
                if n == local { l.clone() } else { p.clone() }
            };
            match req.kind {
                RequestKind::Standby => match elig(other, &elig_local, &elig_peer) {
                    Ok(()) => {
                        let why = Err(format!("{asker} is in standby"));
                        if asker == local {
                            elig_local = why;
                        } else {
                            elig_peer = why;
                        }
                    }
                    Err(e) => self.note(
                        &group.name,
                        format!("standby of {asker} ignored for {}: {e}", group.name),
                    ),
                },
                RequestKind::Takeover => match elig(asker, &elig_local, &elig_peer) {
                    Ok(()) => preferred = Some(asker),
                    Err(e) => self.note(
                        &group.name,
                        format!("takeover by {asker} ignored for {}: {e}", group.name),
                    ),
                },
            }
        }
        let ok = |n: &str| {
            if n == local {
                elig_local.is_ok()
            } else {
                elig_peer.is_ok()
            }
        };
        let home: Option<&'a str> = if group.home == local {
            Some(local)
        } else if group.home == peer {
            Some(peer)
        } else {
            None
        };
        let local_holds = self.holds(group, local);
        let peer_holds = self.peer_available && self.holds(group, peer);

        if local_holds && peer_holds {
            if let Some(w) = &self.winner {
                return Ok(if w == local { local } else { peer });
            }
        }
        if let Some(p) = preferred {
            return Ok(p);
        }
        let failback = matches!(
            self.config.cluster.auto_failback,
            AutoFailback::On | AutoFailback::Legacy
        );
        if failback {
            if let Some(h) = home.filter(|h| ok(h)) {
                return Ok(h);
            }
        }
        let holder = match (local_holds, peer_holds) {
            (true, false) => Some(local),
            (false, true) => Some(peer),
            _ => None,
        };
        if let Some(h) = holder.filter(|h| ok(h)) {
            return Ok(h);
        }
        if let Some(h) = home.filter(|h| ok(h)) {
            return Ok(h);
        }
        for n in [local, peer] {
            if ok(n) {
                return Ok(n);
            }
        }
        // Every reason names its node already.
        let why: Vec<&str> = [&elig_local, &elig_peer]
            .into_iter()
            .filter_map(|e| e.as_ref().err().map(String::as_str))
            .collect();
        Err(format!("no node can run it ({})", why.join("; ")))
    }

    // ---- one group -----------------------------------------------------------------

    fn plan_group(&mut self, group: &Group) {
        let local = self.local;
        let name = group.name.as_str();
        let states = self.states(group, local);

        // A stop that failed here: the resource may still run and cannot be stopped.
        // Only fencing this node makes the group safe to start elsewhere.
        if let Some(i) = states.iter().position(|s| *s == ResourceState::FailedStop) {
            let res = &group.resources[i].name;
            let reason = if self.fencing_none() {
                format!(
                    "stop of {res} failed on {local} and fencing = \"none\": nobody will fence {local}; stop it by hand, then clear the failure"
                )
            } else if self.peer_reports_valid() {
                if !self.fence_me_sent {
                    self.fence_me_sent = true;
                    self.t.push(
                        ActionKind::NotifyPeer {
                            message: PeerMessage::FenceMe {
                                reason: format!("stop of {name}:{res} failed on {local}"),
                            },
                        },
                        Vec::new(),
                    );
                }
                format!(
                    "stop of {res} failed on {local}: waiting for {} to fence this node",
                    self.peer
                )
            } else {
                format!(
                    "stop of {res} failed on {local} and {} is not up to fence it: stop it by hand, then clear the failure",
                    self.peer
                )
            };
            self.block(name, reason);
            return;
        }
        // An action in flight: its result comes first.
        if let Some(i) = states
            .iter()
            .position(|s| matches!(s, ResourceState::Starting | ResourceState::Stopping))
        {
            self.wait(WaitReason::InFlight {
                group: name.to_string(),
                resource: group.resources[i].name.clone(),
            });
            return;
        }
        // Unknown state (daemon restart): probe before deciding anything.
        if states.contains(&ResourceState::Unknown) {
            for (r, s) in group.resources.iter().zip(&states) {
                if *s == ResourceState::Unknown {
                    self.t.push(
                        ActionKind::Monitor {
                            group: name.to_string(),
                            resource: r.name.clone(),
                            interval_ms: None,
                        },
                        Vec::new(),
                    );
                }
            }
            return;
        }
        // The peer fails to stop this group and nobody will fence it.
        if self.fencing_none()
            && self.peer_reports_valid()
            && self
                .states(group, self.peer)
                .contains(&ResourceState::FailedStop)
        {
            self.block(
                name,
                format!(
                    "stop failed on {} and fencing = \"none\": nobody can make sure it stopped; stop it by hand on {}, then clear the failure",
                    self.peer, self.peer
                ),
            );
            return;
        }
        // This node lost the partition race: give up what both hold.
        if self.local_loser.is_some() && self.holds(group, local) && self.holds(group, self.peer) {
            self.stop_all(group, &states, true);
            return;
        }

        match self.place(group) {
            Ok(node) if node == local => self.ensure_running(group, &states),
            Ok(node) => {
                if states.iter().any(|s| s.holds()) {
                    self.stop_all(group, &states, node == self.peer);
                }
            }
            Err(reason) => {
                if states.iter().any(|s| s.holds()) {
                    self.stop_all(group, &states, false);
                }
                self.block(name, reason);
            }
        }
    }

    /// The gate for starting `group` here.
    fn gate(&self, group: &Group) -> Gate {
        // The peer is fencing us: whatever starts here dies with the node, and a start
        // racing the fence is exactly the window in which both could run the group.
        if matches!(
            self.view.fence_state(self.local),
            FenceState::Required | FenceState::InProgress
        ) {
            return Gate::Block(format!(
                "{} is being fenced: nothing starts here",
                self.local
            ));
        }
        if let Some(why) = &self.local_loser {
            return if self.fencing_none() {
                // After this round the conflict is gone; start nothing new meanwhile.
                Gate::Block(format!("this node lost the partition race: {why}"))
            } else {
                Gate::Block(format!(
                    "this node lost the partition race and waits to be fenced by {}: {why}",
                    self.peer
                ))
            };
        }
        if self.peer_available {
            if self.holds(group, self.peer) {
                return Gate::Wait(WaitReason::PeerRelease {
                    peer: self.peer.to_string(),
                    group: group.name.clone(),
                });
            }
            return Gate::Open(Vec::new());
        }
        self.peer_gate.clone()
    }

    /// Brings the group up here: restart a failed resource in place, start what is
    /// missing, always left to right after stopping what sits right of the first gap.
    fn ensure_running(&mut self, group: &Group, states: &[ResourceState]) {
        let Some(k) = states.iter().position(|s| *s != ResourceState::Started) else {
            return;
        };
        let name = group.name.as_str();
        let deps = match self.gate(group) {
            Gate::Open(deps) => deps,
            Gate::Wait(reason) => {
                self.wait(reason);
                return;
            }
            Gate::Block(reason) => {
                self.block(name, reason);
                return;
            }
        };
        let taking_over = !self.peer_available
            && !matches!(self.view.peer.state, PeerState::LeftCleanly)
            && self.holds(group, self.peer);
        if self.fencing_none() && !self.peer_available {
            let gone = !matches!(self.view.peer.state, PeerState::LeftCleanly)
                && !self.view.peer_fence_state(self.peer).is_down();
            if gone {
                self.unsafe_note(
                    name,
                    format!(
                        "starting {name} without fencing {} (fencing = \"none\"): it may still run it",
                        self.peer
                    ),
                );
            }
        } else if taking_over {
            self.note(name, format!("taken over from {}", self.peer));
        }

        // Stop whatever runs right of the first gap (right to left), so that the
        // group comes back in order.
        let mut prev: Option<ActionId> = None;
        for i in (k + 1..states.len()).rev() {
            if states[i].holds() {
                let id = self.t.push(
                    ActionKind::Stop {
                        group: name.to_string(),
                        resource: group.resources[i].name.clone(),
                    },
                    prev.into_iter().collect(),
                );
                prev = Some(id);
            }
        }
        for (i, r) in group.resources.iter().enumerate().skip(k) {
            // Only the first start waits for the gate (a fence); the rest follow it.
            let mut after = if i == k { deps.clone() } else { Vec::new() };
            after.extend(prev);
            let failed = matches!(
                states[i],
                ResourceState::FailedMonitor | ResourceState::FailedStart
            );
            let kind = if i == k && failed {
                ActionKind::Restart {
                    group: name.to_string(),
                    resource: r.name.clone(),
                }
            } else {
                ActionKind::Start {
                    group: name.to_string(),
                    resource: r.name.clone(),
                }
            };
            let id = self.t.push(kind, after);
            if let Some(interval) = r.monitor_interval.filter(|d| !d.is_zero()) {
                self.t.push(
                    ActionKind::Monitor {
                        group: name.to_string(),
                        resource: r.name.clone(),
                        interval_ms: Some(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)),
                    },
                    vec![id],
                );
            }
            prev = Some(id);
        }
    }

    /// Stops every resource of the group that may run here, right to left; optionally
    /// tells the peer the group is released.
    fn stop_all(&mut self, group: &Group, states: &[ResourceState], notify: bool) {
        let name = group.name.as_str();
        let mut prev: Option<ActionId> = None;
        for i in (0..states.len()).rev() {
            if states[i].holds() {
                let id = self.t.push(
                    ActionKind::Stop {
                        group: name.to_string(),
                        resource: group.resources[i].name.clone(),
                    },
                    prev.into_iter().collect(),
                );
                prev = Some(id);
            }
        }
        if notify && prev.is_some() {
            self.t.push(
                ActionKind::NotifyPeer {
                    message: PeerMessage::Released {
                        group: name.to_string(),
                    },
                },
                prev.into_iter().collect(),
            );
        }
    }
}
