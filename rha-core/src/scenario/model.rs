//! The scenario data model: plain serde structs, one per TOML table.
//!
//! Every struct denies unknown fields, so a misspelt key is a loading error
//! (with a "did you mean" suggestion) instead of a silently ignored setting.
//!
//! **Durations** are integers whose field name carries the unit:
//! `interval_secs`, `timeout_secs`, `fsync_interval_ms`. **Sizes** likewise:
//! `size_bytes`, `max_size_mb`, `memory_mb`, `bandwidth_limit_kbps`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The default port of the replication service on the master and the appliance.
pub const DEFAULT_PORT: u16 = 25000;

/// The only block size rha replicates with, in bytes.
pub const BLOCK_SIZE: u32 = 4096;

/// A full-system replication or high-availability scenario.
///
/// Load one with [`Scenario::load`](crate::scenario::Scenario::load) or
/// [`Scenario::from_toml_str`](crate::scenario::Scenario::from_toml_str), then
/// check it with [`Scenario::validate`](crate::scenario::Scenario::validate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The scenario's name: letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// Replication only, or high availability (replication plus switchover).
    pub product: Product,
    /// Start replicating again automatically after the master reboots.
    #[serde(default)]
    pub run_after_reboot: bool,
    /// The production server whose volumes are replicated.
    pub master: Master,
    /// Where the replica disks live.
    pub replica: Replica,
    /// The master's volumes, with the system volume marked `system = true`.
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// How the replica is first synchronised with the master.
    #[serde(default)]
    pub sync: SyncSettings,
    /// The master-side change journal.
    pub journal: JournalSettings,
    /// How the replica decides that the master is alive.
    #[serde(default)]
    pub is_alive: IsAlive,
    /// How the replica takes over from the master.
    #[serde(default)]
    pub switchover: Switchover,
    /// The virtual machine created from the replica disks at switchover.
    pub vm: VmSettings,
    /// The network the switchover virtual machine is attached to.
    #[serde(default)]
    pub network: Network,
    /// How the master engine captures changes.
    #[serde(default)]
    pub capture: Capture,
}

/// How the master engine captures changes to the volumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// `rescan` (default): compare each volume with a persisted per-block
    /// hash map every `rescan_interval_ms`, so writes made by anything on the
    /// master are found; `tracked`: writes go through a program that embeds
    /// the engine and writes through a `TrackedSet`; `nbd`: the master engine
    /// serves each volume over NBD (`rha engine --nbd-listen`) and journals
    /// every write a VM or an `nbd-client` host makes to the export.
    #[serde(default = "default_capture_method")]
    pub method: CaptureMethod,
    /// With `method = "rescan"`: milliseconds between rescans (default 1000).
    #[serde(default = "default_rescan_interval_ms")]
    pub rescan_interval_ms: u64,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            method: default_capture_method(),
            rescan_interval_ms: default_rescan_interval_ms(),
        }
    }
}

/// How changes are captured on the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethod {
    /// Periodic comparison with a persisted block hash map.
    Rescan,
    /// Write-through tracking by the engine's own write path.
    Tracked,
    /// Write-through tracking of what clients write to the master engine's
    /// NBD exports (one per volume, named by [`VolumeSpec::nbd_export_name`]).
    Nbd,
}

fn default_capture_method() -> CaptureMethod {
    CaptureMethod::Rescan
}
fn default_rescan_interval_ms() -> u64 {
    1000
}

/// What the scenario does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Product {
    /// Replication plus is-alive monitoring and switchover to a virtual machine.
    Ha,
    /// Replication only: the replica disks are kept up to date, nothing more.
    Replication,
}

/// The master's operating system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Os {
    /// Microsoft Windows.
    Windows,
    /// Linux.
    Linux,
}

/// The production server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Master {
    /// Host name or IP address the replica connects to.
    pub host: String,
    /// Port of the replication service on the master (default 25000).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The master's operating system.
    pub os: Os,
    /// The master is behind NAT: it connects out to the appliance and the
    /// replica cannot open connections to it.
    #[serde(default)]
    pub nat: bool,
}

/// Where the replica disks live: on a local appliance or in Azure.
///
/// In TOML this is `[replica.local]` or `[replica.azure]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replica {
    /// Fixed-VHD files on the appliance's own storage; switchover starts a QEMU VM.
    Local(LocalReplica),
    /// Azure page blobs; switchover creates an Azure VM.
    Azure(AzureReplica),
}

