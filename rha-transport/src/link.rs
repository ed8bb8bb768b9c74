//! One authenticated connection between two engines (or an operator and an
//! engine), after the handshake: a writer task, a reader task, request ids,
//! heartbeats and byte counters.
//!
//! ```text
//!   Link::request ──► pending[req] ──► out (bounded) ──► writer task ──► limiter ──► socket
//!   socket ──► reader task ──► reply?  ──► pending[req] (wakes the requester)
//!                          └─► request ──► inbox (bounded: back-pressure reaches TCP)
//! ```
//!
//! A link closes when either side sends [`Message::Close`], the socket fails,
//! a frame is malformed (nothing in it is applied), or nothing arrives for
//! [`Link::dead_after`]. Every waiting request then fails with [`LinkError::Closed`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::limit::Limiter;
use crate::wire::{self, Codec, Compression, ErrorCode, Message, WireError};

/// A byte stream a link runs over: TLS or (explicitly) plain TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// Messages queued for the writer before senders wait (back-pressure).
const OUT_QUEUE: usize = 32;
/// Requests queued for the local handler before the reader stops reading.
const IN_QUEUE: usize = 64;

/// Who is at the other end of a link.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The name the peer gave in its handshake.
    pub name: String,
    /// The names its certificate holds (empty over plaintext).
    pub cert_names: Vec<String>,
    /// The peer's socket address.
    pub addr: String,
    /// The protocol version in use.
    pub version: u16,
    /// The compression in use.
    pub compression: Compression,
    /// The peer's software, as it says.
    pub software: String,
}

impl PeerInfo {
    /// True when `host` is the peer's handshake name or one of its certificate's names.
    pub fn is_named(&self, host: &str) -> bool {
        self.name.eq_ignore_ascii_case(host)
            || self.cert_names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }
}

/// What went wrong on a link.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The link is closed (the reason says why: peer closed, socket error, malformed frame, silence).
    #[error("connection to {peer} closed: {reason}")]
    Closed {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("{peer} did not answer {what} within {seconds} s")]
    Timeout {
        /// The peer.
        peer: String,
        /// The request.
        what: &'static str,
        /// The time allowed.
        seconds: u64,
    },
    /// The peer answered with an error.
    #[error("{peer}: {message}")]
    Remote {
        /// The peer.
        peer: String,
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The peer answered with a message that does not answer the request.
    #[error("{peer} answered {got} to {asked}")]
    Unexpected {
        /// The peer.
        peer: String,
        /// The request.
        asked: &'static str,
        /// The answer's type.
        got: &'static str,
    },
}

/// What the writer task sends: a message to encode, or a frame its sender
/// encoded ([`Link::send_frame_blocking`]).
enum Outgoing {
    Message(Message),
    Frame(BytesMut),
}

/// Frames at least this large are written to the socket as they are, not
/// copied into the writer's batch buffer.
const DIRECT_WRITE: usize = 64 << 10;

enum Waiter {
    Async(oneshot::Sender<Message>),
    Blocking(std::sync::mpsc::SyncSender<Message>),
}

/// A request sent by [`Link::send_request_blocking`] whose answer has not
/// been taken yet. Dropping it forgets the answer.
#[derive(Debug)]
pub struct PendingAnswer {
    link: Link,
    req: u64,
    rx: std::sync::mpsc::Receiver<Message>,
}

impl PendingAnswer {
    /// The request's id.
    pub fn req(&self) -> u64 {
        self.req
    }

    /// Waits up to `timeout` for the answer to the request (`what`, for
    /// messages); an [`Message::Error`] answer becomes [`LinkError::Remote`].
    pub fn wait(self, what: &'static str, timeout: Duration) -> Result<Message, LinkError> {
        match self.rx.recv_timeout(timeout) {
            Ok(answer) => self.link.check_answer(what, answer),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(self.link.closed_error()),
            // Drop takes the request out of the pending ones.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(LinkError::Timeout {
                peer: self.link.inner.peer.name.clone(),
                what,
                seconds: timeout.as_secs(),
            }),
        }
    }
}

