//! The NBD server with the real QEMU tools as clients: `qemu-io` writing
//! random patterns, zeroes and discards; `qemu-img convert` of a whole disk
//! through the export; `qemu-io` killed in the middle of its writes. Each
//! time the journal's records, replayed onto a copy of the image as it was
//! before, must give the image exactly (`qemu-img compare`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nbd_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use nbd_support::*;

fn qemu_io(url: &str, cmds: &[String]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c
        .arg(url)
        .output()
        .expect("qemu-io (qemu-utils) is needed; scripts/test.sh installs it");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-io failed: {text}");
    assert!(
        !text.contains("failed") && !text.contains("error"),
        "qemu-io reported a failure: {text}"
    );
    text
}

#[test]
fn qemu_io_random_patterns_then_the_replayed_journal_equals_the_image() {
    let t = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let mut s = Served::start(t.path(), size);
    let replica = t.path().join("replica.img");
    std::fs::copy(&s.image, &replica).unwrap();
    // What the disk must hold, kept alongside.
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut cmds = Vec::new();
    for i in 0..120 {
        // Sector-aligned offsets and lengths from 512 bytes to 2 MiB.
        let len = (1 + rng.below(4096)) * 512;
        let off = rng.below((size - len) / 512 + 1) * 512;
        let (o, l) = (off as usize, len as usize);
        match i % 6 {
            4 => {
                cmds.push(format!("write -z {off} {len}"));
                model[o..o + l].fill(0);
            }
            5 => {
                // A discard is journalled as zeroes: reads give zeros after it.
                cmds.push(format!("discard {off} {len}"));
                model[o..o + l].fill(0);
            }
            _ => {
                let p = (rng.below(255) + 1) as u8;
                let fua = if i % 7 == 0 { " -f" } else { "" };
                cmds.push(format!("write{fua} -P {p} {off} {len}"));
                model[o..o + l].fill(p);
            }
        }
    }
    cmds.push("flush".into());
    qemu_io(&s.url(), &cmds);
    // Read back a few ranges through the export with their expected pattern.
    let mut reads = Vec::new();
    for _ in 0..20 {
        let off = rng.below(size / 4096) * 4096;
        let p = model[off as usize];
        let run = model[off as usize..]
            .iter()
            .take(1 << 20)
            .take_while(|b| **b == p)
            .count() as u64;
        reads.push(format!("read -P {p} {off} {}", run / 512 * 512));
    }
    let reads: Vec<String> = reads.into_iter().filter(|r| !r.ends_with(" 0")).collect();
    qemu_io(&s.url(), &reads);
    // The export and the expected image are equal.
    let expected = t.path().join("expected.img");
    std::fs::write(&expected, &model).unwrap();
    let (same, why) = qemu_compare(expected.to_str().unwrap(), &s.url());
    assert!(same, "export differs from the expected image: {why}");
    s.stop();
    let (same, why) = qemu_compare(expected.to_str().unwrap(), s.image.to_str().unwrap());
    assert!(same, "image differs from the expected image: {why}");
    s.replay_to(&replica);
    let (same, why) = qemu_compare(s.image.to_str().unwrap(), replica.to_str().unwrap());
    assert!(same, "the replayed journal differs from the image: {why}");
}

#[test]
fn qemu_img_convert_of_a_whole_disk_through_the_export() {
    let t = tempfile::tempdir().unwrap();
    let size = 48 * MIB;
    let mut s = Served::start(t.path(), size);
    let replica = t.path().join("replica.img");
    std::fs::copy(&s.image, &replica).unwrap();
    // A source disk: random data with holes, so convert sends writes and zeroes.
    let mut data = vec![0u8; size as usize];
    let mut rng = Rng(42);
    for (i, mib) in data.chunks_mut(MIB as usize).enumerate() {
        if i % 5 != 3 {
            for w in mib.chunks_mut(8) {
                w.copy_from_slice(&rng.next().to_le_bytes());
            }
        }
    }
    let src = t.path().join("src.img");
    std::fs::write(&src, &data).unwrap();
    // Also pre-fill the target so that zero regions must really be zeroed.
    qemu_io(&s.url(), &["write -P 0xcc 0 48M".to_string()]);
    let out = Command::new("qemu-img")
        .args(["convert", "-n", "-p", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(s.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (same, why) = qemu_compare(src.to_str().unwrap(), &s.url());
    assert!(same, "{why}");
    s.stop();
    s.replay_to(&replica);
    let (same, why) = qemu_compare(src.to_str().unwrap(), replica.to_str().unwrap());
    assert!(
        same,
        "the replayed journal differs from the source disk: {why}"
    );
}

#[test]
fn qemu_io_killed_mid_writes_loses_nothing_acknowledged() {
    let t = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let mut s = Served::start(t.path(), size);
    let replica = t.path().join("replica.img");
    std::fs::copy(&s.image, &replica).unwrap();
    // 1000 writes of 64 KiB at distinct offsets, each its own pattern.
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for i in 0..1000u64 {
        c.arg("-c")
            .arg(format!("write -P {} {} 64k", i % 255 + 1, i * 65536));
    }
    let mut child = c
        .arg(s.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        // "wrote 65536/65536 bytes at offset N": printed once the write is acknowledged.
        if let Some(off) = line.strip_prefix("wrote 65536/65536 bytes at offset ") {
            acked.push(off.trim().parse::<u64>().unwrap());
            if acked.len() == 300 {
                child.kill().unwrap();
                break;
            }
        }
    }
    let _ = child.wait();
    assert_eq!(acked.len(), 300, "qemu-io ended early");
    s.stop();
    let img = rha_core::volume::FileVolume::open(&s.image).unwrap();
    let mut buf = vec![0u8; 65536];
    for off in &acked {
        use rha_core::volume::Volume;
        img.read_at(*off, &mut buf).unwrap();
        let p = (off / 65536 % 255 + 1) as u8;
        assert!(
            buf.iter().all(|b| *b == p),
            "acknowledged write at {off} is missing"
        );
    }
    s.replay_to(&replica);
    let (same, why) = qemu_compare(s.image.to_str().unwrap(), replica.to_str().unwrap());
    assert!(same, "the replayed journal differs from the image: {why}");
}
