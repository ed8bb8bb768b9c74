//! The local cloud provider: the shared `CloudProvider` suite without QEMU
//! (launch definitions only) and, when `qemu-system-x86_64` is on PATH, with
//! real QEMU VMs; the launch definition; disks finalised as fixed VHDs.
//!
//! The tests that need QEMU print why and return when it is absent
//! (`scripts/test.sh` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rha_core::cloud::{CloudError, CloudProvider, DiskRef, LocalProvider, Qemu, VmSpec, VmState};
use rha_core::conformance::cloud::run_cloud_suite;
use rha_core::scenario::{HyperVGeneration, Network, Os, Scenario, Template};
use rha_core::volume::vhd::read_footer;
use rha_core::volume::VhdVolume;
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;
const SYSTEM_SIZE: u64 = 16 * MIB;
const DATA_SIZE: u64 = 8 * MIB;

/// A raw system disk (ext4 when `mkfs.ext4` is available) and a fixed-VHD data disk.
struct Disks {
    _dir: TempDir,
    raw: PathBuf,
    vhd: PathBuf,
}

fn make_disks() -> Disks {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk-0.img");
    let f = fs::File::create(&raw).unwrap();
    f.set_len(SYSTEM_SIZE).unwrap();
    drop(f);
    let content = dir.path().join("content");
    fs::create_dir(&content).unwrap();
    fs::write(content.join("hello.txt"), "replicated by rha\n").unwrap();
    match Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&raw)
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "mkfs.ext4 failed, the system disk stays zeros: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("mkfs.ext4 is not available ({e}), the system disk stays zeros"),
    }
    let vhd = dir.path().join("disk-1.vhd");
    VhdVolume::create(&vhd, DATA_SIZE).unwrap();
    Disks {
        _dir: dir,
        raw,
        vhd,
    }
}

fn spec(name: &str, disks: &Disks, generation: HyperVGeneration, os: Os) -> VmSpec {
    VmSpec {
        name: name.to_owned(),
        cpus: 1,
        memory_mb: 128,
        size: None,
        generation,
        os,
        disks: vec![
            DiskRef {
                name: "/".into(),
                location: disks.raw.display().to_string(),
                size: SYSTEM_SIZE,
                system: true,
            },
            DiskRef {
                name: "/data".into(),
                location: disks.vhd.display().to_string(),
                size: DATA_SIZE,
                system: false,
            },
        ],
        network: Network::default(),
        recovery_point: Some("seq 42 (test)".into()),
    }
}

/// True when QEMU can run; otherwise says why the test is skipped.
fn have_qemu(test: &str) -> bool {
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            println!(
                "skipping {test}: `qemu-system-x86_64 --version` failed: {:?}",
                o.status
            );
            false
        }
        Err(e) => {
            println!(
                "skipping {test}: qemu-system-x86_64 is not on PATH ({e}); scripts/test.sh installs it"
            );
            false
        }
    }
}

