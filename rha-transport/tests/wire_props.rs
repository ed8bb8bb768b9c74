//! Property tests of the wire codec (`rha_transport::wire`): every message
//! round-trips with and without compression; arbitrary, corrupt, truncated
//! and oversized input never panics, is never taken for a valid message and
//! allocates nothing it announces; a stream decodes to the same messages
//! however it is cut into reads. Also: the fuzz target's body on the
//! committed seed corpus (`fuzz/corpus/wire_frame/`), and the message table
//! of `docs/protocol.md` against the code.
//!
//! The seeds are written by this file: `RHA_WRITE_WIRE_SEEDS=1 cargo test -p
//! rha-transport --test wire_props seed` rewrites them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use rha_core::hash::{Node, HASH_LEN};
use rha_core::journal::{Payload, Record};
use rha_transport::wire::{
    self, Codec, Compression, ErrorCode, Hello, Intent, Message, Welcome, WireError,
    DEFAULT_MAX_FRAME, FLAG_COMPRESSED, FRAME_OVERHEAD,
};
use tokio::io::{AsyncRead, ReadBuf};

// ── allocation tracking ────────────────────────────────────────────────

thread_local! {
    /// The largest single allocation (or reallocation) this thread asked for
    /// since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, noting the largest request per thread.
struct Tracking;

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the largest allocation it made on
/// this thread.
fn largest_allocation_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let r = f();
    (r, LARGEST.with(|c| c.get()))
}

// ── strategies ─────────────────────────────────────────────────────────

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Lz4),
        Just(Compression::Zstd)
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 ._:-]{0,24}",
        any::<String>(),
        // Long and compressible, but never compressed (not a bulky type).
        ("[a-z]{1,4}", 0usize..200).prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// Bytes that are sometimes random, sometimes very compressible.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..300),
        (any::<u8>(), 0usize..5000).prop_map(|(b, n)| vec![b; n]),
        (vec(any::<u8>(), 1..8), 1usize..600).prop_map(|(p, n)| p
            .iter()
            .copied()
            .cycle()
            .take(n * p.len())
            .collect()),
    ]
}

fn intent() -> impl Strategy<Value = Intent> {
    prop_oneof![
        Just(Intent::Operator),
        Just(Intent::Engine),
        Just(Intent::NatOffer)
    ]
}

/// Error codes as they decode: a named code, or `Other` of a number no
/// named code has (`Other(2)` decodes as `NoSuchScenario`).
fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::NoSuchScenario),
        Just(ErrorCode::WrongState),
        Just(ErrorCode::Replica),
        Just(ErrorCode::Master),
        Just(ErrorCode::Identity),
        Just(ErrorCode::Internal),
        any::<u16>().prop_filter_map("a named code", |n| {
            (!wire::error_code_is_known(n)).then_some(ErrorCode::Other(n))
        }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    let payload = prop_oneof![
        data().prop_map(|d| Payload::Data(d.into())),
        any::<u64>().prop_map(Payload::Zero)
    ];
    (any::<u64>(), any::<u32>(), any::<u64>(), payload).prop_map(
        |(seq, volume, offset, payload)| Record {
            seq,
            volume,
            offset,
            payload,
        },
    )
}

