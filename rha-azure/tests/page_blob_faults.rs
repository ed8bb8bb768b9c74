//! Page-blob replicas behind a fault-injecting proxy: throttling (503, 429),
//! dropped connections (before and after the service applied the request),
//! answers cut short, stalls past the attempt timeout; and crashes in the
//! middle of a batch, finished when the replica is reopened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod page_blob_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use page_blob_support::proxy::{Fault, Proxy};
use page_blob_support::{azurite, init_log, store_on, unique_container};
use rha_azure::{
    azure_error_of_volume, AzureErrorKind, BlobStore, Endpoint, PageBlobSink, PageBlobVolume,
    RetryPolicy, SinkConfig, StoreConfig,
};
use rha_core::events::Events;
use rha_core::journal::{FsyncPolicy, JournalConfig, Payload, Record};
use rha_core::sink::ReplicaSink;
use rha_core::source::TrackedSet;
use rha_core::sync::{replicate_until_idle, synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha_core::volume::{FileVolume, Volume};

const MIB: u64 = 1 << 20;

fn proxied(proxy: &Proxy, container: &str, retry: RetryPolicy, request_bytes: usize) -> BlobStore {
    let mut c = StoreConfig::new(
        Endpoint::Emulator {
            host: "127.0.0.1".into(),
            port: proxy.port,
        },
        container,
    );
    c.retry = retry;
    c.max_request_bytes = request_bytes;
    BlobStore::connect(c).unwrap()
}

fn patient() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 40,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(1),
        max_elapsed: Duration::from_secs(120),
    }
}

fn impatient() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(10),
        attempt_timeout: Duration::from_millis(500),
        max_elapsed: Duration::from_secs(10),
    }
}

fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (((offset + i + seed * 131).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8) | 1)
        .collect()
}

fn assert_same(master: &dyn Volume, replica: &dyn Volume, len: u64, what: &str) {
    let mut a = vec![0u8; 4 << 20];
    let mut b = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(a.len() as u64) as usize;
        master.read_at(at, &mut a[..n]).unwrap();
        replica.read_at(at, &mut b[..n]).unwrap();
        if let Some(i) = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y) {
            panic!("{what}: byte {} differs", at + i as u64);
        }
        at += n as u64;
    }
}

