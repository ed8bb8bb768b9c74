//! The Azure switchover through the real SDK adapter (`SdkArm`:
//! azure_mgmt_compute / azure_mgmt_network 0.21 with rha's own polling)
//! against the local Resource Manager of `rha_azure::arm::fake`: the
//! request bodies sent (disk Import, public IP, NIC, VM), the long-running
//! operations polled to their end, cleanup when a step fails (or not, when
//! asked to keep), power and delete, listings, and the shared
//! `CloudProvider` conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rha_azure::arm::fake::{Failure, FakeAzure, FakeConfig};
use rha_azure::arm::{
    storage_account_id, subnet_id, ArmOptions, AzureApi, PollPolicy, SdkArm, TAG_ROLE,
};
use rha_azure::provider::{AzureProvider, AzureTarget, Step};
use rha_core::cloud::{CloudError, CloudProvider, DiskRef, VmId, VmSpec, VmState};
use rha_core::conformance::cloud::run_cloud_suite;
use rha_core::scenario::{HyperVGeneration, Network, Os};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
const RG: &str = "rg-dr";
const REGION: &str = "westeurope";

struct World {
    fake: FakeAzure,
    api: Arc<SdkArm>,
    os_blob: String,
    data_blob: String,
}

fn options() -> ArmOptions {
    ArmOptions {
        poll: PollPolicy {
            default_interval: std::time::Duration::from_millis(1),
            max_interval: std::time::Duration::from_millis(10),
            timeout: std::time::Duration::from_secs(30),
        },
        retry: false,
        ..ArmOptions::default()
    }
}

async fn world() -> World {
    let fake = FakeAzure::start(FakeConfig::default()).await.unwrap();
    fake.add_subnet(RG, "vnet-dr", "snet-servers", "10.20.1.0/24");
    let os_blob = fake.add_blob("rhareplicas", "web01", "disk-0.vhd", 64 * MIB);
    let data_blob = fake.add_blob("rhareplicas", "web01", "disk-1.vhd", 32 * MIB);
    let api = Arc::new(SdkArm::new(&fake.account("test"), options()).unwrap());
    World {
        fake,
        api,
        os_blob,
        data_blob,
    }
}

impl World {
    fn sub(&self) -> String {
        self.fake.config().subscription.clone()
    }

    fn target(&self) -> AzureTarget {
        AzureTarget {
            location: REGION.into(),
            resource_group: RG.into(),
            storage_account_id: storage_account_id(&self.sub(), RG, "rhareplicas"),
            disk_sku: "Premium_LRS".into(),
            scenario: Some("web01-ha".into()),
        }
    }

    fn provider(&self) -> AzureProvider {
        AzureProvider::new(self.api.clone(), self.target())
    }

    fn spec(&self, name: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            cpus: 2,
            memory_mb: 4096,
            size: Some("Standard_D2s_v3".into()),
            generation: HyperVGeneration::V2,
            os: Os::Windows,
            disks: vec![
                DiskRef {
                    name: "C:".into(),
                    location: self.os_blob.clone(),
                    size: 64 * MIB,
                    system: true,
                },
                DiskRef {
                    name: "D:".into(),
                    location: self.data_blob.clone(),
                    size: 32 * MIB,
                    system: false,
                },
            ],
            network: Network {
                virtual_network: Some("vnet-dr".into()),
                subnet: Some("snet-servers".into()),
                private_ip: Some("10.20.1.10".into()),
                public_ip: false,
            },
            recovery_point: Some("seq 1234 at 2026-01-02T03:04:05Z".into()),
        }
    }

    /// The JSON bodies of the PUTs whose path contains `what`.
    fn puts(&self, what: &str) -> Vec<Value> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT" && r.path.contains(what))
            .filter_map(|r| r.body)
            .collect()
    }

    fn count(&self, method: &str, what: &str) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(what))
            .count()
    }
}

