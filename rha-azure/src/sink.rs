//! [`PageBlobSink`]: a [`ReplicaSink`] whose disks are fixed-VHD page blobs.
//!
//! ```text
//! <container>/<prefix>replica.json   state: volumes, applied sequence, consistent, synced,
//!                                    pending bookmarks (a block blob, replaced atomically)
//! <container>/<prefix>redo.log       the batch being applied (CRC-checked, as FileSink's)
//! <container>/<prefix>disk-0.vhd     volume 0: page blob, data then VHD footer
//! <container>/<prefix>disk-1.vhd     ...
//! ```
//!
//! Every blob is leased (infinitely) under an id derived from the
//! appliance's name ([`lease_id_for`]): a second appliance cannot write the
//! replica; the same appliance restarted after a crash takes its lease back.
//!
//! Applying a batch: write it to `redo.log` (skipped when the whole batch is
//! one page request, which Azure applies atomically), write its pages, then
//! replace `replica.json` with the new applied sequence. Opening the replica
//! after a crash re-applies a complete redo log newer than the state, so the
//! disks are always at a batch boundary. Re-applying is harmless: records
//! carry absolute offsets and every page request is idempotent.

use std::sync::{Arc, Mutex, MutexGuard};

use azure_core::prelude::{IfMatchCondition, LeaseId};
use azure_storage_blobs::prelude::{BlobClient, BlobContentType};
use bytes::Bytes;
use rha_core::journal::{decode_record, encode_record, Payload, Record};
use rha_core::sink::{ReplicaSink, ReplicaState, SinkError};
use rha_core::volume::{check_range, Volume};
use rha_core::{Seq, VolumeId};
use serde::{Deserialize, Serialize};

use crate::error::{AzureError, AzureErrorKind};
use crate::page_blob::{acquire_lease, not_found, release_lease, PageBlobVolume};
use crate::plan::Piece;
use crate::points::{self, DiskRef, PointSelector, RecoveryPoint};
use crate::store::BlobStore;

/// The state blob's name within the replica's prefix.
pub const STATE_BLOB: &str = "replica.json";
/// The redo log blob's name within the replica's prefix.
pub const REDO_BLOB: &str = "redo.log";
const FORMAT: &str = "rha-page-blob-replica";
const REDO_MAGIC: &[u8; 8] = b"RHAREDO1";
const REDO_HEADER: usize = 8 + 8 + 4;

/// Where a replica lives and who writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Prefix of the replica's blob names in the container (`web01-ha/`); a
    /// `/` is added when missing. Empty: the container's root.
    pub prefix: String,
    /// The appliance's name: its lease id is derived from it
    /// ([`lease_id_for`]), so the same appliance reopens its own replica
    /// after a crash while any other is refused.
    pub owner: String,
    /// Break a lease held by another owner instead of failing (when the
    /// appliance that held it is gone for good).
    pub takeover: bool,
}

impl SinkConfig {
    /// A replica under `prefix`, written by `owner`, without takeover.
    pub fn new(prefix: impl Into<String>, owner: impl Into<String>) -> Self {
        SinkConfig {
            prefix: prefix.into(),
            owner: owner.into(),
            takeover: false,
        }
    }
}

