//! Recovery points: blob snapshots of every replica disk at one batch boundary.
//!
//! ```text
//!   bookmark "before-upgrade" at seq 4711
//!        │  (taken when the replica has applied exactly 4711)
//!        ▼
//!   disk-0.vhd?snapshot=2026-…Z   metadata: rha_point=p…  rha_seq=4711  rha_name=before-upgrade
//!   disk-1.vhd?snapshot=2026-…Z             rha_volume=1  rha_volumes=2  rha_consistent=true …
//! ```
//!
//! The points are listed from the snapshots' metadata, so nothing else has
//! to be kept in step with them. A point is complete when every disk has its
//! snapshot; incomplete ones (a crash while taking them) are not listed.
//! Switchover and `vm start` pick a point with a [`PointSelector`]:
//! `latest`, `seq:N`, or a point's id or name.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use azure_core::prelude::{LeaseId, Metadata, Prefix};
use azure_storage_blobs::prelude::{BlobClient, Snapshot};
use futures::StreamExt;
use rha_core::{Seq, VolumeId};
use serde::Serialize;

use crate::error::{AzureError, AzureErrorKind};
use crate::store::BlobStore;

/// One replica disk's snapshot within a recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskSnapshot {
    /// The volume (its index in the scenario).
    pub volume: VolumeId,
    /// The page blob's name in its container.
    pub blob: String,
    /// The snapshot's identifier (a time stamp chosen by the service).
    pub snapshot: String,
    /// The snapshot's URL (`…/disk-0.vhd?snapshot=…`), what a managed disk is imported from.
    pub url: String,
}

/// A recovery point: every replica disk as it was at sequence `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryPoint {
    /// A unique id (`p<milliseconds>-<random>`).
    pub id: String,
    /// The bookmark's name (`latest` for a point taken to resolve `latest`).
    pub name: String,
    /// The journal sequence the disks hold.
    pub seq: Seq,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Whether the replica was consistent then (always, unless taken during a synchronisation).
    pub consistent: bool,
    /// One snapshot per disk, in volume order.
    pub disks: Vec<DiskSnapshot>,
}

/// Which recovery point a switchover or `vm start` uses: the engine's
/// [`PointChoice`](rha_transport::engine::PointChoice), under the name this
/// crate has always used (`latest`, `seq:N`, or a point's id, name or
/// sequence).
pub use rha_transport::engine::PointChoice as PointSelector;

/// Finds the point `selector` names among `points` (which `Latest` does not
/// use: it depends on the replica's state, see the sink and [`crate::resolve_recovery_point`]).
pub fn select_point<'a>(
    points: &'a [RecoveryPoint],
    selector: &PointSelector,
) -> Option<&'a RecoveryPoint> {
    let newest = |it: &mut dyn Iterator<Item = &'a RecoveryPoint>| {
        it.max_by_key(|p| (p.created_ms, p.seq, p.id.clone()))
    };
    match selector {
        PointSelector::Latest => newest(&mut points.iter()),
        PointSelector::Seq(n) => newest(&mut points.iter().filter(|p| p.seq == *n)),
        PointSelector::Named(s) => points
            .iter()
            .find(|p| &p.id == s)
            .or_else(|| newest(&mut points.iter().filter(|p| &p.name == s)))
            .or_else(|| {
                let n: Seq = s.parse().ok()?;
                newest(&mut points.iter().filter(|p| p.seq == n))
            }),
    }
}

pub(crate) fn unknown_point(
    url: &str,
    selector: &PointSelector,
    points: &[RecoveryPoint],
) -> AzureError {
    let known: Vec<String> = points
        .iter()
        .map(|p| format!("{} ({}, seq {})", p.id, p.name, p.seq))
        .collect();
    AzureError::local(
        "resolve recovery point of",
        url,
        None,
        AzureErrorKind::Invalid {
            reason: format!(
                "there is no recovery point `{selector}`; the replica has {}: {}",
                known.len(),
                if known.is_empty() {
                    "none (use `latest`)".to_string()
                } else {
                    known.join(", ")
                }
            ),
        },
    )
}

