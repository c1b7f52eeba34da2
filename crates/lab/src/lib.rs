//! The lab: whole clusters inside one Linux host, built from network namespaces,
//! mount namespaces, cgroups and bridges, for tests, demos and benchmarks.
#![warn(missing_docs)]