/// The lease id an owner (appliance) name stands for: a UUID made from a
/// BLAKE3 hash of the name, so it is the same on every start.
pub fn lease_id_for(owner: &str) -> LeaseId {
    let h = blake3::hash(format!("rha-azure lease owner\0{owner}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    b[6] = (b[6] & 0x0F) | 0x40; // version 4 layout
    b[8] = (b[8] & 0x3F) | 0x80; // RFC 4122 variant
    LeaseId::from(uuid::Uuid::from_bytes(b))
}

fn normalise_prefix(p: &str) -> String {
    let p = p.trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct VolumeDoc {
    blob: String,
    size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingBookmark {
    name: String,
    seq: Seq,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StateDoc {
    format: String,
    version: u32,
    /// The lease id of the appliance that created the replica.
    owner: String,
    /// True until every disk exists: an interrupted creation.
    creating: bool,
    volumes: Vec<VolumeDoc>,
    #[serde(flatten)]
    state: ReplicaState,
    #[serde(default)]
    pending_bookmarks: Vec<PendingBookmark>,
}

/// A replica whose disks are fixed-VHD page blobs in one container.
pub struct PageBlobSink {
    store: BlobStore,
    prefix: String,
    lease: LeaseId,
    state_client: BlobClient,
    state_url: String,
    redo_client: BlobClient,
    redo_url: String,
    disks: Vec<Arc<PageBlobVolume>>,
    volumes: Vec<Arc<dyn Volume>>,
    doc: Mutex<StateDoc>,
}

impl std::fmt::Debug for PageBlobSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBlobSink")
            .field("state", &self.state_url)
            .field("disks", &self.disks)
            .finish()
    }
}

impl PageBlobSink {
    /// Creates a replica of empty disks of the given sizes (each rounded up
    /// to a whole MiB, as Azure requires) under `config.prefix`.
    ///
    /// Fails with [`AzureErrorKind::AlreadyExists`] when a replica is there,
    /// except one whose creation by the same owner was interrupted, which is
    /// finished.
    pub fn create(
        store: &BlobStore,
        config: &SinkConfig,
        sizes: &[u64],
    ) -> Result<PageBlobSink, AzureError> {
        let prefix = normalise_prefix(&config.prefix);
        let lease = lease_id_for(&config.owner);
        let state_name = format!("{prefix}{STATE_BLOB}");
        let state_url = store.blob_url(&state_name);
        let state_client = store.blob(&state_name);
        let volumes: Vec<VolumeDoc> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| VolumeDoc {
                blob: format!("{prefix}disk-{i}.vhd"),
                size,
            })
            .collect();
        let mut doc = StateDoc {
            format: FORMAT.into(),
            version: 1,
            owner: lease.to_string(),
            creating: true,
            volumes,
            state: ReplicaState::default(),
            pending_bookmarks: Vec::new(),
        };
        // Claim the place: only one creator can make the state blob.
        let claimed = store.block_on(put_json(
            store,
            &state_client,
            &state_url,
            &doc,
            None,
            Some(IfMatchCondition::NotMatch("*".into())),
        ));
        match claimed {
            Ok(()) => {}
            Err(e) if matches!(e.status(), Some(409) | Some(412)) => {
                let existing = store.block_on(read_doc(store, &state_client, &state_url))?;
                let resumable = existing.creating
                    && existing.owner == doc.owner
                    && existing.volumes == doc.volumes;
                if !resumable {
                    return Err(AzureError::local(
                        "create replica at",
                        &state_url,
                        None,
                        AzureErrorKind::AlreadyExists,
                    ));
                }
                tracing::warn!(
                    url = state_url,
                    "finishing the interrupted creation of a replica"
                );
            }
            Err(e) => return Err(e),
        }
        store.block_on(acquire_lease(
            store,
            &state_client,
            &state_url,
            lease,
            config.takeover,
        ))?;
        let (redo_client, redo_url) = redo_blob(store, &prefix, lease, config.takeover)?;
        let mut disks = Vec::with_capacity(sizes.len());
        for v in &doc.volumes {
            let (disk, _) = PageBlobVolume::create(store, &v.blob, v.size, Some(lease))?;
            disks.push(Arc::new(disk));
        }
        doc.creating = false;
        store.block_on(put_json(
            store,
            &state_client,
            &state_url,
            &doc,
            Some(lease),
            None,
        ))?;
        Ok(PageBlobSink::assemble(
            store,
            prefix,
            lease,
            (state_client, state_url),
            (redo_client, redo_url),
            disks,
            doc,
        ))
    }

    /// Opens an existing replica, leasing its blobs and finishing a batch a
    /// crash interrupted.
    pub fn open(store: &BlobStore, config: &SinkConfig) -> Result<PageBlobSink, AzureError> {
        let prefix = normalise_prefix(&config.prefix);
        let lease = lease_id_for(&config.owner);
        let state_name = format!("{prefix}{STATE_BLOB}");
        let state_url = store.blob_url(&state_name);
        let state_client = store.blob(&state_name);
        store.block_on(acquire_lease(
            store,
            &state_client,
            &state_url,
            lease,
            config.takeover,
        ))?;
        let doc = store.block_on(read_doc(store, &state_client, &state_url))?;
        if doc.creating {
            return Err(AzureError::local(
                "open replica at",
                &state_url,
                None,
                AzureErrorKind::BadBlob {
                    reason: "the replica's creation was interrupted; create it again with the \
                             same owner and sizes to finish it, or delete it"
                        .into(),
                },
            ));
        }
        let (redo_client, redo_url) = redo_blob(store, &prefix, lease, config.takeover)?;
        let mut disks = Vec::with_capacity(doc.volumes.len());
        for v in &doc.volumes {
            let disk = PageBlobVolume::open(store, &v.blob, Some(lease), config.takeover)?;
            if disk.size() < v.size {
                return Err(AzureError::local(
                    "open replica disk",
                    disk.url(),
                    None,
                    AzureErrorKind::BadBlob {
                        reason: format!(
                            "the disk holds {} bytes but the replica needs {}",
                            disk.size(),
                            v.size
                        ),
                    },
                ));
            }
            disks.push(Arc::new(disk));
        }
        let sink = PageBlobSink::assemble(
            store,
            prefix,
            lease,
            (state_client, state_url),
            (redo_client, redo_url),
            disks,
            doc,
        );
        sink.recover()?;
        Ok(sink)
    }

    fn assemble(
        store: &BlobStore,
        prefix: String,
        lease: LeaseId,
        state: (BlobClient, String),
        redo: (BlobClient, String),
        disks: Vec<Arc<PageBlobVolume>>,
        doc: StateDoc,
    ) -> PageBlobSink {
        let volumes = disks.iter().map(|d| d.clone() as Arc<dyn Volume>).collect();
        PageBlobSink {
            store: store.clone(),
            prefix,
            lease,
            state_client: state.0,
            state_url: state.1,
            redo_client: redo.0,
            redo_url: redo.1,
            disks,
            volumes,
            doc: Mutex::new(doc),
        }
    }

    /// The replica disks, in volume order.
    pub fn disks(&self) -> &[Arc<PageBlobVolume>] {
        &self.disks
    }

    /// The URL of each replica disk, in volume order.
    pub fn disk_urls(&self) -> Vec<String> {
        self.disks.iter().map(|d| d.url().to_string()).collect()
    }

    /// The store the replica lives in.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The replica's blob name prefix (ending in `/`, or empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lease id the replica's blobs are held under.
    pub fn lease_id(&self) -> String {
        self.lease.to_string()
    }

    /// Releases the leases, so that another appliance can open the replica
    /// without a takeover. Dropping the sink keeps them (as a crash would):
    /// the same owner opens it again at any time.
    pub fn close(self) -> Result<(), AzureError> {
        let _doc = self.lock();
        self.store.block_on(async {
            for d in &self.disks {
                d.release_lease().await;
            }
            release_lease(&self.store, &self.redo_client, &self.redo_url, self.lease).await;
            release_lease(&self.store, &self.state_client, &self.state_url, self.lease).await;
        });
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, StateDoc> {
        self.doc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the state document, then makes it the in-memory one.
    fn save(&self, doc: &mut StateDoc, next: StateDoc) -> Result<(), AzureError> {
        self.store.block_on(put_json(
            &self.store,
            &self.state_client,
            &self.state_url,
            &next,
            Some(self.lease),
            None,
        ))?;
        *doc = next;
        Ok(())
    }

    /// Re-applies a complete redo log newer than the state.
    fn recover(&self) -> Result<(), AzureError> {
        let Some(records) = self.read_redo()? else {
            return Ok(());
        };
        let mut doc = self.lock();
        let applied = doc.state.applied;
        let todo = match unapplied(applied, &records) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(url = self.redo_url, error = %e, "redo log ignored: it does not follow the state");
                return Ok(());
            }
        };
        let Some(last) = todo.last() else {
            return Ok(());
        };
        tracing::warn!(
            url = self.redo_url,
            "replica: finishing batch {}..={} that was interrupted",
            todo[0].seq,
            last.seq
        );
        self.write_batch(todo, false).map_err(|e| match e {
            BatchError::Azure(e) => e,
            BatchError::Sink(s) => AzureError::local(
                "recover replica at",
                &self.redo_url,
                None,
                AzureErrorKind::BadBlob {
                    reason: format!("the interrupted batch cannot be applied: {s}"),
                },
            ),
        })?;
        let mut next = doc.clone();
        next.state.applied = last.seq;
        self.save(&mut doc, next)
    }

    fn read_redo(&self) -> Result<Option<Vec<Record>>, AzureError> {
        let client = &self.redo_client;
        let bytes =
            self.store
                .block_on(self.store.call("read redo log", &self.redo_url, None, || {
                    client.get_content()
                }));
        let bytes = match bytes {
            Ok(b) => b,
            // 416: the blob is empty (no batch was ever logged).
            Err(e) if matches!(e.status(), Some(404) | Some(416)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(parse_redo(&bytes, &self.redo_url))
    }

    /// Writes a batch's pages (after its redo log, when `redo` and the batch
    /// takes more than one request).
    fn write_batch(&self, records: &[Record], redo: bool) -> Result<(), BatchError> {
        let mut per_volume: Vec<Vec<(u64, Piece<'_>)>> = vec![Vec::new(); self.disks.len()];
        for r in records {
            let disk = self
                .disks
                .get(r.volume as usize)
                .ok_or(SinkError::NoSuchVolume {
                    id: r.volume,
                    count: self.disks.len(),
                })?;
            let (piece, len) = match &r.payload {
                Payload::Data(d) => (Piece::Data(d), d.len() as u64),
                Payload::Zero(n) => (Piece::Zero(*n), *n),
            };
            check_range(&**disk, "write", r.offset, len).map_err(SinkError::from)?;
            per_volume[r.volume as usize].push((r.offset, piece));
        }
        let plans: Vec<_> = self
            .disks
            .iter()
            .zip(&per_volume)
            .map(|(d, p)| d.plan(p))
            .collect();
        let requests: usize = plans.iter().map(|p| p.ops.len()).sum();
        if redo && requests > 1 {
            self.write_redo(records)?;
        }
        for (disk, plan) in self.disks.iter().zip(&plans) {
            if !plan.ops.is_empty() {
                disk.apply_plan(plan)?;
            }
        }
        Ok(())
    }

    fn write_redo(&self, records: &[Record]) -> Result<(), AzureError> {
        let mut payload = Vec::new();
        for r in records {
            encode_record(r, &mut payload);
        }
        let mut out = Vec::with_capacity(REDO_HEADER + payload.len());
        out.extend_from_slice(REDO_MAGIC);
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        let body = Bytes::from(out);
        let (client, lease) = (&self.redo_client, self.lease);
        self.store
            .block_on(self.store.call("write redo log", &self.redo_url, None, || {
                client
                    .put_block_blob(body.clone())
                    .lease_id(lease)
                    .into_future()
            }))
            .map(|_| ())
    }

    /// Applies records (all unapplied, consecutive) and records the new sequence.
    fn apply_segment(&self, doc: &mut StateDoc, records: &[Record]) -> Result<(), SinkError> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        self.write_batch(records, true).map_err(SinkError::from)?;
        let mut next = doc.clone();
        next.state.applied = last.seq;
        Ok(self.save(doc, next)?)
    }

    fn disk_refs(&self) -> Vec<DiskRef<'_>> {
        self.disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskRef {
                volume: i as VolumeId,
                blob: d.blob_name(),
                client: d.client(),
                lease: d.lease(),
            })
            .collect()
    }

    fn take_point_locked(&self, doc: &StateDoc, name: &str) -> Result<RecoveryPoint, AzureError> {
        let refs = self.disk_refs();
        self.store.block_on(points::take_point(
            &self.store,
            &refs,
            name,
            doc.state.applied,
            doc.state.consistent,
        ))
    }

    /// Takes a recovery point now, at the sequence the replica has applied:
    /// one snapshot per disk, between batches.
    pub fn create_recovery_point(&self, name: &str) -> Result<RecoveryPoint, AzureError> {
        let doc = self.lock();
        self.take_point_locked(&doc, name)
    }

    /// A bookmark of the master's journal at `seq`: when the replica has
    /// applied exactly `seq`, a recovery point is taken now and returned;
    /// when `seq` is still ahead, the bookmark is recorded durably and the
    /// point is taken as soon as a batch reaches it (a batch that spans
    /// `seq` is applied in two parts), and `None` is returned.
    ///
    /// A bookmark behind the applied sequence is refused: the disks already
    /// hold later changes.
    pub fn bookmark(&self, name: &str, seq: Seq) -> Result<Option<RecoveryPoint>, AzureError> {
        let mut doc = self.lock();
        let applied = doc.state.applied;
        if seq == applied {
            return self.take_point_locked(&doc, name).map(Some);
        }
        if seq < applied {
            return Err(AzureError::local(
                "bookmark",
                &self.state_url,
                None,
                AzureErrorKind::Invalid {
                    reason: format!(
                        "bookmark `{name}` marks sequence {seq}, but the replica already applied \
                         up to {applied}: its disks hold later changes. Send bookmarks before \
                         the batches that follow them, or take a point now with \
                         `create_recovery_point`"
                    ),
                },
            ));
        }
        let mut next = doc.clone();
        next.pending_bookmarks.push(PendingBookmark {
            name: name.to_string(),
            seq,
        });
        next.pending_bookmarks.sort_by_key(|b| b.seq);
        self.save(&mut doc, next)?;
        Ok(None)
    }

    /// Every complete recovery point of this replica, oldest first.
    pub fn recovery_points(&self) -> Result<Vec<RecoveryPoint>, AzureError> {
        self.store
            .block_on(points::list_points(&self.store, &self.prefix))
    }

    /// The recovery point `selector` names. `Latest` is the replica as it
    /// is now: the newest point if it is at the applied sequence, otherwise a
    /// new point (named `latest`) taken now. The replica must be consistent
    /// for `Latest`.
    pub fn resolve_point(&self, selector: &PointSelector) -> Result<RecoveryPoint, AzureError> {
        let doc = self.lock();
        let points = self
            .store
            .block_on(points::list_points(&self.store, &self.prefix))?;
        if *selector == PointSelector::Latest {
            if !doc.state.consistent {
                return Err(not_consistent(&self.state_url, &doc.state));
            }
            if let Some(p) = points::select_point(&points, selector) {
                if p.seq == doc.state.applied && p.consistent {
                    return Ok(p.clone());
                }
            }
            return self.take_point_locked(&doc, "latest");
        }
        points::select_point(&points, selector)
            .cloned()
            .ok_or_else(|| points::unknown_point(&self.state_url, selector, &points))
    }

    /// Deletes the snapshots of a recovery point.
    pub fn delete_recovery_point(&self, point: &RecoveryPoint) -> Result<(), AzureError> {
        self.store
            .block_on(points::delete_point(&self.store, point))
    }
}

fn not_consistent(url: &str, st: &ReplicaState) -> AzureError {
    AzureError::local(
        "resolve recovery point `latest` of",
        url,
        None,
        AzureErrorKind::Invalid {
            reason: format!(
                "the replica is not consistent (a synchronisation is under way; applied {}), so \
                 its disks are no usable recovery point: wait for the synchronisation to end, \
                 or choose an earlier recovery point",
                st.applied
            ),
        },
    )
}

enum BatchError {
    Azure(AzureError),
    Sink(SinkError),
}

impl From<AzureError> for BatchError {
    fn from(e: AzureError) -> Self {
        BatchError::Azure(e)
    }
}

impl From<SinkError> for BatchError {
    fn from(e: SinkError) -> Self {
        BatchError::Sink(e)
    }
}

impl From<BatchError> for SinkError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Azure(a) => a.into(),
            BatchError::Sink(s) => s,
        }
    }
}

