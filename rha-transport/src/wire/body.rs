//! The bytes of each message's fields (the frame payload, uncompressed).
//!
//! Integers are little-endian; a string is a `u32` byte length and UTF-8; a
//! byte array is a `u32` length and the bytes; a vector is a `u32` count and
//! the items. Every length and count is checked against the bytes that
//! remain before anything is allocated, and bytes left over after the last
//! field make the message malformed.

use bytes::{BufMut, Bytes, BytesMut};
use rha_core::hash::{Hash, Node, HASH_LEN};
use rha_core::journal::{Payload, Record};

use super::error::WireError;
use super::message::{Compression, ErrorCode, Hello, Intent, Message, Welcome};

/// The 4 bytes every [`Message::Hello`] payload starts with.
pub const HELLO_MAGIC: [u8; 4] = *b"RHA\x01";

/// Message type numbers (the frame's type byte).
pub(crate) mod ty {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const OPEN_SCENARIO: u8 = 10;
    pub const SCENARIO_OPENED: u8 = 11;
    pub const STATE: u8 = 20;
    pub const STATE_REPLY: u8 = 21;
    pub const BEGIN_SYNC: u8 = 22;
    pub const HASHES: u8 = 23;
    pub const HASHES_REPLY: u8 = 24;
    pub const WRITE: u8 = 25;
    pub const ZERO: u8 = 26;
    pub const END_SYNC: u8 = 27;
    pub const APPLY: u8 = 28;
    pub const APPLIED: u8 = 29;
    pub const MARK_CONSISTENT: u8 = 30;
    pub const BOOKMARK: u8 = 31;
    pub const OK: u8 = 40;
    pub const ERROR: u8 = 41;
    pub const HEARTBEAT: u8 = 50;
    pub const STATS: u8 = 51;
    pub const READ_BLOCKS: u8 = 60;
    pub const BLOCK_DATA: u8 = 61;
    pub const SWITCHOVER: u8 = 62;
    pub const SWITCHOVER_READY: u8 = 63;
    pub const CONTROL: u8 = 70;
    pub const CONTROL_REPLY: u8 = 71;
    pub const CLOSE: u8 = 80;
}

/// The name of a message type number, `None` if unknown.
pub(crate) fn type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        ty::HELLO => "Hello",
        ty::WELCOME => "Welcome",
        ty::REFUSED => "Refused",
        ty::OPEN_SCENARIO => "OpenScenario",
        ty::SCENARIO_OPENED => "ScenarioOpened",
        ty::STATE => "State",
        ty::STATE_REPLY => "StateReply",
        ty::BEGIN_SYNC => "BeginSync",
        ty::HASHES => "Hashes",
        ty::HASHES_REPLY => "HashesReply",
        ty::WRITE => "Write",
        ty::ZERO => "Zero",
        ty::END_SYNC => "EndSync",
        ty::APPLY => "Apply",
        ty::APPLIED => "Applied",
        ty::MARK_CONSISTENT => "MarkConsistent",
        ty::BOOKMARK => "Bookmark",
        ty::OK => "Ok",
        ty::ERROR => "Error",
        ty::HEARTBEAT => "Heartbeat",
        ty::STATS => "Stats",
        ty::READ_BLOCKS => "ReadBlocks",
        ty::BLOCK_DATA => "BlockData",
        ty::SWITCHOVER => "Switchover",
        ty::SWITCHOVER_READY => "SwitchoverReady",
        ty::CONTROL => "Control",
        ty::CONTROL_REPLY => "ControlReply",
        ty::CLOSE => "Close",
        _ => return None,
    })
}

/// Whether messages of this type may be sent compressed.
pub(crate) fn type_is_bulky(t: u8) -> bool {
    matches!(t, ty::WRITE | ty::APPLY | ty::BLOCK_DATA)
}

