//! Synchronisation and replication, in process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::sync::Arc;

use proptest::prelude::*;
use rha_core::events::{Event, Events};
use rha_core::hash::Node;
use rha_core::journal::{FsyncPolicy, JournalConfig, Record};
use rha_core::sink::{MemSink, ReplicaSink, ReplicaState};
use rha_core::source::{ChangeSource, StaticSource, TrackedSet, TrackedVolume};
use rha_core::sync::{
    synchronise, LocalPeer, SyncError, SyncMethod, SyncOptions, SyncPeer, SyncReport, Traffic,
};
use rha_core::volume::{MemVolume, Volume};
use rha_core::{Seq, VolumeId};

const MIB: u64 = 1 << 20;

fn contents(v: &dyn Volume) -> Vec<u8> {
    let mut b = vec![0u8; v.size() as usize];
    v.read_at(0, &mut b).unwrap();
    b
}

fn assert_same(master: &[Arc<dyn Volume>], sink: &dyn ReplicaSink) {
    for (i, m) in master.iter().enumerate() {
        let r = sink.volume(i as VolumeId).unwrap();
        let want = contents(&**m);
        let mut got = vec![0u8; want.len()];
        r.read_at(0, &mut got).unwrap();
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!("volume {i} differs from the master first at byte {at}");
        }
    }
}

/// One synchronisation of `source` into `sink` with default options.
fn sync_with(
    source: &dyn ChangeSource,
    sink: &dyn ReplicaSink,
    method: SyncMethod,
    events: &Events,
) -> SyncReport {
    synchronise(
        source,
        &mut LocalPeer::new(sink),
        &SyncOptions::new(method),
        events,
    )
    .unwrap()
}

fn noisy_volume(size: u64, seed: u64) -> Arc<dyn Volume> {
    let v = MemVolume::new(size).unwrap();
    let mut x = seed | 1;
    let mut block = vec![0u8; 4096];
    for b in 0..size / 4096 {
        // Leave every third block zero so that zero handling is exercised.
        if b % 3 == 0 {
            continue;
        }
        for byte in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        v.write_at(b * 4096, &block).unwrap();
    }
    Arc::new(v)
}

#[test]
fn both_methods_make_the_replica_equal_and_never_send_zero_blocks() {
    for method in [SyncMethod::Volume, SyncMethod::Block] {
        let master = vec![
            noisy_volume(5 * MIB + 4096 + 512, 7),
            Arc::new(MemVolume::new(64 * MIB).unwrap()) as Arc<dyn Volume>,
        ];
        master[1].write_at(33 * MIB, b"lonely").unwrap();
        let sink = MemSink::new(&[master[0].size(), 64 * MIB]).unwrap();
        // Old garbage on the replica must be overwritten or zeroed.
        sink.volume(0).unwrap().write_at(0, &[0xAB; 8192]).unwrap();
        sink.volume(1)
            .unwrap()
            .write_at(50 * MIB, &[0xCD; 4096])
            .unwrap();
        let source = StaticSource::new(master.clone());
        let mut peer = LocalPeer::new(&sink);
        let events = Events::new();
        let rx = events.subscribe();
        let report = synchronise(&source, &mut peer, &SyncOptions::new(method), &events).unwrap();
        assert!(report.consistent);
        assert_same(&master, &sink);
        let data_bytes = (master[0].size() / 4096 * 2 / 3 + 2) * 4096 + 4096;
        assert!(
            report.bytes_sent < data_bytes + data_bytes / 10,
            "{method:?}: sent {} bytes for about {data_bytes} bytes of data",
            report.bytes_sent
        );
        let kinds: Vec<String> = rx.try_iter().map(|e| format!("{e:?}")).collect();
        assert!(kinds.iter().any(|e| e.starts_with("SyncStarted")));
        assert!(kinds.iter().any(|e| e.starts_with("SyncProgress")));
        assert!(
            kinds
                .iter()
                .any(|e| e.starts_with("AllSyncChangesReplicated")),
            "{kinds:?}"
        );
        assert_eq!(
            sink.state(),
            ReplicaState {
                applied: 0,
                consistent: true,
                synced: true
            }
        );
    }
}

#[test]
fn block_level_on_an_unchanged_volume_costs_almost_nothing() {
    let master = vec![noisy_volume(300 * MIB, 3)];
    let sink = MemSink::new(&[300 * MIB]).unwrap();
    let source = StaticSource::new(master.clone());
    let events = Events::new();
    sync_with(&source, &sink, SyncMethod::Volume, &events);
    let report = sync_with(&source, &sink, SyncMethod::Block, &events);
    assert_eq!(report.blocks_changed, 0);
    assert!(
        report.bytes_sent + report.bytes_received < 1024,
        "{report:?}"
    );

    // One changed block costs one block plus a few hashes per level.
    master[0].write_at(123 * MIB + 4096 * 7 + 5, b"x").unwrap();
    let report = sync_with(&source, &sink, SyncMethod::Block, &events);
    assert_eq!(report.blocks_changed, 1);
    assert!(report.bytes_sent < 4096 + 1024, "{report:?}");
    assert!(report.bytes_received < 4 * 16 * 16 + 512, "{report:?}");
    assert_same(&master, &sink);
}

