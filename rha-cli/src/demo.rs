//! `rha demo`: the whole core loop on local files, no cloud account needed.
//!
//! 1. Makes a master "system" disk holding a real ext4 filesystem (built with
//!    `mkfs.ext4 -d` from a folder of files, where mkfs.ext4 exists) and a "data" disk.
//! 2. Creates a replica of fixed VHDs.
//! 3. Synchronises while another thread keeps writing to the data disk
//!    through the write splitter, replays the changes made meanwhile, and
//!    replicates the rest.
//! 4. Proves the replica equal to the master, checks the VHDs with
//!    `qemu-img` and the filesystem with `e2fsck -fn` where they exist, and
//!    prints one JSON line of statistics.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rha_core::events::{Event, Events};
use rha_core::journal::{FsyncPolicy, JournalConfig};
use rha_core::sink::{DiskFormat, FileSink, ReplicaSink};
use rha_core::source::TrackedSet;
use rha_core::sync::{replicate_until_idle, synchronise, LocalPeer, SyncMethod, SyncOptions};
use rha_core::volume::{FileVolume, Volume};

use crate::Method;

/// Options of `rha demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's master disks, journal and replica (emptied first).
    #[arg(long, default_value = "rha-demo")]
    dir: PathBuf,
    /// Size of the system disk in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Synchronisation method.
    #[arg(long, value_enum, default_value_t = Method::Block)]
    method: Method,
    /// Writes made to the data disk while the synchronisation runs.
    #[arg(long, default_value_t = 2000)]
    writes: u64,
}

const MIB: u64 = 1 << 20;

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    if dir.exists() {
        if !dir.join(".rha-demo").exists() {
            bail!(
                "{} exists and is not a demo directory; choose another with --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("master"))?;
    std::fs::write(dir.join(".rha-demo"), b"made by rha demo\n")?;

    let system = dir.join("master/system.img");
    let fs = make_system_disk(dir, &system, args.size_mib)?;
    let data = dir.join("master/data.img");
    let data_vol = FileVolume::create(&data, 64 * MIB)?;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for b in (0..64 * MIB / 4096).step_by(3) {
        x = xorshift(x);
        data_vol.write_at(b * 4096, &[x as u8; 4096])?;
    }
    drop(data_vol);
    let master: Vec<Arc<dyn Volume>> = vec![
        Arc::new(FileVolume::open(&system)?),
        Arc::new(FileVolume::open(&data)?),
    ];
    let sizes: Vec<u64> = master.iter().map(|v| v.size()).collect();
    println!("master: {} ({}), {}", system.display(), fs, data.display());

    let replica = FileSink::create(dir.join("replica"), &sizes, DiskFormat::FixedVhd)?;
    let events = Events::new();
    let rx = events.subscribe();
    let printer = std::thread::spawn(move || {
        let mut last_pct = -1i64;
        for e in rx {
            if let Event::SyncProgress {
                bytes_done,
                bytes_total,
                ..
            } = &e
            {
                let pct = (*bytes_done * 4 / (*bytes_total).max(1)) as i64 * 25;
                if pct == last_pct {
                    continue;
                }
                last_pct = pct;
            }
            println!("  event: {e}");
        }
    });
    let config = JournalConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(50)),
        ..Default::default()
    };
    let (set, _) = TrackedSet::open(
        dir.join("master/journal"),
        config,
        master.clone(),
        events.clone(),
    )?;
    let set = Arc::new(set);

    let writer = {
        let v = set.volume(1).context("data volume")?;
        let writes = args.writes;
        std::thread::spawn(move || -> Result<()> {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for i in 0..writes {
                x = xorshift(x);
                let off = (x % (v.size() / 4096 - 4)) * 4096;
                if i % 10 == 9 {
                    v.write_zeroes(off, 8192)?;
                } else {
                    v.write_at(
                        off,
                        &vec![(x >> 8) as u8 | 1; 4096 * (1 + (i as usize % 3))],
                    )?;
                }
                if i % 64 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        })
    };
    let method = match args.method {
        Method::Block => SyncMethod::Block,
        Method::Volume => SyncMethod::Volume,
    };
    let mut peer = LocalPeer::new(&replica);
    let report = synchronise(&set, &mut peer, &SyncOptions::new(method), &events)?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    let seq = replicate_until_idle(&set, &mut peer, 4 << 20, usize::MAX, &events)?;
    set.journal().sync()?;
    drop(peer);
    drop(events);
    let journal_left = set.journal().bytes();
    // The set holds the last handle on the event hub: dropping it ends the printer.
    drop(set);

    let mut equal = true;
    for (i, m) in master.iter().enumerate() {
        equal &= same_contents(&**m, &*replica.volume(i as u32)?)?;
    }
    let disks = replica.disk_paths();
    let qemu = disks.iter().map(|d| qemu_img_info(d)).collect::<Vec<_>>();
    let fsck = e2fsck(&disks[0]);
    drop(replica);
    let _ = printer.join();
    println!(
        "replica: {}",
        disks
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for q in &qemu {
        println!("  qemu-img: {q}");
    }
    println!("  e2fsck -fn on the replica's system disk: {fsck}");
    println!(
        "{}",
        serde_json::json!({
            "consistent": report.consistent,
            "replica_equals_master": equal,
            "replicated_through_seq": seq,
            "journal_bytes_left": journal_left,
            "sync": report,
        })
    );
    if !equal {
        bail!("the replica differs from the master: please report this as a bug");
    }
    Ok(ExitCode::SUCCESS)
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Builds the system disk: ext4 from a folder of files where mkfs.ext4
/// exists, otherwise a raw disk with some data. Says which.
fn make_system_disk(dir: &Path, path: &Path, size_mib: u64) -> Result<&'static str> {
    let files = dir.join("master/files");
    std::fs::create_dir_all(files.join("etc"))?;
    std::fs::write(files.join("etc/hostname"), "rha-demo-master\n")?;
    std::fs::write(
        files.join("README"),
        "A folder of files that becomes the demo's system disk.\n",
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
        .args(["-q", "-F", "-d"])
        .arg(&files)
        .arg(path)
        .arg(format!("{size_mib}M"))
        .stdout(std::process::Stdio::null())
        .status();
    if matches!(made, Ok(s) if s.success()) {
        return Ok("ext4, made with mkfs.ext4 -d");
    }
    let v = FileVolume::create(path, size_mib * MIB)?;
    v.write_at(MIB, &blob)?;
    Ok("raw data; mkfs.ext4 was not found")
}

fn same_contents(a: &dyn Volume, b: &dyn Volume) -> Result<bool> {
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

fn qemu_img_info(path: &Path) -> String {
    match Command::new("qemu-img")
        .args(["info", "-f", "vpc", "--output=json"])
        .arg(path)
        .output()
    {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            format!(
                "{} is format {} with virtual size {}",
                path.display(),
                v["format"],
                v["virtual-size"]
            )
        }
        Ok(o) => format!(
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(_) => "not installed (skipped)".into(),
    }
}

fn e2fsck(path: &Path) -> String {
    match Command::new("e2fsck").args(["-fn"]).arg(path).output() {
        Ok(o) if o.status.success() => "clean".into(),
        Ok(o) => format!(
            "exit {:?}: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).trim()
        ),
        Err(_) => "not installed (skipped)".into(),
    }
}
