//! A lab's power (off, on, freeze, thaw) and its networks (carrier, partitions).

use super::*;

impl Lab {
    // ---------------------------------------------------------------- power

    /// Cuts the host's power: every process of its cgroup gets SIGKILL at once
    /// (`cgroup.kill`), and this returns only when all of them are gone *and reaped*
    /// (a zombie still answers `kill -0`, and daemons trust pid files that point at one),
    /// then takes its switch ports down. Mounts made inside the host vanish with its
    /// mount namespace. Its lossy disk, if it has one, drops every write not flushed
    /// yet. Idempotent.
    pub fn power_off(&mut self, host: &str) -> Result<(), LabError> {
        self.power_off_with(host, true)
    }

    /// As [`Lab::power_off`], but the lossy disk keeps the host's unflushed writes (they
    /// are written down, as by a battery-backed cache): today's behaviour of a lab
    /// without lossy disks, for tests that do not need the power cut to be faithful.
    pub fn power_off_keep_cache(&mut self, host: &str) -> Result<(), LabError> {
        self.power_off_with(host, false)
    }

    pub(super) fn power_off_with(&mut self, host: &str, drop_cache: bool) -> Result<(), LabError> {
        let _g = self.refresh()?;
        self.check_host(host)?;
        let hs = self.host_state(host)?;
        let cg_rel = host_cgroup_rel(&self.name, host);
        self.kill_and_reap(host, &cg_rel, hs.keeper_pid)?;
        let lines: Vec<String> = self
            .state
            .topology
            .attachments(host)
            .iter()
            .map(|a| format!("link set {} down", port_name(host, &a.net)))
            .collect();
        sys::ip_batch(Some(&switch_netns(&self.name)), &lines)?;
        let hs = self.state.hosts.entry(host.to_string()).or_default();
        hs.powered = false;
        hs.init_pid = None;
        hs.keeper_pid = None;
        save_state(&self.state)?;
        // After every process is reaped: a killed writer waits for the reply to a write
        // it had sent, so nothing of the host is in flight any more.
        if self.check_disk(host).is_ok() {
            let req = if drop_cache {
                crate::disk::DiskRequest::Drop(host.to_string())
            } else {
                crate::disk::DiskRequest::Sync(host.to_string())
            };
            crate::disk::request(&self.name, &req)?;
        }
        Ok(())
    }

