//! `rha sync --dirty-bitmap`: an incremental synchronisation from a
//! `qemu-nbd -B` export, the bitmap cleared afterwards, and its errors.
//! The tests print why and return when QEMU's tools are absent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../rha-transport/tests/qemu_support/mod.rs"]
mod qemu_support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const KIB: u64 = 1 << 10;

fn have(test: &str) -> bool {
    for tool in ["qemu-img", "qemu-io", "qemu-nbd"] {
        if !Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            eprintln!("skipping {test}: {tool} is not available");
            return false;
        }
    }
    true
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A qcow2 `img` of `size` written by `write` and its raw copy `dst` (the
/// replica's baseline), then bitmap `b0` added and enabled.
fn baseline(img: &Path, dst: &Path, size: &str, write: &str) {
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(img), size]);
    run("qemu-io", &["-f", "qcow2", "-c", write, s(img)]);
    run(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", s(img), s(dst)],
    );
    run("qemu-img", &["bitmap", "--add", "--enable", s(img), "b0"]);
}

/// `qemu-img compare` of the qcow2 `img` and the raw `dst` succeeds.
fn same_content(img: &Path, dst: &Path) {
    run(
        "qemu-img",
        &["compare", "-q", "-f", "qcow2", "-F", "raw", s(img), s(dst)],
    );
}

/// `qemu-nbd -r -f qcow2 [-B b0] -k SOCK IMG` (exits when its client leaves).
fn qemu_nbd(img: &Path, sock: &Path, bitmap: bool) -> Child {
    let _ = std::fs::remove_file(sock);
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(["-r", "-f", "qcow2", "-k", s(sock)]);
    if bitmap {
        cmd.args(["-B", "b0"]);
    }
    let child = cmd.arg(img).stdout(Stdio::null()).spawn().unwrap();
    qemu_support::wait_listening(sock, "qemu-nbd");
    child
}

fn rha_sync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rha"))
        .arg("sync")
        .args(args)
        .env("RHA_LOG", "warn")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "rha sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn sync_dirty_bitmap_sends_the_dirty_clusters_and_clears_the_bitmap() {
    if !have("sync_dirty_bitmap_sends_the_dirty_clusters_and_clears_the_bitmap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vm.qcow2");
    let dst = dir.path().join("replica.raw");
    let sock = dir.path().join("nbd.sock");
    baseline(&img, &dst, "16M", "write -P 0x33 0 8M");
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 2M 128k",
            "-c",
            "write -P 0x5a 12M 64k",
            s(&img),
        ],
    );
    let src = format!("nbd+unix:///?socket={}", sock.display());

    let mut nbd = qemu_nbd(&img, &sock, true);
    let out = rha_sync(&[
        "--dirty-bitmap",
        "b0",
        "--method",
        "volume",
        "--clear-image",
        s(&img),
        &src,
        s(&dst),
    ]);
    let report = json(&out);
    nbd.wait().unwrap();
    let dirty = 192 * KIB;
    assert_eq!(report["dirty_bytes"], dirty, "{report}");
    assert_eq!(report["bytes_scanned"], dirty, "{report}");
    assert_eq!(report["used_change_log"], true, "{report}");
    assert_eq!(report["bitmap_cleared"], true, "{report}");
    let sent = report["bytes_sent"].as_u64().unwrap();
    assert!((dirty..dirty + 4 * KIB).contains(&sent), "{report}");
    same_content(&img, &dst);

    // The bitmap is empty now: a second run has nothing to send.
    let mut nbd = qemu_nbd(&img, &sock, true);
    let report = json(&rha_sync(&["--dirty-bitmap", "b0", &src, s(&dst)]));
    nbd.wait().unwrap();
    assert_eq!(report["dirty_bytes"], 0, "{report}");
    assert_eq!(report["bytes_scanned"], 0, "{report}");
    assert!(report["bytes_sent"].as_u64().unwrap() < KIB, "{report}");
    assert_eq!(report["bitmap_cleared"], false, "{report}");
}

