//! Replication with several batches in flight ([`Pipeline`]), against a
//! peer that answers only when asked, as the network transport does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::collections::VecDeque;
use std::sync::Arc;

use rha_core::events::Events;
use rha_core::hash::Node;
use rha_core::journal::{FsyncPolicy, JournalConfig, Record};
use rha_core::sink::{MemSink, ReplicaSink, ReplicaState};
use rha_core::source::{ChangeSource, SourceError, TrackedSet};
use rha_core::sync::{
    synchronise, LocalPeer, PendingApply, Pipeline, Step, SyncError, SyncMethod, SyncOptions,
    SyncPeer, Traffic,
};
use rha_core::volume::{MemVolume, Volume};
use rha_core::{Seq, VolumeId};

const MIB: u64 = 1 << 20;

/// A peer that queues the batches sent to it and applies them, in the
/// order sent, only when an answer is waited for; it records how many were
/// in flight at most and what the source had acknowledged at each send.
struct Deferred<'a> {
    inner: LocalPeer<'a>,
    source: &'a dyn ChangeSource,
    queue: VecDeque<(u64, Vec<Record>)>,
    next_id: u64,
    max_in_flight: usize,
    /// (acknowledged by the source, last seq answered) at each send.
    at_send: Vec<(Seq, Seq)>,
    answered: Seq,
}

impl<'a> Deferred<'a> {
    fn new(sink: &'a dyn ReplicaSink, source: &'a dyn ChangeSource) -> Self {
        Deferred {
            inner: LocalPeer::new(sink),
            source,
            queue: VecDeque::new(),
            next_id: 1,
            max_in_flight: 0,
            at_send: Vec::new(),
            answered: 0,
        }
    }
}

impl SyncPeer for Deferred<'_> {
    fn state(&mut self) -> Result<ReplicaState, SyncError> {
        self.inner.state()
    }
    fn begin_sync(&mut self, sizes: &[u64]) -> Result<(), SyncError> {
        self.inner.begin_sync(sizes)
    }
    fn hashes(&mut self, volume: VolumeId, nodes: &[Node]) -> Result<Vec<[u8; 16]>, SyncError> {
        self.inner.hashes(volume, nodes)
    }
    fn write(&mut self, volume: VolumeId, offset: u64, data: &[u8]) -> Result<(), SyncError> {
        self.inner.write(volume, offset, data)
    }
    fn zero(&mut self, volume: VolumeId, offset: u64, len: u64) -> Result<(), SyncError> {
        self.inner.zero(volume, offset, len)
    }
    fn end_sync(&mut self, base: Seq) -> Result<(), SyncError> {
        self.inner.end_sync(base)
    }
    fn apply(&mut self, records: &[Record]) -> Result<Seq, SyncError> {
        let p = self.send_apply(records)?;
        self.wait_applied(p)
    }
    fn send_apply(&mut self, records: &[Record]) -> Result<PendingApply, SyncError> {
        let id = self.next_id;
        self.next_id += 1;
        self.at_send
            .push((self.source.acknowledged(), self.answered));
        self.queue.push_back((id, records.to_vec()));
        self.max_in_flight = self.max_in_flight.max(self.queue.len());
        Ok(PendingApply::InFlight(id))
    }
    fn wait_applied(&mut self, pending: PendingApply) -> Result<Seq, SyncError> {
        let PendingApply::InFlight(want) = pending else {
            panic!("{pending:?}")
        };
        loop {
            let (id, batch) = self.queue.pop_front().expect("an answer nobody asked for");
            let seq = self.inner.apply(&batch)?;
            if id == want {
                self.answered = seq;
                return Ok(seq);
            }
        }
    }
    fn mark_consistent(&mut self, seq: Seq) -> Result<(), SyncError> {
        self.inner.mark_consistent(seq)
    }
    fn traffic(&self) -> Traffic {
        self.inner.traffic()
    }
}

/// A tracked 8 MiB volume whose journal holds up to `max_bytes`, mostly in memory.
fn tracked(dir: &std::path::Path, max_bytes: u64) -> (TrackedSet, Arc<dyn Volume>) {
    let volume: Arc<dyn Volume> = Arc::new(MemVolume::new(8 * MIB).unwrap());
    let config = JournalConfig {
        max_bytes,
        fsync: FsyncPolicy::Never,
        memory_bytes: 1 << 20,
        segment_bytes: 256 << 10,
        ..Default::default()
    };
    let set = TrackedSet::open(dir, config, vec![volume.clone()], Events::new())
        .unwrap()
        .0;
    (set, volume)
}