    pub(super) fn kill_and_reap(
        &self,
        host: &str,
        cg_rel: &str,
        keeper: Option<u32>,
    ) -> Result<usize, LabError> {
        let cg = cg_path(cg_rel);
        if !cg.exists() {
            return Ok(0);
        }
        let killed = sys::cg_procs(&cg).len();
        sys::cg_kill(&cg)?;
        // Frozen tasks die once thawed; a powered-off host must not boot frozen either.
        sys::cg_write(&cg, "cgroup.freeze", "0")?;
        let start = sys::now();
        let mut last_kill = sys::now();
        loop {
            crate::reaper::sweep();
            if let Some(k) = keeper {
                sys::try_reap(k);
            }
            let populated = sys::cg_event(&cg, "populated")?;
            let left = sys::procs_in_cgroup(cg_rel);
            if !populated && left.is_empty() {
                return Ok(killed);
            }
            if populated && last_kill.elapsed() > Duration::from_millis(200) {
                // A fork that raced the first kill: kill again.
                sys::cg_kill(&cg)?;
                last_kill = sys::now();
            }
            if start.elapsed() > Duration::from_millis(KILL_TIMEOUT_MS) {
                let detail = left
                    .iter()
                    .map(|p| {
                        let parent = sys::proc_stat(p.ppid)
                            .map(|(i, _)| i.comm)
                            .unwrap_or_default();
                        format!(
                            "pid {} ({}) state {} parent {} ({parent})",
                            p.pid, p.comm, p.state, p.ppid
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(LabError::Unreaped {
                    host: host.to_string(),
                    detail,
                });
            }
            sys::pause_ms(5);
        }
    }

    /// Powers the host on: a cold boot. Its network namespace is rebuilt from the
    /// topology (addresses and rules added at run time are gone, MACs are the same),
    /// a new init gets fresh mount and PID namespaces, links come up. No process comes
    /// back. Idempotent.
    pub fn power_on(&mut self, host: &str) -> Result<(), LabError> {
        let _g = self.refresh()?;
        let hs = self.host_state(host)?;
        if hs.powered {
            return Ok(());
        }
        let sw = switch_netns(&self.name);
        for a in self.state.topology.attachments(host) {
            // Deleting one end of a veth pair deletes both.
            let _ = sys::run("ip", &["-n", &sw, "link", "del", &port_name(host, &a.net)]);
        }
        let ns = host_netns(&self.name, host);
        if netns_path(&ns).exists() {
            sys::run("ip", &["netns", "del", &ns])?;
        }
        self.build_host_net(host)?;
        self.boot(host)?;
        if let Some(hs) = self.state.hosts.get_mut(host) {
            hs.powered = true;
        }
        save_state(&self.state)
    }

    /// Whether the host is powered on.
    pub fn is_powered(&self, host: &str) -> Result<bool, LabError> {
        let st = load_state(&self.name)?;
        self.check_host(host)?;
        Ok(st.hosts.get(host).map(|h| h.powered).unwrap_or(false))
    }

    /// Freezes every process of the host (`cgroup.freeze`), returning once the kernel
    /// reports `frozen 1`: the host hangs, its sockets stay open, its peers hear nothing.
    pub fn freeze(&mut self, host: &str) -> Result<(), LabError> {
        let _g = self.refresh()?;
        if !self.host_state(host)?.powered {
            return Err(LabError::PoweredOff(host.to_string()));
        }
        let cg = cg_path(&host_cgroup_rel(&self.name, host));
        sys::cg_write(&cg, "cgroup.freeze", "1")?;
        sys::wait_until(&format!("host {host} to freeze"), FREEZE_TIMEOUT_MS, || {
            sys::cg_event(&cg, "frozen")
        })
    }

    /// Thaws a frozen host; returns once the kernel reports `frozen 0`.
    pub fn thaw(&mut self, host: &str) -> Result<(), LabError> {
        let _g = self.refresh()?;
        self.check_host(host)?;
        let cg = cg_path(&host_cgroup_rel(&self.name, host));
        sys::cg_write(&cg, "cgroup.freeze", "0")?;
        sys::wait_until(&format!("host {host} to thaw"), FREEZE_TIMEOUT_MS, || {
            Ok(!sys::cg_event(&cg, "frozen")?)
        })
    }

    /// Whether the host is frozen.
    pub fn is_frozen(&self, host: &str) -> Result<bool, LabError> {
        self.check_host(host)?;
        sys::cg_event(&cg_path(&host_cgroup_rel(&self.name, host)), "frozen")
    }

    // ---------------------------------------------------------------- network

    /// Cuts network `net`: with no hosts, every frame on it is dropped; with hosts, each
    /// is cut off from every other host on that network. Other networks keep working.
    /// Done with nftables in the switch namespace (bridge family, forward hook), so the
    /// links stay up: peers see silence, not a carrier loss.
    pub fn partition(&mut self, net: &str, hosts: &[&str]) -> Result<(), LabError> {
        let _g = self.refresh()?;
        for h in hosts {
            self.attachment(h, net)?;
        }
        if self.state.topology.net(net).is_none() {
            return Err(LabError::UnknownNet {
                lab: self.name.clone(),
                detail: format!("no network {net:?}"),
            });
        }
        let mut hs: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        hs.sort();
        hs.dedup();
        let p = Partition {
            net: net.to_string(),
            hosts: hs,
        };
        if !self.state.partitions.contains(&p) {
            self.state.partitions.push(p);
        }
        self.apply_partitions()?;
        save_state(&self.state)
    }

    /// Removes partitions: all of them (`net` None), those on one network, or the one
    /// isolating exactly `hosts` on `net`.
    pub fn heal(&mut self, net: Option<&str>, hosts: &[&str]) -> Result<(), LabError> {
        let _g = self.refresh()?;
        if let Some(n) = net {
            if self.state.topology.net(n).is_none() {
                return Err(LabError::UnknownNet {
                    lab: self.name.clone(),
                    detail: format!("no network {n:?}"),
                });
            }
        }
        let mut hs: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        hs.sort();
        hs.dedup();
        self.state.partitions.retain(|p| match net {
            None => false,
            Some(n) if p.net != n => true,
            Some(_) => !(hs.is_empty() || p.hosts == hs),
        });
        self.apply_partitions()?;
        save_state(&self.state)
    }

    /// Pulls (`up` false) or plugs back (`up` true) one host's cable on one network:
    /// the switch-side port goes down, so the host sees carrier loss on that interface
    /// (unlike [`Lab::partition`], which drops frames silently). A pulled cable stays
    /// pulled across power cycles.
    pub fn set_link(&mut self, host: &str, net: &str, up: bool) -> Result<(), LabError> {
        let _g = self.refresh()?;
        let port = self.port(host, net)?;
        let key = (host.to_string(), net.to_string());
        self.state.links_down.retain(|k| *k != key);
        if !up {
            self.state.links_down.push(key);
        }
        let powered = self.host_state(host)?.powered;
        // A powered-off host's ports stay down until power-on applies the cable state.
        if powered || !up {
            let state = if up { "up" } else { "down" };
            sys::ip_batch(
                Some(&switch_netns(&self.name)),
                &[format!("link set {port} {state}")],
            )?;
        }
        save_state(&self.state)
    }

    /// The active partitions.
    pub fn partitions(&self) -> Vec<Partition> {
        load_state(&self.name)
            .map(|s| s.partitions)
            .unwrap_or_default()
    }

    /// Rewrites the switch's nftables table from the partition list, atomically.
    pub(super) fn apply_partitions(&self) -> Result<(), LabError> {
        let mut rules = String::new();
        for p in &self.state.partitions {
            let net = match self.state.topology.net(&p.net) {
                Some(n) => n,
                None => continue,
            };
            let ports: Vec<String> = if p.hosts.is_empty() {
                net.hosts.keys().map(|h| port_name(h, &p.net)).collect()
            } else {
                p.hosts.iter().map(|h| port_name(h, &p.net)).collect()
            };
            for port in ports {
                rules.push_str(&format!(
                    "    iifname \"{port}\" drop\n    oifname \"{port}\" drop\n"
                ));
            }
        }
        let script = format!(
            "table bridge tandem_lab\ndelete table bridge tandem_lab\n\
             table bridge tandem_lab {{\n  chain forward {{\n    \
             type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        let ns = netns_path(&switch_netns(&self.name));
        let net_arg = format!("--net={}", ns.display());
        sys::run_input("nsenter", &[&net_arg, "nft", "-f", "-"], Some(&script)).map(|_| ())
    }
}
