//! The engine: one process per host that plays the master role for the
//! scenarios whose master it is and the replica role for those it is the
//! appliance of.
//!
//! ```text
//!  operator (rha CLI) ──Control──► appliance engine ──OpenScenario──► master engine
//!                                   │  ▲                               │ capture (rescan / tracked / nbd)
//!                                   │  └── SyncPeer requests, Stats ◄──┤ journal, change log
//!                                   │      Heartbeats both ways        │ sync + replicate thread
//!                                   ▼
//!             ReplicaTarget: replica disks (local fixed VHDs, Azure page blobs),
//!             recovery points ── switchover / vm start ──► CloudProvider (QEMU, Azure)
//! ```
//!
//! Which replica target serves a scenario's `[replica]` is the engine
//! configuration's [`Targets`]: local disks always, others (Azure, from
//! `rha-azure`) as the program registers them.
//!
//! Normal mode: the appliance calls the master (port 25000). NAT mode
//! (`master.nat = true`): the master engine, started with `--dial
//! <appliance>:25000` and listening on no port, calls the appliance and
//! offers the connection; the appliance uses it as if it had called.

pub mod control;
pub mod discover;
pub mod master;
mod peer;
pub mod replica;
pub mod target;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rha_core::cloud::local::{LocalProvider, Qemu};
use rha_core::cloud::CloudProvider;
use rha_core::scenario::Replica;
use rha_core::scenario::Scenario;
use rha_core::source::ChangeSource;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};

pub use control::{Client, ClientError, ControlRequest};
pub use master::MasterScenario;
pub use peer::RemotePeer;
pub use replica::ApplianceScenario;
pub use target::{
    PointChoice, PointInfo, ReplicaDisks, ReplicaTarget, TargetContext, TargetError, TargetFactory,
    Targets,
};

use crate::connect::{self, ConnectError, LocalInfo, Security};
use crate::limit::{Limiter, Schedule};
use crate::link::Link;
use crate::nbd::{NbdHandle, NbdServer};
use crate::wire::{Compression, ErrorCode, Intent, Message, PROTOCOL_VERSION};
use control::error_reply;
use replica::RunState;

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The engine's name (as in its certificate).
    pub name: String,
    /// Where it keeps scenarios, journals and replica disks.
    pub data_dir: PathBuf,
    /// Address to listen on (`0.0.0.0:25000`); `None` listens nowhere (a NAT-mode master).
    pub listen: Option<String>,
    /// NAT mode: appliances to call and offer sessions to (`host:port`).
    pub dial: Vec<String>,
    /// TLS, or the explicitly insecure plaintext.
    pub security: Security,
    /// Whether the local provider starts QEMU at switchover.
    pub qemu: Qemu,
    /// Compression this engine accepts, most preferred first.
    pub compression: Vec<Compression>,
    /// The replica targets served besides local disks (Azure, ...).
    pub targets: Targets,
    /// Where the NBD exports of scenarios with capture method `nbd` are
    /// served; `None` serves none (such scenarios are refused).
    pub nbd: Option<NbdListen>,
}

/// The NBD listener of an engine (`rha engine --nbd-listen`).
#[derive(Debug, Clone)]
pub struct NbdListen {
    /// Address to listen on (`127.0.0.1:10809`).
    pub addr: String,
    /// Serve without TLS even when the engine has certificates (for a
    /// listener on loopback, where the VM runs on the master itself).
    pub plaintext: bool,
}

impl EngineConfig {
    /// A configuration with defaults: listen on `0.0.0.0:25000`, no NAT dialing, QEMU when installed.
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>, security: Security) -> Self {
        EngineConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            listen: Some(format!("0.0.0.0:{}", crate::wire::DEFAULT_PORT)),
            dial: Vec::new(),
            security,
            qemu: Qemu::Auto,
            compression: vec![Compression::Lz4, Compression::Zstd, Compression::None],
            targets: Targets::new(),
            nbd: None,
        }
    }
}

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {reason} (is another engine running there? choose another port with --listen)")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        reason: String,
    },
    /// A master volume cannot be used.
    #[error("volume `{volume}` ({}): {reason}", path.display())]
    Volume {
        /// The scenario's id of the volume.
        volume: String,
        /// Its device or image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The change source failed.
    #[error("change capture: {0}")]
    Source(String),
    /// The replica disks failed.
    #[error("replica disks: {0}")]
    Sink(String),
    /// A request or a scenario is not valid here.
    #[error("{0}")]
    Invalid(String),
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl EngineError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        EngineError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes a file atomically (temporary file, fsync, rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), EngineError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| EngineError::io("create", &tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| EngineError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io("rename", path, e))?;
    Ok(())
}

