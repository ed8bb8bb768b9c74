//! The engine's Azure replica target: what an appliance engine uses for a
//! scenario whose `[replica.azure]` names a storage account.
//!
//! ```text
//!  rha engine ─ Targets::with(AzureTargets(accounts file))
//!                 │ scenario [replica.azure] account = "prod"
//!                 ▼
//!  AzureReplicaTarget ── open ──► PageBlobSink   <container>/<scenario>/disk-N.vhd, replica.json, redo.log
//!        │                         bookmarks ──► blob snapshots (recovery points)
//!        └──── provider ─────────► AzureProvider over SdkArm (managed disks from the point's snapshots, NIC, VM)
//! ```
//!
//! The replica's blobs live under the prefix `<scenario name>/` of the
//! scenario's container, leased by the appliance engine (its name is the
//! lease owner). Blob requests use the account's service principal
//! (Azure AD tokens; it needs **Storage Blob Data Contributor** on the
//! storage account), switchover requests the same principal at Resource
//! Manager (**Contributor** on the resource group, or Virtual Machine
//! Contributor plus Network Contributor and disk rights). An account whose
//! `blob_endpoint` is an Azurite address uses Azurite's well-known
//! development account instead (tests).

use std::fmt;
use std::sync::{Arc, Mutex};

use rha_core::cloud::{CloudProvider, VmId};
use rha_core::scenario::{Replica, Scenario};
use rha_core::sink::ReplicaSink;
use rha_core::volume::Volume;
use rha_core::Seq;
use rha_transport::engine::target::{select_point, unknown_point};
use rha_transport::engine::{
    PointChoice, PointInfo, ReplicaDisks, ReplicaTarget, TargetContext, TargetError, TargetFactory,
};

use crate::account::{AccountError, AccountStore, AzureAccount};
use crate::arm::{
    ArmError, ArmErrorKind, ArmOptions, AzureApi, BlobProbe, Created, DiskImport, NicSpec,
    PowerAction, PublicIpSpec, ResourceKind, SdkArm, VmCreate, VmResource,
};
use crate::error::{AzureError, AzureErrorKind};
use crate::page_blob::PageBlobVolume;
use crate::points::{PointSelector, RecoveryPoint};
use crate::provider::{AzureProvider, AzureTarget};
use crate::sink::{PageBlobSink, SinkConfig};
use crate::store::{BlobStore, Endpoint, StoreConfig};

/// The account name of Azurite's well-known development storage account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";

/// The [`TargetFactory`] of Azure scenarios: accounts come from an
/// [`AccountStore`] (looked up when a scenario is opened, so accounts added
/// later are found).
pub struct AzureTargets {
    accounts: AccountStore,
    arm: ArmOptions,
}

impl fmt::Debug for AzureTargets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureTargets")
            .field("accounts", &self.accounts.path())
            .finish()
    }
}

impl AzureTargets {
    /// Azure scenarios with accounts from `accounts`.
    pub fn new(accounts: AccountStore) -> Self {
        AzureTargets {
            accounts,
            arm: ArmOptions::default(),
        }
    }

    /// Resource Manager options for the switchover (polling, retries).
    pub fn with_arm_options(mut self, arm: ArmOptions) -> Self {
        self.arm = arm;
        self
    }
}

impl TargetFactory for AzureTargets {
    fn kind(&self) -> &'static str {
        "azure"
    }

    fn serves(&self, scenario: &Scenario) -> bool {
        matches!(scenario.replica, Replica::Azure(_))
    }

    fn target(
        &self,
        scenario: &Scenario,
        ctx: &TargetContext,
    ) -> Result<Arc<dyn ReplicaTarget>, TargetError> {
        let Replica::Azure(r) = &scenario.replica else {
            return Err(config(scenario, "it does not replicate to Azure".into()));
        };
        let account = self.accounts.get(&r.account).map_err(|e| {
            config(
                scenario,
                format!(
                    "{e} (accounts file {} on the appliance engine: add it there with `rha \
                     cloud account add`, or start `rha engine` with --accounts)",
                    self.accounts.path().display()
                ),
            )
        })?;
        Ok(Arc::new(AzureReplicaTarget::new(
            scenario.clone(),
            account,
            &ctx.engine,
            self.arm.clone(),
        )?))
    }
}

fn config(s: &Scenario, reason: String) -> TargetError {
    TargetError::Config {
        scenario: s.name.clone(),
        reason,
    }
}

