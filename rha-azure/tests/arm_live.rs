//! Opt-in tests against a real Azure subscription. They run only when
//! credentials are given in the environment, and print why they are skipped
//! otherwise:
//!
//! | variable | for |
//! | --- | --- |
//! | `RHA_AZURE_TEST_SUBSCRIPTION` | subscription id (every live test) |
//! | `RHA_AZURE_TEST_TENANT` | tenant id (every live test) |
//! | `RHA_AZURE_TEST_CLIENT_ID` | service principal's application id (every live test) |
//! | `RHA_AZURE_TEST_CLIENT_SECRET` | its client secret (every live test) |
//! | `RHA_AZURE_TEST_REGION` | region for the listing and the switchover (`westeurope`) |
//! | `RHA_AZURE_TEST_RESOURCE_GROUP` | existing resource group for the switchover VM |
//! | `RHA_AZURE_TEST_STORAGE_ACCOUNT` | storage account (in that resource group) holding the blob |
//! | `RHA_AZURE_TEST_BLOB_URL` | a fixed-VHD page blob to import as the OS disk |
//! | `RHA_AZURE_TEST_VNET`, `RHA_AZURE_TEST_SUBNET` | existing virtual network (in that resource group) and subnet |
//! | `RHA_AZURE_TEST_VM_SIZE` | optional, default `Standard_B1s` |
//! | `RHA_AZURE_TEST_OS` | optional, `linux` (default) or `windows` |
//!
//! The switchover test creates a managed disk, a NIC and a VM named
//! `rha-live-<time>`, and deletes all three again (the blob is only read).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rha_azure::account::{test_account, AzureAccount, ClientSecret};
use rha_azure::arm::{storage_account_id, ArmOptions, SdkArm};
use rha_azure::provider::{list_region_vms, utc_stamp, AzureProvider, AzureTarget};
use rha_core::cloud::{CloudError, CloudProvider, DiskRef, VmSpec};
use rha_core::scenario::{HyperVGeneration, Network, Os};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn account(test: &str) -> Option<AzureAccount> {
    let names = [
        "RHA_AZURE_TEST_SUBSCRIPTION",
        "RHA_AZURE_TEST_TENANT",
        "RHA_AZURE_TEST_CLIENT_ID",
        "RHA_AZURE_TEST_CLIENT_SECRET",
    ];
    let vals: Vec<Option<String>> = names.iter().map(|n| var(n)).collect();
    if vals.iter().any(Option::is_none) {
        println!(
            "skipping {test}: set {} to run it against a real Azure subscription",
            names.join(", ")
        );
        return None;
    }
    let v: Vec<String> = vals.into_iter().flatten().collect();
    Some(AzureAccount {
        name: "live-test".into(),
        subscription_id: v[0].clone(),
        tenant_id: v[1].clone(),
        client_id: v[2].clone(),
        secret: ClientSecret::new(v[3].clone()),
        authority_host: None,
        arm_endpoint: None,
        blob_endpoint: None,
    })
}

#[tokio::test]
async fn live_account_gets_a_token() {
    let Some(a) = account("live_account_gets_a_token") else {
        return;
    };
    let check = test_account(&a)
        .await
        .expect("the service principal gets a token");
    assert_eq!(check.scope, "https://management.azure.com/.default");
}

#[tokio::test]
async fn live_region_listing() {
    let Some(a) = account("live_region_listing") else {
        return;
    };
    let Some(region) = var("RHA_AZURE_TEST_REGION") else {
        println!("skipping live_region_listing: set RHA_AZURE_TEST_REGION");
        return;
    };
    let api = SdkArm::new(&a, ArmOptions::default()).unwrap();
    let vms = list_region_vms(&api, &region).await.expect("list VMs");
    println!("{} VMs in {region}", vms.len());
}

#[tokio::test]
async fn live_switchover_and_cleanup() {
    let Some(a) = account("live_switchover_and_cleanup") else {
        return;
    };
    let need = [
        "RHA_AZURE_TEST_REGION",
        "RHA_AZURE_TEST_RESOURCE_GROUP",
        "RHA_AZURE_TEST_STORAGE_ACCOUNT",
        "RHA_AZURE_TEST_BLOB_URL",
        "RHA_AZURE_TEST_VNET",
        "RHA_AZURE_TEST_SUBNET",
    ];
    let vals: Vec<Option<String>> = need.iter().map(|n| var(n)).collect();
    if vals.iter().any(Option::is_none) {
        println!(
            "skipping live_switchover_and_cleanup: set {} too (it creates and deletes a VM)",
            need.join(", ")
        );
        return;
    }
    let v: Vec<String> = vals.into_iter().flatten().collect();
    let os = match var("RHA_AZURE_TEST_OS").as_deref() {
        Some("windows") => Os::Windows,
        _ => Os::Linux,
    };
    let api = Arc::new(SdkArm::new(&a, ArmOptions::default()).unwrap());
    let provider = AzureProvider::new(
        api,
        AzureTarget {
            location: v[0].clone(),
            resource_group: v[1].clone(),
            storage_account_id: storage_account_id(&a.subscription_id, &v[1], &v[2]),
            disk_sku: "StandardSSD_LRS".into(),
            scenario: Some("rha-live-test".into()),
        },
    )
    .delete_disks_with_vm(true);
    let stamp = utc_stamp(std::time::SystemTime::now());
    let spec = VmSpec {
        name: format!("rha-live-{}", &stamp[4..12]),
        cpus: 1,
        memory_mb: 1024,
        size: Some(var("RHA_AZURE_TEST_VM_SIZE").unwrap_or_else(|| "Standard_B1s".into())),
        generation: HyperVGeneration::V1,
        os,
        disks: vec![DiskRef {
            name: "/".into(),
            location: v[3].clone(),
            size: 0,
            system: true,
        }],
        network: Network {
            virtual_network: Some(v[4].clone()),
            subnet: Some(v[5].clone()),
            private_ip: None,
            public_ip: false,
        },
        recovery_point: Some("live test".into()),
    };
    let report = provider.switchover(&spec).await.expect("switchover");
    println!(
        "VM {} {}: {} ARM calls, {} ms",
        report.vm_id, report.state, report.arm_calls, report.millis
    );
    let id = rha_core::cloud::VmId(report.vm_id.clone());
    provider.stop_vm(&id).await.expect("stop");
    provider.delete_vm(&id).await.expect("delete");
    assert!(matches!(
        provider.vm_state(&id).await,
        Err(CloudError::NotFound { .. })
    ));
}
