//! The resource manager's shell: carries out what the controller
//! (`tandem-controller`, sans-IO) asks and feeds the results back.
//!
//! ```text
//!  events thread ─┐                        ┌─► workers: agent actions, monitors,
//!  ping thread ───┤  bounded channel       │    fence devices, outdates ──► inputs
//!  workers ───────┼─► Input ─► Controller ─┼─► membership driver: cluster messages
//!  control socket ┘   (one thread)         ├─► disk service: peer fenced, outdated…
//!                                          ├─► notify queue ([[notify]], notify.rs)
//!                                          └─► exit after a clean stop
//! ```
//!
//! This is the only place of the resource manager that reads the clock, spawns threads
//! or talks to the driver and the disk service; everything it decides is the
//! controller's, and is unit-tested there and driven by the cluster simulator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::Duration;

use tandem_agents::{Action, ActionResult, Agent, Outcome, Paths, RunOptions};
use tandem_config::{Config, ResourceKind};
use tandem_controller::{Command, Controller, DiskOrder, Op, SendTag};
use tandem_fencing::ProgramPaths;
use tandem_membership::NodeId;
use tandem_membership::driver::Driver;

pub use tandem_controller::Operator;

use crate::clock;
use crate::disks::remote as disks;
use crate::state::StateDir;

/// Inputs waiting for the controller at most (senders block beyond: a flood of events
/// slows its source instead of growing memory).
const INPUT_QUEUE_LEN: usize = 4096;

/// The longest the loop sleeps without looking at the controller's timers (a guard
/// against a timer missed by a clock step; the controller says when it is due).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What the shell's thread receives.
pub enum Input {
    /// An input for the controller.
    Controller(tandem_controller::Input),
    /// An operator request and where its answer goes.
    Operator(Operator, Sender<Result<serde_json::Value, String>>),
}

impl From<tandem_controller::Input> for Input {
    fn from(input: tandem_controller::Input) -> Self {
        Input::Controller(input)
    }
}

/// The shell's state; owned by its thread.
pub struct Manager {
    controller: Controller,
    config: Arc<Config>,
    peer_id: NodeId,
    driver: Arc<Driver>,
    inputs: SyncSender<Input>,
    agents: BTreeMap<(String, String), Result<Exec, String>>,
    fence_paths: ProgramPaths,
    notifier: Option<super::notify::Notifier>,
    /// Where maintenance mode is kept for the next daemon.
    state: StateDir,
    /// Maintenance mode (and when it was switched) as last kept there.
    kept_maintenance: (bool, u64),
    /// The disks the groups manage (a clean stop demotes the others first).
    managed_disks: Vec<String>,
}

