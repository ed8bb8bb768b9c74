//! Engines, the control API and events: `rha._rha.NativeEngine`,
//! `rha._rha.NativeClient`, `rha.EventStream`, `rha.Event`, and the
//! certificate helpers.
//!
//! ```text
//!  rha.Engine ─► NativeEngine ─► rha_transport::engine::Engine (in this process)
//!  rha.Client ─► NativeClient ─► rha_transport::engine::Client ──TLS──► an engine
//!      │ both: control(request JSON) → reply JSON (ControlRequest's JSON form)
//!      ▼
//!  EventStream ◄── pump thread ◄── Events::subscribe_with_recent() of the
//!                                  scenario's master and appliance sides
//! ```
//!
//! Requests are the JSON form of [`ControlRequest`] (`{"command": "status",
//! "name": ...}`), so the Python layer adds no vocabulary of its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use rha_core::cloud::local::Qemu;
use rha_core::events::Event;
use rha_transport::cert::{self, CertFiles, LeafKind};
use rha_transport::connect::Security;
use rha_transport::engine::{Client, ControlRequest, Engine, EngineConfig};
use rha_transport::tls::{Tls, TlsSettings};

use crate::errors::{self, to_py};

/// How often the event pump looks for new events and scenario sides.
const PUMP: Duration = Duration::from_millis(5);

/// TLS with the certificate `name` from `certs`, or plaintext when asked.
fn security(certs: Option<PathBuf>, name: &str, insecure_plaintext: bool) -> PyResult<Security> {
    if insecure_plaintext {
        tracing::warn!("insecure_plaintext: traffic is neither encrypted nor authenticated");
        return Ok(Security::InsecurePlaintext);
    }
    let Some(dir) = certs else {
        return Err(errors::ValidationError::new_err(
            "no certificates: pass certs=DIR (made with rha.cert_ca and rha.cert_engine or \
             rha.cert_operator, or `rha cert`); insecure_plaintext=True exists for isolated \
             test networks only",
        ));
    };
    let tls = Tls::load(&TlsSettings::in_dir(&dir, name)).map_err(to_py(errors::certificate))?;
    Ok(Security::Tls(Arc::new(tls)))
}

/// Parses a request in [`ControlRequest`]'s JSON form.
fn request(json: &str) -> PyResult<ControlRequest> {
    serde_json::from_str(json)
        .map_err(|e| errors::ValidationError::new_err(format!("not a control request: {e}")))
}

/// An engine's reply, or the exception its `ok: false` stands for.
fn reply(v: serde_json::Value) -> PyResult<String> {
    if v["ok"].as_bool() == Some(true) {
        return Ok(v.to_string());
    }
    Err(errors::refusal(
        v["code"].as_str().unwrap_or("internal"),
        v["error"]
            .as_str()
            .unwrap_or("the engine refused the request"),
    ))
}

/// An engine running in this process (the native half of `rha.Engine`).
#[pyclass(module = "rha._rha", name = "NativeEngine", frozen)]
pub(crate) struct PyEngine {
    engine: Engine,
}

impl Drop for PyEngine {
    fn drop(&mut self) {
        // An engine nobody holds any more stops, in the background.
        if let Ok(rt) = crate::runtime() {
            let engine = self.engine.clone();
            rt.spawn(async move { engine.shutdown().await });
        }
    }
}

