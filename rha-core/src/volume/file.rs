//! Raw image files and block devices.
//!
//! A [`FileVolume`] presents a regular file (a raw disk image) or a block
//! device as a [`Volume`]. All I/O is positional (`pread`/`pwrite` through
//! [`FileExt`]), so the volume needs no lock and any number of threads may use
//! it at once. [`Volume::write_zeroes`] punches a hole in a regular file, so a
//! zeroed range costs no storage; where holes are not supported (some
//! filesystems, block devices without discard) it writes zeros instead.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{check_range, Volume, VolumeError, SECTOR_SIZE};

/// The largest buffer of zeros written at once when a hole cannot be punched.
const ZERO_FILL_CHUNK: usize = 1024 * 1024;

/// `st_blocks` counts units of this many bytes, whatever the filesystem's block size.
const ST_BLOCK_UNIT: u64 = 512;

/// A raw image file or block device presented as a volume.
///
/// The visible size is the file's length (or the device's size) unless the
/// volume was limited to a prefix with [`FileVolume::limited_to`], as a fixed
/// VHD does to hide its footer.
#[derive(Debug)]
pub struct FileVolume {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    block_device: bool,
}

impl FileVolume {
    /// Opens an existing image file or block device for reading and writing.
    ///
    /// The size is the file's length, or for a block device its size found by
    /// seeking to its end. It must be a multiple of 512 bytes.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VolumeError> {
        Self::open_with(path.as_ref(), false)
    }

    /// Opens an existing image file or block device for reading only; writes
    /// and zeroing fail with [`VolumeError::ReadOnly`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, VolumeError> {
        Self::open_with(path.as_ref(), true)
    }

    /// Creates a new, sparse image file of `size` bytes that reads as zeros.
    ///
    /// `size` must be a multiple of 512 bytes. Fails if `path` already
    /// exists, so an existing image is never overwritten.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<Self, VolumeError> {
        let path = path.as_ref();
        if size % SECTOR_SIZE != 0 {
            return Err(VolumeError::BadSize {
                volume: path.display().to_string(),
                size,
                reason: format!(
                    "a volume's size must be a multiple of {SECTOR_SIZE} bytes; \
                     round it up to {}",
                    size.div_ceil(SECTOR_SIZE).saturating_mul(SECTOR_SIZE)
                ),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| io_error("create", path, 0, source))?;
        file.set_len(size)
            .map_err(|source| io_error("set the length of", path, size, source))?;
        Ok(FileVolume {
            file,
            path: path.to_path_buf(),
            size,
            read_only: false,
            block_device: false,
        })
    }

    fn open_with(path: &Path, read_only: bool) -> Result<Self, VolumeError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| io_error("open", path, 0, source))?;
        let meta = file
            .metadata()
            .map_err(|source| io_error("read the metadata of", path, 0, source))?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            file.seek(SeekFrom::End(0))
                .map_err(|source| io_error("find the size of", path, 0, source))?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(VolumeError::Format {
                path: path.to_path_buf(),
                reason: "not a regular file or a block device; give the path of a disk \
                         image or of a disk"
                    .into(),
            });
        };
        if size % SECTOR_SIZE != 0 {
            return Err(VolumeError::BadSize {
                volume: path.display().to_string(),
                size,
                reason: format!(
                    "a raw image's length must be a multiple of {SECTOR_SIZE} bytes; \
                     extend it with `truncate -s {} {}` if the extra zeros are harmless",
                    size.div_ceil(SECTOR_SIZE).saturating_mul(SECTOR_SIZE),
                    path.display()
                ),
            });
        }
        Ok(FileVolume {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
            block_device,
        })
    }

    /// Limits the visible size to the first `size` bytes of the file.
    ///
    /// The bytes past `size` (for a fixed VHD, its footer) can then neither be
    /// read nor written through this volume. `size` must be a multiple of 512
    /// and no larger than the current size.
    pub fn limited_to(mut self, size: u64) -> Result<Self, VolumeError> {
        if size % SECTOR_SIZE != 0 || size > self.size {
            return Err(VolumeError::BadSize {
                volume: self.describe(),
                size,
                reason: format!(
                    "a visible prefix must be a multiple of {SECTOR_SIZE} bytes and fit in \
                     the file's {} bytes",
                    self.size
                ),
            });
        }
        self.size = size;
        Ok(self)
    }

    /// The path the volume was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the volume was opened with [`FileVolume::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// True when the volume is a block device rather than a regular file.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// The storage the file occupies on disk (`st_blocks` × 512), which is
    /// less than its length when it has holes.
    pub fn allocated_bytes(&self) -> Result<u64, VolumeError> {
        let meta = self
            .file
            .metadata()
            .map_err(|source| io_error("read the metadata of", &self.path, 0, source))?;
        Ok(meta.blocks().saturating_mul(ST_BLOCK_UNIT))
    }

    fn check_writable(&self, op: &'static str) -> Result<(), VolumeError> {
        if self.read_only {
            return Err(VolumeError::ReadOnly {
                volume: self.describe(),
                op,
            });
        }
        Ok(())
    }

    /// Deallocates `len` bytes at `offset`, keeping the file's length.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor
        // stays valid for the call because `self.file` is borrowed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                n,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// True when the file holds no data (only a hole) in `len` bytes at
    /// `offset`, as `SEEK_DATA` reports; false when unknown.
    fn is_hole(&self, offset: u64, len: u64) -> bool {
        let Ok(off) = libc::off_t::try_from(offset) else {
            return false;
        };
        // SAFETY: lseek only reads its integer arguments; the descriptor stays
        // valid for the call because `self.file` is borrowed. The file position
        // it moves is never used (all I/O is positional).
        let next = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_DATA) };
        if next < 0 {
            // ENXIO: no data at or after `offset`.
            return io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
        }
        u64::try_from(next).is_ok_and(|n| n >= offset.saturating_add(len))
    }

    /// Writes zeros over `len` bytes at `offset` from a bounded buffer.
    fn fill_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let chunk = usize::try_from(len).map_or(ZERO_FILL_CHUNK, |l| l.min(ZERO_FILL_CHUNK));
        let zeros = vec![0u8; chunk];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk as u64) as usize;
            let at = offset + done;
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(|source| io_error("write zeros to", &self.path, at, source))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// True for the errors that mean "this file or device cannot punch holes".
fn hole_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV)
    )
}

