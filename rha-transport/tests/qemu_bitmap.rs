//! Incremental synchronisation from a QEMU dirty bitmap, against the real
//! tools (`qemu-img`, `qemu-io`, `qemu-nbd`, and `qemu-system-x86_64` for
//! the QMP reset), a fake NBD server that misbehaves, and property tests of
//! the reply decoders.
//!
//! The tests that need QEMU's tools print why and return when they are absent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod qemu_support;

use qemu_support::Vm;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rha_core::events::Events;
use rha_core::sink::{MemSink, ReplicaState};
use rha_core::source::ChangeSource;
use rha_core::sync::{synchronise, LocalPeer, SyncMethod, SyncOptions, SyncReport};
use rha_core::volume::{FileVolume, Volume};
use rha_transport::qemu_bitmap::proto::{self, ChunkHeader, Extent, Request};
use rha_transport::qemu_bitmap::{
    BitmapReset, DirtyBitmapSource, DirtyRanges, NbdAddress, NbdClient, NbdError, ResetError,
    DURING_SUFFIX,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// QEMU's default bitmap granularity (and qcow2 cluster size).
const CLUSTER: u64 = 64 * KIB;

// ---------------------------------------------------------------------------
// Helpers around the QEMU tools
// ---------------------------------------------------------------------------

/// True when every tool can run; otherwise says why the test is skipped.
fn have(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        match Command::new(tool).arg("--version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!("skipping {test}: `{tool} --version` failed: {:?}", o.status);
                return false;
            }
            Err(e) => {
                eprintln!("skipping {test}: {tool} is not available ({e})");
                return false;
            }
        }
    }
    true
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A qcow2 of 32 MiB holding data at 0..16 MiB and 20..24 MiB, its raw copy
/// (the replica's previous state), and an enabled persistent bitmap `b0`.
fn image_with_replica(dir: &Path) -> (PathBuf, PathBuf) {
    let img = dir.join("disk.qcow2");
    let raw = dir.join("replica.raw");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "32M"]);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 16M",
            "-c",
            "write -P 0x22 20M 4M",
            s(&img),
        ],
    );
    run(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", s(&img), s(&raw)],
    );
    run(
        "qemu-img",
        &["bitmap", "--add", "--enable", "-f", "qcow2", s(&img), "b0"],
    );
    (img, raw)
}

/// Writes through qemu-io (the persistent bitmap records them).
fn qemu_io(img: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(s(img));
    run("qemu-io", &args);
}

/// The writes of the incremental tests and the clusters they dirty.
const WRITES: &[&str] = &[
    "write -P 0x5a 1M 64k",     // one whole cluster
    "write -P 0x5a 3136k 128k", // two clusters (3 MiB + 64 KiB)
    "write -P 0x5a 21M 4k",     // 4 KiB: its whole cluster is dirty
    "write -P 0x5a 30M 64k",    // a cluster never written before
    "write -z 8M 64k",          // zeroes: dirty too, sent as a zero command
];
fn dirtied() -> Vec<std::ops::Range<u64>> {
    vec![
        MIB..MIB + CLUSTER,
        3 * MIB + CLUSTER..3 * MIB + 3 * CLUSTER,
        8 * MIB..8 * MIB + CLUSTER,
        21 * MIB..21 * MIB + CLUSTER,
        30 * MIB..30 * MIB + CLUSTER,
    ]
}

/// A qemu-nbd process, killed when dropped.
struct QemuNbd {
    child: Child,
}

impl QemuNbd {
    /// `qemu-nbd -r -f qcow2 [-B BITMAP] ... IMG` on the unix socket `sock`.
    fn unix(img: &Path, sock: &Path, bitmap: Option<&str>, persistent: bool) -> Self {
        let mut args = vec!["-r", "-f", "qcow2", "-k", s(sock)];
        if let Some(b) = bitmap {
            args.extend(["-B", b]);
        }
        if persistent {
            args.push("-t");
        }
        args.push(s(img));
        let _ = std::fs::remove_file(sock);
        let child = Command::new("qemu-nbd")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        qemu_support::wait_listening(sock, "qemu-nbd");
        QemuNbd { child }
    }

