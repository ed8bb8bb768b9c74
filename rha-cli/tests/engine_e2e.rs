//! End to end: two `rha engine` processes on 127.0.0.1 over mutual TLS, a
//! master image holding ext4, block-level synchronisation, writes while
//! replicating, switchover; the replica VHD must equal the master and pass
//! `e2fsck -fn`. Also in NAT mode, with a cut link, and with the master
//! engine killed and restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;

const MIB: u64 = 1 << 20;

/// Switches over and checks the replica against the master.
fn switchover_and_check(
    certs: &Path,
    engine: &str,
    name: &str,
    master_img: &Path,
    marker: &Path,
) -> serde_json::Value {
    let out = rha_ok(
        certs,
        &["scenario", "switchover", name, "--engine", engine, "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["consistent"], true, "{report:#}");
    assert!(
        report["vm_id"].as_str().unwrap().contains(name),
        "{report:#}"
    );
    assert!(
        marker.exists(),
        "the master-side step did not run: {report:#}"
    );
    let disk = report["disks"][0].as_str().unwrap().to_owned();
    let (same, why) = qemu_compare(master_img, Path::new(&disk));
    assert!(same, "replica differs from the master: {why}");
    let (clean, out) = e2fsck(Path::new(&disk));
    assert!(clean, "e2fsck on the replica: {out}");
    // qemu probes a VHD only by a header at offset 0, which fixed VHDs do
    // not have: name the format, and check that qemu reads the footer's size.
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-f", "vpc", "--output=json"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "qemu-img info -f vpc: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["virtual-size"].as_u64(),
        Some(std::fs::metadata(master_img).unwrap().len()),
        "{info:#}"
    );
    let launch = report["details"]["launch"].as_str().unwrap().to_owned();
    assert!(
        Path::new(&launch).exists(),
        "no launch definition: {report:#}"
    );
    let s = status(certs, engine, name);
    assert_eq!(s["state"], "switched_over", "{s:#}");
    report
}

#[test]
fn tls_block_sync_live_writes_switchover() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = make_ext4(dir, "master", 64);
    let master = EngineProc::start(
        &certs,
        "master",
        &dir.join("m"),
        &["--listen", "127.0.0.1:0"],
    );
    let appliance = EngineProc::start(
        &certs,
        "appliance",
        &dir.join("a"),
        &["--listen", "127.0.0.1:0"],
    );
    let a = appliance.addr.clone().unwrap();
    let marker = dir.join("master-step-ran");
    let file = scenario(
        dir,
        "e2e",
        &img,
        master.port(),
        appliance.port(),
        false,
        &marker,
    );

    // Validation with engine verification: both reachable, the master's volume found.
    let v = rha_ok(
        &certs,
        &["scenario", "validate", file.to_str().unwrap(), "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(v.trim()).unwrap();
    assert_eq!(v["valid"], true, "{v:#}");
    assert_eq!(v["master"]["volumes"][0]["size"], 64 * MIB, "{v:#}");
    assert_eq!(v["master"]["volumes"][0]["system"], true);

    rha_ok(
        &certs,
        &[
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--timeout-secs",
            "120",
        ],
    );
    let s = status(&certs, &a, "e2e");
    assert_eq!(s["replica"]["consistent"], true, "{s:#}");
    // Writes while replicating: files added to the live filesystem image.
    for i in 0..6 {
        debugfs_write(&img, dir, &format!("live{i}.bin"), 512, 100 + i);
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    let s = wait_for(&certs, &a, "e2e", 60, "the live writes to replicate", |s| {
        s["changed_bytes"].as_u64().unwrap_or(0) > 3 * MIB
    });
    assert_eq!(s["state"], "replicating", "{s:#}");
    assert!(s["sent_bytes"].as_u64().unwrap() > 0);
    switchover_and_check(&certs, &a, "e2e", &img, &marker);
}

#[test]
fn nat_mode_master_listens_nowhere() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = make_ext4(dir, "master", 48);
    let appliance = EngineProc::start(
        &certs,
        "appliance",
        &dir.join("a"),
        &["--listen", "127.0.0.1:0"],
    );
    let a = appliance.addr.clone().unwrap();
    let master = EngineProc::start(
        &certs,
        "master",
        &dir.join("m"),
        &["--no-listen", "--dial", &a],
    );
    assert!(master.addr.is_none(), "a NAT-mode master must not listen");
    let marker = dir.join("nat-step-ran");
    // The master port is never used in NAT mode: point it at a closed port.
    let file = scenario(dir, "nat", &img, 9, appliance.port(), true, &marker);
    // The NAT offer is made before any scenario is known; the session
    // still takes the scenario's compression.
    edit_scenario(&file, |t| {
        t.replace(
            "method = \"block\"\n",
            "method = \"block\"\ncompression = \"lz4\"\n",
        )
    });
    rha_ok(
        &certs,
        &[
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--timeout-secs",
            "120",
        ],
    );
    debugfs_write(&img, dir, "nat-live.bin", 1024, 7);
    wait_for(
        &certs,
        &a,
        "nat",
        60,
        "the NAT-mode writes to replicate",
        |s| s["changed_bytes"].as_u64().unwrap_or(0) >= MIB,
    );
    let s = status(&certs, &a, "nat");
    assert_eq!(s["master"]["nat"], true);
    assert_eq!(s["master"]["connected"], true, "{s:#}");
    assert_eq!(s["master"]["compression"], "lz4", "{s:#}");
    switchover_and_check(&certs, &a, "nat", &img, &marker);
}

#[test]
fn cut_link_mid_sync_and_mid_replication_resumes_without_full_resync() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = make_ext4(dir, "master", 96);
    let master = EngineProc::start(
        &certs,
        "master",
        &dir.join("m"),
        &["--listen", "127.0.0.1:0"],
    );
    let appliance = EngineProc::start(
        &certs,
        "appliance",
        &dir.join("a"),
        &["--listen", "127.0.0.1:0"],
    );
    let a = appliance.addr.clone().unwrap();
    let proxy = Proxy::start(master.addr.clone().unwrap());
    let used: u64 = 5 * MIB; // about what the ext4 image holds (files + metadata)
                             // Cut mid-synchronisation, after about half of the data went through.
    proxy
        .cut_at
        .store(used / 2, std::sync::atomic::Ordering::Relaxed);
    let marker = dir.join("cut-step-ran");
    let file = scenario(
        dir,
        "cut",
        &img,
        proxy.port,
        appliance.port(),
        false,
        &marker,
    );
    rha_ok(
        &certs,
        &[
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--timeout-secs",
            "180",
        ],
    );
    let after_sync = proxy.bytes();
    assert!(
        after_sync > used / 2,
        "the cut did not happen mid-sync ({after_sync} bytes)"
    );
    // A full second synchronisation would send the used data twice.
    assert!(
        after_sync < used * 2,
        "{after_sync} bytes for about {used} bytes of data: the sync restarted from scratch"
    );

    // Mid-replication: 4 MiB of writes, cut while they flow, then more writes.
    debugfs_write(&img, dir, "before-cut.bin", 4096, 11);
    std::thread::sleep(std::time::Duration::from_millis(300));
    proxy.cut();
    debugfs_write(&img, dir, "after-cut.bin", 2048, 12);
    wait_for(&certs, &a, "cut", 90, "reconnection and catch-up", |s| {
        s["master"]["connected"] == true
            && s["changed_bytes"].as_u64().unwrap_or(0) >= 6 * MIB
            && s["lag"]["records"] == 0
    });
    let replication = proxy.bytes() - after_sync;
    assert!(
        replication < 12 * MIB,
        "{replication} bytes through the link for 6 MiB of writes: a full resync happened"
    );
    switchover_and_check(&certs, &a, "cut", &img, &marker);
}

#[test]
fn master_killed_and_restarted_resumes_with_fast_resync() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = make_ext4(dir, "master", 96);
    let mut master = EngineProc::start(
        &certs,
        "master",
        &dir.join("m"),
        &["--listen", "127.0.0.1:0"],
    );
    let appliance = EngineProc::start(
        &certs,
        "appliance",
        &dir.join("a"),
        &["--listen", "127.0.0.1:0"],
    );
    let a = appliance.addr.clone().unwrap();
    let proxy = Proxy::start(master.addr.clone().unwrap());
    let marker = dir.join("kill-step-ran");
    let file = scenario(
        dir,
        "kill",
        &img,
        proxy.port,
        appliance.port(),
        false,
        &marker,
    );
    rha_ok(
        &certs,
        &[
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--timeout-secs",
            "120",
        ],
    );
    debugfs_write(&img, dir, "before-kill.bin", 2048, 21);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let master_addr = master.addr.clone().unwrap();
    master.kill();
    // Writes while the master engine is down: found by the rescan after restart.
    debugfs_write(&img, dir, "while-down.bin", 1024, 22);
    let before = proxy.bytes();
    let master = EngineProc::start(
        &certs,
        "master",
        &dir.join("m"),
        &["--listen", &master_addr],
    );
    let s = wait_for(
        &certs,
        &a,
        "kill",
        90,
        "the restarted master to catch up",
        |s| {
            s["master"]["connected"] == true
                && s["state"] == "replicating"
                && s["replica"]["consistent"] == true
                && s["lag"]["records"] == 0
                && s["changed_bytes"].as_u64().unwrap_or(0) > 0
        },
    );
    // Let the first rescan after the restart run and replicate.
    std::thread::sleep(std::time::Duration::from_millis(800));
    let resumed = proxy.bytes() - before;
    assert!(resumed < 16 * MIB, "{resumed} bytes after the restart for 3 MiB of changes on a 96 MiB volume: a full resync happened ({s:#})");
    switchover_and_check(&certs, &a, "kill", &img, &marker);
    drop(master);
}

/// Rewrites a scenario file made by `scenario()`: `edit` gets its text.
fn edit_scenario(file: &Path, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(file).unwrap();
    std::fs::write(file, edit(text)).unwrap();
}

/// Is Alive with the manual switchover of a DR scenario: a failing check
/// (here a command whose exit status the test controls, beside the TCP check
/// and the heartbeat) raises "master not responding" and nothing switches
/// over by itself; the master coming back clears it. Then `scenario stop`
/// and `vm start --point latest` start the VM from the replica.
#[test]
fn is_alive_checks_manual_mode_then_stop_and_vm_start() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = make_ext4(dir, "master", 32);
    let master = EngineProc::start(
        &certs,
        "master",
        &dir.join("m"),
        &["--listen", "127.0.0.1:0"],
    );
    let appliance = EngineProc::start(
        &certs,
        "appliance",
        &dir.join("a"),
        &["--listen", "127.0.0.1:0"],
    );
    let a = appliance.addr.clone().unwrap();
    let marker = dir.join("alive-step-ran");
    let down = dir.join("master-is-down");
    let file = scenario(
        dir,
        "alive",
        &img,
        master.port(),
        appliance.port(),
        false,
        &marker,
    );
    let checks = format!(
        "[[is_alive.checks]]\ntype = \"heartbeat\"\n\n[[is_alive.checks]]\ntype = \"tcp\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
         [[is_alive.checks]]\ntype = \"command\"\nprogram = \"test\"\nargs = [\"!\", \"-e\", \"{}\"]\n\n[switchover]",
        master.port(),
        down.display()
    );
    edit_scenario(&file, |s| s.replacen("[switchover]", &checks, 1));
    rha_ok(
        &certs,
        &["scenario", "validate", "--offline", file.to_str().unwrap()],
    );
    rha_ok(
        &certs,
        &[
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--timeout-secs",
            "120",
        ],
    );

    // The command check fails: after the 3 s timeout, "master not responding".
    std::fs::write(&down, b"").unwrap();
    let s = wait_for(&certs, &a, "alive", 30, "master not responding", |s| {
        s["state"] == "master_not_responding"
    });
    assert!(
        s["last_event"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("not responding"),
        "{s:#}"
    );
    // Manual mode: no switchover by itself.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let s = status(&certs, &a, "alive");
    assert_eq!(s["state"], "master_not_responding", "{s:#}");
    assert!(s["switchover"].is_null(), "{s:#}");
    // The master answers again.
    std::fs::remove_file(&down).unwrap();
    wait_for(
        &certs,
        &a,
        "alive",
        30,
        "the master to respond again",
        |s| s["state"] == "replicating",
    );

    // Stop, then start the VM from the replica.
    debugfs_write(&img, dir, "before-stop.bin", 256, 31);
    // Rescan capture finds a write within its interval (200 ms): give it
    // a few intervals, then wait until everything found was applied.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    wait_for(
        &certs,
        &a,
        "alive",
        60,
        "the last write to replicate",
        |s| s["changed_bytes"].as_u64().unwrap_or(0) >= 256 * 1024 && s["lag"]["records"] == 0,
    );
    let out = rha()
        .args(["vm", "start", "alive", "--engine", &a, "--json", "--certs"])
        .arg(&certs)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "vm start while running must say: wrong state"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    rha_ok(&certs, &["scenario", "stop", "alive", "--engine", &a]);
    assert_eq!(status(&certs, &a, "alive")["state"], "stopped");
    let out = rha()
        .args([
            "vm",
            "start",
            "alive",
            "--point",
            "yesterday",
            "--engine",
            &a,
            "--certs",
        ])
        .arg(&certs)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown recovery point is invalid input"
    );
    let v = rha_ok(
        &certs,
        &[
            "vm", "start", "alive", "--point", "latest", "--engine", &a, "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(v.trim()).unwrap();
    assert_eq!(v["consistent"], true, "{v:#}");
    let disk = v["disks"][0].as_str().unwrap().to_owned();
    let (same, why) = qemu_compare(&img, Path::new(&disk));
    assert!(same, "replica differs from the master after stop: {why}");
    assert!(
        !marker.exists(),
        "vm start must not run the master-side step"
    );
    drop(master);
}

/// A local HA scenario with automatic switchover: the master engine dies,
/// the appliance notices within the timeout and starts the VM by itself.
#[test]
fn is_alive_local_automatic_switchover_when_the_master_dies() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = make_ext4(dir, "master", 32);
    let mut master = EngineProc::start(
        &certs,
        "master",
        &dir.join("m"),
        &["--listen", "127.0.0.1:0"],
    );
    let appliance = EngineProc::start(
        &certs,
        "appliance",
        &dir.join("a"),
        &["--listen", "127.0.0.1:0"],
    );
    let a = appliance.addr.clone().unwrap();
    let marker = dir.join("auto-step-ran");
    let file = scenario(
        dir,
        "auto",
        &img,
        master.port(),
        appliance.port(),
        false,
        &marker,
    );
    edit_scenario(&file, |s| {
        s.replacen("mode = \"manual\"", "mode = \"automatic\"", 1)
    });
    rha_ok(
        &certs,
        &[
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--timeout-secs",
            "120",
        ],
    );
    debugfs_write(&img, dir, "last-words.bin", 512, 41);
    // Rescan capture finds a write within its interval (200 ms): give it
    // a few intervals, then wait until everything found was applied.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    wait_for(&certs, &a, "auto", 60, "the last write to replicate", |s| {
        s["changed_bytes"].as_u64().unwrap_or(0) >= 512 * 1024 && s["lag"]["records"] == 0
    });
    master.kill();
    let s = wait_for(&certs, &a, "auto", 40, "the automatic switchover", |s| {
        s["state"] == "switched_over"
    });
    let report = &s["switchover"];
    assert_eq!(report["consistent"], true, "{s:#}");
    let disk = report["disks"][0].as_str().unwrap().to_owned();
    let (same, why) = qemu_compare(&img, Path::new(&disk));
    assert!(
        same,
        "the automatic switchover's replica differs from the master: {why}"
    );
    let (clean, out) = e2fsck(Path::new(&disk));
    assert!(clean, "e2fsck on the replica: {out}");
}

