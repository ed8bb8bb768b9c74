//! Links on loopback: negotiated compression carries data intact and
//! smaller; the bandwidth limit holds the sending rate; a corrupt frame
//! closes the connection with its reason and delivers nothing after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rha_transport::connect::{accept, dial, LocalInfo, Security};
use rha_transport::limit::{Limiter, Schedule};
use rha_transport::link::Link;
use rha_transport::wire::{Compression, Intent, Message};
use tokio::sync::mpsc::Receiver;

fn info(name: &str, compression: &[Compression]) -> LocalInfo {
    LocalInfo {
        name: name.into(),
        compression: compression.to_vec(),
    }
}

/// A link pair over plaintext loopback: (caller's link, acceptor's inbox).
async fn pair(
    offer: &[Compression],
    accept_list: &[Compression],
    limit: Schedule,
) -> (Link, Link, Receiver<Message>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accept_list = accept_list.to_vec();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(
            tcp,
            &Security::InsecurePlaintext,
            &info("appliance", &accept_list),
            Arc::new(Limiter::new(Schedule::unlimited())),
        )
        .await
        .unwrap()
    });
    let (link, _inbox) = dial(
        &addr,
        &Security::InsecurePlaintext,
        &info("master", offer),
        Intent::Engine,
        Arc::new(Limiter::new(limit)),
    )
    .await
    .unwrap();
    let a = srv.await.unwrap();
    (link, a.link, a.inbox)
}

fn compressible(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"replicated block "[i % 17]).collect()
}

async fn send_writes(link: &Link, count: u64, data: &[u8]) {
    for i in 0..count {
        link.send(Message::Write {
            volume: 0,
            offset: i * data.len() as u64,
            data: bytes::Bytes::copy_from_slice(data),
        })
        .await
        .unwrap();
    }
}