    /// `qemu-nbd -r -f qcow2 -B BITMAP -t --bind 127.0.0.1 --port PORT IMG`; returns it and the port.
    fn tcp(img: &Path, bitmap: &str) -> (Self, u16) {
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let p = port.to_string();
            let mut child = Command::new("qemu-nbd")
                .args([
                    "-r",
                    "-f",
                    "qcow2",
                    "-B",
                    bitmap,
                    "-t",
                    "--bind",
                    "127.0.0.1",
                ])
                .args(["--port", &p, s(img)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Some(_status) = child.try_wait().unwrap() {
                    break; // the port was taken meanwhile: another one
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return (QemuNbd { child }, port);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("qemu-nbd could not listen on a free port");
    }

    /// Waits (a few seconds at most) for a non-persistent qemu-nbd to exit after its client left.
    fn wait_exit(mut self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("qemu-nbd did not exit after its client disconnected");
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_address(sock: &Path) -> NbdAddress {
    NbdAddress::parse(&format!("nbd+unix:///?socket={}", sock.display())).unwrap()
}

/// A replica over `raw` that holds the previous state (the image when b0 was added).
fn replica_sink(raw: &Path) -> MemSink {
    let v: Arc<dyn Volume> = Arc::new(FileVolume::open(raw).unwrap());
    MemSink::with_state(
        vec![v],
        ReplicaState {
            applied: 0,
            consistent: true,
            synced: true,
        },
    )
}

fn sync(source: &DirtyBitmapSource, sink: &MemSink, method: SyncMethod) -> SyncReport {
    synchronise(
        source,
        &mut LocalPeer::new(sink),
        &SyncOptions::new(method),
        &Events::new(),
    )
    .unwrap()
}

fn assert_same(img: &Path, raw: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw", s(img), s(raw)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the replica differs from the qcow2: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bitmap's dirty bytes, walked through a fresh qemu-nbd export.
fn dirty_bytes_now(img: &Path, sock: &Path) -> u64 {
    let nbd = QemuNbd::unix(img, sock, Some("b0"), false);
    let source = DirtyBitmapSource::open(&unix_address(sock), "b0").unwrap();
    let n = source.dirty_bytes();
    assert_eq!(source.needs_resync(), n > 0);
    drop(source);
    nbd.wait_exit();
    n
}

// ---------------------------------------------------------------------------
// Against QEMU
// ---------------------------------------------------------------------------

fn incremental_sync(method: SyncMethod, test: &str) {
    if !have(test, &["qemu-img", "qemu-io", "qemu-nbd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, raw) = image_with_replica(dir.path());
    qemu_io(&img, WRITES);
    let sock = dir.path().join("nbd.sock");
    let nbd = QemuNbd::unix(&img, &sock, Some("b0"), false);

    let source = DirtyBitmapSource::open(&unix_address(&sock), "b0").unwrap();
    let dirty: u64 = dirtied().iter().map(|r| r.end - r.start).sum();
    assert_eq!(source.dirty_bytes(), dirty);
    assert_eq!(source.dirty_ranges(0), Some(dirtied()));
    assert!(source.needs_resync());
    assert_eq!(source.volumes()[0].size(), 32 * MIB);
    // The export is read-only.
    assert!(source.volumes()[0].write_at(0, &[1]).is_err());

    let sink = replica_sink(&raw);
    let report = sync(&source, &sink, method);
    assert!(report.used_change_log, "{report:?}");
    assert!(report.consistent);
    assert_eq!(report.bytes_scanned, dirty, "{report:?}");
    assert_eq!(report.bytes_skipped, 32 * MIB - dirty);
    // The zeroed cluster travels as a zero command, not as data.
    let (changed, data) = match method {
        // Volume-level copies the dirty clusters' data whole.
        SyncMethod::Volume => (dirty - CLUSTER, dirty - CLUSTER),
        // Block-level compares them and sends only the 4 KiB blocks that
        // differ: one block of the cluster dirtied by a 4 KiB write.
        SyncMethod::Block => (
            dirty - (CLUSTER - 4 * KIB),
            dirty - CLUSTER - (CLUSTER - 4 * KIB),
        ),
    };
    assert_eq!(report.changed_bytes, changed, "{report:?}");
    assert!(
        report.bytes_sent >= data && report.bytes_sent <= dirty + 16 * KIB,
        "sent {} bytes for {dirty} dirty bytes: {report:?}",
        report.bytes_sent
    );
    assert!(!source.needs_resync());

    let proof = source.finish().unwrap();
    assert_eq!(proof.dirty_bytes(), dirty);
    assert_same(&img, &raw);
    // qemu-nbd without -t exits when rha disconnects; the reset waits for that.
    BitmapReset::Image { image: img.clone() }
        .reset(&proof)
        .unwrap();
    nbd.wait_exit();
    assert_eq!(dirty_bytes_now(&img, &sock), 0);

    // A second incremental round: new writes, only they are sent.
    qemu_io(&img, &["write -P 0x77 12M 64k"]);
    let nbd = QemuNbd::unix(&img, &sock, Some("b0"), false);
    let source = DirtyBitmapSource::open(&unix_address(&sock), "b0").unwrap();
    let report = sync(&source, &sink, method);
    assert_eq!(report.changed_bytes, CLUSTER);
    assert!(report.bytes_sent <= CLUSTER + 4 * KIB, "{report:?}");
    drop(source.finish().unwrap());
    nbd.wait_exit();
    assert_same(&img, &raw);
}

#[test]
fn volume_level_sync_sends_only_the_dirtied_clusters() {
    incremental_sync(
        SyncMethod::Volume,
        "volume_level_sync_sends_only_the_dirtied_clusters",
    );
}

#[test]
fn block_level_sync_compares_only_the_dirtied_clusters() {
    incremental_sync(
        SyncMethod::Block,
        "block_level_sync_compares_only_the_dirtied_clusters",
    );
}

#[test]
fn an_unsynchronised_bitmap_is_not_cleared() {
    if !have(
        "an_unsynchronised_bitmap_is_not_cleared",
        &["qemu-img", "qemu-io", "qemu-nbd"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, _raw) = image_with_replica(dir.path());
    qemu_io(&img, &["write -P 0x5a 0 4k"]);
    let sock = dir.path().join("nbd.sock");
    let nbd = QemuNbd::unix(&img, &sock, Some("b0"), false);
    let source = DirtyBitmapSource::open(&unix_address(&sock), "b0").unwrap();
    assert!(matches!(
        source.finish(),
        Err(ResetError::NotSynchronised { .. })
    ));
    nbd.wait_exit();
    assert_eq!(dirty_bytes_now(&img, &sock), CLUSTER);
}

#[test]
fn an_export_without_the_bitmap_is_refused_clearly() {
    if !have(
        "an_export_without_the_bitmap_is_refused_clearly",
        &["qemu-img", "qemu-io", "qemu-nbd"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, _raw) = image_with_replica(dir.path());
    let sock = dir.path().join("nbd.sock");
    for (served, asked) in [(None, "b0"), (Some("b0"), "nope")] {
        let _nbd = QemuNbd::unix(&img, &sock, served, true);
        let err = DirtyBitmapSource::open(&unix_address(&sock), asked).unwrap_err();
        assert!(matches!(err, NbdError::NoBitmap { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("qemu-nbd was not started with -B {asked}")),
            "{msg}"
        );
    }
}

#[test]
fn tcp_export_then_reset_over_qmp() {
    if !have(
        "tcp_export_then_reset_over_qmp",
        &["qemu-img", "qemu-io", "qemu-nbd"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, raw) = image_with_replica(dir.path());
    qemu_io(&img, WRITES);
    let (nbd, port) = QemuNbd::tcp(&img, "b0");
    let address = NbdAddress::parse(&format!("nbd://127.0.0.1:{port}/")).unwrap();
    let source = DirtyBitmapSource::open(&address, "b0").unwrap();
    let sink = replica_sink(&raw);
    let report = sync(&source, &sink, SyncMethod::Volume);
    assert_eq!(
        report.bytes_scanned,
        dirtied().iter().map(|r| r.end - r.start).sum::<u64>()
    );
    let proof = source.finish().unwrap();
    drop(nbd);
    assert_same(&img, &raw);

    if !have(
        "tcp_export_then_reset_over_qmp (QMP part)",
        &["qemu-system-x86_64"],
    ) {
        return;
    }
    let qmp = dir.path().join("qmp.sock");
    let vm = Vm::start(&img, &qmp);
    let over_qmp = |node: &str, export: Option<&str>| BitmapReset::Qmp {
        socket: qmp.clone(),
        node: node.into(),
        export: export.map(Into::into),
    };
    let err = over_qmp("no-such-node", None).reset(&proof).unwrap_err();
    assert!(matches!(err, ResetError::NoSuchNode { .. }), "{err:?}");
    assert!(err.to_string().contains("disk0"), "{err}");
    let reset = over_qmp("disk0", None);
    let err = reset.begin("nope").unwrap_err();
    assert!(matches!(err, ResetError::NoSuchBitmap { .. }), "{err:?}");
    // Without begin nothing records the writes of a running VM meanwhile:
    // the reset refuses and clears nothing.
    let err = reset.reset(&proof).unwrap_err();
    assert!(matches!(err, ResetError::NotBegun { .. }), "{err:?}");
    reset.begin("b0").unwrap();
    // A second begin keeps the first one's bitmap.
    reset.begin("b0").unwrap();
    // A write during the synchronisation, after begin and before the reset
    // (qemu-io's report goes to QEMU's stdout, not to the monitor)...
    vm.qmp(
        "human-monitor-command",
        serde_json::json!({ "command-line": "qemu-io disk0 \"write -P 0x77 30M 4k\"" }),
    );
    // While QEMU's NBD server exports the bitmap it is busy: the reset
    // says so and changes nothing; after block-export-del it goes through.
    vm.export_with_bitmap(&dir.path().join("vm-nbd.sock"), "e0", "b0");
    let err = reset.reset(&proof).unwrap_err();
    assert!(matches!(err, ResetError::BitmapBusy { .. }), "{err:?}");
    assert!(err.to_string().contains("block-export-del"), "{err}");
    // Named, the export is removed by the reset itself.
    over_qmp("disk0", Some("e0")).reset(&proof).unwrap();
    let exports = vm.qmp("query-block-exports", serde_json::json!({}));
    assert_eq!(exports, serde_json::json!([]), "the export is gone");
    vm.quit();
    // ...stays marked in b0 (one 64 KiB cluster), and b0's helper is gone.
    let sock = dir.path().join("nbd.sock");
    assert_eq!(dirty_bytes_now(&img, &sock), 64 << 10);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2"])
        .arg(&img)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"b0\""), "{info}");
    assert!(!info.contains(DURING_SUFFIX), "{info}");
}

// ---------------------------------------------------------------------------
// A fake server that misbehaves
// ---------------------------------------------------------------------------

const CONTEXT_ID: u32 = 7;
const FAKE_SIZE: u64 = MIB;

fn read_u32(s: &mut TcpStream) -> u32 {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    u32::from_be_bytes(b)
}

fn option_reply(s: &mut TcpStream, option: u32, reply: u32, payload: &[u8]) {
    let mut out = proto::OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    s.write_all(&out).unwrap();
}

/// Plays a well-behaved qemu-nbd up to the transmission phase.
fn fake_handshake(s: &mut TcpStream) {
    let mut g = proto::NBD_MAGIC.to_be_bytes().to_vec();
    g.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    g.extend_from_slice(
        &(proto::NBD_FLAG_FIXED_NEWSTYLE | proto::NBD_FLAG_NO_ZEROES).to_be_bytes(),
    );
    s.write_all(&g).unwrap();
    read_u32(s); // client flags
    loop {
        let mut magic = [0u8; 8];
        s.read_exact(&mut magic).unwrap();
        let option = read_u32(s);
        let len = read_u32(s);
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
        match option {
            proto::NBD_OPT_STRUCTURED_REPLY => option_reply(s, option, proto::NBD_REP_ACK, &[]),
            proto::NBD_OPT_SET_META_CONTEXT => {
                let mut p = CONTEXT_ID.to_be_bytes().to_vec();
                p.extend_from_slice(b"qemu:dirty-bitmap:b0");
                option_reply(s, option, proto::NBD_REP_META_CONTEXT, &p);
                option_reply(s, option, proto::NBD_REP_ACK, &[]);
            }
            proto::NBD_OPT_GO => {
                let mut p = proto::NBD_INFO_EXPORT.to_be_bytes().to_vec();
                p.extend_from_slice(&FAKE_SIZE.to_be_bytes());
                p.extend_from_slice(
                    &(proto::NBD_FLAG_HAS_FLAGS | proto::NBD_FLAG_READ_ONLY).to_be_bytes(),
                );
                option_reply(s, option, proto::NBD_REP_INFO, &p);
                option_reply(s, option, proto::NBD_REP_ACK, &[]);
                return;
            }
            other => panic!("unexpected option {other}"),
        }
    }
}

fn read_request(s: &mut TcpStream) -> Request {
    let mut b = [0u8; proto::REQUEST_LEN];
    s.read_exact(&mut b).unwrap();
    Request::parse(&b).unwrap()
}

fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = ChunkHeader {
        flags,
        kind,
        cookie,
        len: payload.len() as u32,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(payload);
    out
}

/// Starts a fake server that handshakes and then answers the first request
/// with what `reply` makes of it; returns its address.
fn fake_server(reply: impl FnOnce(Request) -> Vec<u8> + Send + 'static) -> NbdAddress {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        fake_handshake(&mut s);
        let req = read_request(&mut s);
        let _ = s.write_all(&reply(req));
        // Nothing more from the server; wait until the client gives up.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    NbdAddress::parse(&format!("nbd://127.0.0.1:{port}/")).unwrap()
}

#[test]
fn malformed_or_oversized_replies_are_errors() {
    type Case = (&'static str, bool, fn(Request) -> Vec<u8>);
    let cases: Vec<Case> = vec![
        ("oversized chunk", true, |r| {
            let mut h = ChunkHeader {
                flags: proto::NBD_REPLY_FLAG_DONE,
                kind: proto::NBD_REPLY_TYPE_OFFSET_DATA,
                cookie: r.cookie,
                len: u32::MAX,
            }
            .encode()
            .to_vec();
            h.extend_from_slice(&[0; 64]);
            h
        }),
        ("bad magic", true, |_| {
            vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]
        }),
        ("wrong cookie", true, |r| {
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_NONE,
                r.cookie + 1,
                &[],
            )
        }),
        ("data outside the request", true, |r| {
            let mut p = (r.offset + 1).to_be_bytes().to_vec();
            p.resize(8 + r.len as usize, 9);
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_OFFSET_DATA,
                r.cookie,
                &p,
            )
        }),
        ("a read covered by half", true, |r| {
            let mut p = r.offset.to_be_bytes().to_vec();
            p.resize(8 + r.len as usize / 2, 9);
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_OFFSET_DATA,
                r.cookie,
                &p,
            )
        }),
        ("overlapping chunks", true, |r| {
            let mut p = r.offset.to_be_bytes().to_vec();
            p.resize(8 + r.len as usize / 2, 9);
            let mut out = chunk(0, proto::NBD_REPLY_TYPE_OFFSET_DATA, r.cookie, &p);
            out.extend(chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_OFFSET_DATA,
                r.cookie,
                &p,
            ));
            out
        }),
        ("a block status chunk to a read", true, |r| {
            let p = proto::encode_block_status(
                CONTEXT_ID,
                &[Extent {
                    len: r.len,
                    flags: 0,
                }],
            );
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_BLOCK_STATUS,
                r.cookie,
                &p,
            )
        }),
        ("connection closed mid-chunk", true, |r| {
            let mut out = ChunkHeader {
                flags: proto::NBD_REPLY_FLAG_DONE,
                kind: proto::NBD_REPLY_TYPE_OFFSET_DATA,
                cookie: r.cookie,
                len: 8 + r.len,
            }
            .encode()
            .to_vec();
            out.extend_from_slice(&r.offset.to_be_bytes()[..5]);
            out
        }),
        ("an error chunk", false, |r| {
            let mut p = 5u32.to_be_bytes().to_vec();
            p.extend_from_slice(&4u16.to_be_bytes());
            p.extend_from_slice(b"oops");
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_ERROR,
                r.cookie,
                &p,
            )
        }),
    ];
    for (name, breaks, reply) in cases {
        let address = fake_server(reply);
        let mut client = NbdClient::connect(&address, "b0").unwrap();
        assert_eq!(client.size(), FAKE_SIZE);
        assert!(client.read_only());
        let mut buf = vec![0u8; 64 * 1024];
        let err = client.read_at(4096, &mut buf).unwrap_err();
        match (&err, breaks) {
            (NbdError::Malformed { .. } | NbdError::Io { .. }, true) => {
                let again = client.read_at(0, &mut buf).unwrap_err();
                assert!(
                    matches!(again, NbdError::Broken { .. }),
                    "{name}: {again:?}"
                );
            }
            (NbdError::Server { error, .. }, false) => {
                assert_eq!(error.message, "oops", "{name}");
            }
            _ => panic!("{name}: unexpected {err:?}"),
        }
    }
}

#[test]
fn malformed_block_status_replies_are_errors() {
    type Case = (&'static str, fn(Request) -> Vec<u8>);
    let cases: Vec<Case> = vec![
        ("another context", |r| {
            let p = proto::encode_block_status(
                CONTEXT_ID + 1,
                &[Extent {
                    len: r.len,
                    flags: 1,
                }],
            );
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_BLOCK_STATUS,
                r.cookie,
                &p,
            )
        }),
        ("an empty extent", |r| {
            let p = proto::encode_block_status(CONTEXT_ID, &[Extent { len: 0, flags: 1 }]);
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_BLOCK_STATUS,
                r.cookie,
                &p,
            )
        }),
        ("extents past the request", |r| {
            let e = Extent {
                len: r.len,
                flags: 1,
            };
            let p = proto::encode_block_status(CONTEXT_ID, &[e, e]);
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_BLOCK_STATUS,
                r.cookie,
                &p,
            )
        }),
        ("no status chunk", |r| {
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_NONE,
                r.cookie,
                &[],
            )
        }),
        ("a data chunk", |r| {
            let mut p = r.offset.to_be_bytes().to_vec();
            p.push(1);
            chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_OFFSET_DATA,
                r.cookie,
                &p,
            )
        }),
    ];
    for (name, reply) in cases {
        let address = fake_server(reply);
        let err = DirtyBitmapSource::open(&address, "b0").unwrap_err();
        assert!(matches!(err, NbdError::Malformed { .. }), "{name}: {err:?}");
    }
}

