//! # rha-azure
//!
//! Azure for rha: replica disks kept as page blobs in the fixed-VHD layout
//! Azure makes managed disks from, and recovery points kept as blob
//! snapshots. It is the replica side of a scenario whose target is Azure:
//! the appliance applies the master's batches to a [`PageBlobSink`] exactly
//! as it would to a local [`FileSink`](rha_core::sink::FileSink).
//!
//! ```text
//!   rha-core: synchronise / replicate ──► ReplicaSink ──► PageBlobSink ─┬─ replica.json  (state)
//!                                         Volume      ──► PageBlobVolume ├─ redo.log      (batch in flight)
//!                                                                        ├─ disk-0.vhd    (page blob: data + VHD footer)
//!                                                           snapshots ◄──┴─ disk-1.vhd …
//!                                                        (recovery points)
//! ```
//!
//! - [`BlobStore`]: one container of a storage account (or Azurite), an
//!   internal tokio runtime the synchronous traits block on, and the retry
//!   loop (throttling 429/503, server errors, timeouts, dropped connections,
//!   with exponential backoff).
//! - [`PageBlobVolume`]: a [`Volume`](rha_core::volume::Volume) over one
//!   page blob: any alignment (partial pages are read, patched and written
//!   whole), page writes of at most 4 MiB with several in flight, zero
//!   ranges cleared instead of written, memory bounded whatever the size.
//! - [`PageBlobSink`]: the [`ReplicaSink`](rha_core::sink::ReplicaSink):
//!   leased blobs, durable state, all-or-nothing batches after a crash,
//!   bookmarks that become recovery points.
//! - [`RecoveryPoint`], [`PointSelector`], [`resolve_recovery_point`]:
//!   list points and pick `latest` or a chosen one for switchover and `vm start`.
//! - [`account`]: cloud accounts (service principals) in a 0600 file, a
//!   token test whose refusals say what to do (`rha cloud account ...`).
//! - [`AzureProvider`]: the [`CloudProvider`](rha_core::cloud::CloudProvider)
//!   of Azure: managed disks imported from the replica blobs, NIC, VM, with
//!   cleanup when a step fails; Resource Manager behind [`arm::AzureApi`].
//! - [`AzureTargets`]: the engine's replica target for `[replica.azure]`
//!   scenarios (`rha engine` registers it): a [`PageBlobSink`] in the
//!   scenario's container, bookmarks as snapshots, [`AzureProvider`] for
//!   switchover and `vm start` (see [`target`] for the roles it needs).
//!
//! The Azure SDK used underneath (`azure_storage_blobs` 0.21, the legacy
//! line) stays behind these types: nothing of it appears in the API.
//! The exceptions are the switchover's adapters: [`arm::SdkArm`] and
//! [`account::AccountCredential`] take or implement azure_core 0.21's
//! `HttpClient` and `TokenCredential`; callers use [`arm::AzureApi`].
//!
//! # Example
//! ```no_run
//! use rha_azure::{BlobStore, Endpoint, PageBlobSink, SinkConfig, StoreConfig};
//! use rha_core::sink::ReplicaSink;
//!
//! let store = BlobStore::connect(StoreConfig::new(
//!     Endpoint::Emulator { host: "127.0.0.1".into(), port: 10000 },
//!     "rha-replicas",
//! ))?;
//! let sink = PageBlobSink::create(&store, &SinkConfig::new("web01-ha", "appliance-1"), &[64 << 20])?;
//! sink.volume(0)?.write_at(4096, b"hello")?;
//! let point = sink.create_recovery_point("first")?;
//! println!("{} at seq {}: {}", point.id, point.seq, point.disks[0].url);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// Errors name the operation, the resource and the service's answer: large
// values, but only on the error path of a network call.
#![allow(clippy::result_large_err)]

mod error;
mod page_blob;
mod plan;
mod points;
mod sink;
mod store;

// Cloud accounts and the switchover to an Azure VM.
pub mod account;
pub mod arm;
pub mod logging;
pub mod provider;
pub mod target;

pub use account::{AccountStore, AzureAccount, ClientSecret};
pub use error::{
    azure_error_of_io, azure_error_of_sink, azure_error_of_volume, AzureError, AzureErrorKind,
};
pub use page_blob::PageBlobVolume;
pub use plan::ZERO_CLEAR_MIN;
pub use points::{select_point, DiskSnapshot, PointSelector, RecoveryPoint};
pub use provider::{AzureProvider, AzureTarget};
pub use sink::{
    lease_id_for, list_recovery_points, read_replica_state, resolve_recovery_point, PageBlobSink,
    SinkConfig, REDO_BLOB, STATE_BLOB,
};
pub use store::{BlobStore, Endpoint, RetryPolicy, StoreConfig, StoreStats, MAX_PUT_PAGES};
pub use target::{AzureReplicaTarget, AzureTargets};
