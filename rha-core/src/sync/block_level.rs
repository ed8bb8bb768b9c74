//! Block-level synchronisation: compare hash trees top-down, send only the blocks that differ.

use std::ops::Range;

use super::volume_level::send_chunk;
use super::{Copied, Progress, SyncError, SyncPeer};
use crate::hash::{level_span, Node, Subtree, TOP_LEVEL};
use crate::volume::{Volume, BLOCK_SIZE};
use crate::VolumeId;

/// Bytes of master data whose trees are held at once (bounds memory: the
/// hashes of 1 GiB take about 4.3 MiB).
const GROUP_BYTES: u64 = 1 << 30;
/// Most bytes read at once when sending differing blocks.
const SEND_CHUNK: u64 = 1 << 20;

/// Compares `ranges` of `master` with the replica and sends what differs.
pub(crate) fn run(
    id: VolumeId,
    master: &dyn Volume,
    peer: &mut dyn SyncPeer,
    ranges: &[Range<u64>],
    progress: &mut Progress<'_>,
) -> Result<Copied, SyncError> {
    let size = master.size();
    let (single, roots): (Vec<Node>, Vec<Node>) =
        roots(size, ranges).into_iter().partition(|n| n.level == 0);
    let mut copied = Copied::default();
    // A dirty range of one block: the change log pinpoints a written block,
    // so it is sent without a comparison (which would cost both sides a read
    // and a hash to save only an idempotent rewrite).
    let leaves: Vec<u64> = single.iter().map(|n| n.index).collect();
    send_leaves(id, master, peer, &leaves, &mut copied)?;
    let single_bytes: u64 = single
        .iter()
        .map(|n| n.span(size).end - n.span(size).start)
        .sum();
    copied.bytes_scanned += single_bytes;
    progress.advance(single_bytes);
    for group in groups(&roots) {
        // The master's trees are computed on another thread while the
        // replica computes its own answer to the first question.
        let (local, remote) = std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                group
                    .iter()
                    .map(|&r| Subtree::compute(master, r))
                    .collect::<Result<Vec<_>, _>>()
            });
            let remote = peer.hashes(id, group);
            let local = handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (local, remote)
        });
        let (local, remote) = (local?, remote?);
        check_reply(group.len(), remote.len())?;
        let group_bytes: u64 = group
            .iter()
            .map(|n| n.span(size).end - n.span(size).start)
            .sum();
        let mut frontier: Vec<(usize, Node)> = group
            .iter()
            .enumerate()
            .filter(|(i, _)| local[*i].root_hash() != remote[*i])
            .map(|(i, &n)| (i, n))
            .collect();
        let mut leaves: Vec<u64> = Vec::new();
        loop {
            let (done, inner): (Vec<_>, Vec<_>) =
                frontier.into_iter().partition(|(_, n)| n.level == 0);
            leaves.extend(done.iter().map(|(_, n)| n.index));
            if inner.is_empty() {
                break;
            }
            let children: Vec<(usize, Node)> = inner
                .iter()
                .flat_map(|&(t, n)| n.children(size).map(move |c| (t, c)).collect::<Vec<_>>())
                .collect();
            let nodes: Vec<Node> = children.iter().map(|(_, c)| *c).collect();
            let remote = peer.hashes(id, &nodes)?;
            check_reply(nodes.len(), remote.len())?;
            frontier = children
                .into_iter()
                .zip(remote)
                .filter(|((t, c), h)| local[*t].get(*c) != Some(*h))
                .map(|(tc, _)| tc)
                .collect();
        }
        drop(local);
        leaves.sort_unstable();
        send_leaves(id, master, peer, &leaves, &mut copied)?;
        copied.bytes_scanned += group_bytes;
        progress.advance(group_bytes);
    }
    Ok(copied)
}

fn check_reply(asked: usize, got: usize) -> Result<(), SyncError> {
    if asked == got {
        Ok(())
    } else {
        Err(SyncError::BadReply { asked, got })
    }
}

