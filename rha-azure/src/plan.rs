//! Turning byte-addressed writes into page-blob requests.
//!
//! A page blob takes writes of whole 512-byte pages, at most 4 MiB each, and
//! clears of page ranges. A [`Plan`] takes an ordered list of writes and zero
//! ranges at any byte offsets (a write, or a whole batch of journal records,
//! later ones winning where they overlap) and works out:
//!
//! ```text
//!   pieces (ordered)      overlay (disjoint)     requests
//!   ───────────────       ──────────────────     ────────
//!   data  [1000, 9000)    data [1000, 3000)      edge sector [512, 1024): read, patch, put
//!   zero  [3000, 70000)   zero [3000, 70000)     put   [1024, 2560) … [2560, 3072) edge
//!                                                clear [3072, 69632), edge [69632, 70144)
//! ```
//!
//! - *edge sectors*: pages only partly written; their old contents are read
//!   (unless the batch covers them entirely), patched and written whole;
//! - *puts* of contiguous data, at most `max_put` bytes each;
//! - *clears* of zero ranges, and of runs of zeros found inside data
//!   ([`ZERO_CLEAR_MIN`] or longer), so zeros are cleared rather than written.
//!
//! Every request covers pages no other request of the plan touches, so they
//! can run concurrently, in any order; re-running a plan is harmless.

use std::collections::BTreeMap;

use rha_core::volume::is_zero;

/// A page of a page blob.
pub(crate) const SECTOR: u64 = 512;

/// Runs of zeros inside written data at least this long are cleared rather than written.
pub const ZERO_CLEAR_MIN: u64 = 64 * 1024;

/// The largest clear in one request (Azure allows the whole blob; this keeps
/// each request's duration bounded).
pub(crate) const MAX_CLEAR: u64 = 1 << 30;

/// Granularity of the zero scan inside data.
const ZERO_SCAN_UNIT: u64 = 4096;

/// One change to apply, at a byte offset.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Piece<'a> {
    /// These bytes.
    Data(&'a [u8]),
    /// This many zero bytes.
    Zero(u64),
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Data(d) => d.len() as u64,
            Piece::Zero(n) => *n,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Src<'a> {
    Data(&'a [u8]),
    Zero,
}

impl<'a> Src<'a> {
    fn slice(self, from: u64, to: u64) -> Src<'a> {
        match self {
            Src::Data(d) => Src::Data(&d[from as usize..to as usize]),
            Src::Zero => Src::Zero,
        }
    }
}

/// An interval of the overlay: `[start, end)` holds `src`.
#[derive(Debug, Clone, Copy)]
struct Interval<'a> {
    start: u64,
    end: u64,
    src: Src<'a>,
}

/// A sector only partly covered by one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edge {
    /// The sector's offset.
    pub offset: u64,
    /// How many of its bytes the plan writes (if 512, the old contents need not be read).
    pub covered: u64,
}

/// Where the bytes of a put come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// `len` bytes of interval `idx`, starting `from` bytes into it.
    Interval { idx: usize, from: u64, len: u64 },
    /// The patched edge sector `idx` (512 bytes).
    Edge(usize),
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Write `len` bytes at `offset`, gathered from `parts` in order.
    Put {
        offset: u64,
        len: u64,
        parts: Vec<Part>,
    },
    /// Clear `len` bytes at `offset`.
    Clear { offset: u64, len: u64 },
}

/// The requests that apply an ordered list of pieces (see the module docs).
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    intervals: Vec<Interval<'a>>,
    /// Edge sectors, sorted by offset.
    pub edges: Vec<Edge>,
    /// The requests, sorted by offset, disjoint.
    pub ops: Vec<Op>,
}

