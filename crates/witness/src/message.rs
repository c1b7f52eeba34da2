//! What nodes and the witness say to each other: compact JSON in one membership
//! payload. A malformed message decodes to `None` and is dropped (and counted) by the
//! caller.

use serde::{Deserialize, Serialize};

/// The most a message may take (one membership payload); longer input is refused
/// before parsing.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The most a node name may take in a message.
pub const MAX_NAME_BYTES: usize = 64;

/// A message between a node and the witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "w", rename_all = "snake_case", deny_unknown_fields)]
pub enum WitnessMessage {
    /// Node → witness: the sender lost `peer` and asks for the vote to fence it.
    VoteRequest {
        /// The peer the sender lost.
        peer: String,
        /// Whether the sender holds any group (the witness prefers the node that serves).
        holds_groups: bool,
        /// The sender's id for this question, quoted in the answer.
        request: u64,
    },
    /// Witness → node: the answer to a [`WitnessMessage::VoteRequest`].
    VoteAnswer {
        /// The request answered.
        request: u64,
        /// Whether the sender of the request has the vote.
        granted: bool,
        /// Why, for the node's status and log.
        reason: String,
    },
    /// Node → witness: the sender hears `peer` again; the loss of contact it had the
    /// vote for is over.
    Release {
        /// The peer heard again.
        peer: String,
    },
}

impl WitnessMessage {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        // Strings, integers and booleans: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes from the wire; `None` for anything malformed, oversized, or naming a node
    /// with an unreasonable name.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return None;
        }
        let m: WitnessMessage = serde_json::from_slice(bytes).ok()?;
        let name_ok = |n: &str| !n.is_empty() && n.len() <= MAX_NAME_BYTES;
        let ok = match &m {
            WitnessMessage::VoteRequest { peer, .. } | WitnessMessage::Release { peer } => {
                name_ok(peer)
            }
            WitnessMessage::VoteAnswer { reason, .. } => reason.len() <= MAX_MESSAGE_BYTES / 2,
        };
        ok.then_some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            WitnessMessage::VoteRequest {
                peer: "ox1".into(),
                holds_groups: true,
                request: 7,
            },
            WitnessMessage::VoteAnswer {
                request: 7,
                granted: false,
                reason: "the vote of this loss of contact went to ox1".into(),
            },
            WitnessMessage::Release { peer: "ox2".into() },
        ] {
            assert_eq!(WitnessMessage::decode(&m.encode()), Some(m));
        }
    }

    #[test]
    fn malformed_and_oversized_messages_are_refused() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for bad in [
            b"".to_vec(),
            b"{".to_vec(),
            br#"{"w":"vote_request","peer":"ox1"}"#.to_vec(),
            br#"{"w":"release","peer":""}"#.to_vec(),
            br#"{"w":"release","peer":"ox1","extra":1}"#.to_vec(),
            br#"{"w":"launch","peer":"ox1"}"#.to_vec(),
            format!(r#"{{"w":"release","peer":"{long}"}}"#).into_bytes(),
            vec![b' '; MAX_MESSAGE_BYTES + 1],
        ] {
            assert_eq!(WitnessMessage::decode(&bad), None, "{bad:?}");
        }
    }

    /// The decoder's fuzz target in miniature: random bytes never panic it.
    #[test]
    fn random_bytes_never_panic_the_decoder() {
        const POOL: &[u8] = b"{}\":,w_vote_request_answer_release peer ox1 0123456789 truefalse";
        let mut rng = tandem_rng::Rng::new(0x5eed);
        for len in 0..2000u64 {
            let bytes: Vec<u8> = (0..len % 300)
                .map(|_| POOL[rng.below(POOL.len() as u64) as usize])
                .collect();
            let _ = WitnessMessage::decode(&bytes);
        }
    }
}