#[test]
fn a_fake_servers_bitmap_is_walked_in_pieces() {
    // A server that answers each block status request with a short extent
    // (as servers may): the walk continues from where each answer ended.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        fake_handshake(&mut s);
        loop {
            let mut b = [0u8; proto::REQUEST_LEN];
            if s.read_exact(&mut b).is_err() {
                return;
            }
            let r = Request::parse(&b).unwrap();
            if r.command == proto::NBD_CMD_DISC {
                return;
            }
            assert_eq!(r.command, proto::NBD_CMD_BLOCK_STATUS);
            // 64 KiB per answer, dirty on every other one.
            let dirty = (r.offset / CLUSTER) % 2 == 1;
            let p = proto::encode_block_status(
                CONTEXT_ID,
                &[Extent {
                    len: CLUSTER as u32,
                    flags: u32::from(dirty),
                }],
            );
            s.write_all(&chunk(
                proto::NBD_REPLY_FLAG_DONE,
                proto::NBD_REPLY_TYPE_BLOCK_STATUS,
                r.cookie,
                &p,
            ))
            .unwrap();
        }
    });
    let address = NbdAddress::parse(&format!("nbd://127.0.0.1:{port}/")).unwrap();
    let source = DirtyBitmapSource::open(&address, "b0").unwrap();
    assert_eq!(source.dirty_bytes(), FAKE_SIZE / 2);
    let ranges = source.dirty_ranges(0).unwrap();
    assert_eq!(ranges.len(), 8);
    assert_eq!(ranges[0], CLUSTER..2 * CLUSTER);
}

