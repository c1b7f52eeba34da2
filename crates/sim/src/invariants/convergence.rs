//! Invariant: once faults stop (links healed, no loss, no clock jumps) the cluster
//! converges: every node holds every other node `up` with its current incarnation and
//! hears it on every link.

use std::time::Instant;

use tandem_membership::{Membership, NodeState};

use super::Check;

/// Checks convergence over all cores; `incarnations[s]` is node `s`'s real incarnation.
/// `cores[r]` comes with its local time.
pub fn check(cores: &[(&Membership, Instant)], incarnations: &[u64]) -> Check {
    for (r, (core, now)) in cores.iter().enumerate() {
        let status = core.status(*now);
        for n in status.nodes.iter().filter(|n| !n.local) {
            let s = n.id as usize - 1;
            if n.state != NodeState::Up || n.incarnation != Some(incarnations[s]) {
                return Err(format!(
                    "not converged: node {} holds node {} {:?} incarnation {:?} (real {})",
                    r + 1,
                    n.id,
                    n.state,
                    n.incarnation,
                    incarnations[s]
                ));
            }
            if let Some(l) = n.links.iter().find(|l| !l.up) {
                return Err(format!(
                    "not converged: node {} does not hear node {} on link {}",
                    r + 1,
                    n.id,
                    l.name
                ));
            }
        }
    }
    Ok(())
}
