//! An in-memory volume, for tests and embedders.

use std::sync::RwLock;

use super::{check_range, Volume, VolumeError, SECTOR_SIZE};

/// A volume held in memory. Its contents are lost when it is dropped.
#[derive(Debug)]
pub struct MemVolume {
    name: String,
    data: RwLock<Vec<u8>>,
}

impl MemVolume {
    /// A zero-filled volume of `size` bytes (a multiple of 512).
    pub fn new(size: u64) -> Result<Self, VolumeError> {
        Self::named("memory volume", size)
    }

    /// A zero-filled volume of `size` bytes with a name for messages.
    pub fn named(name: &str, size: u64) -> Result<Self, VolumeError> {
        if size % SECTOR_SIZE != 0 {
            return Err(VolumeError::BadSize {
                volume: name.to_string(),
                size,
                reason: "a volume's size must be a multiple of 512 bytes".into(),
            });
        }
        let len = usize::try_from(size).map_err(|_| VolumeError::BadSize {
            volume: name.to_string(),
            size,
            reason: "too large to hold in memory on this machine".into(),
        })?;
        Ok(MemVolume {
            name: name.to_string(),
            data: RwLock::new(vec![0; len]),
        })
    }

    /// A volume holding a copy of `bytes` (whose length must be a multiple of 512).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, VolumeError> {
        let v = Self::new(0)?;
        if bytes.len() as u64 % SECTOR_SIZE != 0 {
            return Err(VolumeError::BadSize {
                volume: v.name,
                size: bytes.len() as u64,
                reason: "a volume's size must be a multiple of 512 bytes".into(),
            });
        }
        *v.data.write().unwrap_or_else(|e| e.into_inner()) = bytes;
        Ok(v)
    }

    /// A copy of the whole contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Volume for MemVolume {
    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        check_range(self, "read", offset, buf.len() as u64)?;
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let start = offset as usize;
        buf.copy_from_slice(&data[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, src: &[u8]) -> Result<(), VolumeError> {
        check_range(self, "write", offset, src.len() as u64)?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let start = offset as usize;
        data[start..start + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        check_range(self, "zero", offset, len)?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let start = offset as usize;
        data[start..start + len as usize].fill(0);
        Ok(())
    }

    fn flush(&self) -> Result<(), VolumeError> {
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