/// Any message of any of the 28 types.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            text(),
            intent(),
            vec(compression(), 0..5),
            text()
        )
            .prop_map(
                |(version_min, version_max, name, intent, compression, software)| {
                    Message::Hello(Hello {
                        version_min,
                        version_max,
                        name,
                        intent,
                        compression,
                        software,
                    })
                }
            ),
        (any::<u16>(), text(), compression(), text()).prop_map(
            |(version, name, compression, software)| Message::Welcome(Welcome {
                version,
                name,
                compression,
                software,
            })
        ),
        text().prop_map(|reason| Message::Refused { reason }),
        (any::<u64>(), text()).prop_map(|(req, scenario)| Message::OpenScenario { req, scenario }),
        (any::<u64>(), text(), vec(any::<u64>(), 0..8)).prop_map(|(req, journal_id, sizes)| {
            Message::ScenarioOpened {
                req,
                journal_id,
                sizes,
            }
        }),
        any::<u64>().prop_map(|req| Message::State { req }),
        (any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(req, applied, consistent, synced)| Message::StateReply {
                req,
                applied,
                consistent,
                synced,
            }
        ),
        (any::<u64>(), vec(any::<u64>(), 0..8))
            .prop_map(|(req, sizes)| Message::BeginSync { req, sizes }),
        (
            any::<u64>(),
            any::<u32>(),
            vec((any::<u8>(), any::<u64>()), 0..40)
        )
            .prop_map(|(req, volume, nodes)| Message::Hashes {
                req,
                volume,
                nodes: nodes
                    .into_iter()
                    .map(|(level, index)| Node { level, index })
                    .collect(),
            }),
        (any::<u64>(), vec(any::<[u8; HASH_LEN]>(), 0..40))
            .prop_map(|(req, hashes)| Message::HashesReply { req, hashes }),
        (any::<u32>(), any::<u64>(), data()).prop_map(|(volume, offset, data)| Message::Write {
            volume,
            offset,
            data: data.into(),
        }),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(volume, offset, len)| {
            Message::Zero {
                volume,
                offset,
                len,
            }
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(req, base)| Message::EndSync { req, base }),
        (any::<u64>(), vec(record(), 0..6))
            .prop_map(|(req, records)| Message::Apply { req, records }),
        (any::<u64>(), any::<u64>()).prop_map(|(req, seq)| Message::Applied { req, seq }),
        (any::<u64>(), any::<u64>()).prop_map(|(req, seq)| Message::MarkConsistent { req, seq }),
        (any::<u64>(), text(), any::<u64>()).prop_map(|(req, name, seq)| Message::Bookmark {
            req,
            name,
            seq
        }),
        any::<u64>().prop_map(|req| Message::Ok { req }),
        (any::<u64>(), error_code(), text()).prop_map(|(req, code, message)| Message::Error {
            req,
            code,
            message,
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(time_ms, last_seq)| Message::Heartbeat { time_ms, last_seq }),
        text().prop_map(|json| Message::Stats { json }),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
            |(req, volume, offset, len)| Message::ReadBlocks {
                req,
                volume,
                offset,
                len,
            }
        ),
        (any::<u64>(), data()).prop_map(|(req, data)| Message::BlockData { req, data }),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(req, apply_journal, master_step)| Message::Switchover {
                req,
                apply_journal,
                master_step,
            }
        ),
        (any::<u64>(), any::<u64>(), text()).prop_map(|(req, seq, master_step)| {
            Message::SwitchoverReady {
                req,
                seq,
                master_step,
            }
        }),
        (any::<u64>(), text()).prop_map(|(req, json)| Message::Control { req, json }),
        (any::<u64>(), text()).prop_map(|(req, json)| Message::ControlReply { req, json }),
        text().prop_map(|reason| Message::Close { reason }),
    ]
}

// ── helpers ────────────────────────────────────────────────────────────

/// The frames of `msgs`, encoded one after the other with `c`.
fn encode_all(msgs: &[Message], c: Compression) -> BytesMut {
    let mut codec = Codec::default();
    codec.set_compression(c);
    let mut out = BytesMut::new();
    for m in msgs {
        codec.encode(m, &mut out).unwrap();
    }
    out
}

/// A frame of type `t` and `flags` around `payload`, with a correct length and CRC.
fn frame_of(t: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&((payload.len() + 2) as u32).to_le_bytes());
    f.push(t);
    f.push(flags);
    f.extend_from_slice(payload);
    let crc = crc32fast::hash(&f[4..]);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// The type numbers of the known message types.
const KNOWN_TYPES: [u8; 28] = [
    1, 2, 3, 10, 11, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 40, 41, 50, 51, 60, 61, 62,
    63, 70, 71, 80,
];

/// A reader that hands out the given chunks, one per read.
struct Chunked {
    chunks: VecDeque<Vec<u8>>,
}

