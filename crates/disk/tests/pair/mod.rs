//! A two-core test harness: in-memory disks that complete I/O when told, a link that
//! delivers frames when told, and (by default) a cluster that answers
//! `Output::FencePeer` by outdating the peer. Each node's metadata is stored as its
//! completed `PersistMeta` writes left it, so a node can lose power and start again
//! from what was durable.

#![allow(dead_code)]

use std::collections::VecDeque;
use tandem_testkit::at;

use bytes::Bytes;
use tandem_disk::core::bitmap::Bitmap;
use tandem_disk::core::generation::Generations;
use tandem_disk::core::{
    BITMAP_WORDS_PER_BLOCK, Config, ConnState, Core, DiskState, Input, MetaFlags, MetaState,
    MetaWrite, Output,
};
use tandem_wire::frame::{Frame, FrameKey};

pub const SIZE: u64 = 16 << 20;

pub struct Node {
    pub core: Core,
    pub disk: Vec<u8>,
    pub ios: VecDeque<Output>,
    pub done: Vec<(u64, bool)>,
    pub reads: Vec<(u64, Bytes)>,
    pub fail_writes: bool,
    /// The metadata as the completed metadata writes left it (what a restart reads).
    pub stored: MetaState,
}

pub struct Pair {
    pub n: [Node; 2],
    pub wire: [VecDeque<Frame>; 2],
    pub link: bool,
    pub now: u64,
    /// Play the cluster for `Output::FencePeer`: outdate the peer (as membership would
    /// carry it) and tell the asking side once that is durable. Off for the tests of
    /// disk fencing itself, which answer by hand.
    pub answer_fence_peer: bool,
    /// `Output::FencePeer` seen, per node.
    pub fence_peer_asked: [u32; 2],
    /// The configuration both cores run (a restart uses it again).
    pub cfg: Config,
}

pub fn meta(node_id: u64) -> MetaState {
    MetaState {
        node_id,
        size_bytes: SIZE,
        generations: Generations::just_created(),
        flags: MetaFlags::default(),
        al_extents: 4,
        bitmap: Bitmap::new(SIZE),
        al: None,
    }
}

impl Pair {
    pub fn new(cfg: Config) -> Pair {
        let mk = |id: u64| Node {
            core: Core::new(cfg.clone(), meta(id), id, at(0)),
            disk: vec![0; SIZE as usize],
            ios: VecDeque::new(),
            done: Vec::new(),
            reads: Vec::new(),
            fail_writes: false,
            stored: meta(id),
        };
        let mut p = Pair {
            n: [mk(1), mk(2)],
            wire: [VecDeque::new(), VecDeque::new()],
            link: false,
            now: 0,
            answer_fence_peer: true,
            fence_peer_asked: [0, 0],
            cfg,
        };
        p.n[0].core.connect(at(0), false);
        p.n[1].core.connect(at(0), false);
        p
    }

    pub fn collect(&mut self, i: usize) {
        while let Some(o) = self.n[i].core.poll_output() {
            match o {
                Output::Send(f) => {
                    if self.link {
                        self.wire[1 - i].push_back(f)
                    }
                }
                // As on a real socket, what `i` sent before closing still arrives (a
                // leaving secondary's last state report); what it would have received
                // is lost.
                Output::Disconnect { .. } => {
                    self.link = false;
                    let sent = std::mem::take(&mut self.wire[1 - i]);
                    self.wire[i].clear();
                    for f in sent {
                        let key = FrameKey::preauth();
                        let (f, _) = Frame::decode(&f.to_bytes(&key, 0), &key, 0).unwrap();
                        self.n[1 - i].core.handle(at(self.now), Input::Frame(f));
                    }
                    self.n[1 - i].core.handle(at(self.now), Input::Disconnected);
                    self.collect(1 - i);
                }
                Output::FencePeer => {
                    self.fence_peer_asked[i] += 1;
                    if self.answer_fence_peer {
                        self.outdate_peer_of(i);
                    }
                }
                Output::WriteDone { req, result } => self.n[i].done.push((req, result.is_ok())),
                Output::FlushDone { req, result } => self.n[i].done.push((req, result.is_ok())),
                Output::ReadDone { req, result } => {
                    self.n[i].done.push((req, result.is_ok()));
                    if let Ok(d) = result {
                        self.n[i].reads.push((req, d));
                    }
                }
                io => self.n[i].ios.push_back(io),
            }
        }
    }

    /// What the cluster does for node `i`'s `FencePeer` when the peer is reachable: the
    /// peer outdates itself, durably, then `i` hears of it.
    pub fn outdate_peer_of(&mut self, i: usize) {
        let now = self.now;
        let Ok(ticket) = self.n[1 - i].core.outdate(at(now)) else {
            return;
        };
        self.collect(1 - i);
        while !self.n[1 - i].core.metadata_durable(ticket) {
            assert!(
                self.complete_ios(1 - i),
                "the outdate's metadata write never came"
            );
        }
        self.n[i].core.peer_outdated(at(now));
        self.collect(i);
    }

    pub fn input(&mut self, i: usize, input: Input) {
        self.n[i].core.handle(at(self.now), input);
        self.n[i].core.validate();
        self.collect(i);
    }

    pub fn connect(&mut self) {
        self.link = true;
        self.input(0, Input::Connected);
        self.input(1, Input::Connected);
    }

    pub fn complete_ios(&mut self, i: usize) -> bool {
        let mut any = false;
        while self.complete_one(i).is_some() {
            any = true;
        }
        any
    }

