//! The per-block hash tree that block-level synchronisation compares.
//!
//! Every 4 KiB block has a leaf hash (BLAKE3, truncated to 128 bits); every
//! [`FANOUT`] neighbouring nodes of one level are hashed together into a node
//! of the level above, up to level [`TOP_LEVEL`] whose nodes cover 256 MiB:
//!
//! ```text
//! level 4  ┌──────────────────── 256 MiB ────────────────────┐
//! level 3  ┌ 16 MiB ┐ …  (16 children each)
//! level 2  ┌ 1 MiB ┐ …
//! level 1  ┌ 64 KiB ┐ …
//! level 0  [4K][4K][4K] … leaf = BLAKE3(block)
//! ```
//!
//! Both sides compute the same tree over their own data; comparing from the
//! top down finds the differing blocks in a few round trips, and an unchanged
//! volume costs one hash per 256 MiB. Nodes at the end of a volume simply have
//! fewer children; a partial last block is hashed as it is.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use crate::volume::{is_zero, Volume, VolumeError, BLOCK_SIZE};
use crate::VolumeId;

/// Children per node.
pub const FANOUT: u64 = 16;
/// The highest level: its nodes cover `BLOCK_SIZE * FANOUT^4` = 256 MiB.
pub const TOP_LEVEL: u8 = 4;
/// Bytes of one hash.
pub const HASH_LEN: usize = 16;

/// A 128-bit BLAKE3 digest of a block or of a node's children.
pub type Hash = [u8; HASH_LEN];

/// BLAKE3 key of leaf hashes. Leaves and nodes use different keys, so a
/// block can never be mistaken for a list of child hashes (domain
/// separation without an extra byte that would break 4 KiB chunk alignment).
const LEAF_KEY: [u8; 32] = *b"rha block-tree leaf hash key v1.";
/// BLAKE3 key of node hashes.
const NODE_KEY: [u8; 32] = *b"rha block-tree node hash key v1.";

/// Bytes covered by one node of `level`.
pub const fn level_span(level: u8) -> u64 {
    BLOCK_SIZE as u64 * FANOUT.pow(level as u32)
}

/// A node of the hash tree of one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// 0 for a block, up to [`TOP_LEVEL`].
    pub level: u8,
    /// Position within the level.
    pub index: u64,
}

impl Node {
    /// The node of `level` that covers byte `offset`.
    pub fn containing(level: u8, offset: u64) -> Node {
        Node {
            level,
            index: offset / level_span(level),
        }
    }

    /// The bytes this node covers, clipped to a volume of `size` bytes.
    pub fn span(&self, size: u64) -> Range<u64> {
        let s = level_span(self.level);
        let start = self.index.saturating_mul(s).min(size);
        start..start.saturating_add(s).min(size)
    }

    /// Its children that hold at least one byte of a volume of `size` bytes.
    pub fn children(&self, size: u64) -> impl Iterator<Item = Node> + '_ {
        let level = self.level.saturating_sub(1);
        let first = self.index * FANOUT;
        let span = level_span(level);
        let count = if self.level == 0 { 0 } else { FANOUT };
        (first..first + count)
            .take_while(move |i| i.saturating_mul(span) < size)
            .map(move |index| Node { level, index })
    }

    /// True when `other` is this node or lies below it.
    pub fn covers(&self, other: &Node) -> bool {
        other.level <= self.level
            && other.index / FANOUT.pow(u32::from(self.level - other.level)) == self.index
    }

    /// The number of nodes of `level` a volume of `size` bytes has.
    pub fn count(level: u8, size: u64) -> u64 {
        size.div_ceil(level_span(level))
    }
}

/// The leaf hash of one block (of `BLOCK_SIZE` bytes, or fewer at a volume's end).
pub fn leaf_hash(block: &[u8]) -> Hash {
    if block.len() == BLOCK_SIZE && is_zero(block) {
        return zero_leaf();
    }
    digest(&LEAF_KEY, block)
}

/// The leaf hash of an all-zero full block.
pub fn zero_leaf() -> Hash {
    static ZERO: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| digest(&LEAF_KEY, &[0u8; BLOCK_SIZE]))
}

/// The hash of a node from its children's hashes.
pub fn node_hash(children: &[Hash]) -> Hash {
    digest(&NODE_KEY, children.as_flattened())
}

fn digest(key: &[u8; 32], bytes: &[u8]) -> Hash {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&blake3::keyed_hash(key, bytes).as_bytes()[..HASH_LEN]);
    out
}

