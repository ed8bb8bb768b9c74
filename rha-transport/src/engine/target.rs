//! Replica targets: where an appliance keeps a scenario's replica disks,
//! which recovery points it keeps, and which [`CloudProvider`] turns them
//! into a VM.
//!
//! ```text
//!  Targets (registry, in EngineConfig) ── for_scenario(s) ──► ReplicaTarget (one per scenario)
//!    ├─ LocalTargets: [replica.local]  fixed-VHD files, QEMU        │ open(create sizes?)
//!    └─ rha-azure's AzureTargets: [replica.azure] page blobs, VM    ▼
//!                                                              ReplicaDisks: the ReplicaSink,
//!                                                              bookmarks, points, resolve(point)
//! ```
//!
//! The engine knows nothing of Azure: a program that embeds it registers
//! the targets it wants ([`Targets::with`]); `rha engine` registers Azure's.
//!
//! # Recovery points
//!
//! A point is every replica disk as it was at one journal sequence. A
//! target that keeps points ([`ReplicaTarget::keeps_points`]) turns a
//! bookmark into one (Azure: a blob snapshot of every disk); the local
//! target keeps only `latest`, the disks as they are. [`PointChoice`] names
//! a point (`latest`, a name or id, or a sequence) and [`select_point`]
//! finds it among a list, the same way for every target.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rha_core::cloud::local::LocalProvider;
use rha_core::cloud::{CloudProvider, VmId};
use rha_core::scenario::{Replica, Scenario};
use rha_core::sink::{DiskFormat, FileSink, ReplicaSink, SinkError};
use rha_core::Seq;
use serde::{Deserialize, Serialize};

use crate::wire::ErrorCode;

/// A recovery point as the engine reports it (`rha scenario points --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointInfo {
    /// A unique id (Azure: `p<ms>-<random>`; local: `latest`).
    pub id: String,
    /// The bookmark's name (`latest` for the replica as it is).
    pub name: String,
    /// The journal sequence the disks hold.
    pub seq: Seq,
    /// When it was taken, in milliseconds since the Unix epoch (0 when unknown).
    pub created_ms: u64,
    /// Whether the replica was consistent then.
    pub consistent: bool,
    /// Where each disk of the point is, in volume order: a file path, or a
    /// blob snapshot URL; what the VM's disks are made from.
    pub disks: Vec<String>,
}

/// Which recovery point a switchover or `vm start` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointChoice {
    /// The replica as it is now.
    Latest,
    /// Exactly this sequence (`seq:N`): the newest point taken there.
    Seq(Seq),
    /// A point's id, else the newest point of this name, else (when it is
    /// a number) the newest point at that sequence.
    Named(String),
}

impl FromStr for PointChoice {
    type Err = std::convert::Infallible;

    /// `latest`, `seq:N`, or anything else as an id, a name or a bare sequence.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("latest") {
            return Ok(PointChoice::Latest);
        }
        if let Some(n) = s.strip_prefix("seq:").and_then(|n| n.trim().parse().ok()) {
            return Ok(PointChoice::Seq(n));
        }
        Ok(PointChoice::Named(s.to_owned()))
    }
}

impl fmt::Display for PointChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointChoice::Latest => f.write_str("latest"),
            PointChoice::Seq(n) => write!(f, "seq:{n}"),
            PointChoice::Named(s) => f.write_str(s),
        }
    }
}

/// Finds the point `choice` names among `points` (`Latest`: the newest).
pub fn select_point<'a>(points: &'a [PointInfo], choice: &PointChoice) -> Option<&'a PointInfo> {
    let newest = |it: &mut dyn Iterator<Item = &'a PointInfo>| {
        it.max_by_key(|p| (p.created_ms, p.seq, p.id.clone()))
    };
    match choice {
        PointChoice::Latest => newest(&mut points.iter()),
        PointChoice::Seq(n) => newest(&mut points.iter().filter(|p| p.seq == *n)),
        PointChoice::Named(s) => points
            .iter()
            .find(|p| &p.id == s)
            .or_else(|| newest(&mut points.iter().filter(|p| &p.name == s)))
            .or_else(|| {
                let n: Seq = s.parse().ok()?;
                newest(&mut points.iter().filter(|p| p.seq == n))
            }),
    }
}

/// The error for a point that is not among `points`.
pub fn unknown_point(choice: &PointChoice, points: &[PointInfo]) -> TargetError {
    TargetError::UnknownPoint {
        choice: choice.to_string(),
        known: points
            .iter()
            .map(|p| format!("{} ({}, seq {})", p.name, p.id, p.seq))
            .collect(),
    }
}

