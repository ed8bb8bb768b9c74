//! Synchronisation and replication, independent of the transport.
//!
//! The algorithms run on the master and talk to the replica through a
//! [`SyncPeer`]: in process that is a [`LocalPeer`] over a
//! [`ReplicaSink`](crate::sink::ReplicaSink); `rha-transport` implements the
//! same trait over TCP.
//!
//! ```text
//! synchronise():
//!   base = source.resync_started()          changes after `base` are journalled meanwhile
//!   for each volume, over every range (or only the change log's dirty ranges):
//!       volume-level: stream every block; zero runs become "zero" commands
//!       block-level:  compare hash trees top-down, send only differing blocks
//!   peer.end_sync(base)                     replica holds everything up to base (inconsistently)
//!   catch_up(base → last_seq)               replay what was captured during the pass
//!   peer.mark_consistent(seq)               "all changes made during synchronisation have been replicated"
//! ```

mod block_level;
mod local;
mod volume_level;

use std::ops::Range;
use std::time::Instant;

use serde::Serialize;

pub use local::LocalPeer;

use crate::events::{Event, Events, Stats};
use crate::hash::{Hash, Node};
use crate::journal::Record;
use crate::sink::{ReplicaState, SinkError};
use crate::source::{ChangeSource, SourceError};
use crate::volume::VolumeError;
use crate::{Seq, VolumeId};

/// Bytes that each message takes on the wire, used by [`LocalPeer`] to
/// account for traffic exactly as the network transport would.
pub mod wire {
    /// Frame header: length, message type, CRC32.
    pub const FRAME: u64 = 4 + 1 + 4;
    /// A block write or zero command: volume, offset, length.
    pub const WRITE_HEADER: u64 = 4 + 8 + 4;
    /// One node in a hash request: level and index.
    pub const NODE_REF: u64 = 1 + 8;
    /// A journal record's header in a batch: seq, volume, kind, offset, length.
    pub const RECORD_HEADER: u64 = 8 + 4 + 1 + 8 + 4;
}

/// The replica side as the synchronisation algorithms see it.
///
/// # Contract
/// - `write` and `zero` may be buffered or pipelined; `end_sync` is a
///   barrier after which all of them are durable on the replica.
/// - `hashes` answers with the replica's hash of each node, in order, as the
///   replica's volume is now (over the master's size, given in `begin_sync`).
/// - `apply` has the semantics of [`ReplicaSink::apply`](crate::sink::ReplicaSink::apply)
///   and returns the sequence the replica has durably applied.
pub trait SyncPeer {
    /// The replica's durable state.
    fn state(&mut self) -> Result<ReplicaState, SyncError>;
    /// A synchronisation of volumes with these sizes begins; the replica is not consistent until it ends.
    fn begin_sync(&mut self, sizes: &[u64]) -> Result<(), SyncError>;
    /// The replica's hashes of `nodes` of volume `volume`.
    fn hashes(&mut self, volume: VolumeId, nodes: &[Node]) -> Result<Vec<Hash>, SyncError>;
    /// Writes `data` at `offset` of volume `volume`.
    fn write(&mut self, volume: VolumeId, offset: u64, data: &[u8]) -> Result<(), SyncError>;
    /// Makes `len` bytes at `offset` of volume `volume` zero (a hole where possible).
    fn zero(&mut self, volume: VolumeId, offset: u64, len: u64) -> Result<(), SyncError>;
    /// Barrier: everything sent is durable; the replica holds every change up to `base`.
    fn end_sync(&mut self, base: Seq) -> Result<(), SyncError>;
    /// Applies an ordered batch of journal records; returns the durably applied sequence.
    fn apply(&mut self, records: &[Record]) -> Result<Seq, SyncError>;
    /// Sends a batch of records for the replica to apply after every
    /// batch sent before it, without waiting for the answer where the peer
    /// can (the network transport), so that several batches are in flight
    /// ([`Pipeline`]). [`SyncPeer::wait_applied`] takes the answers, in the
    /// order the batches were sent. The default applies the batch at once.
    fn send_apply(&mut self, records: &[Record]) -> Result<PendingApply, SyncError> {
        self.apply(records).map(PendingApply::Done)
    }
    /// The answer to a batch sent with [`SyncPeer::send_apply`]: the
    /// durably applied sequence, as [`SyncPeer::apply`] returns it.
    fn wait_applied(&mut self, pending: PendingApply) -> Result<Seq, SyncError> {
        match pending {
            PendingApply::Done(seq) => Ok(seq),
            PendingApply::InFlight(req) => Err(SyncError::Link(format!(
                "request {req} is in flight on a peer that does not pipeline batches"
            ))),
        }
    }
    /// Declares the replica consistent at `seq`.
    fn mark_consistent(&mut self, seq: Seq) -> Result<(), SyncError>;
    /// Bytes sent to and received from the replica so far.
    fn traffic(&self) -> Traffic;
}

