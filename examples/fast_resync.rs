//! Measures the fast-resync path: after a master restart with changes the
//! journal could not hold, compare only what the master's change log marks,
//! against a full block-level compare of the same state.
//!
//! ```text
//! cargo run --release --example fast_resync -- MASTER_IMAGE WORK_DIR
//! ```
//!
//! MASTER_IMAGE is copied into WORK_DIR (it is not modified). Changes: 1% of
//! the 4 KiB blocks at random plus one 16 MiB region, written through the
//! write splitter with a journal bound of 8 MiB, so the journal overflows and
//! the change log carries the resync. Prints one JSON line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rha::core::events::Events;
use rha::core::journal::{FsyncPolicy, JournalConfig};
use rha::core::sink::MemSink;
use rha::core::source::{StaticSource, TrackedSet};
use rha::core::sync::{synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha::core::volume::{FileVolume, Volume};

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [image, work] = args.as_slice() else {
        bail!("usage: fast_resync MASTER_IMAGE WORK_DIR")
    };
    std::fs::create_dir_all(work)?;
    let master_path = work.join("fr-master.img");
    let replica_path = work.join("fr-replica.img");
    let full_path = work.join("fr-replica-full.img");
    for p in [&master_path, &replica_path] {
        let _ = std::fs::remove_file(p);
        std::fs::copy(image, p)
            .with_context(|| format!("copying {} to {}", image.display(), p.display()))?;
    }
    let journal_dir = work.join("fr-journal");
    let _ = std::fs::remove_dir_all(&journal_dir);
    let master: Arc<dyn Volume> = Arc::new(FileVolume::open(&master_path)?);
    let size = master.size();
    let config = JournalConfig {
        max_bytes: 8 << 20,
        fsync: FsyncPolicy::Never,
        // 4 KiB regions (the default is 1 MiB): the figures in BENCHMARKS.md
        // compare a resync of 1% random blocks at block granularity.
        region_bytes: 4096,
        ..Default::default()
    };

    // The replica is in sync with the master: record that, as a first synchronisation would.
    let replica: Arc<dyn Volume> = Arc::new(FileVolume::open(&replica_path)?);
    let sink = MemSink::with_volumes(vec![replica.clone()]);
    let events = Events::new();
    {
        let (set, _) = TrackedSet::open(
            &journal_dir,
            config.clone(),
            vec![master.clone()],
            events.clone(),
        )?;
        let mut peer = LocalPeer::new(&sink);
        synchronise(
            &set,
            &mut peer,
            &SyncOptions::new(SyncMethod::Block),
            &events,
        )?;
        // Writes through the write splitter: 1% of the blocks at random and one 16 MiB region.
        let v = set.volume(0).context("volume 0")?;
        let blocks = size / 4096;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = [0u8; 4096];
        for _ in 0..blocks / 100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.fill(x as u8 | 1);
            v.write_at((x % blocks) * 4096, &buf)?;
        }
        let region = (size / 2) / (1 << 20) * (1 << 20);
        v.write_at(region, &vec![0x5A; 16 << 20])?;
        v.flush()?;
        set.journal().sync()?;
        // The master "restarts": the set is dropped without a clean close.
    }
    std::fs::copy(&replica_path, &full_path)?;
    // Write back the copies first, so that the journal's fsyncs below do not
    // wait behind gigabytes of unrelated writeback.
    let _ = std::process::Command::new("sync").status();

    // After the restart: resync with the change log ...
    let (set, recovery) =
        TrackedSet::open(&journal_dir, config, vec![master.clone()], events.clone())?;
    let t = Instant::now();
    let mut peer = LocalPeer::new(&sink);
    let fast = synchronise(
        &set,
        &mut peer,
        &SyncOptions::new(SyncMethod::Block),
        &events,
    )?;
    let fast_s = t.elapsed().as_secs_f64();

    // ... and the same state compared in full.
    let full_replica: Arc<dyn Volume> = Arc::new(FileVolume::open(&full_path)?);
    let full_sink = MemSink::with_volumes(vec![full_replica]);
    let t = Instant::now();
    let mut peer = LocalPeer::new(&full_sink);
    let mut options = SyncOptions::new(SyncMethod::Block);
    options.force_full_verification = true;
    let full = synchronise(
        &StaticSource::new(vec![master.clone()]),
        &mut peer,
        &options,
        &events,
    )?;
    let full_s = t.elapsed().as_secs_f64();

    println!(
        "{}",
        serde_json::json!({
            "volume_bytes": size,
            "journal_overflowed": recovery.needs_resync || fast.used_change_log,
            "fast_used_change_log": fast.used_change_log,
            "fast_seconds": fast_s,
            "fast_bytes_scanned": fast.bytes_scanned,
            "fast_bytes_sent": fast.bytes_sent,
            "fast_blocks_changed": fast.blocks_changed,
            "full_seconds": full_s,
            "full_bytes_scanned": full.bytes_scanned,
            "full_blocks_changed": full.blocks_changed,
            "ratio": fast_s / full_s,
        })
    );
    for p in [&master_path, &replica_path, &full_path] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&journal_dir);
    Ok(())
}
