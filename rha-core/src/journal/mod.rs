//! The change journal: a durable, append-only log of every write to the
//! master's volumes, plus a persistent dirty-region log ([`changelog`]).
//!
//! ```text
//!   write splitter ──append()──► [mark ChangeLog B] ──► [append record to segment] ──► Appended
//!                                 (fdatasync only        (fdatasync per FsyncPolicy,
//!                                  on a new bit, one      outside the lock: one for all
//!                                  for all concurrent     concurrent appenders under
//!                                  writers)               Always, a background thread
//!                                                         under Interval)
//!   replicator ──read_after(acked)──► records ──► replica applies ──► acknowledge(upto)
//!                                                                     (rotate A/B at most once
//!                                                                      per changelog_rotation;
//!                                                                      then, outside the lock:
//!                                                                      state file when needed,
//!                                                                      delete segments)
//! ```
//!
//! Directory layout: `{first_seq:020}.seg` segment files ([`segment`]),
//! `state` (acknowledged seq, flags; [`state`]), `changelog` (bitmaps;
//! [`changelog`]) and `lock` (held with `flock` while open).
//!
//! # Contract
//! - Seqs start at 1, grow by one per journalled write and are never
//!   reused, across restarts, acknowledgements and overflows.
//! - With [`FsyncPolicy::Always`], a record is on stable storage when
//!   [`Journal::append`] returns; a `kill -9` or power loss loses no such record.
//!   Readers ([`Journal::read_after`], [`Journal::last_seq`]) see a record
//!   only once it is as durable as the policy promises.
//! - [`Journal::durable`] never reports a record whose fdatasync (and that of
//!   every segment before it, and of the directory entry of a new segment)
//!   has not finished.
//! - Every write's regions are durably marked in the change log before its
//!   record is written, so the change log covers every write that is not
//!   acknowledged, including writes lost to overflow or to a crash.
//! - The unacknowledged journal never exceeds [`JournalConfig::max_bytes`]:
//!   a write that would exceed it empties the journal, sets
//!   [`Journal::needs_resync`] and returns [`Appended::Overflowed`].
//!
//! # Example
//! ```
//! use rha_core::journal::{Appended, Journal, JournalConfig};
//! let dir = tempfile::tempdir()?;
//! let (journal, recovery) = Journal::open(dir.path(), JournalConfig::default(), &[1 << 30])?;
//! assert!(!recovery.needs_resync);
//! assert_eq!(journal.append(0, 4096, b"hello")?, Appended::Logged(1));
//! let records = journal.read_after(0, 1 << 20)?;
//! assert_eq!(records[0].offset, 4096);
//! journal.acknowledge(1)?;
//! journal.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod changelog;
pub mod record;
pub mod segment;
pub mod state;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, IoSlice, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use record::{decode_record, encode_record, RecordError, MAX_DATA_BYTES};

use changelog::ChangeLog;
use record::{payload_ref, PayloadRef};
use segment::{Next, Segment, SEGMENT_HEADER_BYTES};
use state::State;

use crate::{Seq, VolumeId};

/// What a record does to its volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Write these bytes at the record's offset (shared, not copied, as
    /// the record moves from the writer through the journal to the wire).
    Data(Bytes),
    /// Zero this many bytes at the record's offset (a trim or zero write).
    Zero(u64),
}

/// One journalled write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's sequence number.
    pub seq: Seq,
    /// The volume written.
    pub volume: VolumeId,
    /// Byte offset of the write on the volume.
    pub offset: u64,
    /// What was written.
    pub payload: Payload,
}

impl Record {
    /// Bytes of data the record carries (0 for a zero record).
    pub fn data_bytes(&self) -> u64 {
        match &self.payload {
            Payload::Data(d) => d.len() as u64,
            Payload::Zero(_) => 0,
        }
    }

    /// Number of volume bytes the record covers.
    pub fn len(&self) -> u64 {
        match &self.payload {
            Payload::Data(d) => d.len() as u64,
            Payload::Zero(n) => *n,
        }
    }
    /// True if the record covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// When appended records are forced to stable storage (fdatasync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before [`Journal::append`] returns. Survives power loss.
    Always,
    /// In the background, by a thread of the journal that syncs what was
    /// appended at least this often (writers never wait for it), and on
    /// [`Journal::sync`] / [`Journal::close`].
    Interval(Duration),
    /// Only on [`Journal::sync`] / [`Journal::close`].
    Never,
}

/// Journal settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// A new segment file starts when a record would take the current one
    /// past this size (a single larger record still gets its own segment).
    pub segment_bytes: u64,
    /// Upper bound on unacknowledged record bytes; see [`Appended::Overflowed`].
    pub max_bytes: u64,
    /// When records are fdatasync'ed.
    pub fsync: FsyncPolicy,
    /// Smallest size of one change-log region in bytes (default 1 MiB, the
    /// order of DRBD's 4 MiB activity-log extents). A write costs change-log
    /// I/O (an fdatasync) only when it touches a region that is not marked
    /// yet, so larger regions keep random writes over a working set free of
    /// I/O; smaller ones make a fast resync compare less (block-level resync
    /// still sends only the 4 KiB blocks that differ). For large volumes the
    /// region doubles until each bitmap generation holds at most
    /// [`MAX_CHANGE_LOG_BITS`] bits, which bounds its memory (2 MiB) whatever
    /// the volume size. Used when the change log is created: an existing
    /// change log keeps the region size it was created with.
    pub region_bytes: u64,
    /// Shortest time between two rotations of the change log (default 5 s).
    /// A rotation forgets the regions that were not written for a whole
    /// window, so with a longer window more writes find their region marked
    /// already (no I/O), and after a crash the resync covers the regions
    /// written in the last one to two windows. Zero rotates at every
    /// acknowledgement that reaches the boundary (the least to resync, the
    /// most change-log I/O).
    pub changelog_rotation: Duration,
    /// Under [`FsyncPolicy::Interval`] and [`FsyncPolicy::Never`]: the
    /// newest unacknowledged records, up to this many bytes, are kept only
    /// in memory and reach a segment file only when the replica falls this
    /// far behind, on [`Journal::sync`] or at [`Journal::close`]. A replica
    /// that keeps up then costs the master no journal I/O at all (each
    /// write is copied once into memory instead of written to, synced and
    /// read back from a segment). The change log still marks every write
    /// durably before [`Journal::append`] returns, so an unclean end (a
    /// crash, `kill -9`) loses only records the dirty-region resync covers:
    /// the next [`Journal::open`] sets `needs_resync`, as it does after a
    /// crash and a reboot without [`FsyncPolicy::Always`]. 0 (the default
    /// of [`JournalConfig::default`]) keeps every record in a segment.
    /// Ignored under [`FsyncPolicy::Always`].
    pub memory_bytes: u64,
}

impl JournalConfig {
    /// Whether records are kept in memory first ([`JournalConfig::memory_bytes`]).
    fn memory_mode(&self) -> bool {
        self.memory_bytes > 0 && self.fsync != FsyncPolicy::Always
    }
}

impl From<&crate::scenario::JournalSettings> for JournalConfig {
    /// The journal a scenario's `[journal]` section asks for.
    fn from(s: &crate::scenario::JournalSettings) -> Self {
        use crate::scenario::FsyncPolicy as F;
        JournalConfig {
            max_bytes: s.max_size_mb.saturating_mul(1 << 20),
            fsync: match s.fsync {
                F::Always => FsyncPolicy::Always,
                F::Interval => FsyncPolicy::Interval(Duration::from_millis(s.fsync_interval_ms)),
                F::Never => FsyncPolicy::Never,
            },
            memory_bytes: s.memory_mb.saturating_mul(1 << 20),
            ..JournalConfig::default()
        }
    }
}

/// Default [`JournalConfig::region_bytes`]: 1 MiB.
pub const DEFAULT_REGION_BYTES: u64 = 1 << 20;

