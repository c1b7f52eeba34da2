//! The invariants checked after every step and at the end of the calm phase.

use super::*;

impl Cluster {
    // ------------------------------------------------------------------ checks

    pub(super) fn check(&mut self) -> Result<(), String> {
        if let Some(v) = self.violation.take() {
            return Err(self.fail(&v));
        }
        self.check_witness()?;
        for i in 0..2 {
            if let Some(d) = self.nodes[i].disk.as_ref() {
                d.validate();
                if d.connection().replicating() {
                    self.nodes[i].handshaked = true;
                }
            }
            if let Some(m) = self.nodes[i].membership.as_ref() {
                m.validate()
                    .map_err(|e| self.fail(&format!("membership core: {e}")))?;
            }
            let seen = self.nodes[i].disk.as_ref().map(|d| {
                let st = d.status();
                format!(
                    "{:?} {:?}/{:?} {:?} gens {:x}/{:x} dirty {}{}{}",
                    st.connection,
                    st.disk_state,
                    st.peer_disk_state,
                    st.role,
                    st.generations.current,
                    st.generations.bitmap,
                    st.out_of_sync_bytes > 0,
                    if st.crashed_primary { " crashed" } else { "" },
                    st.last_decision
                        .map(|d| format!(" decided {d:?}"))
                        .unwrap_or_default()
                )
            });
            if let Some(seen) = seen
                && seen != self.nodes[i].disk_seen
            {
                let traced = std::env::var("TANDEM_SIM_TRACE_BLOCK")
                    .ok()
                    .and_then(|b| b.parse::<u64>().ok())
                    .map(|b| {
                        let d = &self.nodes[i].storage.disk;
                        format!(
                            " [block {b}: write {:?}]",
                            version(&d.read(b * BLOCK, BLOCK as usize), b)
                        )
                    })
                    .unwrap_or_default();
                self.note(format!("{} r0: {seen}{traced}", self.nodes[i].name));
                self.nodes[i].disk_seen = seen;
            }
        }
        let primaries: Vec<usize> = (0..2)
            .filter(|&i| self.disk_role(i) == Some(Role::Primary))
            .collect();
        if primaries.len() == 2 {
            return Err(self.fail("two primaries of r0"));
        }
        for r in AGENT_RESOURCES {
            if self
                .nodes
                .iter()
                .all(|n| n.powered && n.running.contains(r))
            {
                return Err(self.fail(&format!("both nodes run {r}")));
            }
        }
        for i in 0..2 {
            let primary = self.disk_role(i) == Some(Role::Primary);
            if primary && !self.nodes[i].was_primary {
                self.summary.promotions += 1;
                self.note(format!("{} promotes r0", self.nodes[i].name));
                self.check_promotion(i)?;
            }
            self.nodes[i].was_primary = primary;
        }
        Ok(())
    }

    /// A promotion (never forced in the simulation) serves every acknowledged write.
    pub(super) fn check_promotion(&self, i: usize) -> Result<(), String> {
        let data = self.nodes[i].storage.disk.read(0, DISK_BYTES as usize);
        for (b, chunk) in data.chunks(BLOCK as usize).enumerate() {
            let v = version(chunk, b as u64).map_err(|e| self.fail(&e))?;
            let promised = self.acked[b];
            if v < promised {
                return Err(self.fail(&format!(
                    "{} promoted r0 without write {promised} acknowledged at block {b} (it holds {v})",
                    self.nodes[i].name
                )));
            }
        }
        Ok(())
    }

    pub(super) fn check_converged(&self) -> Result<(), String> {
        self.check_witness_converged()?;
        let mut holders = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive() {
                return Err(self.fail(&format!("{} is down after the calm phase", n.name)));
            }
            let d = n.disk.as_ref().ok_or_else(|| self.fail("no disk core"))?;
            let st = d.status();
            if st.connection != ConnState::Connected
                || st.disk_state != tandem_disk::core::DiskState::UpToDate
                || st.out_of_sync_bytes != 0
            {
                return Err(self.fail(&format!(
                    "{}'s r0 did not converge: {:?} {:?} {} bytes out of sync, suspended {:?}, last disconnect {:?}",
                    n.name, st.connection, st.disk_state, st.out_of_sync_bytes, st.suspended_ms, st.last_disconnect_reason
                )));
            }
            let all =
                AGENT_RESOURCES.iter().all(|r| n.running.contains(*r)) && d.role() == Role::Primary;
            let any =
                AGENT_RESOURCES.iter().any(|r| n.running.contains(*r)) || d.role() == Role::Primary;
            if all {
                holders.push(i);
            } else if any {
                let plan = n
                    .controller
                    .as_ref()
                    .map(|c| c.status()["transition"].to_string())
                    .unwrap_or_default();
                return Err(self.fail(&format!(
                    "{} runs part of the group after the calm phase: {:?}, r0 {:?}; its plan: {plan}",
                    n.name,
                    n.running,
                    d.role()
                )));
            }
        }
        if holders.len() != 1 {
            let why: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|n| n.controller.as_ref())
                .map(|c| {
                    let st = c.status();
                    format!(
                        "{} / blocked: {}",
                        st["transition"], st["groups"][0]["blocked"]
                    )
                })
                .collect();
            return Err(self.fail(&format!(
                "the group runs on {} node(s) after the calm phase; controllers: {why:?}",
                holders.len()
            )));
        }
        Ok(())
    }
}
