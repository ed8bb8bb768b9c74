//! Unit tests of the journal as a whole.

use super::*;
use proptest::prelude::*;

const VOL: u64 = 1 << 20;

fn cfg() -> JournalConfig {
    JournalConfig {
        segment_bytes: 1024,
        max_bytes: 1 << 20,
        fsync: FsyncPolicy::Always,
        region_bytes: 4096,
        // Rotate at every acknowledgement that reaches the boundary.
        changelog_rotation: Duration::ZERO,
        memory_bytes: 0,
    }
}

fn data(seq_hint: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq_hint as usize * 31 + i) as u8)
        .collect()
}

fn open(dir: &Path, config: JournalConfig) -> (Journal, Recovery) {
    Journal::open(dir, config, &[VOL, VOL / 2]).unwrap()
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn logged(a: Appended) -> Seq {
    match a {
        Appended::Logged(s) => s,
        Appended::Overflowed => panic!("unexpected overflow"),
    }
}

#[test]
fn round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (j, rec) = open(dir.path(), cfg());
    assert!(rec.clean_shutdown && !rec.needs_resync && rec.warnings.is_empty());
    assert_eq!(j.last_seq(), 0);
    assert_eq!(j.read_after(0, 100).unwrap(), vec![]);
    assert_eq!(logged(j.append(0, 0, &data(1, 100)).unwrap()), 1);
    assert_eq!(logged(j.append_zero(1, 4096, 8192).unwrap()), 2);
    assert_eq!(logged(j.append(1, 100, &[]).unwrap()), 3);
    let all = j.read_after(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].payload, Payload::Data(data(1, 100).into()));
    assert_eq!(all[1].payload, Payload::Zero(8192));
    assert_eq!((all[1].volume, all[1].offset), (1, 4096));
    assert!(all[2].is_empty());
    assert_eq!(j.read_after(1, usize::MAX).unwrap(), all[1..].to_vec());
    assert_eq!(j.read_after(3, usize::MAX).unwrap(), vec![]);
    j.close().unwrap();
    let (j, rec) = open(dir.path(), cfg());
    assert!(rec.clean_shutdown && rec.warnings.is_empty(), "{rec:?}");
    assert_eq!(rec.records, 3);
    assert_eq!(j.read_after(0, usize::MAX).unwrap(), all);
    assert_eq!(logged(j.append(0, 8, b"x").unwrap()), 4);
    drop(j); // unclean, but Always: no resync
    let (j, rec) = open(dir.path(), cfg());
    assert!(!rec.clean_shutdown && !rec.needs_resync);
    assert_eq!(j.last_seq(), 4);
}

#[test]
fn bad_writes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), cfg());
    assert!(matches!(
        j.append(2, 0, b"x"),
        Err(JournalError::UnknownVolume { volume: 2, .. })
    ));
    assert!(matches!(
        j.append(1, VOL / 2 - 1, b"xy"),
        Err(JournalError::OutOfRange { .. })
    ));
    assert!(matches!(
        j.append_zero(0, 1, u64::MAX),
        Err(JournalError::OutOfRange { .. })
    ));
    assert!(matches!(
        j.acknowledge(1),
        Err(JournalError::AckBeyondEnd { upto: 1, last: 0 })
    ));
    assert!(matches!(
        j.append(0, 0, &vec![0; MAX_DATA_BYTES + 1]),
        Err(JournalError::TooLarge { .. })
    ));
    assert_eq!(j.last_seq(), 0);
    assert!(matches!(
        Journal::open(dir.path(), cfg(), &[VOL, VOL / 2]),
        Err(JournalError::Locked { .. })
    ));
    assert!(format!("{j:?}").contains("last_seq"));
}

#[test]
fn steady_state_writes_do_not_touch_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), cfg());
    for i in 0..100u64 {
        j.append(0, (i * 40) % 4000, b"same region").unwrap();
    }
    assert_eq!(j.lock().changelog.writes, 1);
    j.append(0, 4096, b"next region").unwrap();
    j.append_zero(0, 0, 3 * 4096).unwrap(); // only region 2 is new
    assert_eq!(j.lock().changelog.writes, 3);
    assert_eq!(j.dirty_ranges(0), vec![0..3 * 4096]);
}

#[test]
fn marks_stay_hot_between_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        changelog_rotation: Duration::from_secs(3600),
        max_bytes: 1 << 30,
        segment_bytes: 1 << 20,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config);
    // Random writes over a working set of 16 regions, acknowledged as they go.
    let mut x = 7u64;
    for _ in 0..400 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let s = logged(
            j.append(0, (x >> 33) % (16 * 4096 - 100), &[1; 100])
                .unwrap(),
        );
        j.acknowledge(s).unwrap();
    }
    // Each region was marked once (one write straddles two at most): no
    // rotation within the window, so no fresh marks after warm-up.
    let writes = j.lock().changelog.writes;
    assert!(writes <= 16, "{writes} change-log writes for 16 regions");
    assert_eq!(j.lock().rotations, 0);
    assert_eq!(j.dirty_ranges(0), vec![0..16 * 4096]);
    assert!(j.marks.lock().syncs <= writes);
}

#[test]
fn rotation_waits_for_the_interval_then_forgets_cold_regions() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        changelog_rotation: Duration::from_millis(50),
        ..cfg()
    };
    let (j, _) = open(dir.path(), config);
    let s = logged(j.append(0, 0, b"cold").unwrap());
    j.acknowledge(s).unwrap(); // boundary 0 reached, but the window is not over
    assert_eq!(j.lock().rotations, 0);
    std::thread::sleep(Duration::from_millis(60));
    let s = logged(j.append(0, 4096, b"hot").unwrap());
    j.acknowledge(s).unwrap(); // rotates: A = {0, 1}, B = {0, 1} (both written in the window)
    assert_eq!(j.lock().rotations, 1);
    std::thread::sleep(Duration::from_millis(60));
    let s = logged(j.append(0, 4096, b"hot again").unwrap());
    assert_eq!(j.lock().changelog.writes, 2, "a hot region costs no I/O");
    j.acknowledge(s).unwrap(); // A = {0, 1}, B = {1}
    std::thread::sleep(Duration::from_millis(60));
    j.append(0, 4096, b"hot still").unwrap();
    j.acknowledge(j.last_seq()).unwrap(); // A = {1}, B = {1}
    assert_eq!(j.dirty_ranges(0), vec![4096..8192], "region 0 went cold");
    assert_eq!(j.lock().changelog.writes, 2);
    // Everything acknowledged and nothing written: the marks age out.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(60));
        j.acknowledge(j.last_seq()).unwrap();
    }
    assert_eq!(j.dirty_ranges(0), vec![]);
}

