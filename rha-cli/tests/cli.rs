//! The `rha` binary, as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::process::Command;

fn rha() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rha"))
}

#[test]
fn demo_replicates_and_proves_the_replica_equal() {
    let dir = tempfile::tempdir().unwrap();
    let out = rha()
        .args(["demo", "--size-mib", "32", "--writes", "300", "--dir"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("all changes made during synchronisation have been replicated"),
        "{stdout}"
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["replica_equals_master"], true);
    assert_eq!(last["consistent"], true);
    assert_eq!(last["journal_bytes_left"], 0);
}

#[test]
fn demo_refuses_a_directory_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), b"x").unwrap();
    let out = rha()
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a demo directory"));
    assert!(dir.path().join("precious").exists(), "nothing was deleted");
}

#[test]
fn vhd_make_check_strip_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![7u8; 1536 * 1024]).unwrap();
    let out = rha().args(["vhd", "check"]).arg(&img).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "a raw image has no footer");
    let out = rha().args(["vhd", "make"]).arg(&img).output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rounded up"),
        "the MiB rounding is announced"
    );
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        2 * 1024 * 1024 + 512
    );
    assert!(rha()
        .args(["vhd", "check"])
        .arg(&img)
        .status()
        .unwrap()
        .success());
    assert!(rha()
        .args(["vhd", "strip"])
        .arg(&img)
        .status()
        .unwrap()
        .success());
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 2 * 1024 * 1024);
}

#[test]
fn sync_copies_an_image_and_prints_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let mut data = vec![0u8; 4 << 20];
    data[12345..20000].fill(9);
    std::fs::write(&a, &data).unwrap();
    for method in ["volume", "block"] {
        let out = rha()
            .args(["sync", "--method", method])
            .arg(&a)
            .arg(&b)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["bytes_sent"].as_u64().is_some() && v["consistent"] == true);
    }
    assert_eq!(std::fs::read(&b).unwrap(), data);
}

#[test]
fn scenario_validate_exit_codes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ok = rha()
        .args(["scenario", "validate", "--offline"])
        .arg(root.join("examples/scenarios/local-ha.toml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let bad = rha()
        .args(["scenario", "validate", "--offline"])
        .arg(root.join("rha-core/tests/data/scenarios/excluded_system.toml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("can never be excluded"));
    let typo = rha()
        .args(["scenario", "validate", "--offline"])
        .arg(root.join("rha-core/tests/data/scenarios/typo_key.toml"))
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("did you mean"));
}
