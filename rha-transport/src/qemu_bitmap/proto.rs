//! The NBD protocol as far as the dirty-bitmap client speaks it: named
//! constants and pure encoders and decoders (bytes in, values out, no I/O).
//!
//! Everything here follows the NBD protocol specification
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>) and
//! QEMU's `docs/interop/nbd.rst` for the `qemu:dirty-bitmap:` metadata
//! context. Every field is big-endian ("network byte order"). The decoders
//! never panic, whatever the bytes: a length is checked against its bound
//! before anything is allocated, and every error says what was wrong.

use std::ops::Range;

// The protocol's constants are the NBD server's (`crate::nbd::proto`),
// named and documented there once; this module re-exports the ones the
// client uses, under the names its code has always used.
pub use crate::nbd::proto::{
    CHUNK_HEADER_BYTES as CHUNK_HEADER_LEN, GREETING_BYTES as GREETING_LEN, IHAVEOPT, MAX_STRING,
    NBDMAGIC as NBD_MAGIC, NBD_CMD_BLOCK_STATUS, NBD_CMD_DISC, NBD_CMD_READ,
    NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_HAS_FLAGS,
    NBD_FLAG_NO_ZEROES, NBD_FLAG_READ_ONLY, NBD_INFO_BLOCK_SIZE, NBD_INFO_EXPORT, NBD_OPT_ABORT,
    NBD_OPT_GO, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY, NBD_REPLY_FLAG_DONE,
    NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_OFFSET,
    NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REP_ACK,
    NBD_REP_ERR_BLOCK_SIZE_REQD, NBD_REP_ERR_INVALID, NBD_REP_ERR_PLATFORM, NBD_REP_ERR_POLICY,
    NBD_REP_ERR_SHUTDOWN, NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_TOO_BIG, NBD_REP_ERR_UNKNOWN,
    NBD_REP_ERR_UNSUP, NBD_REP_FLAG_ERROR, NBD_REP_INFO, NBD_REP_META_CONTEXT,
    OPTION_REPLY_HEADER_BYTES as OPTION_REPLY_HEADER_LEN, OPTION_REPLY_MAGIC,
    REQUEST_BYTES as REQUEST_LEN, REQUEST_MAGIC as NBD_REQUEST_MAGIC,
    SIMPLE_REPLY_BYTES as SIMPLE_REPLY_LEN, SIMPLE_REPLY_MAGIC as NBD_SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC as NBD_STRUCTURED_REPLY_MAGIC,
};

/// Chunk types with this bit set are errors.
pub const NBD_REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// The one flag of a `qemu:dirty-bitmap:` context's extents: set when the
/// extent was written since the bitmap was created or last cleared.
pub const NBD_STATE_DIRTY: u32 = 1 << 0;
/// The prefix of QEMU's dirty-bitmap metadata contexts (the bitmap's export name follows).
pub const QEMU_DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// Most bytes of an option reply's payload this client accepts (the
/// longest reply it asks for is a context id and a string).
pub const MAX_OPTION_REPLY: u32 = 16 * 1024;
/// Most bytes one `NBD_CMD_READ` asks for.
pub const MAX_READ: u32 = 1 << 20;
/// Most bytes of a chunk's payload this client accepts: a whole read's
/// data and its offset, or QEMU's largest block-status chunk (131072
/// descriptors and the context id).
pub const MAX_CHUNK: u32 = MAX_READ + 8;
/// Most bytes of the export one `NBD_CMD_BLOCK_STATUS` asks about.
pub const MAX_STATUS_LEN: u32 = 1 << 30;

/// The name of an option, for messages.
pub fn option_name(option: u32) -> &'static str {
    match option {
        NBD_OPT_ABORT => "NBD_OPT_ABORT",
        NBD_OPT_GO => "NBD_OPT_GO",
        NBD_OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        NBD_OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        _ => "an unknown option",
    }
}

