//! Typed events and statistics counters.
//!
//! An [`Events`] hub is shared by everything that runs a scenario: the
//! synchronisation algorithms, replication and (in `rha-transport`) Is Alive
//! and switchover emit [`Event`]s into it, and any number of subscribers
//! receive every event from the moment they subscribe; a late subscriber can
//! first receive the hub's [`RECENT_EVENTS`] latest milestones
//! ([`Events::subscribe_with_recent`]). [`Stats`] counts the figures
//! operators watch: changed bytes, sent bytes, blocks, journal size, lag.
//!
//! ```
//! use rha_core::events::{Event, Events};
//! let events = Events::new();
//! let rx = events.subscribe();
//! events.emit(Event::AllSyncChangesReplicated { seq: 42 });
//! assert_eq!(rx.recv().unwrap().to_string(),
//!            "all changes made during synchronisation have been replicated (sequence 42)");
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::{Seq, VolumeId};

/// Something that happened in a scenario, as an operator would want to hear of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A synchronisation pass started.
    SyncStarted {
        /// `volume` or `block`.
        method: String,
        /// How many volumes it covers.
        volumes: usize,
        /// How many bytes it will read or compare on the master.
        bytes_total: u64,
    },
    /// Progress of a synchronisation pass.
    SyncProgress {
        /// The volume being synchronised.
        volume: VolumeId,
        /// Bytes of that volume done so far.
        bytes_done: u64,
        /// Bytes of that volume to do.
        bytes_total: u64,
    },
    /// A synchronisation pass finished copying; replay of the changes made meanwhile follows.
    SyncCompleted {
        /// Bytes sent to the replica during the pass.
        bytes_sent: u64,
        /// Blocks found different (block-level) or copied (volume-level).
        blocks_changed: u64,
        /// Wall time of the pass.
        seconds: f64,
    },
    /// The replica holds every change made during synchronisation: it is consistent.
    AllSyncChangesReplicated {
        /// The journal sequence the replica is consistent at.
        seq: Seq,
    },
    /// How far the replica is behind the master.
    ReplicationLag {
        /// Journal records not yet applied on the replica.
        records: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// The journal hit its size bound; the written regions will be resynchronised from the dirty-region log.
    JournalOverflow {
        /// The configured bound.
        bound_bytes: u64,
    },
    /// The master has not answered within the Is Alive timeout.
    MasterNotResponding {
        /// Seconds since the last sign of life.
        seconds: f64,
    },
    /// A switchover began.
    SwitchoverStarted {
        /// The scenario.
        scenario: String,
    },
    /// A switchover finished and the VM runs.
    SwitchoverCompleted {
        /// The id of the VM that was started.
        vm_id: String,
        /// The journal sequence the VM's disks hold.
        recovery_point: Seq,
    },
    /// Something failed; the message says what and what to do.
    Error {
        /// The error, as a sentence.
        message: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::SyncStarted { method, volumes, bytes_total } => write!(
                f,
                "{method}-level synchronisation started: {volumes} volume(s), {bytes_total} bytes"
            ),
            Event::SyncProgress { volume, bytes_done, bytes_total } => {
                let pct = if *bytes_total == 0 {
                    100.0
                } else {
                    *bytes_done as f64 * 100.0 / *bytes_total as f64
                };
                write!(f, "volume {volume}: {pct:.1}% synchronised ({bytes_done} of {bytes_total} bytes)")
            }
            Event::SyncCompleted { bytes_sent, blocks_changed, seconds } => write!(
                f,
                "synchronisation completed in {seconds:.2} s: {blocks_changed} block(s) changed, {bytes_sent} bytes sent"
            ),
            Event::AllSyncChangesReplicated { seq } => write!(
                f,
                "all changes made during synchronisation have been replicated (sequence {seq})"
            ),
            Event::ReplicationLag { records, bytes } => {
                write!(f, "replica is {records} record(s), {bytes} bytes behind the master")
            }
            Event::JournalOverflow { bound_bytes } => write!(
                f,
                "journal reached its bound of {bound_bytes} bytes; the changed regions will be resynchronised"
            ),
            Event::MasterNotResponding { seconds } => {
                write!(f, "master not responding for {seconds:.1} s")
            }
            Event::SwitchoverStarted { scenario } => write!(f, "switchover of scenario {scenario} started"),
            Event::SwitchoverCompleted { vm_id, recovery_point } => write!(
                f,
                "switchover completed: VM {vm_id} runs from recovery point {recovery_point}"
            ),
            Event::Error { message } => write!(f, "error: {message}"),
        }
    }
}

/// The hub that events are emitted into and subscribed from; also holds the [`Stats`].
///
/// Cloning is cheap and shares the hub.
#[derive(Debug, Clone, Default)]
pub struct Events {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    subscribers: Mutex<Vec<Sender<Event>>>,
    /// The latest milestones, oldest first; written under the `subscribers` lock.
    recent: Mutex<VecDeque<Event>>,
    stats: Stats,
}

/// How many of the latest events a hub keeps for
/// [`Events::subscribe_with_recent`]: every kind except the frequent
/// [`Event::SyncProgress`] and [`Event::ReplicationLag`].
pub const RECENT_EVENTS: usize = 64;

