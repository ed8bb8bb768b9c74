//! Switchover to Azure: [`AzureProvider`], the [`CloudProvider`] that turns
//! the replica page blobs into a running Azure VM.
//!
//! ```text
//!  create_vm(spec)                                          (each step polled to its end)
//!   0. verify: the definition, each replica blob (page blob, fixed-VHD footer), the subnet
//!   1. managed disks  PUT Microsoft.Compute/disks        createOption Import, sourceUri, storageAccountId
//!                     (OS disk: osType, hyperVGeneration; one per volume, in parallel)
//!   2. public IP      PUT Microsoft.Network/publicIPAddresses   (only with network.public_ip)
//!   3. NIC            PUT Microsoft.Network/networkInterfaces   subnet, static or dynamic private IP
//!   4. VM             PUT Microsoft.Compute/virtualMachines     size, OS disk attached, data disks at LUN 0..
//!   5. state          GET ...?$expand=instanceView
//!  a step fails ─► delete what this attempt created (VM, NIC, public IP, disks), unless keep_on_failure
//! ```
//!
//! The replica page blobs are only read (imported): no operation of this
//! provider ever deletes them. Deleting a VM removes the VM and the network
//! interface and public IP rha made for it; the managed disks, which hold
//! what the VM wrote since the switchover, are kept unless
//! [`AzureProvider::delete_disks_with_vm`] says otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rha_core::cloud::{CloudError, CloudProvider, VmId, VmInfo, VmSpec, VmState};
use rha_core::scenario::{Network, Os, Replica, Scenario};
use serde::Serialize;

use crate::arm::{
    storage_account_id, subnet_id, ArmError, ArmErrorKind, AzureApi, BlobProbe, DiskImport,
    NicSpec, PowerAction, PublicIpSpec, ResourceId, ResourceKind, VmCreate, VmResource,
    TAG_CREATED_BY, TAG_NIC, TAG_PUBLIC_IP, TAG_RECOVERY_POINT, TAG_SCENARIO,
};

/// The managed-disk type when the scenario does not choose one.
pub const DEFAULT_DISK_SKU: &str = "StandardSSD_LRS";

/// Azure requires a managed disk's virtual size to be a whole number of MiB.
const MIB: u64 = 1024 * 1024;

/// Where in Azure a scenario's switchover VM goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureTarget {
    /// The region (`westeurope`).
    pub location: String,
    /// The resource group of the VM, its disks, NIC and public IP.
    pub resource_group: String,
    /// The id of the storage account holding the replica page blobs.
    pub storage_account_id: String,
    /// The managed-disk type (`Premium_LRS`, `StandardSSD_LRS`, ...).
    pub disk_sku: String,
    /// The scenario's name, for the VM's tags.
    pub scenario: Option<String>,
}

impl AzureTarget {
    /// The target of an Azure scenario in `subscription` (the account's).
    pub fn from_scenario(s: &Scenario, subscription: &str) -> Result<AzureTarget, CloudError> {
        let Replica::Azure(r) = &s.replica else {
            return Err(CloudError::Invalid(format!(
                "scenario `{}` replicates to a local appliance, not to Azure",
                s.name
            )));
        };
        Ok(AzureTarget {
            location: r.region.clone(),
            resource_group: s
                .vm
                .resource_group
                .clone()
                .unwrap_or_else(|| r.resource_group.clone()),
            storage_account_id: storage_account_id(
                subscription,
                &r.resource_group,
                &r.storage_account,
            ),
            disk_sku: s
                .vm
                .storage_account_type
                .as_ref()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_else(|| DEFAULT_DISK_SKU.to_owned()),
            scenario: Some(s.name.clone()),
        })
    }
}

/// A step of a switchover, for reports and errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    /// Checking the definition, the replica blobs and the network.
    Verify,
    /// Importing a replica blob as a managed disk.
    ImportDisk {
        /// The volume (`C:`, `/`).
        volume: String,
        /// The disk's name.
        disk: String,
    },
    /// Creating the public IP address.
    CreatePublicIp {
        /// Its name.
        name: String,
    },
    /// Creating the network interface.
    CreateNic {
        /// Its name.
        name: String,
    },
    /// Creating the VM.
    CreateVm {
        /// Its name.
        name: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Verify => f.write_str("checking the VM definition, replica disks and network"),
            Step::ImportDisk { volume, disk } => {
                write!(
                    f,
                    "importing the replica of volume `{volume}` as managed disk `{disk}`"
                )
            }
            Step::CreatePublicIp { name } => write!(f, "creating public IP address `{name}`"),
            Step::CreateNic { name } => write!(f, "creating network interface `{name}`"),
            Step::CreateVm { name } => write!(f, "creating VM `{name}`"),
        }
    }
}

