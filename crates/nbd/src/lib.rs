//! An NBD server (fixed newstyle negotiation, transmission phase) over a block-device trait.
#![warn(missing_docs)]