#[tokio::test]
async fn switchover_sends_the_documented_bodies_and_reports_the_ids() {
    let w = world().await;
    w.fake.set_pending_polls(2);
    let report = w.provider().switchover(&w.spec("sql01-dr")).await.unwrap();
    assert_eq!(report.state, VmState::Running);
    let sub = w.sub();
    assert_eq!(
        report.vm_id,
        format!("/subscriptions/{sub}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/sql01-dr")
    );
    assert_eq!(report.data_disk_ids.len(), 1);
    assert_eq!(report.private_ip.as_deref(), Some("10.20.1.10"));
    assert!(report.public_ip_id.is_none());
    assert_eq!(report.steps.len(), 4, "{:?}", report.steps);
    assert!(matches!(report.steps[3].step, Step::CreateVm { .. }));

    // Disk Import bodies: the OS disk carries osType and hyperVGeneration.
    let disks = w.puts("/providers/Microsoft.Compute/disks/");
    assert_eq!(disks.len(), 2);
    let os = disks
        .iter()
        .find(|d| d["properties"]["creationData"]["sourceUri"] == w.os_blob.as_str())
        .expect("the OS disk import");
    let cd = &os["properties"]["creationData"];
    assert_eq!(cd["createOption"], "Import");
    assert_eq!(
        cd["storageAccountId"],
        storage_account_id(&sub, RG, "rhareplicas").as_str()
    );
    assert_eq!(os["properties"]["osType"], "Windows");
    assert_eq!(os["properties"]["hyperVGeneration"], "V2");
    assert_eq!(os["sku"]["name"], "Premium_LRS");
    assert_eq!(os["location"], REGION);
    assert_eq!(os["tags"]["created-by"], "rha");
    assert_eq!(os["tags"]["rha-scenario"], "web01-ha");
    let data = disks
        .iter()
        .find(|d| d["properties"]["creationData"]["sourceUri"] == w.data_blob.as_str())
        .expect("the data disk import");
    assert!(data["properties"].get("osType").is_none(), "{data}");
    assert!(
        data["properties"].get("hyperVGeneration").is_none(),
        "{data}"
    );

    // NIC body: the scenario's subnet and static private IP.
    let nics = w.puts("/networkInterfaces/");
    assert_eq!(nics.len(), 1);
    let ip = &nics[0]["properties"]["ipConfigurations"][0]["properties"];
    assert_eq!(
        ip["subnet"]["id"],
        subnet_id(&sub, RG, "vnet-dr", "snet-servers").as_str()
    );
    assert_eq!(ip["privateIPAllocationMethod"], "Static");
    assert_eq!(ip["privateIPAddress"], "10.20.1.10");
    assert!(ip.get("publicIPAddress").is_none());

    // VM body: name, size, the imported OS disk attached, the data disk at LUN 0, the NIC.
    let vms = w.puts("/virtualMachines/sql01-dr");
    assert_eq!(
        vms.len(),
        1,
        "the VM PUT is sent once, never re-sent by polling"
    );
    let p = &vms[0]["properties"];
    assert_eq!(p["hardwareProfile"]["vmSize"], "Standard_D2s_v3");
    let osd = &p["storageProfile"]["osDisk"];
    assert_eq!(osd["createOption"], "Attach");
    assert_eq!(osd["osType"], "Windows");
    assert_eq!(osd["managedDisk"]["id"], report.os_disk_id.as_str());
    let dd = &p["storageProfile"]["dataDisks"][0];
    assert_eq!(dd["lun"], 0);
    assert_eq!(dd["managedDisk"]["id"], report.data_disk_ids[0].as_str());
    assert_eq!(
        p["networkProfile"]["networkInterfaces"][0]["id"],
        report.nic_id.as_str()
    );
    assert!(
        p.get("osProfile").is_none(),
        "an attached OS disk takes no osProfile"
    );
    assert_eq!(
        vms[0]["tags"]["rha-recovery-point"],
        "seq 1234 at 2026-01-02T03:04:05Z"
    );

    // Every request carried an api-version; operations were polled.
    for r in w.fake.requests() {
        if !r.path.starts_with("/operations")
            && !r.path.starts_with("/blob")
            && !r.path.contains("oauth2")
        {
            assert!(r.query.contains("api-version="), "{r:?}");
        }
    }
    assert!(
        w.count("GET", "/operations/") >= 4 * 3,
        "each operation polled through InProgress"
    );
    let arm_requests = w
        .fake
        .requests()
        .iter()
        .filter(|r| !r.path.starts_with("/blob") && !r.path.contains("/oauth2/"))
        .count();
    assert_eq!(
        report.arm_calls as usize, arm_requests,
        "every ARM request is counted"
    );
}

