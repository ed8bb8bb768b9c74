//! Scenario validation for Azure targets: what `rha scenario validate`
//! says about network references, VM sizes and Is Alive checks the Azure
//! appliance cannot run, and the target a scenario gives the provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rha_azure::provider::{AzureTarget, DEFAULT_DISK_SKU};
use rha_core::cloud::{DiskRef, VmSpec};
use rha_core::scenario::{Check, Product, Scenario, Severity, SwitchoverMode};

fn sample() -> Scenario {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/scenarios/azure-ha.toml"
    );
    Scenario::load(path).expect("the Azure sample loads")
}

fn finding(s: &Scenario, path: &str) -> Option<(Severity, String)> {
    s.validate()
        .find(path)
        .map(|f| (f.severity, f.message.clone()))
}

#[test]
fn the_sample_is_clean() {
    let v = sample().validate();
    assert!(v.is_clean(), "{v}");
}

#[test]
fn network_references_are_checked() {
    let mut s = sample();
    s.network.virtual_network = Some("-bad name".into());
    let (sev, msg) = finding(&s, "network.virtual_network").expect("an error");
    assert_eq!(sev, Severity::Error);
    assert!(msg.contains("not a valid virtual network name"), "{msg}");

    s.network.virtual_network = Some(
        "/subscriptions/s/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/hub"
            .into(),
    );
    assert!(finding(&s, "network.virtual_network").is_none());
    s.network.virtual_network = Some("/subscriptions/s/resourceGroups/rg".into());
    assert!(finding(&s, "network.virtual_network").is_some());

    s = sample();
    s.network.subnet = Some("snet.".into());
    let (_, msg) = finding(&s, "network.subnet").expect("an error");
    assert!(msg.contains("not a valid subnet name"), "{msg}");

    s = sample();
    s.network.private_ip = Some("fd00::10".into());
    let (_, msg) = finding(&s, "network.private_ip").expect("an error");
    assert!(msg.contains("IPv6"), "{msg}");
}

#[test]
fn premium_disks_need_a_premium_size_and_gen2_not_a_series() {
    let mut s = sample(); // Premium_LRS on Standard_D2s_v3: fine
    s.vm.size = Some("Standard_D2_v3".into());
    let (sev, msg) = finding(&s, "vm.storage_account_type").expect("a warning");
    assert_eq!(sev, Severity::Warning);
    assert!(msg.contains("Premium_LRS"), "{msg}");
    s.vm.size = Some("Standard_DS2_v2".into());
    assert!(finding(&s, "vm.storage_account_type").is_none());
    s.vm.size = Some("Standard_A2_v2".into());
    let (_, msg) = finding(&s, "vm.generation").expect("a warning");
    assert!(msg.contains("generation 2"), "{msg}");
}

#[test]
fn automatic_switchover_is_refused_for_azure() {
    let mut s = sample();
    s.switchover.mode = SwitchoverMode::Automatic;
    let (sev, msg) = finding(&s, "switchover.mode").expect("an error");
    assert_eq!(sev, Severity::Error);
    assert!(msg.contains("manual"), "{msg}");
}

#[test]
fn is_alive_checks_the_azure_appliance_cannot_run_are_flagged() {
    let mut s = sample();
    s.is_alive.checks.push(Check::Tcp {
        host: "10.0.0.5".into(),
        port: 1433,
    });
    let (sev, msg) = finding(&s, "is_alive.checks[1]").expect("a warning");
    assert_eq!(sev, Severity::Warning);
    assert!(msg.contains("VPN or ExpressRoute"), "{msg}");
    // A public name is reachable from Azure.
    s.is_alive.checks[1] = Check::Tcp {
        host: "sql01.example.com".into(),
        port: 1433,
    };
    assert!(finding(&s, "is_alive.checks[1]").is_none());
    // Behind NAT every non-heartbeat check is flagged (the existing rule).
    s.master.nat = true;
    let (_, msg) = finding(&s, "is_alive.checks[1]").expect("a warning");
    assert!(msg.contains("NAT"), "{msg}");
    // A migration (replication only) says to turn Is Alive off.
    let mut s = sample();
    s.product = Product::Replication;
    let (_, msg) = finding(&s, "is_alive.enabled").expect("a warning");
    assert!(msg.contains("enabled = false"), "{msg}");
}

#[test]
fn the_target_comes_from_the_scenario() {
    let mut s = sample();
    let sub = "11111111-2222-3333-4444-555555555555";
    let t = AzureTarget::from_scenario(&s, sub).unwrap();
    assert_eq!(t.location, "westeurope");
    assert_eq!(t.resource_group, "rg-rha-dr");
    assert_eq!(t.disk_sku, "Premium_LRS");
    assert_eq!(
        t.storage_account_id,
        format!("/subscriptions/{sub}/resourceGroups/rg-rha-dr/providers/Microsoft.Storage/storageAccounts/rhareplicas01")
    );
    s.vm.storage_account_type = None;
    s.vm.resource_group = Some("rg-vms".into());
    let t = AzureTarget::from_scenario(&s, sub).unwrap();
    assert_eq!(t.disk_sku, DEFAULT_DISK_SKU);
    assert_eq!(t.resource_group, "rg-vms");
    let spec = VmSpec::from_scenario(
        &s,
        vec![DiskRef {
            name: "C:".into(),
            location: "https://rhareplicas01.blob.core.windows.net/sql01/disk-0.vhd".into(),
            size: 1 << 30,
            system: false,
        }],
    );
    assert!(spec.disks[0].system);
    assert_eq!(spec.size.as_deref(), Some("Standard_D2s_v3"));
}