/// What an option error reply means, for messages.
pub fn option_error_name(reply: u32) -> &'static str {
    match reply {
        NBD_REP_ERR_UNSUP => "not supported (NBD_REP_ERR_UNSUP)",
        NBD_REP_ERR_POLICY => "forbidden by the server's policy (NBD_REP_ERR_POLICY)",
        NBD_REP_ERR_INVALID => "invalid (NBD_REP_ERR_INVALID)",
        NBD_REP_ERR_PLATFORM => "not supported on this platform (NBD_REP_ERR_PLATFORM)",
        NBD_REP_ERR_TLS_REQD => "refused until TLS is negotiated (NBD_REP_ERR_TLS_REQD)",
        NBD_REP_ERR_UNKNOWN => "no such export (NBD_REP_ERR_UNKNOWN)",
        NBD_REP_ERR_SHUTDOWN => "refused: the server is shutting down (NBD_REP_ERR_SHUTDOWN)",
        NBD_REP_ERR_BLOCK_SIZE_REQD => "refused without block sizes (NBD_REP_ERR_BLOCK_SIZE_REQD)",
        NBD_REP_ERR_TOO_BIG => "too big (NBD_REP_ERR_TOO_BIG)",
        _ => "refused with an unknown error",
    }
}

/// The name of an NBD error number (the protocol's errno values), for messages.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "an unknown error",
    }
}

/// Something the server sent that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct Malformed {
    /// The message or field that is wrong.
    pub what: &'static str,
    /// What is wrong with it.
    pub detail: String,
}

fn malformed(what: &'static str, detail: impl Into<String>) -> Malformed {
    Malformed {
        what,
        detail: detail.into(),
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.bytes.len() < n {
            return Err(malformed(
                self.what,
                format!("{} byte(s) left where {n} are needed", self.bytes.len()),
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
    fn end(&self) -> Result<(), Malformed> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                self.what,
                format!("{} unexpected trailing byte(s)", self.bytes.len()),
            ))
        }
    }
}

/// Decodes the server's greeting ([`GREETING_LEN`] bytes); returns its handshake flags.
///
/// Refuses an oldstyle server and one without the fixed newstyle negotiation.
pub fn parse_greeting(bytes: &[u8]) -> Result<u16, Malformed> {
    let mut r = Reader::new(bytes, "server greeting");
    if r.u64()? != NBD_MAGIC {
        return Err(malformed(
            "server greeting",
            "does not start with NBDMAGIC: not an NBD server",
        ));
    }
    let magic = r.u64()?;
    if magic != IHAVEOPT {
        return Err(malformed(
            "server greeting",
            format!("{magic:#018x} instead of IHAVEOPT: an oldstyle server, which cannot select metadata contexts"),
        ));
    }
    let flags = r.u16()?;
    r.end()?;
    if flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(malformed(
            "server greeting",
            "the server does not offer the fixed newstyle negotiation (NBD_FLAG_FIXED_NEWSTYLE)",
        ));
    }
    Ok(flags)
}

/// Encodes an option request: [`IHAVEOPT`], the option, its data's length and the data.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    // Callers bound the data (names ≤ MAX_STRING); the cast cannot truncate.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The data of an `NBD_OPT_SET_META_CONTEXT` request: the export name and the queries.
pub fn encode_set_meta_context(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, export);
    out.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        put_string(&mut out, q);
    }
    out
}

/// The data of an `NBD_OPT_GO` request: the export name and the information asked for.
pub fn encode_go(export: &str, infos: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, export);
    out.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        out.extend_from_slice(&i.to_be_bytes());
    }
    out
}

/// The header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option answered.
    pub option: u32,
    /// The reply type (`NBD_REP_*`).
    pub reply: u32,
    /// Bytes of payload that follow (at most [`MAX_OPTION_REPLY`]).
    pub len: u32,
}