#[test]
fn a_replica_smaller_than_the_master_is_refused_clearly() {
    let master = vec![Arc::new(MemVolume::new(2 * MIB).unwrap()) as Arc<dyn Volume>];
    let sink = MemSink::new(&[MIB]).unwrap();
    let mut peer = LocalPeer::new(&sink);
    let err = synchronise(
        &StaticSource::new(master),
        &mut peer,
        &SyncOptions::new(SyncMethod::Block),
        &Events::new(),
    )
    .unwrap_err();
    assert!(
        matches!(err, SyncError::SizeMismatch { volume: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("at least as large"));
}

/// A peer that lets the master write between the synchronisation's requests,
/// so writes land at every point of the algorithm.
struct Interleaving<'a> {
    inner: LocalPeer<'a>,
    writes: std::vec::IntoIter<(usize, u64, Vec<u8>)>,
    tracked: Vec<TrackedVolume>,
}

impl Interleaving<'_> {
    fn step(&mut self) {
        if let Some((v, off, data)) = self.writes.next() {
            let t = &self.tracked[v];
            let off = off % (t.size() - data.len() as u64);
            if data.iter().all(|&b| b == 0) {
                t.write_zeroes(off, data.len() as u64).unwrap();
            } else {
                t.write_at(off, &data).unwrap();
            }
        }
    }
}

impl SyncPeer for Interleaving<'_> {
    fn state(&mut self) -> Result<ReplicaState, SyncError> {
        self.inner.state()
    }
    fn begin_sync(&mut self, sizes: &[u64]) -> Result<(), SyncError> {
        self.step();
        self.inner.begin_sync(sizes)
    }
    fn hashes(&mut self, volume: VolumeId, nodes: &[Node]) -> Result<Vec<[u8; 16]>, SyncError> {
        self.step();
        self.inner.hashes(volume, nodes)
    }
    fn write(&mut self, volume: VolumeId, offset: u64, data: &[u8]) -> Result<(), SyncError> {
        self.step();
        self.inner.write(volume, offset, data)
    }
    fn zero(&mut self, volume: VolumeId, offset: u64, len: u64) -> Result<(), SyncError> {
        self.step();
        self.inner.zero(volume, offset, len)
    }
    fn end_sync(&mut self, base: Seq) -> Result<(), SyncError> {
        self.step();
        self.inner.end_sync(base)
    }
    fn apply(&mut self, records: &[Record]) -> Result<Seq, SyncError> {
        self.step();
        self.inner.apply(records)
    }
    fn mark_consistent(&mut self, seq: Seq) -> Result<(), SyncError> {
        self.inner.mark_consistent(seq)
    }
    fn traffic(&self) -> Traffic {
        self.inner.traffic()
    }
}

fn tracked(dir: &std::path::Path, master: &[Arc<dyn Volume>], max_bytes: u64) -> TrackedSet {
    let config = JournalConfig {
        max_bytes,
        fsync: FsyncPolicy::Never,
        segment_bytes: 256 << 10,
        ..Default::default()
    };
    TrackedSet::open(dir, config, master.to_vec(), Events::new())
        .unwrap()
        .0
}

