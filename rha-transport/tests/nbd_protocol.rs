//! The NBD server against a raw client: malformed handshakes (bad magic,
//! unknown option, option too large, truncated), refused commands (out of
//! range, unaligned, oversized, empty, unknown) get NBD errors and the
//! connection goes on; bad request magic closes only that connection;
//! pipelined writes from a client that vanishes lose nothing acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nbd_support;

use std::sync::Arc;

use nbd_support::*;
use rha_core::volume::{FileVolume, Volume};
use rha_transport::nbd::proto::*;
use rha_transport::nbd::{NbdExport, NbdServer};

/// After whatever a test did, a new client still gets served.
fn still_serves(port: u16) {
    let mut c = RawClient::negotiating(port);
    c.option(NBD_OPT_LIST, &[]);
    let r = c.reply();
    assert_eq!(r.reply, NBD_REP_SERVER);
    assert_eq!(&r.data[4..8], b"disk");
    assert_eq!(c.reply().reply, NBD_REP_ACK);
}

#[test]
fn malformed_handshakes_get_errors_or_a_close_never_a_crash() {
    let t = tempfile::tempdir().unwrap();
    let s = Served::start(t.path(), 4 * MIB);

    // Unknown option: NBD_REP_ERR_UNSUP, and the negotiation goes on.
    let mut c = RawClient::negotiating(s.port);
    c.option(4242, b"whatever");
    let r = c.reply();
    assert_eq!((r.option, r.reply), (4242, NBD_REP_ERR_UNSUP));
    assert!(String::from_utf8_lossy(&r.data).contains("not supported"));
    // Invalid data of a known option: NBD_REP_ERR_INVALID.
    c.option(NBD_OPT_GO, &[0, 0, 0, 9, b'd']);
    assert_eq!(c.reply().reply, NBD_REP_ERR_INVALID);
    c.option(NBD_OPT_LIST, b"x");
    assert_eq!(c.reply().reply, NBD_REP_ERR_INVALID);
    // Metadata contexts before structured replies: invalid.
    let meta = OptionRequest::SetMetaContext(MetaContextRequest {
        name: "disk".into(),
        queries: vec!["base:allocation".into()],
    });
    c.option(NBD_OPT_SET_META_CONTEXT, &meta.encode_data());
    assert_eq!(c.reply().reply, NBD_REP_ERR_INVALID);
    // Unknown export: NBD_REP_ERR_UNKNOWN.
    let go = OptionRequest::Go(InfoRequest {
        name: "nope".into(),
        requests: vec![],
    });
    c.option(NBD_OPT_GO, &go.encode_data());
    assert_eq!(c.reply().reply, NBD_REP_ERR_UNKNOWN);
    // STARTTLS on a server without TLS: refused by policy.
    c.option(NBD_OPT_STARTTLS, &[]);
    assert_eq!(c.reply().reply, NBD_REP_ERR_POLICY);
    // Abort: acknowledged, then closed.
    c.option(NBD_OPT_ABORT, &[]);
    assert_eq!(c.reply().reply, NBD_REP_ACK);
    assert!(c.closed());

    // Option length too large: NBD_REP_ERR_TOO_BIG, then closed.
    let mut c = RawClient::negotiating(s.port);
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hdr.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    hdr.extend_from_slice(&(1u32 << 30).to_be_bytes());
    c.send(&hdr);
    assert_eq!(c.reply().reply, NBD_REP_ERR_TOO_BIG);
    assert!(c.closed());

    // Bad option magic: closed.
    let mut c = RawClient::negotiating(s.port);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(c.closed());

    // Client flags without fixed newstyle, or with unknown bits: closed.
    for flags in [0u32, 0x8000_0001] {
        let mut c = RawClient::connect(s.port);
        c.send(&flags.to_be_bytes());
        assert!(c.closed(), "flags {flags:#x}");
    }

    // Truncated: half the client flags, half an option header, half its data.
    let mut c = RawClient::connect(s.port);
    c.send(&[0, 0]);
    drop(c);
    let mut c = RawClient::negotiating(s.port);
    c.send(&IHAVEOPT.to_be_bytes()[..5]);
    drop(c);
    let mut c = RawClient::negotiating(s.port);
    let mut b = Vec::new();
    encode_option(NBD_OPT_GO, &go.encode_data(), &mut b);
    c.send(&b[..b.len() - 2]);
    drop(c);

    // Export name of an unknown export: closed (this option cannot be refused).
    let mut c = RawClient::negotiating(s.port);
    c.option(NBD_OPT_EXPORT_NAME, b"nope");
    assert!(c.closed());

    still_serves(s.port);
}

