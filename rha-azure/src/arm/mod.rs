//! Azure Resource Manager: the few operations a switchover needs, behind
//! the [`AzureApi`] trait so the SDK behind it can be swapped.
//!
//! ```text
//!   AzureProvider (orchestration, cleanup) ──► dyn AzureApi
//!                                                 ├─ SdkArm: azure_mgmt_compute / azure_mgmt_network 0.21,
//!                                                 │          our own long-running-operation polling
//!                                                 └─ mocks in unit tests
//! ```
//!
//! Requests are plain structs ([`DiskImport`], [`PublicIpSpec`],
//! [`NicSpec`], [`VmCreate`]); answers are the resource's JSON as ARM returns
//! it ([`Created`]) or the parsed facts rha needs ([`VmResource`]).

pub mod sdk;

#[cfg(feature = "fake-arm")]
pub mod fake;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rha_core::scenario::{HyperVGeneration, Os};
use serde_json::Value;

use crate::account::AuthFailure;

pub use sdk::{ArmOptions, PollPolicy, SdkArm};

/// The tag every resource rha creates carries (`created-by = rha`).
pub const TAG_CREATED_BY: &str = "created-by";
/// The scenario a switchover VM belongs to.
pub const TAG_SCENARIO: &str = "rha-scenario";
/// The recovery point a switchover VM was made from.
pub const TAG_RECOVERY_POINT: &str = "rha-recovery-point";
/// The name of the network interface rha created for a VM.
pub const TAG_NIC: &str = "rha-nic";
/// The name of the public IP address rha created for a VM.
pub const TAG_PUBLIC_IP: &str = "rha-public-ip";
/// Marks an appliance VM (`rha-role = appliance`) in listings.
pub const TAG_ROLE: &str = "rha-role";

/// The kinds of resources rha creates and deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `Microsoft.Compute/virtualMachines`.
    VirtualMachine,
    /// `Microsoft.Compute/disks` (managed disks).
    Disk,
    /// `Microsoft.Network/networkInterfaces`.
    NetworkInterface,
    /// `Microsoft.Network/publicIPAddresses`.
    PublicIp,
}

impl ResourceKind {
    /// The provider namespace and type, as in resource ids.
    pub fn provider_type(self) -> &'static str {
        match self {
            ResourceKind::VirtualMachine => "Microsoft.Compute/virtualMachines",
            ResourceKind::Disk => "Microsoft.Compute/disks",
            ResourceKind::NetworkInterface => "Microsoft.Network/networkInterfaces",
            ResourceKind::PublicIp => "Microsoft.Network/publicIPAddresses",
        }
    }

    /// What to call it in a message.
    pub fn noun(self) -> &'static str {
        match self {
            ResourceKind::VirtualMachine => "VM",
            ResourceKind::Disk => "managed disk",
            ResourceKind::NetworkInterface => "network interface",
            ResourceKind::PublicIp => "public IP address",
        }
    }
}

/// A parsed resource id:
/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/{namespace}/{type}/{name}[/{child type}/{child}]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceId {
    /// The subscription id.
    pub subscription: String,
    /// The resource group.
    pub resource_group: String,
    /// `Microsoft.Compute/virtualMachines`, ...
    pub provider_type: String,
    /// The resource's name.
    pub name: String,
    /// A child resource (`subnets`, name), if any.
    pub child: Option<(String, String)>,
}

impl ResourceId {
    /// The id of a top-level resource.
    pub fn new(subscription: &str, resource_group: &str, kind: ResourceKind, name: &str) -> Self {
        ResourceId {
            subscription: subscription.to_owned(),
            resource_group: resource_group.to_owned(),
            provider_type: kind.provider_type().to_owned(),
            name: name.to_owned(),
            child: None,
        }
    }

    /// Parses an id (segment names compare case-insensitively, as ARM does);
    /// `None` when it is not one.
    pub fn parse(id: &str) -> Option<ResourceId> {
        let rest = id.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        match parts.as_slice() {
            [s, sub, r, rg, p, ns, ty, name, tail @ ..]
                if s.eq_ignore_ascii_case("subscriptions")
                    && r.eq_ignore_ascii_case("resourceGroups")
                    && p.eq_ignore_ascii_case("providers") =>
            {
                let child = match tail {
                    [] => None,
                    [ct, cn] => Some(((*ct).to_owned(), (*cn).to_owned())),
                    _ => return None,
                };
                Some(ResourceId {
                    subscription: (*sub).to_owned(),
                    resource_group: (*rg).to_owned(),
                    provider_type: format!("{ns}/{ty}"),
                    name: (*name).to_owned(),
                    child,
                })
            }
            _ => None,
        }
    }