#[tokio::test]
async fn a_public_ip_is_created_attached_and_deleted_with_the_vm() {
    let w = world().await;
    let mut spec = w.spec("web01-dr");
    spec.network.public_ip = true;
    spec.network.private_ip = None;
    let p = w.provider();
    let info = p.create_vm(&spec).await.unwrap();
    assert!(
        info.details["public_ip"].starts_with("203.0.113."),
        "{:?}",
        info.details
    );
    let pips = w.puts("/publicIPAddresses/");
    assert_eq!(pips[0]["sku"]["name"], "Standard");
    assert_eq!(pips[0]["properties"]["publicIPAllocationMethod"], "Static");
    let nic = &w.puts("/networkInterfaces/")[0];
    let ip = &nic["properties"]["ipConfigurations"][0]["properties"];
    assert_eq!(ip["privateIPAllocationMethod"], "Dynamic");
    assert_eq!(
        ip["publicIPAddress"]["id"],
        info.details["public_ip_resource"].as_str()
    );

    p.delete_vm(&info.id).await.unwrap();
    assert!(w
        .fake
        .ids_of("Microsoft.Network/publicIPAddresses")
        .is_empty());
    assert!(w
        .fake
        .ids_of("Microsoft.Network/networkInterfaces")
        .is_empty());
    assert_eq!(
        w.fake.ids_of("Microsoft.Compute/disks").len(),
        2,
        "managed disks are kept"
    );
    assert_eq!(
        w.count("DELETE", "/blob"),
        0,
        "replica blobs are never deleted"
    );
}

