//! A replica kept in files: one raw image or fixed VHD per volume, plus a
//! redo log and a state file that make every batch all-or-nothing.
//!
//! ```text
//! <dir>/replica.toml    format, volume sizes, applied sequence, consistent, synced
//! <dir>/redo.log        the batch being applied (CRC-checked)
//! <dir>/disk-0.vhd      volume 0 (or disk-0.img when raw)
//! <dir>/disk-1.vhd      ...
//! ```
//!
//! Applying a batch: write it to `redo.log` and sync it, write it to the
//! disks and sync them, then record the new applied sequence. After a crash,
//! opening the replica re-applies a complete redo log that is newer than the
//! state, so the disks are always at a batch boundary.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{unapplied, write_records, ReplicaSink, ReplicaState, SinkError};
use crate::journal::{decode_record, encode_record, Record};
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
const REDO_MAGIC: &[u8; 8] = b"RHAREDO1";
/// magic, payload length (u64), CRC32 of the payload (u32).
const REDO_HEADER: usize = 8 + 8 + 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    format: DiskFormat,
    volume_sizes: Vec<u64>,
    #[serde(flatten)]
    state: ReplicaState,
}

/// A replica whose disks are files in one directory.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    volumes: Vec<Arc<dyn Volume>>,
    file: Mutex<StateFile>,
}

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
            state: ReplicaState::default(),
        };
        write_state(&dir, &file)?;
        Ok(FileSink {
            dir,
            volumes,
            file: Mutex::new(file),
        })
    }

    /// Opens an existing replica, finishing a batch that a crash interrupted.
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
        let sink = FileSink {
            dir,
            volumes,
            file: Mutex::new(file),
        };
        sink.recover()?;
        Ok(sink)
    }

    /// The directory that holds the replica.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of each replica disk, in volume order.
    pub fn disk_paths(&self) -> Vec<PathBuf> {
        let format = self.lock().format;
        (0..self.volumes.len())
            .map(|i| disk_path(&self.dir, i, format))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateFile> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recover(&self) -> Result<(), SinkError> {
        let path = self.dir.join(REDO_FILE);
        let Some(records) = read_redo(&path)? else {
            return Ok(());
        };
        let mut file = self.lock();
        let applied = file.state.applied;
        match unapplied(applied, &records) {
            Ok(todo) if !todo.is_empty() => {
                tracing::warn!(
                    "replica {}: finishing batch {}..={} that was interrupted",
                    self.dir.display(),
                    todo[0].seq,
                    todo[todo.len() - 1].seq
                );
                write_records(&self.volumes, todo)?;
                self.flush_volumes()?;
                file.state.applied = todo[todo.len() - 1].seq;
                write_state(&self.dir, &file)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn flush_volumes(&self) -> Result<(), SinkError> {
        for v in &self.volumes {
            v.flush()?;
        }
        Ok(())
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
        self.lock().state
    }

    fn apply(&self, records: &[Record]) -> Result<Seq, SinkError> {
        let mut file = self.lock();
        let todo = unapplied(file.state.applied, records)?;
        let Some(last) = todo.last() else {
            return Ok(file.state.applied);
        };
        for r in todo {
            super::volume_at(&self.volumes, r.volume)?;
        }
        write_redo(&self.dir.join(REDO_FILE), todo)?;
        write_records(&self.volumes, todo)?;
        self.flush_volumes()?;
        file.state.applied = last.seq;
        write_state(&self.dir, &file)?;
        Ok(last.seq)
    }

    fn begin_sync(&self) -> Result<(), SinkError> {
        let mut file = self.lock();
        file.state.consistent = false;
        write_state(&self.dir, &file)
    }

    fn end_sync(&self, base: Seq) -> Result<(), SinkError> {
        self.flush_volumes()?;
        let mut file = self.lock();
        file.state.applied = base;
        file.state.synced = true;
        write_state(&self.dir, &file)
    }

    fn mark_consistent(&self, seq: Seq) -> Result<(), SinkError> {
        let mut file = self.lock();
        super::check_consistent(&file.state, seq)?;
        file.state.consistent = true;
        write_state(&self.dir, &file)
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

fn write_redo(path: &Path, records: &[Record]) -> Result<(), SinkError> {
    let mut payload = Vec::new();
    for r in records {
        encode_record(r, &mut payload);
    }
    let mut out = Vec::with_capacity(REDO_HEADER + payload.len());
    out.extend_from_slice(REDO_MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io("open", path))?;
    f.write_all(&out).map_err(io("write", path))?;
    f.sync_data().map_err(io("sync", path))
}

/// The records of a complete redo log, or `None` when there is none or it is torn.
fn read_redo(path: &Path) -> Result<Option<Vec<Record>>, SinkError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io("read", path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", path)(e)),
    };
    if bytes.len() < REDO_HEADER || &bytes[..8] != REDO_MAGIC {
        return Ok(None);
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[8..16]);
    let mut crc4 = [0u8; 4];
    crc4.copy_from_slice(&bytes[16..20]);
    let payload = &bytes[REDO_HEADER..];
    if u64::from_le_bytes(len8) != payload.len() as u64
        || crc32fast::hash(payload) != u32::from_le_bytes(crc4)
    {
        tracing::warn!(
            "replica redo log {} is incomplete; the batch it held was never applied",
            path.display()
        );
        return Ok(None);
    }
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
                    reason: "the redo log passed its checksum but holds an undecodable record; report this as a bug".into(),
                })
            }
        }
    }
    Ok(Some(records))
}
