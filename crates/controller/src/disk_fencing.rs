//! Disk fencing, the controller's side: a disk asks for its peer to be outdated or
//! fenced; the outdater (`tandem_fencing::outdate`) decides how, and this turns its
//! commands into cluster messages, disk orders and fence requests.

use tandem_fencing::{DiskPolicy, OutdateCommand, PeerReach};
use tandem_policy::PeerState;

use crate::controller::Controller;
use crate::messages::PeerMessage;
use crate::types::{Command, DiskOrder, SendTag};

impl Controller {
    pub(crate) fn disk_fence_peer(&mut self, disk: &str) {
        let policy = match self.config.disk(disk).map(|d| d.fencing) {
            Some(tandem_config::DiskFencing::ResourceOnly) => DiskPolicy::ResourceOnly,
            Some(tandem_config::DiskFencing::ResourceAndStonith) => DiskPolicy::ResourceAndStonith,
            _ => return,
        };
        let reach = if self.coordinator.state(&self.peer).is_down() {
            PeerReach::Fenced
        } else if matches!(
            self.peer_state,
            PeerState::Up | PeerState::ReturnedAfterPartition
        ) {
            PeerReach::Up
        } else {
            PeerReach::Unreachable
        };
        tracing::warn!(%disk, ?reach, "disk fencing: the peer's copy must be outdated, or the peer fenced");
        self.outdater.request(disk, policy, reach, self.now);
    }

    /// Carries out what the outdater asks.
    pub(crate) fn outdate_commands(&mut self) {
        while let Some(command) = self.outdater.poll_command() {
            match command {
                OutdateCommand::Ask { disk, request } => {
                    if self.peer_reachable() {
                        self.commands.push_back(Command::Send {
                            message: PeerMessage::Outdate { disk, request },
                            tag: SendTag::Outdate(request),
                        });
                    } else {
                        self.outdater.message_failed(request);
                    }
                }
                OutdateCommand::Outdated { disk } => self
                    .commands
                    .push_back(Command::Disks(DiskOrder::PeerOutdated(disk))),
                OutdateCommand::Fenced { .. } => self
                    .commands
                    .push_back(Command::Disks(DiskOrder::PeerFenced)),
                OutdateCommand::Unreachable { disk } => self
                    .commands
                    .push_back(Command::Disks(DiskOrder::PeerUnreachable(disk))),
                OutdateCommand::Fence { reason } => {
                    tracing::error!(peer = %self.peer, "disk fencing: fencing the peer ({reason})");
                    let (peer, now) = (self.peer.clone(), self.now);
                    if let Err(err) = self.coordinator.request(&peer, &reason, false, now) {
                        tracing::error!("disk fencing: fence refused: {err}");
                    }
                    self.fencing_commands();
                }
            }
        }
    }
}
