//! The number of Resource Manager calls and the wall time of an Azure
//! switchover against the local fake of `rha_azure::arm::fake` (feature
//! `fake-arm`, on for examples): the real SDK adapter and orchestration,
//! over loopback HTTP, with `Retry-After: 0`.
//!
//! ```sh
//! cargo run --release -p rha-azure --example arm_switchover_bench [-- RUNS]
//! ```
//!
//! Each switchover checks the two replica blobs and the subnet, imports two
//! managed disks (in parallel), creates a NIC (and a public IP in the second
//! half of the table) and the VM, polling each operation through N
//! `InProgress` answers; then the VM is deleted again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rha_azure::arm::fake::{FakeAzure, FakeConfig};
use rha_azure::arm::{storage_account_id, ArmOptions, PollPolicy, SdkArm};
use rha_azure::provider::{AzureProvider, AzureTarget};
use rha_core::cloud::{CloudProvider, DiskRef, VmId, VmSpec};
use rha_core::scenario::{HyperVGeneration, Network, Os};

const MIB: u64 = 1024 * 1024;

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let fake = FakeAzure::start(FakeConfig::default()).await.unwrap();
    fake.add_subnet("rg-dr", "vnet-dr", "snet", "10.1.0.0/24");
    let os = fake.add_blob("rhareplicas", "web01", "disk-0.vhd", 64 * MIB);
    let data = fake.add_blob("rhareplicas", "web01", "disk-1.vhd", 32 * MIB);
    let api = Arc::new(
        SdkArm::new(
            &fake.account("bench"),
            ArmOptions {
                poll: PollPolicy {
                    default_interval: Duration::ZERO,
                    max_interval: Duration::ZERO,
                    timeout: Duration::from_secs(60),
                },
                retry: false,
                ..ArmOptions::default()
            },
        )
        .unwrap(),
    );
    let target = AzureTarget {
        location: "westeurope".into(),
        resource_group: "rg-dr".into(),
        storage_account_id: storage_account_id(&fake.config().subscription, "rg-dr", "rhareplicas"),
        disk_sku: "StandardSSD_LRS".into(),
        scenario: Some("bench".into()),
    };
    let provider = AzureProvider::new(api.clone(), target).delete_disks_with_vm(true);
    println!("Azure switchover against the local Resource Manager fake: {runs} runs per row");
    println!(
        "(2 replica blobs checked, 2 managed disks imported in parallel, NIC, VM; Retry-After: 0)"
    );
    println!();
    println!(
        "| polls per operation | public IP | ARM calls | of which polls | wall time median | p90 | delete: calls, median |"
    );
    println!("| ---: | :---: | ---: | ---: | ---: | ---: | ---: |");
    for public_ip in [false, true] {
        for polls in [0u32, 3] {
            fake.set_pending_polls(polls);
            let mut times = Vec::new();
            let mut calls = 0;
            let mut poll_calls = 0;
            let mut del_times = Vec::new();
            let mut del_calls = 0;
            for i in 0..runs {
                let spec = VmSpec {
                    name: format!("bench{i}"),
                    cpus: 2,
                    memory_mb: 4096,
                    size: Some("Standard_D2s_v3".into()),
                    generation: HyperVGeneration::V2,
                    os: Os::Linux,
                    disks: vec![
                        DiskRef {
                            name: "/".into(),
                            location: os.clone(),
                            size: 64 * MIB,
                            system: true,
                        },
                        DiskRef {
                            name: "/data".into(),
                            location: data.clone(),
                            size: 32 * MIB,
                            system: false,
                        },
                    ],
                    network: Network {
                        virtual_network: Some("vnet-dr".into()),
                        subnet: Some("snet".into()),
                        private_ip: None,
                        public_ip,
                    },
                    recovery_point: None,
                };
                fake.clear_requests();
                let t = Instant::now();
                let report = provider.switchover(&spec).await.expect("switchover");
                times.push(t.elapsed());
                calls = report.arm_calls;
                poll_calls = fake
                    .requests()
                    .iter()
                    .filter(|r| r.path.starts_with("/operations/"))
                    .count();
                let before = api_calls(&provider);
                let t = Instant::now();
                provider
                    .delete_vm(&VmId(report.vm_id.clone()))
                    .await
                    .expect("delete");
                del_times.push(t.elapsed());
                del_calls = api_calls(&provider) - before;
            }
            times.sort();
            del_times.sort();
            println!(
                "| {polls} | {} | {calls} | {poll_calls} | {:.1} ms | {:.1} ms | {del_calls}, {:.1} ms |",
                if public_ip { "yes" } else { "no" },
                ms(times[times.len() / 2]),
                ms(times[(times.len() * 9 / 10).min(times.len() - 1)]),
                ms(del_times[del_times.len() / 2]),
            );
        }
    }
}

fn api_calls(p: &AzureProvider) -> u64 {
    p.api().arm_calls()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