/// The fewest tree nodes that cover `ranges` (sorted, not overlapping) of a
/// volume of `size` bytes: the whole volume is its top-level nodes; a dirty
/// range is covered by the largest aligned nodes that fit in it, so scattered
/// 4 KiB changes cost a leaf each and a 16 MiB change one node.
fn roots(size: u64, ranges: &[Range<u64>]) -> Vec<Node> {
    let block = BLOCK_SIZE as u64;
    if ranges.len() == 1 && ranges[0] == (0..size) {
        return (0..Node::count(TOP_LEVEL, size))
            .map(|index| Node {
                level: TOP_LEVEL,
                index,
            })
            .collect();
    }
    let mut out: Vec<Node> = Vec::new();
    for r in ranges {
        let mut at = r.start / block * block;
        let end = r.end.min(size).div_ceil(block) * block;
        while at < end {
            let level = (1..=TOP_LEVEL)
                .rev()
                .find(|&l| at % level_span(l) == 0 && at + level_span(l) <= end)
                .unwrap_or(0);
            let node = Node::containing(level, at);
            // Ranges that meet inside a block must not yield that block twice.
            if out.last() != Some(&node) {
                out.push(node);
            }
            at += level_span(level);
        }
    }
    out
}

/// Splits `roots` into groups of at most [`GROUP_BYTES`] of data.
fn groups(roots: &[Node]) -> Vec<&[Node]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, n) in roots.iter().enumerate() {
        let span = level_span(n.level);
        if bytes + span > GROUP_BYTES && i > start {
            out.push(&roots[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += span;
    }
    if start < roots.len() {
        out.push(&roots[start..]);
    }
    out
}

/// Reads the differing blocks (sorted leaf indices) from the master and sends
/// them, coalescing neighbours; zero blocks become zero commands.
fn send_leaves(
    id: VolumeId,
    master: &dyn Volume,
    peer: &mut dyn SyncPeer,
    leaves: &[u64],
    copied: &mut Copied,
) -> Result<(), SyncError> {
    let size = master.size();
    let block = BLOCK_SIZE as u64;
    let mut buf = Vec::new();
    let mut i = 0;
    while i < leaves.len() {
        let mut j = i + 1;
        while j < leaves.len()
            && leaves[j] == leaves[j - 1] + 1
            && (leaves[j] - leaves[i] + 1) * block <= SEND_CHUNK
        {
            j += 1;
        }
        let start = leaves[i] * block;
        let end = ((leaves[j - 1] + 1) * block).min(size);
        buf.resize((end - start) as usize, 0);
        master.read_at(start, &mut buf)?;
        let mut zero_run = None;
        send_chunk(id, peer, start, &buf, &mut zero_run)?;
        if let Some((s, n)) = zero_run {
            peer.zero(id, s, n)?;
        }
        copied.blocks_changed += (j - i) as u64;
        copied.changed_bytes += end - start;
        i = j;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn roots_cover_ranges_with_the_largest_aligned_nodes() {
        let mib = 1 << 20;
        let size = 1 << 30;
        let r = roots(
            size,
            &[
                0..mib,
                mib + 4096..mib + 8192,
                16 * mib..32 * mib + 5,
                40 * mib..40 * mib + 1,
            ],
        );
        let got: Vec<(u8, u64)> = r.iter().map(|n| (n.level, n.index)).collect();
        assert_eq!(
            got,
            vec![(2, 0), (0, 257), (3, 1), (0, 32 * 256), (0, 40 * 256)],
            "1 MiB node, a leaf, a 16 MiB node, the block holding byte 32 MiB, a leaf"
        );
        let whole = roots(size + 512, &[0..size + 512]);
        assert_eq!(whole.len(), 5);
        assert!(whole.iter().all(|n| n.level == TOP_LEVEL));
        let spans: u64 = r.iter().map(|n| level_span(n.level)).sum();
        assert_eq!(spans, mib + 4096 + 16 * mib + 4096 + 4096);
        assert_eq!(groups(&whole).len(), 2);
    }
}
