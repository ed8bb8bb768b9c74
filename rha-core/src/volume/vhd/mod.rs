//! Fixed VHD: the raw disk, byte for byte, followed by a 512-byte footer.
//!
//! ```text
//!   0                                  current_size        +512
//!   ├──────────── raw disk data ──────────────┼── footer ──┤
//!        (a FileVolume limited to this prefix)   footer.rs
//! ```
//!
//! This is the format Azure accepts for uploaded disks, with one more rule:
//! the virtual size must be a whole number of MiB ([`AZURE_SIZE_ALIGNMENT`]).
//! Because the data is the raw disk, a raw image becomes a fixed VHD in O(1)
//! by appending a footer ([`attach_footer`]) and turns back by truncating it
//! off ([`strip_footer`]).

mod footer;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub use footer::{
    checksum, offsets, vhd_timestamp, Footer, FooterError, Geometry, FOOTER_SIZE, RESERVED_LEN,
    RHA_CREATOR_APP, RHA_CREATOR_VERSION, VHD_COOKIE, VHD_CREATOR_HOST_OS_WINDOWS,
    VHD_DISK_TYPE_DIFFERENCING, VHD_DISK_TYPE_DYNAMIC, VHD_DISK_TYPE_FIXED, VHD_EPOCH_UNIX_SECONDS,
    VHD_FEATURES_RESERVED, VHD_FILE_FORMAT_VERSION, VHD_FIXED_DATA_OFFSET, VHD_MAX_CHS_SECTORS,
    VHD_SECTOR_SIZE,
};

use super::{FileVolume, Volume, VolumeError, SECTOR_SIZE};

/// Azure accepts only fixed VHDs whose virtual size is a whole number of MiB.
pub const AZURE_SIZE_ALIGNMENT: u64 = 1024 * 1024;

/// [`FOOTER_SIZE`] as a file length.
const FOOTER_LEN: u64 = FOOTER_SIZE as u64;

/// What [`VhdVolume::create`] or [`attach_footer`] did to the size asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeReport {
    /// The size asked for ([`VhdVolume::create`]) or the raw image's length
    /// ([`attach_footer`]), in bytes.
    pub requested_size: u64,
    /// The VHD's virtual size: `requested_size` rounded up to a whole MiB.
    pub virtual_size: u64,
}

impl SizeReport {
    /// The report for `requested_size`, or why it cannot be a VHD's size.
    fn new(requested_size: u64) -> Result<SizeReport, &'static str> {
        if requested_size == 0 {
            return Err("a fixed VHD must hold at least one MiB of data");
        }
        let virtual_size =
            round_up_to_mib(requested_size).ok_or("too large to round up to a whole MiB")?;
        Ok(SizeReport {
            requested_size,
            virtual_size,
        })
    }

    /// How many zero bytes were added at the end to reach a whole MiB.
    pub fn rounded_up_by(&self) -> u64 {
        self.virtual_size - self.requested_size
    }

    /// True when the size had to be rounded up.
    pub fn was_rounded(&self) -> bool {
        self.virtual_size != self.requested_size
    }
}

fn round_up_to_mib(size: u64) -> Option<u64> {
    size.checked_next_multiple_of(AZURE_SIZE_ALIGNMENT)
}

/// A fixed VHD presented as a volume of its virtual size (the footer is
/// neither readable nor writable through it).
#[derive(Debug)]
pub struct VhdVolume {
    data: FileVolume,
    footer: Footer,
}

impl VhdVolume {
    /// Creates a new fixed VHD at `path` (which must not exist) holding a
    /// zeroed, sparse disk of at least `size` bytes.
    ///
    /// Azure accepts only whole MiB, so `size` is rounded up to the next MiB;
    /// the returned [`SizeReport`] says by how much, and a warning is logged.
    pub fn create(
        path: impl AsRef<Path>,
        size: u64,
    ) -> Result<(VhdVolume, SizeReport), VolumeError> {
        let path = path.as_ref();
        let report = SizeReport::new(size).map_err(|reason| VolumeError::BadSize {
            volume: path.display().to_string(),
            size,
            reason: reason.into(),
        })?;
        if report.was_rounded() {
            tracing::warn!(
                path = %path.display(),
                requested = report.requested_size,
                virtual_size = report.virtual_size,
                "a fixed VHD for Azure must be a whole number of MiB: rounding the size up"
            );
        }
        let file_len =
            report
                .virtual_size
                .checked_add(FOOTER_LEN)
                .ok_or_else(|| VolumeError::BadSize {
                    volume: path.display().to_string(),
                    size,
                    reason: "too large for a file with a VHD footer".into(),
                })?;
        let file = FileVolume::create(path, file_len)?;
        let footer = Footer::new_fixed(report.virtual_size);
        // The file volume still spans the footer; limit it only afterwards.
        file.write_at(report.virtual_size, &footer.to_bytes())?;
        file.flush()?;
        let data = file.limited_to(report.virtual_size)?;
        Ok((VhdVolume { data, footer }, report))
    }

