//! The NBD protocol's wire format: every constant rha uses, named as the
//! specification names it (`doc/proto.md` of NetworkBlockDevice/nbd), and
//! pure encoders and decoders — bytes in, bytes out, no I/O.
//!
//! All integers are big-endian (network byte order).
//!
//! ```text
//! handshake    S: NBDMAGIC  IHAVEOPT  handshake flags (u16)
//!              C: client flags (u32)
//! options      C: IHAVEOPT  option (u32)  length (u32)  data
//!              S: REPLY_MAGIC  option (u32)  reply type (u32)  length (u32)  data
//! requests     C: REQUEST_MAGIC  flags (u16)  type (u16)  cookie (u64)  offset (u64)  length (u32)  [data]
//! replies      S: SIMPLE_REPLY_MAGIC  error (u32)  cookie (u64)  [data]
//!              S: STRUCTURED_REPLY_MAGIC  flags (u16)  type (u16)  cookie (u64)  length (u32)  payload
//! ```
//!
//! Decoders of fixed-size headers return `Ok(None)` when the buffer holds
//! too few bytes (read more), `Ok(Some(..))` with what they decoded, and
//! `Err` when the bytes cannot be NBD (a bad magic number): the connection
//! cannot be resynchronised after that, so it is closed.

// ---------------------------------------------------------------- magic numbers

/// `NBDMAGIC`: the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: sent by the server after [`NBDMAGIC`] (newstyle negotiation)
/// and by the client in front of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic number in front of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`: the magic number of a (compact) transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_EXTENDED_REQUEST_MAGIC`: a request with extended headers (64-bit
/// lengths). rha does not negotiate extended headers; named so that the log
/// can say what a client sent.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// `NBD_SIMPLE_REPLY_MAGIC`: a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`: one chunk of a structured reply.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// ---------------------------------------------------------------- handshake flags

/// Handshake flag (server): the server speaks *fixed* newstyle negotiation
/// (every option gets a reply, unknown ones an error).
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag (server): the client may ask the server not to send the
/// 124 bytes of zeros after an `NBD_OPT_EXPORT_NAME` reply.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flag: the client speaks fixed newstyle negotiation.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: do not send the 124 bytes of zeros (only if the server offered it).
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

// ---------------------------------------------------------------- options

/// Choose an export and enter transmission (no error reply possible).
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
/// End the negotiation; the server acknowledges and closes.
pub const NBD_OPT_ABORT: u32 = 2;
/// List the exports: one `NBD_REP_SERVER` each, then `NBD_REP_ACK`.
pub const NBD_OPT_LIST: u32 = 3;
/// Withdrawn (`PEEK_EXPORT`); refused as unsupported.
pub const NBD_OPT_PEEK_EXPORT: u32 = 4;
/// Upgrade the connection to TLS.
pub const NBD_OPT_STARTTLS: u32 = 5;
/// Ask about an export (as `NBD_OPT_GO`, without entering transmission).
pub const NBD_OPT_INFO: u32 = 6;
/// Ask about an export and enter transmission with it.
pub const NBD_OPT_GO: u32 = 7;
/// Use structured replies in transmission.
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
/// List the metadata contexts (for `NBD_CMD_BLOCK_STATUS`).
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts.
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;
/// Use extended headers (64-bit lengths); refused as unsupported by rha.
pub const NBD_OPT_EXTENDED_HEADERS: u32 = 11;

// ---------------------------------------------------------------- option replies

/// The option succeeded (or a list has ended). No data.
pub const NBD_REP_ACK: u32 = 1;
/// One export of an `NBD_OPT_LIST`: name length (u32), name, description.
pub const NBD_REP_SERVER: u32 = 2;
/// One piece of information of `NBD_OPT_INFO` / `NBD_OPT_GO`: type (u16), data.
pub const NBD_REP_INFO: u32 = 3;
/// One metadata context: id (u32), name.
pub const NBD_REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks an error reply; its data is a message for a human.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// The option is unknown to this server.
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
/// The option is known but forbidden by policy.
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
/// The option is syntactically invalid.
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
/// The option is not supported on this platform.
pub const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_FLAG_ERROR | 4;
/// TLS must be started first (`NBD_OPT_STARTTLS`).
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
/// The export asked for does not exist.
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
/// The server is shutting down.
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR | 7;
/// The export needs the client to request `NBD_INFO_BLOCK_SIZE`.
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_FLAG_ERROR | 8;
/// The option's data is larger than the server accepts.
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;

// ---------------------------------------------------------------- info types

