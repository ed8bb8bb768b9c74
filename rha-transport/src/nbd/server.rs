//! The NBD server: accept loop, per-connection handshake, transmission.
//!
//! One tokio task per connection. In transmission the task reads requests
//! in order and runs each on the blocking pool (volumes do synchronous
//! I/O), so a client's pipelined requests are served concurrently; a
//! writer task sends the replies as they complete (out of order, as NBD
//! allows, each carrying its request's cookie). A budget of
//! [`MAX_IN_FLIGHT_BYTES`] bounds the payload held in memory per
//! connection: the next request is not read until enough of it is free.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rha_core::volume::{Volume, VolumeError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::negotiate::{Agreed, ExportInfo, ExportLookup, Negotiation, Next, TlsMode};
use super::proto::*;
use crate::tls::Tls;

/// The most payload (read buffers and write data) one connection holds in
/// memory at once: 64 MiB, two maximum-size requests.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// The unit of the in-flight budget.
const BUDGET_UNIT: usize = 4096;
/// How long the handshake may wait for each message of the client, and for TLS.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing connection waits for its replies to be sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Size of the pieces an oversized write's payload is discarded in.
const DISCARD_PIECE: usize = 64 * 1024;

/// One volume served over NBD.
#[derive(Debug, Clone)]
pub struct NbdExport {
    /// The export name clients ask for (`nbd://host:port/NAME`).
    pub name: String,
    /// A description shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub description: String,
    /// The volume. For a protected volume this is a
    /// [`TrackedVolume`](rha_core::source::TrackedVolume): every write is
    /// journalled before it reaches the disk, and before the client gets
    /// its reply.
    pub volume: Arc<dyn Volume>,
    /// Refuse writes (`NBD_FLAG_READ_ONLY`).
    pub read_only: bool,
}

impl NbdExport {
    fn info(&self) -> ExportInfo {
        ExportInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            size: self.volume.size(),
            read_only: self.read_only,
        }
    }
}

/// What went wrong setting up or running the NBD server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// Two exports with one name.
    #[error("there is already an NBD export named `{name}`")]
    DuplicateExport {
        /// The name.
        name: String,
    },
    /// An export name the protocol cannot carry.
    #[error("`{name}` cannot be an NBD export name: {reason}")]
    BadExportName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Listening failed.
    #[error("cannot listen for NBD clients on {addr}: {source} (choose another address or port)")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why a connection ended abnormally (logged, never sent anywhere).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Proto(#[from] ProtoError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Closed(String),
    #[error("the client sent nothing for {secs} s during {what}", secs = HANDSHAKE_TIMEOUT.as_secs())]
    Timeout { what: &'static str },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ConnError {
    move |source| ConnError::Io { what, source }
}

struct Entry {
    export: Arc<NbdExport>,
    /// Turns true when the export is removed: its connections close.
    removed: watch::Sender<bool>,
}

struct Inner {
    exports: Mutex<HashMap<String, Entry>>,
    tls: Option<Arc<Tls>>,
    max_in_flight: usize,
    shutdown: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ExportLookup for Inner {
    fn list(&self) -> Vec<ExportInfo> {
        let mut v: Vec<ExportInfo> = lock(&self.exports)
            .values()
            .map(|e| e.export.info())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
    fn find(&self, name: &str) -> Option<ExportInfo> {
        lock(&self.exports).get(name).map(|e| e.export.info())
    }
}

/// An NBD server over a set of exports that can change while it runs.
///
/// # Example
/// ```no_run
/// # async fn f(volume: std::sync::Arc<dyn rha_core::volume::Volume>) -> Result<(), Box<dyn std::error::Error>> {
/// use rha_transport::nbd::{NbdExport, NbdServer};
/// let server = NbdServer::builder()
///     .export(NbdExport { name: "disk".into(), description: String::new(), volume, read_only: false })
///     .build()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
/// let handle = server.serve(listener);
/// // qemu-io -f raw nbd://127.0.0.1:10809/disk ...
/// handle.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NbdServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field("exports", &self.export_names())
            .field("tls", &self.inner.tls.is_some())
            .finish()
    }
}