fn io_error(op: &'static str, path: &Path, offset: u64, source: io::Error) -> VolumeError {
    VolumeError::Io {
        op,
        path: path.to_path_buf(),
        offset,
        source,
    }
}

impl Volume for FileVolume {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        check_range(self, "read", offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| io_error("read", &self.path, offset, source))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        check_range(self, "write", offset, data.len() as u64)?;
        self.check_writable("write")?;
        self.file
            .write_all_at(data, offset)
            .map_err(|source| io_error("write", &self.path, offset, source))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        check_range(self, "zero", offset, len)?;
        self.check_writable("zero")?;
        if len == 0 {
            return Ok(());
        }
        if self.is_hole(offset, len) {
            // Already unallocated: punching again would cost a journal
            // transaction on ext4 for nothing.
            return Ok(());
        }
        match self.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            Err(e) if hole_unsupported(&e) => {
                tracing::debug!(
                    path = %self.path.display(),
                    offset,
                    len,
                    error = %e,
                    "cannot punch a hole; writing zeros instead"
                );
                self.fill_zeroes(offset, len)
            }
            Err(source) => Err(io_error("punch a hole in", &self.path, offset, source)),
        }
    }

    fn flush(&self) -> Result<(), VolumeError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|source| io_error("flush", &self.path, 0, source))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_rejects_unaligned_size() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileVolume::create(dir.path().join("x.raw"), 1000).unwrap_err();
        assert!(
            matches!(err, VolumeError::BadSize { size: 1000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("1024"), "{err}");
    }

    #[test]
    fn create_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.raw");
        FileVolume::create(&p, 4096).unwrap();
        let err = FileVolume::create(&p, 4096).unwrap_err();
        assert!(err.to_string().contains("x.raw"), "{err}");
    }

    #[test]
    fn read_only_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.raw");
        FileVolume::create(&p, 4096).unwrap();
        let v = FileVolume::open_read_only(&p).unwrap();
        assert!(matches!(
            v.write_at(0, &[1]).unwrap_err(),
            VolumeError::ReadOnly { .. }
        ));
        assert!(matches!(
            v.write_zeroes(0, 512).unwrap_err(),
            VolumeError::ReadOnly { .. }
        ));
        let mut b = [1u8; 16];
        v.read_at(0, &mut b).unwrap();
        assert_eq!(b, [0; 16]);
    }

    #[test]
    fn limited_to_hides_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.raw");
        FileVolume::create(&p, 8192).unwrap();
        let v = FileVolume::open(&p).unwrap().limited_to(4096).unwrap();
        assert_eq!(v.size(), 4096);
        assert!(matches!(
            v.write_at(4096, &[1]).unwrap_err(),
            VolumeError::OutOfRange { .. }
        ));
        let err = FileVolume::open(&p).unwrap().limited_to(8704).unwrap_err();
        assert!(matches!(err, VolumeError::BadSize { .. }));
    }

    #[test]
    fn fill_zeroes_fallback_zeros_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.raw");
        let v = FileVolume::create(&p, 3 * 1024 * 1024).unwrap();
        v.write_at(0, &vec![0xAB; 3 * 1024 * 1024]).unwrap();
        v.fill_zeroes(100, 2 * 1024 * 1024 + 7).unwrap();
        let mut b = vec![0u8; 3 * 1024 * 1024];
        v.read_at(0, &mut b).unwrap();
        assert!(b[..100].iter().all(|&x| x == 0xAB));
        assert!(b[100..100 + 2 * 1024 * 1024 + 7].iter().all(|&x| x == 0));
        assert!(b[100 + 2 * 1024 * 1024 + 7..].iter().all(|&x| x == 0xAB));
    }

    #[test]
    fn open_rejects_odd_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("odd.raw");
        std::fs::write(&p, [0u8; 1000]).unwrap();
        let err = FileVolume::open(&p).unwrap_err();
        assert!(err.to_string().contains("truncate -s 1024"), "{err}");
    }
}