#[test]
fn synchronisation_and_replication_survive_throttling_timeouts_and_dropped_connections() {
    init_log();
    let az = azurite();
    let proxy = Proxy::start(az.port);
    let container = unique_container("faults");
    // 1 MiB requests: more of them, so every kind of fault is met many times.
    let store = proxied(&proxy, &container, patient(), 1 << 20);
    proxy.set_plan(vec![
        Fault::Pass,
        Fault::Busy503,
        Fault::Pass,
        Fault::Pass,
        Fault::DropBefore,
        Fault::Pass,
        Fault::Throttle429,
        Fault::Pass,
        Fault::DropAfter,
        Fault::Pass,
        Fault::Pass,
        Fault::CutAnswer,
        Fault::Pass,
        Fault::Stall(Duration::from_millis(1500)),
        Fault::Pass,
        Fault::Pass,
    ]);

    let dir = tempfile::tempdir().unwrap();
    let size = 12 * MIB + 4096;
    let master_file = FileVolume::create(dir.path().join("m.img"), size).unwrap();
    let mut at = 0;
    let mut i = 0;
    while at < size {
        let n = (MIB / 2 + 512 * (i % 5)).min(size - at);
        if i % 3 != 2 {
            master_file
                .write_at(at, &pattern(i, at, n as usize))
                .unwrap();
        }
        at += n;
        i += 1;
    }
    let master: Arc<dyn Volume> = Arc::new(master_file);
    let events = Events::new();
    let jc = JournalConfig {
        fsync: FsyncPolicy::Never,
        ..Default::default()
    };
    let (set, _) = TrackedSet::open(
        dir.path().join("j"),
        jc,
        vec![master.clone()],
        events.clone(),
    )
    .unwrap();

    let config = SinkConfig::new("faulty", "appliance");
    let sink = PageBlobSink::create(&store, &config, &[size]).unwrap();
    let mut peer = LocalPeer::new(&sink);
    let report = synchronise(
        &set,
        &mut peer,
        &SyncOptions::new(SyncMethod::Volume),
        &events,
    )
    .unwrap();
    assert!(report.consistent);
    let disk = set.volume(0).unwrap();
    for k in 0..20u64 {
        let off = (k * 611_953) % (size - 70_000);
        if k % 4 == 3 {
            disk.write_zeroes(off, 65_536 + k * 512).unwrap();
        } else {
            disk.write_at(off, &pattern(1000 + k, off, 3000 + k as usize * 97))
                .unwrap();
        }
    }
    replicate_until_idle(&set, &mut peer, 64 * 1024, usize::MAX, &events).unwrap();
    let point = sink.create_recovery_point("after the storm").unwrap();
    drop(peer);
    drop(sink);
    proxy.pass_all();

    // Read back directly from Azurite, bypassing the proxy.
    let direct = store_on(az.port, &container);
    let sink = PageBlobSink::open(&direct, &config).unwrap();
    assert_eq!(sink.state().applied, set_last(&set));
    assert_same(
        &*master,
        &*sink.volume(0).unwrap(),
        size,
        "replica after faults",
    );
    let points = sink.recovery_points().unwrap();
    assert_eq!(
        points.len(),
        1,
        "one point, even if a snapshot was retried: {points:?}"
    );
    assert_eq!(points[0].id, point.id);
    let snap =
        PageBlobVolume::open_snapshot(&direct, &point.disks[0].blob, &point.disks[0].snapshot)
            .unwrap();
    assert_same(&*master, &snap, size, "recovery point after faults");

    let c = proxy.counts();
    let got = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
    eprintln!(
        "proxy: {} requests, {} passed, 503 {}, 429 {}, dropped before {}, dropped after {}, cut {}, stalled {}, at most {} at once",
        got(&c.requests), got(&c.passed), got(&c.busy), got(&c.throttled), got(&c.dropped_before),
        got(&c.dropped_after), got(&c.cut), got(&c.stalled), got(&c.max_in_flight)
    );
    for (what, n) in [
        ("503", got(&c.busy)),
        ("429", got(&c.throttled)),
        ("dropped before", got(&c.dropped_before)),
        ("dropped after", got(&c.dropped_after)),
        ("cut", got(&c.cut)),
        ("stalled", got(&c.stalled)),
    ] {
        assert!(n >= 2, "the proxy injected {what} {n} times");
    }
    assert!(
        got(&c.max_in_flight) > 1,
        "page requests run several at once"
    );
    let st = store.stats();
    eprintln!("store: {st:?}");
    assert!(
        st.retries > 0 && st.throttled > 0 && st.timeouts > 0 && st.transport_errors > 0,
        "{st:?}"
    );
}

fn set_last(set: &TrackedSet) -> u64 {
    use rha_core::source::ChangeSource;
    set.last_seq()
}

fn data(seq: u64, offset: u64, byte: u8, len: usize) -> Record {
    Record {
        seq,
        volume: 0,
        offset,
        payload: Payload::Data(vec![byte; len].into()),
    }
}