#[test]
fn concurrent_writers_share_change_log_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        max_bytes: 1 << 30,
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Never,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config);
    let j = Arc::new(j);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..32u64 {
                    // Every write marks a region of its own.
                    let region = t * 32 + i;
                    logged(j.append(0, region * 4096, &[t as u8; 10]).unwrap());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let writes = j.lock().changelog.writes;
    let syncs = j.marks.lock().syncs;
    assert_eq!(writes, 128);
    assert!(syncs <= writes, "{syncs} syncs for {writes} marks");
    assert_eq!(j.dirty_ranges(0), vec![0..128 * 4096]);
    // The marks are on disk.
    drop(j);
    let (j, _) = open(dir.path(), cfg());
    assert_eq!(j.dirty_ranges(0), vec![0..128 * 4096]);
}

#[test]
fn concurrent_acknowledgements_leave_the_newest_state_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        max_bytes: 1 << 30,
        segment_bytes: 1 << 20,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config.clone());
    for i in 0..64u64 {
        j.append(0, i * 100, &data(i, 100)).unwrap();
    }
    let j = Arc::new(j);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..16u64 {
                    j.acknowledge(1 + (i * 4 + t * 7) % 64).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    j.acknowledge(64).unwrap();
    assert_eq!(
        state::read_state(dir.path()).unwrap().unwrap().acknowledged,
        64
    );
    drop(j);
    let (j, _) = open(dir.path(), config);
    assert_eq!(j.acknowledged(), 64);
    assert!(seg_files(dir.path()).is_empty());
}

#[test]
fn an_existing_change_log_keeps_its_region_size() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), cfg());
    j.append(0, 4096, b"x").unwrap();
    j.close().unwrap();
    let config = JournalConfig {
        region_bytes: 1 << 20,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config);
    assert_eq!(j.dirty_ranges(0), vec![4096..8192]);
}

#[test]
fn volume_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), cfg()).0.close().unwrap();
    let e = Journal::open(dir.path(), cfg(), &[VOL]).unwrap_err();
    assert!(matches!(e, JournalError::VolumeMismatch { .. }), "{e}");
    let e = Journal::open(dir.path(), cfg(), &[VOL, VOL]).unwrap_err();
    assert!(e.to_string().contains("sizes"), "{e}");
}

#[test]
fn segments_rotate_and_are_deleted_on_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), cfg());
    for i in 0..40u64 {
        logged(j.append(0, i * 100, &data(i, 100)).unwrap());
    }
    let segs = seg_files(dir.path());
    assert!(segs.len() >= 5, "{segs:?}");
    for s in &segs {
        // One record of 144 bytes past 1024 at most... never past segment_bytes.
        assert!(fs::metadata(s).unwrap().len() <= 1024);
    }
    let total = j.bytes();
    assert_eq!(total, 40 * (100 + record::RECORD_HEADER_BYTES as u64));
    j.acknowledge(20).unwrap();
    assert_eq!(j.acknowledged(), 20);
    assert_eq!(j.bytes(), 20 * 144);
    let left = seg_files(dir.path());
    assert!(left.len() < segs.len());
    // Partially acknowledged records can still be read; deleted ones give a Gap.
    let first_kept =
        segment::parse_segment_name(left[0].file_name().unwrap().to_str().unwrap()).unwrap();
    assert!(first_kept <= 21);
    let r = j.read_after(20, usize::MAX).unwrap();
    assert_eq!(r.first().unwrap().seq, 21);
    assert_eq!(r.len(), 20);
    if first_kept > 1 {
        assert!(matches!(
            j.read_after(0, 10),
            Err(JournalError::Gap { wanted: 1, first }) if first == first_kept
        ));
    }
    j.acknowledge(10).unwrap(); // going back is a no-op
    assert_eq!(j.acknowledged(), 20);
    j.acknowledge(40).unwrap();
    assert_eq!(j.bytes(), 0);
    // The active segment stays (it takes the next records) although it
    // holds only acknowledged ones.
    let left = seg_files(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    let active =
        segment::parse_segment_name(left[0].file_name().unwrap().to_str().unwrap()).unwrap();
    assert!(matches!(
        j.read_after(5, 10),
        Err(JournalError::Gap {
            wanted: 6,
            first
        }) if first == active
    ));
    assert_eq!(j.read_after(40, 10).unwrap(), vec![]);
    j.close().unwrap();
    // Seqs stay monotonic although every segment is gone (the open deletes
    // the acknowledged one).
    let (j, rec) = open(dir.path(), cfg());
    assert!(seg_files(dir.path()).is_empty());
    assert_eq!(rec.records, 0);
    assert_eq!(j.last_seq(), 40);
    assert_eq!(j.acknowledged(), 40);
    assert_eq!(logged(j.append(0, 0, b"z").unwrap()), 41);
}

#[test]
fn read_after_is_bounded_by_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), cfg());
    for i in 0..10u64 {
        j.append(0, 0, &data(i, 100)).unwrap();
    }
    j.append_zero(0, 0, 1 << 19).unwrap();
    j.append(0, 0, &data(12, 100)).unwrap();
    assert_eq!(j.read_after(0, 500).unwrap().len(), 5);
    assert_eq!(j.read_after(0, 450).unwrap().len(), 4);
    assert_eq!(j.read_after(0, 1).unwrap().len(), 1); // at least one
    assert_eq!(j.read_after(0, 0).unwrap().len(), 1);
    let r = j.read_after(3, 300).unwrap();
    assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
    // A zero record carries no payload.
    let r = j.read_after(10, 100).unwrap();
    assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![11, 12]);
}

