//! Change capture: where the master's changes come from.
//!
//! ```text
//!                ChangeSource (trait)
//!       ┌─────────────┼──────────────────┐
//!  StaticSource   TrackedSet          RescanSource
//!  (offline:      (write splitter:    (writes cannot be intercepted:
//!   no changes)    TrackedVolume ─►    periodic block-hash rescans
//!                  Journal)            against a persisted hash map)
//! ```

mod rescan;
mod tracked;

use std::ops::Range;
use std::sync::Arc;

pub use rescan::RescanSource;
pub use tracked::{TrackedSet, TrackedVolume, MAX_WRITE_RECORD};

use crate::journal::{JournalError, Record};
use crate::volume::{Volume, VolumeError};
use crate::{Seq, VolumeId};

/// The master side's view of its protected volumes and of the changes made to them.
///
/// # Contract
/// - [`ChangeSource::changes_after`] returns records in strictly increasing,
///   consecutive sequence order; a record stays available until acknowledged.
///   When records after `after` were lost (journal overflow), it fails with
///   [`SourceError::Gap`] and [`ChangeSource::needs_resync`] tells whether a
///   resynchronisation of [`ChangeSource::dirty_ranges`] is due.
/// - Every write to a protected volume that completed is either in a record
///   that has not been acknowledged, or inside `dirty_ranges`, or both.
/// - `dirty_ranges` returning `None` means "unknown": treat the whole volume as changed.
pub trait ChangeSource: Send + Sync {
    /// The protected volumes, indexed by [`VolumeId`]; reads see current data.
    fn volumes(&self) -> &[Arc<dyn Volume>];

    /// Records with a sequence above `after`, in order, up to about `max_bytes` of data (at least one).
    fn changes_after(&self, after: Seq, max_bytes: usize) -> Result<Vec<Record>, SourceError>;

    /// The replica has durably applied every record up to `upto`: they may be discarded.
    fn acknowledge(&self, upto: Seq) -> Result<(), SourceError>;

    /// The sequence of the newest record captured.
    fn last_seq(&self) -> Seq;

    /// The newest sequence the replica acknowledged.
    fn acknowledged(&self) -> Seq {
        0
    }

    /// Captures changes now, where the source has to look for them (a rescan).
    /// Returns how many blocks were found changed.
    fn capture(&self) -> Result<u64, SourceError> {
        Ok(0)
    }

    /// True when records were lost and the dirty regions must be resynchronised.
    fn needs_resync(&self) -> bool {
        false
    }

    /// Byte ranges of `volume` that may differ from the replica's last
    /// consistent point (see the contract), or `None` when unknown.
    fn dirty_ranges(&self, _volume: VolumeId) -> Option<Vec<Range<u64>>> {
        None
    }

    /// A resynchronisation starts: returns the sequence whose records its reads cover.
    fn resync_started(&self) -> Result<Seq, SourceError> {
        Ok(self.last_seq())
    }

    /// A resynchronisation that started at `base` has landed on the replica.
    fn resync_completed(&self, base: Seq) -> Result<(), SourceError> {
        self.acknowledge(base)
    }

    /// Bytes of captured changes not yet acknowledged.
    fn pending_bytes(&self) -> u64 {
        0
    }
}

/// A shared source is a source (so a writer and the replication loop can hold one together).
impl<T: ChangeSource + ?Sized> ChangeSource for Arc<T> {
    fn volumes(&self) -> &[Arc<dyn Volume>] {
        (**self).volumes()
    }
    fn changes_after(&self, after: Seq, max_bytes: usize) -> Result<Vec<Record>, SourceError> {
        (**self).changes_after(after, max_bytes)
    }
    fn acknowledge(&self, upto: Seq) -> Result<(), SourceError> {
        (**self).acknowledge(upto)
    }
    fn last_seq(&self) -> Seq {
        (**self).last_seq()
    }
    fn acknowledged(&self) -> Seq {
        (**self).acknowledged()
    }
    fn capture(&self) -> Result<u64, SourceError> {
        (**self).capture()
    }
    fn needs_resync(&self) -> bool {
        (**self).needs_resync()
    }
    fn dirty_ranges(&self, volume: VolumeId) -> Option<Vec<Range<u64>>> {
        (**self).dirty_ranges(volume)
    }
    fn resync_started(&self) -> Result<Seq, SourceError> {
        (**self).resync_started()
    }
    fn resync_completed(&self, base: Seq) -> Result<(), SourceError> {
        (**self).resync_completed(base)
    }
    fn pending_bytes(&self) -> u64 {
        (**self).pending_bytes()
    }
}

/// Volumes whose changes are not captured: for offline synchronisation of images.
#[derive(Debug, Clone)]
pub struct StaticSource {
    volumes: Vec<Arc<dyn Volume>>,
}

impl StaticSource {
    /// A source over `volumes` (volume `i` gets id `i`).
    pub fn new(volumes: Vec<Arc<dyn Volume>>) -> Self {
        StaticSource { volumes }
    }
}

impl ChangeSource for StaticSource {
    fn volumes(&self) -> &[Arc<dyn Volume>] {
        &self.volumes
    }
    fn changes_after(&self, _after: Seq, _max_bytes: usize) -> Result<Vec<Record>, SourceError> {
        Ok(Vec::new())
    }
    fn acknowledge(&self, _upto: Seq) -> Result<(), SourceError> {
        Ok(())
    }
    fn last_seq(&self) -> Seq {
        0
    }
}

/// What went wrong while capturing changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A protected volume failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The journal failed.
    #[error(transparent)]
    Journal(JournalError),
    /// Records after `wanted` were discarded; the dirty regions must be resynchronised.
    #[error("changes after sequence {wanted} were discarded (oldest kept: {first}); the changed regions will be resynchronised")]
    Gap {
        /// The sequence asked after.
        wanted: Seq,
        /// The oldest sequence still kept.
        first: Seq,
    },
    /// A file of the source's own bookkeeping failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The source's bookkeeping does not fit the volumes.
    #[error("{0}")]
    Mismatch(String),
}

impl From<JournalError> for SourceError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Gap { wanted, first } => SourceError::Gap { wanted, first },
            other => SourceError::Journal(other),
        }
    }
}