/// `NBD_INFO_EXPORT`: size (u64) and transmission flags (u16). Always sent.
pub const NBD_INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`: the export's canonical name.
pub const NBD_INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`: a description for humans.
pub const NBD_INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block size (3 × u32).
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------- transmission flags

/// Always set: the flags field is valid.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only: writes fail with `EPERM`.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_CMD_FLUSH` is supported.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// The `NBD_CMD_FLAG_FUA` flag is supported.
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// The export behaves like a rotational disk (rha never sets it).
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
/// `NBD_CMD_TRIM` is supported.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_CMD_WRITE_ZEROES` is supported.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// The `NBD_CMD_FLAG_DF` flag of reads is supported (structured replies only).
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
/// Flushes are visible across every connection to the export, so a client
/// may use several connections.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_CMD_RESIZE` is supported (rha never sets it).
pub const NBD_FLAG_SEND_RESIZE: u16 = 1 << 9;
/// `NBD_CMD_CACHE` is supported.
pub const NBD_FLAG_SEND_CACHE: u16 = 1 << 10;
/// The `NBD_CMD_FLAG_FAST_ZERO` flag is supported (rha never sets it).
pub const NBD_FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---------------------------------------------------------------- commands

/// Read `length` bytes at `offset`.
pub const NBD_CMD_READ: u16 = 0;
/// Write the `length` bytes that follow the request at `offset`.
pub const NBD_CMD_WRITE: u16 = 1;
/// Disconnect: finish what is in flight and close (no reply).
pub const NBD_CMD_DISC: u16 = 2;
/// Make every completed write durable.
pub const NBD_CMD_FLUSH: u16 = 3;
/// The client no longer needs the range (may be discarded).
pub const NBD_CMD_TRIM: u16 = 4;
/// Advisory: the client will read the range soon.
pub const NBD_CMD_CACHE: u16 = 5;
/// Make the range read as zeros.
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
/// Query metadata contexts (not negotiated by rha).
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;
/// Resize the export (not supported by rha).
pub const NBD_CMD_RESIZE: u16 = 8;

/// Command flag: force unit access — the write is durable before the reply.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag of `WRITE_ZEROES`: do not punch a hole (rha accepts it;
/// the range reads as zeros either way).
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag of `READ`: do not fragment the structured reply.
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag of `BLOCK_STATUS`: one extent only.
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag of `WRITE_ZEROES`: fail fast if zeroing is slow.
pub const NBD_CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Command flag (extended headers): the length is a payload length.
pub const NBD_CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

// ---------------------------------------------------------------- structured replies

/// Structured reply flag: this is the last chunk of the reply.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk type: no payload (a successful reply with nothing to say).
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
/// Chunk type: offset (u64) then data read there.
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Chunk type: offset (u64) and length (u32) of a range that reads as zeros.
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Chunk type: block status extents.
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Chunk type: error (u32), message length (u16), message.
pub const NBD_REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
/// Chunk type: error, message, then the offset (u64) where it occurred.
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

// ---------------------------------------------------------------- errors

/// No error.
pub const NBD_OK: u32 = 0;
/// Operation not permitted (a write to a read-only export).
pub const NBD_EPERM: u32 = 1;
/// Input/output error.
pub const NBD_EIO: u32 = 5;
/// Cannot allocate memory.
pub const NBD_ENOMEM: u32 = 12;
/// Invalid argument (out-of-range read, unaligned request, unknown command or flag).
pub const NBD_EINVAL: u32 = 22;
/// No space left: a write past the end of the export.
pub const NBD_ENOSPC: u32 = 28;
/// Value too large: a request longer than the maximum block size.
pub const NBD_EOVERFLOW: u32 = 75;
/// Operation not supported.
pub const NBD_ENOTSUP: u32 = 95;
/// The server is shutting down.
pub const NBD_ESHUTDOWN: u32 = 108;

// ---------------------------------------------------------------- sizes and limits

