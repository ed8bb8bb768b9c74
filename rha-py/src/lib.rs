//! rha-py: the native part (`rha._rha`) of the `rha` Python package.
//!
//! ```text
//!   import rha ──► rha/__init__.py (Engine, Client, Events: thin Python)
//!                      │
//!                      ▼
//!                  rha._rha (this crate) ──► rha_core (scenarios, sync, events)
//!                                        ──► rha_transport (engines, control API, certificates)
//!                                        ──► rha_azure (cloud accounts, page-blob replicas,
//!                                                       bookmarks, recovery points, log filter)
//! ```
//!
//! The crate only converts: Python arguments into the Rust API's types,
//! results into Python objects, and errors into the exception hierarchy of
//! [`errors`]. No algorithm lives here. Every call that does I/O runs on a
//! worker thread (or the shared tokio runtime) while the calling thread
//! waits with the GIL released, looking at Python's signal handlers every
//! [`POLL`], so Ctrl-C interrupts it cleanly: [`wait_interruptible`].

mod account;
mod engine;
mod errors;
mod replica;
mod scenario;
mod sync;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How often a waiting call looks at Python's signal handlers (Ctrl-C).
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// The tokio runtime the engines and control clients of this process run on.
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rha-py")
        .build()
        .map_err(|e| errors::RhaError::new_err(format!("cannot start the async runtime: {e}")))?;
    Ok(RT.get_or_init(|| rt))
}

/// Waits for the one value `rx` will deliver, with the GIL released.
///
/// Every [`POLL`] it runs Python's signal handlers: when one raises (Ctrl-C
/// raises `KeyboardInterrupt`), `cancel` is called (it stops the worker) and
/// the exception is returned. After `timeout` it returns a `TimeoutError`
/// (and calls `cancel` too). A worker that ends without sending (a panic)
/// is reported as an [`errors::RhaError`].
pub(crate) fn wait_interruptible<T: Send>(
    py: Python<'_>,
    rx: Receiver<T>,
    timeout: Option<Duration>,
    cancel: impl FnOnce(),
) -> PyResult<T> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut rx = rx;
    loop {
        let (got, back) = py.detach(move || (rx.recv_timeout(POLL), rx));
        rx = back;
        match got {
            Ok(v) => return Ok(v),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(errors::RhaError::new_err(
                    "the worker thread ended without an answer (a bug in rha: please report it)",
                ))
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    cancel();
                    return Err(e);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    cancel();
                    return Err(pyo3::exceptions::PyTimeoutError::new_err(format!(
                        "no answer within {:.1} s",
                        timeout.unwrap_or_default().as_secs_f64()
                    )));
                }
            }
        }
    }
}

/// Runs `fut` on the shared runtime and waits for it as [`wait_interruptible`]
/// does; an interrupt or a timeout drops the future.
pub(crate) fn block_on<T, F>(py: Python<'_>, timeout: Option<Duration>, fut: F) -> PyResult<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let task = runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    wait_interruptible(py, rx, timeout, || task.abort())
}

/// Runs the blocking `f` on a worker thread and waits for it as
/// [`wait_interruptible`] does; an interrupt leaves the worker to finish its
/// current call in the background (its result is dropped).
pub(crate) fn blocking<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rha-py-worker".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| errors::RhaError::new_err(format!("cannot start a thread: {e}")))?;
    wait_interruptible(py, rx, None, || {})
}

/// A timeout argument in seconds (`None`: wait as long as it takes).
pub(crate) fn seconds(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds, not {s}"
        ))),
    }
}

/// Converts JSON text into Python objects with the standard `json` module.
pub(crate) fn json_to_py<'py>(
    py: Python<'py>,
    value: &serde_json::Value,
) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?
        .call_method1("loads", (value.to_string(),))
}

/// Converts a JSON-compatible Python object into a [`serde_json::Value`].
pub(crate) fn py_to_json(obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let text: String = obj
        .py()
        .import("json")?
        .call_method1("dumps", (obj,))?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| errors::ValidationError::new_err(e.to_string()))
}

/// Installs a log subscriber writing to standard error at `level` (an
/// `RHA_LOG`-style filter such as `info` or `rha_core=debug`). Debug and trace
/// events of the Azure SDK and HTTP crates are always withheld: they carry
/// bearer tokens and request bodies (`rha_azure::logging::withheld`).
#[pyfunction]
#[pyo3(signature = (level = "info"))]
fn enable_logging(level: &str) -> PyResult<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| errors::ValidationError::new_err(format!("log level `{level}`: {e}")))?;
    let safe = tracing_subscriber::filter::filter_fn(|meta| {
        !rha_azure::logging::withheld(meta.target(), meta.level())
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(safe)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(|e| errors::RhaError::new_err(format!("logging is already set up: {e}")))
}

/// The native module `rha._rha`; the `rha` package re-exports it.
#[pymodule]
fn _rha(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    scenario::register(m)?;
    sync::register(m)?;
    engine::register(m)?;
    account::register(m)?;
    replica::register(m)?;
    m.add_function(wrap_pyfunction!(enable_logging, m)?)?;
    Ok(())
}