/// One finished step of a switchover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// The step.
    #[serde(flatten)]
    pub step: Step,
    /// The resource it made.
    pub id: String,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// What a switchover made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Switchover {
    /// The VM's resource id.
    pub vm_id: String,
    /// The VM's name.
    pub name: String,
    /// The OS disk's resource id.
    pub os_disk_id: String,
    /// The data disks' resource ids, LUN 0 first.
    pub data_disk_ids: Vec<String>,
    /// The network interface's resource id.
    pub nic_id: String,
    /// The public IP address's resource id, if one was made.
    pub public_ip_id: Option<String>,
    /// The VM's private IP address, as the NIC reports it.
    pub private_ip: Option<String>,
    /// The public IP address, as the public IP resource reports it.
    pub public_ip: Option<String>,
    /// The VM's state after creation.
    pub state: VmState,
    /// Warnings from the checks.
    pub warnings: Vec<String>,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
    /// Resource Manager requests sent (polls included).
    pub arm_calls: u64,
    /// Wall time, in milliseconds.
    pub millis: u64,
    /// The recovery point the disks hold, as the spec says.
    pub recovery_point: Option<String>,
}

/// What happened to one resource when a failed switchover was cleaned up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cleanup {
    /// The resource's id.
    pub id: String,
    /// `None` when it was deleted; the error otherwise.
    pub error: Option<String>,
}

/// A switchover that failed: at which step, why, and what became of what
/// the attempt had created.
#[derive(Debug)]
pub struct SwitchoverError {
    /// The VM's name.
    pub vm: String,
    /// The step that failed.
    pub step: Step,
    /// Why.
    pub cause: StepCause,
    /// What was deleted (or could not be), when cleaning up.
    pub cleaned: Vec<Cleanup>,
    /// What was left in place because the caller asked to keep it.
    pub kept: Vec<String>,
}

/// Why a switchover step failed.
#[derive(Debug)]
pub enum StepCause {
    /// Resource Manager refused or failed the operation.
    Arm(ArmError),
    /// The checks failed before anything was created.
    Check(CloudError),
}

impl fmt::Display for StepCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepCause::Arm(e) => write!(f, "{e}"),
            StepCause::Check(e) => write!(f, "{e}"),
        }
    }
}

impl fmt::Display for SwitchoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "switchover of VM `{}` failed while {}: {}",
            self.vm, self.step, self.cause
        )?;
        let failed: Vec<&Cleanup> = self.cleaned.iter().filter(|c| c.error.is_some()).collect();
        if !self.kept.is_empty() {
            write!(
                f,
                ". Kept what this attempt created, as asked: {}; delete it yourself when done",
                self.kept.join(", ")
            )?;
        } else if !self.cleaned.is_empty() {
            let deleted = self.cleaned.len() - failed.len();
            write!(
                f,
                ". Removed what this attempt created ({deleted} resource(s))"
            )?;
            if !failed.is_empty() {
                write!(f, ", except:")?;
                for c in failed {
                    write!(
                        f,
                        " {} ({}) — delete it in the portal or with `az resource delete --ids {}`;",
                        c.id,
                        c.error.as_deref().unwrap_or(""),
                        c.id
                    )?;
                }
            }
        } else if matches!(self.cause, StepCause::Arm(_)) {
            write!(f, ". Nothing had been created")?;
        }
        write!(f, ". The replica page blobs are untouched")
    }
}

impl std::error::Error for SwitchoverError {}

impl From<SwitchoverError> for CloudError {
    fn from(e: SwitchoverError) -> Self {
        match e.cause {
            StepCause::Check(c) => c,
            StepCause::Arm(_) => CloudError::Provider(e.to_string()),
        }
    }
}

/// The [`CloudProvider`] of Azure: switchover VMs from replica page blobs.
pub struct AzureProvider {
    api: Arc<dyn AzureApi>,
    target: AzureTarget,
    keep_on_failure: bool,
    delete_disks: bool,
    stop_action: PowerAction,
}

impl fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureProvider")
            .field("subscription", &self.api.subscription_id())
            .field("target", &self.target)
            .field("keep_on_failure", &self.keep_on_failure)
            .field("delete_disks", &self.delete_disks)
            .field("stop_action", &self.stop_action)
            .finish()
    }
}

impl AzureProvider {
    /// A provider creating VMs in `target` through `api`.
    pub fn new(api: Arc<dyn AzureApi>, target: AzureTarget) -> AzureProvider {
        AzureProvider {
            api,
            target,
            keep_on_failure: false,
            delete_disks: false,
            stop_action: PowerAction::Deallocate,
        }
    }

    /// Leave what a failed switchover created in place (for diagnosis)
    /// instead of deleting it.
    pub fn keep_on_failure(mut self, keep: bool) -> Self {
        self.keep_on_failure = keep;
        self
    }

    /// Also delete the VM's managed disks in [`CloudProvider::delete_vm`]
    /// (default: kept, they hold what the VM wrote since the switchover).
    /// The replica page blobs are never deleted.
    pub fn delete_disks_with_vm(mut self, delete: bool) -> Self {
        self.delete_disks = delete;
        self
    }

    /// How [`CloudProvider::stop_vm`] stops: [`PowerAction::Deallocate`]
    /// (default: no compute billing) or [`PowerAction::PowerOff`].
    pub fn stop_action(mut self, action: PowerAction) -> Self {
        self.stop_action = action;
        self
    }

    /// The target.
    pub fn target(&self) -> &AzureTarget {
        &self.target
    }

    /// The Resource Manager client.
    pub fn api(&self) -> &Arc<dyn AzureApi> {
        &self.api
    }