/// Bytes of the server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub const GREETING_BYTES: usize = 18;
/// Bytes of an option request header: `IHAVEOPT`, option, length.
pub const OPTION_HEADER_BYTES: usize = 16;
/// Bytes of an option reply header: magic, option, reply type, length.
pub const OPTION_REPLY_HEADER_BYTES: usize = 20;
/// Bytes of a transmission request header.
pub const REQUEST_BYTES: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_BYTES: usize = 16;
/// Bytes of a structured reply chunk header.
pub const CHUNK_HEADER_BYTES: usize = 20;
/// Zero bytes after an `NBD_OPT_EXPORT_NAME` reply unless `NO_ZEROES` was agreed.
pub const EXPORT_NAME_ZEROES: usize = 124;
/// The longest string (export name, description, message) the
/// specification allows: 4096 bytes.
pub const MAX_STRING: usize = 4096;
/// The most option data this server reads: longer options get
/// `NBD_REP_ERR_TOO_BIG` and the connection is closed.
pub const MAX_OPTION_BYTES: u32 = 64 * 1024;
/// The most metadata-context queries one option may carry.
pub const MAX_META_QUERIES: u32 = 64;
/// Minimum block size announced: requests must be aligned to 512 bytes,
/// the sector, so every journal record and replica write is sector-aligned.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Preferred block size announced: 4 KiB, rha's block.
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Maximum payload of one request announced: 32 MiB.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// The name of an option, for logs.
pub fn option_name(option: u32) -> &'static str {
    match option {
        NBD_OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        NBD_OPT_ABORT => "NBD_OPT_ABORT",
        NBD_OPT_LIST => "NBD_OPT_LIST",
        NBD_OPT_PEEK_EXPORT => "NBD_OPT_PEEK_EXPORT",
        NBD_OPT_STARTTLS => "NBD_OPT_STARTTLS",
        NBD_OPT_INFO => "NBD_OPT_INFO",
        NBD_OPT_GO => "NBD_OPT_GO",
        NBD_OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        NBD_OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        NBD_OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        NBD_OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
        _ => "unknown option",
    }
}

/// The name of a command, for logs.
pub fn command_name(kind: u16) -> &'static str {
    match kind {
        NBD_CMD_READ => "NBD_CMD_READ",
        NBD_CMD_WRITE => "NBD_CMD_WRITE",
        NBD_CMD_DISC => "NBD_CMD_DISC",
        NBD_CMD_FLUSH => "NBD_CMD_FLUSH",
        NBD_CMD_TRIM => "NBD_CMD_TRIM",
        NBD_CMD_CACHE => "NBD_CMD_CACHE",
        NBD_CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
        NBD_CMD_BLOCK_STATUS => "NBD_CMD_BLOCK_STATUS",
        NBD_CMD_RESIZE => "NBD_CMD_RESIZE",
        _ => "unknown command",
    }
}

/// Bytes that cannot be NBD: the connection is closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A header does not start with the magic number it must.
    #[error("bad magic in {what}: expected {expected:#x}, got {got:#x}")]
    BadMagic {
        /// Which header.
        what: &'static str,
        /// The magic number required.
        expected: u64,
        /// What the client sent.
        got: u64,
    },
    /// The client sent a request with extended headers, which were not negotiated.
    #[error("the client sent an extended-header request (magic {EXTENDED_REQUEST_MAGIC:#x}) without negotiating extended headers")]
    ExtendedRequest,
    /// The client flags hold a bit this server did not offer.
    #[error(
        "client flags {flags:#x} hold bits this server did not offer (it offers {offered:#x})"
    )]
    ClientFlags {
        /// The client's flags.
        flags: u32,
        /// What the server offered.
        offered: u32,
    },
    /// The client does not speak fixed newstyle negotiation.
    #[error("the client does not speak fixed newstyle negotiation (client flags {flags:#x}); rha serves only fixed newstyle")]
    NotFixedNewstyle {
        /// The client's flags.
        flags: u32,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

// ---------------------------------------------------------------- handshake

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake `flags`.
pub fn encode_greeting(flags: u16) -> [u8; GREETING_BYTES] {
    let mut b = [0u8; GREETING_BYTES];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&flags.to_be_bytes());
    b
}

/// What the client's flags agree to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// The raw flags.
    pub raw: u32,
    /// No 124 zero bytes after an `NBD_OPT_EXPORT_NAME` reply.
    pub no_zeroes: bool,
}

/// Decodes the client's 4-byte flags, given the handshake flags the
/// server offered. A client that is not fixed newstyle, or sets a bit the
/// server did not offer, must be disconnected.
pub fn decode_client_flags(b: [u8; 4], offered: u16) -> Result<ClientFlags, ProtoError> {
    let raw = u32::from_be_bytes(b);
    let mut allowed = NBD_FLAG_C_FIXED_NEWSTYLE;
    if offered & NBD_FLAG_NO_ZEROES != 0 {
        allowed |= NBD_FLAG_C_NO_ZEROES;
    }
    if raw & !allowed != 0 {
        return Err(ProtoError::ClientFlags {
            flags: raw,
            offered: allowed,
        });
    }
    if raw & NBD_FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(ProtoError::NotFixedNewstyle { flags: raw });
    }
    Ok(ClientFlags {
        raw,
        no_zeroes: raw & NBD_FLAG_C_NO_ZEROES != 0,
    })
}

// ---------------------------------------------------------------- option requests

