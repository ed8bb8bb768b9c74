//! The crate's top-level error, wrapping each module's own error.

use crate::cloud::CloudError;
use crate::journal::JournalError;
use crate::scenario::ScenarioError;
use crate::sink::SinkError;
use crate::source::SourceError;
use crate::sync::SyncError;
use crate::volume::VolumeError;

/// Any error from rha-core; each variant carries its module's error, which
/// says what failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A journal operation failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A scenario file could not be read or parsed.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The replica side failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Change capture failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A synchronisation or replication failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// Creating or managing the switchover VM failed.
    #[error(transparent)]
    Cloud(#[from] CloudError),
}