/// The blob-service endpoint of `storage_account` for `account`: Azure AD
/// tokens of its service principal, at its `blob_endpoint` override or the
/// public cloud; Azurite's development account when the override is an
/// Azurite address (`http://HOST:PORT/devstoreaccount1`).
pub fn blob_endpoint(
    account: &AzureAccount,
    storage_account: &str,
) -> Result<Endpoint, AccountError> {
    if let Some(url) = &account.blob_endpoint {
        let parsed = azure_core::Url::parse(url).map_err(|_| AccountError::Invalid {
            field: "blob-endpoint",
            reason: format!("`{url}` is not a URL"),
        })?;
        let first = parsed
            .path_segments()
            .and_then(|mut s| s.next())
            .unwrap_or("");
        if first == AZURITE_ACCOUNT {
            return Ok(Endpoint::Emulator {
                host: parsed.host_str().unwrap_or("127.0.0.1").to_owned(),
                port: parsed.port_or_known_default().unwrap_or(10000),
            });
        }
    }
    Ok(Endpoint::Token {
        account: storage_account.to_owned(),
        blob_endpoint: account.blob_endpoint.clone(),
        credential: account.credential()?,
    })
}

/// The blob store of an Azure scenario's container (no request is made).
pub fn scenario_store(account: &AzureAccount, scenario: &Scenario) -> Result<BlobStore, String> {
    let Replica::Azure(r) = &scenario.replica else {
        return Err(format!(
            "scenario `{}` does not replicate to Azure",
            scenario.name
        ));
    };
    let endpoint = blob_endpoint(account, &r.storage_account).map_err(|e| e.to_string())?;
    BlobStore::connect_lazily(StoreConfig::new(endpoint, r.container.clone()))
        .map_err(|e| e.to_string())
}

/// The blob-name prefix of a scenario's replica in its container.
pub fn scenario_prefix(scenario: &Scenario) -> String {
    format!("{}/", scenario.name)
}

/// One Azure scenario's replica: page blobs, points, the Azure provider.
pub struct AzureReplicaTarget {
    scenario: Scenario,
    account: AzureAccount,
    sink_config: SinkConfig,
    arm: ArmOptions,
    store: BlobStore,
    container_ready: Mutex<bool>,
}

impl fmt::Debug for AzureReplicaTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureReplicaTarget")
            .field("scenario", &self.scenario.name)
            .field("account", &self.account.name)
            .field("location", &self.location())
            .finish()
    }
}

impl AzureReplicaTarget {
    /// The target of `scenario` (an Azure one) with `account`, leased by `owner`.
    pub fn new(
        scenario: Scenario,
        account: AzureAccount,
        owner: &str,
        arm: ArmOptions,
    ) -> Result<Self, TargetError> {
        let store = scenario_store(&account, &scenario).map_err(|e| config(&scenario, e))?;
        Ok(AzureReplicaTarget {
            sink_config: SinkConfig::new(scenario_prefix(&scenario), owner),
            scenario,
            account,
            arm,
            store,
            container_ready: Mutex::new(false),
        })
    }

    fn storage(&self, e: AzureError) -> TargetError {
        TargetError::Storage {
            location: self.location(),
            reason: e.to_string(),
        }
    }
}

impl ReplicaTarget for AzureReplicaTarget {
    fn kind(&self) -> &'static str {
        "azure"
    }

    fn location(&self) -> String {
        format!(
            "{}/{}",
            self.store.container_url().trim_end_matches('/'),
            self.sink_config.prefix
        )
    }

    fn keeps_points(&self) -> bool {
        true
    }

    fn open(&self, create: Option<Vec<u64>>) -> Result<Arc<dyn ReplicaDisks>, TargetError> {
        let sink = match PageBlobSink::open(&self.store, &self.sink_config) {
            Ok(s) => s,
            Err(e) if matches!(e.kind, AzureErrorKind::NotFound) => {
                let Some(sizes) = create else {
                    return Err(TargetError::NoReplica {
                        location: self.location(),
                        reason: e.to_string(),
                    });
                };
                let mut ready = self
                    .container_ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if !*ready {
                    self.store.ensure_container().map_err(|e| self.storage(e))?;
                    *ready = true;
                }
                tracing::info!(location = %self.location(), volumes = sizes.len(), "creating the replica page blobs");
                PageBlobSink::create(&self.store, &self.sink_config, &sizes)
                    .map_err(|e| self.storage(e))?
            }
            Err(e) => return Err(self.storage(e)),
        };
        Ok(Arc::new(AzureDisks {
            sink,
            location: self.location(),
        }))
    }

    fn provider(&self) -> Result<Arc<dyn CloudProvider>, TargetError> {
        let api = SdkArm::new(&self.account, self.arm.clone())
            .map_err(|e| config(&self.scenario, e.to_string()))?;
        let target = AzureTarget::from_scenario(&self.scenario, &self.account.subscription_id)
            .map_err(|e| config(&self.scenario, e.to_string()))?;
        let api = StoreProbe {
            inner: Arc::new(api),
            store: self.store.clone(),
        };
        Ok(Arc::new(AzureProvider::new(Arc::new(api), target)))
    }

    fn replaced_vm(&self, _vm_name: &str) -> Option<VmId> {
        // An Azure VM may hold what was written since it was made: never replaced.
        None
    }
}

