//! Journal segment files: naming, header, scanning and sequential reading.
//!
//! A segment is an append-only file named after the seq of its first
//! record (`{first_seq:020}.seg`), starting with a [`SEGMENT_HEADER_BYTES`]
//! header and followed by records back to back (see [`super::record`]).
//!
//! ```text
//!  0   8  SEGMENT_MAGIC
//!  8   4  SEGMENT_VERSION
//!  12  8  first seq (must match the file name)
//!  20  4  CRC-32 of bytes 0..20
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::record::{decode_record, decode_record_shared, record_len, RecordError};
use super::{JournalError, Record};
use crate::Seq;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RHAJSEG\0";
/// Version of the segment layout.
pub const SEGMENT_VERSION: u32 = 1;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_BYTES: u64 = 24;
/// File-name suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// The file name of the segment whose first record has seq `first`.
pub(crate) fn segment_name(first: Seq) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name back into its first seq.
pub(crate) fn parse_segment_name(name: &str) -> Option<Seq> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header bytes of a segment starting at `first`.
pub(crate) fn segment_header(first: Seq) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What the journal knows about one segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Seq of the first record (from the file name).
    pub first_seq: Seq,
    /// Path of the file.
    pub path: PathBuf,
    /// File offset of each record; record `i` has seq `first_seq + i`.
    pub offsets: Vec<u64>,
    /// Length of the valid part of the file (end of the last good record).
    pub len: u64,
}

impl Segment {
    /// The seq the next record appended to this segment gets.
    pub fn next_seq(&self) -> Seq {
        self.first_seq + self.offsets.len() as u64
    }

    /// Seq of the last record, if any.
    pub fn last_seq(&self) -> Option<Seq> {
        (!self.offsets.is_empty()).then(|| self.next_seq() - 1)
    }

    /// Bytes of records with seq > `acked`.
    pub fn bytes_after(&self, acked: Seq) -> u64 {
        if acked < self.first_seq {
            return self.len - SEGMENT_HEADER_BYTES;
        }
        let idx = acked - self.first_seq + 1;
        match self.offsets.get(idx as usize) {
            Some(&off) => self.len - off,
            None => 0,
        }
    }
}

/// Outcome of reading one record from a stream.
pub(crate) enum Next {
    /// A record and its encoded length.
    Record(Record, u64),
    /// The stream ended exactly at a record boundary.
    End,
    /// The stream ended inside a record (this many bytes of it were present).
    Short(u64),
    /// The bytes at this point are not a valid record.
    Corrupt(RecordError),
}

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

/// Reads the next record from `r`, reusing `buf`. Allocates only after the
/// length has been validated.
pub(crate) fn read_next(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<Next> {
    buf.clear();
    buf.resize(8, 0);
    let n = read_full(r, &mut buf[..8])?;
    if n == 0 {
        return Ok(Next::End);
    }
    let len = match record_len(&buf[..n]) {
        Err(e) => return Ok(Next::Corrupt(e)),
        Ok(None) => return Ok(Next::Short(n as u64)),
        Ok(Some(len)) => len,
    };
    buf.resize(len, 0);
    let m = read_full(r, &mut buf[8..])?;
    if m < len - 8 {
        return Ok(Next::Short((8 + m) as u64));
    }
    // The record's data stays in the buffer it was read into (no copy).
    let whole = bytes::Bytes::from(std::mem::take(buf));
    let decoded = decode_record_shared(&whole);
    Ok(match decoded {
        Ok(Some((rec, used))) => Next::Record(rec, used as u64),
        Ok(None) => Next::Short(len as u64),
        Err(e) => Next::Corrupt(e),
    })
}

/// Where and why a scan stopped before the end of the file.
#[derive(Debug)]
pub(crate) struct Bad {
    /// File offset of the first byte that is not part of a good record.
    pub offset: u64,
    /// Seq the record at that offset should have had.
    pub seq: Seq,
    /// What was wrong.
    pub reason: String,
}

/// Result of scanning a segment file.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The good prefix of the segment.
    pub segment: Segment,
    /// The file's length on disk.
    pub file_len: u64,
    /// Set if the file does not end right after the last good record.
    pub bad: Option<Bad>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Scans the segment at `path`, which the file name says starts at `first`.
pub(crate) fn scan_segment(path: &Path, first: Seq) -> Result<Scan, JournalError> {
    let file = File::open(path).map_err(io("open segment", path))?;
    let file_len = file.metadata().map_err(io("stat segment", path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut segment = Segment {
        first_seq: first,
        path: path.to_path_buf(),
        offsets: Vec::new(),
        len: 0,
    };
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    let n = read_full(&mut r, &mut header).map_err(io("read segment header", path))?;
    if n < header.len() || header != segment_header(first) {
        let reason = if n < header.len() {
            format!("segment header is short ({n} of {SEGMENT_HEADER_BYTES} bytes)")
        } else {
            format!("segment header is invalid or does not match the file name (first seq {first})")
        };
        return Ok(Scan {
            segment,
            file_len,
            bad: Some(Bad {
                offset: 0,
                seq: first,
                reason,
            }),
        });
    }
    segment.len = SEGMENT_HEADER_BYTES;
    let mut buf = Vec::new();
    loop {
        let seq = segment.next_seq();
        let reason = match read_next(&mut r, &mut buf).map_err(io("read segment", path))? {
            Next::End => break,
            Next::Record(rec, len) if rec.seq == seq => {
                segment.offsets.push(segment.len);
                segment.len += len;
                continue;
            }
            Next::Record(rec, _) => format!("record has seq {} where {seq} was expected", rec.seq),
            Next::Short(n) => format!("record is cut short after {n} bytes"),
            Next::Corrupt(e) => e.to_string(),
        };
        let offset = segment.len;
        return Ok(Scan {
            segment,
            file_len,
            bad: Some(Bad {
                offset,
                seq,
                reason,
            }),
        });
    }
    Ok(Scan {
        segment,
        file_len,
        bad: None,
    })
}

/// Largest remainder [`valid_record_after`] searches; beyond it the damage
/// is treated as mid-journal corruption without looking.
const MAX_TAIL_SEARCH: u64 = 256 << 20;

/// Searches every byte offset after `from` for a record with a valid CRC.
/// Returns the largest seq found (`Some`) or `None` if there is none, i.e.
/// the damage at `from` is a torn or corrupt tail.
pub(crate) fn valid_record_after(
    path: &Path,
    from: u64,
    file_len: u64,
) -> Result<Option<Seq>, JournalError> {
    if file_len.saturating_sub(from) > MAX_TAIL_SEARCH {
        return Ok(Some(0));
    }
    let mut file = File::open(path).map_err(io("open segment", path))?;
    file.seek(SeekFrom::Start(from + 1))
        .map_err(io("seek segment", path))?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)
        .map_err(io("read segment tail", path))?;
    let magic = super::record::RECORD_MAGIC.to_le_bytes();
    let mut found = None;
    for i in 0..rest.len() {
        if rest[i..].starts_with(&magic) {
            if let Ok(Some((rec, _))) = decode_record(&rest[i..]) {
                found = Some(found.map_or(rec.seq, |s: Seq| s.max(rec.seq)));
            }
        }
    }
    Ok(found)
}

/// Truncates the file at `path` to `len` bytes and makes that durable.
pub(crate) fn truncate(path: &Path, len: u64) -> Result<(), JournalError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open segment for truncation", path))?;
    f.set_len(len).map_err(io("truncate segment", path))?;
    f.sync_all().map_err(io("fsync truncated segment", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("state"), None);
    }
}
