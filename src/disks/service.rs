//! The disk service's work on its disks: up and down, roles, the local device, status.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tandem_config::Disk;
use tandem_disk::core::AdminError;
use tandem_disk::driver::{self, DriverConfig, DriverHandle};
use tandem_nbd::{Server, ServerConfig};

use super::monitor::{forward_fence_peer_requests, startup_wait_log};
use super::settings::{core_config, fuse_threads, link_secret, local_paths, meta_location, millis};
use super::{
    Caller, DEMOTE_PATIENCE_BEYOND_LINK, DiskCommand, OPERATOR_DEMOTE_PATIENCE,
    PRIMARY_WAITS_FOR_PEER_OUTDATE, PRIMARY_WAITS_FOR_STARTUP, ReplicatedDevice, Running,
    STATUS_TIMEOUT, Service, Slot, ask_fence_peer, startup_over,
};

impl Service {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn running(&self, name: &str) -> Option<Arc<Running>> {
        self.lock().get(name).and_then(|s| s.running.clone())
    }

    pub(super) fn running_nodes(&self) -> Vec<(String, DriverHandle)> {
        self.lock()
            .iter()
            .filter_map(|(n, s)| s.running.as_ref().map(|r| (n.clone(), r.driver.clone())))
            .collect()
    }

    pub(super) fn command(
        &'static self,
        name: &str,
        command: &DiskCommand,
        caller: Caller,
    ) -> anyhow::Result<Option<String>> {
        if *command == DiskCommand::Up {
            return self.up(name).map(|()| None);
        }
        if *command == DiskCommand::Status {
            return Ok(None);
        }
        let Some(r) = self.running(name) else {
            bail!("disk is down (tandem disk up {name})");
        };
        let rt = &self.runtime;
        match command {
            DiskCommand::Up | DiskCommand::Status => Ok(None),
            DiskCommand::Down => self.down(name, &r).map(|()| None),
            DiskCommand::Primary { force } => {
                if let (false, Caller::Operator, Some(group)) =
                    (*force, caller, self.managed.get(name))
                {
                    bail!(
                        "disk {name} belongs to group {group}, which promotes it where the group runs: use `tandem takeover` (or `--force` to promote it by hand anyway)"
                    );
                }
                if !force && r.waiting() {
                    // Woken by the node's event loop in the step that connects, or at
                    // the end of the wait's time, whichever comes first.
                    let limit = r.wait_left().map_or(PRIMARY_WAITS_FOR_STARTUP, |l| {
                        l.min(PRIMARY_WAITS_FOR_STARTUP)
                    });
                    let mut link = r.link.clone();
                    // The timer must be made inside the runtime.
                    let _ = rt.block_on(async {
                        tokio::time::timeout(limit, link.wait_for(startup_over))
                            .await
                            .map(|r| r.map(|l| *l))
                    });
                    if r.waiting() {
                        let left = match r.wait_left() {
                            None => "no timeout (wfc_timeout = 0)".to_string(),
                            Some(left) => format!("{} s left", left.as_millis().div_ceil(1000)),
                        };
                        bail!(
                            "still waiting for the peer at startup ({left}); `primary --force` goes on alone"
                        );
                    }
                }
                // A peer that is demoting or gone still reads as primary until its state
                // arrives or the link times out (a node that said goodbye demoted before
                // it did; a fenced one takes `net_timeout` to be noticed): wait that long.
                let net_timeout = self
                    .lock()
                    .get(name)
                    .map_or(tandem_config::defaults::NET_TIMEOUT, |s| s.disk.net_timeout);
                let deadline = crate::clock::now() + net_timeout + Duration::from_secs(1);
                // Alone, with a peer that is neither outdated nor fenced: the cluster is
                // asked to outdate it (or fence it), as DRBD calls its fence-peer
                // handler before a promotion; the promotion waits for the answer.
                let mut outdate_deadline = None;
                let before = rt.block_on(r.driver.status())?;
                loop {
                    match rt.block_on(r.driver.promote(*force))? {
                        Err(AdminError::PeerIsPrimary) if crate::clock::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        // A sync target that just connected (both nodes back from a
                        // power cut: the crashed primary's activity-log extents come
                        // from the peer) is resynced in a moment: wait for it rather
                        // than fail the group's start, which would bar this node from
                        // the group for its failure timeout (`tandem lab scenarios
                        // PowerOffBoth`).
                        Err(AdminError::Resyncing) if crate::clock::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(AdminError::PeerNotOutdated) => {
                            let now = crate::clock::now();
                            let until = *outdate_deadline.get_or_insert_with(|| {
                                ask_fence_peer(name);
                                now + PRIMARY_WAITS_FOR_PEER_OUTDATE
                            });
                            if now >= until {
                                bail!(
                                    "the peer is neither known outdated nor fenced, and the cluster could not make it so within {} s: fence it (`tandem fence NODE`, or `tandem fence confirm NODE` once it is down), or `primary --force`",
                                    PRIMARY_WAITS_FOR_PEER_OUTDATE.as_secs()
                                );
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        result => break result?,
                    }
                }
                r.primary.store(true, Ordering::Relaxed);
                r.promoted_unix_ms
                    .store(crate::clock::wall_ms(), Ordering::Relaxed);
                if let Err(err) = self.publish_local(name, &r) {
                    // The local device exists exactly while this node is primary: a
                    // primary without it would leave whatever mounts it stranded.
                    let undo = match self.demote_durably(&r, r.demote_patience) {
                        Ok(()) => "demoted again".to_string(),
                        Err(e) => format!("and the demotion that should undo it failed: {e:#}"),
                    };
                    bail!("promoted, but the local device could not be published: {err:#}; {undo}");
                }
                let discarded = match before.disk_state {
                    _ if !*force => None,
                    tandem_disk::core::DiskState::Outdated => Some(
                        "this copy was outdated: writes the peer acknowledged after that are discarded when the disks reconnect",
                    ),
                    tandem_disk::core::DiskState::Inconsistent => Some(
                        "this copy was inconsistent: the peer's data is overwritten with it when the disks reconnect",
                    ),
                    _ if !before.connection.replicating() && !before.peer_outdated => Some(
                        "the peer was neither outdated nor fenced: if it is primary too, or holds newer writes, the disks report split brain when they reconnect",
                    ),
                    _ => None,
                };
                if let Some(what) = discarded {
                    tracing::warn!(disk = %name, "forced primary: {what}");
                }
                Ok(discarded.map(|w| format!("forced primary: {w}")))
            }
            // A group's stop waits for I/O in flight to drain (a suspended disk's held
            // writes resolve once the peer is outdated or fenced); an operator's
            // `secondary` answers at once.
            DiskCommand::Secondary => {
                // A group waits as long as a dead peer's link can take to go; an
                // operator for one barrier round trip, and is told why if that was
                // not enough (suspended writes wait for the peer's fate, not for this).
                let patience = match caller {
                    Caller::Group => r.demote_patience,
                    Caller::Operator => OPERATOR_DEMOTE_PATIENCE,
                };
                // The device goes first, while the disk still takes writes: refused
                // (nothing changes) while a file system is mounted on it; what buffered
                // writers left in its cache is written back and flushed.
                self.unpublish_local(name, &r)?;
                if let Err(err) = self.demote_durably(&r, patience) {
                    // Still primary, so the device comes back.
                    if let Err(e) = self.publish_local(name, &r) {
                        tracing::error!(disk = %name, "still primary after a failed demotion, but the local device could not be published again: {e:#}");
                    }
                    return Err(err);
                }
                Ok(None)
            }
            DiskCommand::Connect { discard_my_data } => {
                rt.block_on(r.driver.connect(*discard_my_data))?;
                Ok(None)
            }
            DiskCommand::Disconnect => {
                rt.block_on(r.driver.disconnect())?;
                Ok(None)
            }
            DiskCommand::Verify => {
                rt.block_on(r.driver.verify())??;
                Ok(None)
            }
            DiskCommand::Invalidate => {
                rt.block_on(r.driver.invalidate())??;
                Ok(None)
            }
        }
    }

    /// Starts a disk: metadata checked, node started, NBD socket bound, startup wait.
    pub(super) fn up(&'static self, name: &str) -> anyhow::Result<()> {
        let disk = {
            let slots = self.lock();
            let Some(slot) = slots.get(name) else {
                bail!("no disk {name:?} on this node");
            };
            if slot.running.is_some() {
                return Ok(());
            }
            slot.disk.clone()
        };
        let result = self.start_disk(&disk);
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(name) else {
            bail!("no disk {name:?} on this node");
        };
        match result {
            Ok(running) => {
                slot.running = Some(running);
                slot.error = None;
                Ok(())
            }
            Err(err) => {
                slot.error = Some(format!("{err:#}"));
                Err(err)
            }
        }
    }

    pub(super) fn start_disk(&'static self, disk: &Disk) -> anyhow::Result<Arc<Running>> {
        let name = disk.name.clone();
        let host = disk
            .host(&self.local)
            .with_context(|| format!("no [disk.on.{}] entry", self.local))?;
        let peer = disk
            .hosts
            .iter()
            .find(|h| h.node != self.local)
            .context("the disk names no peer node")?;
        let cfg = DriverConfig {
            backing: host.backing.clone(),
            meta: meta_location(&host.meta)?,
            listen: host.address,
            peer: peer.address,
            secret: link_secret(&self.key_secret, &name),
            connect_interval: disk.connect_interval,
            core: core_config(disk),
        };
        let socket = tandem_nbd::default_socket_path(&name);
        let several_groups = {
            let slots = self.lock();
            let first = slots.values().next().map(|s| s.disk.resync_group);
            slots.values().any(|s| Some(s.disk.resync_group) != first)
        };
        let (wfc, degr) = (millis(disk.wfc_timeout), millis(disk.degr_wfc_timeout));
        let rt = &self.runtime;
        let (node, server, primary, wait_ms, device) = rt.block_on(async {
            let node = driver::start(cfg)
                .await
                .with_context(|| format!("start the replication driver on {}", host.address))?;
            let primary = Arc::new(AtomicBool::new(false));
            let device = Arc::new(ReplicatedDevice::new(node.clone(), primary.clone()));
            let access = self.nbd_access;
            let server = Server::new(ServerConfig {
                unix_access: access,
                ..ServerConfig::default()
            });
            let listener = match async {
                server.add_export(&name, &format!("tandem disk {name}"), device.clone())?;
                // Also tightens a directory an older daemon left more open.
                tandem_nbd::secure_socket_dir(Path::new(tandem_nbd::DEFAULT_SOCKET_DIR), &access)?;
                tandem_nbd::bind_unix(&socket, &access).await
            }
            .await
            {
                Ok(l) => l,
                Err(err) => {
                    let _ = node.shutdown().await;
                    return Err(anyhow!(err).context(format!("serve NBD on {}", socket.display())));
                }
            };
            tokio::spawn(server.clone().serve_unix(listener, Some(name.clone())));
            if several_groups {
                // Until the monitor has seen every disk, no resync may jump the order.
                let _ = node.set_resync_paused(true).await;
            }
            let wait_ms = node.startup_wait_ms(wfc, degr).await?;
            anyhow::Ok((node, server, primary, wait_ms, device))
        })?;
        let running = Arc::new(Running {
            link: node.link(),
            driver: node,
            server,
            socket: socket.clone(),
            primary,
            resync_paused: AtomicBool::new(several_groups),
            wait_gave_up: Arc::new(AtomicBool::new(false)),
            detach_logged: AtomicBool::new(false),
            wait_ms,
            started: crate::clock::now(),
            device,
            local_paths: local_paths(&name, host),
            local: Mutex::new(None),
            promoted_unix_ms: AtomicU64::new(0),
            published_unix_ms: AtomicU64::new(0),
            demote_patience: Duration::from_millis(core_config(disk).ping_timeout_ms)
                + DEMOTE_PATIENCE_BEYOND_LINK,
        });
        rt.spawn(startup_wait_log(
            name.clone(),
            running.link.clone(),
            wait_ms,
            running.started,
            running.wait_gave_up.clone(),
        ));
        rt.spawn(forward_fence_peer_requests(
            name.clone(),
            running.link.clone(),
        ));
        tracing::info!(
            disk = %name,
            listen = %host.address,
            peer = %peer.address,
            nbd = %socket.display(),
            "disk up"
        );
        Ok(running)
    }

    pub(super) fn down(&self, name: &str, r: &Running) -> anyhow::Result<()> {
        let rt = &self.runtime;
        // As DRBD refuses to take down a device someone holds open.
        let clients = r.server.stats().connections_active;
        if clients > 0 {
            bail!(
                "in use by {clients} NBD client(s) on {}",
                r.socket.display()
            );
        }
        self.unpublish_local(name, r).context("cannot go down")?;
        // No new NBD clients from here on.
        r.server.shutdown();
        r.server.remove_export(name);
        self.demote_durably(r, r.demote_patience)
            .context("cannot demote before going down")?;
        rt.block_on(r.driver.shutdown())?;
        let _ = std::fs::remove_file(&r.socket);
        if let Some(slot) = self.lock().get_mut(name) {
            slot.running = None;
        }
        tracing::info!(disk = %name, "disk down");
        Ok(())
    }

    /// Demotes, retrying 100 ms apart for `patience` while the core is busy. The node
    /// answers once the superblock on disk says "not primary": a disk service that exits
    /// right after (a clean stop) must not leave a superblock that reads as a crashed
    /// primary at the next start, or its activity log would be resynced.
    pub(super) fn demote_durably(&self, r: &Running, patience: Duration) -> anyhow::Result<()> {
        let rt = &self.runtime;
        let give_up = crate::clock::now() + patience;
        let mut result = rt.block_on(r.driver.demote())?;
        while result.is_err() && crate::clock::now() < give_up {
            std::thread::sleep(Duration::from_millis(100));
            result = rt.block_on(r.driver.demote())?;
        }
        result?;
        r.primary.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes the local device of a primary (nothing if it is published already).
    /// Blocking; never called from the runtime's workers (the device's first flush
    /// runs there).
    pub(super) fn publish_local(&self, name: &str, r: &Running) -> anyhow::Result<()> {
        let mut local = lock(&r.local);
        if local.is_some() {
            return Ok(());
        }
        let options = tandem_blockdev::Options {
            paths: r.local_paths.clone(),
            name: name.to_string(),
            fuse_threads: fuse_threads(),
        };
        let device: Arc<dyn tandem_nbd::BlockDevice> = r.device.clone();
        let published =
            tandem_blockdev::LocalDevice::publish(device, self.runtime.handle().clone(), &options)
                .with_context(|| format!("publish {}", r.local_paths.link.display()))?;
        tracing::info!(
            disk = %name,
            device = %published.link().display(),
            loop_device = %published.loop_device().path().display(),
            direct_io = published.direct_io(),
            "local device published"
        );
        r.published_unix_ms
            .store(crate::clock::wall_ms(), Ordering::Relaxed);
        *local = Some(published);
        Ok(())
    }

    /// Takes the local device down; refused while anything holds it, naming what.
    pub(super) fn unpublish_local(&self, name: &str, r: &Running) -> anyhow::Result<()> {
        let mut local = lock(&r.local);
        let Some(published) = local.as_mut() else {
            return Ok(());
        };
        let link = published.link().display().to_string();
        match published.unpublish() {
            Ok(()) => {
                tracing::info!(disk = %name, device = %link, "local device taken down");
                *local = None;
                Ok(())
            }
            Err(tandem_blockdev::Error::Busy(holders)) => bail!(
                "{link} is in use ({}): unmount it or close it first",
                tandem_blockdev::holders::describe(&holders)
            ),
            Err(err) => Err(anyhow!(err).context(format!("take down {link}"))),
        }
    }

    pub(super) fn disk_json(&self, name: &str) -> Value {
        let (disk, running, error) = {
            let slots = self.lock();
            let Some(s) = slots.get(name) else {
                return json!({ "name": name, "error": "not configured on this node" });
            };
            (s.disk.clone(), s.running.clone(), s.error.clone())
        };
        let mut v = json!({
            "name": name,
            "up": running.is_some(),
            "protocol": format!("{:?}", disk.protocol),
            "resync_group": disk.resync_group,
            "rate_limit_bytes_per_s": disk.rate_bytes_per_s,
        });
        if let Some(e) = error {
            v["error"] = json!(e);
        }
        let Some(r) = running else {
            return v;
        };
        v["nbd_socket"] = json!(r.socket);
        v["size_bytes"] = json!(r.driver.size_bytes());
        v["local_device"] = local_device_json(&r);
        v["promoted_unix_ms"] = unix_ms_json(&r.promoted_unix_ms);
        v["waiting_for_peer"] = json!(r.waiting());
        v["resync_paused"] = json!(r.resync_paused.load(Ordering::Relaxed));
        v["nbd"] = json!(
            r.server
                .stats()
                .pairs()
                .into_iter()
                .collect::<BTreeMap<_, _>>()
        );
        let status = self
            .runtime
            .block_on(async { tokio::time::timeout(STATUS_TIMEOUT, r.driver.status()).await });
        match status {
            Ok(Ok(s)) => {
                if let (Some(obj), Ok(Value::Object(report))) =
                    (v.as_object_mut(), serde_json::to_value(s.report()))
                {
                    obj.extend(report);
                }
                v["resync_moved_bytes"] = json!(s.resync_moved_bytes);
                v["write_latency"] = json!(s.write_latency);
                v["barrier_acks_received"] = json!(s.barrier_acks_received);
                v["barrier_acks_sent"] = json!(s.barrier_acks_sent);
                v["generations"] = json!(s.generations);
                v["last_disconnect_reason"] = json!(s.last_disconnect_reason);
                v["detach_reason"] = json!(s.detach_reason);
                v["verify_out_of_sync_blocks"] = json!(s.verify_out_of_sync_blocks);
                v["last_decision"] = json!(s.last_decision);
            }
            Ok(Err(e)) => v["error"] = json!(format!("{e}")),
            Err(_) => v["error"] = json!("the disk did not answer within 5 s"),
        }
        v
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `local_device` in status: null while not published.
pub(super) fn local_device_json(r: &Running) -> Value {
    // A publish or teardown in progress (a flush may wait for a suspended disk) must
    // not hold status up.
    let Ok(local) = r.local.try_lock() else {
        return json!({ "path": r.local_paths.link, "changing": true });
    };
    let Some(d) = local.as_ref() else {
        return Value::Null;
    };
    let s = d.stats();
    json!({
        "path": d.link(),
        "published_unix_ms": unix_ms_json(&r.published_unix_ms),
        "loop_device": d.loop_device().path(),
        "direct_io": d.direct_io(),
        "reads": s.reads,
        "writes": s.writes,
        "flushes": s.flushes,
        "zeroes": s.zeroes,
        "read_bytes": s.read_bytes,
        "written_bytes": s.written_bytes,
        "errors": s.errors,
    })
}

/// A wall-clock stamp for status: null while it was never set.
pub(super) fn unix_ms_json(stamp: &AtomicU64) -> Value {
    match stamp.load(Ordering::Relaxed) {
        0 => Value::Null,
        ms => json!(ms),
    }
}
