//! Volume-level synchronisation: stream every block, pipelined, no per-block round trip.

use std::ops::Range;
use std::sync::mpsc::{channel, sync_channel};

use super::{Copied, Progress, SyncError, SyncPeer};
use crate::volume::{is_zero, Volume, BLOCK_SIZE};
use crate::VolumeId;

/// Bytes read at once.
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the sender (bounds memory at `(DEPTH + 2) * CHUNK`).
const DEPTH: usize = 4;

/// Copies `ranges` of `master` to the replica: non-zero runs as writes, zero
/// runs as zero commands (holes). A reader thread keeps the disk busy while
/// this thread sends.
pub(crate) fn run(
    id: VolumeId,
    master: &dyn Volume,
    peer: &mut dyn SyncPeer,
    ranges: &[Range<u64>],
    progress: &mut Progress<'_>,
) -> Result<Copied, SyncError> {
    let mut copied = Copied::default();
    std::thread::scope(|scope| -> Result<(), SyncError> {
        let (full_tx, full_rx) = sync_channel::<Result<(u64, Vec<u8>), SyncError>>(DEPTH);
        let (empty_tx, empty_rx) = channel::<Vec<u8>>();
        scope.spawn(move || {
            for range in ranges {
                let mut at = range.start;
                while at < range.end {
                    let n = (CHUNK as u64).min(range.end - at) as usize;
                    let mut buf = empty_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
                    buf.resize(n, 0);
                    let item = master
                        .read_at(at, &mut buf)
                        .map(|()| (at, buf))
                        .map_err(SyncError::from);
                    let failed = item.is_err();
                    if full_tx.send(item).is_err() || failed {
                        return;
                    }
                    at += n as u64;
                }
            }
        });
        // A zero run may span chunks: it is sent once, when data follows or at the end.
        let mut zero_run: Option<(u64, u64)> = None;
        for item in full_rx {
            let (at, buf) = item?;
            let data = send_chunk(id, peer, at, &buf, &mut zero_run)?;
            copied.changed_bytes += data;
            copied.blocks_changed += data.div_ceil(BLOCK_SIZE as u64);
            copied.bytes_scanned += buf.len() as u64;
            progress.advance(buf.len() as u64);
            // The reader may be gone already; then the buffer is simply dropped.
            let _ = empty_tx.send(buf);
        }
        if let Some((start, len)) = zero_run {
            peer.zero(id, start, len)?;
        }
        Ok(())
    })?;
    Ok(copied)
}

/// Sends one chunk as runs of data; zero blocks extend `zero_run` (offset,
/// length), which is sent when data follows it. Returns the bytes of data sent.
pub(crate) fn send_chunk(
    id: VolumeId,
    peer: &mut dyn SyncPeer,
    at: u64,
    buf: &[u8],
    zero_run: &mut Option<(u64, u64)>,
) -> Result<u64, SyncError> {
    let mut data = 0;
    let mut run_start: Option<usize> = None;
    for (i, block) in buf.chunks(BLOCK_SIZE).enumerate() {
        let offset = at + (i * BLOCK_SIZE) as u64;
        if is_zero(block) {
            if let Some(start) = run_start.take() {
                peer.write(id, at + start as u64, &buf[start..i * BLOCK_SIZE])?;
                data += (i * BLOCK_SIZE - start) as u64;
            }
            *zero_run = match *zero_run {
                Some((s, n)) if s + n == offset => Some((s, n + block.len() as u64)),
                Some((s, n)) => {
                    peer.zero(id, s, n)?;
                    Some((offset, block.len() as u64))
                }
                None => Some((offset, block.len() as u64)),
            };
        } else {
            if let Some((s, n)) = zero_run.take() {
                peer.zero(id, s, n)?;
            }
            run_start.get_or_insert(i * BLOCK_SIZE);
        }
    }
    if let Some(start) = run_start {
        peer.write(id, at + start as u64, &buf[start..])?;
        data += (buf.len() - start) as u64;
    }
    Ok(data)
}
