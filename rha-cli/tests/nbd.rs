//! `rha nbd serve` and `rha engine --nbd-listen` with QEMU's tools as the
//! clients: writes through the export are journalled and replayed equal;
//! qemu-io over TLS with the certificates `rha cert` makes; two engines
//! where qemu-io writes into the master's export while it replicates, and
//! the replica VHD equals the master image after switchover; a master
//! without --nbd-listen refuses an `nbd` scenario and says what to add.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rha_core::events::Events;
use rha_core::journal::JournalConfig;
use rha_core::sink::MemSink;
use rha_core::source::{ChangeSource, TrackedSet};
use rha_core::sync::{replicate_until_idle, LocalPeer};
use rha_core::volume::{FileVolume, Volume};

const MIB: u64 = 1 << 20;

/// `rha nbd serve` running; killed when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(image: &Path, extra: &[&str]) -> Serve {
        let mut child = rha()
            .args(["nbd", "serve"])
            .arg(image)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RHA_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("nbd://127.0.0.1:"),
            "no URL printed: {line:?}"
        );
        Serve {
            child,
            url: line.trim().to_owned(),
        }
    }

    fn port(&self) -> u16 {
        let rest = self.url.strip_prefix("nbd://127.0.0.1:").unwrap();
        rest.split('/').next().unwrap().parse().unwrap()
    }

    /// SIGTERM, and the exit status and stderr.
    fn terminate(mut self) -> (bool, String) {
        unsafe_kill(self.child.id(), libc::SIGTERM);
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn qemu_io(args: &[&str], cmds: &[String]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(args);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.output().expect("qemu-io (qemu-utils) is needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("failed"), text)
}

fn qemu_compare_raw(a: &str, b: &str) -> (bool, String) {
    qemu_compare_as(a.as_ref(), "raw", b.as_ref(), "raw")
}

/// Random sector-aligned pattern writes, zeroes and discards over `size` bytes.
fn random_commands(seed: u64, n: usize, size: u64) -> Vec<String> {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let len = (1 + next() % 1024) * 512;
            let off = next() % ((size - len) / 512 + 1) * 512;
            match i % 5 {
                3 => format!("write -z {off} {len}"),
                4 => format!("discard {off} {len}"),
                _ => format!("write -P {} {off} {len}", next() % 255 + 1),
            }
        })
        .chain(["flush".to_string()])
        .collect()
}

#[test]
fn nbd_serve_journals_every_write_and_closes_the_journal_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let image = dir.join("vm-disk.img");
    let data: Vec<u8> = (0..16 * MIB).map(|i| (i / 4096 % 251) as u8).collect();
    std::fs::write(&image, &data).unwrap();
    let before = dir.join("before.img");
    std::fs::copy(&image, &before).unwrap();
    let journal = dir.join("j");
    let serve = Serve::start(&image, &["--journal", journal.to_str().unwrap()]);
    assert!(
        serve.url.ends_with("/vm-disk"),
        "export named after the stem: {}",
        serve.url
    );
    let (ok, out) = qemu_io(
        &["-f", "raw", &serve.url],
        &random_commands(7, 80, 16 * MIB),
    );
    assert!(ok, "{out}");
    let (ok, out) = qemu_io(
        &["-f", "raw", &serve.url],
        &["write -P 0x42 0 64k".into(), "read -P 0x42 0 64k".into()],
    );
    assert!(ok, "{out}");
    let (same, why) = qemu_compare_raw(image.to_str().unwrap(), &serve.url);
    assert!(same, "{why}");
    let (ok, stderr) = serve.terminate();
    assert!(ok && stderr.contains("journal closed cleanly"), "{stderr}");

    // The journal opens clean, and its records replayed onto the image as
    // it was before give the image.
    let v: Arc<dyn Volume> = Arc::new(FileVolume::open(&image).unwrap());
    let (set, recovery) =
        TrackedSet::open(&journal, JournalConfig::default(), vec![v], Events::new()).unwrap();
    assert!(
        recovery.clean_shutdown && !recovery.needs_resync,
        "{recovery:?}"
    );
    assert!(set.last_seq() >= 80);
    let replica: Arc<dyn Volume> = Arc::new(FileVolume::open(&before).unwrap());
    let sink = MemSink::with_volumes(vec![replica.clone()]);
    let at = replicate_until_idle(
        &set,
        &mut LocalPeer::new(&sink),
        4 << 20,
        usize::MAX,
        &Events::new(),
    )
    .unwrap();
    assert_eq!(at, set.last_seq());
    replica.flush().unwrap();
    let (same, why) = qemu_compare_raw(image.to_str().unwrap(), before.to_str().unwrap());
    assert!(same, "replayed journal differs: {why}");
    // The default journal lives beside the image.
    let other = dir.join("other.img");
    std::fs::write(&other, vec![0u8; MIB as usize]).unwrap();
    let s2 = Serve::start(&other, &[]);
    assert!(s2.terminate().0);
    assert!(dir.join("other.img.journal").join("state").exists());
}