impl OptionReplyHeader {
    /// Decodes [`OPTION_REPLY_HEADER_LEN`] bytes, checking the magic, that
    /// the reply answers `expected` and that the payload is not oversized.
    pub fn parse(bytes: &[u8], expected: u32) -> Result<Self, Malformed> {
        let what = "option reply header";
        let mut r = Reader::new(bytes, what);
        let magic = r.u64()?;
        if magic != OPTION_REPLY_MAGIC {
            return Err(malformed(what, format!("bad magic {magic:#018x}")));
        }
        let h = OptionReplyHeader {
            option: r.u32()?,
            reply: r.u32()?,
            len: r.u32()?,
        };
        r.end()?;
        if h.option != expected {
            return Err(malformed(
                what,
                format!(
                    "answers option {} while {} ({expected}) was asked",
                    h.option,
                    option_name(expected)
                ),
            ));
        }
        if h.len > MAX_OPTION_REPLY {
            return Err(malformed(
                what,
                format!(
                    "announces {} bytes of payload, more than the {MAX_OPTION_REPLY} accepted",
                    h.len
                ),
            ));
        }
        Ok(h)
    }
}

/// An `NBD_REP_META_CONTEXT` payload: a context id and its name.
pub fn parse_meta_context(payload: &[u8]) -> Result<(u32, String), Malformed> {
    let what = "NBD_REP_META_CONTEXT reply";
    let mut r = Reader::new(payload, what);
    let id = r.u32()?;
    let name = r.rest();
    if name.len() > MAX_STRING {
        return Err(malformed(
            what,
            format!("a context name of {} bytes", name.len()),
        ));
    }
    let name =
        std::str::from_utf8(name).map_err(|_| malformed(what, "the context name is not UTF-8"))?;
    Ok((id, name.to_string()))
}

/// What an `NBD_REP_INFO` payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: the export's size and transmission flags.
    Export {
        /// Bytes.
        size: u64,
        /// `NBD_FLAG_*` transmission flags.
        flags: u16,
    },
    /// `NBD_INFO_BLOCK_SIZE`: the server's block size constraints.
    BlockSize {
        /// Requests must be aligned to this.
        min: u32,
        /// Requests should be aligned to this.
        preferred: u32,
        /// Requests must not be longer than this.
        max: u32,
    },
    /// Another information type (ignored).
    Other(u16),
}

/// Decodes an `NBD_REP_INFO` payload.
pub fn parse_info(payload: &[u8]) -> Result<Info, Malformed> {
    let what = "NBD_REP_INFO reply";
    let mut r = Reader::new(payload, what);
    let kind = r.u16()?;
    let info = match kind {
        NBD_INFO_EXPORT => Info::Export {
            size: r.u64()?,
            flags: r.u16()?,
        },
        NBD_INFO_BLOCK_SIZE => {
            let (min, preferred, max) = (r.u32()?, r.u32()?, r.u32()?);
            if min == 0 || !min.is_power_of_two() || preferred < min || max < min {
                return Err(malformed(
                    what,
                    format!("impossible block sizes: minimum {min}, preferred {preferred}, maximum {max}"),
                ));
            }
            Info::BlockSize {
                min,
                preferred,
                max,
            }
        }
        other => return Ok(Info::Other(other)),
    };
    r.end()?;
    Ok(info)
}

/// An option error's message (the payload of an `NBD_REP_ERR_*` reply), lossily as text.
pub fn error_message(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[..payload.len().min(MAX_STRING)]).into_owned()
}

/// A transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`NBD_CMD_*`).
    pub command: u16,
    /// Echoed by the server in every chunk of the reply.
    pub cookie: u64,
    /// Where in the export.
    pub offset: u64,
    /// How many bytes.
    pub len: u32,
}

impl Request {
    /// The [`REQUEST_LEN`] bytes of the request.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Decodes a request (the inverse of [`Request::encode`]; for tests and fake servers).
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(bytes, "request");
        if r.u32()? != NBD_REQUEST_MAGIC {
            return Err(malformed("request", "bad magic"));
        }
        let req = Request {
            flags: r.u16()?,
            command: r.u16()?,
            cookie: r.u64()?,
            offset: r.u64()?,
            len: r.u32()?,
        };
        r.end()?;
        Ok(req)
    }
}

