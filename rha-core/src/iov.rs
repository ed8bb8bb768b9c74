//! Vectored writes that write everything: a record's header and its data
//! (shared with the caller, not copied) go to the kernel in one call.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::unix::io::AsRawFd;

/// Most buffers handed to one `pwritev` (Linux's `IOV_MAX`).
const MAX_IOV: usize = 1024;

/// Writes all of `bufs` to `w` in order, as `write_all` does for one buffer.
pub(crate) fn write_all_vectored(
    w: &mut impl Write,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `bufs` to `file` from byte `offset` on, in order, as
/// `FileExt::write_all_at` does for one buffer.
pub(crate) fn write_all_vectored_at(
    file: &File,
    mut bufs: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let at = libc::off_t::try_from(offset).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "write offset beyond off_t")
        })?;
        let count = bufs.len().min(MAX_IOV) as libc::c_int;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` (std guarantees it
        // on Unix); the first `count` slices are valid for the call, and the
        // descriptor is `file`'s own.
        let written = unsafe { libc::pwritev(file.as_raw_fd(), bufs.as_ptr().cast(), count, at) };
        match written {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n if n > 0 => {
                offset += n as u64;
                IoSlice::advance_slices(&mut bufs, n as usize);
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A writer that takes at most `step` bytes per call, so the loops
    /// must resume in the middle of a buffer.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pieces() -> Vec<Vec<u8>> {
        (0..2500u32)
            .map(|i| (0..(i % 7) as u8).map(|b| b ^ i as u8).collect())
            .collect()
    }

    #[test]
    fn every_byte_arrives_in_order_through_short_writes() {
        let pieces = pieces();
        let mut slices: Vec<IoSlice> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let mut w = Trickle {
            out: Vec::new(),
            step: 5,
        };
        write_all_vectored(&mut w, &mut slices).unwrap();
        assert_eq!(w.out, pieces.concat());
    }

    #[test]
    fn more_buffers_than_one_call_takes_land_at_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("f"))
            .unwrap();
        let pieces = pieces();
        let want = pieces.concat();
        let mut slices: Vec<IoSlice> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        assert!(slices.len() > MAX_IOV);
        write_all_vectored_at(&file, &mut slices, 100).unwrap();
        let mut got = vec![0u8; want.len() + 100];
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got[..100], &[0u8; 100][..]);
        assert_eq!(&got[100..], &want[..]);
    }
}
