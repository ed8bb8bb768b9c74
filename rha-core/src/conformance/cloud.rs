//! The [`CloudProvider`] conformance suite: the contract written on the
//! trait, checked against a real provider (the local one) or a fake of a
//! cloud's API (Azure).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::cloud::{CloudError, CloudProvider, VmId, VmSpec, VmState};

/// The VM names the suite creates (and deletes again).
pub const SUITE_VM_NAME: &str = "rha-conformance-vm";

/// Runs every check of the [`CloudProvider`] contract against `provider`.
///
/// `make_spec(name)` returns a valid VM definition of that name whose disks
/// exist. `expect_running` is true when the provider can run VMs here, so a
/// created VM must be [`VmState::Running`]; false when it documents that it
/// cannot (the local provider without QEMU), so it must be
/// [`VmState::Stopped`].
///
/// The suite creates, stops and deletes VMs named [`SUITE_VM_NAME`]; it leaves
/// none behind when it passes. Disk locations that are not URLs (no `://`)
/// are checked to be files that survive deleting the VM.
///
/// # Panics
/// With a message naming the broken rule.
pub async fn run_cloud_suite(
    provider: &dyn CloudProvider,
    make_spec: &dyn Fn(&str) -> VmSpec,
    expect_running: bool,
) {
    let kind = provider.kind();
    assert!(!kind.is_empty(), "kind() must name the provider");
    let name = SUITE_VM_NAME;
    let spec = make_spec(name);
    assert_eq!(spec.name, name, "make_spec must use the name it is given");

    // verify: a good spec passes, broken ones fail, nothing is created.
    provider
        .verify(&spec)
        .await
        .unwrap_or_else(|e| panic!("verify must accept a valid spec: {e}"));

    let mut missing = spec.clone();
    missing.disks[0].location = format!("{}.rha-missing", missing.disks[0].location);
    assert!(
        provider.verify(&missing).await.is_err(),
        "verify must reject a spec whose disk does not exist"
    );
    let mut no_system = spec.clone();
    for d in &mut no_system.disks {
        d.system = false;
    }
    assert!(
        provider.verify(&no_system).await.is_err(),
        "verify must reject a spec without a system disk"
    );
    let mut no_cpus = spec.clone();
    no_cpus.cpus = 0;
    assert!(
        provider.verify(&no_cpus).await.is_err(),
        "verify must reject a spec with 0 CPUs"
    );
    assert!(
        provider.create_vm(&missing).await.is_err(),
        "create_vm must reject a spec whose disk does not exist"
    );

    // Unknown ids.
    let unknown = VmId(format!("{kind}:rha-no-such-vm"));
    assert_not_found(
        provider.vm_state(&unknown).await,
        "vm_state of an unknown id",
    );
    assert_not_found(provider.stop_vm(&unknown).await, "stop_vm of an unknown id");
    assert_not_found(
        provider.delete_vm(&unknown).await,
        "delete_vm of an unknown id",
    );
    assert_not_found(
        provider.vm_state(&VmId("rha garbage id".into())).await,
        "vm_state of a malformed id",
    );

    // create_vm creates and starts.
    let expected = if expect_running {
        VmState::Running
    } else {
        VmState::Stopped
    };
    let info = provider
        .create_vm(&spec)
        .await
        .unwrap_or_else(|e| panic!("create_vm of a valid spec: {e}"));
    let id = info.id.clone();
    assert_eq!(info.name, name, "VmInfo.name");
    assert!(!id.0.is_empty(), "VmInfo.id must not be empty");
    assert_eq!(info.state, expected, "the state create_vm reports");
    assert_eq!(
        provider.vm_state(&id).await.expect("vm_state of a new VM"),
        expected,
        "vm_state right after create_vm"
    );

    // Names are unique.
    match provider.create_vm(&spec).await {
        Err(CloudError::AlreadyExists { name: n }) => {
            assert_eq!(n, name, "AlreadyExists names the VM")
        }
        other => panic!("creating `{name}` twice must fail with AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        provider.vm_state(&id).await.expect("vm_state"),
        expected,
        "a refused duplicate must not change the existing VM"
    );

    // stop_vm stops, and is idempotent.
    provider.stop_vm(&id).await.expect("stop_vm");
    assert_eq!(
        provider
            .vm_state(&id)
            .await
            .expect("vm_state after stop_vm"),
        VmState::Stopped,
        "vm_state after stop_vm"
    );
    provider
        .stop_vm(&id)
        .await
        .expect("stop_vm of a stopped VM must succeed");

    // delete_vm removes the VM, never the disks.
    provider.delete_vm(&id).await.expect("delete_vm");
    assert_not_found(provider.vm_state(&id).await, "vm_state after delete_vm");
    assert_not_found(provider.stop_vm(&id).await, "stop_vm after delete_vm");
    assert_not_found(provider.delete_vm(&id).await, "delete_vm after delete_vm");
    for d in &spec.disks {
        if !d.location.contains("://") {
            assert!(
                Path::new(&d.location).is_file(),
                "delete_vm must never delete a disk, but {} is gone",
                d.location
            );
        }
    }

    // A deleted VM's name can be used again; delete_vm also stops a running VM.
    let again = provider
        .create_vm(&spec)
        .await
        .unwrap_or_else(|e| panic!("re-creating a deleted VM's name: {e}"));
    assert_eq!(again.state, expected, "the state of the re-created VM");
    provider
        .delete_vm(&again.id)
        .await
        .expect("delete_vm of a VM that was not stopped first");
    assert_not_found(
        provider.vm_state(&again.id).await,
        "vm_state after deleting a VM that was not stopped first",
    );
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, CloudError>, what: &str) {
    match r {
        Err(CloudError::NotFound { .. }) => {}
        other => panic!("{what} must fail with NotFound, got {other:?}"),
    }
}