impl<'a> Plan<'a> {
    /// Plans `pieces` (offset, change), later ones winning; `max_put` is a
    /// multiple of 512. Pieces must lie inside the blob (checked by the caller).
    pub fn new(pieces: &[(u64, Piece<'a>)], max_put: u64) -> Plan<'a> {
        debug_assert!(max_put >= SECTOR && max_put % SECTOR == 0);
        let mut overlay: BTreeMap<u64, (u64, Src<'a>)> = BTreeMap::new();
        for &(offset, piece) in pieces {
            let src = match piece {
                Piece::Data(d) => Src::Data(d),
                Piece::Zero(_) => Src::Zero,
            };
            insert(&mut overlay, offset, offset + piece.len(), src);
        }
        let intervals: Vec<Interval<'a>> = overlay
            .into_iter()
            .map(|(start, (end, src))| Interval { start, end, src })
            .collect();

        // Edge sectors and the coverage of each (every interval that touches
        // an edge sector has it as one of its own edges).
        let mut covered: BTreeMap<u64, u64> = BTreeMap::new();
        for iv in &intervals {
            for sector in edge_sectors(iv.start, iv.end) {
                let lo = iv.start.max(sector);
                let hi = iv.end.min(sector + SECTOR);
                *covered.entry(sector).or_default() += hi - lo;
            }
        }
        let edges: Vec<Edge> = covered
            .into_iter()
            .map(|(offset, covered)| Edge { offset, covered })
            .collect();

        let mut b = OpBuilder {
            ops: Vec::new(),
            max_put,
        };
        let mut next_edge = 0usize;
        for (idx, iv) in intervals.iter().enumerate() {
            let head = iv.start / SECTOR * SECTOR;
            if iv.start % SECTOR != 0 {
                next_edge = b.edge(&edges, next_edge, head);
            }
            let inner_start = iv.start.next_multiple_of(SECTOR);
            let inner_end = iv.end / SECTOR * SECTOR;
            if inner_start < inner_end {
                match iv.src {
                    Src::Zero => b.clear(inner_start, inner_end - inner_start),
                    Src::Data(d) => b.data_with_zero_runs(idx, iv.start, d, inner_start, inner_end),
                }
            }
            if iv.end % SECTOR != 0 {
                next_edge = b.edge(&edges, next_edge, (iv.end - 1) / SECTOR * SECTOR);
            }
        }
        Plan {
            intervals,
            edges,
            ops: b.ops,
        }
    }

    /// Writes the plan's bytes that fall inside edge sector `edge` over `buf`
    /// (512 bytes holding the sector's old contents).
    pub fn patch_edge(&self, edge: usize, buf: &mut [u8]) {
        let sector = self.edges[edge].offset;
        let first = self.intervals.partition_point(|iv| iv.end <= sector);
        for iv in &self.intervals[first..] {
            if iv.start >= sector + SECTOR {
                break;
            }
            let lo = iv.start.max(sector);
            let hi = iv.end.min(sector + SECTOR);
            let dst = &mut buf[(lo - sector) as usize..(hi - sector) as usize];
            match iv.src {
                Src::Zero => dst.fill(0),
                Src::Data(d) => {
                    dst.copy_from_slice(&d[(lo - iv.start) as usize..(hi - iv.start) as usize])
                }
            }
        }
    }

    /// The bytes of `part` (edge parts come from `edge_bufs`).
    pub fn part_bytes<'s>(&'s self, part: &Part, edge_bufs: &'s [Vec<u8>]) -> &'s [u8] {
        match *part {
            Part::Interval { idx, from, len } => match self.intervals[idx].src {
                Src::Data(d) => &d[from as usize..(from + len) as usize],
                // The builder only makes interval parts of data intervals.
                Src::Zero => &[],
            },
            Part::Edge(i) => &edge_bufs[i],
        }
    }
}

/// Inserts `[start, end)` into the overlay, cutting what it overlaps.
fn insert<'a>(map: &mut BTreeMap<u64, (u64, Src<'a>)>, start: u64, end: u64, src: Src<'a>) {
    if start >= end {
        return;
    }
    let overlapping: Vec<u64> = map
        .range(..end)
        .rev()
        .take_while(|(_, (e, _))| *e > start)
        .map(|(s, _)| *s)
        .collect();
    for s in overlapping {
        if let Some((e, old)) = map.remove(&s) {
            if s < start {
                map.insert(s, (start, old.slice(0, start - s)));
            }
            if e > end {
                map.insert(end, (e, old.slice(end - s, e - s)));
            }
        }
    }
    map.insert(start, (end, src));
}

/// The sectors `[start, end)` covers only partly (at most two).
fn edge_sectors(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let head = (start % SECTOR != 0).then_some(start / SECTOR * SECTOR);
    let tail_sector = (end - 1) / SECTOR * SECTOR;
    let tail = (end % SECTOR != 0 && Some(tail_sector) != head).then_some(tail_sector);
    head.into_iter().chain(tail)
}

struct OpBuilder {
    ops: Vec<Op>,
    max_put: u64,
}

impl OpBuilder {
    fn end_of_last(&self) -> Option<u64> {
        self.ops.last().map(|op| match op {
            Op::Put { offset, len, .. } | Op::Clear { offset, len } => offset + len,
        })
    }

    /// Adds edge sector at `offset` unless it was just added; returns the next edge index.
    fn edge(&mut self, edges: &[Edge], next: usize, offset: u64) -> usize {
        match edges.get(next) {
            Some(e) if e.offset == offset => {
                self.put(offset, SECTOR, Part::Edge(next));
                next + 1
            }
            // Already added (shared with the previous interval's tail).
            _ => next,
        }
    }

    fn put(&mut self, offset: u64, len: u64, part: Part) {
        let contiguous = self.end_of_last() == Some(offset);
        if let Some(Op::Put {
            len: cur, parts, ..
        }) = self.ops.last_mut()
        {
            if contiguous && *cur + len <= self.max_put {
                *cur += len;
                parts.push(part);
                return;
            }
        }
        self.ops.push(Op::Put {
            offset,
            len,
            parts: vec![part],
        });
    }

    fn clear(&mut self, offset: u64, len: u64) {
        let contiguous = self.end_of_last() == Some(offset);
        if let Some(Op::Clear { len: cur, .. }) = self.ops.last_mut() {
            if contiguous && *cur + len <= MAX_CLEAR {
                *cur += len;
                return;
            }
        }
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(MAX_CLEAR);
            self.ops.push(Op::Clear { offset: at, len: n });
            at += n;
        }
    }

    /// Data of interval `idx` (starting at `iv_start`) over the aligned range
    /// `[from, to)`: long zero runs become clears, the rest puts of at most `max_put`.
    fn data_with_zero_runs(&mut self, idx: usize, iv_start: u64, d: &[u8], from: u64, to: u64) {
        let bytes = |a: u64, b: u64| &d[(a - iv_start) as usize..(b - iv_start) as usize];
        let mut run_start = from;
        let mut run_zero: Option<bool> = None;
        let mut at = from;
        while at < to {
            let unit_end = ((at / ZERO_SCAN_UNIT + 1) * ZERO_SCAN_UNIT).min(to);
            let zero = is_zero(bytes(at, unit_end));
            match run_zero {
                Some(z) if z == zero => {}
                Some(z) => {
                    self.run(idx, iv_start, run_start, at, z);
                    run_start = at;
                    run_zero = Some(zero);
                }
                None => run_zero = Some(zero),
            }
            at = unit_end;
        }
        if let Some(z) = run_zero {
            self.run(idx, iv_start, run_start, to, z);
        }
    }

    fn run(&mut self, idx: usize, iv_start: u64, from: u64, to: u64, zero: bool) {
        if zero && to - from >= ZERO_CLEAR_MIN {
            self.clear(from, to - from);
            return;
        }
        let mut at = from;
        while at < to {
            // Fill the current put up to max_put, then start new ones.
            let room = match (self.end_of_last() == Some(at), self.ops.last()) {
                (true, Some(Op::Put { len, .. })) => self.max_put - len,
                _ => self.max_put,
            };
            let n = if room == 0 { self.max_put } else { room }.min(to - at);
            self.put(
                at,
                n,
                Part::Interval {
                    idx,
                    from: at - iv_start,
                    len: n,
                },
            );
            at += n;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Applies a plan to `disk` as the page blob would: read edges, patch, run ops.
    fn run_plan(plan: &Plan<'_>, disk: &mut [u8], max_put: u64) {
        let mut bufs = Vec::new();
        for (i, e) in plan.edges.iter().enumerate() {
            let mut buf = disk[e.offset as usize..(e.offset + SECTOR) as usize].to_vec();
            if e.covered == SECTOR {
                buf.fill(0xCC); // not read: the plan must overwrite all of it
            }
            plan.patch_edge(i, &mut buf);
            bufs.push(buf);
        }
        let mut last_end = 0;
        for op in &plan.ops {
            match op {
                Op::Put { offset, len, parts } => {
                    assert_eq!(offset % SECTOR, 0);
                    assert_eq!(len % SECTOR, 0);
                    assert!(*len <= max_put && *len > 0);
                    assert!(*offset >= last_end, "ops overlap or are unsorted");
                    let mut data = Vec::new();
                    for p in parts {
                        data.extend_from_slice(plan.part_bytes(p, &bufs));
                    }
                    assert_eq!(data.len() as u64, *len);
                    disk[*offset as usize..(*offset + *len) as usize].copy_from_slice(&data);
                    last_end = offset + len;
                }
                Op::Clear { offset, len } => {
                    assert_eq!(offset % SECTOR, 0);
                    assert_eq!(len % SECTOR, 0);
                    assert!(*offset >= last_end, "ops overlap or are unsorted");
                    disk[*offset as usize..(*offset + *len) as usize].fill(0);
                    last_end = offset + len;
                }
            }
        }
    }

    fn naive(disk: &mut [u8], pieces: &[(u64, Piece<'_>)]) {
        for &(o, p) in pieces {
            match p {
                Piece::Data(d) => disk[o as usize..o as usize + d.len()].copy_from_slice(d),
                Piece::Zero(n) => disk[o as usize..(o + n) as usize].fill(0),
            }
        }
    }

    #[test]
    fn unaligned_write_reads_its_edges() {
        let data = vec![7u8; 2000];
        let plan = Plan::new(&[(1000, Piece::Data(&data))], 4 << 20);
        assert_eq!(
            plan.edges,
            vec![
                Edge {
                    offset: 512,
                    covered: 24
                },
                Edge {
                    offset: 2560,
                    covered: 440
                }
            ]
        );
        assert_eq!(plan.ops.len(), 1, "one contiguous put: {:?}", plan.ops);
    }

    #[test]
    fn zeros_are_cleared_not_written() {
        let mut data = vec![1u8; 1 << 20];
        data[4096..4096 + 256 * 1024].fill(0);
        let plan = Plan::new(
            &[(0, Piece::Data(&data)), (1 << 20, Piece::Zero(1 << 20))],
            4 << 20,
        );
        assert_eq!(
            plan.ops
                .iter()
                .filter(|o| matches!(o, Op::Clear { .. }))
                .count(),
            2
        );
        let short = vec![0u8; 8192];
        let plan = Plan::new(&[(0, Piece::Data(&short))], 4 << 20);
        assert!(
            matches!(plan.ops[..], [Op::Put { .. }]),
            "a short zero run stays a put"
        );
    }

    #[test]
    fn large_writes_are_split() {
        let data = vec![3u8; 10 << 20];
        let plan = Plan::new(&[(512, Piece::Data(&data))], 4 << 20);
        let lens: Vec<u64> = plan
            .ops
            .iter()
            .map(|o| match o {
                Op::Put { len, .. } | Op::Clear { len, .. } => *len,
            })
            .collect();
        assert_eq!(lens, vec![4 << 20, 4 << 20, 2 << 20]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn plans_match_sequential_application(
            pieces in proptest::collection::vec((0u64..60_000, 0u64..9_000, any::<u8>(), any::<bool>()), 0..12),
            max_put_sectors in 1u64..20,
        ) {
            const SIZE: usize = 70 * 1024;
            let datas: Vec<Vec<u8>> = pieces.iter().map(|&(_, len, b, _)| {
                // Mostly nonzero with a zero stretch, so zero runs show up.
                (0..len).map(|i| if (i / 3000) % 2 == 1 { 0 } else { b | 1 }).collect()
            }).collect();
            let list: Vec<(u64, Piece<'_>)> = pieces.iter().zip(&datas).map(|(&(o, len, _, zero), d)| {
                (o, if zero { Piece::Zero(len) } else { Piece::Data(d) })
            }).collect();
            let max_put = max_put_sectors * SECTOR;
            let mut initial = vec![0u8; SIZE];
            for (i, b) in initial.iter_mut().enumerate() { *b = (i % 251) as u8 | 0x80; }
            let mut want = initial.clone();
            naive(&mut want, &list);
            let mut got = initial.clone();
            let plan = Plan::new(&list, max_put);
            run_plan(&plan, &mut got, max_put);
            prop_assert!(got == want, "plan differs from sequential application: {:?}", plan.ops);
            // Idempotent: running it again changes nothing.
            let plan = Plan::new(&list, max_put);
            run_plan(&plan, &mut got, max_put);
            prop_assert!(got == want);
        }
    }
}