/// What went wrong with a replica target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The scenario's target is misconfigured (an unknown cloud account, ...).
    #[error("replica target of scenario `{scenario}`: {reason}")]
    Config {
        /// The scenario.
        scenario: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// No replica exists yet.
    #[error("no replica disks at {location}: {reason} (has the scenario ever synchronised?)")]
    NoReplica {
        /// Where they were looked for.
        location: String,
        /// Why they could not be opened.
        reason: String,
    },
    /// The target cannot do this.
    #[error("{0}")]
    Unsupported(String),
    /// No recovery point matches.
    #[error("no recovery point `{choice}`; the replica has {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownPoint {
        /// What was asked for.
        choice: String,
        /// The points there are (`name (id, seq N)`).
        known: Vec<String>,
    },
    /// The replica is not consistent, so it is no usable point.
    #[error("{0}")]
    NotConsistent(String),
    /// The replica's storage failed.
    #[error("replica disks at {location}: {reason}")]
    Storage {
        /// The directory, container or blob.
        location: String,
        /// The storage's error, which says what to do.
        reason: String,
    },
}

impl TargetError {
    /// The wire error code a control reply carries for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            TargetError::Config { .. } | TargetError::UnknownPoint { .. } => ErrorCode::BadRequest,
            TargetError::Unsupported(_) => ErrorCode::BadRequest,
            TargetError::NoReplica { .. } | TargetError::NotConsistent(_) => ErrorCode::WrongState,
            TargetError::Storage { .. } => ErrorCode::Replica,
        }
    }
}

/// The replica disks of one scenario, open for replication.
///
/// # Contract
/// - [`ReplicaDisks::sink`] is the [`ReplicaSink`] the master's batches are
///   applied to; every method here may be called between two of its calls
///   (never during one: the engine calls them from the thread that applies).
/// - [`ReplicaDisks::bookmark`] at the applied sequence takes the point now;
///   ahead of it, records it durably and takes it when a batch reaches that
///   sequence; behind it, fails. A target without points fails with
///   [`TargetError::Unsupported`].
/// - [`ReplicaDisks::resolve`] of [`PointChoice::Latest`] is the disks as they
///   are (a target with points may take one now); it fails with
///   [`TargetError::NotConsistent`] when the replica is not consistent.
pub trait ReplicaDisks: Send + Sync {
    /// The sink the master's changes are applied to.
    fn sink(&self) -> &dyn ReplicaSink;

    /// Where each disk is (file paths, blob URLs), in volume order.
    fn locations(&self) -> Vec<String>;

    /// Records a bookmark `name` at journal sequence `seq` (see the
    /// contract): the point when it was taken now, `None` when it is pending.
    fn bookmark(&self, name: &str, seq: Seq) -> Result<Option<PointInfo>, TargetError>;

    /// The recovery points, oldest first.
    fn points(&self) -> Result<Vec<PointInfo>, TargetError>;

    /// The point `choice` names.
    fn resolve(&self, choice: &PointChoice) -> Result<PointInfo, TargetError>;
}

/// Where one scenario's replica lives and how its VM is made.
#[cfg_attr(test, mockall::automock)]
pub trait ReplicaTarget: Send + Sync + fmt::Debug {
    /// `"local"`, `"azure"`.
    fn kind(&self) -> &'static str;

    /// Where the replica is, for status and messages (a directory, a container URL).
    fn location(&self) -> String;

    /// Whether bookmarks become recovery points (the local target keeps only `latest`).
    fn keeps_points(&self) -> bool;

    /// Opens the replica disks; when there are none, creates them with the
    /// master's volume sizes `create`, or fails with
    /// [`TargetError::NoReplica`] when `create` is `None`.
    fn open(&self, create: Option<Vec<u64>>) -> Result<Arc<dyn ReplicaDisks>, TargetError>;

    /// The provider that creates the scenario's VM.
    fn provider(&self) -> Result<Arc<dyn CloudProvider>, TargetError>;

    /// The id of a VM of this name that a new switchover or `vm start`
    /// replaces (deleted first), or `None` when an existing VM must be kept
    /// (creating then fails with "exists already": a cloud VM may hold what
    /// was written since the last switchover).
    fn replaced_vm(&self, vm_name: &str) -> Option<VmId>;
}

