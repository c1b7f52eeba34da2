//! `tandem bench …`: measurements that print tables (never timed tests).

pub mod detection;
pub mod disk_idle;
pub mod fio;
pub mod nbd;
pub mod replication;
