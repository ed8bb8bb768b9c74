//! Azure replicas, bookmarks and recovery points: `rha.BlobStore`,
//! `rha.PageBlobReplica`, `rha.RecoveryPoint`, `rha.recovery_points`
//! (`rha_azure`'s page-blob sink and its points).
//!
//! A bookmark names a point of the master's journal; when the replica has
//! applied exactly that sequence, rha takes a recovery point (a snapshot of
//! every replica disk) that switchover and `vm start` can pick by name.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use rha_azure::{
    list_recovery_points, BlobStore, Endpoint, PageBlobSink, PointSelector, RecoveryPoint,
    SinkConfig, StoreConfig,
};

use crate::errors::{self, to_py};

/// One container of a storage account (or of the Azurite emulator); keys
/// and tokens never show in its `repr`.
#[pyclass(module = "rha", name = "BlobStore", frozen)]
pub(crate) struct PyBlobStore {
    store: BlobStore,
    container: String,
}

#[pymethods]
impl PyBlobStore {
    /// Connects to `container` (created when missing): of the Azurite
    /// emulator at `emulator` (`host:port`), or of storage `account` with
    /// an access `key` or a `sas` token.
    #[new]
    #[pyo3(signature = (container, *, emulator = None, account = None, key = None, sas = None))]
    fn new(
        py: Python<'_>,
        container: String,
        emulator: Option<String>,
        account: Option<String>,
        key: Option<String>,
        sas: Option<String>,
    ) -> PyResult<Self> {
        let endpoint = match (emulator, account, key, sas) {
            (Some(e), None, None, None) => {
                let (host, port) = e.rsplit_once(':').ok_or_else(|| {
                    errors::ValidationError::new_err(format!("emulator `{e}`: give host:port"))
                })?;
                let port = port.parse().map_err(|_| {
                    errors::ValidationError::new_err(format!("emulator `{e}`: bad port"))
                })?;
                Endpoint::Emulator {
                    host: host.to_owned(),
                    port,
                }
            }
            (None, Some(account), Some(key), None) => Endpoint::AccessKey { account, key },
            (None, Some(account), None, Some(token)) => Endpoint::SasToken { account, token },
            _ => {
                return Err(errors::ValidationError::new_err(
                    "give emulator=\"host:port\", or account= with key= or sas=",
                ))
            }
        };
        let config = StoreConfig::new(endpoint, container.clone());
        let store = crate::blocking(py, move || BlobStore::connect(config))?
            .map_err(to_py(errors::cloud))?;
        Ok(PyBlobStore { store, container })
    }

    /// The container's URL.
    #[getter]
    fn url(&self) -> &str {
        self.store.container_url()
    }

    fn __repr__(&self) -> String {
        format!(
            "BlobStore(container={:?}, url={:?})",
            self.container,
            self.store.container_url()
        )
    }
}

/// A recovery point: every replica disk as it was at sequence `seq`.
#[pyclass(module = "rha", name = "RecoveryPoint", frozen)]
pub(crate) struct PyRecoveryPoint {
    point: RecoveryPoint,
}

#[pymethods]
impl PyRecoveryPoint {
    /// Its unique id.
    #[getter]
    fn id(&self) -> &str {
        &self.point.id
    }

    /// The bookmark's name (`latest` for a point taken to resolve `latest`).
    #[getter]
    fn name(&self) -> &str {
        &self.point.name
    }

    /// The journal sequence the disks hold.
    #[getter]
    fn seq(&self) -> u64 {
        self.point.seq
    }

    /// When it was taken, in milliseconds since the Unix epoch.
    #[getter]
    fn created_ms(&self) -> u64 {
        self.point.created_ms
    }

    /// Whether the replica was consistent then.
    #[getter]
    fn consistent(&self) -> bool {
        self.point.consistent
    }

    /// The point as a dict, with one entry per disk snapshot (`volume`, `blob`, `snapshot`, `url`).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = serde_json::to_value(&self.point).map_err(to_py(errors::cloud))?;
        crate::json_to_py(py, &v)
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.point == other.point
    }

    fn __repr__(&self) -> String {
        format!(
            "RecoveryPoint(id={:?}, name={:?}, seq={}, disks={})",
            self.point.id,
            self.point.name,
            self.point.seq,
            self.point.disks.len()
        )
    }
}

fn points(list: Vec<RecoveryPoint>) -> Vec<PyRecoveryPoint> {
    list.into_iter()
        .map(|point| PyRecoveryPoint { point })
        .collect()
}

/// A replica whose disks are page blobs (fixed VHDs) under a prefix of a
/// container, leased by its owner (the appliance's name).
#[pyclass(module = "rha", name = "PageBlobReplica", frozen)]
pub(crate) struct PyPageBlobReplica {
    sink: Mutex<Option<Arc<PageBlobSink>>>,
    prefix: String,
}

impl PyPageBlobReplica {
    fn sink(&self) -> PyResult<Arc<PageBlobSink>> {
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| errors::StateError::new_err("the replica is closed"))
    }

    /// Runs `f` on the sink in a worker thread; errors are cloud errors.
    fn with<T: Send + 'static>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&PageBlobSink) -> Result<T, rha_azure::AzureError> + Send + 'static,
    ) -> PyResult<T> {
        let sink = self.sink()?;
        crate::blocking(py, move || f(&sink))?.map_err(to_py(errors::cloud))
    }
}