/// The start of a reply: the first 4 bytes tell a simple reply from a structured chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// [`NBD_SIMPLE_REPLY_MAGIC`]: 12 more bytes (error, cookie).
    Simple,
    /// [`NBD_STRUCTURED_REPLY_MAGIC`]: 16 more bytes of chunk header.
    Structured,
}

/// Decodes a reply's magic.
pub fn parse_reply_magic(bytes: [u8; 4]) -> Result<ReplyKind, Malformed> {
    match u32::from_be_bytes(bytes) {
        NBD_SIMPLE_REPLY_MAGIC => Ok(ReplyKind::Simple),
        NBD_STRUCTURED_REPLY_MAGIC => Ok(ReplyKind::Structured),
        m => Err(malformed("reply", format!("bad magic {m:#010x}"))),
    }
}

/// A simple reply: an error number (0 = success) and the cookie.
pub fn parse_simple_reply(bytes: &[u8]) -> Result<(u32, u64), Malformed> {
    let mut r = Reader::new(bytes, "simple reply");
    if r.u32()? != NBD_SIMPLE_REPLY_MAGIC {
        return Err(malformed("simple reply", "bad magic"));
    }
    let v = (r.u32()?, r.u64()?);
    r.end()?;
    Ok(v)
}

/// The header of a structured reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `NBD_REPLY_FLAG_*`.
    pub flags: u16,
    /// `NBD_REPLY_TYPE_*`.
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Bytes of payload that follow (at most [`MAX_CHUNK`]).
    pub len: u32,
}

impl ChunkHeader {
    /// Decodes [`CHUNK_HEADER_LEN`] bytes, refusing an oversized payload.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let what = "structured reply chunk";
        let mut r = Reader::new(bytes, what);
        let magic = r.u32()?;
        if magic != NBD_STRUCTURED_REPLY_MAGIC {
            return Err(malformed(what, format!("bad magic {magic:#010x}")));
        }
        let h = ChunkHeader {
            flags: r.u16()?,
            kind: r.u16()?,
            cookie: r.u64()?,
            len: r.u32()?,
        };
        r.end()?;
        if h.len > MAX_CHUNK {
            return Err(malformed(
                what,
                format!(
                    "announces {} bytes of payload, more than the {MAX_CHUNK} accepted",
                    h.len
                ),
            ));
        }
        Ok(h)
    }

    /// The [`CHUNK_HEADER_LEN`] bytes of the header (for tests and fake servers).
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut out = [0u8; CHUNK_HEADER_LEN];
        out[0..4].copy_from_slice(&NBD_STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..20].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// True when this is the reply's last chunk.
    pub fn done(&self) -> bool {
        self.flags & NBD_REPLY_FLAG_DONE != 0
    }
}

/// An error the server reported in a structured reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The NBD error number.
    pub errno: u32,
    /// The server's message (may be empty).
    pub message: String,
    /// Where, for `NBD_REPLY_TYPE_ERROR_OFFSET`.
    pub offset: Option<u64>,
}

