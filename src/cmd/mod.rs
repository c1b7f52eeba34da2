//! One module per subcommand.

pub mod agent;
pub mod config;
pub mod lab;
pub mod simulate;
pub mod status;