/// [`tracked`], synchronised into a new in-memory replica: the set, its
/// volume, the replica, the events and the seq the replica is consistent at.
fn synced(
    dir: &std::path::Path,
    max_bytes: u64,
) -> (TrackedSet, Arc<dyn Volume>, MemSink, Events, Seq) {
    let (set, master) = tracked(dir, max_bytes);
    let sink = MemSink::new(&[8 * MIB]).unwrap();
    let events = Events::new();
    let base = synchronise(
        &set,
        &mut LocalPeer::new(&sink),
        &SyncOptions::new(SyncMethod::Volume),
        &events,
    )
    .unwrap()
    .consistent_seq;
    (set, master, sink, events, base)
}

fn same(master: &dyn Volume, sink: &dyn ReplicaSink) -> bool {
    let mut a = vec![0u8; master.size() as usize];
    let mut b = a.clone();
    master.read_at(0, &mut a).unwrap();
    sink.volume(0).unwrap().read_at(0, &mut b).unwrap();
    a == b
}

#[test]
fn batches_stay_in_flight_up_to_the_depth_and_only_answered_ones_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (set, master, sink, events, base) = synced(dir.path(), 64 * MIB);
    let v = set.volume(0).unwrap();
    for i in 0..40u64 {
        v.write_at(i * 100_000, &vec![i as u8 + 1; 64 << 10])
            .unwrap();
    }
    let mut peer = Deferred::new(&sink, &set);
    let mut pipeline = Pipeline::new(base, 3);
    let mut steps = Vec::new();
    loop {
        match pipeline.step(&set, &mut peer, 128 << 10, &events).unwrap() {
            Step::Idle => break,
            s => steps.push(s),
        }
        assert!(pipeline.in_flight() <= 3);
    }
    // Three sends before the first answer, then one send per answer.
    assert!(
        matches!(
            steps[..4],
            [
                Step::Sent(_),
                Step::Sent(_),
                Step::Sent(_),
                Step::Applied(_)
            ]
        ),
        "{steps:?}"
    );
    assert_eq!(peer.max_in_flight, 3);
    // The source never learnt of a batch before the replica answered it.
    for (acked, answered) in &peer.at_send {
        assert!(acked <= answered.max(&base), "{:?}", peer.at_send);
    }
    assert_eq!(pipeline.applied(), set.last_seq());
    assert_eq!(set.acknowledged(), set.last_seq());
    assert_eq!(sink.state().applied, set.last_seq());
    assert!(same(&*master, &sink));
    assert_eq!(events.stats().snapshot().records_applied, 40);
}

#[test]
fn drain_takes_every_answer_and_sends_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (set, _master, sink, events, base) = synced(dir.path(), 64 * MIB);
    let v = set.volume(0).unwrap();
    for i in 0..10u64 {
        v.write_at(i * 65536, &[7; 65536]).unwrap();
    }
    let mut peer = Deferred::new(&sink, &set);
    let mut pipeline = Pipeline::new(base, 4);
    for _ in 0..2 {
        assert!(matches!(
            pipeline.step(&set, &mut peer, 65536, &events).unwrap(),
            Step::Sent(_)
        ));
    }
    let at = pipeline.drain(&set, &mut peer, &events).unwrap();
    assert_eq!(pipeline.in_flight(), 0);
    assert_eq!(at, base + 2);
    assert_eq!(set.acknowledged(), base + 2);
    // The rest goes on after the drain.
    while pipeline.step(&set, &mut peer, 65536, &events).unwrap() != Step::Idle {}
    assert_eq!(pipeline.applied(), base + 10);
}

#[test]
fn a_gap_is_reported_only_after_the_batches_in_flight_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (set, _master, sink, events, base) = synced(dir.path(), 2 * MIB);
    let v = set.volume(0).unwrap();
    for i in 0..4u64 {
        v.write_at(i * 65536, &[1; 65536]).unwrap();
    }
    let mut peer = Deferred::new(&sink, &set);
    let mut pipeline = Pipeline::new(base, 4);
    pipeline.step(&set, &mut peer, 65536, &events).unwrap();
    pipeline.step(&set, &mut peer, 65536, &events).unwrap();
    assert_eq!(pipeline.in_flight(), 2);
    // The journal overflows: the records after those sent are gone.
    for i in 0..40u64 {
        v.write_at(i * 65536, &[2; 65536]).unwrap();
    }
    assert!(set.needs_resync());
    let mut answered = Vec::new();
    let err = loop {
        match pipeline.step(&set, &mut peer, 65536, &events) {
            Ok(s) => answered.push(s),
            Err(e) => break e,
        }
    };
    assert_eq!(answered, [Step::Applied(base + 1), Step::Applied(base + 2)]);
    assert!(
        matches!(err, SyncError::Source(SourceError::Gap { .. })),
        "{err}"
    );
    assert_eq!(pipeline.in_flight(), 0);
}