    /// Opens an existing fixed VHD for reading and writing, verifying its footer.
    pub fn open(path: impl AsRef<Path>) -> Result<VhdVolume, VolumeError> {
        Self::open_with(FileVolume::open(path)?)
    }

    /// Opens an existing fixed VHD for reading only, verifying its footer.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<VhdVolume, VolumeError> {
        Self::open_with(FileVolume::open_read_only(path)?)
    }

    fn open_with(file: FileVolume) -> Result<VhdVolume, VolumeError> {
        let path = file.path().to_path_buf();
        let footer = read_footer_of(file.size(), &path, |buf, at| file.read_at(at, buf))?
            .ok_or_else(|| VolumeError::Format {
                path: path.clone(),
                reason: "no VHD footer at the end of the file (no \"conectix\" cookie); \
                         open it as a raw image, or make it a fixed VHD with `attach_footer`"
                    .into(),
            })?;
        let size = check_footer_fits(&path, &footer, file.size())?;
        let data = file.limited_to(size)?;
        Ok(VhdVolume { data, footer })
    }

    /// The disk's footer.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The VHD file's path.
    pub fn path(&self) -> &Path {
        self.data.path()
    }

    /// The storage the whole file occupies on disk (see [`FileVolume::allocated_bytes`]).
    pub fn allocated_bytes(&self) -> Result<u64, VolumeError> {
        self.data.allocated_bytes()
    }
}

impl Volume for VhdVolume {
    fn size(&self) -> u64 {
        self.data.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.data.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.data.write_at(offset, data)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.data.write_zeroes(offset, len)
    }
    fn flush(&self) -> Result<(), VolumeError> {
        self.data.flush()
    }
    fn describe(&self) -> String {
        self.data.describe()
    }
}

/// Checks that a footer describes a file of `file_len` bytes: data of the
/// footer's current size (a multiple of 512) followed by the footer. Returns
/// the current size.
fn check_footer_fits(path: &Path, footer: &Footer, file_len: u64) -> Result<u64, VolumeError> {
    let size = footer.current_size;
    if size % SECTOR_SIZE != 0 {
        return Err(VolumeError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "the VHD footer's current size {size} is not a multiple of {SECTOR_SIZE} bytes; \
                 the footer is damaged or was written by a faulty tool"
            ),
        });
    }
    if size.checked_add(FOOTER_LEN) != Some(file_len) {
        return Err(VolumeError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "the VHD footer says the disk holds {size} bytes, so the file should be {} \
                 bytes long, but it is {file_len}: the file was truncated or extended after \
                 the footer was written; strip the footer and attach a new one if the data \
                 is right",
                size.saturating_add(FOOTER_LEN)
            ),
        });
    }
    Ok(size)
}

/// Reads the footer in the last 512 bytes of something `len` bytes long.
/// `Ok(None)` when too short or the cookie is absent; an error when the
/// cookie is there but the footer is invalid.
fn read_footer_of(
    len: u64,
    path: &Path,
    read: impl FnOnce(&mut [u8], u64) -> Result<(), VolumeError>,
) -> Result<Option<Footer>, VolumeError> {
    if len < FOOTER_LEN {
        return Ok(None);
    }
    let mut buf = [0u8; FOOTER_SIZE];
    read(&mut buf, len - FOOTER_LEN)?;
    match Footer::parse(&buf) {
        Ok(f) => Ok(Some(f)),
        Err(FooterError::BadCookie { .. }) => Ok(None),
        Err(source) => Err(VolumeError::VhdFooter {
            path: path.to_path_buf(),
            offset: len - FOOTER_LEN,
            source,
        }),
    }
}

fn io_err(op: &'static str, path: &Path, offset: u64, source: std::io::Error) -> VolumeError {
    VolumeError::Io {
        op,
        path: path.to_path_buf(),
        offset,
        source,
    }
}

