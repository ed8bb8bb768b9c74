//! The shared volume conformance suite run on every volume in rha-core, plus
//! the properties specific to files: punched holes free storage.
#![allow(clippy::unwrap_used)]

use rha_core::conformance::volume::run_volume_suite;
use rha_core::volume::{open_volume, FileVolume, MemVolume, VhdVolume, Volume, VolumeError};

#[test]
fn mem_volume_conforms() {
    run_volume_suite(&mut |size| -> Box<dyn Volume> { Box::new(MemVolume::new(size).unwrap()) });
}

#[test]
fn file_volume_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_volume_suite(&mut |size| -> Box<dyn Volume> {
        n += 1;
        Box::new(FileVolume::create(dir.path().join(format!("{n}.raw")), size).unwrap())
    });
}

#[test]
fn reopened_file_volume_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_volume_suite(&mut |size| -> Box<dyn Volume> {
        n += 1;
        let p = dir.path().join(format!("{n}.raw"));
        drop(FileVolume::create(&p, size).unwrap());
        open_volume(&p).unwrap()
    });
}

#[test]
fn vhd_volume_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_volume_suite(&mut |size| -> Box<dyn Volume> {
        n += 1;
        let (v, report) = VhdVolume::create(dir.path().join(format!("{n}.vhd")), size).unwrap();
        assert!(!report.was_rounded());
        Box::new(v)
    });
}

/// The write splitter: every write journalled (the newest records held in
/// memory, as under NBD), then made on a memory volume.
#[test]
fn tracked_volume_conforms() {
    use rha_core::events::Events;
    use rha_core::journal::{FsyncPolicy, JournalConfig};
    use rha_core::source::TrackedSet;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let mut sets = Vec::new();
    run_volume_suite(&mut |size| -> Box<dyn Volume> {
        let config = JournalConfig {
            fsync: FsyncPolicy::Never,
            memory_bytes: 1 << 20,
            ..JournalConfig::default()
        };
        let inner: Arc<dyn Volume> = Arc::new(MemVolume::new(size).unwrap());
        let journal = dir.path().join(format!("j{}", sets.len()));
        let (set, _) = TrackedSet::open(journal, config, vec![inner], Events::new()).unwrap();
        let v = set.volume(0).unwrap();
        sets.push(set);
        Box::new(v)
    });
}

#[test]
fn reopened_vhd_volume_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_volume_suite(&mut |size| -> Box<dyn Volume> {
        n += 1;
        let p = dir.path().join(format!("{n}.vhd"));
        drop(VhdVolume::create(&p, size).unwrap());
        let v = open_volume(&p).unwrap();
        assert_eq!(v.size(), size);
        v
    });
}

const MIB: u64 = 1024 * 1024;

/// Writing then zeroing 64 MiB gives the storage back: the file's allocated
/// bytes fall back near zero.
#[test]
fn punched_holes_free_storage() {
    let dir = tempfile::tempdir().unwrap();
    let v = FileVolume::create(dir.path().join("holes.raw"), 64 * MIB).unwrap();
    assert!(v.allocated_bytes().unwrap() < MIB);
    let data = vec![0xA5u8; MIB as usize];
    for i in 0..64 {
        v.write_at(i * MIB, &data).unwrap();
    }
    v.flush().unwrap();
    let full = v.allocated_bytes().unwrap();
    assert!(
        full >= 63 * MIB,
        "64 MiB written, only {full} bytes allocated"
    );
    v.write_zeroes(0, 64 * MIB).unwrap();
    v.flush().unwrap();
    let after = v.allocated_bytes().unwrap();
    assert!(after < MIB, "64 MiB zeroed, still {after} bytes allocated");
    let mut buf = vec![1u8; MIB as usize];
    v.read_at(63 * MIB, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

/// The same through a VHD: the footer survives the punched holes.
#[test]
fn vhd_punched_holes_free_storage_and_keep_the_footer() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("holes.vhd");
    let (v, _) = VhdVolume::create(&p, 16 * MIB).unwrap();
    let footer = v.footer().clone();
    v.write_at(0, &vec![0x11u8; 16 * MIB as usize]).unwrap();
    v.write_zeroes(0, 16 * MIB).unwrap();
    v.flush().unwrap();
    assert!(v.allocated_bytes().unwrap() < MIB);
    drop(v);
    let v = VhdVolume::open(&p).unwrap();
    assert_eq!(v.footer(), &footer);
    assert_eq!(v.size(), 16 * MIB);
}

#[test]
fn vhd_create_rounds_up_to_a_mib_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("odd.vhd");
    let (v, report) = VhdVolume::create(&p, 3 * MIB + 512).unwrap();
    assert!(report.was_rounded());
    assert_eq!(report.requested_size, 3 * MIB + 512);
    assert_eq!(report.virtual_size, 4 * MIB);
    assert_eq!(report.rounded_up_by(), MIB - 512);
    assert_eq!(v.size(), 4 * MIB);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 * MIB + 512);
}

#[test]
fn read_only_vhd_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ro.vhd");
    drop(VhdVolume::create(&p, MIB).unwrap());
    let v = VhdVolume::open_read_only(&p).unwrap();
    let err = v.write_at(0, &[1]).unwrap_err();
    assert!(matches!(err, VolumeError::ReadOnly { .. }), "{err}");
    assert!(err.to_string().contains("ro.vhd"), "{err}");
}

#[test]
fn empty_vhd_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = VhdVolume::create(dir.path().join("empty.vhd"), 0).unwrap_err();
    assert!(matches!(err, VolumeError::BadSize { size: 0, .. }), "{err}");
    let p = dir.path().join("empty.raw");
    std::fs::write(&p, b"").unwrap();
    let err = rha_core::volume::vhd::attach_footer(&p).unwrap_err();
    assert!(err.to_string().contains("at least one MiB"), "{err}");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
}

#[test]
fn read_only_open_volume_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.raw", "b.vhd"] {
        let p = dir.path().join(name);
        if name.ends_with("vhd") {
            drop(VhdVolume::create(&p, MIB).unwrap());
        } else {
            drop(FileVolume::create(&p, MIB).unwrap());
        }
        let v = rha_core::volume::open_volume_read_only(&p).unwrap();
        assert_eq!(v.size(), MIB);
        assert!(matches!(
            v.write_zeroes(0, 512).unwrap_err(),
            VolumeError::ReadOnly { .. }
        ));
        v.flush().unwrap();
    }
}
