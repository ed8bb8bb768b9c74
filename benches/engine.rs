//! Engine benchmarks: two engines in this process on 127.0.0.1 over mutual
//! TLS, with the peer (a plain TCP copy of the same bytes) measured in the
//! same run. The figures and what they mean are in BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench engine                 # 2 GiB image, 3 rounds, 3 × 25 s of writes at 50 MB/s
//! cargo bench --bench engine -- --quick      # 256 MiB, 1 round, 5 s: a smoke test (or RHA_BENCH_QUICK=1)
//! cargo bench --bench engine -- --size-mib 1024 --repeat 5 --lag tmpfs-journal --lag-secs 30 --work DIR
//! ```
//!
//! 1. **Volume-level synchronisation.** The master image is random
//!    (incompressible) data, no zero block anywhere, so neither side can skip
//!    anything. Each round times a plain TCP copy over loopback (read the
//!    image, write it to a socket; the receiver writes a file and fsyncs it),
//!    then a scenario with `[sync] method = "volume"` between a master engine
//!    and an appliance engine, from the `Run` request to the replica declared
//!    consistent (the appliance fsyncs its disk before that, so both figures
//!    include making the copy durable), without compression (the scenario
//!    default) and with LZ4. One more pair lands on tmpfs, which leaves the
//!    protocol's own cost.
//! 2. **Replication lag.** After a synchronisation the benchmark writes
//!    through the scenario's tracked volume (capture method `tracked`: the
//!    [`TrackedSet`] is given to the master engine with
//!    [`Engine::provide_source`]): random 4–64 KiB writes of random data at
//!    random 4 KiB-aligned offsets, paced to a byte rate. The lag of a write is
//!    the time from its `write_at` returning to the moment the master learns
//!    that the replica applied its sequence number (the engine calls
//!    [`ChangeSource::acknowledge`] with the replica's `Applied` answer; the
//!    benchmark wraps the source and notes the time of each call). Three
//!    placements: tracked journal and replica on disk; the journal on tmpfs;
//!    both on tmpfs (`--lag` chooses).
//!
//! Every copy is compared with the master afterwards. Runs only when asked
//! (`harness = false`); `cargo test` does not run it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rha::core::cloud::local::Qemu;
use rha::core::events::Events;
use rha::core::journal::{JournalConfig, Record};
use rha::core::scenario::Scenario;
use rha::core::source::{ChangeSource, SourceError, TrackedSet};
use rha::core::volume::{FileVolume, Volume};
use rha::core::{Seq, VolumeId};
use rha_transport::cert::{make_ca, make_leaf, LeafKind};
use rha_transport::connect::Security;
use rha_transport::engine::{ControlRequest, Engine, EngineConfig};
use rha_transport::tls::{Tls, TlsSettings};

const MIB: u64 = 1 << 20;
const MB: f64 = 1e6;
const BLOCK: u64 = 4096;
/// Bytes per read and write of the plain copy (the volume-level sync reads 1 MiB chunks too).
const CHUNK: usize = 1 << 20;
/// The scenario's name.
const NAME: &str = "bench";
/// A tmpfs, for the runs that take the disk out.
const SHM: &str = "/dev/shm";
/// Where the replication-lag runs keep the tracked journal and the replica:
/// both on disk; the journal on tmpfs; both on tmpfs.
const LAG_PLACEMENTS: [&str; 3] = ["disk", "tmpfs-journal", "tmpfs"];

/// What to run.
#[derive(Debug, Clone)]
struct Settings {
    size_mib: u64,
    lag_secs: f64,
    rate_mb: f64,
    work: PathBuf,
    lz4: bool,
    shm: bool,
    repeat: usize,
    lag: Vec<String>,
    keep: bool,
}

