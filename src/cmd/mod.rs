//! One module per subcommand.

pub mod bench;
pub mod config;
pub mod daemon;
pub mod disk;
pub mod fence;
pub mod generate;
pub mod lab;
pub mod operator;
pub mod simulate;
pub mod status;
