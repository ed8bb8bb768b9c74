//! The master role: capture changes, synchronise the replica, replicate.
//!
//! A master scenario lives in `<data>/master/<name>/` (the scenario file)
//! and its journal directory. It starts capturing when the appliance first
//! opens the scenario, and again when the engine starts (run after reboot),
//! whether or not the appliance is connected: changes made while the link is
//! down are journalled (or, past the journal's bound, marked in the change
//! log), so a reconnection resumes after the replica's last applied sequence.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rha_core::events::{Event, Events};
use rha_core::journal::JournalConfig;
use rha_core::scenario::{CaptureMethod, CommandSpec, Scenario};
use rha_core::source::{ChangeSource, RescanSource, SourceError, TrackedSet};
use rha_core::sync::{self, SyncError, SyncOptions, SyncPeer};
use rha_core::volume::{open_volume, open_volume_read_only, Volume, VolumeError};
use rha_core::Seq;
use serde::Serialize;

use super::peer::RemotePeer;
use super::{discover, EngineError};
use crate::limit::Schedule;
use crate::link::Link;
use crate::nbd::{NbdExport, NbdServer};
use crate::wire::Message;

/// How often the replication loop looks for new records when idle.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// How often an idle replication loop acknowledges again (for the change log's rotation).
const IDLE_ACK_EVERY: Duration = Duration::from_secs(1);
/// How often the master sends its statistics to the replica.
const STATS_EVERY: Duration = Duration::from_millis(500);

/// A switchover asked of the replication thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SwitchoverAsk {
    pub apply_journal: bool,
}

/// What the replication thread reports when it stops for a switchover.
#[derive(Debug, Clone)]
pub(crate) struct SwitchoverDone {
    pub seq: Seq,
}

/// The master's status, as `status --json` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MasterStatus {
    /// `capturing` (no replica connected), `synchronising`, `replicating`, `switched_over`, `stopped`.
    pub state: String,
    /// The appliance connected, if any.
    pub replica: Option<String>,
    /// Sync progress: bytes done and total of the current pass.
    pub sync_bytes_done: u64,
    /// Bytes the current pass covers.
    pub sync_bytes_total: u64,
    /// Newest captured sequence.
    pub last_seq: Seq,
    /// Newest sequence the replica acknowledged.
    pub acknowledged: Seq,
    /// Journal bytes not yet acknowledged.
    pub pending_bytes: u64,
    /// Seconds the oldest unacknowledged change has waited (replication lag).
    pub lag_seconds: f64,
    /// The last event, as a sentence.
    pub last_event: Option<String>,
    /// The last error, as a sentence.
    pub last_error: Option<String>,
}

/// One scenario on the master engine.
pub struct MasterScenario {
    /// The scenario.
    pub scenario: Scenario,
    source: Arc<dyn ChangeSource>,
    rescan: Option<Arc<RescanSource>>,
    /// Identity of this master's journal (new when the journal is recreated).
    pub journal_id: String,
    /// Events and statistics.
    pub events: Events,
    status: Mutex<MasterStatus>,
    stop_capture: Arc<AtomicBool>,
    session: Mutex<Option<Session>>,
    /// With capture method `nbd`: the server and the exports of the volumes.
    nbd: Option<(NbdServer, Vec<String>)>,
    /// The tracked set behind those exports (capture method `nbd`).
    tracked: Option<Arc<TrackedSet>>,
    /// When each not-yet-acknowledged sequence was first seen (sampled), for the lag in seconds.
    seen: Mutex<std::collections::VecDeque<(Seq, Instant)>>,
}

/// Where a switchover request waits for the replication thread, with the
/// channel its answer goes back on.
type AskSlot = Mutex<
    Option<(
        SwitchoverAsk,
        std::sync::mpsc::SyncSender<Result<SwitchoverDone, String>>,
    )>,
>;

struct Session {
    stop: Arc<AtomicBool>,
    ask: Arc<AskSlot>,
    link: Link,
}