/// The header of an option request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`NBD_OPT_*`).
    pub option: u32,
    /// Bytes of data that follow.
    pub len: u32,
}

/// Decodes an option request header from the front of `buf`.
pub fn decode_option_header(buf: &[u8]) -> Result<Option<OptionHeader>, ProtoError> {
    if buf.len() < OPTION_HEADER_BYTES {
        return Ok(None);
    }
    let magic = u64_at(buf, 0);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic {
            what: "option request",
            expected: IHAVEOPT,
            got: magic,
        });
    }
    Ok(Some(OptionHeader {
        option: u32_at(buf, 8),
        len: u32_at(buf, 12),
    }))
}

/// Encodes an option request (what a client sends; for tests and tools).
pub fn encode_option(option: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// The data of an `NBD_OPT_INFO` or `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export's name.
    pub name: String,
    /// The information types the client asked for (`NBD_INFO_*`).
    pub requests: Vec<u16>,
}

/// The data of an `NBD_OPT_LIST_META_CONTEXT` or `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// The export's name.
    pub name: String,
    /// The queries (`base:allocation`, ...).
    pub queries: Vec<String>,
}

/// One decoded option request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionRequest {
    /// `NBD_OPT_EXPORT_NAME` with the export's name.
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextRequest),
    /// Any other option (refused with `NBD_REP_ERR_UNSUP`).
    Unknown(u32),
}

impl OptionRequest {
    /// The option's number.
    pub fn option(&self) -> u32 {
        match self {
            OptionRequest::ExportName(_) => NBD_OPT_EXPORT_NAME,
            OptionRequest::Abort => NBD_OPT_ABORT,
            OptionRequest::List => NBD_OPT_LIST,
            OptionRequest::StartTls => NBD_OPT_STARTTLS,
            OptionRequest::Info(_) => NBD_OPT_INFO,
            OptionRequest::Go(_) => NBD_OPT_GO,
            OptionRequest::StructuredReply => NBD_OPT_STRUCTURED_REPLY,
            OptionRequest::ListMetaContext(_) => NBD_OPT_LIST_META_CONTEXT,
            OptionRequest::SetMetaContext(_) => NBD_OPT_SET_META_CONTEXT,
            OptionRequest::Unknown(o) => *o,
        }
    }

    /// The option's data, encoded as a client sends it (the inverse of [`decode_option`]).
    pub fn encode_data(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            OptionRequest::ExportName(name) => out.extend_from_slice(name.as_bytes()),
            OptionRequest::Info(r) | OptionRequest::Go(r) => {
                put_string32(&mut out, &r.name);
                out.extend_from_slice(&(r.requests.len() as u16).to_be_bytes());
                for i in &r.requests {
                    out.extend_from_slice(&i.to_be_bytes());
                }
            }
            OptionRequest::ListMetaContext(m) | OptionRequest::SetMetaContext(m) => {
                put_string32(&mut out, &m.name);
                out.extend_from_slice(&(m.queries.len() as u32).to_be_bytes());
                for q in &m.queries {
                    put_string32(&mut out, q);
                }
            }
            OptionRequest::Abort
            | OptionRequest::List
            | OptionRequest::StartTls
            | OptionRequest::StructuredReply
            | OptionRequest::Unknown(_) => {}
        }
        out
    }
}

fn put_string32(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Why an option's data is not valid: answered with `NBD_REP_ERR_INVALID`
/// and this message; the negotiation goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {reason}")]
pub struct InvalidOption {
    /// The option's name.
    pub option: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// A cursor over option data that reports what is missing.
struct Fields<'a> {
    data: &'a [u8],
    at: usize,
    option: &'static str,
}

impl<'a> Fields<'a> {
    fn invalid(&self, reason: impl Into<String>) -> InvalidOption {
        InvalidOption {
            option: self.option,
            reason: reason.into(),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], InvalidOption> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(self.invalid(format!(
                "the data ends before {what} ({} bytes, {} left)",
                n,
                self.data.len() - self.at
            ))),
        }
    }
    fn u16(&mut self, what: &str) -> Result<u16, InvalidOption> {
        Ok(u16_at(self.take(2, what)?, 0))
    }
    fn u32(&mut self, what: &str) -> Result<u32, InvalidOption> {
        Ok(u32_at(self.take(4, what)?, 0))
    }
    fn string(&mut self, len: usize, what: &str) -> Result<String, InvalidOption> {
        if len > MAX_STRING {
            return Err(self.invalid(format!(
                "{what} is {len} bytes; the most allowed is {MAX_STRING}"
            )));
        }
        let b = self.take(len, what)?;
        let s = std::str::from_utf8(b).map_err(|_| self.invalid(format!("{what} is not UTF-8")))?;
        if s.contains('\0') {
            return Err(self.invalid(format!("{what} contains a NUL character")));
        }
        Ok(s.to_owned())
    }
    fn string32(&mut self, what: &str) -> Result<String, InvalidOption> {
        let len = self.u32(what)? as usize;
        self.string(len, what)
    }
    fn end(&self) -> Result<(), InvalidOption> {
        if self.at == self.data.len() {
            Ok(())
        } else {
            Err(self.invalid(format!(
                "{} unexpected bytes after the data",
                self.data.len() - self.at
            )))
        }
    }
}

