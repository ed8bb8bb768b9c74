//! The write-through tracked volume: the in-process write splitter.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{ChangeSource, SourceError};
use crate::events::{Event, Events, Stats};
use crate::journal::{Appended, Journal, JournalConfig, JournalError, Record, Recovery};
use crate::volume::{Volume, VolumeError};
use crate::{Seq, VolumeId};

/// The largest data payload of one journal record made by a
/// [`TrackedVolume`] write: larger writes become several records.
pub const MAX_WRITE_RECORD: usize = 4 << 20;

/// A set of protected volumes whose every write is journalled before it
/// reaches the disk. Embedders write through [`TrackedSet::volume`]; the
/// set is the [`ChangeSource`] replication reads.
#[derive(Debug)]
pub struct TrackedSet {
    journal: Arc<Journal>,
    dir: PathBuf,
    volumes: Vec<Arc<dyn Volume>>,
    order: Arc<Mutex<()>>,
    events: Events,
}

impl TrackedSet {
    /// Opens (or creates) the journal in `journal_dir` for `volumes` and
    /// reports what recovery found.
    pub fn open(
        journal_dir: impl AsRef<Path>,
        config: JournalConfig,
        volumes: Vec<Arc<dyn Volume>>,
        events: Events,
    ) -> Result<(Self, Recovery), SourceError> {
        let dir = journal_dir.as_ref().to_path_buf();
        let sizes: Vec<u64> = volumes.iter().map(|v| v.size()).collect();
        let (journal, mut recovery) = Journal::open(&dir, config, &sizes)?;
        // Each write is journalled before it reaches its volume. After an
        // unclean shutdown the last records may never have reached it; the
        // replica must not keep (or get) writes the master never made, so
        // the marked regions are resynchronised from the volumes instead of
        // replaying the records.
        if !recovery.clean_shutdown && !recovery.needs_resync {
            journal.require_resync()?;
            recovery.needs_resync = true;
            let msg = "the previous session did not close the journal, so its last writes may not have reached the volumes: the dirty regions will be resynchronised from the volumes".to_string();
            tracing::warn!(journal = %dir.display(), "{msg}");
            recovery.warnings.push(msg);
        }
        let set = TrackedSet {
            journal: Arc::new(journal),
            dir,
            volumes,
            order: Arc::new(Mutex::new(())),
            events,
        };
        Ok((set, recovery))
    }

    /// The volume `id`, wrapped so that writes are journalled.
    pub fn volume(&self, id: VolumeId) -> Option<TrackedVolume> {
        let inner = self.volumes.get(id as usize)?.clone();
        Some(TrackedVolume {
            id,
            inner,
            journal: self.journal.clone(),
            dir: self.dir.clone(),
            order: self.order.clone(),
            events: self.events.clone(),
        })
    }

    /// The journal (for statistics and shutdown).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Flushes the volumes and closes the journal cleanly, so that the next
    /// [`TrackedSet::open`] knows no write was cut off (and resyncs nothing).
    ///
    /// Every [`TrackedVolume`] this set handed out must be gone first: a
    /// clone still alive could write after the close. Otherwise it fails
    /// with [`SourceError::Mismatch`], and the set is dropped unclosed (the
    /// next open resyncs the marked regions).
    pub fn close(self) -> Result<(), SourceError> {
        self.flush_volumes()?;
        let dir = self.dir.display().to_string();
        match Arc::try_unwrap(self.journal) {
            Ok(journal) => Ok(journal.close()?),
            Err(_) => Err(SourceError::Mismatch(format!(
                "journal {dir}: cannot close it while tracked volumes of the set are still in use; drop them first"
            ))),
        }
    }

    /// [`TrackedSet::close`] while clones of its volumes may still exist (an
    /// NBD server's exports), once nothing writes through them any more:
    /// flushes the volumes, syncs the journal and records a clean shutdown
    /// ([`Journal::close_shared`]); a later write through a clone fails.
    pub fn close_shared(&self) -> Result<(), SourceError> {
        self.flush_volumes()?;
        Ok(self.journal.close_shared()?)
    }

    fn flush_volumes(&self) -> Result<(), SourceError> {
        for v in &self.volumes {
            v.flush()?;
        }
        Ok(())
    }
}

