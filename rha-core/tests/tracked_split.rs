//! The tracked volume's write path: a write larger than one journal
//! record's limit becomes several records, in order, that together equal
//! the write; and a write journalled but cut off by a crash before it
//! reached the volume never reaches the replica either.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rha_core::events::Events;
use rha_core::journal::{JournalConfig, Payload, Recovery};
use rha_core::sink::{MemSink, ReplicaSink};
use rha_core::source::{ChangeSource, TrackedSet, MAX_WRITE_RECORD};
use rha_core::sync::{replicate_until_idle, synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha_core::volume::{MemVolume, Volume};

/// The tracked set of one disk, its journal in `dir`.
fn open(dir: &std::path::Path, disk: &Arc<dyn Volume>) -> (TrackedSet, Recovery) {
    TrackedSet::open(
        dir,
        JournalConfig::default(),
        vec![disk.clone()],
        Events::new(),
    )
    .unwrap()
}

/// Replicates every record the set holds to `sink`.
fn catch_up(set: &TrackedSet, sink: &MemSink, events: &Events) {
    replicate_until_idle(set, &mut LocalPeer::new(sink), 4 << 20, usize::MAX, events).unwrap();
}

fn read_all(v: &dyn Volume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size() as usize];
    v.read_at(0, &mut buf).unwrap();
    buf
}

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

    catch_up(&set, &sink, &events);
    let mut back = vec![0u8; len];
    sink.volume(0).unwrap().read_at(4096, &mut back).unwrap();
    assert!(back == data);
}

/// A crash between journalling a write and writing it to the volume leaves
/// a record the master's disk never got. After the restart the dirty
/// regions are resynchronised from the volume instead of replaying the
/// records, so the replica equals the master's disk, not the journal.
#[test]
fn a_record_whose_write_never_reached_the_volume_is_not_replicated() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8u64 << 20;
    let disk: Arc<dyn Volume> = Arc::new(MemVolume::new(size).unwrap());
    let sink = MemSink::new(&[size]).unwrap();
    let events = Events::new();
    let options = SyncOptions::new(SyncMethod::Block);
    {
        let (set, recovery) = open(dir.path(), &disk);
        assert!(!recovery.needs_resync, "a new journal: {recovery:?}");
        synchronise(&set, &mut LocalPeer::new(&sink), &options, &events).unwrap();
        let v = set.volume(0).unwrap();
        v.write_at(1 << 20, &[0x11; 8192]).unwrap();
        catch_up(&set, &sink, &events);
        // Then writes that reach journal and disk but are not replicated
        // yet, and one the process journals and dies before writing.
        v.write_at(2 << 20, &[0x22; 4096]).unwrap();
        set.journal().append(0, 5 << 20, &[0x55; 4096]).unwrap();
        // Dropped without close: an unclean shutdown.
    }
    let (set, recovery) = open(dir.path(), &disk);
    assert!(!recovery.clean_shutdown);
    assert!(recovery.needs_resync, "{recovery:?}");
    assert!(set.needs_resync());
    assert!(
        recovery
            .warnings
            .iter()
            .any(|w| w.contains("resynchronised")),
        "{:?}",
        recovery.warnings
    );
    let report = synchronise(&set, &mut LocalPeer::new(&sink), &options, &events).unwrap();
    assert!(report.consistent && report.used_change_log, "{report:?}");
    assert!(!set.needs_resync(), "the resync clears the flag");
    catch_up(&set, &sink, &events);
    let master = read_all(disk.as_ref());
    assert_eq!(
        master[(5 << 20) as usize],
        0,
        "the master's disk never got the cut-off write"
    );
    assert_eq!(master[(2 << 20) as usize], 0x22);
    assert!(
        read_all(sink.volume(0).unwrap().as_ref()) == master,
        "the replica equals the master's disk"
    );
}

/// A set closed with `close` reopens clean: nothing to resync. Closing while
/// one of its volumes is still alive is refused.
#[test]
fn a_closed_set_reopens_clean_and_close_waits_for_its_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Arc<dyn Volume> = Arc::new(MemVolume::new(4 << 20).unwrap());
    let (set, _) = open(dir.path(), &disk);
    let v = set.volume(0).unwrap();
    v.write_at(0, &[9; 4096]).unwrap();
    let e = set.close().unwrap_err();
    assert!(e.to_string().contains("still in use"), "{e}");
    drop(v);
    // The refused close dropped the set unclosed: the reopen resyncs.
    let (set, recovery) = open(dir.path(), &disk);
    assert!(
        !recovery.clean_shutdown && recovery.needs_resync,
        "{recovery:?}"
    );
    set.close().unwrap();
    let (_set, recovery) = open(dir.path(), &disk);
    assert!(recovery.clean_shutdown, "{recovery:?}");
    assert_eq!(recovery.records, 1, "the unreplicated write is kept");
}
