//! A replica kept in files: one raw image or fixed VHD per volume, plus a
//! write-ahead redo log and a state file that make every batch all-or-nothing.
//!
//! ```text
//! <dir>/replica.toml    format, volume sizes, and applied sequence, consistent, synced
//!                       and redo cycle as of the last checkpoint
//! <dir>/redo.log        every batch applied since the last checkpoint (CRC-checked),
//!                       from its start; stale entries of earlier cycles after them
//! <dir>/disk-0.vhd      volume 0 (or disk-0.img when raw)
//! <dir>/disk-1.vhd      ...
//! ```
//!
//! Applying a batch writes it to `redo.log` as one entry that records its
//! cycle and sequences, and fdatasyncs the log: from then on the batch is
//! durable, and [`ReplicaSink::apply`] returns after writing it to the disks
//! without syncing them (write-back is started at once, so that the next
//! checkpoint finds little to wait for). A **checkpoint** syncs the disks,
//! saves the state file (atomically) with a new redo cycle and starts the
//! redo log over from its start; it runs when the log holds
//! [`CheckpointPolicy::bytes`] or [`CheckpointPolicy::interval`] has passed,
//! and at `begin_sync`, `end_sync`, `mark_consistent`, [`FileSink::close`]
//! and drop. Opening the replica replays every complete entry of the state's
//! cycle that follows on from the state's sequence and stops at the first
//! other one (a torn entry, or a stale one of an earlier cycle), so the
//! disks are always recoverable to a batch boundary without the master.
//!
//! The log is **reused, never truncated**: entries overwrite it from the
//! start after each checkpoint, and it grows (zero-filled, in
//! [`REDO_GROW_BYTES`] steps) only when a cycle takes it past its largest
//! size so far. So a batch's fdatasync writes data only, and no file-size
//! or block-allocation metadata commit, once the log has reached its
//! working size.
//!
//! ```text
//!  redo entry (all integers little-endian)
//!    0   8  REDO_MAGIC
//!    8   8  payload length in bytes
//!    16  8  redo cycle (the state file's `redo_cycle` when it was written)
//!    24  8  applied sequence before the batch (its first sequence - 1)
//!    32  8  last sequence of the batch
//!    40  4  CRC-32 of bytes 8..40 and the payload
//!    44  ..  payload: the batch's records, journal record encoding
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{unapplied, write_records, ReplicaSink, ReplicaState, SinkError};
use crate::journal::record::{
    data_crc, encode_header, payload_ref, u32_at, u64_at, RECORD_HEADER_BYTES,
};
use crate::journal::{decode_record, Payload, Record};
use crate::volume::{FileVolume, VhdVolume, Volume};
use crate::{Seq, VolumeId};

/// How the replica disks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormat {
    /// Raw image files (`disk-N.img`).
    Raw,
    /// Fixed VHD files (`disk-N.vhd`), ready for Hyper-V, QEMU or an upload to Azure.
    FixedVhd,
}

impl DiskFormat {
    fn extension(self) -> &'static str {
        match self {
            DiskFormat::Raw => "img",
            DiskFormat::FixedVhd => "vhd",
        }
    }
}

const STATE_FILE: &str = "replica.toml";
const REDO_FILE: &str = "redo.log";
/// Magic bytes of a redo-log entry.
const REDO_MAGIC: &[u8; 8] = b"RHAREDO3";
/// Bytes of a redo-log entry before its payload: magic, payload length
/// (u64), cycle (u64), applied before (u64), last sequence (u64), CRC32 (u32).
const REDO_HEADER: usize = 8 + 8 + 8 + 8 + 8 + 4;
/// Where the CRC-32 of a redo entry stands (it covers bytes 8 to here).
const REDO_CRC_AT: usize = REDO_HEADER - 4;
/// The redo log grows by at least this much at a time, zero-filled, so
/// that batches rarely change its size.
pub const REDO_GROW_BYTES: u64 = 4 << 20;
/// Magic of the appended, multi-entry redo log of the previous version
/// (magic, payload length u64, last sequence u64, CRC32 u32 of bytes 8..24
/// and the payload, payload); read when reopening such a replica.
const REDO_MAGIC_V2: &[u8; 8] = b"RHAREDO2";
const REDO_HEADER_V2: usize = 8 + 8 + 8 + 4;
/// Magic of the single-batch redo log written by earlier versions (magic,
/// payload length u64, CRC32 u32, payload); read when reopening such a replica.
const REDO_MAGIC_V1: &[u8; 8] = b"RHAREDO1";
const REDO_HEADER_V1: usize = 8 + 8 + 4;

/// When a [`FileSink`] checkpoints: syncs its disks, saves its state file
/// and empties its redo log. Between checkpoints every batch costs one
/// fdatasync (of the redo log); a checkpoint costs a sync of each disk and
/// an atomic state-file replacement. Longer intervals make a longer redo
/// log to replay after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Checkpoint once the redo log holds at least this many bytes (default 64 MiB).
    pub bytes: u64,
    /// Checkpoint once this long has passed since the last one (default 1 s).
    pub interval: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            bytes: 64 << 20,
            interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    format: DiskFormat,
    volume_sizes: Vec<u64>,
    /// The redo log's cycle: raised at every checkpoint; only entries of
    /// this cycle are replayed (0 in replicas of earlier versions).
    #[serde(default)]
    redo_cycle: u64,
    #[serde(flatten)]
    state: ReplicaState,
}

