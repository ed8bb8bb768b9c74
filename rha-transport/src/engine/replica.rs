//! The replica (appliance) role: keep a session with the master, apply what
//! it sends to the replica disks, watch that it is alive, switch over.
//!
//! A replica scenario lives in `<data>/appliance/<name>/` (scenario file,
//! run state, the identity of the master journal the disks pair with) and
//! its disks in the scenario's `replica.local.data_dir` (relative paths are
//! under the engine's data directory).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rha_core::cloud::{DiskRef, VmSpec};
use rha_core::events::{Event, Events};
use rha_core::scenario::{Check, Product, Replica, Scenario, SwitchoverMode};
use rha_core::sink::{DiskFormat, FileSink, ReplicaSink};
use rha_core::sync::{LocalPeer, SyncPeer};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{EngineError, Shared};
use crate::link::Link;
use crate::wire::{ErrorCode, Intent, Message};

/// What a replica scenario is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Replicating, or trying to reach the master.
    Running,
    /// Stopped by an operator.
    Stopped,
    /// A switchover is under way.
    SwitchingOver,
    /// Switched over: the VM runs from the replica disks.
    SwitchedOver,
}

/// The persisted part of a replica scenario's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Persisted {
    /// Running, stopped or switched over.
    pub run: RunState,
    /// The last switchover's report.
    #[serde(default)]
    pub switchover: Option<serde_json::Value>,
}

/// The report of a switchover (or of `vm start`).
#[derive(Debug, Clone, Serialize)]
pub struct SwitchoverReport {
    /// The VM's id.
    pub vm_id: String,
    /// The VM's name.
    pub vm_name: String,
    /// Its state after start.
    pub vm_state: String,
    /// The journal sequence the replica disks hold.
    pub recovery_point_seq: u64,
    /// When that point was reached (Unix ms), as far as the appliance knows.
    pub recovery_point_time_ms: u64,
    /// Whether the disks are consistent at that point.
    pub consistent: bool,
    /// The outcome of the master-side step.
    pub master_step: String,
    /// Whether the remaining journal was applied first.
    pub journal_applied: bool,
    /// The replica disks the VM uses.
    pub disks: Vec<PathBuf>,
    /// Provider details (launch definition, pid, ...).
    pub details: std::collections::BTreeMap<String, String>,
}

/// One scenario on the appliance.
pub struct ApplianceScenario {
    /// The scenario.
    pub scenario: Scenario,
    text: String,
    dir: PathBuf,
    disks_dir: PathBuf,
    /// Events.
    pub events: Events,
    run: watch::Sender<RunState>,
    link: Mutex<Option<Link>>,
    sink: Mutex<Option<Arc<FileSink>>>,
    master_stats: Mutex<Option<serde_json::Value>>,
    last_alive: Mutex<Instant>,
    not_responding: Mutex<bool>,
    last_event: Arc<Mutex<Option<(u64, String)>>>,
    last_error: Mutex<Option<String>>,
    phase: Mutex<String>,
    switchover: Mutex<Option<serde_json::Value>>,
    applied_at_ms: Arc<Mutex<u64>>,
    apply_done: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for ApplianceScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplianceScenario")
            .field("name", &self.scenario.name)
            .finish()
    }
}

