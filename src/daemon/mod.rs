//! `tandem daemon`: the daemon of one node.
//!
//! ```text
//!   config ──► membership driver thread (poll: link sockets, timers; SCHED_RR)
//!                   │ timed events                ▲ status / messages
//!                   ▼                             │
//!              event thread ──► event history ──► control socket ◄── tandem status
//!                                                 └─► [metrics] HTTP ◄── Prometheus
//! ```
//!
//! The heartbeat path runs on its own thread with locked memory and real-time
//! priority: a busy machine, slow disk I/O or a long resource action must never delay a
//! heartbeat or its processing, because a late heartbeat looks exactly like a dead node
//! (Heartbeat ran the same way, `realtime on`).

mod events;
mod http;
pub(crate) mod links;
mod manager;
mod metrics;
mod notify;
mod ping;
pub(crate) mod systemd;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde::Serialize;
use tandem_config::Config;
use tandem_config::key::{HeartbeatMethod, KeySource};
use tandem_membership::driver::{Driver, LinkSpec, Options};
use tandem_membership::{LinkConfig, MembershipConfig, NodeConfig, RetransmitConfig};
use tandem_wire::PacketKey;

use crate::Global;
use crate::control::{self, Request, Response};
use crate::state::StateDir;
use manager::{Input, Operator};
use std::sync::mpsc::SyncSender;
use tandem_policy::RequestKind;

/// Events kept for `tandem status` (the newest ones).
const EVENT_HISTORY_LEN: usize = 256;

/// Real-time priority of the heartbeat thread (SCHED_RR, 1–99): above ordinary threads,
/// below the kernel's watchdogs (99).
const REALTIME_PRIORITY: i32 = 50;

/// `tandem daemon` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// This node's name in the configuration (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// State directory (default: `cluster.state_dir`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Control socket (default: `cluster.control_socket`).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Do not ask for real-time scheduling and locked memory (for unprivileged runs).
    #[arg(long)]
    pub no_realtime: bool,
}

/// What the event thread records for the control socket.
#[derive(Debug, Default)]
pub struct Shared {
    /// Recent membership events, oldest first.
    pub events: VecDeque<EventRecord>,
}

/// One membership event, as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `node_up`, `node_dead`, `link_down`, …
    pub event: &'static str,
    /// The node concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The link concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Anything else worth knowing (incarnations, the gap of a late heartbeat).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Runs the daemon in the foreground until it is killed.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let stop_signals = block_stop_signals();
    let Some(config) = load_config(&global.config) else {
        return Ok(ExitCode::from(1));
    };
    let oversized = crate::cmd::config::oversized_report_errors(&global.config, &config);
    if !oversized.is_empty() {
        eprintln!("{}", oversized.join("\n"));
        return Ok(ExitCode::from(1));
    }
    let local = match args.node {
        Some(node) => node,
        None => hostname()?,
    };
    let key = load_key(&config)?;
    let membership = membership_config(&config, &local, key)?;

    let state_dir = args
        .state_dir
        .unwrap_or_else(|| config.cluster.state_dir.clone());
    let incarnation =
        StateDir::open(&state_dir)?.bump_incarnation(crate::state::incarnation_floor())?;
    let state = StateDir::open(&state_dir)?;
    let socket_path = args
        .control_socket
        .unwrap_or_else(|| config.cluster.control_socket.clone());
    let listener = control::bind(&socket_path)?;

    let own_addresses = links::local_addresses()?;
    let mut link_specs = Vec::new();
    for (id, link) in config.links.iter().enumerate() {
        link_specs.push(LinkSpec {
            id: id as u16,
            medium: links::medium(&link.name, &link.kind, &own_addresses)?,
        });
    }
    if !args.no_realtime {
        lock_memory();
    }

    tracing::info!(
        node = %local,
        incarnation,
        links = config.links.len(),
        control_socket = %socket_path.display(),
        "tandem daemon starting"
    );
    let names = events::Names::new(&membership);
    let core = tandem_membership::Membership::new(membership, incarnation, crate::clock::now())
        .context("start the membership core")?;
    let options = Options {
        realtime_priority: (!args.no_realtime).then_some(REALTIME_PRIORITY),
    };
    let driver = Arc::new(
        Driver::start_with(core, link_specs, options).context("open the heartbeat links")?,
    );
    if let Err(why) = driver.realtime() {
        tracing::warn!("{why}: heartbeats may be late on a busy machine");
    }
    let shared = Arc::new(Mutex::new(Shared::default()));
    let config = Arc::new(config);
    // The resource manager runs wherever there is a peer to deal with: groups to run,
    // or disks whose fencing needs the peer outdated or fenced through the cluster.
    let has_disks = config.disks.iter().any(|d| d.host(&local).is_some());
    let channel = (!config.groups.is_empty() || has_disks).then(manager::channel);
    // Disks first (after the control socket proved no other daemon runs here): a
    // group's `disk` resource acts on them from its first probe.
    let fence_peer = channel.as_ref().map(|(tx, _)| tx.clone());
    crate::disks::remote::attach(
        &config,
        &crate::disks::remote::Launch {
            config_path: &global.config,
            local: &local,
            control_socket: &socket_path,
            realtime: !args.no_realtime,
        },
        Box::new(move |disk| {
            if let Some(tx) = &fence_peer {
                let _ = tx.send(
                    tandem_controller::Input::DiskFencePeer {
                        disk: disk.to_string(),
                    }
                    .into(),
                );
            }
        }),
    )?;
    let manager = match channel {
        None => None,
        Some((tx, rx)) => {
            let peer_id = peer_id(&config, &local)?;
            let m = manager::Manager::new(
                Arc::clone(&config),
                &local,
                peer_id,
                Arc::clone(&driver),
                tx.clone(),
                notify::spawn(&config, &local)?,
                state,
            )?;
            manager::spawn(m, rx)?;
            ping::spawn(&config, tx.clone())?;
            Some(tx)
        }
    };
    events::spawn(
        Arc::clone(&driver),
        names,
        Arc::clone(&shared),
        manager.clone(),
    )?;
    handle_signals(stop_signals, manager.clone())?;
    systemd::spawn_watchdog(Arc::clone(&driver))?;

    let status: http::StatusFn = {
        let (local, manager) = (local.clone(), manager.clone());
        Arc::new(move || status_json(&local, &driver, &shared, manager.as_ref()))
    };
    if let Some(addr) = config.metrics.listen {
        let peer = peer_id(&config, &local).ok().map(|id| metrics::Peer {
            name: config.nodes[id as usize - 1].name.clone(),
            id,
        });
        http::spawn(addr, Arc::clone(&status), peer)?;
    }
    // The links run, the disks are up, the control socket listens: ready.
    systemd::notify("READY=1");
    control::serve(listener, move |request, _peer| match request {
        Request::Status => status(),
        Request::Standby { scope } => operator(
            manager.as_ref(),
            Operator::Request(RequestKind::Standby, scope),
        ),
        Request::Takeover { scope } => operator(
            manager.as_ref(),
            Operator::Request(RequestKind::Takeover, scope),
        ),
        Request::Maintenance { on } => operator(manager.as_ref(), Operator::Maintenance(on)),
        Request::Disk { name, command } => {
            crate::disks::remote::request(&name, command, crate::disks::Caller::Operator)
        }
        Request::Fence { node } => operator(manager.as_ref(), Operator::Fence(node)),
        Request::FenceConfirm { node } => operator(manager.as_ref(), Operator::FenceConfirm(node)),
        Request::FenceHistory => operator(manager.as_ref(), Operator::FenceHistory),
    });
    Ok(ExitCode::SUCCESS)
}

