//! `rha demo`: the whole product on local files, in one process, no cloud
//! account needed.
//!
//! 1. Makes certificates in `DIR/certs` (a CA, engine certificates `master`
//!    and `appliance` for 127.0.0.1, an operator certificate).
//! 2. Makes the master's disks as raw images in `DIR/master`: a "system"
//!    disk holding a real ext4 filesystem (built with `mkfs.ext4 -d` from a
//!    folder of files) and a "data" disk.
//! 3. Starts two engines on 127.0.0.1 over mutual TLS, each with its own
//!    data directory under `DIR`. The scenario's capture method is
//!    `tracked`: this program gives the master engine a
//!    [`TrackedSet`] ([`Engine::provide_source`]) and writes through it, so
//!    every write is journalled as it happens.
//! 4. As the operator, over TLS, runs the scenario on the appliance engine,
//!    follows the synchronisation while writing to both disks, keeps writing
//!    while replicating, waits until the replica has every write (lag 0),
//!    and switches over. The replica VHDs stay in `DIR/replica`.
//! 5. Checks each master image against its replica with
//!    `qemu-img compare -f raw -F vpc`, reads each replica with
//!    `qemu-img info -f vpc` and the system replica's filesystem with
//!    `e2fsck -fn` (each skipped with a note when the tool is missing), and
//!    writes `DIR/summary.json`: `master` (raw images) and `replica` (fixed
//!    VHDs), in the same order, with the VM, the recovery point and statistics.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rha_core::cloud::local::Qemu;
use rha_core::events::{Event, Events};
use rha_core::journal::JournalConfig;
use rha_core::scenario::Scenario;
use rha_core::source::{ChangeSource, TrackedSet, TrackedVolume};
use rha_core::volume::{open_volume, FileVolume, Volume};
use rha_transport::cert::{self, LeafKind};
use rha_transport::connect::Security;
use rha_transport::engine::{Client, ControlRequest, Engine, EngineConfig};
use rha_transport::tls::{Tls, TlsSettings};
use serde_json::{json, Value};

use crate::Method;

/// Options of `rha demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Work directory for the master images, certificates, engine data, the
    /// replica VHDs and summary.json. A directory an earlier demo made is
    /// emptied first; any other existing directory is refused.
    #[arg(
        long = "workdir",
        visible_alias = "dir",
        value_name = "DIR",
        default_value = "rha-demo"
    )]
    workdir: PathBuf,
    /// Size of the system disk (ext4) in MiB.
    #[arg(long, visible_alias = "size-mib", default_value_t = 64)]
    system_mib: u64,
    /// Size of the data disk in MiB.
    #[arg(long, default_value_t = 16)]
    data_mib: u64,
    /// Synchronisation method.
    #[arg(long, value_enum, default_value_t = Method::Block)]
    method: Method,
    /// Writes made to the master once the replica is consistent (the writes
    /// made while it synchronises come on top).
    #[arg(long, default_value_t = 300)]
    writes: u64,
    /// Start the replica VM with QEMU at switchover when qemu-system-x86_64
    /// is installed (by default only its launch definition is written).
    #[arg(long)]
    start_vm: bool,
    /// Give up when one phase (synchronisation, catching up, switchover)
    /// takes longer than this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

const SCENARIO: &str = "demo";
const MARKER: &str = ".rha-demo";
const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
/// How often the operator's status requests poll the appliance.
const POLL: Duration = Duration::from_millis(100);

/// The master's disks as the demo made them.
#[derive(Debug)]
struct MasterDisks {
    /// The raw images, system disk first.
    images: Vec<PathBuf>,
    /// The scenario's volume ids, in the same order.
    ids: Vec<&'static str>,
    /// What the system disk holds.
    filesystem: &'static str,
    /// Whether the system disk holds ext4 (so e2fsck applies).
    ext4: bool,
    /// Blocks of the system disk the live writes may rewrite: those of
    /// `/blob.bin`, so the filesystem stays clean.
    blob_blocks: Vec<u64>,
}

/// Counters of the writes made to the master.
#[derive(Debug, Default)]
struct WriteCounts {
    /// From the start until the replica was seen consistent.
    during_sync: AtomicU64,
    /// After that.
    while_replicating: AtomicU64,
    /// Writes to the system disk (into `/blob.bin`).
    system_disk: AtomicU64,
    /// Writes (and zeroings) to the data disk.
    data_disk: AtomicU64,
    /// Bytes written or zeroed.
    bytes: AtomicU64,
}