#[test]
fn refusals_in_the_handshake_are_reported() {
    // A server that refuses structured replies.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut g = proto::NBD_MAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&proto::NBD_FLAG_FIXED_NEWSTYLE.to_be_bytes());
        s.write_all(&g).unwrap();
        read_u32(&mut s);
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap();
        option_reply(
            &mut s,
            proto::NBD_OPT_STRUCTURED_REPLY,
            proto::NBD_REP_ERR_UNSUP,
            b"no",
        );
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let address = NbdAddress::parse(&format!("nbd://127.0.0.1:{port}/")).unwrap();
    let err = NbdClient::connect(&address, "b0").unwrap_err();
    assert!(matches!(err, NbdError::Refused { .. }), "{err:?}");
    assert!(
        err.to_string().contains("NBD_OPT_STRUCTURED_REPLY"),
        "{err}"
    );

    // Something that is not an NBD server at all.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let address = NbdAddress::parse(&format!("nbd://127.0.0.1:{port}/")).unwrap();
    let err = NbdClient::connect(&address, "b0").unwrap_err();
    assert!(matches!(err, NbdError::Malformed { .. }), "{err:?}");

    // Nobody listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = NbdAddress::parse(&format!("nbd://127.0.0.1:{port}/")).unwrap();
    assert!(matches!(
        NbdClient::connect(&address, "b0").unwrap_err(),
        NbdError::Connect { .. }
    ));
}