/// Decodes the data of option `option`. Unknown options decode to
/// [`OptionRequest::Unknown`] whatever their data.
pub fn decode_option(option: u32, data: &[u8]) -> Result<OptionRequest, InvalidOption> {
    let mut f = Fields {
        data,
        at: 0,
        option: option_name(option),
    };
    let no_data = |f: &Fields<'_>, r: OptionRequest| -> Result<OptionRequest, InvalidOption> {
        f.end().map(|()| r)
    };
    match option {
        NBD_OPT_EXPORT_NAME => Ok(OptionRequest::ExportName(
            f.string(data.len(), "the export name")?,
        )),
        NBD_OPT_ABORT => no_data(&f, OptionRequest::Abort),
        NBD_OPT_LIST => no_data(&f, OptionRequest::List),
        NBD_OPT_STARTTLS => no_data(&f, OptionRequest::StartTls),
        NBD_OPT_STRUCTURED_REPLY => no_data(&f, OptionRequest::StructuredReply),
        NBD_OPT_INFO | NBD_OPT_GO => {
            let name = f.string32("the export name")?;
            let n = f.u16("the number of information requests")?;
            let mut requests = Vec::with_capacity(n as usize);
            for _ in 0..n {
                requests.push(f.u16("an information request")?);
            }
            f.end()?;
            let r = InfoRequest { name, requests };
            Ok(if option == NBD_OPT_GO {
                OptionRequest::Go(r)
            } else {
                OptionRequest::Info(r)
            })
        }
        NBD_OPT_LIST_META_CONTEXT | NBD_OPT_SET_META_CONTEXT => {
            let name = f.string32("the export name")?;
            let n = f.u32("the number of queries")?;
            if n > MAX_META_QUERIES {
                return Err(f.invalid(format!(
                    "{n} queries; the most accepted is {MAX_META_QUERIES}"
                )));
            }
            let mut queries = Vec::with_capacity(n as usize);
            for _ in 0..n {
                queries.push(f.string32("a query")?);
            }
            f.end()?;
            let m = MetaContextRequest { name, queries };
            Ok(if option == NBD_OPT_SET_META_CONTEXT {
                OptionRequest::SetMetaContext(m)
            } else {
                OptionRequest::ListMetaContext(m)
            })
        }
        other => Ok(OptionRequest::Unknown(other)),
    }
}

// ---------------------------------------------------------------- option replies

/// Appends an option reply: header and `data`.
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends an error reply of type `reply` (an `NBD_REP_ERR_*`) with a
/// message for the user (cut to [`MAX_STRING`] bytes).
pub fn encode_option_error(option: u32, reply: u32, message: &str, out: &mut Vec<u8>) {
    let mut end = message.len().min(MAX_STRING);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    encode_option_reply(option, reply, &message.as_bytes()[..end], out);
}

/// Appends an `NBD_REP_SERVER` reply for one export of a list.
pub fn encode_rep_server(name: &str, description: &str, out: &mut Vec<u8>) {
    let mut data = Vec::with_capacity(4 + name.len() + description.len());
    put_string32(&mut data, name);
    data.extend_from_slice(description.as_bytes());
    encode_option_reply(NBD_OPT_LIST, NBD_REP_SERVER, &data, out);
}

/// What [`encode_rep_info`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// The export's size in bytes.
        size: u64,
        /// Its transmission flags.
        flags: u16,
    },
    /// `NBD_INFO_NAME`.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size.
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload.
        max: u32,
    },
}

