//! `rha sync --dirty-bitmap NAME SRC DST`: an incremental synchronisation of
//! the regions a QEMU dirty bitmap marks, read from a `qemu-nbd -B NAME`
//! export, into a replica image that holds the state of when the bitmap was
//! added or last cleared; then, on request, the bitmap is cleared.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rha_core::events::Events;
use rha_core::sink::{MemSink, ReplicaState};
use rha_core::sync::{synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha_core::volume::{open_volume, Volume};
use rha_transport::qemu_bitmap::{BitmapReset, DirtyBitmapSource, NbdAddress};

/// What `rha sync --dirty-bitmap` was asked to do.
#[derive(Debug)]
pub struct BitmapSync {
    /// The dirty bitmap's name (as exported by `qemu-nbd -B NAME`).
    pub bitmap: String,
    /// The NBD export: `nbd://HOST:PORT/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`.
    pub src: PathBuf,
    /// The replica image (raw or fixed VHD) holding the previous state.
    pub dst: PathBuf,
    /// How the dirty regions are compared or copied.
    pub method: SyncMethod,
    /// Compare everything, not only the dirty regions.
    pub force_full: bool,
    /// How to clear the bitmap after success, if at all.
    pub reset: Option<BitmapReset>,
}

/// Runs the synchronisation, clears the bitmap when asked, and prints one
/// JSON line: the synchronisation report plus `dirty_bitmap`, `dirty_bytes`
/// (what the bitmap marked) and `bitmap_cleared`.
pub fn run(args: BitmapSync) -> Result<ExitCode> {
    let Some(src) = args.src.to_str() else {
        bail!("{}: not an NBD address", args.src.display());
    };
    let address = NbdAddress::parse(src)?;
    if !args.dst.exists() {
        bail!(
            "{}: the replica must exist and hold the image as it was when bitmap {} was added or last cleared \
             (for example `qemu-img convert -O raw IMAGE {}` before `qemu-img bitmap --add --enable IMAGE {}`)",
            args.dst.display(),
            args.bitmap,
            args.dst.display(),
            args.bitmap
        );
    }
    let replica: Arc<dyn Volume> = Arc::from(
        open_volume(&args.dst).with_context(|| format!("opening {}", args.dst.display()))?,
    );
    if let Some(reset) = &args.reset {
        // Before the walk: on a running VM, writes from now on are recorded
        // in a second bitmap that the reset merges back.
        reset.begin(&args.bitmap)?;
    }
    let source = DirtyBitmapSource::open(&address, &args.bitmap)?;
    // The replica is in step with the bitmap's starting point: only what the
    // bitmap marks needs to be compared or copied.
    let sink = MemSink::with_state(
        vec![replica],
        ReplicaState {
            applied: 0,
            consistent: true,
            synced: true,
        },
    );
    let mut options = SyncOptions::new(args.method);
    options.force_full_verification = args.force_full;
    let report = synchronise(
        &source,
        &mut LocalPeer::new(&sink),
        &options,
        &Events::new(),
    )
    .with_context(|| format!("synchronising {address} into {}", args.dst.display()))?;
    let dirty_bytes = source.dirty_bytes();
    // The replica's writes are durable (end_sync flushed them); only now may
    // the bitmap be cleared, and only after the export is closed.
    let proof = source.finish()?;
    let cleared = match &args.reset {
        Some(reset) => {
            reset.reset(&proof)?;
            true
        }
        None => false,
    };
    let mut line = serde_json::to_value(&report)?;
    if let Some(map) = line.as_object_mut() {
        map.insert("dirty_bitmap".into(), args.bitmap.into());
        map.insert("dirty_bytes".into(), dirty_bytes.into());
        map.insert("bitmap_cleared".into(), cleared.into());
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