const M_POINT: &str = "rha_point";
const M_NAME: &str = "rha_name";
const M_SEQ: &str = "rha_seq";
const M_TIME: &str = "rha_time_ms";
const M_CONSISTENT: &str = "rha_consistent";
const M_VOLUME: &str = "rha_volume";
const M_VOLUMES: &str = "rha_volumes";

/// A disk to snapshot: volume, blob name, client, lease.
pub(crate) struct DiskRef<'a> {
    pub volume: VolumeId,
    pub blob: &'a str,
    pub client: &'a BlobClient,
    pub lease: Option<LeaseId>,
}

/// Takes one snapshot per disk, all labelled as one point. The caller makes
/// sure no batch is being applied meanwhile.
pub(crate) async fn take_point(
    store: &BlobStore,
    disks: &[DiskRef<'_>],
    name: &str,
    seq: Seq,
    consistent: bool,
) -> Result<RecoveryPoint, AzureError> {
    let created_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut rnd = [0u8; 4];
    if getrandom::getrandom(&mut rnd).is_err() {
        rnd = (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0))
        .to_be_bytes();
    }
    let id = format!("p{created_ms}-{:08x}", u32::from_be_bytes(rnd));
    let mut out = Vec::with_capacity(disks.len());
    for d in disks {
        let url = store.blob_url(d.blob);
        let mut m = Metadata::new();
        m.insert(M_POINT, id.clone());
        m.insert(M_NAME, encode(name));
        m.insert(M_SEQ, seq.to_string());
        m.insert(M_TIME, created_ms.to_string());
        m.insert(M_CONSISTENT, consistent.to_string());
        m.insert(M_VOLUME, d.volume.to_string());
        m.insert(M_VOLUMES, disks.len().to_string());
        let resp = store
            .call("snapshot", &url, None, || {
                let mut b = d.client.snapshot().metadata(m.clone());
                if let Some(l) = d.lease {
                    b = b.lease_id(l);
                }
                b.into_future()
            })
            .await?;
        let snapshot = snapshot_id(&resp.snapshot);
        out.push(DiskSnapshot {
            volume: d.volume,
            blob: d.blob.to_string(),
            url: format!("{url}?snapshot={snapshot}"),
            snapshot,
        });
    }
    tracing::info!(point = id, name, seq, "recovery point taken");
    Ok(RecoveryPoint {
        id,
        name: name.to_string(),
        seq,
        created_ms,
        consistent,
        disks: out,
    })
}

/// Every complete recovery point of the replica whose blobs start with
/// `prefix`, oldest first.
pub(crate) async fn list_points(
    store: &BlobStore,
    prefix: &str,
) -> Result<Vec<RecoveryPoint>, AzureError> {
    let url = format!("{}/{prefix}*", store.container_url().trim_end_matches('/'));
    let mut pages = Vec::new();
    let mut marker: Option<azure_core::prelude::NextMarker> = None;
    loop {
        let m = marker.clone();
        let page = store
            .call("list snapshots of", &url, None, || {
                let mut b = store
                    .container()
                    .list_blobs()
                    .prefix(Prefix::from(prefix.to_string()))
                    .include_snapshots(true)
                    .include_metadata(true);
                if let Some(m) = m.clone() {
                    b = b.marker(m);
                }
                async move {
                    match b.into_stream().next().await {
                        Some(r) => r,
                        None => Err(azure_core::Error::message(
                            azure_core::error::ErrorKind::Io,
                            "the listing ended without a page",
                        )),
                    }
                }
            })
            .await?;
        marker = page.next_marker.clone();
        pages.push(page);
        if marker.is_none() {
            break;
        }
    }
    struct Partial {
        point: RecoveryPoint,
        volumes: usize,
        by_volume: BTreeMap<VolumeId, DiskSnapshot>,
    }
    let mut found: BTreeMap<String, Partial> = BTreeMap::new();
    for page in &pages {
        for blob in page.blobs.blobs() {
            let (Some(snap), Some(meta)) = (&blob.snapshot, &blob.metadata) else {
                continue;
            };
            let get = |k: &str| {
                meta.iter()
                    .find(|(mk, _)| mk.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.as_str())
            };
            let (Some(id), Some(seq), Some(volume), Some(volumes)) = (
                get(M_POINT),
                get(M_SEQ).and_then(|s| s.parse::<Seq>().ok()),
                get(M_VOLUME).and_then(|s| s.parse::<VolumeId>().ok()),
                get(M_VOLUMES).and_then(|s| s.parse::<usize>().ok()),
            ) else {
                continue;
            };
            let snapshot = snapshot_id(snap);
            let entry = found.entry(id.to_string()).or_insert_with(|| Partial {
                point: RecoveryPoint {
                    id: id.to_string(),
                    name: get(M_NAME).map(decode).unwrap_or_default(),
                    seq,
                    created_ms: get(M_TIME).and_then(|s| s.parse().ok()).unwrap_or(0),
                    consistent: get(M_CONSISTENT) == Some("true"),
                    disks: Vec::new(),
                },
                volumes,
                by_volume: BTreeMap::new(),
            });
            let disk = DiskSnapshot {
                volume,
                blob: blob.name.clone(),
                url: format!("{}?snapshot={snapshot}", store.blob_url(&blob.name)),
                snapshot,
            };
            // A retried snapshot request may have made two: keep the earlier.
            match entry.by_volume.get(&volume) {
                Some(have) if have.snapshot <= disk.snapshot => {}
                _ => {
                    entry.by_volume.insert(volume, disk);
                }
            }
        }
    }
    let mut points: Vec<RecoveryPoint> = found
        .into_values()
        .filter_map(|mut p| {
            let complete = p.by_volume.len() == p.volumes
                && p.by_volume.keys().copied().eq(0..p.volumes as VolumeId);
            if !complete {
                tracing::debug!(point = p.point.id, "incomplete recovery point ignored");
                return None;
            }
            p.point.disks = p.by_volume.into_values().collect();
            Some(p.point)
        })
        .collect();
    points.sort_by_key(|p| (p.created_ms, p.seq, p.id.clone()));
    Ok(points)
}