impl Events {
    /// A hub with no subscribers and zeroed statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Receives every event emitted from now on. Dropping the receiver unsubscribes.
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = channel();
        self.lock().push(tx);
        rx
    }

    /// Like [`subscribe`](Self::subscribe), but the receiver first gets the
    /// hub's latest milestones (up to [`RECENT_EVENTS`], oldest first), so a
    /// subscriber that arrives after a scenario started still sees it start.
    /// No event is missed or repeated between the two.
    pub fn subscribe_with_recent(&self) -> Receiver<Event> {
        let (tx, rx) = channel();
        let mut subscribers = self.lock();
        for ev in self.recent().iter() {
            let _ = tx.send(ev.clone());
        }
        subscribers.push(tx);
        rx
    }

    /// Sends `event` to every subscriber and logs it.
    pub fn emit(&self, event: Event) {
        match &event {
            Event::Error { .. }
            | Event::MasterNotResponding { .. }
            | Event::JournalOverflow { .. } => {
                tracing::warn!(target: "rha::event", "{event}")
            }
            Event::SyncProgress { .. } | Event::ReplicationLag { .. } => {
                tracing::debug!(target: "rha::event", "{event}")
            }
            _ => tracing::info!(target: "rha::event", "{event}"),
        }
        let mut subscribers = self.lock();
        if !matches!(
            event,
            Event::SyncProgress { .. } | Event::ReplicationLag { .. }
        ) {
            let mut recent = self.recent();
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        subscribers.retain(|tx| tx.send(event.clone()).is_ok());
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        self.inner.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The statistics counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sender<Event>>> {
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Counters of a running scenario. All are monotonic except the gauges
/// (`journal_bytes`, `lag_records`, `lag_bytes`, `applied_seq`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes found changed on the master (by comparison, capture or copy).
    pub changed_bytes: AtomicU64,
    /// Bytes sent from the master towards the replica (data and requests).
    pub sent_bytes: AtomicU64,
    /// Bytes received from the replica (hashes, acknowledgements).
    pub received_bytes: AtomicU64,
    /// Blocks found different or copied.
    pub blocks_changed: AtomicU64,
    /// Blocks compared or read on the master.
    pub blocks_scanned: AtomicU64,
    /// Journal records applied on the replica.
    pub records_applied: AtomicU64,
    /// Gauge: unacknowledged journal bytes.
    pub journal_bytes: AtomicU64,
    /// Gauge: journal records not yet applied on the replica.
    pub lag_records: AtomicU64,
    /// Gauge: bytes of those records.
    pub lag_bytes: AtomicU64,
    /// Gauge: the last sequence the replica acknowledged.
    pub applied_seq: AtomicU64,
}

/// A point-in-time copy of [`Stats`], serialisable for `status --json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub changed_bytes: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub blocks_changed: u64,
    pub blocks_scanned: u64,
    pub records_applied: u64,
    pub journal_bytes: u64,
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub applied_seq: u64,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            changed_bytes: g(&self.changed_bytes),
            sent_bytes: g(&self.sent_bytes),
            received_bytes: g(&self.received_bytes),
            blocks_changed: g(&self.blocks_changed),
            blocks_scanned: g(&self.blocks_scanned),
            records_applied: g(&self.records_applied),
            journal_bytes: g(&self.journal_bytes),
            lag_records: g(&self.lag_records),
            lag_bytes: g(&self.lag_bytes),
            applied_seq: g(&self.applied_seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subscriber_gets_every_event_and_dropped_ones_are_forgotten() {
        let events = Events::new();
        let a = events.subscribe();
        let b = events.subscribe();
        events.emit(Event::SyncStarted {
            method: "block".into(),
            volumes: 2,
            bytes_total: 10,
        });
        drop(b);
        events.emit(Event::MasterNotResponding { seconds: 3.0 });
        assert_eq!(a.try_iter().count(), 2);
        assert_eq!(events.lock().len(), 1);
    }

    #[test]
    fn late_subscribers_get_the_recent_milestones_first() {
        let events = Events::new();
        events.emit(Event::SyncStarted {
            method: "block".into(),
            volumes: 1,
            bytes_total: 10,
        });
        events.emit(Event::SyncProgress {
            volume: 0,
            bytes_done: 5,
            bytes_total: 10,
        });
        for seq in 0..RECENT_EVENTS as u64 {
            events.emit(Event::AllSyncChangesReplicated { seq });
        }
        let late = events.subscribe_with_recent();
        events.emit(Event::MasterNotResponding { seconds: 1.0 });
        let got: Vec<Event> = late.try_iter().collect();
        // The oldest milestone (SyncStarted) fell out; progress is never kept.
        assert_eq!(got.len(), RECENT_EVENTS + 1);
        assert_eq!(got[0], Event::AllSyncChangesReplicated { seq: 0 });
        assert_eq!(
            got[RECENT_EVENTS],
            Event::MasterNotResponding { seconds: 1.0 }
        );
    }

    #[test]
    fn events_serialise_with_a_tag() {
        let json = serde_json::to_string(&Event::JournalOverflow { bound_bytes: 5 }).unwrap();
        assert_eq!(json, r#"{"event":"journal_overflow","bound_bytes":5}"#);
    }

    #[test]
    fn stats_snapshot_reads_counters() {
        let s = Stats::default();
        Stats::add(&s.sent_bytes, 7);
        Stats::set(&s.lag_records, 3);
        let snap = s.snapshot();
        assert_eq!((snap.sent_bytes, snap.lag_records), (7, 3));
    }
}
