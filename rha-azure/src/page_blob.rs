//! [`PageBlobVolume`]: a [`Volume`] over an Azure page blob laid out as a
//! fixed VHD, the format Azure makes managed disks from.
//!
//! ```text
//!   0                                  size (whole MiB)   +512
//!   ├──────────── raw disk data ─────────────┼── VHD footer ──┤   one page blob
//!        read_at / write_at / write_zeroes       written at creation, never through the volume
//! ```
//!
//! Any byte offset and length is accepted: partial pages are read, patched
//! and written whole (under a per-page lock, so concurrent writers of
//! neighbouring bytes never lose each other's data). Writes go out as page
//! writes of at most 4 MiB, several in flight; zero ranges are cleared.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use azure_core::prelude::{LeaseBreakPeriod, LeaseDuration, LeaseId, ProposedLeaseId, Range};
use azure_storage_blobs::prelude::{BA512Range, BlobClient, BlobVersioning, Snapshot};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use rha_core::volume::vhd::{Footer, SizeReport, AZURE_SIZE_ALIGNMENT, FOOTER_SIZE};
use rha_core::volume::{check_range, Volume, VolumeError};

use crate::error::{AzureError, AzureErrorKind};
use crate::plan::{Op, Piece, Plan, SECTOR};
use crate::store::{add, BlobStore, Caller};

const FOOTER_LEN: u64 = FOOTER_SIZE as u64;

/// A fixed-VHD page blob presented as a volume of its virtual size.
///
/// Writes carry the volume's lease id when it has one (see
/// [`PageBlobVolume::create`]); a blob leased by someone else refuses them
/// (`412`), so two appliances never write one disk.
///
/// Every write is committed by the service when the call returns, so
/// [`Volume::flush`] has nothing to do.
pub struct PageBlobVolume {
    store: BlobStore,
    client: BlobClient,
    name: String,
    url: String,
    size: u64,
    footer: Footer,
    lease: Option<LeaseId>,
    snapshot: Option<String>,
    locks: SectorLocks,
    behind: Arc<WriteBehind>,
}

impl std::fmt::Debug for PageBlobVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBlobVolume")
            .field("url", &self.url)
            .field("size", &self.size)
            .field("leased", &self.lease.is_some())
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

impl PageBlobVolume {
    /// Creates the page blob `name` (replacing any blob of that name that is
    /// not leased) as an empty fixed VHD of at least `size` bytes, rounded
    /// up to a whole MiB as Azure requires (the [`SizeReport`] says by how
    /// much). With `lease`, the blob is leased (infinitely) under that id
    /// before the footer is written, and every write carries it.
    pub fn create(
        store: &BlobStore,
        name: &str,
        size: u64,
        lease: Option<LeaseId>,
    ) -> Result<(PageBlobVolume, SizeReport), AzureError> {
        let url = store.blob_url(name);
        let virtual_size = size
            .checked_next_multiple_of(AZURE_SIZE_ALIGNMENT)
            .filter(|&v| v > 0 && v.checked_add(FOOTER_LEN).is_some())
            .ok_or_else(|| {
                AzureError::local(
                    "create",
                    &url,
                    None,
                    AzureErrorKind::Invalid {
                        reason: format!(
                            "a fixed-VHD page blob cannot hold {size} bytes: it needs at least one MiB and its size must fit in 64 bits"
                        ),
                    },
                )
            })?;
        let report = SizeReport {
            requested_size: size,
            virtual_size,
        };
        if report.was_rounded() {
            tracing::warn!(
                url,
                requested = size,
                virtual_size,
                "a fixed VHD for Azure must be a whole number of MiB: rounding the size up"
            );
        }
        let client = store.blob(name);
        let footer = Footer::new_fixed(virtual_size);
        store.block_on(async {
            let len = u128::from(virtual_size + FOOTER_LEN);
            let created = store
                .call("create page blob", &url, None, || {
                    client.put_page_blob(len).into_future()
                })
                .await;
            match (created, lease) {
                (Ok(_), _) => {}
                // Leased already: our own interrupted creation, finished now.
                (Err(e), Some(id)) if e.status() == Some(412) => {
                    store
                        .call("create page blob", &url, None, || {
                            client.put_page_blob(len).lease_id(id).into_future()
                        })
                        .await?;
                }
                (Err(e), _) => return Err(e),
            }
            if let Some(id) = lease {
                acquire_lease(store, &client, &url, id, false).await?;
            }
            let bytes = Bytes::copy_from_slice(&footer.to_bytes());
            put_pages(store.caller(), &client, &url, lease, virtual_size, bytes).await
        })?;
        Ok((
            PageBlobVolume::new(store, client, name, url, footer, lease, None),
            report,
        ))
    }