/// A random 128-bit id in hex.
pub(crate) fn random_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::getrandom(&mut b).is_err() {
        let t = crate::link::now_ms().to_le_bytes();
        b[..8].copy_from_slice(&t);
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

type Offer = (Link, mpsc::Receiver<Message>);

/// State shared by the engine's tasks.
pub struct Shared {
    config: EngineConfig,
    local_addr: Option<SocketAddr>,
    masters: Mutex<HashMap<String, Arc<MasterScenario>>>,
    appliances: Mutex<HashMap<String, Arc<ApplianceScenario>>>,
    offers: Mutex<Vec<Offer>>,
    offer_added: Notify,
    provided: Mutex<HashMap<String, Arc<dyn ChangeSource>>>,
    local: Arc<LocalProvider>,
    shutdown: watch::Sender<bool>,
    nbd: Option<NbdServer>,
    nbd_handle: Mutex<Option<NbdHandle>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.config.name)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn local_info(&self, compression: Vec<Compression>) -> LocalInfo {
        LocalInfo {
            name: self.config.name.clone(),
            compression,
        }
    }

    fn unlimited() -> Arc<Limiter> {
        Arc::new(Limiter::new(Schedule::unlimited()))
    }

    /// The provider that creates the VMs of local replicas (QEMU); each
    /// scenario's is its [`ReplicaTarget::provider`].
    pub fn provider(&self) -> Arc<dyn CloudProvider> {
        self.local.clone()
    }

    /// The replica target of `scenario`.
    pub fn target_for(&self, scenario: &Scenario) -> Result<Arc<dyn ReplicaTarget>, EngineError> {
        let ctx = TargetContext {
            engine: self.config.name.clone(),
            data_dir: self.config.data_dir.clone(),
        };
        self.config
            .targets
            .for_scenario(scenario, &ctx, &self.local)
            .map_err(|e| EngineError::Invalid(e.to_string()))
    }

    fn appliance_scenario(
        &self,
        s: Scenario,
        text: String,
    ) -> Result<Arc<ApplianceScenario>, EngineError> {
        let target = self.target_for(&s)?;
        ApplianceScenario::new(&self.config.data_dir, s, text, target)
    }

    /// Calls `addr` for `scenario`, offering the scenario's compression.
    pub async fn dial(
        &self,
        addr: &str,
        intent: Intent,
        scenario: &Scenario,
    ) -> Result<Offer, ConnectError> {
        let c = compression_of(scenario);
        let mut offer = vec![c];
        if c != Compression::None {
            offer.push(Compression::None);
        }
        connect::dial(
            addr,
            &self.config.security,
            &self.local_info(offer),
            intent,
            Shared::unlimited(),
        )
        .await
    }

    /// Makes the frames this side sends on `link` use `scenario`'s
    /// compression, if this engine's configuration allows it.
    pub(crate) fn adopt_compression(&self, link: &Link, scenario: &Scenario) {
        let c = compression_of(scenario);
        if c == Compression::None || self.config.compression.contains(&c) {
            link.set_compression(c);
        }
    }

    /// NAT mode: waits for a connection offered by the master named `host`.
    pub async fn take_nat_offer(&self, host: &str) -> Offer {
        loop {
            let notified = self.offer_added.notified();
            {
                let mut offers = lock(&self.offers);
                offers.retain(|(l, _)| l.closed_reason().is_none());
                if let Some(i) = offers.iter().position(|(l, _)| l.peer().is_named(host)) {
                    return offers.swap_remove(i);
                }
            }
            notified.await;
        }
    }
}

/// The wire compression a scenario asks for.
pub(crate) fn compression_of(s: &Scenario) -> Compression {
    use rha_core::scenario::WireCompression as W;
    match s.sync.compression {
        W::None => Compression::None,
        W::Lz4 => Compression::Lz4,
        W::Zstd => Compression::Zstd,
    }
}

