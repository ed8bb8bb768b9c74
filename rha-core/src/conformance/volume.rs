//! The conformance suite for [`Volume`] implementations.
//!
//! Every implementation's tests call [`run_volume_suite`] with a constructor
//! of fresh, zeroed volumes; the suite checks the trait's `# Contract`. It
//! uses volumes of at most [`MAX_SUITE_SIZE`] bytes (whole MiB, so formats
//! that round sizes to a MiB, such as a fixed VHD for Azure, report exactly
//! the size asked for) and moves only a few MiB, so it stays fast against
//! remote backends such as Azure page blobs.
//!
//! ```
//! use rha_core::conformance::volume::run_volume_suite;
//! use rha_core::volume::{MemVolume, Volume};
//!
//! run_volume_suite(&mut |size| -> Box<dyn Volume> {
//!     Box::new(MemVolume::new(size).expect("a memory volume"))
//! });
//! ```

use crate::volume::{Volume, VolumeError};

/// One MiB.
const MIB: u64 = 1024 * 1024;

/// The largest volume the suite asks for.
pub const MAX_SUITE_SIZE: u64 = 2 * MIB;

/// Runs every check of the suite. `make(size)` must return a new volume of
/// `size` bytes that reads as zeros; it is called once per check.
///
/// # Panics
/// On the first check that fails, with a message naming the check, the
/// volume and what differed.
pub fn run_volume_suite(make: &mut dyn FnMut(u64) -> Box<dyn Volume>) {
    reports_its_size(make);
    new_volume_reads_as_zeros(make);
    round_trips(make);
    out_of_range_fails_and_changes_nothing(make);
    write_zeroes_zeros_only_its_range(make);
    flush_succeeds(make);
    concurrent_disjoint_writers_all_land(make);
}

/// A pattern that differs at every offset and between `seed`s.
fn pattern(seed: u8, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (offset + i).wrapping_mul(2_654_435_761) >> 7;
            (x as u8) ^ seed.wrapping_mul(31) ^ 0x5A
        })
        .collect()
}

fn ok<T>(r: Result<T, VolumeError>, check: &str, what: &str, v: &dyn Volume) -> T {
    r.unwrap_or_else(|e| {
        panic!(
            "volume conformance [{check}] on {}: {what} failed: {e}",
            v.describe()
        )
    })
}

fn read_all(v: &dyn Volume, check: &str) -> Vec<u8> {
    let len = usize::try_from(v.size()).unwrap_or_else(|_| {
        panic!(
            "volume conformance [{check}]: {} is too large to read",
            v.describe()
        )
    });
    let mut buf = vec![0u8; len];
    ok(v.read_at(0, &mut buf), check, "reading the whole volume", v);
    buf
}

/// Compares the whole volume to `model`, reporting the first difference.
fn assert_contents(v: &dyn Volume, model: &[u8], check: &str) {
    let got = read_all(v, check);
    if let Some(at) = got.iter().zip(model).position(|(a, b)| a != b) {
        panic!(
            "volume conformance [{check}] on {}: byte {at} reads {:#04x}, expected {:#04x}",
            v.describe(),
            got[at],
            model[at]
        );
    }
    assert_eq!(
        got.len(),
        model.len(),
        "volume conformance [{check}] on {}: length differs",
        v.describe()
    );
}

fn reports_its_size(make: &mut dyn FnMut(u64) -> Box<dyn Volume>) {
    for size in [MIB, MAX_SUITE_SIZE] {
        let v = make(size);
        assert_eq!(
            v.size(),
            size,
            "volume conformance [size] on {}: asked for {size} bytes, size() says {}",
            v.describe(),
            v.size()
        );
    }
}

fn new_volume_reads_as_zeros(make: &mut dyn FnMut(u64) -> Box<dyn Volume>) {
    let v = make(MIB);
    assert_contents(&*v, &vec![0u8; MIB as usize], "new volume reads as zeros");
}

