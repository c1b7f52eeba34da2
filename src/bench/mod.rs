//! `tandem bench …`: measurements that print tables (never timed tests).

pub mod detection;
pub mod failover;
pub mod footprint;
pub mod replication;
pub mod resync;
