//! The `ChangeSource` conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::journal::Payload;
use crate::source::{ChangeSource, SourceError};
use crate::volume::{MemVolume, Volume};
use crate::VolumeId;

/// Writes `data` at an offset of a volume, as the protected system would.
pub type Writer = Box<dyn Fn(VolumeId, u64, &[u8])>;

/// A change source under test and the way its volumes get written.
pub struct SourceUnderTest {
    /// The source.
    pub source: Box<dyn ChangeSource>,
    /// Writes as the protected system would (through the write splitter,
    /// or straight to the disk for a rescan source).
    pub write: Writer,
}

/// Runs every check against sources made by `make(volumes)`. The volumes
/// given already hold data, which the source must not report as changes.
pub fn run_source_suite(make: &mut dyn FnMut(Vec<Arc<dyn Volume>>) -> SourceUnderTest) {
    let sizes = [1u64 << 20, 3 << 20];
    let volumes: Vec<Arc<dyn Volume>> = sizes
        .iter()
        .map(|&s| {
            let v = MemVolume::new(s).unwrap();
            v.write_at(0, &vec![0x11; 8192]).unwrap();
            Arc::new(v) as Arc<dyn Volume>
        })
        .collect();
    // The replica starts as a copy of the volumes.
    let replica: Vec<MemVolume> = volumes
        .iter()
        .map(|v| {
            let mut b = vec![0u8; v.size() as usize];
            v.read_at(0, &mut b).unwrap();
            MemVolume::from_bytes(b).unwrap()
        })
        .collect();
    let t = make(volumes.clone());
    let src = &*t.source;
    assert_eq!(src.volumes().len(), 2, "volumes()");
    src.capture().unwrap();
    let start = src.last_seq();
    assert!(
        src.changes_after(start, 1 << 20).unwrap().is_empty(),
        "no changes before any write"
    );

    (t.write)(0, 4096, &[1; 4096]);
    (t.write)(1, (2 << 20) + 8192, &[2; 8192]);
    (t.write)(0, 4096, &[3; 4096]);
    (t.write)(1, 0, &[0; 4096]);
    src.capture().unwrap();
    assert!(src.last_seq() > start, "writes must advance last_seq");

    // Replaying the records reproduces the volumes.
    let mut after = start;
    loop {
        let recs = src.changes_after(after, 4096).unwrap();
        if recs.is_empty() {
            break;
        }
        for r in &recs {
            assert_eq!(r.seq, after + 1, "sequences are consecutive");
            after = r.seq;
            let v = &replica[r.volume as usize];
            match &r.payload {
                Payload::Data(d) => v.write_at(r.offset, d).unwrap(),
                Payload::Zero(n) => v.write_zeroes(r.offset, *n).unwrap(),
            }
        }
    }
    assert_eq!(
        after,
        src.last_seq(),
        "every record up to last_seq is readable"
    );
    for (i, v) in volumes.iter().enumerate() {
        let mut want = vec![0u8; v.size() as usize];
        v.read_at(0, &mut want).unwrap();
        assert!(
            replica[i].to_vec() == want,
            "replaying the records must reproduce volume {i}"
        );
    }

    // Dirty ranges (where known) cover every write not yet acknowledged.
    for (id, offset) in [(0u32, 4096u64), (1, (2 << 20) + 8192), (1, 0)] {
        if let Some(ranges) = src.dirty_ranges(id) {
            assert!(
                ranges.iter().any(|r| r.start <= offset && offset < r.end),
                "dirty_ranges({id}) must cover the write at {offset}"
            );
        }
    }

    // Acknowledged records go away; later ones stay.
    let last = src.last_seq();
    src.acknowledge(last).unwrap();
    assert_eq!(src.acknowledged(), last, "acknowledged()");
    match src.changes_after(start, 1 << 20) {
        Ok(r) => assert!(
            r.is_empty() || r[0].seq > start,
            "acknowledged records are not offered again"
        ),
        Err(SourceError::Gap { .. }) => {}
        Err(e) => panic!("changes_after acknowledged records: {e}"),
    }
    (t.write)(0, 0, &[7; 512]);
    src.capture().unwrap();
    let recs = src.changes_after(last, 1 << 20).unwrap();
    assert!(
        !recs.is_empty() && recs[0].seq == last + 1,
        "a write after acknowledgement is offered"
    );
}