impl Chunked {
    fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Chunked {
            // An empty read would mean the end of the stream.
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(front) = self.chunks.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.drain(..n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Reads messages with [`wire::read_message`] until the end or an error.
fn read_all(
    rt: &tokio::runtime::Runtime,
    mut r: impl AsyncRead + Unpin,
    codec: &mut Codec,
) -> (Vec<Message>, Result<(), WireError>) {
    let mut buf = BytesMut::new();
    let mut msgs = Vec::new();
    rt.block_on(async {
        loop {
            match wire::read_message(&mut r, &mut buf, codec).await {
                Ok(Some((m, _))) => msgs.push(m),
                Ok(None) => return (msgs, Ok(())),
                Err(e) => return (msgs, Err(e)),
            }
        }
    })
}

/// The chunks of `bytes` cut at `cuts` (indices into it).
fn cut_into(bytes: &[u8], cuts: &[Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

// ── properties ─────────────────────────────────────────────────────────

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// `Codec::encode_write` from a borrowed buffer gives exactly the frame
    /// `encode` gives for the same `Write` message, with each compression,
    /// appended after whatever the buffer held.
    #[test]
    fn encode_write_is_the_frame_of_a_write_message(
        volume in any::<u32>(),
        offset in any::<u64>(),
        data in data(),
        c in compression(),
        before in vec(any::<u8>(), 0..16),
    ) {
        let msg = Message::Write { volume, offset, data: data.clone().into() };
        let mut codec = Codec::default();
        codec.set_compression(c);
        let mut expected = BytesMut::from(&before[..]);
        let n = codec.encode(&msg, &mut expected).unwrap();
        let mut got = BytesMut::from(&before[..]);
        let m = codec.encode_write(volume, offset, &data, &mut got).unwrap();
        prop_assert_eq!(n, m);
        prop_assert_eq!(&got[..], &expected[..]);
    }

    /// Every message decodes to itself, with each compression, on a codec
    /// whatever its own compression setting; only bulky messages are ever
    /// flagged compressed.
    #[test]
    fn every_message_round_trips(msg in message(), c in compression(), rx in compression()) {
        let mut tx_codec = Codec::default();
        tx_codec.set_compression(c);
        let mut out = BytesMut::new();
        let n = tx_codec.encode(&msg, &mut out).unwrap();
        prop_assert_eq!(n, out.len());
        prop_assert_eq!(wire::frame_len(&out, DEFAULT_MAX_FRAME).unwrap(), Some(n));
        if c == Compression::None || !msg.is_bulky() {
            prop_assert_eq!(out[5], 0);
        }
        let mut rx_codec = Codec::default();
        rx_codec.set_compression(rx);
        let (back, used) = rx_codec.decode(&mut out).unwrap().unwrap();
        prop_assert_eq!(back, msg);
        prop_assert_eq!(used, n);
        prop_assert!(out.is_empty());
    }

    /// Arbitrary bytes never panic the decoder (and pass the fuzz body's checks).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        wire::fuzz_frame(&bytes);
        let mut codec = Codec::default();
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }

    /// Frames with a valid length and CRC around arbitrary type, flags and
    /// payload reach the message parser: a message or an error, never a
    /// panic, never "more bytes needed".
    #[test]
    fn crafted_frames_never_panic(
        t in prop_oneof![proptest::sample::select(KNOWN_TYPES.to_vec()), any::<u8>()],
        flags in prop_oneof![Just(0u8), Just(FLAG_COMPRESSED), any::<u8>()],
        payload in vec(any::<u8>(), 0..512),
    ) {
        let frame = frame_of(t, flags, &payload);
        wire::fuzz_frame(&frame);
        let r = Codec::default().decode(&mut BytesMut::from(&frame[..]));
        prop_assert!(!matches!(r, Ok(None)));
    }

    /// Compressed payloads with arbitrary algorithm ids, declared lengths
    /// and data, behind a valid CRC.
    #[test]
    fn crafted_compressed_payloads_never_panic(
        t in proptest::sample::select(vec![25u8, 28, 61]),
        id in 0u8..4,
        declared in prop_oneof![0u32..2048, any::<u32>()],
        data in vec(any::<u8>(), 0..256),
    ) {
        let mut payload = vec![id];
        payload.extend_from_slice(&declared.to_le_bytes());
        payload.extend_from_slice(&data);
        let frame = frame_of(t, FLAG_COMPRESSED, &payload);
        wire::fuzz_frame(&frame);
        let ((), largest) = largest_allocation_during(|| {
            let _ = Codec::default().decode(&mut BytesMut::from(&frame[..]));
        });
        // What a declared length may cost is bounded by the frame limit.
        prop_assert!(largest <= DEFAULT_MAX_FRAME + 4096, "allocated {}", largest);
    }

    /// A valid frame with one payload byte changed and the CRC recomputed
    /// (what corruption before the CRC was computed looks like): a message
    /// that round-trips, or an error; never a panic.
    #[test]
    fn mutated_payloads_behind_a_valid_crc(
        msg in message(),
        c in compression(),
        pos in any::<Index>(),
        byte in any::<u8>(),
    ) {
        let out = encode_all(std::slice::from_ref(&msg), c);
        let (t, flags, mut payload) = (out[4], out[5], out[6..out.len() - 4].to_vec());
        if !payload.is_empty() {
            let i = pos.index(payload.len());
            payload[i] = byte;
        }
        wire::fuzz_frame(&frame_of(t, flags, &payload));
    }

    /// One flipped bit anywhere in a frame is never taken for a message:
    /// outside the length field the CRC catches it; in the length field the
    /// decoder refuses the length, waits for bytes that are not coming, or
    /// finds the CRC wrong.
    #[test]
    fn a_flipped_bit_is_detected(
        msg in message(),
        c in compression(),
        pos in any::<Index>(),
        bit in 0u8..8,
    ) {
        let mut out = encode_all(&[msg, Message::Heartbeat { time_ms: 1, last_seq: 2 }], c);
        let first = wire::frame_len(&out, DEFAULT_MAX_FRAME).unwrap().unwrap();
        let i = pos.index(first);
        out[i] ^= 1 << bit;
        let r = Codec::default().decode(&mut out);
        if i >= 4 {
            prop_assert!(matches!(r, Err(WireError::Checksum { .. })), "bit {} of byte {}: {:?}", bit, i, r);
        } else {
            prop_assert!(!matches!(r, Ok(Some(_))), "bit {} of byte {}: {:?}", bit, i, r);
        }
    }

    /// A stream cut short gives the messages whose frames are whole, then
    /// asks for more bytes with the partial frame left in the buffer; over a
    /// socket, the end inside a frame is `UnexpectedEof`.
    #[test]
    fn truncated_frames_ask_for_more_bytes(
        msgs in vec(message(), 1..4),
        c in compression(),
        cut in any::<Index>(),
    ) {
        let stream = encode_all(&msgs, c);
        let cut = cut.index(stream.len());
        let mut ends = Vec::new();
        let mut at = 0;
        while let Some(n) = wire::frame_len(&stream[at..], DEFAULT_MAX_FRAME).unwrap() {
            at += n;
            ends.push(at);
            if at == stream.len() {
                break;
            }
        }
        let whole = ends.iter().filter(|e| **e <= cut).count();
        let boundary = ends.iter().copied().rfind(|e| *e <= cut).unwrap_or(0);

        let mut codec = Codec::default();
        let mut buf = BytesMut::from(&stream[..cut]);
        let mut got = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some((m, _))) => got.push(m),
                Ok(None) => break,
                Err(e) => panic!("a truncated stream is refused: {e}"),
            }
        }
        prop_assert_eq!(&got[..], &msgs[..whole]);
        prop_assert_eq!(buf.len(), cut - boundary);

        let rt = runtime();
        let (got, end) = read_all(&rt, &stream[..cut], &mut Codec::default());
        prop_assert_eq!(&got[..], &msgs[..whole]);
        if cut == boundary {
            prop_assert!(end.is_ok(), "{:?}", end);
        } else {
            prop_assert!(matches!(end, Err(WireError::UnexpectedEof)), "{:?}", end);
        }
    }

