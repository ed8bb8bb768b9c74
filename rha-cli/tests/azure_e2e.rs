//! End to end into Azure: a master engine on a local ext4 image and an
//! appliance engine whose scenario replicates to Azure, both `rha engine`
//! processes over mutual TLS; the page blobs in Azurite, Azure AD and
//! Resource Manager at `rha_azure::arm::fake`, one cloud account pointing
//! at both. Block-level synchronisation, writes while replicating, a
//! bookmark that becomes blob snapshots (listed, read back equal to the
//! master at that moment), the master lost (Is Alive raises the event, the
//! cloud scenario does not switch over by itself), switchover (disks
//! imported from the snapshot URLs, NIC, VM), and `vm start --point NAME`
//! after stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../rha-azure/tests/page_blob_support/mod.rs"]
mod page_blob_support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use rha_azure::arm::fake::{FakeAzure, FakeConfig};
use rha_azure::{list_recovery_points, BlobStore, PageBlobVolume, RecoveryPoint};
use rha_core::volume::Volume;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const RG: &str = "rg-dr";

fn run(certs: &Path, accounts: &Path, args: &[&str]) -> Output {
    rha()
        .args(args)
        .arg("--certs")
        .arg(certs)
        .env("RHA_ACCOUNTS", accounts)
        .env("RHA_LOG", "warn")
        .output()
        .unwrap()
}

fn ok_json(certs: &Path, accounts: &Path, args: &[&str]) -> Value {
    let o = run(certs, accounts, args);
    assert!(
        o.status.success(),
        "rha {args:?} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "rha {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// `ok_json` on a blocking thread.
async fn json_async(certs: &Path, accounts: &Path, args: &[&str]) -> Value {
    let (c, a) = (certs.to_path_buf(), accounts.to_path_buf());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok_json(&c, &a, &args)
    })
    .await
}

/// Runs `f` on a blocking thread so the in-process fake keeps serving.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn azure_scenario(
    dir: &Path,
    name: &str,
    image: &Path,
    master_port: u16,
    appliance_port: u16,
    container: &str,
) -> PathBuf {
    let text = format!(
        r#"name = "{name}"
product = "ha"
run_after_reboot = true

[master]
host = "127.0.0.1"
port = {master_port}
os = "linux"

[replica.azure]
appliance = "127.0.0.1"
port = {appliance_port}
account = "dr"
region = "westeurope"
resource_group = "{RG}"
storage_account = "devstoreaccount1"
container = "{container}"

{volume_and_sync}
[switchover]
mode = "manual"

[vm]
name = "{name}-vm"
size = "Standard_B2s"
os_type = "linux"
generation = 1

[network]
virtual_network = "vnet-dr"
subnet = "snet-1"
"#,
        volume_and_sync = test_volume_and_sync(image),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Every byte of the first disk of the recovery point `which` picks.
fn read_point(store: &BlobStore, which: impl Fn(&RecoveryPoint) -> bool) -> Vec<u8> {
    let points = list_recovery_points(store, "az/").unwrap();
    let p = points
        .iter()
        .find(|p| which(p))
        .expect("the recovery point");
    let d = &p.disks[0];
    read_all(&PageBlobVolume::open_snapshot(store, &d.blob, &d.snapshot).unwrap())
}

/// Every byte of a blob (or snapshot) volume.
fn read_all(v: &dyn Volume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size() as usize];
    for (i, chunk) in buf.chunks_mut(4 * MIB as usize).enumerate() {
        v.read_at(i as u64 * 4 * MIB, chunk).unwrap();
    }
    buf
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert!(
        got.len() >= want.len(),
        "{what}: {} < {}",
        got.len(),
        want.len()
    );
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what} differs from the master at byte {at}");
    }
}

