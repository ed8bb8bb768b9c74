//! Frames: length, type, flags, payload, CRC32 — bytes in, bytes out, no I/O.
//!
//! ```text
//! +-----------+--------+---------+------------------+-----------+
//! | length    | type   | flags   | payload          | crc32     |
//! | u32 LE    | u8     | u8      | length - 2 bytes | u32 LE    |
//! +-----------+--------+---------+------------------+-----------+
//!             \_____________ length ______________/
//!             \_____________ covered by crc32 ____/
//! ```

use bytes::{Buf, BufMut, BytesMut};

use super::body::{
    decode_body, decode_body_shared, encode_body, encode_write_body, ty, type_is_bulky, type_name,
    type_of,
};
use super::compress::Compressors;
use super::error::WireError;
use super::message::{Compression, Message};

/// The largest payload (uncompressed) a codec accepts by default, in bytes.
pub const DEFAULT_MAX_FRAME: usize = 32 << 20;

/// Bytes of the length field.
const LEN_BYTES: usize = 4;
/// Bytes of the type and flags that follow the length.
const HEADER_BYTES: usize = 2;
/// Bytes of the CRC.
const CRC_BYTES: usize = 4;

/// Bytes a frame adds to its payload: the length, type and flags, and CRC.
pub const FRAME_OVERHEAD: usize = LEN_BYTES + HEADER_BYTES + CRC_BYTES;

/// Flag bit 0: the payload is compressed.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Every flag bit this build knows.
const KNOWN_FLAGS: u8 = FLAG_COMPRESSED;

/// Encodes messages into frames and decodes frames into messages.
///
/// A codec holds the frame limit, the negotiated compression and its
/// scratch buffers; use one per connection (or one per direction). It does
/// no I/O: [`Codec::encode`] appends bytes to a buffer and [`Codec::decode`]
/// takes bytes off the front of one; [`super::read_message`] and
/// [`super::write_message`] connect it to a socket.
#[derive(Debug)]
pub struct Codec {
    max_frame: usize,
    compression: Compression,
    compressors: Compressors,
    /// The uncompressed payload of a frame being compressed.
    body: BytesMut,
    /// The compressed payload being encoded, or the decompressed payload being decoded.
    scratch: Vec<u8>,
    /// Frame bytes for [`super::write_message`].
    pub(crate) wbuf: BytesMut,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new(DEFAULT_MAX_FRAME)
    }
}

impl Codec {
    /// A codec that accepts payloads of up to `max_frame` bytes and
    /// compresses nothing.
    pub fn new(max_frame: usize) -> Self {
        Codec {
            // The length field is a u32 that also counts the type and flags.
            max_frame: max_frame.min(u32::MAX as usize - HEADER_BYTES),
            compression: Compression::None,
            compressors: Compressors::new(),
            body: BytesMut::new(),
            scratch: Vec::new(),
            wbuf: BytesMut::new(),
        }
    }

    /// Sets the compression used for the frames this codec encodes (the
    /// one negotiated in the handshake). Decoding accepts frames compressed
    /// with any algorithm this build knows, whatever this setting.
    pub fn set_compression(&mut self, c: Compression) {
        self.compression = c;
    }

    /// The compression used for the frames this codec encodes.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Sets the Zstandard level (clamped to 1..=19; default 1).
    pub fn set_zstd_level(&mut self, level: i32) {
        self.compressors.set_zstd_level(level);
    }

    /// The Zstandard level.
    pub fn zstd_level(&self) -> i32 {
        self.compressors.zstd_level()
    }

    /// The largest payload (uncompressed) this codec sends or accepts, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Appends one frame holding `msg` to `out`; returns the bytes appended
    /// (what goes on the wire).
    ///
    /// Fails with [`WireError::TooLarge`] if the message's payload exceeds
    /// [`Codec::max_frame`] (before compression: the receiver checks the
    /// uncompressed size too); `out` is then left as it was.
    pub fn encode(&mut self, msg: &Message, out: &mut BytesMut) -> Result<usize, WireError> {
        self.encode_with(type_of(msg), msg.name(), out, |b| encode_body(msg, b))
    }

    /// [`Codec::encode`] of `Message::Write { volume, offset, data }` from
    /// borrowed data: the same frame, with one copy of the data fewer (the
    /// master's synchronisation sends its read buffers this way).
    pub fn encode_write(
        &mut self,
        volume: u32,
        offset: u64,
        data: &[u8],
        out: &mut BytesMut,
    ) -> Result<usize, WireError> {
        self.encode_with(ty::WRITE, "Write", out, |b| {
            encode_write_body(volume, offset, data, b)
        })
    }