#[test]
fn refused_commands_get_nbd_errors_and_the_connection_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let size = 4 * MIB;
    let s = Served::start(t.path(), size);
    let mut c = RawClient::transmitting(s.port, false);

    let cases: [(u16, u16, u64, u32, u32); 9] = [
        (NBD_CMD_READ, 0, size, 512, NBD_EINVAL), // past the end
        (NBD_CMD_READ, 0, u64::MAX - 511, 512, NBD_EINVAL), // offset + length overflows
        (NBD_CMD_READ, 0, 100, 512, NBD_EINVAL),  // unaligned offset
        (NBD_CMD_READ, 0, 0, 100, NBD_EINVAL),    // unaligned length
        (NBD_CMD_READ, 0, 0, 0, NBD_EINVAL),      // empty
        (NBD_CMD_READ, 0, 0, MAX_PAYLOAD + 512, NBD_EOVERFLOW),
        (NBD_CMD_TRIM, 0, size - 512, 1024, NBD_ENOSPC), // zeroing past the end
        (NBD_CMD_BLOCK_STATUS, 0, 0, 512, NBD_EINVAL),   // not negotiated
        (NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 512, NBD_EINVAL), // DF without structured replies
    ];
    for (i, (kind, flags, offset, len, errno)) in cases.into_iter().enumerate() {
        c.request(kind, flags, i as u64, offset, len);
        assert_eq!(c.simple(), (errno, i as u64), "case {i}");
    }
    c.request(99, 0, 77, 0, 512);
    assert_eq!(c.simple(), (NBD_EINVAL, 77));

    // Refused writes: the payload is consumed, so the stream stays in step.
    c.request(NBD_CMD_WRITE, 0, 100, size, 4096);
    c.send(&[0xEE; 4096]);
    assert_eq!(c.simple(), (NBD_ENOSPC, 100));
    c.request(NBD_CMD_WRITE, 0, 101, 3, 4096);
    c.send(&[0xEE; 4096]);
    assert_eq!(c.simple(), (NBD_EINVAL, 101));
    // Oversized: 32 MiB + 4 KiB of payload, discarded in pieces.
    let big = MAX_PAYLOAD + 4096;
    c.request(NBD_CMD_WRITE, 0, 102, 0, big);
    let chunk = vec![0xEEu8; 1 << 20];
    let mut left = big as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        c.send(&chunk[..n]);
        left -= n;
    }
    assert_eq!(c.simple(), (NBD_EOVERFLOW, 102));

    // Then a good write and read on the same connection.
    c.request(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 103, 8192, 4096);
    c.send(&[0x5A; 4096]);
    assert_eq!(c.simple(), (NBD_OK, 103));
    c.request(NBD_CMD_READ, 0, 104, 8192, 4096);
    assert_eq!(c.simple(), (NBD_OK, 104));
    assert_eq!(c.read_n(4096), vec![0x5A; 4096]);
    c.request(NBD_CMD_FLUSH, 0, 105, 0, 0);
    assert_eq!(c.simple(), (NBD_OK, 105));
    // None of the refused writes reached the disk or the journal.
    let img = FileVolume::open(&s.image).unwrap();
    let mut buf = vec![0u8; 4 * MIB as usize];
    img.read_at(0, &mut buf).unwrap();
    assert!(!buf.contains(&0xEE), "a refused write reached the image");
    assert_eq!(rha_core::source::ChangeSource::last_seq(&*s.set), 1);

    // Bad request magic: this connection closes with a logged reason ...
    c.send(&[0xAB; REQUEST_BYTES]);
    assert!(c.closed());
    // ... and the server serves the next client.
    still_serves(s.port);
}