/// The type number of a message.
pub(crate) fn type_of(msg: &Message) -> u8 {
    match msg {
        Message::Hello(_) => ty::HELLO,
        Message::Welcome(_) => ty::WELCOME,
        Message::Refused { .. } => ty::REFUSED,
        Message::OpenScenario { .. } => ty::OPEN_SCENARIO,
        Message::ScenarioOpened { .. } => ty::SCENARIO_OPENED,
        Message::State { .. } => ty::STATE,
        Message::StateReply { .. } => ty::STATE_REPLY,
        Message::BeginSync { .. } => ty::BEGIN_SYNC,
        Message::Hashes { .. } => ty::HASHES,
        Message::HashesReply { .. } => ty::HASHES_REPLY,
        Message::Write { .. } => ty::WRITE,
        Message::Zero { .. } => ty::ZERO,
        Message::EndSync { .. } => ty::END_SYNC,
        Message::Apply { .. } => ty::APPLY,
        Message::Applied { .. } => ty::APPLIED,
        Message::MarkConsistent { .. } => ty::MARK_CONSISTENT,
        Message::Bookmark { .. } => ty::BOOKMARK,
        Message::Ok { .. } => ty::OK,
        Message::Error { .. } => ty::ERROR,
        Message::Heartbeat { .. } => ty::HEARTBEAT,
        Message::Stats { .. } => ty::STATS,
        Message::ReadBlocks { .. } => ty::READ_BLOCKS,
        Message::BlockData { .. } => ty::BLOCK_DATA,
        Message::Switchover { .. } => ty::SWITCHOVER,
        Message::SwitchoverReady { .. } => ty::SWITCHOVER_READY,
        Message::Control { .. } => ty::CONTROL,
        Message::ControlReply { .. } => ty::CONTROL_REPLY,
        Message::Close { .. } => ty::CLOSE,
    }
}

// ── enumerations ───────────────────────────────────────────────────────

/// The wire id of a compression algorithm.
pub(crate) fn compression_id(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Lz4 => 1,
        Compression::Zstd => 2,
    }
}

/// The compression algorithm of a wire id.
pub(crate) fn compression_from_id(id: u8) -> Option<Compression> {
    match id {
        0 => Some(Compression::None),
        1 => Some(Compression::Lz4),
        2 => Some(Compression::Zstd),
        _ => None,
    }
}

fn intent_id(i: Intent) -> u8 {
    match i {
        Intent::Operator => 1,
        Intent::Engine => 2,
        Intent::NatOffer => 3,
    }
}

fn intent_from_id(id: u8) -> Option<Intent> {
    match id {
        1 => Some(Intent::Operator),
        2 => Some(Intent::Engine),
        3 => Some(Intent::NatOffer),
        _ => None,
    }
}

fn error_code_to_u16(c: ErrorCode) -> u16 {
    match c {
        ErrorCode::BadRequest => 1,
        ErrorCode::NoSuchScenario => 2,
        ErrorCode::WrongState => 3,
        ErrorCode::Replica => 4,
        ErrorCode::Master => 5,
        ErrorCode::Identity => 6,
        ErrorCode::Internal => 7,
        ErrorCode::Other(n) => n,
    }
}

fn error_code_from_u16(n: u16) -> ErrorCode {
    match n {
        1 => ErrorCode::BadRequest,
        2 => ErrorCode::NoSuchScenario,
        3 => ErrorCode::WrongState,
        4 => ErrorCode::Replica,
        5 => ErrorCode::Master,
        6 => ErrorCode::Identity,
        7 => ErrorCode::Internal,
        n => ErrorCode::Other(n),
    }
}

/// Whether `n` is the wire value of a named [`ErrorCode`] (so that
/// `ErrorCode::Other(n)` would decode as that named code, not as `Other`).
pub fn error_code_is_known(n: u16) -> bool {
    !matches!(error_code_from_u16(n), ErrorCode::Other(_))
}

// ── writing ────────────────────────────────────────────────────────────

/// Appends a message's fields to `out`.
pub(crate) struct Writer<'a> {
    out: &'a mut BytesMut,
    message: &'static str,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.put_u8(v);
    }
    fn bool(&mut self, v: bool) {
        self.out.put_u8(u8::from(v));
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) -> Result<(), WireError> {
        let n = u32::try_from(n).map_err(|_| WireError::TooLarge {
            message: self.message,
            len: n,
            max: u32::MAX as usize,
        })?;
        self.u32(n);
        Ok(())
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), WireError> {
        self.len(b.len())?;
        self.out.extend_from_slice(b);
        Ok(())
    }
    fn str(&mut self, s: &str) -> Result<(), WireError> {
        self.bytes(s.as_bytes())
    }
    /// The fields of [`Message::Write`].
    fn write_fields(&mut self, volume: u32, offset: u64, data: &[u8]) -> Result<(), WireError> {
        self.u32(volume);
        self.u64(offset);
        self.bytes(data)
    }
    fn u64s(&mut self, v: &[u64]) -> Result<(), WireError> {
        self.len(v.len())?;
        for x in v {
            self.u64(*x);
        }
        Ok(())
    }
}