impl ApplianceScenario {
    /// Creates (or reloads) the scenario's state directory.
    pub fn new(
        data_dir: &Path,
        scenario: Scenario,
        text: String,
    ) -> Result<Arc<Self>, EngineError> {
        let Replica::Local(local) = &scenario.replica else {
            return Err(EngineError::Invalid(format!(
                "scenario `{}` replicates to Azure: this engine serves local replicas (the Azure adapter is rha-azure)",
                scenario.name
            )));
        };
        let dir = data_dir.join("appliance").join(&scenario.name);
        let disks_dir = if local.data_dir.is_absolute() {
            local.data_dir.clone()
        } else {
            data_dir.join(&local.data_dir)
        };
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io("create", &dir, e))?;
        super::write_atomic(&dir.join("scenario.toml"), text.as_bytes())?;
        let persisted = read_persisted(&dir);
        let (run, _) = watch::channel(persisted.as_ref().map_or(RunState::Running, |p| p.run));
        let events = Events::new();
        let last_event = Arc::new(Mutex::new(None));
        {
            let rx = events.subscribe();
            let last = last_event.clone();
            std::thread::Builder::new()
                .name(format!("rha-events-{}", scenario.name))
                .spawn(move || {
                    while let Ok(ev) = rx.recv() {
                        if !matches!(
                            ev,
                            Event::SyncProgress { .. } | Event::ReplicationLag { .. }
                        ) {
                            *last.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some((crate::link::now_ms(), ev.to_string()));
                        }
                    }
                })
                .ok();
        }
        Ok(Arc::new(ApplianceScenario {
            scenario,
            text,
            dir,
            disks_dir,
            events,
            run,
            link: Mutex::new(None),
            sink: Mutex::new(None),
            master_stats: Mutex::new(None),
            last_alive: Mutex::new(Instant::now()),
            not_responding: Mutex::new(false),
            last_event,
            last_error: Mutex::new(None),
            phase: Mutex::new("connecting".into()),
            switchover: Mutex::new(persisted.and_then(|p| p.switchover)),
            applied_at_ms: Arc::new(Mutex::new(0)),
            apply_done: Mutex::new(None),
        }))
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.scenario.name
    }

    /// The run state.
    pub fn run_state(&self) -> RunState {
        *self.run.borrow()
    }

    /// Marks the scenario running (persisted), before [`ApplianceScenario::start`].
    pub fn set_running(&self) {
        *self.switchover.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.set_run(RunState::Running);
    }

    fn set_run(&self, s: RunState) {
        self.run.send_replace(s);
        let p = Persisted {
            run: s,
            switchover: self
                .switchover
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        if let Ok(text) = serde_json::to_vec_pretty(&p) {
            if let Err(e) = super::write_atomic(&self.dir.join("state.json"), &text) {
                tracing::warn!(scenario = %self.scenario.name, "{e}");
            }
        }
    }

    fn set_phase(&self, p: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p.into();
    }

    fn set_error(&self, e: String) {
        tracing::warn!(scenario = %self.scenario.name, "{e}");
        self.events.emit(Event::Error { message: e.clone() });
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    /// The current link to the master, if connected.
    pub fn link(&self) -> Option<Link> {
        self.link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|l| l.closed_reason().is_none())
    }

    /// The replica disks (paths), once they exist.
    pub fn disk_paths(&self) -> Vec<PathBuf> {
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.disk_paths())
            .unwrap_or_default()
    }

    fn open_sink(&self, sizes: &[u64]) -> Result<Arc<FileSink>, EngineError> {
        let mut guard = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let sink = if self.disks_dir.join("replica.toml").exists() {
            FileSink::open(&self.disks_dir)
        } else {
            FileSink::create(&self.disks_dir, sizes, DiskFormat::FixedVhd)
        }
        .map_err(|e| EngineError::Sink(e.to_string()))?;
        let sink = Arc::new(sink);
        *guard = Some(sink.clone());
        Ok(sink)
    }

    /// Opens the existing replica disks (for `vm start` after an engine restart).
    fn existing_sink(&self) -> Result<Arc<FileSink>, EngineError> {
        let mut guard = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let sink = Arc::new(FileSink::open(&self.disks_dir).map_err(|e| {
            EngineError::Sink(format!(
                "no replica disks in {}: {e} (has the scenario ever synchronised?)",
                self.disks_dir.display()
            ))
        })?);
        *guard = Some(sink.clone());
        Ok(sink)
    }

    /// The status, as `rha scenario status --json` shows it.
    pub fn status(&self) -> serde_json::Value {
        let link = self.link();
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let replica = sink.as_ref().map(|s| s.state());
        let master = self
            .master_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(serde_json::Value::Null);
        let run = self.run_state();
        let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let not_responding = *self
            .not_responding
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let state = match run {
            RunState::Stopped => "stopped".to_string(),
            RunState::SwitchingOver => "switching_over".into(),
            RunState::SwitchedOver => "switched_over".into(),
            RunState::Running if not_responding => "master_not_responding".into(),
            RunState::Running => match master["master"]["state"].as_str() {
                Some(s @ ("synchronising" | "replicating")) if link.is_some() => s.to_string(),
                _ => phase,
            },
        };
        let m = &master["master"];
        let st = &master["stats"];
        let total = m["sync_bytes_total"].as_u64().unwrap_or(0);
        let done = m["sync_bytes_done"].as_u64().unwrap_or(0);
        let last_event = self
            .last_event
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        serde_json::json!({
            "name": self.scenario.name,
            "role": "replica",
            "state": state,
            "master": {
                "host": self.scenario.master.host,
                "connected": link.is_some(),
                "name": link.as_ref().map(|l| l.peer().name.clone()),
                "silent_ms": link.as_ref().map(|l| l.silent_ms()),
                "nat": self.scenario.master.nat,
            },
            "replica": replica,
            "changed_bytes": st["changed_bytes"].as_u64().unwrap_or(0),
            "sent_bytes": st["sent_bytes"].as_u64().unwrap_or(0),
            "sync": {
                "bytes_done": done,
                "bytes_total": total,
                "percent": if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 },
            },
            "lag": {
                "seconds": m["lag_seconds"].as_f64().unwrap_or(0.0),
                "bytes": m["pending_bytes"].as_u64().unwrap_or(0),
                "records": m["last_seq"].as_u64().unwrap_or(0).saturating_sub(replica.map_or(0, |r| r.applied)),
            },
            "last_event": last_event.map(|(t, e)| serde_json::json!({"time_ms": t, "text": e})),
            "last_error": self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            "switchover": self.switchover.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            "disks": self.disk_paths(),
        })
    }

    /// Starts the scenario's tasks: the session with the master and Is Alive.
    pub fn start(self: &Arc<Self>, shared: Arc<Shared>) {
        tokio::spawn(self.clone().session_loop(shared.clone()));
        tokio::spawn(self.clone().is_alive_loop(shared));
    }

    async fn session_loop(self: Arc<Self>, shared: Arc<Shared>) {
        let mut backoff = Duration::from_millis(250);
        let mut run = self.run.subscribe();
        loop {
            if *run.borrow_and_update() != RunState::Running {
                return;
            }
            self.set_phase("connecting");
            let got = tokio::select! {
                l = self.connect(&shared) => l,
                _ = not_running(&mut run) => return,
            };
            let (link, inbox) = match got {
                Ok(x) => x,
                Err(e) => {
                    *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                    tracing::info!(scenario = %self.scenario.name, "master not reachable: {e}; retrying in {} ms", backoff.as_millis());
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = not_running(&mut run) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            backoff = Duration::from_millis(250);
            match self.clone().session(&shared, link.clone(), inbox).await {
                Ok(()) => {}
                Err(e) => self.set_error(e),
            }
            link.close("session ended");
            *self.link.lock().unwrap_or_else(|e| e.into_inner()) = None;
            let done = self
                .apply_done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(h) = done {
                let _ = h.await;
            }
            if *run.borrow() == RunState::Running {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = not_running(&mut run) => return,
                }
            }
        }
    }

    /// Reaches the master: calls it, or in NAT mode takes a connection it offered.
    async fn connect(&self, shared: &Shared) -> Result<(Link, mpsc::Receiver<Message>), String> {
        let m = &self.scenario.master;
        if m.nat {
            return Ok(shared.take_nat_offer(&m.host).await);
        }
        let addr = format!("{}:{}", bracket(&m.host), m.port);
        shared
            .dial(&addr, Intent::Engine, &self.scenario)
            .await
            .map_err(|e| e.to_string())
    }

    async fn session(
        self: Arc<Self>,
        _shared: &Shared,
        link: Link,
        mut inbox: mpsc::Receiver<Message>,
    ) -> Result<(), String> {
        if !link.peer().is_named(&self.scenario.master.host) && link.peer().cert_names.is_empty() {
            tracing::debug!("plaintext link: the master's identity is its handshake name only");
        }
        let opened = link
            .request("OpenScenario", Duration::from_secs(300), |req| {
                Message::OpenScenario {
                    req,
                    scenario: self.text.clone(),
                }
            })
            .await
            .map_err(|e| format!("the master refused the scenario: {e}"))?;
        let Message::ScenarioOpened {
            journal_id, sizes, ..
        } = opened
        else {
            return Err(link.unexpected("OpenScenario", &opened).to_string());
        };
        link.set_heartbeat(Duration::from_secs(
            self.scenario.is_alive.interval_secs.max(1),
        ));
        let sink = {
            let me = self.clone();
            let sizes = sizes.clone();
            tokio::task::spawn_blocking(move || me.open_sink(&sizes))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };
        let stored = std::fs::read_to_string(self.dir.join("journal-id")).unwrap_or_default();
        let fresh = stored.trim() != journal_id;
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = Some(link.clone());
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.set_phase("connected");
        tracing::info!(scenario = %self.scenario.name, master = %link.peer().name, "session with the master open");
        let (tx, rx) = mpsc::channel::<Message>(64);
        let apply = {
            let link = link.clone();
            let dir = self.dir.clone();
            let events = self.events.clone();
            let applied_at = self.applied_at_ms.clone();
            tokio::task::spawn_blocking(move || {
                apply_loop(
                    &*sink,
                    rx,
                    &link,
                    &dir,
                    &journal_id,
                    fresh,
                    &events,
                    &applied_at,
                )
            })
        };
        *self.apply_done.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::spawn(async move {
                let _ = apply.await;
            }));
        let mut run = self.run.subscribe();
        loop {
            let msg = tokio::select! {
                m = inbox.recv() => m,
                reason = link.closed() => {
                    if self.run_state() != RunState::Running {
                        return Ok(()); // a switchover or a stop closed it
                    }
                    return Err(format!("connection to the master lost: {reason}"));
                }
                // During a switchover the session goes on: the master's
                // last batches still arrive through it.
                _ = ended(&mut run) => {
                    return Ok(());
                }
            };
            let Some(msg) = msg else {
                if self.run_state() != RunState::Running {
                    return Ok(());
                }
                return Err(format!(
                    "connection to the master lost: {}",
                    link.closed_reason().unwrap_or_default()
                ));
            };
            match msg {
                Message::Stats { json } => {
                    if let Ok(v) = serde_json::from_str(&json) {
                        *self.master_stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
                    }
                }
                m @ (Message::State { .. }
                | Message::BeginSync { .. }
                | Message::Hashes { .. }
                | Message::Write { .. }
                | Message::Zero { .. }
                | Message::EndSync { .. }
                | Message::Apply { .. }
                | Message::MarkConsistent { .. }
                | Message::Bookmark { .. }) => {
                    if tx.send(m).await.is_err() {
                        return Err("the replica writer stopped".into());
                    }
                }
                other => {
                    if let Some(req) = other.req() {
                        link.reply_error(
                            req,
                            ErrorCode::BadRequest,
                            format!("{} is not a request the appliance serves", other.name()),
                        )
                        .await;
                    }
                }
            }
        }
    }

    async fn is_alive_loop(self: Arc<Self>, _shared: Arc<Shared>) {
        let ia = self.scenario.is_alive.clone();
        if !ia.enabled {
            return;
        }
        let every = Duration::from_secs(ia.interval_secs.max(1));
        let timeout = Duration::from_secs(ia.timeout_secs.max(ia.interval_secs + 1));
        *self.last_alive.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let mut run = self.run.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = not_running(&mut run) => return,
            }
            if self.run_state() != RunState::Running {
                return;
            }
            let mut alive = true;
            let mut why = Vec::new();
            for check in &ia.checks {
                match check {
                    Check::Heartbeat => match self.link() {
                        Some(l) if l.silent_ms() <= 2 * every.as_millis() as u64 + 1000 => {}
                        Some(l) => {
                            alive = false;
                            why.push(format!("no heartbeat for {} ms", l.silent_ms()));
                        }
                        None => {
                            alive = false;
                            why.push("no connection to the master".to_string());
                        }
                    },
                    Check::Tcp { host, port } => {
                        let addr = format!("{}:{port}", bracket(host));
                        let ok = matches!(
                            tokio::time::timeout(every, tokio::net::TcpStream::connect(&addr))
                                .await,
                            Ok(Ok(_))
                        );
                        if !ok {
                            alive = false;
                            why.push(format!("TCP connect to {addr} failed"));
                        }
                    }
                    Check::Command { program, args } => {
                        let spec = rha_core::scenario::CommandSpec {
                            program: program.clone(),
                            args: args.clone(),
                        };
                        let out = super::master::run_command(&spec, every).await;
                        if !out.ends_with("succeeded") {
                            alive = false;
                            why.push(out);
                        }
                    }
                }
            }
            let since = {
                let mut last = self.last_alive.lock().unwrap_or_else(|e| e.into_inner());
                if alive {
                    *last = Instant::now();
                }
                last.elapsed()
            };
            let was = *self
                .not_responding
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if alive && was {
                *self
                    .not_responding
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = false;
                tracing::info!(scenario = %self.scenario.name, "the master responds again");
            } else if !alive && !was && since >= timeout {
                *self
                    .not_responding
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = true;
                self.events.emit(Event::MasterNotResponding {
                    seconds: since.as_secs_f64(),
                });
                tracing::warn!(scenario = %self.scenario.name, "master not responding: {}", why.join("; "));
                let automatic = self.scenario.switchover.mode == SwitchoverMode::Automatic
                    && self.scenario.product == Product::Ha
                    && matches!(self.scenario.replica, Replica::Local(_));
                if automatic {
                    let me = self.clone();
                    let shared = _shared.clone();
                    tokio::spawn(async move {
                        match me.switchover(&shared, true, false).await {
                            Ok(r) => tracing::info!("automatic switchover done: {}", r),
                            Err((_, e)) => tracing::error!("automatic switchover failed: {e}"),
                        }
                    });
                    return;
                }
            }
        }
    }

    /// Stops replicating (the master keeps its journal and capture state).
    pub async fn stop(&self) {
        if let Some(link) = self.link() {
            let _ = link
                .request("stop", Duration::from_secs(10), |req| Message::Control {
                    req,
                    json: serde_json::json!({"command": "stop_master", "name": self.scenario.name})
                        .to_string(),
                })
                .await;
            link.shutdown("scenario stopped").await;
        }
        self.set_run(RunState::Stopped);
        self.set_phase("stopped");
    }

    /// Switches over: stop replication (after the remaining journal unless
    /// `skip_journal`), run the master-side step, create and start the VM.
    pub async fn switchover(
        self: &Arc<Self>,
        shared: &Shared,
        apply_journal: bool,
        force: bool,
    ) -> Result<serde_json::Value, (ErrorCode, String)> {
        match self.run_state() {
            RunState::Running => {}
            RunState::SwitchingOver => {
                return Err((ErrorCode::WrongState, "a switchover is already under way".into()))
            }
            RunState::SwitchedOver => {
                return Err((ErrorCode::WrongState, "the scenario has already switched over; `rha vm start` starts the VM again".into()))
            }
            RunState::Stopped => {
                return Err((ErrorCode::WrongState, "the scenario is stopped: use `rha vm start --point latest` to start the VM from the replica".into()))
            }
        }
        self.events.emit(Event::SwitchoverStarted {
            scenario: self.scenario.name.clone(),
        });
        let link = self.link();
        self.run.send_replace(RunState::SwitchingOver);
        let mut master_step = "the master was not reachable: its step did not run".to_string();
        if let Some(link) = &link {
            let wants_step = self.scenario.switchover.disable_master_network.is_some();
            match link
                .request("Switchover", Duration::from_secs(3600), |req| {
                    Message::Switchover {
                        req,
                        apply_journal,
                        master_step: wants_step,
                    }
                })
                .await
            {
                Ok(Message::SwitchoverReady {
                    master_step: step, ..
                }) => master_step = step,
                Ok(other) => master_step = format!("unexpected answer {}", other.name()),
                Err(e) => master_step = format!("the master did not complete its part: {e}"),
            }
            link.shutdown("switchover").await;
        }
        // Let the replica writer finish what arrived.
        let done = self
            .apply_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = done {
            let _ = h.await;
        }
        let result = self
            .start_vm(shared, force, apply_journal, master_step)
            .await;
        match result {
            Ok(report) => {
                *self.switchover.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
                self.set_run(RunState::SwitchedOver);
                Ok(report)
            }
            Err(e) => {
                self.set_run(RunState::Stopped);
                Err(e)
            }
        }
    }

    /// Creates and starts the VM from the replica disks as they are.
    pub async fn start_vm(
        self: &Arc<Self>,
        shared: &Shared,
        force: bool,
        journal_applied: bool,
        master_step: String,
    ) -> Result<serde_json::Value, (ErrorCode, String)> {
        let sink = {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.existing_sink())
                .await
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?
                .map_err(|e| (ErrorCode::Replica, e.to_string()))?
        };
        let state = sink.state();
        if !state.consistent && !force {
            return Err((
                ErrorCode::WrongState,
                format!(
                    "the replica is not consistent (synchronisation unfinished; applied up to {}): starting a VM from it may not boot. Finish the synchronisation, or pass --force",
                    state.applied
                ),
            ));
        }
        let paths = sink.disk_paths();
        let replicated: Vec<_> = self
            .scenario
            .volumes
            .iter()
            .filter(|v| !v.exclude)
            .collect();
        let mut disks = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let size = sink
                .volume(i as u32)
                .map(|v| v.size())
                .map_err(|e| (ErrorCode::Replica, e.to_string()))?;
            disks.push(DiskRef {
                name: replicated
                    .get(i)
                    .map(|v| v.id.clone())
                    .unwrap_or_else(|| format!("disk{i}")),
                location: p.display().to_string(),
                size,
                system: replicated.get(i).is_some_and(|v| v.system),
            });
        }
        drop(sink);
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut spec = VmSpec::from_scenario(&self.scenario, disks);
        spec.recovery_point = Some(format!("seq {}", state.applied));
        let provider = shared.provider();
        let vm_name = spec.name.clone();
        // A VM left from an earlier switchover or `vm start` is replaced.
        let _ = provider
            .delete_vm(&rha_core::cloud::VmId(format!("local:{vm_name}")))
            .await;
        let info = provider
            .create_vm(&spec)
            .await
            .map_err(|e| (ErrorCode::Internal, format!("creating the VM failed: {e}")))?;
        self.events.emit(Event::SwitchoverCompleted {
            vm_id: info.id.0.clone(),
            recovery_point: state.applied,
        });
        let report = SwitchoverReport {
            vm_id: info.id.0.clone(),
            vm_name,
            vm_state: info.state.to_string(),
            recovery_point_seq: state.applied,
            recovery_point_time_ms: *self.applied_at_ms.lock().unwrap_or_else(|e| e.into_inner()),
            consistent: state.consistent,
            master_step,
            journal_applied,
            disks: paths,
            details: info.details,
        };
        serde_json::to_value(&report).map_err(|e| (ErrorCode::Internal, e.to_string()))
    }

    /// `rha vm start`: the VM from the replica disks of a stopped scenario.
    pub async fn vm_start(
        self: &Arc<Self>,
        shared: &Shared,
        point: &str,
        force: bool,
    ) -> Result<serde_json::Value, (ErrorCode, String)> {
        if point != "latest" {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "recovery point `{point}` is not available: local replicas keep only `latest`"
                ),
            ));
        }
        if self.run_state() == RunState::Running || self.run_state() == RunState::SwitchingOver {
            return Err((
                ErrorCode::WrongState,
                "the scenario is running: stop it first (`rha scenario stop`), or switch over"
                    .into(),
            ));
        }
        let report = self
            .start_vm(shared, force, false, "not run (vm start)".into())
            .await?;
        *self.switchover.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        let run = self.run_state();
        self.set_run(run);
        Ok(report)
    }
}

