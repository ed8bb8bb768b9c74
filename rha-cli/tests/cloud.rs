//! `rha cloud` as a user runs it, against the local Azure AD and Resource
//! Manager of `rha_azure::arm::fake`: accounts (add with the secret on
//! standard input or in an environment variable, list without secrets,
//! test, remove, a readable file refused), the VMs of a region, and a
//! switchover VM created, stopped, started and deleted from a scenario.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rha_azure::arm::fake::{FakeAzure, FakeConfig};

fn rha(store: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rha"));
    cmd.arg("cloud")
        .arg("--store")
        .arg(store)
        .args(args)
        .env("RHA_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    {
        let mut i = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            i.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `f` on a blocking thread so the fake keeps serving meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn add_args(f: &FakeAzure, name: &str) -> Vec<String> {
    let c = f.config();
    vec![
        "account".into(),
        "add".into(),
        name.into(),
        "--subscription".into(),
        c.subscription.clone(),
        "--tenant".into(),
        c.tenant.clone(),
        "--app-id".into(),
        c.client_id.clone(),
        "--authority-host".into(),
        f.url(),
        "--arm-endpoint".into(),
        f.url(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_add_list_test_remove() {
    let f = FakeAzure::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cfg/accounts.json");
    let secret = f.config().secret.clone();

    let (s, a, sec) = (store.clone(), add_args(&f, "prod"), secret.clone());
    let o = blocking(move || {
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        rha(&s, &args, Some(&format!("{sec}\n")), &[])
    })
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !text(&o).contains(&secret),
        "the secret was printed: {}",
        text(&o)
    );
    let mode = std::fs::metadata(&store).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A second account with a wrong secret, from an environment variable.
    let (s, mut a) = (store.clone(), add_args(&f, "typo"));
    a.extend(["--secret-env".into(), "RHA_TEST_SECRET".into()]);
    let o = blocking(move || {
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        rha(&s, &args, None, &[("RHA_TEST_SECRET", "not-the-secret")])
    })
    .await;
    assert!(o.status.success(), "{}", text(&o));

    let s = store.clone();
    let o = blocking(move || rha(&s, &["account", "list"], None, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("prod") && out.contains("typo"), "{out}");
    assert!(
        !out.contains(&secret) && !out.contains("not-the-secret"),
        "{out}"
    );
    let s = store.clone();
    let o = blocking(move || rha(&s, &["account", "list", "--json"], None, &[])).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    let s = store.clone();
    let o = blocking(move || rha(&s, &["account", "test", "prod"], None, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("account `prod` works"), "{}", text(&o));

    let s = store.clone();
    let o = blocking(move || rha(&s, &["account", "test", "typo"], None, &[])).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("AADSTS7000215"), "{}", text(&o));
    assert!(!text(&o).contains("not-the-secret"), "{}", text(&o));

    // No secret at all: refused, nothing added.
    let (s, a) = (store.clone(), add_args(&f, "empty"));
    let o = blocking(move || {
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        rha(&s, &args, Some(""), &[])
    })
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // A file others can read is refused.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = store.clone();
    let o = blocking(move || rha(&s, &["account", "list"], None, &[])).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("chmod 600"), "{}", text(&o));
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();

    let s = store.clone();
    let o = blocking(move || rha(&s, &["account", "remove", "typo"], None, &[])).await;
    assert!(o.status.success(), "{}", text(&o));
    let s = store.clone();
    let o = blocking(move || rha(&s, &["account", "test", "typo"], None, &[])).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no cloud account named `typo`"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_vm_from_a_scenario() {
    let f = FakeAzure::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("accounts.json");
    let (s, a, sec) = (
        store.clone(),
        add_args(&f, "production"),
        f.config().secret.clone(),
    );
    let o = blocking(move || {
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        rha(&s, &args, Some(&sec), &[])
    })
    .await;
    assert!(o.status.success(), "{}", text(&o));

    // The sample scenario names account `production`, rg-rha-dr, vnet-dr/snet-servers, 10.20.1.10.
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/scenarios/azure-ha.toml"
    );
    let scenario = dir.path().join("azure-ha.toml");
    std::fs::copy(sample, &scenario).unwrap();
    f.add_subnet("rg-rha-dr", "vnet-dr", "snet-servers", "10.20.1.0/24");
    let c = f.add_blob("rhareplicas01", "sql01", "disk-0.vhd", 64 << 20);
    let d = f.add_blob("rhareplicas01", "sql01", "disk-1.vhd", 32 << 20);
    f.add_vm(
        "rg-rha-dr",
        "rha-appliance",
        "westeurope",
        &[("rha-role", "appliance")],
        "running",
    );

    let s = store.clone();
    let o = blocking(move || {
        rha(
            &s,
            &[
                "appliances",
                "--account",
                "production",
                "--region",
                "westeurope",
            ],
            None,
            &[],
        )
    })
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("rha-appliance"), "{}", text(&o));
    assert!(text(&o).contains("appliance"), "{}", text(&o));

    let (s, sc) = (store.clone(), scenario.clone());
    let (dc, dd) = (format!("C:={c}"), format!("D:={d}"));
    let o = blocking(move || {
        rha(
            &s,
            &[
                "vm",
                "create",
                sc.to_str().unwrap(),
                "--disk",
                &dc,
                "--disk",
                &dd,
                "--recovery-point",
                "seq 42",
                "--json",
            ],
            None,
            &[],
        )
    })
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["state"], "running");
    assert_eq!(report["private_ip"], "10.20.1.10");
    assert!(report["vm_id"]
        .as_str()
        .unwrap()
        .ends_with("/virtualMachines/sql01-dr"));
    // The volume D: is declared 500 GB but its blob holds 32 MiB: a warning.
    assert!(
        report["warnings"][0]
            .as_str()
            .unwrap()
            .contains("less than"),
        "{report}"
    );

    for (args, expect) in [
        (vec!["vm", "status"], "is running"),
        (vec!["vm", "stop"], "deallocated"),
        (vec!["vm", "status"], "is stopped"),
        (vec!["vm", "start"], "is started"),
        (vec!["vm", "delete"], "replica page blobs are untouched"),
    ] {
        let (s, sc) = (store.clone(), scenario.clone());
        let o = blocking(move || {
            let mut a = args.clone();
            a.extend(["--scenario", sc.to_str().unwrap()]);
            rha(&s, &a, None, &[])
        })
        .await;
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(expect), "{expect}: {}", text(&o));
    }
    let (s, sc) = (store.clone(), scenario.clone());
    let o = blocking(move || {
        rha(
            &s,
            &["vm", "status", "--scenario", sc.to_str().unwrap()],
            None,
            &[],
        )
    })
    .await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_eq!(
        f.ids_of("Microsoft.Compute/disks").len(),
        2,
        "managed disks are kept"
    );
}
