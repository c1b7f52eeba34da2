//! Membership: heartbeat links, the failure detector and reliable cluster messages, as a
//! sans-IO core (events and `now` in; transmissions, timeouts and events out).
#![warn(missing_docs)]
