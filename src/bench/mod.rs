//! `tandem bench …`: measurements that print tables (never timed tests).

pub mod detection;
pub mod fio;
pub mod nbd;
pub mod replication;
