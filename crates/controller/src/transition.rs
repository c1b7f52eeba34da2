//! Running the planner's transitions, the fencing coordinator's commands, and a clean
//! shutdown.
//!
//! Like Pacemaker's controller, one transition runs at a time: actions whose
//! dependencies are done start (in parallel where the graph allows); a failed action or
//! a new outside event stops the transition from starting anything more, and once what
//! is in flight has finished the planner is asked again with the new view.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tandem_policy::{ActionId, ActionKind, NoteLevel, ResourceState, Transition};

use crate::controller::{Controller, Running, Shutdown};
use crate::messages::PeerMessage;
use crate::types::{Command, DiskOrder, Op, SendTag};

impl Controller {
    pub(crate) fn advance(&mut self) {
        self.detach_held_starts();
        if let Some(running) = &self.running {
            let finished = running.transition.actions.iter().all(|a| {
                matches!(a.kind, ActionKind::WaitFor { .. }) || running.done.contains(&a.id)
            });
            if running.in_flight.is_empty() && (running.abandoned || self.replan || finished) {
                if finished && !running.abandoned {
                    // A finished transition always leads to a fresh look: the next plan
                    // is usually empty, but a partial group may continue.
                    self.replan = true;
                    if !running.transition.actions.is_empty() {
                        let took = self.now.saturating_duration_since(running.started);
                        self.counters.transition_finished(took);
                    }
                }
                self.running = None;
            } else if self.replan
                && let Some(r) = &mut self.running
            {
                r.abandoned = true;
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
            if !transition.actions.is_empty() {
                self.counters.transitions += 1;
            }
            self.running = Some(Running {
                transition,
                done: BTreeSet::new(),
                in_flight: BTreeSet::new(),
                fences: BTreeMap::new(),
                abandoned: false,
                started: self.now,
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
        let now = self.now;
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
                if self.needs_claim(&group) {
                    self.claim(id, group, resource);
                    return;
                }
                self.run(
                    Some(id),
                    group,
                    resource,
                    Op::Start,
                    ResourceState::Starting,
                );
            }
            ActionKind::Stop { group, resource } => {
                mark(self, false);
                self.run(Some(id), group, resource, Op::Stop, ResourceState::Stopping);
            }
            ActionKind::Restart { group, resource } => {
                mark(self, false);
                self.run(
                    Some(id),
                    group,
                    resource,
                    Op::Restart,
                    ResourceState::Stopping,
                );
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
                self.run(Some(id), group, resource, Op::Probe, state);
            }
            ActionKind::Monitor {
                group,
                resource,
                interval_ms: Some(ms),
            } => {
                let interval = std::time::Duration::from_millis(ms);
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
                self.send(m);
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

    /// Asks the shell to run an action, with the resource's state meanwhile.
    pub(crate) fn run(
        &mut self,
        action: Option<ActionId>,
        group: String,
        resource: String,
        op: Op,
        state: ResourceState,
    ) {
        if let Some(r) = self.resources.get_mut(&(group.clone(), resource.clone())) {
            r.state = state;
            if matches!(op, Op::Stop | Op::Restart) {
                r.monitor = None;
            }
        }
        self.send_report();
        tracing::info!(%group, %resource, ?op, "running");
        let timeout = self.resource_timeout(&group, &resource);
        self.commands.push_back(Command::RunAction {
            action,
            group,
            resource,
            op,
            timeout,
        });
    }

    /// Carries out what the fencing coordinator asks (device runs, records to the peer),
    /// then settles fence actions of the running transition.
    pub(crate) fn fencing_commands(&mut self) {
        // Once the peer is known down (fenced, or confirmed by an operator), its
        // replication links are dead whatever TCP thinks: the disks drop them, once,
        // before anything that follows (a promotion) runs.
        let peer_state = self.coordinator.state(&self.peer);
        let peer_down = peer_state.is_down();
        if peer_down && !self.peer_down_told_disks {
            self.commands
                .push_back(Command::Disks(DiskOrder::PeerFenced));
            self.outdater.peer_fenced();
            // The disks already heard it: drop the outdater's per-disk echoes of it.
            self.outdate_commands_after_fence();
        }
        if peer_state == tandem_fencing::FenceState::Failed {
            // Disks that waited for this fence keep waiting: only an operator's
            // confirmation (or a later success) lets them go on.
            self.outdater.fence_failed();
        }
        self.peer_down_told_disks = peer_down;
        while let Some(command) = self.coordinator.poll_command() {
            match command {
                tandem_fencing::Command::RunDevice {
                    ref target,
                    ref device,
                    ..
                } => {
                    self.counters.fence_attempt(target, device);
                    self.commands.push_back(Command::RunFenceDevice(command));
                }
                tandem_fencing::Command::SendToPeer(record) => {
                    self.send(fence_record_message(record));
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

    fn outdate_commands_after_fence(&mut self) {
        while let Some(c) = self.outdater.poll_command() {
            if !matches!(c, tandem_fencing::OutdateCommand::Fenced { .. }) {
                tracing::error!("disk fencing: unexpected command after a fence: {c:?}");
            }
        }
    }

    // ------------------------------------------------------------------ shutdown

    /// Clean shutdown: let in-flight actions finish, stop every local resource right to
    /// left, tell the peer (released + goodbye), wait briefly for its acknowledgement.
    pub(crate) fn begin_shutdown(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        if self.maintenance {
            // Pacemaker's maintenance mode: the stack may restart under running
            // resources. Nothing is stopped or demoted; the peer, in maintenance too,
            // neither fences nor takes over while this node is away, and the next daemon
            // probes what runs (and starts in maintenance: the flag is on disk).
            tracing::info!(
                "shutting down in maintenance mode: every group and disk is left as it is"
            );
            self.send_report();
            self.commands.push_back(Command::Disks(DiskOrder::Detach));
            self.finish_shutdown();
            return;
        }
        tracing::info!("shutting down: stopping every group on this node");
        self.commands
            .push_back(Command::Disks(DiskOrder::StopUnmanaged));
        if let Some(r) = &mut self.running {
            r.abandoned = true;
        }
        self.end_claims(true);
        for r in self.resources.values_mut() {
            r.monitor = None;
        }
        self.shutdown = Some(Shutdown::Draining);
    }

    pub(crate) fn shutdown_step(&mut self) {
        loop {
            match &mut self.shutdown {
                Some(Shutdown::Draining) => {
                    if self
                        .running
                        .as_ref()
                        .is_some_and(|r| !r.in_flight.is_empty())
                    {
                        return;
                    }
                    self.running = None;
                    let mut queue = VecDeque::new();
                    for group in &self.config.groups {
                        for r in group.resources.iter().rev() {
                            let key = (group.name.clone(), r.name.clone());
                            if self
                                .resources
                                .get(&key)
                                .is_some_and(|lr| lr.state != ResourceState::Stopped)
                            {
                                queue.push_back(key);
                            }
                        }
                    }
                    let to_release = queue.iter().map(|(g, _)| g.clone()).collect();
                    self.shutdown = Some(Shutdown::Resources {
                        queue,
                        in_flight: false,
                        to_release,
                    });
                }
                Some(Shutdown::Resources {
                    queue,
                    in_flight,
                    to_release,
                }) => {
                    if *in_flight {
                        return;
                    }
                    // A group none of whose resources is left to stop is released.
                    let done: Vec<String> = to_release
                        .iter()
                        .filter(|g| !queue.iter().any(|(q, _)| q == *g))
                        .cloned()
                        .collect();
                    for g in &done {
                        to_release.remove(g);
                    }
                    let next = queue.pop_front();
                    if next.is_some() {
                        *in_flight = true;
                    }
                    for group in done {
                        self.send(PeerMessage::Released { group });
                    }
                    if let Some((group, resource)) = next {
                        self.run(None, group, resource, Op::Stop, ResourceState::Stopping);
                        return;
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
                        self.finish_shutdown();
                        return;
                    }
                    // Each secondary disk whose up-to-date peer goes on says, durably, that
                    // this copy is now stale: the peer writes alone without fencing us.
                    self.commands.push_back(Command::Disks(DiskOrder::Leave));
                    if self.peer_said_goodbye
                        || matches!(
                            self.peer_state,
                            tandem_policy::PeerState::Dead
                                | tandem_policy::PeerState::Unknown
                                | tandem_policy::PeerState::LeftCleanly
                        )
                    {
                        tracing::info!("all groups stopped; the peer is not up to hear a goodbye");
                        self.finish_shutdown();
                        return;
                    }
                    self.commands.push_back(Command::Send {
                        message: PeerMessage::Goodbye,
                        tag: SendTag::Goodbye,
                    });
                    self.shutdown = Some(Shutdown::Goodbye {
                        id: None,
                        deadline: self.now + crate::controller::GOODBYE_WAIT,
                    });
                }
                Some(Shutdown::Goodbye { deadline, .. }) => {
                    if self.now >= *deadline {
                        tracing::warn!(
                            "all groups stopped; the peer did not acknowledge our goodbye"
                        );
                        self.finish_shutdown();
                    }
                    return;
                }
                Some(Shutdown::Done) | None => return,
            }
        }
    }

    pub(crate) fn finish_shutdown(&mut self) {
        if !matches!(self.shutdown, Some(Shutdown::Done)) {
            self.shutdown = Some(Shutdown::Done);
            self.commands.push_back(Command::Exit);
        }
    }
}

/// A fence record as a message: device output and error detail cut to their last
/// [`FENCE_TEXT_IN_MESSAGE_MAX_BYTES`](crate::messages::FENCE_TEXT_IN_MESSAGE_MAX_BYTES),
/// the reason to its first. Should names make it too long all the same, the text is
/// cut further until it fits one membership payload.
pub(crate) fn fence_record_message(mut record: tandem_fencing::FenceRecord) -> PeerMessage {
    use crate::messages::FENCE_TEXT_IN_MESSAGE_MAX_BYTES as MAX;
    use tandem_fencing::Outcome;
    match &mut record.outcome {
        Outcome::Failed { output, .. } => keep_tail(output, MAX),
        Outcome::Error { detail } => keep_tail(detail, MAX),
        _ => {}
    }
    keep_head(&mut record.reason, MAX);
    loop {
        let message = PeerMessage::Fence {
            record: String::from_utf8_lossy(&record.to_json()).into_owned(),
        };
        let over = message
            .encode()
            .len()
            .saturating_sub(crate::messages::MAX_PAYLOAD_BYTES);
        if over == 0 {
            return message;
        }
        let text = match &mut record.outcome {
            Outcome::Failed { output, .. } if !output.is_empty() => output,
            Outcome::Error { detail } if !detail.is_empty() => detail,
            _ if !record.reason.is_empty() => &mut record.reason,
            _ => return message,
        };
        // JSON escaping can make a byte cost more than one: cut at least what is over.
        let keep = text.len().saturating_sub(over.max(16));
        if keep <= '…'.len_utf8() {
            text.clear();
        } else {
            keep_tail(text, keep);
        }
    }
}

/// Cuts `text` to at most `max` bytes, keeping its end after a `…` (on a character
/// boundary).
fn keep_tail(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut from = text.len() - max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(from) {
        from += 1;
    }
    *text = format!("…{}", &text[from..]);
}

/// Cuts `text` to at most `max` bytes, keeping its start (on a character boundary).
fn keep_head(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// ox2's failed fence of ox1 with `output` and `reason`.
    fn failed_record(output: String, reason: String) -> tandem_fencing::FenceRecord {
        tandem_fencing::FenceRecord {
            at_unix_ms: 1,
            executor: "ox2".into(),
            target: "ox1".into(),
            device: "apc".into(),
            action: tandem_fencing::FenceAction::Off,
            outcome: tandem_fencing::Outcome::Failed {
                exit: Some(1),
                output,
            },
            duration_ms: 5,
            origin: tandem_fencing::Origin::Local,
            reason,
        }
    }

    #[test]
    fn a_fence_record_with_long_output_is_cut_to_fit_one_message() {
        let record = failed_record("é\"\n".repeat(3000), "ox1 is dead".into());
        let m = fence_record_message(record);
        assert!(m.encode().len() <= crate::messages::MAX_PAYLOAD_BYTES);
        let PeerMessage::Fence { record } = m else {
            panic!("not a fence message")
        };
        let back = tandem_fencing::FenceRecord::from_json(record.as_bytes()).unwrap();
        assert_eq!(back.target, "ox1");
        assert!(matches!(
            back.outcome,
            tandem_fencing::Outcome::Failed { .. }
        ));
    }

    #[test]
    fn a_fence_record_carries_the_end_of_the_output_within_its_bound() {
        use crate::messages::FENCE_TEXT_IN_MESSAGE_MAX_BYTES as MAX;
        let end = "Failed: Unable to obtain correct plug status or plug is not available";
        let output = format!("{}{end}", "noise ".repeat(700)); // the runner keeps 4 KiB
        let record = failed_record(output, "r".repeat(4000));
        let m = fence_record_message(record);
        assert!(m.encode().len() <= crate::messages::MAX_PAYLOAD_BYTES);
        let PeerMessage::Fence { record } = m else {
            panic!("not a fence message")
        };
        let back = tandem_fencing::FenceRecord::from_json(record.as_bytes()).unwrap();
        let tandem_fencing::Outcome::Failed { output, .. } = back.outcome else {
            panic!("not failed")
        };
        assert!(output.starts_with('…') && output.ends_with(end), "{output}");
        assert!(output.len() <= MAX, "{}", output.len());
        assert_eq!(back.reason.len(), MAX);
    }
}