impl Replica {
    /// Whether the replica disks are in a cloud (switchover must then be manual).
    pub fn is_cloud(&self) -> bool {
        matches!(self, Replica::Azure(_))
    }
}

/// A replica kept as fixed-VHD files on the appliance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalReplica {
    /// Address of the appliance that receives the changes.
    pub appliance: String,
    /// Port of the replication service on the appliance (default 25000).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Directory on the appliance where the replica disks are written.
    pub data_dir: PathBuf,
}

/// A replica kept as Azure page blobs.
///
/// No credentials here: the cloud account is added once with
/// `rha cloud account add` and referenced by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureReplica {
    /// Address of the appliance that receives the changes and writes the blobs.
    pub appliance: String,
    /// Port of the replication service on the appliance (default 25000).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Name of a cloud account registered with `rha cloud account add`.
    pub account: String,
    /// Azure region, by its programmatic name (`westeurope`).
    pub region: String,
    /// Resource group holding the storage account and the switchover VM.
    pub resource_group: String,
    /// Storage account holding the page blobs.
    pub storage_account: String,
    /// Blob container holding the page blobs.
    pub container: String,
}

/// One volume of the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// The volume as the master names it: `C:`, `/`, `/boot` or a device path.
    pub id: String,
    /// This is the volume the master boots from (exactly one per scenario).
    #[serde(default)]
    pub system: bool,
    /// Leave this volume out of replication (never allowed for the system volume).
    #[serde(default)]
    pub exclude: bool,
    /// Expected size in bytes, checked against the master when replication starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The block device or disk image that holds the volume on the master.
    /// When absent the master engine finds the device mounted at `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

impl VolumeSpec {
    /// The NBD export of this volume under `[capture] method = "nbd"`:
    /// `<scenario>/<file stem of path>` (`web01/system` for
    /// `path = "/srv/web01/system.img"`); `None` without a `path` or when
    /// its stem is not UTF-8.
    pub fn nbd_export_name(&self, scenario: &str) -> Option<String> {
        let stem = self.path.as_ref()?.file_stem()?.to_str()?;
        (!stem.is_empty()).then(|| format!("{scenario}/{stem}"))
    }
}

/// Synchronisation settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    /// How the replica is compared with the master (default `block`).
    #[serde(default = "default_sync_method")]
    pub method: SyncMethod,
    /// Fast resynchronisation: skip regions the change log proves unchanged
    /// (default true).
    #[serde(default = "default_true")]
    pub skip_unchanged: bool,
    /// Compare every block even where the change log says nothing changed
    /// (default false).
    #[serde(default)]
    pub force_full_verification: bool,
    /// Block size in bytes; rha only supports 4096.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Bandwidth limit in kilobits per second; unlimited when absent. Applies
    /// outside every window of `bandwidth_schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit_kbps: Option<u64>,
    /// Compression of the data sent between the engines (default `none`);
    /// the engines negotiate it when they connect.
    #[serde(default)]
    pub compression: WireCompression,
    /// Bandwidth limits by day and hour, as `[[sync.bandwidth_schedule]]`
    /// tables. The first window that matches the master's local time wins;
    /// outside every window `bandwidth_limit_kbps` applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bandwidth_schedule: Vec<BandwidthWindow>,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            method: default_sync_method(),
            skip_unchanged: true,
            force_full_verification: false,
            block_size: BLOCK_SIZE,
            bandwidth_limit_kbps: None,
            compression: WireCompression::default(),
            bandwidth_schedule: Vec::new(),
        }
    }
}

/// Compression of the replication data on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireCompression {
    /// Send the data as it is.
    #[default]
    None,
    /// LZ4: fast, moderate ratio; for fast links.
    Lz4,
    /// Zstandard: better ratio for more CPU; for slow links.
    Zstd,
}

/// One window of `[[sync.bandwidth_schedule]]`: a bandwidth limit on some
/// days between two hours of the master's local time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthWindow {
    /// The days the window applies to (`mon` .. `sun`); every day when empty or absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    /// First hour of the window (0 to 23), included.
    pub from_hour: u8,
    /// Hour the window ends (1 to 24), excluded: 8 to 18 is 08:00 to 17:59.
    pub to_hour: u8,
    /// Limit in kilobits per second inside the window; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_kbps: Option<u64>,
}

