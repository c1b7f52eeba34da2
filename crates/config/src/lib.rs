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
pub mod key;
pub mod native;

use std::path::Path;

impl Config {
    /// Reads, parses and validates the native file at `path`, including the key file's
    /// permissions. Warnings are dropped; use [`Config::load_with_warnings`] to show them.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        Self::load_with_warnings(path).map(|(c, _)| c)
    }

    /// As [`Config::load`], also returning warnings (e.g. no fence device configured).
    pub fn load_with_warnings(path: &Path) -> Result<(Config, Vec<Warning>), Diagnostics> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                file: name.clone(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: format!("cannot read configuration: {e}"),
            }])
        })?;
        native::parse(&name, &text, native::FileChecks::On)
    }

    /// Parses and validates native TOML `text` named `name` in messages, without touching
    /// the file system (the key file is not checked).
    pub fn parse_str(name: &str, text: &str) -> Result<(Config, Vec<Warning>), Diagnostics> {
        native::parse(name, text, native::FileChecks::Off)
    }
}
pub mod emit;

pub use emit::{to_toml, to_toml_with_header};
pub mod import;
