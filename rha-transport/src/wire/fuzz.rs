//! The body of the `wire_frame` fuzz target (`fuzz/fuzz_targets/wire_frame.rs`).
//!
//! It lives in the library so that `cargo test` compiles it and runs it on
//! the committed seeds (`fuzz/corpus/wire_frame/`) and on the property
//! tests' inputs; the fuzz target only calls [`fuzz_frame`].

use bytes::{BufMut, BytesMut};

use super::codec::{frame_len, Codec, FLAG_COMPRESSED};
use super::message::{Compression, Message};

/// The frame limit of the fuzz body. Smaller than
/// [`super::DEFAULT_MAX_FRAME`] so that a small input that decompresses to
/// the limit stays quick to check; no check depends on the limit's value.
const FUZZ_MAX_FRAME: usize = 1 << 20;

/// Bytes of the length field, and of the CRC.
const LEN_BYTES: usize = 4;
const CRC_BYTES: usize = 4;

/// What decoding a byte stream gave: the messages with their sizes on the
/// wire, then why it stopped (`None`: it needs more bytes; `Some`: the
/// error, as text).
type Outcome = (Vec<(Message, usize)>, Option<String>);

/// Decodes arbitrary bytes as a stream of frames and checks what the frame
/// decoder promises; returns how many messages `data` held before it ended
/// or turned out corrupt.
///
/// Checks, on `data` as it is:
///
/// - decoding never panics; a decoding error is the peer's fault
///   ([`super::WireError::is_peer_fault`]) and consumes nothing; "not a
///   whole frame yet" consumes nothing and agrees with [`frame_len`];
/// - feeding the same bytes one at a time gives the same messages and the
///   same outcome as feeding them all at once;
/// - every message decoded re-encodes (without compression, with LZ4, with
///   Zstandard) to a frame that decodes to the same message; an
///   uncompressed frame re-encodes to exactly its own bytes (a `Hello`
///   without the compression offers this build skips).
///
/// Then it rewrites the length field and the CRC of `data` to match the
/// bytes between them (taken as type, flags and payload), so that mutated
/// inputs reach the message parser without having to guess a CRC, and
/// checks that this one frame decodes to a message that round-trips, or is
/// refused; never "more bytes needed".
///
/// # Panics
///
/// When the codec breaks one of these promises: that is what the fuzzer
/// looks for.
pub fn fuzz_frame(data: &[u8]) -> usize {
    let whole = decode_all(data);
    let bytewise = decode_bytewise(data);
    assert!(
        whole == bytewise,
        "decoding all at once gave {whole:?}, byte by byte {bytewise:?}"
    );
    let mut at = 0;
    for (msg, used) in &whole.0 {
        check_round_trip(msg, &data[at..at + used]);
        at += used;
    }

    if let Some(frame) = repaired(data) {
        let (msgs, err) = decode_all(&frame);
        match (msgs.as_slice(), err) {
            ([(msg, used)], None) => {
                assert_eq!(
                    *used,
                    frame.len(),
                    "a repaired frame was not consumed whole"
                );
                check_round_trip(msg, &frame);
            }
            ([], Some(_)) => {}
            (msgs, err) => panic!(
                "a repaired frame of {} bytes gave {} messages and {err:?}",
                frame.len(),
                msgs.len()
            ),
        }
    }
    whole.0.len()
}

/// Decodes `data` held whole in the buffer, frame after frame.
fn decode_all(data: &[u8]) -> Outcome {
    let mut codec = Codec::new(FUZZ_MAX_FRAME);
    let mut buf = BytesMut::from(data);
    let mut msgs = Vec::new();
    loop {
        let before = buf.len();
        let head = frame_len(&buf, FUZZ_MAX_FRAME);
        match codec.decode(&mut buf) {
            Ok(Some((msg, used))) => {
                assert_eq!(
                    before - buf.len(),
                    used,
                    "decode consumed other than the frame"
                );
                assert!(
                    matches!(head, Ok(Some(n)) if n == used),
                    "frame_len said {head:?}, the frame took {used} bytes"
                );
                msgs.push((msg, used));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                match head {
                    Ok(None) => assert!(before < LEN_BYTES, "no length read from {before} bytes"),
                    Ok(Some(n)) => assert!(n > before, "a whole frame of {n} bytes not decoded"),
                    Err(e) => panic!("frame_len refused ({e}), decode asked for more bytes"),
                }
                return (msgs, None);
            }
            Err(e) => {
                assert_eq!(buf.len(), before, "a refused frame consumed bytes");
                assert!(
                    e.is_peer_fault(),
                    "decoding failed other than the peer's fault: {e}"
                );
                return (msgs, Some(e.to_string()));
            }
        }
    }
}