// ---------------------------------------------------------------------------
// Properties of the decoders and of the range bookkeeping
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), kind in any::<u16>(), start in any::<u64>(), len in any::<u32>()) {
        let _ = proto::parse_greeting(&bytes);
        let _ = proto::OptionReplyHeader::parse(&bytes, proto::NBD_OPT_GO);
        let _ = proto::parse_meta_context(&bytes);
        let _ = proto::parse_info(&bytes);
        let _ = proto::parse_simple_reply(&bytes);
        let _ = ChunkHeader::parse(&bytes);
        let _ = Request::parse(&bytes);
        let _ = proto::parse_error_chunk(kind, &bytes);
        let _ = proto::parse_block_status(&bytes, CONTEXT_ID);
        let end = start.saturating_add(u64::from(len));
        if let Ok(proto::ReadChunk::Data { offset, data }) = proto::parse_read_chunk(kind, &bytes, start..end) {
            prop_assert!(offset >= start && offset + data.len() as u64 <= end && !data.is_empty());
        }
        if let Ok(proto::ReadChunk::Hole { offset, len: n }) = proto::parse_read_chunk(kind, &bytes, start..end) {
            prop_assert!(offset >= start && offset + u64::from(n) <= end && n > 0);
        }
    }

    #[test]
    fn chunk_headers_round_trip(flags in any::<u16>(), kind in any::<u16>(), cookie in any::<u64>(), len in 0..=proto::MAX_CHUNK) {
        let h = ChunkHeader { flags, kind, cookie, len };
        prop_assert_eq!(ChunkHeader::parse(&h.encode()), Ok(h));
    }

    #[test]
    fn oversized_chunk_headers_are_refused(len in proto::MAX_CHUNK + 1..=u32::MAX) {
        let h = ChunkHeader { flags: 0, kind: 1, cookie: 1, len };
        prop_assert!(ChunkHeader::parse(&h.encode()).is_err());
    }

    #[test]
    fn requests_round_trip(flags in any::<u16>(), command in any::<u16>(), cookie in any::<u64>(), offset in any::<u64>(), len in any::<u32>()) {
        let r = Request { flags, command, cookie, offset, len };
        prop_assert_eq!(Request::parse(&r.encode()), Ok(r));
    }

    #[test]
    fn block_status_round_trips(extents in proptest::collection::vec((1..=u32::MAX, any::<u32>()), 1..64)) {
        let e: Vec<Extent> = extents.iter().map(|&(len, flags)| Extent { len, flags }).collect();
        let p = proto::encode_block_status(CONTEXT_ID, &e);
        prop_assert_eq!(proto::parse_block_status(&p, CONTEXT_ID), Ok(e));
        prop_assert!(proto::parse_block_status(&p, CONTEXT_ID + 1).is_err());
        prop_assert!(proto::parse_block_status(&p[..p.len() - 1], CONTEXT_ID).is_err());
    }

    #[test]
    fn dirty_ranges_stay_bounded_and_cover_every_extent(
        gaps in proptest::collection::vec((0u64..1 << 20, 1u64..1 << 20), 0..400),
        limit in 2usize..64,
    ) {
        let mut d = DirtyRanges::with_limit(limit);
        let mut pushed = Vec::new();
        let mut at = 0;
        for (gap, len) in gaps {
            let r = at + gap..at + gap + len;
            at = r.end;
            d.push(r.clone());
            pushed.push(r);
        }
        let ranges = d.ranges();
        prop_assert!(ranges.len() <= limit);
        prop_assert!(ranges.windows(2).all(|w| w[0].end < w[1].start));
        prop_assert_eq!(d.dirty_bytes(), pushed.iter().map(|r| r.end - r.start).sum::<u64>());
        prop_assert!(d.covered_bytes() >= d.dirty_bytes());
        for r in &pushed {
            prop_assert!(ranges.iter().any(|c| c.start <= r.start && r.end <= c.end), "{:?} not covered", r);
        }
    }
}

