//! Crash test: a writer process appending with `FsyncPolicy::Always` is
//! killed with SIGKILL at a random moment; every seq it reported as
//! returned by `append`, and not acknowledged as far as the reopened
//! journal knows, must be present and intact after reopening. With records
//! kept in memory (`JournalConfig::memory_bytes`) the reopened journal must
//! instead ask for a resync whose dirty regions cover every such write, and
//! never hand out a seq again.
//!
//! The test binary re-executes itself (`current_exe() --exact writer_child`)
//! with `RHA_JOURNAL_CRASH_DIR` set; that child appends forever and prints
//! `SEQ <seq> <round> <counter>` after each append returns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use rha_core::journal::{Appended, FsyncPolicy, Journal, JournalConfig, Payload};

const DIR_ENV: &str = "RHA_JOURNAL_CRASH_DIR";
const ROUND_ENV: &str = "RHA_JOURNAL_CRASH_ROUND";
/// Set for the child of `kill_9_in_memory_mode_resyncs_and_reuses_no_seq`.
const MEMORY_ENV: &str = "RHA_JOURNAL_CRASH_MEMORY";
const VOLUME_SIZE: u64 = 64 << 20;

fn config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 64 << 10,
        max_bytes: 1 << 30,
        fsync: FsyncPolicy::Always,
        region_bytes: 1 << 20,
        ..JournalConfig::default()
    }
}

/// Records in memory, spilled past 256 KiB (so both kinds are lost or kept).
fn memory_config() -> JournalConfig {
    JournalConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(20)),
        memory_bytes: 256 << 10,
        ..config()
    }
}

fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// The write number `counter` of writer round `round`: (offset, data).
fn write_for(round: u64, counter: u64) -> (u64, Vec<u8>) {
    let len = 1 + (counter * 977 + round * 131) % 3000;
    let offset = (counter * 4096 + round * 65536) % (VOLUME_SIZE - 4096);
    let data = (0..len)
        .map(|i| (i ^ counter.wrapping_mul(0x9e37) ^ round) as u8)
        .collect();
    (offset, data)
}

/// Not a test on its own: the writer half of `kill_9_loses_no_returned_record`.
#[test]
fn writer_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return; // run directly by the test harness: nothing to do
    };
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let config = match std::env::var(MEMORY_ENV) {
        Ok(_) => memory_config(),
        Err(_) => config(),
    };
    let (journal, _) = Journal::open(&dir, config, &[VOLUME_SIZE]).unwrap();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for counter in 0.. {
        let (offset, data) = write_for(round, counter);
        match journal.append(0, offset, &data).unwrap() {
            Appended::Logged(seq) => writeln!(out, "SEQ {seq} {round} {counter}").unwrap(),
            Appended::Overflowed => panic!("unexpected overflow"),
        }
        out.flush().unwrap();
    }
}