impl WriteCounts {
    /// Counts one write of `n` bytes in `writes`.
    fn add(writes: &AtomicU64, bytes: &AtomicU64, n: u64) {
        writes.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "during_sync": g(&self.during_sync),
            "while_replicating": g(&self.while_replicating),
            "system_disk": g(&self.system_disk),
            "data_disk": g(&self.data_disk),
            "bytes": g(&self.bytes),
        })
    }
}

/// What the engines did, for the checks and the summary.
#[derive(Debug)]
struct Outcome {
    /// The switchover report (VM, recovery point, disks).
    switchover: Value,
    /// The appliance's status just before the switchover.
    status: Value,
    /// The master's statistics just before the switchover.
    master_stats: Value,
    /// Seconds from `run` until the replica was consistent.
    sync_seconds: f64,
    /// Seconds from the last write until the replica had it.
    catch_up_seconds: f64,
    /// The scenario file.
    scenario_file: PathBuf,
    /// Journal bytes left unacknowledged on the master.
    journal_bytes_left: u64,
}

/// `rha demo`.
pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    if args.system_mib < 16 {
        bail!(
            "--system-mib {} is too small for the demo's ext4 filesystem: use 16 or more",
            args.system_mib
        );
    }
    if args.data_mib < 1 {
        bail!("--data-mib must be at least 1");
    }
    let dir = prepare_dir(&args.workdir)?;
    println!("rha demo in {}", dir.display());
    let certs = make_certs(&dir)?;
    println!(
        "certificates: a CA, engines `master` and `appliance` (127.0.0.1), an operator, in {}",
        certs.display()
    );
    let disks = make_disks(&dir, &args)?;
    println!(
        "master disks (raw images): {} ({}), {} (data)",
        disks.images[0].display(),
        disks.filesystem,
        disks.images[1].display()
    );
    if disks.blob_blocks.is_empty() {
        println!("  note: debugfs was not found, so the live writes go to the data disk only");
    }
    let counts = Arc::new(WriteCounts::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = rt.block_on(replicate(&dir, &certs, &args, &disks, counts.clone()));
    // The engines are shut down; do not wait for ever for their last tasks.
    rt.shutdown_timeout(Duration::from_secs(5));
    let outcome = outcome?;

    let report = &outcome.switchover;
    let replica: Vec<PathBuf> = report["disks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    if replica.len() != disks.images.len() {
        bail!(
            "the switchover reported {} replica disk(s) for {} master disk(s): {report}; please report this as a bug",
            replica.len(),
            disks.images.len()
        );
    }
    let vm_running = report["vm_state"].as_str() == Some("running");
    println!(
        "switched over: VM `{}` ({}) {}; recovery point: sequence {}{}",
        report["vm_name"].as_str().unwrap_or("?"),
        report["vm_id"].as_str().unwrap_or("?"),
        report["vm_state"].as_str().unwrap_or("?"),
        report["recovery_point_seq"],
        if report["consistent"].as_bool() == Some(true) {
            " (consistent)"
        } else {
            " (NOT consistent)"
        }
    );
    println!(
        "the bootable system disk (fixed VHD) is {}",
        replica[0].display()
    );
    for (id, r) in disks.ids.iter().zip(&replica).skip(1) {
        println!("  volume `{id}` (fixed VHD): {}", r.display());
    }
    if let Some(l) = report["details"]["launch"].as_str() {
        println!("  launch definition: {l}");
    }
    if vm_running {
        println!(
            "  the VM keeps running after the demo: stop it before running the demo again (its pid is in the launch definition's directory, qemu.pid)"
        );
    } else if !args.start_vm {
        println!("  QEMU was not started (pass --start-vm to start the VM at switchover)");
    }

    println!("checks:");
    let consistent = report["consistent"].as_bool() == Some(true);
    let mut checks = vec![Check::new(
        "the replica is consistent at the recovery point".into(),
        Some(consistent),
        if consistent { "yes" } else { "no" }.into(),
    )];
    let mut equal = true;
    for (m, r) in disks.images.iter().zip(&replica) {
        let same = same_contents(m, r)?;
        equal &= same;
        checks.push(Check::new(
            format!("rha compares {} with {}", m.display(), r.display()),
            Some(same),
            if same { "equal" } else { "they differ" }.into(),
        ));
        checks.push(qemu_compare(m, r, vm_running));
        checks.push(qemu_info(m, r, vm_running));
    }
    if disks.ext4 {
        checks.push(e2fsck(&replica[0]));
    } else {
        checks.push(Check::new(
            format!("e2fsck -fn {}", replica[0].display()),
            None,
            "skipped: the system disk holds no filesystem (mkfs.ext4 was not found)".into(),
        ));
    }
    for c in &checks {
        println!("  {}: {}", c.what, c.detail);
    }
    let failed: Vec<&Check> = checks.iter().filter(|c| c.ok == Some(false)).collect();

    let summary = json!({
        "workdir": dir,
        "master": disks.images,
        "replica": replica,
        "volumes": disks.ids,
        "bootable": replica[0],
        "scenario": outcome.scenario_file,
        "certs": certs,
        "capture": "tracked",
        "vm_id": report["vm_id"],
        "vm": {
            "name": report["vm_name"],
            "state": report["vm_state"],
            "launch": report["details"]["launch"],
        },
        "recovery_point": {
            "seq": report["recovery_point_seq"],
            "time_ms": report["recovery_point_time_ms"],
        },
        "consistent": consistent,
        "replica_equals_master": equal,
        "checks": checks.iter().map(Check::json).collect::<Vec<_>>(),
        "ok": failed.is_empty(),
        "writes": counts.json(),
        "statistics": {
            "sync_seconds": outcome.sync_seconds,
            "catch_up_seconds": outcome.catch_up_seconds,
            "total_seconds": started.elapsed().as_secs_f64(),
            "changed_bytes": outcome.status["changed_bytes"],
            "sent_bytes": outcome.status["sent_bytes"],
            "sync_bytes_total": outcome.status["sync"]["bytes_total"],
            "journal_bytes_left": outcome.journal_bytes_left,
            "master": outcome.master_stats,
        },
    });
    let summary_path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).context("encoding the summary")?;
    std::fs::write(&summary_path, format!("{text}\n"))
        .with_context(|| format!("writing {}", summary_path.display()))?;
    println!("summary: {}", summary_path.display());
    println!("{summary}");
    if !failed.is_empty() {
        let what: Vec<String> = failed
            .iter()
            .map(|c| format!("{}: {}", c.what, c.detail))
            .collect();
        bail!(
            "the replica failed {} check(s): {}; please report this as a bug, with {}",
            failed.len(),
            what.join("; "),
            summary_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Empties a directory an earlier demo made, or makes a new one; refuses any
/// other existing directory. Returns it as an absolute path.
fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!(
                "{} exists and is not a demo directory (it has no {MARKER} file, so `rha demo` did not make it): choose another with --workdir, or remove it yourself",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), b"made by rha demo\n")
        .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
    std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))
}

