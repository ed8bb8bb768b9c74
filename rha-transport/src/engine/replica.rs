//! The replica (appliance) role: keep a session with the master, apply what
//! it sends to the replica disks, watch that it is alive, switch over.
//!
//! A replica scenario lives in `<data>/appliance/<name>/` (scenario file,
//! run state, the identity of the master journal the disks pair with); its
//! disks are wherever its [`ReplicaTarget`] keeps them: the scenario's
//! `replica.local.data_dir` (relative paths are under the engine's data
//! directory), or Azure page blobs.
//!
//! # Bookmarks
//!
//! `rha scenario bookmark` marks what the **master** holds when it is asked:
//! the appliance holds back the batches still arriving (they keep queuing),
//! asks the master for its newest captured sequence N (after a capture),
//! records the bookmark at N and lets the batches through; the target takes
//! the recovery point when the replica has applied exactly N (at once when
//! it already has). So the point holds every write the master made before
//! the command, however far replication lags. When the master is not
//! connected (or with `--replica`), the point is the replica as it is, at
//! its applied sequence.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rha_core::cloud::{CloudError, DiskRef, VmSpec};
use rha_core::events::{Event, Events};
use rha_core::journal::Record;
use rha_core::scenario::{Check, Product, Replica, Scenario, SwitchoverMode};
use rha_core::sync::{LocalPeer, SyncPeer};
use rha_core::Seq;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::target::{PointChoice, PointInfo, ReplicaDisks, ReplicaTarget, TargetError};
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
    /// The recovery point the VM's disks were made from (`latest`, or a bookmark's point).
    pub recovery_point: PointInfo,
    /// Whether the disks are consistent at that point.
    pub consistent: bool,
    /// The outcome of the master-side step.
    pub master_step: String,
    /// Whether the remaining journal was applied first.
    pub journal_applied: bool,
    /// What the VM's disks were made from, in volume order: the replica
    /// disk files (local), or the recovery point's blob snapshots (Azure).
    pub disks: Vec<String>,
    /// The provider that made the VM (`local`, `azure`).
    pub provider: String,
    /// Provider details (launch definition, pid, ...).
    pub details: std::collections::BTreeMap<String, String>,
}

/// One scenario on the appliance.
pub struct ApplianceScenario {
    /// The scenario.
    pub scenario: Scenario,
    text: String,
    dir: PathBuf,
    target: Arc<dyn ReplicaTarget>,
    /// Events.
    pub events: Events,
    run: watch::Sender<RunState>,
    link: Mutex<Option<Link>>,
    sink: Mutex<Option<Arc<dyn ReplicaDisks>>>,
    apply_tx: Mutex<Option<mpsc::Sender<Item>>>,
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
    /// Creates (or reloads) the scenario's state directory; its disks are
    /// `target`'s.
    pub fn new(
        data_dir: &Path,
        scenario: Scenario,
        text: String,
        target: Arc<dyn ReplicaTarget>,
    ) -> Result<Arc<Self>, EngineError> {
        let dir = data_dir.join("appliance").join(&scenario.name);
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
            target,
            events,
            run,
            link: Mutex::new(None),
            sink: Mutex::new(None),
            apply_tx: Mutex::new(None),
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

    /// Where the replica disks are (local file paths, blob URLs), once open.
    pub fn disk_locations(&self) -> Vec<String> {
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.locations())
            .unwrap_or_default()
    }

    /// The replica disks as paths, once open (file paths for a local
    /// replica; other targets' locations, such as URLs, as they are).
    pub fn disk_paths(&self) -> Vec<PathBuf> {
        self.disk_locations()
            .into_iter()
            .map(PathBuf::from)
            .collect()
    }

    /// The scenario's replica target.
    pub fn target(&self) -> &Arc<dyn ReplicaTarget> {
        &self.target
    }

    /// Opens the replica disks, creating them with the master's volume
    /// sizes when there are none (`None`: open existing ones only).
    fn open_disks(&self, create: Option<Vec<u64>>) -> Result<Arc<dyn ReplicaDisks>, TargetError> {
        let mut guard = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let disks = self.target.open(create)?;
        *guard = Some(disks.clone());
        Ok(disks)
    }