impl Drop for PendingAnswer {
    fn drop(&mut self) {
        // An answer not waited for must not keep its slot.
        self.link.lock_pending().remove(&self.req);
    }
}

struct Inner {
    out: mpsc::Sender<Outgoing>,
    max_frame: usize,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_req: AtomicU64,
    peer: PeerInfo,
    sent: AtomicU64,
    received: AtomicU64,
    last_seen_ms: AtomicU64,
    /// The master's newest sequence, as its heartbeats say (or ours, to send).
    peer_last_seq: AtomicU64,
    local_last_seq: AtomicU64,
    closed: watch::Sender<Option<String>>,
    heartbeat: watch::Sender<Duration>,
    limiter: Arc<Limiter>,
    /// The compression of the frames this side sends (its wire id).
    compression: AtomicU8,
}

/// A live connection. Cheap to clone; all clones share it.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.inner.peer.name)
            .field("addr", &self.inner.peer.addr)
            .finish()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// True for the messages that answer a request.
fn is_answer(m: &Message) -> bool {
    matches!(
        m,
        Message::ScenarioOpened { .. }
            | Message::StateReply { .. }
            | Message::HashesReply { .. }
            | Message::Applied { .. }
            | Message::Ok { .. }
            | Message::BlockData { .. }
            | Message::SwitchoverReady { .. }
            | Message::ControlReply { .. }
    ) || matches!(m, Message::Error { req, .. } if *req != 0)
}

impl Link {
    /// Starts the reader and writer tasks over `stream`, whose handshake is
    /// done. Returns the link and the inbox of requests from the peer.
    pub fn start(
        stream: BoxStream,
        peer: PeerInfo,
        max_frame: usize,
        limiter: Arc<Limiter>,
    ) -> (Link, mpsc::Receiver<Message>) {
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(IN_QUEUE);
        let (closed, _) = watch::channel(None);
        let (heartbeat, _) = watch::channel(Duration::from_secs(5));
        let compression = peer.compression;
        let inner = Arc::new(Inner {
            out: out_tx,
            max_frame,
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            peer,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(now_ms()),
            peer_last_seq: AtomicU64::new(0),
            local_last_seq: AtomicU64::new(0),
            closed,
            heartbeat,
            limiter: limiter.clone(),
            compression: AtomicU8::new(wire::compression_id(compression)),
        });
        let link = Link { inner };
        let (r, w) = tokio::io::split(stream);
        let mut wcodec = Codec::new(max_frame);
        wcodec.set_compression(compression);
        let mut rcodec = Codec::new(max_frame);
        rcodec.set_compression(compression);
        tokio::spawn(writer(link.clone(), w, out_rx, wcodec, limiter));
        tokio::spawn(reader(link.clone(), r, in_tx, rcodec));
        tokio::spawn(heartbeats(link.clone()));
        (link, in_rx)
    }

