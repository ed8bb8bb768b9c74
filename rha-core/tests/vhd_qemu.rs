//! Fixed VHDs checked against QEMU's `vpc` driver (`qemu-img`), the O(1)
//! attach/strip round trip, damaged footers, and footer properties.
//!
//! The tests that need `qemu-img` print why and return when it is absent.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;
use rha_core::volume::vhd::{
    attach_footer, read_footer, strip_footer, Footer, FooterError, FOOTER_SIZE,
};
use rha_core::volume::{open_volume, FileVolume, ImageFormat, VhdVolume, Volume, VolumeError};

const MIB: u64 = 1024 * 1024;

/// True when `qemu-img` can run; otherwise says why the test is skipped.
fn have_qemu_img(test: &str) -> bool {
    match Command::new("qemu-img").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "skipping {test}: `qemu-img --version` failed: {:?}",
                o.status
            );
            false
        }
        Err(e) => {
            eprintln!("skipping {test}: qemu-img is not available ({e})");
            false
        }
    }
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img info` of `path` read as a VHD (format `vpc`); fixed VHDs have no
/// header, so QEMU's probe would take them for raw images without `-f vpc`.
fn vpc_info(path: &Path) -> serde_json::Value {
    let out = qemu_img(&["info", "-f", "vpc", "--output=json", path.to_str().unwrap()]);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_vpc_size(path: &Path, size: u64) {
    let info = vpc_info(path);
    assert_eq!(info["format"], "vpc", "{info}");
    assert_eq!(info["virtual-size"].as_u64(), Some(size), "{info}");
}

/// `qemu-img compare` of a raw image and a VHD: identical contents.
fn assert_identical(raw: &Path, vhd: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "vpc"])
        .arg(raw)
        .arg(vhd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare found {} and {} different: {}{}",
        raw.display(),
        vhd.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw image of `len` bytes with data at its start, middle and end.
fn make_raw(path: &Path, len: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x5Au8; 4096], 0).unwrap();
    f.write_all_at(b"middle", len / 2).unwrap();
    f.write_all_at(&[0xC3u8; 512], len - 512).unwrap();
}

#[test]
fn qemu_reads_our_vhd_with_the_exact_size() {
    if !have_qemu_img("qemu_reads_our_vhd_with_the_exact_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Sizes whose CHS geometry does not describe them exactly, small and
    // past the largest geometry (127 GiB; sparse, so no space is used).
    for size in [MIB, 10 * MIB, 1000 * MIB, 200 * 1024 * MIB] {
        let p = dir.path().join(format!("{size}.vhd"));
        let (v, report) = VhdVolume::create(&p, size).unwrap();
        assert!(!report.was_rounded());
        v.write_at(size - 4096, &[0x77; 4096]).unwrap();
        v.flush().unwrap();
        assert_vpc_size(&p, size);
    }
}

#[test]
fn qemu_finds_our_vhd_identical_to_its_raw_source() {
    if !have_qemu_img("qemu_finds_our_vhd_identical_to_its_raw_source") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for len in [8 * MIB, 5 * MIB + 4096] {
        let raw = dir.path().join(format!("{len}.raw"));
        make_raw(&raw, len);
        // The same data written through a VhdVolume...
        let vhd = dir.path().join(format!("{len}.vhd"));
        let (v, report) = VhdVolume::create(&vhd, len).unwrap();
        let src = FileVolume::open_read_only(&raw).unwrap();
        let mut buf = vec![0u8; len as usize];
        src.read_at(0, &mut buf).unwrap();
        v.write_at(0, &buf).unwrap();
        v.flush().unwrap();
        assert_vpc_size(&vhd, report.virtual_size);
        // ...and the raw file made a VHD in place.
        let attached = dir.path().join(format!("{len}-attached.raw"));
        std::fs::copy(&raw, &attached).unwrap();
        let a = attach_footer(&attached).unwrap();
        assert_eq!(a.size, report);
        assert_eq!(a.size.was_rounded(), len % MIB != 0);
        assert_vpc_size(&attached, a.size.virtual_size);
        // QEMU compares images of different sizes as equal when the longer
        // one's tail is zeros, which is what the rounding adds.
        assert_identical(&raw, &vhd);
        assert_identical(&raw, &attached);
        // The comparison does look at the data: one changed byte is found.
        v.write_at(len / 3, &[0xFF]).unwrap();
        v.flush().unwrap();
        let out = Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "vpc"])
            .arg(&raw)
            .arg(&vhd)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "qemu-img compare missed a difference"
        );
    }
}

/// Why the creator application matters: QEMU sizes a disk whose creator is
/// `"qemu"` (or `"vpc "`) by its CHS geometry, which loses the tail of a
/// 10 MiB disk; rha's creator makes QEMU use the exact current size.
#[test]
fn qemu_trusts_our_creator_application_for_the_size() {
    if !have_qemu_img("qemu_trusts_our_creator_application_for_the_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 10 * MIB;
    let p = dir.path().join("chs.vhd");
    let (v, _) = VhdVolume::create(&p, size).unwrap();
    let mut footer = v.footer().clone();
    drop(v);
    assert_vpc_size(&p, size);
    let chs_bytes = footer.geometry.sectors() * 512;
    assert!(chs_bytes < size);
    footer.creator_app = *b"qemu";
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&footer.to_bytes(), size).unwrap();
    }
    assert_vpc_size(&p, chs_bytes);
}

#[test]
fn attach_and_strip_are_o1_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.raw");
    let len = 3 * MIB + 1536; // not a whole MiB: attach extends it
    make_raw(&p, len);
    let before = std::fs::metadata(&p).unwrap();
    let allocated_before = before.blocks();

    let report = attach_footer(&p).unwrap();
    assert_eq!(report.size.requested_size, len);
    assert_eq!(report.size.virtual_size, 4 * MIB);
    let attached = std::fs::metadata(&p).unwrap();
    assert_eq!(
        attached.ino(),
        before.ino(),
        "attach must not copy the file"
    );
    assert_eq!(attached.dev(), before.dev());
    assert_eq!(attached.len(), 4 * MIB + FOOTER_SIZE as u64);
    // Only the footer's block was allocated: the extension is a hole.
    assert!(
        attached.blocks() <= allocated_before + 16,
        "attach allocated {} blocks of 512 bytes",
        attached.blocks() - allocated_before
    );
    assert_eq!(ImageFormat::detect(&p).unwrap(), ImageFormat::FixedVhd);
    assert_eq!(read_footer(&p).unwrap(), Some(report.footer.clone()));
    let v = open_volume(&p).unwrap();
    assert_eq!(v.size(), 4 * MIB);
    let mut tail = [1u8; 512];
    v.read_at(len - 512, &mut tail).unwrap();
    assert_eq!(tail, [0xC3; 512]);
    v.read_at(len, &mut tail).unwrap();
    assert_eq!(tail, [0; 512], "the extension reads as zeros");
    drop(v);

    // Attaching twice is refused.
    let err = attach_footer(&p).unwrap_err();
    assert!(err.to_string().contains("already a fixed VHD"), "{err}");

    assert_eq!(strip_footer(&p).unwrap(), 4 * MIB);
    let stripped = std::fs::metadata(&p).unwrap();
    assert_eq!(stripped.ino(), before.ino(), "strip must not copy the file");
    assert_eq!(stripped.len(), 4 * MIB);
    assert_eq!(ImageFormat::detect(&p).unwrap(), ImageFormat::Raw);
    assert_eq!(read_footer(&p).unwrap(), None);
    let v = open_volume(&p).unwrap();
    assert_eq!(v.size(), 4 * MIB);
    let mut head = [0u8; 4096];
    v.read_at(0, &mut head).unwrap();
    assert_eq!(head, [0x5A; 4096]);

    // Stripping a raw image is refused and changes nothing.
    let err = strip_footer(&p).unwrap_err();
    assert!(matches!(err, VolumeError::Format { .. }), "{err}");
    assert!(err.to_string().contains("no VHD footer"), "{err}");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 * MIB);
}

#[test]
fn we_read_a_fixed_vhd_made_by_qemu() {
    if !have_qemu_img("we_read_a_fixed_vhd_made_by_qemu") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, opts) in [
        ("chs", "subformat=fixed"),
        ("forced", "subformat=fixed,force_size=on"),
    ] {
        let p = dir.path().join(format!("{name}.vhd"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            opts,
            p.to_str().unwrap(),
            "10M",
        ]);
        let qemu_size = vpc_info(&p)["virtual-size"].as_u64().unwrap();
        let file_len = std::fs::metadata(&p).unwrap().len();
        assert_eq!(file_len, qemu_size + FOOTER_SIZE as u64);
        assert_eq!(ImageFormat::detect(&p).unwrap(), ImageFormat::FixedVhd);
        let v = VhdVolume::open(&p).unwrap();
        assert_eq!(v.size(), qemu_size, "{name}: {:?}", v.footer());
        assert_eq!(&v.footer().creator_app[..3], b"qem");
        // Data written through QEMU (into the existing VHD: `convert -n`)
        // reads back through us.
        let data = dir.path().join(format!("{name}.raw"));
        make_raw(&data, qemu_size);
        qemu_img(&[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "vpc",
            data.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        assert_identical(&data, &p);
        let v = open_volume(&p).unwrap();
        assert_eq!(v.size(), qemu_size);
        let mut b = [0u8; 4096];
        v.read_at(0, &mut b).unwrap();
        assert_eq!(b, [0x5A; 4096], "{name}");
        v.read_at(qemu_size - 4096, &mut b).unwrap();
        assert_eq!(b[4096 - 512..], [0xC3; 512], "{name}");
        // And strip/attach work on it.
        assert_eq!(strip_footer(&p).unwrap(), qemu_size);
    }
}

#[test]
fn a_damaged_footer_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("damaged.vhd");
    drop(VhdVolume::create(&p, 2 * MIB).unwrap());
    // Flip one byte of the current size.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x01], 2 * MIB + 50).unwrap();
    drop(f);
    for err in [
        VhdVolume::open(&p).unwrap_err(),
        open_volume(&p).unwrap_err(),
        strip_footer(&p).unwrap_err(),
        read_footer(&p).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                VolumeError::VhdFooter {
                    offset,
                    source: FooterError::BadChecksum { .. },
                    ..
                } if offset == 2 * MIB
            ),
            "{msg}"
        );
        assert!(msg.contains("damaged.vhd"), "{msg}");
        assert!(msg.contains("checksum"), "{msg}");
        assert!(msg.contains(&format!("offset {}", 2 * MIB)), "{msg}");
    }
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 * MIB + 512);

    // A valid footer on a file of the wrong length.
    let p = dir.path().join("truncated.vhd");
    let footer = Footer::new_fixed(4 * MIB);
    let mut bytes = vec![0u8; 2 * MIB as usize];
    bytes.extend_from_slice(&footer.to_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let err = VhdVolume::open(&p).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("truncated.vhd") && msg.contains("4194304"),
        "{msg}"
    );
    assert!(strip_footer(&p).is_err());

    // A dynamic VHD made by qemu-img is recognised and refused with advice.
    if have_qemu_img("a_damaged_footer_gives_a_clear_error (dynamic VHD)") {
        let p = dir.path().join("dynamic.vhd");
        qemu_img(&["create", "-q", "-f", "vpc", p.to_str().unwrap(), "10M"]);
        let err = open_volume(&p).unwrap_err();
        assert!(
            matches!(
                err,
                VolumeError::VhdFooter {
                    source: FooterError::NotFixed { disk_type: 3 },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("subformat=fixed"), "{err}");
    }

    // No footer at all.
    let p = dir.path().join("plain.raw");
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    let err = VhdVolume::open(&p).unwrap_err();
    assert!(err.to_string().contains("no VHD footer"), "{err}");
}

fn arb_footer() -> impl Strategy<Value = Footer> {
    (
        0u64..(1 << 44),
        any::<u32>(),
        any::<[u8; 4]>(),
        any::<[u8; 16]>(),
        any::<u8>(),
        any::<u64>(),
    )
        .prop_map(|(sectors, timestamp, app, id, saved, original)| {
            let mut f = Footer::new_fixed(sectors * 512);
            f.timestamp = timestamp;
            f.creator_app = app;
            f.unique_id = id;
            f.saved_state = saved;
            f.original_size = original;
            f
        })
}

proptest! {
    #[test]
    fn footer_round_trips(f in arb_footer()) {
        let bytes = f.to_bytes();
        let back = Footer::parse(&bytes).unwrap();
        prop_assert_eq!(&back, &f);
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn any_single_byte_corruption_is_rejected(
        f in arb_footer(),
        at in 0usize..FOOTER_SIZE,
        delta in 1u8..=255,
    ) {
        let mut bytes = f.to_bytes();
        bytes[at] = bytes[at].wrapping_add(delta);
        let r = Footer::parse(&bytes);
        prop_assert!(r.is_err(), "corrupting byte {} was not noticed", at);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        if let Ok(f) = Footer::parse(&bytes) {
            prop_assert_eq!(&f.to_bytes()[..], &bytes[..]);
        }
    }

    #[test]
    fn truncated_footers_are_rejected(f in arb_footer(), len in 0usize..FOOTER_SIZE) {
        let bytes = f.to_bytes();
        prop_assert_eq!(
            Footer::parse(&bytes[..len]).unwrap_err(),
            FooterError::WrongLength { len }
        );
    }
}

/// The committed fuzz seeds (`fuzz/corpus/vhd_footer/`) are valid footers
/// that pass the fuzz target's round-trip check.
#[test]
fn fuzz_seed_corpus_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vhd_footer");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let footer = Footer::parse(&bytes)
            .unwrap_or_else(|e| panic!("seed {} does not parse: {e}", path.display()));
        assert_eq!(&footer.to_bytes()[..], &bytes[..], "{}", path.display());
        seen += 1;
    }
    assert!(
        seen >= 2,
        "expected the committed seeds in {}",
        dir.display()
    );
}
