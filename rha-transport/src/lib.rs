//! # rha-transport
//!
//! Everything between two rha engines and between an operator and an engine:
//!
//! - [`wire`]: the versioned, framed, CRC-checked protocol (see `docs/protocol.md`),
//!   with optional per-frame compression.
//! - [`tls`]: mutual TLS 1.3 through rustls (a scenario CA, or pinned certificates).
//! - [`cert`]: making the CA and the engine and operator certificates (`rha cert`).
//! - [`limit`]: the bandwidth limit with its optional schedule by hour.
//! - [`link`]: one live connection: request ids, heartbeats, counters, back-pressure.
//! - [`connect`]: calling and accepting, TLS and the versioned handshake.
//! - [`engine`]: the engine daemon: master and replica roles, NAT mode, Is Alive, switchover.
//! - [`nbd`]: the NBD server front-end through which a VM or a Linux host writes to a protected volume.
//! - [`qemu_bitmap`]: incremental synchronisation from a QEMU dirty bitmap read over NBD (`qemu-nbd -B`).

pub mod cert;
pub mod connect;
pub mod engine;
pub mod limit;
pub mod link;
pub mod nbd;
pub mod qemu_bitmap;
pub mod tls;
pub mod wire;