impl ReplicaSink for PageBlobSink {
    fn volume_count(&self) -> usize {
        self.volumes.len()
    }

    fn volume(&self, id: VolumeId) -> Result<Arc<dyn Volume>, SinkError> {
        self.volumes
            .get(id as usize)
            .cloned()
            .ok_or(SinkError::NoSuchVolume {
                id,
                count: self.volumes.len(),
            })
    }

    fn state(&self) -> ReplicaState {
        self.lock().state
    }

    fn apply(&self, records: &[Record]) -> Result<Seq, SinkError> {
        let mut doc = self.lock();
        self.flush_disks()?;
        let mut todo = unapplied(doc.state.applied, records)?;
        for r in todo {
            if r.volume as usize >= self.disks.len() {
                return Err(SinkError::NoSuchVolume {
                    id: r.volume,
                    count: self.disks.len(),
                });
            }
        }
        while !todo.is_empty() {
            // Apply up to the next pending bookmark inside the batch, take its point.
            let (first, last) = (todo[0].seq, todo[todo.len() - 1].seq);
            let cut = doc
                .pending_bookmarks
                .iter()
                .map(|b| b.seq)
                .find(|&s| s >= first && s <= last);
            let n = cut.map_or(todo.len(), |s| (s - first + 1) as usize);
            self.apply_segment(&mut doc, &todo[..n])?;
            todo = &todo[n..];
            self.take_due_bookmarks(&mut doc)?;
        }
        Ok(doc.state.applied)
    }