    /// The subnet id of a spec's network (a virtual network name in the
    /// target's resource group, or a full virtual network id).
    pub fn subnet_of(&self, net: &Network) -> Result<String, CloudError> {
        let vnet = net
            .virtual_network
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                CloudError::Invalid(
                    "an Azure VM needs a virtual network: set `network.virtual_network`".into(),
                )
            })?;
        let subnet = net
            .subnet
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                CloudError::Invalid("an Azure VM needs a subnet: set `network.subnet`".into())
            })?;
        if vnet.starts_with('/') {
            let r = ResourceId::parse(vnet).filter(|r| {
                r.child.is_none()
                    && r.provider_type
                        .eq_ignore_ascii_case("Microsoft.Network/virtualNetworks")
            });
            return match r {
                Some(r) => Ok(subnet_id(
                    &r.subscription,
                    &r.resource_group,
                    &r.name,
                    subnet,
                )),
                None => Err(CloudError::Invalid(format!(
                    "`{vnet}` is neither a virtual network name nor a virtual network resource id"
                ))),
            };
        }
        Ok(subnet_id(
            self.api.subscription_id(),
            &self.target.resource_group,
            vnet,
            subnet,
        ))
    }

    /// Checks `spec` without creating anything; returns warnings.
    async fn check(&self, spec: &VmSpec) -> Result<Vec<String>, CloudError> {
        let mut warnings = Vec::new();
        check_vm_name(&spec.name, spec.os)?;
        if spec.cpus == 0 {
            return Err(CloudError::Invalid(
                "0 CPUs: a VM needs at least one (in Azure the size decides)".into(),
            ));
        }
        match spec.size.as_deref() {
            None => {
                return Err(CloudError::Invalid(
                    "an Azure VM needs a size: set `vm.size`, such as `Standard_D2s_v3`".into(),
                ))
            }
            Some(s) if !s.starts_with("Standard_") && !s.starts_with("Basic_") => {
                return Err(CloudError::Invalid(format!(
                    "`{s}` is not an Azure VM size such as `Standard_D2s_v3`"
                )))
            }
            Some(_) => {}
        }
        if spec.disks.is_empty() {
            return Err(CloudError::Invalid("the VM has no disks".into()));
        }
        if spec.system_disk().is_none() {
            return Err(CloudError::Invalid(format!(
                "exactly one disk must be the system disk, {} are",
                spec.disks.iter().filter(|d| d.system).count()
            )));
        }
        if spec.disks.len() > 65 {
            return Err(CloudError::Invalid(
                "Azure VMs take at most 64 data disks".into(),
            ));
        }
        let subnet = self.subnet_of(&spec.network)?;
        let private_ip = match &spec.network.private_ip {
            Some(ip) => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                CloudError::Invalid(format!(
                    "`{ip}` is not an IPv4 address; write it like `10.0.1.10`, or remove \
                     `private_ip` for a dynamic address"
                ))
            })?),
            None => None,
        };

        for d in &spec.disks {
            if !(d.location.starts_with("https://") || d.location.starts_with("http://")) {
                return Err(CloudError::Disk {
                    path: d.location.clone(),
                    reason: "not a page blob URL; an Azure replica disk is \
                             https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB"
                        .into(),
                });
            }
            match self
                .api
                .probe_blob(&d.location)
                .await
                .map_err(arm_to_cloud)?
            {
                BlobProbe::Missing => {
                    return Err(CloudError::Disk {
                        path: d.location.clone(),
                        reason: format!(
                            "the replica page blob of volume `{}` does not exist; check the \
                             scenario's storage account and container, and that replication \
                             has created it",
                            d.name
                        ),
                    })
                }
                BlobProbe::Found {
                    length,
                    blob_type,
                    vhd_size,
                } => {
                    if !blob_type.is_empty() && blob_type != "PageBlob" {
                        return Err(CloudError::Disk {
                            path: d.location.clone(),
                            reason: format!(
                                "a {blob_type}, not a page blob: Azure imports managed disks \
                                 from page blobs only"
                            ),
                        });
                    }
                    match vhd_size {
                        None => {
                            return Err(CloudError::Disk {
                                path: d.location.clone(),
                                reason: format!(
                                    "the last 512 bytes of the {length}-byte blob are not a \
                                     fixed-VHD footer, so Azure cannot import it: let \
                                     replication finish (the footer is written when the \
                                     replica is created) or pick a recovery point"
                                ),
                            })
                        }
                        Some(v) if v % MIB != 0 => {
                            return Err(CloudError::Disk {
                                path: d.location.clone(),
                                reason: format!(
                                    "the VHD's virtual size {v} is not a whole number of MiB, \
                                     which Azure requires"
                                ),
                            })
                        }
                        Some(v) if v < d.size => warnings.push(format!(
                            "disk `{}`: the blob's VHD holds {v} bytes, less than the volume's \
                             {} bytes",
                            d.name, d.size
                        )),
                        Some(_) => {}
                    }
                }
                BlobProbe::Unchecked { reason } => {
                    warnings.push(format!("disk `{}` not checked: {reason}", d.name))
                }
            }
        }

        match self.api.get_subnet(&subnet).await.map_err(arm_to_cloud)? {
            None => {
                return Err(CloudError::Invalid(format!(
                    "subnet {subnet} does not exist: create it, or fix `network.virtual_network` \
                     and `network.subnet`"
                )))
            }
            Some(prefix) => {
                if let (Some(ip), Some(net)) = (private_ip, parse_cidr(&prefix)) {
                    if !net.contains(ip) {
                        return Err(CloudError::Invalid(format!(
                            "the private IP {ip} is not in the subnet's range {prefix}; pick an \
                             address inside it"
                        )));
                    }
                    if net.reserved(ip) {
                        return Err(CloudError::Invalid(format!(
                            "{ip} is one of the five addresses Azure reserves in {prefix} (the \
                             first four and the last); pick another"
                        )));
                    }
                }
            }
        }
        if spec.generation == rha_core::scenario::HyperVGeneration::V1
            && spec
                .disks
                .iter()
                .any(|d| d.system && d.size > 2 * 1024 * MIB * 1024)
        {
            warnings.push(
                "a generation 1 VM boots from MBR, which cannot address more than 2 TiB of the \
                 system disk"
                    .into(),
            );
        }
        Ok(warnings)
    }

    /// The switchover itself, with a detailed report or error
    /// ([`CloudProvider::create_vm`] returns the same as a [`VmInfo`]).
    pub async fn switchover(&self, spec: &VmSpec) -> Result<Switchover, SwitchoverError> {
        let started = Instant::now();
        let calls_before = self.api.arm_calls();
        let fail_check = |cause: CloudError| SwitchoverError {
            vm: spec.name.clone(),
            step: Step::Verify,
            cause: StepCause::Check(cause),
            cleaned: Vec::new(),
            kept: Vec::new(),
        };
        let warnings = self.check(spec).await.map_err(fail_check)?;
        let rg = &self.target.resource_group;
        match self.api.get_vm(rg, &spec.name, false).await {
            Ok(Some(_)) => {
                return Err(fail_check(CloudError::AlreadyExists {
                    name: spec.name.clone(),
                }))
            }
            Ok(None) => {}
            Err(e) => return Err(fail_check(arm_to_cloud(e))),
        }
        let subnet = self.subnet_of(&spec.network).map_err(fail_check)?;

        let stamp = utc_stamp(SystemTime::now());
        let mut tags = BTreeMap::new();
        tags.insert(TAG_CREATED_BY.to_owned(), "rha".to_owned());
        if let Some(s) = &self.target.scenario {
            tags.insert(TAG_SCENARIO.to_owned(), s.clone());
        }
        if let Some(p) = &spec.recovery_point {
            tags.insert(TAG_RECOVERY_POINT.to_owned(), truncate(p, 256));
        }
        let mut run = Run {
            api: self.api.as_ref(),
            vm: spec.name.clone(),
            created: Vec::new(),
            steps: Vec::new(),
        };

        // 1. Managed disks, in parallel: the OS disk, then the data disks.
        let mut ordered: Vec<&rha_core::cloud::DiskRef> =
            spec.disks.iter().filter(|d| d.system).collect();
        ordered.extend(spec.disks.iter().filter(|d| !d.system));
        let imports: Vec<(Step, DiskImport)> = ordered
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let name = if i == 0 {
                    format!("{}-osdisk-{stamp}", spec.name)
                } else {
                    format!("{}-disk{}-{stamp}", spec.name, i - 1)
                };
                let mut t = tags.clone();
                t.insert("rha-volume".to_owned(), d.name.clone());
                (
                    Step::ImportDisk {
                        volume: d.name.clone(),
                        disk: name.clone(),
                    },
                    DiskImport {
                        resource_group: rg.clone(),
                        name,
                        location: self.target.location.clone(),
                        source_uri: d.location.clone(),
                        storage_account_id: self.target.storage_account_id.clone(),
                        os_type: (i == 0).then_some(spec.os),
                        generation: (i == 0).then_some(spec.generation),
                        sku: self.target.disk_sku.clone(),
                        tags: t,
                    },
                )
            })
            .collect();
        let t0 = Instant::now();
        let results =
            futures::future::join_all(imports.iter().map(|(_, d)| self.api.create_disk(d))).await;
        let mut disk_ids = Vec::new();
        let mut first_failure = None;
        for ((step, d), r) in imports.iter().zip(results) {
            match r {
                Ok(c) => {
                    run.created
                        .push((ResourceKind::Disk, d.name.clone(), c.id.clone()));
                    run.steps.push(StepReport {
                        step: step.clone(),
                        id: c.id.clone(),
                        millis: ms(t0.elapsed()),
                    });
                    disk_ids.push(c.id);
                }
                Err(e) => {
                    if accepted(&e) {
                        run.created
                            .push((ResourceKind::Disk, d.name.clone(), e.resource.clone()));
                    }
                    if first_failure.is_none() {
                        first_failure = Some((step.clone(), e));
                    }
                }
            }
        }
        if let Some((step, e)) = first_failure {
            return Err(run.fail(step, e, self.keep_on_failure).await);
        }
        let os_disk_id = disk_ids[0].clone();
        let data_disk_ids = disk_ids[1..].to_vec();

        // 2. Public IP.
        let mut public_ip_id = None;
        let mut public_ip = None;
        let mut vm_tags = tags.clone();
        if spec.network.public_ip {
            let name = format!("{}-pip-{stamp}", spec.name);
            let step = Step::CreatePublicIp { name: name.clone() };
            let req = PublicIpSpec {
                resource_group: rg.clone(),
                name: name.clone(),
                location: self.target.location.clone(),
                tags: tags.clone(),
            };
            let c = run
                .step(
                    step,
                    ResourceKind::PublicIp,
                    &name,
                    self.api.create_public_ip(&req),
                )
                .await;
            let c = match c {
                Ok(c) => c,
                Err(e) => return Err(run.fail_last(e, self.keep_on_failure).await),
            };
            public_ip = c
                .body
                .pointer("/properties/ipAddress")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            public_ip_id = Some(c.id);
            vm_tags.insert(TAG_PUBLIC_IP.to_owned(), name);
        }

        // 3. NIC.
        let nic_name = format!("{}-nic-{stamp}", spec.name);
        let req = NicSpec {
            resource_group: rg.clone(),
            name: nic_name.clone(),
            location: self.target.location.clone(),
            subnet_id: subnet,
            private_ip: spec.network.private_ip.clone(),
            public_ip_id: public_ip_id.clone(),
            tags: tags.clone(),
        };
        let step = Step::CreateNic {
            name: nic_name.clone(),
        };
        let nic = match run
            .step(
                step,
                ResourceKind::NetworkInterface,
                &nic_name,
                self.api.create_nic(&req),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Err(run.fail_last(e, self.keep_on_failure).await),
        };
        let private_ip = nic
            .body
            .pointer("/properties/ipConfigurations/0/properties/privateIPAddress")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        vm_tags.insert(TAG_NIC.to_owned(), nic_name);

        // 4. VM.
        let size = spec.size.clone().unwrap_or_default();
        let req = VmCreate {
            resource_group: rg.clone(),
            name: spec.name.clone(),
            location: self.target.location.clone(),
            size,
            os_type: spec.os,
            os_disk_id: os_disk_id.clone(),
            data_disk_ids: data_disk_ids.clone(),
            disk_sku: self.target.disk_sku.clone(),
            nic_id: nic.id.clone(),
            tags: vm_tags,
        };
        let step = Step::CreateVm {
            name: spec.name.clone(),
        };
        let vm = match run
            .step(
                step,
                ResourceKind::VirtualMachine,
                &spec.name,
                self.api.create_vm(&req),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Err(run.fail_last(e, self.keep_on_failure).await),
        };

        // 5. The state it is in now.
        let state = match self.api.get_vm(rg, &spec.name, true).await {
            Ok(Some(v)) => state_of(&v),
            Ok(None) => VmState::Failed("the VM was created but cannot be found".into()),
            Err(e) => VmState::Failed(format!("the VM was created but its state is unknown: {e}")),
        };
        Ok(Switchover {
            vm_id: vm.id,
            name: spec.name.clone(),
            os_disk_id,
            data_disk_ids,
            nic_id: nic.id,
            public_ip_id,
            private_ip,
            public_ip,
            state,
            warnings,
            steps: run.steps,
            arm_calls: self.api.arm_calls().saturating_sub(calls_before),
            millis: ms(started.elapsed()),
            recovery_point: spec.recovery_point.clone(),
        })
    }

    /// Starts a stopped or deallocated switchover VM.
    pub async fn start_vm(&self, id: &VmId) -> Result<(), CloudError> {
        let r = self.vm_ref(id)?;
        self.api
            .power(&r.resource_group, &r.name, PowerAction::Start)
            .await
            .map_err(|e| not_found_or(e, id))
    }

    /// Every VM of the subscription in the target's region: the appliances
    /// a scenario can replicate to (those tagged `rha-role = appliance`
    /// first) and the switchover VMs (tagged `created-by = rha`).
    pub async fn list_region_vms(&self) -> Result<Vec<VmResource>, CloudError> {
        list_region_vms(self.api.as_ref(), &self.target.location)
            .await
            .map_err(arm_to_cloud)
    }

    fn vm_ref(&self, id: &VmId) -> Result<ResourceId, CloudError> {
        match ResourceId::parse(&id.0) {
            Some(r)
                if r.is(ResourceKind::VirtualMachine)
                    && r.subscription
                        .eq_ignore_ascii_case(self.api.subscription_id()) =>
            {
                Ok(r)
            }
            _ => Err(CloudError::NotFound { id: id.0.clone() }),
        }
    }
}

