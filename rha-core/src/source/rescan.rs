//! Change capture by periodic rescans, for volumes whose writes cannot be intercepted.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ChangeSource, SourceError};
use crate::hash::{leaf_hash, Hash, HASH_LEN};
use crate::journal::{Appended, Journal, JournalConfig, Record, Recovery};
use crate::volume::{is_zero, Volume, BLOCK_SIZE};
use crate::{Seq, VolumeId};

/// Blocks compared per step of a scan (1 MiB of data, 4 KiB of hashes).
const WINDOW_BLOCKS: usize = 256;

/// Finds changes by hashing every block at an interval and comparing with a
/// hash map persisted on disk (16 bytes per 4 KiB block, never all in memory).
/// Changed blocks are read and journalled, so replication treats them like
/// captured writes. Write order between two scans is not preserved: the
/// replica is consistent at scan boundaries only.
#[derive(Debug)]
pub struct RescanSource {
    volumes: Vec<Arc<dyn Volume>>,
    journal: Journal,
    maps: Vec<(PathBuf, File)>,
    interval: Duration,
    last_scan: Mutex<Option<Instant>>,
}

impl RescanSource {
    /// Opens (or creates) the rescan state in `dir` for `volumes`. A volume
    /// without a hash map gets one built now from its current contents (the
    /// first synchronisation copies those).
    pub fn open(
        dir: impl AsRef<Path>,
        volumes: Vec<Arc<dyn Volume>>,
        config: JournalConfig,
        interval: Duration,
    ) -> Result<(Self, Recovery), SourceError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| SourceError::Io {
            op: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let sizes: Vec<u64> = volumes.iter().map(|v| v.size()).collect();
        let (journal, recovery) = Journal::open(dir.join("journal"), config, &sizes)?;
        let mut maps = Vec::new();
        for (i, v) in volumes.iter().enumerate() {
            let path = dir.join(format!("hashes-{i}.bin"));
            let expected = v.size().div_ceil(BLOCK_SIZE as u64) * HASH_LEN as u64;
            let existed = path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|source| SourceError::Io {
                    op: "open hash map",
                    path: path.clone(),
                    source,
                })?;
            let len = file
                .metadata()
                .map_err(|source| SourceError::Io {
                    op: "inspect hash map",
                    path: path.clone(),
                    source,
                })?
                .len();
            if existed && len != expected {
                return Err(SourceError::Mismatch(format!(
                    "hash map {} is for a volume of another size ({len} bytes of hashes, {expected} expected): \
                     the volume was resized; remove the map and resynchronise",
                    path.display()
                )));
            }
            maps.push((path, file));
            if !existed || len == 0 {
                // A first map records the current contents without journalling them.
                RescanSource::scan_volume_into_map(&**v, &maps[i], None)?;
            }
        }
        Ok((
            RescanSource {
                volumes,
                journal,
                maps,
                interval,
                last_scan: Mutex::new(Some(Instant::now())),
            },
            recovery,
        ))
    }

    /// Scans every volume now and journals each changed block. Returns the number of changed blocks.
    pub fn scan_now(&self) -> Result<u64, SourceError> {
        let mut changed = 0;
        for (i, v) in self.volumes.iter().enumerate() {
            changed += Self::scan_volume_into_map(
                &**v,
                &self.maps[i],
                Some((&self.journal, i as VolumeId)),
            )?;
        }
        *self.last_scan.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        Ok(changed)
    }

    /// The journal the scans write into.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn scan_volume_into_map(
        volume: &dyn Volume,
        (path, map): &(PathBuf, File),
        journal: Option<(&Journal, VolumeId)>,
    ) -> Result<u64, SourceError> {
        let size = volume.size();
        let window = (WINDOW_BLOCKS * BLOCK_SIZE) as u64;
        let mut data = vec![0u8; WINDOW_BLOCKS * BLOCK_SIZE];
        let mut old = vec![0u8; WINDOW_BLOCKS * HASH_LEN];
        let mut new = Vec::with_capacity(WINDOW_BLOCKS * HASH_LEN);
        let mut changed = 0u64;
        let mut at = 0u64;
        while at < size {
            let n = window.min(size - at) as usize;
            volume.read_at(at, &mut data[..n])?;
            let blocks = n.div_ceil(BLOCK_SIZE);
            let map_at = at / BLOCK_SIZE as u64 * HASH_LEN as u64;
            let old = &mut old[..blocks * HASH_LEN];
            read_map(map, path, map_at, old)?;
            new.clear();
            let mut appended = false;
            // Runs of changed blocks become one record each.
            let mut run: Option<Range<usize>> = None;
            for (b, block) in data[..n].chunks(BLOCK_SIZE).enumerate() {
                let h: Hash = leaf_hash(block);
                new.extend_from_slice(&h);
                let differs = old[b * HASH_LEN..(b + 1) * HASH_LEN] != h;
                if differs && journal.is_some() {
                    changed += 1;
                    run = match run {
                        Some(r) if r.end == b && same_kind(&data, &r, block) => {
                            Some(r.start..b + 1)
                        }
                        Some(r) => {
                            appended |= emit(journal, at, &data, r)?;
                            Some(b..b + 1)
                        }
                        None => Some(b..b + 1),
                    };
                } else if let Some(r) = run.take() {
                    appended |= emit(journal, at, &data, r)?;
                }
            }
            if let Some(r) = run.take() {
                appended |= emit(journal, at, &data, r)?;
            }
            if appended {
                if let Some((j, _)) = journal {
                    j.sync()?;
                }
            }
            map.write_all_at(&new, map_at)
                .map_err(|source| SourceError::Io {
                    op: "write hash map",
                    path: path.clone(),
                    source,
                })?;
            at += n as u64;
        }
        map.sync_data().map_err(|source| SourceError::Io {
            op: "sync hash map",
            path: path.clone(),
            source,
        })?;
        Ok(changed)
    }
}