/// Builds an [`NbdServer`].
#[derive(Debug, Default)]
pub struct NbdServerBuilder {
    exports: Vec<NbdExport>,
    tls: Option<Arc<Tls>>,
    max_in_flight: Option<usize>,
}

impl NbdServerBuilder {
    /// Serves `export` as well.
    pub fn export(mut self, export: NbdExport) -> Self {
        self.exports.push(export);
        self
    }

    /// Requires TLS (`NBD_OPT_STARTTLS`) with these certificates before any
    /// other option; clients must present a certificate the trust accepts.
    pub fn tls(mut self, tls: Option<Arc<Tls>>) -> Self {
        self.tls = tls;
        self
    }

    /// The most payload bytes one connection holds in memory (default
    /// [`MAX_IN_FLIGHT_BYTES`]; never less than one maximum-size request).
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight = Some(bytes);
        self
    }

    /// The server (not yet listening: see [`NbdServer::serve`]).
    pub fn build(self) -> Result<NbdServer, NbdError> {
        let (shutdown, _) = watch::channel(false);
        let server = NbdServer {
            inner: Arc::new(Inner {
                exports: Mutex::new(HashMap::new()),
                tls: self.tls,
                max_in_flight: self
                    .max_in_flight
                    .unwrap_or(MAX_IN_FLIGHT_BYTES)
                    .max(MAX_PAYLOAD as usize),
                shutdown,
            }),
        };
        for e in self.exports {
            server.add_export(e)?;
        }
        Ok(server)
    }
}

/// Checks that `name` can be an export name (a non-empty NBD string).
pub fn check_export_name(name: &str) -> Result<(), NbdError> {
    let bad = |reason: &str| NbdError::BadExportName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_STRING {
        return Err(bad("it is longer than 4096 bytes"));
    }
    if name.contains('\0') {
        return Err(bad("it contains a NUL character"));
    }
    Ok(())
}

impl NbdServer {
    /// A builder.
    pub fn builder() -> NbdServerBuilder {
        NbdServerBuilder::default()
    }

    /// Adds an export; clients can open it from now on.
    pub fn add_export(&self, export: NbdExport) -> Result<(), NbdError> {
        check_export_name(&export.name)?;
        let mut exports = lock(&self.inner.exports);
        if exports.contains_key(&export.name) {
            return Err(NbdError::DuplicateExport { name: export.name });
        }
        let (removed, _) = watch::channel(false);
        tracing::info!(export = %export.name, volume = %export.volume.describe(), "NBD export added");
        exports.insert(
            export.name.clone(),
            Entry {
                export: Arc::new(export),
                removed,
            },
        );
        Ok(())
    }

    /// Removes an export: new clients cannot open it, and the connections
    /// using it finish their requests in flight, flush and close. Returns
    /// whether it existed.
    pub fn remove_export(&self, name: &str) -> bool {
        match lock(&self.inner.exports).remove(name) {
            Some(e) => {
                e.removed.send_replace(true);
                tracing::info!(export = %name, "NBD export removed");
                true
            }
            None => false,
        }
    }

    /// The names of the exports, sorted.
    pub fn export_names(&self) -> Vec<String> {
        self.inner.list().into_iter().map(|e| e.name).collect()
    }

    /// Whether the server requires TLS.
    pub fn requires_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// Serves clients that connect to `listener` until the handle's
    /// [`NbdHandle::shutdown`].
    pub fn serve(&self, listener: TcpListener) -> NbdHandle {
        let local_addr = listener.local_addr().ok();
        let (alive, done) = mpsc::channel::<()>(1);
        tokio::spawn(accept_loop(self.inner.clone(), listener, alive));
        NbdHandle {
            server: self.clone(),
            local_addr,
            done,
        }
    }

    /// Binds `addr` and serves it (see [`NbdServer::serve`]).
    pub async fn listen(&self, addr: &str) -> Result<NbdHandle, NbdError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NbdError::Listen {
                addr: addr.to_owned(),
                source,
            })?;
        Ok(self.serve(listener))
    }
}

