//! One module per subcommand.

pub mod agent;
pub mod bench;
pub mod config;
pub mod lab;
pub mod status;