/// A replica whose disks are files in one directory. See the [module docs](self).
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    volumes: Vec<Arc<dyn Volume>>,
    /// The disk files opened once more, to start their write-back early.
    disks: Vec<File>,
    policy: CheckpointPolicy,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The state as of the last applied batch (on disk: as of the last checkpoint).
    file: StateFile,
    /// The redo log, opened for writing at `redo_pos`.
    redo: File,
    /// Bytes of the current cycle's entries (where the next one goes).
    redo_pos: u64,
    /// Size of the redo log file (its entries and stale bytes after them).
    redo_len: u64,
    last_checkpoint: Instant,
    /// `redo_pos` when the disks' writeback was last started.
    hinted_at: u64,
    /// An earlier failure after which the disks' or the log's state is unknown.
    failed: Option<String>,
    /// The headers of the entry being written (see [`encode_entry_headers`]).
    headers: Vec<u8>,
}

/// Bytes of redo log written between two starts of the disks' writeback
/// ([`FileSink`] starts it without waiting, so that a checkpoint's sync
/// has little left to do).
pub const WRITEBACK_HINT_BYTES: u64 = 16 << 20;

impl FileSink {
    /// Creates a replica in `dir` (created if missing) with empty disks of the given sizes.
    ///
    /// Fixed VHD disks are rounded up to a whole MiB, as Azure requires.
    pub fn create(
        dir: impl AsRef<Path>,
        sizes: &[u64],
        format: DiskFormat,
    ) -> Result<Self, SinkError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|source| SinkError::Io {
            op: "create directory",
            path: dir.clone(),
            source,
        })?;
        let state_path = dir.join(STATE_FILE);
        if state_path.exists() {
            return Err(SinkError::Mismatch {
                what: format!(
                    "{} already holds a replica; open it instead, or remove the directory to start afresh",
                    dir.display()
                ),
            });
        }
        let mut volumes: Vec<Arc<dyn Volume>> = Vec::with_capacity(sizes.len());
        for (i, &size) in sizes.iter().enumerate() {
            let path = disk_path(&dir, i, format);
            let v: Arc<dyn Volume> = match format {
                DiskFormat::Raw => Arc::new(FileVolume::create(&path, size)?),
                DiskFormat::FixedVhd => Arc::new(VhdVolume::create(&path, size)?.0),
            };
            volumes.push(v);
        }
        let file = StateFile {
            version: 1,
            format,
            volume_sizes: sizes.to_vec(),
            redo_cycle: 0,
            state: ReplicaState::default(),
        };
        // An old redo log in the directory belongs to no replica: drop it.
        let redo_path = dir.join(REDO_FILE);
        let redo = open_redo(&redo_path)?;
        redo.set_len(0).map_err(io("empty", &redo_path))?;
        write_state(&dir, &file)?;
        Self::assemble(dir, volumes, file, redo)
    }

    /// Opens an existing replica and replays the batches its redo log holds
    /// after the last checkpoint (a torn last entry is dropped), so the
    /// disks stand at the last batch that `apply` made durable.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SinkError> {
        let dir = dir.as_ref().to_path_buf();
        let state_path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&state_path).map_err(|source| SinkError::Io {
            op: "read state",
            path: state_path.clone(),
            source,
        })?;
        let file: StateFile = toml::from_str(&text).map_err(|e| SinkError::BadState {
            path: state_path.clone(),
            reason: format!(
                "{e}; the replica's bookkeeping is damaged: resynchronise into a new directory"
            ),
        })?;
        if file.version != 1 {
            return Err(SinkError::BadState {
                path: state_path,
                reason: format!(
                    "version {} is not known to this rha; upgrade rha",
                    file.version
                ),
            });
        }
        let mut volumes: Vec<Arc<dyn Volume>> = Vec::with_capacity(file.volume_sizes.len());
        for (i, &size) in file.volume_sizes.iter().enumerate() {
            let path = disk_path(&dir, i, file.format);
            let v: Arc<dyn Volume> = match file.format {
                DiskFormat::Raw => Arc::new(FileVolume::open(&path)?),
                DiskFormat::FixedVhd => Arc::new(VhdVolume::open(&path)?),
            };
            if v.size() < size {
                return Err(SinkError::Mismatch {
                    what: format!(
                        "disk {} holds {} bytes but the replica needs {size}",
                        path.display(),
                        v.size()
                    ),
                });
            }
            volumes.push(v);
        }
        let redo = open_redo(&dir.join(REDO_FILE))?;
        let sink = Self::assemble(dir, volumes, file, redo)?;
        sink.recover()?;
        Ok(sink)
    }

    fn assemble(
        dir: PathBuf,
        volumes: Vec<Arc<dyn Volume>>,
        file: StateFile,
        redo: File,
    ) -> Result<Self, SinkError> {
        let mut disks = Vec::with_capacity(volumes.len());
        for i in 0..volumes.len() {
            let path = disk_path(&dir, i, file.format);
            disks.push(
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("open for write-back", &path))?,
            );
        }
        let redo_len = redo
            .metadata()
            .map_err(io("inspect", &dir.join(REDO_FILE)))?
            .len();
        Ok(FileSink {
            dir,
            volumes,
            disks,
            policy: CheckpointPolicy::default(),
            inner: Mutex::new(Inner {
                file,
                redo,
                redo_pos: 0,
                redo_len,
                last_checkpoint: Instant::now(),
                hinted_at: 0,
                failed: None,
                headers: Vec::new(),
            }),
        })
    }

    /// Uses `policy` for when to checkpoint (instead of the default).
    pub fn with_checkpoint_policy(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The directory that holds the replica.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of each replica disk, in volume order.
    pub fn disk_paths(&self) -> Vec<PathBuf> {
        let format = self.lock().file.format;
        (0..self.volumes.len())
            .map(|i| disk_path(&self.dir, i, format))
            .collect()
    }

    /// Makes every applied batch durable on the disks, saves the state file
    /// and starts the redo log over now.
    pub fn checkpoint(&self) -> Result<(), SinkError> {
        let mut inner = self.lock();
        self.check_failed(&inner)?;
        self.checkpoint_locked(&mut inner)
    }

    /// Checkpoints and closes the replica. Dropping it does the same, but
    /// can only log a failure.
    pub fn close(self) -> Result<(), SinkError> {
        let r = self.checkpoint();
        // Nothing is left for drop to do.
        self.lock().redo_pos = 0;
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn redo_path(&self) -> PathBuf {
        self.dir.join(REDO_FILE)
    }

    fn check_failed(&self, inner: &Inner) -> Result<(), SinkError> {
        match &inner.failed {
            Some(reason) => Err(SinkError::BadState {
                path: self.dir.clone(),
                reason: format!(
                    "an earlier failure left the replica in an unknown state ({reason}); reopen it to replay its redo log"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Syncs the disks, saves the state with the next redo cycle and starts
    /// the redo log over from its start. A failure leaves the redo log as it
    /// is (reopening replays it) and the sink refusing further batches.
    fn checkpoint_locked(&self, inner: &mut Inner) -> Result<(), SinkError> {
        inner.file.redo_cycle += 1;
        let res = self
            .flush_volumes()
            .and_then(|()| write_state(&self.dir, &inner.file));
        if let Err(e) = res {
            inner.failed = Some(e.to_string());
            return Err(e);
        }
        self.drop_cached_pages();
        // From here the saved state names the new cycle: the entries left in
        // the log are stale and are overwritten from the start, never replayed.
        inner.redo_pos = 0;
        inner.hinted_at = 0;
        inner.last_checkpoint = Instant::now();
        Ok(())
    }

    fn recover(&self) -> Result<(), SinkError> {
        let path = self.redo_path();
        let mut inner = self.lock();
        let entries = read_redo(&path, inner.file.redo_cycle, inner.file.state.applied)?;
        if entries.is_empty() {
            return Ok(());
        }
        let mut applied = inner.file.state.applied;
        let (mut first, mut replayed) = (None, 0usize);
        for records in &entries {
            match unapplied(applied, records) {
                Ok(todo) => {
                    let Some(last) = todo.last() else { continue };
                    write_records(&self.volumes, todo)?;
                    first.get_or_insert(todo[0].seq);
                    replayed += todo.len();
                    applied = last.seq;
                }
                Err(e) => {
                    // Cannot happen with entries this sink wrote; stop at
                    // the last batch boundary reached.
                    tracing::warn!(
                        "replica {}: redo log entry ignored with every later one: {e}",
                        self.dir.display()
                    );
                    break;
                }
            }
        }
        if let Some(first) = first {
            tracing::warn!(
                "replica {}: replayed {replayed} record(s), sequences {first}..={applied}, from the redo log after an unclean stop",
                self.dir.display()
            );
        }
        inner.file.state.applied = applied;
        self.checkpoint_locked(&mut inner)
    }

    fn flush_volumes(&self) -> Result<(), SinkError> {
        for v in &self.volumes {
            v.flush()?;
        }
        Ok(())
    }

    /// Writes `records` as one entry at the redo log's position and
    /// fdatasyncs it; returns the entry's length. The records' data goes to
    /// the kernel from the records (one vectored write), not through a copy.
    /// Past the log's end, the log first grows zero-filled to a multiple of
    /// [`REDO_GROW_BYTES`], so that the next batches write into blocks that
    /// are already allocated and change no file size.
    fn write_entry(&self, inner: &mut Inner, records: &[Record]) -> Result<u64, SinkError> {
        let path = self.redo_path();
        let len = encode_entry_headers(
            inner.file.redo_cycle,
            inner.file.state.applied,
            records,
            &mut inner.headers,
        );
        let end = inner.redo_pos + len;
        if end > inner.redo_len {
            let grown = end.div_ceil(REDO_GROW_BYTES) * REDO_GROW_BYTES;
            let zeros = vec![0u8; (grown - end).min(1 << 20) as usize];
            let mut at = end.max(inner.redo_len);
            while at < grown {
                let n = (grown - at).min(zeros.len() as u64) as usize;
                inner
                    .redo
                    .write_all_at(&zeros[..n], at)
                    .map_err(io("grow", &path))?;
                at += n as u64;
            }
            inner.redo_len = grown;
        }
        let mut parts = entry_slices(&inner.headers, records);
        crate::iov::write_all_vectored_at(&inner.redo, &mut parts, inner.redo_pos)
            .map_err(io("write to", &path))?;
        inner.redo.sync_data().map_err(io("fdatasync", &path))?;
        Ok(len)
    }

    /// Drops the disks' pages (clean after a checkpoint's sync) from the page
    /// cache. The replica never reads them back while replicating, and
    /// pages cached in large folios (a synchronisation's or a sequential
    /// load's large writes) make every later small write into them several
    /// times as costly for the kernel: random 4 KiB writes into a disk so
    /// cached ran at a quarter of the rate. Only a hint.
    fn drop_cached_pages(&self) {
        self.hint_disks("posix_fadvise", |fd| {
            // SAFETY: posix_fadvise on a file descriptor this sink owns; no memory is passed.
            match unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) } {
                0 => Ok(()),
                rc => Err(std::io::Error::from_raw_os_error(rc)),
            }
        });
    }

    /// Starts writing the disks' dirty pages back without waiting, so that
    /// the next checkpoint's sync has little left to do. Only a hint, given
    /// each time [`WRITEBACK_HINT_BYTES`] more were logged.
    fn start_writeback(&self) {
        self.hint_disks("sync_file_range", |fd| {
            // SAFETY: sync_file_range on a file descriptor this sink owns; no memory is passed.
            match unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) } {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }

    /// Gives each disk a page-cache hint (`what`, for the log): a failure
    /// only costs speed, so it is logged at debug level and not returned.
    fn hint_disks(&self, what: &str, hint: impl Fn(RawFd) -> std::io::Result<()>) {
        for f in &self.disks {
            if let Err(e) = hint(f.as_raw_fd()) {
                tracing::debug!("replica {}: {what}: {e}", self.dir.display());
            }
        }
    }
}

impl Drop for FileSink {
    /// Checkpoints, so that a replica closed in order has nothing to replay.
    fn drop(&mut self) {
        let mut inner = self.lock();
        if inner.failed.is_some() || inner.redo_pos == 0 {
            return;
        }
        if let Err(e) = self.checkpoint_locked(&mut inner) {
            tracing::warn!(
                "replica {}: checkpoint on close failed ({e}); reopening replays the redo log",
                self.dir.display()
            );
        }
    }
}

impl ReplicaSink for FileSink {
    fn volume_count(&self) -> usize {
        self.volumes.len()
    }

    fn volume(&self, id: VolumeId) -> Result<Arc<dyn Volume>, SinkError> {
        super::volume_at(&self.volumes, id).cloned()
    }

    fn state(&self) -> ReplicaState {
        self.lock().file.state
    }

    fn apply(&self, records: &[Record]) -> Result<Seq, SinkError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        self.check_failed(inner)?;
        let todo = unapplied(inner.file.state.applied, records)?;
        let Some(last) = todo.last() else {
            return Ok(inner.file.state.applied);
        };
        for r in todo {
            super::volume_at(&self.volumes, r.volume)?;
        }
        let len = match self.write_entry(inner, todo) {
            Ok(len) => len,
            Err(e) => {
                // A partly written entry is never replayed: the next one
                // overwrites it, and until then its checksum fails. After a
                // failed fdatasync the file's state is unknown.
                if matches!(
                    &e,
                    SinkError::Io {
                        op: "fdatasync",
                        ..
                    }
                ) {
                    inner.failed = Some(e.to_string());
                }
                return Err(e);
            }
        };
        inner.redo_pos += len;
        // Durable from here: a failure below is repaired by reopening.
        if let Err(e) = write_records(&self.volumes, todo) {
            inner.failed = Some(e.to_string());
            return Err(e);
        }
        // Not after every batch: the writeback of a few small writes each
        // time cost the appliance more CPU than the writes themselves
        // (a page rewritten soon after is then written back twice).
        if inner.redo_pos - inner.hinted_at >= WRITEBACK_HINT_BYTES {
            inner.hinted_at = inner.redo_pos;
            self.start_writeback();
        }
        inner.file.state.applied = last.seq;
        if inner.redo_pos >= self.policy.bytes
            || inner.last_checkpoint.elapsed() >= self.policy.interval
        {
            self.checkpoint_locked(inner)?;
        }
        Ok(last.seq)
    }

    fn begin_sync(&self) -> Result<(), SinkError> {
        let mut inner = self.lock();
        self.check_failed(&inner)?;
        inner.file.state.consistent = false;
        // No batch may stay in the redo log: replaying it after a crash
        // would undo synchronisation writes made after it.
        self.checkpoint_locked(&mut inner)
    }

    fn end_sync(&self, base: Seq) -> Result<(), SinkError> {
        let mut inner = self.lock();
        self.check_failed(&inner)?;
        inner.file.state.applied = base;
        inner.file.state.synced = true;
        self.checkpoint_locked(&mut inner)
    }

    fn mark_consistent(&self, seq: Seq) -> Result<(), SinkError> {
        let mut inner = self.lock();
        self.check_failed(&inner)?;
        super::check_consistent(&inner.file.state, seq)?;
        inner.file.state.consistent = true;
        self.checkpoint_locked(&mut inner)
    }
}

fn disk_path(dir: &Path, i: usize, format: DiskFormat) -> PathBuf {
    dir.join(format!("disk-{i}.{}", format.extension()))
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SinkError + 'a {
    move |source| SinkError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically and durably: temporary file, sync, rename, sync directory.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync directory", dir))?;
    }
    Ok(())
}

fn write_state(dir: &Path, file: &StateFile) -> Result<(), SinkError> {
    let path = dir.join(STATE_FILE);
    let text = toml::to_string(file).map_err(|e| SinkError::BadState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    atomic_write(&path, text.as_bytes())
}

/// Opens the redo log for positioned writes (not appending: entries
/// overwrite it from the start after each checkpoint).
fn open_redo(path: &Path) -> Result<File, SinkError> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(io("open", path))
}

/// Encodes the headers of a redo-log entry of `cycle` holding `records` (a
/// batch, in order, not empty, following on from sequence `applied`) into
/// `out`: the entry's header, then each record's header. Returns the
/// entry's length. [`entry_slices`] puts the records' data between them.
///
/// The entry's checksum (over what follows its length field) is combined
/// from the records' CRCs, so each record's data is read once, to checksum
/// it, and never copied.
fn encode_entry_headers(cycle: u64, applied: Seq, records: &[Record], out: &mut Vec<u8>) -> u64 {
    out.clear();
    out.resize(REDO_HEADER, 0);
    let mut body = crc32fast::Hasher::new();
    let mut len = 0u64;
    for r in records {
        let payload = payload_ref(&r.payload);
        let header = encode_header(r.seq, r.volume, r.offset, payload, data_crc(payload));
        out.extend_from_slice(&header.bytes);
        let record_len = payload.encoded_len() as u64;
        body.combine(&crc32fast::Hasher::new_with_initial_len(
            header.record_crc,
            record_len,
        ));
        len += record_len;
    }
    let last = records.last().map_or(0, |r| r.seq);
    out[0..8].copy_from_slice(REDO_MAGIC);
    out[8..16].copy_from_slice(&len.to_le_bytes());
    out[16..24].copy_from_slice(&cycle.to_le_bytes());
    out[24..32].copy_from_slice(&applied.to_le_bytes());
    out[32..40].copy_from_slice(&last.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[8..REDO_CRC_AT]);
    crc.combine(&body);
    let crc = crc.finalize();
    out[REDO_CRC_AT..REDO_HEADER].copy_from_slice(&crc.to_le_bytes());
    REDO_HEADER as u64 + len
}

/// The pieces of the entry whose headers [`encode_entry_headers`] wrote to
/// `headers`, in file order: its header, then each record's header and data.
fn entry_slices<'a>(headers: &'a [u8], records: &'a [Record]) -> Vec<IoSlice<'a>> {
    let mut parts = Vec::with_capacity(1 + 2 * records.len());
    parts.push(IoSlice::new(&headers[..REDO_HEADER]));
    for (r, header) in records
        .iter()
        .zip(headers[REDO_HEADER..].chunks_exact(RECORD_HEADER_BYTES))
    {
        parts.push(IoSlice::new(header));
        if let Payload::Data(d) = &r.payload {
            parts.push(IoSlice::new(d));
        }
    }
    parts
}

fn entry_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(header);
    crc.update(payload);
    crc.finalize()
}

/// Decodes a payload that passed its checksum into records.
fn decode_payload(path: &Path, payload: &[u8]) -> Result<Vec<Record>, SinkError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        match decode_record(&payload[at..]) {
            Ok(Some((r, used))) => {
                records.push(r);
                at += used;
            }
            _ => {
                return Err(SinkError::BadState {
                    path: path.to_path_buf(),
                    reason: format!("the redo log entry passed its checksum but holds an undecodable record at payload byte {at}; report this as a bug"),
                })
            }
        }
    }
    Ok(records)
}

