//! Page-blob replicas on Azurite: a full synchronisation from a file image
//! read back and compared, replication of live writes, recovery points
//! (blob snapshots), leases, and calls from inside a tokio runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod page_blob_support;

use std::sync::Arc;

use page_blob_support::{init_log, store};
use rha_azure::{
    azure_error_of_volume, list_recovery_points, read_replica_state, resolve_recovery_point,
    AzureErrorKind, PageBlobSink, PageBlobVolume, PointSelector, SinkConfig,
};
use rha_core::events::Events;
use rha_core::journal::{FsyncPolicy, JournalConfig, Payload, Record};
use rha_core::sink::ReplicaSink;
use rha_core::source::TrackedSet;
use rha_core::sync::{replicate_until_idle, synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha_core::volume::{FileVolume, Volume};

const MIB: u64 = 1 << 20;

/// A pattern that differs at every offset and between seeds (never all zero per 4 KiB).
fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (offset + i + seed * 7919).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
            (x as u8) | 1
        })
        .collect()
}

/// Reads both volumes over `len` bytes in 4 MiB steps and reports the first difference.
fn assert_same(master: &dyn Volume, replica: &dyn Volume, len: u64, what: &str) {
    let mut a = vec![0u8; 4 << 20];
    let mut b = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(a.len() as u64) as usize;
        master.read_at(at, &mut a[..n]).unwrap();
        replica.read_at(at, &mut b[..n]).unwrap();
        if let Some(i) = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y) {
            panic!(
                "{what}: byte {} differs: master {:#04x}, replica {:#04x}",
                at + i as u64,
                a[i],
                b[i]
            );
        }
        at += n as u64;
    }
}

/// A file image like a used disk: data with holes, and writes at odd offsets.
fn make_image(path: &std::path::Path, size: u64) -> FileVolume {
    let v = FileVolume::create(path, size).unwrap();
    let mut at = 0;
    let mut i = 0u64;
    while at < size {
        let n = (MIB + 4096 * (i % 7)).min(size - at);
        if i % 4 != 3 {
            v.write_at(at, &pattern(i, at, n as usize)).unwrap();
        } // every fourth stretch stays a hole
        at += n;
        i += 1;
    }
    for (k, off) in [1u64, 4097, 3 * MIB + 511, size - 1000]
        .into_iter()
        .enumerate()
    {
        v.write_at(
            off,
            &pattern(100 + k as u64, off, 700.min((size - off) as usize)),
        )
        .unwrap();
    }
    v
}

#[test]
fn full_synchronisation_from_a_file_image_reads_back_identical() {
    init_log();
    let store = store("sync");
    let dir = tempfile::tempdir().unwrap();
    // Not a whole MiB: the replica rounds up, the master's bytes must all match.
    let size = 40 * MIB + 3 * 512;
    let master: Arc<dyn Volume> = Arc::new(make_image(&dir.path().join("master.img"), size));
    let events = Events::new();
    let config = JournalConfig {
        fsync: FsyncPolicy::Never,
        ..Default::default()
    };
    let (set, _) = TrackedSet::open(
        dir.path().join("journal"),
        config,
        vec![master.clone()],
        events.clone(),
    )
    .unwrap();
    let sink =
        PageBlobSink::create(&store, &SinkConfig::new("web01", "appliance"), &[size]).unwrap();
    assert_eq!(
        sink.disks()[0].size(),
        41 * MIB,
        "rounded up to a whole MiB"
    );
    let mut peer = LocalPeer::new(&sink);
    let report = synchronise(
        &set,
        &mut peer,
        &SyncOptions::new(SyncMethod::Volume),
        &events,
    )
    .unwrap();
    assert!(report.consistent, "{report:?}");
    let replica = sink.volume(0).unwrap();
    assert_same(
        &*master,
        &*replica,
        size,
        "after the volume-level synchronisation",
    );
    let mut tail = vec![1u8; MIB as usize - 3 * 512];
    replica.read_at(size, &mut tail).unwrap();
    assert!(
        tail.iter().all(|&b| b == 0),
        "the rounding-up reads as zeros"
    );
    let stats = store.stats();
    assert!(
        stats.bytes_written < size,
        "holes are not written: {stats:?}"
    );

    // Live writes, replicated through the journal: data, zeros, odd offsets.
    let disk = set.volume(0).unwrap();
    disk.write_at(5 * MIB + 17, &pattern(200, 0, 300_000))
        .unwrap();
    disk.write_zeroes(MIB, 2 * MIB).unwrap();
    disk.write_at(size - 700, &pattern(201, 0, 700)).unwrap();
    disk.write_at(0, &[0xAB; 100]).unwrap();
    let before = store.stats();
    let seq = replicate_until_idle(&set, &mut peer, 4 << 20, usize::MAX, &events).unwrap();
    assert_eq!(sink.state().applied, seq);
    assert_same(&*master, &*replica, size, "after replicating live writes");
    let after = store.stats();
    assert!(
        after.bytes_cleared - before.bytes_cleared >= 2 * MIB - 1024,
        "a zero write is cleared, not written: {before:?} → {after:?}"
    );

    // A block-level resynchronisation compares hashes and finds nothing to send.
    let mut peer = LocalPeer::new(&sink);
    let mut opts = SyncOptions::new(SyncMethod::Block);
    opts.force_full_verification = true;
    let report = synchronise(&set, &mut peer, &opts, &events).unwrap();
    assert_eq!(report.blocks_changed, 0, "{report:?}");

    // And a fresh appliance process reading the replica sees the same bytes.
    drop(peer);
    drop(sink);
    let reopened = PageBlobSink::open(&store, &SinkConfig::new("web01", "appliance")).unwrap();
    assert_eq!(reopened.state().applied, seq);
    assert!(reopened.state().consistent);
    assert_same(
        &*master,
        &*reopened.volume(0).unwrap(),
        size,
        "after reopening",
    );
}