/// Exit codes scripts rely on, and messages that say what to do.
#[test]
fn cli_exit_codes_and_messages() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let run = |args: &[&str]| {
        let out = rha().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let c = certs.to_str().unwrap();

    // `scenario new` writes a template that validates; it never overwrites.
    let new = dir.join("new.toml");
    let (code, _, err) = run(&[
        "scenario",
        "new",
        "--template",
        "local",
        "-o",
        new.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = run(&["scenario", "validate", "--offline", new.to_str().unwrap()]);
    assert_eq!(code, Some(0), "the local template must validate: {out}");
    let (code, _, err) = run(&["scenario", "new", "-o", new.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("exists"), "{err}");
    let (code, out, _) = run(&["scenario", "new", "--template", "azure"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("[replica.azure]"), "{out}");

    // No certificates: invalid input, with what to pass.
    let (code, _, err) = run(&["scenario", "status", "--engine", "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--certs"), "{err}");
    // Nobody listening: unreachable.
    let (code, _, err) = run(&[
        "scenario",
        "status",
        "--engine",
        "127.0.0.1:1",
        "--certs",
        c,
    ]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cannot connect"), "{err}");

    let appliance = EngineProc::start(
        &certs,
        "appliance",
        &dir.join("a"),
        &["--listen", "127.0.0.1:0"],
    );
    let a = appliance.addr.clone().unwrap();
    // An unknown scenario: wrong state (4).
    let (code, _, err) = run(&["scenario", "status", "nosuch", "--engine", &a, "--certs", c]);
    assert_eq!(code, Some(4), "{err}");
    let (code, _, err) = run(&[
        "scenario",
        "switchover",
        "nosuch",
        "--engine",
        &a,
        "--certs",
        c,
    ]);
    assert_eq!(code, Some(4), "{err}");
    // An operator certificate from another CA: refused, and the message says why.
    let other = dir.join("other-certs");
    let (code, _, err) = run(&["cert", "ca", "--dir", other.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    run(&["cert", "operator", "--dir", other.to_str().unwrap()]);
    // Trust the engine's CA but present the other CA's operator certificate.
    std::fs::copy(certs.join("ca.pem"), other.join("ca.pem")).unwrap();
    let (code, _, err) = run(&[
        "scenario",
        "status",
        "--engine",
        &a,
        "--certs",
        other.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("certificate"), "{err}");
    // Status of all scenarios on a fresh engine: none, exit 0.
    let (code, out, err) = run(&["scenario", "status", "--engine", &a, "--certs", c, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["scenarios"].as_array().map(Vec::len), Some(0), "{v:#}");
}

/// The appliance engine killed mid-replication and restarted: it resumes its
/// scenario from its data directory, and the master's journal brings it up to
/// date with no resynchronisation.
#[test]
fn appliance_killed_and_restarted_resumes_without_resync() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = make_ext4(dir, "master", 96);
    let master = EngineProc::start(
        &certs,
        "master",
        &dir.join("m"),
        &["--listen", "127.0.0.1:0"],
    );
    let mut appliance = EngineProc::start(
        &certs,
        "appliance",
        &dir.join("a"),
        &["--listen", "127.0.0.1:0"],
    );
    let a = appliance.addr.clone().unwrap();
    let proxy = Proxy::start(master.addr.clone().unwrap());
    let marker = dir.join("app-step-ran");
    let file = scenario(
        dir,
        "app",
        &img,
        proxy.port,
        appliance.port(),
        false,
        &marker,
    );
    rha_ok(
        &certs,
        &[
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--timeout-secs",
            "120",
        ],
    );
    debugfs_write(&img, dir, "before.bin", 1024, 51);
    std::thread::sleep(std::time::Duration::from_millis(300));
    appliance.kill();
    // Written while the appliance is down: journalled on the master.
    debugfs_write(&img, dir, "while-appliance-down.bin", 2048, 52);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let before = proxy.bytes();
    let appliance = EngineProc::start(&certs, "appliance", &dir.join("a"), &["--listen", &a]);
    wait_for(
        &certs,
        &a,
        "app",
        90,
        "the restarted appliance to catch up",
        |s| {
            s["state"] == "replicating"
                && s["replica"]["consistent"] == true
                && s["lag"]["records"] == 0
        },
    );
    let resumed = proxy.bytes() - before;
    assert!(
        resumed < 16 * MIB,
        "{resumed} bytes after the appliance restarted for about 3 MiB of changes on a 96 MiB volume: a full resync happened"
    );
    let log = std::fs::read_to_string(&master.log).unwrap();
    assert!(
        log.contains("no resynchronisation"),
        "the master did not resume from the replica's last applied change:\n{log}"
    );
    switchover_and_check(&certs, &a, "app", &img, &marker);
    drop(appliance);
}
