//! Switchover virtual machines: the [`CloudProvider`] trait that turns the
//! replica disks into a running VM, and its implementations.
//!
//! ```text
//!   Scenario [vm] + [network] ──┐
//!   replica disks (DiskRef) ────┴─► VmSpec ─► CloudProvider::verify     (warnings | error)
//!                                           └► CloudProvider::create_vm  (finalise disks, create, start)
//!                                                 │
//!                                                 ▼
//!                                    VmInfo { id: VmId, state: VmState, details }
//!                                           ─► vm_state / stop_vm / delete_vm
//! ```
//!
//! - [`local::LocalProvider`]: fixed-VHD files on the appliance, a QEMU VM.
//! - `rha-azure`: page blobs, an Azure VM (a separate crate).
//!
//! Every provider runs the shared suite
//! `rha_core::conformance::cloud::run_cloud_suite` (feature `conformance`).

pub mod local;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::scenario::{HyperVGeneration, Network, Os, Scenario};

pub use local::{LocalProvider, Qemu};

/// Default number of virtual CPUs when the scenario does not say.
pub const DEFAULT_CPUS: u32 = 2;

/// Default memory in MiB when the scenario does not say.
pub const DEFAULT_MEMORY_MB: u64 = 2048;

/// Creates and runs the virtual machine of a switchover from the replica disks.
///
/// # Contract
///
/// - [`create_vm`](CloudProvider::create_vm) finalises the disks (for example
///   attaches a fixed-VHD footer to a raw image), creates the VM **and starts
///   it**. A provider that cannot run VMs in its environment (the local
///   provider without QEMU) documents it and returns the VM as
///   [`VmState::Stopped`]; the definition is still created.
/// - VM names are unique per provider: creating a VM whose name exists
///   (running or not) fails with [`CloudError::AlreadyExists`] and changes
///   nothing. Once deleted, a name can be used again.
/// - [`delete_vm`](CloudProvider::delete_vm) stops the VM first and removes it,
///   but **never deletes the replica disks**: they are the only copy of the
///   master's data.
/// - Operations on an id the provider does not know (never created, already
///   deleted, another provider's) fail with [`CloudError::NotFound`].
/// - [`vm_state`](CloudProvider::vm_state) reflects reality, not the last
///   request: a VM whose process or instance died is [`VmState::Stopped`] or
///   [`VmState::Failed`].
/// - [`stop_vm`](CloudProvider::stop_vm) of a stopped VM succeeds; afterwards
///   the state is [`VmState::Stopped`].
/// - [`verify`](CloudProvider::verify) changes nothing; `create_vm` runs the
///   same checks first.
/// - No provider touches the host's network configuration.
#[async_trait::async_trait]
pub trait CloudProvider: Send + Sync {
    /// The provider's kind: `"local"`, `"azure"`.
    fn kind(&self) -> &'static str;

    /// Checks a VM definition before a scenario is saved or a switchover
    /// starts, changing nothing: returns warnings (the VM can be created, but
    /// something deserves attention), fails on errors (a disk missing or not a
    /// fixed VHD that can be finalised, no system disk, 0 CPUs, ...).
    async fn verify(&self, vm: &VmSpec) -> Result<Vec<String>, CloudError>;

    /// Finalises the disks, creates the VM and starts it.
    async fn create_vm(&self, vm: &VmSpec) -> Result<VmInfo, CloudError>;

    /// The VM's current state, as observed now.
    async fn vm_state(&self, id: &VmId) -> Result<VmState, CloudError>;

    /// Stops (powers off) the VM; succeeds when it is already stopped.
    async fn stop_vm(&self, id: &VmId) -> Result<(), CloudError>;

    /// Removes the VM (stopping it first) but never the disks.
    async fn delete_vm(&self, id: &VmId) -> Result<(), CloudError>;
}

