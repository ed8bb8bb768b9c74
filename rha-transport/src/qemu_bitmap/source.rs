//! The NBD export as a read-only volume, and its dirty bitmap as a change source.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use rha_core::journal::Record;
use rha_core::source::{ChangeSource, SourceError};
use rha_core::volume::{check_range, Volume, VolumeError, BLOCK_SIZE};
use rha_core::{Seq, VolumeId};

use super::client::{NbdAddress, NbdClient};
use super::reset::{ResetError, Synchronised};
use super::NbdError;

/// Most ranges a [`DirtyRanges`] holds (1 MiB of ranges): beyond it,
/// neighbouring ranges are merged, so memory stays bounded whatever the
/// image's size and however scattered its writes.
pub const MAX_RANGES: usize = 1 << 16;

/// The first gap closed when ranges are merged to stay under the bound:
/// QEMU's default bitmap granularity.
const FIRST_GAP: u64 = 64 << 10;

/// The dirty extents of a bitmap as sorted, non-overlapping byte ranges,
/// adjacent extents merged. Holds at most its limit of ranges: when a push
/// would exceed it, ranges closer than a growing gap (64 KiB, then doubling)
/// are merged, so the ranges may then cover clean bytes too (never less
/// than what was pushed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyRanges {
    ranges: Vec<Range<u64>>,
    gap: u64,
    dirty_bytes: u64,
    limit: usize,
}

impl Default for DirtyRanges {
    fn default() -> Self {
        DirtyRanges::with_limit(MAX_RANGES)
    }
}

impl DirtyRanges {
    /// Empty, with room for [`MAX_RANGES`] ranges.
    pub fn new() -> Self {
        DirtyRanges::default()
    }

    /// Empty, holding at most `limit` ranges (at least 2).
    pub fn with_limit(limit: usize) -> Self {
        DirtyRanges {
            ranges: Vec::new(),
            gap: 0,
            dirty_bytes: 0,
            limit: limit.max(2),
        }
    }

    /// Adds a dirty extent. Extents are expected in increasing order (as a
    /// bitmap walk yields them); one that starts before the last range's end
    /// is merged into it.
    pub fn push(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        self.dirty_bytes += r.end - r.start;
        if let Some(last) = self.ranges.last_mut() {
            if r.start <= last.end.saturating_add(self.gap) {
                last.start = last.start.min(r.start);
                last.end = last.end.max(r.end);
                return;
            }
        }
        self.ranges.push(r);
        if self.ranges.len() > self.limit {
            self.coarsen();
        }
    }

    /// Merges ranges closer than a doubling gap until at most half the limit remain.
    fn coarsen(&mut self) {
        while self.ranges.len() > self.limit / 2 {
            self.gap = if self.gap == 0 {
                FIRST_GAP
            } else {
                self.gap.saturating_mul(2)
            };
            let gap = self.gap;
            let mut merged: Vec<Range<u64>> = Vec::with_capacity(self.ranges.len());
            for r in self.ranges.drain(..) {
                match merged.last_mut() {
                    Some(last) if r.start <= last.end.saturating_add(gap) => {
                        last.end = last.end.max(r.end)
                    }
                    _ => merged.push(r),
                }
            }
            self.ranges = merged;
        }
    }

    /// The ranges, sorted and not overlapping.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Bytes the bitmap reported dirty (the sum of the pushed extents).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes
    }

    /// Bytes the ranges cover (at least [`DirtyRanges::dirty_bytes`]; more once merged to stay bounded).
    pub fn covered_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// True when nothing is dirty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

fn lock(client: &Mutex<NbdClient>) -> MutexGuard<'_, NbdClient> {
    client.lock().unwrap_or_else(|e| e.into_inner())
}

/// An NBD export as a read-only [`Volume`]: reads go through the shared
/// client (one request at a time); writes are refused.
#[derive(Debug)]
pub struct NbdVolume {
    client: Arc<Mutex<NbdClient>>,
    size: u64,
    name: String,
}

impl NbdVolume {
    /// A volume over `client`'s export.
    pub fn new(client: Arc<Mutex<NbdClient>>) -> Self {
        let (size, name) = {
            let c = lock(&client);
            (c.size(), c.address().to_string())
        };
        NbdVolume { client, size, name }
    }
}

impl Volume for NbdVolume {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        check_range(self, "read", offset, buf.len() as u64)?;
        lock(&self.client)
            .read_at(offset, buf)
            .map_err(|e| VolumeError::Io {
                op: "read",
                path: PathBuf::from(&self.name),
                offset,
                source: std::io::Error::other(e),
            })
    }

    fn write_at(&self, _offset: u64, _data: &[u8]) -> Result<(), VolumeError> {
        Err(VolumeError::ReadOnly {
            volume: self.describe(),
            op: "write",
        })
    }

    fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<(), VolumeError> {
        Err(VolumeError::ReadOnly {
            volume: self.describe(),
            op: "zero",
        })
    }

    /// Nothing to flush: the volume is never written.
    fn flush(&self) -> Result<(), VolumeError> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} (NBD export, read-only)", self.name)
    }
}

/// Where the bitmap stands, as this source knows it.
#[derive(Debug, Default)]
struct BitmapState {
    /// The last walk's dirty ranges; `None` before the first walk.
    dirty: Option<DirtyRanges>,
    /// A synchronisation of the last walk's ranges landed on the replica.
    synchronised: bool,
}

