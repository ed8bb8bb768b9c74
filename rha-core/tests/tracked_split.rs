//! A write larger than one journal record's limit becomes several records,
//! in order, that together equal the write; the replica gets it whole.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rha_core::events::Events;
use rha_core::journal::{JournalConfig, Payload};
use rha_core::sink::{MemSink, ReplicaSink};
use rha_core::source::{ChangeSource, TrackedSet, MAX_WRITE_RECORD};
use rha_core::sync::{replicate_until_idle, synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha_core::volume::{MemVolume, Volume};

#[test]
fn a_large_write_is_split_into_bounded_records() {
    let dir = tempfile::tempdir().unwrap();
    let size = 32u64 << 20;
    let master: Vec<Arc<dyn Volume>> = vec![Arc::new(MemVolume::new(size).unwrap())];
    let (set, _) =
        TrackedSet::open(dir.path(), JournalConfig::default(), master, Events::new()).unwrap();
    let sink = MemSink::new(&[size]).unwrap();
    let events = Events::new();
    synchronise(
        &set,
        &mut LocalPeer::new(&sink),
        &SyncOptions::new(SyncMethod::Volume),
        &events,
    )
    .unwrap();
    let start = set.last_seq();

    let len = 2 * MAX_WRITE_RECORD + 12345;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let v = set.volume(0).unwrap();
    v.write_at(4096, &data).unwrap();

    let records = set.changes_after(start, usize::MAX).unwrap();
    assert_eq!(
        records.len(),
        3,
        "{} bytes in records of at most {MAX_WRITE_RECORD}",
        len
    );
    let mut at = 4096u64;
    let mut joined = Vec::new();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, start + 1 + i as u64);
        assert_eq!(r.offset, at);
        let Payload::Data(d) = &r.payload else {
            panic!("not data")
        };
        assert!(d.len() <= MAX_WRITE_RECORD);
        at += d.len() as u64;
        joined.extend_from_slice(d);
    }
    assert!(joined == data);

    replicate_until_idle(
        &set,
        &mut LocalPeer::new(&sink),
        4 << 20,
        usize::MAX,
        &events,
    )
    .unwrap();
    let mut back = vec![0u8; len];
    sink.volume(0).unwrap().read_at(4096, &mut back).unwrap();
    assert!(back == data);
}
