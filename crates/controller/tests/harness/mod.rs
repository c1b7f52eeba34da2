//! The controller tests' shell: it runs nothing and answers what the test says.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_agents::{ActionResult, OcfExit};
use tandem_controller::{Command, Controller, Input, Op, PeerMessage};
use tandem_membership::Event;
use tandem_witness::WitnessMessage;

/// Two nodes, one group of an address and an init script, no fencing (also the fuzz
/// target's cluster: `crates/controller/fuzz`).
pub const CONFIG: &str = include_str!("config.toml");

pub const PEER: u32 = 2;

pub struct Shell {
    pub c: Controller,
    pub now: Instant,
    /// Every command seen, in order.
    pub seen: Vec<Command>,
    pub peer_id: u32,
}

#[allow(clippy::disallowed_methods)]
pub fn t0() -> Instant {
    Instant::now()
}

pub fn ok() -> ActionResult {
    ActionResult::done(OcfExit::Success, "ok", Duration::ZERO)
}

pub fn not_running() -> ActionResult {
    ActionResult::done(OcfExit::NotRunning, "not running", Duration::ZERO)
}

pub fn failed() -> ActionResult {
    ActionResult::done(OcfExit::Generic, "broken", Duration::ZERO)
}

impl Shell {
    pub fn new(config: &str) -> Shell {
        Shell::on("a", config)
    }

    /// The controller of node `local` ("a" has id 1, "b" id 2).
    pub fn on(local: &str, config: &str) -> Shell {
        let (config, _) = tandem_config::Config::parse_str("t.toml", config).expect("config");
        let now = t0();
        let peer_id = if local == "a" { PEER } else { 1 };
        let c = Controller::new(Arc::new(config), local, peer_id, now, 1_000_000, 7).unwrap();
        let mut s = Shell {
            c,
            now,
            seen: Vec::new(),
            peer_id,
        };
        s.feed(Input::Tick);
        s
    }

    pub fn feed(&mut self, input: Input) -> Vec<Command> {
        self.c.handle(self.now, input);
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<Command> {
        let mut out = Vec::new();
        while let Some(c) = self.c.poll_command() {
            out.push(c);
        }
        self.seen.extend(out.iter().cloned());
        out
    }

    pub fn advance(&mut self, d: Duration) -> Vec<Command> {
        self.now += d;
        self.feed(Input::Tick)
    }

    pub fn peer_up(&mut self) -> Vec<Command> {
        self.feed(Input::Membership(Event::NodeUp {
            node: self.peer_id,
            incarnation: 1,
        }))
    }

    pub fn peer_says(&mut self, m: PeerMessage) -> Vec<Command> {
        self.feed(Input::Membership(Event::Message {
            from: self.peer_id,
            payload: m.encode(),
        }))
    }

    /// The claims this node sent, oldest first: (group, id).
    pub fn claims_sent(&self) -> Vec<(String, u64)> {
        self.seen
            .iter()
            .filter_map(|c| match c {
                Command::Send {
                    message: PeerMessage::Claim { group, id },
                    ..
                } => Some((group.clone(), *id)),
                _ => None,
            })
            .collect()
    }

    /// The peer answers this node's newest claim.
    pub fn answer_claim(&mut self, granted: bool) -> Vec<Command> {
        let (group, id) = self.claims_sent().pop().expect("no claim was sent");
        self.peer_says(PeerMessage::ClaimAnswer { group, id, granted })
    }

    pub fn done(&mut self, op: Op, resource: &str, result: ActionResult) -> Vec<Command> {
        let action = self
            .seen
            .iter()
            .rev()
            .find_map(|c| match c {
                Command::RunAction {
                    action,
                    resource: r,
                    op: o,
                    ..
                } if r == resource && *o == op => Some(*action),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {op:?} of {resource} was asked for"));
        self.feed(Input::ActionDone {
            action,
            group: "g".into(),
            resource: resource.into(),
            op,
            result,
        })
    }

    /// Probes answered "not running", the peer up and reporting nothing.
    pub fn idle_cluster(&mut self) {
        self.peer_up();
        self.done(Op::Probe, "ip", not_running());
        self.done(Op::Probe, "svc", not_running());
        self.peer_says(PeerMessage::Report {
            group: "g".into(),
            resources: Default::default(),
        });
    }

    /// The group started here (home), the claim granted, every start answered ok.
    pub fn started_here(&mut self) {
        self.idle_cluster();
        self.answer_claim(true);
        self.done(Op::Start, "ip", ok());
        self.done(Op::Start, "svc", ok());
    }
}

pub fn runs(cmds: &[Command]) -> Vec<(Op, String)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::RunAction { op, resource, .. } => Some((*op, resource.clone())),
            _ => None,
        })
        .collect()
}

/// The controller configuration with fencing through a device, and a witness.
pub fn witness_config(with_witness: bool) -> String {
    let mut c = CONFIG.replace(
        "fencing = \"none\"",
        "fencing = \"required\"\nfencing_delay = \"5s\"",
    );
    c.push_str(
        r#"
[[fence_device]]
name = "sw"
agent = "fence_dummy"
plugs = { a = "1", b = "2" }
"#,
    );
    if with_witness {
        c.push_str("\n[witness]\nname = \"w\"\n");
    }
    c
}

pub const WITNESS: u32 = 3;

impl Shell {
    pub fn witness_says(&mut self, m: WitnessMessage) -> Vec<Command> {
        self.feed(Input::Membership(Event::Message {
            from: WITNESS,
            payload: m.encode(),
        }))
    }

    pub fn witness_up(&mut self) -> Vec<Command> {
        self.feed(Input::Membership(Event::NodeUp {
            node: WITNESS,
            incarnation: 1,
        }))
    }

    pub fn peer_dead(&mut self) -> Vec<Command> {
        self.feed(Input::Membership(Event::NodeDead {
            node: self.peer_id,
            incarnation: Some(1),
        }))
    }
}

pub fn fences(cmds: &[Command]) -> usize {
    cmds.iter()
        .filter(|c| matches!(c, Command::RunFenceDevice(_)))
        .count()
}

pub fn vote_requests(cmds: &[Command]) -> Vec<u64> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::SendToWitness(WitnessMessage::VoteRequest { request, .. }) => Some(*request),
            _ => None,
        })
        .collect()
}