/// Appends an `NBD_REP_INFO` reply to `option` (INFO or GO).
pub fn encode_rep_info(option: u32, info: &Info, out: &mut Vec<u8>) {
    let mut data = Vec::new();
    match info {
        Info::Export { size, flags } => {
            data.extend_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
            data.extend_from_slice(&size.to_be_bytes());
            data.extend_from_slice(&flags.to_be_bytes());
        }
        Info::Name(n) => {
            data.extend_from_slice(&NBD_INFO_NAME.to_be_bytes());
            data.extend_from_slice(n.as_bytes());
        }
        Info::Description(d) => {
            data.extend_from_slice(&NBD_INFO_DESCRIPTION.to_be_bytes());
            data.extend_from_slice(d.as_bytes());
        }
        Info::BlockSize {
            min,
            preferred,
            max,
        } => {
            data.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
            data.extend_from_slice(&min.to_be_bytes());
            data.extend_from_slice(&preferred.to_be_bytes());
            data.extend_from_slice(&max.to_be_bytes());
        }
    }
    encode_option_reply(option, NBD_REP_INFO, &data, out);
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124
/// zero bytes unless the client agreed to `NO_ZEROES`.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; EXPORT_NAME_ZEROES]);
    }
}

/// An option reply as a client decodes it (for tests and tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    /// The option answered.
    pub option: u32,
    /// The reply type (`NBD_REP_*`).
    pub reply: u32,
    /// Its data.
    pub data: Vec<u8>,
}

/// Decodes one option reply from the front of `buf`: the reply and the
/// bytes it took, or `None` if `buf` holds less than one whole reply.
pub fn decode_option_reply(buf: &[u8]) -> Result<Option<(OptionReply, usize)>, ProtoError> {
    if buf.len() < OPTION_REPLY_HEADER_BYTES {
        return Ok(None);
    }
    let magic = u64_at(buf, 0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "option reply",
            expected: OPTION_REPLY_MAGIC,
            got: magic,
        });
    }
    let len = u32_at(buf, 16) as usize;
    let total = OPTION_REPLY_HEADER_BYTES.saturating_add(len);
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        OptionReply {
            option: u32_at(buf, 8),
            reply: u32_at(buf, 12),
            data: buf[OPTION_REPLY_HEADER_BYTES..total].to_vec(),
        },
        total,
    )))
}

// ---------------------------------------------------------------- transmission

/// A transmission request header (the payload of a write follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`NBD_CMD_*`).
    pub kind: u16,
    /// The client's cookie ("handle"), echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (of the range; for a write, of the payload).
    pub len: u32,
}

/// Decodes a request header from the front of `buf`.
pub fn decode_request(buf: &[u8]) -> Result<Option<Request>, ProtoError> {
    if buf.len() < REQUEST_BYTES {
        return Ok(None);
    }
    let magic = u32_at(buf, 0);
    if magic == EXTENDED_REQUEST_MAGIC {
        return Err(ProtoError::ExtendedRequest);
    }
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "transmission request",
            expected: REQUEST_MAGIC as u64,
            got: magic as u64,
        });
    }
    Ok(Some(Request {
        flags: u16_at(buf, 4),
        kind: u16_at(buf, 6),
        cookie: u64_at(buf, 8),
        offset: u64_at(buf, 16),
        len: u32_at(buf, 24),
    }))
}

/// Encodes a request header (what a client sends).
pub fn encode_request(r: &Request) -> [u8; REQUEST_BYTES] {
    let mut b = [0u8; REQUEST_BYTES];
    b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.kind.to_be_bytes());
    b[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..].copy_from_slice(&r.len.to_be_bytes());
    b
}

/// A simple reply header (a read's data follows it when `error` is 0).
pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_BYTES] {
    let mut b = [0u8; SIMPLE_REPLY_BYTES];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header: `len` bytes of payload follow.
pub fn encode_chunk_header(
    flags: u16,
    kind: u16,
    cookie: u64,
    len: u32,
) -> [u8; CHUNK_HEADER_BYTES] {
    let mut b = [0u8; CHUNK_HEADER_BYTES];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..].copy_from_slice(&len.to_be_bytes());
    b
}

/// The header of a final `NBD_REPLY_TYPE_OFFSET_DATA` chunk carrying
/// `data_len` bytes read at `offset`: the data follows it.
pub fn encode_offset_data_header(
    cookie: u64,
    offset: u64,
    data_len: u32,
) -> [u8; CHUNK_HEADER_BYTES + 8] {
    let mut b = [0u8; CHUNK_HEADER_BYTES + 8];
    b[..CHUNK_HEADER_BYTES].copy_from_slice(&encode_chunk_header(
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_OFFSET_DATA,
        cookie,
        data_len.saturating_add(8),
    ));
    b[CHUNK_HEADER_BYTES..].copy_from_slice(&offset.to_be_bytes());
    b
}