    /// Frames the payload `body` appends, of message type `t` (`name`).
    /// Sent uncompressed, the payload is written straight after its header
    /// in `out` (the data is copied once), then the length and CRC are
    /// filled in; compressed, it is built in a scratch buffer first.
    fn encode_with(
        &mut self,
        t: u8,
        name: &'static str,
        out: &mut BytesMut,
        body: impl FnOnce(&mut BytesMut) -> Result<(), WireError>,
    ) -> Result<usize, WireError> {
        let too_large = |len: usize, max: usize| WireError::TooLarge {
            message: name,
            len,
            max,
        };
        if self.compression == Compression::None || !type_is_bulky(t) {
            let start = out.len();
            out.put_u32_le(0);
            out.put_u8(t);
            out.put_u8(0);
            let body_start = out.len();
            let built = body(out);
            let body_len = out.len() - body_start;
            if let Err(e) = built {
                out.truncate(start);
                return Err(e);
            }
            if body_len > self.max_frame {
                out.truncate(start);
                return Err(too_large(body_len, self.max_frame));
            }
            // `len` fits: the payload is at most max_frame <= u32::MAX - 2.
            let len = (HEADER_BYTES + body_len) as u32;
            out[start..start + LEN_BYTES].copy_from_slice(&len.to_le_bytes());
            let crc = crc32fast::hash(&out[start + LEN_BYTES..]);
            out.put_u32_le(crc);
            return Ok(out.len() - start);
        }
        self.body.clear();
        body(&mut self.body)?;
        if self.body.len() > self.max_frame {
            return Err(too_large(self.body.len(), self.max_frame));
        }
        let mut flags = 0u8;
        let mut payload: &[u8] = &self.body;
        self.compressors
            .compress(self.compression, &self.body, &mut self.scratch)?;
        // Sent compressed only when that is smaller, and never above the
        // limit (the length field must pass the receiver's check).
        if self.scratch.len() < self.body.len() {
            flags |= FLAG_COMPRESSED;
            payload = &self.scratch;
        }
        let len = HEADER_BYTES + payload.len();
        let frame_len = LEN_BYTES + len + CRC_BYTES;
        out.reserve(frame_len);
        // `len` fits: the payload is at most max_frame <= u32::MAX - 2.
        out.put_u32_le(len as u32);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[t, flags]);
        crc.update(payload);
        out.put_u8(t);
        out.put_u8(flags);
        out.put_slice(payload);
        out.put_u32_le(crc.finalize());
        Ok(frame_len)
    }

    /// Takes one whole frame off the front of `buf`.
    ///
    /// - `Ok(None)`: `buf` does not hold a whole frame yet; nothing was
    ///   consumed (read more bytes and call again). The header has been
    ///   checked, so [`frame_len`] tells how many bytes to wait for.
    /// - `Ok(Some((message, size)))`: the frame was consumed; `size` is its
    ///   size on the wire.
    /// - `Err`: the bytes are corrupt, oversized or not a valid message; the
    ///   connection must close. Nothing is consumed, so the caller may still
    ///   inspect the bytes (see [`super::sniff_foreign`]).
    ///
    /// The length is checked against [`Codec::max_frame`] before anything
    /// is allocated, and the CRC before anything is parsed. Never panics.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<(Message, usize)>, WireError> {
        let Some(frame_len) = frame_len(buf, self.max_frame)? else {
            return Ok(None);
        };
        if buf.len() < frame_len {
            return Ok(None);
        }
        let covered = &buf[LEN_BYTES..frame_len - CRC_BYTES];
        let mut crc_bytes = [0u8; CRC_BYTES];
        crc_bytes.copy_from_slice(&buf[frame_len - CRC_BYTES..frame_len]);
        let stored = u32::from_le_bytes(crc_bytes);
        let computed = crc32fast::hash(covered);
        if stored != computed {
            return Err(WireError::Checksum { stored, computed });
        }
        let (t, flags, payload) = (covered[0], covered[1], &covered[HEADER_BYTES..]);
        let Some(name) = type_name(t) else {
            return Err(WireError::UnknownType(t));
        };
        if flags & !KNOWN_FLAGS != 0 || (flags & FLAG_COMPRESSED != 0 && !type_is_bulky(t)) {
            return Err(WireError::BadFlags {
                flags,
                message: name,
            });
        }
        let msg = if flags & FLAG_COMPRESSED != 0 {
            self.compressors
                .decompress(payload, self.max_frame, &mut self.scratch)?;
            let msg = decode_body(t, &self.scratch);
            // Do not keep a large decompression buffer for small frames.
            if self.scratch.capacity() > 4 << 20 {
                self.scratch = Vec::new();
            }
            msg?
        } else if t == ty::WRITE || t == ty::APPLY {
            // Bulk data stays where it arrived (a sync's writes, a batch's records).
            return Self::decode_shared(t, buf, frame_len).map(Some);
        } else {
            decode_body(t, payload)?
        };
        buf.advance(frame_len);
        Ok(Some((msg, frame_len)))
    }

    /// Decodes the checked, uncompressed frame at the front of `buf` with
    /// its data left where it arrived: the frame is split off `buf` and the
    /// message's data is a slice of it. On an error the bytes are put back,
    /// so that nothing is consumed (a copy, on a path that closes the
    /// connection anyway).
    fn decode_shared(
        t: u8,
        buf: &mut BytesMut,
        frame_len: usize,
    ) -> Result<(Message, usize), WireError> {
        let frame = buf.split_to(frame_len).freeze();
        let payload = frame.slice(LEN_BYTES + HEADER_BYTES..frame_len - CRC_BYTES);
        match decode_body_shared(t, &payload) {
            Ok(msg) => Ok((msg, frame_len)),
            Err(e) => {
                let mut restored = BytesMut::with_capacity(frame.len() + buf.len());
                restored.extend_from_slice(&frame);
                restored.extend_from_slice(buf);
                *buf = restored;
                Err(e)
            }
        }
    }
}

