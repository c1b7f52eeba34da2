//! Invariant: forged, corrupted and replayed packets are never accepted. The simulator
//! injects random bytes, copies of real packets with bits flipped, and packets a node
//! already accepted (on the same link, and moved to another link); each must come back
//! `Dropped`.

use tandem_membership::Verdict;

use super::Check;

/// What was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// Random bytes.
    Garbage,
    /// A real packet with one bit flipped.
    BitFlip,
    /// A packet the receiver already accepted, again on its link.
    Replay,
    /// A packet the receiver already accepted, on another link.
    CrossLinkReplay,
}

/// Checks the verdict on an injected packet.
pub fn expect_dropped(r: usize, kind: Forgery, verdict: Verdict) -> Check {
    match verdict {
        Verdict::Dropped(_) => Ok(()),
        Verdict::Accepted => Err(format!(
            "node {} accepted an injected {kind:?} packet",
            r + 1
        )),
    }
}
