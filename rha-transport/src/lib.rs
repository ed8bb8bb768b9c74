//! # rha-transport
//!
//! Everything between two rha engines and between an operator and an engine:
//!
//! - [`wire`]: the versioned, framed, CRC-checked protocol (see `docs/protocol.md`),
//!   with optional per-frame compression.
//! - [`tls`]: mutual TLS 1.3 through rustls (a scenario CA, or pinned certificates).
//! - [`cert`]: making the CA and the engine and operator certificates (`rha cert`).
//! - [`limit`]: the bandwidth limit with its optional schedule by hour.

pub mod wire;