impl Settings {
    fn parse() -> Result<Settings> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("RHA_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut s = Settings {
            size_mib: if quick { 256 } else { 2048 },
            lag_secs: if quick { 5.0 } else { 25.0 },
            rate_mb: 50.0,
            work: std::env::temp_dir().join("rha-bench-engine"),
            lz4: true,
            shm: true,
            repeat: if quick { 1 } else { 3 },
            lag: LAG_PLACEMENTS.iter().map(|p| p.to_string()).collect(),
            keep: false,
        };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = |what: &str| it.next().with_context(|| format!("{a} needs {what}"));
            match a.as_str() {
                "--quick" | "--bench" => {} // `cargo bench` passes --bench
                "--size-mib" => s.size_mib = value("a size in MiB")?.parse()?,
                "--lag-secs" => s.lag_secs = value("seconds")?.parse()?,
                "--rate-mb" => s.rate_mb = value("MB/s")?.parse()?,
                "--work" => s.work = PathBuf::from(value("a directory")?),
                "--no-lz4" => s.lz4 = false,
                "--no-tmpfs" => s.shm = false,
                "--repeat" => s.repeat = value("a count")?.parse()?,
                "--lag" => {
                    s.lag = value("placements")?
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if let Some(bad) = s.lag.iter().find(|p| !LAG_PLACEMENTS.contains(&p.as_str()))
                    {
                        bail!("--lag: unknown placement `{bad}`; choose from {LAG_PLACEMENTS:?}");
                    }
                }
                "--keep" => s.keep = true,
                "-h" | "--help" => {
                    println!(
                        "usage: cargo bench --bench engine -- [--quick] [--size-mib N] [--lag-secs S] \
                         [--rate-mb R] [--work DIR] [--no-lz4] [--no-tmpfs] [--repeat N] [--lag disk,tmpfs-journal,tmpfs] [--keep]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown option {other}; see --help"),
            }
        }
        if s.size_mib < 16 {
            bail!("--size-mib must be at least 16");
        }
        if !(s.rate_mb > 0.0 && s.rate_mb.is_finite() && s.lag_secs > 0.0 && s.lag_secs.is_finite())
        {
            bail!("--rate-mb and --lag-secs must be positive");
        }
        Ok(s)
    }
}

/// xorshift64*: fast, and its output is incompressible for LZ4.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes()[..c.len()]);
        }
    }
}

/// Makes (or reuses) the master image: random data in every block.
fn make_image(path: &Path, size: u64) -> Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        println!(
            "reusing {} ({} MiB of random data)",
            path.display(),
            size / MIB
        );
        return Ok(());
    }
    println!(
        "making {} ({} MiB of random data) ...",
        path.display(),
        size / MIB
    );
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut buf = vec![0u8; CHUNK];
    for _ in 0..size / CHUNK as u64 {
        rng.fill(&mut buf);
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Reads up to `buf.len()` bytes, fewer only at the end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads a file through the page cache.
fn warm(path: &Path) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; CHUNK];
    while read_full(&mut f, &mut buf)? > 0 {}
    Ok(())
}

/// True when the first `len` bytes of `a` and `b` are equal.
fn same_prefix(a: &Path, b: &Path, len: u64) -> Result<bool> {
    let mut fa = File::open(a).with_context(|| format!("opening {}", a.display()))?;
    let mut fb = File::open(b).with_context(|| format!("opening {}", b.display()))?;
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut left = len;
    while left > 0 {
        let n = (CHUNK as u64).min(left) as usize;
        let (ka, kb) = (
            read_full(&mut fa, &mut ba[..n])?,
            read_full(&mut fb, &mut bb[..n])?,
        );
        if ka != n || kb != n || ba[..n] != bb[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

/// Writes back every dirty page, so one measurement does not pay for the last one's writeback.
fn settle() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(500));
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The plain copy's times: until the last byte was written, and until it was on disk.
struct PlainCopy {
    received: f64,
    durable: f64,
    cpu: f64,
}

/// Copies `src` to `dst` through a plain TCP connection on loopback, the receiver fsyncing at the end.
fn plain_copy(src: &Path, dst: &Path) -> Result<PlainCopy> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let out_path = dst.to_path_buf();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let receiver = std::thread::spawn(move || -> Result<(Instant, Instant)> {
        let (mut sock, _) = listener.accept()?;
        let mut out = File::create(&out_path)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read_full(&mut sock, &mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
        }
        let received = Instant::now();
        out.sync_all()?;
        Ok((received, Instant::now()))
    });
    let mut sock = TcpStream::connect(addr)?;
    let mut f = File::open(src)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        sock.write_all(&buf[..n])?;
    }
    sock.shutdown(Shutdown::Write)?;
    let (received, durable) = receiver
        .join()
        .map_err(|_| anyhow!("the receiver thread panicked"))??;
    Ok(PlainCopy {
        received: (received - t0).as_secs_f64(),
        durable: (durable - t0).as_secs_f64(),
        cpu: cpu_seconds() - cpu0,
    })
}