/// Appends the fields of `msg` (the uncompressed frame payload) to `out`.
/// Appends the payload of a [`Message::Write`] of borrowed `data` to `out`
/// (the bytes `encode_body` gives for the same message, without the
/// message owning a copy of the data).
pub(crate) fn encode_write_body(
    volume: u32,
    offset: u64,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), WireError> {
    Writer {
        out,
        message: "Write",
    }
    .write_fields(volume, offset, data)
}

pub(crate) fn encode_body(msg: &Message, out: &mut BytesMut) -> Result<(), WireError> {
    let mut w = Writer {
        out,
        message: msg.name(),
    };
    match msg {
        Message::Hello(h) => {
            w.out.extend_from_slice(&HELLO_MAGIC);
            w.u16(h.version_min);
            w.u16(h.version_max);
            w.str(&h.name)?;
            w.u8(intent_id(h.intent));
            w.len(h.compression.len())?;
            for c in &h.compression {
                w.u8(compression_id(*c));
            }
            w.str(&h.software)?;
        }
        Message::Welcome(wl) => {
            w.u16(wl.version);
            w.str(&wl.name)?;
            w.u8(compression_id(wl.compression));
            w.str(&wl.software)?;
        }
        Message::Refused { reason } => w.str(reason)?,
        Message::OpenScenario { req, scenario } => {
            w.u64(*req);
            w.str(scenario)?;
        }
        Message::ScenarioOpened {
            req,
            journal_id,
            sizes,
        } => {
            w.u64(*req);
            w.str(journal_id)?;
            w.u64s(sizes)?;
        }
        Message::State { req } => w.u64(*req),
        Message::StateReply {
            req,
            applied,
            consistent,
            synced,
        } => {
            w.u64(*req);
            w.u64(*applied);
            w.bool(*consistent);
            w.bool(*synced);
        }
        Message::BeginSync { req, sizes } => {
            w.u64(*req);
            w.u64s(sizes)?;
        }
        Message::Hashes { req, volume, nodes } => {
            w.u64(*req);
            w.u32(*volume);
            w.len(nodes.len())?;
            for n in nodes {
                w.u8(n.level);
                w.u64(n.index);
            }
        }
        Message::HashesReply { req, hashes } => {
            w.u64(*req);
            w.len(hashes.len())?;
            for h in hashes {
                w.out.extend_from_slice(h);
            }
        }
        Message::Write {
            volume,
            offset,
            data,
        } => w.write_fields(*volume, *offset, data)?,
        Message::Zero {
            volume,
            offset,
            len,
        } => {
            w.u32(*volume);
            w.u64(*offset);
            w.u64(*len);
        }
        Message::EndSync { req, base } => {
            w.u64(*req);
            w.u64(*base);
        }
        Message::Apply { req, records } => {
            w.u64(*req);
            w.len(records.len())?;
            for r in records {
                w.u64(r.seq);
                w.u32(r.volume);
                w.u64(r.offset);
                match &r.payload {
                    Payload::Data(d) => {
                        w.u8(PAYLOAD_DATA);
                        w.bytes(d)?;
                    }
                    Payload::Zero(n) => {
                        w.u8(PAYLOAD_ZERO);
                        w.u64(*n);
                    }
                }
            }
        }
        Message::Applied { req, seq } | Message::MarkConsistent { req, seq } => {
            w.u64(*req);
            w.u64(*seq);
        }
        Message::Bookmark { req, name, seq } => {
            w.u64(*req);
            w.str(name)?;
            w.u64(*seq);
        }
        Message::Ok { req } => w.u64(*req),
        Message::Error { req, code, message } => {
            w.u64(*req);
            w.u16(error_code_to_u16(*code));
            w.str(message)?;
        }
        Message::Heartbeat { time_ms, last_seq } => {
            w.u64(*time_ms);
            w.u64(*last_seq);
        }
        Message::Stats { json } => w.str(json)?,
        Message::ReadBlocks {
            req,
            volume,
            offset,
            len,
        } => {
            w.u64(*req);
            w.u32(*volume);
            w.u64(*offset);
            w.u32(*len);
        }
        Message::BlockData { req, data } => {
            w.u64(*req);
            w.bytes(data)?;
        }
        Message::Switchover {
            req,
            apply_journal,
            master_step,
        } => {
            w.u64(*req);
            w.bool(*apply_journal);
            w.bool(*master_step);
        }
        Message::SwitchoverReady {
            req,
            seq,
            master_step,
        } => {
            w.u64(*req);
            w.u64(*seq);
            w.str(master_step)?;
        }
        Message::Control { req, json } | Message::ControlReply { req, json } => {
            w.u64(*req);
            w.str(json)?;
        }
        Message::Close { reason } => w.str(reason)?,
    }
    Ok(())
}

