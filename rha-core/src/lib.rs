//! # rha-core
//!
//! The heart of rha: everything that keeps a replica of a whole server's
//! disks identical to the master, independent of how bytes travel.
//!
//! ```text
//!   master side                                   replica side
//!   ───────────                                   ────────────
//!   Volume ◄── TrackedVolume (write splitter)      ReplicaSink (FileSink, MemSink,
//!                 │                                 │           rha-azure page blobs)
//!                 ▼                                 │
//!   Journal (CRC'd segments) + ChangeLog bitmap     │
//!                 │                                 │
//!   ChangeSource ─┴─► sync::{volume_level,          │
//!   (Tracked, Rescan)      block_level, replicate} ─► SyncPeer ─► (in process: LocalPeer;
//!                                                                over TCP: rha-transport)
//! ```
//!
//! - [`volume`]: the [`volume::Volume`] trait, raw files and devices, memory, fixed VHD.
//! - [`journal`]: durable append-only change journal and the persistent dirty-region log.
//! - [`source`]: change capture ([`source::ChangeSource`]): write-through tracking and rescans.
//! - [`sink`]: replica disks that apply ordered batches ([`sink::ReplicaSink`]).
//! - [`hash`]: the per-block hash tree that block-level synchronisation compares.
//! - [`sync`]: volume-level and block-level synchronisation, replay, and replication.
//! - [`scenario`]: the scenario model, TOML loading and validation.
//! - [`events`]: typed events and statistics counters.
//!

pub mod error;
pub mod events;
pub mod hash;
pub mod journal;
pub mod scenario;
pub mod sink;
pub mod source;
pub mod sync;
pub mod volume;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use error::Error;

/// A journal sequence number: every captured change gets the next one.
pub type Seq = u64;

/// Identifies a volume within a scenario (its index in the scenario's volume list).
pub type VolumeId = u32;