impl Manager {
    /// A manager for `local`; resources start in state unknown (they are probed first).
    pub fn new(
        config: Arc<Config>,
        local: &str,
        peer_id: NodeId,
        driver: Arc<Driver>,
        inputs: SyncSender<Input>,
        notifier: Option<super::notify::Notifier>,
        state: StateDir,
    ) -> anyhow::Result<Self> {
        let mut controller = Controller::new(
            Arc::clone(&config),
            local,
            peer_id,
            clock::now(),
            clock::wall_ms(),
            seed(),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let kept_maintenance = state.maintenance()?;
        controller.resume_maintenance(kept_maintenance.0, kept_maintenance.1);
        let managed_disks = controller.managed_disks();
        let paths = Paths::default();
        let mut agents = BTreeMap::new();
        for group in &config.groups {
            for r in &group.resources {
                let agent = match &r.kind {
                    ResourceKind::Disk { disk } => Ok(Exec::Disk(disk.clone())),
                    _ => Agent::new(r, &paths)
                        .map(Exec::Agent)
                        .map_err(|e| e.to_string()),
                };
                agents.insert((group.name.clone(), r.name.clone()), agent);
            }
        }
        Ok(Self {
            controller,
            config,
            peer_id,
            driver,
            inputs,
            agents,
            fence_paths: crate::cmd::fence::program_paths(
                &[],
                tandem_fencing::device::EXTERNAL_PLUGIN_DIR.into(),
            ),
            notifier,
            state,
            kept_maintenance,
            managed_disks,
        })
    }

    /// Runs until the input channel closes, or exits the process after a clean stop.
    pub fn run(mut self, inputs: Receiver<Input>) {
        // The first plan (probes) without waiting for an input.
        self.controller
            .handle(clock::now(), tandem_controller::Input::Tick);
        self.carry_out();
        loop {
            let wait = self.controller.poll_timeout().map_or(MAX_WAIT, |at| {
                at.saturating_duration_since(clock::now()).min(MAX_WAIT)
            });
            match inputs.recv_timeout(wait) {
                Ok(Input::Controller(input)) => self.controller.handle(clock::now(), input),
                Ok(Input::Operator(op, reply)) => {
                    let _ = reply.send(self.controller.operator(clock::now(), op));
                }
                Err(RecvTimeoutError::Timeout) => self
                    .controller
                    .handle(clock::now(), tandem_controller::Input::Tick),
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.carry_out();
        }
    }

    /// Carries out every command the controller has queued, in order (maintenance mode
    /// kept on disk first: an exit among them must not lose it).
    fn carry_out(&mut self) {
        let maintenance = self.controller.maintenance();
        if maintenance != self.kept_maintenance {
            match self.state.set_maintenance(maintenance.0, maintenance.1) {
                Ok(()) => self.kept_maintenance = maintenance,
                Err(err) => tracing::error!(
                    "maintenance mode {}: not kept for the next daemon: {err:#}",
                    if maintenance.0 { "on" } else { "off" }
                ),
            }
        }
        while let Some(command) = self.controller.poll_command() {
            match command {
                Command::RunAction {
                    action,
                    group,
                    resource,
                    op,
                    timeout,
                } => {
                    let agent = self.agents.get(&(group.clone(), resource.clone())).cloned();
                    self.worker(move || {
                        let result = run_op(agent, op, &RunOptions::new(timeout));
                        tandem_controller::Input::ActionDone {
                            action,
                            group,
                            resource,
                            op,
                            result,
                        }
                    });
                }
                Command::RunMonitor {
                    group,
                    resource,
                    interval,
                    timeout,
                } => {
                    let Some(Ok(agent)) =
                        self.agents.get(&(group.clone(), resource.clone())).cloned()
                    else {
                        continue;
                    };
                    self.worker(move || {
                        let mut options = RunOptions::new(timeout);
                        options.interval = interval;
                        let result = agent.run(Action::Monitor, &options);
                        tandem_controller::Input::MonitorDone {
                            group,
                            resource,
                            result,
                        }
                    });
                }
                Command::Send { message, tag } => {
                    let now = clock::now();
                    match self.driver.send_message(self.peer_id, message.encode()) {
                        Ok(id) if tag != SendTag::Plain => self
                            .controller
                            .handle(now, tandem_controller::Input::Sent { tag, id }),
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!("cluster message not sent: {err}");
                            if tag != SendTag::Plain {
                                self.controller
                                    .handle(now, tandem_controller::Input::SendFailed { tag });
                            }
                        }
                    }
                }
                Command::SendToWitness(message) => {
                    let Some(witness) = tandem_controller::witness_node_id(&self.config) else {
                        continue;
                    };
                    if let Err(err) = self.driver.send_message(witness, message.encode()) {
                        tracing::warn!("message to the witness not sent: {err}");
                    }
                }
                Command::RunFenceDevice(command) => {
                    let devices = self.config.fence_devices.clone();
                    let paths = self.fence_paths.clone();
                    let inputs = self.inputs.clone();
                    std::thread::spawn(move || {
                        if let Some((id, result)) =
                            tandem_fencing::execute(&devices, &command, &paths)
                        {
                            let _ = inputs
                                .send(tandem_controller::Input::FenceDone { id, result }.into());
                        }
                    });
                }
                Command::Disks(order) => match order {
                    DiskOrder::PeerFenced => disks::peer_fenced(),
                    DiskOrder::PeerOutdated(disk) => disks::peer_outdated(&disk),
                    DiskOrder::PeerUnreachable(disk) => disks::peer_unreachable(&disk),
                    DiskOrder::Leave => disks::leave(),
                    DiskOrder::StopUnmanaged => disks::stop(&self.managed_disks),
                    DiskOrder::Detach => disks::detach(),
                    DiskOrder::Outdate { disk, request } => self.worker(move || {
                        let result = disks::outdate_local(&disk);
                        tandem_controller::Input::OutdateDone {
                            disk,
                            request,
                            result,
                        }
                    }),
                },
                Command::Notify(notice) => {
                    if let Some(n) = &self.notifier {
                        n.send(notice);
                    }
                }
                Command::Exit => std::process::exit(0),
            }
        }
    }

    /// Runs `job` on a worker thread and feeds what it returns back.
    fn worker(&self, job: impl FnOnce() -> tandem_controller::Input + Send + 'static) {
        let inputs = self.inputs.clone();
        std::thread::spawn(move || {
            let _ = inputs.send(job().into());
        });
    }
}

fn run_op(agent: Option<Result<Exec, String>>, op: Op, options: &RunOptions) -> ActionResult {
    match agent {
        Some(Ok(agent)) => match op {
            Op::Start => agent.run(Action::Start, options),
            Op::Stop => agent.run(Action::Stop, options),
            Op::Probe => agent.run(Action::Monitor, options),
            Op::Restart => {
                let stopped = agent.run(Action::Stop, options);
                if stopped.outcome(Action::Stop) == Outcome::Ok {
                    agent.run(Action::Start, options)
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
    }
}

/// A seed for the coordinator's retry jitter: different on every start and node.
fn seed() -> u64 {
    clock::wall_ms() ^ (u64::from(std::process::id()) << 32)
}

/// Starts the manager thread.
pub fn spawn(manager: Manager, inputs: Receiver<Input>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("manager".into())
        .spawn(move || manager.run(inputs))?;
    Ok(())
}

/// A fresh, bounded input channel.
pub fn channel() -> (SyncSender<Input>, Receiver<Input>) {
    mpsc::sync_channel(INPUT_QUEUE_LEN)
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
        let is_up = || disks::request(disk, DiskCommand::Status, Caller::Group).body["up"] == true;
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
        let response = disks::request(disk, command, Caller::Group);
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