#[test]
fn overflow_sets_needs_resync_and_change_log_covers_dropped_writes() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        max_bytes: 2000,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config.clone());
    let mut writes: Vec<(u64, u64)> = Vec::new();
    let mut overflowed = 0;
    for i in 0..50u64 {
        let off = (i * 7919 * 97) % (VOL - 300);
        writes.push((off, 300));
        match j.append(0, off, &data(i, 300)).unwrap() {
            Appended::Logged(_) => {}
            Appended::Overflowed => overflowed += 1,
        }
        assert!(j.bytes() <= 2000, "bytes {} > bound", j.bytes());
    }
    assert!(overflowed > 0);
    assert!(j.needs_resync());
    assert!(matches!(
        j.read_after(0, 100),
        Err(JournalError::Gap { .. })
    ));
    let dirty = j.dirty_ranges(0);
    for (off, len) in &writes {
        assert!(
            dirty.iter().any(|r| r.start <= *off && off + len <= r.end),
            "write {off}+{len} not covered by {dirty:?}"
        );
    }
    // Acknowledging does not rotate the change log while a resync is pending.
    j.acknowledge(j.last_seq()).unwrap();
    assert_eq!(j.dirty_ranges(0), dirty);
    // needs_resync survives a restart.
    j.close().unwrap();
    let (j, rec) = open(dir.path(), config);
    assert!(rec.needs_resync && j.needs_resync());
    assert_eq!(j.dirty_ranges(0), dirty);
    let base = j.resync_started().unwrap();
    let s = logged(j.append(0, 0, b"during resync").unwrap());
    assert_eq!(s, base + 1);
    j.resync_completed(base).unwrap();
    assert!(!j.needs_resync());
    assert_eq!(j.acknowledged(), base);
    // The write made during the resync is still covered and still readable.
    assert!(j.dirty_ranges(0).iter().any(|r| r.start == 0));
    assert_eq!(j.read_after(base, 100).unwrap()[0].seq, s);
    j.acknowledge(s).unwrap(); // reaches the boundary: rotates, B was empty
    j.acknowledge(s).unwrap(); // A := B (empty) again
    assert_eq!(j.dirty_ranges(0), vec![]);
}

#[test]
fn overflow_during_resync_keeps_needs_resync() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        max_bytes: 1000,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config);
    while j.append(0, 0, &[1; 400]).unwrap() != Appended::Overflowed {}
    let base = j.resync_started().unwrap();
    while j.append(0, 8192, &[1; 400]).unwrap() != Appended::Overflowed {}
    j.resync_completed(base).unwrap();
    assert!(j.needs_resync());
    assert!(j
        .dirty_ranges(0)
        .iter()
        .any(|r| r.start <= 8192 && r.end > 8192));
}

#[test]
fn resync_after_rotation_does_not_drop_unacknowledged_marks() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), cfg());
    let s1 = logged(j.append(0, 0, b"a").unwrap());
    let base = j.resync_started().unwrap();
    let s2 = logged(j.append(0, 65536, b"b").unwrap());
    j.acknowledge(s1).unwrap(); // boundary 0 reached: rotates
    j.resync_completed(base).unwrap(); // must not rotate again
    assert!(j.acknowledged() < s2);
    assert!(j.dirty_ranges(0).iter().any(|r| r.contains(&65536)));
}

#[test]
fn torn_tail_at_every_offset_drops_only_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes: 1 << 20,
        ..cfg()
    };
    {
        let (j, _) = open(dir.path(), config.clone());
        for i in 0..3u64 {
            j.append(0, i * 10, &data(i, 50)).unwrap();
        }
        drop(j);
    }
    let seg = seg_files(dir.path()).pop().unwrap();
    let full = fs::read(&seg).unwrap();
    let last_start = full.len() - (50 + record::RECORD_HEADER_BYTES);
    let backup = tempfile::tempdir().unwrap();
    for f in ["state", "changelog"] {
        fs::copy(dir.path().join(f), backup.path().join(f)).unwrap();
    }
    for cut in last_start..full.len() {
        fs::write(&seg, &full[..cut]).unwrap();
        for f in ["state", "changelog"] {
            fs::copy(backup.path().join(f), dir.path().join(f)).unwrap();
        }
        let (j, rec) = open(dir.path(), config.clone());
        assert_eq!(rec.records, 2, "cut at {cut}");
        if cut > last_start {
            assert_eq!(rec.dropped_tail_bytes, (cut - last_start) as u64);
            assert_eq!(rec.warnings.len(), 1, "cut at {cut}: {:?}", rec.warnings);
        }
        assert!(!rec.needs_resync, "cut at {cut}");
        let r = j.read_after(0, usize::MAX).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].payload, Payload::Data(data(1, 50).into()));
        assert_eq!(fs::metadata(&seg).unwrap().len(), last_start as u64);
        drop(j);
    }
}