    /// Opens the existing fixed-VHD page blob `name`, checking its footer.
    /// With `lease`, the blob is leased under that id first; `takeover`
    /// breaks a lease someone else holds instead of failing.
    pub fn open(
        store: &BlobStore,
        name: &str,
        lease: Option<LeaseId>,
        takeover: bool,
    ) -> Result<PageBlobVolume, AzureError> {
        let url = store.blob_url(name);
        let client = store.blob(name);
        if let Some(id) = lease {
            store.block_on(acquire_lease(store, &client, &url, id, takeover))?;
        }
        let footer = store.block_on(read_footer(store, &client, &url, None))?;
        Ok(PageBlobVolume::new(
            store, client, name, url, footer, lease, None,
        ))
    }

    /// Opens snapshot `snapshot` of the page blob `name`, read-only.
    pub fn open_snapshot(
        store: &BlobStore,
        name: &str,
        snapshot: &str,
    ) -> Result<PageBlobVolume, AzureError> {
        let url = format!("{}?snapshot={snapshot}", store.blob_url(name));
        let client = store.blob(name);
        let footer = store.block_on(read_footer(store, &client, &url, Some(snapshot)))?;
        Ok(PageBlobVolume::new(
            store,
            client,
            name,
            url,
            footer,
            None,
            Some(snapshot.to_string()),
        ))
    }

    fn new(
        store: &BlobStore,
        client: BlobClient,
        name: &str,
        url: String,
        footer: Footer,
        lease: Option<LeaseId>,
        snapshot: Option<String>,
    ) -> Self {
        PageBlobVolume {
            store: store.clone(),
            client,
            name: name.to_string(),
            url,
            size: footer.current_size,
            footer,
            lease,
            snapshot,
            locks: SectorLocks::default(),
            behind: Arc::new(WriteBehind::default()),
        }
    }

    /// The blob's name in its container.
    pub fn blob_name(&self) -> &str {
        &self.name
    }

    /// The blob's URL (with `?snapshot=` for a snapshot).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The VHD footer at the end of the blob.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The lease id the volume's writes carry, if any.
    pub fn lease_id(&self) -> Option<String> {
        self.lease.map(|l| l.to_string())
    }