async fn receive_writes(inbox: &mut Receiver<Message>, count: u64, data: &[u8]) {
    for i in 0..count {
        match tokio::time::timeout(Duration::from_secs(30), inbox.recv()).await {
            Ok(Some(Message::Write {
                offset, data: got, ..
            })) => {
                assert_eq!(offset, i * data.len() as u64);
                assert!(got == data, "write {i} arrived changed");
            }
            other => panic!("write {i}: got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_compression_is_used_and_lossless() {
    for (offer, accepted, expect) in [
        (
            vec![Compression::Zstd, Compression::None],
            vec![Compression::Lz4, Compression::Zstd],
            Compression::Zstd,
        ),
        (
            vec![Compression::Lz4],
            vec![Compression::Lz4, Compression::Zstd],
            Compression::Lz4,
        ),
        // Nothing in common: no compression (never a failure).
        (
            vec![Compression::Zstd],
            vec![Compression::Lz4],
            Compression::None,
        ),
    ] {
        let (link, peer, mut inbox) = pair(&offer, &accepted, Schedule::unlimited()).await;
        assert_eq!(link.peer().compression, expect);
        assert_eq!(peer.peer().compression, expect);
        let data = compressible(256 * 1024);
        send_writes(&link, 16, &data).await;
        receive_writes(&mut inbox, 16, &data).await;
        let (sent, _) = link.traffic();
        let raw = 16 * data.len() as u64;
        if expect == Compression::None {
            assert!(
                sent >= raw,
                "{sent} bytes on the wire for {raw} bytes uncompressed"
            );
        } else {
            assert!(
                sent < raw / 4,
                "{expect:?}: {sent} bytes on the wire for {raw} compressible bytes"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_limit_holds_the_rate() {
    // 2 MB/s; 1.2 MB of incompressible data: at least (1.2 - 0.2 burst) / 2 = 0.5 s.
    let (link, _peer, mut inbox) = pair(
        &[Compression::None],
        &[Compression::None],
        Schedule::fixed(2_000_000),
    )
    .await;
    assert_eq!(link.limiter().current_limit(), Some(2_000_000));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..60_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let t = Instant::now();
    let sender = {
        let link = link.clone();
        let data = data.clone();
        tokio::spawn(async move { send_writes(&link, 20, &data).await })
    };
    receive_writes(&mut inbox, 20, &data).await;
    sender.await.unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "1.2 MB at 2 MB/s took only {took:?}: the limit did not hold"
    );
    // And lifting the limit applies at once.
    link.limiter().set_schedule(Schedule::unlimited());
    assert_eq!(link.limiter().current_limit(), None);
}

/// A raw peer: handshake done by hand, then whatever bytes the test wants.
async fn raw_peer() -> (tokio::net::TcpStream, Link, Receiver<Message>) {
    use rha_transport::wire::{self as w, Codec, Hello};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(
            tcp,
            &Security::InsecurePlaintext,
            &info("appliance", &[Compression::None]),
            Arc::new(Limiter::new(Schedule::unlimited())),
        )
        .await
        .unwrap()
    });
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut codec = Codec::new(w::DEFAULT_MAX_FRAME);
    let hello = Message::Hello(Hello {
        version_min: w::MIN_PROTOCOL_VERSION,
        version_max: w::PROTOCOL_VERSION,
        name: "raw".into(),
        intent: Intent::Engine,
        compression: vec![],
        software: "test".into(),
    });
    w::write_message(&mut tcp, &mut codec, &hello)
        .await
        .unwrap();
    tcp.flush().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let welcome = w::read_message(&mut tcp, &mut buf, &mut codec)
        .await
        .unwrap();
    assert!(matches!(welcome, Some((Message::Welcome(_), _))));
    let a = srv.await.unwrap();
    (tcp, a.link, a.inbox)
}

fn frame(msg: &Message) -> Vec<u8> {
    let mut codec = rha_transport::wire::Codec::new(rha_transport::wire::DEFAULT_MAX_FRAME);
    let mut out = bytes::BytesMut::new();
    codec.encode(msg, &mut out).unwrap();
    out.to_vec()
}

async fn expect_closed(link: &Link, inbox: &mut Receiver<Message>, reason_has: &str) {
    // What arrived before the bad frame is delivered; nothing after it.
    let first = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .unwrap();
    assert!(
        matches!(first, Some(Message::Write { offset: 0, .. })),
        "{first:?}"
    );
    let next = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .unwrap();
    assert!(
        next.is_none(),
        "a message was delivered after the bad frame: {next:?}"
    );
    let reason = link.closed_reason().unwrap_or_default();
    assert!(reason.contains(reason_has), "closed because: {reason}");
}

#[tokio::test]
async fn corrupt_oversized_and_malformed_frames_close_the_link() {
    use tokio::io::AsyncWriteExt;
    let good = frame(&Message::Write {
        volume: 0,
        offset: 0,
        data: vec![7; 4096].into(),
    });
    let later = frame(&Message::Write {
        volume: 0,
        offset: 4096,
        data: vec![8; 4096].into(),
    });

    // A flipped bit in the payload: the CRC catches it.
    let (mut tcp, link, mut inbox) = raw_peer().await;
    let mut bad = later.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    tcp.write_all(&[good.clone(), bad, later.clone()].concat())
        .await
        .unwrap();
    expect_closed(&link, &mut inbox, "checksum").await;

    // A length beyond the frame limit: refused before it is read or allocated.
    let (mut tcp, link, mut inbox) = raw_peer().await;
    let mut huge = later.clone();
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    tcp.write_all(&[good.clone(), huge].concat()).await.unwrap();
    expect_closed(&link, &mut inbox, "limit").await;

    // An unknown message type with a valid CRC.
    let (mut tcp, link, mut inbox) = raw_peer().await;
    let mut unknown = later.clone();
    unknown[4] = 0xee;
    let n = unknown.len();
    let crc = crc32fast::hash(&unknown[4..n - 4]);
    unknown[n - 4..].copy_from_slice(&crc.to_le_bytes());
    tcp.write_all(&[good, unknown, later].concat())
        .await
        .unwrap();
    expect_closed(&link, &mut inbox, "unknown message type").await;
}

/// A fake acceptor that answers any Hello with `welcome`.
async fn answering(welcome: rha_transport::wire::Welcome) -> String {
    use rha_transport::wire::{self as w, Codec};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut codec = Codec::new(w::DEFAULT_MAX_FRAME);
        let mut buf = bytes::BytesMut::new();
        let hello = w::read_message(&mut tcp, &mut buf, &mut codec).await;
        assert!(matches!(hello, Ok(Some((Message::Hello(_), _)))));
        w::write_message(&mut tcp, &mut codec, &Message::Welcome(welcome))
            .await
            .unwrap();
        tcp.flush().await.unwrap();
        // Keep the connection open until the caller hangs up.
        let _ = w::read_message(&mut tcp, &mut buf, &mut codec).await;
    });
    addr
}

#[tokio::test]
async fn a_welcome_outside_what_the_caller_offered_is_refused() {
    use rha_transport::connect::ConnectError;
    use rha_transport::wire::{self as w, Welcome};
    let cases = [
        (
            Welcome {
                version: w::PROTOCOL_VERSION + 1,
                name: "future".into(),
                compression: Compression::None,
                software: "rha 99".into(),
            },
            "outside this engine's",
        ),
        (
            Welcome {
                version: w::PROTOCOL_VERSION,
                name: "zstd-only".into(),
                compression: Compression::Zstd,
                software: "test".into(),
            },
            "did not offer",
        ),
    ];
    for (welcome, expect) in cases {
        let addr = answering(welcome).await;
        let r = dial(
            &addr,
            &Security::InsecurePlaintext,
            &info("master", &[Compression::Lz4]),
            Intent::Engine,
            Arc::new(Limiter::new(Schedule::unlimited())),
        )
        .await;
        match r {
            Err(ConnectError::Refused { reason, .. }) => {
                assert!(reason.contains(expect), "{reason}")
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a Welcome with {expect} was accepted"),
        }
    }
}

/// A Hello with a valid checksum that this build cannot read (an intent a
/// newer peer might send) is answered with `Refused` naming the field; a
/// compression id this build does not know is skipped, not refused.
#[tokio::test]
async fn an_unreadable_hello_is_refused_and_unknown_compressions_are_skipped() {
    use rha_transport::connect::ConnectError;
    use rha_transport::wire::{self as w, Codec, Hello};
    use tokio::io::AsyncWriteExt;

    /// A Hello frame from `name` whose intent byte and compression list are
    /// replaced (the checksum recomputed).
    fn hello_frame(intent: u8, compression: &[u8]) -> Vec<u8> {
        let name = "newer";
        let mut f = frame(&Message::Hello(Hello {
            version_min: w::MIN_PROTOCOL_VERSION,
            version_max: w::PROTOCOL_VERSION,
            name: name.into(),
            intent: Intent::Engine,
            compression: vec![],
            software: "test".into(),
        }));
        // length, type, flags, magic, version_min, version_max, name.
        let at = 4 + 2 + 4 + 2 + 2 + 4 + name.len();
        f[at] = intent;
        // The empty compression list (a u32 count of 0) gets the ids.
        let count = (compression.len() as u32).to_le_bytes();
        f.splice(at + 1..at + 5, count.iter().chain(compression).copied());
        let n = f.len();
        f[..4].copy_from_slice(&((n - 8) as u32).to_le_bytes());
        let crc = crc32fast::hash(&f[4..n - 4]);
        f[n - 4..].copy_from_slice(&crc.to_le_bytes());
        f
    }

    async fn exchange(
        hello: Vec<u8>,
    ) -> (
        Option<Message>,
        Result<rha_transport::connect::Accepted, ConnectError>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(
                tcp,
                &Security::InsecurePlaintext,
                &info("appliance", &[Compression::Lz4, Compression::None]),
                Arc::new(Limiter::new(Schedule::unlimited())),
            )
            .await
        });
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&hello).await.unwrap();
        tcp.flush().await.unwrap();
        let mut codec = Codec::new(w::DEFAULT_MAX_FRAME);
        let mut buf = bytes::BytesMut::new();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            w::read_message(&mut tcp, &mut buf, &mut codec),
        )
        .await
        .unwrap()
        .unwrap()
        .map(|(m, _)| m);
        (answer, srv.await.unwrap())
    }

    let (answer, accepted) = exchange(hello_frame(9, &[])).await;
    match answer {
        Some(Message::Refused { reason }) => assert!(reason.contains("intent 9"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    match accepted {
        Err(ConnectError::Refused { reason, .. }) => assert!(reason.contains("intent"), "{reason}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an unknown intent was accepted"),
    }

    // Engine (2), offering an unknown algorithm 7 before LZ4 (1).
    let (answer, accepted) = exchange(hello_frame(2, &[7, 1])).await;
    match answer {
        Some(Message::Welcome(w)) => assert_eq!(w.compression, Compression::Lz4),
        other => panic!("expected Welcome, got {other:?}"),
    }
    let accepted = accepted.unwrap();
    assert_eq!(accepted.hello.compression, vec![Compression::Lz4]);
}