    /// A length prefix above the limit is refused as soon as it arrives,
    /// before anything of that size is allocated, both by the codec and by
    /// the socket reader.
    #[test]
    fn an_oversized_length_is_refused_without_allocating(
        len in (DEFAULT_MAX_FRAME as u32 + 3)..=u32::MAX,
        tail in vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut codec = Codec::default();
        let (r, largest) = largest_allocation_during(|| codec.decode(&mut buf));
        let announced = u64::from(len) - 2;
        prop_assert!(
            matches!(r, Err(WireError::Oversized { len: l, max: DEFAULT_MAX_FRAME }) if l == announced),
            "{:?}", r
        );
        prop_assert_eq!(&buf[..], &bytes[..]);
        prop_assert!(largest < 4096, "allocated {}", largest);

        let rt = runtime();
        let ((msgs, end), largest) =
            largest_allocation_during(|| read_all(&rt, &bytes[..], &mut Codec::default()));
        prop_assert!(msgs.is_empty());
        prop_assert!(matches!(end, Err(WireError::Oversized { .. })), "{:?}", end);
        prop_assert!(largest < 1 << 20, "allocated {}", largest);
    }

    /// However a stream of frames is cut into reads, the same messages come out.
    #[test]
    fn random_chunking_yields_the_same_messages(
        msgs in vec(message(), 1..8),
        c in compression(),
        cuts in vec(any::<Index>(), 0..16),
    ) {
        let stream = encode_all(&msgs, c);
        let chunks = cut_into(&stream, &cuts);
        let mut codec = Codec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in &chunks {
            buf.extend_from_slice(chunk);
            while let Some((m, _)) = codec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(&got, &msgs);
        prop_assert!(buf.is_empty());

        let rt = runtime();
        let (got, end) = read_all(&rt, Chunked::new(chunks), &mut Codec::default());
        prop_assert!(end.is_ok(), "{:?}", end);
        prop_assert_eq!(&got, &msgs);
    }
}

// ── deterministic tests ────────────────────────────────────────────────

/// Every type, with every compression: bulky messages that compress well
/// are sent compressed, and all decode to themselves.
#[test]
fn every_type_with_every_compression() {
    let msgs: Vec<Message> = seeds().into_iter().flat_map(|s| s.2).collect();
    let names: BTreeSet<&str> = msgs.iter().map(Message::name).collect();
    assert_eq!(names.len(), 28, "the seeds cover every message type");
    for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
        for m in &msgs {
            let out = encode_all(std::slice::from_ref(m), c);
            let (back, _) = Codec::default().decode(&mut out.clone()).unwrap().unwrap();
            assert_eq!(&back, m, "{c:?}");
        }
        let bulky = Message::Write {
            volume: 0,
            offset: 0,
            data: vec![7; 64 << 10].into(),
        };
        let out = encode_all(std::slice::from_ref(&bulky), c);
        let compressed = out[5] & FLAG_COMPRESSED != 0;
        assert_eq!(compressed, c != Compression::None, "{c:?}");
        if compressed {
            assert!(out.len() < 4096, "{c:?}: {} bytes", out.len());
        }
    }
}