#[test]
fn flipped_byte_in_the_last_record_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes: 1 << 20,
        ..cfg()
    };
    {
        let (j, _) = open(dir.path(), config.clone());
        for i in 0..3u64 {
            j.append(0, i * 10, &data(i, 20)).unwrap();
        }
        j.close().unwrap();
    }
    let seg = seg_files(dir.path()).pop().unwrap();
    let full = fs::read(&seg).unwrap();
    let last_start = full.len() - (20 + record::RECORD_HEADER_BYTES);
    for at in last_start..full.len() {
        let mut bad = full.clone();
        bad[at] ^= 0x40;
        fs::write(&seg, &bad).unwrap();
        let (j, rec) = open(dir.path(), config.clone());
        let r = j.read_after(0, usize::MAX).unwrap();
        assert_eq!(r.len(), 2, "flip at {at}");
        assert_eq!(r[0].payload, Payload::Data(data(0, 20).into()));
        assert!(!rec.warnings.is_empty(), "flip at {at}");
        assert!(!rec.needs_resync, "flip at {at}: {:?}", rec.warnings);
        j.close().unwrap();
        assert_eq!(
            logged(
                open(dir.path(), config.clone())
                    .0
                    .append(0, 0, b"")
                    .unwrap()
            ),
            4
        );
        // Restore the three-record journal for the next round.
        fs::write(&seg, &full).unwrap();
        let st = state::State {
            acknowledged: 0,
            seq_floor: 3,
            needs_resync: false,
            clean_shutdown: true,
            fsync_always: true,
            memory_records: false,
            boot_id: state::boot_id(),
        };
        state::write_state(dir.path(), &st).unwrap();
        for p in seg_files(dir.path()) {
            if p != seg {
                fs::remove_file(p).unwrap();
            }
        }
    }
}

#[test]
fn truncated_segment_header_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes: 200,
        ..cfg()
    };
    {
        let (j, _) = open(dir.path(), config.clone());
        for i in 0..4u64 {
            j.append(0, 0, &data(i, 100)).unwrap();
        }
    }
    let segs = seg_files(dir.path());
    assert_eq!(segs.len(), 4);
    let last = segs.last().unwrap();
    let f = OpenOptions::new().write(true).open(last).unwrap();
    f.set_len(10).unwrap();
    drop(f);
    let (j, rec) = open(dir.path(), config);
    assert!(!rec.needs_resync);
    assert_eq!(rec.records, 3);
    assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
    assert!(!last.exists());
    assert_eq!(j.read_after(0, usize::MAX).unwrap().len(), 3);
    // A dropped tail's seq is handed out again: in a real crash its append
    // never returned (or, without `Always`, a reboot forces a resync anyway).
    assert_eq!(logged(j.append(0, 0, b"next").unwrap()), 4);
}

#[test]
fn corruption_mid_journal_sets_needs_resync() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes: 400,
        ..cfg()
    };
    {
        let (j, _) = open(dir.path(), config.clone());
        for i in 0..10u64 {
            j.append(0, i * 4096, &data(i, 100)).unwrap();
        }
        j.close().unwrap();
    }
    let segs = seg_files(dir.path());
    assert!(segs.len() >= 3);
    // Damage a record of the second segment.
    let mut b = fs::read(&segs[1]).unwrap();
    b[SEGMENT_HEADER_BYTES as usize + 60] ^= 1;
    fs::write(&segs[1], &b).unwrap();
    let (j, rec) = open(dir.path(), config.clone());
    assert!(rec.needs_resync && j.needs_resync());
    assert!(!rec.warnings.is_empty());
    let kept = j.read_after(0, usize::MAX).unwrap();
    assert!(kept.len() < 10);
    assert_eq!(j.last_seq(), 10, "seqs must not be reused");
    assert!(matches!(
        j.read_after(kept.len() as u64, 10),
        Err(JournalError::Gap { .. })
    ));
    let dirty = j.dirty_ranges(0);
    for i in 0..10u64 {
        assert!(dirty.iter().any(|r| r.contains(&(i * 4096))));
    }
    assert_eq!(logged(j.append(0, 0, b"after").unwrap()), 11);
    drop(j);
    // Also: a corrupt record in the last segment followed by a good one.
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes: 1 << 20,
        ..cfg()
    };
    {
        let (j, _) = open(dir.path(), config.clone());
        for i in 0..3u64 {
            j.append(0, 0, &data(i, 10)).unwrap();
        }
    }
    let seg = seg_files(dir.path()).pop().unwrap();
    let mut b = fs::read(&seg).unwrap();
    b[SEGMENT_HEADER_BYTES as usize + 60] ^= 1; // inside record 2
    fs::write(&seg, &b).unwrap();
    let (j, rec) = open(dir.path(), config);
    assert!(rec.needs_resync);
    assert_eq!(j.last_seq(), 3);
    assert_eq!(j.read_after(0, usize::MAX).unwrap().len(), 1);
}

#[test]
fn missing_segment_sets_needs_resync() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes: 200,
        ..cfg()
    };
    {
        let (j, _) = open(dir.path(), config.clone());
        for i in 0..4u64 {
            j.append(0, 0, &data(i, 100)).unwrap();
        }
    }
    let segs = seg_files(dir.path());
    fs::remove_file(&segs[1]).unwrap();
    let (j, rec) = open(dir.path(), config);
    assert!(rec.needs_resync);
    assert_eq!(j.read_after(0, usize::MAX).unwrap().len(), 1);
    assert_eq!(j.last_seq(), 4);
}

#[test]
fn unclean_shutdown_after_reboot_without_always_needs_resync() {
    let dir = tempfile::tempdir().unwrap();
    let never = JournalConfig {
        fsync: FsyncPolicy::Never,
        ..cfg()
    };
    {
        let (j, _) = open(dir.path(), never.clone());
        j.append(0, 0, b"x").unwrap();
    }
    // Same boot: nothing was lost from the page cache.
    let (j, rec) = open(dir.path(), never.clone());
    assert!(!rec.clean_shutdown && !rec.needs_resync);
    drop(j);
    // Pretend the machine rebooted.
    let mut st = state::read_state(dir.path()).unwrap().unwrap();
    st.boot_id = b"another-boot".to_vec();
    state::write_state(dir.path(), &st).unwrap();
    let (j, rec) = open(dir.path(), never.clone());
    assert!(rec.needs_resync && j.needs_resync(), "{rec:?}");
    j.close().unwrap();
    // With Always, a reboot is harmless.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), cfg()));
    let mut st = state::read_state(dir.path()).unwrap().unwrap();
    st.boot_id = b"another-boot".to_vec();
    state::write_state(dir.path(), &st).unwrap();
    assert!(!open(dir.path(), cfg()).1.needs_resync);
}