    /// The snapshot this volume reads, if it is one.
    pub fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }

    /// The store the blob lives in.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    pub(crate) fn client(&self) -> &BlobClient {
        &self.client
    }

    pub(crate) fn lease(&self) -> Option<LeaseId> {
        self.lease
    }

    /// Releases the lease (best effort: a failure is logged).
    pub(crate) async fn release_lease(&self) {
        if let Some(id) = self.lease {
            release_lease(&self.store, &self.client, &self.url, id).await;
        }
    }

    fn check_writable(&self, op: &'static str) -> Result<(), VolumeError> {
        if self.snapshot.is_some() {
            return Err(VolumeError::ReadOnly {
                volume: self.url.clone(),
                op,
            });
        }
        Ok(())
    }

    /// The requests that apply `pieces`.
    pub(crate) fn plan<'a>(&self, pieces: &[(u64, Piece<'a>)]) -> Plan<'a> {
        Plan::new(pieces, self.store.config().max_request_bytes as u64)
    }

    /// Runs a plan: reads and patches its edge pages (locked meanwhile), then
    /// its requests, several in flight.
    pub(crate) fn apply_plan(&self, plan: &Plan<'_>) -> Result<(), AzureError> {
        let (Some(first), Some(last)) = (plan.ops.first(), plan.ops.last()) else {
            return Ok(());
        };
        // Earlier background writes to these pages land first.
        self.wait_for_range(op_range(first).0, op_range(last).1)?;
        let edges: Vec<u64> = plan.edges.iter().map(|e| e.offset).collect();
        let _guard = self.locks.lock(&edges);
        self.store.block_on(self.run_plan(plan))
    }

    /// Starts the requests of a plan without edge pages in the background
    /// and returns; [`Volume::flush`] waits for them and reports the first
    /// that failed. Contiguous page writes are gathered into requests of up
    /// to `max_request_bytes` (a synchronisation writes 1 MiB at a time);
    /// at most `max_in_flight` requests run at once, each after any earlier
    /// one on the same pages.
    fn write_behind(&self, plan: &Plan<'_>) -> Result<(), AzureError> {
        debug_assert!(plan.edges.is_empty());
        let max_bytes = self.store.config().max_request_bytes;
        for op in &plan.ops {
            match op {
                Op::Put { offset, len, parts } => {
                    let mut gathering = self.behind.gathering();
                    let contiguous = matches!(&*gathering,
                        Some((o, buf)) if o + buf.len() as u64 == *offset
                            && buf.len() + *len as usize <= max_bytes);
                    if !contiguous {
                        if let Some((o, buf)) = gathering.take() {
                            self.start(Background::Put(o, buf.freeze()))?;
                        }
                        *gathering = Some((*offset, BytesMut::with_capacity(max_bytes)));
                    }
                    if let Some((_, buf)) = gathering.as_mut() {
                        for p in parts {
                            buf.extend_from_slice(plan.part_bytes(p, &[]));
                        }
                    }
                    let full = gathering
                        .as_ref()
                        .is_some_and(|(_, buf)| buf.len() == max_bytes);
                    if full {
                        if let Some((o, buf)) = gathering.take() {
                            self.start(Background::Put(o, buf.freeze()))?;
                        }
                    }
                }
                Op::Clear { offset, len } => {
                    self.send_gathered()?;
                    self.start(Background::Clear(*offset, *len))?;
                }
            }
        }
        Ok(())
    }

    /// Starts the page writes gathered so far.
    fn send_gathered(&self) -> Result<(), AzureError> {
        let taken = self.behind.gathering().take();
        match taken {
            Some((o, buf)) => self.start(Background::Put(o, buf.freeze())),
            None => Ok(()),
        }
    }

    /// Starts one background request once there is room for it and no
    /// earlier request on the same pages is in flight.
    fn start(&self, request: Background) -> Result<(), AzureError> {
        let (start, end) = match &request {
            Background::Put(o, d) => (*o, o + d.len() as u64),
            Background::Clear(o, n) => (*o, o + n),
        };
        let max = self.store.config().max_in_flight;
        let mut st = self
            .behind
            .wait_until(|st| st.ops.len() < max && !st.overlaps(start, end));
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        let id = st.next_id;
        st.next_id += 1;
        st.ops.push((id, start, end));
        drop(st);
        let (caller, client, url, lease) = (
            self.store.caller().clone(),
            self.client.clone(),
            self.url.clone(),
            self.lease,
        );
        let behind = self.behind.clone();
        self.store.spawn(async move {
            let r = match request {
                Background::Put(offset, data) => {
                    put_pages(&caller, &client, &url, lease, offset, data).await
                }
                Background::Clear(offset, len) => {
                    clear_pages(&caller, &client, &url, lease, offset, len).await
                }
            };
            behind.finish(id, r);
        });
        Ok(())
    }

    /// Waits until no background request overlaps `[start, end)` (starting
    /// the gathered writes first).
    fn wait_for_range(&self, start: u64, end: u64) -> Result<(), AzureError> {
        self.send_gathered()?;
        drop(self.behind.wait_until(|st| !st.overlaps(start, end)));
        Ok(())
    }

    /// Waits for every background write; the first that failed since the
    /// last flush is returned.
    fn wait_for_writes(&self) -> Result<(), AzureError> {
        let sent = self.send_gathered();
        let mut st = self.behind.wait_until(|st| st.ops.is_empty());
        match st.failed.take() {
            Some(e) => Err(e),
            None => sent,
        }
    }

    /// Writes `pieces`: in the background when they cover whole pages,
    /// otherwise (partial pages to read and patch) before returning.
    fn write_pieces(&self, pieces: &[(u64, Piece<'_>)]) -> Result<(), AzureError> {
        if let Some(e) = self.behind.lock().failed.clone() {
            return Err(e);
        }
        let plan = self.plan(pieces);
        if plan.edges.is_empty() {
            self.write_behind(&plan)
        } else {
            self.apply_plan(&plan)
        }
    }

    async fn run_plan(&self, plan: &Plan<'_>) -> Result<(), AzureError> {
        // Edge sectors: read those the plan does not cover entirely
        // (contiguous ones together), then patch them.
        let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; SECTOR as usize]; plan.edges.len()];
        let mut reads: Vec<(u64, usize, usize)> = Vec::new(); // offset, first edge, count
        for (i, e) in plan.edges.iter().enumerate() {
            if e.covered == SECTOR {
                continue;
            }
            match reads.last_mut() {
                Some((off, first, n))
                    if *off + (*n as u64) * SECTOR == e.offset && *first + *n == i =>
                {
                    *n += 1
                }
                _ => reads.push((e.offset, i, 1)),
            }
        }
        if !reads.is_empty() {
            let fetches: Vec<_> = reads
                .into_iter()
                .map(|(offset, first, n)| self.fetch_edges(offset, first, n))
                .collect();
            let fetched: Vec<(usize, Vec<u8>)> = futures::stream::iter(fetches)
                .buffer_unordered(self.store.config().max_in_flight)
                .try_collect()
                .await?;
            for (first, buf) in fetched {
                for (k, chunk) in buf.chunks(SECTOR as usize).enumerate() {
                    bufs[first + k].copy_from_slice(chunk);
                }
            }
        }
        for (i, buf) in bufs.iter_mut().enumerate() {
            plan.patch_edge(i, buf);
        }
        let bufs = &bufs;
        let requests: Vec<_> = plan
            .ops
            .iter()
            .map(|op| self.run_op(plan, bufs, op))
            .collect();
        futures::stream::iter(requests)
            .buffer_unordered(self.store.config().max_in_flight)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    async fn run_op(&self, plan: &Plan<'_>, bufs: &[Vec<u8>], op: &Op) -> Result<(), AzureError> {
        match op {
            Op::Put { offset, len, parts } => {
                // The bytes are gathered only when the request starts, so at
                // most `max_in_flight` requests' worth is held at once.
                let mut data = BytesMut::with_capacity(*len as usize);
                for p in parts {
                    data.extend_from_slice(plan.part_bytes(p, bufs));
                }
                put_pages(
                    self.store.caller(),
                    &self.client,
                    &self.url,
                    self.lease,
                    *offset,
                    data.freeze(),
                )
                .await
            }
            Op::Clear { offset, len } => {
                clear_pages(
                    self.store.caller(),
                    &self.client,
                    &self.url,
                    self.lease,
                    *offset,
                    *len,
                )
                .await
            }
        }
    }

    async fn fetch_edges(
        &self,
        offset: u64,
        first: usize,
        n: usize,
    ) -> Result<(usize, Vec<u8>), AzureError> {
        let mut buf = vec![0u8; n * SECTOR as usize];
        self.read_range(offset, &mut buf).await?;
        Ok((first, buf))
    }

    /// Reads `buf.len()` bytes at `offset` (any alignment), in requests of
    /// at most `max_request_bytes`, several in flight.
    async fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), AzureError> {
        let chunk = self.store.config().max_request_bytes;
        let reads: Vec<_> = buf
            .chunks_mut(chunk)
            .enumerate()
            .map(|(i, part)| self.read_range(offset + (i * chunk) as u64, part))
            .collect();
        futures::stream::iter(reads)
            .buffer_unordered(self.store.config().max_in_flight)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    async fn read_range(&self, offset: u64, buf: &mut [u8]) -> Result<(), AzureError> {
        let data = get_range(
            &self.store,
            &self.client,
            &self.url,
            self.snapshot.as_deref(),
            offset,
            buf.len() as u64,
        )
        .await?;
        buf.copy_from_slice(&data);
        Ok(())
    }
}