fn write_strategy() -> impl Strategy<Value = Vec<(usize, u64, Vec<u8>)>> {
    prop::collection::vec(
        (
            0usize..2,
            0u64..(3 * MIB),
            prop_oneof![
                (1usize..9000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
                (1usize..3).prop_map(|n| vec![0u8; n * 4096]),
            ],
        ),
        0..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Any writes interleaved with a synchronisation leave the replica equal
    /// to the master once it reports consistent, whatever the method, and
    /// whether or not the journal overflows meanwhile.
    #[test]
    fn writes_during_sync_end_up_on_the_replica(
        writes in write_strategy(),
        block in any::<bool>(),
        tiny_journal in any::<bool>(),
        resync in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let master = vec![noisy_volume(3 * MIB + 4096, 1), noisy_volume(3 * MIB, 2)];
        let set = tracked(dir.path(), &master, if tiny_journal { 48 << 10 } else { 64 << 20 });
        let sink = MemSink::new(&[3 * MIB + 4096, 3 * MIB]).unwrap();
        let method = if block { SyncMethod::Block } else { SyncMethod::Volume };
        let events = Events::new();
        if resync {
            // A first synchronisation, then writes, then a second one that
            // may use the change log.
            let mut peer = LocalPeer::new(&sink);
            synchronise(&set, &mut peer, &SyncOptions::new(method), &events).unwrap();
        }
        let tracked: Vec<TrackedVolume> = (0..2).map(|i| set.volume(i).unwrap()).collect();
        let mut peer = Interleaving { inner: LocalPeer::new(&sink), writes: writes.into_iter(), tracked };
        let mut options = SyncOptions::new(method);
        options.batch_bytes = 16 << 10;
        options.max_passes = 50;
        let report = synchronise(&set, &mut peer, &options, &events).unwrap();
        prop_assert!(report.consistent);
        // Writes still pending after the report are replicated normally.
        let rest: Vec<_> = peer.writes.by_ref().collect();
        let mut peer2 = Interleaving { inner: peer.inner, writes: rest.into_iter(), tracked: peer.tracked };
        while peer2.writes.len() > 0 { peer2.step(); }
        let mut at = sink.state().applied;
        loop {
            match rha_core::sync::replicate_once(&set, &mut peer2.inner, at, 1 << 20, &events) {
                Ok(Some((seq, _))) => at = seq,
                Ok(None) => break,
                Err(SyncError::Source(rha_core::source::SourceError::Gap { .. })) => {
                    let r = synchronise(&set, &mut peer2.inner, &options, &events).unwrap();
                    prop_assert!(r.used_change_log, "an overflow after the first sync uses the change log");
                    at = sink.state().applied;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_same(&master, &sink);
    }
}

#[test]
fn fast_resync_compares_only_what_the_change_log_marks() {
    let dir = tempfile::tempdir().unwrap();
    let master = vec![noisy_volume(64 * MIB, 5)];
    let set = tracked(dir.path(), &master, 256 << 10);
    let sink = MemSink::new(&[64 * MIB]).unwrap();
    let events = Events::new();
    sync_with(&set, &sink, SyncMethod::Block, &events);

    // Enough writes to overflow the journal: the change log takes over.
    let rx = events.subscribe();
    let v = set.volume(0).unwrap();
    for i in 0..100u64 {
        v.write_at(10 * MIB + i * 4096, &[i as u8 + 1; 4096])
            .unwrap();
    }
    v.write_at(40 * MIB, &[0xEE; 8192]).unwrap();
    assert!(
        set.needs_resync(),
        "a 256 KiB journal cannot hold 400 KiB of writes"
    );
    drop(rx);

    let report = sync_with(&set, &sink, SyncMethod::Block, &events);
    assert!(report.used_change_log, "{report:?}");
    assert!(
        report.bytes_scanned <= 3 * MIB,
        "only the dirty regions are compared: {report:?}"
    );
    assert_eq!(report.bytes_skipped, 64 * MIB - report.bytes_scanned);
    assert_same(&master, &sink);

    // Forcing full verification compares everything.
    let mut options = SyncOptions::new(SyncMethod::Block);
    options.force_full_verification = true;
    let mut peer = LocalPeer::new(&sink);
    let report = synchronise(&set, &mut peer, &options, &events).unwrap();
    assert!(!report.used_change_log);
    assert_eq!(report.bytes_scanned, 64 * MIB);
    assert_eq!(report.blocks_changed, 0);
}

#[test]
fn replication_after_sync_keeps_the_replica_equal_and_reports_lag() {
    let dir = tempfile::tempdir().unwrap();
    let master = vec![noisy_volume(4 * MIB, 9)];
    let set = tracked(dir.path(), &master, 64 << 20);
    let sink = MemSink::new(&[4 * MIB]).unwrap();
    let events = Events::new();
    let rx = events.subscribe();
    sync_with(&set, &sink, SyncMethod::Volume, &events);
    let v = set.volume(0).unwrap();
    for i in 0..50u64 {
        v.write_at(i * 12345, &[i as u8; 3000]).unwrap();
    }
    v.write_zeroes(MIB, 8192).unwrap();
    let mut peer = LocalPeer::new(&sink);
    let seq =
        rha_core::sync::replicate_until_idle(&set, &mut peer, 16 << 10, 1000, &events).unwrap();
    assert_eq!(seq, set.last_seq());
    assert_eq!(sink.state().applied, seq);
    assert_same(&master, &sink);
    let stats = events.stats().snapshot();
    assert_eq!(stats.lag_records, 0);
    assert!(stats.records_applied >= 51);
    assert!(rx
        .try_iter()
        .any(|e| matches!(e, Event::ReplicationLag { records: 0, .. })));
    assert_eq!(
        set.journal().bytes(),
        0,
        "acknowledged records are truncated"
    );
}

#[test]
fn unknown_dirty_ranges_mean_a_full_compare() {
    let master = vec![noisy_volume(2 * MIB, 4)];
    let source = StaticSource::new(master.clone());
    assert!(source.dirty_ranges(0).is_none());
    let sink = MemSink::new(&[2 * MIB]).unwrap();
    let events = Events::new();
    sync_with(&source, &sink, SyncMethod::Block, &events);
    let r = sync_with(&source, &sink, SyncMethod::Block, &events);
    assert!(!r.used_change_log);
    assert_eq!(r.bytes_scanned, 2 * MIB);
}