impl ServerError {
    /// The error of a simple reply: a number, no message, no offset.
    pub fn simple(errno: u32) -> Self {
        ServerError {
            errno,
            message: String::new(),
            offset: None,
        }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", errno_name(self.errno), self.errno)?;
        if let Some(o) = self.offset {
            write!(f, " at offset {o}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Decodes an error chunk's payload (`kind` has [`NBD_REPLY_TYPE_ERROR_BIT`] set).
pub fn parse_error_chunk(kind: u16, payload: &[u8]) -> Result<ServerError, Malformed> {
    let what = "error chunk";
    let mut r = Reader::new(payload, what);
    let errno = r.u32()?;
    let len = usize::from(r.u16()?);
    let message = String::from_utf8_lossy(r.take(len)?).into_owned();
    let offset = if kind == NBD_REPLY_TYPE_ERROR_OFFSET {
        Some(r.u64()?)
    } else {
        None
    };
    // Error types this client does not know may carry more: only the known ones must end here.
    if kind == NBD_REPLY_TYPE_ERROR || kind == NBD_REPLY_TYPE_ERROR_OFFSET {
        r.end()?;
    }
    if errno == 0 {
        return Err(malformed(what, "reports an error with error number 0"));
    }
    Ok(ServerError {
        errno,
        message,
        offset,
    })
}

/// One chunk of the reply to an `NBD_CMD_READ` of `request` (absolute byte range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadChunk<'a> {
    /// Data at an offset.
    Data {
        /// Where the data starts in the export.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// A range that reads as zeros.
    Hole {
        /// Where it starts.
        offset: u64,
        /// How long it is.
        len: u32,
    },
    /// The server failed the read.
    Error(ServerError),
    /// No payload (`NBD_REPLY_TYPE_NONE`): the end of the reply.
    None,
}

/// Decodes a read reply's chunk, checking that it lies inside `request`.
pub fn parse_read_chunk<'a>(
    kind: u16,
    payload: &'a [u8],
    request: Range<u64>,
) -> Result<ReadChunk<'a>, Malformed> {
    let inside = |what: &'static str, offset: u64, len: u64| match offset.checked_add(len) {
        Some(end) if len > 0 && offset >= request.start && end <= request.end => Ok(()),
        _ => Err(malformed(
            what,
            format!(
                "{len} byte(s) at offset {offset} are empty or outside the {}..{} asked for",
                request.start, request.end
            ),
        )),
    };
    match kind {
        NBD_REPLY_TYPE_OFFSET_DATA => {
            let what = "NBD_REPLY_TYPE_OFFSET_DATA chunk";
            let mut r = Reader::new(payload, what);
            let offset = r.u64()?;
            let data = r.rest();
            inside(what, offset, data.len() as u64)?;
            Ok(ReadChunk::Data { offset, data })
        }
        NBD_REPLY_TYPE_OFFSET_HOLE => {
            let what = "NBD_REPLY_TYPE_OFFSET_HOLE chunk";
            let mut r = Reader::new(payload, what);
            let offset = r.u64()?;
            let len = r.u32()?;
            r.end()?;
            inside(what, offset, u64::from(len))?;
            Ok(ReadChunk::Hole { offset, len })
        }
        NBD_REPLY_TYPE_NONE => {
            Reader::new(payload, "NBD_REPLY_TYPE_NONE chunk").end()?;
            Ok(ReadChunk::None)
        }
        k if k & NBD_REPLY_TYPE_ERROR_BIT != 0 => {
            Ok(ReadChunk::Error(parse_error_chunk(k, payload)?))
        }
        k => Err(malformed(
            "read reply",
            format!("chunk type {k}, which does not answer a read"),
        )),
    }
}

/// One extent of a block-status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes (never 0).
    pub len: u32,
    /// The context's status flags (for a dirty bitmap, [`NBD_STATE_DIRTY`]).
    pub flags: u32,
}

