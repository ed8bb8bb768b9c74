//! The journal's small persistent state file and atomic file replacement.
//!
//! ```text
//!  offset size field
//!  0      8    STATE_MAGIC
//!  8      4    STATE_VERSION
//!  12     8    acknowledged seq
//!  20     8    seq floor: every seq <= floor has been used (never reuse)
//!  28     1    needs_resync (0/1)
//!  29     1    clean_shutdown (0/1)
//!  30     1    fsync policy of the session that wrote it was Always (0/1)
//!  31     1    boot id length (0..=63)
//!  32     63   boot id bytes, zero padded
//!  95     1    flags: bit 0 = the session kept records only in memory
//!  96     4    CRC-32 of bytes 0..96
//! ```
//!
//! The file is only ever replaced atomically (temporary file, fsync, rename,
//! fsync of the directory), so a CRC
//! mismatch means outside damage, not a torn write.
//!
//! Byte 95 was the last byte of a 64-byte boot id field; boot ids are 36
//! bytes, so a file written by an older build reads as flags 0, and an
//! older build reading a newer file ignores the flags.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::JournalError;
use crate::Seq;

/// Magic bytes at the start of the state file.
pub const STATE_MAGIC: [u8; 8] = *b"RHAJSTAT";
/// Version of the state file layout.
pub const STATE_VERSION: u32 = 1;
/// File name of the state file inside the journal directory.
pub const STATE_FILE: &str = "state";
const STATE_BYTES: usize = 100;
const BOOT_ID_MAX: usize = 63;
/// Flag bit of byte 95: records were kept only in memory.
const FLAG_MEMORY_RECORDS: u8 = 1;

/// Contents of the state file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub acknowledged: Seq,
    pub seq_floor: Seq,
    pub needs_resync: bool,
    pub clean_shutdown: bool,
    pub fsync_always: bool,
    /// The session may have held records only in memory
    /// ([`super::JournalConfig::memory_bytes`]): an unclean end lost them.
    pub memory_records: bool,
    pub boot_id: Vec<u8>,
}

impl State {
    fn encode(&self) -> [u8; STATE_BYTES] {
        let mut b = [0u8; STATE_BYTES];
        b[0..8].copy_from_slice(&STATE_MAGIC);
        b[8..12].copy_from_slice(&STATE_VERSION.to_le_bytes());
        b[12..20].copy_from_slice(&self.acknowledged.to_le_bytes());
        b[20..28].copy_from_slice(&self.seq_floor.to_le_bytes());
        b[28] = self.needs_resync as u8;
        b[29] = self.clean_shutdown as u8;
        b[30] = self.fsync_always as u8;
        let id = &self.boot_id[..self.boot_id.len().min(BOOT_ID_MAX)];
        b[31] = id.len() as u8;
        b[32..32 + id.len()].copy_from_slice(id);
        if self.memory_records {
            b[95] |= FLAG_MEMORY_RECORDS;
        }
        let crc = crc32fast::hash(&b[..96]);
        b[96..100].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<State, String> {
        if b.len() != STATE_BYTES {
            return Err(format!(
                "state file is {} bytes, expected {STATE_BYTES}",
                b.len()
            ));
        }
        if b[0..8] != STATE_MAGIC {
            return Err("bad magic: not an rha journal state file".into());
        }
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&b[96..100]);
        if u32::from_le_bytes(crc) != crc32fast::hash(&b[..96]) {
            return Err("checksum mismatch".into());
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&b[8..12]);
        let version = u32::from_le_bytes(v);
        if version != STATE_VERSION {
            return Err(format!(
                "version {version}, this build reads version {STATE_VERSION}"
            ));
        }
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let id_len = usize::from(b[31]).min(BOOT_ID_MAX);
        Ok(State {
            acknowledged: u64_at(12),
            seq_floor: u64_at(20),
            needs_resync: b[28] != 0,
            clean_shutdown: b[29] != 0,
            fsync_always: b[30] != 0,
            memory_records: b[95] & FLAG_MEMORY_RECORDS != 0,
            boot_id: b[32..32 + id_len].to_vec(),
        })
    }
}

/// Reads the state file in `dir`; `Ok(None)` if there is none yet.
pub(crate) fn read_state(dir: &Path) -> Result<Option<State>, JournalError> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => State::decode(&bytes)
            .map(Some)
            .map_err(|reason| JournalError::CorruptState { path, reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JournalError::Io {
            op: "read state file",
            path,
            source,
        }),
    }
}

/// Atomically replaces the state file in `dir`.
pub(crate) fn write_state(dir: &Path, state: &State) -> Result<(), JournalError> {
    write_atomic(dir, STATE_FILE, &state.encode())
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), or empty if
/// the platform has none (then every unclean shutdown counts as a reboot).
pub(crate) fn boot_id() -> Vec<u8> {
    fs::read("/proc/sys/kernel/random/boot_id")
        .map(|mut v| {
            while v.last().is_some_and(|c| c.is_ascii_whitespace()) {
                v.pop();
            }
            v.truncate(BOOT_ID_MAX);
            v
        })
        .unwrap_or_default()
}

fn io_err(op: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> JournalError {
    move |source| JournalError::Io { op, path, source }
}

/// Makes a directory's entries (creations, renames, deletions) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir.to_path_buf()))
}

/// Replaces `dir/name` with `bytes` atomically and durably: write a
/// temporary file, fsync it, rename it over the target, fsync the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), JournalError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create temporary file", tmp.clone()))?;
    f.write_all(bytes)
        .map_err(io_err("write temporary file", tmp.clone()))?;
    f.sync_all()
        .map_err(io_err("fsync temporary file", tmp.clone()))?;
    drop(f);
    fs::rename(&tmp, &target).map_err(io_err("rename temporary file into place", target))?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_state(dir.path()).unwrap(), None);
        let s = State {
            acknowledged: 7,
            seq_floor: 9,
            needs_resync: true,
            clean_shutdown: false,
            fsync_always: true,
            memory_records: true,
            boot_id: boot_id(),
        };
        write_state(dir.path(), &s).unwrap();
        assert_eq!(read_state(dir.path()).unwrap(), Some(s));
        let p = dir.path().join(STATE_FILE);
        let mut b = fs::read(&p).unwrap();
        b[13] ^= 1;
        fs::write(&p, &b).unwrap();
        let e = read_state(dir.path()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