fn data(seq: u64, volume: u32, offset: u64, byte: u8, len: usize) -> Record {
    Record {
        seq,
        volume,
        offset,
        payload: Payload::Data(vec![byte; len].into()),
    }
}

fn read(v: &dyn Volume, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    v.read_at(offset, &mut b).unwrap();
    b
}

#[test]
fn bookmarks_become_snapshots_that_can_be_listed_and_resolved() {
    init_log();
    let store = store("points");
    let config = SinkConfig::new("db01", "appliance");
    let sink = PageBlobSink::create(&store, &config, &[2 * MIB, MIB]).unwrap();
    sink.begin_sync().unwrap();
    sink.end_sync(0).unwrap();
    sink.mark_consistent(0).unwrap();
    sink.apply(&[data(1, 0, 0, 1, 4096), data(2, 1, 512, 2, 100)])
        .unwrap();

    // At the applied sequence: taken at once.
    let p2 = sink.bookmark("after two", 2).unwrap().expect("taken now");
    assert_eq!((p2.seq, p2.disks.len(), p2.consistent), (2, 2, true));
    // Ahead: taken when a batch reaches it; the batch 3..=6 is split at 4.
    assert!(sink.bookmark("at four", 4).unwrap().is_none());
    let reopened_doc = read_replica_state(&store, "db01").unwrap();
    assert_eq!(reopened_doc.applied, 2);
    sink.apply(&[
        data(3, 0, 0, 3, 4096),
        data(4, 0, 8192, 4, 1000),
        data(5, 0, 0, 5, 4096),
        data(6, 1, 0, 6, 4096),
    ])
    .unwrap();
    // Behind: refused, the disks hold later changes.
    let e = sink.bookmark("too late", 5).unwrap_err();
    assert!(e.to_string().contains("already applied up to 6"), "{e}");

    let points = sink.recovery_points().unwrap();
    let names: Vec<(&str, u64)> = points.iter().map(|p| (p.name.as_str(), p.seq)).collect();
    assert_eq!(names, vec![("after two", 2), ("at four", 4)]);
    assert_eq!(list_recovery_points(&store, "db01/").unwrap(), points);

    // Each snapshot holds its point's data; the live disk moved on.
    let p4 = &points[1];
    let snap0 =
        PageBlobVolume::open_snapshot(&store, &p4.disks[0].blob, &p4.disks[0].snapshot).unwrap();
    assert!(
        read(&snap0, 0, 4096) == [3; 4096],
        "seq 3 in the point at 4, not seq 5"
    );
    assert!(read(&snap0, 8192, 1000) == [4; 1000]);
    assert!(snap0.write_at(0, &[1]).is_err(), "a snapshot is read-only");
    let snap1 =
        PageBlobVolume::open_snapshot(&store, &p4.disks[1].blob, &p4.disks[1].snapshot).unwrap();
    let d1 = read(&snap1, 0, 4096);
    assert!(
        d1[..512] == [0; 512] && d1[512..612] == [2; 100],
        "seq 6 came after the point"
    );
    assert!(
        d1[612..].iter().all(|&b| b == 0),
        "seq 6 came after the point"
    );
    assert!(read(&*sink.volume(0).unwrap(), 0, 4096) == [5; 4096]);
    let p2snap =
        PageBlobVolume::open_snapshot(&store, &p2.disks[0].blob, &p2.disks[0].snapshot).unwrap();
    assert!(read(&p2snap, 0, 4096) == [1; 4096]);
    assert_eq!(
        p2snap.footer(),
        sink.disks()[0].footer(),
        "a snapshot is a fixed VHD too"
    );

    // Resolving: by name, id, sequence; `latest` takes a point at seq 6.
    let by_name = sink.resolve_point(&"at four".parse().unwrap()).unwrap();
    assert_eq!(by_name.id, p4.id);
    assert_eq!(
        sink.resolve_point(&PointSelector::Named(p2.id.clone()))
            .unwrap()
            .seq,
        2
    );
    assert_eq!(
        sink.resolve_point(&"seq:4".parse().unwrap()).unwrap().id,
        p4.id
    );
    let latest = sink.resolve_point(&PointSelector::Latest).unwrap();
    assert_eq!((latest.name.as_str(), latest.seq), ("latest", 6));
    let again = sink.resolve_point(&PointSelector::Latest).unwrap();
    assert_eq!(again.id, latest.id, "no new point while nothing changed");
    let e = sink.resolve_point(&"nightly".parse().unwrap()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("no recovery point `nightly`") && msg.contains(&p4.id),
        "{msg}"
    );

    // Without the sink (replication stopped), read-only.
    sink.apply(&[data(7, 0, MIB, 7, 512)]).unwrap();
    drop(sink);
    let other =
        page_blob_support::store_on(page_blob_support::azurite().port, store.container_name());
    let l = resolve_recovery_point(&other, "db01", &PointSelector::Latest).unwrap();
    assert_eq!(l.seq, 7);
    let snap =
        PageBlobVolume::open_snapshot(&other, &l.disks[0].blob, &l.disks[0].snapshot).unwrap();
    assert!(read(&snap, MIB, 512) == [7; 512]);
    assert_eq!(
        resolve_recovery_point(&other, "db01", &PointSelector::Seq(2))
            .unwrap()
            .id,
        p2.id
    );

    // Deleting a point removes its snapshots.
    let sink = PageBlobSink::open(&store, &config).unwrap();
    sink.delete_recovery_point(&p2).unwrap();
    let left: Vec<String> = sink
        .recovery_points()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(left, vec!["at four", "latest", "latest"]);
}