/// A journal record's payload tag: data bytes follow.
const PAYLOAD_DATA: u8 = 0;
/// A journal record's payload tag: a `u64` length of zeroes follows.
const PAYLOAD_ZERO: u8 = 1;
/// The fewest bytes an encoded record takes (a data record of no bytes).
const MIN_RECORD: usize = 8 + 4 + 8 + 1 + 4;
/// Bytes of an encoded [`Node`].
const NODE_LEN: usize = 1 + 8;

// ── reading ────────────────────────────────────────────────────────────

/// Reads a message's fields from a payload, never past its end.
struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
    /// The payload as shared bytes, when the caller has it so: byte fields
    /// that can be (`Write` data) are then slices of it, not copies.
    shared: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    fn err(&self, detail: impl Into<String>) -> WireError {
        WireError::malformed(self.message, detail)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(self.err(format!(
                "{what}: needs {n} bytes, only {} remain",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WireError> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn bool(&mut self, what: &str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.err(format!("{what}: {v} is not a boolean (0 or 1)"))),
        }
    }

    /// A `u32` count of items of at least `min_item` bytes each, checked
    /// against the bytes that remain.
    fn count(&mut self, min_item: usize, what: &str) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(self.err(format!(
                "{what}: a count of {n} does not fit in the {} bytes that remain",
                self.buf.len()
            )));
        }
        Ok(n)
    }

    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, WireError> {
        let n = self.count(1, what)?;
        Ok(self.take(n, what)?.to_vec())
    }

    /// A byte array as [`Bytes`]: a slice of the shared payload, or a copy.
    fn shared_bytes(&mut self, what: &str) -> Result<Bytes, WireError> {
        let n = self.count(1, what)?;
        let b = self.take(n, what)?;
        Ok(match self.shared {
            Some(whole) => whole.slice_ref(b),
            None => Bytes::copy_from_slice(b),
        })
    }

    fn str(&mut self, what: &str) -> Result<String, WireError> {
        let n = self.count(1, what)?;
        let b = self.take(n, what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.err(format!("{what}: not UTF-8 ({e})"))),
        }
    }

    fn u64s(&mut self, what: &str) -> Result<Vec<u64>, WireError> {
        let n = self.count(8, what)?;
        (0..n).map(|_| self.u64(what)).collect()
    }

    fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err(format!(
                "{} bytes left over after the last field",
                self.buf.len()
            )))
        }
    }
}

/// Parses the (uncompressed) payload of a frame of type `t`.
///
/// The caller has checked that `t` is a known type.
pub(crate) fn decode_body(t: u8, payload: &[u8]) -> Result<Message, WireError> {
    decode_body_in(t, payload, None)
}

/// [`decode_body`] of a payload held as [`Bytes`]: `Write` data is a slice
/// of it (no copy).
pub(crate) fn decode_body_shared(t: u8, payload: &Bytes) -> Result<Message, WireError> {
    decode_body_in(t, payload, Some(payload))
}