/// Longest time an acknowledgement that deletes no segment and rotates
/// nothing waits before the state file records it (each persist costs two
/// fdatasyncs; replication acknowledges every batch).
pub const ACK_PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Seqs reserved in the state file at a time while records are kept in
/// memory ([`JournalConfig::memory_bytes`]): records lost with the process
/// never had their seqs on disk, and the next session must not hand them
/// out again (a replica may have applied them). One state-file write per
/// this many records; a restart after a crash skips at most this many seqs.
pub const SEQ_RESERVE: u64 = 1 << 20;

/// Default [`JournalConfig::changelog_rotation`]: 5 seconds.
pub const DEFAULT_CHANGELOG_ROTATION: Duration = Duration::from_secs(5);

/// Most bits of one change-log generation (over all volumes): 2 MiB of bitmap.
pub const MAX_CHANGE_LOG_BITS: u64 = 1 << 24;

/// The region size the change log uses for `volume_sizes`: `min_region`
/// doubled until the bitmap fits in [`MAX_CHANGE_LOG_BITS`].
pub fn effective_region_bytes(min_region: u64, volume_sizes: &[u64]) -> u64 {
    let mut region = min_region.max(1);
    while volume_sizes.iter().map(|s| s.div_ceil(region)).sum::<u64>() > MAX_CHANGE_LOG_BITS {
        region *= 2;
    }
    region
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            fsync: FsyncPolicy::Always,
            region_bytes: DEFAULT_REGION_BYTES,
            changelog_rotation: DEFAULT_CHANGELOG_ROTATION,
            memory_bytes: 0,
        }
    }
}

/// What [`Journal::append`] did with a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The write was journalled under this seq.
    Logged(Seq),
    /// The journal was full: every unacknowledged record was discarded,
    /// [`Journal::needs_resync`] is set, and the write is covered only by the
    /// change log ([`Journal::dirty_ranges`]).
    Overflowed,
}

/// What [`Journal::open`] found and repaired.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Records present in the journal after recovery.
    pub records: u64,
    /// Bytes of torn or corrupt tail (and of dropped segments) removed.
    pub dropped_tail_bytes: u64,
    /// Whether the previous session ended with [`Journal::close`] (true for a new journal).
    pub clean_shutdown: bool,
    /// Whether the dirty regions must be resynchronised (see [`Journal::resync_started`]).
    pub needs_resync: bool,
    /// Human-readable descriptions of everything repaired or suspicious.
    pub warnings: Vec<String>,
}

/// Errors from the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A filesystem operation failed.
    #[error("journal {path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The records the caller asked for no longer exist.
    #[error("journal: the records from sequence {wanted} on were discarded (the oldest kept is {first}); a resynchronisation of the dirty regions is needed (Journal::resync_started)")]
    Gap {
        /// The first seq the caller wanted (`after + 1`).
        wanted: Seq,
        /// The first seq after `wanted` still in the journal (`last_seq() + 1` if none).
        first: Seq,
    },
    /// A record read back from a segment is damaged (found after open).
    #[error("journal {path}: record {seq} at byte {offset} is corrupt: {source}; reopen the journal to repair it, then resynchronise")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record in the file.
        offset: u64,
        /// The seq the record should have.
        seq: Seq,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
    /// The state file is damaged.
    #[error("journal state file {path} is unreadable ({reason}); the journal cannot be trusted: delete the journal directory and run a full synchronisation")]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The change-log file is damaged or missing.
    #[error("journal change log {path} is unreadable ({reason}); dirty regions are unknown: delete the journal directory and run a full synchronisation")]
    CorruptChangeLog {
        /// The change-log file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The volumes given to [`Journal::open`] differ from those the journal was created with.
    #[error("journal change log {path} was created for volume sizes {stored_sizes:?} with {stored_region_bytes}-byte regions, but opened with sizes {given_sizes:?} and {given_region_bytes}-byte regions; open it with the original volumes, or delete the journal directory and run a full synchronisation")]
    VolumeMismatch {
        /// The change-log file.
        path: PathBuf,
        /// Volume sizes stored in the change log.
        stored_sizes: Vec<u64>,
        /// Region size stored in the change log.
        stored_region_bytes: u64,
        /// Volume sizes passed to open.
        given_sizes: Vec<u64>,
        /// Region size in the configuration passed to open.
        given_region_bytes: u64,
    },
    /// The configuration is unusable.
    #[error("journal configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// Another journal instance holds the directory.
    #[error("journal {path} is already open in another process or instance; close it first")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A write names a volume the journal does not know.
    #[error("journal: volume {volume} does not exist (the journal has {volumes} volumes)")]
    UnknownVolume {
        /// The volume named.
        volume: VolumeId,
        /// How many volumes the journal was opened with.
        volumes: usize,
    },
    /// A write reaches past the end of its volume.
    #[error("journal: write of {len} bytes at {offset} reaches past the end of volume {volume} ({size} bytes)")]
    OutOfRange {
        /// The volume.
        volume: VolumeId,
        /// Offset of the write.
        offset: u64,
        /// Length of the write.
        len: u64,
        /// Size of the volume.
        size: u64,
    },
    /// A single write is larger than one record may be.
    #[error("journal: a write of {len} bytes exceeds the {max}-byte record limit; split it")]
    TooLarge {
        /// Length of the write.
        len: u64,
        /// [`MAX_DATA_BYTES`].
        max: u64,
    },
    /// An acknowledgement names a seq that was never handed out.
    #[error(
        "journal: cannot acknowledge up to {upto}: the last sequence number handed out is {last}"
    )]
    AckBeyondEnd {
        /// The seq acknowledged.
        upto: Seq,
        /// [`Journal::last_seq`].
        last: Seq,
    },
    /// An earlier I/O failure left the journal in an unknown state.
    #[error("journal {path} is unusable after an earlier failure ({reason}); close and reopen it to recover")]
    Failed {
        /// The file concerned.
        path: PathBuf,
        /// The earlier failure.
        reason: String,
    },
    /// A write came after [`Journal::close_shared`].
    #[error("journal {path} is closed: no write is journalled any more (the engine or the export is shutting down)")]
    Closed {
        /// The journal directory.
        path: PathBuf,
    },
}

/// Records returned by one [`Journal::read_after`] call at most, whatever
/// their payload (bounds memory for runs of [`Payload::Zero`] records).
pub const MAX_RECORDS_PER_READ: usize = 1 << 16;

/// File name of the lock file inside the journal directory.
pub const LOCK_FILE: &str = "lock";

/// The durable change journal of one master. See the [module docs](self).
///
/// All methods take `&self`; one internal lock orders appends,
/// acknowledgements and change-log rotations. Reads hold the lock only to
/// find and open the segments they need. The fdatasync of new change-log
/// marks, the fdatasync of the segments and the state file written by
/// [`Journal::acknowledge`] happen outside it, so writers do not wait for
/// the disk nor for the replicator's I/O, and one fdatasync covers the
/// marks (or records) of every writer that waited for it.
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
    marks: MarkSync,
    /// Group commit of the segments (see [`Commit`]).
    commit: Arc<Commit>,
    /// The background sync thread of [`FsyncPolicy::Interval`].
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serialises state-file writes (see [`StateWriter`]).
    writer: Arc<StateWriter>,
    /// Records are kept in memory first ([`JournalConfig::memory_bytes`]).
    memory: bool,
}

/// Group commit of the segment files: one fdatasync at a time, run without
/// the journal's lock for every record appended before it took the file
/// handles; "durable up to seq N" is recorded only after it finished.
#[derive(Debug, Default)]
struct Commit {
    state: Mutex<CommitState>,
    /// Signalled when a sync finishes (or the flusher is to stop).
    done: Condvar,
}

#[derive(Debug, Default)]
struct CommitState {
    /// Every record with a seq up to this one is on stable storage.
    durable: Seq,
    /// A thread is fdatasyncing segments now.
    syncing: bool,
    /// A failed fdatasync: the segments' state on disk is unknown.
    failed: Option<String>,
    /// Number of segment syncs run so far (for tests and statistics).
    syncs: u64,
    /// The background flusher is to stop.
    stopping: bool,
}