    /// Whether this is a resource of `kind` (top level).
    pub fn is(&self, kind: ResourceKind) -> bool {
        self.child.is_none()
            && self
                .provider_type
                .eq_ignore_ascii_case(kind.provider_type())
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/{}/{}",
            self.subscription, self.resource_group, self.provider_type, self.name
        )?;
        if let Some((t, n)) = &self.child {
            write!(f, "/{t}/{n}")?;
        }
        Ok(())
    }
}

/// The id of a storage account.
pub fn storage_account_id(subscription: &str, resource_group: &str, account: &str) -> String {
    format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Storage/storageAccounts/{account}"
    )
}

/// The id of a subnet.
pub fn subnet_id(subscription: &str, resource_group: &str, vnet: &str, subnet: &str) -> String {
    format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}"
    )
}

/// A managed disk imported from a page blob (or a blob snapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskImport {
    /// Resource group of the disk.
    pub resource_group: String,
    /// The disk's name.
    pub name: String,
    /// Region.
    pub location: String,
    /// The page blob's URL (a snapshot's URL ends in `?snapshot=...`).
    pub source_uri: String,
    /// The id of the storage account holding the blob.
    pub storage_account_id: String,
    /// The OS type, for the OS disk only.
    pub os_type: Option<Os>,
    /// The Hyper-V generation, for the OS disk only.
    pub generation: Option<HyperVGeneration>,
    /// The disk SKU (`Premium_LRS`, `StandardSSD_LRS`, ...).
    pub sku: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A static Standard public IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicIpSpec {
    /// Resource group.
    pub resource_group: String,
    /// The address resource's name.
    pub name: String,
    /// Region.
    pub location: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A network interface in an existing subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicSpec {
    /// Resource group.
    pub resource_group: String,
    /// The interface's name.
    pub name: String,
    /// Region.
    pub location: String,
    /// The subnet's id.
    pub subnet_id: String,
    /// A static private IP address; dynamic when `None`.
    pub private_ip: Option<String>,
    /// The public IP address resource to attach, if any.
    pub public_ip_id: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A VM that boots from an existing (imported) OS disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmCreate {
    /// Resource group.
    pub resource_group: String,
    /// The VM's name.
    pub name: String,
    /// Region.
    pub location: String,
    /// The size, such as `Standard_D2s_v3`.
    pub size: String,
    /// The guest OS.
    pub os_type: Os,
    /// The managed OS disk's id.
    pub os_disk_id: String,
    /// The managed data disks' ids, attached at LUN 0, 1, ...
    pub data_disk_ids: Vec<String>,
    /// The disk SKU, repeated on the disk references.
    pub disk_sku: String,
    /// The network interface's id.
    pub nic_id: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// What a create step made: the resource's id and its JSON as ARM returned it.
#[derive(Clone, Debug, PartialEq)]
pub struct Created {
    /// The resource id.
    pub id: String,
    /// The resource as ARM describes it after the operation finished.
    pub body: Value,
}

/// A VM as rha sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmResource {
    /// The resource id.
    pub id: String,
    /// The VM's name.
    pub name: String,
    /// Its resource group.
    pub resource_group: String,
    /// Its region.
    pub location: String,
    /// Its size.
    pub size: Option<String>,
    /// `Windows` or `Linux`, as the OS disk says.
    pub os_type: Option<String>,
    /// `PowerState/...` without the prefix (`running`, `deallocated`), when known.
    pub power_state: Option<String>,
    /// `Succeeded`, `Failed`, `Creating`, ...
    pub provisioning_state: Option<String>,
    /// The message of a failed provisioning status, if any.
    pub failure: Option<String>,
    /// The OS disk's id.
    pub os_disk_id: Option<String>,
    /// The data disks' ids.
    pub data_disk_ids: Vec<String>,
    /// The network interfaces' ids.
    pub nic_ids: Vec<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

impl VmResource {
    /// Parses ARM's JSON of a VM (with or without an instance view).
    pub fn from_json(v: &Value) -> VmResource {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let id = s("/id").unwrap_or_default();
        let resource_group = ResourceId::parse(&id)
            .map(|r| r.resource_group)
            .unwrap_or_default();
        let statuses = v
            .pointer("/properties/instanceView/statuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut power_state = None;
        let mut failure = None;
        for st in &statuses {
            let code = st.get("code").and_then(Value::as_str).unwrap_or("");
            if let Some(p) = code.strip_prefix("PowerState/") {
                power_state = Some(p.to_owned());
            } else if code.starts_with("ProvisioningState/failed") {
                let msg = st
                    .get("message")
                    .and_then(Value::as_str)
                    .or_else(|| st.get("displayStatus").and_then(Value::as_str))
                    .unwrap_or(code);
                failure = Some(msg.to_owned());
            }
        }
        let ids = |p: &str| -> Vec<String> {
            v.pointer(p)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|d| {
                            d.pointer("/managedDisk/id")
                                .or_else(|| d.get("id"))
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let tags = v
            .get("tags")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        VmResource {
            name: s("/name").unwrap_or_default(),
            id,
            resource_group,
            location: s("/location").unwrap_or_default(),
            size: s("/properties/hardwareProfile/vmSize"),
            os_type: s("/properties/storageProfile/osDisk/osType"),
            power_state,
            provisioning_state: s("/properties/provisioningState"),
            failure,
            os_disk_id: s("/properties/storageProfile/osDisk/managedDisk/id"),
            data_disk_ids: ids("/properties/storageProfile/dataDisks"),
            nic_ids: ids("/properties/networkProfile/networkInterfaces"),
            tags,
        }
    }
}

/// A power operation on a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    /// Start a stopped or deallocated VM.
    Start,
    /// Power off, keeping the VM allocated (still billed for compute).
    PowerOff,
    /// Stop and release the compute resources (no compute billing).
    Deallocate,
}

impl PowerAction {
    /// The action's name in the REST path.
    pub fn path(self) -> &'static str {
        match self {
            PowerAction::Start => "start",
            PowerAction::PowerOff => "powerOff",
            PowerAction::Deallocate => "deallocate",
        }
    }
}

/// What the storage service says about a replica blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobProbe {
    /// No such blob (404).
    Missing,
    /// The blob exists.
    Found {
        /// Its length in bytes.
        length: u64,
        /// `PageBlob`, `BlockBlob`, ... as `x-ms-blob-type` says.
        blob_type: String,
        /// The fixed-VHD footer's virtual size, `None` when the last 512
        /// bytes are not a valid fixed-VHD footer.
        vhd_size: Option<u64>,
    },
    /// The blob could not be checked (no data-plane permission, for example).
    Unchecked {
        /// Why, and what to do.
        reason: String,
    },
}

/// The Resource Manager operations a switchover needs.
///
/// Every create method sends the request and waits for the long-running
/// operation to end (`Azure-AsyncOperation`, `Location` or
/// `provisioningState`); deletes of a resource that does not exist succeed.
#[cfg_attr(test, mockall::automock)]
#[async_trait::async_trait]
pub trait AzureApi: Send + Sync {
    /// The subscription every call is made in.
    fn subscription_id(&self) -> &str;

    /// HTTP requests sent so far to Resource Manager (polls included).
    fn arm_calls(&self) -> u64;

    /// The VM, with its instance view (power state) when `instance_view`; `None` when it does not exist.
    async fn get_vm(
        &self,
        resource_group: &str,
        name: &str,
        instance_view: bool,
    ) -> Result<Option<VmResource>, ArmError>;

    /// Every VM of the subscription in `location`, with power states.
    async fn list_vms(&self, location: &str) -> Result<Vec<VmResource>, ArmError>;

    /// Whether the subnet exists (`None` when it does not), and its address prefix.
    async fn get_subnet(&self, subnet_id: &str) -> Result<Option<String>, ArmError>;

    /// Imports a page blob as a managed disk.
    async fn create_disk(&self, disk: &DiskImport) -> Result<Created, ArmError>;

    /// Creates a public IP address.
    async fn create_public_ip(&self, ip: &PublicIpSpec) -> Result<Created, ArmError>;

    /// Creates a network interface.
    async fn create_nic(&self, nic: &NicSpec) -> Result<Created, ArmError>;

    /// Creates (and so starts) a VM.
    async fn create_vm(&self, vm: &VmCreate) -> Result<Created, ArmError>;

    /// Starts, powers off or deallocates a VM.
    async fn power(
        &self,
        resource_group: &str,
        name: &str,
        action: PowerAction,
    ) -> Result<(), ArmError>;

    /// Deletes a resource; succeeds when it does not exist.
    async fn delete(
        &self,
        kind: ResourceKind,
        resource_group: &str,
        name: &str,
    ) -> Result<(), ArmError>;

    /// Checks a replica blob (exists, page blob, fixed-VHD footer).
    async fn probe_blob(&self, url: &str) -> Result<BlobProbe, ArmError>;
}

/// A Resource Manager operation that failed: what (`op`), on which resource, and why.
#[derive(Debug, thiserror::Error)]
#[error("{op} {resource}: {kind}")]
pub struct ArmError {
    /// The operation (`create managed disk`, `power off VM`, ...).
    pub op: String,
    /// The resource's name or id.
    pub resource: String,
    /// Why it failed (boxed: errors stay small on the happy path).
    pub kind: Box<ArmErrorKind>,
}

impl ArmError {
    /// An error of `op` on `resource`.
    pub fn new(op: impl Into<String>, resource: impl Into<String>, kind: ArmErrorKind) -> Self {
        ArmError {
            op: op.into(),
            resource: resource.into(),
            kind: Box::new(kind),
        }
    }

    /// True when ARM answered 404 or the resource does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            *self.kind,
            ArmErrorKind::NotFound | ArmErrorKind::Status { status: 404, .. }
        )
    }

    /// ARM's error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match &*self.kind {
            ArmErrorKind::Status { code, .. } | ArmErrorKind::Failed { code, .. } => {
                code.as_deref()
            }
            _ => None,
        }
    }
}