/// Every strict prefix of a frame asks for more bytes and consumes nothing.
#[test]
fn every_prefix_of_a_frame_asks_for_more() {
    for (name, c, msgs) in seeds() {
        let out = encode_all(&msgs[..1], c);
        for cut in 0..out.len() {
            let mut buf = BytesMut::from(&out[..cut]);
            assert!(
                Codec::default().decode(&mut buf).unwrap().is_none(),
                "{name}: prefix of {cut} bytes"
            );
            assert_eq!(buf.len(), cut);
        }
    }
}

/// A length field of less than 2 (no room for type and flags) is malformed;
/// a payload exactly at the limit is waited for; one byte more is refused.
#[test]
fn length_limits() {
    for len in [0u32, 1] {
        let e = Codec::default()
            .decode(&mut BytesMut::from(&len.to_le_bytes()[..]))
            .unwrap_err();
        assert!(
            matches!(
                e,
                WireError::Malformed {
                    message: "frame",
                    ..
                }
            ),
            "{e}"
        );
    }
    let mut codec = Codec::new(100);
    let mut buf = BytesMut::from(&102u32.to_le_bytes()[..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert_eq!(wire::frame_len(&buf, 100).unwrap(), Some(102 + 8));
    let mut buf = BytesMut::from(&103u32.to_le_bytes()[..]);
    let e = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(e, WireError::Oversized { len: 101, max: 100 }),
        "{e}"
    );
}

/// A compressed frame that declares more uncompressed bytes than the limit,
/// or more than its LZ4 data can expand to, is refused before the declared
/// size is allocated.
#[test]
fn declared_uncompressed_sizes_are_checked_before_allocating() {
    for (id, declared, want_oversized) in [
        (1u8, u32::MAX, true),
        (2, u32::MAX, true),
        (1, (DEFAULT_MAX_FRAME + 1) as u32, true),
        (1, (DEFAULT_MAX_FRAME - 64) as u32, false),
    ] {
        let mut payload = vec![id];
        payload.extend_from_slice(&declared.to_le_bytes());
        payload.extend_from_slice(&[0x1f, 0, 1, 0]);
        let frame = frame_of(25, FLAG_COMPRESSED, &payload);
        let (r, largest) =
            largest_allocation_during(|| Codec::default().decode(&mut BytesMut::from(&frame[..])));
        let e = r.unwrap_err();
        if want_oversized {
            assert!(matches!(e, WireError::Oversized { .. }), "{e}");
        } else {
            assert!(matches!(e, WireError::Decompress(_)), "{e}");
        }
        assert!(
            largest < 1 << 20,
            "id {id}, declared {declared}: allocated {largest}"
        );
    }
}

/// A peer that announces a large frame and sends nothing more costs the
/// reader no more memory than what arrives (plus a bounded read-ahead).
#[test]
fn an_announced_frame_reserves_only_a_bounded_read_ahead() {
    let rt = runtime();
    let mut bytes = ((DEFAULT_MAX_FRAME + 2) as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[25, 0, 1, 2, 3]);
    let ((msgs, end), largest) =
        largest_allocation_during(|| read_all(&rt, &bytes[..], &mut Codec::default()));
    assert!(msgs.is_empty());
    assert!(matches!(end, Err(WireError::UnexpectedEof)), "{end:?}");
    assert!(largest <= 2 << 20, "allocated {largest}");

    // And a large frame that does arrive, in small reads, is read whole.
    let big = Message::BlockData {
        req: 9,
        data: (0..(3 << 20) as u32).map(|i| (i * 7 % 251) as u8).collect(),
    };
    let stream = encode_all(std::slice::from_ref(&big), Compression::None);
    let chunks: Vec<Vec<u8>> = stream.chunks(16 << 10).map(<[u8]>::to_vec).collect();
    let (msgs, end) = read_all(&rt, Chunked::new(chunks), &mut Codec::default());
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(msgs, vec![big]);
}

/// The overhead constant is what a frame adds to its payload.
#[test]
fn frame_overhead_is_ten_bytes() {
    assert_eq!(FRAME_OVERHEAD, 10);
    let out = encode_all(&[Message::State { req: 1 }], Compression::None);
    assert_eq!(out.len(), FRAME_OVERHEAD + 8);
}

// ── the seed corpus of the fuzz target ─────────────────────────────────

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wire_frame")
}