#[pymethods]
impl PyEngine {
    /// Starts an engine: listens on `listen` (None: nowhere, a NAT-mode
    /// master), calls the `dial` appliances, resumes the scenarios in
    /// `data_dir`. TLS with certificate `name` from `certs` unless
    /// `insecure_plaintext`. `start_vms` lets switchover start QEMU when it
    /// is installed (otherwise only the VM's launch definition is written).
    #[new]
    #[pyo3(signature = (name, data_dir, listen = Some("127.0.0.1:0".to_owned()), certs = None, insecure_plaintext = false, dial = Vec::new(), start_vms = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        data_dir: PathBuf,
        listen: Option<String>,
        certs: Option<PathBuf>,
        insecure_plaintext: bool,
        dial: Vec<String>,
        start_vms: bool,
    ) -> PyResult<Self> {
        let security = security(certs, &name, insecure_plaintext)?;
        let mut config = EngineConfig::new(name, data_dir, security);
        config.listen = listen;
        config.dial = dial;
        config.qemu = if start_vms { Qemu::Auto } else { Qemu::Never };
        let engine =
            crate::block_on(py, None, Engine::start(config))?.map_err(to_py(errors::engine))?;
        Ok(PyEngine { engine })
    }

    /// The engine's name.
    #[getter]
    fn name(&self) -> &str {
        self.engine.name()
    }

    /// The address it listens on (`127.0.0.1:40123`), or None.
    #[getter]
    fn address(&self) -> Option<String> {
        self.engine.local_addr().map(|a| a.to_string())
    }

    /// Handles a control request (JSON) as a remote operator's would be; returns the reply (JSON).
    #[pyo3(signature = (request_json, timeout = None))]
    fn control(
        &self,
        py: Python<'_>,
        request_json: &str,
        timeout: Option<f64>,
    ) -> PyResult<String> {
        let req = request(request_json)?;
        let engine = self.engine.clone();
        let v = crate::block_on(py, crate::seconds(timeout)?, async move {
            engine.control(req).await
        })?;
        reply(v)
    }

    /// The events of `scenario` on this engine and on `others` (both sides
    /// when they run here), from its latest milestones on.
    #[pyo3(signature = (scenario, others = Vec::new()))]
    fn events(
        &self,
        scenario: String,
        others: Vec<PyRef<'_, PyEngine>>,
    ) -> PyResult<PyEventStream> {
        let mut engines = vec![self.engine.clone()];
        engines.extend(others.iter().map(|o| o.engine.clone()));
        PyEventStream::start(scenario, engines)
    }

    /// Stops everything: listener, sessions, capture.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let engine = self.engine.clone();
        crate::block_on(py, Some(Duration::from_secs(30)), async move {
            engine.shutdown().await
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "NativeEngine(name={:?}, address={:?})",
            self.engine.name(),
            self.address()
        )
    }
}

/// An operator's TLS connection to an engine (the native half of `rha.Client`).
#[pyclass(module = "rha._rha", name = "NativeClient", frozen)]
pub(crate) struct PyClient {
    client: Client,
    address: String,
}

#[pymethods]
impl PyClient {
    /// Connects to the engine at `address` (host:port) as operator `name`
    /// (its certificate `name.pem` in `certs`).
    #[new]
    #[pyo3(signature = (address, certs = None, name = "operator".to_owned(), insecure_plaintext = false, timeout = Some(30.0)))]
    fn new(
        py: Python<'_>,
        address: String,
        certs: Option<PathBuf>,
        name: String,
        insecure_plaintext: bool,
        timeout: Option<f64>,
    ) -> PyResult<Self> {
        let security = security(certs, &name, insecure_plaintext)?;
        let addr = address.clone();
        let client = crate::block_on(py, crate::seconds(timeout)?, async move {
            Client::connect(&addr, &security, &name).await
        })?
        .map_err(errors::client)?;
        Ok(PyClient { client, address })
    }

    /// The engine's name (from its certificate).
    #[getter]
    fn engine_name(&self) -> &str {
        self.client.engine_name()
    }

    /// The address it was reached at.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// Sends a control request (JSON); returns the reply (JSON).
    #[pyo3(signature = (request_json, timeout = Some(300.0)))]
    fn control(
        &self,
        py: Python<'_>,
        request_json: &str,
        timeout: Option<f64>,
    ) -> PyResult<String> {
        let req = request(request_json)?;
        let wait = crate::seconds(timeout)?.unwrap_or(Duration::from_secs(24 * 3600));
        let client = self.client.clone();
        let v = crate::block_on(py, None, async move { client.call(&req, wait).await })?
            .map_err(errors::client)?;
        Ok(v.to_string())
    }

    /// Closes the connection.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.client.clone();
        crate::block_on(py, Some(Duration::from_secs(10)), async move {
            client.close().await
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "NativeClient(address={:?}, engine={:?})",
            self.address,
            self.client.engine_name()
        )
    }
}

/// Something that happened in a scenario.
#[pyclass(module = "rha", name = "Event", frozen)]
pub(crate) struct PyEvent {
    event: Event,
    side: &'static str,
    engine: String,
    time: f64,
}