/// Runs the writer child for `round` (in memory mode if `memory`), kills
/// it with SIGKILL at a random moment, and returns the `(seq, round,
/// counter)` of every append it reported as returned.
fn run_and_kill(dir: &std::path::Path, round: u64, memory: bool) -> Vec<(u64, u64, u64)> {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args(["writer_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(ROUND_ENV, round.to_string());
    if memory {
        cmd.env(MEMORY_ENV, "1");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // Only complete lines: each is printed after `append` returned.
            let Some(body) = line.strip_suffix('\n') else {
                break;
            };
            let mut it = body.split_whitespace();
            if it.next() != Some("SEQ") {
                continue;
            }
            let nums: Vec<u64> = it.map(|x| x.parse().unwrap()).collect();
            assert_eq!(nums.len(), 3, "bad line {body:?}");
            seen.push((nums[0], nums[1], nums[2]));
            if seen.len() == 1 {
                let _ = first_tx.send(());
            }
        }
        seen
    });
    if round % 2 == 0 {
        // Let the writer get going, then kill it in the middle of appends.
        first_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer child printed nothing within 60 s");
        std::thread::sleep(Duration::from_millis(random() % 300));
    } else {
        // Kill at any moment, possibly while it is still opening the journal.
        std::thread::sleep(Duration::from_millis(random() % 400));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let seen = reader.join().unwrap();
    eprintln!(
        "round {round}: {} appends returned before SIGKILL",
        seen.len()
    );
    seen
}

#[test]
fn kill_9_loses_no_returned_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected: Vec<(u64, u64, u64)> = Vec::new();
    let mut acked = 0;
    for round in 0..6u64 {
        let seen = run_and_kill(dir.path(), round, false);
        expected.extend(seen.iter().copied());

        let (journal, recovery) = Journal::open(dir.path(), config(), &[VOLUME_SIZE]).unwrap();
        assert!(!recovery.needs_resync, "round {round}: {recovery:?}");
        // An acknowledgement that deleted no segment may not have reached
        // the state file before the crash (ACK_PERSIST_EVERY): the journal
        // then believes less acknowledged and keeps those records, so every
        // record after what it believes must be there.
        let durable_ack = journal.acknowledged();
        assert!(
            durable_ack <= acked,
            "round {round}: {durable_ack} > {acked}"
        );
        let acked_before = acked;
        acked = durable_ack;
        let mut records = Vec::new();
        let mut after = acked;
        loop {
            let batch = journal.read_after(after, 1 << 20).unwrap();
            let Some(last) = batch.last() else { break };
            after = last.seq;
            records.extend(batch);
        }
        for w in records.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1, "round {round}: seqs not contiguous");
        }
        for &(seq, r, counter) in expected.iter().filter(|e| e.0 > acked) {
            let rec = records
                .iter()
                .find(|x| x.seq == seq)
                .unwrap_or_else(|| panic!("round {round}: returned seq {seq} is missing"));
            let (offset, data) = write_for(r, counter);
            assert_eq!(rec.offset, offset, "seq {seq}");
            assert_eq!(rec.payload, Payload::Data(data.into()), "seq {seq}");
        }
        let last = expected.last().map_or(0, |e| e.0);
        assert!(journal.last_seq() >= last);
        // Replication resumes from `acknowledged()`: acknowledge half of it
        // (never less than what was acknowledged before the crash).
        acked = acked_before.max(acked + (journal.last_seq() - acked) / 2);
        journal.acknowledge(acked).unwrap();
        drop(journal); // unclean on purpose
    }
    assert!(
        expected.len() >= 3,
        "the writer made too little progress: {}",
        expected.len()
    );
    // Seqs are strictly increasing across rounds.
    for w in expected.windows(2) {
        assert!(w[1].0 > w[0].0, "seq {} then {}", w[0].0, w[1].0);
    }
}

#[test]
fn kill_9_in_memory_mode_resyncs_and_reuses_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    // Every write returned and not yet covered by a completed resync.
    let mut pending: Vec<(u64, u64, u64)> = Vec::new();
    let mut highest = 0u64;
    let mut appended = 0usize;
    for round in 0..6u64 {
        let seen = run_and_kill(dir.path(), round, true);
        appended += seen.len();
        for &(seq, _, _) in &seen {
            assert!(seq > highest, "round {round}: seq {seq} handed out again");
            highest = seq;
        }
        pending.extend(seen.iter().copied());

        let (journal, recovery) =
            Journal::open(dir.path(), memory_config(), &[VOLUME_SIZE]).unwrap();
        if !seen.is_empty() {
            assert!(recovery.needs_resync, "round {round}: {recovery:?}");
        }
        // The change log covers every write whose record may be lost.
        let dirty = journal.dirty_ranges(0);
        for &(seq, r, counter) in &pending {
            let (offset, data) = write_for(r, counter);
            let end = offset + data.len() as u64;
            assert!(
                dirty.iter().any(|d| d.start <= offset && end <= d.end),
                "round {round}: seq {seq} at {offset}..{end} is not in {dirty:?}"
            );
        }
        // What records survived (those spilled to segments) are intact.
        let mut after = journal.acknowledged();
        loop {
            let batch = match journal.read_after(after, 1 << 20) {
                Ok(b) => b,
                Err(rha_core::journal::JournalError::Gap { .. }) => break,
                Err(e) => panic!("round {round}: {e}"),
            };
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for rec in batch {
                // A record whose line the child had not printed (or whose
                // line shared the harness's) cannot be checked.
                let Some(&(_, r, counter)) = pending.iter().find(|p| p.0 == rec.seq) else {
                    continue;
                };
                let (offset, data) = write_for(r, counter);
                assert_eq!(rec.offset, offset);
                assert_eq!(rec.payload, Payload::Data(data.into()));
            }
        }
        assert!(journal.last_seq() >= highest, "round {round}");
        // The resync a replicator would run: everything so far is covered.
        let base = journal.resync_started().unwrap();
        journal.resync_completed(base).unwrap();
        pending.clear();
        drop(journal); // unclean on purpose
    }
    assert!(
        appended >= 3,
        "the writer made too little progress: {appended}"
    );
}
