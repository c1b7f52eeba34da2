//! tandem disk: a replicated block device (protocols A/B/C, generations, bitmap resync,
//! activity log), with a sans-IO core and the I/O around it.
#![warn(missing_docs)]
