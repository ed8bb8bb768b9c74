//! An in-memory replica, for tests and embedders.

use std::sync::{Arc, Mutex};

use super::{unapplied, write_records, ReplicaSink, ReplicaState, SinkError};
use crate::journal::Record;
use crate::volume::{MemVolume, Volume};
use crate::{Seq, VolumeId};

/// A replica whose state lives in memory: over [`MemVolume`]s for tests, or
/// over any volumes for offline image synchronisation.
#[derive(Debug)]
pub struct MemSink {
    volumes: Vec<Arc<dyn Volume>>,
    state: Mutex<ReplicaState>,
}

impl MemSink {
    /// A replica of zero-filled volumes with the given sizes.
    pub fn new(sizes: &[u64]) -> Result<Self, SinkError> {
        let volumes = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                Ok(
                    Arc::new(MemVolume::named(&format!("replica volume {i}"), s)?)
                        as Arc<dyn Volume>,
                )
            })
            .collect::<Result<Vec<_>, SinkError>>()?;
        Ok(MemSink {
            volumes,
            state: Mutex::new(ReplicaState::default()),
        })
    }

    /// A replica over existing volumes whose state is kept in memory only:
    /// for offline synchronisation of two images.
    pub fn with_volumes(volumes: Vec<Arc<dyn Volume>>) -> Self {
        MemSink {
            volumes,
            state: Mutex::new(ReplicaState::default()),
        }
    }

    /// A replica over existing volumes that the caller knows to hold the
    /// master as `state` says: with `synced` set, a synchronisation from a
    /// source that knows what changed since (a dirty bitmap, a change log)
    /// compares or copies only those regions.
    pub fn with_state(volumes: Vec<Arc<dyn Volume>>, state: ReplicaState) -> Self {
        MemSink {
            volumes,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplicaState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ReplicaSink for MemSink {
    fn volume_count(&self) -> usize {
        self.volumes.len()
    }

    fn volume(&self, id: VolumeId) -> Result<Arc<dyn Volume>, SinkError> {
        super::volume_at(&self.volumes, id).cloned()
    }

    fn state(&self) -> ReplicaState {
        *self.lock()
    }

    fn apply(&self, records: &[Record]) -> Result<Seq, SinkError> {
        let mut state = self.lock();
        let todo = unapplied(state.applied, records)?;
        for r in todo {
            super::volume_at(&self.volumes, r.volume)?;
        }
        write_records(&self.volumes, todo)?;
        if let Some(last) = todo.last() {
            state.applied = last.seq;
        }
        Ok(state.applied)
    }

    fn begin_sync(&self) -> Result<(), SinkError> {
        self.lock().consistent = false;
        Ok(())
    }

    /// Flushes the volumes first: the synchronisation's writes are durable
    /// when this returns, as the contract of `end_sync` wants.
    fn end_sync(&self, base: Seq) -> Result<(), SinkError> {
        for v in &self.volumes {
            v.flush()?;
        }
        let mut state = self.lock();
        state.applied = base;
        state.synced = true;
        Ok(())
    }

    fn mark_consistent(&self, seq: Seq) -> Result<(), SinkError> {
        let mut state = self.lock();
        super::check_consistent(&state, seq)?;
        state.consistent = true;
        Ok(())
    }
}