/// Decodes `data` arriving one byte at a time.
fn decode_bytewise(data: &[u8]) -> Outcome {
    let mut codec = Codec::new(FUZZ_MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut msgs = Vec::new();
    for &b in data {
        buf.put_u8(b);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(found)) => msgs.push(found),
                Ok(None) => break,
                Err(e) => return (msgs, Some(e.to_string())),
            }
        }
    }
    (msgs, None)
}

/// Re-encodes `msg` (decoded from `frame`) with each compression and
/// checks that it decodes back to `msg`.
fn check_round_trip(msg: &Message, frame: &[u8]) {
    let mut codec = Codec::new(FUZZ_MAX_FRAME);
    for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
        codec.set_compression(c);
        let mut out = BytesMut::new();
        let n = match codec.encode(msg, &mut out) {
            Ok(n) => n,
            Err(e) => panic!("a decoded {} does not re-encode ({c:?}): {e}", msg.name()),
        };
        assert_eq!(
            n,
            out.len(),
            "encode reported other than the bytes it appended"
        );
        // A Hello drops the compression offers this build does not know,
        // so its re-encoding may be shorter; every other uncompressed frame
        // re-encodes to its own bytes.
        let skipped_offers = matches!(msg, Message::Hello(_)) && out.len() < frame.len();
        if c == Compression::None && frame[LEN_BYTES + 1] & FLAG_COMPRESSED == 0 && !skipped_offers
        {
            assert!(
                out[..] == *frame,
                "a decoded {} re-encodes to other bytes",
                msg.name()
            );
        }
        match codec.decode(&mut out) {
            Ok(Some((back, used))) => {
                assert!(
                    back == *msg,
                    "{c:?}: {msg:?} re-encoded decodes as {back:?}"
                );
                assert_eq!(
                    used, n,
                    "{c:?}: the re-encoded frame was not consumed whole"
                );
            }
            other => panic!(
                "{c:?}: a re-encoded {} does not decode: {other:?}",
                msg.name()
            ),
        }
    }
}

/// `data` with its length field and CRC rewritten to frame the bytes
/// between them; `None` for fewer than 6 bytes (no room for type and flags).
fn repaired(data: &[u8]) -> Option<Vec<u8>> {
    let covered = match data.len() {
        n if n >= LEN_BYTES + 2 + CRC_BYTES => &data[LEN_BYTES..n - CRC_BYTES],
        n if n >= LEN_BYTES + 2 => &data[LEN_BYTES..],
        _ => return None,
    };
    let len = u32::try_from(covered.len()).ok()?;
    let mut frame = Vec::with_capacity(LEN_BYTES + covered.len() + CRC_BYTES);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(covered);
    frame.extend_from_slice(&crc32fast::hash(covered).to_le_bytes());
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_body_on_small_inputs() {
        assert_eq!(fuzz_frame(&[]), 0);
        assert_eq!(fuzz_frame(&[0xff; 64]), 0);
        let mut codec = Codec::default();
        let mut out = BytesMut::new();
        codec.encode(&Message::Ok { req: 7 }, &mut out).unwrap();
        codec
            .encode(
                &Message::Close {
                    reason: "bye".into(),
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(fuzz_frame(&out), 2);
        // A truncated second frame: one message, then more bytes needed.
        assert_eq!(fuzz_frame(&out[..out.len() - 1]), 1);
    }

    #[test]
    fn repair_frames_the_bytes_between_length_and_crc() {
        let mut codec = Codec::default();
        let mut out = BytesMut::new();
        codec.encode(&Message::Ok { req: 7 }, &mut out).unwrap();
        assert_eq!(repaired(&out).as_deref(), Some(&out[..]));
        let mut bad = out.to_vec();
        bad[0] = 0xee; // wrong length
        bad[15] ^= 0xff; // wrong CRC
        assert_eq!(repaired(&bad).as_deref(), Some(&out[..]));
        assert_eq!(repaired(&[1, 2, 3, 4, 5]), None);
    }
}