/// What a [`TargetFactory`] knows of the engine.
#[derive(Debug, Clone)]
pub struct TargetContext {
    /// The engine's name (Azure: the owner of the replica blobs' leases).
    pub engine: String,
    /// The engine's data directory (relative local replica paths are under it).
    pub data_dir: PathBuf,
}

/// Makes the [`ReplicaTarget`] of the scenarios whose `[replica]` it serves.
pub trait TargetFactory: Send + Sync {
    /// `"local"`, `"azure"`.
    fn kind(&self) -> &'static str;

    /// Whether it serves this scenario.
    fn serves(&self, scenario: &Scenario) -> bool;

    /// The scenario's target (no I/O beyond reading configuration).
    fn target(
        &self,
        scenario: &Scenario,
        ctx: &TargetContext,
    ) -> Result<Arc<dyn ReplicaTarget>, TargetError>;
}

/// The registry of replica targets an engine serves: the local one always,
/// others as registered (the first that serves a scenario is used).
#[derive(Clone, Default)]
pub struct Targets {
    factories: Vec<Arc<dyn TargetFactory>>,
}

impl fmt::Debug for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.factories.iter().map(|t| t.kind()))
            .finish()
    }
}

impl Targets {
    /// Serves local replicas only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a target (tried before the local one).
    pub fn with(mut self, factory: Arc<dyn TargetFactory>) -> Self {
        self.factories.push(factory);
        self
    }

    /// The kinds registered besides `local`.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.factories.iter().map(|f| f.kind()).collect()
    }

    /// The target of `scenario`: a registered factory's, else the local
    /// one (with `local`, the engine's local provider).
    pub fn for_scenario(
        &self,
        scenario: &Scenario,
        ctx: &TargetContext,
        local: &Arc<LocalProvider>,
    ) -> Result<Arc<dyn ReplicaTarget>, TargetError> {
        if let Some(f) = self.factories.iter().find(|f| f.serves(scenario)) {
            return f.target(scenario, ctx);
        }
        match &scenario.replica {
            Replica::Local(l) => {
                let dir = if l.data_dir.is_absolute() {
                    l.data_dir.clone()
                } else {
                    ctx.data_dir.join(&l.data_dir)
                };
                Ok(Arc::new(LocalTarget::new(dir, local.clone())))
            }
            Replica::Azure(_) => Err(TargetError::Config {
                scenario: scenario.name.clone(),
                reason: "it replicates to Azure, but this engine has no Azure target \
                         registered (`rha engine` registers it; a program embedding the \
                         engine adds rha_azure's AzureTargets with Targets::with)"
                    .into(),
            }),
        }
    }
}

/// Local replicas: fixed-VHD files in a directory of the appliance, VMs
/// through the engine's [`LocalProvider`] (QEMU). Keeps only `latest`.
pub struct LocalTarget {
    dir: PathBuf,
    provider: Arc<LocalProvider>,
}

impl fmt::Debug for LocalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTarget")
            .field("dir", &self.dir)
            .finish()
    }
}

impl LocalTarget {
    /// Replica disks in `dir`, VMs through `provider`.
    pub fn new(dir: impl Into<PathBuf>, provider: Arc<LocalProvider>) -> Self {
        LocalTarget {
            dir: dir.into(),
            provider,
        }
    }

    /// The disks' directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

const LOCAL_LATEST_ONLY: &str = "local replicas keep only `latest` (the disks as they are): \
     recovery points from bookmarks need a replica that keeps them, such as Azure's blob \
     snapshots";

impl ReplicaTarget for LocalTarget {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn keeps_points(&self) -> bool {
        false
    }

    fn open(&self, create: Option<Vec<u64>>) -> Result<Arc<dyn ReplicaDisks>, TargetError> {
        let storage = |e: SinkError| TargetError::Storage {
            location: self.location(),
            reason: e.to_string(),
        };
        let sink = if self.dir.join("replica.toml").exists() {
            FileSink::open(&self.dir).map_err(storage)?
        } else if let Some(sizes) = create {
            FileSink::create(&self.dir, &sizes, DiskFormat::FixedVhd).map_err(storage)?
        } else {
            return Err(TargetError::NoReplica {
                location: self.location(),
                reason: "there is no replica.toml".into(),
            });
        };
        Ok(Arc::new(LocalDisks { sink }))
    }

    fn provider(&self) -> Result<Arc<dyn CloudProvider>, TargetError> {
        Ok(self.provider.clone())
    }