fn decode_body_in(t: u8, payload: &[u8], shared: Option<&Bytes>) -> Result<Message, WireError> {
    let message = type_name(t).unwrap_or("unknown");
    let mut r = Reader {
        buf: payload,
        message,
        shared,
    };
    let msg = match t {
        ty::HELLO => {
            let magic: [u8; 4] = r.array("magic")?;
            if magic != HELLO_MAGIC {
                let detail = if magic[..3] == HELLO_MAGIC[..3] {
                    format!(
                        "framing revision {} (magic RHA\\x{:02x}); this build knows revision 1 only: \
                         upgrade this engine",
                        magic[3], magic[3]
                    )
                } else {
                    format!(
                        "does not start with the magic \"RHA\\x01\" (found {magic:02x?}): \
                         the peer does not speak the rha protocol"
                    )
                };
                return Err(r.err(detail));
            }
            let version_min = r.u16("version_min")?;
            let version_max = r.u16("version_max")?;
            let name = r.str("name")?;
            let intent = r.u8("intent")?;
            let intent =
                intent_from_id(intent).ok_or_else(|| r.err(format!("unknown intent {intent}")))?;
            let n = r.count(1, "compression")?;
            let mut compression = Vec::with_capacity(n);
            for _ in 0..n {
                // An algorithm this build does not know is one it cannot
                // choose: skipped, so that a newer peer can offer more.
                if let Some(c) = compression_from_id(r.u8("compression")?) {
                    compression.push(c);
                }
            }
            let software = r.str("software")?;
            Message::Hello(Hello {
                version_min,
                version_max,
                name,
                intent,
                compression,
                software,
            })
        }
        ty::WELCOME => {
            let version = r.u16("version")?;
            let name = r.str("name")?;
            let id = r.u8("compression")?;
            let compression = compression_from_id(id)
                .ok_or_else(|| r.err(format!("unknown compression {id}")))?;
            let software = r.str("software")?;
            Message::Welcome(Welcome {
                version,
                name,
                compression,
                software,
            })
        }
        ty::REFUSED => Message::Refused {
            reason: r.str("reason")?,
        },
        ty::OPEN_SCENARIO => Message::OpenScenario {
            req: r.u64("req")?,
            scenario: r.str("scenario")?,
        },
        ty::SCENARIO_OPENED => Message::ScenarioOpened {
            req: r.u64("req")?,
            journal_id: r.str("journal_id")?,
            sizes: r.u64s("sizes")?,
        },
        ty::STATE => Message::State { req: r.u64("req")? },
        ty::STATE_REPLY => Message::StateReply {
            req: r.u64("req")?,
            applied: r.u64("applied")?,
            consistent: r.bool("consistent")?,
            synced: r.bool("synced")?,
        },
        ty::BEGIN_SYNC => Message::BeginSync {
            req: r.u64("req")?,
            sizes: r.u64s("sizes")?,
        },
        ty::HASHES => {
            let req = r.u64("req")?;
            let volume = r.u32("volume")?;
            let n = r.count(NODE_LEN, "nodes")?;
            let mut nodes = Vec::with_capacity(n);
            for _ in 0..n {
                let level = r.u8("node level")?;
                let index = r.u64("node index")?;
                nodes.push(Node { level, index });
            }
            Message::Hashes { req, volume, nodes }
        }
        ty::HASHES_REPLY => {
            let req = r.u64("req")?;
            let n = r.count(HASH_LEN, "hashes")?;
            let mut hashes: Vec<Hash> = Vec::with_capacity(n);
            for _ in 0..n {
                hashes.push(r.array("hash")?);
            }
            Message::HashesReply { req, hashes }
        }
        ty::WRITE => Message::Write {
            volume: r.u32("volume")?,
            offset: r.u64("offset")?,
            data: r.shared_bytes("data")?,
        },
        ty::ZERO => Message::Zero {
            volume: r.u32("volume")?,
            offset: r.u64("offset")?,
            len: r.u64("len")?,
        },
        ty::END_SYNC => Message::EndSync {
            req: r.u64("req")?,
            base: r.u64("base")?,
        },
        ty::APPLY => {
            let req = r.u64("req")?;
            let n = r.count(MIN_RECORD, "records")?;
            let mut records = Vec::with_capacity(n);
            for _ in 0..n {
                let seq = r.u64("record seq")?;
                let volume = r.u32("record volume")?;
                let offset = r.u64("record offset")?;
                let payload = match r.u8("record payload kind")? {
                    PAYLOAD_DATA => Payload::Data(r.shared_bytes("record data")?),
                    PAYLOAD_ZERO => Payload::Zero(r.u64("record zero length")?),
                    k => return Err(r.err(format!("unknown record payload kind {k}"))),
                };
                records.push(Record {
                    seq,
                    volume,
                    offset,
                    payload,
                });
            }
            Message::Apply { req, records }
        }
        ty::APPLIED => Message::Applied {
            req: r.u64("req")?,
            seq: r.u64("seq")?,
        },
        ty::MARK_CONSISTENT => Message::MarkConsistent {
            req: r.u64("req")?,
            seq: r.u64("seq")?,
        },
        ty::BOOKMARK => Message::Bookmark {
            req: r.u64("req")?,
            name: r.str("name")?,
            seq: r.u64("seq")?,
        },
        ty::OK => Message::Ok { req: r.u64("req")? },
        ty::ERROR => Message::Error {
            req: r.u64("req")?,
            code: error_code_from_u16(r.u16("code")?),
            message: r.str("message")?,
        },
        ty::HEARTBEAT => Message::Heartbeat {
            time_ms: r.u64("time_ms")?,
            last_seq: r.u64("last_seq")?,
        },
        ty::STATS => Message::Stats {
            json: r.str("json")?,
        },
        ty::READ_BLOCKS => Message::ReadBlocks {
            req: r.u64("req")?,
            volume: r.u32("volume")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        ty::BLOCK_DATA => Message::BlockData {
            req: r.u64("req")?,
            data: r.bytes("data")?,
        },
        ty::SWITCHOVER => Message::Switchover {
            req: r.u64("req")?,
            apply_journal: r.bool("apply_journal")?,
            master_step: r.bool("master_step")?,
        },
        ty::SWITCHOVER_READY => Message::SwitchoverReady {
            req: r.u64("req")?,
            seq: r.u64("seq")?,
            master_step: r.str("master_step")?,
        },
        ty::CONTROL => Message::Control {
            req: r.u64("req")?,
            json: r.str("json")?,
        },
        ty::CONTROL_REPLY => Message::ControlReply {
            req: r.u64("req")?,
            json: r.str("json")?,
        },
        ty::CLOSE => Message::Close {
            reason: r.str("reason")?,
        },
        other => return Err(WireError::UnknownType(other)),
    };
    r.finish()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_number_names_its_message() {
        let msgs = [
            Message::Ok { req: 1 },
            Message::Close { reason: "x".into() },
            Message::Write {
                volume: 0,
                offset: 0,
                data: Bytes::new(),
            },
        ];
        for m in &msgs {
            assert_eq!(type_name(type_of(m)), Some(m.name()));
            assert_eq!(type_is_bulky(type_of(m)), m.is_bulky());
        }
        let known = (0..=255u8).filter(|t| type_name(*t).is_some()).count();
        assert_eq!(known, 28);
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        // req, then a count of 4 billion records in 4 bytes.
        let mut p = 7u64.to_le_bytes().to_vec();
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = decode_body(ty::APPLY, &p).unwrap_err();
        assert!(
            matches!(
                e,
                WireError::Malformed {
                    message: "Apply",
                    ..
                }
            ),
            "{e}"
        );
        let e = decode_body(ty::HASHES_REPLY, &p).unwrap_err();
        assert!(matches!(e, WireError::Malformed { .. }), "{e}");
    }

    #[test]
    fn invalid_utf8_and_trailing_bytes_are_malformed() {
        let mut p = 3u32.to_le_bytes().to_vec();
        p.extend_from_slice(&[0xff, 0xfe, 0x41]);
        assert!(decode_body(ty::CLOSE, &p).is_err());
        let mut p = 1u32.to_le_bytes().to_vec();
        p.extend_from_slice(b"ab");
        let e = decode_body(ty::CLOSE, &p).unwrap_err();
        assert!(e.to_string().contains("left over"), "{e}");
    }

    #[test]
    fn wrong_magic_says_what_the_peer_is() {
        let e = decode_body(ty::HELLO, b"RHA\x02....").unwrap_err();
        assert!(e.to_string().contains("upgrade"), "{e}");
        let e = decode_body(ty::HELLO, b"GET / HTTP").unwrap_err();
        assert!(e.to_string().contains("does not speak"), "{e}");
    }
}
