//! `tandem daemon`: runs this node's daemon in the foreground.

pub use crate::daemon::{Args, run};