    fn begin_sync(&self) -> Result<(), SinkError> {
        let mut doc = self.lock();
        let mut next = doc.clone();
        next.state.consistent = false;
        Ok(self.save(&mut doc, next)?)
    }

    fn end_sync(&self, base: Seq) -> Result<(), SinkError> {
        // The synchronisation's writes still in flight land first.
        self.flush_disks()?;
        let mut doc = self.lock();
        let mut next = doc.clone();
        next.state.applied = base;
        next.state.synced = true;
        let dropped: Vec<_> = next
            .pending_bookmarks
            .iter()
            .filter(|b| b.seq < base)
            .map(|b| b.name.clone())
            .collect();
        if !dropped.is_empty() {
            tracing::warn!(
                ?dropped,
                base,
                "bookmarks inside a resynchronisation are dropped: the disks never held them"
            );
        }
        next.pending_bookmarks.retain(|b| b.seq >= base);
        self.save(&mut doc, next)?;
        Ok(self.take_due_bookmarks(&mut doc)?)
    }

    fn mark_consistent(&self, seq: Seq) -> Result<(), SinkError> {
        let mut doc = self.lock();
        if seq > doc.state.applied {
            return Err(SinkError::Mismatch {
                what: format!(
                    "cannot be consistent at sequence {seq}: only {} was applied",
                    doc.state.applied
                ),
            });
        }
        let mut next = doc.clone();
        next.state.consistent = true;
        Ok(self.save(&mut doc, next)?)
    }
}

