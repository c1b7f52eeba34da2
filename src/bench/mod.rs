//! `tandem bench …`: measurements that print tables (never timed tests).

pub mod detection;
pub mod disk_idle;
pub mod failover;
pub mod fio;
pub mod footprint;
pub mod nbd;
pub mod replication;
pub mod resync;