/// The CA, the two engine certificates (for 127.0.0.1) and the operator's.
fn make_certs(dir: &Path) -> Result<PathBuf> {
    let certs = dir.join("certs");
    let what = "making the demo's certificates";
    cert::make_ca(&certs, "rha demo CA", 30, false).context(what)?;
    let loopback = ["127.0.0.1".to_owned()];
    for name in ["master", "appliance"] {
        cert::make_leaf(&certs, &certs, name, &loopback, LeafKind::Engine, 30, false)
            .context(what)?;
    }
    cert::make_leaf(
        &certs,
        &certs,
        "operator",
        &[],
        LeafKind::Operator,
        30,
        false,
    )
    .context(what)?;
    Ok(certs)
}

fn tls(certs: &Path, name: &str) -> Result<Security> {
    let tls = Tls::load(&TlsSettings::in_dir(certs, name))
        .with_context(|| format!("loading the TLS certificate `{name}`"))?;
    Ok(Security::Tls(Arc::new(tls)))
}

/// The system disk (ext4 with a folder of files) and the data disk.
fn make_disks(dir: &Path, args: &DemoArgs) -> Result<MasterDisks> {
    let master = dir.join("master");
    std::fs::create_dir_all(&master).with_context(|| format!("creating {}", master.display()))?;
    let system = master.join("system.img");
    let (filesystem, ext4, blob_blocks) = make_system_disk(&master, &system, args.system_mib)?;
    let data = master.join("data.img");
    let vol = FileVolume::create(&data, args.data_mib * MIB)
        .with_context(|| format!("creating {}", data.display()))?;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for b in (0..args.data_mib * MIB / BLOCK).step_by(3) {
        x = xorshift(x);
        vol.write_at(b * BLOCK, &[x as u8; BLOCK as usize])?;
    }
    vol.flush()?;
    Ok(MasterDisks {
        images: vec![system, data],
        ids: vec!["/", "/data"],
        filesystem,
        ext4,
        blob_blocks,
    })
}