/// Every VM of the subscription in `location`, appliances (`rha-role =
/// appliance`) first, then by name.
pub async fn list_region_vms(
    api: &dyn AzureApi,
    location: &str,
) -> Result<Vec<VmResource>, ArmError> {
    let mut vms = api.list_vms(location).await?;
    vms.sort_by(|a, b| {
        let appliance = |v: &VmResource| {
            v.tags.get(crate::arm::TAG_ROLE).map(String::as_str) != Some("appliance")
        };
        (appliance(a), &a.name).cmp(&(appliance(b), &b.name))
    });
    Ok(vms)
}

/// The resources a switchover attempt created, for cleanup.
struct Run<'a> {
    api: &'a dyn AzureApi,
    vm: String,
    /// (kind, name, id), in creation order.
    created: Vec<(ResourceKind, String, String)>,
    steps: Vec<StepReport>,
}

impl Run<'_> {
    /// Runs one create step; on failure the error carries the step.
    async fn step(
        &mut self,
        step: Step,
        kind: ResourceKind,
        name: &str,
        fut: impl std::future::Future<Output = Result<crate::arm::Created, ArmError>>,
    ) -> Result<crate::arm::Created, (Step, ArmError)> {
        let t0 = Instant::now();
        match fut.await {
            Ok(c) => {
                self.created.push((kind, name.to_owned(), c.id.clone()));
                self.steps.push(StepReport {
                    step,
                    id: c.id.clone(),
                    millis: ms(t0.elapsed()),
                });
                Ok(c)
            }
            Err(e) => {
                if accepted(&e) {
                    self.created
                        .push((kind, name.to_owned(), e.resource.clone()));
                }
                Err((step, e))
            }
        }
    }

    async fn fail_last(self, (step, e): (Step, ArmError), keep: bool) -> SwitchoverError {
        self.fail(step, e, keep).await
    }

    /// Deletes (or keeps) what was created, newest first, and describes it.
    async fn fail(self, step: Step, cause: ArmError, keep: bool) -> SwitchoverError {
        let ids: Vec<String> = self.created.iter().map(|(_, _, id)| id.clone()).collect();
        if keep {
            return SwitchoverError {
                vm: self.vm,
                step,
                cause: StepCause::Arm(cause),
                cleaned: Vec::new(),
                kept: ids,
            };
        }
        let mut cleaned = Vec::new();
        for (kind, name, id) in self.created.iter().rev() {
            let rg = ResourceId::parse(id)
                .map(|r| r.resource_group)
                .unwrap_or_default();
            let r = self.api.delete(*kind, &rg, name).await;
            if let Err(e) = &r {
                tracing::warn!(resource = %id, error = %e, "could not remove a resource of a failed switchover");
            }
            cleaned.push(Cleanup {
                id: id.clone(),
                error: r.err().map(|e| e.kind.to_string()),
            });
        }
        SwitchoverError {
            vm: self.vm,
            step,
            cause: StepCause::Arm(cause),
            cleaned,
            kept: Vec::new(),
        }
    }
}

