//! `tandem witness`: the daemon of the third machine (DESIGN §3.3). It joins the
//! heartbeat links as a member (the same key, the same replay rules), so it hears both
//! nodes itself, and answers their vote requests through [`tandem_witness::Arbiter`].
//! Its grant is written durably before the answer that carries it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tandem_membership::driver::{Driver, LinkSpec, Options};
use tandem_membership::{Event, NodeId};
use tandem_witness::{Arbiter, ArbiterCommand, Grant, WitnessMessage};

use crate::Global;
use crate::daemon::{hostname, links, load_config, load_key, membership_config};
use crate::state::StateDir;

/// How long the loop sleeps at most between two looks at the arbiter's timers.
const IDLE_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
pub struct Args {
    /// The witness's name (`[witness] name`; default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// State directory for the incarnation (default: `cluster.state_dir`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Where the grant is stored (default: `[witness] state_file`).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
}

/// Runs the witness in the foreground until it is killed.
pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let Some(config) = load_config(&global.config) else {
        return Ok(ExitCode::from(1));
    };
    let Some(witness) = config.witness.clone() else {
        bail!(
            "{}: no [witness] table: this cluster has no witness",
            global.config.display()
        );
    };
    let local = match args.node {
        Some(n) => n,
        None => hostname()?,
    };
    if local != witness.name {
        bail!(
            "this machine is {local:?}, but the configuration's witness is {:?} (use --node NAME)",
            witness.name
        );
    }
    let [first, second] = match config.nodes.as_slice() {
        [a, b] => [a.name.clone(), b.name.clone()],
        _ => bail!("a witness serves a cluster of exactly two nodes"),
    };
    let key = load_key(&config)?;
    let membership = membership_config(&config, &local, key)?;
    let state_dir = args
        .state_dir
        .unwrap_or_else(|| config.cluster.state_dir.clone());
    let incarnation =
        StateDir::open(&state_dir)?.bump_incarnation(crate::state::incarnation_floor())?;
    let store = GrantStore::open(&args.state_file.unwrap_or(witness.state_file.clone()))?;
    let stored = store.load()?;
    if let Some(g) = &stored {
        tracing::info!(winner = %g.winner, loser = %g.loser, "resuming a stored grant");
    }

    let own = links::local_addresses()?;
    let mut specs = Vec::new();
    for (id, link) in config.links.iter().enumerate() {
        specs.push(LinkSpec {
            id: id as u16,
            medium: links::medium(&link.name, &link.kind, &own)?,
        });
    }
    let ids: Vec<(NodeId, String)> = membership
        .nodes
        .iter()
        .map(|n| (n.id, n.name.clone()))
        .collect();
    let core = tandem_membership::Membership::new(membership, incarnation, crate::clock::now())
        .context("start the membership core")?;
    let driver = std::sync::Arc::new(
        Driver::start_with(core, specs, Options::default()).context("open the heartbeat links")?,
    );
    crate::daemon::systemd::spawn_watchdog(std::sync::Arc::clone(&driver))?;
    crate::daemon::systemd::notify("READY=1");
    tracing::info!(witness = %local, incarnation, nodes = %format!("{first}, {second}"), "tandem witness starting");

    let mut arbiter = Arbiter::new([first, second], witness.tie_wait, stored);
    let name_of = |id: NodeId| ids.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone());
    loop {
        let now = crate::clock::now();
        let wait = arbiter.poll_timeout().map_or(IDLE_WAIT, |t| {
            t.saturating_duration_since(now).min(IDLE_WAIT)
        });
        let received = driver.events().recv_timeout(wait);
        let now = crate::clock::now();
        arbiter.set_wall_clock(crate::clock::wall_ms());
        match received {
            Ok(timed) => match timed.event {
                Event::NodeUp { node, incarnation }
                | Event::NodeReturnedAfterPartition { node, incarnation }
                | Event::NodeRestarted {
                    node, incarnation, ..
                } => {
                    if let Some(name) = name_of(node) {
                        tracing::info!(node = %name, incarnation, "heard");
                        arbiter.node_up(&name, incarnation, now);
                    }
                }
                Event::NodeDead { node, .. } => {
                    if let Some(name) = name_of(node) {
                        tracing::warn!(node = %name, "dead (silent for deadtime)");
                        arbiter.node_dead(&name, now);
                    }
                }
                Event::Message { from, payload } => {
                    let Some(name) = name_of(from) else { continue };
                    match WitnessMessage::decode(&payload) {
                        Some(m) => arbiter.message(&name, m, now),
                        None => tracing::warn!(node = %name, "malformed message dropped"),
                    }
                }
                _ => {}
            },
            Err(RecvTimeoutError::Timeout) => arbiter.tick(now),
            Err(RecvTimeoutError::Disconnected) => bail!("the heartbeat thread stopped"),
        }
        while let Some(command) = arbiter.poll_command() {
            match command {
                // The grant is on disk before the answer that carries it leaves: a
                // witness that cannot store it stops rather than grant unrecorded.
                ArbiterCommand::Persist(grant) => store.save(grant.as_ref())?,
                ArbiterCommand::Send { to, message } => {
                    let Some(id) = ids.iter().find(|(_, n)| *n == to).map(|(i, _)| *i) else {
                        continue;
                    };
                    if let Err(err) = driver.send_message(id, message.encode()) {
                        tracing::warn!(node = %to, "answer not sent: {err}");
                    }
                }
            }
        }
    }
}

/// Where the grant lives: one file, replaced atomically and durably.
struct GrantStore {
    dir: StateDir,
    name: String,
    path: PathBuf,
}

impl GrantStore {
    fn open(path: &Path) -> anyhow::Result<GrantStore> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            bail!("{}: not a file path", path.display());
        };
        Ok(GrantStore {
            dir: StateDir::open(dir)?,
            name: name.to_string_lossy().into_owned(),
            path: path.to_owned(),
        })
    }

    /// The stored grant. One that cannot be read stops the witness: guessing could
    /// grant a second vote for the same loss of contact.
    fn load(&self) -> anyhow::Result<Option<Grant>> {
        match self.dir.read(&self.name)? {
            None => Ok(None),
            Some(bytes) => Grant::decode(&bytes).map(Some).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}: the witness's grant cannot be read; check that no node holds a vote it gave, then remove the file",
                    self.path.display()
                )
            }),
        }
    }

    fn save(&self, grant: Option<&Grant>) -> anyhow::Result<()> {
        match grant {
            Some(g) => self.dir.write_durably(&self.name, &g.encode()),
            None => self.dir.remove_durably(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-witness-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// What a restarted witness reads is the grant it stored; a removed grant is gone;
    /// an unreadable one is an error (never "no grant").
    #[test]
    fn the_grant_survives_a_restart_and_an_unreadable_one_stops_the_witness() {
        let d = dir("grant");
        let path = d.join("witness-grant.json");
        let store = GrantStore::open(&path).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let g = Grant {
            winner: "ox2".into(),
            loser: "ox1".into(),
            loser_incarnation: 7,
            granted_unix_ms: 1,
        };
        store.save(Some(&g)).unwrap();
        assert_eq!(GrantStore::open(&path).unwrap().load().unwrap(), Some(g));
        store.save(None).unwrap();
        assert_eq!(GrantStore::open(&path).unwrap().load().unwrap(), None);
        std::fs::write(&path, b"{\"winner\":").unwrap();
        let err = GrantStore::open(&path).unwrap().load().unwrap_err();
        assert!(format!("{err:#}").contains("cannot be read"), "{err:#}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
