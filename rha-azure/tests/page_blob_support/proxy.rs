//! A fault-injecting HTTP/1.1 proxy between the tests and Azurite.
//!
//! Every client connection carries one request: the proxy reads it (head and
//! `Content-Length` body), then, following its fault plan, forwards it on a
//! new upstream connection (with `Connection: close`) and relays the answer,
//! or answers 503/429 itself, drops the connection before or after
//! forwarding (the second loses the answer to a request that was applied),
//! cuts the answer in half, or stalls past the client's timeout.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded unchanged.
    Pass,
    /// Answered `503 ServerBusy` by the proxy (not forwarded).
    Busy503,
    /// Answered `429 TooManyRequests`-style throttling by the proxy (not forwarded).
    Throttle429,
    /// The connection is closed after the request was read (not forwarded).
    DropBefore,
    /// Forwarded and applied, but the connection is closed instead of answering.
    DropAfter,
    /// Forwarded; only half of the answer is relayed, then the connection closes.
    CutAnswer,
    /// Not forwarded; the connection stays silent for this long, then closes.
    Stall(Duration),
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub passed: AtomicU64,
    pub busy: AtomicU64,
    pub throttled: AtomicU64,
    pub dropped_before: AtomicU64,
    pub dropped_after: AtomicU64,
    pub cut: AtomicU64,
    pub stalled: AtomicU64,
    /// Requests being served right now, and the most there ever were at once.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

struct Shared {
    upstream: u16,
    plan: Mutex<Vec<Fault>>,
    enabled: AtomicBool,
    next: AtomicU64,
    counts: Counts,
}

/// A running proxy (it lives until the test binary exits).
#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 in front of `127.0.0.1:upstream`,
    /// passing everything until [`Proxy::set_plan`].
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream,
            plan: Mutex::new(vec![Fault::Pass]),
            enabled: AtomicBool::new(false),
            next: AtomicU64::new(0),
            counts: Counts::default(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let _ = serve(&s, conn);
                    });
                }
            })
            .expect("spawn the proxy");
        Proxy { port, shared }
    }

    /// From now on, request n (counted from now) gets `plan[n % plan.len()]`.
    pub fn set_plan(&self, plan: Vec<Fault>) {
        *self.shared.plan.lock().unwrap() = plan;
        self.shared.next.store(0, Ordering::SeqCst);
        self.shared.enabled.store(true, Ordering::SeqCst);
    }

    /// Forwards everything again.
    pub fn pass_all(&self) {
        self.shared.enabled.store(false, Ordering::SeqCst);
    }

    /// What the proxy did so far.
    pub fn counts(&self) -> &Counts {
        &self.shared.counts
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request: its head (up to and with the blank line) and its body.
fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, body)))
}

/// The head with `Connection: close` instead of any Connection header.
fn closing(head: &str) -> String {
    let mut out = String::new();
    for line in head.split("\r\n") {
        if line.is_empty() {
            continue;
        }
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn forward(upstream: u16, head: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(closing(head).as_bytes())?;
    up.write_all(body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    Ok(answer)
}

fn error_answer(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nx-ms-error-code: {code}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn serve(s: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    let Some((head, body)) = read_request(&mut conn)? else {
        return Ok(());
    };
    let c = &s.counts;
    c.requests.fetch_add(1, Ordering::SeqCst);
    let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    c.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let r = handle(s, &mut conn, &head, &body);
    c.in_flight.fetch_sub(1, Ordering::SeqCst);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
    r
}

fn handle(s: &Shared, conn: &mut TcpStream, head: &str, body: &[u8]) -> std::io::Result<()> {
    let c = &s.counts;
    let fault = if s.enabled.load(Ordering::SeqCst) {
        let plan = s.plan.lock().unwrap().clone();
        let n = s.next.fetch_add(1, Ordering::SeqCst) as usize;
        plan[n % plan.len()]
    } else {
        Fault::Pass
    };
    let inc = |a: &AtomicU64| {
        a.fetch_add(1, Ordering::SeqCst);
    };
    match fault {
        Fault::Pass => {
            inc(&c.passed);
            let answer = forward(s.upstream, head, body)?;
            conn.write_all(&answer)?;
        }
        Fault::Busy503 => {
            inc(&c.busy);
            conn.write_all(&error_answer("503 The server is busy.", "ServerBusy"))?;
        }
        Fault::Throttle429 => {
            inc(&c.throttled);
            conn.write_all(&error_answer("429 Too Many Requests", "ServerBusy"))?;
        }
        Fault::DropBefore => inc(&c.dropped_before),
        Fault::DropAfter => {
            inc(&c.dropped_after);
            let _ = forward(s.upstream, head, body)?;
        }
        Fault::CutAnswer => {
            inc(&c.cut);
            let answer = forward(s.upstream, head, body)?;
            // Headers and part of the body (or part of the headers).
            let keep = (answer.len() / 2).max(1);
            conn.write_all(&answer[..keep])?;
        }
        Fault::Stall(d) => {
            inc(&c.stalled);
            std::thread::sleep(d);
        }
    }
    Ok(())
}
