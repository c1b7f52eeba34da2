//! tandem's configuration: the native TOML model, its validation, and importers for
//! Heartbeat (`ha.cf`, `haresources`, `authkeys`) and DRBD 0.7 (`drbd.conf`).
//!
//! ```text
//!   cluster.toml ──► native::parse ──► Config (typed, defaults filled, cross-checked)
//!                         │                 ▲            │
//!                         ▼                 │            ▼
//!              FILE:LINE:COL: error: …      │        emit::to_toml ──► TOML text
//!                                           │
//!   ha.cf + haresources + authkeys + drbd.conf ──► import::import
//! ```
//!
//! What it decides: whether a file is acceptable, and what every omitted key means
//! (the defaults live in [`model::defaults`]). What it is given: file names and text
//! (and, for the key file check, the file system). What it hands back: a [`Config`] with
//! every value typed (durations, bytes, enums), or [`Diagnostics`] naming file, line and
//! column with what was expected. Warnings never stop a load; errors always do.
#![warn(missing_docs)]

pub mod diag;
pub mod model;
pub mod units;

pub use diag::{Diagnostic, Diagnostics, Severity, Warning};
pub use model::*;