/// Bytes read at once while hashing.
const READ_CHUNK: usize = 1 << 20;

/// Every hash of the subtree below one node, computed from a single read of its span.
#[derive(Debug, Clone)]
pub struct Subtree {
    root: Node,
    /// `levels[0]` holds the leaf hashes, `levels[root.level]` the root's.
    levels: Vec<Vec<Hash>>,
}

impl Subtree {
    /// Reads the bytes under `root` from `volume` and hashes them.
    pub fn compute(volume: &dyn Volume, root: Node) -> Result<Subtree, VolumeError> {
        Self::compute_sized(volume, volume.size(), root)
    }

    /// Like [`Subtree::compute`], for a volume seen as `size` bytes long (at
    /// most its real size): the replica of a smaller master is compared over
    /// the master's size only.
    pub fn compute_sized(
        volume: &dyn Volume,
        size: u64,
        root: Node,
    ) -> Result<Subtree, VolumeError> {
        let size = size.min(volume.size());
        let span = root.span(size);
        let mut leaves =
            Vec::with_capacity(((span.end - span.start) as usize).div_ceil(BLOCK_SIZE));
        let mut buf = vec![0u8; READ_CHUNK.min((span.end - span.start) as usize)];
        let mut at = span.start;
        while at < span.end {
            let n = (READ_CHUNK as u64).min(span.end - at) as usize;
            volume.read_at(at, &mut buf[..n])?;
            leaves.extend(buf[..n].chunks(BLOCK_SIZE).map(leaf_hash));
            at += n as u64;
        }
        Ok(Self::from_leaves(root, leaves))
    }

    /// Builds the subtree from its leaf hashes.
    pub fn from_leaves(root: Node, leaves: Vec<Hash>) -> Subtree {
        let mut levels = vec![leaves];
        for _ in 0..root.level {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let next: Vec<Hash> = below.chunks(FANOUT as usize).map(node_hash).collect();
            levels.push(next);
        }
        Subtree { root, levels }
    }

    /// The node this subtree hangs from.
    pub fn root(&self) -> Node {
        self.root
    }

    /// The root's hash.
    pub fn root_hash(&self) -> Hash {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_else(|| node_hash(&[]))
    }

    /// The hash of `node`, if it lies in this subtree and inside the volume.
    pub fn get(&self, node: Node) -> Option<Hash> {
        if !self.root.covers(&node) {
            return None;
        }
        let first = self.root.index * FANOUT.pow(u32::from(self.root.level - node.level));
        let i = usize::try_from(node.index - first).ok()?;
        self.levels.get(usize::from(node.level))?.get(i).copied()
    }

    /// Memory held, in bytes.
    pub fn footprint(&self) -> usize {
        self.levels.iter().map(|l| l.len() * HASH_LEN).sum()
    }
}

/// A bounded cache of subtrees, so that the replica side of a comparison
/// reads each block once however many levels the master asks about.
///
/// Subtrees are found by their root; a node is answered from the cached
/// subtree of itself or of one of its ancestors (at most [`TOP_LEVEL`] + 1
/// lookups). The oldest subtrees are dropped first once the budget is used.
#[derive(Debug)]
pub struct TreeCache {
    trees: HashMap<(VolumeId, Node), Subtree>,
    order: VecDeque<(VolumeId, Node)>,
    used: usize,
    budget: usize,
}

impl Default for TreeCache {
    fn default() -> Self {
        Self::new(16 << 20)
    }
}

impl TreeCache {
    /// A cache that holds at most about `budget` bytes of hashes.
    pub fn new(budget: usize) -> Self {
        TreeCache {
            trees: HashMap::new(),
            order: VecDeque::new(),
            used: 0,
            budget,
        }
    }

    /// The hash of every node in `nodes` of a volume seen as `size` bytes
    /// long, computing the subtrees that are not cached.
    pub fn hashes(
        &mut self,
        id: VolumeId,
        volume: &dyn Volume,
        size: u64,
        nodes: &[Node],
    ) -> Result<Vec<Hash>, VolumeError> {
        let mut out = Vec::with_capacity(nodes.len());
        for &node in nodes {
            let hash = match self.lookup(id, node) {
                Some(h) => h,
                None => {
                    let tree = Subtree::compute_sized(volume, size, node)?;
                    let h = tree.root_hash();
                    self.insert(id, tree);
                    h
                }
            };
            out.push(hash);
        }
        Ok(out)
    }