impl std::fmt::Debug for MasterScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterScenario")
            .field("name", &self.scenario.name)
            .field("journal_id", &self.journal_id)
            .finish()
    }
}

impl Drop for MasterScenario {
    fn drop(&mut self) {
        self.remove_exports();
    }
}

/// Where a scenario's journal lives on this master.
pub fn journal_dir(data_dir: &Path, scenario: &Scenario) -> PathBuf {
    let base = &scenario.journal.directory;
    let base = if base.is_absolute() {
        base.clone()
    } else {
        data_dir.join(base)
    };
    base.join(&scenario.name)
}

/// Opens the master's volumes of `scenario` (the replicated ones, in order), read-only.
pub fn open_volumes(scenario: &Scenario) -> Result<Vec<Arc<dyn Volume>>, EngineError> {
    open_volumes_with(scenario, |p| open_volume_read_only(p))
}

/// Opens the master's volumes of `scenario` with `open` (read-only for a
/// rescan, read-write when the engine writes to them for NBD clients).
fn open_volumes_with(
    scenario: &Scenario,
    open: impl Fn(&Path) -> Result<Box<dyn Volume>, VolumeError>,
) -> Result<Vec<Arc<dyn Volume>>, EngineError> {
    let mut out = Vec::new();
    for v in scenario.volumes.iter().filter(|v| !v.exclude) {
        let path = discover::volume_path(v)?;
        let vol = open(&path).map_err(|e| EngineError::Volume {
            volume: v.id.clone(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(expected) = v.size_bytes {
            if vol.size() != expected {
                return Err(EngineError::Volume {
                    volume: v.id.clone(),
                    path,
                    reason: format!(
                        "it is {} bytes but the scenario says size_bytes = {expected}: correct the scenario",
                        vol.size()
                    ),
                });
            }
        }
        out.push(Arc::from(vol));
    }
    if out.is_empty() {
        return Err(EngineError::Invalid(
            "the scenario replicates no volume".into(),
        ));
    }
    Ok(out)
}

impl MasterScenario {
    /// Opens (or creates) the scenario's capture state and starts capturing.
    ///
    /// With capture method `nbd` the scenario's volumes are opened
    /// read-write under a [`TrackedSet`] and served by `nbd` (the engine's
    /// `--nbd-listen` server), one export per volume named by
    /// [`VolumeSpec::nbd_export_name`](rha_core::scenario::VolumeSpec::nbd_export_name);
    /// without a server such a scenario is refused.
    pub fn open(
        data_dir: &Path,
        scenario: Scenario,
        provided: Option<Arc<dyn ChangeSource>>,
        nbd: Option<&NbdServer>,
    ) -> Result<Arc<MasterScenario>, EngineError> {
        let dir = journal_dir(data_dir, &scenario);
        let fresh = !dir.join("journal").exists() && provided.is_none();
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io("create", &dir, e))?;
        let id_path = dir.join("journal-id");
        let journal_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !fresh && !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                let id = super::random_id();
                super::write_atomic(&id_path, id.as_bytes())?;
                id
            }
        };
        let events = Events::new();
        let mut served = None;
        let mut tracked = None;
        let (source, rescan): (Arc<dyn ChangeSource>, Option<Arc<RescanSource>>) =
            match (provided, scenario.capture.method) {
                (Some(s), _) => (s, None),
                (None, CaptureMethod::Nbd) => {
                    let Some(server) = nbd else {
                        return Err(EngineError::Invalid(format!(
                            "scenario `{}` uses capture method `nbd`, but this engine serves no NBD exports: start it with `rha engine --nbd-listen ADDR` (for example --nbd-listen 127.0.0.1:10809)",
                            scenario.name
                        )));
                    };
                    let (set, exports) = serve_nbd(&dir, &scenario, server, &events)?;
                    served = Some((server.clone(), exports));
                    tracked = Some(set.clone());
                    (set as Arc<dyn ChangeSource>, None)
                }
                (None, CaptureMethod::Tracked) => {
                    return Err(EngineError::Invalid(format!(
                        "scenario `{}` uses capture method `tracked`, but no program attached a tracked source to this engine: use `rescan`, or embed the engine and call Engine::provide_source",
                        scenario.name
                    )))
                }
                (None, CaptureMethod::Rescan) => {
                    let volumes = open_volumes(&scenario)?;
                    let (src, recovery) = RescanSource::open(
                        &dir,
                        volumes,
                        JournalConfig::from(&scenario.journal),
                        Duration::from_millis(scenario.capture.rescan_interval_ms),
                    )
                    .map_err(|e| EngineError::Source(e.to_string()))?;
                    tracing::info!(scenario = %scenario.name, "journal opened: {recovery:?}");
                    let src = Arc::new(src);
                    (src.clone() as Arc<dyn ChangeSource>, Some(src))
                }
            };
        let ms = Arc::new(MasterScenario {
            scenario,
            source,
            rescan,
            journal_id,
            events,
            status: Mutex::new(MasterStatus {
                state: "capturing".into(),
                ..Default::default()
            }),
            stop_capture: Arc::new(AtomicBool::new(false)),
            session: Mutex::new(None),
            nbd: served,
            tracked,
            seen: Mutex::new(Default::default()),
        });
        ms.start_capture();
        ms.start_event_log();
        Ok(ms)
    }

    /// The change source.
    pub fn source(&self) -> &Arc<dyn ChangeSource> {
        &self.source
    }

    /// Captures now (a rescan scans whatever its interval) and returns the
    /// newest captured sequence: what a bookmark marks.
    pub fn capture_now(&self) -> Result<Seq, String> {
        self.source.capture().map_err(|e| e.to_string())?;
        if let Some(r) = &self.rescan {
            r.scan_now().map_err(|e| e.to_string())?;
        }
        Ok(self.source.last_seq())
    }

    fn start_capture(self: &Arc<Self>) {
        let me = self.clone();
        let stop = self.stop_capture.clone();
        let every = Duration::from_millis(self.scenario.capture.rescan_interval_ms.max(10));
        std::thread::Builder::new()
            .name(format!("rha-capture-{}", self.scenario.name))
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(r) = &me.rescan {
                        if let Err(e) = r.scan_now() {
                            me.set_error(format!("rescan failed: {e}"));
                        }
                        if let Err(e) = r.journal().sync() {
                            me.set_error(format!("journal flush failed: {e}"));
                        }
                    }
                    me.sample_seen();
                    std::thread::sleep(every);
                }
            })
            .ok();
    }

    fn start_event_log(self: &Arc<Self>) {
        let rx = self.events.subscribe();
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(format!("rha-events-{}", self.scenario.name))
            .spawn(move || {
                while let Ok(ev) = rx.recv() {
                    let Some(me) = me.upgrade() else { return };
                    let mut st = me.lock_status();
                    match &ev {
                        Event::SyncStarted { bytes_total, .. } => {
                            st.state = "synchronising".into();
                            st.sync_bytes_total = *bytes_total;
                            st.sync_bytes_done = 0;
                        }
                        Event::SyncProgress { .. } => {
                            // Per-volume progress: add what this event advanced.
                        }
                        _ => {}
                    }
                    if !matches!(
                        ev,
                        Event::SyncProgress { .. } | Event::ReplicationLag { .. }
                    ) {
                        st.last_event = Some(ev.to_string());
                    }
                }
            })
            .ok();
    }

    fn sample_seen(&self) {
        let last = self.source.last_seq();
        let acked = self.source.acknowledged();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        while seen.front().is_some_and(|(s, _)| *s <= acked) {
            seen.pop_front();
        }
        if seen.back().map_or(last > acked, |(s, _)| *s < last) {
            seen.push_back((last, Instant::now()));
        }
        if seen.len() > 4096 {
            seen.pop_front();
        }
    }

    /// Seconds the oldest unacknowledged change has waited.
    pub fn lag_seconds(&self) -> f64 {
        self.sample_seen();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.front()
            .map(|(_, t)| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, MasterStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_error(&self, e: String) {
        tracing::warn!(scenario = %self.scenario.name, "{e}");
        self.lock_status().last_error = Some(e);
    }

    fn set_state(&self, s: &str) {
        self.lock_status().state = s.into();
    }

    /// The status, with fresh statistics.
    pub fn status(&self) -> MasterStatus {
        let lag = self.lag_seconds();
        let mut st = self.lock_status().clone();
        st.last_seq = self.source.last_seq();
        st.acknowledged = self.source.acknowledged();
        st.pending_bytes = self.source.pending_bytes();
        st.lag_seconds = lag;
        let stats = self.events.stats().snapshot();
        if st.state == "synchronising" {
            st.sync_bytes_done = stats
                .blocks_scanned
                .saturating_mul(4096)
                .min(st.sync_bytes_total);
        }
        st
    }

    /// The statistics JSON sent to the replica.
    pub fn stats_json(&self) -> String {
        let status = self.status();
        let stats = self.events.stats().snapshot();
        serde_json::json!({ "master": status, "stats": stats }).to_string()
    }

    /// Starts replicating over `link` (replacing any earlier session).
    pub fn start_session(self: &Arc<Self>, link: Link) {
        self.stop_session();
        let stop = Arc::new(AtomicBool::new(false));
        let ask = Arc::new(Mutex::new(None));
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(Session {
            stop: stop.clone(),
            ask: ask.clone(),
            link: link.clone(),
        });
        link.limiter()
            .set_schedule(Schedule::from_settings(&self.scenario.sync));
        link.set_heartbeat(Duration::from_secs(
            self.scenario.is_alive.interval_secs.max(1),
        ));
        {
            let mut st = self.lock_status();
            st.replica = Some(link.peer().name.clone());
            st.last_error = None;
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("rha-replicate-{}", self.scenario.name))
            .spawn(move || {
                let result = me.replicate(&link, &stop, &ask);
                match result {
                    Ok(()) => {}
                    Err(e) => {
                        let msg = format!("replication to {} stopped: {e}", link.peer().name);
                        me.set_error(msg.clone());
                        me.events.emit(Event::Error { message: msg });
                        link.close(format!("replication stopped: {e}"));
                    }
                }
                let mut st = me.lock_status();
                if st.state != "switched_over" && st.state != "stopped" {
                    st.state = "capturing".into();
                }
                st.replica = None;
            })
            .ok();
    }

    /// Stops the current session's replication thread, if any.
    pub fn stop_session(&self) {
        if let Some(s) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            s.stop.store(true, Ordering::Relaxed);
            s.link.close("replication session ended");
        }
    }

    /// Stops capturing (the engine shuts down or the scenario is reopened);
    /// NBD exports are removed, their clients finish and are disconnected.
    pub fn stop_capture_only(&self) {
        self.stop_capture.store(true, Ordering::Relaxed);
        self.remove_exports();
    }

    /// Stops the session and capturing (the scenario was stopped; its state stays on disk).
    pub fn stop(&self) {
        self.stop_session();
        self.stop_capture_only();
        self.set_state("stopped");
    }

    /// The NBD exports of the scenario's volumes (capture method `nbd`).
    pub fn nbd_exports(&self) -> Vec<String> {
        self.nbd
            .as_ref()
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    }

    /// Closes the journal of an `nbd` scenario cleanly, once the NBD server
    /// has shut down (nothing writes through the exports any more), so that
    /// a reboot of the master now needs no resync. Logs the outcome.
    pub(crate) fn close_tracked(&self) {
        let Some(set) = &self.tracked else { return };
        match set.close_shared() {
            Ok(()) => {
                tracing::info!(scenario = %self.scenario.name, "journal closed cleanly")
            }
            Err(e) => tracing::warn!(
                scenario = %self.scenario.name,
                "the journal could not be closed cleanly ({e}); after a reboot its dirty regions are resynchronised"
            ),
        }
    }

    fn remove_exports(&self) {
        if let Some((server, exports)) = &self.nbd {
            for e in exports {
                server.remove_export(e);
            }
        }
    }

    /// Asks the replication thread to finish for a switchover and waits for it.
    pub(crate) async fn switchover(
        self: &Arc<Self>,
        apply_journal: bool,
    ) -> Result<SwitchoverDone, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        {
            let guard = self.session.lock().unwrap_or_else(|e| e.into_inner());
            let Some(s) = guard.as_ref() else {
                return Err("no replication session is running".into());
            };
            *s.ask.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((SwitchoverAsk { apply_journal }, tx));
        }
        let done = tokio::task::spawn_blocking(move || {
            rx.recv_timeout(Duration::from_secs(3600))
                .map_err(|_| {
                    "the replication thread ended before finishing the switchover".to_string()
                })
                .and_then(|r| r)
        })
        .await
        .map_err(|e| e.to_string())??;
        self.stop_capture.store(true, Ordering::Relaxed);
        self.set_state("switched_over");
        Ok(done)
    }

    /// Runs the scenario's master-side switchover step.
    pub async fn master_step(&self) -> String {
        match &self.scenario.switchover.disable_master_network {
            None => "no master-side step configured".into(),
            Some(cmd) => run_command(cmd, Duration::from_secs(60)).await,
        }
    }

    /// The replication thread: synchronise when needed, then replicate until stopped.
    fn replicate(&self, link: &Link, stop: &AtomicBool, ask: &AskSlot) -> Result<(), SyncError> {
        let source = &*self.source;
        let options = SyncOptions::from(&self.scenario.sync);
        let mut peer = RemotePeer::new(link.clone());
        let mut pipeline =
            sync::Pipeline::new(self.prepare(&mut peer, &options)?, options.pipeline_depth);
        let mut last_stats = Instant::now() - STATS_EVERY;
        let mut last_ack = Instant::now();
        self.set_state("replicating");
        loop {
            if stop.load(Ordering::Relaxed) || link.closed_reason().is_some() {
                return Ok(());
            }
            let asked = ask.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((a, reply)) = asked {
                let result = pipeline
                    .drain(source, &mut peer, &self.events)
                    .and_then(|at| self.finish_for_switchover(&mut peer, at, a));
                let _ = reply.send(result.map_err(|e| e.to_string()));
                return Ok(());
            }
            link.set_local_last_seq(source.last_seq());
            if last_stats.elapsed() >= STATS_EVERY {
                last_stats = Instant::now();
                let _ = link.send_blocking(Message::Stats {
                    json: self.stats_json(),
                });
            }
            match pipeline.step(source, &mut peer, options.batch_bytes, &self.events) {
                Ok(sync::Step::Sent(_)) => {}
                Ok(sync::Step::Applied(_)) => last_ack = Instant::now(),
                Ok(sync::Step::Idle) => {
                    // Acknowledging again while idle lets the change log
                    // rotate, so the marks of regions written before the
                    // pause age out and a crash now resyncs nothing.
                    if last_ack.elapsed() >= IDLE_ACK_EVERY {
                        last_ack = Instant::now();
                        source.acknowledge(source.acknowledged())?;
                    }
                    std::thread::sleep(IDLE_POLL)
                }
                Err(SyncError::Source(SourceError::Gap { .. })) => {
                    // The journal overflowed while the link was down or slow:
                    // resynchronise the regions the change log marks.
                    let report = sync::synchronise(source, &mut peer, &options, &self.events)?;
                    self.set_state("replicating");
                    pipeline = sync::Pipeline::new(report.consistent_seq, options.pipeline_depth);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Brings the replica to a point from which replication can continue:
    /// nothing to do after a dropped link, a fast resync of the dirty regions
    /// after a journal overflow, a full comparison for a new replica.
    fn prepare(&self, peer: &mut RemotePeer, options: &SyncOptions) -> Result<Seq, SyncError> {
        let source = &*self.source;
        let state = peer.state()?;
        let resume = state.synced
            && state.consistent
            && !source.needs_resync()
            && state.applied >= source.acknowledged()
            && state.applied <= source.last_seq();
        if resume {
            match source.changes_after(state.applied, 1) {
                Ok(_) => {
                    tracing::info!(scenario = %self.scenario.name, applied = state.applied, "resuming replication after the replica's last applied change; no resynchronisation");
                    source.acknowledge(state.applied)?;
                    return Ok(state.applied);
                }
                Err(SourceError::Gap { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut options = options.clone();
        if state.synced && state.applied > source.last_seq() {
            // The replica holds changes this master's journal lost (a crash
            // before a flush): only a full comparison can prove equality.
            options.force_full_verification = true;
        }
        let report = sync::synchronise(source, peer, &options, &self.events)?;
        tracing::info!(scenario = %self.scenario.name, "synchronisation: {}", serde_json::to_string(&report).unwrap_or_default());
        Ok(report.consistent_seq)
    }

    fn finish_for_switchover(
        &self,
        peer: &mut RemotePeer,
        at: Seq,
        ask: SwitchoverAsk,
    ) -> Result<SwitchoverDone, SyncError> {
        let source = &*self.source;
        if !ask.apply_journal {
            return Ok(SwitchoverDone { seq: at });
        }
        // A last capture, then everything captured reaches the replica.
        source.capture()?;
        if let Some(r) = &self.rescan {
            r.scan_now()?;
        }
        let target = source.last_seq();
        let (seq, _) = sync::catch_up(source, peer, at, target, 4 << 20, &self.events)?;
        peer.mark_consistent(seq)?;
        Ok(SwitchoverDone { seq })
    }
}

/// Capture method `nbd`: opens the scenario's volumes read-write under a
/// [`TrackedSet`] (journal in the scenario's journal directory, as a rescan
/// keeps it) and adds one export per volume to `server`.
fn serve_nbd(
    dir: &Path,
    scenario: &Scenario,
    server: &NbdServer,
    events: &Events,
) -> Result<(Arc<TrackedSet>, Vec<String>), EngineError> {
    let volumes = open_volumes_with(scenario, |p| open_volume(p))?;
    let specs: Vec<_> = scenario.volumes.iter().filter(|v| !v.exclude).collect();
    let (set, recovery) = TrackedSet::open(
        dir.join("journal"),
        JournalConfig::from(&scenario.journal),
        volumes,
        events.clone(),
    )
    .map_err(|e| EngineError::Source(e.to_string()))?;
    tracing::info!(scenario = %scenario.name, "journal opened: {recovery:?}");
    let set = Arc::new(set);
    let mut exports: Vec<String> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let name = spec.nbd_export_name(&scenario.name).ok_or_else(|| {
            EngineError::Invalid(format!(
                "volume `{}` has no file stem to name its NBD export after",
                spec.id
            ))
        })?;
        let volume = set
            .volume(i as u32)
            .ok_or_else(|| EngineError::Invalid(format!("no tracked volume {i}")))?;
        let added = server.add_export(NbdExport {
            name: name.clone(),
            description: format!(
                "rha scenario {}: volume {} ({})",
                scenario.name,
                spec.id,
                volume.describe()
            ),
            volume: Arc::new(volume),
            read_only: false,
        });
        if let Err(e) = added {
            for done in &exports {
                server.remove_export(done);
            }
            return Err(EngineError::Invalid(e.to_string()));
        }
        exports.push(name);
    }
    Ok((set, exports))
}

/// Runs an operator-configured command; returns its outcome as a sentence.
pub async fn run_command(cmd: &CommandSpec, timeout: Duration) -> String {
    let mut c = tokio::process::Command::new(&cmd.program);
    c.args(&cmd.args).kill_on_drop(true);
    match tokio::time::timeout(timeout, c.output()).await {
        Err(_) => format!(
            "`{}` did not finish within {} s",
            cmd.program,
            timeout.as_secs()
        ),
        Ok(Err(e)) => format!("`{}` could not run: {e}", cmd.program),
        Ok(Ok(out)) if out.status.success() => format!("`{}` succeeded", cmd.program),
        Ok(Ok(out)) => format!(
            "`{}` failed ({}): {}",
            cmd.program,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}