impl BandwidthWindow {
    /// Whether the window covers `day` at `hour` (0 to 23).
    pub fn covers(&self, day: Weekday, hour: u8) -> bool {
        (self.days.is_empty() || self.days.contains(&day))
            && self.from_hour <= hour
            && hour < self.to_hour
    }
}

/// A day of the week, written `mon` .. `sun`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// Every day, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// The day's number, 0 for Monday to 6 for Sunday.
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The day numbered `index` (0 = Monday); `None` from 7 on.
    pub fn from_index(index: u8) -> Option<Weekday> {
        Weekday::ALL.get(usize::from(index)).copied()
    }
}

/// How the replica is synchronised with the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMethod {
    /// Copy every used block of each volume (first synchronisation of an empty replica).
    Volume,
    /// Compare block hashes and send only the blocks that differ.
    Block,
}

/// The master-side change journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSettings {
    /// Directory on the master holding the journal segments.
    pub directory: PathBuf,
    /// Largest size the journal may grow to, in MiB (default 4096).
    #[serde(default = "default_journal_max_size_mb")]
    pub max_size_mb: u64,
    /// When journal writes are flushed to stable storage (default `always`).
    #[serde(default = "default_fsync")]
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`: milliseconds between flushes (default 100).
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// With `fsync = "interval"` or `"never"`: MiB of the newest
    /// unacknowledged changes kept only in memory, written to the journal's
    /// files only when the replica falls this far behind (default 64; 0
    /// writes every change to the files). A replica that keeps up then
    /// costs the master no journal I/O; a crash of the master resyncs the
    /// regions the change log marks instead of replaying those changes.
    #[serde(default = "default_journal_memory_mb")]
    pub memory_mb: u64,
}

/// When the journal is flushed to stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every record: nothing acknowledged is ever lost.
    Always,
    /// Every `fsync_interval_ms` milliseconds.
    Interval,
    /// Leave flushing to the operating system.
    Never,
}

/// Is-alive monitoring of the master by the replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsAlive {
    /// Monitor the master (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds between checks (default 30).
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
    /// Seconds without a successful check before the master is declared dead
    /// (default 300; must exceed `interval_secs`).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The checks to run (default: one heartbeat).
    #[serde(default = "default_checks")]
    pub checks: Vec<Check>,
}

impl Default for IsAlive {
    fn default() -> Self {
        IsAlive {
            enabled: true,
            interval_secs: default_interval_secs(),
            timeout_secs: default_timeout_secs(),
            checks: default_checks(),
        }
    }
}

/// One is-alive check, tagged by `type` in TOML.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// The master's replication service sends heartbeats over its own connection.
    Heartbeat,
    /// Open a TCP connection to a port.
    Tcp {
        /// Host to connect to.
        host: String,
        /// Port to connect to.
        port: u16,
    },
    /// Run a program on the replica; exit status 0 means alive.
    Command {
        /// The program to run.
        program: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
    },
}

/// Switchover settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switchover {
    /// Switch over on operator request, or as soon as the master is declared dead.
    #[serde(default = "default_switchover_mode")]
    pub mode: SwitchoverMode,
    /// Apply the whole journal to the replica before starting the VM (default
    /// true); false starts sooner but loses the changes not yet applied.
    #[serde(default = "default_true")]
    pub wait_for_journal: bool,
    /// Command run on the master at switchover to disable its network adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_master_network: Option<CommandSpec>,
}

impl Default for Switchover {
    fn default() -> Self {
        Switchover {
            mode: default_switchover_mode(),
            wait_for_journal: true,
            disable_master_network: None,
        }
    }
}

/// When switchover happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchoverMode {
    /// Only when an operator asks for it.
    Manual,
    /// As soon as is-alive declares the master dead (local replicas only).
    Automatic,
}

/// A program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program to run.
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// The virtual machine started from the replica disks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSettings {
    /// The VM's name.
    pub name: String,
    /// Azure VM size such as `Standard_D2s_v3` (Azure replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Virtual CPUs (local replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB (local replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Resource group for the VM (Azure; defaults to the replica's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// Managed-disk type (Azure; default `StandardSSD_LRS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_account_type: Option<StorageAccountType>,
    /// Hyper-V generation, 1 (BIOS) or 2 (UEFI) (default 2).
    #[serde(default)]
    pub generation: HyperVGeneration,
    /// Operating system of the VM (defaults to the master's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<Os>,
}