    fn lookup(&self, id: VolumeId, node: Node) -> Option<Hash> {
        (node.level..=TOP_LEVEL).find_map(|level| {
            let up = FANOUT.pow(u32::from(level - node.level));
            let root = Node {
                level,
                index: node.index / up,
            };
            self.trees.get(&(id, root)).and_then(|t| t.get(node))
        })
    }

    fn insert(&mut self, id: VolumeId, tree: Subtree) {
        let key = (id, tree.root());
        self.used += tree.footprint();
        if let Some(old) = self.trees.insert(key, tree) {
            self.used -= old.footprint();
        } else {
            self.order.push_back(key);
        }
        while self.used > self.budget && self.order.len() > 1 {
            if let Some(k) = self.order.pop_front() {
                if let Some(old) = self.trees.remove(&k) {
                    self.used -= old.footprint();
                }
            }
        }
    }

    /// Forgets everything (call after the volume was written).
    pub fn clear(&mut self) {
        self.trees.clear();
        self.order.clear();
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::MemVolume;

    #[test]
    fn spans_and_children_clip_to_the_volume() {
        let size = level_span(2) + 3 * 4096 + 512;
        let top = Node { level: 2, index: 1 };
        assert_eq!(top.span(size), level_span(2)..size);
        let kids: Vec<_> = top.children(size).collect();
        assert_eq!(kids.len(), 1);
        let leaves: Vec<_> = kids[0].children(size).collect();
        assert_eq!(leaves.len(), 4);
        assert_eq!(leaves[3].span(size).end - leaves[3].span(size).start, 512);
        assert!(top.covers(&leaves[2]));
        assert!(!leaves[2].covers(&top));
        assert_eq!(Node::count(0, size), 256 + 4);
    }

    #[test]
    fn subtree_matches_a_direct_computation_and_detects_one_byte() {
        let size = 3 * level_span(1) + 4096 * 2 + 1024;
        let v = MemVolume::new(size).unwrap();
        v.write_at(5000, b"x").unwrap();
        let root = Node { level: 2, index: 0 };
        let t = Subtree::compute(&v, root).unwrap();
        let mut data = vec![0u8; size as usize];
        v.read_at(0, &mut data).unwrap();
        let leaves: Vec<Hash> = data.chunks(BLOCK_SIZE).map(leaf_hash).collect();
        assert_eq!(t.get(Node { level: 0, index: 1 }), Some(leaves[1]));
        let l1: Vec<Hash> = leaves.chunks(16).map(node_hash).collect();
        assert_eq!(t.root_hash(), node_hash(&l1));

        let v2 = MemVolume::new(size).unwrap();
        let t2 = Subtree::compute(&v2, root).unwrap();
        assert_ne!(t.root_hash(), t2.root_hash());
        assert_eq!(t2.get(Node { level: 0, index: 0 }), Some(zero_leaf()));
        assert_eq!(
            t.get(Node { level: 1, index: 1 }),
            t2.get(Node { level: 1, index: 1 })
        );
    }

    #[test]
    fn cache_answers_children_without_rereading() {
        let v = MemVolume::new(level_span(2)).unwrap();
        let mut c = TreeCache::new(1 << 20);
        let root = Node { level: 2, index: 0 };
        let r = c.hashes(0, &v, v.size(), &[root]).unwrap();
        v.write_at(0, b"changed after caching").unwrap();
        let kids: Vec<Node> = root.children(v.size()).collect();
        let k = c.hashes(0, &v, v.size(), &kids).unwrap();
        assert_eq!(node_hash(&k), r[0], "children come from the cached subtree");
        c.clear();
        assert_ne!(c.hashes(0, &v, v.size(), &[root]).unwrap(), r);
    }

    #[test]
    fn cache_stays_within_its_budget() {
        let v = MemVolume::new(level_span(2)).unwrap();
        let leaf_tree = std::mem::size_of::<Hash>();
        let mut c = TreeCache::new(10 * leaf_tree);
        let leaves: Vec<Node> = (0..100).map(|index| Node { level: 0, index }).collect();
        let h = c.hashes(0, &v, v.size(), &leaves).unwrap();
        assert!(h.iter().all(|x| *x == zero_leaf()));
        assert!(c.used <= 10 * leaf_tree && c.trees.len() == c.order.len());
    }
}