#[test]
fn interval_and_never_policies_sync_on_demand() {
    for fsync in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval(Duration::from_millis(1)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig { fsync, ..cfg() };
        let (j, _) = open(dir.path(), config.clone());
        for i in 0..30u64 {
            j.append(0, 0, &data(i, 100)).unwrap();
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        j.sync().unwrap();
        j.close().unwrap();
        let (j, rec) = open(dir.path(), config);
        assert!(rec.clean_shutdown);
        assert_eq!(j.read_after(0, usize::MAX).unwrap().len(), 30);
    }
}

/// Polls `cond` for up to 10 s.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Pretends that a segment fdatasync is in flight (as another appender's
/// would be) until [`finish_sync_in_flight`].
fn sync_in_flight(j: &Journal) {
    j.commit.lock().syncing = true;
}

fn finish_sync_in_flight(j: &Journal) {
    j.commit.lock().syncing = false;
    j.commit.done.notify_all();
}

#[test]
fn always_appenders_write_during_a_sync_in_flight_and_share_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), cfg());
    let j = Arc::new(j);
    assert_eq!(logged(j.append(0, 0, &data(0, 400)).unwrap()), 1);
    assert_eq!((j.durable(), j.last_seq()), (1, 1));
    sync_in_flight(&j);
    let writers: Vec<_> = (1..=3u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || logged(j.append(0, t * 4096, &data(t, 400)).unwrap()))
        })
        .collect();
    // The writers are not held off the journal by the sync in flight...
    wait_until("three records written", || j.lock().written == 4);
    // ...but their records (over two segments) are not durable yet: readers,
    // acknowledgements and `durable` do not see them, and `append` waits.
    assert!(j.lock().segments.len() >= 2);
    assert_eq!((j.durable(), j.last_seq()), (1, 1));
    assert_eq!(j.read_after(0, usize::MAX).unwrap().len(), 1);
    assert!(j.read_after(1, usize::MAX).unwrap().is_empty());
    assert!(matches!(
        j.acknowledge(2),
        Err(JournalError::AckBeyondEnd { upto: 2, last: 1 })
    ));
    std::thread::sleep(Duration::from_millis(20));
    assert!(writers.iter().all(|w| !w.is_finished()));
    let syncs = j.commit.lock().syncs;
    finish_sync_in_flight(&j);
    let mut seqs: Vec<Seq> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, vec![2, 3, 4]);
    // One fdatasync (of both segments) for the three of them.
    assert_eq!(j.commit.lock().syncs - syncs, 1);
    assert_eq!((j.durable(), j.last_seq()), (4, 4));
    let records = j.read_after(0, usize::MAX).unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for r in &records[1..] {
        assert_eq!(r.payload, Payload::Data(data(r.offset / 4096, 400).into()));
    }
    j.acknowledge(4).unwrap();
}

#[test]
fn concurrent_always_appenders_share_syncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        max_bytes: 1 << 30,
        segment_bytes: 4096,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config.clone());
    let j = Arc::new(j);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    let seq = logged(j.append(0, t * 4096, &data(t * 100 + i, 300)).unwrap());
                    // Durable and visible when append returns.
                    assert!(j.durable() >= seq && j.last_seq() >= seq);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = j.commit.lock().syncs;
    assert!(syncs <= 160, "{syncs} syncs for 160 appends");
    assert_eq!((j.durable(), j.last_seq()), (160, 160));
    let records = j.read_after(0, usize::MAX).unwrap();
    assert_eq!(records.len(), 160);
    // Each writer's records are in its order, with its data.
    for t in 0..4u64 {
        let mine: Vec<_> = records.iter().filter(|r| r.offset == t * 4096).collect();
        assert_eq!(mine.len(), 40);
        for (i, r) in mine.iter().enumerate() {
            assert_eq!(
                r.payload,
                Payload::Data(data(t * 100 + i as u64, 300).into())
            );
        }
    }
    drop(j);
    let (j, rec) = open(dir.path(), config);
    assert_eq!((rec.records, j.durable(), j.last_seq()), (160, 160, 160));
}

#[test]
fn interval_appends_never_wait_for_the_disk_and_a_thread_syncs_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(10)),
        ..cfg()
    };
    let (j, _) = open(dir.path(), config);
    // A sync that never ends holds no writer up.
    sync_in_flight(&j);
    for i in 0..20u64 {
        assert_eq!(logged(j.append(0, i * 4096, &data(i, 200)).unwrap()), i + 1);
    }
    assert_eq!(j.last_seq(), 20, "visible at once under Interval");
    assert_eq!(j.read_after(0, usize::MAX).unwrap().len(), 20);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(
        j.durable(),
        0,
        "nothing is reported durable before its sync"
    );
    finish_sync_in_flight(&j);
    // The background thread syncs them without another append.
    wait_until("the background sync", || j.durable() == 20);
    assert!(j.commit.lock().syncs >= 1);
    j.close().unwrap();
}

#[test]
fn never_policy_is_durable_after_sync_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        fsync: FsyncPolicy::Never,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config.clone());
    for i in 0..5u64 {
        j.append(1, i * 4096, &data(i, 100)).unwrap();
    }
    assert_eq!((j.durable(), j.last_seq()), (0, 5));
    j.sync().unwrap();
    assert_eq!(j.durable(), 5);
    let syncs = j.commit.lock().syncs;
    j.sync().unwrap();
    assert_eq!(j.commit.lock().syncs, syncs, "nothing new to sync");
    j.append(1, 0, &data(9, 100)).unwrap();
    drop(j); // no close: open syncs what it finds
    let (j, _) = open(dir.path(), config);
    assert_eq!((j.durable(), j.last_seq()), (6, 6));
}