/// The batches of the redo log at `path` to replay over a replica saved at
/// `applied` in redo cycle `cycle`: the complete entries from the start
/// that belong to `cycle` and follow on from each other, in order. The
/// first other entry ends the log: a stale one of an earlier cycle (or the
/// zeros of a grown log) silently, a torn or damaged one with a warning.
fn read_redo(path: &Path, cycle: u64, applied: Seq) -> Result<Vec<Vec<Record>>, SinkError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io("read", path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("open", path)(e)),
    };
    if bytes.starts_with(REDO_MAGIC_V1) {
        return read_redo_v1(path, &bytes);
    }
    if bytes.starts_with(REDO_MAGIC_V2) {
        return read_redo_v2(path, &bytes);
    }
    let mut out = Vec::new();
    let (mut at, mut applied) = (0, applied);
    while bytes.len() - at >= REDO_HEADER {
        let rest = &bytes[at..];
        if &rest[..8] != REDO_MAGIC || u64_at(rest, 16) != cycle || u64_at(rest, 24) != applied {
            tracing::debug!(
                "replica redo log {}: this cycle's entries end at byte {at}",
                path.display()
            );
            break;
        }
        let end = usize::try_from(u64_at(rest, 8))
            .ok()
            .and_then(|len| REDO_HEADER.checked_add(len))
            .filter(|&end| end <= rest.len());
        let Some(end) = end else {
            tracing::warn!(
                "replica redo log {}: the entry at byte {at} is incomplete; the batch it held was never acknowledged",
                path.display()
            );
            break;
        };
        let payload = &rest[REDO_HEADER..end];
        if entry_crc(&rest[8..REDO_CRC_AT], payload) != u32_at(rest, REDO_CRC_AT) {
            tracing::warn!(
                "replica redo log {}: the entry at byte {at} fails its checksum; the batch it held was never acknowledged",
                path.display()
            );
            break;
        }
        let records = decode_payload(path, payload)?;
        let last = u64_at(rest, 32);
        if records.first().map(|r| r.seq) != Some(applied + 1)
            || records.last().map(|r| r.seq) != Some(last)
        {
            return Err(SinkError::BadState {
                path: path.to_path_buf(),
                reason: format!("the redo log entry at byte {at} says its batch holds sequences {}..={last}, but its records do not; report this as a bug", applied + 1),
            });
        }
        out.push(records);
        applied = last;
        at += end;
    }
    Ok(out)
}