/// The tracked set as the master engine's change source, noting when each
/// acknowledgement reaches the master (the replica's `Applied` answer).
struct Clocked {
    set: Arc<TrackedSet>,
    acks: Mutex<Vec<(Seq, Instant)>>,
}

impl Clocked {
    fn acks(&self) -> Vec<(Seq, Instant)> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ChangeSource for Clocked {
    fn volumes(&self) -> &[Arc<dyn Volume>] {
        self.set.volumes()
    }
    fn changes_after(&self, after: Seq, max_bytes: usize) -> Result<Vec<Record>, SourceError> {
        self.set.changes_after(after, max_bytes)
    }
    fn acknowledge(&self, upto: Seq) -> Result<(), SourceError> {
        let now = Instant::now();
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((upto, now));
        self.set.acknowledge(upto)
    }
    fn last_seq(&self) -> Seq {
        self.set.last_seq()
    }
    fn acknowledged(&self) -> Seq {
        self.set.acknowledged()
    }
    fn capture(&self) -> Result<u64, SourceError> {
        self.set.capture()
    }
    fn needs_resync(&self) -> bool {
        self.set.needs_resync()
    }
    fn dirty_ranges(&self, volume: VolumeId) -> Option<Vec<Range<u64>>> {
        self.set.dirty_ranges(volume)
    }
    fn resync_started(&self) -> Result<Seq, SourceError> {
        self.set.resync_started()
    }
    fn resync_completed(&self, base: Seq) -> Result<(), SourceError> {
        self.set.resync_completed(base)
    }
    fn pending_bytes(&self) -> u64 {
        self.set.pending_bytes()
    }
}

/// Makes the CA and the two engine certificates (for 127.0.0.1).
fn make_certs(dir: &Path) -> Result<()> {
    make_ca(dir, "rha bench CA", 2, true)?;
    for name in ["master", "appliance"] {
        make_leaf(
            dir,
            dir,
            name,
            &["127.0.0.1".to_string()],
            LeafKind::Engine,
            2,
            true,
        )?;
    }
    Ok(())
}

fn engine_config(certs: &Path, name: &str, data: PathBuf) -> Result<EngineConfig> {
    let tls = Tls::load(&TlsSettings::in_dir(certs, name))?;
    let mut c = EngineConfig::new(name, data, Security::Tls(Arc::new(tls)));
    c.listen = Some("127.0.0.1:0".into());
    c.qemu = Qemu::Never;
    Ok(c)
}

/// A path as a TOML basic string (JSON's escapes are valid TOML).
fn quoted(p: &Path) -> String {
    serde_json::Value::String(p.display().to_string()).to_string()
}

fn scenario_text(
    image: &Path,
    replica_dir: &Path,
    master_port: u16,
    appliance_port: u16,
    compression: &str,
) -> String {
    format!(
        r#"name = "{NAME}"
product = "ha"
run_after_reboot = false

[master]
host = "127.0.0.1"
port = {master_port}
os = "linux"

[replica.local]
appliance = "127.0.0.1"
port = {appliance_port}
data_dir = {replica}

[[volumes]]
id = "/"
system = true
path = {image}

[sync]
method = "volume"
compression = "{compression}"

[journal]
directory = "journal"
max_size_mb = 1024
fsync = "interval"
fsync_interval_ms = 100

[capture]
method = "tracked"

[is_alive]
interval_secs = 1
timeout_secs = 30

[switchover]
mode = "manual"

[vm]
name = "{NAME}-vm"
cpus = 1
memory_mb = 512
"#,
        replica = quoted(replica_dir),
        image = quoted(image),
    )
}

/// A master and an appliance engine running one scenario.
struct Pair {
    master: Engine,
    appliance: Engine,
    source: Arc<Clocked>,
    set: Arc<TrackedSet>,
}

/// What one synchronisation measured.
struct SyncFigures {
    seconds: f64,
    /// Seconds from `Run` until the master started copying (connection, TLS, scenario, disks).
    setup: f64,
    cpu: f64,
    sent_bytes: u64,
    disk: PathBuf,
}

/// Starts both engines in `dir`, runs the scenario and waits until the replica is consistent.
fn run_sync(
    rt: &tokio::runtime::Runtime,
    s: &Settings,
    certs: &Path,
    image: &Path,
    dir: &Path,
    journal: &Path,
    compression: &str,
) -> Result<(Pair, SyncFigures)> {
    for d in [dir, journal] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }
    let master = rt.block_on(Engine::start(engine_config(
        certs,
        "master",
        dir.join("master"),
    )?))?;
    let appliance = rt.block_on(Engine::start(engine_config(
        certs,
        "appliance",
        dir.join("appliance"),
    )?))?;
    let port = |e: &Engine| {
        e.local_addr()
            .map(|a| a.port())
            .context("engine not listening")
    };
    let text = scenario_text(
        image,
        &dir.join("replica"),
        port(&master)?,
        port(&appliance)?,
        compression,
    );
    let scenario = Scenario::from_toml_str(&text)?;
    let volume: Arc<dyn Volume> = Arc::new(FileVolume::open(image)?);
    let (set, _recovery) = TrackedSet::open(
        journal,
        JournalConfig::from(&scenario.journal),
        vec![volume],
        Events::new(),
    )?;
    let set = Arc::new(set);
    let source = Arc::new(Clocked {
        set: set.clone(),
        acks: Mutex::new(Vec::new()),
    });
    master.provide_source(NAME, source.clone());

