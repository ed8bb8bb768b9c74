//! Every ReplicaSink and ChangeSource implementation of this crate runs the shared suites.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::sync::Arc;
use std::time::Duration;

use rha_core::conformance::{run_sink_suite, run_source_suite, SourceUnderTest};
use rha_core::events::Events;
use rha_core::journal::{FsyncPolicy, JournalConfig};
use rha_core::sink::{DiskFormat, FileSink, MemSink, ReplicaSink};
use rha_core::source::{RescanSource, TrackedSet};
use rha_core::volume::Volume;

#[test]
fn mem_sink() {
    run_sink_suite(&mut |sizes| Box::new(MemSink::new(sizes).unwrap()), None);
}

fn file_sink(format: DiskFormat) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica");
    let p2 = path.clone();
    run_sink_suite(
        &mut |sizes| Box::new(FileSink::create(&path, sizes, format).unwrap()),
        Some(&mut |old: Box<dyn ReplicaSink>| {
            drop(old);
            Box::new(FileSink::open(&p2).unwrap())
        }),
    );
}

#[test]
fn file_sink_raw() {
    file_sink(DiskFormat::Raw);
}

#[test]
fn file_sink_fixed_vhd() {
    file_sink(DiskFormat::FixedVhd);
}

#[test]
fn tracked_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_source_suite(&mut |volumes| {
        n += 1;
        let config = JournalConfig {
            fsync: FsyncPolicy::Always,
            ..Default::default()
        };
        let (set, _) = TrackedSet::open(
            dir.path().join(format!("j{n}")),
            config,
            volumes,
            Events::new(),
        )
        .unwrap();
        let set = Arc::new(set);
        let writer = set.clone();
        SourceUnderTest {
            source: Box::new(set),
            write: Box::new(move |id, off, data| {
                let v = writer.volume(id).unwrap();
                if data.iter().all(|&b| b == 0) {
                    v.write_zeroes(off, data.len() as u64).unwrap()
                } else {
                    v.write_at(off, data).unwrap()
                }
            }),
        }
    });
}

#[test]
fn rescan_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_source_suite(&mut |volumes: Vec<Arc<dyn Volume>>| {
        n += 1;
        let (src, _) = RescanSource::open(
            dir.path().join(format!("r{n}")),
            volumes.clone(),
            JournalConfig::default(),
            Duration::ZERO,
        )
        .unwrap();
        SourceUnderTest {
            source: Box::new(src),
            write: Box::new(move |id, off, data| volumes[id as usize].write_at(off, data).unwrap()),
        }
    });
}
