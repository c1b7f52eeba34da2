//! The faults a seed injects while the fault phase lasts.

use super::*;

impl Cluster {
    /// Maybe injects a fault: the nodes' kinds in every run, the witness's kinds (from
    /// 100 up) only in a run with a witness, so a run without one draws as before.
    pub(super) fn maybe_fault(&mut self) {
        if !self.rng.chance_ppm(self.rates.fault_ppm) {
            return;
        }
        let i = self.rng.below(2) as usize;
        let name = self.nodes[i].name.clone();
        let kinds = if self.witness.is_some() { 132 } else { 100 };
        match self.rng.below(kinds) {
            0..=17 => {
                self.fault("power-off");
                self.power_off(i, "power cut");
                let back = Duration::from_millis(self.rng.range(2_000, 12_000));
                self.schedule(back, Ev::PowerOn { node: i });
            }
            18..=29 => {
                if self.nodes[i].alive() {
                    self.fault("freeze");
                    self.note(format!("{name} freezes"));
                    self.nodes[i].frozen = true;
                    let back = Duration::from_millis(self.rng.range(300, 4_000));
                    self.schedule(back, Ev::Thaw { node: i });
                }
            }
            30..=49 => {
                let net = self.rng.below(NETS as u64) as usize;
                self.fault(if net == 0 { "cut-hb" } else { "cut-lan" });
                self.note(format!("net {net} cut"));
                self.cut[0][net] = true;
                let back = Duration::from_millis(self.rng.range(500, 8_000));
                self.schedule(back, Ev::Heal { pair: 0, net });
            }
            50..=57 => {
                self.fault("cut-all");
                self.note("every network cut".into());
                self.cut[0] = [true; NETS];
                for net in 0..NETS {
                    let back = Duration::from_millis(self.rng.range(500, 6_000));
                    self.schedule(back, Ev::Heal { pair: 0, net });
                }
            }
            58..=64 => {
                self.fault("clock-jump");
                let jump = Duration::from_millis(self.rng.range(100, 3_000));
                self.note(format!("{name}'s clock jumps {jump:?}"));
                self.nodes[i].skew += jump;
            }
            65..=71 => {
                self.fault("switch-broken");
                self.note("the power switch breaks".into());
                self.switch_broken = true;
                let back = Duration::from_millis(self.rng.range(1_000, 10_000));
                self.schedule(back, Ev::SwitchFixed);
            }
            72..=81 => {
                if self.nodes[i].alive() {
                    let kind = if self.rng.below(2) == 0 {
                        RequestKind::Standby
                    } else {
                        RequestKind::Takeover
                    };
                    self.fault("operator-request");
                    self.note(format!("operator on {name}: {kind:?} all"));
                    let now = self.local(i);
                    if let Some(c) = self.nodes[i].controller.as_mut() {
                        let _ = c.operator(now, Operator::Request(kind, Scope::All));
                    }
                    self.drain(i);
                }
            }
            100..=107 => {
                if self.witness.as_ref().is_some_and(|w| w.powered) {
                    self.fault("witness-power-off");
                    self.witness_power_off();
                    let back = Duration::from_millis(self.rng.range(1_000, 10_000));
                    self.schedule(back, Ev::WitnessPowerOn);
                }
            }
            108..=115 => {
                self.fault("cut-witness");
                self.note(format!("{name} and the witness lose each other"));
                self.cut_pair(pair(i, WITNESS_HOST), 500, 8_000);
            }
            116..=123 => {
                self.fault("isolate-node");
                self.note(format!("{name} is cut off from its peer and the witness"));
                self.cut_pair(pair(i, 1 - i), 500, 6_000);
                self.cut_pair(pair(i, WITNESS_HOST), 500, 6_000);
            }
            124..=131 => {
                self.fault("partition-witness-one-side");
                let other = self.nodes[1 - i].name.clone();
                self.note(format!(
                    "the witness loses {name}, then the nodes lose each other: the witness hears only {other}"
                ));
                // The witness loses one node first; the nodes lose each other a moment
                // later, when their requests meet a witness that hears one side only
                // (or is about to: the order of the dead verdicts varies).
                self.cut_pair(pair(i, WITNESS_HOST), 2_000, 9_000);
                let later = Duration::from_millis(self.rng.range(0, 1_500));
                let lasting = self.rng.range(500, 6_000);
                self.schedule(
                    later,
                    Ev::Cut {
                        pair: pair(i, 1 - i),
                        lasting_ms: lasting,
                    },
                );
            }
            _ => {
                if self.nodes[i].alive() && !self.nodes[i].stopping {
                    self.fault("clean-stop");
                    self.note(format!("{name} stops cleanly"));
                    self.nodes[i].stopping = true;
                    self.tell_controller(i, Input::Shutdown);
                    self.drain(i);
                }
            }
        }
    }

    /// Cuts every network between the hosts of pair `p`, healing after `min_ms..max_ms`.
    fn cut_pair(&mut self, p: usize, min_ms: u64, max_ms: u64) {
        let lasting = self.rng.range(min_ms, max_ms);
        self.cut_pair_for(p, lasting);
    }

    /// Cuts every network between the hosts of pair `p` for `lasting_ms`.
    pub(super) fn cut_pair_for(&mut self, p: usize, lasting_ms: u64) {
        self.cut[p] = [true; NETS];
        let back = Duration::from_millis(lasting_ms);
        for net in 0..NETS {
            self.schedule(back, Ev::Heal { pair: p, net });
        }
    }
}