    warm(image)?;
    settle();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let reply = rt.block_on(appliance.control(ControlRequest::Run { scenario: text }));
    if reply["ok"] != true {
        bail!("Run refused: {reply}");
    }
    let limit = Duration::from_secs(120 + s.size_mib / 10);
    let mut setup = f64::NAN;
    loop {
        if setup.is_nan() {
            let state = master.master_scenario(NAME).map(|m| m.status().state);
            if state.as_deref() == Some("synchronising") {
                setup = t0.elapsed().as_secs_f64();
            }
        }
        let status = appliance
            .appliance_scenario(NAME)
            .map(|a| a.status())
            .unwrap_or_default();
        if status["replica"]["consistent"] == true {
            break;
        }
        if t0.elapsed() > limit {
            let m = master.master_scenario(NAME).map(|m| m.status());
            bail!("no consistent replica after {limit:?}: appliance {status:#}; master {m:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    // The master counts the bytes once the replica has answered MarkConsistent.
    let ms = master.master_scenario(NAME).context("no master scenario")?;
    while ms.status().state != "replicating" {
        if t0.elapsed() > limit {
            bail!("the master did not start replicating: {:?}", ms.status());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent_bytes = ms.events.stats().snapshot().sent_bytes;
    let disk = appliance
        .appliance_scenario(NAME)
        .and_then(|a| a.disk_paths().into_iter().next())
        .context("the appliance has no replica disk")?;
    Ok((
        Pair {
            master,
            appliance,
            source,
            set,
        },
        SyncFigures {
            seconds,
            setup,
            cpu,
            sent_bytes,
            disk,
        },
    ))
}

fn stop(rt: &tokio::runtime::Runtime, pair: Pair) {
    rt.block_on(async {
        pair.appliance.shutdown().await;
        pair.master.shutdown().await;
    });
}

/// What the replication-lag run measured.
struct LagFigures {
    writes: usize,
    bytes: u64,
    seconds: f64,
    /// Each write's lag in seconds, sorted.
    lags: Vec<f64>,
    acks: usize,
    /// Median and largest time between two acknowledgements (one Apply round each).
    ack_gap: (f64, f64),
    max_behind: f64,
    /// Median and 99th percentile of one `write_at` call (journal + change log + image).
    write_call: (f64, f64),
    drain: f64,
}

impl LagFigures {
    fn pct(&self, q: f64) -> f64 {
        if self.lags.is_empty() {
            return f64::NAN;
        }
        let i = ((q * self.lags.len() as f64).ceil() as usize).clamp(1, self.lags.len()) - 1;
        self.lags[i]
    }
}

/// Writes random 4–64 KiB blocks through the tracked volume at `rate_mb`
/// for `secs`, then waits for the replica and matches writes to acknowledgements.
fn run_lag(pair: &Pair, size: u64, rate_mb: f64, secs: f64) -> Result<LagFigures> {
    let vol = pair.set.volume(0).context("no tracked volume 0")?;
    let blocks = size / BLOCK;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut buf = vec![0u8; 64 * 1024];
    let mut written: Vec<(Seq, Instant)> = Vec::new();
    let mut bytes = 0u64;
    let mut max_behind = 0f64;
    let mut calls: Vec<f64> = Vec::new();
    let t0 = Instant::now();
    let until = Duration::from_secs_f64(secs);
    while t0.elapsed() < until {
        let due = t0 + Duration::from_secs_f64(bytes as f64 / (rate_mb * MB));
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            max_behind = max_behind.max((now - due).as_secs_f64());
        }
        let n = (1 + rng.below(16)) * BLOCK;
        let at = rng.below(blocks - n / BLOCK + 1) * BLOCK;
        let data = &mut buf[..n as usize];
        rng.fill(data);
        let start = Instant::now();
        vol.write_at(at, data)?;
        let done = Instant::now();
        calls.push((done - start).as_secs_f64());
        // One writer: the newest sequence is this write's.
        written.push((pair.set.last_seq(), done));
        bytes += n;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let last = pair.set.last_seq();
    let drain0 = Instant::now();
    while pair.set.acknowledged() < last {
        if drain0.elapsed() > Duration::from_secs(120) {
            bail!(
                "the replica did not catch up within 120 s after the writes (acknowledged {} of {last})",
                pair.set.acknowledged()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let drain = drain0.elapsed().as_secs_f64();
    let acks: Vec<(Seq, Instant)> = pair
        .source
        .acks()
        .into_iter()
        .filter(|(_, t)| *t >= t0)
        .collect();
    let mut lags = Vec::with_capacity(written.len());
    for (seq, t) in &written {
        let i = acks.partition_point(|(a, _)| a < seq);
        let (_, at) = acks
            .get(i)
            .with_context(|| format!("write {seq} was never acknowledged"))?;
        lags.push(at.saturating_duration_since(*t).as_secs_f64());
    }
    lags.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> = acks
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    let ack_gap = (
        gaps.get(gaps.len() / 2).copied().unwrap_or(f64::NAN),
        gaps.last().copied().unwrap_or(f64::NAN),
    );
    calls.sort_by(f64::total_cmp);
    let at = |q: f64| {
        calls
            .get(((q * calls.len() as f64) as usize).min(calls.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let write_call = (at(0.5), at(0.99));
    Ok(LagFigures {
        write_call,
        ack_gap,
        writes: written.len(),
        bytes,
        seconds,
        lags,
        acks: acks.len(),
        max_behind,
        drain,
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

/// One replication-lag run: where the tracked journal and the replica live, and what was measured.
struct LagRun {
    placement: String,
    sync: SyncFigures,
    lag: LagFigures,
    replica_same: bool,
}

/// One round of the synchronisation comparison, run back to back.
struct Round {
    plain: PlainCopy,
    tls: SyncFigures,
    lz4: Option<SyncFigures>,
}

/// Synchronises a fresh replica, checks it, and stops both engines.
fn sync_only(
    rt: &tokio::runtime::Runtime,
    s: &Settings,
    certs: &Path,
    image: &Path,
    compression: &str,
) -> Result<SyncFigures> {
    let dir = s.work.join(format!("run-{compression}"));
    let (pair, f) = run_sync(
        rt,
        s,
        certs,
        image,
        &dir,
        &dir.join("tracked-journal"),
        compression,
    )?;
    if !same_prefix(image, &f.disk, s.size_mib * MIB)? {
        bail!("the replica ({compression}) differs from the master");
    }
    stop(rt, pair);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(f)
}

fn main() -> Result<()> {
    let s = Settings::parse()?;
    let size = s.size_mib * MIB;
    std::fs::create_dir_all(&s.work).with_context(|| format!("creating {}", s.work.display()))?;
    let load_start = loadavg();
    let image = s.work.join(format!("master-{}m.img", s.size_mib));
    make_image(&image, size)?;
    let certs = s.work.join("certs");
    make_certs(&certs)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // 1. Volume-level synchronisation against the plain copy, interleaved.
    let mut rounds = Vec::new();
    for i in 1..=s.repeat {
        println!("round {i}/{}: plain TCP copy ...", s.repeat);
        warm(&image)?;
        settle();
        let plain_dst = s.work.join("plain-copy.img");
        let plain = plain_copy(&image, &plain_dst)?;
        if !same_prefix(&image, &plain_dst, size)? {
            bail!("the plain copy differs from the master");
        }
        let _ = std::fs::remove_file(&plain_dst);
        println!(
            "round {i}/{}: engine sync, TLS without compression ...",
            s.repeat
        );
        let tls = sync_only(&rt, &s, &certs, &image, "none")?;
        let lz4 = if s.lz4 {
            println!("round {i}/{}: engine sync, TLS + LZ4 ...", s.repeat);
            Some(sync_only(&rt, &s, &certs, &image, "lz4")?)
        } else {
            None
        };
        rounds.push(Round { plain, tls, lz4 });
    }

    // The same comparison with both copies landing on tmpfs: no disk on
    // the receiving side, so what remains is the protocol's own cost.
    let shm = Path::new(SHM);
    let use_shm = s.shm && shm.is_dir();
    let in_memory = if use_shm && s.repeat > 0 {
        println!("in memory: plain TCP copy to tmpfs ...");
        warm(&image)?;
        settle();
        let dst = shm.join("rha-bench-plain.img");
        let plain = plain_copy(&image, &dst)?;
        let same = same_prefix(&image, &dst, size)?;
        let _ = std::fs::remove_file(&dst);
        if !same {
            bail!("the plain copy to tmpfs differs from the master");
        }
        println!("in memory: engine sync to tmpfs, TLS without compression ...");
        let dir = shm.join("rha-bench-sync");
        let (pair, tls) = run_sync(
            &rt,
            &s,
            &certs,
            &image,
            &dir,
            &dir.join("tracked-journal"),
            "none",
        )?;
        let same = same_prefix(&image, &tls.disk, size)?;
        stop(&rt, pair);
        let _ = std::fs::remove_dir_all(&dir);
        if !same {
            bail!("the replica on tmpfs differs from the master");
        }
        Some((plain, tls))
    } else {
        None
    };

    // 2. Replication lag under paced writes after a synchronisation. As
    // deployed here (tracked journal beside the image, replica on the same
    // disk); with the journal on tmpfs, which takes its fdatasyncs out of the
    // write path; and with the replica on tmpfs too, which leaves the
    // transport and the engine (the master's image still on disk).
    let mut placements = Vec::new();
    for p in &s.lag {
        let (label, dir, journal) = match p.as_str() {
            "disk" => (
                "journal on disk, replica on disk",
                s.work.join("run-lag-disk"),
                s.work.join("run-lag-disk").join("tracked-journal"),
            ),
            "tmpfs-journal" if use_shm => (
                "journal on tmpfs, replica on disk",
                s.work.join("run-lag-shm-journal"),
                shm.join("rha-bench-journal"),
            ),
            "tmpfs" if use_shm => (
                "journal and replica on tmpfs",
                shm.join("rha-bench-lag"),
                shm.join("rha-bench-lag").join("tracked-journal"),
            ),
            _ => continue,
        };
        placements.push((label.to_string(), dir, journal));
    }
    let mut runs: Vec<LagRun> = Vec::new();
    for (label, dir, journal) in placements {
        println!("engine sync, TLS without compression ({label}) ...");
        let (pair, sync) = run_sync(&rt, &s, &certs, &image, &dir, &journal, "none")?;
        if !same_prefix(&image, &sync.disk, size)? {
            bail!("the replica differs from the master");
        }
        println!(
            "replication lag: {} s of random 4-64 KiB writes at {} MB/s ({label}) ...",
            s.lag_secs, s.rate_mb
        );
        settle();
        let lag = run_lag(&pair, size, s.rate_mb, s.lag_secs)?;
        let replica_same = same_prefix(&image, &sync.disk, size)?;
        stop(&rt, pair);
        if !s.keep {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir_all(&journal);
        }
        runs.push(LagRun {
            placement: label,
            sync,
            lag,
            replica_same,
        });
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    let load_end = loadavg();
    report(
        &s,
        &rounds,
        in_memory.as_ref(),
        &runs,
        &load_start,
        &load_end,
    );
    if runs.iter().any(|r| !r.replica_same) {
        bail!("after the writes the replica differs from the master");
    }
    Ok(())
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Prints the figures, then one JSON line of them.
fn report(
    s: &Settings,
    rounds: &[Round],
    in_memory: Option<&(PlainCopy, SyncFigures)>,
    runs: &[LagRun],
    load_start: &str,
    load_end: &str,
) {
    let size = s.size_mib * MIB;
    let gb = |secs: f64| size as f64 / secs / 1e9;
    let ms = |v: f64| v * 1e3;
    println!();
    println!(
        "image: {} MiB, 100% random data (no zero block); loopback; load average {load_start} at start, {load_end} at end",
        s.size_mib
    );
    println!();
    println!(
        "{:46} {:>8} {:>10} {:>8} {:>9}",
        "volume-level synchronisation", "wall", "rate", "cpu", "vs plain"
    );
    let row = |label: String, secs: f64, cpu: f64, plain: f64, extra: String| {
        let vs = if plain.is_nan() {
            String::new()
        } else {
            format!("{:8.0}%", plain / secs * 100.0)
        };
        println!(
            "{label:46} {secs:7.2}s {:>5.2} GB/s {cpu:7.2}s {vs:>9}{extra}",
            gb(secs)
        );
    };
    for (i, r) in rounds.iter().enumerate() {
        let n = i + 1;
        let p = r.plain.durable;
        row(
            format!("{n}. plain TCP copy, receiver fsyncs (the peer)"),
            p,
            r.plain.cpu,
            f64::NAN,
            format!("   (last byte written after {:.2} s)", r.plain.received),
        );
        row(
            format!("{n}. rha engines, mutual TLS, no compression"),
            r.tls.seconds,
            r.tls.cpu,
            p,
            format!(
                "   ({:.1} MB on the wire; copying from {:.2} s)",
                r.tls.sent_bytes as f64 / MB,
                r.tls.setup
            ),
        );
        if let Some(l) = &r.lz4 {
            row(
                format!("{n}. rha engines, mutual TLS, LZ4"),
                l.seconds,
                l.cpu,
                p,
                format!(
                    "   ({:.1} MB on the wire; copying from {:.2} s)",
                    l.sent_bytes as f64 / MB,
                    l.setup
                ),
            );
        }
    }
    let plain_med = median(rounds.iter().map(|r| r.plain.durable).collect());
    let tls_med = median(rounds.iter().map(|r| r.tls.seconds).collect());
    let lz4_med = median(
        rounds
            .iter()
            .filter_map(|r| r.lz4.as_ref().map(|l| l.seconds))
            .collect(),
    );
    let ratio = plain_med / tls_med;
    if !rounds.is_empty() {
        println!(
            "median of {}: plain {plain_med:.2} s, TLS {tls_med:.2} s, TLS+LZ4 {lz4_med:.2} s; TLS sync / plain copy: {:.0}% (target >= 80%: {})",
            rounds.len(),
            ratio * 100.0,
            verdict(ratio >= 0.8)
        );
    }
    if let Some((p, t)) = in_memory {
        row(
            "plain TCP copy to tmpfs".into(),
            p.durable,
            p.cpu,
            f64::NAN,
            String::new(),
        );
        row(
            "rha engines, mutual TLS, replica on tmpfs".into(),
            t.seconds,
            t.cpu,
            p.durable,
            format!(
                "   (the protocol without the disk; copying from {:.2} s)",
                t.setup
            ),
        );
    }
    for r in runs {
        let lag = &r.lag;
        let rate = lag.bytes as f64 / lag.seconds / MB;
        println!();
        println!(
            "replication lag, {} (after a {:.2} s sync): {} writes, {:.1} MB in {:.1} s = {:.1} MB/s achieved (asked {} MB/s: {}; writer up to {:.0} ms behind schedule; one write_at takes {:.2} ms, p99 {:.2} ms)",
            r.placement,
            r.sync.seconds,
            lag.writes,
            lag.bytes as f64 / MB,
            lag.seconds,
            rate,
            s.rate_mb,
            verdict(rate >= 0.95 * s.rate_mb),
            ms(lag.max_behind),
            ms(lag.write_call.0),
            ms(lag.write_call.1),
        );
        println!(
            "  {} acknowledgements ({:.1} writes, {:.2} MB each; {:.0} ms apart, at most {:.0} ms); caught up {:.0} ms after the last write; replica equals master: {}",
            lag.acks,
            lag.writes as f64 / lag.acks.max(1) as f64,
            lag.bytes as f64 / lag.acks.max(1) as f64 / MB,
            ms(lag.ack_gap.0),
            ms(lag.ack_gap.1),
            ms(lag.drain),
            r.replica_same
        );
        println!(
            "  lag ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (target p99 <= 1000 ms: {})",
            ms(lag.pct(0.50)),
            ms(lag.pct(0.90)),
            ms(lag.pct(0.99)),
            ms(lag.pct(0.999)),
            ms(lag.pct(1.0)),
            verdict(lag.pct(0.99) <= 1.0)
        );
        let bounds = [0.010, 0.025, 0.050, 0.100, 0.250, 0.500, 1.0];
        let mut below = 0usize;
        let mut line = String::from("  distribution:");
        let n = lag.lags.len().max(1) as f64;
        for b in bounds {
            let upto = lag.lags.partition_point(|v| *v <= b);
            line += &format!(
                " <={:.0}ms {:.1}%",
                b * 1e3,
                (upto - below) as f64 * 100.0 / n
            );
            below = upto;
        }
        line += &format!(
            " >1000ms {:.1}%",
            (lag.lags.len() - below) as f64 * 100.0 / n
        );
        println!("{line}");
    }
    let json = serde_json::json!({
        "size_mib": s.size_mib,
        "plain_copy_seconds": rounds.iter().map(|r| r.plain.durable).collect::<Vec<_>>(),
        "tls_sync_seconds": rounds.iter().map(|r| r.tls.seconds).collect::<Vec<_>>(),
        "tls_lz4_sync_seconds": rounds.iter().filter_map(|r| r.lz4.as_ref().map(|l| l.seconds)).collect::<Vec<_>>(),
        "tls_vs_plain_median": ratio,
        "tmpfs_plain_seconds": in_memory.map(|(p, _)| p.durable),
        "tmpfs_tls_seconds": in_memory.map(|(_, t)| t.seconds),
        "lag": runs.iter().map(|r| serde_json::json!({
            "placement": r.placement,
            "writes": r.lag.writes,
            "write_rate_mb_s": r.lag.bytes as f64 / r.lag.seconds / MB,
            "p50_ms": ms(r.lag.pct(0.5)),
            "p90_ms": ms(r.lag.pct(0.9)),
            "p99_ms": ms(r.lag.pct(0.99)),
            "max_ms": ms(r.lag.pct(1.0)),
            "write_call_p50_ms": ms(r.lag.write_call.0),
            "replica_equals_master": r.replica_same,
        })).collect::<Vec<_>>(),
        "load_start": load_start,
        "load_end": load_end,
    });
    println!("{json}");
}
