//! The witness host, in a run with a witness: the real membership core and the real
//! `Arbiter`, driven as `tandem witness` drives them; its grant file on simulated
//! storage; and the witness's invariants.
//!
//! The grant file keeps every grant that was answered across the witness's power
//! losses: `tandem witness` writes it durably (written, synced, renamed, the directory
//! synced) before it sends the answer that carries it, and this shell carries out
//! [`ArbiterCommand::Persist`] before the commands after it, with no time between
//! them, so no answered grant is ever only in a cache.

use tandem_policy::WitnessVote;
use tandem_witness::{Arbiter, ArbiterCommand, Grant, WitnessMessage};

use super::*;

/// The witness's host number (a node's is its index): member `WITNESS_HOST + 1`.
pub(super) const WITNESS_HOST: usize = 2;

/// The simulated witness machine.
#[derive(Default)]
pub(super) struct SimWitness {
    /// Power.
    pub(super) powered: bool,
    /// Boots so far (its membership incarnation).
    pub(super) boot: u64,
    /// The membership core (while powered).
    membership: Option<Membership>,
    /// The arbiter (while powered).
    arbiter: Option<Arbiter>,
    /// The grant file: what a restarted witness resumes.
    stored: Option<Grant>,
    /// Per node: a grant the witness answered to it and has not ended since (its grant
    /// file still names that node the winner). Two at once: two nodes hold the vote.
    grant_live: [bool; 2],
}

impl Cluster {
    /// The witness's clock: simulated time (its clock never jumps).
    fn witness_now(&self) -> Instant {
        self.base + self.now
    }

    /// The witness boots: a new incarnation, the arbiter resuming the stored grant.
    pub(super) fn witness_power_on(&mut self) {
        let now = self.witness_now();
        let config = membership_config(&self.config, WITNESS_HOST);
        let tie_wait = self
            .config
            .witness
            .as_ref()
            .map_or(self.config.cluster.deadtime, |w| w.tie_wait);
        let nodes = [self.nodes[0].name.clone(), self.nodes[1].name.clone()];
        let Some(w) = self.witness.as_mut() else {
            return;
        };
        w.boot += 1;
        w.powered = true;
        w.membership = Some(
            Membership::new(config, w.boot, now)
                .unwrap_or_else(|e| panic!("the witness's membership config: {e}")),
        );
        w.arbiter = Some(Arbiter::new(nodes, tie_wait, w.stored.clone()));
        let boot = w.boot;
        self.note(format!("the witness powers on (boot {boot})"));
        self.witness_drain();
    }

    /// The witness loses power: its processes die, its grant file stays.
    pub(super) fn witness_power_off(&mut self) {
        let Some(w) = self.witness.as_mut() else {
            return;
        };
        w.powered = false;
        w.membership = None;
        w.arbiter = None;
        self.note("the witness loses power".into());
    }

    /// A packet reaches the witness.
    pub(super) fn witness_packet(&mut self, link: u16, bytes: &[u8]) {
        let now = self.witness_now();
        if let Some(m) = self.witness.as_mut().and_then(|w| w.membership.as_mut()) {
            m.handle_packet(link, bytes, now);
            self.witness_drain();
        }
    }

    /// The witness's timers.
    pub(super) fn witness_tick(&mut self) {
        let now = self.witness_now();
        let wall_ms = self.now.as_millis() as u64;
        let Some(w) = self.witness.as_mut().filter(|w| w.powered) else {
            return;
        };
        if let Some(m) = w.membership.as_mut()
            && m.poll_timeout().is_some_and(|t| t <= now)
        {
            m.handle_timeout(now);
        }
        if let Some(a) = w.arbiter.as_mut() {
            a.set_wall_clock(wall_ms);
            if a.poll_timeout().is_some_and(|t| t <= now) {
                a.tick(now);
            }
        }
        self.witness_drain();
    }