/// Why a Resource Manager operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArmErrorKind {
    /// ARM answered with an error status.
    Status {
        /// The HTTP status.
        status: u16,
        /// ARM's error code (`AuthorizationFailed`, `QuotaExceeded`, ...).
        code: Option<String>,
        /// ARM's message.
        message: Option<String>,
    },
    /// The resource does not exist.
    NotFound,
    /// The long-running operation ended `Failed` or `Canceled`.
    Failed {
        /// `Failed` or `Canceled`.
        status: String,
        /// The error code, if any.
        code: Option<String>,
        /// The error message, if any.
        message: Option<String>,
    },
    /// No token: Azure AD refused the account or could not be reached.
    Auth(AuthFailure),
    /// The request got no answer (connection refused, reset, DNS).
    Transport(String),
    /// The long-running operation did not end in time.
    Timeout {
        /// How long rha waited.
        after: Duration,
        /// The last status seen.
        last_status: String,
    },
    /// ARM answered something rha cannot use.
    Unexpected(String),
}

impl fmt::Display for ArmErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArmErrorKind::Status {
                status,
                code,
                message,
            } => {
                write!(f, "Resource Manager answered {status}")?;
                if let Some(c) = code {
                    write!(f, " {c}")?;
                }
                if let Some(m) = message.as_deref().and_then(|m| m.lines().next()) {
                    write!(f, " ({m})")?;
                }
                write!(f, ": {}", arm_hint(*status, code.as_deref().unwrap_or("")))
            }
            ArmErrorKind::NotFound => f.write_str("it does not exist"),
            ArmErrorKind::Failed {
                status,
                code,
                message,
            } => {
                write!(f, "the operation ended {status}")?;
                if let Some(c) = code {
                    write!(f, " with {c}")?;
                }
                if let Some(m) = message.as_deref().and_then(|m| m.lines().next()) {
                    write!(f, " ({m})")?;
                }
                write!(
                    f,
                    ": {}",
                    arm_hint(0, code.as_deref().unwrap_or("")).trim_start()
                )
            }
            ArmErrorKind::Auth(a) => write!(f, "{a}"),
            ArmErrorKind::Transport(d) => write!(
                f,
                "no answer from Resource Manager ({d}); check the network path (DNS, proxy, \
                 firewall) and retry"
            ),
            ArmErrorKind::Timeout { after, last_status } => write!(
                f,
                "the operation had not finished after {}s (last status `{last_status}`); look at \
                 the resource in the Azure portal (Activity log) and retry or clean up",
                after.as_secs()
            ),
            ArmErrorKind::Unexpected(d) => {
                write!(f, "unexpected answer from Resource Manager: {d}")
            }
        }
    }
}

