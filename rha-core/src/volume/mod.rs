//! Volumes: fixed-size, byte-addressable disks with positional reads and writes.
//!
//! ```text
//!                 Volume (trait)
//!        ┌──────────┬──────┴───────┬──────────────┐
//!    MemVolume  FileVolume    VhdVolume      (rha-azure: PageBlobVolume)
//!    (memory)   (raw image    (raw data + 512-byte
//!               or device)     fixed VHD footer)
//! ```
//!
//! [`open_volume`] is the single entry point that detects the format of an
//! existing image file.

mod file;
mod memory;
pub mod vhd;
mod zero;

use std::io;
use std::path::{Path, PathBuf};

pub use file::FileVolume;
pub use memory::MemVolume;
pub use vhd::VhdVolume;
pub use zero::is_zero;

/// The unit in which rha compares, hashes, tracks and sends data: 4 KiB.
pub const BLOCK_SIZE: usize = 4096;

/// Volume sizes are whole multiples of this (the disk sector).
pub const SECTOR_SIZE: u64 = 512;

/// A fixed-size disk with positional reads and writes.
///
/// # Contract
/// - The size never changes while the volume is open.
/// - `read_at` and `write_at` take any byte offset and length; an access that
///   reaches past [`Volume::size`] fails with [`VolumeError::OutOfRange`] and
///   changes nothing.
/// - Methods take `&self`: implementations are safe to call from several
///   threads at once; concurrent writes to overlapping ranges are not ordered.
/// - After `write_zeroes(o, n)` the range reads as zeros. Implementations free
///   the storage where the backing store can (a punched hole), so a mostly
///   empty disk costs what it holds.
/// - Data is durable only after [`Volume::flush`] returns.
pub trait Volume: Send + Sync + std::fmt::Debug {
    /// Size in bytes of the data the volume presents (for a VHD, without its footer).
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError>;

    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError>;

    /// [`Volume::write_at`] of a buffer the volume may keep a reference to
    /// instead of copying it (a [`crate::source::TrackedVolume`] holds it in
    /// its journal's memory). The default writes it with `write_at`.
    fn write_bytes(&self, offset: u64, data: bytes::Bytes) -> Result<(), VolumeError> {
        self.write_at(offset, &data)
    }

    /// Makes `len` bytes at `offset` read as zeros, deallocating them where possible.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), VolumeError>;

    /// A short description for messages and events (usually the path).
    fn describe(&self) -> String;
}

impl<V: Volume + ?Sized> Volume for std::sync::Arc<V> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        (**self).read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        (**self).write_at(offset, data)
    }
    fn write_bytes(&self, offset: u64, data: bytes::Bytes) -> Result<(), VolumeError> {
        (**self).write_bytes(offset, data)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        (**self).write_zeroes(offset, len)
    }
    fn flush(&self) -> Result<(), VolumeError> {
        (**self).flush()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Checks that `len` bytes at `offset` lie inside a volume of `size` bytes.
pub fn check_range(
    volume: &dyn Volume,
    op: &'static str,
    offset: u64,
    len: u64,
) -> Result<(), VolumeError> {
    let size = volume.size();
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(VolumeError::OutOfRange {
            volume: volume.describe(),
            op,
            offset,
            len,
            size,
        }),
    }
}

/// What went wrong with a volume, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// An access reached past the end of the volume.
    #[error(
        "{op} of {len} bytes at offset {offset} on {volume} reaches past its end ({size} bytes)"
    )]
    OutOfRange {
        /// The volume's description.
        volume: String,
        /// The operation (`read`, `write`, `zero`).
        op: &'static str,
        /// Where the access started.
        offset: u64,
        /// How long it was.
        len: u64,
        /// The volume's size.
        size: u64,
    },
    /// The operating system refused an operation on a file or device.
    #[error("{op} {path} at offset {offset}: {source}")]
    Io {
        /// The operation (`open`, `read`, `write`, `punch hole in`, `flush`, ...).
        op: &'static str,
        /// The file or device.
        path: PathBuf,
        /// Where in the file.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A size that the volume cannot have.
    #[error("{volume}: size {size} bytes is not valid: {reason}")]
    BadSize {
        /// The volume's description.
        volume: String,
        /// The offending size.
        size: u64,
        /// Why, and what to do.
        reason: String,
    },
    /// The file's contents are not in the format expected (for example a damaged VHD footer).
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The last 512 bytes of a file start like a VHD footer but are not a
    /// valid fixed-VHD footer (damaged, or a dynamic or differencing VHD).
    #[error("{path}: VHD footer at offset {offset}: {source}")]
    VhdFooter {
        /// The file.
        path: PathBuf,
        /// Where the footer starts in the file.
        offset: u64,
        /// What is wrong with the footer.
        #[source]
        source: vhd::FooterError,
    },
    /// A write or zeroing on a volume opened read-only.
    #[error("cannot {op} {volume}: it was opened read-only; open it read-write to change it")]
    ReadOnly {
        /// The volume's description.
        volume: String,
        /// The refused operation (`write`, `zero`).
        op: &'static str,
    },
}

/// The on-disk format of an image file, as [`ImageFormat::detect`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A raw image (or block device): the file is the disk, byte for byte.
    Raw,
    /// A fixed VHD: the raw disk followed by a 512-byte VHD footer.
    FixedVhd,
}

impl ImageFormat {
    /// Detects the format of the image at `path` by looking for a valid VHD
    /// footer in its last 512 bytes.
    ///
    /// A file whose last 512 bytes start with the VHD cookie but fail the
    /// footer's checks is an error ([`VolumeError::VhdFooter`]), not a raw image:
    /// treating a damaged VHD as raw would expose its footer as disk data.
    pub fn detect(path: impl AsRef<Path>) -> Result<ImageFormat, VolumeError> {
        Ok(match vhd::read_footer(path)? {
            Some(_) => ImageFormat::FixedVhd,
            None => ImageFormat::Raw,
        })
    }
}

/// Opens an existing image file or block device read-write, detecting its
/// format: a fixed VHD (valid footer at the end) becomes a [`VhdVolume`]
/// presenting only the disk data, anything else a [`FileVolume`].
///
/// A damaged VHD footer is an error ([`VolumeError::VhdFooter`]) rather than
/// a raw image, so the footer is never mistaken for disk data.
pub fn open_volume(path: impl AsRef<Path>) -> Result<Box<dyn Volume>, VolumeError> {
    let path = path.as_ref();
    Ok(match ImageFormat::detect(path)? {
        ImageFormat::FixedVhd => Box::new(VhdVolume::open(path)?),
        ImageFormat::Raw => Box::new(FileVolume::open(path)?),
    })
}

/// [`open_volume`], read-only: writes and zeroing fail with
/// [`VolumeError::ReadOnly`]. For reading a master's disks.
pub fn open_volume_read_only(path: impl AsRef<Path>) -> Result<Box<dyn Volume>, VolumeError> {
    let path = path.as_ref();
    Ok(match ImageFormat::detect(path)? {
        ImageFormat::FixedVhd => Box::new(VhdVolume::open_read_only(path)?),
        ImageFormat::Raw => Box::new(FileVolume::open_read_only(path)?),
    })
}