    fn replaced_vm(&self, vm_name: &str) -> Option<VmId> {
        Some(VmId(format!("local:{vm_name}")))
    }
}

/// The open disks of a [`LocalTarget`].
struct LocalDisks {
    sink: FileSink,
}

impl LocalDisks {
    fn latest(&self) -> PointInfo {
        let st = self.sink.state();
        PointInfo {
            id: "latest".into(),
            name: "latest".into(),
            seq: st.applied,
            created_ms: 0,
            consistent: st.consistent,
            disks: self.locations(),
        }
    }
}

impl ReplicaDisks for LocalDisks {
    fn sink(&self) -> &dyn ReplicaSink {
        &self.sink
    }

    fn locations(&self) -> Vec<String> {
        self.sink
            .disk_paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    fn bookmark(&self, name: &str, _seq: Seq) -> Result<Option<PointInfo>, TargetError> {
        Err(TargetError::Unsupported(format!(
            "bookmark `{name}`: {LOCAL_LATEST_ONLY}"
        )))
    }

    fn points(&self) -> Result<Vec<PointInfo>, TargetError> {
        Ok(vec![self.latest()])
    }

    fn resolve(&self, choice: &PointChoice) -> Result<PointInfo, TargetError> {
        let latest = self.latest();
        let found = select_point(std::slice::from_ref(&latest), choice).is_some();
        if !found {
            return Err(TargetError::Unsupported(format!(
                "recovery point `{choice}` is not available: {LOCAL_LATEST_ONLY}"
            )));
        }
        Ok(latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, name: &str, seq: Seq, created_ms: u64) -> PointInfo {
        PointInfo {
            id: id.into(),
            name: name.into(),
            seq,
            created_ms,
            consistent: true,
            disks: vec![format!("disk-{id}")],
        }
    }

    #[test]
    fn choices_parse() {
        let p = |s: &str| s.parse::<PointChoice>().unwrap_or(PointChoice::Latest);
        assert_eq!(p("latest"), PointChoice::Latest);
        assert_eq!(p(" LATEST "), PointChoice::Latest);
        assert_eq!(p("seq:42"), PointChoice::Seq(42));
        assert_eq!(
            p("before-upgrade"),
            PointChoice::Named("before-upgrade".into())
        );
        assert_eq!(p("42"), PointChoice::Named("42".into()));
        assert_eq!(PointChoice::Seq(7).to_string(), "seq:7");
    }

    #[test]
    fn selection_by_id_name_and_sequence() {
        let points = vec![
            point("p1", "nightly", 10, 100),
            point("p2", "nightly", 20, 200),
            point("p3", "7", 30, 300),
            point("p4", "other", 7, 400),
        ];
        let sel = |c: PointChoice| select_point(&points, &c).map(|p| p.id.clone());
        assert_eq!(sel(PointChoice::Latest).as_deref(), Some("p4"));
        assert_eq!(
            sel(PointChoice::Named("nightly".into())).as_deref(),
            Some("p2")
        );
        assert_eq!(sel(PointChoice::Named("p1".into())).as_deref(), Some("p1"));
        // A name wins over a sequence; a bare number falls back to the sequence.
        assert_eq!(sel(PointChoice::Named("7".into())).as_deref(), Some("p3"));
        assert_eq!(sel(PointChoice::Named("10".into())).as_deref(), Some("p1"));
        assert_eq!(sel(PointChoice::Seq(7)).as_deref(), Some("p4"));
        assert_eq!(sel(PointChoice::Named("nope".into())), None);
        let e = unknown_point(&PointChoice::Named("nope".into()), &points);
        assert!(e.to_string().contains("nightly (p2, seq 20)"), "{e}");
        assert_eq!(e.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn local_target_keeps_only_latest() {
        let t = tempfile::tempdir().expect("tempdir");
        let target = LocalTarget::new(
            t.path().join("disks"),
            Arc::new(LocalProvider::new(t.path().join("vms"))),
        );
        let e = target.open(None).err().map(|e| e.code());
        assert_eq!(e, Some(ErrorCode::WrongState));
        let disks = target.open(Some(vec![1 << 20])).expect("create");
        assert_eq!(disks.locations().len(), 1);
        let e = disks.bookmark("b", 0).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("keep only `latest`")));
        let latest = disks.resolve(&PointChoice::Latest).expect("latest");
        assert_eq!(latest.name, "latest");
        assert_eq!(latest.disks, disks.locations());
        assert!(disks.resolve(&PointChoice::Named("x".into())).is_err());
        assert_eq!(
            target.replaced_vm("vm1"),
            Some(VmId("local:vm1".to_string()))
        );
        drop(disks);
        assert!(target.open(None).is_ok(), "reopens what it created");
    }
}