impl PageBlobSink {
    /// Waits for the disks' background writes (synchronisation writes).
    fn flush_disks(&self) -> Result<(), SinkError> {
        for d in &self.disks {
            d.flush()?;
        }
        Ok(())
    }

    /// Takes the points of pending bookmarks at the applied sequence. Ones
    /// left behind (their point failed and the batch was applied by a
    /// re-send) can no longer be taken: they are dropped with a warning.
    fn take_due_bookmarks(&self, doc: &mut StateDoc) -> Result<(), AzureError> {
        let applied = doc.state.applied;
        if !doc.pending_bookmarks.iter().any(|b| b.seq <= applied) {
            return Ok(());
        }
        for b in &doc.pending_bookmarks {
            if b.seq == applied {
                self.take_point_locked(doc, &b.name)?;
            } else if b.seq < applied {
                tracing::warn!(
                    name = b.name,
                    seq = b.seq,
                    applied,
                    "bookmark dropped: the replica went past it before its recovery point could be taken"
                );
            }
        }
        let mut next = doc.clone();
        next.pending_bookmarks.retain(|b| b.seq > applied);
        self.save(doc, next)
    }
}

/// The records of `records` not yet applied, after checking sequence order
/// (the rules of [`ReplicaSink::apply`]).
fn unapplied(applied: Seq, records: &[Record]) -> Result<&[Record], SinkError> {
    for pair in records.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(SinkError::OutOfOrder {
                previous: pair[0].seq,
                next: pair[1].seq,
            });
        }
    }
    let skip = records.iter().take_while(|r| r.seq <= applied).count();
    let rest = &records[skip..];
    match rest.first() {
        Some(first) if first.seq != applied + 1 => Err(SinkError::Gap {
            applied,
            first: first.seq,
        }),
        _ => Ok(rest),
    }
}

