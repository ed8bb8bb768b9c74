//! Incremental synchronisation from a QEMU persistent dirty bitmap.
//!
//! For QEMU/KVM guests whose disks stay in qcow2 files: QEMU records the
//! clusters written since a bitmap was added (or last cleared); `qemu-nbd -B
//! NAME` exports the image together with that bitmap as the NBD metadata
//! context `qemu:dirty-bitmap:NAME`. This module reads the bitmap's dirty
//! extents with `NBD_CMD_BLOCK_STATUS`, presents the export as a read-only
//! [`Volume`](rha_core::volume::Volume) and the extents as a
//! [`ChangeSource`](rha_core::source::ChangeSource)'s dirty ranges, so that
//! rha-core's own [`synchronise`](rha_core::sync::synchronise) copies only
//! those regions to a replica that holds the previous state. After the
//! replica holds the data durably, [`BitmapReset`] clears the bitmap (on a
//! running VM, keeping the writes made during the synchronisation marked:
//! [`BitmapReset::begin`] before the walk starts a second bitmap that the
//! reset merges back).
//!
//! ```text
//!  qcow2 + bitmap b0 ── qemu-nbd -r -B b0 ──► NbdClient (client.rs: handshake,
//!                                              │  NBD_CMD_READ, NBD_CMD_BLOCK_STATUS;
//!                                              │  decoding in proto.rs, pure)
//!                        ┌─────────────────────┴──────────────┐
//!                    NbdVolume (reads)        DirtyBitmapSource (dirty_ranges = b0's extents)
//!                        └──────────► rha_core::sync::synchronise ──► replica (raw / fixed VHD)
//!                                              │ end_sync: the replica is durable
//!                                              ▼
//!                          DirtyBitmapSource::finish ──► Synchronised (a proof)
//!                                              ▼
//!                 BitmapReset: `qemu-img bitmap --clear IMG b0` (image not in use)
//!                          or, on a running VM, QMP: before the walk (begin)
//!                          `block-dirty-bitmap-add b0-rha-during-sync`, after it
//!                          a transaction of clear b0 + merge the other into b0
//! ```
//!
//! # Example
//! ```no_run
//! use rha_core::events::Events;
//! use rha_core::sink::{MemSink, ReplicaState};
//! use rha_core::sync::{synchronise, LocalPeer, SyncMethod, SyncOptions};
//! use rha_core::volume::{open_volume, Volume};
//! use rha_transport::qemu_bitmap::{BitmapReset, DirtyBitmapSource, NbdAddress};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let reset = BitmapReset::Image { image: "disk.qcow2".into() };
//! reset.begin("b0")?;
//! let source = DirtyBitmapSource::open(&NbdAddress::parse("nbd://127.0.0.1:10809/")?, "b0")?;
//! let replica: std::sync::Arc<dyn Volume> = open_volume("replica.raw")?.into();
//! // The replica holds the image as it was when b0 was added or cleared.
//! let sink = MemSink::with_state(vec![replica], ReplicaState { applied: 0, consistent: true, synced: true });
//! synchronise(&source, &mut LocalPeer::new(&sink), &SyncOptions::new(SyncMethod::Volume), &Events::new())?;
//! let proof = source.finish()?;
//! reset.reset(&proof)?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod proto;
mod reset;
mod source;

pub use client::{NbdAddress, NbdClient};
pub use reset::{BitmapReset, ResetError, Synchronised, DURING_SUFFIX};
pub use source::{DirtyBitmapSource, DirtyRanges, NbdVolume, MAX_RANGES};

/// What went wrong talking to the NBD server, grouped by who is at fault:
/// the address (the caller), the network, the server's protocol, or the
/// server's refusal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// The address is not an NBD URI this client understands.
    #[error("{address}: {reason}")]
    BadAddress {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached.
    #[error("connect to {address}: {source} (is qemu-nbd running and listening there?)")]
    Connect {
        /// The server.
        address: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the connection failed (or the server closed it).
    #[error("{address}: {op}: {source}")]
    Io {
        /// The server.
        address: String,
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The server sent something that does not follow the NBD protocol; the
    /// connection is closed.
    #[error("{address}: the server broke the NBD protocol: {source}")]
    Malformed {
        /// The server.
        address: String,
        /// What was wrong.
        #[source]
        source: proto::Malformed,
    },
    /// The server refused an option of the negotiation.
    #[error("{address}: the server refused {option}: {reason}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Refused {
        /// The server.
        address: String,
        /// The option refused.
        option: &'static str,
        /// The meaning of the server's error reply.
        reason: &'static str,
        /// The server's message.
        message: String,
    },
    /// The export does not offer the dirty bitmap's metadata context.
    #[error("{address}: the export offers no dirty bitmap {bitmap:?} (metadata context qemu:dirty-bitmap:{bitmap}): qemu-nbd was not started with -B {bitmap}, or the image has no such bitmap (qemu-img bitmap --add --enable IMAGE {bitmap})")]
    NoBitmap {
        /// The server.
        address: String,
        /// The bitmap asked for.
        bitmap: String,
    },
    /// The server failed a request.
    #[error(
        "{address}: {command} of {len} bytes at offset {offset} failed on the server: {error}"
    )]
    Server {
        /// The server.
        address: String,
        /// The command.
        command: &'static str,
        /// Where.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// The server's error.
        error: proto::ServerError,
    },
    /// A request reaching past the end of the export.
    #[error(
        "{address}: {len} bytes at offset {offset} reach past the export's end ({size} bytes)"
    )]
    OutOfRange {
        /// The server.
        address: String,
        /// Where.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// The export's size.
        size: u64,
    },
    /// An earlier error left the connection out of step; nothing more is sent on it.
    #[error("{address}: the connection was closed after an earlier error; reconnect")]
    Broken {
        /// The server.
        address: String,
    },
}