/// The seeds: file name, compression, the messages the file holds.
fn seeds() -> Vec<(&'static str, Compression, Vec<Message>)> {
    use Compression::{Lz4, None as Plain, Zstd};
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 16) as u8 * 17).collect();
    let hello = Message::Hello(Hello {
        version_min: 1,
        version_max: 1,
        name: "appliance".into(),
        intent: Intent::Engine,
        compression: vec![Lz4, Plain],
        software: "rha 0.1.0".into(),
    });
    let apply = Message::Apply {
        req: 6,
        records: vec![
            Record {
                seq: 41,
                volume: 0,
                offset: 8192,
                payload: Payload::Data(vec![0xab; 16].into()),
            },
            Record {
                seq: 42,
                volume: 1,
                offset: 0,
                payload: Payload::Zero(65536),
            },
        ],
    };
    vec![
        ("hello", Plain, vec![hello.clone()]),
        (
            "hello_nat_offer",
            Plain,
            vec![Message::Hello(Hello {
                version_min: 1,
                version_max: 3,
                name: "master-1".into(),
                intent: Intent::NatOffer,
                compression: vec![Plain, Lz4, Zstd],
                software: "rha 0.1.0".into(),
            })],
        ),
        (
            "welcome",
            Plain,
            vec![Message::Welcome(Welcome {
                version: 1,
                name: "master-1".into(),
                compression: Lz4,
                software: "rha 0.1.0".into(),
            })],
        ),
        (
            "refused",
            Plain,
            vec![Message::Refused {
                reason: "this engine speaks protocol 1..=1".into(),
            }],
        ),
        (
            "open_scenario",
            Plain,
            vec![Message::OpenScenario {
                req: 1,
                scenario: "name = \"web\"\n[master]\nhost = \"master-1\"\n".into(),
            }],
        ),
        (
            "scenario_opened",
            Plain,
            vec![Message::ScenarioOpened {
                req: 1,
                journal_id: "00112233445566778899aabbccddeeff".into(),
                sizes: vec![1 << 30, 4 << 20],
            }],
        ),
        ("state", Plain, vec![Message::State { req: 2 }]),
        (
            "state_reply",
            Plain,
            vec![Message::StateReply {
                req: 2,
                applied: 40,
                consistent: true,
                synced: true,
            }],
        ),
        (
            "begin_sync",
            Plain,
            vec![Message::BeginSync {
                req: 3,
                sizes: vec![1 << 30, 4 << 20],
            }],
        ),
        (
            "hashes",
            Plain,
            vec![Message::Hashes {
                req: 4,
                volume: 0,
                nodes: vec![
                    Node { level: 4, index: 0 },
                    Node {
                        level: 3,
                        index: 15,
                    },
                ],
            }],
        ),
        (
            "hashes_reply",
            Plain,
            vec![Message::HashesReply {
                req: 4,
                hashes: vec![[0x11; HASH_LEN], [0x22; HASH_LEN]],
            }],
        ),
        (
            "write",
            Plain,
            vec![Message::Write {
                volume: 0,
                offset: 4096,
                data: (0..64).collect::<Vec<u8>>().into(),
            }],
        ),
        (
            "write_lz4",
            Lz4,
            vec![Message::Write {
                volume: 1,
                offset: 1 << 20,
                data: pattern.clone().into(),
            }],
        ),
        (
            "write_zstd",
            Zstd,
            vec![Message::Write {
                volume: 1,
                offset: 2 << 20,
                data: pattern.clone().into(),
            }],
        ),
        (
            "zero",
            Plain,
            vec![Message::Zero {
                volume: 0,
                offset: 1 << 20,
                len: 64 << 10,
            }],
        ),
        (
            "end_sync",
            Plain,
            vec![Message::EndSync { req: 5, base: 40 }],
        ),
        ("apply", Plain, vec![apply.clone()]),
        (
            "apply_zstd",
            Zstd,
            vec![Message::Apply {
                req: 7,
                records: vec![Record {
                    seq: 43,
                    volume: 0,
                    offset: 0,
                    payload: Payload::Data(pattern.clone().into()),
                }],
            }],
        ),
        ("applied", Plain, vec![Message::Applied { req: 6, seq: 42 }]),
        (
            "mark_consistent",
            Plain,
            vec![Message::MarkConsistent { req: 8, seq: 42 }],
        ),
        (
            "bookmark",
            Plain,
            vec![Message::Bookmark {
                req: 9,
                name: "before upgrade".into(),
                seq: 42,
            }],
        ),
        ("ok", Plain, vec![Message::Ok { req: 9 }]),
        (
            "error",
            Plain,
            vec![Message::Error {
                req: 10,
                code: ErrorCode::WrongState,
                message: "open a scenario first".into(),
            }],
        ),
        (
            "error_unknown_code",
            Plain,
            vec![Message::Error {
                req: 0,
                code: ErrorCode::Other(900),
                message: "a code from a newer peer".into(),
            }],
        ),
        (
            "heartbeat",
            Plain,
            vec![Message::Heartbeat {
                time_ms: 1_790_000_000_000,
                last_seq: 42,
            }],
        ),
        (
            "stats",
            Plain,
            vec![Message::Stats {
                json: r#"{"master":{"state":"replicating"},"stats":{"sent_bytes":1}}"#.into(),
            }],
        ),
        (
            "read_blocks",
            Plain,
            vec![Message::ReadBlocks {
                req: 11,
                volume: 0,
                offset: 0,
                len: 4096,
            }],
        ),
        (
            "block_data",
            Plain,
            vec![Message::BlockData {
                req: 11,
                data: vec![0x5a; 32],
            }],
        ),
        (
            "block_data_lz4",
            Lz4,
            vec![Message::BlockData {
                req: 12,
                data: pattern,
            }],
        ),
        (
            "switchover",
            Plain,
            vec![Message::Switchover {
                req: 13,
                apply_journal: true,
                master_step: false,
            }],
        ),
        (
            "switchover_ready",
            Plain,
            vec![Message::SwitchoverReady {
                req: 13,
                seq: 42,
                master_step: "no master-side step configured".into(),
            }],
        ),
        (
            "control",
            Plain,
            vec![Message::Control {
                req: 1,
                json: r#"{"command":"ping"}"#.into(),
            }],
        ),
        (
            "control_reply",
            Plain,
            vec![Message::ControlReply {
                req: 1,
                json: r#"{"ok":true,"name":"appliance"}"#.into(),
            }],
        ),
        (
            "close",
            Plain,
            vec![Message::Close {
                reason: "done".into(),
            }],
        ),
        (
            "session",
            Lz4,
            vec![
                hello,
                Message::Heartbeat {
                    time_ms: 1,
                    last_seq: 0,
                },
                apply,
                Message::Applied { req: 6, seq: 42 },
                Message::Close {
                    reason: "done".into(),
                },
            ],
        ),
    ]
}

