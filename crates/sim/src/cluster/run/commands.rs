//! The shell's work for a node's commands: resource agents, messages, the fence
//! device, disk orders and a clean exit.

use super::*;

impl Cluster {
    pub(super) fn command(&mut self, i: usize, cmd: Command) {
        match cmd {
            Command::SendToWitness(message) => self.send_to_witness(i, message),
            Command::RunAction {
                action,
                group,
                resource,
                op,
                timeout,
            } => {
                self.summary.actions += 1;
                if op == Op::Start {
                    self.check_takeover(i, &resource);
                }
                if op != Op::Probe {
                    self.note(format!(
                        "{} runs {op:?} {group}/{resource}",
                        self.nodes[i].name
                    ));
                }
                if resource == "r0" {
                    if op == Op::Probe {
                        let primary = self.disk_role(i) == Some(Role::Primary);
                        let r = if primary {
                            result(OcfExit::Success, "primary")
                        } else {
                            result(OcfExit::NotRunning, "secondary")
                        };
                        self.later(
                            i,
                            Duration::from_millis(1),
                            Input::ActionDone {
                                action,
                                group,
                                resource,
                                op,
                                result: r,
                            },
                        );
                        return;
                    }
                    self.nodes[i].disk_action = Some(DiskAction {
                        action,
                        group,
                        resource,
                        op,
                        demoted: false,
                        deadline: self.now
                            + if op == Op::Stop {
                                Duration::from_secs(5)
                            } else {
                                timeout
                            },
                        asked_fence_peer: false,
                    });
                    self.disk_action_step(i);
                    return;
                }
                let (r, after) = self.agent(i, &resource, op, timeout);
                self.later(
                    i,
                    after,
                    Input::ActionDone {
                        action,
                        group,
                        resource,
                        op,
                        result: r,
                    },
                );
            }
            Command::RunMonitor {
                group, resource, ..
            } => {
                let running = if resource == "r0" {
                    self.disk_role(i) == Some(Role::Primary)
                } else {
                    self.nodes[i].running.contains(&resource)
                };
                let lie = !self.calm && self.rng.chance_ppm(self.rates.monitor_false_fail_ppm);
                let r = if lie {
                    self.fault("monitor-false-failure");
                    result(OcfExit::Generic, "simulated monitor failure")
                } else if running {
                    result(OcfExit::Success, "running")
                } else {
                    result(OcfExit::NotRunning, "not running")
                };
                let after = Duration::from_millis(self.rng.range(1, 30));
                self.later(
                    i,
                    after,
                    Input::MonitorDone {
                        group,
                        resource,
                        result: r,
                    },
                );
            }
            Command::Send { message, tag } => {
                let now = self.local(i);
                let sent = self.nodes[i]
                    .membership
                    .as_mut()
                    .map(|m| m.send_message((1 - i) as u32 + 1, message.encode(), now));
                match sent {
                    Some(Ok(id)) if tag != SendTag::Plain => {
                        self.tell_controller(i, Input::Sent { tag, id })
                    }
                    Some(Ok(_)) => {}
                    _ if tag != SendTag::Plain => {
                        self.tell_controller(i, Input::SendFailed { tag })
                    }
                    _ => {}
                }
            }
            Command::RunFenceDevice(tandem_fencing::Command::RunDevice {
                id,
                device,
                action,
                target,
                ..
            }) => {
                let t = self.nodes.iter().position(|n| n.name == target);
                let outcome = if self.switch_broken || t.is_none() {
                    self.note(format!(
                        "{} fences {target}: the switch fails",
                        self.nodes[i].name
                    ));
                    tandem_fencing::Outcome::Failed {
                        exit: Some(1),
                        output: "simulated switch failure".into(),
                    }
                } else {
                    if let Some(t) = t {
                        self.summary.fences += 1;
                        self.note(format!("{} FENCES {target}", self.nodes[i].name));
                        self.power_off(t, "fenced");
                        let back = if self.calm {
                            Duration::from_secs(2)
                        } else {
                            Duration::from_millis(self.rng.range(3_000, 15_000))
                        };
                        self.schedule(back, Ev::PowerOn { node: t });
                    }
                    tandem_fencing::Outcome::Success
                };
                let _ = action;
                self.later(
                    i,
                    Duration::from_millis(50),
                    Input::FenceDone {
                        id,
                        result: FenceResult {
                            device,
                            action: FenceAction::Off,
                            target: Some(target),
                            outcome,
                            stdout: String::new(),
                            duration_ms: 50,
                        },
                    },
                );
            }
            Command::RunFenceDevice(tandem_fencing::Command::SendToPeer(_)) => {}
            Command::Disks(order) => self.disk_order(i, order),
            // Notifications change nothing in the cluster.
            Command::Notify(_) => {}
            Command::Exit => {
                self.note(format!("{} stopped cleanly", self.nodes[i].name));
                // The daemon exits once its disks' metadata is durable (a demote answers
                // only then): let the core finish its queued metadata writes.
                for _ in 0..1000 {
                    if self.nodes[i].ios.is_empty() {
                        break;
                    }
                    self.complete_ios_all(i);
                    self.drain_disk(i);
                }
                let mut rng = self.rng.clone();
                self.nodes[i].stop_cleanly(&mut rng);
                self.rng = rng;
                self.writes.retain(|_, (n, _, _)| *n != i);
                self.flushes.retain(|_, (n, _)| *n != i);
                let back = Duration::from_millis(self.rng.range(500, 5_000));
                self.schedule(back, Ev::PowerOn { node: i });
            }
        }
    }

    /// A simulated resource agent: the world changes, and the result comes later.
    pub(super) fn agent(
        &mut self,
        i: usize,
        resource: &str,
        op: Op,
        timeout: Duration,
    ) -> (ActionResult, Duration) {
        let quick = Duration::from_millis(self.rng.range(1, 40));
        let faults = !self.calm;
        if faults && self.rng.chance_ppm(self.rates.agent_hang_ppm) && op != Op::Probe {
            self.fault("agent-hang");
            return (timed_out(timeout), timeout);
        }
        let running = self.nodes[i].running.contains(resource);
        match op {
            Op::Probe => {
                let exit = if running {
                    OcfExit::Success
                } else {
                    OcfExit::NotRunning
                };
                (result(exit, "probe"), quick)
            }
            Op::Start | Op::Restart => {
                if faults && self.rng.chance_ppm(self.rates.agent_start_fail_ppm) {
                    self.fault("agent-start-failure");
                    if op == Op::Restart {
                        self.nodes[i].running.remove(resource);
                    }
                    return (result(OcfExit::Generic, "simulated start failure"), quick);
                }
                self.nodes[i].running.insert(resource.to_string());
                (result(OcfExit::Success, "started"), quick)
            }
            Op::Stop => {
                if faults && self.rng.chance_ppm(self.rates.agent_stop_fail_ppm) {
                    self.fault("agent-stop-failure");
                    return (result(OcfExit::Generic, "simulated stop failure"), quick);
                }
                self.nodes[i].running.remove(resource);
                (result(OcfExit::Success, "stopped"), quick)
            }
        }
    }
}