    /// The status, as `rha scenario status --json` shows it.
    pub fn status(&self) -> serde_json::Value {
        let link = self.link();
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let replica = sink.as_ref().map(|s| s.sink().state());
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
                "compression": link.as_ref().map(|l| l.compression().name()),
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
            "disks": self.disk_locations(),
            "target": {
                "kind": self.target.kind(),
                "location": self.target.location(),
                "keeps_points": self.target.keeps_points(),
            },
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
            self.end_apply();
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

    /// Forgets the replica writer's queue, so that it ends once the session's
    /// messages are applied.
    fn end_apply(&self) {
        *self.apply_tx.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Reaches the master: calls it, or in NAT mode takes a connection it offered.
    async fn connect(&self, shared: &Shared) -> Result<(Link, mpsc::Receiver<Message>), String> {
        let m = &self.scenario.master;
        if m.nat {
            let (link, inbox) = shared.take_nat_offer(&m.host).await;
            shared.adopt_compression(&link, &self.scenario);
            return Ok((link, inbox));
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
            tokio::task::spawn_blocking(move || me.open_disks(Some(sizes)))
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
        let (tx, rx) = mpsc::channel::<Item>(64);
        *self.apply_tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
        let apply = {
            let link = link.clone();
            let dir = self.dir.clone();
            let events = self.events.clone();
            let applied_at = self.applied_at_ms.clone();
            tokio::task::spawn_blocking(move || {
                let reply = |m: Message| {
                    let _ = link.send_blocking(m);
                };
                apply_loop(
                    &*sink,
                    rx,
                    &reply,
                    &ApplyContext {
                        dir: &dir,
                        journal_id: &journal_id,
                        fresh,
                        events: &events,
                        applied_at: &applied_at,
                    },
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
                    if tx.send(Item::Wire(m)).await.is_err() {
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
                    tokio::spawn(async move {
                        match me.switchover(true, false, &PointChoice::Latest).await {
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
    /// `skip_journal`), run the master-side step, create and start the VM
    /// from the recovery point `point` (`latest`: the replica as it then is).
    pub async fn switchover(
        self: &Arc<Self>,
        apply_journal: bool,
        force: bool,
        point: &PointChoice,
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
        self.end_apply();
        let done = self
            .apply_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = done {
            let _ = h.await;
        }
        let result = self
            .start_vm(force, apply_journal, master_step, point)
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

    /// Creates and starts the VM from the recovery point `point` of the
    /// replica disks (`latest`: the disks as they are).
    pub async fn start_vm(
        self: &Arc<Self>,
        force: bool,
        journal_applied: bool,
        master_step: String,
        point: &PointChoice,
    ) -> Result<serde_json::Value, (ErrorCode, String)> {
        let resolved = {
            let me = self.clone();
            let choice = point.clone();
            tokio::task::spawn_blocking(move || me.resolve_for_vm(&choice, force))
                .await
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?
                .map_err(|e| (e.code(), e.to_string()))?
        };
        let Resolved {
            point,
            sizes,
            applied,
        } = resolved;
        if !point.consistent && !force {
            return Err((
                ErrorCode::WrongState,
                format!(
                    "the replica is not consistent (synchronisation unfinished; applied up to {}): starting a VM from it may not boot. Finish the synchronisation, or pass --force",
                    point.seq
                ),
            ));
        }
        let replicated: Vec<_> = self
            .scenario
            .volumes
            .iter()
            .filter(|v| !v.exclude)
            .collect();
        let disks: Vec<DiskRef> = point
            .disks
            .iter()
            .enumerate()
            .map(|(i, location)| DiskRef {
                name: replicated
                    .get(i)
                    .map(|v| v.id.clone())
                    .unwrap_or_else(|| format!("disk{i}")),
                location: location.clone(),
                size: sizes.get(i).copied().unwrap_or(0),
                system: replicated.get(i).is_some_and(|v| v.system),
            })
            .collect();
        // The local provider finalises the disk files: nothing may hold them open.
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut spec = VmSpec::from_scenario(&self.scenario, disks);
        spec.recovery_point = Some(format!("{} seq {}", point.name, point.seq));
        let provider = self
            .target
            .provider()
            .map_err(|e| (e.code(), e.to_string()))?;
        let vm_name = spec.name.clone();
        // A VM left from an earlier switchover or `vm start` is replaced
        // where the target says so (local); a cloud VM is kept.
        if let Some(old) = self.target.replaced_vm(&vm_name) {
            let _ = provider.delete_vm(&old).await;
        }
        let info = provider.create_vm(&spec).await.map_err(|e| {
            let code = match &e {
                CloudError::AlreadyExists { .. } => ErrorCode::WrongState,
                CloudError::Invalid(_) | CloudError::Disk { .. } => ErrorCode::BadRequest,
                _ => ErrorCode::Internal,
            };
            (code, format!("creating the VM failed: {e}"))
        })?;
        self.events.emit(Event::SwitchoverCompleted {
            vm_id: info.id.0.clone(),
            recovery_point: point.seq,
        });
        let time_ms = if point.created_ms > 0 {
            point.created_ms
        } else {
            *self.applied_at_ms.lock().unwrap_or_else(|e| e.into_inner())
        };
        let report = SwitchoverReport {
            vm_id: info.id.0.clone(),
            vm_name,
            vm_state: info.state.to_string(),
            recovery_point_seq: point.seq,
            recovery_point_time_ms: time_ms,
            consistent: point.consistent,
            master_step,
            journal_applied,
            disks: point.disks.clone(),
            provider: provider.kind().to_owned(),
            recovery_point: point,
            details: info.details,
        };
        tracing::info!(scenario = %self.scenario.name, vm = %report.vm_id, seq = applied, "VM created");
        serde_json::to_value(&report).map_err(|e| (ErrorCode::Internal, e.to_string()))
    }

    /// The point a VM is made from, with the disks' sizes (blocking).
    fn resolve_for_vm(&self, choice: &PointChoice, force: bool) -> Result<Resolved, TargetError> {
        let disks = self.open_disks(None)?;
        let sink = disks.sink();
        let state = sink.state();
        let mut sizes = Vec::new();
        for i in 0..sink.volume_count() {
            let v = sink.volume(i as u32).map_err(|e| TargetError::Storage {
                location: self.target.location(),
                reason: e.to_string(),
            })?;
            sizes.push(v.size());
        }
        let point = match disks.resolve(choice) {
            Ok(p) => p,
            // --force: the disks as they are, consistent or not.
            Err(TargetError::NotConsistent(_)) if force && *choice == PointChoice::Latest => {
                PointInfo {
                    id: "latest".into(),
                    name: "latest".into(),
                    seq: state.applied,
                    created_ms: 0,
                    consistent: false,
                    disks: disks.locations(),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(Resolved {
            point,
            sizes,
            applied: state.applied,
        })
    }

    /// `rha vm start`: the VM from a recovery point of a stopped scenario's replica.
    pub async fn vm_start(
        self: &Arc<Self>,
        point: &PointChoice,
        force: bool,
    ) -> Result<serde_json::Value, (ErrorCode, String)> {
        if self.run_state() == RunState::Running || self.run_state() == RunState::SwitchingOver {
            return Err((
                ErrorCode::WrongState,
                "the scenario is running: stop it first (`rha scenario stop`), or switch over"
                    .into(),
            ));
        }
        let report = self
            .start_vm(force, false, "not run (vm start)".into(), point)
            .await?;
        *self.switchover.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        let run = self.run_state();
        self.set_run(run);
        Ok(report)
    }

    /// The replica's recovery points, oldest first (`rha scenario points`).
    pub async fn points(self: &Arc<Self>) -> Result<serde_json::Value, (ErrorCode, String)> {
        let me = self.clone();
        let points = tokio::task::spawn_blocking(move || me.open_disks(None)?.points())
            .await
            .map_err(|e| (ErrorCode::Internal, e.to_string()))?
            .map_err(|e| (e.code(), e.to_string()))?;
        Ok(serde_json::json!({
            "name": self.scenario.name,
            "target": self.target.kind(),
            "keeps_points": self.target.keeps_points(),
            "points": points,
        }))
    }

    /// `rha scenario bookmark`: a recovery point named `name` (see the
    /// module's documentation). `at_replica` takes it at the replica's
    /// applied sequence instead of the master's; `wait` is how long to wait
    /// for the replica to reach the master's sequence before answering that
    /// the point is pending.
    pub async fn bookmark(
        self: &Arc<Self>,
        name: &str,
        at_replica: bool,
        wait: Duration,
    ) -> Result<serde_json::Value, (ErrorCode, String)> {
        check_bookmark_name(name).map_err(|e| (ErrorCode::BadRequest, e))?;
        if !self.target.keeps_points() {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "scenario `{}` replicates to {} replica disks, which keep only `latest` (the disks as they are): bookmarks need a replica that keeps recovery points, such as Azure's blob snapshots",
                    self.scenario.name,
                    self.target.kind()
                ),
            ));
        }
        if self.run_state() == RunState::SwitchingOver {
            return Err((
                ErrorCode::WrongState,
                "a switchover is under way: bookmark afterwards".into(),
            ));
        }
        let tx = self
            .apply_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let link = self.link();
        let replicating = self.run_state() == RunState::Running && tx.is_some();
        if replicating {
            let consistent = self
                .sink
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|d| d.sink().state().consistent);
            if !consistent {
                return Err((
                    ErrorCode::WrongState,
                    "the replica is being synchronised (not consistent): a recovery point now would not boot; bookmark once the scenario is replicating".into(),
                ));
            }
        }
        let (at, note, result) = match (tx, link) {
            (Some(tx), Some(link)) if replicating && !at_replica => {
                let r = self.bookmark_at_master(&tx, &link, name).await?;
                ("master", None, r)
            }
            (Some(tx), _) if replicating => {
                let (done, rx) = oneshot::channel();
                tx.send(Item::AtApplied {
                    name: name.to_owned(),
                    done,
                })
                .await
                .map_err(|_| (ErrorCode::Replica, "the replica writer stopped".to_string()))?;
                let r = rx
                    .await
                    .map_err(|_| (ErrorCode::Replica, "the replica writer stopped".to_string()))?;
                let note = (!at_replica).then(|| "the master is not connected: the point holds the replica as it is, which may miss changes the master made since".to_string());
                ("replica", note, r)
            }
            _ => {
                let me = self.clone();
                let n = name.to_owned();
                let r = tokio::task::spawn_blocking(move || {
                    let disks = me.open_disks(None)?;
                    let seq = disks.sink().state().applied;
                    disks.bookmark(&n, seq).map(|p| (seq, p))
                })
                .await
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
                let note = (!at_replica).then(|| {
                    "the scenario is not replicating: the point holds the replica as it is"
                        .to_string()
                });
                ("replica", note, r)
            }
        };
        let (seq, point) = result.map_err(|e| (e.code(), e.to_string()))?;
        let point = match point {
            Some(p) => Some(p),
            None => self.wait_for_point(name, seq, wait).await,
        };
        Ok(serde_json::json!({
            "name": self.scenario.name,
            "bookmark": name,
            "seq": seq,
            "at": at,
            "taken": point.is_some(),
            "point": point,
            "note": note.or_else(|| point.is_none().then(|| format!(
                "pending: the recovery point is taken when the replica has applied sequence {seq}"
            ))),
        }))
    }

    /// Holds the replica writer, asks the master for its sequence, records
    /// the bookmark there, releases the writer.
    async fn bookmark_at_master(
        &self,
        tx: &mpsc::Sender<Item>,
        link: &Link,
        name: &str,
    ) -> Result<Result<(Seq, Option<PointInfo>), TargetError>, (ErrorCode, String)> {
        let stopped = || (ErrorCode::Replica, "the replica writer stopped".to_string());
        tx.send(Item::Hold).await.map_err(|_| stopped())?;
        let json =
            serde_json::json!({"command": "master_seq", "name": self.scenario.name}).to_string();
        let asked = link
            .request("MasterSeq", Duration::from_secs(60), |req| {
                Message::Control { req, json }
            })
            .await;
        let seq = match asked {
            Ok(Message::ControlReply { json, .. }) => {
                let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                match v["seq"].as_u64() {
                    Some(s) if v["ok"].as_bool() == Some(true) => Ok(s),
                    _ => Err(format!(
                        "the master did not say its sequence: {}",
                        v["error"].as_str().unwrap_or("no answer")
                    )),
                }
            }
            Ok(other) => Err(format!("the master answered {}", other.name())),
            Err(e) => Err(format!("the master did not answer: {e}")),
        };
        let seq = match seq {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Item::Release(None)).await;
                return Err((
                    ErrorCode::Master,
                    format!("{e}; retry, or pass --replica to mark the replica as it is"),
                ));
            }
        };
        let (done, rx) = oneshot::channel();
        tx.send(Item::Release(Some(BookmarkAsk {
            name: name.to_owned(),
            seq,
            done,
        })))
        .await
        .map_err(|_| stopped())?;
        let r = rx.await.map_err(|_| stopped())?;
        Ok(r.map(|p| (seq, p)))
    }

    /// Waits up to `wait` for the point of bookmark `name` at `seq`.
    async fn wait_for_point(&self, name: &str, seq: Seq, wait: Duration) -> Option<PointInfo> {
        let started = Instant::now();
        loop {
            let disks = self
                .sink
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()?;
            let applied = disks.sink().state().applied;
            if applied >= seq {
                let found = tokio::task::spawn_blocking(move || disks.points())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .and_then(|ps| {
                        ps.into_iter()
                            .filter(|p| p.name == name && p.seq == seq)
                            .max_by_key(|p| p.created_ms)
                    });
                if found.is_some() {
                    return found;
                }
            }
            if started.elapsed() >= wait {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A point resolved for a VM.
struct Resolved {
    point: PointInfo,
    sizes: Vec<u64>,
    applied: Seq,
}

/// Bookmark names: what a blob's metadata and a command line carry well.
fn check_bookmark_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(format!(
            "bookmark name `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`"
        ));
    }
    if name.eq_ignore_ascii_case("latest") || name.starts_with("seq:") {
        return Err(format!(
            "bookmark name `{name}` is reserved (`latest` and `seq:N` choose points): choose another"
        ));
    }
    Ok(())
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

/// What the replica writer is given, in order: the master's messages, and
/// the appliance's own bookmark steps between them.
pub(crate) enum Item {
    /// A message of the master's.
    Wire(Message),
    /// Apply nothing more until [`Item::Release`]; messages keep queuing.
    Hold,
    /// Record a bookmark (when asked), then apply what queued meanwhile.
    Release(Option<BookmarkAsk>),
    /// A bookmark at the sequence applied when this item is reached.
    AtApplied {
        /// The bookmark's name.
        name: String,
        /// Where the sequence and the point (if taken) go.
        done: oneshot::Sender<Result<(Seq, Option<PointInfo>), TargetError>>,
    },
}

/// A bookmark to record at a sequence the master named.
pub(crate) struct BookmarkAsk {
    name: String,
    seq: Seq,
    done: oneshot::Sender<Result<Option<PointInfo>, TargetError>>,
}

/// Most bytes of data [`Writer::apply_group`] applies as one batch.
const GROUP_BYTES: u64 = 64 << 20;

/// What the replica writer needs besides the disks.
struct ApplyContext<'a> {
    dir: &'a Path,
    journal_id: &'a str,
    fresh: bool,
    events: &'a Events,
    applied_at: &'a Mutex<u64>,
}

/// Applies the master's requests to the replica disks, in order, answering
/// through `reply`.
fn apply_loop(
    disks: &dyn ReplicaDisks,
    mut rx: mpsc::Receiver<Item>,
    reply: &dyn Fn(Message),
    ctx: &ApplyContext<'_>,
) {
    let mut w = Writer {
        peer: LocalPeer::new(disks.sink()),
        disks,
        failed: None,
        fresh: ctx.fresh,
        reply,
        ctx,
    };
    let mut held: Option<VecDeque<Message>> = None;
    // An item taken from the channel while grouping batches, to handle next.
    let mut next: Option<Item> = None;
    while let Some(item) = next.take().or_else(|| rx.blocking_recv()) {
        match item {
            Item::Wire(Message::Apply { req, records }) if held.is_none() => {
                next = w.apply_group(req, records, &mut rx);
            }
            Item::Wire(m) => match held.as_mut() {
                Some(q) => q.push_back(m),
                None => w.handle(m),
            },
            Item::Hold => {
                held.get_or_insert_with(VecDeque::new);
            }
            Item::Release(ask) => {
                if let Some(a) = ask {
                    let _ = a.done.send(disks.bookmark(&a.name, a.seq));
                }
                for m in held.take().unwrap_or_default() {
                    w.handle(m);
                }
            }
            Item::AtApplied { name, done } => {
                let seq = disks.sink().state().applied;
                let _ = done.send(disks.bookmark(&name, seq).map(|p| (seq, p)));
            }
        }
    }
    // The session ended while held: what arrived is still applied (it is
    // idempotent, and a switchover wants every last batch).
    for m in held.take().unwrap_or_default() {
        w.handle(m);
    }
}

/// The replica writer's state across messages.
struct Writer<'a> {
    peer: LocalPeer<'a>,
    disks: &'a dyn ReplicaDisks,
    /// The first failure of an unanswered Write/Zero, reported by the next answered request.
    failed: Option<String>,
    fresh: bool,
    reply: &'a dyn Fn(Message),
    ctx: &'a ApplyContext<'a>,
}

impl Writer<'_> {
    /// Applies the `Apply` batch `req` together with the `Apply` batches
    /// already queued behind it that continue it (group commit: one redo
    /// log entry and one fdatasync for all, up to [`GROUP_BYTES`] of data),
    /// then answers each. The master keeps several batches in flight
    /// (`sync::Pipeline`), so under load they queue while one is applied.
    /// Returns an item taken from `rx` that is not part of the group.
    fn apply_group(
        &mut self,
        req: u64,
        mut records: Vec<Record>,
        rx: &mut mpsc::Receiver<Item>,
    ) -> Option<Item> {
        // Each batch's last seq (0 for an empty one).
        let last_of = |r: &[Record]| r.last().map_or(0, |x| x.seq);
        let mut batches = vec![(req, last_of(&records))];
        let mut bytes: u64 = records.iter().map(Record::data_bytes).sum();
        let mut leftover = None;
        while bytes < GROUP_BYTES {
            let Ok(item) = rx.try_recv() else { break };
            match item {
                Item::Wire(Message::Apply { req, records: more })
                    if records
                        .last()
                        .is_some_and(|l| more.first().is_some_and(|f| f.seq == l.seq + 1)) =>
                {
                    bytes += more.iter().map(Record::data_bytes).sum::<u64>();
                    batches.push((req, last_of(&more)));
                    records.extend(more);
                }
                other => {
                    leftover = Some(other);
                    break;
                }
            }
        }
        self.apply_batches(&batches, &records);
        leftover
    }

    /// Applies `records`, the batches `batches` (each a request and its
    /// last seq) in order, as one, and answers each request: every batch
    /// but the last with its own last seq, the last (as a single batch
    /// always was) with the sequence the replica now holds.
    fn apply_batches(&mut self, batches: &[(u64, Seq)], records: &[Record]) {
        match self.peer.apply(records) {
            Ok(seq) => {
                *self
                    .ctx
                    .applied_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = crate::link::now_ms();
                for (i, &(req, last)) in batches.iter().enumerate() {
                    let at = if i + 1 == batches.len() { seq } else { last };
                    (self.reply)(Message::Applied { req, seq: at });
                }
            }
            Err(e) => {
                for &(req, _) in batches {
                    (self.reply)(Message::Error {
                        req,
                        code: ErrorCode::Replica,
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    fn handle(&mut self, msg: Message) {
        let msg = match msg {
            Message::Apply { req, records } => {
                let last = records.last().map_or(0, |r| r.seq);
                return self.apply_batches(&[(req, last)], &records);
            }
            other => other,
        };
        let error = |req: u64, code: ErrorCode, e: String| Message::Error {
            req,
            code,
            message: e,
        };
        let reply = self.reply;
        let peer = &mut self.peer;
        let failed = &mut self.failed;
        let fresh = &mut self.fresh;
        let ctx = self.ctx;
        let (dir, journal_id, events, applied_at) =
            (ctx.dir, ctx.journal_id, ctx.events, ctx.applied_at);
        match msg {
            Message::State { req } => match peer.state() {
                Ok(s) => reply(Message::StateReply {
                    req,
                    applied: s.applied,
                    consistent: s.consistent,
                    synced: s.synced && !*fresh,
                }),
                Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
            },
            Message::BeginSync { req, sizes } => {
                *failed = None;
                match peer.begin_sync(&sizes) {
                    Ok(()) => {
                        match super::write_atomic(&dir.join("journal-id"), journal_id.as_bytes()) {
                            Ok(()) => {
                                *fresh = false;
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
                    *failed = Some(format!("writing volume {volume} at {offset}: {e}"));
                }
            }
            Message::Zero {
                volume,
                offset,
                len,
            } if failed.is_none() => {
                if let Err(e) = peer.zero(volume, offset, len) {
                    *failed = Some(format!("zeroing volume {volume} at {offset}: {e}"));
                }
            }
            // After a failure the rest of the synchronisation's data is
            // skipped; EndSync reports the failure.
            Message::Write { .. } | Message::Zero { .. } => {}
            Message::EndSync { req, base } => {
                if let Some(f) = failed.take() {
                    reply(error(req, ErrorCode::Replica, f));
                    return;
                }
                match peer.end_sync(base) {
                    Ok(()) => reply(Message::Ok { req }),
                    Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
                }
            }
            Message::MarkConsistent { req, seq } => match peer.mark_consistent(seq) {
                Ok(()) => {
                    *applied_at.lock().unwrap_or_else(|e| e.into_inner()) = crate::link::now_ms();
                    events.emit(Event::AllSyncChangesReplicated { seq });
                    reply(Message::Ok { req })
                }
                Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
            },
            Message::Bookmark { req, name, seq } => match self.disks.bookmark(&name, seq) {
                Ok(_) => reply(Message::Ok { req }),
                Err(e) => reply(error(req, ErrorCode::Replica, e.to_string())),
            },
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::BTreeMap;

    use rha_core::cloud::{CloudProvider, VmId, VmInfo, VmState};
    use rha_core::journal::{Payload, Record};
    use rha_core::scenario::Template;
    use rha_core::sink::{MemSink, ReplicaSink, ReplicaState, SinkError};
    use rha_core::volume::Volume;
    use rha_core::VolumeId;

    use super::super::target::MockReplicaTarget;
    use super::*;

    mockall::mock! {
        Provider {}
        #[async_trait::async_trait]
        impl CloudProvider for Provider {
            fn kind(&self) -> &'static str;
            async fn verify(&self, vm: &VmSpec) -> Result<Vec<String>, CloudError>;
            async fn create_vm(&self, vm: &VmSpec) -> Result<VmInfo, CloudError>;
            async fn vm_state(&self, id: &VmId) -> Result<VmState, CloudError>;
            async fn stop_vm(&self, id: &VmId) -> Result<(), CloudError>;
            async fn delete_vm(&self, id: &VmId) -> Result<(), CloudError>;
        }
    }

    /// Disks in memory that keep points: a bookmark notes the applied
    /// sequence it was recorded at.
    struct Disks {
        sink: MemSink,
        bookmarks: Mutex<Vec<(String, Seq, Seq)>>,
        points: Vec<PointInfo>,
    }

    impl Disks {
        fn new(points: Vec<PointInfo>) -> Disks {
            let sink = MemSink::new(&[1 << 20]).unwrap();
            sink.begin_sync().unwrap();
            sink.end_sync(0).unwrap();
            sink.mark_consistent(0).unwrap();
            Disks {
                sink,
                bookmarks: Mutex::new(Vec::new()),
                points,
            }
        }
    }

    impl ReplicaDisks for Disks {
        fn sink(&self) -> &dyn ReplicaSink {
            &self.sink
        }
        fn locations(&self) -> Vec<String> {
            vec!["https://acct.blob.core.windows.net/c/s/disk-0.vhd".into()]
        }
        fn bookmark(&self, name: &str, seq: Seq) -> Result<Option<PointInfo>, TargetError> {
            let applied = self.sink.state().applied;
            self.bookmarks
                .lock()
                .unwrap()
                .push((name.to_owned(), seq, applied));
            Ok(None)
        }
        fn points(&self) -> Result<Vec<PointInfo>, TargetError> {
            Ok(self.points.clone())
        }
        fn resolve(&self, choice: &PointChoice) -> Result<PointInfo, TargetError> {
            super::super::target::select_point(&self.points, choice)
                .cloned()
                .ok_or_else(|| super::super::target::unknown_point(choice, &self.points))
        }
    }

    fn records(from: Seq, to: Seq) -> Vec<Record> {
        (from..=to)
            .map(|seq| Record {
                seq,
                volume: 0,
                offset: seq * 4096,
                payload: Payload::Data(vec![seq as u8; 4096].into()),
            })
            .collect()
    }

    /// An `Apply` of records `from..=to` as request `req`.
    fn apply(req: u64, from: Seq, to: Seq) -> Item {
        Item::Wire(Message::Apply {
            req,
            records: records(from, to),
        })
    }

    /// Runs the apply loop over `items` (queued before it starts) and
    /// returns its replies.
    fn run_apply_loop(disks: &dyn ReplicaDisks, items: Vec<Item>) -> Vec<Message> {
        let t = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel(16);
        for item in items {
            tx.try_send(item).ok().unwrap();
        }
        drop(tx);
        let replies = Mutex::new(Vec::new());
        let reply = |m: Message| replies.lock().unwrap().push(m);
        let events = Events::new();
        let applied_at = Mutex::new(0);
        apply_loop(
            disks,
            rx,
            &reply,
            &ApplyContext {
                dir: t.path(),
                journal_id: "j",
                fresh: false,
                events: &events,
                applied_at: &applied_at,
            },
        );
        replies.into_inner().unwrap()
    }

    #[test]
    fn held_batches_wait_for_the_bookmark() {
        let disks = Disks::new(Vec::new());
        let (done, mut answer) = oneshot::channel();
        let replies = run_apply_loop(
            &disks,
            vec![
                apply(1, 1, 3),
                Item::Hold,
                apply(2, 4, 6),
                Item::Release(Some(BookmarkAsk {
                    name: "b1".into(),
                    seq: 5,
                    done,
                })),
                apply(3, 7, 8),
            ],
        );
        // Recorded before the held batch (4..6, which spans it) was applied.
        assert_eq!(
            *disks.bookmarks.lock().unwrap(),
            vec![("b1".to_string(), 5, 3)]
        );
        assert!(matches!(answer.try_recv(), Ok(Ok(None))));
        let acks: Vec<Seq> = replies
            .iter()
            .filter_map(|m| match m {
                Message::Applied { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(acks, vec![3, 6, 8]);
        assert_eq!(disks.sink.state().applied, 8);
    }

    /// A sink that counts its `apply` calls.
    struct Counting {
        inner: MemSink,
        applies: std::sync::atomic::AtomicUsize,
    }

    impl ReplicaSink for Counting {
        fn volume_count(&self) -> usize {
            self.inner.volume_count()
        }
        fn volume(&self, id: VolumeId) -> Result<Arc<dyn Volume>, SinkError> {
            self.inner.volume(id)
        }
        fn state(&self) -> ReplicaState {
            self.inner.state()
        }
        fn apply(&self, records: &[Record]) -> Result<Seq, SinkError> {
            self.applies
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.apply(records)
        }
        fn begin_sync(&self) -> Result<(), SinkError> {
            self.inner.begin_sync()
        }
        fn end_sync(&self, base: Seq) -> Result<(), SinkError> {
            self.inner.end_sync(base)
        }
        fn mark_consistent(&self, seq: Seq) -> Result<(), SinkError> {
            self.inner.mark_consistent(seq)
        }
    }

    struct CountingDisks(Counting);

    impl ReplicaDisks for CountingDisks {
        fn sink(&self) -> &dyn ReplicaSink {
            &self.0
        }
        fn locations(&self) -> Vec<String> {
            Vec::new()
        }
        fn bookmark(&self, _: &str, _: Seq) -> Result<Option<PointInfo>, TargetError> {
            Ok(None)
        }
        fn points(&self) -> Result<Vec<PointInfo>, TargetError> {
            Ok(Vec::new())
        }
        fn resolve(&self, choice: &PointChoice) -> Result<PointInfo, TargetError> {
            Err(super::super::target::unknown_point(choice, &[]))
        }
    }

    #[test]
    fn queued_batches_that_follow_on_are_applied_as_one_and_answered_each() {
        let disks = CountingDisks(Counting {
            inner: Disks::new(Vec::new()).sink,
            applies: 0.into(),
        });
        // 1..3, 4..6 and 7..8 follow on; 10..11 does not (a gap after 8).
        let replies = run_apply_loop(
            &disks,
            vec![
                apply(1, 1, 3),
                apply(2, 4, 6),
                apply(3, 7, 8),
                apply(4, 10, 11),
            ],
        );
        let answers: Vec<(u64, Option<Seq>)> = replies
            .iter()
            .map(|m| match m {
                Message::Applied { req, seq } => (*req, Some(*seq)),
                Message::Error { req, .. } => (*req, None),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            answers,
            vec![(1, Some(3)), (2, Some(6)), (3, Some(8)), (4, None)]
        );
        // One apply for the three that follow on, one (refused) for the last.
        assert_eq!(
            disks.0.applies.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(disks.0.inner.state().applied, 8);
    }

    #[test]
    fn wire_bookmarks_and_at_applied_reach_the_target() {
        let t = tempfile::tempdir().unwrap();
        let disks = Disks::new(Vec::new());
        let (tx, rx) = mpsc::channel(16);
        let (done, mut answer) = oneshot::channel();
        tx.try_send(Item::Wire(Message::Apply {
            req: 1,
            records: records(1, 2),
        }))
        .ok()
        .unwrap();
        tx.try_send(Item::Wire(Message::Bookmark {
            req: 2,
            name: "wire".into(),
            seq: 4,
        }))
        .ok()
        .unwrap();
        tx.try_send(Item::AtApplied {
            name: "now".into(),
            done,
        })
        .ok()
        .unwrap();
        drop(tx);
        let replies = Mutex::new(Vec::new());
        let reply = |m: Message| replies.lock().unwrap().push(m);
        let (events, applied_at) = (Events::new(), Mutex::new(0));
        let ctx = ApplyContext {
            dir: t.path(),
            journal_id: "j",
            fresh: false,
            events: &events,
            applied_at: &applied_at,
        };
        apply_loop(&disks, rx, &reply, &ctx);
        assert_eq!(
            *disks.bookmarks.lock().unwrap(),
            vec![("wire".to_string(), 4, 2), ("now".to_string(), 2, 2)]
        );
        assert!(matches!(answer.try_recv(), Ok(Ok((2, None)))));
        assert!(replies
            .lock()
            .unwrap()
            .iter()
            .any(|m| matches!(m, Message::Ok { req: 2 })));
    }

    fn point(name: &str, seq: Seq) -> PointInfo {
        PointInfo {
            id: format!("p-{name}"),
            name: name.into(),
            seq,
            created_ms: 1_700_000_000_000 + seq,
            consistent: true,
            disks: vec![format!(
                "https://acct.blob.core.windows.net/c/s/disk-0.vhd?snapshot={seq}"
            )],
        }
    }

    fn appliance(dir: &Path, target: MockReplicaTarget) -> Arc<ApplianceScenario> {
        let s = Scenario::template(Template::Azure);
        let text = s.to_toml_string().unwrap();
        ApplianceScenario::new(dir, s, text, Arc::new(target)).unwrap()
    }

    #[tokio::test]
    async fn vm_start_makes_the_vm_from_the_chosen_point() {
        let t = tempfile::tempdir().unwrap();
        let disks: Arc<dyn ReplicaDisks> = Arc::new(Disks::new(vec![
            point("nightly", 10),
            point("before-upgrade", 20),
        ]));
        let mut provider = MockProvider::new();
        provider.expect_kind().return_const("azure");
        provider.expect_delete_vm().never();
        provider
            .expect_create_vm()
            .withf(|spec: &VmSpec| {
                spec.disks.len() == 1
                    && spec.disks[0].location.ends_with("?snapshot=20")
                    && spec.disks[0].system
                    && spec.disks[0].size == 1 << 20
                    && spec.recovery_point.as_deref() == Some("before-upgrade seq 20")
            })
            .times(1)
            .returning(|spec| {
                Ok(VmInfo {
                    id: VmId(format!("/subscriptions/s/vm/{}", spec.name)),
                    name: spec.name.clone(),
                    state: VmState::Running,
                    details: BTreeMap::new(),
                })
            });
        let provider: Arc<dyn CloudProvider> = Arc::new(provider);
        let mut target = MockReplicaTarget::new();
        target.expect_kind().return_const("azure");
        target
            .expect_location()
            .return_const("https://acct/c/s/".to_string());
        target.expect_keeps_points().return_const(true);
        target.expect_open().returning(move |_| Ok(disks.clone()));
        target
            .expect_provider()
            .returning(move || Ok(provider.clone()));
        target.expect_replaced_vm().return_const(None);
        let a = appliance(t.path(), target);
        a.set_run(RunState::Stopped);
        let e = a
            .vm_start(&PointChoice::Named("no-such".into()), false)
            .await
            .unwrap_err();
        assert_eq!(e.0, ErrorCode::BadRequest, "{}", e.1);
        assert!(
            e.1.contains("before-upgrade (p-before-upgrade, seq 20)"),
            "{}",
            e.1
        );
        let r = a
            .vm_start(&PointChoice::Named("before-upgrade".into()), false)
            .await
            .unwrap();
        assert_eq!(r["recovery_point"]["name"], "before-upgrade", "{r:#}");
        assert_eq!(r["recovery_point_seq"], 20);
        assert_eq!(r["provider"], "azure");
        assert_eq!(r["recovery_point_time_ms"], 1_700_000_000_020u64);
    }

    #[tokio::test]
    async fn bookmarks_need_a_target_that_keeps_points() {
        let t = tempfile::tempdir().unwrap();
        let mut target = MockReplicaTarget::new();
        target.expect_kind().return_const("local");
        target.expect_keeps_points().return_const(false);
        target.expect_open().never();
        let a = appliance(t.path(), target);
        let e = a
            .bookmark("nightly", false, Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(e.0, ErrorCode::BadRequest);
        assert!(e.1.contains("keep only `latest`"), "{}", e.1);
        let e = a
            .bookmark("bad name!", false, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(e.1.contains("letters, digits"), "{}", e.1);
        assert!(check_bookmark_name("latest").is_err());
        assert!(check_bookmark_name("before-upgrade.2").is_ok());
    }
}