/// The committed seeds are what [`seeds`] encodes (compressed seeds are
/// compared by the messages they decode to: compressors may change their
/// bytes between versions). `RHA_WRITE_WIRE_SEEDS=1` rewrites them.
#[test]
fn seed_corpus_matches_the_generator() {
    let dir = corpus_dir();
    let write = std::env::var_os("RHA_WRITE_WIRE_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, c, msgs) in seeds() {
        let bytes = encode_all(&msgs, c);
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (RHA_WRITE_WIRE_SEEDS=1 writes it)", path.display())
        });
        if c == Compression::None {
            assert_eq!(&stored[..], &bytes[..], "{name}");
        }
        let mut buf = BytesMut::from(&stored[..]);
        let mut codec = Codec::default();
        let mut got = Vec::new();
        let mut compressed = false;
        while !buf.is_empty() {
            compressed |= buf[5] & FLAG_COMPRESSED != 0;
            got.push(codec.decode(&mut buf).unwrap().unwrap().0);
        }
        assert_eq!(got, msgs, "{name}");
        assert_eq!(compressed, c != Compression::None, "{name}");
    }
}

/// The fuzz target's body holds on every committed seed, each seed holds
/// at least one message, and together they cover every message type.
#[test]
fn fuzz_body_holds_on_the_seed_corpus() {
    let dir = corpus_dir();
    let mut names = BTreeSet::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let n = wire::fuzz_frame(&bytes);
        assert!(n >= 1, "seed {} holds no message", path.display());
        let mut buf = BytesMut::from(&bytes[..]);
        let mut codec = Codec::default();
        for _ in 0..n {
            names.insert(codec.decode(&mut buf).unwrap().unwrap().0.name());
        }
        assert!(buf.is_empty(), "seed {} has trailing bytes", path.display());
        seen += 1;
    }
    assert!(
        seen >= 28,
        "expected the committed seeds in {}",
        dir.display()
    );
    assert_eq!(names.len(), 28, "the seeds cover {names:?}");
}

/// `docs/protocol.md` lists every message type with its number, as the code
/// numbers it (`| 25 | `Write` |`).
#[test]
fn the_protocol_document_numbers_every_message_as_the_code_does() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut numbered = BTreeSet::new();
    for (_, _, msgs) in seeds() {
        for m in msgs {
            let out = encode_all(std::slice::from_ref(&m), Compression::None);
            let row = format!("| {} | `{}` |", out[4], m.name());
            assert!(
                doc.contains(&row),
                "{} lacks the row `{row}`",
                path.display()
            );
            numbered.insert(out[4]);
        }
    }
    assert_eq!(
        numbered.into_iter().collect::<Vec<_>>(),
        KNOWN_TYPES.to_vec()
    );
    assert!(doc.contains(&format!("{}", wire::DEFAULT_PORT)));
    assert!(doc.contains(&format!("{}", DEFAULT_MAX_FRAME)));
}
