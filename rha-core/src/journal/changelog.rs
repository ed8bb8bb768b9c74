//! The persistent dirty-region log: a two-generation bitmap per volume.
//!
//! Every journalled write marks the regions (`region_bytes` each) it
//! touches in generation **B**. Generation **A** holds older marks. The
//! boundary `s` is the journal's last seq when B was started. When the
//! replica acknowledges everything up to `s` or beyond, every write marked
//! in A has been applied, so the journal may rotate: A := B, B := H,
//! s := last seq, where **H** (in memory only) holds the regions written
//! since the previous rotation. Invariant: every write that the replica has
//! not yet acknowledged, or that was lost to a journal overflow, is in A ∪ B.
//! Extra marks are always safe: they only make a resync compare more.
//!
//! Keeping H in B is how DRBD's activity log keeps extents "hot": a region
//! written at least once per rotation window stays marked, so writes to a
//! working set cost no change-log I/O after warm-up; a region left alone
//! for a whole window leaves B at the next rotation and A at the one after.
//! The journal rotates at most once per
//! [`JournalConfig::changelog_rotation`](super::JournalConfig::changelog_rotation),
//! so after a crash a resync covers what was written in the last one to two
//! windows (plus every region still hot).
//!
//! ```text
//!  header (CHANGELOG_HEADER_FIXED + 8 * volumes bytes)
//!    0   8  CHANGELOG_MAGIC
//!    8   4  CHANGELOG_VERSION
//!    12  8  region_bytes
//!    20  4  number of volumes
//!    24  8  boundary seq s
//!    32  8n volume sizes in bytes
//!    ..  4  CRC-32 of the header bytes before it
//!  bitmap A (one bit per region, each volume padded to whole bytes)
//!  bitmap B (same layout)
//! ```
//!
//! Setting a bit in B writes just the changed bytes in place; the caller
//! makes them durable with one fdatasync of [`ChangeLog::sync_handle`] (the
//! journal group-commits marks of concurrent writers, see
//! [`ChangeLog::mark`]). A write whose regions are already marked in B costs
//! no I/O. Rotation rewrites the whole file atomically (temporary file +
//! rename), which also makes every earlier mark durable.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::state::write_atomic;
use super::JournalError;
use crate::{Seq, VolumeId};

/// Magic bytes at the start of the change-log file.
pub const CHANGELOG_MAGIC: [u8; 8] = *b"RHAJCLOG";
/// Version of the change-log layout.
pub const CHANGELOG_VERSION: u32 = 1;
/// File name of the change log inside the journal directory.
pub const CHANGELOG_FILE: &str = "changelog";
const CHANGELOG_HEADER_FIXED: usize = 32;

/// The in-memory copy of the change log plus its open file.
pub(crate) struct ChangeLog {
    path: PathBuf,
    dir: PathBuf,
    /// Open read-write once the file exists (shared so that marks can be
    /// made durable without the journal's lock).
    file: Option<Arc<File>>,
    region_bytes: u64,
    sizes: Vec<u64>,
    /// Byte offset of each volume's bitmap inside one generation.
    starts: Vec<usize>,
    gen_bytes: usize,
    boundary: Seq,
    a: Vec<u8>,
    b: Vec<u8>,
    /// Regions written since the last rotation (in memory; always within B).
    hot: Vec<u8>,
    /// Number of in-place writes so far; each is one mark generation that
    /// must be made durable before its write may reach the disk.
    pub(crate) writes: u64,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bitmaps can be large: show their population instead.
        let count = |g: &[u8]| g.iter().map(|b| b.count_ones() as u64).sum::<u64>();
        f.debug_struct("ChangeLog")
            .field("path", &self.path)
            .field("region_bytes", &self.region_bytes)
            .field("sizes", &self.sizes)
            .field("boundary", &self.boundary)
            .field("dirty_regions_a", &count(&self.a))
            .field("dirty_regions_b", &count(&self.b))
            .finish_non_exhaustive()
    }
}

fn header_len(volumes: usize) -> usize {
    CHANGELOG_HEADER_FIXED + 8 * volumes + 4
}

fn regions(size: u64, region_bytes: u64) -> u64 {
    size.div_ceil(region_bytes)
}

