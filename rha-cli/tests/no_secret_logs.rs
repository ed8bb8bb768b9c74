//! With the most verbose logging an operator can ask for (`RHA_LOG=trace`),
//! `rha cloud` never writes the client secret or a bearer token: the Azure
//! SDK logs whole requests at debug level (body and `Authorization` header
//! included), and the `rha` binary withholds those events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rha_azure::arm::fake::{FakeAzure, FakeConfig};

fn rha(store: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rha"))
        .arg("cloud")
        .arg("--store")
        .arg(store)
        .args(args)
        .env("RHA_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logging_shows_neither_the_secret_nor_tokens() {
    let f = FakeAzure::start(FakeConfig::default()).await.unwrap();
    f.add_vm(
        "rg-rha-dr",
        "rha-appliance",
        "westeurope",
        &[("rha-role", "appliance")],
        "running",
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("accounts.json");
    let c = f.config().clone();
    let url = f.url();
    let out = tokio::task::spawn_blocking(move || {
        let add: Vec<&str> = vec![
            "account",
            "add",
            "prod",
            "--subscription",
            &c.subscription,
            "--tenant",
            &c.tenant,
            "--app-id",
            &c.client_id,
            "--authority-host",
            &url,
            "--arm-endpoint",
            &url,
        ];
        let mut outs = vec![rha(&store, &add, &format!("{}\n", c.secret))];
        outs.push(rha(&store, &["account", "test", "prod"], ""));
        outs.push(rha(
            &store,
            &["appliances", "--account", "prod", "--region", "westeurope"],
            "",
        ));
        (outs, c.secret)
    })
    .await
    .unwrap();
    let (outs, secret) = out;
    let mut all = String::new();
    for o in &outs {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{text}");
        all.push_str(&text);
    }
    assert!(f.tokens_issued() > 0, "no token was asked for");
    // The logs are really at trace level (rha's own debug events show)...
    assert!(all.contains("Resource Manager request"), "{all}");
    // ...but hold no credential.
    assert!(
        !all.contains(&secret),
        "the client secret was logged:\n{all}"
    );
    assert!(
        !all.contains("fake-token-"),
        "a bearer token was logged:\n{all}"
    );
    assert!(
        !all.contains("client_secret="),
        "a token request body was logged:\n{all}"
    );
}
