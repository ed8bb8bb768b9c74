//! Per-frame payload compression.
//!
//! A compressed payload is `u8 algorithm id`, `u32 LE uncompressed length`,
//! then the compressed bytes (LZ4 block format, or one or more Zstandard
//! frames). The uncompressed length is checked against the frame limit
//! before anything is allocated, and decompression writes into a buffer of
//! exactly that length, so it can never produce more (no zip bombs).

use super::body::{compression_from_id, compression_id};
use super::error::WireError;
use super::message::Compression;

/// Bytes before the compressed data: the algorithm id and the uncompressed length.
pub(crate) const COMPRESSED_HEADER: usize = 1 + 4;

/// The default Zstandard level (fast; the link is usually the bottleneck,
/// but the master's CPU is the customer's).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Compression state kept across frames (contexts and scratch buffers).
pub(crate) struct Compressors {
    zstd_level: i32,
    zstd_c: Option<zstd::bulk::Compressor<'static>>,
    zstd_d: Option<zstd::bulk::Decompressor<'static>>,
}

impl std::fmt::Debug for Compressors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressors")
            .field("zstd_level", &self.zstd_level)
            .finish_non_exhaustive()
    }
}

impl Compressors {
    pub(crate) fn new() -> Self {
        Compressors {
            zstd_level: DEFAULT_ZSTD_LEVEL,
            zstd_c: None,
            zstd_d: None,
        }
    }

    pub(crate) fn zstd_level(&self) -> i32 {
        self.zstd_level
    }

    pub(crate) fn set_zstd_level(&mut self, level: i32) {
        let level = level.clamp(1, 19);
        if level != self.zstd_level {
            self.zstd_level = level;
            self.zstd_c = None;
        }
    }

    /// Compresses `input` with `algo` into `out` (cleared first), header
    /// included. `algo` must not be [`Compression::None`].
    pub(crate) fn compress(
        &mut self,
        algo: Compression,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let len = u32::try_from(input.len())
            .map_err(|_| WireError::Compress(format!("{} bytes is too many", input.len())))?;
        out.clear();
        out.push(compression_id(algo));
        out.extend_from_slice(&len.to_le_bytes());
        match algo {
            Compression::None => {
                return Err(WireError::Compress(
                    "no compression algorithm chosen".into(),
                ))
            }
            Compression::Lz4 => {
                let bound = lz4_flex::block::get_maximum_output_size(input.len());
                out.resize(COMPRESSED_HEADER + bound, 0);
                let n = lz4_flex::block::compress_into(input, &mut out[COMPRESSED_HEADER..])
                    .map_err(|e| WireError::Compress(format!("lz4: {e}")))?;
                out.truncate(COMPRESSED_HEADER + n);
            }
            Compression::Zstd => {
                let c = match &mut self.zstd_c {
                    Some(c) => c,
                    slot => slot.insert(
                        zstd::bulk::Compressor::new(self.zstd_level)
                            .map_err(|e| WireError::Compress(format!("zstd: {e}")))?,
                    ),
                };
                let bound = zstd::zstd_safe::compress_bound(input.len());
                out.reserve(bound);
                // After the header: a Vec alone would be written from its start.
                let mut cursor = std::io::Cursor::new(&mut *out);
                cursor.set_position(COMPRESSED_HEADER as u64);
                c.compress_to_buffer(input, &mut cursor)
                    .map_err(|e| WireError::Compress(format!("zstd: {e}")))?;
            }
        }
        Ok(())
    }

    /// Decompresses a compressed payload (header included) into `out`
    /// (cleared first), refusing anything that would exceed `max` bytes.
    pub(crate) fn decompress(
        &mut self,
        payload: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        if payload.len() < COMPRESSED_HEADER {
            return Err(WireError::Decompress(format!(
                "the compressed payload has {} bytes, fewer than its {COMPRESSED_HEADER}-byte header",
                payload.len()
            )));
        }
        let id = payload[0];
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&payload[1..COMPRESSED_HEADER]);
        let len = u32::from_le_bytes(len_bytes);
        let data = &payload[COMPRESSED_HEADER..];
        if len as u64 > max as u64 {
            return Err(WireError::Oversized {
                len: len.into(),
                max,
            });
        }
        let len = len as usize;
        let algo = compression_from_id(id).ok_or_else(|| {
            WireError::Decompress(format!("unknown compression algorithm id {id}"))
        })?;
        out.clear();
        match algo {
            Compression::None => {
                return Err(WireError::Decompress(
                    "the frame is flagged compressed but names no algorithm (id 0)".into(),
                ))
            }
            Compression::Lz4 => {
                // An LZ4 block expands at most about 255 times: refuse a
                // declared size the data cannot produce before allocating it.
                if len > data.len().saturating_mul(255).saturating_add(16) {
                    return Err(WireError::Decompress(format!(
                        "lz4: {} compressed bytes cannot expand to the declared {len}",
                        data.len()
                    )));
                }
                out.resize(len, 0);
                let n = lz4_flex::block::decompress_into(data, out)
                    .map_err(|e| WireError::Decompress(format!("lz4: {e}")))?;
                if n != len {
                    return Err(WireError::Decompress(format!(
                        "lz4: {n} bytes decompressed, {len} declared"
                    )));
                }
            }
            Compression::Zstd => {
                let d = match &mut self.zstd_d {
                    Some(d) => d,
                    slot => slot.insert(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| WireError::Decompress(format!("zstd: {e}")))?,
                    ),
                };
                out.reserve_exact(len);
                // Writes at most `out`'s capacity: a stream that would
                // produce more fails instead of growing the buffer.
                let n = d
                    .decompress_to_buffer(data, out)
                    .map_err(|e| WireError::Decompress(format!("zstd: {e}")))?;
                if n != len || out.len() != len {
                    return Err(WireError::Decompress(format!(
                        "zstd: {n} bytes decompressed, {len} declared"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_round_trip() {
        let mut c = Compressors::new();
        let input: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        for algo in [Compression::Lz4, Compression::Zstd] {
            let mut z = Vec::new();
            c.compress(algo, &input, &mut z).unwrap();
            assert!(z.len() < input.len() / 10, "{algo:?}: {}", z.len());
            let mut back = Vec::new();
            c.decompress(&z, input.len(), &mut back).unwrap();
            assert_eq!(back, input);
            // A limit below the declared size is refused before decompressing.
            let e = c.decompress(&z, input.len() - 1, &mut back).unwrap_err();
            assert!(matches!(e, WireError::Oversized { .. }), "{e}");
        }
    }

    #[test]
    fn a_lying_length_is_refused() {
        let mut c = Compressors::new();
        let input = vec![5u8; 10_000];
        for algo in [Compression::Lz4, Compression::Zstd] {
            let mut z = Vec::new();
            c.compress(algo, &input, &mut z).unwrap();
            for declared in [9_999u32, 10_001, 1 << 20] {
                let mut bad = z.clone();
                bad[1..5].copy_from_slice(&declared.to_le_bytes());
                let mut out = Vec::new();
                assert!(
                    c.decompress(&bad, 32 << 20, &mut out).is_err(),
                    "{algo:?} {declared}"
                );
            }
        }
    }
}
