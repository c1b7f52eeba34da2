//! The planner's view of the peer: whether its reports can be trusted, whether to wait
//! for it, whether it must be fenced — and, with a witness, whether this node may.

use tandem_config::Group;

use crate::transition::{ActionKind, Note, NoteLevel, WaitReason};
use crate::view::{FenceState, PeerState, ResourceState, WitnessVote};

use super::{Gate, Planner};

impl Planner<'_> {
    // ---- the peer ----------------------------------------------------------------

    pub(super) fn assess_peer(&mut self) {
        let peer = self.peer;
        let reports = self.peer_reports_valid();
        // Groups both nodes hold: only possible after a partition (or a takeover
        // without fencing). The node-level winner is the home of the first such group.
        let double: Vec<&Group> = if reports {
            self.config
                .groups
                .iter()
                .filter(|g| self.holds(g, self.local) && self.holds(g, peer))
                .collect()
        } else {
            Vec::new()
        };
        if let Some(first) = double.first() {
            self.winner = Some(first.home.clone());
        }
        let peer_failed_stop = if reports {
            self.config.groups.iter().find_map(|g| {
                g.resources.iter().find_map(|r| {
                    (self.state(&g.name, peer, &r.name) == ResourceState::FailedStop)
                        .then(|| format!("stop of {}:{} failed on {peer}", g.name, r.name))
                })
            })
        } else {
            None
        };

        let fence_reason: Option<String> = match self.view.peer.state {
            PeerState::LeftCleanly => {
                self.peer_gate = Gate::Open(Vec::new());
                return;
            }
            PeerState::Unknown if !self.view.initdead_passed => {
                self.peer_gate = Gate::Wait(WaitReason::Initdead {
                    peer: peer.to_string(),
                });
                return;
            }
            PeerState::Dead => Some(format!("{peer} is dead (silent for deadtime)")),
            PeerState::Unknown => Some(format!("{peer} was never heard within initdead")),
            PeerState::Up | PeerState::ReturnedAfterPartition if !reports => {
                self.peer_gate = Gate::Wait(WaitReason::PeerReport {
                    peer: peer.to_string(),
                });
                return;
            }
            PeerState::Up | PeerState::ReturnedAfterPartition => {
                if let Some(reason) = peer_failed_stop {
                    if self.fencing_none() {
                        // Nobody will fence it: the group with the failed stop is blocked
                        // (see plan_group); the peer otherwise keeps its place.
                        None
                    } else {
                        Some(reason)
                    }
                } else if let Some(first) = double.first() {
                    let names: Vec<&str> = double.iter().map(|g| g.name.as_str()).collect();
                    let what = format!(
                        "{peer} returned after a partition while both nodes hold {}; {} keeps {} (home of {}, the first such group)",
                        names.join(", "),
                        first.home,
                        if double.len() > 1 { "them" } else { "it" },
                        first.name,
                    );
                    if first.home == self.local {
                        if self.fencing_none() {
                            for g in &double {
                                self.unsafe_note(
                                    &g.name,
                                    format!("{what}; fencing = \"none\": {peer} is not fenced and must stop its copy itself"),
                                );
                            }
                            None
                        } else {
                            Some(what)
                        }
                    } else {
                        if self.fencing_none() {
                            for g in &double {
                                self.unsafe_note(
                                    &g.name,
                                    format!("{what}; fencing = \"none\": this node stops its copy, nobody is fenced"),
                                );
                            }
                        } else {
                            self.wait(WaitReason::FencedByPeer {
                                peer: peer.to_string(),
                            });
                        }
                        self.local_loser = Some(what);
                        None
                    }
                } else {
                    None
                }
            }
        };

        let Some(reason) = fence_reason else {
            self.peer_available = true;
            self.peer_gate = Gate::Open(Vec::new());
            return;
        };
        if self.fencing_none() {
            // Explicit opt-out: the peer counts as gone, every takeover is flagged.
            self.peer_gate = Gate::Open(Vec::new());
            self.t.notes.push(Note {
                level: NoteLevel::Unsafe,
                group: None,
                text: format!("{reason}; fencing = \"none\": {peer} is NOT fenced"),
            });
            return;
        }
        self.peer_gate = match self.view.peer_fence_state(peer) {
            FenceState::FencedOk | FenceState::ConfirmedByOperator => Gate::Open(Vec::new()),
            FenceState::InProgress => {
                self.wait(WaitReason::Fencing {
                    node: peer.to_string(),
                });
                Gate::Block(format!(
                    "takeover waits for fencing of {peer} (in progress; {reason})"
                ))
            }
            FenceState::Failed => Gate::Block(format!(
                "fencing of {peer} failed ({reason}): no takeover until a fence succeeds or an operator runs `tandem fence confirm {peer}`"
            )),
            FenceState::NotNeeded | FenceState::Required if self.lost_contact() => {
                match self.view.witness {
                    WitnessVote::None => self.fence_peer(reason, None),
                    WitnessVote::Granted => self.fence_peer(reason, Some(false)),
                    WitnessVote::Asking => {
                        self.wait(WaitReason::WitnessVote {
                            peer: peer.to_string(),
                        });
                        Gate::Block(format!("takeover waits for the witness's vote ({reason})"))
                    }
                    WitnessVote::Refused => Gate::Block(format!(
                        "the witness did not give this node the vote ({reason}): {peer} is not fenced and nothing is taken over"
                    )),
                    WitnessVote::Isolated => Gate::Block(format!(
                        "this node lost {peer} and the witness together: it fences nobody and takes nothing over"
                    )),
                }
            }
            FenceState::NotNeeded | FenceState::Required => self.fence_peer(reason, None),
        };
    }

    /// Whether this node has lost contact with its peer (the case the witness decides).
    pub(super) fn lost_contact(&self) -> bool {
        matches!(self.view.peer.state, PeerState::Dead | PeerState::Unknown)
    }

    /// Fences the peer: `delayed` by the witness's verdict, else (`None`) delayed when
    /// this node holds no group (in a partition the node that serves must win).
    pub(super) fn fence_peer(&mut self, reason: String, delayed: Option<bool>) -> Gate {
        let peer = self.peer;
        let delayed = delayed
            .unwrap_or_else(|| !self.config.groups.iter().any(|g| self.holds(g, self.local)));
        let id = self.t.push(
            ActionKind::Fence {
                node: peer.to_string(),
                reason: reason.clone(),
                delayed,
            },
            Vec::new(),
        );
        if self.config.fence_devices.is_empty() {
            self.t.notes.push(Note {
                level: NoteLevel::Info,
                group: None,
                text: format!(
                    "no [[fence_device]] configured: fencing {peer} waits for `tandem fence confirm {peer}`"
                ),
            });
        }
        Gate::Open(vec![id])
    }
}