fn read_persisted(dir: &Path) -> Option<Persisted> {
    let text = std::fs::read(dir.join("state.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// `[v6]` for IPv6 literals, the host itself otherwise.
pub fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Applies the master's requests to the replica disks, in order.
#[allow(clippy::too_many_arguments)]
fn apply_loop(
    sink: &dyn ReplicaSink,
    mut rx: mpsc::Receiver<Message>,
    link: &Link,
    dir: &Path,
    journal_id: &str,
    mut fresh: bool,
    events: &Events,
    applied_at: &Mutex<u64>,
) {
    let mut peer = LocalPeer::new(sink);
    // The first failure of an unanswered Write/Zero, reported by the next answered request.
    let mut failed: Option<String> = None;
    let reply = |m: Message| {
        let _ = link.send_blocking(m);
    };
    let error = |req: u64, code: ErrorCode, e: String| Message::Error {
        req,
        code,
        message: e,
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Message::State { req } => match peer.state() {
                Ok(s) => reply(Message::StateReply {
                    req,
                    applied: s.applied,
                    consistent: s.consistent,
                    synced: s.synced && !fresh,
                }),
                Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
            },
            Message::BeginSync { req, sizes } => {
                failed = None;
                match peer.begin_sync(&sizes) {
                    Ok(()) => {
                        match super::write_atomic(&dir.join("journal-id"), journal_id.as_bytes()) {
                            Ok(()) => {
                                fresh = false;
                                reply(Message::Ok { req })
                            }
                            Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
                        }
                    }
                    Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
                }
            }
            Message::Hashes { req, volume, nodes } => match peer.hashes(volume, &nodes) {
                Ok(hashes) => reply(Message::HashesReply { req, hashes }),
                Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
            },
            Message::Write {
                volume,
                offset,
                data,
            } if failed.is_none() => {
                if let Err(e) = peer.write(volume, offset, &data) {
                    failed = Some(format!("writing volume {volume} at {offset}: {e}"));
                }
            }
            Message::Zero {
                volume,
                offset,
                len,
            } if failed.is_none() => {
                if let Err(e) = peer.zero(volume, offset, len) {
                    failed = Some(format!("zeroing volume {volume} at {offset}: {e}"));
                }
            }
            // After a failure the rest of the synchronisation's data is
            // skipped; EndSync reports the failure.
            Message::Write { .. } | Message::Zero { .. } => {}
            Message::EndSync { req, base } => {
                if let Some(f) = failed.take() {
                    reply(error(req, ErrorCode::Replica, f));
                    continue;
                }
                match peer.end_sync(base) {
                    Ok(()) => reply(Message::Ok { req }),
                    Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
                }
            }
            Message::Apply { req, records } => match peer.apply(&records) {
                Ok(seq) => {
                    *applied_at.lock().unwrap_or_else(|e| e.into_inner()) = crate::link::now_ms();
                    reply(Message::Applied { req, seq })
                }
                Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
            },
            Message::MarkConsistent { req, seq } => match peer.mark_consistent(seq) {
                Ok(()) => {
                    *applied_at.lock().unwrap_or_else(|e| e.into_inner()) = crate::link::now_ms();
                    events.emit(Event::AllSyncChangesReplicated { seq });
                    reply(Message::Ok { req })
                }
                Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
            },
            Message::Bookmark { req, name, seq } => {
                let line =
                    serde_json::json!({"name": name, "seq": seq, "time_ms": crate::link::now_ms()})
                        .to_string();
                let path = dir.join("bookmarks.jsonl");
                let r = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| {
                        std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes())
                    });
                match r {
                    Ok(()) => reply(Message::Ok { req }),
                    Err(e) => reply(error(
                        req,
                        ErrorCode::Replica,
                        format!("{}: {e}", path.display()),
                    )),
                }
            }
            _ => {}
        }
    }
}

/// Waits until the scenario leaves the running state.
async fn not_running(rx: &mut watch::Receiver<RunState>) {
    let _ = rx.wait_for(|r| *r != RunState::Running).await.map(|_| ());
}

/// Waits until the scenario is stopped or has switched over (not merely
/// switching over: its session still carries the last changes then).
async fn ended(rx: &mut watch::Receiver<RunState>) {
    let _ = rx
        .wait_for(|r| matches!(r, RunState::Stopped | RunState::SwitchedOver))
        .await
        .map(|_| ());
}
