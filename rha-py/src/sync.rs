//! Offline synchronisation of two images: `rha.sync`, `rha.SyncStats`.
//!
//! The same calls as `rha sync` and `examples/sync_images.rs`: the master
//! image as a [`StaticSource`], the replica image in a [`MemSink`], a
//! [`LocalPeer`] between them, and `rha_core::sync::synchronise`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use rha_core::events::Events;
use rha_core::hash::{Hash, Node};
use rha_core::journal::Record;
use rha_core::sink::{MemSink, ReplicaState};
use rha_core::source::StaticSource;
use rha_core::sync::{
    synchronise, LocalPeer, SyncError, SyncMethod, SyncOptions, SyncPeer, SyncReport, Traffic,
};
use rha_core::volume::{open_volume, FileVolume, Volume};
use rha_core::{Seq, VolumeId};

use crate::errors::{self, to_py};

/// What `rha.sync` did.
#[pyclass(module = "rha", name = "SyncStats", frozen, get_all)]
pub(crate) struct PySyncStats {
    /// `"block"` or `"volume"`.
    method: String,
    /// Passes made.
    passes: u32,
    /// Bytes sent to the replica.
    bytes_sent: u64,
    /// Bytes received from the replica (hashes, acknowledgements).
    bytes_received: u64,
    /// Blocks copied (volume-level) or found different (block-level).
    blocks_changed: u64,
    /// Bytes of those blocks.
    changed_bytes: u64,
    /// Master bytes read and compared or copied.
    bytes_scanned: u64,
    /// The master image's size.
    volume_bytes: u64,
    /// Whether the replica was declared consistent.
    consistent: bool,
    /// Wall time of the synchronisation, in seconds.
    seconds: f64,
}

#[pymethods]
impl PySyncStats {
    /// The statistics as a dict (the JSON line `rha sync` prints).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = serde_json::json!({
            "method": self.method,
            "passes": self.passes,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "blocks_changed": self.blocks_changed,
            "changed_bytes": self.changed_bytes,
            "bytes_scanned": self.bytes_scanned,
            "volume_bytes": self.volume_bytes,
            "consistent": self.consistent,
            "seconds": self.seconds,
        });
        crate::json_to_py(py, &v)
    }

    fn __repr__(&self) -> String {
        format!(
            "SyncStats(method={:?}, blocks_changed={}, changed_bytes={}, bytes_sent={}, bytes_scanned={}, seconds={:.3})",
            self.method, self.blocks_changed, self.changed_bytes, self.bytes_sent, self.bytes_scanned, self.seconds
        )
    }
}

impl PySyncStats {
    fn new(r: SyncReport, volume_bytes: u64) -> Self {
        PySyncStats {
            method: r.method,
            passes: r.passes,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            blocks_changed: r.blocks_changed,
            changed_bytes: r.changed_bytes,
            bytes_scanned: r.bytes_scanned,
            volume_bytes,
            consistent: r.consistent,
            seconds: r.seconds,
        }
    }
}

/// A peer that refuses every call once `stop` is set: how Ctrl-C stops a
/// synchronisation between two of its requests.
struct Interruptible<'a, P> {
    peer: P,
    stop: &'a AtomicBool,
}

impl<P: SyncPeer> Interruptible<'_, P> {
    fn check(&self) -> Result<(), SyncError> {
        if self.stop.load(Ordering::Relaxed) {
            Err(SyncError::Link("interrupted".into()))
        } else {
            Ok(())
        }
    }
}

impl<P: SyncPeer> SyncPeer for Interruptible<'_, P> {
    fn state(&mut self) -> Result<ReplicaState, SyncError> {
        self.check()?;
        self.peer.state()
    }
    fn begin_sync(&mut self, sizes: &[u64]) -> Result<(), SyncError> {
        self.check()?;
        self.peer.begin_sync(sizes)
    }
    fn hashes(&mut self, volume: VolumeId, nodes: &[Node]) -> Result<Vec<Hash>, SyncError> {
        self.check()?;
        self.peer.hashes(volume, nodes)
    }
    fn write(&mut self, volume: VolumeId, offset: u64, data: &[u8]) -> Result<(), SyncError> {
        self.check()?;
        self.peer.write(volume, offset, data)
    }
    fn zero(&mut self, volume: VolumeId, offset: u64, len: u64) -> Result<(), SyncError> {
        self.check()?;
        self.peer.zero(volume, offset, len)
    }
    fn end_sync(&mut self, base: Seq) -> Result<(), SyncError> {
        self.check()?;
        self.peer.end_sync(base)
    }
    fn apply(&mut self, records: &[Record]) -> Result<Seq, SyncError> {
        self.check()?;
        self.peer.apply(records)
    }
    fn mark_consistent(&mut self, seq: Seq) -> Result<(), SyncError> {
        self.check()?;
        self.peer.mark_consistent(seq)
    }
    fn traffic(&self) -> Traffic {
        self.peer.traffic()
    }
}

fn open(path: &Path) -> Result<Arc<dyn Volume>, String> {
    open_volume(path)
        .map(Arc::from)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

/// The synchronisation itself, on the worker thread.
fn run(
    src: &Path,
    dst: &Path,
    options: &SyncOptions,
    stop: &AtomicBool,
) -> Result<(SyncReport, u64), String> {
    let master = open(src)?;
    let replica: Arc<dyn Volume> = if dst.exists() {
        open(dst)?
    } else {
        Arc::new(
            FileVolume::create(dst, master.size())
                .map_err(|e| format!("creating {}: {e}", dst.display()))?,
        )
    };
    let source = StaticSource::new(vec![master.clone()]);
    let sink = MemSink::with_volumes(vec![replica]);
    let mut peer = Interruptible {
        peer: LocalPeer::new(&sink),
        stop,
    };
    let report =
        synchronise(&source, &mut peer, options, &Events::new()).map_err(|e| e.to_string())?;
    Ok((report, master.size()))
}

/// Synchronises image `dst` with image `src` (raw images or fixed VHDs), as
/// `rha sync` does, and returns the statistics. `dst` is created (sparse,
/// raw) at `src`'s size when missing. `method` is `"block"` (compare hash
/// trees, send what differs) or `"volume"` (copy every non-zero block);
/// `force_full` compares everything even where the replica's hash cache
/// says it is unchanged. Runs with the GIL released; Ctrl-C stops it.
#[pyfunction]
#[pyo3(signature = (src, dst, method = "block", force_full = false))]
fn sync(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    method: &str,
    force_full: bool,
) -> PyResult<PySyncStats> {
    let method: SyncMethod = method.parse().map_err(to_py(errors::validation))?;
    let mut options = SyncOptions::new(method);
    options.force_full_verification = force_full;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("rha-py-sync".into())
            .spawn(move || {
                let _ = tx.send(run(&src, &dst, &options, &stop));
            })
            .map_err(|e| errors::RhaError::new_err(format!("cannot start a thread: {e}")))?
    };
    let result = crate::wait_interruptible(py, rx, None, || {
        stop.store(true, Ordering::Relaxed);
    });
    if result.is_err() {
        // Interrupted: the worker stops at its next request; wait for it so
        // no write happens after the exception.
        py.detach(|| {
            let _ = worker.join();
        });
    }
    let (report, size) = result?.map_err(errors::sync)?;
    Ok(PySyncStats::new(report, size))
}

/// Adds the function and class to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySyncStats>()?;
    m.add_function(wrap_pyfunction!(sync, m)?)?;
    Ok(())
}
