//! The `rha` binary, as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::process::Command;

fn rha() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rha"))
}

/// Runs `qemu-img` with `args` and then `files`; panics with its output when it fails.
fn qemu_img(args: &[&str], files: &[&std::path::Path]) -> Vec<u8> {
    let out = Command::new("qemu-img")
        .args(args)
        .args(files)
        .output()
        .expect("qemu-img (qemu-utils) is needed; scripts/test.sh installs it");
    assert!(
        out.status.success(),
        "qemu-img {args:?} {files:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn demo_replicates_and_proves_the_replica_equal() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("demo");
    let out = rha()
        .args(["demo", "--writes", "200", "--workdir"])
        .arg(&dir)
        .env("RHA_LOG", "warn")
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
    assert!(stdout.contains("bootable system disk"), "{stdout}");

    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    let paths = |key: &str| -> Vec<std::path::PathBuf> {
        summary[key]
            .as_array()
            .unwrap_or_else(|| panic!("summary.json has no `{key}` array: {summary:#}"))
            .iter()
            .map(|p| std::path::PathBuf::from(p.as_str().unwrap()))
            .collect()
    };
    let (master, replica) = (paths("master"), paths("replica"));
    assert_eq!(master.len(), 2, "a system and a data disk: {summary:#}");
    assert_eq!(master.len(), replica.len(), "{summary:#}");
    let root = std::fs::canonicalize(&dir).unwrap();
    for (m, r) in master.iter().zip(&replica) {
        for p in [m, r] {
            assert!(
                p.is_absolute() && p.starts_with(&root),
                "{} is not in {}",
                p.display(),
                root.display()
            );
            assert!(p.exists(), "{} is missing", p.display());
        }
        qemu_img(&["compare", "-f", "raw", "-F", "vpc"], &[m, r]);
        let info = qemu_img(&["info", "-f", "vpc", "--output=json"], &[r]);
        let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
        assert_eq!(info["format"], "vpc", "{info:#}");
        assert_eq!(
            info["virtual-size"].as_u64(),
            Some(std::fs::metadata(m).unwrap().len()),
            "{info:#}"
        );
    }
    assert_eq!(summary["bootable"], summary["replica"][0], "{summary:#}");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&replica[0])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the system replica: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    assert_eq!(summary["ok"], true, "{summary:#}");
    assert_eq!(summary["consistent"], true, "{summary:#}");
    assert_eq!(summary["replica_equals_master"], true, "{summary:#}");
    assert_eq!(summary["capture"], "tracked", "{summary:#}");
    assert!(
        !summary["vm_id"].as_str().unwrap().is_empty(),
        "{summary:#}"
    );
    assert!(
        summary["recovery_point"]["seq"].as_u64().unwrap() > 0,
        "{summary:#}"
    );
    let writes = &summary["writes"];
    assert_eq!(writes["while_replicating"], 200, "{summary:#}");
    assert!(
        writes["during_sync"].as_u64().unwrap() > 0,
        "no writes during the synchronisation: {summary:#}"
    );
    assert!(writes["system_disk"].as_u64().unwrap() > 0, "{summary:#}");
    assert_eq!(
        summary["statistics"]["journal_bytes_left"], 0,
        "{summary:#}"
    );
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
    assert_eq!(
        typo.status.code(),
        Some(2),
        "a scenario that does not parse is invalid input"
    );
    assert!(String::from_utf8_lossy(&typo.stderr).contains("did you mean"));
}

/// The TLS options belong to the commands that talk to engines: `rha demo`
/// (which makes its own certificates) and `rha sync` neither list nor take
/// them; `rha scenario`, `rha engine` and `rha vm` do, before or after the
/// subcommand.
#[test]
fn tls_options_are_offered_only_where_they_are_used() {
    let help = |args: &[&str]| {
        let out = rha().args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?} --help failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for cmd in [&["demo"][..], &["sync"], &["vhd", "make"], &["cert", "ca"]] {
        let h = help(cmd);
        assert!(
            !h.contains("--certs") && !h.contains("--insecure-plaintext"),
            "rha {cmd:?} --help lists TLS options it ignores:\n{h}"
        );
    }
    for cmd in [&["engine"][..], &["scenario", "status"], &["vm", "start"]] {
        let h = help(cmd);
        assert!(
            h.contains("--certs") && h.contains("--pin"),
            "rha {cmd:?}:\n{h}"
        );
    }
    let out = rha()
        .args([
            "demo",
            "--certs",
            "/nonexistent",
            "--workdir",
            "/nonexistent/x",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses an option demo does not take"
    );
}