/// Builds the system disk: ext4 from a folder of files where mkfs.ext4
/// exists, otherwise a raw disk with the same data. Returns what it holds,
/// whether it is ext4, and the blocks the live writes may rewrite.
fn make_system_disk(
    master: &Path,
    path: &Path,
    size_mib: u64,
) -> Result<(&'static str, bool, Vec<u64>)> {
    let files = master.join("files");
    std::fs::create_dir_all(files.join("etc"))
        .with_context(|| format!("creating {}", files.display()))?;
    std::fs::write(files.join("etc/hostname"), "rha-demo-master\n")?;
    std::fs::write(
        files.join("README"),
        "A folder of files that became the demo's system disk (mkfs.ext4 -d).\n\
         The demo rewrites blocks of blob.bin in place while it replicates.\n",
    )?;
    let mut x = 7u64;
    let blob: Vec<u8> = (0..4 * MIB)
        .map(|_| {
            x = xorshift(x);
            x as u8
        })
        .collect();
    std::fs::write(files.join("blob.bin"), &blob)?;
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&files)
        .arg(path)
        .arg(format!("{size_mib}M"))
        .stdout(Stdio::null())
        .output();
    match made {
        Ok(o) if o.status.success() => {
            let blocks = blob_blocks(path, size_mib * MIB);
            Ok(("ext4, made with mkfs.ext4 -d", true, blocks))
        }
        Ok(o) => bail!(
            "mkfs.ext4 failed to make {} ({}): {}",
            path.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(_) => {
            let v = FileVolume::create(path, size_mib * MIB)
                .with_context(|| format!("creating {}", path.display()))?;
            v.write_at(MIB, &blob)?;
            v.flush()?;
            let first = MIB / BLOCK;
            Ok((
                "raw data; mkfs.ext4 was not found",
                false,
                (first..first + blob.len() as u64 / BLOCK).collect(),
            ))
        }
    }
}

/// The filesystem blocks of `/blob.bin` (4 KiB each), from debugfs; empty
/// when debugfs is missing or says nothing usable.
fn blob_blocks(image: &Path, size: u64) -> Vec<u64> {
    let out = Command::new("debugfs")
        .args(["-R", "blocks /blob.bin"])
        .arg(image)
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|b| b.parse::<u64>().ok())
            .filter(|b| (b + 1) * BLOCK <= size)
            .collect(),
        _ => Vec::new(),
    }
}

/// The scenario the demo runs: tracked capture, a local replica of fixed
/// VHDs in `DIR/replica`, manual switchover.
fn scenario_text(
    args: &DemoArgs,
    disks: &MasterDisks,
    master_port: u16,
    appliance_port: u16,
    replica_dir: &Path,
) -> Result<String> {
    // JSON strings are valid TOML basic strings: paths are quoted safely.
    let quote = |p: &Path| serde_json::to_string(&p.display().to_string());
    let method = match args.method {
        Method::Block => "block",
        Method::Volume => "volume",
    };
    let mut volumes = String::new();
    for (i, (id, image)) in disks.ids.iter().zip(&disks.images).enumerate() {
        volumes.push_str(&format!(
            "\n[[volumes]]\nid = \"{id}\"\nsystem = {}\npath = {}\n",
            i == 0,
            quote(image)?
        ));
    }
    Ok(format!(
        r#"# The scenario `rha demo` ran on its appliance engine (written for reading;
# its master is the demo process itself, which provides the tracked source).
name = "{SCENARIO}"
product = "ha"

[master]
host = "127.0.0.1"
port = {master_port}
os = "linux"

[replica.local]
appliance = "127.0.0.1"
port = {appliance_port}
data_dir = {replica}
{volumes}
[sync]
method = "{method}"

[journal]
directory = "journal"
max_size_mb = 256
fsync = "interval"
fsync_interval_ms = 50

[capture]
method = "tracked"

[is_alive]
interval_secs = 1
timeout_secs = 5

[switchover]
mode = "manual"
wait_for_journal = true

[vm]
name = "rha-demo-vm"
cpus = 1
memory_mb = 512
"#,
        replica = quote(replica_dir)?,
    ))
}

async fn start_engine(name: &str, data: PathBuf, security: Security, qemu: Qemu) -> Result<Engine> {
    let mut config = EngineConfig::new(name, &data, security);
    config.listen = Some("127.0.0.1:0".into());
    config.qemu = qemu;
    Engine::start(config)
        .await
        .with_context(|| format!("starting the `{name}` engine (data {})", data.display()))
}

fn port_of(engine: &Engine) -> Result<u16> {
    engine
        .local_addr()
        .map(|a| a.port())
        .ok_or_else(|| anyhow!("the `{}` engine listens nowhere", engine.name()))
}