/// Hyper-V generation of the switchover VM: `1` or `2` in TOML.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum HyperVGeneration {
    /// Generation 1: BIOS boot, MBR disks.
    V1,
    /// Generation 2: UEFI boot, GPT disks.
    #[default]
    V2,
}

impl TryFrom<u8> for HyperVGeneration {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(HyperVGeneration::V1),
            2 => Ok(HyperVGeneration::V2),
            other => Err(format!(
                "Hyper-V generation {other} does not exist; use 1 (BIOS) or 2 (UEFI)"
            )),
        }
    }
}

impl From<HyperVGeneration> for u8 {
    fn from(value: HyperVGeneration) -> u8 {
        match value {
            HyperVGeneration::V1 => 1,
            HyperVGeneration::V2 => 2,
        }
    }
}

/// Azure managed-disk type of the switchover VM's disks.
///
/// Unknown names are kept as [`StorageAccountType::Other`] so that loading
/// succeeds and validation reports them with every other finding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
#[non_exhaustive]
pub enum StorageAccountType {
    /// Standard HDD, locally redundant.
    StandardLrs,
    /// Standard SSD, locally redundant.
    StandardSsdLrs,
    /// Standard SSD, zone redundant.
    StandardSsdZrs,
    /// Premium SSD, locally redundant.
    PremiumLrs,
    /// Premium SSD, zone redundant.
    PremiumZrs,
    /// Premium SSD v2, locally redundant.
    PremiumV2Lrs,
    /// Ultra disk, locally redundant.
    UltraSsdLrs,
    /// A name rha does not know (a validation error).
    Other(String),
}

impl StorageAccountType {
    /// Every known type, in the spelling Azure uses.
    pub const KNOWN: [&'static str; 7] = [
        "Standard_LRS",
        "StandardSSD_LRS",
        "StandardSSD_ZRS",
        "Premium_LRS",
        "Premium_ZRS",
        "PremiumV2_LRS",
        "UltraSSD_LRS",
    ];

    /// The name as Azure spells it.
    pub fn as_str(&self) -> &str {
        match self {
            StorageAccountType::StandardLrs => "Standard_LRS",
            StorageAccountType::StandardSsdLrs => "StandardSSD_LRS",
            StorageAccountType::StandardSsdZrs => "StandardSSD_ZRS",
            StorageAccountType::PremiumLrs => "Premium_LRS",
            StorageAccountType::PremiumZrs => "Premium_ZRS",
            StorageAccountType::PremiumV2Lrs => "PremiumV2_LRS",
            StorageAccountType::UltraSsdLrs => "UltraSSD_LRS",
            StorageAccountType::Other(s) => s,
        }
    }

    /// Whether this is a type rha knows.
    pub fn is_known(&self) -> bool {
        !matches!(self, StorageAccountType::Other(_))
    }
}

impl From<String> for StorageAccountType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "Standard_LRS" => StorageAccountType::StandardLrs,
            "StandardSSD_LRS" => StorageAccountType::StandardSsdLrs,
            "StandardSSD_ZRS" => StorageAccountType::StandardSsdZrs,
            "Premium_LRS" => StorageAccountType::PremiumLrs,
            "Premium_ZRS" => StorageAccountType::PremiumZrs,
            "PremiumV2_LRS" => StorageAccountType::PremiumV2Lrs,
            "UltraSSD_LRS" => StorageAccountType::UltraSsdLrs,
            _ => StorageAccountType::Other(s),
        }
    }
}

impl From<StorageAccountType> for String {
    fn from(t: StorageAccountType) -> String {
        t.as_str().to_owned()
    }
}

impl FromStr for StorageAccountType {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(StorageAccountType::from(s.to_owned()))
    }
}

impl fmt::Display for StorageAccountType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Network of the switchover VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Virtual network (Azure: required) or host bridge (local) to attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_network: Option<String>,
    /// Subnet within the virtual network (Azure: required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Static private IP address; dynamic when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// Give the VM a public IP address (default false).
    #[serde(default)]
    pub public_ip: bool,
}

/// A starting point for a new scenario (`rha scenario new`), see
/// [`Scenario::template`](crate::scenario::Scenario::template).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Template {
    /// Replica disks as fixed-VHD files on a local appliance; QEMU VM at switchover.
    Local,
    /// Replica disks as Azure page blobs; Azure VM at switchover.
    Azure,
}