fn round_trips(make: &mut dyn FnMut(u64) -> Box<dyn Volume>) {
    const CHECK: &str = "write/read round trip";
    let size = MAX_SUITE_SIZE;
    let v = make(size);
    let mut model = vec![0u8; size as usize];
    let cases: &[(u64, usize)] = &[
        (0, 1),
        (1, 511),
        (511, 2),
        (512, 512),
        (4095, 4097),
        (4096, 4096),
        (10_000, 65_537),
        (MIB - 3, 7),
        (MIB, 128 * 1024),
        (size - 4096, 4096),
        (size - 513, 513),
        (size - 1, 1),
        (0, 0),
    ];
    for (i, &(offset, len)) in cases.iter().enumerate() {
        let data = pattern(i as u8 + 1, offset, len);
        ok(
            v.write_at(offset, &data),
            CHECK,
            &format!("write of {len} bytes at {offset}"),
            &*v,
        );
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
        let mut back = vec![0u8; len];
        ok(
            v.read_at(offset, &mut back),
            CHECK,
            &format!("read of {len} bytes at {offset}"),
            &*v,
        );
        assert!(
            back == data,
            "volume conformance [{CHECK}] on {}: {len} bytes written at {offset} read back differently",
            v.describe()
        );
    }
    assert_contents(&*v, &model, CHECK);
    // An overwrite of part of an earlier write.
    let data = pattern(99, 3000, 2000);
    ok(v.write_at(3000, &data), CHECK, "overwrite", &*v);
    model[3000..5000].copy_from_slice(&data);
    assert_contents(&*v, &model, CHECK);
    // The same through a shared buffer, in pieces of one buffer.
    let shared = bytes::Bytes::from(pattern(123, 0, 12288));
    ok(
        v.write_bytes(8192, shared.slice(4096..)),
        CHECK,
        "write_bytes",
        &*v,
    );
    model[8192..16384].copy_from_slice(&shared[4096..]);
    assert_contents(&*v, &model, CHECK);
}

fn out_of_range_fails_and_changes_nothing(make: &mut dyn FnMut(u64) -> Box<dyn Volume>) {
    const CHECK: &str = "out of range";
    let size = MIB;
    let v = make(size);
    let mut model = pattern(7, 0, size as usize);
    ok(v.write_at(0, &model), CHECK, "filling the volume", &*v);
    let cases: &[(u64, u64)] = &[
        (size - 1, 2),
        (size, 1),
        (size - 512, 1024),
        (size + 4096, 512),
        (u64::MAX, 1),
        (u64::MAX - 10, 512),
    ];
    let expect_out_of_range = |r: Result<(), VolumeError>, op: &str, offset: u64, len: u64| match r
    {
        Err(VolumeError::OutOfRange { .. }) => {}
        Err(e) => panic!(
            "volume conformance [{CHECK}] on {}: {op} of {len} bytes at {offset} failed with \
             {e:?}, expected VolumeError::OutOfRange",
            v.describe()
        ),
        Ok(()) => panic!(
            "volume conformance [{CHECK}] on {}: {op} of {len} bytes at {offset} past the end \
             ({size} bytes) succeeded, expected VolumeError::OutOfRange",
            v.describe()
        ),
    };
    for &(offset, len) in cases {
        let n = len as usize;
        let mut buf = vec![0xEEu8; n];
        expect_out_of_range(v.read_at(offset, &mut buf), "read", offset, len);
        expect_out_of_range(v.write_at(offset, &vec![0xEE; n]), "write", offset, len);
        expect_out_of_range(
            v.write_bytes(offset, vec![0xEE; n].into()),
            "write_bytes",
            offset,
            len,
        );
        expect_out_of_range(v.write_zeroes(offset, len), "zero", offset, len);
    }
    // Lengths that overflow the offset arithmetic.
    expect_out_of_range(v.write_zeroes(1, u64::MAX), "zero", 1, u64::MAX);
    expect_out_of_range(v.write_zeroes(0, size + 1), "zero", 0, size + 1);
    assert_contents(&*v, &model, CHECK);
    // The volume still works afterwards.
    ok(
        v.write_at(size - 1, &[0x42]),
        CHECK,
        "write of the last byte",
        &*v,
    );
    model[size as usize - 1] = 0x42;
    assert_contents(&*v, &model, CHECK);
}