#[pymethods]
impl PyEvent {
    /// The kind, as in the JSON form: `sync_started`, `sync_progress`,
    /// `sync_completed`, `all_sync_changes_replicated`, `replication_lag`,
    /// `journal_overflow`, `master_not_responding`, `switchover_started`,
    /// `switchover_completed`, `error`.
    #[getter]
    fn kind(&self) -> String {
        serde_json::to_value(&self.event)
            .ok()
            .and_then(|v| v["event"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The event as a sentence.
    #[getter]
    fn message(&self) -> String {
        self.event.to_string()
    }

    /// Its fields (`{"seq": 42}`), as in the JSON form without `event`.
    #[getter]
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut v = serde_json::to_value(&self.event).map_err(to_py(errors::engine))?;
        if let Some(m) = v.as_object_mut() {
            m.remove("event");
        }
        crate::json_to_py(py, &v)
    }

    /// `"master"` or `"appliance"`: which side of the scenario emitted it.
    #[getter]
    fn side(&self) -> &str {
        self.side
    }

    /// The name of the engine it happened on.
    #[getter]
    fn engine(&self) -> &str {
        &self.engine
    }

    /// When it was received, in seconds since the Unix epoch.
    #[getter]
    fn time(&self) -> f64 {
        self.time
    }

    fn __str__(&self) -> String {
        self.event.to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Event(kind={:?}, side={:?}, message={:?})",
            self.kind(),
            self.side,
            self.event.to_string()
        )
    }
}

/// What the pump sends: an event, or the end of the stream.
enum Item {
    Event(PyEvent),
    End,
}

/// One side of the scenario the pump listens to.
struct Attached {
    engine: usize,
    side: &'static str,
    name: String,
    rx: Receiver<Event>,
    open: bool,
}

/// Forwards the events of `scenario`'s sides on `engines` to `tx` until
/// `stop`, until the consumer is gone, or until every side it attached is
/// gone (the scenario was removed or its engine shut down).
fn pump(scenario: &str, engines: &[Engine], tx: &Sender<Item>, stop: &AtomicBool) {
    let mut attached: Vec<Attached> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for (i, e) in engines.iter().enumerate() {
            let has = |side| attached.iter().any(|a| a.engine == i && a.side == side);
            let (has_master, has_appliance) = (has("master"), has("appliance"));
            if !has_master {
                if let Some(m) = e.master_scenario(scenario) {
                    attached.push(Attached {
                        engine: i,
                        side: "master",
                        name: e.name().to_owned(),
                        rx: m.events.subscribe_with_recent(),
                        open: true,
                    });
                }
            }
            if !has_appliance {
                if let Some(a) = e.appliance_scenario(scenario) {
                    attached.push(Attached {
                        engine: i,
                        side: "appliance",
                        name: e.name().to_owned(),
                        rx: a.events.subscribe_with_recent(),
                        open: true,
                    });
                }
            }
        }
        // Masters first: within one round, what the master did (the copy)
        // precedes what the appliance reports of it (consistency).
        attached.sort_by_key(|a| a.side != "master");
        for a in attached.iter_mut().filter(|a| a.open) {
            loop {
                match a.rx.try_recv() {
                    Ok(event) => {
                        let time = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs_f64())
                            .unwrap_or(0.0);
                        let item = Item::Event(PyEvent {
                            event,
                            side: a.side,
                            engine: a.name.clone(),
                            time,
                        });
                        if tx.send(item).is_err() {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        a.open = false;
                        break;
                    }
                }
            }
        }
        if !attached.is_empty() && attached.iter().all(|a| !a.open) {
            let _ = tx.send(Item::End);
            return;
        }
        std::thread::sleep(PUMP);
    }
}

/// The events of one scenario, as a blocking iterator (`for ev in stream`)
/// or one at a time with a timeout (`next(timeout)`); `rha.Events` adds the
/// asyncio iterator.
#[pyclass(module = "rha", name = "EventStream", frozen)]
pub(crate) struct PyEventStream {
    rx: Mutex<Receiver<Item>>,
    stop: Arc<AtomicBool>,
    ended: AtomicBool,
    scenario: String,
}