/// A batch sent with [`SyncPeer::send_apply`] whose answer has not been taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingApply {
    /// The peer applied the batch at once: its answer.
    Done(Seq),
    /// The peer's id of the request in flight.
    InFlight(u64),
}

/// Bytes exchanged with the replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// From the master to the replica.
    pub sent: u64,
    /// From the replica to the master.
    pub received: u64,
}

pub use crate::scenario::SyncMethod;

/// Settings of a synchronisation.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// How data is compared or copied.
    pub method: SyncMethod,
    /// Skip regions the master's change log proves unchanged since the
    /// replica's last consistent point (the block analog of skipping files
    /// with the same size and time). Applies only when the replica has been
    /// synchronised with this master before.
    pub skip_unchanged: bool,
    /// Compare every block even where the change log says nothing changed.
    pub force_full_verification: bool,
    /// Most journal bytes per replayed batch.
    pub batch_bytes: usize,
    /// Passes to make when the journal overflows during synchronisation.
    pub max_passes: u32,
    /// Batches of journal records in flight at once during replication
    /// ([`Pipeline`]): while the replica applies one, the next ones are on
    /// the way.
    pub pipeline_depth: usize,
}

impl SyncOptions {
    /// Default options for `method`: skip unchanged regions, 4 MiB batches, 8 passes.
    pub fn new(method: SyncMethod) -> Self {
        SyncOptions {
            method,
            skip_unchanged: true,
            force_full_verification: false,
            batch_bytes: 4 << 20,
            max_passes: 8,
            pipeline_depth: DEFAULT_PIPELINE_DEPTH,
        }
    }
}

impl From<&crate::scenario::SyncSettings> for SyncOptions {
    /// The options a scenario's `[sync]` section asks for.
    fn from(s: &crate::scenario::SyncSettings) -> Self {
        SyncOptions {
            method: s.method,
            skip_unchanged: s.skip_unchanged,
            force_full_verification: s.force_full_verification,
            ..SyncOptions::new(s.method)
        }
    }
}

/// What a synchronisation did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncReport {
    /// `volume` or `block`.
    pub method: String,
    /// Passes made (more than one when the journal overflowed meanwhile).
    pub passes: u32,
    /// Bytes sent to the replica.
    pub bytes_sent: u64,
    /// Bytes received from the replica.
    pub bytes_received: u64,
    /// Blocks copied (volume-level) or found different (block-level).
    pub blocks_changed: u64,
    /// Bytes of those blocks.
    pub changed_bytes: u64,
    /// Master bytes read and compared or copied.
    pub bytes_scanned: u64,
    /// Master bytes skipped because the change log proves them unchanged.
    pub bytes_skipped: u64,
    /// Whether only the change log's dirty ranges were compared.
    pub used_change_log: bool,
    /// Journal records replayed after the copy.
    pub records_replayed: u64,
    /// The sequence the copy covers.
    pub base_seq: Seq,
    /// The sequence the replica is consistent at.
    pub consistent_seq: Seq,
    /// Whether the replica was declared consistent.
    pub consistent: bool,
    /// Wall time.
    pub seconds: f64,
}

/// Per-volume results of one algorithm run.
#[derive(Debug, Default)]
pub(crate) struct Copied {
    pub blocks_changed: u64,
    pub changed_bytes: u64,
    pub bytes_scanned: u64,
}

/// Emits progress events at most every 1% or 64 MiB.
pub(crate) struct Progress<'a> {
    events: &'a Events,
    volume: VolumeId,
    total: u64,
    done: u64,
    last: u64,
}

impl<'a> Progress<'a> {
    pub(crate) fn new(events: &'a Events, volume: VolumeId, total: u64) -> Self {
        Progress {
            events,
            volume,
            total,
            done: 0,
            last: 0,
        }
    }
    pub(crate) fn advance(&mut self, n: u64) {
        self.done += n;
        Stats::add(
            &self.events.stats().blocks_scanned,
            n.div_ceil(crate::volume::BLOCK_SIZE as u64),
        );
        let step = (self.total / 100).clamp(1, 64 << 20);
        if self.done - self.last >= step || self.done == self.total {
            self.last = self.done;
            self.events.emit(Event::SyncProgress {
                volume: self.volume,
                bytes_done: self.done,
                bytes_total: self.total,
            });
        }
    }
}

