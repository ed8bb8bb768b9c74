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
//! - [`cloud`]: the switchover VM ([`cloud::CloudProvider`]); the local QEMU provider.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use rha_core::events::Events;
//! use rha_core::sink::{MemSink, ReplicaSink};
//! use rha_core::source::StaticSource;
//! use rha_core::sync::{synchronise, LocalPeer, SyncMethod, SyncOptions};
//! use rha_core::volume::{MemVolume, Volume};
//!
//! let master = Arc::new(MemVolume::new(1 << 20)?);
//! master.write_at(8192, b"hello")?;
//! let source = StaticSource::new(vec![master.clone() as Arc<dyn Volume>]);
//! let sink = MemSink::new(&[1 << 20])?;
//! let mut peer = LocalPeer::new(&sink);
//! let report = synchronise(&source, &mut peer, &SyncOptions::new(SyncMethod::Block), &Events::new())?;
//! assert!(report.consistent);
//! let mut buf = [0u8; 5];
//! sink.volume(0)?.read_at(8192, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! # Ok::<(), rha_core::Error>(())
//! ```
//!

pub mod cloud;
pub mod error;
pub mod events;
pub mod hash;
mod iov;
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