/// Starts both engines, runs the scenario with live writes, switches over,
/// and shuts the engines down.
async fn replicate(
    dir: &Path,
    certs: &Path,
    args: &DemoArgs,
    disks: &MasterDisks,
    counts: Arc<WriteCounts>,
) -> Result<Outcome> {
    let qemu = if args.start_vm {
        Qemu::Auto
    } else {
        Qemu::Never
    };
    let master = start_engine(
        "master",
        dir.join("master-engine"),
        tls(certs, "master")?,
        qemu.clone(),
    )
    .await?;
    let appliance = match start_engine(
        "appliance",
        dir.join("appliance-engine"),
        tls(certs, "appliance")?,
        qemu,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            master.shutdown().await;
            return Err(e);
        }
    };
    let result = drive(dir, certs, args, disks, counts, &master, &appliance).await;
    appliance.shutdown().await;
    master.shutdown().await;
    result
}

/// Stops the writer thread when dropped (also when the demo fails half-way).
struct WriterGuard {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<()>>>,
}

impl WriterGuard {
    fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    fn join(&mut self) -> Result<()> {
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow!("the writer thread panicked"))?
                .context("writing to the master disks"),
            None => Ok(()),
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The scenario from `run` to switchover, through the operator's TLS connection.
async fn drive(
    dir: &Path,
    certs: &Path,
    args: &DemoArgs,
    disks: &MasterDisks,
    counts: Arc<WriteCounts>,
    master: &Engine,
    appliance: &Engine,
) -> Result<Outcome> {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let (mp, ap) = (port_of(master)?, port_of(appliance)?);
    println!("engines: `master` on 127.0.0.1:{mp}, `appliance` on 127.0.0.1:{ap} (mutual TLS)");
    let text = scenario_text(args, disks, mp, ap, &dir.join("replica"))?;
    let scenario_file = dir.join("demo.toml");
    std::fs::write(&scenario_file, &text)
        .with_context(|| format!("writing {}", scenario_file.display()))?;
    let scenario = Scenario::from_toml_str(&text).with_context(|| {
        format!(
            "the demo's scenario {} does not load",
            scenario_file.display()
        )
    })?;
    let validation = scenario.validate();
    if !validation.is_ok() {
        bail!(
            "the demo's scenario {} is not valid: {validation}",
            scenario_file.display()
        );
    }

    // The tracked source: the master engine replicates what this program writes.
    let mut volumes: Vec<Arc<dyn Volume>> = Vec::new();
    for image in &disks.images {
        volumes.push(Arc::new(
            FileVolume::open(image).with_context(|| format!("opening {}", image.display()))?,
        ));
    }
    let journal_dir = dir.join("master/journal");
    let (set, _) = TrackedSet::open(
        &journal_dir,
        JournalConfig::from(&scenario.journal),
        volumes,
        Events::new(),
    )
    .with_context(|| format!("opening the master's journal in {}", journal_dir.display()))?;
    let set = Arc::new(set);
    master.provide_source(SCENARIO, set.clone());

    let consistent = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = Writer {
        system: set.volume(0).context("the tracked system volume")?,
        data: set.volume(1).context("the tracked data volume")?,
        blob: disks.blob_blocks.clone(),
        stop: stop.clone(),
        consistent: consistent.clone(),
        after: args.writes,
        counts: counts.clone(),
    };
    let mut writer = WriterGuard {
        stop,
        handle: Some(
            std::thread::Builder::new()
                .name("rha-demo-writer".into())
                .spawn(move || writer.run())
                .context("starting the writer thread")?,
        ),
    };

    let appliance_addr = format!("127.0.0.1:{ap}");
    let client = Client::connect(&appliance_addr, &tls(certs, "operator")?, "operator")
        .await
        .with_context(|| {
            format!("connecting to the appliance engine at {appliance_addr} as the operator")
        })?;
    let run_started = Instant::now();
    client
        .call(
            &ControlRequest::Run { scenario: text },
            Duration::from_secs(60),
        )
        .await
        .context("running the scenario on the appliance")?;
    println!(
        "scenario `{SCENARIO}` running on `{}` (capture: tracked); writing to the master meanwhile",
        client.engine_name()
    );
    let total = set.volumes().iter().map(|v| v.size()).sum();
    let mut f = Follower::new(&client, master, appliance, total);

    // 1. Synchronisation, with writes.
    let s = f
        .until(timeout, "the replica to become consistent", |s| {
            s["state"] == "replicating" && s["replica"]["consistent"] == true
        })
        .await?;
    let sync_seconds = run_started.elapsed().as_secs_f64();
    consistent.store(true, Ordering::Relaxed);
    f.finish_bar();
    f.line(format!(
        "the replica is consistent after {sync_seconds:.2} s ({} writes made meanwhile, {} bytes sent); {} more writes while replicating",
        counts.during_sync.load(Ordering::Relaxed),
        s["sent_bytes"],
        args.writes
    ));

    // 2. Live writes while replicating.
    let deadline = Instant::now() + timeout;
    while !writer.is_finished() {
        f.status().await?;
        if Instant::now() > deadline {
            bail!(
                "the writer did not finish within {} s; raise --timeout-secs",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    writer.join()?;
    let last_write = Instant::now();
    let last = set.last_seq();

    // 3. Wait until the replica has every write.
    let s = f
        .until(timeout, "the replica to catch up with the master", |s| {
            s["replica"]["applied"].as_u64().unwrap_or(0) >= last
                && s["replica"]["consistent"] == true
        })
        .await?;
    let catch_up_seconds = last_write.elapsed().as_secs_f64();
    f.line(format!(
        "replication lag 0: the replica has applied sequence {} ({} writes in all, {} bytes changed, {} bytes sent)",
        s["replica"]["applied"],
        counts.during_sync.load(Ordering::Relaxed) + counts.while_replicating.load(Ordering::Relaxed),
        s["changed_bytes"],
        s["sent_bytes"]
    ));
    let master_stats = master
        .master_scenario(SCENARIO)
        .map(|m| serde_json::to_value(m.events.stats().snapshot()).unwrap_or_default())
        .unwrap_or_default();

    // 4. Switchover.
    f.line("switching over".to_string());
    let answer = client
        .call(
            &ControlRequest::Switchover {
                name: SCENARIO.into(),
                skip_journal: false,
                force: false,
                point: "latest".into(),
            },
            timeout,
        )
        .await
        .context("switching over")?;
    // Let the last events arrive, then show them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.drain_events();
    drop(f);
    client.close().await;
    set.journal()
        .sync()
        .with_context(|| format!("flushing the journal in {}", journal_dir.display()))?;
    Ok(Outcome {
        switchover: answer["switchover"].clone(),
        status: s,
        master_stats,
        sync_seconds,
        catch_up_seconds,
        scenario_file,
        journal_bytes_left: set.pending_bytes(),
    })
}

/// Follows the scenario on the appliance: status, progress bar, events.
struct Follower<'a> {
    client: &'a Client,
    master: &'a Engine,
    bar: Option<indicatif::ProgressBar>,
    /// Bytes the synchronisation covers (every master disk).
    total: u64,
    /// The master's events, from the thread that waits for its scenario.
    master_found: Receiver<Receiver<Event>>,
    master_events: Option<Receiver<Event>>,
    appliance_events: Option<Receiver<Event>>,
    last_state: String,
    /// Per volume: bytes synchronised, from the master's progress events.
    synced: HashMap<u32, u64>,
    /// Per volume: the last quarter of its synchronisation printed.
    quarters: HashMap<u32, u64>,
    /// The "all changes ... replicated" line is printed once.
    all_replicated_shown: bool,
    stop_watch: Arc<AtomicBool>,
}

impl Drop for Follower<'_> {
    fn drop(&mut self) {
        self.stop_watch.store(true, Ordering::Relaxed);
    }
}

/// Subscribes to the master's events as soon as the appliance has opened
/// the scenario there (the synchronisation starts right after).
fn watch_master(master: Engine, stop: Arc<AtomicBool>) -> Receiver<Receiver<Event>> {
    let (tx, rx) = std::sync::mpsc::channel();
    // Without the thread, drain_events subscribes when it finds the scenario.
    let _ = std::thread::Builder::new()
        .name("rha-demo-watch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(m) = master.master_scenario(SCENARIO) {
                    let _ = tx.send(m.events.subscribe());
                    return;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
    rx
}

impl<'a> Follower<'a> {
    fn new(client: &'a Client, master: &'a Engine, appliance: &'a Engine, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:14} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        let stop_watch = Arc::new(AtomicBool::new(false));
        Follower {
            client,
            master,
            bar,
            total,
            master_found: watch_master(master.clone(), stop_watch.clone()),
            master_events: None,
            appliance_events: appliance
                .appliance_scenario(SCENARIO)
                .map(|a| a.events.subscribe()),
            last_state: String::new(),
            synced: HashMap::new(),
            quarters: HashMap::new(),
            all_replicated_shown: false,
            stop_watch,
        }
    }

    /// Prints a line (above the progress bar, when there is one).
    fn line(&self, s: String) {
        match &self.bar {
            Some(b) => b.suspend(|| println!("{s}")),
            None => println!("{s}"),
        }
    }

    fn finish_bar(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    /// Prints the engines' events that arrived.
    fn drain_events(&mut self) {
        if self.master_events.is_none() {
            self.master_events = match self.master_found.try_recv() {
                Ok(rx) => Some(rx),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => self
                    .master
                    .master_scenario(SCENARIO)
                    .map(|m| m.events.subscribe()),
            };
        }
        let mut lines = Vec::new();
        if let Some(rx) = &self.master_events {
            for e in rx.try_iter() {
                match &e {
                    Event::SyncProgress {
                        volume,
                        bytes_done,
                        bytes_total,
                    } => {
                        self.synced.insert(*volume, *bytes_done);
                        let q = bytes_done * 4 / (*bytes_total).max(1);
                        if self.bar.is_some() || self.quarters.get(volume) == Some(&q) {
                            continue;
                        }
                        self.quarters.insert(*volume, q);
                    }
                    Event::SyncStarted { .. }
                    | Event::SyncCompleted { .. }
                    | Event::JournalOverflow { .. }
                    | Event::Error { .. } => {}
                    _ => continue,
                }
                lines.push(format!("  master: {e}"));
            }
        }
        if let Some(rx) = &self.appliance_events {
            for e in rx.try_iter() {
                match &e {
                    Event::SyncProgress { .. } | Event::ReplicationLag { .. } => continue,
                    Event::AllSyncChangesReplicated { .. } if self.all_replicated_shown => continue,
                    Event::AllSyncChangesReplicated { .. } => self.all_replicated_shown = true,
                    _ => {}
                }
                lines.push(format!("  appliance: {e}"));
            }
        }
        for l in lines {
            self.line(l);
        }
    }

    /// One status request: updates the progress bar and prints what changed.
    async fn status(&mut self) -> Result<Value> {
        let v = self
            .client
            .call(
                &ControlRequest::Status {
                    name: Some(SCENARIO.into()),
                },
                Duration::from_secs(30),
            )
            .await
            .context("asking the appliance for the scenario's status")?;
        let s = v["scenarios"][0].clone();
        self.drain_events();
        let state = s["state"].as_str().unwrap_or("?").to_owned();
        if let Some(b) = &self.bar {
            let from_status = s["sync"]["bytes_done"].as_u64().unwrap_or(0);
            let from_events: u64 = self.synced.values().sum();
            b.set_position(from_status.max(from_events).min(self.total));
            b.set_message(state.clone());
        }
        if state != self.last_state {
            self.line(format!("  appliance: scenario `{SCENARIO}` is {state}"));
            self.last_state = state;
        }
        Ok(s)
    }

    /// Polls the status until `done` holds; fails after `timeout` or when
    /// the scenario stops.
    async fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let started = Instant::now();
        loop {
            let s = self.status().await?;
            if done(&s) {
                return Ok(s);
            }
            let state = s["state"].as_str().unwrap_or("?");
            let why = s["last_error"]
                .as_str()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            if matches!(state, "stopped" | "switched_over") {
                bail!("the scenario is {state} while waiting for {what}{why}");
            }
            if started.elapsed() > timeout {
                bail!(
                    "timed out after {} s waiting for {what} (state {state}{why}): raise --timeout-secs, or look at the engines with RHA_LOG=info",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Writes to the master through the tracked volumes: random blocks of the
/// data disk (some zeroed), and blocks of `/blob.bin` on the system disk
/// rewritten in place (its contents change, the filesystem stays clean).
struct Writer {
    system: TrackedVolume,
    data: TrackedVolume,
    blob: Vec<u64>,
    stop: Arc<AtomicBool>,
    consistent: Arc<AtomicBool>,
    after: u64,
    counts: Arc<WriteCounts>,
}

impl Writer {
    fn run(self) -> Result<()> {
        let c = &*self.counts;
        let data_blocks = self.data.size() / BLOCK;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut i: u64 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let replicating = self.consistent.load(Ordering::Relaxed);
            if replicating && c.while_replicating.load(Ordering::Relaxed) >= self.after {
                break;
            }
            x = xorshift(x);
            if !self.blob.is_empty() && i % 4 == 0 {
                let b = self.blob[(x % self.blob.len() as u64) as usize];
                let mut buf = vec![(x >> 8) as u8; BLOCK as usize];
                let tag = format!("rha demo live write {i}\n");
                buf[..tag.len()].copy_from_slice(tag.as_bytes());
                self.system.write_at(b * BLOCK, &buf)?;
                WriteCounts::add(&c.system_disk, &c.bytes, BLOCK);
            } else {
                let off = (x % (data_blocks - 4)) * BLOCK;
                if i % 10 == 9 {
                    self.data.write_zeroes(off, 2 * BLOCK)?;
                    WriteCounts::add(&c.data_disk, &c.bytes, 2 * BLOCK);
                } else {
                    let len = BLOCK * (1 + i % 3);
                    self.data
                        .write_at(off, &vec![(x >> 8) as u8 | 1; len as usize])?;
                    WriteCounts::add(&c.data_disk, &c.bytes, len);
                }
            }
            let phase = if replicating {
                &c.while_replicating
            } else {
                &c.during_sync
            };
            phase.fetch_add(1, Ordering::Relaxed);
            i += 1;
            if i % 2 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.system.flush()?;
        self.data.flush()?;
        Ok(())
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// One check of the replica: `ok` is `None` when it was skipped.
#[derive(Debug)]
struct Check {
    what: String,
    ok: Option<bool>,
    detail: String,
}

impl Check {
    fn new(what: String, ok: Option<bool>, detail: String) -> Self {
        Check { what, ok, detail }
    }

    fn json(&self) -> Value {
        json!({"check": self.what, "ok": self.ok, "detail": self.detail})
    }
}

/// Compares a master image with its replica through rha's own volume code.
fn same_contents(master: &Path, replica: &Path) -> Result<bool> {
    let a = FileVolume::open_read_only(master)
        .with_context(|| format!("opening {}", master.display()))?;
    let b = open_volume(replica).with_context(|| format!("opening {}", replica.display()))?;
    if a.size() != b.size() {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut at = 0;
    while at < a.size() {
        let n = MIB.min(a.size() - at) as usize;
        a.read_at(at, &mut x[..n])?;
        b.read_at(at, &mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
    .trim()
    .replace('\n', " / ")
}

/// `qemu-img compare -f raw -F vpc master replica`.
fn qemu_compare(master: &Path, replica: &Path, shared: bool) -> Check {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["compare", "-f", "raw", "-F", "vpc"]);
    if shared {
        cmd.arg("-U"); // the running VM holds the image's lock
    }
    let what = format!(
        "qemu-img compare -f raw -F vpc {} {}",
        master.display(),
        replica.display()
    );
    match cmd.arg(master).arg(replica).output() {
        Ok(o) if o.status.success() => Check::new(what, Some(true), output_text(&o)),
        Ok(o) => Check::new(
            what,
            Some(false),
            format!("{}: {}", o.status, output_text(&o)),
        ),
        Err(_) => Check::new(what, None, "skipped: qemu-img is not installed".into()),
    }
}

/// `qemu-img info -f vpc replica`: qemu reads the VHD at the master's size.
fn qemu_info(master: &Path, replica: &Path, shared: bool) -> Check {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "-f", "vpc", "--output=json"]);
    if shared {
        cmd.arg("-U");
    }
    let what = format!("qemu-img info -f vpc {}", replica.display());
    match cmd.arg(replica).output() {
        Ok(o) if o.status.success() => {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let size = v["virtual-size"].as_u64();
            let expected = std::fs::metadata(master).map(|m| m.len()).ok();
            let ok = size.is_some() && size == expected;
            Check::new(
                what,
                Some(ok),
                format!(
                    "format {}, virtual size {} bytes{}",
                    v["format"].as_str().unwrap_or("?"),
                    size.map_or("?".into(), |s| s.to_string()),
                    if ok {
                        String::new()
                    } else {
                        format!(
                            ", but the master is {} bytes",
                            expected.map_or("?".into(), |s| s.to_string())
                        )
                    }
                ),
            )
        }
        Ok(o) => Check::new(
            what,
            Some(false),
            format!("{}: {}", o.status, output_text(&o)),
        ),
        Err(_) => Check::new(what, None, "skipped: qemu-img is not installed".into()),
    }
}

/// `e2fsck -fn` on the replica's system disk.
fn e2fsck(replica: &Path) -> Check {
    let what = format!("e2fsck -fn {}", replica.display());
    match Command::new("e2fsck").arg("-fn").arg(replica).output() {
        Ok(o) if o.status.success() => Check::new(what, Some(true), "clean".into()),
        Ok(o) => Check::new(
            what,
            Some(false),
            format!("{}: {}", o.status, output_text(&o)),
        ),
        Err(_) => Check::new(what, None, "skipped: e2fsck is not installed".into()),
    }
}