#[test]
fn sync_dirty_bitmap_errors() {
    if !have("sync_dirty_bitmap_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vm.qcow2");
    let dst = dir.path().join("replica.raw");
    let sock = dir.path().join("nbd.sock");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "4M"]);
    run(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", s(&img), s(&dst)],
    );
    let src = format!("nbd+unix:///?socket={}", sock.display());

    // An export without the bitmap's context.
    let mut nbd = qemu_nbd(&img, &sock, false);
    let out = rha_sync(&["--dirty-bitmap", "b0", &src, s(&dst)]);
    let _ = nbd.kill();
    let _ = nbd.wait();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("qemu-nbd was not started with -B b0"),
        "{stderr}"
    );

    // A replica that does not exist cannot hold the previous state.
    let out = rha_sync(&[
        "--dirty-bitmap",
        "b0",
        &src,
        s(&dir.path().join("none.raw")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must exist"));

    // Not an NBD address.
    let out = rha_sync(&["--dirty-bitmap", "b0", s(&img), s(&dst)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an NBD address"));

    // The reset options need --dirty-bitmap (and --qmp needs --node).
    let out = rha_sync(&["--clear-image", s(&img), s(&img), s(&dst)]);
    assert_eq!(out.status.code(), Some(2));
    let out = rha_sync(&["--dirty-bitmap", "b0", "--qmp", "/x", &src, s(&dst)]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sync_dirty_bitmap_of_a_running_qemu_over_qmp() {
    let test = "sync_dirty_bitmap_of_a_running_qemu_over_qmp";
    if !have(test) {
        return;
    }
    if !Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipping {test}: qemu-system-x86_64 is not available");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vm.qcow2");
    let dst = dir.path().join("replica.raw");
    baseline(&img, &dst, "16M", "write -P 0x21 0 4M");
    // The VM runs: its disk node disk0 records writes in b0.
    let qmp_sock = dir.path().join("qmp.sock");
    let vm = qemu_support::Vm::start(&img, &qmp_sock);
    let hmp = |line: &str| {
        vm.qmp(
            "human-monitor-command",
            serde_json::json!({ "command-line": line }),
        )
    };
    hmp("qemu-io disk0 \"write -P 0x6b 1M 64k\"");
    hmp("qemu-io disk0 \"write -P 0x6b 9M 128k\"");
    // QEMU's own NBD server exports the disk with the bitmap.
    let nbd_sock = dir.path().join("vm-nbd.sock");
    vm.export_with_bitmap(&nbd_sock, "e0", "b0");
    let src = format!("nbd+unix:///disk?socket={}", nbd_sock.display());
    let out = rha_sync(&[
        "--dirty-bitmap",
        "b0",
        "--qmp",
        s(&qmp_sock),
        "--node",
        "disk0",
        "--qmp-export",
        "e0",
        &src,
        s(&dst),
    ]);
    let report = json(&out);
    assert_eq!(report["dirty_bytes"], 192 * KIB, "{report}");
    assert_eq!(report["bitmap_cleared"], true, "{report}");
    // The export is gone, b0 is empty, its helper bitmap removed.
    assert_eq!(
        vm.qmp("query-block-exports", serde_json::json!({})),
        serde_json::json!([])
    );
    let nodes = vm.qmp(
        "query-named-block-nodes",
        serde_json::json!({ "flat": true }),
    );
    let bitmaps = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "disk0")
        .unwrap()["dirty-bitmaps"]
        .clone();
    assert_eq!(bitmaps.as_array().unwrap().len(), 1, "{bitmaps}");
    assert_eq!(bitmaps[0]["name"], "b0", "{bitmaps}");
    assert_eq!(bitmaps[0]["count"], 0, "{bitmaps}");
    vm.quit();
    same_content(&img, &dst);
}