/// A running engine.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// Starts an engine: listens (unless `listen` is `None`), calls the NAT
    /// targets, and resumes the scenarios found in the data directory.
    pub async fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| EngineError::io("create", &config.data_dir, e))?;
        let listener = match &config.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| EngineError::Listen {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?,
            ),
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let (nbd, nbd_handle) = match &config.nbd {
            None => (None, None),
            Some(n) => {
                let tls = match &config.security {
                    Security::Tls(t) if !n.plaintext => Some(t.clone()),
                    _ => None,
                };
                let server = NbdServer::builder()
                    .tls(tls)
                    .build()
                    .map_err(|e| EngineError::Invalid(e.to_string()))?;
                let handle = server
                    .listen(&n.addr)
                    .await
                    .map_err(|e| EngineError::Listen {
                        addr: n.addr.clone(),
                        reason: format!("NBD: {e}"),
                    })?;
                if let Some(a) = handle.local_addr() {
                    let path = config.data_dir.join("nbd.addr");
                    write_atomic(&path, format!("{a}\n").as_bytes())?;
                    tracing::info!(addr = %a, tls = server.requires_tls(), "NBD exports served (address in {})", path.display());
                }
                (Some(server), Some(handle))
            }
        };
        let local = Arc::new(
            LocalProvider::new(config.data_dir.join("vms")).with_qemu(config.qemu.clone()),
        );
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            local_addr,
            masters: Mutex::new(HashMap::new()),
            appliances: Mutex::new(HashMap::new()),
            offers: Mutex::new(Vec::new()),
            offer_added: Notify::new(),
            provided: Mutex::new(HashMap::new()),
            local,
            shutdown,
            nbd,
            nbd_handle: Mutex::new(nbd_handle),
        });
        if let Some(l) = listener {
            tokio::spawn(accept_loop(shared.clone(), l));
        }
        for addr in shared.config.dial.clone() {
            tokio::spawn(nat_dial_loop(shared.clone(), addr));
        }
        let engine = Engine { shared };
        engine.resume().await;
        tracing::info!(name = %engine.shared.config.name, addr = ?engine.shared.local_addr, "engine started");
        Ok(engine)
    }

    /// The address the engine listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.local_addr
    }

    /// The address the NBD exports are served on (`--nbd-listen`).
    pub fn nbd_addr(&self) -> Option<SocketAddr> {
        lock(&self.shared.nbd_handle)
            .as_ref()
            .and_then(|h| h.local_addr())
    }

    /// The engine's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Attaches a change source for a scenario whose capture method is `tracked`
    /// (a program that embeds the engine and writes through a `TrackedSet`).
    pub fn provide_source(&self, scenario: &str, source: Arc<dyn ChangeSource>) {
        lock(&self.shared.provided).insert(scenario.to_owned(), source);
    }

    /// The master side of a scenario, if this engine is its master.
    pub fn master_scenario(&self, name: &str) -> Option<Arc<MasterScenario>> {
        lock(&self.shared.masters).get(name).cloned()
    }

    /// The replica side of a scenario, if this engine is its appliance.
    pub fn appliance_scenario(&self, name: &str) -> Option<Arc<ApplianceScenario>> {
        lock(&self.shared.appliances).get(name).cloned()
    }

    /// Handles a control request in process (what a remote operator's request does).
    pub async fn control(&self, req: ControlRequest) -> serde_json::Value {
        handle_control(&self.shared, req).await
    }

    /// Stops everything: listener, sessions, capture.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let masters: Vec<_> = lock(&self.shared.masters).drain().map(|(_, m)| m).collect();
        for m in &masters {
            m.stop_session();
            m.stop_capture_only();
        }
        let apps: Vec<_> = lock(&self.shared.appliances)
            .drain()
            .map(|(_, a)| a)
            .collect();
        for a in apps {
            if let Some(l) = a.link() {
                l.shutdown("engine shutting down").await;
            }
        }
        let nbd = lock(&self.shared.nbd_handle).take();
        if let Some(h) = nbd {
            // Returns once every connection is closed and no volume
            // operation holds an export any more.
            h.shutdown().await;
        }
        for m in &masters {
            m.close_tracked();
        }
    }

    async fn resume(&self) {
        let shared = &self.shared;
        let dir = shared.config.data_dir.join("master");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.join("stopped").exists() {
                continue;
            }
            let Ok(s) = Scenario::load(p.join("scenario.toml")) else {
                continue;
            };
            if !s.run_after_reboot {
                continue;
            }
            let name = s.name.clone();
            let provided = lock(&shared.provided).get(&name).cloned();
            let data = shared.config.data_dir.clone();
            let nbd = shared.nbd.clone();
            match tokio::task::spawn_blocking(move || {
                MasterScenario::open(&data, s, provided, nbd.as_ref())
            })
            .await
            {
                Ok(Ok(ms)) => {
                    tracing::info!(scenario = %name, "run after reboot: capturing again; the appliance's reconnection resumes replication");
                    lock(&shared.masters).insert(name, ms);
                }
                Ok(Err(e)) => tracing::error!(scenario = %name, "cannot resume: {e}"),
                Err(e) => tracing::error!(scenario = %name, "cannot resume: {e}"),
            }
        }
        let dir = shared.config.data_dir.join("appliance");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            let Ok(text) = std::fs::read_to_string(p.join("scenario.toml")) else {
                continue;
            };
            let Ok(s) = Scenario::from_toml_str(&text) else {
                continue;
            };
            match shared.appliance_scenario(s, text) {
                Ok(a) => {
                    if a.run_state() == RunState::Running {
                        a.start(shared.clone());
                    }
                    lock(&shared.appliances).insert(a.name().to_owned(), a);
                }
                Err(e) => tracing::error!("cannot resume {}: {e}", p.display()),
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = until_true(&mut stop) => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let local = shared.local_info(shared.config.compression.clone());
            match connect::accept(tcp, &shared.config.security, &local, Shared::unlimited()).await {
                Ok(acc) => {
                    tracing::info!(peer = %acc.hello.name, %addr, intent = ?acc.hello.intent, "connection accepted");
                    match acc.hello.intent {
                        Intent::Operator => serve_operator(shared, acc.link, acc.inbox).await,
                        Intent::Engine => {
                            serve_master_link(shared, acc.link, acc.inbox, None).await
                        }
                        Intent::NatOffer => {
                            lock(&shared.offers).push((acc.link, acc.inbox));
                            shared.offer_added.notify_waiters();
                        }
                    }
                }
                Err(e) => tracing::warn!(%addr, "connection refused: {e}"),
            }
        });
    }
}