#[test]
fn qemu_io_over_tls_with_rha_certificates() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let image = dir.join("secure.img");
    std::fs::write(&image, vec![0u8; 8 * MIB as usize]).unwrap();
    let serve = Serve::start(
        &image,
        &["--certs", certs.to_str().unwrap(), "--as", "master"],
    );
    // QEMU's x509 credentials directory: the CA, and a client certificate
    // of the same CA (the operator's).
    let q = dir.join("qemu-tls");
    std::fs::create_dir_all(&q).unwrap();
    std::fs::copy(certs.join("ca.pem"), q.join("ca-cert.pem")).unwrap();
    std::fs::copy(certs.join("operator.pem"), q.join("client-cert.pem")).unwrap();
    std::fs::copy(certs.join("operator.key"), q.join("client-key.pem")).unwrap();
    std::fs::set_permissions(
        q.join("client-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let object = format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", q.display());
    let opts = format!(
        "driver=nbd,host=127.0.0.1,port={},export=secure,tls-creds=tls0",
        serve.port()
    );
    let (ok, out) = qemu_io(
        &["--object", &object, "--image-opts", &opts],
        &[
            "write -P 0x5a 0 1M".into(),
            "write -z 1M 1M".into(),
            "flush".into(),
            "read -P 0x5a 0 1M".into(),
            "read -P 0 1M 1M".into(),
        ],
    );
    assert!(ok, "qemu-io over TLS: {out}");
    // Without TLS the server refuses (TLS is required).
    let (ok, out) = qemu_io(&["-f", "raw", &serve.url], &["read 0 4k".into()]);
    assert!(!ok, "a plaintext client was served: {out}");
    // A client without a certificate is refused by the mutual TLS handshake.
    let q2 = dir.join("qemu-tls-nocert");
    std::fs::create_dir_all(&q2).unwrap();
    std::fs::copy(certs.join("ca.pem"), q2.join("ca-cert.pem")).unwrap();
    let object2 = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        q2.display()
    );
    let (ok, out) = qemu_io(
        &["--object", &object2, "--image-opts", &opts],
        &["read 0 4k".into()],
    );
    assert!(!ok, "a client without a certificate was served: {out}");
    let (ok, stderr) = serve.terminate();
    assert!(ok, "{stderr}");
    let data = std::fs::read(&image).unwrap();
    assert!(data[..MIB as usize].iter().all(|b| *b == 0x5a));
}

/// A scenario file whose capture method is `nbd`.
fn nbd_scenario(dir: &Path, name: &str, image: &Path, mp: u16, ap: u16) -> std::path::PathBuf {
    let marker = dir.join(format!("{name}-step"));
    let p = scenario(dir, name, image, mp, ap, false, &marker);
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "method = \"rescan\"\nrescan_interval_ms = 200",
        "method = \"nbd\"",
    );
    assert!(text.contains("method = \"nbd\""));
    std::fs::write(&p, text).unwrap();
    p
}

/// A master engine serving NBD exports and an appliance, both under `dir`
/// (`m`, `a`), running `nbd` scenario `name` of `image` until the replica
/// is consistent; returns them and the volume's export URL.
fn nbd_pair(
    dir: &Path,
    certs: &Path,
    name: &str,
    image: &Path,
) -> (EngineProc, EngineProc, String) {
    let master = EngineProc::start(
        certs,
        "master",
        &dir.join("m"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--nbd-listen",
            "127.0.0.1:0",
            "--nbd-plaintext",
        ],
    );
    let appliance = EngineProc::start(
        certs,
        "appliance",
        &dir.join("a"),
        &["--listen", "127.0.0.1:0"],
    );
    let file = nbd_scenario(dir, name, image, master.port(), appliance.port());
    rha_ok(
        certs,
        &[
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--timeout-secs",
            "120",
        ],
    );
    let nbd = wait_file(&dir.join("m/nbd.addr"), 10);
    let stem = image.file_stem().unwrap().to_str().unwrap();
    let url = format!("nbd://{nbd}/{name}/{stem}");
    (master, appliance, url)
}