#[test]
fn latest_is_refused_while_the_replica_is_not_consistent() {
    init_log();
    let store = store("points-inconsistent");
    let sink = PageBlobSink::create(&store, &SinkConfig::new("s", "a"), &[MIB]).unwrap();
    sink.begin_sync().unwrap();
    let e = sink.resolve_point(&PointSelector::Latest).unwrap_err();
    assert!(e.to_string().contains("not consistent"), "{e}");
    let e = resolve_recovery_point(&store, "s", &PointSelector::Latest).unwrap_err();
    assert!(e.to_string().contains("not consistent"), "{e}");
}

#[test]
fn two_appliances_never_write_one_disk() {
    init_log();
    let store = store("leases");
    let first =
        PageBlobSink::create(&store, &SinkConfig::new("web", "appliance-1"), &[MIB]).unwrap();
    first.apply(&[data(1, 0, 0, 1, 512)]).unwrap();

    // A second appliance is refused, naming the conflict and the way out.
    let e = PageBlobSink::open(&store, &SinkConfig::new("web", "appliance-2")).unwrap_err();
    assert!(e.is_lease_conflict(), "{e:?}");
    assert!(matches!(e.kind, AzureErrorKind::LeaseConflict { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("replica.json") && msg.contains("takeover"),
        "{msg}"
    );
    // Creating over it is refused too.
    let e =
        PageBlobSink::create(&store, &SinkConfig::new("web", "appliance-2"), &[MIB]).unwrap_err();
    assert_eq!(e.kind, AzureErrorKind::AlreadyExists, "{e}");

    // A writer without the lease cannot touch the disk (412 from the service).
    let blob = first.disks()[0].blob_name().to_string();
    let unleased = PageBlobVolume::open(&store, &blob, None, false).unwrap();
    // (A write of whole pages runs in the background: its failure shows at the flush.)
    let err = unleased
        .write_at(0, &[9; 512])
        .and_then(|()| unleased.flush())
        .unwrap_err();
    let az = azure_error_of_volume(&err).expect("an Azure error");
    assert!(az.is_lease_conflict() && az.status() == Some(412), "{err}");
    assert!(err.to_string().contains(&blob), "{err}");
    assert!(read(&*first.volume(0).unwrap(), 0, 512) == [1; 512]);

    // Takeover: the second breaks the lease; the first can no longer write.
    let mut cfg = SinkConfig::new("web", "appliance-2");
    cfg.takeover = true;
    let second = PageBlobSink::open(&store, &cfg).unwrap();
    assert_eq!(second.state().applied, 1);
    second.apply(&[data(2, 0, 512, 2, 512)]).unwrap();
    let e = first.apply(&[data(2, 0, 512, 3, 512)]).unwrap_err();
    assert!(
        rha_azure::azure_error_of_sink(&e).is_some_and(|a| a.is_lease_conflict()),
        "{e}"
    );
    let e = first.volume(0).unwrap().write_at(0, &[4; 10]).unwrap_err();
    assert!(
        azure_error_of_volume(&e).is_some_and(|a| a.is_lease_conflict()),
        "{e}"
    );
    assert!(read(&*second.volume(0).unwrap(), 0, 1024) == [[1; 512], [2; 512]].concat());

    // A clean close hands the replica over without a takeover.
    second.close().unwrap();
    let third = PageBlobSink::open(&store, &SinkConfig::new("web", "appliance-3")).unwrap();
    assert_eq!(third.state().applied, 2);
}

#[test]
fn an_interrupted_creation_is_finished_by_the_same_owner() {
    init_log();
    let store = store("create-resume");
    let config = SinkConfig::new("half", "appliance");
    let sink = PageBlobSink::create(&store, &config, &[MIB, 2 * MIB]).unwrap();
    drop(sink);
    // Created fully: a second create is refused, even by the same owner.
    let e = PageBlobSink::create(&store, &config, &[MIB, 2 * MIB]).unwrap_err();
    assert_eq!(e.kind, AzureErrorKind::AlreadyExists);
    let e = PageBlobSink::open(&store, &SinkConfig::new("nothing-here", "appliance")).unwrap_err();
    assert!(matches!(e.kind, AzureErrorKind::NotFound), "{e}");
}

#[test]
fn volumes_work_from_inside_a_tokio_runtime() {
    init_log();
    let store = store("in-runtime");
    let (v, _) = PageBlobVolume::create(&store, "rt.vhd", MIB, None).unwrap();
    for rt in [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    ] {
        rt.block_on(async {
            v.write_at(100, b"inside a runtime").unwrap();
            assert_eq!(read(&v, 100, 16), b"inside a runtime");
        });
    }
}

#[test]
fn a_missing_blob_or_a_block_blob_is_refused_as_a_disk() {
    init_log();
    let store = store("footer");
    let (v, _) = PageBlobVolume::create(&store, "d.vhd", MIB, None).unwrap();
    assert_eq!(v.footer().current_size, MIB);
    let e = PageBlobVolume::open(&store, "missing.vhd", None, false).unwrap_err();
    assert!(matches!(e.kind, AzureErrorKind::NotFound), "{e}");
    assert!(e.to_string().contains("missing.vhd"), "{e}");
    let _sink = PageBlobSink::create(&store, &SinkConfig::new("p", "a"), &[MIB]).unwrap();
    let e = PageBlobVolume::open(&store, "p/replica.json", None, false).unwrap_err();
    assert!(e.to_string().contains("not a page blob"), "{e}");
}
