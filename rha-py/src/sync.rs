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
use rha_core::sink::MemSink;
use rha_core::source::StaticSource;
use rha_core::sync::{synchronise, LocalPeer, SyncMethod, SyncOptions, SyncReport};
use rha_core::volume::{open_volume, FileVolume, Volume, VolumeError};

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

/// A volume that refuses every access once `stop` is set: how Ctrl-C stops
/// a synchronisation at its next read or write (of either image).
#[derive(Debug)]
struct Interruptible {
    inner: Arc<dyn Volume>,
    stop: Arc<AtomicBool>,
}

impl Interruptible {
    fn check(&self, op: &'static str, offset: u64) -> Result<(), VolumeError> {
        if !self.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(VolumeError::Io {
            op,
            path: PathBuf::from(self.inner.describe()),
            offset,
            source: std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"),
        })
    }
}

impl Volume for Interruptible {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check("read", offset)?;
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.check("write", offset)?;
        self.inner.write_at(offset, data)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.check("zero", offset)?;
        self.inner.write_zeroes(offset, len)
    }
    fn flush(&self) -> Result<(), VolumeError> {
        self.inner.flush()
    }
    fn describe(&self) -> String {
        self.inner.describe()
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
    stop: &Arc<AtomicBool>,
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
    let guard = |inner| -> Arc<dyn Volume> {
        Arc::new(Interruptible {
            inner,
            stop: stop.clone(),
        })
    };
    let size = master.size();
    let source = StaticSource::new(vec![guard(master)]);
    let sink = MemSink::with_volumes(vec![guard(replica)]);
    let mut peer = LocalPeer::new(&sink);
    let report =
        synchronise(&source, &mut peer, options, &Events::new()).map_err(|e| e.to_string())?;
    Ok((report, size))
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