fn open_file(path: &Path, write: bool) -> Result<File, VolumeError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|source| io_err("open", path, 0, source))
}

/// A regular file's length, refusing anything else (a footer cannot be
/// appended to or truncated off a block device).
fn regular_file_len(f: &File, path: &Path) -> Result<u64, VolumeError> {
    let meta = f
        .metadata()
        .map_err(|source| io_err("read the metadata of", path, 0, source))?;
    if !meta.is_file() {
        return Err(VolumeError::Format {
            path: path.to_path_buf(),
            reason: "not a regular file: a VHD footer can only be attached to or stripped \
                     from an image file"
                .into(),
        });
    }
    Ok(meta.len())
}

/// Reads the VHD footer at the end of the file or device at `path`.
///
/// `Ok(None)` when the file is shorter than a footer or its last 512 bytes do
/// not start with the `"conectix"` cookie (a raw image). An error when the
/// cookie is there but the footer is damaged (bad checksum) or describes a
/// dynamic or differencing disk ([`VolumeError::VhdFooter`]).
pub fn read_footer(path: impl AsRef<Path>) -> Result<Option<Footer>, VolumeError> {
    let path = path.as_ref();
    let mut f = open_file(path, false)?;
    let len = f
        .seek(SeekFrom::End(0))
        .map_err(|source| io_err("find the size of", path, 0, source))?;
    read_footer_of(len, path, |buf, at| {
        f.read_exact_at(buf, at)
            .map_err(|source| io_err("read the VHD footer of", path, at, source))
    })
}

/// What [`attach_footer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachReport {
    /// The raw length and the VHD's virtual size (rounded up to a whole MiB).
    pub size: SizeReport,
    /// The footer appended.
    pub footer: Footer,
}

/// Turns the raw image at `path` into a fixed VHD in place, in O(1): extends
/// it (sparsely, with zeros) to a whole MiB if needed, then appends a footer.
///
/// The report says whether the image was extended; a warning is logged when
/// it is. Refuses a file that already ends with a valid VHD footer.
pub fn attach_footer(path: impl AsRef<Path>) -> Result<AttachReport, VolumeError> {
    let path = path.as_ref();
    if read_footer(path)?.is_some() {
        return Err(VolumeError::Format {
            path: path.to_path_buf(),
            reason: "already a fixed VHD (it ends with a valid footer); strip the footer \
                     first to attach a new one"
                .into(),
        });
    }
    let f = open_file(path, true)?;
    let len = regular_file_len(&f, path)?;
    let size = SizeReport::new(len).map_err(|reason| VolumeError::BadSize {
        volume: path.display().to_string(),
        size: len,
        reason: reason.into(),
    })?;
    if size.was_rounded() {
        tracing::warn!(
            path = %path.display(),
            raw_len = size.requested_size,
            virtual_size = size.virtual_size,
            "a fixed VHD for Azure must be a whole number of MiB: extending the raw image with zeros"
        );
    }
    let footer = Footer::new_fixed(size.virtual_size);
    // Writing the footer past the end extends the file; the gap stays a hole.
    f.write_all_at(&footer.to_bytes(), size.virtual_size)
        .map_err(|source| io_err("append the VHD footer to", path, size.virtual_size, source))?;
    f.sync_data()
        .map_err(|source| io_err("flush", path, size.virtual_size, source))?;
    Ok(AttachReport { size, footer })
}

/// Turns the fixed VHD at `path` back into a raw image in place, in O(1):
/// verifies the footer and truncates it off. Returns the virtual size (the
/// raw image's new length).
///
/// Refuses, changing nothing, when the file has no valid footer or its
/// length does not match the footer.
pub fn strip_footer(path: impl AsRef<Path>) -> Result<u64, VolumeError> {
    let path = path.as_ref();
    let footer = read_footer(path)?.ok_or_else(|| VolumeError::Format {
        path: path.to_path_buf(),
        reason: "no VHD footer at the end of the file (no \"conectix\" cookie): it is \
                 probably a raw image already; nothing was changed"
            .into(),
    })?;
    let f = open_file(path, true)?;
    let len = regular_file_len(&f, path)?;
    let size = check_footer_fits(path, &footer, len)?;
    f.set_len(size)
        .map_err(|source| io_err("truncate the VHD footer off", path, size, source))?;
    f.sync_all()
        .map_err(|source| io_err("flush", path, size, source))?;
    Ok(size)
}
