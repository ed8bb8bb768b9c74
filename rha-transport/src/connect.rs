//! Opening links: TCP, TLS (or the explicitly insecure plaintext), and the
//! versioned handshake, on both the calling and the accepting side.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::limit::Limiter;
use crate::link::{BoxStream, Link, PeerInfo};
use crate::tls::{self, Tls};
use crate::wire::{
    self, Codec, Compression, Hello, Intent, Message, Welcome, WireError, DEFAULT_MAX_FRAME,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// How links are secured.
#[derive(Clone)]
pub enum Security {
    /// Mutual TLS 1.3 (the default and the only safe choice).
    Tls(Arc<Tls>),
    /// No encryption and no authentication: anyone who can reach the port
    /// can read the disks or write them. Only for isolated test networks;
    /// both sides must choose it.
    InsecurePlaintext,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Security::Tls(_) => f.write_str("Tls"),
            Security::InsecurePlaintext => f.write_str("InsecurePlaintext"),
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {reason}: check that an rha engine runs there and that the port is open")]
    Unreachable {
        /// The address.
        addr: String,
        /// The OS's reason.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The address.
        addr: String,
        /// The cause, as a sentence.
        reason: String,
    },
    /// The rha handshake failed or was refused.
    #[error("{addr} refused the session: {reason}")]
    Refused {
        /// The address.
        addr: String,
        /// The reason.
        reason: String,
    },
    /// The handshake did not complete in time.
    #[error("{addr} did not complete the handshake within {seconds} s: is it an rha engine, and do both sides use TLS (or both plaintext)?")]
    Timeout {
        /// The address.
        addr: String,
        /// Seconds waited.
        seconds: u64,
    },
}

/// What this side says about itself in a handshake.
#[derive(Debug, Clone)]
pub struct LocalInfo {
    /// This engine's (or operator's) name.
    pub name: String,
    /// Compression this side offers or accepts, most preferred first.
    pub compression: Vec<Compression>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest handshake message accepted: a Hello or Welcome is a few
/// hundred bytes, so a peer that is not rha (a TLS hello read as plaintext,
/// say) is refused at once instead of being waited for.
const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;

/// The software string sent in handshakes.
pub fn software() -> String {
    format!("rha {}", env!("CARGO_PKG_VERSION"))
}

/// Calls `addr` (host:port), authenticates the peer as `host`, and opens a link.
pub async fn dial(
    addr: &str,
    security: &Security,
    local: &LocalInfo,
    intent: Intent,
    limiter: Arc<Limiter>,
) -> Result<(Link, tokio::sync::mpsc::Receiver<Message>), ConnectError> {
    let host = host_of(addr);
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: addr.into(),
            seconds: HANDSHAKE_TIMEOUT.as_secs(),
        })?
        .map_err(|e| ConnectError::Unreachable {
            addr: addr.into(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let peer_addr = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.into());
    let (mut stream, cert_names): (BoxStream, Vec<String>) = match security {
        Security::InsecurePlaintext => (Box::new(tcp), Vec::new()),
        Security::Tls(tls) => {
            let name = tls::server_name(host).map_err(|e| ConnectError::Tls {
                addr: addr.into(),
                reason: e.to_string(),
            })?;
            let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connector().connect(name, tcp))
                .await
                .map_err(|_| ConnectError::Timeout {
                    addr: addr.into(),
                    seconds: HANDSHAKE_TIMEOUT.as_secs(),
                })?
                .map_err(|e| ConnectError::Tls {
                    addr: addr.into(),
                    reason: tls::describe_handshake_error(&e),
                })?;
            let names = s
                .get_ref()
                .1
                .peer_certificates()
                .map(tls::peer_names)
                .unwrap_or_default();
            (Box::new(s), names)
        }
    };
    let hello = Hello {
        version_min: MIN_PROTOCOL_VERSION,
        version_max: PROTOCOL_VERSION,
        name: local.name.clone(),
        intent,
        compression: local.compression.clone(),
        software: software(),
    };
    let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, client_handshake(&mut stream, hello))
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: addr.into(),
            seconds: HANDSHAKE_TIMEOUT.as_secs(),
        })?
        .map_err(|reason| ConnectError::Refused {
            addr: addr.into(),
            reason,
        })?;
    check_welcome(&welcome, local).map_err(|reason| ConnectError::Refused {
        addr: addr.into(),
        reason,
    })?;
    let peer = PeerInfo {
        name: welcome.name,
        cert_names,
        addr: peer_addr,
        version: welcome.version,
        compression: welcome.compression,
        software: welcome.software,
    };
    Ok(Link::start(stream, peer, DEFAULT_MAX_FRAME, limiter))
}

/// Checks the acceptor's choices against what this side offered: a protocol
/// version inside this engine's range and a compression it offered (or none).
fn check_welcome(welcome: &Welcome, local: &LocalInfo) -> Result<(), String> {
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&welcome.version) {
        return Err(format!(
            "{} chose protocol {}, outside this engine's {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}: upgrade the older side",
            welcome.name, welcome.version
        ));
    }
    if welcome.compression != Compression::None && !local.compression.contains(&welcome.compression)
    {
        return Err(format!(
            "{} chose compression {:?}, which this engine did not offer ({:?})",
            welcome.name, welcome.compression, local.compression
        ));
    }
    Ok(())
}