/// Appends a final `NBD_REPLY_TYPE_ERROR` chunk: `error` and a message
/// (cut to [`MAX_STRING`] bytes).
pub fn encode_error_chunk(cookie: u64, error: u32, message: &str, out: &mut Vec<u8>) {
    let mut end = message.len().min(MAX_STRING);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message.as_bytes()[..end];
    out.extend_from_slice(&encode_chunk_header(
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// A reply header as a client decodes it (for tests and tools).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply.
    Simple {
        /// The error (0 for success).
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured reply chunk.
    Chunk {
        /// Chunk flags (`NBD_REPLY_FLAG_DONE`).
        flags: u16,
        /// Chunk type (`NBD_REPLY_TYPE_*`).
        kind: u16,
        /// The request's cookie.
        cookie: u64,
        /// Bytes of payload that follow.
        len: u32,
    },
}

impl ReplyHeader {
    /// Bytes of the header.
    pub fn header_bytes(&self) -> usize {
        match self {
            ReplyHeader::Simple { .. } => SIMPLE_REPLY_BYTES,
            ReplyHeader::Chunk { .. } => CHUNK_HEADER_BYTES,
        }
    }
}

/// Decodes a simple or structured reply header from the front of `buf`.
pub fn decode_reply_header(buf: &[u8]) -> Result<Option<ReplyHeader>, ProtoError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    match u32_at(buf, 0) {
        SIMPLE_REPLY_MAGIC if buf.len() >= SIMPLE_REPLY_BYTES => Ok(Some(ReplyHeader::Simple {
            error: u32_at(buf, 4),
            cookie: u64_at(buf, 8),
        })),
        STRUCTURED_REPLY_MAGIC if buf.len() >= CHUNK_HEADER_BYTES => Ok(Some(ReplyHeader::Chunk {
            flags: u16_at(buf, 4),
            kind: u16_at(buf, 6),
            cookie: u64_at(buf, 8),
            len: u32_at(buf, 16),
        })),
        SIMPLE_REPLY_MAGIC | STRUCTURED_REPLY_MAGIC => Ok(None),
        other => Err(ProtoError::BadMagic {
            what: "reply",
            expected: SIMPLE_REPLY_MAGIC as u64,
            got: other as u64,
        }),
    }
}

// ---------------------------------------------------------------- request checks

/// Why a request is refused: the NBD error sent back and a reason for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (NBD error {errno})")]
pub struct Refusal {
    /// The NBD error (`NBD_E*`).
    pub errno: u32,
    /// What is wrong.
    pub reason: String,
}

fn refuse(errno: u32, reason: String) -> Refusal {
    Refusal { errno, reason }
}

/// What the checks of a request need to know of the export and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The export's size in bytes.
    pub size: u64,
    /// The export is read-only.
    pub read_only: bool,
    /// Structured replies were negotiated (the `DF` flag is allowed).
    pub structured: bool,
}

/// Checks a request against the export before anything is done with it:
/// known command and flags, alignment to [`MIN_BLOCK_SIZE`], length within
/// [`MAX_PAYLOAD`] and non-zero, range inside the export. A refused write's
/// payload must still be consumed (or the connection closed).
pub fn check_request(r: &Request, limits: &Limits) -> Result<(), Refusal> {
    let name = command_name(r.kind);
    let allowed = match r.kind {
        NBD_CMD_READ => {
            NBD_CMD_FLAG_FUA
                | if limits.structured {
                    NBD_CMD_FLAG_DF
                } else {
                    0
                }
        }
        NBD_CMD_WRITE | NBD_CMD_TRIM | NBD_CMD_FLUSH | NBD_CMD_CACHE => NBD_CMD_FLAG_FUA,
        NBD_CMD_WRITE_ZEROES => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE,
        NBD_CMD_DISC => 0,
        other => {
            return Err(refuse(
                NBD_EINVAL,
                format!("command {other} ({name}) is not supported"),
            ))
        }
    };
    if r.flags & !allowed != 0 {
        return Err(refuse(
            NBD_EINVAL,
            format!(
                "{name} with flags {:#x}: only {allowed:#x} are allowed",
                r.flags
            ),
        ));
    }
    if r.kind == NBD_CMD_DISC {
        return Ok(());
    }
    if r.kind == NBD_CMD_FLUSH {
        if r.offset != 0 || r.len != 0 {
            return Err(refuse(
                NBD_EINVAL,
                format!(
                    "{name} must have offset and length 0 (got {} and {})",
                    r.offset, r.len
                ),
            ));
        }
        return Ok(());
    }
    let writes = matches!(r.kind, NBD_CMD_WRITE | NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES);
    if writes && limits.read_only {
        return Err(refuse(NBD_EPERM, format!("{name} on a read-only export")));
    }
    if r.len == 0 {
        return Err(refuse(NBD_EINVAL, format!("{name} of length 0")));
    }
    // Reads and writes carry their data: bounded by the maximum payload.
    // Trim, write-zeroes and cache carry none and may be longer.
    if matches!(r.kind, NBD_CMD_READ | NBD_CMD_WRITE) && r.len > MAX_PAYLOAD {
        return Err(refuse(
            NBD_EOVERFLOW,
            format!(
                "{name} of {} bytes: the most one request may carry is {MAX_PAYLOAD}",
                r.len
            ),
        ));
    }
    let align = MIN_BLOCK_SIZE as u64;
    if r.offset % align != 0 || r.len as u64 % align != 0 {
        return Err(refuse(
            NBD_EINVAL,
            format!(
                "{name} at offset {} of {} bytes is not aligned to {align} bytes",
                r.offset, r.len
            ),
        ));
    }
    let end = r.offset.checked_add(r.len as u64);
    if end.is_none_or(|e| e > limits.size) {
        let errno = if writes { NBD_ENOSPC } else { NBD_EINVAL };
        return Err(refuse(
            errno,
            format!(
                "{name} at offset {} of {} bytes reaches past the end of the export ({} bytes)",
                r.offset, r.len, limits.size
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_the_spec_bytes() {
        let g = encode_greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
    }

    #[test]
    fn client_flags_must_be_offered() {
        let offered = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;
        assert!(decode_client_flags([0, 0, 0, 3], offered).is_ok_and(|f| f.no_zeroes));
        assert!(decode_client_flags([0, 0, 0, 1], offered).is_ok_and(|f| !f.no_zeroes));
        assert!(matches!(
            decode_client_flags([0, 0, 0, 0], offered),
            Err(ProtoError::NotFixedNewstyle { .. })
        ));
        assert!(matches!(
            decode_client_flags([0, 0, 0, 3], NBD_FLAG_FIXED_NEWSTYLE),
            Err(ProtoError::ClientFlags { .. })
        ));
        assert!(decode_client_flags([0x80, 0, 0, 1], offered).is_err());
    }

    #[test]
    fn go_round_trips_and_truncation_is_invalid() {
        let go = OptionRequest::Go(InfoRequest {
            name: "disk".into(),
            requests: vec![NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME],
        });
        let data = go.encode_data();
        assert_eq!(decode_option(NBD_OPT_GO, &data), Ok(go));
        for cut in 0..data.len() {
            assert!(
                decode_option(NBD_OPT_GO, &data[..cut]).is_err(),
                "cut {cut}"
            );
        }
        assert!(decode_option(NBD_OPT_LIST, b"x").is_err());
        assert_eq!(decode_option(99, b"xyz"), Ok(OptionRequest::Unknown(99)));
    }

    #[test]
    fn checks_refuse_with_the_spec_errors() {
        let limits = Limits {
            size: 1 << 20,
            read_only: false,
            structured: false,
        };
        let req = |kind, offset, len| Request {
            flags: 0,
            kind,
            cookie: 7,
            offset,
            len,
        };
        assert!(check_request(&req(NBD_CMD_READ, 0, 4096), &limits).is_ok());
        let e = |r: Request| check_request(&r, &limits).map_err(|x| x.errno);
        assert_eq!(e(req(NBD_CMD_READ, 1 << 20, 512)), Err(NBD_EINVAL));
        assert_eq!(e(req(NBD_CMD_WRITE, 1 << 20, 512)), Err(NBD_ENOSPC));
        assert_eq!(e(req(NBD_CMD_WRITE, u64::MAX - 511, 512)), Err(NBD_ENOSPC));
        assert_eq!(e(req(NBD_CMD_READ, 1, 512)), Err(NBD_EINVAL));
        assert_eq!(e(req(NBD_CMD_READ, 0, 0)), Err(NBD_EINVAL));
        assert_eq!(
            e(req(NBD_CMD_READ, 0, MAX_PAYLOAD + 512)),
            Err(NBD_EOVERFLOW)
        );
        assert_eq!(e(req(NBD_CMD_BLOCK_STATUS, 0, 512)), Err(NBD_EINVAL));
        assert_eq!(e(req(NBD_CMD_FLUSH, 0, 0)), Ok(()));
        let mut df = req(NBD_CMD_READ, 0, 512);
        df.flags = NBD_CMD_FLAG_DF;
        assert_eq!(e(df), Err(NBD_EINVAL));
        let ro = Limits {
            read_only: true,
            ..limits
        };
        assert_eq!(
            check_request(&req(NBD_CMD_TRIM, 0, 512), &ro).map_err(|x| x.errno),
            Err(NBD_EPERM)
        );
    }
}