/// NAT mode (master side): keeps one idle connection offered to the appliance at `addr`.
async fn nat_dial_loop(shared: Arc<Shared>, addr: String) {
    let mut backoff = Duration::from_millis(250);
    let mut stop = shared.shutdown.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        let local = shared.local_info(vec![Compression::None, Compression::Lz4, Compression::Zstd]);
        match connect::dial(
            &addr,
            &shared.config.security,
            &local,
            Intent::NatOffer,
            Shared::unlimited(),
        )
        .await
        {
            Ok((link, inbox)) => {
                backoff = Duration::from_millis(250);
                tracing::info!(%addr, "NAT mode: connection offered to the appliance");
                let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
                let l2 = link.clone();
                tokio::spawn(serve_master_link(
                    shared.clone(),
                    link,
                    inbox,
                    Some(taken_tx),
                ));
                tokio::select! {
                    _ = taken_rx => {}
                    _ = l2.closed() => {}
                    _ = until_true(&mut stop) => { l2.shutdown("engine shutting down").await; return; }
                }
            }
            Err(e) => {
                tracing::info!(%addr, "NAT mode: appliance not reachable: {e}; retrying in {} ms", backoff.as_millis());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = until_true(&mut stop) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn serve_operator(shared: Arc<Shared>, link: Link, mut inbox: mpsc::Receiver<Message>) {
    while let Some(msg) = inbox.recv().await {
        match msg {
            Message::Control { req, json } => {
                let reply = match serde_json::from_str::<ControlRequest>(&json) {
                    Ok(r) => {
                        let shared = shared.clone();
                        // Long requests (a switchover) must not stop the link's other traffic.
                        let link = link.clone();
                        tokio::spawn(async move {
                            let v = handle_control(&shared, r).await;
                            let _ = link
                                .send(Message::ControlReply {
                                    req,
                                    json: v.to_string(),
                                })
                                .await;
                        });
                        continue;
                    }
                    Err(e) => {
                        error_reply(ErrorCode::BadRequest, format!("not a control request: {e}"))
                    }
                };
                let _ = link
                    .send(Message::ControlReply {
                        req,
                        json: reply.to_string(),
                    })
                    .await;
            }
            other => {
                if let Some(req) = other.req() {
                    link.reply_error(
                        req,
                        ErrorCode::BadRequest,
                        format!(
                            "an operator connection may only send Control, not {}",
                            other.name()
                        ),
                    )
                    .await;
                }
            }
        }
    }
}

/// Serves the appliance on a link where this engine is the master.
async fn serve_master_link(
    shared: Arc<Shared>,
    link: Link,
    mut inbox: mpsc::Receiver<Message>,
    mut taken: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut current: Option<Arc<MasterScenario>> = None;
    // A NAT offer was made before any scenario was known: it starts
    // uncompressed and takes the scenario's compression once opened.
    let nat = taken.is_some();
    while let Some(msg) = inbox.recv().await {
        match msg {
            Message::OpenScenario { req, scenario } => {
                if let Some(t) = taken.take() {
                    let _ = t.send(());
                }
                match open_master(&shared, &link, &scenario).await {
                    Ok(ms) => {
                        if nat {
                            shared.adopt_compression(&link, &ms.scenario);
                        }
                        let sizes = ms.source().volumes().iter().map(|v| v.size()).collect();
                        let ok = link
                            .send(Message::ScenarioOpened {
                                req,
                                journal_id: ms.journal_id.clone(),
                                sizes,
                            })
                            .await;
                        if ok.is_ok() {
                            ms.start_session(link.clone());
                            current = Some(ms);
                        }
                    }
                    Err((code, e)) => {
                        tracing::warn!(peer = %link.peer().name, "scenario refused: {e}");
                        link.reply_error(req, code, e).await;
                    }
                }
            }
            Message::ReadBlocks {
                req,
                volume,
                offset,
                len,
            } => {
                let Some(ms) = current.clone() else {
                    link.reply_error(req, ErrorCode::WrongState, "open a scenario first")
                        .await;
                    continue;
                };
                let r = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
                    let v = ms
                        .source()
                        .volumes()
                        .get(volume as usize)
                        .ok_or_else(|| format!("no volume {volume}"))?
                        .clone();
                    let end = offset.checked_add(len as u64).filter(|e| *e <= v.size());
                    if end.is_none() || len as usize > crate::wire::DEFAULT_MAX_FRAME - 64 {
                        return Err(format!("read of {len} bytes at {offset} is outside volume {volume} or too large"));
                    }
                    let mut buf = vec![0u8; len as usize];
                    v.read_at(offset, &mut buf).map_err(|e| e.to_string())?;
                    Ok(buf)
                })
                .await;
                match r {
                    Ok(Ok(data)) => {
                        let _ = link.send(Message::BlockData { req, data }).await;
                    }
                    Ok(Err(e)) => link.reply_error(req, ErrorCode::BadRequest, e).await,
                    Err(e) => {
                        link.reply_error(req, ErrorCode::Internal, e.to_string())
                            .await
                    }
                }
            }
            Message::Switchover {
                req,
                apply_journal,
                master_step,
            } => {
                let Some(ms) = current.clone() else {
                    link.reply_error(req, ErrorCode::WrongState, "open a scenario first")
                        .await;
                    continue;
                };
                let link = link.clone();
                tokio::spawn(async move {
                    match ms.switchover(apply_journal).await {
                        Ok(done) => {
                            let step = if master_step {
                                ms.master_step().await
                            } else {
                                "not requested".into()
                            };
                            tracing::info!(scenario = %ms.scenario.name, seq = done.seq, "switchover: replication stopped; master step: {step}");
                            let _ = link
                                .send(Message::SwitchoverReady {
                                    req,
                                    seq: done.seq,
                                    master_step: step,
                                })
                                .await;
                        }
                        Err(e) => link.reply_error(req, ErrorCode::Master, e).await,
                    }
                });
            }
            Message::Control { req, json } => {
                let v = match serde_json::from_str::<ControlRequest>(&json) {
                    Ok(r) => handle_control(&shared, r).await,
                    Err(e) => {
                        error_reply(ErrorCode::BadRequest, format!("not a control request: {e}"))
                    }
                };
                let _ = link
                    .send(Message::ControlReply {
                        req,
                        json: v.to_string(),
                    })
                    .await;
            }
            Message::Stats { .. } => {}
            other => {
                if let Some(req) = other.req() {
                    link.reply_error(
                        req,
                        ErrorCode::BadRequest,
                        format!("{} is not a request the master serves", other.name()),
                    )
                    .await;
                }
            }
        }
    }
    if let Some(ms) = current {
        tracing::info!(scenario = %ms.scenario.name, "appliance link closed: {}; capturing continues", link.closed_reason().unwrap_or_default());
    }
}

async fn open_master(
    shared: &Arc<Shared>,
    link: &Link,
    text: &str,
) -> Result<Arc<MasterScenario>, (ErrorCode, String)> {
    let scenario =
        Scenario::from_toml_str(text).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
    let v = scenario.validate();
    if !v.is_ok() {
        let errs: Vec<String> = v.errors().map(|f| f.to_string()).collect();
        return Err((
            ErrorCode::BadRequest,
            format!("the scenario is not valid: {}", errs.join("; ")),
        ));
    }
    if let Security::Tls(tls) = &shared.config.security {
        let host = &scenario.master.host;
        let mine = tls.names().iter().any(|n| n.eq_ignore_ascii_case(host))
            || shared.config.name.eq_ignore_ascii_case(host);
        if !mine {
            return Err((
                ErrorCode::Identity,
                format!(
                    "this engine is `{}` (certificate names: {}), but the scenario's master is `{host}`: check [master] host",
                    shared.config.name,
                    tls.names().join(", ")
                ),
            ));
        }
    }
    let name = scenario.name.clone();
    let existing = lock(&shared.masters).get(&name).cloned();
    if let Some(ms) = existing {
        if ms.scenario == scenario {
            return Ok(ms);
        }
        tracing::info!(scenario = %name, "scenario changed: reopening its master side");
        ms.stop_session();
        ms.stop_capture_only();
        lock(&shared.masters).remove(&name);
    }
    let dir = shared.config.data_dir.join("master").join(&name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| (ErrorCode::Internal, format!("{}: {e}", dir.display())))?;
    write_atomic(&dir.join("scenario.toml"), text.as_bytes())
        .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    let _ = std::fs::remove_file(dir.join("stopped"));
    let provided = lock(&shared.provided).get(&name).cloned();
    let data = shared.config.data_dir.clone();
    let nbd = shared.nbd.clone();
    let ms = tokio::task::spawn_blocking(move || {
        MasterScenario::open(&data, scenario, provided, nbd.as_ref())
    })
    .await
    .map_err(|e| (ErrorCode::Internal, e.to_string()))?
    .map_err(|e| (ErrorCode::Master, e.to_string()))?;
    tracing::info!(scenario = %name, appliance = %link.peer().name, "scenario opened on the master");
    lock(&shared.masters).insert(name, ms.clone());
    Ok(ms)
}

fn ok(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("ok".into(), json!(true));
    }
    v
}