/// True when the request was accepted (so the resource exists) but the
/// operation then failed or timed out.
fn accepted(e: &ArmError) -> bool {
    matches!(
        *e.kind,
        ArmErrorKind::Failed { .. } | ArmErrorKind::Timeout { .. }
    )
}

#[async_trait::async_trait]
impl CloudProvider for AzureProvider {
    fn kind(&self) -> &'static str {
        "azure"
    }

    async fn verify(&self, vm: &VmSpec) -> Result<Vec<String>, CloudError> {
        self.check(vm).await
    }

    async fn create_vm(&self, vm: &VmSpec) -> Result<VmInfo, CloudError> {
        let s = self.switchover(vm).await?;
        let mut details = BTreeMap::new();
        details.insert("resource_group".into(), self.target.resource_group.clone());
        details.insert("location".into(), self.target.location.clone());
        details.insert("os_disk".into(), s.os_disk_id.clone());
        if !s.data_disk_ids.is_empty() {
            details.insert("data_disks".into(), s.data_disk_ids.join(","));
        }
        details.insert("nic".into(), s.nic_id.clone());
        if let Some(p) = &s.public_ip_id {
            details.insert("public_ip_resource".into(), p.clone());
        }
        if let Some(p) = &s.private_ip {
            details.insert("private_ip".into(), p.clone());
        }
        if let Some(p) = &s.public_ip {
            details.insert("public_ip".into(), p.clone());
        }
        if let Some(p) = &s.recovery_point {
            details.insert("recovery_point".into(), p.clone());
        }
        if !s.warnings.is_empty() {
            details.insert("warnings".into(), s.warnings.join("; "));
        }
        details.insert("arm_calls".into(), s.arm_calls.to_string());
        details.insert("millis".into(), s.millis.to_string());
        Ok(VmInfo {
            id: VmId(s.vm_id),
            name: s.name,
            state: s.state,
            details,
        })
    }

    async fn vm_state(&self, id: &VmId) -> Result<VmState, CloudError> {
        let r = self.vm_ref(id)?;
        match self.api.get_vm(&r.resource_group, &r.name, true).await {
            Ok(Some(v)) => Ok(state_of(&v)),
            Ok(None) => Err(CloudError::NotFound { id: id.0.clone() }),
            Err(e) => Err(not_found_or(e, id)),
        }
    }

    async fn stop_vm(&self, id: &VmId) -> Result<(), CloudError> {
        let r = self.vm_ref(id)?;
        self.api
            .power(&r.resource_group, &r.name, self.stop_action)
            .await
            .map_err(|e| not_found_or(e, id))
    }

    async fn delete_vm(&self, id: &VmId) -> Result<(), CloudError> {
        let r = self.vm_ref(id)?;
        let rg = &r.resource_group;
        let vm = match self.api.get_vm(rg, &r.name, false).await {
            Ok(Some(v)) => v,
            Ok(None) => return Err(CloudError::NotFound { id: id.0.clone() }),
            Err(e) => return Err(not_found_or(e, id)),
        };
        // Deleting a running VM stops it first (Resource Manager does).
        self.api
            .delete(ResourceKind::VirtualMachine, rg, &r.name)
            .await
            .map_err(arm_to_cloud)?;
        let ours = vm.tags.get(TAG_CREATED_BY).map(String::as_str) == Some("rha");
        let mut leftovers = Vec::new();
        if ours {
            for (tag, kind) in [
                (TAG_NIC, ResourceKind::NetworkInterface),
                (TAG_PUBLIC_IP, ResourceKind::PublicIp),
            ] {
                if let Some(name) = vm.tags.get(tag) {
                    if let Err(e) = self.api.delete(kind, rg, name).await {
                        leftovers.push(format!("{} `{name}` ({})", kind.noun(), e.kind));
                    }
                }
            }
        }
        if self.delete_disks {
            for disk in vm.os_disk_id.iter().chain(vm.data_disk_ids.iter()) {
                if let Some(d) = ResourceId::parse(disk) {
                    if let Err(e) = self
                        .api
                        .delete(ResourceKind::Disk, &d.resource_group, &d.name)
                        .await
                    {
                        leftovers.push(format!("managed disk `{}` ({})", d.name, e.kind));
                    }
                }
            }
        }
        if leftovers.is_empty() {
            Ok(())
        } else {
            Err(CloudError::Provider(format!(
                "VM {id} was deleted, but not: {}; delete them in the portal",
                leftovers.join(", ")
            )))
        }
    }
}

