//! Replica sinks: the replica side's disks, which apply ordered batches of changes.
//!
//! ```text
//!            ReplicaSink (trait)
//!       ┌────────────┼───────────────────┐
//!   MemSink      FileSink            (rha-azure: page blobs)
//!   (tests)      (raw or fixed-VHD files + write-ahead redo log + state file)
//! ```

mod file;
mod memory;

use std::path::PathBuf;
use std::sync::Arc;

pub use file::{CheckpointPolicy, DiskFormat, FileSink};
pub use memory::MemSink;

use crate::journal::Record;
use crate::volume::{Volume, VolumeError};
use crate::{Seq, VolumeId};

/// Where a replica stands, as recorded durably on the replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaState {
    /// Every journal record with a sequence up to this one has been applied durably.
    pub applied: Seq,
    /// The replica's disks hold a crash-consistent image of the master at `applied`.
    /// False from the start of a synchronisation until every change made
    /// during it has been replayed.
    pub consistent: bool,
    /// At least one synchronisation with the master has completed, so the
    /// master's change log can prove which regions are unchanged.
    pub synced: bool,
}

/// The replica side of a scenario.
///
/// # Contract
/// - [`ReplicaSink::apply`] takes records in sequence order. Records at or
///   below [`ReplicaState::applied`] are skipped, so re-applying a batch that
///   was applied already is harmless (resume after a dropped link). A batch
///   that starts after `applied + 1` is refused with [`SinkError::Gap`].
/// - When `apply` returns, the batch is durable and `applied` records its
///   last sequence. A crash at any moment leaves the replica, once reopened,
///   at a batch boundary: all of a batch or none of it.
/// - Writes made through [`ReplicaSink::volume`] during a synchronisation are
///   not ordered; the replica is marked not consistent from
///   [`ReplicaSink::begin_sync`] until [`ReplicaSink::mark_consistent`].
pub trait ReplicaSink: Send + Sync {
    /// How many volumes the replica holds.
    fn volume_count(&self) -> usize;

    /// The replica disk of volume `id`, for synchronisation reads and writes.
    fn volume(&self, id: VolumeId) -> Result<Arc<dyn Volume>, SinkError>;

    /// The durable state.
    fn state(&self) -> ReplicaState;

    /// Applies an ordered batch of journal records (see the contract).
    fn apply(&self, records: &[Record]) -> Result<Seq, SinkError>;

    /// Records durably that a synchronisation is under way (not consistent).
    fn begin_sync(&self) -> Result<(), SinkError>;

    /// Makes every synchronisation write durable and records that the replica
    /// holds every change up to `base`; replay continues after it.
    fn end_sync(&self, base: Seq) -> Result<(), SinkError>;

    /// Records durably that the replica is consistent at `seq` (which must have been applied).
    fn mark_consistent(&self, seq: Seq) -> Result<(), SinkError>;
}

/// Applies records to volumes (shared by the sink implementations).
pub(crate) fn write_records(
    volumes: &[Arc<dyn Volume>],
    records: &[Record],
) -> Result<(), SinkError> {
    use crate::journal::Payload;
    for r in records {
        let v = volume_at(volumes, r.volume)?;
        match &r.payload {
            Payload::Data(d) => v.write_at(r.offset, d)?,
            Payload::Zero(n) => v.write_zeroes(r.offset, *n)?,
        }
    }
    Ok(())
}

/// The records of `records` not yet applied, after checking sequence order.
pub(crate) fn unapplied(applied: Seq, records: &[Record]) -> Result<&[Record], SinkError> {
    for pair in records.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(SinkError::OutOfOrder {
                previous: pair[0].seq,
                next: pair[1].seq,
            });
        }
    }
    let skip = records.iter().take_while(|r| r.seq <= applied).count();
    let rest = &records[skip..];
    match rest.first() {
        Some(first) if first.seq != applied + 1 => Err(SinkError::Gap {
            applied,
            first: first.seq,
        }),
        _ => Ok(rest),
    }
}

/// Refuses to call a replica consistent at a sequence it has not applied.
pub(crate) fn check_consistent(state: &ReplicaState, seq: Seq) -> Result<(), SinkError> {
    if seq > state.applied {
        return Err(SinkError::Mismatch {
            what: format!(
                "cannot be consistent at sequence {seq}: only {} was applied",
                state.applied
            ),
        });
    }
    Ok(())
}

pub(crate) fn volume_at(
    volumes: &[Arc<dyn Volume>],
    id: VolumeId,
) -> Result<&Arc<dyn Volume>, SinkError> {
    volumes.get(id as usize).ok_or(SinkError::NoSuchVolume {
        id,
        count: volumes.len(),
    })
}

/// What went wrong on the replica side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A replica disk failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A file of the replica's own bookkeeping failed.
    #[error("replica {op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A batch names a volume the replica does not have.
    #[error("the replica has {count} volume(s); a change was addressed to volume {id}: the scenario's volume lists differ")]
    NoSuchVolume {
        /// The volume named.
        id: VolumeId,
        /// How many the replica has.
        count: usize,
    },
    /// A batch skips sequences the replica never received.
    #[error("the replica applied up to sequence {applied} but the next change offered is {first}: changes in between are missing; resynchronise")]
    Gap {
        /// The last applied sequence.
        applied: Seq,
        /// The first sequence offered.
        first: Seq,
    },
    /// A batch is not in sequence order.
    #[error("a batch holds sequence {next} right after {previous}: batches must hold consecutive sequences")]
    OutOfOrder {
        /// The earlier record.
        previous: Seq,
        /// The record that does not follow it.
        next: Seq,
    },
    /// The replica's bookkeeping is damaged or from another version.
    #[error("replica state {path}: {reason}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The replica disks do not match what was asked.
    #[error("replica {what}")]
    Mismatch {
        /// What differs, and what to do.
        what: String,
    },
}