    /// Moves what the witness's cores have queued until nothing moves.
    fn witness_drain(&mut self) {
        let now = self.witness_now();
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(t) = self
                .witness
                .as_mut()
                .and_then(|w| w.membership.as_mut())
                .and_then(|m| m.poll_transmit())
            {
                moved = true;
                self.transmit(WITNESS_HOST, t);
            }
            while let Some(e) = self
                .witness
                .as_mut()
                .and_then(|w| w.membership.as_mut())
                .and_then(|m| m.poll_event())
            {
                moved = true;
                self.witness_event(e, now);
            }
            while let Some(c) = self
                .witness
                .as_mut()
                .and_then(|w| w.arbiter.as_mut())
                .and_then(|a| a.poll_command())
            {
                moved = true;
                self.arbiter_command(c, now);
            }
            if !moved {
                return;
            }
        }
        panic!("seed {}: the witness never settled", self.seed);
    }

    /// A membership event on the witness, as `tandem witness` hands it to the arbiter.
    fn witness_event(&mut self, event: MembershipEvent, now: Instant) {
        let name = |member: u32| -> Option<String> {
            (member as usize)
                .checked_sub(1)
                .and_then(|i| self.nodes.get(i))
                .map(|n| n.name.clone())
        };
        let (note, input) = match event {
            MembershipEvent::NodeUp { node, incarnation }
            | MembershipEvent::NodeReturnedAfterPartition { node, incarnation }
            | MembershipEvent::NodeRestarted {
                node, incarnation, ..
            } => (
                "hears",
                name(node).map(|n| (n, Some(incarnation), None::<Vec<u8>>)),
            ),
            MembershipEvent::NodeDead { node, .. } => {
                ("declares dead", name(node).map(|n| (n, None, None)))
            }
            MembershipEvent::Message { from, payload } => {
                ("hears from", name(from).map(|n| (n, None, Some(payload))))
            }
            _ => return,
        };
        let Some((node, incarnation, payload)) = input else {
            return;
        };
        let message = payload.as_deref().map(WitnessMessage::decode);
        match &message {
            Some(Some(m)) => self.note(format!("the witness {note} {node}: {m:?}")),
            Some(None) => return,
            None => self.note(format!("the witness {note} {node}")),
        }
        let Some(arbiter) = self.witness.as_mut().and_then(|w| w.arbiter.as_mut()) else {
            return;
        };
        match (incarnation, message) {
            (Some(incarnation), _) => arbiter.node_up(&node, incarnation, now),
            (None, Some(Some(m))) => arbiter.message(&node, m, now),
            _ => arbiter.node_dead(&node, now),
        }
    }

    /// The arbiter's command, carried out as `tandem witness` does.
    fn arbiter_command(&mut self, command: ArbiterCommand, now: Instant) {
        match command {
            ArbiterCommand::Persist(grant) => {
                self.note(format!("the witness stores grant {grant:?}"));
                let names = [self.nodes[0].name.clone(), self.nodes[1].name.clone()];
                if let Some(w) = self.witness.as_mut() {
                    for (n, name) in names.iter().enumerate() {
                        if grant.as_ref().is_none_or(|g| &g.winner != name) {
                            w.grant_live[n] = false;
                        }
                    }
                    w.stored = grant;
                }
            }
            ArbiterCommand::Send { to, mut message } => {
                let Some(n) = self.nodes.iter().position(|x| x.name == to) else {
                    return;
                };
                if let WitnessMessage::VoteAnswer { granted, .. } = &mut message {
                    if self.opts.unsafe_variant == Unsafe::WitnessGrantsBoth {
                        *granted = true;
                    }
                    if *granted {
                        self.grant_answered(n);
                    }
                }
                self.note(format!("the witness tells {to}: {message:?}"));
                if let Some(m) = self.witness.as_mut().and_then(|w| w.membership.as_mut()) {
                    let _ = m.send_message(n as u32 + 1, message.encode(), now);
                }
            }
        }
    }

    /// The witness answers node `n` with a grant: no other node may hold one.
    fn grant_answered(&mut self, n: usize) {
        self.summary.grants += 1;
        let Some(w) = self.witness.as_mut() else {
            return;
        };
        w.grant_live[n] = true;
        if w.grant_live[1 - n] && self.violation.is_none() {
            self.violation = Some(format!(
                "the witness granted the vote to {} while {} held it",
                self.nodes[n].name,
                self.nodes[1 - n].name
            ));
        }
    }

    /// Node `i` sends a message to the witness.
    pub(super) fn send_to_witness(&mut self, i: usize, message: WitnessMessage) {
        let now = self.local(i);
        self.note(format!(
            "{} tells the witness: {message:?}",
            self.nodes[i].name
        ));
        if let Some(m) = self.nodes[i].membership.as_mut() {
            let _ = m.send_message(WITNESS_HOST as u32 + 1, message.encode(), now);
        }
    }

    /// With a witness, node `i` starting `resource` while holding nothing of the group,
    /// having lost its peer, is a takeover: it needs the witness's vote or the peer
    /// known down (fenced, or confirmed by an operator).
    pub(super) fn check_takeover(&mut self, i: usize, resource: &str) {
        if self.witness.is_none() || self.violation.is_some() {
            return;
        }
        let holds = !self.nodes[i].running.is_empty() || self.disk_role(i) == Some(Role::Primary);
        let Some(c) = self.nodes[i].controller.as_ref() else {
            return;
        };
        if holds || !c.peer_lost() {
            return;
        }
        let vote = c.witness_vote();
        self.summary.witness_takeovers += 1;
        if vote != WitnessVote::Granted && !c.peer_known_down() {
            self.violation = Some(format!(
                "{} takes over (starts {resource}) without the witness's vote or a confirmed fence (vote {vote:?})",
                self.nodes[i].name
            ));
        }
    }

    /// After every step: the witness's core validates, and two nodes never both hold a
    /// vote the witness granted and has not ended.
    pub(super) fn check_witness(&self) -> Result<(), String> {
        let Some(w) = self.witness.as_ref() else {
            return Ok(());
        };
        if let Some(m) = w.membership.as_ref() {
            m.validate()
                .map_err(|e| self.fail(&format!("the witness's membership core: {e}")))?;
        }
        let granted = |i: usize| {
            self.nodes[i]
                .controller
                .as_ref()
                .is_some_and(|c| c.witness_vote() == WitnessVote::Granted)
        };
        if granted(0) && granted(1) && w.grant_live == [true, true] {
            return Err(self.fail("both nodes hold the witness's vote"));
        }
        Ok(())
    }

    /// After the calm phase: each node hears its peer, so neither is asking, holding a
    /// vote, refused or isolated.
    pub(super) fn check_witness_converged(&self) -> Result<(), String> {
        if self.witness.is_none() {
            return Ok(());
        }
        for n in &self.nodes {
            let vote = n.controller.as_ref().map(|c| c.witness_vote());
            if vote != Some(WitnessVote::None) {
                return Err(self.fail(&format!(
                    "{}'s vote is {vote:?} after the calm phase",
                    n.name
                )));
            }
        }
        Ok(())
    }
}