/// A word that is not one of a keyword enum's values, from `FromStr`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`; use one of {}{}",
    expected.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", "),
    suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
pub struct UnknownKeyword {
    /// What was being parsed (`product`, `operating system`, ...).
    pub what: &'static str,
    /// The text that was given.
    pub value: String,
    /// Every accepted value.
    pub expected: &'static [&'static str],
    /// The accepted value closest to `value`, if it looks like a typo.
    pub suggestion: Option<&'static str>,
}

/// `as_str`, `NAMES`, `Display` and `FromStr` for the enums written as a
/// single word in scenario files; the spellings match their serde names.
macro_rules! keyword_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, as written in scenario files.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The value as written in scenario files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownKeyword;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(UnknownKeyword {
                        what: $what,
                        value: s.to_owned(),
                        expected: Self::NAMES,
                        suggestion: super::suggest::did_you_mean(s, Self::NAMES.iter().copied()),
                    }),
                }
            }
        }
    };
}

keyword_enum!(Template, "scenario template", { Local => "local", Azure => "azure" });
keyword_enum!(Product, "product", { Ha => "ha", Replication => "replication" });
keyword_enum!(Os, "operating system", { Windows => "windows", Linux => "linux" });
keyword_enum!(SyncMethod, "synchronisation method", { Volume => "volume", Block => "block" });
keyword_enum!(FsyncPolicy, "fsync policy", {
    Always => "always",
    Interval => "interval",
    Never => "never",
});
keyword_enum!(SwitchoverMode, "switchover mode", { Manual => "manual", Automatic => "automatic" });
keyword_enum!(WireCompression, "wire compression", { None => "none", Lz4 => "lz4", Zstd => "zstd" });
keyword_enum!(Weekday, "day of the week", {
    Mon => "mon",
    Tue => "tue",
    Wed => "wed",
    Thu => "thu",
    Fri => "fri",
    Sat => "sat",
    Sun => "sun",
});

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_true() -> bool {
    true
}
fn default_sync_method() -> SyncMethod {
    SyncMethod::Block
}
fn default_block_size() -> u32 {
    BLOCK_SIZE
}
fn default_journal_max_size_mb() -> u64 {
    4096
}
fn default_fsync() -> FsyncPolicy {
    FsyncPolicy::Always
}
fn default_fsync_interval_ms() -> u64 {
    100
}
fn default_journal_memory_mb() -> u64 {
    64
}
fn default_interval_secs() -> u64 {
    30
}
fn default_timeout_secs() -> u64 {
    300
}
fn default_checks() -> Vec<Check> {
    vec![Check::Heartbeat]
}
fn default_switchover_mode() -> SwitchoverMode {
    SwitchoverMode::Manual
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `FromStr`/`Display` spelling is the serde spelling.
    fn agrees<T>(value: T)
    where
        T: Serialize + FromStr<Err = UnknownKeyword> + fmt::Display + PartialEq + fmt::Debug,
    {
        let json = serde_json::to_string(&value).expect("serialises");
        assert_eq!(json, format!("\"{value}\""));
        assert_eq!(value.to_string().parse::<T>().expect("parses"), value);
    }

    #[test]
    fn keyword_spellings_match_serde() {
        agrees(Product::Ha);
        agrees(Product::Replication);
        agrees(Os::Windows);
        agrees(Os::Linux);
        agrees(SyncMethod::Volume);
        agrees(SyncMethod::Block);
        agrees(FsyncPolicy::Always);
        agrees(FsyncPolicy::Interval);
        agrees(FsyncPolicy::Never);
        agrees(SwitchoverMode::Manual);
        agrees(SwitchoverMode::Automatic);
        agrees(WireCompression::None);
        agrees(WireCompression::Lz4);
        agrees(WireCompression::Zstd);
        for day in Weekday::ALL {
            agrees(day);
            assert_eq!(Weekday::from_index(day.index()), Some(day));
        }
    }

    #[test]
    fn unknown_keyword_suggests() {
        let e = "automatc".parse::<SwitchoverMode>().expect_err("typo");
        assert_eq!(e.suggestion, Some("automatic"));
        assert_eq!(
            e.to_string(),
            "unknown switchover mode `automatc`; use one of `manual`, `automatic` (did you mean `automatic`?)"
        );
        assert_eq!(
            "Standard_LRS".parse::<StorageAccountType>(),
            Ok(StorageAccountType::StandardLrs)
        );
    }
}