/// A running NBD listener; [`NbdHandle::shutdown`] stops it.
#[derive(Debug)]
pub struct NbdHandle {
    server: NbdServer,
    local_addr: Option<SocketAddr>,
    done: mpsc::Receiver<()>,
}

impl NbdHandle {
    /// The address clients connect to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The server (to add and remove exports).
    pub fn server(&self) -> &NbdServer {
        &self.server
    }

    /// Stops accepting clients; every connection finishes its requests in
    /// flight (their replies are sent), flushes its volume and closes.
    /// Returns when all have.
    pub async fn shutdown(mut self) {
        self.server.inner.shutdown.send_replace(true);
        // Every connection holds a sender; recv returns None once all are gone.
        while self.done.recv().await.is_some() {}
    }
}

/// Waits until a flag turns true (without holding the watch's lock across awaits).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// The accept loop. `alive` is what [`NbdHandle::shutdown`] waits for:
/// every holder of the server's state (this loop, each connection, each
/// volume operation still running) holds a clone, and lets it go only
/// after its share of the state, so that once all are gone nothing holds
/// an export's volume any more (its owner may then close the journal).
async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, alive: mpsc::Sender<()>) {
    let mut stop = inner.shutdown.subscribe();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("NBD accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = until_true(&mut stop) => break,
        };
        let inner = inner.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            match connection(inner, tcp, peer, &alive).await {
                Ok(()) => tracing::debug!(%peer, "NBD connection closed"),
                Err(e) => tracing::warn!(%peer, "NBD connection closed: {e}"),
            }
            drop(alive);
        });
    }
    // The port and the state first, then the signal that this loop is gone
    // (parameters would drop in the reverse order: `alive` first).
    drop(listener);
    drop(inner);
    drop(alive);
}

/// Reads exactly `buf.len()` bytes within the handshake timeout.
async fn read_handshake<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), ConnError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, s.read_exact(buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ConnError::Closed(format!(
            "the client closed the connection during {what}"
        ))),
        Ok(Err(e)) => Err(ConnError::Io { what, source: e }),
        Err(_) => Err(ConnError::Timeout { what }),
    }
}

async fn connection(
    inner: Arc<Inner>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    alive: &mpsc::Sender<()>,
) -> Result<(), ConnError> {
    let _ = tcp.set_nodelay(true);
    let offered = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;
    tcp.write_all(&encode_greeting(offered))
        .await
        .map_err(io_err("sending the greeting"))?;
    let mut flags = [0u8; 4];
    read_handshake(&mut tcp, &mut flags, "the client flags").await?;
    let client = decode_client_flags(flags, offered)?;
    let mode = match inner.tls {
        Some(_) => TlsMode::Required,
        None => TlsMode::Off,
    };
    let mut neg = Negotiation::new(mode, client);
    match negotiate(&inner, &mut tcp, &mut neg).await? {
        Some(Next::Transmission(a)) => transmission(&inner, tcp, a, peer, alive).await,
        Some(Next::StartTls) => {
            let Some(tls) = &inner.tls else {
                return Err(ConnError::Closed("STARTTLS without TLS".into()));
            };
            let accept = tls.acceptor().accept(tcp);
            let mut stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(ConnError::Closed(format!(
                        "TLS handshake failed: {}",
                        crate::tls::describe_handshake_error(&e)
                    )))
                }
                Err(_) => {
                    return Err(ConnError::Timeout {
                        what: "the TLS handshake",
                    })
                }
            };
            neg.tls_started();
            tracing::debug!(%peer, "NBD: TLS started");
            match negotiate(&inner, &mut stream, &mut neg).await? {
                Some(Next::Transmission(a)) => transmission(&inner, stream, a, peer, alive).await,
                _ => {
                    let _ = stream.shutdown().await;
                    Ok(())
                }
            }
        }
        _ => Ok(()),
    }
}