/// Decodes an `NBD_REPLY_TYPE_BLOCK_STATUS` payload for the context `context`.
///
/// The extents must be non-empty and there must be at least one.
pub fn parse_block_status(payload: &[u8], context: u32) -> Result<Vec<Extent>, Malformed> {
    let what = "NBD_REPLY_TYPE_BLOCK_STATUS chunk";
    let mut r = Reader::new(payload, what);
    let id = r.u32()?;
    if id != context {
        return Err(malformed(
            what,
            format!("reports context {id}, but only {context} was selected"),
        ));
    }
    let body = r.rest();
    if body.is_empty() || body.len() % 8 != 0 {
        return Err(malformed(
            what,
            format!(
                "{} byte(s) of descriptors: not a positive multiple of 8",
                body.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(body.len() / 8);
    for d in body.chunks_exact(8) {
        let mut r = Reader::new(d, what);
        let e = Extent {
            len: r.u32()?,
            flags: r.u32()?,
        };
        if e.len == 0 {
            return Err(malformed(what, "an extent of length 0"));
        }
        out.push(e);
    }
    Ok(out)
}

/// Encodes a block-status payload (the inverse of [`parse_block_status`]; for tests and fake servers).
pub fn encode_block_status(context: u32, extents: &[Extent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * extents.len());
    out.extend_from_slice(&context.to_be_bytes());
    for e in extents {
        out.extend_from_slice(&e.len.to_be_bytes());
        out.extend_from_slice(&e.flags.to_be_bytes());
    }
    out
}

/// The body of the fuzz target `nbd_client_replies`: decodes `data` as what
/// a server may send (the first byte picks the message) with every decoder
/// of this module, and checks that what decodes re-encodes to the same
/// bytes where an encoder exists, and that read chunks lie inside their
/// request. `tests/qemu_bitmap.rs` runs it on the committed seeds
/// (`fuzz/corpus/nbd_client_replies/`).
///
/// # Panics
///
/// When a decoder breaks one of these promises: that is what the fuzzer looks for.
pub fn fuzz_replies(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            // The negotiation: greeting, option reply header, its payloads.
            let _ = parse_greeting(rest);
            if let Some(head) = rest.get(..OPTION_REPLY_HEADER_LEN) {
                let _ = OptionReplyHeader::parse(head, NBD_OPT_GO);
                let payload = &rest[OPTION_REPLY_HEADER_LEN..];
                let _ = parse_info(payload);
                let _ = parse_meta_context(payload);
                let _ = error_message(payload);
            }
        }
        1 => {
            // A structured chunk: header, then its payload as a read or a status.
            let Some(head) = rest.get(..CHUNK_HEADER_LEN) else {
                let _ = ChunkHeader::parse(rest);
                return;
            };
            let Ok(h) = ChunkHeader::parse(head) else {
                return;
            };
            assert_eq!(
                &h.encode()[..],
                head,
                "a chunk header must re-encode to its bytes"
            );
            let payload = &rest[CHUNK_HEADER_LEN..];
            let request = 4096..4096 + u64::from(MAX_READ);
            match parse_read_chunk(h.kind, payload, request.clone()) {
                Ok(ReadChunk::Data { offset, data }) => {
                    assert!(offset >= request.start && offset + data.len() as u64 <= request.end);
                }
                Ok(ReadChunk::Hole { offset, len }) => {
                    assert!(offset >= request.start && offset + u64::from(len) <= request.end);
                }
                _ => {}
            }
            let _ = parse_block_status(payload, 1);
        }
        2 => {
            // A block-status payload for the context its first 4 bytes name.
            let context = rest
                .get(..4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            if let Ok(extents) = parse_block_status(rest, context) {
                assert_eq!(
                    encode_block_status(context, &extents),
                    rest,
                    "a block status payload must re-encode to its bytes"
                );
            }
            let _ = parse_error_chunk(NBD_REPLY_TYPE_ERROR, rest);
            let _ = parse_error_chunk(NBD_REPLY_TYPE_ERROR_OFFSET, rest);
        }
        _ => {
            // Simple replies and the reply magic; requests round-trip.
            let _ = parse_simple_reply(rest);
            if let Some(m) = rest.get(..4) {
                let _ = parse_reply_magic([m[0], m[1], m[2], m[3]]);
            }
            if let Ok(r) = Request::parse(rest) {
                assert_eq!(
                    &r.encode()[..],
                    rest,
                    "a request must re-encode to its bytes"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_needs_fixed_newstyle() {
        let mut g = Vec::new();
        g.extend_from_slice(&NBD_MAGIC.to_be_bytes());
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_greeting(&g), Ok(3));
        g[17] = 0;
        assert!(parse_greeting(&g)
            .unwrap_err()
            .detail
            .contains("NBD_FLAG_FIXED_NEWSTYLE"));
        assert!(parse_greeting(&g[..10]).is_err());
        g[8] = 0;
        assert!(parse_greeting(&g).unwrap_err().detail.contains("oldstyle"));
    }

    #[test]
    fn oversized_payloads_are_refused_before_reading_them() {
        let h = ChunkHeader {
            flags: 0,
            kind: NBD_REPLY_TYPE_OFFSET_DATA,
            cookie: 1,
            len: MAX_CHUNK + 1,
        };
        assert!(ChunkHeader::parse(&h.encode())
            .unwrap_err()
            .detail
            .contains("more than"));
        let mut o = Vec::new();
        o.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        o.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
        o.extend_from_slice(&NBD_REP_INFO.to_be_bytes());
        o.extend_from_slice(&(MAX_OPTION_REPLY + 1).to_be_bytes());
        assert!(OptionReplyHeader::parse(&o, NBD_OPT_GO).is_err());
        o[16..20].copy_from_slice(&12u32.to_be_bytes());
        assert_eq!(
            OptionReplyHeader::parse(&o, NBD_OPT_GO).map(|h| h.len),
            Ok(12)
        );
        assert!(OptionReplyHeader::parse(&o, NBD_OPT_STRUCTURED_REPLY).is_err());
    }

    #[test]
    fn read_chunks_must_lie_inside_the_request() {
        let mut p = 100u64.to_be_bytes().to_vec();
        p.extend_from_slice(&[7; 10]);
        assert_eq!(
            parse_read_chunk(NBD_REPLY_TYPE_OFFSET_DATA, &p, 100..110),
            Ok(ReadChunk::Data {
                offset: 100,
                data: &[7; 10]
            })
        );
        assert!(parse_read_chunk(NBD_REPLY_TYPE_OFFSET_DATA, &p, 100..109).is_err());
        assert!(parse_read_chunk(NBD_REPLY_TYPE_OFFSET_DATA, &p[..8], 100..110).is_err());
        let mut h = u64::MAX.to_be_bytes().to_vec();
        h.extend_from_slice(&2u32.to_be_bytes());
        assert!(parse_read_chunk(NBD_REPLY_TYPE_OFFSET_HOLE, &h, 0..u64::MAX).is_err());
        assert!(parse_read_chunk(NBD_REPLY_TYPE_BLOCK_STATUS, &h, 0..10).is_err());
    }

    #[test]
    fn error_chunks_carry_their_message_and_offset() {
        let mut p = 5u32.to_be_bytes().to_vec();
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(b"bad");
        p.extend_from_slice(&4096u64.to_be_bytes());
        let e = parse_error_chunk(NBD_REPLY_TYPE_ERROR_OFFSET, &p).unwrap();
        assert_eq!(e.to_string(), "EIO (5) at offset 4096: bad");
        assert!(parse_error_chunk(NBD_REPLY_TYPE_ERROR, &p).is_err());
        assert!(parse_error_chunk(NBD_REPLY_TYPE_ERROR, &p[..8]).is_err());
    }

    #[test]
    fn block_status_checks_context_and_lengths() {
        let e = [
            Extent {
                len: 65536,
                flags: 1,
            },
            Extent {
                len: 4096,
                flags: 0,
            },
        ];
        let p = encode_block_status(3, &e);
        assert_eq!(parse_block_status(&p, 3).unwrap(), e);
        assert!(parse_block_status(&p, 2).is_err());
        assert!(parse_block_status(&p[..p.len() - 1], 3).is_err());
        assert!(parse_block_status(&p[..4], 3).is_err());
        let zero = encode_block_status(3, &[Extent { len: 0, flags: 1 }]);
        assert!(parse_block_status(&zero, 3).is_err());
    }
}