impl Drop for PageBlobVolume {
    /// Waits for the writes still in flight, so none is cut off.
    fn drop(&mut self) {
        if let Err(e) = self.wait_for_writes() {
            tracing::warn!(url = self.url, error = %e, "a write in flight when the volume was dropped failed");
        }
    }
}

impl Volume for PageBlobVolume {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        check_range(self, "read", offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.wait_for_range(offset, offset + buf.len() as u64)?;
        Ok(self.store.block_on(self.read_into(offset, buf))?)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        check_range(self, "write", offset, data.len() as u64)?;
        self.check_writable("write")?;
        if data.is_empty() {
            return Ok(());
        }
        Ok(self.write_pieces(&[(offset, Piece::Data(data))])?)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        check_range(self, "zero", offset, len)?;
        self.check_writable("zero")?;
        if len == 0 {
            return Ok(());
        }
        Ok(self.write_pieces(&[(offset, Piece::Zero(len))])?)
    }

    /// Waits for the writes still in flight (a write covering whole pages
    /// returns as soon as its requests are started); the service has
    /// committed each one when it answered.
    fn flush(&self) -> Result<(), VolumeError> {
        Ok(self.wait_for_writes()?)
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

fn ba512(url: &str, offset: u64, len: u64) -> Result<BA512Range, AzureError> {
    BA512Range::new(offset, offset + len - 1).map_err(|e| {
        AzureError::local(
            "plan pages of",
            url,
            Some(offset),
            AzureErrorKind::Invalid {
                reason: format!("{e}; this is a bug in rha's page planning: report it"),
            },
        )
    })
}

/// Writes whole pages (`data.len()` a multiple of 512, at most 4 MiB) at `offset`.
pub(crate) async fn put_pages(
    store: &Caller,
    client: &BlobClient,
    url: &str,
    lease: Option<LeaseId>,
    offset: u64,
    data: Bytes,
) -> Result<(), AzureError> {
    let len = data.len() as u64;
    let range = ba512(url, offset, len)?;
    store
        .call("put pages of", url, Some(offset), || {
            let mut b = client.put_page(range, data.clone());
            if let Some(id) = lease {
                b = b.lease_id(id);
            }
            b.into_future()
        })
        .await?;
    let c = store.counters();
    add(&c.put_pages, 1);
    add(&c.bytes_written, len);
    Ok(())
}

/// Clears whole pages (`len` a multiple of 512) at `offset`.
pub(crate) async fn clear_pages(
    store: &Caller,
    client: &BlobClient,
    url: &str,
    lease: Option<LeaseId>,
    offset: u64,
    len: u64,
) -> Result<(), AzureError> {
    let range = ba512(url, offset, len)?;
    store
        .call("clear pages of", url, Some(offset), || {
            let mut b = client.clear_page(range);
            if let Some(id) = lease {
                b = b.lease_id(id);
            }
            b.into_future()
        })
        .await?;
    let c = store.counters();
    add(&c.clear_pages, 1);
    add(&c.bytes_cleared, len);
    Ok(())
}

/// Reads `len` bytes at `offset` of a blob (or of one of its snapshots).
pub(crate) async fn get_range(
    store: &BlobStore,
    client: &BlobClient,
    url: &str,
    snapshot: Option<&str>,
    offset: u64,
    len: u64,
) -> Result<Bytes, AzureError> {
    let data = store
        .call("read", url, Some(offset), || async move {
            let mut b = client
                .get()
                .range(Range::new(offset, offset + len))
                .chunk_size(len.max(1));
            if let Some(s) = snapshot {
                b = b.blob_versioning(BlobVersioning::Snapshot(Snapshot::new(s.to_string())));
            }
            let mut stream = b.into_stream();
            match stream.next().await {
                Some(Ok(resp)) => resp.data.collect().await,
                Some(Err(e)) => Err(e),
                None => Err(azure_core::Error::message(
                    azure_core::error::ErrorKind::Io,
                    "the service sent no response body",
                )),
            }
        })
        .await?;
    if data.len() as u64 != len {
        return Err(AzureError::local(
            "read",
            url,
            Some(offset),
            AzureErrorKind::BadBlob {
                reason: format!(
                    "asked for {len} bytes, the service sent {}: the blob is shorter than the replica expects",
                    data.len()
                ),
            },
        ));
    }
    let c = store.counters();
    add(&c.reads, 1);
    add(&c.bytes_read, len);
    Ok(data)
}

/// Reads and checks the VHD footer of a page blob.
async fn read_footer(
    store: &BlobStore,
    client: &BlobClient,
    url: &str,
    snapshot: Option<&str>,
) -> Result<Footer, AzureError> {
    let props = store
        .call("read properties of", url, None, || {
            let mut b = client.get_properties();
            if let Some(s) = snapshot {
                b = b.blob_versioning(BlobVersioning::Snapshot(Snapshot::new(s.to_string())));
            }
            b.into_future()
        })
        .await
        .map_err(not_found)?;
    let len = props.blob.properties.content_length;
    let bad =
        |reason: String| AzureError::local("open", url, None, AzureErrorKind::BadBlob { reason });
    if props.blob.properties.blob_type != azure_storage_blobs::blob::BlobType::PageBlob {
        return Err(bad(format!(
            "it is a {:?}, not a page blob; a replica disk must be a page blob",
            props.blob.properties.blob_type
        )));
    }
    if len < FOOTER_LEN + AZURE_SIZE_ALIGNMENT {
        return Err(bad(format!(
            "it is {len} bytes long, too short for a fixed VHD (at least 1 MiB of data and a 512-byte footer)"
        )));
    }
    let bytes = get_range(store, client, url, snapshot, len - FOOTER_LEN, FOOTER_LEN).await?;
    let footer = Footer::parse(&bytes)
        .map_err(|e| bad(format!("VHD footer at offset {}: {e}", len - FOOTER_LEN)))?;
    if footer.current_size.checked_add(FOOTER_LEN) != Some(len) {
        return Err(bad(format!(
            "the VHD footer says the disk holds {} bytes, so the blob should be {} bytes long, but it is {len}",
            footer.current_size,
            footer.current_size.saturating_add(FOOTER_LEN)
        )));
    }
    if footer.current_size % AZURE_SIZE_ALIGNMENT != 0 {
        return Err(bad(format!(
            "the VHD's size {} is not a whole number of MiB, which Azure requires",
            footer.current_size
        )));
    }
    Ok(footer)
}

/// Maps a 404 to [`AzureErrorKind::NotFound`].
pub(crate) fn not_found(e: AzureError) -> AzureError {
    if e.status() == Some(404) {
        AzureError {
            kind: AzureErrorKind::NotFound,
            ..e
        }
    } else {
        e
    }
}

/// Leases a blob infinitely under `id`. Acquiring again with the id already
/// held succeeds (a restarted appliance takes its own lease back). A lease
/// held under another id is a [`AzureErrorKind::LeaseConflict`], unless
/// `takeover`, which breaks it first.
pub(crate) async fn acquire_lease(
    store: &BlobStore,
    client: &BlobClient,
    url: &str,
    id: LeaseId,
    takeover: bool,
) -> Result<(), AzureError> {
    let acquire = || async {
        store
            .call("acquire lease on", url, None, || {
                client
                    .acquire_lease(LeaseDuration::Infinite)
                    .proposed_lease_id(ProposedLeaseId::from(id))
                    .into_future()
            })
            .await
    };
    match acquire().await {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(409) && takeover => {
            tracing::warn!(url, "breaking another appliance's lease (takeover)");
            store
                .call("break lease on", url, None, || {
                    client
                        .break_lease()
                        .lease_break_period(LeaseBreakPeriod::from(std::time::Duration::ZERO))
                        .into_future()
                })
                .await?;
            acquire().await.map(|_| ())
        }
        Err(e) if e.status() == Some(409) => Err(AzureError {
            kind: AzureErrorKind::LeaseConflict {
                detail: e.kind.to_string(),
            },
            ..e
        }),
        Err(e) => Err(not_found(e)),
    }
}

/// Releases a lease; failures are logged, not returned (the lease can be
/// taken back by the same owner, or broken by a takeover).
pub(crate) async fn release_lease(store: &BlobStore, client: &BlobClient, url: &str, id: LeaseId) {
    let lease = client.blob_lease_client(id);
    if let Err(e) = store
        .call("release lease on", url, None, || {
            lease.release().into_future()
        })
        .await
    {
        tracing::warn!(url, error = %e, "could not release the lease");
    }
}

fn op_range(op: &Op) -> (u64, u64) {
    match op {
        Op::Put { offset, len, .. } | Op::Clear { offset, len } => (*offset, offset + len),
    }
}

/// A request started in the background, with its own copy of the data.
enum Background {
    Put(u64, Bytes),
    Clear(u64, u64),
}

/// The page requests in flight in the background.
#[derive(Debug, Default)]
struct WriteBehind {
    state: Mutex<BehindState>,
    changed: Condvar,
    /// Contiguous page writes not started yet: offset and bytes.
    gathered: Mutex<Option<(u64, BytesMut)>>,
}

#[derive(Debug, Default)]
struct BehindState {
    next_id: u64,
    /// (id, start, end) of each request in flight.
    ops: Vec<(u64, u64, u64)>,
    /// The first background request that failed since the last flush.
    failed: Option<AzureError>,
}

impl BehindState {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.ops.iter().any(|&(_, s, e)| s < end && start < e)
    }
}

impl WriteBehind {
    fn lock(&self) -> MutexGuard<'_, BehindState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_until(
        &self,
        mut ready: impl FnMut(&BehindState) -> bool,
    ) -> MutexGuard<'_, BehindState> {
        let mut st = self.lock();
        while !ready(&st) {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    fn gathering(&self) -> MutexGuard<'_, Option<(u64, BytesMut)>> {
        self.gathered.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, id: u64, result: Result<(), AzureError>) {
        let mut st = self.lock();
        st.ops.retain(|&(i, _, _)| i != id);
        if let Err(e) = result {
            if st.failed.is_none() {
                st.failed = Some(e);
            }
        }
        self.changed.notify_all();
    }
}

/// Locks on single pages, taken for the read-modify-write of partly written pages.
#[derive(Debug, Default)]
struct SectorLocks {
    held: Mutex<HashSet<u64>>,
    freed: Condvar,
}

impl SectorLocks {
    /// Waits until none of `sectors` is held, then holds them all.
    fn lock(&self, sectors: &[u64]) -> SectorGuard<'_> {
        if !sectors.is_empty() {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            while sectors.iter().any(|s| held.contains(s)) {
                held = self.freed.wait(held).unwrap_or_else(|e| e.into_inner());
            }
            held.extend(sectors.iter().copied());
        }
        SectorGuard {
            locks: self,
            sectors: sectors.to_vec(),
        }
    }
}

struct SectorGuard<'a> {
    locks: &'a SectorLocks,
    sectors: Vec<u64>,
}

impl Drop for SectorGuard<'_> {
    fn drop(&mut self) {
        if self.sectors.is_empty() {
            return;
        }
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        for s in &self.sectors {
            held.remove(s);
        }
        self.locks.freed.notify_all();
    }
}