#[test]
fn a_failed_sync_fails_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), cfg());
    j.append(0, 0, &data(1, 100)).unwrap();
    j.commit.lock().failed = Some("injected".into());
    assert!(matches!(
        j.append(0, 0, &data(2, 100)),
        Err(JournalError::Failed { .. })
    ));
    assert!(matches!(j.sync(), Err(JournalError::Failed { .. })));
    // The record whose sync failed is never shipped.
    assert_eq!((j.durable(), j.last_seq()), (1, 1));
    assert_eq!(j.read_after(0, usize::MAX).unwrap().len(), 1);
}

#[test]
fn corrupt_state_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), cfg()).0.close().unwrap();
    fs::write(dir.path().join("state"), b"garbage").unwrap();
    let e = Journal::open(dir.path(), cfg(), &[VOL, VOL / 2]).unwrap_err();
    assert!(matches!(e, JournalError::CorruptState { .. }), "{e}");
    assert!(e.to_string().contains("state"), "{e}");
}

/// One operation of the change-log invariant property test.
#[derive(Debug, Clone)]
enum Op {
    Write { volume: u32, offset: u64, len: u64 },
    Ack(u8),
    ResyncStart,
    ResyncComplete,
    Reopen,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..2, 0u64..(VOL / 2 - 20_000), 0u64..20_000)
            .prop_map(|(volume, offset, len)| Op::Write { volume, offset, len }),
        3 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::ResyncStart),
        1 => Just(Op::ResyncComplete),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Every write that is neither acknowledged nor resynchronised stays
    /// inside `dirty_ranges`, whatever the sequence of appends, acks,
    /// overflows, resyncs and restarts.
    #[test]
    fn change_log_covers_every_unacknowledged_write(
        ops in proptest::collection::vec(arb_op(), 1..60),
        memory_bytes in prop_oneof![Just(0u64), Just(10_000u64)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig {
            segment_bytes: 4096,
            max_bytes: 30_000,
            fsync: FsyncPolicy::Never,
            region_bytes: 4096,
            changelog_rotation: Duration::ZERO,
            memory_bytes,
        };
        let sizes = [VOL, VOL / 2];
        let mut j = Some(Journal::open(dir.path(), config.clone(), &sizes).unwrap().0);
        // Outstanding writes: (seq or None if lost to overflow, volume, range).
        let mut pending: Vec<(Option<Seq>, u32, Range<u64>)> = Vec::new();
        let mut resync: Option<(Seq, usize)> = None;
        for op in ops {
            let jr = j.as_ref().unwrap();
            match op {
                Op::Write { volume, offset, len } => {
                    let a = if len % 3 == 0 {
                        jr.append_zero(volume, offset, len).unwrap()
                    } else {
                        jr.append(volume, offset, &vec![7; len as usize]).unwrap()
                    };
                    let seq = match a { Appended::Logged(s) => Some(s), Appended::Overflowed => None };
                    pending.push((seq, volume, offset..offset + len));
                    prop_assert!(jr.bytes() <= config.max_bytes);
                }
                Op::Ack(x) => {
                    let last = jr.last_seq();
                    let upto = jr.acknowledged() + (last - jr.acknowledged()) * u64::from(x) / 255;
                    jr.acknowledge(upto).unwrap();
                    pending.retain(|(s, _, _)| s.is_none_or(|s| s > upto));
                }
                Op::ResyncStart => {
                    resync = Some((jr.resync_started().unwrap(), pending.len()));
                }
                Op::ResyncComplete => {
                    if let Some((base, n)) = resync.take() {
                        jr.resync_completed(base).unwrap();
                        // The resync copied every region dirty at its start,
                        // so all writes before it are on the replica.
                        let mut i = 0;
                        pending.retain(|(s, _, _)| {
                            i += 1;
                            i > n && s.is_none_or(|s| s > base)
                        });
                    }
                }
                Op::Reopen => {
                    j.take().unwrap().close().unwrap();
                    j = Some(Journal::open(dir.path(), config.clone(), &sizes).unwrap().0);
                    resync = None;
                }
            }
            let jr = j.as_ref().unwrap();
            for (seq, volume, range) in &pending {
                if range.is_empty() {
                    continue;
                }
                let dirty = jr.dirty_ranges(*volume);
                prop_assert!(
                    dirty.iter().any(|d| d.start <= range.start && range.end <= d.end),
                    "write {:?} (seq {:?}) on volume {} not covered by {:?}", range, seq, volume, dirty
                );
            }
            if pending.iter().any(|(s, _, _)| s.is_none()) {
                prop_assert!(jr.needs_resync());
            }
        }
    }
}

#[test]
fn an_acknowledgement_that_deletes_nothing_may_reach_the_state_file_later() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        // No rotation (it persists the state). Segments of 1024 bytes: the
        // first holds records 1 to 7.
        changelog_rotation: Duration::from_secs(3600),
        ..cfg()
    };
    let (j, _) = open(dir.path(), config.clone());
    for i in 0..10u64 {
        logged(j.append(0, i * 100, &data(i, 100)).unwrap());
    }
    // The journal was just opened: this one waits (no segment goes).
    j.acknowledge(4).unwrap();
    assert_eq!(j.acknowledged(), 4);
    // A crash (no close): the journal reopens with less acknowledged than
    // the replica has, keeps those records and reads after either point.
    drop(j);
    let (j, _) = open(dir.path(), config.clone());
    assert!(j.acknowledged() < 4, "{}", j.acknowledged());
    assert_eq!(j.read_after(4, usize::MAX).unwrap().len(), 6);
    assert_eq!(j.read_after(0, usize::MAX).unwrap().len(), 10);
    // An acknowledgement that deletes a segment is in the state file at once.
    for i in 10..20u64 {
        logged(j.append(0, i * 100, &data(i, 100)).unwrap());
    }
    let before = seg_files(dir.path());
    j.acknowledge(20).unwrap();
    assert!(seg_files(dir.path()).len() < before.len());
    drop(j);
    let (j, _) = open(dir.path(), config.clone());
    assert_eq!(j.acknowledged(), 20);
    assert_eq!(j.last_seq(), 20);
    // So is one made ACK_PERSIST_EVERY after the last persisted one.
    logged(j.append(0, 0, &data(0, 100)).unwrap());
    logged(j.append(0, 100, &data(1, 100)).unwrap());
    std::thread::sleep(ACK_PERSIST_EVERY);
    j.acknowledge(21).unwrap();
    drop(j);
    let (j, _) = open(dir.path(), config);
    assert_eq!(j.acknowledged(), 21);
    j.close().unwrap();
}