/// Resource Manager as `inner` has it, but replica blobs of `store`'s
/// container are checked through the store (its credentials, its retries;
/// Azurite's development account in tests) rather than with a bare token.
struct StoreProbe {
    inner: Arc<dyn AzureApi>,
    store: BlobStore,
}

impl StoreProbe {
    /// `(blob name, snapshot)` of a URL in the store's container.
    fn blob_of(&self, url: &str) -> Option<(String, Option<String>)> {
        let base = format!("{}/", self.store.container_url().trim_end_matches('/'));
        let rest = url.strip_prefix(&base)?;
        let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
        let snapshot = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("snapshot="))
            .map(str::to_owned);
        Some((name.to_owned(), snapshot))
    }
}

#[async_trait::async_trait]
impl AzureApi for StoreProbe {
    fn subscription_id(&self) -> &str {
        self.inner.subscription_id()
    }
    fn arm_calls(&self) -> u64 {
        self.inner.arm_calls()
    }
    async fn get_vm(
        &self,
        resource_group: &str,
        name: &str,
        instance_view: bool,
    ) -> Result<Option<VmResource>, ArmError> {
        self.inner.get_vm(resource_group, name, instance_view).await
    }
    async fn list_vms(&self, location: &str) -> Result<Vec<VmResource>, ArmError> {
        self.inner.list_vms(location).await
    }
    async fn get_subnet(&self, subnet_id: &str) -> Result<Option<String>, ArmError> {
        self.inner.get_subnet(subnet_id).await
    }
    async fn create_disk(&self, disk: &DiskImport) -> Result<Created, ArmError> {
        self.inner.create_disk(disk).await
    }
    async fn create_public_ip(&self, ip: &PublicIpSpec) -> Result<Created, ArmError> {
        self.inner.create_public_ip(ip).await
    }
    async fn create_nic(&self, nic: &NicSpec) -> Result<Created, ArmError> {
        self.inner.create_nic(nic).await
    }
    async fn create_vm(&self, vm: &VmCreate) -> Result<Created, ArmError> {
        self.inner.create_vm(vm).await
    }
    async fn power(
        &self,
        resource_group: &str,
        name: &str,
        action: PowerAction,
    ) -> Result<(), ArmError> {
        self.inner.power(resource_group, name, action).await
    }
    async fn delete(
        &self,
        kind: ResourceKind,
        resource_group: &str,
        name: &str,
    ) -> Result<(), ArmError> {
        self.inner.delete(kind, resource_group, name).await
    }
    async fn probe_blob(&self, url: &str) -> Result<BlobProbe, ArmError> {
        let Some((name, snapshot)) = self.blob_of(url) else {
            return self.inner.probe_blob(url).await;
        };
        let store = self.store.clone();
        let opened = tokio::task::spawn_blocking(move || match snapshot {
            Some(s) => PageBlobVolume::open_snapshot(&store, &name, &s),
            None => PageBlobVolume::open(&store, &name, None, false),
        })
        .await
        .map_err(|e| {
            ArmError::new(
                "check replica blob",
                url,
                ArmErrorKind::Unexpected(e.to_string()),
            )
        })?;
        match opened {
            Ok(v) => Ok(BlobProbe::Found {
                length: v.size() + 512,
                blob_type: "PageBlob".into(),
                vhd_size: Some(v.size()),
            }),
            Err(e) if matches!(e.kind, AzureErrorKind::NotFound) => Ok(BlobProbe::Missing),
            Err(e) => Err(ArmError::new(
                "check replica blob",
                url,
                ArmErrorKind::Unexpected(e.to_string()),
            )),
        }
    }
}

/// The open page-blob replica of an [`AzureReplicaTarget`].
struct AzureDisks {
    sink: PageBlobSink,
    location: String,
}