async fn client_handshake(stream: &mut BoxStream, hello: Hello) -> Result<Welcome, String> {
    let mut codec = Codec::new(HANDSHAKE_MAX_FRAME);
    wire::write_message(stream, &mut codec, &Message::Hello(hello))
        .await
        .map_err(|e| format!("sending the handshake failed: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("sending the handshake failed: {e}"))?;
    let mut buf = BytesMut::new();
    match wire::read_message(stream, &mut buf, &mut codec).await {
        Ok(Some((Message::Welcome(w), _))) => Ok(w),
        Ok(Some((Message::Refused { reason }, _))) => Err(reason),
        Ok(Some((other, _))) => Err(format!(
            "the peer answered the handshake with {}",
            other.name()
        )),
        Ok(None) => Err("the peer closed the connection during the handshake (wrong certificate, or TLS on one side only?)".into()),
        // TLS 1.3: the server checks our certificate after our side of the
        // handshake is done, so its refusal arrives on this first read.
        Err(wire::WireError::Io(e)) if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
            Err(tls::describe_handshake_error(&e))
        }
        Err(e) => {
            let hint = wire::sniff_foreign(&buf)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            Err(format!("the peer's answer is not rha protocol: {e}{hint}"))
        }
    }
}

/// The outcome of accepting a connection.
pub struct Accepted {
    /// The link.
    pub link: Link,
    /// Requests from the peer.
    pub inbox: tokio::sync::mpsc::Receiver<Message>,
    /// What the peer said about itself.
    pub hello: Hello,
}

/// Runs TLS (or plaintext) and the handshake on an accepted TCP connection.
pub async fn accept(
    tcp: TcpStream,
    security: &Security,
    local: &LocalInfo,
    limiter: Arc<Limiter>,
) -> Result<Accepted, ConnectError> {
    let _ = tcp.set_nodelay(true);
    let addr = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let (mut stream, cert_names): (BoxStream, Vec<String>) = match security {
        Security::InsecurePlaintext => (Box::new(tcp), Vec::new()),
        Security::Tls(tls) => {
            let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(tcp))
                .await
                .map_err(|_| ConnectError::Timeout {
                    addr: addr.clone(),
                    seconds: HANDSHAKE_TIMEOUT.as_secs(),
                })?
                .map_err(|e| ConnectError::Tls {
                    addr: addr.clone(),
                    reason: tls::describe_handshake_error(&e),
                })?;
            let names = s
                .get_ref()
                .1
                .peer_certificates()
                .map(tls::peer_names)
                .unwrap_or_default();
            (Box::new(s), names)
        }
    };
    let mut codec = Codec::new(HANDSHAKE_MAX_FRAME);
    let mut buf = BytesMut::new();
    let first = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        wire::read_message(&mut stream, &mut buf, &mut codec),
    )
    .await
    .map_err(|_| ConnectError::Timeout {
        addr: addr.clone(),
        seconds: HANDSHAKE_TIMEOUT.as_secs(),
    })?;
    let hello = match first {
        Ok(Some((Message::Hello(h), _))) => h,
        Ok(Some((other, _))) => {
            return Err(ConnectError::Refused {
                addr,
                reason: format!("the first message was {}, not Hello", other.name()),
            })
        }
        Ok(None) => {
            return Err(ConnectError::Refused {
                addr,
                reason: "closed before the handshake".into(),
            })
        }
        Err(
            e @ WireError::Malformed {
                message: "Hello", ..
            },
        ) => {
            // An rha peer whose Hello this build cannot read (a newer intent,
            // say): tell it why before closing, so its operator sees it too.
            let reason = format!("{e}: is the peer a newer rha? upgrade this engine");
            let refused = Message::Refused {
                reason: reason.clone(),
            };
            let _ = wire::write_message(&mut stream, &mut codec, &refused).await;
            let _ = stream.flush().await;
            return Err(ConnectError::Refused { addr, reason });
        }
        Err(e) => {
            let hint = wire::sniff_foreign(&buf)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Err(ConnectError::Refused {
                addr,
                reason: format!("not an rha handshake: {e}{hint}"),
            });
        }
    };
    let refuse = |reason: String| Message::Refused { reason };
    if hello.version_max < MIN_PROTOCOL_VERSION || hello.version_min > PROTOCOL_VERSION {
        let reason = format!(
            "this engine speaks protocol {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}; {} speaks {}..={}: upgrade the older side",
            hello.name, hello.version_min, hello.version_max
        );
        let _ = wire::write_message(&mut stream, &mut codec, &refuse(reason.clone())).await;
        let _ = stream.flush().await;
        return Err(ConnectError::Refused { addr, reason });
    }
    let version = hello.version_max.min(PROTOCOL_VERSION);
    let compression = hello
        .compression
        .iter()
        .copied()
        .find(|c| local.compression.contains(c))
        .unwrap_or(Compression::None);
    let welcome = Welcome {
        version,
        name: local.name.clone(),
        compression,
        software: software(),
    };
    wire::write_message(&mut stream, &mut codec, &Message::Welcome(welcome))
        .await
        .map_err(|e| ConnectError::Refused {
            addr: addr.clone(),
            reason: format!("sending the handshake failed: {e}"),
        })?;
    let _ = stream.flush().await;
    let peer = PeerInfo {
        name: hello.name.clone(),
        cert_names,
        addr,
        version,
        compression,
        software: hello.software.clone(),
    };
    let (link, inbox) = Link::start(stream, peer, DEFAULT_MAX_FRAME, limiter);
    Ok(Accepted { link, inbox, hello })
}

/// The host part of `host:port` (IPv6 in brackets allowed).
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    }
}
