//! Invariants checked while the simulator runs, one per file. Each is fed what happened
//! (packets accepted, events, restarts, clock jumps) and returns `Err` with a sentence
//! when the membership core broke its promise.

pub mod convergence;
pub mod dead_timing;
pub mod event_order;
pub mod forgery;
pub mod messages;

/// Result of one check: `Err` names the broken invariant and the evidence.
pub type Check = Result<(), String>;