fn parse_redo(bytes: &[u8], url: &str) -> Option<Vec<Record>> {
    if bytes.len() < REDO_HEADER || &bytes[..8] != REDO_MAGIC {
        return None;
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[8..16]);
    let mut crc4 = [0u8; 4];
    crc4.copy_from_slice(&bytes[16..20]);
    let payload = &bytes[REDO_HEADER..];
    if u64::from_le_bytes(len8) != payload.len() as u64
        || crc32fast::hash(payload) != u32::from_le_bytes(crc4)
    {
        tracing::warn!(
            url,
            "the redo log is incomplete; the batch it held was never applied"
        );
        return None;
    }
    let mut records = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        match decode_record(&payload[at..]) {
            Ok(Some((r, used))) => {
                records.push(r);
                at += used;
            }
            _ => {
                tracing::warn!(url, "the redo log holds an undecodable record; ignored");
                return None;
            }
        }
    }
    Some(records)
}

/// Makes sure the redo blob exists and is leased.
fn redo_blob(
    store: &BlobStore,
    prefix: &str,
    lease: LeaseId,
    takeover: bool,
) -> Result<(BlobClient, String), AzureError> {
    let name = format!("{prefix}{REDO_BLOB}");
    let url = store.blob_url(&name);
    let client = store.blob(&name);
    store.block_on(async {
        match acquire_lease(store, &client, &url, lease, takeover).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind == AzureErrorKind::NotFound => {
                let created = store
                    .call("create redo log", &url, None, || {
                        client
                            .put_block_blob(Bytes::new())
                            .if_match(IfMatchCondition::NotMatch("*".into()))
                            .into_future()
                    })
                    .await;
                match created {
                    // 409/412: someone made it meanwhile (or our first attempt did).
                    Err(e) if !matches!(e.status(), Some(409) | Some(412)) => return Err(e),
                    _ => {}
                }
                acquire_lease(store, &client, &url, lease, takeover).await
            }
            Err(e) => Err(e),
        }
    })?;
    Ok((client, url))
}

