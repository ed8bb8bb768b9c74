//! The in-process peer: the replica is a [`ReplicaSink`] in the same process.

use std::sync::Arc;

use super::{wire, SyncError, SyncPeer, Traffic};
use crate::hash::{Hash, Node, TreeCache, HASH_LEN};
use crate::journal::Record;
use crate::sink::{ReplicaSink, ReplicaState};
use crate::volume::Volume;
use crate::{Seq, VolumeId};

/// A [`SyncPeer`] that works directly on a [`ReplicaSink`] in this process,
/// counting traffic as the wire protocol would carry it.
pub struct LocalPeer<'a> {
    sink: &'a dyn ReplicaSink,
    volumes: Vec<Arc<dyn Volume>>,
    sizes: Vec<u64>,
    cache: TreeCache,
    traffic: Traffic,
}

impl std::fmt::Debug for LocalPeer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPeer")
            .field("volumes", &self.volumes)
            .field("traffic", &self.traffic)
            .finish()
    }
}

impl<'a> LocalPeer<'a> {
    /// A peer over `sink`.
    pub fn new(sink: &'a dyn ReplicaSink) -> Self {
        let volumes = (0..sink.volume_count())
            .filter_map(|i| sink.volume(i as VolumeId).ok())
            .collect::<Vec<_>>();
        let sizes = volumes.iter().map(|v| v.size()).collect();
        LocalPeer {
            sink,
            volumes,
            sizes,
            cache: TreeCache::default(),
            traffic: Traffic::default(),
        }
    }

    fn volume(&self, id: VolumeId) -> Result<&Arc<dyn Volume>, SyncError> {
        Ok(crate::sink::volume_at(&self.volumes, id)?)
    }
}

impl SyncPeer for LocalPeer<'_> {
    fn state(&mut self) -> Result<ReplicaState, SyncError> {
        self.traffic.sent += wire::FRAME;
        self.traffic.received += wire::FRAME + 8 + 2;
        Ok(self.sink.state())
    }

    fn begin_sync(&mut self, sizes: &[u64]) -> Result<(), SyncError> {
        self.traffic.sent += wire::FRAME + 4 + 8 * sizes.len() as u64;
        self.traffic.received += wire::FRAME;
        if sizes.len() != self.volumes.len() {
            return Err(SyncError::VolumeCount {
                master: sizes.len(),
                replica: self.volumes.len(),
            });
        }
        for (i, (&master, v)) in sizes.iter().zip(&self.volumes).enumerate() {
            if v.size() < master {
                return Err(SyncError::SizeMismatch {
                    volume: i as VolumeId,
                    master,
                    replica: v.size(),
                });
            }
        }
        self.sizes = sizes.to_vec();
        self.cache.clear();
        Ok(self.sink.begin_sync()?)
    }

    fn hashes(&mut self, volume: VolumeId, nodes: &[Node]) -> Result<Vec<Hash>, SyncError> {
        self.traffic.sent += wire::FRAME + 4 + wire::NODE_REF * nodes.len() as u64;
        self.traffic.received += wire::FRAME + (HASH_LEN * nodes.len()) as u64;
        let v = self.volume(volume)?.clone();
        let size = self
            .sizes
            .get(volume as usize)
            .copied()
            .unwrap_or_else(|| v.size());
        Ok(self.cache.hashes(volume, &*v, size, nodes)?)
    }

    fn write(&mut self, volume: VolumeId, offset: u64, data: &[u8]) -> Result<(), SyncError> {
        self.traffic.sent += wire::FRAME + wire::WRITE_HEADER + data.len() as u64;
        Ok(self.volume(volume)?.write_at(offset, data)?)
    }

    fn zero(&mut self, volume: VolumeId, offset: u64, len: u64) -> Result<(), SyncError> {
        self.traffic.sent += wire::FRAME + wire::WRITE_HEADER;
        Ok(self.volume(volume)?.write_zeroes(offset, len)?)
    }

    fn end_sync(&mut self, base: Seq) -> Result<(), SyncError> {
        self.traffic.sent += wire::FRAME + 8;
        self.traffic.received += wire::FRAME + 8;
        self.cache.clear();
        Ok(self.sink.end_sync(base)?)
    }

    fn apply(&mut self, records: &[Record]) -> Result<Seq, SyncError> {
        let data: u64 = records.iter().map(Record::data_bytes).sum();
        self.traffic.sent += wire::FRAME + 4 + wire::RECORD_HEADER * records.len() as u64 + data;
        self.traffic.received += wire::FRAME + 8;
        self.cache.clear();
        Ok(self.sink.apply(records)?)
    }

    fn mark_consistent(&mut self, seq: Seq) -> Result<(), SyncError> {
        self.traffic.sent += wire::FRAME + 8;
        self.traffic.received += wire::FRAME;
        Ok(self.sink.mark_consistent(seq)?)
    }

    fn traffic(&self) -> Traffic {
        self.traffic
    }
}
