//! `tandem agent`: runs this node's daemon in the foreground.

pub use crate::agent::{Args, run};
