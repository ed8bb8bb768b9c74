//! The change journal (API skeleton; implemented by the journal work).
#![allow(missing_docs, unused_variables)]

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use crate::{Seq, VolumeId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Data(Vec<u8>),
    Zero(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: Seq,
    pub volume: VolumeId,
    pub offset: u64,
    pub payload: Payload,
}

impl Record {
    pub fn len(&self) -> u64 {
        match &self.payload {
            Payload::Data(d) => d.len() as u64,
            Payload::Zero(n) => *n,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Interval(Duration),
    Never,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub fsync: FsyncPolicy,
    pub region_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            fsync: FsyncPolicy::Always,
            region_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Logged(Seq),
    Overflowed,
}

#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub records: u64,
    pub dropped_tail_bytes: u64,
    pub clean_shutdown: bool,
    pub needs_resync: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("journal {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal: records after sequence {wanted} were discarded (the oldest kept is {first}); a resynchronisation of the dirty regions is needed")]
    Gap { wanted: Seq, first: Seq },
}

#[derive(Debug)]
pub struct Journal {}

impl Journal {
    pub fn open(
        dir: impl AsRef<Path>,
        config: JournalConfig,
        volume_sizes: &[u64],
    ) -> Result<(Journal, Recovery), JournalError> {
        todo!()
    }
    pub fn append(&self, volume: VolumeId, offset: u64, data: &[u8]) -> Result<Appended, JournalError> {
        todo!()
    }
    pub fn append_zero(&self, volume: VolumeId, offset: u64, len: u64) -> Result<Appended, JournalError> {
        todo!()
    }
    pub fn sync(&self) -> Result<(), JournalError> {
        todo!()
    }
    pub fn read_after(&self, after: Seq, max_bytes: usize) -> Result<Vec<Record>, JournalError> {
        todo!()
    }
    pub fn acknowledge(&self, upto: Seq) -> Result<(), JournalError> {
        todo!()
    }
    pub fn acknowledged(&self) -> Seq {
        todo!()
    }
    pub fn last_seq(&self) -> Seq {
        todo!()
    }
    pub fn bytes(&self) -> u64 {
        todo!()
    }
    pub fn needs_resync(&self) -> bool {
        todo!()
    }
    pub fn dirty_ranges(&self, volume: VolumeId) -> Vec<Range<u64>> {
        todo!()
    }
    pub fn resync_started(&self) -> Result<Seq, JournalError> {
        todo!()
    }
    pub fn resync_completed(&self, base: Seq) -> Result<(), JournalError> {
        todo!()
    }
    pub fn close(self) -> Result<(), JournalError> {
        todo!()
    }
}
