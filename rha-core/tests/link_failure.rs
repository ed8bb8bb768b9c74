//! A replica link that fails mid-replication loses nothing: the journal keeps
//! every record the replica did not acknowledge, and the next attempt resumes
//! from the last acknowledged sequence. The failing peer is a mockall mock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::sync::Arc;

use rha_core::events::Events;
use rha_core::hash::{Hash, Node};
use rha_core::journal::{FsyncPolicy, JournalConfig, Record};
use rha_core::sink::{MemSink, ReplicaSink, ReplicaState};
use rha_core::source::{ChangeSource, TrackedSet};
use rha_core::sync::{
    replicate_once, synchronise, LocalPeer, SyncError, SyncMethod, SyncOptions, SyncPeer, Traffic,
};
use rha_core::volume::{MemVolume, Volume};
use rha_core::{Seq, VolumeId};

mockall::mock! {
    Peer {}
    impl SyncPeer for Peer {
        fn state(&mut self) -> Result<ReplicaState, SyncError>;
        fn begin_sync(&mut self, sizes: &[u64]) -> Result<(), SyncError>;
        fn hashes(&mut self, volume: VolumeId, nodes: &[Node]) -> Result<Vec<Hash>, SyncError>;
        fn write(&mut self, volume: VolumeId, offset: u64, data: &[u8]) -> Result<(), SyncError>;
        fn zero(&mut self, volume: VolumeId, offset: u64, len: u64) -> Result<(), SyncError>;
        fn end_sync(&mut self, base: Seq) -> Result<(), SyncError>;
        fn apply(&mut self, records: &[Record]) -> Result<Seq, SyncError>;
        fn mark_consistent(&mut self, seq: Seq) -> Result<(), SyncError>;
        fn traffic(&self) -> Traffic;
    }
}

#[test]
fn a_dropped_link_acknowledges_nothing_and_replication_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let master: Vec<Arc<dyn Volume>> = vec![Arc::new(MemVolume::new(1 << 20).unwrap())];
    let config = JournalConfig {
        fsync: FsyncPolicy::Always,
        ..Default::default()
    };
    let (set, _) = TrackedSet::open(dir.path(), config, master.clone(), Events::new()).unwrap();
    let sink = Arc::new(MemSink::new(&[1 << 20]).unwrap());
    let events = Events::new();
    synchronise(
        &set,
        &mut LocalPeer::new(&*sink),
        &SyncOptions::new(SyncMethod::Volume),
        &events,
    )
    .unwrap();

    let v = set.volume(0).unwrap();
    for i in 0..10u64 {
        v.write_at(i * 4096, &[i as u8 + 1; 4096]).unwrap();
    }

    // The link drops while a batch is in flight.
    let mut broken = MockPeer::new();
    broken.expect_traffic().return_const(Traffic::default());
    broken
        .expect_apply()
        .times(1)
        .withf(|records| records.first().map(|r| r.seq) == Some(1))
        .returning(|_| Err(SyncError::Link("connection reset by peer".into())));
    let err = replicate_once(&set, &mut broken, 0, 1 << 20, &events).unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(
        set.acknowledged(),
        0,
        "nothing is acknowledged when the replica did not confirm"
    );
    assert_eq!(
        set.changes_after(0, 1 << 20).unwrap().len(),
        10,
        "every record is kept"
    );

    // A replica that durably applies half a batch before the link drops
    // acknowledges that half, and only that half.
    let mut flaky = MockPeer::new();
    flaky.expect_traffic().return_const(Traffic::default());
    let replica = sink.clone();
    flaky
        .expect_apply()
        .times(1)
        .returning(move |records| Ok(replica.apply(&records[..5]).unwrap()));
    let (acked, _) = replicate_once(&set, &mut flaky, 0, 1 << 20, &events)
        .unwrap()
        .unwrap();
    assert_eq!((acked, set.acknowledged()), (5, 5));

    // Reconnected: replication resumes after the last acknowledged sequence.
    let mut peer = LocalPeer::new(&*sink);
    let mut at = set.acknowledged();
    while let Some((seq, _)) = replicate_once(&set, &mut peer, at, 1 << 20, &events).unwrap() {
        at = seq;
    }
    assert_eq!(at, 10);
    let mut got = vec![0u8; 40960];
    sink.volume(0).unwrap().read_at(0, &mut got).unwrap();
    let mut want = vec![0u8; 40960];
    master[0].read_at(0, &mut want).unwrap();
    assert!(
        got == want,
        "the replica holds every write after the reconnection"
    );
}