fn status_json(
    local: &str,
    driver: &Driver,
    shared: &Mutex<Shared>,
    manager: Option<&SyncSender<Input>>,
) -> Response {
    let m = match driver.status() {
        Ok(m) => m,
        Err(err) => return Response::error(format!("the heartbeat thread stopped: {err}")),
    };
    let mut body = {
        let shared = shared.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "node": local,
            "incarnation": m.incarnation,
            "nodes": m.nodes,
            "links": m.links,
            "events": shared.events,
            "groups": [],
            "disks": crate::disks::remote::status_json(),
        })
    };
    if manager.is_some() {
        match operator(manager, Operator::Status) {
            Response {
                error: None,
                body: resources,
            } => {
                if let (Some(b), Some(r)) = (body.as_object_mut(), resources.as_object()) {
                    for (k, v) in r {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
            err => return err,
        }
    }
    mark_suspended_groups(&mut body);
    Response::ok(body)
}

/// Gives each group the disks of its own whose I/O is suspended (disk fencing), so
/// `tandem status` says it where the operator looks: at the group.
fn mark_suspended_groups(body: &mut serde_json::Value) {
    let suspended: std::collections::BTreeMap<String, serde_json::Value> = body["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| !d["suspended"].is_null())
        .filter_map(|d| Some((d["name"].as_str()?.to_string(), d["suspended"].clone())))
        .collect();
    let Some(groups) = body["groups"].as_array_mut() else {
        return;
    };
    for g in groups {
        let mine: Vec<serde_json::Value> = g["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["type"] == "disk")
            .filter_map(|r| {
                let disk = r["disk"].as_str()?;
                let s = suspended.get(disk)?;
                Some(
                    serde_json::json!({"disk": disk, "reason": s["reason"], "for_ms": s["for_ms"]}),
                )
            })
            .collect();
        g["suspended"] = serde_json::Value::Array(mine);
    }
}

/// Hands an operator request to the resource manager and waits for its answer.
fn operator(manager: Option<&SyncSender<Input>>, op: Operator) -> Response {
    let Some(manager) = manager else {
        return Response::error("this cluster has no resource groups");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    if manager.send(Input::Operator(op, tx)).is_err() {
        return Response::error("the resource manager stopped");
    }
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Ok(body)) => Response::ok(body),
        Ok(Err(why)) => Response::error(why),
        Err(_) => Response::error("the resource manager did not answer"),
    }
}

fn peer_id(config: &Config, local: &str) -> anyhow::Result<tandem_membership::NodeId> {
    config
        .nodes
        .iter()
        .position(|n| n.name != local)
        .map(|i| i as u32 + 1)
        .context("the configuration names no peer")
}

/// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it spawns
/// afterwards: call it before any thread exists, so that only the signal thread takes
/// them.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a local sigset_t, then a change of this
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// SIGTERM and SIGINT stop the node cleanly: the manager demotes the primary disks no
/// group manages, stops every group and says goodbye, so the peer takes over without
/// fencing — or, in maintenance mode, leaves every group and disk running for the next
/// daemon. Signals are blocked in every thread (the mask is inherited) and taken by one
/// thread with sigwait.
fn handle_signals(set: libc::sigset_t, manager: Option<SyncSender<Input>>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: waits for one of the blocked signals in `set`.
            unsafe { libc::sigwait(&set, &mut signal) };
            tracing::info!(signal, "stop requested");
            match manager {
                Some(m) if m.send(tandem_controller::Input::Shutdown.into()).is_ok() => {}
                _ => std::process::exit(0),
            }
        })
        .context("start the signal thread")?;
    Ok(())
}

/// The HMAC key for heartbeats, from the native key file or a Heartbeat authkeys file.
/// Loads the configuration for a daemon: warnings logged, located errors printed (then
/// `None`: the daemon exits 1 without starting anything).
pub(crate) fn load_config(path: &std::path::Path) -> Option<Config> {
    match Config::load_with_warnings(path) {
        Ok((config, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Some(config)
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            None
        }
    }
}

pub(crate) fn load_key(config: &Config) -> anyhow::Result<PacketKey> {
    let path = &config.cluster.key_file;
    let (key, warnings) = tandem_config::key::check_file(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let derived = match key.source {
        KeySource::Native => PacketKey::from_native_key_file(&key.secret),
        KeySource::Heartbeat { method, .. } => {
            let method = match method {
                HeartbeatMethod::Sha1 => "sha1",
                HeartbeatMethod::Md5 => "md5",
                HeartbeatMethod::Crc => "crc",
            };
            PacketKey::from_authkeys(method, &String::from_utf8_lossy(&key.secret))
        }
    };
    derived.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Maps the native configuration onto the membership core's. Node ids are positions in
/// `[[node]]` order (the witness after them) and link ids positions in `[[link]]` order: the file is identical on
/// every node (its digest travels in every heartbeat), so every node derives the same ids.
pub fn membership_config(
    config: &Config,
    local: &str,
    key: PacketKey,
) -> anyhow::Result<MembershipConfig> {
    let mut nodes: Vec<NodeConfig> = config
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeConfig {
            id: i as u32 + 1,
            name: n.name.clone(),
        })
        .collect();
    // The witness is a member too (it hears and is heard like a node), numbered after
    // the nodes (`tandem_controller::witness_node_id`).
    if let (Some(w), Some(id)) = (&config.witness, tandem_controller::witness_node_id(config)) {
        nodes.push(NodeConfig {
            id,
            name: w.name.clone(),
        });
    }
    let Some(local_node) = nodes.iter().find(|n| n.name == local).map(|n| n.id) else {
        bail!("this node is {local:?}, which the configuration does not list (use --node NAME)");
    };
    let links = config
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| LinkConfig {
            id: i as u16,
            name: l.name.clone(),
        })
        .collect();
    let cluster_digest = tandem_wire::sha256(config.cluster.name.as_bytes());
    let mut cluster_id = [0u8; 8];
    cluster_id.copy_from_slice(&cluster_digest[..8]);
    Ok(MembershipConfig {
        cluster_id: u64::from_be_bytes(cluster_id),
        local_node,
        nodes,
        links,
        keepalive: config.cluster.keepalive,
        deadtime: config.cluster.deadtime,
        warntime: config.cluster.warntime,
        initdead: config.cluster.initdead,
        key,
        // The canonical rendering, so comments, key order and spelling do not count as
        // a difference between the nodes' files; only the meaning does.
        config_digest: tandem_wire::sha256(tandem_config::to_toml(config).as_bytes()),
        retransmit: RetransmitConfig::for_keepalive(config.cluster.keepalive),
    })
}

pub(crate) fn hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("gethostname");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Keeps the daemon's pages in memory so a heartbeat never waits for a page fault.
///
/// `MCL_ONFAULT` locks each page once it is first touched instead of faulting in every
/// mapping up front: without it every thread's whole stack reservation and every
/// allocator arena became resident (29 MiB for an idle daemon, `tandem bench
/// footprint`), while a page the heartbeat path uses is locked all the same after its
/// first use, which happens in the first keepalive.
pub(crate) fn lock_memory() {
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        tracing::warn!(
            "mlockall failed ({}): heartbeats may wait for page faults under memory pressure",
            std::io::Error::last_os_error()
        );
    }
}