#[test]
fn structured_replies_carry_data_and_errors_in_chunks() {
    let t = tempfile::tempdir().unwrap();
    let s = Served::start(t.path(), MIB);
    let mut c = RawClient::transmitting(s.port, true);
    // qemu asks for base:allocation; the server offers no context, which is valid.
    c.request(NBD_CMD_WRITE, 0, 1, 4096, 512);
    c.send(&[7; 512]);
    assert_eq!(c.simple(), (NBD_OK, 1));
    c.request(NBD_CMD_READ, NBD_CMD_FLAG_DF, 2, 4096, 1024);
    let (flags, kind, cookie, payload) = c.chunk();
    assert_eq!(
        (flags, kind, cookie),
        (NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 2)
    );
    assert_eq!(&payload[..8], &4096u64.to_be_bytes());
    assert_eq!(&payload[8..520], &[7; 512][..]);
    assert_eq!(&payload[520..], &[0; 512][..]);
    c.request(NBD_CMD_READ, 0, 3, MIB, 512);
    let (flags, kind, cookie, payload) = c.chunk();
    assert_eq!(
        (flags, kind, cookie),
        (NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, 3)
    );
    assert_eq!(&payload[..4], &NBD_EINVAL.to_be_bytes());
    let msg_len = u16::from_be_bytes([payload[4], payload[5]]) as usize;
    let msg = String::from_utf8_lossy(&payload[6..6 + msg_len]);
    assert!(msg.contains("past the end"), "{msg}");
    c.request(NBD_CMD_DISC, 0, 4, 0, 0);
    assert!(c.closed());
}

#[test]
fn client_gone_mid_pipeline_loses_nothing_acknowledged() {
    let t = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let mut s = Served::start(t.path(), size);
    let replica = t.path().join("replica.img");
    std::fs::copy(&s.image, &replica).unwrap();
    let mut c = RawClient::transmitting(s.port, false);
    // 256 writes of 64 KiB pipelined 16 deep; stop reading replies and drop
    // the connection in the middle of a payload.
    let n = 256u64;
    let mut acked = Vec::new();
    let mut sent = 0u64;
    let data = |i: u64| vec![(i % 251) as u8 + 1; 64 * 1024];
    while sent < n {
        while sent < n && sent - acked.len() as u64 <= 16 {
            c.request(NBD_CMD_WRITE, 0, sent, sent * 64 * 1024, 64 * 1024);
            if sent == 200 {
                c.send(&data(sent)[..1000]);
                break;
            }
            c.send(&data(sent));
            sent += 1;
        }
        if sent == 200 {
            break;
        }
        let (err, cookie) = c.simple();
        assert_eq!(err, NBD_OK);
        acked.push(cookie);
    }
    drop(c);
    s.stop();
    assert!(acked.len() >= 150, "{} acknowledged", acked.len());
    let img = FileVolume::open(&s.image).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    for &i in &acked {
        img.read_at(i * 64 * 1024, &mut buf).unwrap();
        assert_eq!(buf, data(i), "acknowledged write {i} is not on the image");
    }
    // The half-sent write never reached the disk.
    img.read_at(200 * 64 * 1024, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    // Every write that reached the image is in the journal: the replica equals it.
    s.replay_to(&replica);
    let (same, why) = qemu_compare(s.image.to_str().unwrap(), replica.to_str().unwrap());
    assert!(same, "{why}");
}

#[test]
fn after_shutdown_nothing_holds_the_exported_volume() {
    // The owner of an export closes its journal right after shutdown
    // returns (`rha nbd serve`): no task of the server may still hold the
    // volume then, whether the client left before or was connected.
    let t = tempfile::tempdir().unwrap();
    let image = t.path().join("disk.img");
    FileVolume::create(&image, MIB).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..40 {
        let volume: Arc<dyn Volume> = Arc::new(FileVolume::open(&image).unwrap());
        let server = NbdServer::builder()
            .export(NbdExport {
                name: "disk".into(),
                description: String::new(),
                volume: volume.clone(),
                read_only: false,
            })
            .build()
            .unwrap();
        let handle = rt.block_on(server.listen("127.0.0.1:0")).unwrap();
        drop(server);
        let port = handle.local_addr().unwrap().port();
        let mut c = RawClient::transmitting(port, false);
        c.request(NBD_CMD_WRITE, 0, 1, 0, 4096);
        c.send(&[round as u8; 4096]);
        assert_eq!(c.simple(), (NBD_OK, 1));
        let stay = round % 2 == 0;
        if !stay {
            c.request(NBD_CMD_DISC, 0, 2, 0, 0);
            assert!(c.closed());
        }
        rt.block_on(handle.shutdown());
        assert_eq!(
            Arc::strong_count(&volume),
            1,
            "round {round} (client {}): the server still holds the volume",
            if stay { "connected" } else { "gone" }
        );
    }
}