impl Commit {
    fn lock(&self) -> MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The file handles one segment sync covers, taken under the journal's
/// lock and synced after dropping it.
#[derive(Debug, Default)]
struct SyncBatch {
    /// Segments with unsynced writes, oldest first (the active one last).
    files: Vec<(Arc<File>, PathBuf)>,
    /// The directory, when segment files were created or deleted.
    dir: Option<PathBuf>,
    /// The last seq written before the handles were taken.
    upto: Seq,
}

impl SyncBatch {
    fn run(&self) -> Result<(), JournalError> {
        for (f, path) in &self.files {
            f.sync_data().map_err(io("fdatasync segment", path))?;
        }
        if let Some(dir) = &self.dir {
            state::fsync_dir(dir)?;
        }
        Ok(())
    }
}

/// Group commit of change-log marks: the first writer that needs its marks
/// durable fdatasyncs the file for everyone who set marks before it began.
#[derive(Debug, Default)]
struct MarkSync {
    state: Mutex<MarkSyncState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct MarkSyncState {
    /// Every mark generation up to this one is on stable storage.
    durable: u64,
    /// A writer is fdatasyncing the change log now.
    syncing: bool,
    /// A failed fdatasync: the marks' state on disk is unknown.
    failed: Option<String>,
    /// Number of change-log fdatasyncs run so far (for tests and statistics).
    syncs: u64,
}

impl MarkSync {
    fn lock(&self) -> MutexGuard<'_, MarkSyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that every mark generation up to `gen` is durable.
    fn advance(&self, gen: u64) {
        let mut st = self.lock();
        st.durable = st.durable.max(gen);
        self.done.notify_all();
    }
}

/// Writes snapshots of the state file in the order they were taken: each
/// snapshot carries a version handed out under the journal's lock, and a
/// snapshot older than the one on disk is never written.
#[derive(Debug, Default)]
struct StateWriter {
    /// The version of the state file on disk.
    written: Mutex<u64>,
}

impl StateWriter {
    fn write(&self, dir: &Path, version: u64, state: &State) -> Result<(), JournalError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *written >= version {
            return Ok(()); // a later state is on disk already
        }
        state::write_state(dir, state)?;
        *written = version;
        Ok(())
    }
}

/// The I/O an acknowledgement leaves to do after the journal's lock is dropped.
#[derive(Debug, Default)]
struct AckWork {
    /// A snapshot of the state to persist, with its version.
    state: Option<(u64, State)>,
    /// Segment files that hold only acknowledged records.
    delete: Vec<PathBuf>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Journal")
            .field("dir", &inner.dir)
            .field("config", &inner.config)
            .field("last_seq", &inner.visible)
            .field("written", &inner.written)
            .field("acknowledged", &inner.state.acknowledged)
            .field("bytes", &inner.unacked_bytes)
            .field("segments", &inner.segments.len())
            .field("in_memory", &inner.mem.len())
            .field("needs_resync", &inner.state.needs_resync)
            .field("changelog", &inner.changelog)
            .finish_non_exhaustive()
    }
}

struct Inner {
    dir: PathBuf,
    config: JournalConfig,
    segments: VecDeque<Segment>,
    /// Open handle on the last segment, for appending.
    active: Option<Arc<File>>,
    /// The active segment has writes not yet fdatasync'ed.
    active_dirty: bool,
    /// Earlier segments with writes not yet fdatasync'ed.
    unsynced: Vec<(Arc<File>, PathBuf)>,
    /// Segment files were created or deleted since the directory was fsync'ed.
    dir_dirty: bool,
    /// The last seq handed out to a record (written to a segment, or held
    /// in `mem`).
    written: Seq,
    /// The newest unacknowledged records, not in any segment: seqs follow
    /// on from the last segment's without a gap ([`JournalConfig::memory_bytes`]).
    mem: VecDeque<Record>,
    /// Encoded bytes of the records in `mem`.
    mem_bytes: u64,
    /// Every seq up to this one may have been handed out: the state file's
    /// seq floor is at least this ([`SEQ_RESERVE`]).
    reserved: Seq,
    /// The last seq readers may see: `last_seq`, except under
    /// [`FsyncPolicy::Always`] where a record becomes visible once synced.
    visible: Seq,
    state: State,
    changelog: ChangeLog,
    unacked_bytes: u64,
    /// Number of overflow discards so far (in this process).
    discards: u64,
    /// Number of change-log rotations so far (in this process).
    rotations: u64,
    /// When the change log last rotated (or the journal was opened).
    last_rotation: Instant,
    /// Version of `state`, raised at every change that is to be persisted.
    state_version: u64,
    /// When an acknowledgement last persisted the state.
    last_ack_persist: Instant,
    writer: Arc<StateWriter>,
    /// `(discards, rotations)` when the current resync started.
    resync: Option<(u64, u64)>,
    failed: Option<String>,
    /// [`Journal::close_shared`] ran: appends are refused.
    closed: bool,
    _lock: File,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A change to the segment files decided during recovery.
#[derive(Debug)]
enum Repair {
    Delete(PathBuf),
    Truncate(PathBuf, u64),
}

fn warn(warnings: &mut Vec<String>, dir: &Path, msg: String) {
    tracing::warn!(journal = %dir.display(), "{msg}");
    warnings.push(msg);
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("open lock file", &path))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            return Err(JournalError::Locked { path });
        }
        return Err(JournalError::Io {
            op: "lock journal directory",
            path,
            source: err,
        });
    }
    Ok(f)
}