async fn handle_control(shared: &Arc<Shared>, req: ControlRequest) -> serde_json::Value {
    let appliance = |name: &str| lock(&shared.appliances).get(name).cloned();
    match req {
        ControlRequest::Ping => ok(json!({
            "name": shared.config.name,
            "software": connect::software(),
            "protocol": PROTOCOL_VERSION,
            "listen": shared.local_addr.map(|a| a.to_string()),
            "nbd_listen": lock(&shared.nbd_handle).as_ref().and_then(|h| h.local_addr()).map(|a| a.to_string()),
            "masters": lock(&shared.masters).keys().cloned().collect::<Vec<_>>(),
            "appliances": lock(&shared.appliances).keys().cloned().collect::<Vec<_>>(),
        })),
        ControlRequest::Run { scenario } => {
            let s = match Scenario::from_toml_str(&scenario) {
                Ok(s) => s,
                Err(e) => return error_reply(ErrorCode::BadRequest, e.to_string()),
            };
            let v = s.validate();
            if !v.is_ok() {
                let errs: Vec<String> = v.errors().map(|f| f.to_string()).collect();
                return error_reply(ErrorCode::BadRequest, format!("the scenario is not valid: {}", errs.join("; ")));
            }
            if let Some(a) = appliance(&s.name) {
                match a.run_state() {
                    RunState::Running | RunState::SwitchingOver => {
                        return error_reply(ErrorCode::WrongState, format!("scenario `{}` is already running: stop it first", s.name))
                    }
                    _ => {}
                }
            }
            let name = s.name.clone();
            let a = match shared.appliance_scenario(s, scenario) {
                Ok(a) => a,
                Err(e) => return error_reply(ErrorCode::BadRequest, e.to_string()),
            };
            a.set_running();
            a.start(shared.clone());
            lock(&shared.appliances).insert(name.clone(), a);
            ok(json!({"name": name, "state": "running"}))
        }
        ControlRequest::Stop { name } => match appliance(&name) {
            Some(a) => {
                a.stop().await;
                ok(json!({"name": name, "state": "stopped"}))
            }
            None => match lock(&shared.masters).remove(&name) {
                Some(m) => {
                    m.stop();
                    mark_master_stopped(shared, &name);
                    ok(json!({"name": name, "state": "stopped"}))
                }
                None => error_reply(ErrorCode::NoSuchScenario, format!("no scenario `{name}` on engine `{}`", shared.config.name)),
            },
        },
        ControlRequest::StopMaster { name } => {
            if let Some(m) = lock(&shared.masters).remove(&name) {
                m.stop();
            }
            mark_master_stopped(shared, &name);
            ok(json!({"name": name, "state": "stopped"}))
        }
        ControlRequest::Status { name } => {
            let apps: Vec<_> = lock(&shared.appliances).values().cloned().collect();
            let masters: Vec<_> = lock(&shared.masters).values().cloned().collect();
            let mut list = Vec::new();
            for a in apps.iter().filter(|a| name.as_deref().is_none_or(|n| n == a.name())) {
                list.push(a.status());
            }
            for m in masters.iter().filter(|m| name.as_deref().is_none_or(|n| n == m.scenario.name)) {
                let st = m.status();
                let stats = m.events.stats().snapshot();
                list.push(json!({
                    "name": m.scenario.name,
                    "role": "master",
                    "state": st.state,
                    "changed_bytes": stats.changed_bytes,
                    "sent_bytes": stats.sent_bytes,
                    "sync": {"bytes_done": st.sync_bytes_done, "bytes_total": st.sync_bytes_total},
                    "lag": {"seconds": st.lag_seconds, "bytes": st.pending_bytes, "records": st.last_seq.saturating_sub(st.acknowledged)},
                    "last_event": st.last_event,
                    "last_error": st.last_error,
                    "replica": st.replica,
                    "journal_id": m.journal_id,
                    "nbd_exports": m.nbd_exports(),
                }));
            }
            if let Some(n) = &name {
                if list.is_empty() {
                    return error_reply(ErrorCode::NoSuchScenario, format!("no scenario `{n}` on engine `{}`", shared.config.name));
                }
            }
            ok(json!({"engine": shared.config.name, "scenarios": list}))
        }
        ControlRequest::Switchover { name, skip_journal, force, point } => match appliance(&name) {
            Some(a) => match a.switchover(!skip_journal, force, &choice(&point)).await {
                Ok(report) => ok(json!({"name": name, "switchover": report})),
                Err((code, e)) => error_reply(code, e),
            },
            None => error_reply(ErrorCode::NoSuchScenario, format!("no scenario `{name}` on this appliance (`{}`): switch over on the appliance engine", shared.config.name)),
        },
        ControlRequest::VmStart { name, point, force } => match appliance(&name) {
            Some(a) => match a.vm_start(&choice(&point), force).await {
                Ok(report) => ok(json!({"name": name, "vm": report})),
                Err((code, e)) => error_reply(code, e),
            },
            None => error_reply(ErrorCode::NoSuchScenario, format!("no scenario `{name}` on this appliance (`{}`)", shared.config.name)),
        },
        ControlRequest::Bookmark { name, bookmark, replica, wait_secs } => match appliance(&name) {
            Some(a) => match a.bookmark(&bookmark, replica, Duration::from_secs(wait_secs)).await {
                Ok(v) => ok(v),
                Err((code, e)) => error_reply(code, e),
            },
            None => error_reply(ErrorCode::NoSuchScenario, format!("no scenario `{name}` on this appliance (`{}`): bookmark on the appliance engine", shared.config.name)),
        },
        ControlRequest::Points { name } => match appliance(&name) {
            Some(a) => match a.points().await {
                Ok(v) => ok(v),
                Err((code, e)) => error_reply(code, e),
            },
            None => error_reply(ErrorCode::NoSuchScenario, format!("no scenario `{name}` on this appliance (`{}`)", shared.config.name)),
        },
        ControlRequest::MasterSeq { name } => {
            let Some(m) = lock(&shared.masters).get(&name).cloned() else {
                return error_reply(ErrorCode::NoSuchScenario, format!("engine `{}` is not the master of scenario `{name}`", shared.config.name));
            };
            // A last capture (a rescan finds what changed since the last scan), then its sequence.
            let r = tokio::task::spawn_blocking(move || m.capture_now()).await;
            match r {
                Ok(Ok(seq)) => ok(json!({"name": name, "seq": seq})),
                Ok(Err(e)) => error_reply(ErrorCode::Master, format!("capturing the newest changes failed: {e}")),
                Err(e) => error_reply(ErrorCode::Internal, e.to_string()),
            }
        }
        ControlRequest::Discover { scenario } => {
            let volumes = match scenario.as_deref().map(Scenario::from_toml_str) {
                None => None,
                Some(Ok(s)) => Some(discover::scenario_volumes(&s)),
                Some(Err(e)) => return error_reply(ErrorCode::BadRequest, e.to_string()),
            };
            ok(json!({
                "name": shared.config.name,
                "software": connect::software(),
                "protocol": PROTOCOL_VERSION,
                "mounts": discover::mounts(),
                "volumes": volumes,
                "data_dir": shared.config.data_dir,
                "free_bytes": discover::free_space(&shared.config.data_dir),
            }))
        }
        ControlRequest::Verify { scenario } => verify(shared, &scenario).await,
    }
}