// ---------------------------------------------------------------------------
// The fuzz target's body on its seed corpus
// ---------------------------------------------------------------------------

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/nbd_client_replies")
}

/// A seed: the selector byte that picks the decoder, then the message.
fn picked(selector: u8, message: Vec<u8>) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend(message);
    out
}

/// A chunk flagged as the last of its reply.
fn last_chunk(kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    chunk(proto::NBD_REPLY_FLAG_DONE, kind, cookie, payload)
}

/// The seeds, one per kind of message (the first byte picks the decoder).
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut greeting = vec![0u8];
    greeting.extend_from_slice(&proto::NBD_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&3u16.to_be_bytes());
    let mut info = vec![0u8];
    info.extend_from_slice(&proto::OPTION_REPLY_MAGIC.to_be_bytes());
    info.extend_from_slice(&proto::NBD_OPT_GO.to_be_bytes());
    info.extend_from_slice(&proto::NBD_REP_INFO.to_be_bytes());
    info.extend_from_slice(&12u32.to_be_bytes());
    info.extend_from_slice(&proto::NBD_INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&(32 * MIB).to_be_bytes());
    info.extend_from_slice(&3u16.to_be_bytes());
    let mut data = 4096u64.to_be_bytes().to_vec();
    data.extend_from_slice(&[0x5a; 64]);
    let read = picked(1, last_chunk(proto::NBD_REPLY_TYPE_OFFSET_DATA, 1, &data));
    let mut h = 8192u64.to_be_bytes().to_vec();
    h.extend_from_slice(&4096u32.to_be_bytes());
    let hole = picked(1, chunk(0, proto::NBD_REPLY_TYPE_OFFSET_HOLE, 1, &h));
    let status = proto::encode_block_status(
        1,
        &[
            Extent {
                len: 65536,
                flags: 1,
            },
            Extent {
                len: 1 << 20,
                flags: 0,
            },
        ],
    );
    let status_chunk = picked(
        1,
        last_chunk(proto::NBD_REPLY_TYPE_BLOCK_STATUS, 2, &status),
    );
    let status_payload = picked(2, status);
    let mut e = 5u32.to_be_bytes().to_vec();
    e.extend_from_slice(&2u16.to_be_bytes());
    e.extend_from_slice(b"io");
    e.extend_from_slice(&4096u64.to_be_bytes());
    let error = picked(1, last_chunk(proto::NBD_REPLY_TYPE_ERROR_OFFSET, 3, &e));
    let request = Request {
        flags: 0,
        command: proto::NBD_CMD_BLOCK_STATUS,
        cookie: 9,
        offset: 0,
        len: 1 << 30,
    };
    let request = picked(3, request.encode().to_vec());
    vec![
        ("greeting", greeting),
        ("info_export", info),
        ("read_data", read),
        ("read_hole", hole),
        ("block_status_chunk", status_chunk),
        ("block_status_payload", status_payload),
        ("error_offset", error),
        ("request", request),
    ]
}

/// The committed seeds are the ones this file makes, and the fuzz body
/// accepts each; `RHA_WRITE_NBD_SEEDS=1` rewrites them.
#[test]
fn fuzz_body_on_the_seed_corpus() {
    let dir = corpus_dir();
    let write = std::env::var_os("RHA_WRITE_NBD_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in seeds() {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (RHA_WRITE_NBD_SEEDS=1 writes the seeds)",
                path.display()
            )
        });
        assert_eq!(committed, bytes, "{} is stale", path.display());
        proto::fuzz_replies(&bytes);
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        proto::fuzz_replies(&std::fs::read(entry.unwrap().path()).unwrap());
    }
}