/// Kills every QEMU a provider directory records when dropped, so a failing
/// test leaves no VM running.
struct KillVms(PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(&self.0) else {
            return;
        };
        for e in entries.flatten() {
            let pid_file = e.path().join("qemu.pid");
            let Ok(pid) = fs::read_to_string(&pid_file) else {
                continue;
            };
            let Ok(pid) = pid.trim().parse::<i32>() else {
                continue;
            };
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*pid_file.to_string_lossy()) {
                eprintln!("killing leftover QEMU {pid} ({})", pid_file.display());
                // SAFETY: kills the QEMU this test started (its command line names the pid file).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn qemu_img_format(path: &Path) -> Option<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-f", "vpc", "--output=json"])
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "qemu-img info -f vpc {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(info["format"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn suite_without_qemu() {
    let disks = make_disks();
    let vms = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(vms.path()).with_qemu(Qemu::Never);
    run_cloud_suite(
        &provider,
        &|name| spec(name, &disks, HyperVGeneration::V2, Os::Linux),
        false,
    )
    .await;
}

#[tokio::test]
async fn suite_with_qemu() {
    if !have_qemu("suite_with_qemu") {
        return;
    }
    let disks = make_disks();
    let vms = tempfile::tempdir().unwrap();
    let _kill = KillVms(vms.path().to_path_buf());
    let provider = LocalProvider::new(vms.path()).with_qemu(Qemu::Auto);
    // Generation 2: UEFI when OVMF is installed (scripts/test.sh installs it).
    run_cloud_suite(
        &provider,
        &|name| spec(name, &disks, HyperVGeneration::V2, Os::Linux),
        true,
    )
    .await;
}

#[tokio::test]
async fn launch_definition_and_finalised_disks() {
    let disks = make_disks();
    let raw_len = fs::metadata(&disks.raw).unwrap().len();
    assert!(read_footer(&disks.raw).unwrap().is_none());
    let vms = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(vms.path()).with_qemu(Qemu::Never);
    let vm = spec("web-01", &disks, HyperVGeneration::V1, Os::Linux);

    let warnings = provider.verify(&vm).await.unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("raw image")),
        "verify warns that the raw disk gets a footer: {warnings:?}"
    );
    assert!(
        read_footer(&disks.raw).unwrap().is_none(),
        "verify changes nothing"
    );

    let info = provider.create_vm(&vm).await.unwrap();
    assert_eq!(info.id.to_string(), "local:web-01");
    assert_eq!(info.state, VmState::Stopped);
    assert!(info.details["warnings"].contains("Qemu::Never"), "{info:?}");

    // The raw disk was finalised in place: same data, a footer appended.
    assert_eq!(fs::metadata(&disks.raw).unwrap().len(), raw_len + 512);
    let footer = read_footer(&disks.raw).unwrap().expect("a VHD footer");
    assert_eq!(footer.current_size, raw_len);
    // The VHD disk was left as it was.
    assert_eq!(fs::metadata(&disks.vhd).unwrap().len(), DATA_SIZE + 512);
    for disk in [&disks.raw, &disks.vhd] {
        match qemu_img_format(disk) {
            Some(format) => assert_eq!(format, "vpc", "{}", disk.display()),
            None => println!(
                "qemu-img is not available: format of {} not checked",
                disk.display()
            ),
        }
    }

    // launch.sh: executable, runs QEMU with every disk.
    let vm_dir = vms.path().join("web-01");
    let script_path = PathBuf::from(&info.details["launch"]);
    assert_eq!(script_path, vm_dir.join("launch.sh"));
    let mode = fs::metadata(&script_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "launch.sh is executable: {mode:o}");
    let script = fs::read_to_string(&script_path).unwrap();
    assert!(script.starts_with("#!/bin/sh\n"), "{script}");
    assert!(script.contains("exec qemu-system-x86_64"), "{script}");
    for disk in [&disks.raw, &disks.vhd] {
        assert!(
            script.contains(&disk.display().to_string()),
            "launch.sh mentions {}:\n{script}",
            disk.display()
        );
    }
    let sh = Command::new("sh")
        .arg("-n")
        .arg(&script_path)
        .status()
        .unwrap();
    assert!(sh.success(), "launch.sh is valid shell:\n{script}");

    // launch.json: the definition, the system disk first.
    let def: serde_json::Value =
        serde_json::from_slice(&fs::read(vm_dir.join("launch.json")).unwrap()).unwrap();
    assert_eq!(def["name"], "web-01");
    assert_eq!(def["cpus"], 1);
    assert_eq!(def["memory_mb"], 128);
    assert_eq!(def["firmware"], "bios");
    assert_eq!(def["machine"], "pc");
    assert_eq!(def["network"]["mode"], "user");
    assert_eq!(def["disks"][0]["system"], true);
    assert_eq!(def["disks"][0]["bootindex"], 0);
    assert_eq!(def["disks"][0]["format"], "vpc");
    assert_eq!(def["disks"][0]["path"], disks.raw.display().to_string());
    assert_eq!(def["disks"][1]["path"], disks.vhd.display().to_string());
    let argv: Vec<&str> = def["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for expected in ["-daemonize", "-pidfile", "-serial", "-monitor", "-nic"] {
        assert!(argv.contains(&expected), "argv has {expected}: {argv:?}");
    }
    assert!(
        argv.contains(&"virtio-blk-pci,drive=disk0,bootindex=0"),
        "{argv:?}"
    );
    assert!(argv.contains(&"user,model=virtio-net-pci"), "{argv:?}");

    // A second create sees a fixed VHD: nothing more is appended.
    provider.delete_vm(&info.id).await.unwrap();
    assert!(!vm_dir.exists(), "the VM directory is removed");
    provider.create_vm(&vm).await.unwrap();
    assert_eq!(fs::metadata(&disks.raw).unwrap().len(), raw_len + 512);
    provider.delete_vm(&info.id).await.unwrap();
    assert!(disks.raw.is_file() && disks.vhd.is_file(), "disks are kept");
}