/// Deletes the snapshots of a point.
pub(crate) async fn delete_point(
    store: &BlobStore,
    point: &RecoveryPoint,
) -> Result<(), AzureError> {
    for d in &point.disks {
        let client = store.blob(&d.blob);
        let r = store
            .call("delete snapshot", &d.url, None, || {
                client
                    .delete_snapshot(Snapshot::new(d.snapshot.clone()))
                    .into_future()
            })
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The text of a snapshot id (the SDK's type has no accessor, but serialises as its text).
fn snapshot_id(s: &Snapshot) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Metadata values must be plain ASCII: names are percent-encoded.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~ ".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) << 4 | hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_metadata_encoding() {
        for s in ["before upgrade", "ünïcode/ß?&=%", "", "a%zz", "100%"] {
            assert_eq!(decode(&encode(s)), s);
            assert!(encode(s).bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        }
    }

    #[test]
    fn selectors_parse() {
        assert_eq!(
            "latest".parse::<PointSelector>().ok(),
            Some(PointSelector::Latest)
        );
        assert_eq!(
            "LATEST".parse::<PointSelector>().ok(),
            Some(PointSelector::Latest)
        );
        assert_eq!(
            "seq:42".parse::<PointSelector>().ok(),
            Some(PointSelector::Seq(42))
        );
        assert_eq!(
            "nightly".parse::<PointSelector>().ok(),
            Some(PointSelector::Named("nightly".into()))
        );
    }

    #[test]
    fn selection_prefers_ids_then_newest_by_name() {
        let p = |id: &str, name: &str, seq, t| RecoveryPoint {
            id: id.into(),
            name: name.into(),
            seq,
            created_ms: t,
            consistent: true,
            disks: vec![],
        };
        let pts = vec![
            p("p1-a", "nightly", 10, 1),
            p("p2-b", "nightly", 20, 2),
            p("p3-c", "p1-a", 30, 3),
        ];
        let id = |s: &PointSelector| select_point(&pts, s).map(|p| p.id.clone());
        assert_eq!(
            id(&PointSelector::Named("nightly".into())).as_deref(),
            Some("p2-b")
        );
        assert_eq!(
            id(&PointSelector::Named("p1-a".into())).as_deref(),
            Some("p1-a")
        );
        assert_eq!(id(&PointSelector::Seq(30)).as_deref(), Some("p3-c"));
        assert_eq!(id(&PointSelector::Latest).as_deref(), Some("p3-c"));
        assert_eq!(id(&PointSelector::Seq(31)), None);
    }
}