#[tokio::test]
async fn a_failed_nic_removes_the_disks_it_imported() {
    let w = world().await;
    w.fake.fail(Failure::now(
        "PUT",
        "/networkInterfaces/",
        400,
        "PrivateIPAddressInUse",
        "IP configuration ipconfig1 is using the private IP address 10.20.1.10 which is already allocated.",
    ));
    let e = w
        .provider()
        .switchover(&w.spec("sql01-dr"))
        .await
        .unwrap_err();
    assert!(matches!(e.step, Step::CreateNic { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("failed while creating network interface `sql01-dr-nic-"),
        "{msg}"
    );
    assert!(msg.contains("PrivateIPAddressInUse"), "{msg}");
    assert!(msg.contains("pick a free address"), "{msg}");
    assert!(
        msg.contains("Removed what this attempt created (2 resource(s))"),
        "{msg}"
    );
    assert!(msg.contains("replica page blobs are untouched"), "{msg}");
    assert!(
        w.fake.ids_of("Microsoft.Compute/disks").is_empty(),
        "the imported disks are deleted"
    );
    assert_eq!(w.count("DELETE", "/disks/"), 2);
    assert_eq!(w.count("PUT", "/virtualMachines/"), 0);
}

#[tokio::test]
async fn keep_on_failure_leaves_the_disks() {
    let w = world().await;
    w.fake.fail(Failure::now(
        "PUT",
        "/networkInterfaces/",
        400,
        "InvalidResourceReference",
        "bad",
    ));
    let e = w
        .provider()
        .keep_on_failure(true)
        .switchover(&w.spec("sql01-dr"))
        .await
        .unwrap_err();
    assert_eq!(e.kept.len(), 2, "{e}");
    assert!(
        e.to_string()
            .contains("Kept what this attempt created, as asked"),
        "{e}"
    );
    assert_eq!(w.fake.ids_of("Microsoft.Compute/disks").len(), 2);
    assert_eq!(w.count("DELETE", ""), 0);
}

#[tokio::test]
async fn a_vm_whose_provisioning_fails_is_removed_with_everything_else() {
    let w = world().await;
    let mut spec = w.spec("sql01-dr");
    spec.network.public_ip = true;
    w.fake.fail(Failure::in_operation(
        "PUT",
        "/virtualMachines/",
        "OSProvisioningTimedOut",
        "OS Provisioning for VM 'sql01-dr' did not finish in the allotted time.",
    ));
    let e = w.provider().switchover(&spec).await.unwrap_err();
    assert!(matches!(e.step, Step::CreateVm { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("ended Failed with OSProvisioningTimedOut"),
        "{msg}"
    );
    // VM, NIC, public IP and two disks, newest first (the fake refuses to
    // delete a disk or NIC still attached, so the order matters).
    assert_eq!(e.cleaned.len(), 5, "{e}");
    assert!(e.cleaned.iter().all(|c| c.error.is_none()), "{e}");
    for t in [
        "Microsoft.Compute/virtualMachines",
        "Microsoft.Network/networkInterfaces",
        "Microsoft.Network/publicIPAddresses",
        "Microsoft.Compute/disks",
    ] {
        assert!(w.fake.ids_of(t).is_empty(), "{t} left behind");
    }
}

#[tokio::test]
async fn a_disk_import_failure_names_the_volume() {
    let w = world().await;
    w.fake.fail(Failure::now(
        "PUT",
        "/disks/sql01-dr-disk0-",
        409,
        "OperationNotAllowed",
        "Quota exceeded for resource type disks",
    ));
    let e = w
        .provider()
        .switchover(&w.spec("sql01-dr"))
        .await
        .unwrap_err();
    match &e.step {
        Step::ImportDisk { volume, .. } => assert_eq!(volume, "D:"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("raise the quota"), "{e}");
    assert!(w.fake.ids_of("Microsoft.Compute/disks").is_empty(), "{e}");
}

#[tokio::test]
async fn verify_checks_blobs_and_network_and_creates_nothing() {
    let w = world().await;
    let p = w.provider();
    assert!(p.verify(&w.spec("sql01-dr")).await.unwrap().is_empty());
    let mut s = w.spec("sql01-dr");
    s.network.subnet = Some("snet-missing".into());
    let e = p.verify(&s).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let mut s = w.spec("sql01-dr");
    s.network.private_ip = Some("10.99.0.5".into());
    assert!(p
        .verify(&s)
        .await
        .unwrap_err()
        .to_string()
        .contains("not in the subnet's range"));
    let mut s = w.spec("sql01-dr");
    s.name = "a-name-too-long-for-windows".into();
    assert!(matches!(p.verify(&s).await, Err(CloudError::Invalid(_))));
    assert_eq!(w.count("PUT", ""), 0);
}

#[tokio::test]
async fn power_and_delete() {
    let w = world().await;
    let p = w.provider();
    let info = p.create_vm(&w.spec("sql01-dr")).await.unwrap();
    assert_eq!(p.vm_state(&info.id).await.unwrap(), VmState::Running);
    p.stop_vm(&info.id).await.unwrap();
    assert_eq!(
        w.count("POST", "/deallocate"),
        1,
        "stop deallocates by default"
    );
    assert_eq!(p.vm_state(&info.id).await.unwrap(), VmState::Stopped);
    p.start_vm(&info.id).await.unwrap();
    assert_eq!(p.vm_state(&info.id).await.unwrap(), VmState::Running);
    let off = w
        .provider()
        .stop_action(rha_azure::arm::PowerAction::PowerOff);
    off.stop_vm(&info.id).await.unwrap();
    assert_eq!(w.count("POST", "/powerOff"), 1);
    assert_eq!(p.vm_state(&info.id).await.unwrap(), VmState::Stopped);

    let with_disks = w.provider().delete_disks_with_vm(true);
    with_disks.delete_vm(&info.id).await.unwrap();
    assert!(w.fake.ids_of("Microsoft.Compute/disks").is_empty());
    assert_eq!(
        w.count("DELETE", "/blob"),
        0,
        "replica blobs are never deleted"
    );
    match p.vm_state(&info.id).await {
        Err(CloudError::NotFound { .. }) => {}
        other => panic!("{other:?}"),
    }
    match p.start_vm(&VmId(info.id.0.clone())).await {
        Err(CloudError::NotFound { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn appliances_of_a_region_come_first() {
    let w = world().await;
    w.fake.add_vm(
        "rg-appl",
        "zz-appliance",
        REGION,
        &[(TAG_ROLE, "appliance")],
        "running",
    );
    w.fake
        .add_vm("rg-apps", "aa-web", REGION, &[], "deallocated");
    w.fake
        .add_vm("rg-apps", "elsewhere", "northeurope", &[], "running");
    let vms = rha_azure::provider::list_region_vms(w.api.as_ref(), REGION)
        .await
        .unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["zz-appliance", "aa-web"]);
    assert_eq!(vms[0].power_state.as_deref(), Some("running"));
    assert_eq!(vms[1].power_state.as_deref(), Some("deallocated"));
    assert_eq!(vms[0].resource_group, "rg-appl");
}

#[tokio::test]
async fn a_refused_token_says_what_to_do() {
    let w = world().await;
    let mut a = w.fake.account("test");
    a.secret = rha_azure::ClientSecret::new("wrong-wrong-wrong");
    let api = Arc::new(SdkArm::new(&a, options()).unwrap());
    let p = AzureProvider::new(api.clone(), w.target());
    let e = p
        .create_vm(&w.spec("sql01-dr"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AADSTS7000215"), "{e}");
    assert!(!e.contains("wrong-wrong-wrong"), "{e}");
    assert_eq!(api.subscription_id(), w.sub());
}

#[tokio::test]
async fn the_cloud_conformance_suite_passes() {
    let w = world().await;
    let p = w.provider();
    // The suite's VM name is longer than a Windows name may be.
    let spec = |name: &str| VmSpec {
        os: Os::Linux,
        ..w.spec(name)
    };
    run_cloud_suite(&p, &spec, true).await;
    assert_eq!(
        w.fake.ids_of("Microsoft.Compute/virtualMachines").len(),
        0,
        "the suite leaves no VM behind"
    );
}