#[tokio::test]
async fn verify_rejects_and_warns() {
    let disks = make_disks();
    let vms = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(vms.path()).with_qemu(Qemu::Never);
    let good = spec("vm", &disks, HyperVGeneration::V2, Os::Linux);

    let invalid = |mutate: &dyn Fn(&mut VmSpec)| {
        let mut s = good.clone();
        mutate(&mut s);
        s
    };
    for (what, s) in [
        ("a bad name", invalid(&|s| s.name = "a/b".into())),
        ("too little memory", invalid(&|s| s.memory_mb = 32)),
        ("two system disks", invalid(&|s| s.disks[1].system = true)),
        ("no disks", invalid(&|s| s.disks.clear())),
        (
            "the same file twice",
            invalid(&|s| s.disks[1].location = s.disks[0].location.clone()),
        ),
        (
            "a bad bridge name",
            invalid(&|s| s.network.virtual_network = Some("br0,x".into())),
        ),
    ] {
        assert!(
            matches!(provider.verify(&s).await, Err(CloudError::Invalid(_))),
            "verify rejects {what}"
        );
    }
    for (what, s) in [
        (
            "a disk smaller than its volume",
            invalid(&|s| s.disks[1].size = 64 * MIB),
        ),
        (
            "a blob URL",
            invalid(&|s| s.disks[0].location = "https://x.blob.core.windows.net/c/d.vhd".into()),
        ),
    ] {
        assert!(
            matches!(provider.verify(&s).await, Err(CloudError::Disk { .. })),
            "verify rejects {what}"
        );
    }
    // A dynamic VHD cannot become a fixed one.
    let dynamic = vms.path().join("dynamic.vhd");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "vpc", "-o", "subformat=dynamic"])
        .arg(&dynamic)
        .arg("8M")
        .status();
    if made.is_ok_and(|s| s.success()) {
        let s = invalid(&|s| s.disks[1].location = dynamic.display().to_string());
        match provider.verify(&s).await {
            Err(CloudError::Disk { reason, .. }) => println!("dynamic VHD: {reason}"),
            other => panic!("verify rejects a dynamic VHD, got {other:?}"),
        }
    }

    let s = invalid(&|s| s.network.virtual_network = Some("rhanobr0".into()));
    let warnings = provider.verify(&s).await.unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("rhanobr0") && w.contains("does not exist")),
        "{warnings:?}"
    );
    assert!(
        !Path::new("/sys/class/net/rhanobr0").exists(),
        "the provider never creates host interfaces"
    );
}

#[tokio::test]
async fn qemu_vms_windows_and_killed() {
    if !have_qemu("qemu_vms_windows_and_killed") {
        return;
    }
    let disks = make_disks();
    let vms = tempfile::tempdir().unwrap();
    let _kill = KillVms(vms.path().to_path_buf());
    let provider = LocalProvider::new(vms.path());

    // A Windows guest gets AHCI disks and an e1000e adapter; QEMU accepts them.
    let win = spec("win", &disks, HyperVGeneration::V1, Os::Windows);
    let info = provider.create_vm(&win).await.unwrap();
    assert_eq!(info.state, VmState::Running, "{info:?}");
    let pid: i32 = info.details["pid"].parse().unwrap();
    let def = fs::read_to_string(vms.path().join("win/launch.json")).unwrap();
    assert!(def.contains("ahci") && def.contains("e1000e"), "{def}");

    // Killed behind the provider's back: not Running any more.
    // SAFETY: kills the QEMU this test just started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let state = loop {
        let state = provider.vm_state(&info.id).await.unwrap();
        if state != VmState::Running || std::time::Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(matches!(state, VmState::Failed(_)), "{state}");
    provider.delete_vm(&info.id).await.unwrap();

    // Generation 2 boots with UEFI when OVMF is installed.
    let uefi = spec("uefi", &disks, HyperVGeneration::V2, Os::Linux);
    let info = provider.create_vm(&uefi).await.unwrap();
    assert_eq!(info.state, VmState::Running, "{info:?}");
    if Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists() {
        assert_eq!(info.details["firmware"], "uefi", "{info:?}");
    }
    provider.stop_vm(&info.id).await.unwrap();
    assert_eq!(provider.vm_state(&info.id).await.unwrap(), VmState::Stopped);
    provider.delete_vm(&info.id).await.unwrap();
    assert!(disks.raw.is_file() && disks.vhd.is_file(), "disks are kept");
}

#[test]
fn spec_from_scenario() {
    let mut s = Scenario::template(Template::Local);
    s.vm.cpus = None;
    s.vm.memory_mb = None;
    s.network.virtual_network = Some("br0".into());
    let disk = |name: &str| DiskRef {
        name: name.into(),
        location: format!("/replica/{}.vhd", name.replace('/', "_")),
        size: MIB,
        system: false,
    };
    // Given out of order: put back in scenario volume order, `/` marked as system.
    let vm = VmSpec::from_scenario(&s, vec![disk("/boot"), disk("/")]);
    assert_eq!(vm.name, s.vm.name);
    assert_eq!((vm.cpus, vm.memory_mb), (2, 2048), "defaults");
    assert_eq!(vm.os, s.master.os);
    assert_eq!(vm.generation, s.vm.generation);
    assert_eq!(vm.network.virtual_network.as_deref(), Some("br0"));
    let names: Vec<&str> = vm.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["/", "/boot"]);
    assert_eq!(vm.system_disk().map(|d| d.name.as_str()), Some("/"));

    let json = serde_json::to_value(&vm).unwrap();
    assert_eq!(json["disks"][0]["system"], true);
    assert_eq!(serde_json::to_value(VmState::Running).unwrap(), "running");
    assert_eq!(VmState::Failed("x".into()).to_string(), "failed: x");
    assert_eq!(
        serde_json::to_value(LocalProvider::id_of("vm")).unwrap(),
        "local:vm"
    );
}