/// Option haggling until transmission, STARTTLS or the end: `Some(next)`
/// for transmission or STARTTLS, `None` when the connection is to close.
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    s: &mut S,
    neg: &mut Negotiation,
) -> Result<Option<Next>, ConnError> {
    let mut out = Vec::new();
    loop {
        let mut hdr = [0u8; OPTION_HEADER_BYTES];
        read_handshake(s, &mut hdr, "option haggling").await?;
        let Some(header) = decode_option_header(&hdr)? else {
            return Err(ConnError::Closed("short option header".into()));
        };
        out.clear();
        let next = if header.len > MAX_OPTION_BYTES {
            neg.too_big(header, &mut out)
        } else {
            let mut data = vec![0u8; header.len as usize];
            read_handshake(s, &mut data, "an option's data").await?;
            tracing::debug!(
                option = option_name(header.option),
                len = header.len,
                "NBD option"
            );
            let request = decode_option(header.option, &data);
            neg.answer(header.option, request, inner, &mut out)
        };
        s.write_all(&out)
            .await
            .map_err(io_err("sending an option reply"))?;
        s.flush().await.map_err(io_err("sending an option reply"))?;
        match next {
            Next::Continue => {}
            Next::Close(reason) => {
                tracing::debug!("NBD negotiation ends: {reason}");
                let _ = s.shutdown().await;
                return Err(ConnError::Closed(reason));
            }
            n @ (Next::StartTls | Next::Transmission(_)) => return Ok(Some(n)),
        }
    }
}

/// One reply for the writer task.
struct Reply {
    cookie: u64,
    /// `Some(offset)` for a read: its data goes in the reply.
    read_at: Option<u64>,
    result: Result<Option<Vec<u8>>, Refusal>,
    /// Released once the reply is written.
    _budget: Option<OwnedSemaphorePermit>,
}

fn volume_refusal(e: VolumeError) -> Refusal {
    let errno = match &e {
        VolumeError::OutOfRange { .. } => NBD_EINVAL,
        VolumeError::ReadOnly { .. } => NBD_EPERM,
        _ => NBD_EIO,
    };
    Refusal {
        errno,
        reason: e.to_string(),
    }
}

/// Reads a write's `len` bytes of payload into a buffer that the journal
/// can keep (not zeroed first: it is read straight into its spare capacity).
async fn read_payload<R: AsyncRead + Unpin>(
    rd: &mut R,
    len: usize,
) -> std::io::Result<bytes::Bytes> {
    let mut data = bytes::BytesMut::with_capacity(len);
    while data.len() < len {
        let want = (len - data.len()) as u64;
        if (&mut *rd).take(want).read_buf(&mut data).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(data.freeze())
}

/// Runs one checked request on the volume (blocking I/O).
fn execute(
    volume: &dyn Volume,
    r: &Request,
    payload: Option<bytes::Bytes>,
) -> Result<Option<Vec<u8>>, Refusal> {
    let fua = r.flags & NBD_CMD_FLAG_FUA != 0;
    match r.kind {
        NBD_CMD_READ => {
            let mut buf = vec![0u8; r.len as usize];
            volume.read_at(r.offset, &mut buf).map_err(volume_refusal)?;
            return Ok(Some(buf));
        }
        NBD_CMD_WRITE => {
            let data = payload.unwrap_or_default();
            // The journal keeps the buffer for the records it holds in memory.
            volume.write_bytes(r.offset, data).map_err(volume_refusal)?;
        }
        // TRIM zeroes through the journal, so the replica stays equal to
        // the master (reads after a trim return zeros on both).
        NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES => {
            volume
                .write_zeroes(r.offset, r.len as u64)
                .map_err(volume_refusal)?;
        }
        NBD_CMD_FLUSH => {
            volume.flush().map_err(volume_refusal)?;
            return Ok(None);
        }
        // Advisory only: nothing to do.
        NBD_CMD_CACHE => return Ok(None),
        other => {
            return Err(Refusal {
                errno: NBD_EINVAL,
                reason: format!("command {other} is not supported"),
            })
        }
    }
    if fua {
        volume.flush().map_err(volume_refusal)?;
    }
    Ok(None)
}

async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    r: &Reply,
    structured: bool,
) -> io::Result<()> {
    match (&r.result, r.read_at) {
        (Ok(Some(data)), Some(offset)) if structured => {
            w.write_all(&encode_offset_data_header(
                r.cookie,
                offset,
                data.len() as u32,
            ))
            .await?;
            w.write_all(data).await
        }
        (Ok(Some(data)), _) => {
            w.write_all(&encode_simple_reply(NBD_OK, r.cookie)).await?;
            w.write_all(data).await
        }
        (Ok(None), Some(_)) if structured => {
            w.write_all(&encode_chunk_header(
                NBD_REPLY_FLAG_DONE,
                NBD_REPLY_TYPE_NONE,
                r.cookie,
                0,
            ))
            .await
        }
        (Ok(None), _) => w.write_all(&encode_simple_reply(NBD_OK, r.cookie)).await,
        (Err(e), _) if structured => {
            let mut b = Vec::new();
            encode_error_chunk(r.cookie, e.errno, &e.reason, &mut b);
            w.write_all(&b).await
        }
        (Err(e), _) => w.write_all(&encode_simple_reply(e.errno, r.cookie)).await,
    }
}