/// A recovery point as a control request names it.
fn choice(point: &str) -> target::PointChoice {
    point.parse().unwrap_or(target::PointChoice::Latest)
}

fn mark_master_stopped(shared: &Shared, name: &str) {
    let dir = shared.config.data_dir.join("master").join(name);
    if dir.exists() {
        let _ = std::fs::write(
            dir.join("stopped"),
            b"stopped by the appliance or an operator\n",
        );
    }
}

/// Engine verification: what a scenario wizard checks before saving.
async fn verify(shared: &Arc<Shared>, text: &str) -> serde_json::Value {
    let s = match Scenario::from_toml_str(text) {
        Ok(s) => s,
        Err(e) => return error_reply(ErrorCode::BadRequest, e.to_string()),
    };
    let mut errors: Vec<String> = s.validate().errors().map(|f| f.to_string()).collect();
    let mut warnings: Vec<String> = Vec::new();
    let disks_dir = match &s.replica {
        rha_core::scenario::Replica::Local(l) if l.data_dir.is_absolute() => l.data_dir.clone(),
        rha_core::scenario::Replica::Local(l) => shared.config.data_dir.join(&l.data_dir),
        rha_core::scenario::Replica::Azure(_) => shared.config.data_dir.clone(),
    };
    if let Replica::Azure(_) = &s.replica {
        if let Err(e) = shared.target_for(&s) {
            errors.push(e.to_string());
        }
    }
    let free = discover::free_space(&disks_dir);
    // Reach the master: the live session, a NAT offer, or a call.
    let existing = lock(&shared.appliances).get(&s.name).and_then(|a| a.link());
    let owned = existing.is_none();
    let link = match existing {
        Some(l) => Ok(l),
        None if s.master.nat => {
            match tokio::time::timeout(Duration::from_secs(10), shared.take_nat_offer(&s.master.host)).await {
                Ok((l, _inbox)) => Ok(l),
                Err(_) => Err(format!("no connection offered by `{}` within 10 s: is its engine running with --dial to this appliance?", s.master.host)),
            }
        }
        None => shared
            .dial(
                &format!("{}:{}", replica::bracket(&s.master.host), s.master.port),
                Intent::Engine,
                &s,
            )
            .await
            .map(|(l, _)| l)
            .map_err(|e| e.to_string()),
    };
    let master = match link {
        Err(e) => {
            errors.push(format!("master: {e}"));
            json!({"reachable": false, "error": e})
        }
        Ok(l) => {
            let json_req = serde_json::to_string(&ControlRequest::Discover {
                scenario: Some(text.to_owned()),
            })
            .unwrap_or_default();
            let r = l
                .request("Discover", Duration::from_secs(60), |req| {
                    Message::Control {
                        req,
                        json: json_req,
                    }
                })
                .await;
            if owned {
                l.shutdown("verification done").await;
            }
            match r {
                Ok(Message::ControlReply { json, .. }) => {
                    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                    let mut total = 0u64;
                    for vol in v["volumes"].as_array().cloned().unwrap_or_default() {
                        if let Some(p) = vol["problem"].as_str() {
                            errors.push(format!(
                                "master volume `{}`: {p}",
                                vol["id"].as_str().unwrap_or("?")
                            ));
                        }
                        if vol["exclude"].as_bool() != Some(true) {
                            total += vol["size"].as_u64().unwrap_or(0);
                        }
                    }
                    // Azure replicas are page blobs: the appliance's disk holds none of them.
                    let local = matches!(s.replica, Replica::Local(_));
                    if let Some(f) = free.filter(|_| local) {
                        if f < total {
                            errors.push(format!(
                                "the replica needs {total} bytes for the disks but {} has {f} free",
                                disks_dir.display()
                            ));
                        }
                    }
                    if let Some(o) = v.as_object_mut() {
                        o.insert("reachable".into(), json!(true));
                        o.insert("peer".into(), json!(l.peer().name));
                        o.insert("protocol_version".into(), json!(l.peer().version));
                        o.insert("replica_bytes_needed".into(), json!(total));
                    }
                    v
                }
                Ok(other) => {
                    errors.push(format!("master answered {}", other.name()));
                    json!({"reachable": true})
                }
                Err(e) => {
                    errors.push(format!("master: {e}"));
                    json!({"reachable": true, "error": e.to_string()})
                }
            }
        }
    };
    if free.is_none() {
        warnings.push(format!(
            "cannot tell the free space of {}",
            disks_dir.display()
        ));
    }
    ok(json!({
        "scenario": s.name,
        "valid": errors.is_empty(),
        "errors": errors,
        "warnings": warnings,
        "appliance": {"name": shared.config.name, "disks_dir": disks_dir, "free_bytes": free},
        "master": master,
    }))
}

/// Waits until a shutdown flag turns true (without holding the watch's lock across awaits).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