/// The appliance "crashes" after the k-th request of a batch (the requests
/// after it never reach the service, and it gives up); reopening the replica
/// without the proxy finishes the batch from the redo log, or (k = 0, the
/// redo log never written) leaves the replica at the previous batch.
#[test]
fn a_batch_cut_short_by_a_crash_is_finished_when_the_replica_is_reopened() {
    init_log();
    let az = azurite();
    let proxy = Proxy::start(az.port);
    let container = unique_container("crash");
    let store = proxied(&proxy, &container, impatient(), 4 << 20);
    let direct = store_on(az.port, &container);
    let batch = vec![
        data(2, 0, 0x22, 8192),
        data(3, MIB, 0x33, 4096),
        data(4, 100, 0x44, 10),
        Record {
            seq: 5,
            volume: 0,
            offset: 2 * MIB,
            payload: Payload::Zero(MIB),
        },
    ];
    let mut want = vec![0u8; 3 * MIB as usize];
    want[..8192].fill(0x22);
    want[100..110].fill(0x44);
    want[MIB as usize..MIB as usize + 4096].fill(0x33);
    for k in 0..5usize {
        proxy.pass_all();
        let config = SinkConfig::new(format!("crash-{k}"), "appliance");
        let sink = PageBlobSink::create(&store, &config, &[4 * MIB]).unwrap();
        sink.apply(&[Record {
            seq: 1,
            volume: 0,
            offset: 2 * MIB,
            payload: Payload::Data(vec![0x11; MIB as usize].into()),
        }])
        .unwrap();
        let mut plan = vec![Fault::Pass; k];
        plan.extend(std::iter::repeat_n(Fault::DropBefore, 10_000));
        proxy.set_plan(plan);
        let err = sink.apply(&batch).unwrap_err();
        assert!(
            err.to_string().contains("devstoreaccount1"),
            "the error names the blob: {err}"
        );
        assert_eq!(sink.state().applied, 1, "a failed batch is not recorded");
        drop(sink); // the crash: no clean close, the leases stay
        proxy.pass_all();

        let reopened = PageBlobSink::open(&direct, &config).unwrap();
        let v = reopened.volume(0).unwrap();
        let mut got = vec![0u8; 3 * MIB as usize];
        v.read_at(0, &mut got).unwrap();
        if k == 0 {
            assert_eq!(
                reopened.state().applied,
                1,
                "k={k}: no redo log, the batch is not applied"
            );
            assert!(
                got[2 * MIB as usize..] == vec![0x11; MIB as usize][..],
                "k={k}"
            );
            assert_eq!(reopened.apply(&batch).unwrap(), 5);
            v.read_at(0, &mut got).unwrap();
        } else {
            assert_eq!(reopened.state().applied, 5, "k={k}: the batch was finished");
        }
        assert!(got == want, "k={k}: the replica holds all of the batch");
        assert_eq!(
            reopened.apply(&batch).unwrap(),
            5,
            "re-sending the batch is harmless"
        );
    }
}

#[test]
fn failures_that_outlast_the_retries_say_what_failed_where_and_what_to_do() {
    init_log();
    let az = azurite();
    let proxy = Proxy::start(az.port);
    let container = unique_container("giveup");
    let store = proxied(&proxy, &container, impatient(), 4 << 20);
    let (v, _) = PageBlobVolume::create(&store, "g.vhd", 2 * MIB, None).unwrap();

    proxy.set_plan(vec![Fault::Stall(Duration::from_secs(2))]);
    let mut buf = vec![0u8; 4096];
    let e = v.read_at(MIB, &mut buf).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("read http://127.0.0.1:"), "{msg}");
    assert!(msg.contains("g.vhd at offset 1048576"), "{msg}");
    assert!(
        msg.contains("no answer within 500ms") && msg.contains("2 attempts"),
        "{msg}"
    );
    assert!(matches!(
        azure_error_of_volume(&e).map(|a| &a.kind),
        Some(AzureErrorKind::Timeout { .. })
    ));

    proxy.set_plan(vec![Fault::Busy503]);
    // Writes of whole pages run in the background: the flush reports them.
    let e = v
        .write_at(512, &[1; 512])
        .and_then(|()| v.flush())
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("put pages of") && msg.contains("offset 512"),
        "{msg}"
    );
    assert!(
        msg.contains("503 ServerBusy") && msg.contains("retry later"),
        "{msg}"
    );

    proxy.set_plan(vec![Fault::DropBefore]);
    let e = v.write_zeroes(0, MIB).and_then(|()| v.flush()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("clear pages of") && msg.contains("connection failed"),
        "{msg}"
    );

    // An unaligned write reads and patches its pages before returning: it fails at once.
    let e = v.write_at(100, &[1; 10]).unwrap_err();
    assert!(e.to_string().contains("connection failed"), "{e}");

    proxy.pass_all();
    v.write_at(512, &[1; 512]).unwrap();
    v.flush().unwrap();
    let mut back = vec![0u8; 512];
    v.read_at(512, &mut back).unwrap();
    assert!(back == [1; 512]);
}
