//! Shared pieces of the end-to-end tests: certificates, engine processes,
//! ext4 master images, a TCP proxy that can cut the link, and status polling.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn rha() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rha"))
}

/// Runs `rha` with `args` and the test's certificates; returns stdout or panics with stderr.
pub fn rha_ok(certs: &Path, args: &[&str]) -> String {
    let out = rha()
        .args(args)
        .arg("--certs")
        .arg(certs)
        .env("RHA_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rha {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Makes a CA, engine certificates `master` and `appliance` (for 127.0.0.1) and an operator certificate.
pub fn make_certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let run = |args: &[&str]| {
        let out = rha().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let d = certs.to_str().unwrap();
    run(&["cert", "ca", "--dir", d]);
    run(&[
        "cert",
        "engine",
        "--dir",
        d,
        "--name",
        "master",
        "--san",
        "127.0.0.1",
    ]);
    run(&[
        "cert",
        "engine",
        "--dir",
        d,
        "--name",
        "appliance",
        "--san",
        "127.0.0.1",
    ]);
    run(&["cert", "operator", "--dir", d]);
    certs
}

/// An engine process, killed when dropped.
pub struct EngineProc {
    pub child: Child,
    pub addr: Option<String>,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl EngineProc {
    /// Starts `rha engine` with `extra` arguments; waits until it listens.
    pub fn start(certs: &Path, name: &str, data: &Path, extra: &[&str]) -> EngineProc {
        std::fs::create_dir_all(data).unwrap();
        let log = data.with_extension("log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = rha()
            .args([
                "engine",
                "--name",
                name,
                "--as",
                name,
                "--no-qemu",
                "--print-addr",
                "--data",
            ])
            .arg(data)
            .arg("--certs")
            .arg(certs)
            .args(extra)
            .env("RHA_LOG", "info,rha=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(logf))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .map(str::to_owned)
            .filter(|a| a != "nowhere");
        assert!(
            line.starts_with("listening"),
            "engine {name} did not start: {line}; log {}",
            log.display()
        );
        EngineProc {
            child,
            addr,
            data: data.to_path_buf(),
            log,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr
            .as_ref()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master image holding ext4 made from a folder of files.
pub fn make_ext4(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let files = dir.join(format!("{name}-files"));
    std::fs::create_dir_all(files.join("etc")).unwrap();
    std::fs::create_dir_all(files.join("data")).unwrap();
    std::fs::write(files.join("etc/hostname"), "master\n").unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for i in 0..16 {
        let mut buf = vec![0u8; 256 * 1024];
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        std::fs::write(files.join(format!("data/file{i}.bin")), buf).unwrap();
    }
    let img = dir.join(format!("{name}.img"));
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            "-d",
        ])
        .arg(&files)
        .arg(&img)
        .arg(format!("{mib}M"))
        .output()
        .expect("mkfs.ext4 (e2fsprogs) is needed; scripts/test.sh installs it");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Writes a file of `kib` KiB of pseudo-random data into the ext4 image (offline, with debugfs).
pub fn debugfs_write(img: &Path, dir: &Path, name: &str, kib: usize, seed: u64) {
    let src = dir.join(format!("{name}.src"));
    let mut x = seed | 1;
    let mut buf = vec![0u8; kib * 1024];
    for b in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    std::fs::write(&src, buf).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} /data/{name}", src.display()))
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `[[volumes]]` (one system volume, `image`), `[sync]`, `[journal]`,
/// `[capture]` (rescan every 200 ms) and `[is_alive]` (1 s, 3 s) tables of
/// the test scenarios.
pub fn test_volume_and_sync(image: &Path) -> String {
    format!(
        r#"[[volumes]]
id = "/"
system = true
path = "{image}"

[sync]
method = "block"

[journal]
directory = "journal"
max_size_mb = 256
fsync = "interval"
fsync_interval_ms = 50

[capture]
method = "rescan"
rescan_interval_ms = 200

[is_alive]
interval_secs = 1
timeout_secs = 3
"#,
        image = image.display()
    )
}

/// A scenario file for a master image and the two engines.
#[allow(clippy::too_many_arguments)]
pub fn scenario(
    dir: &Path,
    name: &str,
    image: &Path,
    master_port: u16,
    appliance_port: u16,
    nat: bool,
    step_marker: &Path,
) -> PathBuf {
    let text = format!(
        r#"name = "{name}"
product = "ha"
run_after_reboot = true

[master]
host = "127.0.0.1"
port = {master_port}
os = "linux"
nat = {nat}

[replica.local]
appliance = "127.0.0.1"
port = {appliance_port}
data_dir = "replicas/{name}"

{volume_and_sync}
[switchover]
mode = "manual"
wait_for_journal = true

[switchover.disable_master_network]
program = "touch"
args = ["{marker}"]

[vm]
name = "{name}-vm"
cpus = 1
memory_mb = 512
"#,
        volume_and_sync = test_volume_and_sync(image),
        marker = step_marker.display(),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// The scenario's status on an engine, as JSON.
pub fn status(certs: &Path, engine: &str, name: &str) -> serde_json::Value {
    let out = rha_ok(
        certs,
        &["scenario", "status", name, "--engine", engine, "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["scenarios"][0].clone()
}

/// Polls until `f` holds, or panics after `secs` with the last status.
pub fn wait_for(
    certs: &Path,
    engine: &str,
    name: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let s = status(certs, engine, name);
        if f(&s) {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// qemu-img compare of a raw master image and a VHD replica.
pub fn qemu_compare(master: &Path, replica: &Path) -> (bool, String) {
    qemu_compare_as(master.as_os_str(), "raw", replica.as_os_str(), "vpc")
}

/// qemu-img compare of `a` (format `fa`) and `b` (format `fb`), each a file
/// or a URL such as `nbd://...`: whether they are equal, and what it printed.
pub fn qemu_compare_as(
    a: &std::ffi::OsStr,
    fa: &str,
    b: &std::ffi::OsStr,
    fb: &str,
) -> (bool, String) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// e2fsck -fn on an image: (clean, output).
pub fn e2fsck(img: &Path) -> (bool, String) {
    let out = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A TCP proxy that forwards to `target`, counts bytes, and can cut every connection.
pub struct Proxy {
    pub port: u16,
    pub bytes: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    /// Cut automatically once this many bytes went through (0 = never).
    pub cut_at: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let cut_at = Arc::new(AtomicU64::new(0));
        let p = Proxy {
            port,
            bytes: bytes.clone(),
            cut: cut.clone(),
            conns: conns.clone(),
            cut_at: cut_at.clone(),
        };
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(c) = c else { continue };
                let Ok(s) = TcpStream::connect(&target) else {
                    continue;
                };
                conns.lock().unwrap().push(c.try_clone().unwrap());
                conns.lock().unwrap().push(s.try_clone().unwrap());
                for (mut a, mut b) in [(c.try_clone().unwrap(), s.try_clone().unwrap()), (s, c)] {
                    let bytes = bytes.clone();
                    let conns = conns.clone();
                    let cut_at = cut_at.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if b.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            let total = bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                            let at = cut_at.load(Ordering::Relaxed);
                            if at != 0 && total >= at {
                                cut_at.store(0, Ordering::Relaxed);
                                for c in conns.lock().unwrap().drain(..) {
                                    let _ = c.shutdown(Shutdown::Both);
                                }
                            }
                        }
                        let _ = a.shutdown(Shutdown::Both);
                        let _ = b.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        let _ = &p.cut;
        p
    }

    /// Cuts every open connection now (new ones are still accepted).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