/// Sends replies as they come, batching what is ready into one flush.
async fn writer<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Reply>,
    structured: bool,
) -> io::Result<W> {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    while let Some(r) = rx.recv().await {
        write_reply(&mut w, &r, structured).await?;
        drop(r);
        while let Ok(r) = rx.try_recv() {
            write_reply(&mut w, &r, structured).await?;
        }
        w.flush().await?;
    }
    Ok(w.into_inner())
}

/// Why the request loop stopped.
enum End {
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the connection (or it broke).
    ClientGone(String),
    /// The server or the export is shutting down.
    Shutdown,
    /// The client broke the protocol: close without serving more.
    Violation(String),
}

async fn discard<R: AsyncRead + Unpin>(r: &mut R, mut len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; DISCARD_PIECE];
    while len > 0 {
        let n = len.min(DISCARD_PIECE as u64) as usize;
        r.read_exact(&mut buf[..n]).await?;
        len -= n as u64;
    }
    Ok(())
}

async fn transmission<S>(
    inner: &Inner,
    stream: S,
    agreed: Agreed,
    peer: SocketAddr,
    alive: &mpsc::Sender<()>,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (export, mut removed) = {
        let exports = lock(&inner.exports);
        match exports.get(&agreed.export.name) {
            Some(e) => (e.export.clone(), e.removed.subscribe()),
            None => {
                return Err(ConnError::Closed(format!(
                    "export `{}` was removed during the handshake",
                    agreed.export.name
                )))
            }
        }
    };
    let mut stop = inner.shutdown.subscribe();
    let structured = agreed.structured;
    let limits = Limits {
        size: export.volume.size(),
        read_only: export.read_only,
        structured,
    };
    tracing::info!(%peer, export = %export.name, structured, "NBD client connected");
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let (tx, rx) = mpsc::channel::<Reply>(256);
    let writer = tokio::spawn(writer(wr, rx, structured));
    let units = (inner.max_in_flight / BUDGET_UNIT) as u32;
    let budget = Arc::new(Semaphore::new(units as usize));
    let mut tasks = JoinSet::new();
    let end = loop {
        while tasks.try_join_next().is_some() {}
        let mut hdr = [0u8; REQUEST_BYTES];
        let read = tokio::select! {
            r = rd.read_exact(&mut hdr) => r,
            _ = until_true(&mut stop) => break End::Shutdown,
            _ = until_true(&mut removed) => break End::Shutdown,
        };
        if let Err(e) = read {
            break End::ClientGone(match e.kind() {
                io::ErrorKind::UnexpectedEof => "the client closed the connection".into(),
                _ => format!("reading a request: {e}"),
            });
        }
        let req = match decode_request(&hdr) {
            Ok(Some(r)) => r,
            Ok(None) => break End::Violation("short request header".into()),
            Err(e) => break End::Violation(e.to_string()),
        };
        if req.kind == NBD_CMD_DISC {
            break End::Disconnect;
        }
        if let Err(refusal) = check_request(&req, &limits) {
            tracing::debug!(%peer, cookie = req.cookie, "NBD request refused: {refusal}");
            if req.kind == NBD_CMD_WRITE {
                // The payload follows whatever we think of it: consume it
                // in bounded pieces so the next request is read right.
                if let Err(e) = discard(&mut rd, req.len as u64).await {
                    break End::ClientGone(format!("reading a refused write's payload: {e}"));
                }
            }
            let reply = Reply {
                cookie: req.cookie,
                read_at: (req.kind == NBD_CMD_READ).then_some(req.offset),
                result: Err(refusal),
                _budget: None,
            };
            if tx.send(reply).await.is_err() {
                break End::ClientGone("the reply writer stopped".into());
            }
            continue;
        }
        let bytes = match req.kind {
            NBD_CMD_READ | NBD_CMD_WRITE => req.len as usize,
            _ => 0,
        };
        let cost = (bytes.div_ceil(BUDGET_UNIT) as u32).clamp(1, units);
        // A client that never reads its replies stops here once the budget
        // is spent, until the server or the export shuts down.
        let permit = tokio::select! {
            p = budget.clone().acquire_many_owned(cost) => match p {
                Ok(p) => p,
                Err(_) => break End::Shutdown,
            },
            _ = until_true(&mut stop) => break End::Shutdown,
            _ = until_true(&mut removed) => break End::Shutdown,
        };
        let payload = if req.kind == NBD_CMD_WRITE {
            match read_payload(&mut rd, bytes).await {
                Ok(data) => Some(data),
                // A write whose payload did not arrive was never acknowledged.
                Err(e) => break End::ClientGone(format!("reading a write's payload: {e}")),
            }
        } else {
            None
        };
        let volume = export.volume.clone();
        let alive = alive.clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            // The operation holds `alive` until it has let go of the volume:
            // an aborted task does not stop a blocking operation.
            let result = tokio::task::spawn_blocking(move || {
                let result = execute(&*volume, &req, payload);
                drop(volume);
                drop(alive);
                result
            })
            .await
            .unwrap_or_else(|e| {
                Err(Refusal {
                    errno: NBD_EIO,
                    reason: format!("the I/O task failed: {e}"),
                })
            });
            if let Err(e) = &result {
                tracing::warn!(
                    cookie = req.cookie,
                    "NBD {} failed: {}",
                    command_name(req.kind),
                    e.reason
                );
            }
            let _ = tx
                .send(Reply {
                    cookie: req.cookie,
                    read_at: (req.kind == NBD_CMD_READ).then_some(req.offset),
                    result,
                    _budget: Some(permit),
                })
                .await;
        });
    };
    // Everything read is executed and answered before the connection
    // closes; a client that does not read its replies gets DRAIN_TIMEOUT
    // (the writes were done before their replies: aborting loses no write).
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(%peer, export = %export.name, "the client did not read its replies for {} s: closing", DRAIN_TIMEOUT.as_secs());
        tasks.abort_all();
        writer.abort();
    }
    let volume = export.volume.clone();
    let flushed = tokio::task::spawn_blocking(move || volume.flush()).await;
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%peer, export = %export.name, "flush at disconnect failed: {e}")
        }
        Err(e) => tracing::warn!(%peer, export = %export.name, "flush at disconnect failed: {e}"),
    }
    drop(tx);
    if let Ok(Ok(mut w)) = writer.await {
        let _ = w.shutdown().await;
    }
    match end {
        End::Disconnect => {
            tracing::info!(%peer, export = %export.name, "NBD client disconnected");
            Ok(())
        }
        End::ClientGone(why) => {
            tracing::info!(%peer, export = %export.name, "NBD client gone: {why}");
            Ok(())
        }
        End::Shutdown => {
            tracing::info!(%peer, export = %export.name, "NBD connection closed: the export or the server is shutting down");
            Ok(())
        }
        End::Violation(why) => Err(ConnError::Closed(format!(
            "protocol violation on export `{}`: {why}",
            export.name
        ))),
    }
}
