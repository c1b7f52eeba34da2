//! tandem's configuration: the native TOML model, its validation, and importers for
//! Heartbeat (`ha.cf`, `haresources`, `authkeys`) and DRBD 0.7 (`drbd.conf`).
#![warn(missing_docs)]