/// Synchronises the replica with the master's volumes, replays the changes
/// made meanwhile, and declares the replica consistent.
pub fn synchronise(
    source: &dyn ChangeSource,
    peer: &mut dyn SyncPeer,
    options: &SyncOptions,
    events: &Events,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let traffic0 = peer.traffic();
    let volumes = source.volumes();
    let sizes: Vec<u64> = volumes.iter().map(|v| v.size()).collect();
    let replica = peer.state()?;
    let mut report = SyncReport {
        method: options.method.as_str().into(),
        ..Default::default()
    };
    let mut use_log = options.skip_unchanged
        && !options.force_full_verification
        && replica.synced
        && replica.applied >= source.acknowledged();
    loop {
        report.passes += 1;
        let pass_started = Instant::now();
        let pass_traffic = peer.traffic();
        let base = source.resync_started()?;
        peer.begin_sync(&sizes)?;
        // Each volume: the change log's dirty ranges where the log applies
        // and the source keeps one, otherwise the whole volume.
        let plan: Vec<Vec<Range<u64>>> = (0..volumes.len())
            .map(|i| {
                let dirty = if use_log {
                    source.dirty_ranges(i as VolumeId)
                } else {
                    None
                };
                report.used_change_log |= dirty.is_some();
                #[allow(clippy::single_range_in_vec_init)] // one range: the whole volume
                dirty.unwrap_or_else(|| vec![0..sizes[i]])
            })
            .collect();
        let planned: u64 = plan.iter().flatten().map(|r| r.end - r.start).sum();
        report.bytes_skipped += sizes.iter().sum::<u64>() - planned;
        events.emit(Event::SyncStarted {
            method: options.method.as_str().into(),
            volumes: volumes.len(),
            bytes_total: planned,
        });
        let mut pass_blocks = 0;
        for (i, ranges) in plan.iter().enumerate() {
            let id = i as VolumeId;
            let total = ranges.iter().map(|r| r.end - r.start).sum();
            let mut progress = Progress::new(events, id, total);
            let copied = match options.method {
                SyncMethod::Volume => {
                    volume_level::run(id, &*volumes[i], peer, ranges, &mut progress)?
                }
                SyncMethod::Block => {
                    block_level::run(id, &*volumes[i], peer, ranges, &mut progress)?
                }
            };
            let stats = events.stats();
            Stats::add(&stats.blocks_changed, copied.blocks_changed);
            Stats::add(&stats.changed_bytes, copied.changed_bytes);
            pass_blocks += copied.blocks_changed;
            report.blocks_changed += copied.blocks_changed;
            report.changed_bytes += copied.changed_bytes;
            report.bytes_scanned += copied.bytes_scanned;
        }
        peer.end_sync(base)?;
        source.resync_completed(base)?;
        report.base_seq = base;
        events.emit(Event::SyncCompleted {
            bytes_sent: peer.traffic().sent - pass_traffic.sent,
            blocks_changed: pass_blocks,
            seconds: pass_started.elapsed().as_secs_f64(),
        });
        // Everything captured while the pass read the master must reach the
        // replica before it can be called consistent.
        let target = source.last_seq();
        match catch_up(source, peer, base, target, options.batch_bytes, events) {
            Ok((seq, replayed)) => {
                report.records_replayed += replayed;
                peer.mark_consistent(seq)?;
                report.consistent_seq = seq;
                report.consistent = true;
                events.emit(Event::AllSyncChangesReplicated { seq });
                break;
            }
            Err(SyncError::Source(SourceError::Gap { .. }))
                if report.passes < options.max_passes =>
            {
                // The journal overflowed during the pass: another pass over
                // the regions written meanwhile (the replica is synchronised now).
                use_log = true;
            }
            Err(e) => return Err(e),
        }
    }
    let traffic = peer.traffic();
    report.bytes_sent = traffic.sent - traffic0.sent;
    report.bytes_received = traffic.received - traffic0.received;
    let stats = events.stats();
    Stats::add(&stats.sent_bytes, report.bytes_sent);
    Stats::add(&stats.received_bytes, report.bytes_received);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Replays journal records after `after` until the replica holds at least
/// `target`. Returns the sequence reached and the number of records replayed.
pub fn catch_up(
    source: &dyn ChangeSource,
    peer: &mut dyn SyncPeer,
    after: Seq,
    target: Seq,
    batch_bytes: usize,
    events: &Events,
) -> Result<(Seq, u64), SyncError> {
    let mut at = after;
    let mut replayed = 0;
    while at < target {
        let Some((seq, n)) = replicate_once(source, peer, at, batch_bytes, events)? else {
            break;
        };
        at = seq;
        replayed += n;
    }
    Ok((at, replayed))
}

/// Default [`SyncOptions::pipeline_depth`]: 4 batches (16 MiB of 4 MiB batches).
pub const DEFAULT_PIPELINE_DEPTH: usize = 4;

/// Continuous replication with several batches in flight: the master
/// reads and sends the next batches while the replica applies the
/// previous one, instead of waiting for each answer (stop and wait). The
/// replica applies batches in the order sent, so its state is always a
/// prefix of the journal, as with one batch at a time; the master
/// acknowledges a batch only once the replica has answered it.
///
/// ```text
///   step(): fewer than depth in flight and records after `sent`?
///             yes → read a batch after `sent`, send_apply, sent = its last seq
///             no  → wait_applied(oldest) → source.acknowledge(seq)
/// ```
#[derive(Debug)]
pub struct Pipeline {
    depth: usize,
    /// The last seq sent to the replica.
    sent: Seq,
    /// The last seq the replica answered as applied.
    applied: Seq,
    in_flight: std::collections::VecDeque<InFlight>,
    /// The peer's traffic when statistics were last updated.
    traffic: Option<Traffic>,
}

#[derive(Debug)]
struct InFlight {
    pending: PendingApply,
    records: u64,
    data_bytes: u64,
}

/// What one [`Pipeline::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sent a batch whose last record has this seq.
    Sent(Seq),
    /// The replica answered the oldest batch in flight: it holds every
    /// record up to this seq, which the source has acknowledged.
    Applied(Seq),
    /// Nothing in flight and nothing to send.
    Idle,
}