impl ChangeSource for TrackedSet {
    fn volumes(&self) -> &[Arc<dyn Volume>] {
        &self.volumes
    }
    fn changes_after(&self, after: Seq, max_bytes: usize) -> Result<Vec<Record>, SourceError> {
        Ok(self.journal.read_after(after, max_bytes)?)
    }
    fn acknowledge(&self, upto: Seq) -> Result<(), SourceError> {
        self.journal.acknowledge(upto)?;
        Stats::set(&self.events.stats().journal_bytes, self.journal.bytes());
        Ok(())
    }
    fn last_seq(&self) -> Seq {
        self.journal.last_seq()
    }
    fn acknowledged(&self) -> Seq {
        self.journal.acknowledged()
    }
    fn needs_resync(&self) -> bool {
        self.journal.needs_resync()
    }
    fn dirty_ranges(&self, volume: VolumeId) -> Option<Vec<Range<u64>>> {
        Some(self.journal.dirty_ranges(volume))
    }
    fn resync_started(&self) -> Result<Seq, SourceError> {
        // Under the order lock: every record up to the base has reached its
        // volume, so the resync reads (and sends) it.
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.journal.resync_started()?)
    }
    fn resync_completed(&self, base: Seq) -> Result<(), SourceError> {
        Ok(self.journal.resync_completed(base)?)
    }
    fn pending_bytes(&self) -> u64 {
        self.journal.bytes()
    }
}

/// One protected volume: reads go to the disk; each write is journalled,
/// then written to the disk, under one lock so that journal order is disk order.
#[derive(Debug, Clone)]
pub struct TrackedVolume {
    id: VolumeId,
    inner: Arc<dyn Volume>,
    journal: Arc<Journal>,
    dir: PathBuf,
    order: Arc<Mutex<()>>,
    events: Events,
}

impl TrackedVolume {
    /// Journals a write of `len` bytes at `offset` as one record per chunk
    /// of at most [`MAX_WRITE_RECORD`] bytes: a record must fit in one
    /// message of the wire protocol (and a batch of them in one frame),
    /// whatever the caller's write size. `append` journals the chunk at a
    /// volume offset, given as a range of the caller's data; the caller's
    /// order lock keeps the chunks together in sequence.
    fn journal_chunks(
        &self,
        offset: u64,
        len: usize,
        append: impl Fn(u64, Range<usize>) -> Result<Appended, JournalError>,
    ) -> Result<(), VolumeError> {
        let mut at = 0;
        while at < len {
            let end = len.min(at + MAX_WRITE_RECORD);
            let pos = offset + at as u64;
            self.journalled(pos, append(pos, at..end))?;
            at = end;
        }
        Ok(())
    }

    fn journalled(
        &self,
        offset: u64,
        r: Result<Appended, JournalError>,
    ) -> Result<(), VolumeError> {
        match r {
            Ok(Appended::Logged(_)) => {}
            Ok(Appended::Overflowed) => self.events.emit(Event::JournalOverflow {
                bound_bytes: self.journal.max_bytes(),
            }),
            Err(e) => {
                return Err(VolumeError::Io {
                    op: "journal a write to",
                    path: self.dir.clone(),
                    offset,
                    source: std::io::Error::other(e),
                })
            }
        }
        Stats::set(&self.events.stats().journal_bytes, self.journal.bytes());
        Ok(())
    }
}

impl Volume for TrackedVolume {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        crate::volume::check_range(self, "write", offset, data.len() as u64)?;
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        self.journal_chunks(offset, data.len(), |pos, r| {
            self.journal.append(self.id, pos, &data[r])
        })?;
        self.inner.write_at(offset, data)
    }
    /// As [`TrackedVolume::write_at`], but the journal keeps (slices of)
    /// `data` itself for the records it holds in memory, without a copy.
    fn write_bytes(&self, offset: u64, data: bytes::Bytes) -> Result<(), VolumeError> {
        crate::volume::check_range(self, "write", offset, data.len() as u64)?;
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        self.journal_chunks(offset, data.len(), |pos, r| {
            self.journal.append_bytes(self.id, pos, data.slice(r))
        })?;
        self.inner.write_at(offset, &data)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        crate::volume::check_range(self, "zero", offset, len)?;
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        self.journalled(offset, self.journal.append_zero(self.id, offset, len))?;
        self.inner.write_zeroes(offset, len)
    }
    fn flush(&self) -> Result<(), VolumeError> {
        // The disk's writes only: the journal is as durable as its fsync
        // policy says, and a sync of it here would buy nothing. Under
        // `Always` every record was synced before its write. Under
        // `Interval` and `Never` the journal, reopened after a crash and a
        // reboot, resynchronises the change log's dirty regions whatever
        // was synced (a write may reach the disk before its record reaches
        // stable storage), and the marks of those regions were made durable
        // before each write. Syncing the journal at every guest flush
        // doubled the device flushes of an NBD client's I/O.
        self.inner.flush()
    }
    fn describe(&self) -> String {
        format!("tracked {}", self.inner.describe())
    }
}