/// A [`ChangeSource`] over one NBD export whose changes are the dirty
/// extents of a QEMU dirty bitmap (`qemu-nbd -B NAME`).
///
/// - [`ChangeSource::volumes`] is the export, as one read-only [`NbdVolume`].
/// - [`ChangeSource::resync_started`] walks the bitmap (`NBD_CMD_BLOCK_STATUS`
///   over the whole export), so [`ChangeSource::dirty_ranges`] covers every
///   change the bitmap recorded up to that moment.
/// - [`ChangeSource::needs_resync`] is true while the last walk found dirty
///   extents that no synchronisation has landed yet.
/// - There is no journal: `changes_after` is always empty and sequence numbers stay 0.
///
/// The bitmap is never cleared by the source: once a synchronisation landed,
/// [`DirtyBitmapSource::finish`] gives the [`Synchronised`] proof that
/// [`BitmapReset`](super::BitmapReset) needs.
#[derive(Debug)]
pub struct DirtyBitmapSource {
    client: Arc<Mutex<NbdClient>>,
    volumes: Vec<Arc<dyn Volume>>,
    address: NbdAddress,
    bitmap: String,
    state: Mutex<BitmapState>,
}

impl DirtyBitmapSource {
    /// Connects to the export at `address` with the metadata context of
    /// `bitmap` and walks the bitmap once.
    pub fn open(address: &NbdAddress, bitmap: &str) -> Result<Self, NbdError> {
        let client = NbdClient::connect(address, bitmap)?;
        let client = Arc::new(Mutex::new(client));
        let volume: Arc<dyn Volume> = Arc::new(NbdVolume::new(client.clone()));
        let source = DirtyBitmapSource {
            client,
            volumes: vec![volume],
            address: address.clone(),
            bitmap: bitmap.to_string(),
            state: Mutex::new(BitmapState::default()),
        };
        source.walk()?;
        Ok(source)
    }

    /// Walks the bitmap now; returns its dirty ranges (also kept for
    /// [`ChangeSource::dirty_ranges`]).
    pub fn walk(&self) -> Result<DirtyRanges, NbdError> {
        let mut dirty = DirtyRanges::new();
        lock(&self.client).walk_dirty(|r| dirty.push(r))?;
        let mut state = self.lock_state();
        state.dirty = Some(dirty.clone());
        state.synchronised = false;
        Ok(dirty)
    }

    /// Bytes the last walk found dirty.
    pub fn dirty_bytes(&self) -> u64 {
        self.lock_state()
            .dirty
            .as_ref()
            .map_or(0, DirtyRanges::dirty_bytes)
    }

    /// The export's address.
    pub fn address(&self) -> &NbdAddress {
        &self.address
    }

    /// The bitmap's name.
    pub fn bitmap(&self) -> &str {
        &self.bitmap
    }

    /// Ends the NBD session (so that `qemu-nbd` without `--persistent`
    /// exits and releases the image) and, when a synchronisation of the last
    /// walk's ranges has landed on the replica, returns the proof that the
    /// bitmap may be cleared.
    pub fn finish(self) -> Result<Synchronised, ResetError> {
        lock(&self.client).disconnect();
        let state = self.lock_state();
        match (&state.dirty, state.synchronised) {
            (Some(d), true) => Ok(Synchronised {
                bitmap: self.bitmap.clone(),
                dirty_bytes: d.dirty_bytes(),
            }),
            _ => Err(ResetError::NotSynchronised {
                bitmap: self.bitmap.clone(),
            }),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, BitmapState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn source_error(&self, e: NbdError) -> SourceError {
        SourceError::Io {
            op: "walk the dirty bitmap of",
            path: PathBuf::from(self.address.to_string()),
            source: std::io::Error::other(e),
        }
    }
}

impl ChangeSource for DirtyBitmapSource {
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

    /// Walks the bitmap; returns how many 4 KiB blocks it marks dirty.
    fn capture(&self) -> Result<u64, SourceError> {
        let dirty = self.walk().map_err(|e| self.source_error(e))?;
        Ok(dirty.dirty_bytes().div_ceil(BLOCK_SIZE as u64))
    }

    fn needs_resync(&self) -> bool {
        let state = self.lock_state();
        !state.synchronised && state.dirty.as_ref().is_some_and(|d| !d.is_empty())
    }

    fn dirty_ranges(&self, volume: VolumeId) -> Option<Vec<Range<u64>>> {
        if volume != 0 {
            return None;
        }
        self.lock_state()
            .dirty
            .as_ref()
            .map(|d| d.ranges().to_vec())
    }

    /// Walks the bitmap, so that the dirty ranges are those of this moment.
    fn resync_started(&self) -> Result<Seq, SourceError> {
        self.walk().map_err(|e| self.source_error(e))?;
        Ok(0)
    }

    /// The replica holds the walked ranges durably (`end_sync` returned).
    fn resync_completed(&self, _base: Seq) -> Result<(), SourceError> {
        self.lock_state().synchronised = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_extents_merge() {
        let mut d = DirtyRanges::new();
        d.push(0..10);
        d.push(10..20);
        d.push(30..40);
        d.push(35..50);
        d.push(60..60);
        assert_eq!(d.ranges(), &[0..20, 30..50]);
        assert_eq!(d.dirty_bytes(), 45);
        assert_eq!(d.covered_bytes(), 40);
    }

    #[test]
    fn the_bound_holds_by_merging() {
        let mut d = DirtyRanges::with_limit(8);
        for i in 0..1000u64 {
            d.push((i * 128) << 10..(i * 128 + 64) << 10);
        }
        assert!(d.ranges().len() <= 8);
        assert_eq!(d.dirty_bytes(), 1000 * (64 << 10));
        assert_eq!(d.ranges()[0].start, 0);
        assert_eq!(d.ranges().last().unwrap().end, (999 * 128 + 64) << 10);
    }
}