/// The disk imports the fake received.
fn imports(f: &FakeAzure) -> Vec<String> {
    f.requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/Microsoft.Compute/disks/"))
        .filter_map(|r| {
            r.body
                .as_ref()?
                .pointer("/properties/creationData/sourceUri")?
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_on_files_replica_in_azure_bookmark_switchover_vm_start() {
    let azurite = page_blob_support::azurite().port;
    let fake = FakeAzure::start(FakeConfig::default()).await.unwrap();
    fake.add_subnet(RG, "vnet-dr", "snet-1", "10.1.0.0/24");
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let accounts = dir.join("accounts.json");
    let container = page_blob_support::unique_container("e2e");

    // The account: the fake's identities, Azurite's blobs.
    let c = fake.config().clone();
    let (acc, fake_url) = (accounts.clone(), fake.url());
    let out = blocking(move || {
        rha()
            .args(["cloud", "--store"])
            .arg(&acc)
            .args(["account", "add", "dr", "--subscription", &c.subscription])
            .args(["--tenant", &c.tenant, "--app-id", &c.client_id])
            .args(["--authority-host", &fake_url, "--arm-endpoint", &fake_url])
            .arg("--blob-endpoint")
            .arg(format!("http://127.0.0.1:{azurite}/devstoreaccount1"))
            .args(["--secret-env", "RHA_TEST_SECRET"])
            .env("RHA_TEST_SECRET", &c.secret)
            .output()
            .unwrap()
    })
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (d, acc) = (dir.clone(), accounts.clone());
    let (certs, img, mut master, appliance) = blocking(move || {
        let certs = make_certs(&d);
        let img = make_ext4(&d, "master", 32);
        let m = EngineProc::start(&certs, "master", &d.join("m"), &["--listen", "127.0.0.1:0"]);
        let a = EngineProc::start(
            &certs,
            "appliance",
            &d.join("a"),
            &[
                "--listen",
                "127.0.0.1:0",
                "--accounts",
                acc.to_str().unwrap(),
            ],
        );
        (certs, img, m, a)
    })
    .await;
    let a = appliance.addr.clone().unwrap();
    let file = azure_scenario(
        &dir,
        "az",
        &img,
        master.port(),
        appliance.port(),
        &container,
    );
    let store = page_blob_support::store_on(azurite, &container);

    // Engine verification: the master's volume, the appliance's account.
    let v = json_async(
        &certs,
        &accounts,
        &["scenario", "validate", file.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(v["valid"], true, "{v:#}");
    assert_eq!(v["master"]["volumes"][0]["size"], 32 * MIB, "{v:#}");

    // Synchronisation while the master writes, then live replication.
    let (c2, f2, i2, d2, a2, acc2) = (
        certs.clone(),
        file.clone(),
        img.clone(),
        dir.clone(),
        a.clone(),
        accounts.clone(),
    );
    let s = blocking(move || {
        let o = run(
            &c2,
            &acc2,
            &["scenario", "run", f2.to_str().unwrap(), "--detach"],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        debugfs_write(&i2, &d2, "during-sync", 512, 7);
        wait_for(&c2, &a2, "az", 120, "replicating, consistent", |s| {
            s["state"] == "replicating" && s["replica"]["consistent"] == true
        })
    })
    .await;
    assert_eq!(s["target"]["kind"], "azure", "{s:#}");
    let disk_url = s["disks"][0].as_str().unwrap().to_owned();
    assert!(disk_url.contains(&container), "{s:#}");
    fake.add_blob_at(&disk_url, 32 * MIB);

    // A write, then a bookmark: the point holds it.
    let (c2, i2, d2, a2, acc2) = (
        certs.clone(),
        img.clone(),
        dir.clone(),
        a.clone(),
        accounts.clone(),
    );
    let (b, at_bookmark) = blocking(move || {
        debugfs_write(&i2, &d2, "before-bookmark", 256, 11);
        let at_bookmark = std::fs::read(&i2).unwrap();
        let b = ok_json(
            &c2,
            &acc2,
            &[
                "scenario",
                "bookmark",
                "az",
                "before-upgrade",
                "--engine",
                &a2,
                "--json",
            ],
        );
        (b, at_bookmark)
    })
    .await;
    assert_eq!(b["taken"], true, "{b:#}");
    assert_eq!(b["at"], "master", "{b:#}");
    let point = b["point"].clone();
    assert_eq!(point["name"], "before-upgrade");
    assert_eq!(point["seq"], b["seq"]);
    let snap_url = point["disks"][0].as_str().unwrap().to_owned();
    assert!(snap_url.contains("?snapshot="), "{point:#}");

    // Listed, and equal to the master at the bookmark.
    let listed = json_async(
        &certs,
        &accounts,
        &["scenario", "points", "az", "--engine", &a, "--json"],
    )
    .await;
    let names: Vec<&str> = listed["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"before-upgrade"), "{listed:#}");
    let st = store.clone();
    let snapshot = blocking(move || read_point(&st, |p| p.name == "before-upgrade")).await;
    assert_same("the bookmark's snapshot", &snapshot, &at_bookmark);

    // More writes after the bookmark, replicated; then the master is lost.
    let (c2, i2, d2, a2) = (certs.clone(), img.clone(), dir.clone(), a.clone());
    let s = blocking(move || {
        debugfs_write(&i2, &d2, "after-bookmark", 256, 13);
        std::thread::sleep(Duration::from_millis(600));
        wait_for(&c2, &a2, "az", 60, "the last write replicated", |s| {
            s["lag"]["records"] == 0 && s["master"]["connected"] == true
        })
    })
    .await;
    let seq_before_loss = s["replica"]["applied"].as_u64().unwrap();
    let final_master = std::fs::read(&img).unwrap();
    master.kill();
    let (c2, a2) = (certs.clone(), a.clone());
    blocking(move || {
        wait_for(&c2, &a2, "az", 30, "master not responding", |s| {
            s["state"] == "master_not_responding"
        });
        // Manual switchover only: a cloud scenario waits for the operator.
        std::thread::sleep(Duration::from_secs(3));
        let s = status(&c2, &a2, "az");
        assert_eq!(s["state"], "master_not_responding", "{s:#}");
    })
    .await;
    assert!(
        fake.ids_of("Microsoft.Compute/virtualMachines").is_empty(),
        "a VM was created without a switchover"
    );
    assert!(imports(&fake).is_empty());

    // Switchover to the latest point: the replica as it is (a snapshot).
    let r = json_async(
        &certs,
        &accounts,
        &["scenario", "switchover", "az", "--engine", &a, "--json"],
    )
    .await;
    assert_eq!(r["provider"], "azure", "{r:#}");
    // The replica blobs were checked through the blob store (page blob, VHD footer).
    let warnings = r["details"]["warnings"].as_str().unwrap_or("");
    assert!(!warnings.contains("not checked"), "{r:#}");
    assert_eq!(r["recovery_point"]["name"], "latest", "{r:#}");
    assert_eq!(
        r["recovery_point_seq"].as_u64(),
        Some(seq_before_loss),
        "{r:#}"
    );
    let latest_url = r["disks"][0].as_str().unwrap().to_owned();
    assert!(latest_url.contains("?snapshot="), "{r:#}");
    assert_eq!(imports(&fake), vec![latest_url.clone()]);
    let vm_id = r["vm_id"].as_str().unwrap().to_owned();
    assert!(vm_id.ends_with("/virtualMachines/az-vm"), "{r:#}");
    assert!(
        fake.resource(&vm_id).is_some(),
        "the fake has no VM {vm_id}"
    );
    let st = store.clone();
    let latest = blocking(move || read_point(&st, |p| p.disks[0].url == latest_url)).await;
    assert_same("the switchover's snapshot", &latest, &final_master);

    // Stop, delete the VM, and start one from the bookmark.
    let (c2, a2, acc2, f2) = (certs.clone(), a.clone(), accounts.clone(), file.clone());
    let (bad, v) = blocking(move || {
        let o = run(&c2, &acc2, &["scenario", "stop", "az", "--engine", &a2]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = rha()
            .args(["cloud", "--store"])
            .arg(&acc2)
            .args(["vm", "delete", "--delete-disks", "--scenario"])
            .arg(&f2)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let bad = run(
            &c2,
            &acc2,
            &[
                "vm",
                "start",
                "az",
                "--point",
                "no-such-point",
                "--engine",
                &a2,
            ],
        );
        let v = ok_json(
            &c2,
            &acc2,
            &[
                "vm",
                "start",
                "az",
                "--point",
                "before-upgrade",
                "--engine",
                &a2,
                "--json",
            ],
        );
        (bad, v)
    })
    .await;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("before-upgrade"),
        "the error lists the points: {}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(v["recovery_point"]["name"], "before-upgrade", "{v:#}");
    assert_eq!(v["disks"][0].as_str(), Some(snap_url.as_str()), "{v:#}");
    assert_eq!(imports(&fake).last(), Some(&snap_url));
    assert!(fake.resource(v["vm_id"].as_str().unwrap()).is_some());
    drop(appliance);

    // Without an engine: `rha cloud vm create` resolves the point from the container.
    let (acc2, f2) = (accounts.clone(), file.clone());
    let o = blocking(move || {
        let cloud = |args: &[&str]| {
            rha()
                .args(["cloud", "--store"])
                .arg(&acc2)
                .args(args)
                .arg(&f2)
                .output()
                .unwrap()
        };
        let o = cloud(&["vm", "delete", "--delete-disks", "--scenario"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        cloud(&["vm", "create", "--point", "before-upgrade", "--json"])
    })
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(imports(&fake).last(), Some(&snap_url));
    let created: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        fake.resource(created["vm_id"].as_str().unwrap()).is_some(),
        "{created:#}"
    );
}