async fn put_json(
    store: &BlobStore,
    client: &BlobClient,
    url: &str,
    doc: &StateDoc,
    lease: Option<LeaseId>,
    condition: Option<IfMatchCondition>,
) -> Result<(), AzureError> {
    let body = Bytes::from(serde_json::to_vec_pretty(doc).map_err(|e| {
        AzureError::local(
            "write state",
            url,
            None,
            AzureErrorKind::Invalid {
                reason: format!("cannot encode the state: {e}"),
            },
        )
    })?);
    store
        .call("write state", url, None, || {
            let mut b = client
                .put_block_blob(body.clone())
                .content_type(BlobContentType::from("application/json"));
            if let Some(l) = lease {
                b = b.lease_id(l);
            }
            if let Some(c) = &condition {
                b = b.if_match(c.clone());
            }
            b.into_future()
        })
        .await
        .map(|_| ())
}

async fn read_doc(
    store: &BlobStore,
    client: &BlobClient,
    url: &str,
) -> Result<StateDoc, AzureError> {
    let bytes = store
        .call("read state", url, None, || client.get_content())
        .await
        .map_err(not_found)?;
    let bad = |reason: String| {
        AzureError::local("read state", url, None, AzureErrorKind::BadBlob { reason })
    };
    let doc: StateDoc = serde_json::from_slice(&bytes).map_err(|e| {
        bad(format!(
            "{e}; the replica's state is damaged: resynchronise into a new replica"
        ))
    })?;
    if doc.format != FORMAT {
        return Err(bad(format!(
            "it is a `{}`, not an rha page-blob replica",
            doc.format
        )));
    }
    if doc.version != 1 {
        return Err(bad(format!(
            "version {} is not known to this rha; upgrade rha",
            doc.version
        )));
    }
    Ok(doc)
}

