//! The file replica killed with SIGKILL mid-batch reopens at a batch boundary.
//!
//! The test binary re-executes itself as a child that applies batches in a
//! loop; the parent kills it at a random moment, reopens the replica and
//! checks that every region holds the same batch: all of the last applied
//! batch, nothing of the next.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::process::{Command, Stdio};
use std::time::Duration;

use rha_core::journal::{Payload, Record};
use rha_core::sink::{DiskFormat, FileSink, ReplicaSink};

const CHILD: &str = "RHA_SINK_CRASH_CHILD";
const REGIONS: u64 = 8;
const REGION: u64 = 512 << 10;
const WRITE: usize = 64 << 10;

/// Batch `n` writes every region with a pattern of `n`, one record (and
/// one sequence) per region.
fn batch_records(n: u64) -> Vec<Record> {
    (0..REGIONS)
        .map(|i| Record {
            seq: (n - 1) * REGIONS + i + 1,
            volume: 0,
            offset: i * REGION,
            payload: Payload::Data(vec![(n % 251) as u8 + 1; WRITE].into()),
        })
        .collect()
}

fn child(dir: &str) {
    let sink = FileSink::open(dir).expect("child opens the replica");
    let mut n = sink.state().applied / REGIONS + 1;
    loop {
        sink.apply(&batch_records(n)).expect("apply");
        n += 1;
    }
}

#[test]
fn replica_killed_mid_batch_reopens_at_a_batch_boundary() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(&dir);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    drop(FileSink::create(&dir, &[REGIONS * REGION], DiskFormat::FixedVhd).unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut seen = Vec::new();
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "replica_killed_mid_batch_reopens_at_a_batch_boundary",
                "--nocapture",
            ])
            .env(CHILD, &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + round * 37));
        child.kill().unwrap();
        child.wait().unwrap();

        let sink = FileSink::open(&dir).unwrap();
        let applied = sink.state().applied;
        assert_eq!(
            applied % REGIONS,
            0,
            "round {round}: applied {applied} is inside a batch"
        );
        let n = applied / REGIONS;
        let want = if n == 0 { 0 } else { (n % 251) as u8 + 1 };
        let v = sink.volume(0).unwrap();
        for i in 0..REGIONS {
            let mut buf = vec![0u8; WRITE];
            v.read_at(i * REGION, &mut buf).unwrap();
            assert!(
                buf.iter().all(|&b| b == want),
                "round {round}: region {i} does not hold batch {n} (first byte {})",
                buf[0]
            );
        }
        seen.push(n);
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress only moves forward: {seen:?}"
    );
    assert!(
        *seen.last().unwrap() > 0,
        "the child applied batches: {seen:?}"
    );
}