/// The [`VmState`] of a VM's instance view.
pub fn state_of(v: &VmResource) -> VmState {
    if let Some(f) = &v.failure {
        return VmState::Failed(f.clone());
    }
    if v.provisioning_state
        .as_deref()
        .is_some_and(|p| p.eq_ignore_ascii_case("failed"))
    {
        return VmState::Failed("provisioning failed".into());
    }
    match v.power_state.as_deref() {
        Some("running") | Some("starting") => VmState::Running,
        _ => VmState::Stopped,
    }
}

fn not_found_or(e: ArmError, id: &VmId) -> CloudError {
    if e.is_not_found() {
        CloudError::NotFound { id: id.0.clone() }
    } else {
        arm_to_cloud(e)
    }
}

fn arm_to_cloud(e: ArmError) -> CloudError {
    CloudError::Provider(e.to_string())
}

fn check_vm_name(name: &str, os: Os) -> Result<(), CloudError> {
    let (max, dots) = match os {
        Os::Windows => (15, false),
        Os::Linux => (64, true),
    };
    let ok = (1..=max).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || (dots && c == '.'))
        && !name.ends_with(['-', '.'])
        && !name.starts_with(['-', '.'])
        && !(os == Os::Windows && name.chars().all(|c| c.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(CloudError::Invalid(format!(
            "`{name}` is not a valid Azure {os} VM name: use 1 to {max} letters, digits and `-`{}, \
             not starting or ending with `-` or `.`",
            if dots { " and `.`" } else { "" }
        )))
    }
}