impl Drop for PyEventStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PyEventStream {
    fn start(scenario: String, engines: Vec<Engine>) -> PyResult<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            let scenario = scenario.clone();
            std::thread::Builder::new()
                .name(format!("rha-py-events-{scenario}"))
                .spawn(move || pump(&scenario, &engines, &tx, &stop))
                .map_err(|e| errors::RhaError::new_err(format!("cannot start a thread: {e}")))?;
        }
        Ok(PyEventStream {
            rx: Mutex::new(rx),
            stop,
            ended: AtomicBool::new(false),
            scenario,
        })
    }

    /// The next event; None at the end, or after `timeout` with nothing.
    fn recv(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Option<PyEvent>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.ended.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let wait = deadline.map_or(crate::POLL, |d| {
                d.saturating_duration_since(Instant::now()).min(crate::POLL)
            });
            let got = py.detach(|| {
                let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
                rx.recv_timeout(wait)
            });
            match got {
                Ok(Item::Event(ev)) => return Ok(Some(ev)),
                Ok(Item::End) | Err(RecvTimeoutError::Disconnected) => {
                    self.ended.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(RecvTimeoutError::Timeout) => {
                    py.check_signals()?;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

#[pymethods]
impl PyEventStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyEvent>> {
        self.recv(py, None)
    }

    /// The next event, waiting at most `timeout` seconds (None: as long as
    /// it takes); None when the time ran out or the stream ended.
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<PyEvent>> {
        self.recv(py, crate::seconds(timeout)?)
    }

    /// Stops the stream; iteration ends.
    fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.ended.store(true, Ordering::Relaxed);
    }

    /// Whether the stream has ended (closed, or every side it followed is gone).
    #[getter]
    fn closed(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// The scenario whose events these are.
    #[getter]
    fn scenario(&self) -> &str {
        &self.scenario
    }

    fn __repr__(&self) -> String {
        format!(
            "EventStream(scenario={:?}, closed={})",
            self.scenario,
            self.closed()
        )
    }
}

fn files(f: CertFiles) -> (PathBuf, PathBuf) {
    (f.cert, f.key)
}

/// Makes a scenario CA in `dir` (`ca.pem`, `ca.key`); returns both paths.
#[pyfunction]
#[pyo3(signature = (dir, common_name = "rha CA", days = 365, force = false))]
fn cert_ca(
    dir: PathBuf,
    common_name: &str,
    days: u32,
    force: bool,
) -> PyResult<(PathBuf, PathBuf)> {
    cert::make_ca(&dir, common_name, days, force)
        .map(files)
        .map_err(to_py(errors::certificate))
}

/// Makes engine certificate `name` (for the addresses `sans`), signed by
/// the CA in `dir` (or `ca_dir`); returns the certificate and key paths.
#[pyfunction]
#[pyo3(signature = (dir, name, sans = Vec::new(), days = 365, force = false, ca_dir = None))]
fn cert_engine(
    py: Python<'_>,
    dir: PathBuf,
    name: &str,
    sans: Vec<String>,
    days: u32,
    force: bool,
    ca_dir: Option<PathBuf>,
) -> PyResult<(PathBuf, PathBuf)> {
    let ca = ca_dir.unwrap_or_else(|| dir.clone());
    py.detach(|| cert::make_leaf(&ca, &dir, name, &sans, LeafKind::Engine, days, force))
        .map(files)
        .map_err(to_py(errors::certificate))
}

/// Makes operator certificate `name` (for scripts and `rha.Client`),
/// signed by the CA in `dir` (or `ca_dir`); returns both paths.
#[pyfunction]
#[pyo3(signature = (dir, name = "operator", days = 365, force = false, ca_dir = None))]
fn cert_operator(
    py: Python<'_>,
    dir: PathBuf,
    name: &str,
    days: u32,
    force: bool,
    ca_dir: Option<PathBuf>,
) -> PyResult<(PathBuf, PathBuf)> {
    let ca = ca_dir.unwrap_or_else(|| dir.clone());
    py.detach(|| cert::make_leaf(&ca, &dir, name, &[], LeafKind::Operator, days, force))
        .map(files)
        .map_err(to_py(errors::certificate))
}

/// Adds the classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyClient>()?;
    m.add_class::<PyEvent>()?;
    m.add_class::<PyEventStream>()?;
    m.add_function(wrap_pyfunction!(cert_ca, m)?)?;
    m.add_function(wrap_pyfunction!(cert_engine, m)?)?;
    m.add_function(wrap_pyfunction!(cert_operator, m)?)?;
    Ok(())
}
