//! The `ReplicaSink` conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::journal::{Payload, Record};
use crate::sink::{ReplicaSink, SinkError};
use crate::VolumeId;

fn data(seq: u64, volume: VolumeId, offset: u64, byte: u8, len: usize) -> Record {
    Record {
        seq,
        volume,
        offset,
        payload: Payload::Data(vec![byte; len].into()),
    }
}

fn read(sink: &dyn ReplicaSink, volume: VolumeId, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    sink.volume(volume)
        .expect("volume exists")
        .read_at(offset, &mut buf)
        .expect("read replica");
    buf
}

/// Drops a sink and opens the same replica again.
pub type Reopen<'a> = &'a mut dyn FnMut(Box<dyn ReplicaSink>) -> Box<dyn ReplicaSink>;

/// Runs every check against sinks made by `make(sizes)` (fresh, empty
/// replicas of two volumes). `reopen`, where the sink is durable, drops a sink
/// and opens the same replica again; it is used to check persistence.
pub fn run_sink_suite(
    make: &mut dyn FnMut(&[u64]) -> Box<dyn ReplicaSink>,
    mut reopen: Option<Reopen<'_>>,
) {
    let sizes = [2u64 << 20, 1 << 20];
    let sink = make(&sizes);

    // A new replica.
    assert_eq!(sink.volume_count(), 2, "volume_count");
    for (i, &s) in sizes.iter().enumerate() {
        assert!(
            sink.volume(i as VolumeId).unwrap().size() >= s,
            "volume {i} is smaller than asked"
        );
    }
    assert!(
        matches!(sink.volume(2), Err(SinkError::NoSuchVolume { id: 2, .. })),
        "volume 2 must not exist"
    );
    let st = sink.state();
    assert_eq!(
        (st.applied, st.consistent, st.synced),
        (0, false, false),
        "a new replica's state"
    );
    assert!(
        read(&*sink, 0, 0, 4096).iter().all(|&b| b == 0),
        "a new replica reads as zeros"
    );

    // Ordered batches.
    let batch = vec![
        data(1, 0, 0, 1, 4096),
        data(2, 1, 512, 2, 1000),
        data(3, 0, 4096, 3, 10),
    ];
    assert_eq!(
        sink.apply(&batch).unwrap(),
        3,
        "apply returns the last applied sequence"
    );
    assert_eq!(sink.state().applied, 3);
    assert_eq!(read(&*sink, 1, 512, 1000), vec![2; 1000]);

    // Re-applying is harmless, an overlapping batch applies only the new part.
    sink.volume(0).unwrap().write_at(0, &[9; 16]).unwrap();
    assert_eq!(
        sink.apply(&batch).unwrap(),
        3,
        "re-applying an applied batch"
    );
    assert_eq!(
        read(&*sink, 0, 0, 16),
        vec![9; 16],
        "re-applying must not rewrite applied records"
    );
    let overlap = vec![
        data(3, 0, 4096, 0xEE, 10),
        data(4, 0, 8192, 4, 100),
        Record {
            seq: 5,
            volume: 0,
            offset: 4096,
            payload: Payload::Zero(4096),
        },
    ];
    assert_eq!(sink.apply(&overlap).unwrap(), 5);
    assert_eq!(
        read(&*sink, 0, 4096, 10),
        vec![0; 10],
        "zero record applied after the skipped one"
    );
    assert_eq!(read(&*sink, 0, 8192, 100), vec![4; 100]);
    assert_eq!(
        sink.apply(&[]).unwrap(),
        5,
        "an empty batch changes nothing"
    );

    // Refusals leave everything as it was.
    let gap = vec![data(7, 0, 0, 7, 10)];
    assert!(
        matches!(
            sink.apply(&gap),
            Err(SinkError::Gap {
                applied: 5,
                first: 7
            })
        ),
        "a gap is refused"
    );
    let unordered = vec![data(6, 0, 0, 6, 10), data(8, 0, 0, 8, 10)];
    assert!(
        matches!(sink.apply(&unordered), Err(SinkError::OutOfOrder { .. })),
        "out of order is refused"
    );
    let bad_volume = vec![data(6, 0, 0, 6, 10), data(7, 5, 0, 6, 10)];
    assert!(matches!(
        sink.apply(&bad_volume),
        Err(SinkError::NoSuchVolume { id: 5, .. })
    ));
    assert_eq!(sink.state().applied, 5, "refused batches apply nothing");
    assert_eq!(
        read(&*sink, 0, 0, 10),
        vec![9; 10],
        "refused batches write nothing"
    );

    // The synchronisation protocol.
    sink.begin_sync().unwrap();
    assert!(
        !sink.state().consistent,
        "not consistent during a synchronisation"
    );
    sink.volume(1).unwrap().write_at(0, &[5; 4096]).unwrap();
    sink.end_sync(100).unwrap();
    let st = sink.state();
    assert_eq!(
        (st.applied, st.synced, st.consistent),
        (100, true, false),
        "after end_sync"
    );
    assert!(
        sink.mark_consistent(101).is_err(),
        "cannot be consistent beyond what was applied"
    );
    sink.mark_consistent(100).unwrap();
    assert!(sink.state().consistent);
    assert_eq!(sink.apply(&[data(101, 1, 4096, 6, 4096)]).unwrap(), 101);

    // Durability.
    if let Some(reopen) = reopen.as_mut() {
        let sink = reopen(sink);
        let st = sink.state();
        assert_eq!(
            (st.applied, st.synced, st.consistent),
            (101, true, true),
            "state survives reopening"
        );
        assert_eq!(
            read(&*sink, 1, 0, 4096),
            vec![5; 4096],
            "sync writes survive reopening"
        );
        assert_eq!(
            read(&*sink, 1, 4096, 4096),
            vec![6; 4096],
            "applied batches survive reopening"
        );
        assert_eq!(
            sink.apply(&[data(101, 1, 4096, 0xAA, 4096)]).unwrap(),
            101,
            "idempotent after reopening"
        );
        assert_eq!(read(&*sink, 1, 4096, 4096), vec![6; 4096]);
    }
}