/// An IPv4 prefix `a.b.c.d/n`.
struct Cidr {
    base: u32,
    bits: u32,
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    let (a, n) = s.split_once('/')?;
    let addr: Ipv4Addr = a.parse().ok()?;
    let bits: u32 = n.parse().ok()?;
    (bits <= 32).then(|| Cidr {
        base: u32::from(addr) & mask(bits),
        bits,
    })
}

fn mask(bits: u32) -> u32 {
    if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    }
}

impl Cidr {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.bits) == self.base
    }

    /// Azure reserves the first four addresses and the last of each subnet.
    fn reserved(&self, ip: Ipv4Addr) -> bool {
        if self.bits > 29 {
            return false;
        }
        let offset = u32::from(ip) - self.base;
        let last = !mask(self.bits);
        offset < 4 || offset == last
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// `YYYYMMDDhhmmss` plus milliseconds, in UTC: unique names per attempt.
pub fn utc_stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::arm::{Created, MockAzureApi};
    use rha_core::cloud::DiskRef;
    use rha_core::scenario::HyperVGeneration;
    use serde_json::json;

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    fn target() -> AzureTarget {
        AzureTarget {
            location: "westeurope".into(),
            resource_group: "rg-dr".into(),
            storage_account_id: storage_account_id(SUB, "rg-dr", "rhareplicas"),
            disk_sku: "Premium_LRS".into(),
            scenario: Some("web01-ha".into()),
        }
    }

    fn spec() -> VmSpec {
        VmSpec {
            name: "web01-dr".into(),
            cpus: 2,
            memory_mb: 4096,
            size: Some("Standard_D2s_v3".into()),
            generation: HyperVGeneration::V2,
            os: Os::Linux,
            disks: vec![
                DiskRef {
                    name: "/".into(),
                    location: "https://rhareplicas.blob.core.windows.net/web01/disk-0.vhd".into(),
                    size: 64 * MIB,
                    system: true,
                },
                DiskRef {
                    name: "/data".into(),
                    location: "https://rhareplicas.blob.core.windows.net/web01/disk-1.vhd".into(),
                    size: 32 * MIB,
                    system: false,
                },
            ],
            network: Network {
                virtual_network: Some("vnet-dr".into()),
                subnet: Some("snet".into()),
                private_ip: Some("10.1.0.10".into()),
                public_ip: false,
            },
            recovery_point: Some("seq 7".into()),
        }
    }

    fn healthy(api: &mut MockAzureApi) {
        api.expect_subscription_id().return_const(SUB.to_owned());
        api.expect_arm_calls().return_const(0u64);
        api.expect_probe_blob().returning(|_| {
            Ok(BlobProbe::Found {
                length: 64 * MIB + 512,
                blob_type: "PageBlob".into(),
                vhd_size: Some(64 * MIB),
            })
        });
        api.expect_get_subnet()
            .returning(|_| Ok(Some("10.1.0.0/24".into())));
        api.expect_get_vm().returning(|_, _, _| Ok(None));
        api.expect_create_disk().returning(|d| {
            Ok(Created {
                id: ResourceId::new(SUB, &d.resource_group, ResourceKind::Disk, &d.name)
                    .to_string(),
                body: json!({}),
            })
        });
    }

    #[tokio::test]
    async fn nic_failure_removes_the_disks() {
        let mut api = MockAzureApi::new();
        healthy(&mut api);
        api.expect_create_nic().returning(|n| {
            Err(ArmError::new(
                "create network interface",
                &n.name,
                ArmErrorKind::Status {
                    status: 400,
                    code: Some("InvalidSubnet".into()),
                    message: Some("no such subnet".into()),
                },
            ))
        });
        api.expect_create_vm().never();
        api.expect_delete()
            .withf(|k, _, n| *k == ResourceKind::Disk && n.starts_with("web01-dr-"))
            .times(2)
            .returning(|_, _, _| Ok(()));
        let p = AzureProvider::new(Arc::new(api), target());
        let e = p.switchover(&spec()).await.expect_err("the NIC fails");
        assert!(matches!(e.step, Step::CreateNic { .. }), "{e}");
        assert_eq!(e.cleaned.len(), 2);
        let msg = e.to_string();
        assert!(msg.contains("creating network interface"), "{msg}");
        assert!(msg.contains("InvalidSubnet"), "{msg}");
        assert!(
            msg.contains("Removed what this attempt created (2 resource(s))"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn keep_on_failure_deletes_nothing() {
        let mut api = MockAzureApi::new();
        healthy(&mut api);
        api.expect_create_nic().returning(|n| {
            Err(ArmError::new(
                "create network interface",
                &n.name,
                ArmErrorKind::Failed {
                    status: "Failed".into(),
                    code: Some("InternalError".into()),
                    message: None,
                },
            ))
        });
        api.expect_delete().never();
        let p = AzureProvider::new(Arc::new(api), target()).keep_on_failure(true);
        let e = p.switchover(&spec()).await.expect_err("the NIC fails");
        // Two disks and the accepted-then-failed NIC are kept.
        assert_eq!(e.kept.len(), 3, "{e}");
        assert!(
            e.to_string().contains("Kept what this attempt created"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn checks_come_first() {
        let mut api = MockAzureApi::new();
        api.expect_subscription_id().return_const(SUB.to_owned());
        api.expect_arm_calls().return_const(0u64);
        api.expect_probe_blob()
            .returning(|_| Ok(BlobProbe::Missing));
        api.expect_create_disk().never();
        let p = AzureProvider::new(Arc::new(api), target());
        match p.create_vm(&spec()).await {
            Err(CloudError::Disk { reason, .. }) => assert!(reason.contains("does not exist")),
            other => panic!("{other:?}"),
        }
        let mut api = MockAzureApi::new();
        healthy(&mut api);
        let p = AzureProvider::new(Arc::new(api), target());
        let mut s = spec();
        s.network.private_ip = Some("10.2.0.10".into());
        let e = p.verify(&s).await.expect_err("outside the subnet");
        assert!(e.to_string().contains("not in the subnet's range"), "{e}");
        s.network.private_ip = Some("10.1.0.3".into());
        let e = p.verify(&s).await.expect_err("reserved");
        assert!(e.to_string().contains("reserves"), "{e}");
        s.network.private_ip = Some("10.1.0.4".into());
        p.verify(&s).await.expect("first usable address");
    }

    #[test]
    fn stamps_are_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_323_045_123);
        assert_eq!(utc_stamp(t), "20260102030405123");
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101000000000");
    }

    #[test]
    fn states() {
        let mut v = VmResource {
            power_state: Some("running".into()),
            ..Default::default()
        };
        assert_eq!(state_of(&v), VmState::Running);
        v.power_state = Some("deallocated".into());
        assert_eq!(state_of(&v), VmState::Stopped);
        v.failure = Some("OSProvisioningTimedOut".into());
        assert!(matches!(state_of(&v), VmState::Failed(_)));
    }
}