/// The definition of a switchover VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The VM's name (the local provider allows letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Virtual CPUs (at least 1).
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// A provider-specific size such as Azure's `Standard_D2s_v3`.
    pub size: Option<String>,
    /// Hyper-V generation: 1 boots with BIOS, 2 with UEFI.
    pub generation: HyperVGeneration,
    /// The guest's operating system (decides the emulated devices locally).
    pub os: Os,
    /// The replica disks, in scenario volume order; exactly one is the system disk.
    pub disks: Vec<DiskRef>,
    /// The network to attach the VM to.
    pub network: Network,
    /// Free text for the switchover report: which point in time the disks
    /// hold, such as `"seq 1234 at 2026-01-02T03:04:05Z"`.
    pub recovery_point: Option<String>,
}

/// One replica disk of a [`VmSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRef {
    /// The volume it replicates, as the scenario names it (`/`, `C:`).
    pub name: String,
    /// Where the disk is: a file path (local) or a blob URL (Azure).
    pub location: String,
    /// The volume's size in bytes (the disk may be larger: VHDs are rounded
    /// up to a whole MiB).
    pub size: u64,
    /// The disk the VM boots from.
    pub system: bool,
}

impl VmSpec {
    /// The VM of a scenario's `[vm]` and `[network]` tables (CPUs default to
    /// [`DEFAULT_CPUS`], memory to [`DEFAULT_MEMORY_MB`], the OS to the
    /// master's) with `disks`.
    ///
    /// Disks named after a scenario volume are put in scenario volume order
    /// (others keep their order, after them) and are marked as the system
    /// disk when that volume is the system volume.
    pub fn from_scenario(s: &Scenario, mut disks: Vec<DiskRef>) -> VmSpec {
        let position = |d: &DiskRef| {
            s.volumes
                .iter()
                .position(|v| v.id == d.name)
                .unwrap_or(usize::MAX)
        };
        disks.sort_by_key(position);
        for d in &mut disks {
            if s.volumes.iter().any(|v| v.system && v.id == d.name) {
                d.system = true;
            }
        }
        VmSpec {
            name: s.vm.name.clone(),
            cpus: s.vm.cpus.unwrap_or(DEFAULT_CPUS),
            memory_mb: s.vm.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            size: s.vm.size.clone(),
            generation: s.vm.generation,
            os: s.vm.os_type.unwrap_or(s.master.os),
            disks,
            network: s.network.clone(),
            recovery_point: None,
        }
    }

    /// The system disk, when exactly one disk is marked as such.
    pub fn system_disk(&self) -> Option<&DiskRef> {
        let mut system = self.disks.iter().filter(|d| d.system);
        match (system.next(), system.next()) {
            (Some(d), None) => Some(d),
            _ => None,
        }
    }
}

/// A VM's provider-wide identifier (`local:<name>`, an Azure resource id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VmId(pub String);

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`CloudProvider::create_vm`] made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The id for later calls.
    pub id: VmId,
    /// The VM's name, as asked for.
    pub name: String,
    /// Its state right after creation.
    pub state: VmState,
    /// Provider-specific facts for the operator, such as `launch` (the launch
    /// script), `pid`, `console` (the serial console log) and `warnings`.
    pub details: BTreeMap<String, String>,
}

/// The observed state of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// The VM is running.
    Running,
    /// The VM exists but does not run.
    Stopped,
    /// The VM exists but could not be started or broke; the text says why.
    Failed(String),
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmState::Running => f.write_str("running"),
            VmState::Stopped => f.write_str("stopped"),
            VmState::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Why a [`CloudProvider`] operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloudError {
    /// A VM of that name exists already.
    #[error("a VM named `{name}` exists already; delete it first or choose another name")]
    AlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// No VM with that id exists (never created, deleted, or another provider's id).
    #[error("no VM with id `{id}` exists")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// A disk is missing, unreadable, or cannot become a fixed VHD.
    #[error("disk {path}: {reason}")]
    Disk {
        /// The disk's location.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The VM definition is invalid (name, CPUs, memory, system disk, ...).
    #[error("invalid VM definition: {0}")]
    Invalid(String),
    /// The hypervisor could not be started, or refused the VM.
    #[error("could not start the VM with {program}: {reason}")]
    Launch {
        /// The program run (`qemu-system-x86_64`).
        program: String,
        /// Its complaint, or why it could not run.
        reason: String,
    },
    /// A file of the VM definition could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The cloud's API failed (authentication, quota, service error, ...).
    #[error("cloud provider error: {0}")]
    Provider(String),
}