#[test]
fn a_replica_that_keeps_up_does_not_churn_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        segment_bytes: 1 << 20,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config);
    let first = seg_files(dir.path());
    for i in 0..50u64 {
        let seq = logged(j.append(0, i * 100, &data(i, 100)).unwrap());
        j.acknowledge(seq).unwrap();
        let now = seg_files(dir.path());
        assert_eq!(now.len(), 1, "after record {seq}: {now:?}");
        if !first.is_empty() {
            assert_eq!(now, first);
        }
    }
    assert_eq!(j.bytes(), 0);
    assert_eq!(j.read_after(50, 10).unwrap(), vec![]);
    j.close().unwrap();
}

#[test]
fn close_shared_records_a_clean_shutdown_and_refuses_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..cfg()
    };
    let (j, _) = open(dir.path(), config.clone());
    let j = Arc::new(j);
    let other = j.clone(); // a volume served over NBD still holds it
    for i in 0..5u64 {
        logged(j.append(0, i * 100, &data(i, 100)).unwrap());
    }
    assert!(j.durable() < 5, "the hour-long interval has not synced yet");
    j.close_shared().unwrap();
    assert_eq!(j.durable(), 5, "every record is durable once closed");
    let err = other.append(0, 0, b"late").unwrap_err();
    assert!(matches!(err, JournalError::Closed { .. }), "{err:?}");
    assert!(err.to_string().contains("closed"), "{err}");
    // Reads and acknowledgements still work; a second close does nothing.
    assert_eq!(other.read_after(0, usize::MAX).unwrap().len(), 5);
    other.acknowledge(2).unwrap();
    j.close_shared().unwrap();
    drop((j, other));
    let (j, rec) = open(dir.path(), config);
    assert!(rec.clean_shutdown);
    assert!(!rec.needs_resync);
    assert_eq!(j.last_seq(), 5);
    j.close().unwrap();
}

/// A journal that keeps up to `memory_bytes` of records in memory, with
/// 1024-byte segments and no background sync.
fn mem_cfg(memory_bytes: u64) -> JournalConfig {
    JournalConfig {
        fsync: FsyncPolicy::Never,
        memory_bytes,
        ..cfg()
    }
}

/// Encoded size of a record with `len` bytes of data.
fn rec_bytes(len: usize) -> u64 {
    PayloadRef::Data(&vec![0; len]).encoded_len() as u64
}

/// Every record after `after`, read the way the replicator does: in
/// bounded batches until the end.
fn read_all_after(j: &Journal, mut after: Seq) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let batch = j.read_after(after, 250).unwrap();
        let Some(last) = batch.last() else {
            return out;
        };
        after = last.seq;
        out.extend(batch);
    }
}

#[test]
fn memory_mode_keeps_records_off_disk_while_the_replica_keeps_up() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), mem_cfg(1 << 20));
    for i in 1..=20u64 {
        assert_eq!(logged(j.append(0, i * 512, &data(i, 100)).unwrap()), i);
    }
    assert_eq!(logged(j.append_zero(1, 0, 8192).unwrap()), 21);
    assert!(
        seg_files(dir.path()).is_empty(),
        "records reached a segment"
    );
    assert_eq!(j.bytes(), 20 * rec_bytes(100) + rec_bytes(0));
    let all = read_all_after(&j, 0);
    assert_eq!(all.len(), 21);
    for (i, r) in all.iter().take(20).enumerate() {
        let i = i as u64 + 1;
        assert_eq!((r.seq, r.volume, r.offset), (i, 0, i * 512));
        assert_eq!(r.payload, Payload::Data(data(i, 100).into()));
    }
    assert_eq!(all[20].payload, Payload::Zero(8192));
    assert_eq!(j.read_after(5, usize::MAX).unwrap(), all[5..].to_vec());
    // Nothing is reported durable that is only in memory.
    assert_eq!(j.durable(), 0);
    j.acknowledge(21).unwrap();
    assert_eq!(j.bytes(), 0);
    assert!(j.read_after(21, usize::MAX).unwrap().is_empty());
    assert!(seg_files(dir.path()).is_empty());
    j.close().unwrap();
    let (j, rec) = open(dir.path(), mem_cfg(1 << 20));
    assert!(rec.clean_shutdown && !rec.needs_resync, "{rec:?}");
    assert_eq!(logged(j.append(0, 0, b"x").unwrap()), 22);
}

#[test]
fn memory_mode_spills_the_oldest_records_when_the_replica_falls_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = mem_cfg(5 * rec_bytes(100));
    let (j, _) = open(dir.path(), config.clone());
    for i in 1..=20u64 {
        logged(j.append(0, i * 512, &data(i, 100)).unwrap());
    }
    // Records 1 to 15 went to segments, 16 to 20 are in memory.
    assert!(!seg_files(dir.path()).is_empty());
    let on_disk: u64 = seg_files(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len() - SEGMENT_HEADER_BYTES)
        .sum();
    assert_eq!(on_disk, 15 * rec_bytes(100));
    assert_eq!(j.bytes(), 20 * rec_bytes(100));
    let all = read_all_after(&j, 0);
    let seqs: Vec<Seq> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    for r in &all {
        assert_eq!(r.payload, Payload::Data(data(r.seq, 100).into()));
    }
    // A read that starts on disk stops at the last record there; the next
    // one goes on from memory.
    assert_eq!(j.read_after(14, usize::MAX).unwrap(), all[14..15].to_vec());
    assert_eq!(j.read_after(15, usize::MAX).unwrap(), all[15..].to_vec());
    j.acknowledge(10).unwrap();
    assert_eq!(j.bytes(), 10 * rec_bytes(100));
    assert_eq!(read_all_after(&j, 10), all[10..].to_vec());
    // A sync writes what memory holds and makes all of it durable.
    j.sync().unwrap();
    assert_eq!(j.durable(), 20);
    assert_eq!(read_all_after(&j, 10), all[10..].to_vec());
    logged(j.append(0, 0, &data(21, 100)).unwrap());
    // A clean close writes memory to the segments: nothing to resync.
    j.close().unwrap();
    let (j, rec) = open(dir.path(), config);
    assert!(rec.clean_shutdown && !rec.needs_resync, "{rec:?}");
    let after = read_all_after(&j, 10);
    assert_eq!(after.len(), 11);
    assert_eq!(after[..10], all[10..]);
    assert_eq!(after[10].payload, Payload::Data(data(21, 100).into()));
    assert_eq!(logged(j.append(0, 0, b"y").unwrap()), 22);
}