/// Reads the state of the replica under `prefix` without opening it (no lease taken).
pub fn read_replica_state(store: &BlobStore, prefix: &str) -> Result<ReplicaState, AzureError> {
    let prefix = normalise_prefix(prefix);
    let name = format!("{prefix}{STATE_BLOB}");
    let doc = store.block_on(read_doc(store, &store.blob(&name), &store.blob_url(&name)))?;
    Ok(doc.state)
}

/// Every complete recovery point of the replica under `prefix`, oldest first
/// (no lease needed).
pub fn list_recovery_points(
    store: &BlobStore,
    prefix: &str,
) -> Result<Vec<RecoveryPoint>, AzureError> {
    let prefix = normalise_prefix(prefix);
    store.block_on(points::list_points(store, &prefix))
}

/// The recovery point `selector` names in the replica under `prefix`,
/// without opening it: for switchover and `vm start` once replication has
/// stopped.
///
/// `Latest` is the replica as it is now: the newest point when it is at the
/// applied sequence; otherwise a point (named `latest`) is taken now, which
/// needs a consistent replica with no interrupted batch, and fails when the
/// state changes meanwhile (replication still running).
pub fn resolve_recovery_point(
    store: &BlobStore,
    prefix: &str,
    selector: &PointSelector,
) -> Result<RecoveryPoint, AzureError> {
    let prefix = normalise_prefix(prefix);
    let state_name = format!("{prefix}{STATE_BLOB}");
    let state_url = store.blob_url(&state_name);
    let state_client = store.blob(&state_name);
    let points = store.block_on(points::list_points(store, &prefix))?;
    if *selector != PointSelector::Latest {
        return points::select_point(&points, selector)
            .cloned()
            .ok_or_else(|| points::unknown_point(&state_url, selector, &points));
    }
    let before = store.block_on(read_doc(store, &state_client, &state_url))?;
    if !before.state.consistent {
        return Err(not_consistent(&state_url, &before.state));
    }
    if let Some(p) = points::select_point(&points, selector) {
        if p.seq == before.state.applied && p.consistent {
            return Ok(p.clone());
        }
    }
    let redo_name = format!("{prefix}{REDO_BLOB}");
    let redo_url = store.blob_url(&redo_name);
    let redo_client = store.blob(&redo_name);
    let redo = store.block_on(store.call("read redo log", &redo_url, None, || {
        redo_client.get_content()
    }));
    if let Ok(bytes) = redo {
        if let Some(records) = parse_redo(&bytes, &redo_url) {
            if records.last().is_some_and(|r| r.seq > before.state.applied) {
                return Err(AzureError::local(
                    "resolve recovery point `latest` of",
                    &state_url,
                    None,
                    AzureErrorKind::Invalid {
                        reason: "a batch was being applied when the appliance stopped; open the \
                                 replica (PageBlobSink::open) to finish it, then resolve again"
                            .into(),
                    },
                ));
            }
        }
    }
    let clients: Vec<BlobClient> = before.volumes.iter().map(|v| store.blob(&v.blob)).collect();
    let refs: Vec<DiskRef<'_>> = before
        .volumes
        .iter()
        .zip(&clients)
        .enumerate()
        .map(|(i, (v, c))| DiskRef {
            volume: i as VolumeId,
            blob: &v.blob,
            client: c,
            lease: None,
        })
        .collect();
    let point = store.block_on(points::take_point(
        store,
        &refs,
        "latest",
        before.state.applied,
        true,
    ))?;
    let after = store.block_on(read_doc(store, &state_client, &state_url))?;
    if after.state != before.state {
        store.block_on(points::delete_point(store, &point))?;
        return Err(AzureError::local(
            "resolve recovery point `latest` of",
            &state_url,
            None,
            AzureErrorKind::Invalid {
                reason: format!(
                    "the replica changed while its disks were snapshotted (applied {} → {}): \
                     replication is still running; stop it first, or resolve through the open sink",
                    before.state.applied, after.state.applied
                ),
            },
        ));
    }
    Ok(point)
}