/// Two neighbouring changed blocks share a record when both are zero or both hold data.
fn same_kind(data: &[u8], run: &Range<usize>, block: &[u8]) -> bool {
    let first =
        &data[run.start * BLOCK_SIZE..(run.start * BLOCK_SIZE + BLOCK_SIZE).min(data.len())];
    is_zero(first) == is_zero(block)
}

/// Journals the blocks `run` of the window at `base`; true when something was written.
fn emit(
    journal: Option<(&Journal, VolumeId)>,
    base: u64,
    data: &[u8],
    run: Range<usize>,
) -> Result<bool, SourceError> {
    let Some((journal, id)) = journal else {
        return Ok(false);
    };
    let start = run.start * BLOCK_SIZE;
    let end = (run.end * BLOCK_SIZE).min(data.len());
    let offset = base + start as u64;
    let bytes = &data[start..end];
    let r = if is_zero(bytes) {
        journal.append_zero(id, offset, bytes.len() as u64)?
    } else {
        journal.append(id, offset, bytes)?
    };
    if r == Appended::Overflowed {
        tracing::warn!("rescan: journal bound reached; the changed regions will be resynchronised");
    }
    Ok(true)
}

fn read_map(map: &File, path: &Path, at: u64, out: &mut [u8]) -> Result<(), SourceError> {
    // A map shorter than the volume (first scan) reads as "unknown": no hash matches it.
    let mut done = 0;
    while done < out.len() {
        let n = map
            .read_at(&mut out[done..], at + done as u64)
            .map_err(|source| SourceError::Io {
                op: "read hash map",
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            out[done..].fill(0xff);
            break;
        }
        done += n;
    }
    Ok(())
}

impl ChangeSource for RescanSource {
    fn volumes(&self) -> &[Arc<dyn Volume>] {
        &self.volumes
    }
    fn changes_after(&self, after: Seq, max_bytes: usize) -> Result<Vec<Record>, SourceError> {
        Ok(self.journal.read_after(after, max_bytes)?)
    }
    fn acknowledge(&self, upto: Seq) -> Result<(), SourceError> {
        Ok(self.journal.acknowledge(upto)?)
    }
    fn last_seq(&self) -> Seq {
        self.journal.last_seq()
    }
    fn acknowledged(&self) -> Seq {
        self.journal.acknowledged()
    }
    /// Runs a scan when the interval has passed since the last one.
    fn capture(&self) -> Result<u64, SourceError> {
        let due = self
            .last_scan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|t| t.elapsed() >= self.interval);
        if due {
            self.scan_now()
        } else {
            Ok(0)
        }
    }
    fn needs_resync(&self) -> bool {
        self.journal.needs_resync()
    }
    fn dirty_ranges(&self, volume: VolumeId) -> Option<Vec<Range<u64>>> {
        Some(self.journal.dirty_ranges(volume))
    }
    /// Scans first, so that the dirty regions cover every change made since the last scan.
    fn resync_started(&self) -> Result<Seq, SourceError> {
        self.scan_now()?;
        Ok(self.journal.resync_started()?)
    }
    fn resync_completed(&self, base: Seq) -> Result<(), SourceError> {
        Ok(self.journal.resync_completed(base)?)
    }
    fn pending_bytes(&self) -> u64 {
        self.journal.bytes()
    }
}
