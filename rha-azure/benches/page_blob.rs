//! Throughput of synchronising an image into a page blob on Azurite, next to
//! plain `put pages` loops of the same bytes, in the same run.
//!
//! ```sh
//! cargo bench -p rha-azure --bench page_blob            # 1 GiB
//! cargo bench -p rha-azure --bench page_blob -- 256     # another size, in MiB
//! ```
//!
//! Azurite is started by the benchmark (installed into `target/azurite` when
//! missing), on 127.0.0.1, in memory. The image is random data (nothing to
//! skip, so every run writes exactly the same bytes), read into the page
//! cache first. Measured, one after the other, each into a new blob:
//!
//! 1. `synchronise` (volume-level) through a `LocalPeer` over a
//!    `PageBlobSink`: the whole rha path, 4 MiB page writes, 8 in flight;
//! 2. a plain loop: read 4 MiB, `put_page`, wait, next (one in flight);
//! 3. the same loop with 8 `put_page` in flight;
//! 4. a block-level resynchronisation of the unchanged image with full
//!    verification: reads the whole page blob back (ranged GETs) and hashes it
//!    (first round only).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/page_blob_support/mod.rs"]
mod page_blob_support;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use azure_storage::StorageCredentials;
use azure_storage_blobs::prelude::{BA512Range, BlobClient, ClientBuilder};
use futures::StreamExt;
use rha_azure::{PageBlobSink, SinkConfig};
use rha_core::events::Events;
use rha_core::sink::ReplicaSink;
use rha_core::source::StaticSource;
use rha_core::sync::{synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha_core::volume::{FileVolume, Volume};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;
/// Interleaved rounds of the three copies; the medians are reported.
const ROUNDS: usize = 3;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn make_image(path: &std::path::Path, size: u64) -> FileVolume {
    let v = FileVolume::create(path, size).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < size {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = (size - at).min(CHUNK) as usize;
        v.write_at(at, &buf[..n]).unwrap();
        at += n as u64;
    }
    v.flush().unwrap();
    v
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

async fn plain_loop(blob: &BlobClient, file: &std::fs::File, size: u64, in_flight: usize) {
    blob.put_page_blob(u128::from(size))
        .into_future()
        .await
        .unwrap();
    let offsets: Vec<u64> = (0..size.div_ceil(CHUNK)).map(|i| i * CHUNK).collect();
    futures::stream::iter(offsets)
        .map(|at| async move {
            let n = (size - at).min(CHUNK);
            let mut buf = vec![0u8; n as usize];
            file.read_exact_at(&mut buf, at).unwrap();
            blob.put_page(
                BA512Range::new(at, at + n - 1).unwrap(),
                bytes::Bytes::from(buf),
            )
            .into_future()
            .await
            .unwrap();
        })
        .buffer_unordered(in_flight)
        .for_each(|()| async {})
        .await;
}

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the size in MiB.
    let mib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1024);
    let size = mib * MIB;
    let az = page_blob_support::azurite();
    let work = page_blob_support::target_dir().join("bench-page-blob");
    std::fs::create_dir_all(&work).unwrap();
    let dir = tempfile::tempdir_in(&work).unwrap();
    let path = dir.path().join("image.img");
    eprintln!("making a {mib} MiB random image in {}", path.display());
    let image = Arc::new(make_image(&path, size));
    // Into the page cache.
    let file = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(CHUNK) as usize;
        file.read_exact_at(&mut buf[..n], at).unwrap();
        at += n as u64;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_of = |container: &str| {
        ClientBuilder::with_location(
            azure_storage::CloudLocation::Emulator {
                address: "127.0.0.1".into(),
                port: az.port,
            },
            StorageCredentials::emulator(),
        )
        .container_client(container)
    };
    let rss_before = peak_rss_mib();
    let (mut rha, mut plain1, mut plain8) = (Vec::new(), Vec::new(), Vec::new());
    let (mut requests, mut retries) = (0, 0);
    let mut block_s = 0.0;
    let mut rss_rha = 0.0;
    for round in 0..ROUNDS {
        // 1. rha: synchronise into a PageBlobSink, in a container of its own
        // (deleted afterwards, so Azurite's memory holds one image at a time).
        let store = page_blob_support::store("bench");
        let sink =
            PageBlobSink::create(&store, &SinkConfig::new("bench", "bench"), &[size]).unwrap();
        let source = StaticSource::new(vec![image.clone() as Arc<dyn Volume>]);
        let events = Events::new();
        let mut peer = LocalPeer::new(&sink);
        let t = Instant::now();
        let report = synchronise(
            &source,
            &mut peer,
            &SyncOptions::new(SyncMethod::Volume),
            &events,
        )
        .unwrap();
        rha.push(t.elapsed().as_secs_f64());
        assert!(report.consistent);
        let stats = store.stats();
        requests = stats.put_pages;
        retries += stats.retries;
        if round == 0 {
            // 4. Block-level, unchanged, on the blob just written.
            let mut opts = SyncOptions::new(SyncMethod::Block);
            opts.force_full_verification = true;
            let mut peer = LocalPeer::new(&sink);
            let t = Instant::now();
            let report_block = synchronise(&source, &mut peer, &opts, &events).unwrap();
            block_s = t.elapsed().as_secs_f64();
            assert_eq!(report_block.blocks_changed, 0);
        }
        // Spot check: the replica holds the image.
        let mut a = vec![0u8; MIB as usize];
        let mut b = vec![0u8; MIB as usize];
        for k in [0, size / 2, size - MIB] {
            image.read_at(k, &mut a).unwrap();
            sink.volume(0).unwrap().read_at(k, &mut b).unwrap();
            assert!(a == b, "replica differs at {k}");
        }
        drop(peer);
        rss_rha = f64::max(rss_rha, peak_rss_mib());
        drop(sink);
        let container = client_of(store.container_name());
        rt.block_on(container.delete().into_future()).unwrap();

        // 2 and 3. Plain put-pages loops with the SDK, into new blobs.
        let container_name = page_blob_support::unique_container("plain");
        let container = client_of(&container_name);
        rt.block_on(container.create().into_future()).unwrap();
        for (name, in_flight, into) in [
            ("plain-1.vhd", 1usize, &mut plain1),
            ("plain-8.vhd", 8, &mut plain8),
        ] {
            let blob = container.blob_client(name);
            let t = Instant::now();
            rt.block_on(plain_loop(&blob, &file, size, in_flight));
            into.push(t.elapsed().as_secs_f64());
            rt.block_on(blob.delete().into_future()).unwrap();
        }
        rt.block_on(container.delete().into_future()).unwrap();
        eprintln!(
            "round {}: rha {:.2} s, plain (1 in flight) {:.2} s, plain (8 in flight) {:.2} s",
            round + 1,
            rha[round],
            plain1[round],
            plain8[round]
        );
    }
    let (sync_s, p1, p8) = (median(&mut rha), median(&mut plain1), median(&mut plain8));

    println!(
        "page blob on Azurite (127.0.0.1, in memory), {mib} MiB random image from the page cache, \
         median of {ROUNDS} interleaved rounds:"
    );
    println!(
        "  rha synchronise (volume-level, PageBlobSink, 4 MiB puts, 8 in flight): {:.2} s = {:.0} MB/s \
         ({requests} page writes a round, {retries} retries in all)",
        sync_s,
        mb_s(size, sync_s),
    );
    for (n, s) in [(1, p1), (8, p8)] {
        println!(
            "  plain put_page loop, 4 MiB, {n} in flight:                             {:.2} s = {:.0} MB/s",
            s,
            mb_s(size, s)
        );
    }
    println!(
        "  rha / plain with 8 in flight: {:.0}%; rha / plain with 1 in flight: {:.0}%",
        100.0 * p8 / sync_s,
        100.0 * p1 / sync_s
    );
    println!(
        "  rha block-level resync of the unchanged image (reads the blob back, hashes; round 1): {:.2} s = {:.0} MB/s",
        block_s,
        mb_s(size, block_s)
    );
    println!(
        "  peak RSS of this process: {rss_before:.0} MiB before the runs, {rss_rha:.0} MiB after the rha runs"
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