    /// Completes node `i`'s oldest pending I/O; returns it.
    pub fn complete_one(&mut self, i: usize) -> Option<Output> {
        let o = self.n[i].ios.pop_front()?;
        let (io, result) = match o.clone() {
            Output::WriteLocal {
                io,
                offset_bytes,
                data,
                ..
            } => {
                if self.n[i].fail_writes {
                    (io, Err(tandem_disk::core::IoFailure("EIO".into())))
                } else {
                    let o = offset_bytes as usize;
                    self.n[i].disk[o..o + data.len()].copy_from_slice(&data);
                    (io, Ok(None))
                }
            }
            Output::ReadLocal {
                io,
                offset_bytes,
                len_bytes,
            } => {
                let o = offset_bytes as usize;
                let d = Bytes::copy_from_slice(&self.n[i].disk[o..o + len_bytes as usize]);
                (io, Ok(Some(d)))
            }
            Output::FlushLocal { io } => (io, Ok(None)),
            Output::PersistMeta { io, write } => {
                store(&mut self.n[i].stored, &write);
                (io, Ok(None))
            }
            _ => unreachable!(),
        };
        self.input(i, Input::IoDone { io, result });
        Some(o)
    }

    /// Node `i` loses power: its I/O in flight and the frames on the link are lost, the
    /// peer sees the link go, and the node starts again (as `Core::new` after a boot)
    /// from its stored metadata and connects. The in-memory disk holds every completed
    /// write; a test models a lost write cache by restoring the blocks it forgot.
    pub fn power_cut(&mut self, i: usize) {
        self.n[i].ios.clear();
        self.restart(i, true);
    }

    /// As [`Pair::power_cut`], but the peer is not told: a machine without power sends
    /// no FIN, so its link looks up until the ping timeout.
    pub fn power_cut_unseen(&mut self, i: usize) {
        self.n[i].ios.clear();
        self.restart(i, false);
    }

    /// Node `i` stops cleanly (its I/O completes) and starts again.
    pub fn stop_and_start(&mut self, i: usize) {
        self.complete_ios(i);
        self.restart(i, true);
    }

    fn restart(&mut self, i: usize, tell_peer: bool) {
        let was_linked = self.link && tell_peer;
        self.link = false;
        self.wire = [VecDeque::new(), VecDeque::new()];
        let seed = 0x5eed ^ self.now ^ i as u64;
        self.n[i].core = Core::new(
            self.cfg.clone(),
            self.n[i].stored.clone(),
            seed,
            at(self.now),
        );
        self.n[i].ios.clear();
        self.collect(i);
        self.n[i].core.connect(at(self.now), false);
        self.collect(i);
        // The peer notices after the restart: whatever the cluster then asks of node
        // `i` (an outdate) reaches the new core.
        if was_linked {
            self.input(1 - i, Input::Disconnected);
        }
    }

    pub fn deliver(&mut self, to: usize) -> bool {
        let mut any = false;
        while let Some(f) = self.wire[to].pop_front() {
            any = true;
            // Through the codec, as on a real link.
            let key = FrameKey::preauth();
            let (f, _) = Frame::decode(&f.to_bytes(&key, 0), &key, 0).unwrap();
            self.input(to, Input::Frame(f));
        }
        any
    }

    /// Runs everything to quiescence, ticking time forward.
    pub fn settle(&mut self) {
        for _ in 0..1_000_000 {
            let mut any = false;
            for i in 0..2 {
                any |= self.complete_ios(i);
                any |= self.deliver(i);
            }
            if !any {
                self.now += 10;
                self.input(0, Input::Tick);
                self.input(1, Input::Tick);
                let busy = self.n.iter().any(|n| {
                    matches!(
                        n.core.connection(),
                        ConnState::SyncSource
                            | ConnState::SyncTarget
                            | ConnState::VerifySource
                            | ConnState::Handshaking
                            | ConnState::WaitBitmapSource
                            | ConnState::WaitBitmapTarget
                    )
                });
                if !busy
                    && self.n.iter().all(|n| n.ios.is_empty())
                    && self.wire.iter().all(|w| w.is_empty())
                {
                    return;
                }
            }
        }
        panic!("did not settle");
    }

    /// Brings up a synced pair with node 0 primary.
    pub fn synced(cfg: Config) -> Pair {
        let mut p = Pair::new(cfg);
        p.connect();
        p.settle();
        p.n[0].core.promote(at(p.now), true).unwrap();
        p.collect(0);
        p.settle();
        if !p.link {
            p.n[0].core.connect(at(p.now), false);
            p.n[1].core.connect(at(p.now), false);
            p.connect();
        }
        p.settle();
        assert_eq!(p.n[0].core.connection(), ConnState::Connected);
        assert_eq!(p.n[1].core.disk_state(), DiskState::UpToDate);
        p
    }

    pub fn write(&mut self, req: u64, offset: u64, len: usize, byte: u8) {
        self.input(
            0,
            Input::Write {
                req,
                offset_bytes: offset,
                data: Bytes::from(vec![byte; len]),
                fua: false,
            },
        );
    }

    pub fn acked(&self, i: usize, req: u64) -> bool {
        self.n[i].done.iter().any(|(r, ok)| *r == req && *ok)
    }
}

/// Applies one completed metadata write to the stored metadata.
fn store(m: &mut MetaState, w: &MetaWrite) {
    match w {
        MetaWrite::Superblock(s) => {
            m.generations = s.generations;
            m.flags = s.flags;
        }
        MetaWrite::BitmapBlock { index, words } => {
            let mut all = m.bitmap.words().to_vec();
            let start = *index as usize * BITMAP_WORDS_PER_BLOCK;
            for (k, word) in words.iter().enumerate() {
                if let Some(x) = all.get_mut(start + k) {
                    *x = *word;
                }
            }
            m.bitmap = Bitmap::from_words(m.size_bytes, &all);
        }
        MetaWrite::ActivityLog(t) => m.al = Some(t.clone()),
    }
}