fn wait_file(path: &Path, secs: u64) -> String {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return s.trim().to_owned();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn engine_nbd_export_is_replicated_and_the_replica_equals_the_master() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = dir.join("system.img");
    let base: Vec<u8> = (0..32 * MIB).map(|i| (i / 512 % 7) as u8).collect();
    std::fs::write(&img, &base).unwrap();
    let (master, appliance, url) = nbd_pair(dir, &certs, "nbde2e", &img);
    let a = appliance.addr.clone().unwrap();
    let s = status(&certs, &a, "nbde2e");
    assert_eq!(s["replica"]["consistent"], true, "{s:#}");
    // The guest writes while the scenario replicates.
    let (ok, out) = qemu_io(&["-f", "raw", &url], &random_commands(99, 150, 32 * MIB));
    assert!(ok, "{out}");
    let (ok, out) = qemu_io(
        &["-f", "raw", &url],
        &["write -P 0x77 30M 1M".into(), "flush".into()],
    );
    assert!(ok, "{out}");
    let m = status(&certs, &master.addr.clone().unwrap(), "nbde2e");
    assert_eq!(m["nbd_exports"][0], "nbde2e/system", "{m:#}");
    wait_for(
        &certs,
        &a,
        "nbde2e",
        60,
        "the guest's writes to replicate",
        |s| {
            s["changed_bytes"].as_u64().unwrap_or(0) > MIB
                && s["lag"]["records"].as_u64() == Some(0)
        },
    );
    let out = rha_ok(
        &certs,
        &["scenario", "switchover", "nbde2e", "--engine", &a, "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["consistent"], true, "{report:#}");
    let disk = report["disks"][0].as_str().unwrap().to_owned();
    let (same, why) = qemu_compare(&img, Path::new(&disk));
    assert!(same, "replica differs from the master: {why}");
    let data = std::fs::read(&img).unwrap();
    assert!(data[30 * MIB as usize..31 * MIB as usize]
        .iter()
        .all(|b| *b == 0x77));
    assert_ne!(
        data, base,
        "the guest's writes did not reach the master image"
    );
}

#[test]
fn nbd_scenario_without_nbd_listen_is_refused_with_what_to_add() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = dir.join("system.img");
    std::fs::write(&img, vec![0u8; 4 * MIB as usize]).unwrap();
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
    let file = nbd_scenario(dir, "nolisten", &img, master.port(), appliance.port());
    rha_ok(
        &certs,
        &["scenario", "run", file.to_str().unwrap(), "--detach"],
    );
    let s = wait_for(&certs, &a, "nolisten", 30, "the master's refusal", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("--nbd-listen"))
    });
    assert!(
        s["last_error"]
            .as_str()
            .unwrap()
            .contains("capture method `nbd`"),
        "{s:#}"
    );
}

#[test]
fn engine_sigterm_closes_an_nbd_scenarios_journal_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let certs = make_certs(dir);
    let img = dir.join("data.img");
    std::fs::write(&img, vec![0u8; 8 * MIB as usize]).unwrap();
    let (mut master, _appliance, url) = nbd_pair(dir, &certs, "nbdterm", &img);
    let (ok, out) = qemu_io(&["-f", "raw", &url], &random_commands(5, 40, 8 * MIB));
    assert!(ok, "{out}");
    // A planned stop of the master (before a reboot, say)...
    unsafe_kill(master.child.id(), libc::SIGTERM);
    let status = master.child.wait().unwrap();
    assert!(status.success(), "engine exited with {status}");
    let log = std::fs::read_to_string(&master.log).unwrap();
    assert!(log.contains("journal closed cleanly"), "{log}");
    // ...leaves a journal that opens clean: a reboot now resyncs nothing.
    let journal = find_dir_with(&dir.join("m"), "changelog").expect("the scenario's journal");
    let v: Arc<dyn Volume> = Arc::new(FileVolume::open(&img).unwrap());
    let (set, recovery) =
        TrackedSet::open(&journal, JournalConfig::default(), vec![v], Events::new()).unwrap();
    assert!(
        recovery.clean_shutdown && !recovery.needs_resync,
        "{recovery:?}"
    );
    assert!(set.last_seq() >= 40, "{}", set.last_seq());
    set.close().unwrap();
}

/// The first directory under `root` that holds a file named `name`.
fn find_dir_with(root: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if p.join(name).is_file() {
                return Some(p);
            }
            if let Some(found) = find_dir_with(&p, name) {
                return Some(found);
            }
        }
    }
    None
}