    /// The bandwidth limiter of what this side sends.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.inner.limiter
    }

    /// The peer.
    pub fn peer(&self) -> &PeerInfo {
        &self.inner.peer
    }

    /// The compression of the frames this side sends now (the handshake's
    /// choice unless [`Link::set_compression`] changed it).
    pub fn compression(&self) -> Compression {
        wire::compression_from_id(self.inner.compression.load(Ordering::Relaxed))
            .unwrap_or(Compression::None)
    }

    /// Changes the compression of the frames this side sends from the next
    /// frame on. Every frame names its own algorithm and a protocol-1 peer
    /// decodes all of them, so either side may change its own at any time:
    /// a NAT session, offered before any scenario was known, takes the
    /// scenario's compression this way.
    pub fn set_compression(&self, c: Compression) {
        self.inner
            .compression
            .store(wire::compression_id(c), Ordering::Relaxed);
    }

    /// Bytes sent and received on the wire (frames, before TLS).
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.inner.sent.load(Ordering::Relaxed),
            self.inner.received.load(Ordering::Relaxed),
        )
    }

    /// Milliseconds since anything arrived from the peer.
    pub fn silent_ms(&self) -> u64 {
        now_ms().saturating_sub(self.inner.last_seen_ms.load(Ordering::Relaxed))
    }

    /// The newest sequence the peer's heartbeats announced.
    pub fn peer_last_seq(&self) -> u64 {
        self.inner.peer_last_seq.load(Ordering::Relaxed)
    }

    /// The sequence our heartbeats announce.
    pub fn set_local_last_seq(&self, seq: u64) {
        self.inner.local_last_seq.store(seq, Ordering::Relaxed);
    }

    /// Sets the heartbeat interval (the scenario's Is Alive interval).
    pub fn set_heartbeat(&self, every: Duration) {
        self.inner
            .heartbeat
            .send_replace(every.max(Duration::from_millis(100)));
    }

    /// How long the link may stay silent before it is declared dead.
    pub fn dead_after(&self) -> Duration {
        (*self.inner.heartbeat.borrow() * 4).max(Duration::from_secs(10))
    }

    /// Why the link closed, or `None` while it is open.
    pub fn closed_reason(&self) -> Option<String> {
        self.inner.closed.borrow().clone()
    }

    /// Waits until the link closes; returns why.
    pub async fn closed(&self) -> String {
        let mut rx = self.inner.closed.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return "link dropped".into();
            }
        }
    }

    /// Closes the link locally (and fails every waiting request).
    pub fn close(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let first = self.inner.closed.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason.clone());
                true
            } else {
                false
            }
        });
        if first {
            tracing::debug!(peer = %self.inner.peer.name, "link closed: {reason}");
        }
        self.lock_pending().clear();
    }

    /// Sends `Close` to the peer, then closes.
    pub async fn shutdown(&self, reason: &str) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.inner.out.send(Outgoing::Message(Message::Close {
                reason: reason.into(),
            })),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.close(reason);
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed_error(&self) -> LinkError {
        LinkError::Closed {
            peer: self.inner.peer.name.clone(),
            reason: self
                .closed_reason()
                .unwrap_or_else(|| "the connection ended".into()),
        }
    }

    /// A fresh request id.
    pub fn next_req(&self) -> u64 {
        self.inner.next_req.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a message that is not answered.
    pub async fn send(&self, msg: Message) -> Result<(), LinkError> {
        if self.closed_reason().is_some() {
            return Err(self.closed_error());
        }
        let mut closed = self.inner.closed.subscribe();
        tokio::select! {
            r = self.inner.out.send(Outgoing::Message(msg)) => r.map_err(|_| self.closed_error()),
            _ = closed.wait_for(|r| r.is_some()) => Err(self.closed_error()),
        }
    }

    /// Sends a message that is not answered, from a thread outside the runtime.
    pub fn send_blocking(&self, msg: Message) -> Result<(), LinkError> {
        self.push_blocking(Outgoing::Message(msg))
    }

    /// A codec that encodes frames for [`Link::send_frame_blocking`]: this
    /// link's frame limit and the compression it sends with now (check
    /// [`Link::compression`] before each frame: a NAT session may change it).
    pub fn encoder(&self) -> Codec {
        let mut codec = Codec::new(self.inner.max_frame);
        codec.set_compression(self.compression());
        codec
    }

    /// Sends one whole frame the caller encoded with a codec from
    /// [`Link::encoder`], from a thread outside the runtime. The frame is
    /// counted and rate-limited like a message; large frames reach the
    /// socket without another copy. The frame must be exactly one valid
    /// frame: the peer closes the connection on anything else.
    pub fn send_frame_blocking(&self, frame: BytesMut) -> Result<(), LinkError> {
        self.push_blocking(Outgoing::Frame(frame))
    }

    fn push_blocking(&self, item: Outgoing) -> Result<(), LinkError> {
        if self.closed_reason().is_some() {
            return Err(self.closed_error());
        }
        // Poll so that a link closing while the queue is full does not block forever.
        let mut item = item;
        loop {
            match self.inner.out.try_send(item) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.closed_error()),
                Err(mpsc::error::TrySendError::Full(m)) => {
                    if self.closed_reason().is_some() {
                        return Err(self.closed_error());
                    }
                    item = m;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    /// Sends a request built with a fresh id and waits for its answer.
    pub async fn request(
        &self,
        what: &'static str,
        timeout: Duration,
        build: impl FnOnce(u64) -> Message,
    ) -> Result<Message, LinkError> {
        let req = self.next_req();
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(req, Waiter::Async(tx));
        if let Err(e) = self.send(build(req)).await {
            self.lock_pending().remove(&req);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => self.check_answer(what, answer),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                self.lock_pending().remove(&req);
                Err(LinkError::Timeout {
                    peer: self.inner.peer.name.clone(),
                    what,
                    seconds: timeout.as_secs(),
                })
            }
        }
    }

    /// [`Link::request`] from a thread outside the runtime (the sync algorithms).
    pub fn request_blocking(
        &self,
        what: &'static str,
        timeout: Duration,
        build: impl FnOnce(u64) -> Message,
    ) -> Result<Message, LinkError> {
        self.send_request_blocking(build)?.wait(what, timeout)
    }

    /// Sends a request from a thread outside the runtime without waiting
    /// for its answer, so that several can be in flight: the answer is
    /// taken with [`PendingAnswer::wait`] (answers may be waited for in any
    /// order; the peer handles requests in the order sent).
    pub fn send_request_blocking(
        &self,
        build: impl FnOnce(u64) -> Message,
    ) -> Result<PendingAnswer, LinkError> {
        let req = self.next_req();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.lock_pending().insert(req, Waiter::Blocking(tx));
        if let Err(e) = self.send_blocking(build(req)) {
            self.lock_pending().remove(&req);
            return Err(e);
        }
        Ok(PendingAnswer {
            link: self.clone(),
            req,
            rx,
        })
    }

    fn check_answer(&self, _what: &'static str, answer: Message) -> Result<Message, LinkError> {
        match answer {
            Message::Error { code, message, .. } => Err(LinkError::Remote {
                peer: self.inner.peer.name.clone(),
                code,
                message,
            }),
            other => Ok(other),
        }
    }

    /// An "unexpected answer" error for `asked`.
    pub fn unexpected(&self, asked: &'static str, got: &Message) -> LinkError {
        LinkError::Unexpected {
            peer: self.inner.peer.name.clone(),
            asked,
            got: got.name(),
        }
    }

    /// Answers request `req` with an error.
    pub async fn reply_error(&self, req: u64, code: ErrorCode, message: impl Into<String>) {
        let _ = self
            .send(Message::Error {
                req,
                code,
                message: message.into(),
            })
            .await;
    }

    fn deliver(&self, msg: Message) -> Option<Message> {
        let Some(req) = msg.req() else {
            return Some(msg);
        };
        let waiter = self.lock_pending().remove(&req);
        match waiter {
            Some(Waiter::Async(tx)) => {
                let _ = tx.send(msg);
                None
            }
            Some(Waiter::Blocking(tx)) => {
                let _ = tx.try_send(msg);
                None
            }
            None => {
                tracing::debug!(peer = %self.inner.peer.name, req, "answer to no pending request (timed out?) dropped");
                None
            }
        }
    }
}

async fn writer(
    link: Link,
    mut w: tokio::io::WriteHalf<BoxStream>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut codec: Codec,
    limiter: Arc<Limiter>,
) {
    let mut closed = link.inner.closed.subscribe();
    let mut buf = BytesMut::with_capacity(1 << 20);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = closed.wait_for(|r| r.is_some()) => None,
        };
        let Some(first) = first else { break };
        codec.set_compression(link.compression());
        let mut next = Some(first);
        let mut closing = false;
        // Batch whatever is queued into one write, up to about 1 MiB; large
        // frames encoded by their senders go to the socket as they are.
        while let Some(item) = next.take() {
            let direct = match item {
                Outgoing::Message(msg) => {
                    closing = matches!(msg, Message::Close { .. });
                    match codec.encode(&msg, &mut buf) {
                        Ok(n) => {
                            limiter.acquire(n).await;
                            link.inner.sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::error!(peer = %link.inner.peer.name, "cannot encode {}: {e}", msg.name());
                            link.close(format!("cannot encode {}: {e}", msg.name()));
                            return;
                        }
                    }
                    None
                }
                Outgoing::Frame(frame) => {
                    limiter.acquire(frame.len()).await;
                    link.inner
                        .sent
                        .fetch_add(frame.len() as u64, Ordering::Relaxed);
                    if frame.len() < DIRECT_WRITE {
                        buf.extend_from_slice(&frame);
                        None
                    } else {
                        Some(frame)
                    }
                }
            };
            if let Some(frame) = direct {
                for part in [&buf[..], &frame[..]] {
                    if let Err(e) = w.write_all(part).await {
                        link.close(format!("write failed: {e}"));
                        return;
                    }
                }
                buf.clear();
            }
            if closing {
                break;
            }
            if buf.len() < (1 << 20) {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = w.write_all(&buf).await {
            link.close(format!("write failed: {e}"));
            return;
        }
        buf.clear();
        if closing {
            break;
        }
        if rx.is_empty() {
            if let Err(e) = w.flush().await {
                link.close(format!("write failed: {e}"));
                return;
            }
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

async fn reader(
    link: Link,
    r: tokio::io::ReadHalf<BoxStream>,
    inbox: mpsc::Sender<Message>,
    mut codec: Codec,
) {
    let mut closed = link.inner.closed.subscribe();
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut r = Counted {
        inner: r,
        link: link.clone(),
    };
    loop {
        let read = tokio::select! {
            r = wire::read_message(&mut r, &mut buf, &mut codec) => r,
            _ = closed.wait_for(|r| r.is_some()) => return,
        };
        let msg = match read {
            Ok(Some((msg, n))) => {
                link.inner.received.fetch_add(n as u64, Ordering::Relaxed);
                msg
            }
            Ok(None) => {
                link.close("the peer closed the connection");
                return;
            }
            Err(e) => {
                let reason = match &e {
                    WireError::Io(_) | WireError::UnexpectedEof => format!("read failed: {e}"),
                    _ => format!("malformed frame, nothing in it applied: {e}"),
                };
                tracing::warn!(peer = %link.inner.peer.name, addr = %link.inner.peer.addr, "closing connection: {reason}");
                link.close(reason);
                return;
            }
        };
        match msg {
            Message::Heartbeat { last_seq, .. } => {
                link.inner.peer_last_seq.store(last_seq, Ordering::Relaxed);
            }
            Message::Close { reason } => {
                link.close(format!("the peer closed the connection: {reason}"));
                return;
            }
            Message::Error {
                req: 0, message, ..
            } => {
                tracing::warn!(peer = %link.inner.peer.name, "the peer reports: {message}");
                link.close(format!("the peer reports: {message}"));
                return;
            }
            m if is_answer(&m) => {
                link.deliver(m);
            }
            m => {
                let sent = tokio::select! {
                    r = inbox.send(m) => r.is_ok(),
                    _ = closed.wait_for(|r| r.is_some()) => return,
                };
                if !sent {
                    link.close("no handler for the peer's requests");
                    return;
                }
            }
        }
    }
}

async fn heartbeats(link: Link) {
    let mut closed = link.inner.closed.subscribe();
    let mut every = link.inner.heartbeat.subscribe();
    loop {
        let period = *every.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = every.changed() => continue,
            _ = closed.wait_for(|r| r.is_some()) => return,
        }
        let dead_after = link.dead_after();
        if link.silent_ms() > dead_after.as_millis() as u64 {
            link.close(format!(
                "nothing received for {} s (the peer or the network is down)",
                dead_after.as_secs()
            ));
            return;
        }
        let hb = Message::Heartbeat {
            time_ms: now_ms(),
            last_seq: link.inner.local_last_seq.load(Ordering::Relaxed),
        };
        // A full queue means data is flowing, which proves liveness too.
        match link.inner.out.try_send(Outgoing::Message(hb)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// A read half that records when bytes last arrived (liveness counts bytes,
/// not whole frames, so a large frame under a bandwidth limit is not silence).
struct Counted {
    inner: tokio::io::ReadHalf<BoxStream>,
    link: Link,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.link
                .inner
                .last_seen_ms
                .store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}