fn write_zeroes_zeros_only_its_range(make: &mut dyn FnMut(u64) -> Box<dyn Volume>) {
    const CHECK: &str = "write_zeroes";
    let size = MAX_SUITE_SIZE;
    let v = make(size);
    let mut model = pattern(3, 0, size as usize);
    // No byte of the pattern may be zero, so a zeroed neighbour shows.
    for b in &mut model {
        if *b == 0 {
            *b = 1;
        }
    }
    ok(v.write_at(0, &model), CHECK, "filling the volume", &*v);
    let cases: &[(u64, u64)] = &[
        (1000, 70_000),          // unaligned start and end
        (128 * 1024, 64 * 1024), // aligned
        (MIB - 512, 1024),       // sector-aligned, straddling a MiB
        (MIB + 4096, 0),         // empty
        (size - 4097, 4097),     // up to the last byte
        (0, 1),                  // the first byte
    ];
    for &(offset, len) in cases {
        ok(
            v.write_zeroes(offset, len),
            CHECK,
            &format!("zeroing {len} bytes at {offset}"),
            &*v,
        );
        model[offset as usize..(offset + len) as usize].fill(0);
        assert_contents(&*v, &model, CHECK);
    }
    // Zeroed ranges accept new data.
    let data = pattern(4, 2000, 3000);
    ok(
        v.write_at(2000, &data),
        CHECK,
        "write into a zeroed range",
        &*v,
    );
    model[2000..5000].copy_from_slice(&data);
    assert_contents(&*v, &model, CHECK);
}

fn flush_succeeds(make: &mut dyn FnMut(u64) -> Box<dyn Volume>) {
    let v = make(MIB);
    ok(v.flush(), "flush", "flush of a new volume", &*v);
    ok(v.write_at(512, &[1; 512]), "flush", "write", &*v);
    ok(v.flush(), "flush", "flush after a write", &*v);
    ok(v.flush(), "flush", "a second flush", &*v);
}

fn concurrent_disjoint_writers_all_land(make: &mut dyn FnMut(u64) -> Box<dyn Volume>) {
    const CHECK: &str = "concurrent writers";
    const THREADS: u64 = 4;
    const CHUNK: usize = 16 * 1024 + 100; // unaligned, so writers share sectors' neighbours
    let size = MAX_SUITE_SIZE;
    let v = make(size);
    let stripe = size / THREADS;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let v = &*v;
            s.spawn(move || {
                let start = t * stripe;
                let mut at = start;
                while at < start + stripe {
                    let n = CHUNK.min((start + stripe - at) as usize);
                    let data = pattern(t as u8 + 10, at, n);
                    ok(
                        v.write_at(at, &data),
                        CHECK,
                        &format!("thread {t} write at {at}"),
                        v,
                    );
                    at += n as u64;
                }
            });
        }
    });
    ok(v.flush(), CHECK, "flush", &*v);
    let mut model = vec![0u8; size as usize];
    for t in 0..THREADS {
        let start = t * stripe;
        model[start as usize..(start + stripe) as usize].copy_from_slice(&pattern(
            t as u8 + 10,
            start,
            stripe as usize,
        ));
    }
    assert_contents(&*v, &model, CHECK);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::MemVolume;

    #[test]
    fn mem_volume_passes() {
        run_volume_suite(&mut |size| -> Box<dyn Volume> {
            Box::new(MemVolume::new(size).unwrap())
        });
    }

    /// A volume that ignores writes must fail the suite.
    #[derive(Debug)]
    struct Forgetful(MemVolume);
    impl Volume for Forgetful {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
            self.0.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
            crate::volume::check_range(self, "write", offset, data.len() as u64)
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
            self.0.write_zeroes(offset, len)
        }
        fn flush(&self) -> Result<(), VolumeError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "forgetful".into()
        }
    }

    #[test]
    #[should_panic(expected = "volume conformance [write/read round trip] on forgetful")]
    fn a_broken_volume_fails() {
        run_volume_suite(&mut |size| -> Box<dyn Volume> {
            Box::new(Forgetful(MemVolume::new(size).unwrap()))
        });
    }
}
