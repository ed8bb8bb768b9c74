//! The crate's top-level error, wrapping each module's own error.

use crate::journal::JournalError;
use crate::volume::VolumeError;

/// Any error from rha-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A journal operation failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}