/// The size on the wire of the frame at the front of `buf`, once its length
/// field has arrived (`Ok(None)` before). Checks the length against
/// `max_frame`: `Err` for a length that no valid frame has.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < LEN_BYTES {
        return Ok(None);
    }
    let mut len_bytes = [0u8; LEN_BYTES];
    len_bytes.copy_from_slice(&buf[..LEN_BYTES]);
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len < HEADER_BYTES {
        return Err(WireError::malformed(
            "frame",
            format!("a length of {len} cannot hold the type and flags"),
        ));
    }
    let oversized = || WireError::Oversized {
        len: (len - HEADER_BYTES) as u64,
        max: max_frame,
    };
    if len - HEADER_BYTES > max_frame {
        return Err(oversized());
    }
    // Cannot overflow where usize has 64 bits; where it has 32, a frame
    // whose size does not fit in memory is refused as oversized.
    match len.checked_add(LEN_BYTES + CRC_BYTES) {
        Some(size) => Ok(Some(size)),
        None => Err(oversized()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout_is_as_documented() {
        let mut c = Codec::new(DEFAULT_MAX_FRAME);
        let mut out = BytesMut::new();
        let n = c.encode(&Message::Ok { req: 0x0102 }, &mut out).unwrap();
        assert_eq!(n, out.len());
        assert_eq!(n, FRAME_OVERHEAD + 8);
        assert_eq!(&out[..4], &10u32.to_le_bytes());
        assert_eq!(out[4], 40); // Ok
        assert_eq!(out[5], 0); // flags
        assert_eq!(&out[6..14], &0x0102u64.to_le_bytes());
        assert_eq!(&out[14..], &crc32fast::hash(&out[4..14]).to_le_bytes());
        let (m, used) = c.decode(&mut out).unwrap().unwrap();
        assert_eq!(m, Message::Ok { req: 0x0102 });
        assert_eq!(used, n);
        assert!(out.is_empty());
    }

    #[test]
    fn an_apply_batch_decodes_with_its_data_left_in_the_frame() {
        use rha_core::journal::{Payload, Record};
        let mut c = Codec::new(DEFAULT_MAX_FRAME);
        let data = vec![0x5a; 8192];
        let msg = Message::Apply {
            req: 3,
            records: vec![Record {
                seq: 9,
                volume: 0,
                offset: 4096,
                payload: Payload::Data(data.clone().into()),
            }],
        };
        let mut out = BytesMut::new();
        c.encode(&msg, &mut out).unwrap();
        let (start, end) = (out.as_ptr() as usize, out.as_ptr() as usize + out.len());
        let (m, _) = c.decode(&mut out).unwrap().unwrap();
        assert_eq!(m, msg);
        let Message::Apply { records, .. } = m else {
            unreachable!()
        };
        let Payload::Data(got) = &records[0].payload else {
            unreachable!()
        };
        let at = got.as_ptr() as usize;
        assert!(
            start <= at && at + got.len() <= end,
            "the record's data was copied"
        );
    }

    #[test]
    fn unknown_flags_and_compressed_small_messages_are_refused() {
        let mut c = Codec::new(DEFAULT_MAX_FRAME);
        for flags in [0x02u8, 0x80, FLAG_COMPRESSED] {
            let mut out = BytesMut::new();
            c.encode(&Message::Ok { req: 1 }, &mut out).unwrap();
            out[5] = flags;
            let crc = crc32fast::hash(&out[4..14]);
            out[14..].copy_from_slice(&crc.to_le_bytes());
            let e = c.decode(&mut out).unwrap_err();
            assert!(matches!(e, WireError::BadFlags { .. }), "{e}");
        }
    }

    #[test]
    fn too_large_to_send() {
        let mut c = Codec::new(100);
        let mut out = BytesMut::new();
        let msg = Message::BlockData {
            req: 1,
            data: vec![0; 100],
        };
        let e = c.encode(&msg, &mut out).unwrap_err();
        assert!(matches!(e, WireError::TooLarge { len: 112, .. }), "{e}");
        assert!(out.is_empty());
        // Whatever the buffer held before stays, with and without compression.
        for compression in [Compression::None, Compression::Lz4] {
            c.set_compression(compression);
            let mut out = BytesMut::from(&b"kept"[..]);
            let e = c.encode_write(0, 0, &[1; 100], &mut out).unwrap_err();
            assert!(
                matches!(
                    e,
                    WireError::TooLarge {
                        message: "Write",
                        len: 116,
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(&out[..], b"kept");
        }
    }
}
