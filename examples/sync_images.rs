//! Synchronises two image files, as `rha sync` does, and prints one JSON line of statistics.
//!
//! ```text
//! cargo run --release --example sync_images -- --method block|volume [--force-full] SRC DST
//! ```
//!
//! SRC and DST are raw images or fixed VHDs. DST is created (sparse, raw)
//! when missing, at SRC's size. Peak memory is read from the kernel
//! (`VmHWM` of /proc/self/status) after the run.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rha::core::events::Events;
use rha::core::sink::MemSink;
use rha::core::source::StaticSource;
use rha::core::sync::{synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha::core::volume::{open_volume, FileVolume, Volume};

fn main() -> Result<()> {
    let mut method = SyncMethod::Block;
    let mut force_full = false;
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--method" => {
                let m = args
                    .next()
                    .context("--method needs a value: block or volume")?;
                method = m.parse().map_err(anyhow::Error::msg)?;
            }
            "--force-full" => force_full = true,
            "-h" | "--help" => {
                println!("usage: sync_images --method block|volume [--force-full] SRC DST");
                return Ok(());
            }
            s if s.starts_with('-') => bail!("unknown option {s}; see --help"),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let [src, dst] = paths.as_slice() else {
        bail!("give exactly two images: SRC DST (see --help)")
    };
    let master: Arc<dyn Volume> =
        Arc::from(open_volume(src).with_context(|| format!("opening {}", src.display()))?);
    let replica: Arc<dyn Volume> = if dst.exists() {
        Arc::from(open_volume(dst).with_context(|| format!("opening {}", dst.display()))?)
    } else {
        Arc::new(
            FileVolume::create(dst, master.size())
                .with_context(|| format!("creating {}", dst.display()))?,
        )
    };
    let source = StaticSource::new(vec![master.clone()]);
    let sink = MemSink::with_volumes(vec![replica]);
    let mut peer = LocalPeer::new(&sink);
    let mut options = SyncOptions::new(method);
    options.force_full_verification = force_full;
    let report = synchronise(&source, &mut peer, &options, &Events::new())?;
    let line = serde_json::json!({
        "method": report.method,
        "bytes_sent": report.bytes_sent,
        "bytes_received": report.bytes_received,
        "blocks_changed": report.blocks_changed,
        "changed_bytes": report.changed_bytes,
        "bytes_scanned": report.bytes_scanned,
        "volume_bytes": master.size(),
        "seconds": report.seconds,
        "peak_rss_bytes": peak_rss_bytes(),
    });
    println!("{line}");
    Ok(())
}

/// The process's peak resident set size, from the kernel.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