impl Pipeline {
    /// A pipeline that goes on after seq `at` (which the replica holds),
    /// with up to `depth` batches in flight (at least one).
    pub fn new(at: Seq, depth: usize) -> Self {
        Pipeline {
            depth: depth.max(1),
            sent: at,
            applied: at,
            in_flight: std::collections::VecDeque::new(),
            traffic: None,
        }
    }

    /// The last seq the replica answered as applied.
    pub fn applied(&self) -> Seq {
        self.applied
    }

    /// Batches sent whose answer has not been taken.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Sends the next batch of at most `batch_bytes` while fewer than the
    /// depth are in flight and the source has records after the last one
    /// sent; otherwise takes the answer to the oldest batch in flight and
    /// acknowledges it on the source. A [`SourceError::Gap`] is reported
    /// only once nothing is in flight any more.
    pub fn step(
        &mut self,
        source: &dyn ChangeSource,
        peer: &mut dyn SyncPeer,
        batch_bytes: usize,
        events: &Events,
    ) -> Result<Step, SyncError> {
        if self.in_flight.len() < self.depth {
            match source.changes_after(self.sent, batch_bytes) {
                Ok(records) => {
                    if let Some(last) = records.last().map(|r| r.seq) {
                        if self.traffic.is_none() {
                            self.traffic = Some(peer.traffic());
                        }
                        let pending = peer.send_apply(&records)?;
                        self.in_flight.push_back(InFlight {
                            pending,
                            records: records.len() as u64,
                            data_bytes: records.iter().map(Record::data_bytes).sum(),
                        });
                        self.sent = last;
                        return Ok(Step::Sent(last));
                    }
                }
                // What is in flight was read before the gap: answer it first.
                Err(SourceError::Gap { .. }) if !self.in_flight.is_empty() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(match self.answer_oldest(source, peer, events)? {
            Some(acked) => Step::Applied(acked),
            None => Step::Idle,
        })
    }

    /// Takes the answer to the oldest batch in flight and acknowledges it
    /// on the source; `None` if nothing is in flight.
    fn answer_oldest(
        &mut self,
        source: &dyn ChangeSource,
        peer: &mut dyn SyncPeer,
        events: &Events,
    ) -> Result<Option<Seq>, SyncError> {
        let Some(batch) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        let acked = peer.wait_applied(batch.pending)?;
        source.acknowledge(acked)?;
        self.applied = self.applied.max(acked);
        let now = peer.traffic();
        let before = self.traffic.replace(now).unwrap_or(now);
        record_applied(
            source,
            events,
            acked,
            batch.records,
            batch.data_bytes,
            before,
            now,
        );
        Ok(Some(acked))
    }

    /// Takes the answers to every batch in flight; returns the last seq
    /// the replica applied.
    pub fn drain(
        &mut self,
        source: &dyn ChangeSource,
        peer: &mut dyn SyncPeer,
        events: &Events,
    ) -> Result<Seq, SyncError> {
        while self.answer_oldest(source, peer, events)?.is_some() {}
        Ok(self.applied)
    }
}

/// Updates the statistics after the replica applied a batch of `records`
/// records with `data_bytes` bytes of data, up to seq `acked`, while the
/// peer's traffic went from `before` to `now`.
fn record_applied(
    source: &dyn ChangeSource,
    events: &Events,
    acked: Seq,
    records: u64,
    data_bytes: u64,
    before: Traffic,
    now: Traffic,
) {
    let stats = events.stats();
    Stats::add(&stats.sent_bytes, now.sent - before.sent);
    Stats::add(&stats.received_bytes, now.received - before.received);
    Stats::add(&stats.changed_bytes, data_bytes);
    Stats::add(&stats.records_applied, records);
    Stats::set(&stats.applied_seq, acked);
    let last = source.last_seq();
    Stats::set(&stats.lag_records, last.saturating_sub(acked));
    Stats::set(&stats.lag_bytes, source.pending_bytes());
    Stats::set(&stats.journal_bytes, source.pending_bytes());
}

/// Sends one batch of the records after `after` to the replica and
/// acknowledges it on the master. `None` when there was nothing to send.
pub fn replicate_once(
    source: &dyn ChangeSource,
    peer: &mut dyn SyncPeer,
    after: Seq,
    batch_bytes: usize,
    events: &Events,
) -> Result<Option<(Seq, u64)>, SyncError> {
    let records = source.changes_after(after, batch_bytes)?;
    if records.is_empty() {
        return Ok(None);
    }
    let t0 = peer.traffic();
    let acked = peer.apply(&records)?;
    source.acknowledge(acked)?;
    let t1 = peer.traffic();
    let bytes: u64 = records.iter().map(Record::data_bytes).sum();
    record_applied(source, events, acked, records.len() as u64, bytes, t0, t1);
    Ok(Some((acked, records.len() as u64)))
}

/// Captures and replicates until the journal is empty (or `max_rounds`
/// rounds), reporting the lag. Returns the last sequence the replica holds.
pub fn replicate_until_idle(
    source: &dyn ChangeSource,
    peer: &mut dyn SyncPeer,
    batch_bytes: usize,
    max_rounds: usize,
    events: &Events,
) -> Result<Seq, SyncError> {
    let mut at = peer.state()?.applied.max(source.acknowledged());
    for _ in 0..max_rounds {
        source.capture()?;
        match replicate_once(source, peer, at, batch_bytes, events)? {
            Some((seq, _)) => at = seq,
            None => break,
        }
    }
    let stats = events.stats().snapshot();
    events.emit(Event::ReplicationLag {
        records: stats.lag_records,
        bytes: stats.lag_bytes,
    });
    Ok(at)
}

/// What went wrong while synchronising or replicating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Reading a master volume failed.
    #[error("master: {0}")]
    Master(#[from] VolumeError),
    /// The change source failed (or lost records: see [`SourceError::Gap`]).
    #[error("master: {0}")]
    Source(#[from] SourceError),
    /// The replica failed.
    #[error("replica: {0}")]
    Replica(#[from] SinkError),
    /// The replica's volumes do not fit the master's.
    #[error("volume {volume}: the master's is {master} bytes but the replica's is {replica}: make the replica disk at least as large")]
    SizeMismatch {
        /// The volume.
        volume: VolumeId,
        /// The master's size.
        master: u64,
        /// The replica's size.
        replica: u64,
    },
    /// The master has a different number of volumes than the replica.
    #[error("the master has {master} volume(s) but the replica {replica}: give both the same volume list")]
    VolumeCount {
        /// The master's count.
        master: usize,
        /// The replica's count.
        replica: usize,
    },
    /// The peer answered something that does not fit the request (a transport's or peer's bug).
    #[error("the replica answered {got} hash(es) to a request for {asked}")]
    BadReply {
        /// Hashes asked for.
        asked: usize,
        /// Hashes received.
        got: usize,
    },
    /// The link to the replica failed (set by network peers).
    #[error("link to the replica: {0}")]
    Link(String),
}