/// The region size stored in the change-log file at `path`, or `None` when
/// there is no such file or its header is not readable (opening it reports why).
pub(crate) fn stored_region_bytes(path: &Path) -> Result<Option<u64>, JournalError> {
    let mut header = [0u8; 20];
    match File::open(path).and_then(|f| f.read_exact_at(&mut header, 0)) {
        Ok(()) if header[0..8] == CHANGELOG_MAGIC => {
            let mut x = [0u8; 8];
            x.copy_from_slice(&header[12..20]);
            Ok(Some(u64::from_le_bytes(x)).filter(|&r| r > 0))
        }
        Ok(()) => Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(JournalError::Io {
            op: "read change log header",
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl ChangeLog {
    /// Opens `dir/changelog`, creating it if `create` is set and it is missing.
    ///
    /// Fails if the stored volume sizes or region size differ from the given ones.
    pub(crate) fn open(
        dir: &Path,
        region_bytes: u64,
        sizes: &[u64],
        boundary_if_new: Seq,
    ) -> Result<ChangeLog, JournalError> {
        let path = dir.join(CHANGELOG_FILE);
        let mut starts = Vec::with_capacity(sizes.len());
        let mut gen_bytes = 0usize;
        for &size in sizes {
            starts.push(gen_bytes);
            let bytes = regions(size, region_bytes).div_ceil(8);
            gen_bytes = usize::try_from(bytes)
                .ok()
                .and_then(|b| gen_bytes.checked_add(b))
                .ok_or_else(|| JournalError::Config {
                    reason: format!(
                        "a change log for volume sizes {sizes:?} with {region_bytes}-byte regions is too large; use larger regions"
                    ),
                })?;
        }
        let existing = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(JournalError::Io {
                    op: "read change log",
                    path,
                    source,
                })
            }
        };
        let mut log = ChangeLog {
            file: None,
            path,
            dir: dir.to_path_buf(),
            region_bytes,
            sizes: sizes.to_vec(),
            starts,
            gen_bytes,
            boundary: boundary_if_new,
            a: vec![0; gen_bytes],
            b: vec![0; gen_bytes],
            hot: vec![0; gen_bytes],
            writes: 0,
        };
        match existing {
            Some(bytes) => log.load(&bytes)?,
            None => log.rewrite()?,
        }
        log.reopen()?;
        Ok(log)
    }

    fn corrupt(&self, reason: String) -> JournalError {
        JournalError::CorruptChangeLog {
            path: self.path.clone(),
            reason,
        }
    }

    fn load(&mut self, bytes: &[u8]) -> Result<(), JournalError> {
        if bytes.len() < CHANGELOG_HEADER_FIXED || bytes[0..8] != CHANGELOG_MAGIC {
            return Err(self.corrupt("bad magic or short header".into()));
        }
        let u32_at = |at: usize| {
            let mut x = [0u8; 4];
            x.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(x)
        };
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let version = u32_at(8);
        if version != CHANGELOG_VERSION {
            return Err(self.corrupt(format!(
                "version {version}, this build reads version {CHANGELOG_VERSION}"
            )));
        }
        let region_bytes = u64_at(12);
        let volumes = u32_at(20) as usize;
        let boundary = u64_at(24);
        let hlen = CHANGELOG_HEADER_FIXED
            .checked_add(volumes.saturating_mul(8))
            .and_then(|n| n.checked_add(4))
            .filter(|&n| n <= bytes.len())
            .ok_or_else(|| self.corrupt(format!("header for {volumes} volumes is truncated")))?;
        if u32_at(hlen - 4) != crc32fast::hash(&bytes[..hlen - 4]) {
            return Err(self.corrupt("header checksum mismatch".into()));
        }
        let sizes: Vec<u64> = (0..volumes)
            .map(|i| u64_at(CHANGELOG_HEADER_FIXED + 8 * i))
            .collect();
        if region_bytes != self.region_bytes || sizes != self.sizes {
            return Err(JournalError::VolumeMismatch {
                path: self.path.clone(),
                stored_sizes: sizes,
                stored_region_bytes: region_bytes,
                given_sizes: self.sizes.clone(),
                given_region_bytes: self.region_bytes,
            });
        }
        if bytes.len() != hlen + 2 * self.gen_bytes {
            return Err(self.corrupt(format!(
                "file is {} bytes, expected {}",
                bytes.len(),
                hlen + 2 * self.gen_bytes
            )));
        }
        self.boundary = boundary;
        self.a = bytes[hlen..hlen + self.gen_bytes].to_vec();
        self.b = bytes[hlen + self.gen_bytes..].to_vec();
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(header_len(self.sizes.len()) + 2 * self.gen_bytes);
        out.extend_from_slice(&CHANGELOG_MAGIC);
        out.extend_from_slice(&CHANGELOG_VERSION.to_le_bytes());
        out.extend_from_slice(&self.region_bytes.to_le_bytes());
        out.extend_from_slice(&(self.sizes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.boundary.to_le_bytes());
        for s in &self.sizes {
            out.extend_from_slice(&s.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.a);
        out.extend_from_slice(&self.b);
        out
    }

    fn rewrite(&mut self) -> Result<(), JournalError> {
        write_atomic(&self.dir, CHANGELOG_FILE, &self.encode())
    }

    fn reopen(&mut self) -> Result<(), JournalError> {
        self.file = Some(Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .map_err(|source| JournalError::Io {
                    op: "open change log",
                    path: self.path.clone(),
                    source,
                })?,
        ));
        Ok(())
    }

    /// The open change-log file, to fdatasync outside the journal's lock.
    pub(crate) fn sync_handle(&self) -> Result<Arc<File>, JournalError> {
        self.file.clone().ok_or_else(|| JournalError::Failed {
            path: self.path.clone(),
            reason: "the change log is not open".into(),
        })
    }

    /// The path of the change-log file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that `volume`, `offset` and `len` describe a range inside a volume.
    pub(crate) fn check_range(
        &self,
        volume: VolumeId,
        offset: u64,
        len: u64,
    ) -> Result<(), JournalError> {
        let size = *self
            .sizes
            .get(volume as usize)
            .ok_or(JournalError::UnknownVolume {
                volume,
                volumes: self.sizes.len(),
            })?;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(JournalError::OutOfRange {
                volume,
                offset,
                len,
                size,
            }),
        }
    }

    /// Marks the regions of `volume` touched by `offset..offset+len` in
    /// generation B and as hot. Writes the changed bytes in place when a bit
    /// is new and returns their mark generation: the write may reach the
    /// disk only once the file has been fdatasync'ed after that generation
    /// was written (or a rotation rewrote the file). `None`: every region was
    /// marked already and nothing needs to be made durable.
    /// The range must have passed [`ChangeLog::check_range`].
    pub(crate) fn mark(
        &mut self,
        volume: VolumeId,
        offset: u64,
        len: u64,
    ) -> Result<Option<u64>, JournalError> {
        if len == 0 {
            return Ok(None);
        }
        let base = self.starts[volume as usize] as u64 * 8;
        let first = base + offset / self.region_bytes;
        let last = base + (offset + len - 1) / self.region_bytes;
        let (first_byte, last_byte) = ((first / 8) as usize, (last / 8) as usize);
        let before = self.b[first_byte..=last_byte].to_vec();
        for bit in first..=last {
            let (byte, mask) = ((bit / 8) as usize, 1u8 << (bit % 8));
            self.b[byte] |= mask;
            self.hot[byte] |= mask;
        }
        if self.b[first_byte..=last_byte] == before[..] {
            return Ok(None);
        }
        let at = (header_len(self.sizes.len()) + self.gen_bytes + first_byte) as u64;
        let res = match &self.file {
            Some(f) => f.write_all_at(&self.b[first_byte..=last_byte], at),
            None => Err(std::io::Error::other("change log is not open")),
        };
        if let Err(source) = res {
            // Forget the new marks so that the next write retries them.
            self.b[first_byte..=last_byte].copy_from_slice(&before);
            return Err(JournalError::Io {
                op: "write change log",
                path: self.path.clone(),
                source,
            });
        }
        self.writes += 1;
        Ok(Some(self.writes))
    }

    /// The boundary seq `s`.
    pub(crate) fn boundary(&self) -> Seq {
        self.boundary
    }

    /// True when A and B hold no mark (a rotation would change nothing but `s`).
    pub(crate) fn is_clear(&self) -> bool {
        self.a.iter().chain(&self.b).all(|&x| x == 0)
    }

    /// A := B, B := the regions written since the last rotation, s :=
    /// `last_seq`, atomically on disk. Every mark set so far is durable once
    /// this returns `Ok`. After an error the in-memory bitmaps are at least
    /// as conservative as the file, whichever file a crash leaves behind.
    pub(crate) fn rotate(&mut self, last_seq: Seq) -> Result<(), JournalError> {
        let hot = std::mem::replace(&mut self.hot, vec![0; self.gen_bytes]);
        let old_a = std::mem::replace(&mut self.a, std::mem::replace(&mut self.b, hot));
        let old_boundary = self.boundary;
        self.boundary = last_seq;
        if let Err(e) = self.rewrite().and_then(|()| self.reopen()) {
            // Keep the in-memory state equal to (or more conservative than) the file.
            for (x, y) in self.a.iter_mut().zip(&old_a) {
                *x |= *y;
            }
            self.hot.clone_from(&self.a);
            self.b = self.a.clone();
            self.boundary = old_boundary;
            return Err(e);
        }
        Ok(())
    }

    /// Merged byte ranges of A ∪ B for `volume`, clipped to its size.
    pub(crate) fn dirty_ranges(&self, volume: VolumeId) -> Vec<Range<u64>> {
        let Some(&size) = self.sizes.get(volume as usize) else {
            return Vec::new();
        };
        let start = self.starts[volume as usize];
        let n = regions(size, self.region_bytes);
        let mut out: Vec<Range<u64>> = Vec::new();
        for r in 0..n {
            let byte = start + (r / 8) as usize;
            let mask = 1u8 << (r % 8);
            if (self.a[byte] | self.b[byte]) & mask == 0 {
                continue;
            }
            let lo = r * self.region_bytes;
            let hi = (lo + self.region_bytes).min(size);
            match out.last_mut() {
                Some(last) if last.end == lo => last.end = hi,
                _ => out.push(lo..hi),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_rotate_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [10 * 4096 + 100, 3 * 4096];
        let mut log = ChangeLog::open(dir.path(), 4096, &sizes, 0).unwrap();
        log.mark(0, 4096 * 2 + 5, 4096).unwrap(); // regions 2, 3
        log.mark(0, 10 * 4096, 50).unwrap(); // last partial region
        log.mark(1, 0, 1).unwrap();
        assert_eq!(
            log.dirty_ranges(0),
            vec![2 * 4096..4 * 4096, 10 * 4096..10 * 4096 + 100]
        );
        assert_eq!(log.dirty_ranges(1), vec![0..4096]);
        assert_eq!(log.dirty_ranges(7), vec![]);
        drop(log);
        let mut log = ChangeLog::open(dir.path(), 4096, &sizes, 0).unwrap();
        assert_eq!(log.dirty_ranges(1), vec![0..4096]);
        log.rotate(5).unwrap();
        assert_eq!(log.boundary(), 5);
        assert_eq!(log.dirty_ranges(1), vec![0..4096]); // now in A
        log.rotate(6).unwrap();
        assert_eq!(log.dirty_ranges(1), vec![]);
        log.mark(1, 4096, 4096).unwrap();
        drop(log);
        let log = ChangeLog::open(dir.path(), 4096, &sizes, 0).unwrap();
        assert_eq!(log.boundary(), 6);
        assert_eq!(log.dirty_ranges(1), vec![4096..8192]);
        assert!(log.check_range(1, 4096, 8192).is_ok());
        assert!(log.check_range(1, 4096, 8193).is_err());
        assert!(log.check_range(2, 0, 1).is_err());
    }

    #[test]
    fn hot_regions_stay_marked_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ChangeLog::open(dir.path(), 4096, &[16 * 4096], 0).unwrap();
        assert_eq!(log.mark(0, 0, 10).unwrap(), Some(1));
        assert_eq!(log.mark(0, 100, 10).unwrap(), None, "same region: no I/O");
        log.rotate(1).unwrap();
        // Written during the window: still marked in B, so writing it again is free.
        assert_eq!(log.mark(0, 0, 10).unwrap(), None);
        assert_eq!(log.mark(0, 4096, 10).unwrap(), Some(2));
        log.rotate(2).unwrap();
        assert_eq!(log.dirty_ranges(0), vec![0..2 * 4096]);
        // Left alone for a window: leaves B, then A.
        log.rotate(3).unwrap();
        assert_eq!(log.dirty_ranges(0), vec![0..2 * 4096]);
        log.rotate(4).unwrap();
        assert_eq!(log.dirty_ranges(0), vec![]);
        assert!(log.is_clear());
        assert_eq!(log.writes, 2);
        // The carried marks are on disk.
        assert_eq!(log.mark(0, 8192, 1).unwrap(), Some(3));
        log.rotate(5).unwrap();
        drop(log);
        let log = ChangeLog::open(dir.path(), 4096, &[16 * 4096], 0).unwrap();
        assert_eq!(log.dirty_ranges(0), vec![8192..3 * 4096]);
    }

    #[test]
    fn mismatched_sizes_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        ChangeLog::open(dir.path(), 4096, &[8192], 0).unwrap();
        let e = ChangeLog::open(dir.path(), 4096, &[8192, 4096], 0).unwrap_err();
        assert!(matches!(e, JournalError::VolumeMismatch { .. }), "{e}");
        let e = ChangeLog::open(dir.path(), 512, &[8192], 0).unwrap_err();
        assert!(e.to_string().contains("region"), "{e}");
    }
}