/// A page-blob recovery point as the engine reports it.
pub fn point_info(p: &RecoveryPoint) -> PointInfo {
    PointInfo {
        id: p.id.clone(),
        name: p.name.clone(),
        seq: p.seq,
        created_ms: p.created_ms,
        consistent: p.consistent,
        disks: p.disks.iter().map(|d| d.url.clone()).collect(),
    }
}

impl AzureDisks {
    fn storage(&self, e: AzureError) -> TargetError {
        TargetError::Storage {
            location: self.location.clone(),
            reason: e.to_string(),
        }
    }
}

impl ReplicaDisks for AzureDisks {
    fn sink(&self) -> &dyn ReplicaSink {
        &self.sink
    }

    fn locations(&self) -> Vec<String> {
        self.sink.disk_urls()
    }

    fn bookmark(&self, name: &str, seq: Seq) -> Result<Option<PointInfo>, TargetError> {
        self.sink
            .bookmark(name, seq)
            .map(|p| p.as_ref().map(point_info))
            .map_err(|e| self.storage(e))
    }

    fn points(&self) -> Result<Vec<PointInfo>, TargetError> {
        let points = self.sink.recovery_points().map_err(|e| self.storage(e))?;
        Ok(points.iter().map(point_info).collect())
    }

    fn resolve(&self, choice: &PointChoice) -> Result<PointInfo, TargetError> {
        if *choice == PointChoice::Latest {
            let st = self.sink.state();
            if !st.consistent {
                return Err(TargetError::NotConsistent(format!(
                    "the replica at {} is not consistent (a synchronisation is under way; \
                     applied {}): wait for it to end, choose an earlier recovery point, or pass \
                     --force to use the disks as they are",
                    self.location, st.applied
                )));
            }
            return self
                .sink
                .resolve_point(&PointSelector::Latest)
                .map(|p| point_info(&p))
                .map_err(|e| self.storage(e));
        }
        let points = self.points()?;
        select_point(&points, choice)
            .cloned()
            .ok_or_else(|| unknown_point(choice, &points))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::account::ClientSecret;

    fn account(blob: Option<&str>) -> AzureAccount {
        AzureAccount {
            name: "prod".into(),
            subscription_id: "00000000-0000-0000-0000-000000000001".into(),
            tenant_id: "00000000-0000-0000-0000-000000000002".into(),
            client_id: "00000000-0000-0000-0000-000000000003".into(),
            secret: ClientSecret::new("s3cr3t-value"),
            authority_host: None,
            arm_endpoint: None,
            blob_endpoint: blob.map(str::to_owned),
        }
    }

    #[test]
    fn endpoints_of_accounts() {
        let e = blob_endpoint(&account(None), "replicas01").unwrap();
        let dbg = format!("{e:?}");
        assert!(dbg.starts_with("Token(replicas01, None"), "{dbg}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        let e = blob_endpoint(
            &account(Some("https://replicas01.blob.core.usgovcloudapi.net")),
            "replicas01",
        )
        .unwrap();
        assert!(format!("{e:?}").contains("usgovcloudapi"), "{e:?}");
        let e = blob_endpoint(
            &account(Some("http://127.0.0.1:10123/devstoreaccount1")),
            "ignored",
        )
        .unwrap();
        assert_eq!(format!("{e:?}"), "Emulator(127.0.0.1:10123)");
        assert!(blob_endpoint(&account(Some("not a url")), "x").is_err());
    }

    #[test]
    fn probes_of_the_replica_container_go_through_the_store() {
        let store = BlobStore::connect_lazily(StoreConfig::new(
            Endpoint::Emulator {
                host: "127.0.0.1".into(),
                port: 10000,
            },
            "replicas",
        ))
        .unwrap();
        let base = store.container_url().trim_end_matches('/').to_owned();
        let api = crate::arm::MockAzureApi::new();
        let p = StoreProbe {
            inner: Arc::new(api),
            store,
        };
        assert_eq!(
            p.blob_of(&format!("{base}/web/disk-0.vhd")),
            Some(("web/disk-0.vhd".into(), None))
        );
        assert_eq!(
            p.blob_of(&format!(
                "{base}/web/disk-0.vhd?snapshot=2026-01-01T00:00:00.0000000Z"
            )),
            Some((
                "web/disk-0.vhd".into(),
                Some("2026-01-01T00:00:00.0000000Z".into())
            ))
        );
        assert_eq!(
            p.blob_of("https://other.blob.core.windows.net/c/disk.vhd"),
            None
        );
    }
}