/// The appended redo log of the previous version: its complete entries, in
/// order; a torn or damaged entry ends it (with a warning).
fn read_redo_v2(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<Record>>, SinkError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let end = (rest.len() >= REDO_HEADER_V2 && &rest[..8] == REDO_MAGIC_V2)
            .then(|| usize::try_from(u64_at(rest, 8)).ok())
            .flatten()
            .and_then(|len| REDO_HEADER_V2.checked_add(len))
            .filter(|&end| end <= rest.len());
        let Some(end) = end else {
            tracing::warn!(
                "replica redo log {}: the entry at byte {at} is incomplete ({} bytes); the batch it held was never acknowledged",
                path.display(),
                rest.len()
            );
            break;
        };
        let payload = &rest[REDO_HEADER_V2..end];
        let mut crc = crc32fast::Hasher::new();
        crc.update(&rest[8..24]);
        crc.update(payload);
        if crc.finalize() != u32_at(rest, 24) {
            tracing::warn!(
                "replica redo log {}: the entry at byte {at} fails its checksum; the batch it held was never acknowledged",
                path.display()
            );
            break;
        }
        let records = decode_payload(path, payload)?;
        let last = u64_at(rest, 16);
        if records.last().map(|r| r.seq) != Some(last) {
            return Err(SinkError::BadState {
                path: path.to_path_buf(),
                reason: format!("the redo log entry at byte {at} says its batch ends at sequence {last}, but its records do not; report this as a bug"),
            });
        }
        out.push(records);
        at += end;
    }
    Ok(out)
}