#[pymethods]
impl PyPageBlobReplica {
    /// Creates a replica of empty disks of `sizes` bytes (each rounded up
    /// to a whole MiB) under `prefix`, owned by `owner`.
    #[staticmethod]
    fn create(
        py: Python<'_>,
        store: PyRef<'_, PyBlobStore>,
        prefix: String,
        owner: String,
        sizes: Vec<u64>,
    ) -> PyResult<Self> {
        let (store, config) = (store.store.clone(), SinkConfig::new(prefix.clone(), owner));
        let sink = crate::blocking(py, move || PageBlobSink::create(&store, &config, &sizes))?
            .map_err(to_py(errors::cloud))?;
        Ok(PyPageBlobReplica {
            sink: Mutex::new(Some(Arc::new(sink))),
            prefix,
        })
    }

    /// Opens the replica under `prefix` as `owner` (`takeover` breaks
    /// another owner's lease).
    #[staticmethod]
    #[pyo3(signature = (store, prefix, owner, takeover = false))]
    fn open(
        py: Python<'_>,
        store: PyRef<'_, PyBlobStore>,
        prefix: String,
        owner: String,
        takeover: bool,
    ) -> PyResult<Self> {
        let mut config = SinkConfig::new(prefix.clone(), owner);
        config.takeover = takeover;
        let store = store.store.clone();
        let sink = crate::blocking(py, move || PageBlobSink::open(&store, &config))?
            .map_err(to_py(errors::cloud))?;
        Ok(PyPageBlobReplica {
            sink: Mutex::new(Some(Arc::new(sink))),
            prefix,
        })
    }

    /// The disks' blob URLs.
    #[getter]
    fn disk_urls(&self) -> PyResult<Vec<String>> {
        Ok(self.sink()?.disk_urls())
    }

    /// Bookmarks the master's journal at `seq` as `name`: the recovery
    /// point when the replica has applied exactly `seq` (taken now), None
    /// when `seq` is still ahead (taken when a batch reaches it). A
    /// bookmark behind the applied sequence is refused (`CloudError`).
    fn bookmark(
        &self,
        py: Python<'_>,
        name: String,
        seq: u64,
    ) -> PyResult<Option<PyRecoveryPoint>> {
        let point = self.with(py, move |s| s.bookmark(&name, seq))?;
        Ok(point.map(|point| PyRecoveryPoint { point }))
    }

    /// Takes a recovery point named `name` now, at the applied sequence.
    fn create_recovery_point(&self, py: Python<'_>, name: String) -> PyResult<PyRecoveryPoint> {
        let point = self.with(py, move |s| s.create_recovery_point(&name))?;
        Ok(PyRecoveryPoint { point })
    }

    /// Every complete recovery point, oldest first.
    fn recovery_points(&self, py: Python<'_>) -> PyResult<Vec<PyRecoveryPoint>> {
        Ok(points(self.with(py, |s| s.recovery_points())?))
    }

    /// The point `selector` names: `latest`, `seq:N`, or a point's id or name.
    fn resolve_point(&self, py: Python<'_>, selector: String) -> PyResult<PyRecoveryPoint> {
        let selector: PointSelector = match selector.parse() {
            Ok(s) => s,
            Err(never) => match never {},
        };
        let point = self.with(py, move |s| s.resolve_point(&selector))?;
        Ok(PyRecoveryPoint { point })
    }

    /// Deletes the snapshots of `point`.
    fn delete_recovery_point(
        &self,
        py: Python<'_>,
        point: PyRef<'_, PyRecoveryPoint>,
    ) -> PyResult<()> {
        let point = point.point.clone();
        self.with(py, move |s| s.delete_recovery_point(&point))
    }

    /// Flushes, releases the lease and closes the replica.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.sink.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(sink) = taken else { return Ok(()) };
        match Arc::try_unwrap(sink) {
            Ok(sink) => crate::blocking(py, move || sink.close())?.map_err(to_py(errors::cloud)),
            // A worker still holds it (an interrupted call): it closes when that ends.
            Err(_) => Ok(()),
        }
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.close(py)
    }

    fn __repr__(&self) -> String {
        format!("PageBlobReplica(prefix={:?})", self.prefix)
    }
}

/// Every complete recovery point of the replica under `prefix`, oldest
/// first, without opening it (no lease taken).
#[pyfunction(name = "recovery_points")]
fn py_recovery_points(
    py: Python<'_>,
    store: PyRef<'_, PyBlobStore>,
    prefix: String,
) -> PyResult<Vec<PyRecoveryPoint>> {
    let store = store.store.clone();
    let list = crate::blocking(py, move || list_recovery_points(&store, &prefix))?
        .map_err(to_py(errors::cloud))?;
    Ok(points(list))
}

/// Adds the classes and function to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBlobStore>()?;
    m.add_class::<PyRecoveryPoint>()?;
    m.add_class::<PyPageBlobReplica>()?;
    m.add_function(wrap_pyfunction!(py_recovery_points, m)?)?;
    Ok(())
}
