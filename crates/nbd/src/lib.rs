//! An NBD server (fixed newstyle negotiation, simple replies) over a block-device trait.
//!
//! What it decides: how to answer each negotiation option and each transmission request
//! (serve it, refuse it with an NBD error value, or drop the connection). What it is given:
//! named exports, each an `Arc<dyn BlockDevice>` whose writability may change at runtime
//! (a primary serves writes, a secondary answers them with `EPERM` and is advertised
//! `NBD_FLAG_READ_ONLY`). What it hands back: replies on the socket and counters
//! ([`StatsSnapshot`]).
//!
//! ```text
//!  client ──► [handshake::answer_option]   pure: option bytes → reply bytes + next step
//!         ──► [proto::validate_request]    pure: header → execute | reject(errno) | close
//!         ──► BlockDevice (FileDevice, MemoryDevice, the replicated disk)
//! ```
//! Layers: [`proto`] (wire constants, decoders, request validation), [`handshake`]
//! (option haggling), [`server`] (tokio driver: listeners, pipelined transmission),
//! [`device`] (the trait, errors, an in-memory device), [`file`] (files and block
//! devices). The fio comparison against qemu-nbd and nbdkit is `tandem bench nbd`.
#![warn(missing_docs)]

pub mod device;
pub mod file;
pub mod handshake;
pub mod proto;
pub mod server;
pub mod stats;

pub use device::{BlockDevice, BufResult, Capabilities, DeviceError, DeviceFuture, MemoryDevice};
pub use file::FileDevice;
pub use server::{
    DEFAULT_SOCKET_DIR, Server, ServerConfig, ServerError, UnixAccess, bind_unix,
    default_socket_path, secure_socket_dir,
};
pub use stats::{Stats, StatsSnapshot};