impl Journal {
    /// Opens the journal in `dir`, creating it if needed, and recovers from
    /// any crash: torn tails are cut off, mid-journal corruption drops the
    /// rest of the journal and sets `needs_resync`, and an unclean shutdown
    /// followed by a reboot sets `needs_resync` unless the previous session
    /// used [`FsyncPolicy::Always`].
    ///
    /// `volume_sizes[v]` is the size in bytes of volume `v`; they must equal
    /// those the journal was created with ([`JournalError::VolumeMismatch`]).
    pub fn open(
        dir: impl AsRef<Path>,
        config: JournalConfig,
        volume_sizes: &[u64],
    ) -> Result<(Journal, Recovery), JournalError> {
        let dir = dir.as_ref().to_path_buf();
        if config.segment_bytes == 0 || config.max_bytes == 0 || config.region_bytes == 0 {
            return Err(JournalError::Config {
                reason: format!(
                    "segment_bytes ({}), max_bytes ({}) and region_bytes ({}) must all be positive",
                    config.segment_bytes, config.max_bytes, config.region_bytes
                ),
            });
        }
        fs::create_dir_all(&dir).map_err(io("create journal directory", &dir))?;
        let lock = lock_dir(&dir)?;
        let mut warnings = Vec::new();
        let previous = state::read_state(&dir)?;
        let changelog_path = dir.join(changelog::CHANGELOG_FILE);
        if previous.is_some() && !changelog_path.exists() {
            return Err(JournalError::CorruptChangeLog {
                path: changelog_path,
                reason: "the file is missing".into(),
            });
        }
        // Created before the state file, so "state but no change log" is damage.
        // An existing change log keeps its region size (the default changed
        // from 4 KiB to 1 MiB; older journals stay usable as they are).
        let region_bytes = match changelog::stored_region_bytes(&changelog_path)? {
            Some(stored) => stored,
            None => effective_region_bytes(config.region_bytes, volume_sizes),
        };
        let changelog = ChangeLog::open(&dir, region_bytes, volume_sizes, 0)?;
        let mut st = previous.clone().unwrap_or_default();
        if st.needs_resync {
            warn(
                &mut warnings,
                &dir,
                "a resync of the dirty regions is still pending from the previous session".into(),
            );
        }

        // List segments in seq order.
        let mut listed = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io("list journal directory", &dir))? {
            let entry = entry.map_err(io("list journal directory", &dir))?;
            if let Some(first) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_segment_name)
            {
                listed.push((first, entry.path()));
            }
        }
        listed.sort();

        // Decide every repair first and apply them only after the state
        // file (with `needs_resync` and the seq floor) is durable, so a
        // crash half-way through a repair cannot hide lost records.
        let mut repairs: Vec<Repair> = Vec::new();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut dropped_bytes = 0u64;
        let mut drop_rest = false;
        let mut floor = st.seq_floor.max(st.acknowledged);
        let n = listed.len();
        for (i, (first, path)) in listed.into_iter().enumerate() {
            let is_last = i + 1 == n;
            if drop_rest {
                let scan = segment::scan_segment(&path, first)?;
                floor = floor.max(first).max(scan.segment.last_seq().unwrap_or(0));
                dropped_bytes += scan.file_len;
                repairs.push(Repair::Delete(path.clone()));
                warn(
                    &mut warnings,
                    &dir,
                    format!("deleted segment {} (records from {first}) because an earlier segment is corrupt", path.display()),
                );
                continue;
            }
            if let Some(prev) = segments.back() {
                if prev.next_seq() != first {
                    st.needs_resync = true;
                    drop_rest = true;
                    floor = floor.max(first);
                    let scan = segment::scan_segment(&path, first)?;
                    floor = floor.max(scan.segment.last_seq().unwrap_or(0));
                    dropped_bytes += scan.file_len;
                    repairs.push(Repair::Delete(path.clone()));
                    warn(
                        &mut warnings,
                        &dir,
                        format!(
                            "records {} to {} are missing before segment {}: dropped it and everything after; the dirty regions need a resync",
                            prev.next_seq(),
                            first - 1,
                            path.display()
                        ),
                    );
                    continue;
                }
            }
            let scan = segment::scan_segment(&path, first)?;
            let mut seg = scan.segment;
            if let Some(bad) = scan.bad {
                let later = if is_last {
                    segment::valid_record_after(&path, bad.offset, scan.file_len)?
                } else {
                    Some(0)
                };
                let cut = scan.file_len - bad.offset;
                dropped_bytes += cut;
                match later {
                    None => warn(
                        &mut warnings,
                        &dir,
                        format!(
                            "dropped a torn or corrupt tail of {cut} bytes at byte {} of segment {} (record {}: {})",
                            bad.offset,
                            path.display(),
                            bad.seq,
                            bad.reason
                        ),
                    ),
                    Some(max_seq) => {
                        st.needs_resync = true;
                        drop_rest = true;
                        floor = floor.max(max_seq);
                        warn(
                            &mut warnings,
                            &dir,
                            format!(
                                "corruption in the middle of the journal at byte {} of segment {} (record {}: {}): dropped it and everything after; the dirty regions need a resync",
                                bad.offset,
                                path.display(),
                                bad.seq,
                                bad.reason
                            ),
                        );
                    }
                }
                if bad.offset < SEGMENT_HEADER_BYTES {
                    repairs.push(Repair::Delete(path));
                    continue;
                }
                repairs.push(Repair::Truncate(path, bad.offset));
                seg.len = bad.offset;
            }
            segments.push_back(seg);
        }

        // Delete leftovers of an interrupted acknowledge (and empty
        // segments that are not the last one).
        while let Some(front) = segments.front() {
            let done = match front.last_seq() {
                Some(l) => l <= st.acknowledged,
                None => segments.len() > 1,
            };
            if !done {
                break;
            }
            repairs.push(Repair::Delete(front.path.clone()));
            segments.pop_front();
        }

        let mut last_seq = floor;
        if let Some(seg) = segments.back() {
            last_seq = last_seq.max(seg.next_seq() - 1);
        }

        let clean_shutdown = previous.as_ref().is_none_or(|p| p.clean_shutdown);
        let boot_id = state::boot_id();
        if let Some(p) = &previous {
            if !p.clean_shutdown
                && !p.fsync_always
                && (p.boot_id.is_empty() || boot_id.is_empty() || p.boot_id != boot_id)
            {
                st.needs_resync = true;
                warn(
                    &mut warnings,
                    &dir,
                    "the previous session did not close the journal, did not fsync every record, and the machine has rebooted since: records may have been lost while their disk writes survived; the dirty regions need a resync".into(),
                );
            }
        }
        if let Some(p) = &previous {
            if !p.clean_shutdown && p.memory_records && !st.needs_resync {
                st.needs_resync = true;
                warn(
                    &mut warnings,
                    &dir,
                    "the previous session kept its newest records only in memory (memory_bytes) and did not close the journal: they are lost; the dirty regions need a resync".into(),
                );
            }
        }
        st.seq_floor = last_seq;
        st.clean_shutdown = false;
        st.fsync_always = config.fsync == FsyncPolicy::Always;
        st.memory_records = config.memory_mode();
        st.boot_id = boot_id;
        state::write_state(&dir, &st)?;
        for repair in &repairs {
            match repair {
                Repair::Delete(path) => match fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io("delete segment", path)(e))
                    }
                    _ => {}
                },
                Repair::Truncate(path, len) => segment::truncate(path, *len)?,
            }
        }
        state::fsync_dir(&dir)?;
        // What a previous process wrote may still be only in the page cache:
        // make it durable before reporting it so.
        for seg in &segments {
            File::open(&seg.path)
                .and_then(|f| f.sync_data())
                .map_err(io("fdatasync segment", &seg.path))?;
        }

        let active = match segments.back() {
            Some(seg) => Some(Arc::new(
                OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io("open segment for appending", &seg.path))?,
            )),
            None => None,
        };
        let records = segments.iter().map(|s| s.offsets.len() as u64).sum();
        let writer = Arc::new(StateWriter::default());
        let mut inner = Inner {
            dir,
            config,
            segments,
            active,
            active_dirty: false,
            unsynced: Vec::new(),
            dir_dirty: false,
            written: last_seq,
            mem: VecDeque::new(),
            mem_bytes: 0,
            reserved: last_seq,
            visible: last_seq,
            state: st,
            changelog,
            unacked_bytes: 0,
            discards: 0,
            rotations: 0,
            last_rotation: Instant::now(),
            state_version: 0,
            last_ack_persist: Instant::now(),
            writer: writer.clone(),
            resync: None,
            failed: None,
            closed: false,
            _lock: lock,
        };
        inner.recount();
        let recovery = Recovery {
            records,
            dropped_tail_bytes: dropped_bytes,
            clean_shutdown,
            needs_resync: inner.state.needs_resync,
            warnings,
        };
        let memory = inner.config.memory_mode();
        let interval = match inner.config.fsync {
            FsyncPolicy::Interval(d) => Some(d),
            _ => None,
        };
        let dir = inner.dir.clone();
        let journal = Journal {
            inner: Arc::new(Mutex::new(inner)),
            marks: MarkSync::default(),
            commit: Arc::new(Commit {
                state: Mutex::new(CommitState {
                    durable: last_seq,
                    ..CommitState::default()
                }),
                done: Condvar::new(),
            }),
            flusher: Mutex::new(None),
            writer,
            memory,
        };
        if let Some(every) = interval {
            let (inner, commit) = (journal.inner.clone(), journal.commit.clone());
            let handle = std::thread::Builder::new()
                .name("rha-journal-sync".into())
                .spawn(move || flush_every(&inner, &commit, every))
                .map_err(io("start the journal's sync thread for", &dir))?;
            *journal.flusher_slot() = Some(handle);
        }
        Ok((journal, recovery))
    }

    fn flusher_slot(&self) -> MutexGuard<'_, Option<std::thread::JoinHandle<()>>> {
        self.flusher.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the background sync thread (if any) and waits for its last sync.
    fn stop_flusher(&self) {
        let Some(handle) = self.flusher_slot().take() else {
            return;
        };
        self.commit.lock().stopping = true;
        self.commit.done.notify_all();
        if handle.join().is_err() {
            tracing::warn!("the journal's sync thread panicked");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the journal consistent on
        // disk (every step is ordered for crash safety), so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals a write of `data` at `offset` on `volume`: marks its regions
    /// in the change log (durably, if any is new), then appends the record
    /// (fdatasync'ed before returning under [`FsyncPolicy::Always`]).
    /// Write to the disk only after this returns.
    pub fn append(
        &self,
        volume: VolumeId,
        offset: u64,
        data: &[u8],
    ) -> Result<Appended, JournalError> {
        check_record_len(data.len())?;
        self.append_payload(volume, offset, PayloadRef::Data(data), None)
    }

    /// [`Journal::append`] of a buffer the journal may keep: a record held
    /// in memory ([`JournalConfig::memory_bytes`]) shares it instead of
    /// copying it, and so does every read of that record.
    pub fn append_bytes(
        &self,
        volume: VolumeId,
        offset: u64,
        data: Bytes,
    ) -> Result<Appended, JournalError> {
        check_record_len(data.len())?;
        self.append_payload(volume, offset, PayloadRef::Data(&data), Some(&data))
    }

    /// Journals zeroing `len` bytes at `offset` on `volume` (as [`Journal::append`]).
    pub fn append_zero(
        &self,
        volume: VolumeId,
        offset: u64,
        len: u64,
    ) -> Result<Appended, JournalError> {
        self.append_payload(volume, offset, PayloadRef::Zero(len), None)
    }

    /// Marks the write's regions, makes new marks durable without holding
    /// the lock (group commit), then appends the record under the same lock
    /// as a final check that its regions are still marked (a rotation in
    /// between may have dropped them: then they are marked again).
    /// `shared` is the data of `payload` as a buffer the journal may keep.
    fn append_payload(
        &self,
        volume: VolumeId,
        offset: u64,
        payload: PayloadRef<'_>,
        shared: Option<&Bytes>,
    ) -> Result<Appended, JournalError> {
        let len = payload.len();
        // The payload a record held in memory keeps. A copy, if one is
        // needed, is made before taking the lock, so appenders do not wait
        // for it.
        let keep = self.memory.then(|| match (payload, shared) {
            (PayloadRef::Data(_), Some(b)) => Payload::Data(b.clone()),
            (PayloadRef::Data(d), None) => Payload::Data(Bytes::copy_from_slice(d)),
            (PayloadRef::Zero(n), _) => Payload::Zero(n),
        });
        loop {
            let mut inner = self.lock();
            inner.check_failed()?;
            if inner.closed {
                return Err(JournalError::Closed {
                    path: inner.dir.clone(),
                });
            }
            inner.changelog.check_range(volume, offset, len)?;
            // The change log first: it must cover the write whatever happens next.
            match inner.changelog.mark(volume, offset, len)? {
                None => {
                    let appended = inner.append(volume, offset, payload, keep.clone())?;
                    let always = inner.config.fsync == FsyncPolicy::Always;
                    drop(inner);
                    if let (Appended::Logged(seq), true) = (appended, always) {
                        // Group commit: share one fdatasync with every
                        // appender that wrote meanwhile.
                        commit(&self.inner, &self.commit, seq)?;
                    }
                    return Ok(appended);
                }
                Some(gen) => {
                    drop(inner);
                    self.marks_durable(gen)?;
                }
            }
        }
    }

    /// Returns once change-log mark generation `gen` is on stable storage:
    /// waits for a running fdatasync, or runs one for every mark written so far.
    fn marks_durable(&self, gen: u64) -> Result<(), JournalError> {
        let mut st = self.marks.lock();
        loop {
            if let Some(reason) = st.failed.clone() {
                drop(st);
                return Err(JournalError::Failed {
                    path: self.lock().changelog.path().to_path_buf(),
                    reason,
                });
            }
            if st.durable >= gen {
                return Ok(());
            }
            if !st.syncing {
                break;
            }
            st = self.marks.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.syncing = true;
        drop(st);
        // Lock order: the journal's lock is never taken while holding the marks' lock.
        let handle = {
            let inner = self.lock();
            inner.changelog.sync_handle().map(|f| {
                (
                    f,
                    inner.changelog.writes,
                    inner.changelog.path().to_path_buf(),
                )
            })
        };
        let res = handle.and_then(|(file, upto, path)| {
            file.sync_data()
                .map(|()| upto)
                .map_err(io("fdatasync change log", &path))
        });
        let mut st = self.marks.lock();
        st.syncing = false;
        st.syncs += 1;
        let res = match res {
            Ok(upto) => {
                st.durable = st.durable.max(upto);
                Ok(())
            }
            Err(e) => {
                // The page cache state of the file is unknown after a failed fdatasync.
                st.failed = Some(e.to_string());
                Err(e)
            }
        };
        self.marks.done.notify_all();
        drop(st);
        if let Err(e) = &res {
            self.lock().failed = Some(e.to_string());
        }
        res
    }

    /// Forces every appended record to stable storage (waiting for a sync
    /// in flight, or running one outside the journal's lock); records held
    /// in memory ([`JournalConfig::memory_bytes`]) are written to the
    /// segments first.
    pub fn sync(&self) -> Result<(), JournalError> {
        let target = {
            let mut inner = self.lock();
            inner.check_failed()?;
            inner.spill_all()?;
            inner.written
        };
        commit(&self.inner, &self.commit, target)
    }

    /// Every record with a seq up to this one is on stable storage: its
    /// fdatasync (and that of the segments before it) has finished.
    pub fn durable(&self) -> Seq {
        self.commit.lock().durable
    }

    /// Up to `max_bytes` of payload from the records with seq > `after`, in
    /// order; at least one record if any exists, and at most
    /// [`MAX_RECORDS_PER_READ`]. Empty if `after >= last_seq()`.
    ///
    /// Payload bytes are the data of [`Payload::Data`] records; zero
    /// records count as none. Fails with [`JournalError::Gap`] if record
    /// `after + 1` was discarded (by an overflow, or acknowledged and deleted).
    pub fn read_after(&self, after: Seq, max_bytes: usize) -> Result<Vec<Record>, JournalError> {
        // Plan under the lock: open the segment files (so a concurrent
        // acknowledge may delete them without harm) and note how far each
        // was written; then read without the lock.
        let mut plan: Vec<(PathBuf, File, u64, u64, Seq)> = Vec::new();
        {
            let inner = self.lock();
            let visible = inner.visible;
            if after >= visible {
                return Ok(Vec::new());
            }
            let wanted = after + 1;
            if inner.mem.front().is_some_and(|r| r.seq <= wanted) {
                return Ok(inner.mem_after(wanted, max_bytes));
            }
            // The first record at or after `wanted` must be `wanted` itself.
            let next = inner
                .segments
                .iter()
                .filter(|s| s.last_seq().is_some_and(|l| l >= wanted))
                .map(|s| s.first_seq.max(wanted))
                .next()
                .or_else(|| inner.mem.front().map(|r| r.seq))
                .unwrap_or(visible + 1);
            if next != wanted {
                return Err(JournalError::Gap {
                    wanted,
                    first: next,
                });
            }
            for seg in &inner.segments {
                let Some(last) = seg.last_seq() else { continue };
                if last < wanted || seg.first_seq > visible {
                    continue;
                }
                // Records after `visible` are not synced yet (FsyncPolicy::Always).
                let end = if last > visible {
                    seg.offsets[(visible + 1 - seg.first_seq) as usize]
                } else {
                    seg.len
                };
                let (start, seq) = if seg.first_seq >= wanted {
                    (seg.offsets[0], seg.first_seq)
                } else {
                    (seg.offsets[(wanted - seg.first_seq) as usize], wanted)
                };
                let file =
                    File::open(&seg.path).map_err(io("open segment for reading", &seg.path))?;
                plan.push((seg.path.clone(), file, start, end, seq));
            }
        }
        let mut out = Vec::new();
        let mut budget = ReadBudget::new(max_bytes);
        let mut buf = Vec::new();
        for (path, mut file, start, end, mut seq) in plan {
            file.seek(SeekFrom::Start(start))
                .map_err(io("seek segment", &path))?;
            let mut r = BufReader::with_capacity(256 << 10, file);
            let mut pos = start;
            while pos < end {
                let corrupt = |source| JournalError::Corrupt {
                    path: path.clone(),
                    offset: pos,
                    seq,
                    source,
                };
                let rec = match segment::read_next(&mut r, &mut buf).map_err(io("read segment", &path))? {
                    Next::Record(rec, len) if rec.seq == seq => {
                        pos += len;
                        rec
                    }
                    Next::Record(rec, _) => {
                        return Err(JournalError::Failed {
                            path: path.clone(),
                            reason: format!(
                                "record at byte {pos} has seq {} where {seq} was expected",
                                rec.seq
                            ),
                        })
                    }
                    Next::Corrupt(e) => return Err(corrupt(e)),
                    Next::End | Next::Short(_) => {
                        return Err(JournalError::Failed {
                            path: path.clone(),
                            reason: format!("segment ends at byte {pos} inside record {seq}, before its known end {end}"),
                        })
                    }
                };
                if !budget.admits(&rec) {
                    return Ok(out);
                }
                let spent = budget.take(&rec);
                out.push(rec);
                seq += 1;
                if spent {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Records that the replica has durably applied every record with seq
    /// ≤ `upto`: deletes segments holding only such records (except the
    /// active one), and rotates the change log when `upto` reaches its
    /// boundary (unless a resync is pending). The state file records it at
    /// once when segments are deleted, a flag changes or the change log
    /// rotates, otherwise within [`ACK_PERSIST_EVERY`] or at close; after a
    /// crash the journal may believe less acknowledged, and then keeps those
    /// records. Acknowledging less than before is a no-op.
    pub fn acknowledge(&self, upto: Seq) -> Result<(), JournalError> {
        self.acknowledge_as(upto, false)
    }

    /// Acknowledges under the lock, then persists the state and deletes the
    /// acknowledged segments after dropping it. The state is durable before
    /// any segment is deleted, and a later state is never overwritten by an
    /// earlier one ([`StateWriter`]).
    fn acknowledge_as(&self, upto: Seq, resync: bool) -> Result<(), JournalError> {
        let (work, dir, rotated) = {
            let mut inner = self.lock();
            let rotations = inner.rotations;
            let work = inner.acknowledge(upto, resync)?;
            let rotated = (inner.rotations != rotations).then_some(inner.changelog.writes);
            (work, inner.dir.clone(), rotated)
        };
        if let Some(gen) = rotated {
            // The rotation rewrote the change log with every mark set so far.
            self.marks.advance(gen);
        }
        if let Some((version, state)) = &work.state {
            self.writer.write(&dir, *version, state)?;
        }
        for path in &work.delete {
            match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("delete acknowledged segment", path)(e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The highest seq acknowledged so far.
    pub fn acknowledged(&self) -> Seq {
        self.lock().state.acknowledged
    }

    /// The highest seq readers can see (0 if none): the last one appended,
    /// or under [`FsyncPolicy::Always`] the last one appended and synced.
    pub fn last_seq(&self) -> Seq {
        self.lock().visible
    }

    /// The configured bound on unacknowledged bytes ([`JournalConfig::max_bytes`]).
    pub fn max_bytes(&self) -> u64 {
        self.lock().config.max_bytes
    }

    /// Bytes of unacknowledged records on disk (bounded by [`JournalConfig::max_bytes`]).
    pub fn bytes(&self) -> u64 {
        self.lock().unacked_bytes
    }

    /// True if records were lost (overflow, corruption, or a crash without
    /// fsync) and the dirty regions must be resynchronised.
    pub fn needs_resync(&self) -> bool {
        self.lock().state.needs_resync
    }

    /// Merged byte ranges of `volume` that the change log marks dirty,
    /// clipped to the volume's size. Empty for an unknown volume.
    pub fn dirty_ranges(&self, volume: VolumeId) -> Vec<Range<u64>> {
        self.lock().changelog.dirty_ranges(volume)
    }

    /// Starts a resync of the dirty regions: returns the base seq. The
    /// caller then reads the current data of every range in
    /// [`Journal::dirty_ranges`], sends it, replays records after the base
    /// ([`Journal::read_after`]), and calls [`Journal::resync_completed`].
    pub fn resync_started(&self) -> Result<Seq, JournalError> {
        let mut inner = self.lock();
        inner.resync = Some((inner.discards, inner.rotations));
        Ok(inner.visible)
    }

    /// Ends a resync started at `base`: acknowledges through `base`, clears
    /// `needs_resync` (unless records were discarded again meanwhile), and
    /// rotates the change log (A := B) when no rotation happened since the
    /// resync started; marks made after it started stay covered.
    pub fn resync_completed(&self, base: Seq) -> Result<(), JournalError> {
        self.acknowledge_as(base, true)
    }

    /// Sets `needs_resync` and persists it: the dirty regions must be
    /// resynchronised from the volumes before replication goes on.
    ///
    /// A writer that journals each record before its disk write (the
    /// [`crate::source::TrackedSet`]) calls this after an unclean shutdown:
    /// the last records may never have reached the volume, while the
    /// replica would still get them (or already has). A resync already
    /// running when this is called does not clear the flag.
    pub fn require_resync(&self) -> Result<(), JournalError> {
        let mut inner = self.lock();
        if inner.state.needs_resync {
            return Ok(());
        }
        inner.state.needs_resync = true;
        inner.discards += 1;
        inner.persist_state()
    }

    /// Syncs everything and records a clean shutdown.
    pub fn close(self) -> Result<(), JournalError> {
        self.close_shared()
    }

    /// [`Journal::close`] through a shared reference, for an owner that
    /// cannot take the journal back from everyone holding it (the volumes
    /// of a [`TrackedSet`](crate::source::TrackedSet) served over NBD) once
    /// every writer has stopped: syncs everything, records a clean
    /// shutdown, and from then on refuses appends with
    /// [`JournalError::Closed`] (reads and acknowledgements still work).
    /// The next [`Journal::open`] finds a clean shutdown, so a reboot then
    /// needs no resync. A second call does nothing.
    pub fn close_shared(&self) -> Result<(), JournalError> {
        // After this no background sync starts again.
        self.stop_flusher();
        let written = {
            let mut inner = self.lock();
            inner.check_failed()?;
            if inner.closed && inner.state.clean_shutdown {
                return Ok(());
            }
            // From here on no append slips in before the clean shutdown is recorded.
            inner.closed = true;
            inner.spill_all()?;
            inner.written
        };
        // Waits for a sync another thread has in flight, then syncs the
        // rest: every record is durable before the shutdown is called clean.
        commit(&self.inner, &self.commit, written)?;
        let mut inner = self.lock();
        inner.state.clean_shutdown = true;
        // Every seq handed out is in a segment now: the next session goes
        // on from the last one, not from the reservation.
        inner.reserved = inner.written;
        inner.persist_state()
    }
}

impl Drop for Journal {
    /// Stops the background sync thread; what it had not synced is synced
    /// by the next [`Journal::open`].
    fn drop(&mut self) {
        self.stop_flusher();
    }
}

/// What one [`Journal::read_after`] may still return: at least one record,
/// then records while their payload fits in `max_bytes` and fewer than
/// [`MAX_RECORDS_PER_READ`] were taken.
struct ReadBudget {
    max_bytes: usize,
    payload: usize,
    records: usize,
}

impl ReadBudget {
    fn new(max_bytes: usize) -> Self {
        ReadBudget {
            max_bytes,
            payload: 0,
            records: 0,
        }
    }

    /// Whether `rec` may be returned after those taken so far.
    fn admits(&self, rec: &Record) -> bool {
        self.records == 0
            || (self.payload.saturating_add(rec.data_bytes() as usize) <= self.max_bytes
                && self.records < MAX_RECORDS_PER_READ)
    }

    /// Counts `rec` in; true once the payload has reached `max_bytes`.
    fn take(&mut self, rec: &Record) -> bool {
        self.payload += rec.data_bytes() as usize;
        self.records += 1;
        self.payload >= self.max_bytes
    }
}

/// Refuses a record larger than [`MAX_DATA_BYTES`].
fn check_record_len(len: usize) -> Result<(), JournalError> {
    if len > MAX_DATA_BYTES {
        return Err(JournalError::TooLarge {
            len: len as u64,
            max: MAX_DATA_BYTES as u64,
        });
    }
    Ok(())
}

/// Returns once every record up to `target` is durable: waits for the sync
/// in flight, or runs one (without the journal's lock) for every record
/// written so far. Lock order: the journal's lock is never taken while
/// holding the commit state's lock.
fn commit(inner: &Mutex<Inner>, commit: &Commit, target: Seq) -> Result<(), JournalError> {
    let lock_inner = || inner.lock().unwrap_or_else(|e| e.into_inner());
    let mut st = commit.lock();
    loop {
        if let Some(reason) = st.failed.clone() {
            drop(st);
            return Err(JournalError::Failed {
                path: lock_inner().dir.clone(),
                reason,
            });
        }
        if st.durable >= target {
            return Ok(());
        }
        if !st.syncing {
            break;
        }
        st = commit.done.wait(st).unwrap_or_else(|e| e.into_inner());
    }
    st.syncing = true;
    drop(st);
    let batch = lock_inner().take_batch();
    let res = batch.run();
    {
        // Readers see the records before any appender is told they are durable.
        let mut inner = lock_inner();
        match &res {
            Ok(()) => inner.visible = inner.visible.max(batch.upto.min(inner.written)),
            Err(e) => inner.sync_failed(e),
        }
    }
    let mut st = commit.lock();
    st.syncing = false;
    st.syncs += 1;
    match &res {
        Ok(()) => st.durable = st.durable.max(batch.upto),
        Err(e) => st.failed = Some(e.to_string()),
    }
    commit.done.notify_all();
    res
}

/// The background sync of [`FsyncPolicy::Interval`]: every `every`, syncs
/// what was appended since the last sync, until the journal is dropped.
fn flush_every(inner: &Mutex<Inner>, state: &Commit, every: Duration) {
    loop {
        {
            let st = state.lock();
            let (st, _) = state
                .done
                .wait_timeout_while(st, every, |s| !s.stopping)
                .unwrap_or_else(|e| e.into_inner());
            if st.stopping || st.failed.is_some() {
                return;
            }
        }
        let target = inner.lock().unwrap_or_else(|e| e.into_inner()).written;
        if let Err(e) = commit(inner, state, target) {
            tracing::warn!("journal background sync failed: {e}");
            return;
        }
    }
}

impl Inner {
    fn recount(&mut self) {
        let acked = self.state.acknowledged;
        self.unacked_bytes = self
            .segments
            .iter()
            .map(|s| s.bytes_after(acked))
            .sum::<u64>()
            + self.mem_bytes;
    }

    fn check_failed(&self) -> Result<(), JournalError> {
        match &self.failed {
            Some(reason) => Err(JournalError::Failed {
                path: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Persists the state now (under the lock: for changes that must be
    /// durable before the caller goes on).
    fn persist_state(&mut self) -> Result<(), JournalError> {
        let (version, state) = self.state_snapshot();
        self.writer.write(&self.dir, version, &state)
    }

    /// A new version of the state, to persist (in version order) with [`StateWriter`].
    fn state_snapshot(&mut self) -> (u64, State) {
        self.state.seq_floor = self.written.max(self.reserved);
        self.state_version += 1;
        (self.state_version, self.state.clone())
    }

    /// Appends a record (the caller checked the range and made its marks
    /// durable): to `mem` when `keep` (its payload, to keep) is given,
    /// after spilling the oldest records held there to the active segment
    /// until it fits in [`JournalConfig::memory_bytes`]; otherwise, or when
    /// it is larger than that, to the active segment.
    fn append(
        &mut self,
        volume: VolumeId,
        offset: u64,
        payload: PayloadRef<'_>,
        keep: Option<Payload>,
    ) -> Result<Appended, JournalError> {
        let seq = self.written + 1;
        let rec_len = payload.encoded_len() as u64;
        if self.unacked_bytes + rec_len > self.config.max_bytes {
            self.overflow(rec_len)?;
            return Ok(Appended::Overflowed);
        }
        match keep {
            Some(payload) => {
                if seq > self.reserved {
                    // Durable before the seq is handed out: a crash now must
                    // not let the next session reuse it.
                    self.reserved = seq.saturating_add(SEQ_RESERVE);
                    self.persist_state()?;
                }
                while self.mem_bytes + rec_len > self.config.memory_bytes && !self.mem.is_empty() {
                    self.spill_one()?;
                }
                let rec = Record {
                    seq,
                    volume,
                    offset,
                    payload,
                };
                if rec_len > self.config.memory_bytes {
                    self.write_record(seq, volume, offset, payload_ref(&rec.payload))?;
                } else {
                    self.mem.push_back(rec);
                    self.mem_bytes += rec_len;
                }
            }
            None => self.write_record(seq, volume, offset, payload)?,
        }
        self.written = seq;
        if self.config.fsync != FsyncPolicy::Always {
            self.visible = seq;
        }
        self.unacked_bytes += rec_len;
        Ok(Appended::Logged(seq))
    }

    /// Moves the oldest record held in memory to the active segment.
    fn spill_one(&mut self) -> Result<(), JournalError> {
        let Some(rec) = self.mem.pop_front() else {
            return Ok(());
        };
        if let Err(e) =
            self.write_record(rec.seq, rec.volume, rec.offset, payload_ref(&rec.payload))
        {
            self.mem.push_front(rec);
            return Err(e);
        }
        self.mem_bytes -= record::encoded_len(&rec) as u64;
        Ok(())
    }

    /// Moves every record held in memory to the segments (for a sync or a close).
    fn spill_all(&mut self) -> Result<(), JournalError> {
        while !self.mem.is_empty() {
            self.spill_one()?;
        }
        Ok(())
    }

    /// The last seq whose record is in a segment file (or was discarded):
    /// records after it are held in memory.
    fn disk_last(&self) -> Seq {
        self.mem.front().map_or(self.written, |r| r.seq - 1)
    }

    /// Writes record `seq` at the end of the active segment (a new one if
    /// needed), without fdatasync, and indexes it.
    fn write_record(
        &mut self,
        seq: Seq,
        volume: VolumeId,
        offset: u64,
        payload: PayloadRef<'_>,
    ) -> Result<(), JournalError> {
        let rec_len = payload.encoded_len() as u64;
        self.ensure_segment(seq, rec_len)?;
        let header = record::encode_header(seq, volume, offset, payload, record::data_crc(payload));
        let data: &[u8] = match payload {
            PayloadRef::Data(d) => d,
            PayloadRef::Zero(_) => &[],
        };
        let (Some(seg), Some(file)) = (self.segments.back(), self.active.as_ref()) else {
            return Err(JournalError::Failed {
                path: self.dir.clone(),
                reason: "no active segment after creating one".into(),
            });
        };
        let (path, start) = (seg.path.clone(), seg.len);
        // No fdatasync here, under the lock: under Always the caller waits
        // for a group commit after dropping it, and the record stays
        // invisible to readers until then; under Interval a background
        // thread syncs.
        // Header and data in one call: the data is not copied first.
        let mut parts = [IoSlice::new(&header.bytes), IoSlice::new(data)];
        let res = crate::iov::write_all_vectored(&mut &**file, &mut parts)
            .map_err(io("append record", &path));
        self.active_dirty = true;
        if let Err(e) = res {
            // Cut off whatever part of the record reached the file.
            let cut = match &self.active {
                Some(f) => f.set_len(start),
                None => Ok(()),
            };
            if let Err(cut_err) = cut {
                self.failed = Some(format!(
                    "a failed append of record {seq} could not be cut off {}: {cut_err}",
                    path.display()
                ));
            }
            return Err(e);
        }
        if let Some(seg) = self.segments.back_mut() {
            seg.offsets.push(start);
            seg.len = start + rec_len;
        }
        Ok(())
    }

    /// The records held in memory from seq `wanted` on (which `mem` holds),
    /// by the rules of [`Journal::read_after`]. Their data is shared, not copied.
    fn mem_after(&self, wanted: Seq, max_bytes: usize) -> Vec<Record> {
        let skip = self.mem.front().map_or(0, |r| wanted.saturating_sub(r.seq));
        let mut out = Vec::new();
        let mut budget = ReadBudget::new(max_bytes);
        for rec in self
            .mem
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        {
            if !budget.admits(rec) {
                break;
            }
            let spent = budget.take(rec);
            out.push(rec.clone());
            if spent {
                break;
            }
        }
        out
    }

    /// Makes sure the last segment can take record `seq` of `rec_len` bytes.
    fn ensure_segment(&mut self, seq: Seq, rec_len: u64) -> Result<(), JournalError> {
        if let (Some(seg), Some(_)) = (self.segments.back(), self.active.as_ref()) {
            let fits = seg.offsets.is_empty() || seg.len + rec_len <= self.config.segment_bytes;
            if seg.next_seq() == seq && fits {
                return Ok(());
            }
            if seg.offsets.is_empty() {
                // A stale empty segment (its seq was skipped): remove it.
                let path = seg.path.clone();
                fs::remove_file(&path).map_err(io("delete empty segment", &path))?;
                self.segments.pop_back();
                self.active = None;
                self.dir_dirty = true;
            }
        }
        if let Some(old) = self.active.take() {
            if self.active_dirty {
                if let Some(seg) = self.segments.back() {
                    self.unsynced.push((old, seg.path.clone()));
                }
            }
            self.active_dirty = false;
        }
        let path = self.dir.join(segment::segment_name(seq));
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io("create segment", &path))?;
        file.write_all(&segment::segment_header(seq))
            .map_err(io("write segment header", &path))?;
        self.dir_dirty = true;
        self.active_dirty = true;
        self.active = Some(Arc::new(file));
        self.segments.push_back(Segment {
            first_seq: seq,
            path,
            offsets: Vec::new(),
            len: SEGMENT_HEADER_BYTES,
        });
        Ok(())
    }

    /// Takes the handles of every segment written since the last batch (to
    /// sync without the lock) and clears their dirty marks: from here on
    /// they are the batch's to sync, and only one batch runs at a time.
    fn take_batch(&mut self) -> SyncBatch {
        let mut files: Vec<(Arc<File>, PathBuf)> = self.unsynced.drain(..).collect();
        if self.active_dirty {
            if let (Some(f), Some(seg)) = (&self.active, self.segments.back()) {
                files.push((f.clone(), seg.path.clone()));
            }
            self.active_dirty = false;
        }
        let dir = self.dir_dirty.then(|| self.dir.clone());
        self.dir_dirty = false;
        SyncBatch {
            files,
            dir,
            upto: self.disk_last(),
        }
    }

    /// After a failed fdatasync the page cache state is unknown: the journal
    /// refuses further appends, and records that may have reached the disk
    /// without their write reaching the volume are covered by a resync of
    /// the dirty regions (persisted if the disk still takes it).
    fn sync_failed(&mut self, e: &JournalError) {
        self.failed = Some(e.to_string());
        self.state.needs_resync = true;
        if let Err(state_err) = self.persist_state() {
            tracing::warn!(
                "journal {}: after a failed sync ({e}), needs_resync could not be saved: {state_err}",
                self.dir.display()
            );
        }
    }

    /// Discards every unacknowledged record because `rec_len` more bytes
    /// would exceed the bound; the change log already covers the write.
    fn overflow(&mut self, rec_len: u64) -> Result<(), JournalError> {
        let msg = format!(
            "journal {}: {} unacknowledged bytes plus a {rec_len}-byte record exceed max_bytes = {}; discarding records {}..={} and falling back to the change log (needs_resync set)",
            self.dir.display(),
            self.unacked_bytes,
            self.config.max_bytes,
            self.state.acknowledged + 1,
            self.written
        );
        tracing::warn!(max_bytes = self.config.max_bytes, "{msg}");
        self.state.needs_resync = true;
        self.persist_state()?;
        self.active = None;
        self.active_dirty = false;
        self.unsynced.clear();
        self.mem.clear();
        self.mem_bytes = 0;
        while let Some(seg) = self.segments.pop_front() {
            if let Err(source) = fs::remove_file(&seg.path) {
                if source.kind() != std::io::ErrorKind::NotFound {
                    self.failed = Some(format!(
                        "an overflow could not delete segment {}: {source}",
                        seg.path.display()
                    ));
                    let path = seg.path.clone();
                    self.segments.push_front(seg);
                    self.recount();
                    return Err(JournalError::Io {
                        op: "delete segment on overflow",
                        path,
                        source,
                    });
                }
            }
        }
        self.dir_dirty = true;
        self.unacked_bytes = 0;
        self.discards += 1;
        // The discarded records are gone for readers too (they get a Gap).
        self.visible = self.written;
        Ok(())
    }

    /// The in-memory part of an acknowledgement: raises the acknowledged
    /// seq, takes acknowledged segments out of the index, and rotates the
    /// change log when due. The state snapshot and the files to delete are
    /// left to the caller, to do without the lock (state first).
    fn acknowledge(&mut self, upto: Seq, resync: bool) -> Result<AckWork, JournalError> {
        if upto > self.visible {
            return Err(JournalError::AckBeyondEnd {
                upto,
                last: self.visible,
            });
        }
        let advanced = upto > self.state.acknowledged;
        let mut flags_changed = false;
        self.state.acknowledged = self.state.acknowledged.max(upto);
        let rotate = if resync {
            let (discards, rotations) = self
                .resync
                .take()
                .unwrap_or((self.discards, self.rotations));
            if discards == self.discards && self.state.needs_resync {
                self.state.needs_resync = false;
                flags_changed = true;
            }
            rotations == self.rotations
        } else {
            upto >= self.changelog.boundary()
                && !self.state.needs_resync
                && self.last_rotation.elapsed() >= self.config.changelog_rotation
                && !self.changelog.is_clear()
        };
        let mut work = AckWork::default();
        // Take segments that hold only acknowledged records out of the
        // index, except the active one: a replica that keeps up acknowledges
        // all of it at nearly every batch, and deleting it each time would
        // cost a state persist, an unlink, a new file and two directory
        // syncs per batch. It goes once a newer segment takes over (it is
        // at most segment_bytes), or at the next open.
        let acked = self.state.acknowledged;
        while let Some(front) = self.mem.front() {
            if front.seq > acked {
                break;
            }
            self.mem_bytes -= record::encoded_len(front) as u64;
            self.mem.pop_front();
        }
        while let Some(front) = self.segments.front() {
            let done = match front.last_seq() {
                Some(l) => l <= acked,
                None => self.segments.len() > 1,
            };
            if !done || (self.segments.len() == 1 && self.active.is_some()) {
                break;
            }
            if self.segments.len() == 1 {
                self.active = None;
                self.active_dirty = false;
            }
            if let Some(seg) = self.segments.pop_front() {
                work.delete.push(seg.path);
            }
            self.dir_dirty = true;
        }
        self.recount();
        // The state on disk may lag the acknowledgements (at most
        // ACK_PERSIST_EVERY, or until the next close): after a crash the
        // journal then thinks less acknowledged than the replica has, keeps
        // those records, and replication resumes after the replica's own
        // applied seq anyway. It must be current before segments are
        // deleted, when a flag changes and when the change log rotates.
        if flags_changed
            || (advanced
                && (!work.delete.is_empty()
                    || rotate
                    || self.last_ack_persist.elapsed() >= ACK_PERSIST_EVERY))
        {
            work.state = Some(self.state_snapshot());
            self.last_ack_persist = Instant::now();
        }
        if rotate {
            if let Err(e) = self.changelog.rotate(self.written) {
                // The open change-log file may be one that was replaced.
                self.failed = Some(format!("a change-log rotation failed: {e}"));
                return Err(e);
            }
            self.rotations += 1;
            self.last_rotation = Instant::now();
        }
        Ok(work)
    }
}

#[cfg(test)]
mod tests;