/// The single-batch redo log of earlier versions.
fn read_redo_v1(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<Record>>, SinkError> {
    let payload = &bytes[REDO_HEADER_V1.min(bytes.len())..];
    if bytes.len() < REDO_HEADER_V1
        || u64_at(bytes, 8) != payload.len() as u64
        || crc32fast::hash(payload) != u32_at(bytes, 16)
    {
        tracing::warn!(
            "replica redo log {} is incomplete; the batch it held was never applied",
            path.display()
        );
        return Ok(Vec::new());
    }
    Ok(vec![decode_payload(path, payload)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::encode_record;
    use bytes::Bytes;

    /// The bytes of the entry [`FileSink`] writes for `records`.
    fn encode_entry(cycle: u64, applied: Seq, records: &[Record], out: &mut Vec<u8>) {
        let mut headers = Vec::new();
        let len = encode_entry_headers(cycle, applied, records, &mut headers);
        out.clear();
        for part in entry_slices(&headers, records) {
            out.extend_from_slice(&part);
        }
        assert_eq!(out.len() as u64, len);
    }

    #[test]
    fn an_entry_is_its_header_then_the_encoded_records_under_one_checksum() {
        let mut records = batch(3);
        records.push(Record {
            seq: 7,
            volume: 0,
            offset: 0,
            payload: Payload::Zero(REGION),
        });
        records.push(Record {
            seq: 8,
            volume: 0,
            offset: 4096,
            payload: Payload::Data(Bytes::new()),
        });
        let mut entry = Vec::new();
        encode_entry(9, 4, &records, &mut entry);
        let mut body = Vec::new();
        for r in &records {
            encode_record(r, &mut body);
        }
        assert_eq!(
            &entry[REDO_HEADER..],
            &body[..],
            "the records as the journal encodes them"
        );
        assert_eq!(u64_at(&entry, 8), body.len() as u64);
        assert_eq!(u64_at(&entry, 16), 9);
        assert_eq!(u64_at(&entry, 24), 4);
        assert_eq!(u64_at(&entry, 32), 8);
        // The combined checksum is the one computed over the bytes.
        assert_eq!(
            u32_at(&entry, REDO_CRC_AT),
            entry_crc(&entry[8..REDO_CRC_AT], &body)
        );
    }

    const REGION: u64 = 64 << 10;

    /// Batch `n` (from 1) writes region `n % 4` and region 4 with a pattern of
    /// `n`, two records, sequences `2n - 1` and `2n`.
    fn batch(n: u64) -> Vec<Record> {
        [n % 4, 4]
            .iter()
            .enumerate()
            .map(|(i, &region)| Record {
                seq: 2 * n - 1 + i as u64,
                volume: 0,
                offset: region * REGION,
                payload: Payload::Data(vec![n as u8; REGION as usize].into()),
            })
            .collect()
    }

    /// What every region must hold once batches `1..=n` are applied.
    fn expected(n: u64) -> Vec<u8> {
        let mut want = vec![0u8; 5];
        for b in 1..=n {
            want[(b % 4) as usize] = b as u8;
            want[4] = b as u8;
        }
        want
    }

    fn regions(sink: &FileSink) -> Vec<u8> {
        let v = sink.volume(0).unwrap();
        (0..5)
            .map(|r| {
                let mut buf = vec![0u8; REGION as usize];
                v.read_at(r * REGION, &mut buf).unwrap();
                assert!(
                    buf.iter().all(|&b| b == buf[0]),
                    "region {r} holds a mix of batches"
                );
                buf[0]
            })
            .collect()
    }

    fn never() -> CheckpointPolicy {
        CheckpointPolicy {
            bytes: u64::MAX,
            interval: Duration::from_secs(3600),
        }
    }

    /// Puts the disk back at batch `n` (the last checkpoint): the disk
    /// writes made since were lost, as the page cache would be.
    fn lose_disk_writes(disk: &Path, n: u64) {
        let f = OpenOptions::new().write(true).open(disk).unwrap();
        for r in 0..5u64 {
            f.write_all_at(&vec![expected(n)[r as usize]; REGION as usize], r * REGION)
                .unwrap();
        }
    }

    /// A sink in `path` with one 5-region disk that checkpoints only when told.
    fn manual_sink(path: &Path, format: DiskFormat) -> FileSink {
        FileSink::create(path, &[5 * REGION], format)
            .unwrap()
            .with_checkpoint_policy(never())
    }

    /// A crash between checkpoints: the process stops without closing
    /// (`mem::forget`: no checkpoint on drop) and the disk writes made since
    /// the last checkpoint are lost, as the page cache would be.
    #[test]
    fn a_crash_between_checkpoints_replays_the_redo_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let sink = manual_sink(&path, DiskFormat::Raw);
        for n in 1..=3 {
            sink.apply(&batch(n)).unwrap();
        }
        sink.checkpoint().unwrap();
        for n in 4..=6 {
            assert_eq!(sink.apply(&batch(n)).unwrap(), 2 * n);
        }
        assert_eq!(regions(&sink), expected(6));
        let disk = sink.disk_paths()[0].clone();
        std::mem::forget(sink);
        // Lose what reached the disk after the checkpoint.
        lose_disk_writes(&disk, 3);
        let text = fs::read_to_string(path.join(STATE_FILE)).unwrap();
        assert!(
            text.contains("applied = 6\n"),
            "saved at the checkpoint: {text}"
        );
        let sink = FileSink::open(&path).unwrap();
        assert_eq!(sink.state().applied, 12);
        assert_eq!(regions(&sink), expected(6));
        assert_eq!(sink.lock().redo_pos, 0, "replayed, then checkpointed");
        // Replaying is idempotent: crash again right after the replay.
        std::mem::forget(sink);
        let sink = FileSink::open(&path).unwrap();
        assert_eq!((sink.state().applied, regions(&sink)), (12, expected(6)));
        assert_eq!(sink.apply(&batch(7)).unwrap(), 14);
    }

    use std::os::unix::fs::MetadataExt;

    /// A crash while a batch's entry was being written: every cut of the
    /// last entry reopens at the batch before it.
    #[test]
    fn a_torn_last_entry_reopens_at_the_batch_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let sink = manual_sink(&path, DiskFormat::FixedVhd);
        sink.apply(&batch(1)).unwrap();
        sink.checkpoint().unwrap();
        sink.apply(&batch(2)).unwrap();
        sink.apply(&batch(3)).unwrap();
        let (pos, cycle) = {
            let inner = sink.lock();
            (inner.redo_pos as usize, inner.file.redo_cycle)
        };
        std::mem::forget(sink);
        let redo = path.join(REDO_FILE);
        let good = fs::read(&redo).unwrap();
        let mut torn = Vec::new();
        encode_entry(cycle, 6, &batch(4), &mut torn);
        assert!(good.len() >= pos + torn.len(), "the log was grown ahead");
        let backup = dir.path().join("backup");
        copy_dir(&path, &backup);
        for cut in [
            0,
            1,
            8,
            REDO_HEADER - 1,
            REDO_HEADER,
            REDO_HEADER + 100,
            torn.len() - 1,
        ] {
            // Written in place over the grown log's zeros, or at its end.
            for at_end in [false, true] {
                let mut bytes = good.clone();
                bytes[pos..pos + cut].copy_from_slice(&torn[..cut]);
                if at_end {
                    bytes.truncate(pos + cut);
                }
                fs::write(&redo, &bytes).unwrap();
                let sink = FileSink::open(&path).unwrap();
                assert_eq!(sink.state().applied, 6, "cut at {cut}");
                assert_eq!(regions(&sink), expected(3), "cut at {cut}");
                assert_eq!(sink.apply(&batch(4)).unwrap(), 8);
                drop(sink);
                fs::remove_dir_all(&path).unwrap();
                copy_dir(&backup, &path);
            }
        }
        // A whole last entry with a damaged byte: the same.
        let mut bytes = good.clone();
        bytes[pos..pos + torn.len()].copy_from_slice(&torn);
        bytes[pos + torn.len() - 10] ^= 0x20;
        fs::write(&redo, &bytes).unwrap();
        let sink = FileSink::open(&path).unwrap();
        assert_eq!(sink.state().applied, 6);
        assert_eq!(regions(&sink), expected(3));
    }

    /// Stale entries of an earlier cycle stay in the reused log after a
    /// checkpoint, intact and even with sequences that would follow on
    /// (after `end_sync` moved the applied sequence back): a crash never
    /// replays them.
    #[test]
    fn stale_entries_after_a_checkpoint_are_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let sink = manual_sink(&path, DiskFormat::Raw);
        for n in 1..=3 {
            sink.apply(&batch(n)).unwrap();
        }
        // The entries of batches 1, 2 and 3 (cycle 0) are in the log from its start.
        sink.begin_sync().unwrap();
        sink.end_sync(0).unwrap();
        assert_eq!(sink.state().applied, 0);
        // Batch 1 again: its entry overwrites the stale one of batch 1 exactly;
        // those of batches 2 and 3 (sequences 3..=6) follow it, intact.
        sink.apply(&batch(1)).unwrap();
        let disk = sink.disk_paths()[0].clone();
        std::mem::forget(sink);
        let redo = fs::read(path.join(REDO_FILE)).unwrap();
        let stale: Vec<_> = redo
            .windows(8)
            .enumerate()
            .filter(|(_, w)| w == REDO_MAGIC)
            .map(|(at, _)| u64_at(&redo[at..], 32))
            .collect();
        assert_eq!(stale, vec![2, 4, 6], "the stale entries are there");
        // Lose batch 1's disk writes since the checkpoint.
        lose_disk_writes(&disk, 3);
        let sink = FileSink::open(&path).unwrap();
        assert_eq!(sink.state().applied, 2, "only batch 1 was replayed");
        assert_eq!(regions(&sink), vec![0, 1, 2, 3, 1]);
        // And after the replay's checkpoint, another crash replays nothing.
        sink.apply(&batch(2)).unwrap();
        sink.checkpoint().unwrap();
        std::mem::forget(sink);
        let sink = FileSink::open(&path).unwrap();
        assert_eq!(sink.state().applied, 4);
    }

    /// Once grown, the log keeps its size: each batch's fdatasync writes
    /// data only, into blocks allocated already.
    #[test]
    fn the_redo_log_is_reused_and_keeps_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let sink = FileSink::create(&path, &[5 * REGION], DiskFormat::Raw)
            .unwrap()
            .with_checkpoint_policy(CheckpointPolicy {
                bytes: 5 * REGION,
                interval: Duration::from_secs(3600),
            });
        let len = || fs::metadata(path.join(REDO_FILE)).unwrap().len();
        sink.apply(&batch(1)).unwrap();
        assert_eq!(len(), REDO_GROW_BYTES, "grown once, zero-filled");
        let blocks = fs::metadata(path.join(REDO_FILE)).unwrap().blocks();
        assert!(blocks * 512 >= REDO_GROW_BYTES, "allocated, not sparse");
        for n in 2..=20 {
            sink.apply(&batch(n)).unwrap();
            assert_eq!(len(), REDO_GROW_BYTES, "batch {n}");
        }
        assert!(
            sink.lock().file.redo_cycle >= 6,
            "checkpoints restarted the log"
        );
        sink.close().unwrap();
        let sink = FileSink::open(&path).unwrap();
        assert_eq!((sink.state().applied, regions(&sink)), (40, expected(20)));
    }

    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    #[test]
    fn checkpoints_follow_the_policy_and_drop_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let sink = FileSink::create(&path, &[5 * REGION], DiskFormat::Raw)
            .unwrap()
            .with_checkpoint_policy(CheckpointPolicy {
                bytes: 3 * REGION,
                interval: Duration::from_secs(3600),
            });
        let redo = |sink: &FileSink| sink.lock().redo_pos;
        sink.apply(&batch(1)).unwrap();
        assert!(redo(&sink) > 2 * REGION, "one entry of two records");
        sink.apply(&batch(2)).unwrap(); // past 3 regions: checkpoint
        assert_eq!(redo(&sink), 0);
        let saved = || {
            let text = fs::read_to_string(path.join(STATE_FILE)).unwrap();
            toml::from_str::<StateFile>(&text).unwrap()
        };
        // What reopening would replay.
        let pending = || {
            let file = saved();
            read_redo(&path.join(REDO_FILE), file.redo_cycle, file.state.applied)
                .unwrap()
                .len()
        };
        assert_eq!(saved().state.applied, 4);
        sink.apply(&batch(3)).unwrap();
        assert_eq!((saved().state.applied, pending()), (4, 1));
        drop(sink);
        assert_eq!(
            (saved().state.applied, pending()),
            (6, 0),
            "drop checkpoints"
        );
        let sink = FileSink::open(&path).unwrap();
        sink.apply(&batch(4)).unwrap();
        sink.close().unwrap();
        assert_eq!(
            (saved().state.applied, pending()),
            (8, 0),
            "close checkpoints"
        );
    }

    #[test]
    fn a_redo_log_of_the_previous_format_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        drop(FileSink::create(&path, &[5 * REGION], DiskFormat::Raw).unwrap());
        let mut payload = Vec::new();
        for r in batch(1) {
            encode_record(&r, &mut payload);
        }
        let mut v1 = REDO_MAGIC_V1.to_vec();
        v1.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        v1.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        v1.extend_from_slice(&payload);
        fs::write(path.join(REDO_FILE), &v1).unwrap();
        let sink = FileSink::open(&path).unwrap();
        assert_eq!(sink.state().applied, 2);
        assert_eq!(regions(&sink), expected(1));
    }

    /// Pages of `path` resident in the page cache (mincore).
    fn resident_pages(path: &Path) -> usize {
        use std::os::unix::io::AsRawFd;
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        let page = 4096;
        // SAFETY: a read-only shared mapping of a file we opened, unmapped
        // below; mincore only writes into `vec`, which has a byte per page.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED);
            let mut vec = vec![0u8; len.div_ceil(page)];
            let rc = libc::mincore(addr, len, vec.as_mut_ptr());
            libc::munmap(addr, len);
            assert_eq!(rc, 0);
            vec.iter().filter(|&&b| b & 1 == 1).count()
        }
    }

    #[test]
    fn a_checkpoint_leaves_the_disks_out_of_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let sink = manual_sink(&path, DiskFormat::Raw);
        sink.apply(&batch(1)).unwrap();
        let disk = sink.disk_paths()[0].clone();
        // Both written regions are cached after the apply.
        assert!(resident_pages(&disk) >= 2 * (REGION as usize / 4096));
        sink.checkpoint().unwrap();
        assert_eq!(resident_pages(&disk), 0);
        // The data is where it was written.
        assert_eq!(regions(&sink), expected(1));
    }
}