fn arm_hint(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (_, "AuthorizationFailed") | (403, _) => {
            "the service principal lacks a role: grant it `Contributor` (or `Virtual Machine \
             Contributor` and `Network Contributor`) on the resource group, and `Reader` on the \
             storage account and the virtual network"
        }
        (401, _) | (_, "InvalidAuthenticationToken") | (_, "ExpiredAuthenticationToken") => {
            "the token was refused: check the account with `rha cloud account test NAME` and the \
             machine's clock"
        }
        (_, "SubscriptionNotFound") | (_, "InvalidSubscriptionId") => {
            "the subscription does not exist or the service principal cannot see it: check the \
             account's --subscription"
        }
        (_, "ResourceGroupNotFound") => {
            "the resource group does not exist: create it (`az group create`) or fix the \
             scenario's resource group"
        }
        (_, "QuotaExceeded") | (_, "OperationNotAllowed") => {
            "a subscription quota would be exceeded: raise the quota (Subscriptions > Usage + \
             quotas) or choose a smaller VM size"
        }
        (_, "SkuNotAvailable") | (_, "ZonalAllocationFailed") | (_, "AllocationFailed") => {
            "the VM size is not available in this region now: choose another size \
             (`az vm list-skus -l REGION`) or retry later"
        }
        (_, "InvalidSubnet") | (_, "SubnetNotFound") | (_, "InvalidResourceReference") => {
            "a network reference is wrong: check the scenario's virtual network and subnet"
        }
        (_, "PrivateIPAddressInUse") | (_, "PrivateIPAddressNotInSubnet") => {
            "the static private IP cannot be used: pick a free address inside the subnet, or \
             remove `private_ip` for a dynamic one"
        }
        (409, _) | (_, "Conflict") => {
            "another operation holds the resource, or it exists in another state: wait and retry"
        }
        (404, _) => "the resource or its parent does not exist",
        (429, _) => "Resource Manager throttled the requests: retry in a few minutes",
        (500..=599, _) => "Resource Manager failed: retry later",
        _ => "see the error code in the Azure Resource Manager documentation",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_round_trip() {
        let id =
            "/subscriptions/s1/resourceGroups/rg-1/providers/Microsoft.Compute/virtualMachines/vm1";
        let r = ResourceId::parse(id).expect("parses");
        assert_eq!(r.resource_group, "rg-1");
        assert_eq!(r.name, "vm1");
        assert!(r.is(ResourceKind::VirtualMachine));
        assert_eq!(r.to_string(), id);
        let lower = id.replace("resourceGroups", "resourcegroups");
        assert!(ResourceId::parse(&lower)
            .expect("parses")
            .is(ResourceKind::VirtualMachine));
        let sn = subnet_id("s", "rg", "v", "sn");
        let r = ResourceId::parse(&sn).expect("parses");
        assert_eq!(r.child, Some(("subnets".into(), "sn".into())));
        for bad in [
            "azure:rha-no-such-vm",
            "rha garbage id",
            "",
            "/subscriptions/s",
        ] {
            assert!(ResourceId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn vm_json_is_parsed() {
        let v = serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
            "name": "vm", "location": "westeurope",
            "tags": {"created-by": "rha"},
            "properties": {
                "provisioningState": "Succeeded",
                "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
                "storageProfile": {
                    "osDisk": {"osType": "Windows", "managedDisk": {"id": "d0"}},
                    "dataDisks": [{"lun": 0, "managedDisk": {"id": "d1"}}]
                },
                "networkProfile": {"networkInterfaces": [{"id": "n0"}]},
                "instanceView": {"statuses": [
                    {"code": "ProvisioningState/succeeded"},
                    {"code": "PowerState/deallocated"}
                ]}
            }
        });
        let vm = VmResource::from_json(&v);
        assert_eq!(vm.resource_group, "rg");
        assert_eq!(vm.power_state.as_deref(), Some("deallocated"));
        assert_eq!(vm.os_disk_id.as_deref(), Some("d0"));
        assert_eq!(vm.data_disk_ids, ["d1"]);
        assert_eq!(vm.nic_ids, ["n0"]);
        assert_eq!(vm.tags.get("created-by").map(String::as_str), Some("rha"));
    }
}