#[test]
fn a_record_larger_than_memory_goes_to_a_segment_after_the_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), mem_cfg(3 * rec_bytes(100)));
    logged(j.append(0, 0, &data(1, 100)).unwrap());
    logged(j.append(0, 0, &data(2, 100)).unwrap());
    logged(j.append(0, 0, &data(3, 2000)).unwrap());
    logged(j.append(0, 0, &data(4, 100)).unwrap());
    let all = read_all_after(&j, 0);
    let lens: Vec<u64> = all.iter().map(Record::len).collect();
    assert_eq!(lens, [100, 100, 2000, 100]);
    assert_eq!(all[2].payload, Payload::Data(data(3, 2000).into()));
    j.sync().unwrap();
    assert_eq!(j.durable(), 4);
}

#[test]
fn a_crash_with_records_in_memory_needs_resync_and_never_reuses_their_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let config = mem_cfg(1 << 20);
    {
        let (j, _) = open(dir.path(), config.clone());
        for i in 1..=5u64 {
            logged(j.append(1, i * 4096, &data(i, 100)).unwrap());
        }
        j.acknowledge(2).unwrap();
        // Dropped without close, as by kill -9 (same boot).
    }
    let (j, rec) = open(dir.path(), config.clone());
    assert!(
        !rec.clean_shutdown && rec.needs_resync && j.needs_resync(),
        "{rec:?}"
    );
    assert!(
        rec.warnings.iter().any(|w| w.contains("only in memory")),
        "{:?}",
        rec.warnings
    );
    // Records 3 to 5 are gone, and the change log still covers them.
    let dirty = j.dirty_ranges(1);
    for i in 3..=5u64 {
        let r = i * 4096..i * 4096 + 100;
        assert!(
            dirty.iter().any(|d| d.start <= r.start && r.end <= d.end),
            "{r:?} not in {dirty:?}"
        );
    }
    // The replica may have applied them: their seqs are never handed out again.
    let next = logged(j.append(0, 0, b"z").unwrap());
    assert!(next > 5, "seq {next} reused");
    let base = j.resync_started().unwrap();
    j.resync_completed(base).unwrap();
    assert!(!j.needs_resync());
    assert!(j.read_after(base, usize::MAX).unwrap().is_empty());
    let after = logged(j.append(0, 0, b"w").unwrap());
    assert_eq!(after, next + 1);
    assert_eq!(j.read_after(base, usize::MAX).unwrap().len(), 1);
    j.close().unwrap();
    // Without memory mode, the same crash in the same boot loses nothing.
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = open(dir.path(), mem_cfg(0));
        logged(j.append(0, 0, b"x").unwrap());
    }
    let (_, rec) = open(dir.path(), mem_cfg(0));
    assert!(!rec.clean_shutdown && !rec.needs_resync, "{rec:?}");
}

#[test]
fn memory_bytes_is_ignored_under_always() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        memory_bytes: 1 << 20,
        ..cfg()
    };
    let (j, _) = open(dir.path(), config.clone());
    logged(j.append(0, 0, &data(1, 100)).unwrap());
    assert_eq!(j.durable(), 1);
    assert_eq!(seg_files(dir.path()).len(), 1);
    drop(j);
    let (j, rec) = open(dir.path(), config);
    assert!(!rec.needs_resync, "{rec:?}");
    assert_eq!(j.read_after(0, usize::MAX).unwrap().len(), 1);
}

#[test]
fn an_overflow_discards_the_records_in_memory_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        max_bytes: 10 * rec_bytes(100),
        ..mem_cfg(4 * rec_bytes(100))
    };
    let (j, _) = open(dir.path(), config);
    for i in 1..=10u64 {
        logged(j.append(0, i * 4096, &data(i, 100)).unwrap());
    }
    assert_eq!(
        j.append(0, 0, &data(11, 100)).unwrap(),
        Appended::Overflowed
    );
    assert!(j.needs_resync());
    assert_eq!(j.bytes(), 0);
    assert!(matches!(
        j.read_after(0, usize::MAX),
        Err(JournalError::Gap { .. })
    ));
    let base = j.resync_started().unwrap();
    j.resync_completed(base).unwrap();
    let next = logged(j.append(0, 0, &data(12, 100)).unwrap());
    assert_eq!(j.read_after(base, usize::MAX).unwrap()[0].seq, next);
}

#[test]
fn close_shared_writes_the_records_in_memory_before_calling_the_shutdown_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path(), mem_cfg(1 << 20));
    for i in 1..=3u64 {
        logged(j.append(0, 0, &data(i, 100)).unwrap());
    }
    j.close_shared().unwrap();
    drop(j);
    let (j, rec) = open(dir.path(), mem_cfg(1 << 20));
    assert!(rec.clean_shutdown && !rec.needs_resync, "{rec:?}");
    assert_eq!(rec.records, 3);
    assert_eq!(read_all_after(&j, 0).len(), 3);
}
