//! Thin async wrappers that connect a [`Codec`] to a socket.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{frame_len, Codec};
use super::error::WireError;
use super::message::Message;

/// Bytes asked of the socket at a time while no frame length is known.
const READ_CHUNK: usize = 16 << 10;
/// The most buffer space reserved ahead of the bytes received: a peer that
/// announces a large frame and sends nothing more costs no more memory than
/// this; the buffer grows as the frame's bytes arrive.
const MAX_RESERVE: usize = 1 << 20;

/// Reads one message from `r`, keeping the bytes read past it in `buf` (use
/// the same `buf` for every call on a connection).
///
/// Returns `Ok(None)` on a clean end of stream exactly at a frame boundary,
/// and [`WireError::UnexpectedEof`] on an end of stream inside a frame. On
/// a decoding error the offending bytes stay in `buf` (see
/// [`super::sniff_foreign`]). Cancel-safe: if the future is dropped, the
/// bytes already read stay in `buf`.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    codec: &mut Codec,
) -> Result<Option<(Message, usize)>, WireError> {
    loop {
        if let Some(found) = codec.decode(buf)? {
            return Ok(Some(found));
        }
        // The header, if there, was checked against the limit by decode.
        let want = match frame_len(buf, codec.max_frame())? {
            Some(n) => n.saturating_sub(buf.len()).clamp(1, MAX_RESERVE),
            None => READ_CHUNK,
        };
        buf.reserve(want);
        if r.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(WireError::UnexpectedEof)
            };
        }
    }
}

/// Encodes `msg` and writes the frame to `w`; returns the bytes written.
/// Flushes nothing itself.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    codec: &mut Codec,
    msg: &Message,
) -> Result<usize, WireError> {
    let mut out = std::mem::take(&mut codec.wbuf);
    out.clear();
    let result = match codec.encode(msg, &mut out) {
        Ok(n) => w.write_all(&out).await.map(|()| n).map_err(WireError::from),
        Err(e) => Err(e),
    };
    // Keep the buffer for the next message unless it grew large.
    if out.capacity() <= 4 << 20 {
        out.clear();
        codec.wbuf = out;
    }
    result
}
