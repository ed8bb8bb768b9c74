//! Test support for the page-blob tests: Azurite (installed when missing,
//! started once per test binary on 127.0.0.1, in memory, killed when the
//! binary exits) and a fault-injecting HTTP proxy.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod proxy;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rha_azure::{BlobStore, Endpoint, RetryPolicy, StoreConfig};

/// A running Azurite blob service.
#[derive(Debug)]
pub struct Azurite {
    pub port: u16,
    pub pid: i32,
    pub log: PathBuf,
}

static AZURITE: OnceLock<Azurite> = OnceLock::new();
static PID: AtomicI32 = AtomicI32::new(0);
static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The Azurite of this test binary, started on first use.
pub fn azurite() -> &'static Azurite {
    AZURITE.get_or_init(start)
}

/// The workspace's target directory (this binary is `target/<profile>/deps/<name>`).
pub fn target_dir() -> PathBuf {
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(t);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Finds `azurite-blob`, installing it into `target/azurite` with npm
/// (once: a lock file keeps parallel test binaries from racing).
pub fn azurite_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RHA_AZURITE_BLOB") {
        return PathBuf::from(p);
    }
    let dir = target_dir().join("azurite");
    let bin = dir.join("node_modules/.bin/azurite-blob");
    if bin.is_file() {
        return bin;
    }
    if let Some(p) = on_path("azurite-blob") {
        return p;
    }
    std::fs::create_dir_all(&dir).expect("create target/azurite");
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).expect("create the azurite install lock");
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when `lock` closes.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "lock {}", lock_path.display());
    if !bin.is_file() {
        let npm = on_path("npm").unwrap_or_else(|| {
            panic!(
                "the page-blob tests need Azurite, installed with npm, but npm is not on PATH: \
                 install Node.js 20 and npm (apt-get install nodejs npm), run \
                 `npm install --prefix {} azurite`, or set RHA_AZURITE_BLOB to azurite-blob",
                dir.display()
            )
        });
        eprintln!("installing azurite into {} (once)", dir.display());
        let status = Command::new(npm)
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("azurite@3")
            .status()
            .expect("run npm");
        assert!(
            status.success(),
            "`npm install --prefix {} azurite` failed ({status}); is the npm registry reachable?",
            dir.display()
        );
    }
    drop(lock);
    assert!(
        bin.is_file(),
        "npm installed azurite but {} is missing",
        bin.display()
    );
    bin
}

extern "C" fn kill_azurite() {
    let pid = PID.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: plain kill(2) of the child we started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    if let Some(dir) = RUN_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn start() -> Azurite {
    let bin = azurite_binary();
    for _ in 0..3 {
        let port = free_port();
        let run = RUN_DIR
            .get_or_init(|| {
                target_dir()
                    .join("azurite")
                    .join(format!("run-{}", std::process::id()))
            })
            .clone();
        std::fs::create_dir_all(&run).expect("azurite run directory");
        let log = run.join(format!("azurite-{port}.log"));
        let (tx, rx) = std::sync::mpsc::channel();
        let (bin2, run2, log2) = (bin.clone(), run.clone(), log.clone());
        // The thread that starts Azurite lives as long as Azurite does: the
        // child's parent-death signal fires when this thread (the parent) exits.
        std::thread::Builder::new()
            .name("azurite".into())
            .spawn(move || {
                use std::os::unix::process::CommandExt;
                let out = std::fs::File::create(&log2).expect("azurite log");
                let err = out.try_clone().expect("azurite log");
                let mut cmd = Command::new(&bin2);
                cmd.args(["--blobHost", "127.0.0.1", "--blobPort"])
                    .arg(port.to_string())
                    .args([
                        "--inMemoryPersistence",
                        "--skipApiVersionCheck",
                        "--loose",
                        "--disableTelemetry",
                        "--silent",
                        "--blobKeepAliveTimeout",
                        "120",
                    ])
                    .current_dir(&run2)
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err);
                // SAFETY: prctl in the child before exec; async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                match cmd.spawn() {
                    Ok(mut child) => {
                        let _ = tx.send(Ok(child.id() as i32));
                        let _ = child.wait();
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            })
            .expect("spawn the azurite thread");
        let pid = rx
            .recv()
            .expect("the azurite thread answers")
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        PID.store(pid, Ordering::SeqCst);
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(kill_azurite);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                eprintln!(
                    "azurite (pid {pid}) on 127.0.0.1:{port}, log {}",
                    log.display()
                );
                return Azurite { port, pid, log };
            }
            // SAFETY: kill(pid, 0) only checks that the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            if !alive || Instant::now() > deadline {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                kill_azurite();
                if text.contains("EADDRINUSE") {
                    break; // another port
                }
                panic!("azurite did not start on port {port}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("azurite could not find a free port");
}

static CONTAINER: AtomicU32 = AtomicU32::new(0);

/// A container name unique within this test binary's Azurite.
pub fn unique_container(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        CONTAINER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Retries tuned for tests: quick backoff, short attempt timeout.
pub fn test_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 12,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        attempt_timeout: Duration::from_secs(30),
        max_elapsed: Duration::from_secs(60),
    }
}

/// A store on a fresh container of this binary's Azurite (or on `port`, a proxy).
pub fn store_on(port: u16, container: &str) -> BlobStore {
    let mut c = StoreConfig::new(
        Endpoint::Emulator {
            host: "127.0.0.1".into(),
            port,
        },
        container,
    );
    c.retry = test_retry();
    BlobStore::connect(c).expect("connect to azurite")
}

/// A store on a fresh container of this binary's Azurite.
pub fn store(tag: &str) -> BlobStore {
    store_on(azurite().port, &unique_container(tag))
}

/// Logs to stderr when RHA_LOG is set.
pub fn init_log() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if let Ok(filter) = std::env::var("RHA_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}
