//! A small blocking NBD client: the fixed newstyle handshake, structured
//! replies, one `qemu:dirty-bitmap:` metadata context, then reads and
//! block-status queries, one request at a time.
//!
//! The synchronisation algorithms of `rha-core` are synchronous and run on a
//! plain thread, so this client is too (std sockets, no runtime). Every
//! decoding step is a pure function of [`super::proto`]; this file only moves
//! bytes and keeps the request/reply state.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::proto::{self, ChunkHeader, Info, Malformed, ReadChunk, ReplyKind, Request};
use super::NbdError;

/// The port an `nbd://` address without one uses (IANA's NBD port).
pub const DEFAULT_PORT: u16 = 10809;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one read from or write to the server may block.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Most option replies accepted for one option (each is bounded in size).
const MAX_OPTION_REPLIES: usize = 1024;
/// Most data and hole chunks accepted in the reply to one read.
const MAX_READ_CHUNKS: usize = 4096;

/// Where an NBD export is: an NBD URI
/// (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md>).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddress {
    /// `nbd://HOST[:PORT]/[EXPORT]`.
    Tcp {
        /// Host name or address (IPv6 without its brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// Export name (empty: the server's default export, as qemu-nbd's).
        export: String,
    },
    /// `nbd+unix:///[EXPORT]?socket=PATH`.
    Unix {
        /// The server's unix socket.
        socket: PathBuf,
        /// Export name.
        export: String,
    },
}

impl NbdAddress {
    /// Parses `nbd://HOST[:PORT]/[EXPORT]` or `nbd+unix:///[EXPORT]?socket=PATH`
    /// (percent-escapes decoded in the export name and the socket path).
    pub fn parse(uri: &str) -> Result<Self, NbdError> {
        let bad = |reason: &str| NbdError::BadAddress {
            address: uri.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = uri.strip_prefix("nbd+unix://") {
            let rest = rest.strip_prefix('/').ok_or_else(|| {
                bad("an nbd+unix address has no host: nbd+unix:///EXPORT?socket=PATH")
            })?;
            let (export, query) = rest
                .split_once('?')
                .ok_or_else(|| bad("an nbd+unix address needs ?socket=PATH"))?;
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(|| bad("an nbd+unix address needs ?socket=PATH"))?;
            let socket =
                percent_decode(socket).ok_or_else(|| bad("a bad %-escape in the socket path"))?;
            if socket.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            let export =
                percent_decode(export).ok_or_else(|| bad("a bad %-escape in the export name"))?;
            return Ok(NbdAddress::Unix {
                socket: PathBuf::from(socket),
                export,
            });
        }
        let rest = uri.strip_prefix("nbd://").ok_or_else(|| {
            bad("not an NBD address: use nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH")
        })?;
        let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address without its closing ]"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad("the port is not a number from 0 to 65535"))?,
            None => DEFAULT_PORT,
        };
        let export =
            percent_decode(export).ok_or_else(|| bad("a bad %-escape in the export name"))?;
        Ok(NbdAddress::Tcp {
            host: host.to_string(),
            port,
            export,
        })
    }

    /// The export's name.
    pub fn export(&self) -> &str {
        match self {
            NbdAddress::Tcp { export, .. } | NbdAddress::Unix { export, .. } => export,
        }
    }
}

impl std::fmt::Display for NbdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdAddress::Tcp { host, port, export } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{export}")
            }
            NbdAddress::Tcp { host, port, export } => write!(f, "nbd://{host}:{port}/{export}"),
            NbdAddress::Unix { socket, export } => {
                write!(f, "nbd+unix:///{export}?socket={}", socket.display())
            }
        }
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The socket to the server.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(address: &NbdAddress) -> std::io::Result<Stream> {
        let stream = match address {
            NbdAddress::Tcp { host, port, .. } => {
                let mut last = None;
                let mut found = None;
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match found {
                    Some(s) => s,
                    None => {
                        return Err(last.unwrap_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "the host name resolves to no address",
                            )
                        }))
                    }
                };
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Stream::Tcp(s)
            }
            NbdAddress::Unix { socket, .. } => {
                let s = UnixStream::connect(socket)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Stream::Unix(s)
            }
        };
        Ok(stream)
    }

    fn shutdown(&self) {
        // Best effort: the server may be gone already.
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// The next reply unit from the server.
enum Reply {
    /// A structured chunk; its payload is in `NbdClient::payload`.
    Chunk(ChunkHeader),
    /// A simple reply carrying an error number (the whole reply).
    SimpleError(u32),
}

/// A connection to one NBD export with one dirty bitmap selected, in the
/// transmission phase.
///
/// Requests are sent one at a time and each reply is read completely before
/// the next request; memory is bounded by one read's data ([`proto::MAX_READ`])
/// plus one chunk ([`proto::MAX_CHUNK`]). An error in the middle of a reply
/// leaves the stream out of step: the client then refuses further requests.
#[derive(Debug)]
pub struct NbdClient {
    stream: Stream,
    address: NbdAddress,
    bitmap: String,
    size: u64,
    transmission_flags: u16,
    context: u32,
    max_read: u32,
    cookie: u64,
    payload: Vec<u8>,
    broken: Cell<bool>,
}

impl NbdClient {
    /// Connects to `address`, negotiates structured replies and the metadata
    /// context `qemu:dirty-bitmap:BITMAP`, and selects the export.
    ///
    /// Fails with [`NbdError::NoBitmap`] when the server does not offer the
    /// bitmap (qemu-nbd started without `-B BITMAP`).
    pub fn connect(address: &NbdAddress, bitmap: &str) -> Result<Self, NbdError> {
        let export = address.export();
        if export.len() > proto::MAX_STRING || bitmap.len() > proto::MAX_STRING - 32 {
            return Err(NbdError::BadAddress {
                address: address.to_string(),
                reason: "the export or bitmap name is longer than NBD allows (4096 bytes)".into(),
            });
        }
        let stream = Stream::connect(address).map_err(|source| NbdError::Connect {
            address: address.to_string(),
            source,
        })?;
        let mut client = NbdClient {
            stream,
            address: address.clone(),
            bitmap: bitmap.to_string(),
            size: 0,
            transmission_flags: 0,
            context: 0,
            max_read: proto::MAX_READ,
            cookie: 0,
            payload: Vec::new(),
            broken: Cell::new(false),
        };
        client.handshake()?;
        Ok(client)
    }

    fn handshake(&mut self) -> Result<(), NbdError> {
        let mut greeting = [0u8; proto::GREETING_LEN];
        self.read_exact("read the server's greeting", &mut greeting)?;
        let flags = proto::parse_greeting(&greeting).map_err(|e| self.malformed(e))?;
        let mut client_flags = proto::NBD_FLAG_C_FIXED_NEWSTYLE;
        if flags & proto::NBD_FLAG_NO_ZEROES != 0 {
            client_flags |= proto::NBD_FLAG_C_NO_ZEROES;
        }
        self.write_all("send the client flags", &client_flags.to_be_bytes())?;

        // Structured replies: block status has no simple form.
        self.option(proto::NBD_OPT_STRUCTURED_REPLY, &[], |_, _, _| Ok(()))?;

        let export = self.address.export().to_string();
        let wanted = format!("{}{}", proto::QEMU_DIRTY_BITMAP_PREFIX, self.bitmap);
        let data = proto::encode_set_meta_context(&export, &[&wanted]);
        let mut context = None;
        self.option(
            proto::NBD_OPT_SET_META_CONTEXT,
            &data,
            |c, reply, payload| {
                if reply == proto::NBD_REP_META_CONTEXT {
                    let (id, name) =
                        proto::parse_meta_context(payload).map_err(|e| c.malformed(e))?;
                    if name == wanted {
                        context = Some(id);
                    }
                }
                Ok(())
            },
        )?;
        let context = context.ok_or_else(|| NbdError::NoBitmap {
            address: self.address.to_string(),
            bitmap: self.bitmap.clone(),
        })?;
        self.context = context;

        let data = proto::encode_go(&export, &[proto::NBD_INFO_BLOCK_SIZE]);
        let (mut size, mut tflags, mut max) = (None, 0, None);
        self.option(proto::NBD_OPT_GO, &data, |c, reply, payload| {
            if reply == proto::NBD_REP_INFO {
                match proto::parse_info(payload).map_err(|e| c.malformed(e))? {
                    Info::Export { size: s, flags } => {
                        size = Some(s);
                        tflags = flags;
                    }
                    Info::BlockSize { max: m, .. } => max = Some(m),
                    Info::Other(_) => {}
                }
            }
            Ok(())
        })?;
        self.size = size.ok_or_else(|| {
            self.malformed(Malformed {
                what: "NBD_OPT_GO reply",
                detail: "the server did not send the export's size (NBD_INFO_EXPORT)".into(),
            })
        })?;
        self.transmission_flags = tflags;
        if let Some(m) = max {
            // A server limit below a sector would make reads impossible; below ours it wins.
            self.max_read = m.clamp(512, proto::MAX_READ);
        }
        Ok(())
    }

    /// Sends an option and reads its replies up to `NBD_REP_ACK`, handing
    /// every other non-error reply to `each`.
    fn option(
        &mut self,
        option: u32,
        data: &[u8],
        mut each: impl FnMut(&Self, u32, &[u8]) -> Result<(), NbdError>,
    ) -> Result<(), NbdError> {
        let request = proto::encode_option(option, data);
        self.write_all(proto::option_name(option), &request)?;
        for _ in 0..MAX_OPTION_REPLIES {
            let mut header = [0u8; proto::OPTION_REPLY_HEADER_LEN];
            self.read_exact("read an option reply", &mut header)?;
            let h =
                proto::OptionReplyHeader::parse(&header, option).map_err(|e| self.malformed(e))?;
            let mut payload = vec![0u8; h.len as usize];
            self.read_exact("read an option reply", &mut payload)?;
            if h.reply & proto::NBD_REP_FLAG_ERROR != 0 {
                return Err(NbdError::Refused {
                    address: self.address.to_string(),
                    option: proto::option_name(option),
                    reason: proto::option_error_name(h.reply),
                    message: proto::error_message(&payload),
                });
            }
            if h.reply == proto::NBD_REP_ACK {
                return Ok(());
            }
            each(self, h.reply, &payload)?;
        }
        Err(self.malformed(Malformed {
            what: "option replies",
            detail: format!(
                "more than {MAX_OPTION_REPLIES} replies to {}",
                proto::option_name(option)
            ),
        }))
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when the server says the export is read-only.
    pub fn read_only(&self) -> bool {
        self.transmission_flags & proto::NBD_FLAG_READ_ONLY != 0
    }

    /// Where the export is.
    pub fn address(&self) -> &NbdAddress {
        &self.address
    }

    /// The dirty bitmap whose context was selected.
    pub fn bitmap(&self) -> &str {
        &self.bitmap
    }

    /// Fills `buf` with the export's bytes at `offset`, in requests of at most
    /// [`proto::MAX_READ`] bytes (or the server's maximum block size).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.check_range(offset, buf.len() as u64)?;
        let step = self.max_read as usize;
        for (i, piece) in buf.chunks_mut(step).enumerate() {
            self.read_piece(offset + (i * step) as u64, piece)?;
        }
        Ok(())
    }

    fn read_piece(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let len = buf.len() as u32;
        let cookie = self.send(proto::NBD_CMD_READ, offset, len)?;
        let request = offset..offset + u64::from(len);
        let mut covered: Vec<Range<u64>> = Vec::new();
        let mut failed = None;
        loop {
            let h = match self.next_reply(cookie)? {
                Reply::Chunk(h) => h,
                Reply::SimpleError(errno) => {
                    failed = Some(proto::ServerError::simple(errno));
                    break;
                }
            };
            let chunk = proto::parse_read_chunk(h.kind, &self.payload, request.clone());
            let range = match chunk {
                Ok(ReadChunk::Data { offset: at, data }) => {
                    let start = (at - offset) as usize;
                    buf[start..start + data.len()].copy_from_slice(data);
                    Some(at..at + data.len() as u64)
                }
                Ok(ReadChunk::Hole { offset: at, len: n }) => {
                    let start = (at - offset) as usize;
                    buf[start..start + n as usize].fill(0);
                    Some(at..at + u64::from(n))
                }
                Ok(ReadChunk::Error(e)) => {
                    failed.get_or_insert(e);
                    None
                }
                Ok(ReadChunk::None) => None,
                Err(e) => return Err(self.malformed(e)),
            };
            if let Some(r) = range {
                if covered.iter().any(|c| c.start < r.end && r.start < c.end) {
                    return Err(self.malformed(Malformed {
                        what: "read reply",
                        detail: format!("chunks overlap at {}..{}", r.start, r.end),
                    }));
                }
                if covered.len() >= MAX_READ_CHUNKS {
                    return Err(self.malformed(Malformed {
                        what: "read reply",
                        detail: format!("more than {MAX_READ_CHUNKS} chunks for one read"),
                    }));
                }
                covered.push(r);
            }
            if h.done() {
                break;
            }
        }
        if let Some(error) = failed {
            return Err(NbdError::Server {
                address: self.address.to_string(),
                command: "NBD_CMD_READ",
                offset,
                len: u64::from(len),
                error,
            });
        }
        let got: u64 = covered.iter().map(|r| r.end - r.start).sum();
        if got != u64::from(len) {
            return Err(self.malformed(Malformed {
                what: "read reply",
                detail: format!("covers {got} of the {len} bytes asked for at offset {offset}"),
            }));
        }
        Ok(())
    }

    /// The status of the selected dirty bitmap over `len` bytes at `offset`:
    /// extents as (byte range, flags), in order, covering at least the
    /// start of the range (a server may answer for less than asked) and
    /// never more than asked.
    pub fn block_status(
        &mut self,
        offset: u64,
        len: u32,
    ) -> Result<Vec<(Range<u64>, u32)>, NbdError> {
        self.check_range(offset, u64::from(len))?;
        let cookie = self.send(proto::NBD_CMD_BLOCK_STATUS, offset, len)?;
        let end = offset + u64::from(len);
        let mut extents: Option<Vec<(Range<u64>, u32)>> = None;
        let mut failed = None;
        loop {
            let h = match self.next_reply(cookie)? {
                Reply::Chunk(h) => h,
                Reply::SimpleError(errno) => {
                    failed = Some(proto::ServerError::simple(errno));
                    break;
                }
            };
            match h.kind {
                proto::NBD_REPLY_TYPE_BLOCK_STATUS => {
                    if extents.is_some() {
                        return Err(self.malformed(Malformed {
                            what: "block status reply",
                            detail: "two status chunks for the one context selected".into(),
                        }));
                    }
                    let parsed = proto::parse_block_status(&self.payload, self.context)
                        .map_err(|e| self.malformed(e))?;
                    let mut at = offset;
                    let mut out = Vec::with_capacity(parsed.len());
                    for e in parsed {
                        if at >= end {
                            return Err(self.malformed(Malformed {
                                what: "block status reply",
                                detail: format!("extents beyond the {offset}..{end} asked for"),
                            }));
                        }
                        // The last extent may reach past the request: it is clipped.
                        let stop = (at + u64::from(e.len)).min(end);
                        out.push((at..stop, e.flags));
                        at = stop;
                    }
                    extents = Some(out);
                }
                proto::NBD_REPLY_TYPE_NONE if h.len == 0 => {}
                k if k & proto::NBD_REPLY_TYPE_ERROR_BIT != 0 => {
                    let e = proto::parse_error_chunk(k, &self.payload)
                        .map_err(|e| self.malformed(e))?;
                    failed.get_or_insert(e);
                }
                k => {
                    return Err(self.malformed(Malformed {
                        what: "block status reply",
                        detail: format!(
                            "chunk type {k}, which does not answer a block status request"
                        ),
                    }))
                }
            }
            if h.done() {
                break;
            }
        }
        if let Some(error) = failed {
            return Err(NbdError::Server {
                address: self.address.to_string(),
                command: "NBD_CMD_BLOCK_STATUS",
                offset,
                len: u64::from(len),
                error,
            });
        }
        extents.ok_or_else(|| {
            self.malformed(Malformed {
                what: "block status reply",
                detail: "ended without a status chunk".into(),
            })
        })
    }

    /// Walks the whole export's bitmap in requests of at most
    /// [`proto::MAX_STATUS_LEN`] bytes and calls `dirty` with each dirty
    /// extent, in order.
    pub fn walk_dirty(&mut self, mut dirty: impl FnMut(Range<u64>)) -> Result<(), NbdError> {
        let mut at = 0;
        while at < self.size {
            let len = (self.size - at).min(u64::from(proto::MAX_STATUS_LEN)) as u32;
            let extents = self.block_status(at, len)?;
            for (range, flags) in extents {
                at = range.end;
                if flags & proto::NBD_STATE_DIRTY != 0 {
                    dirty(range);
                }
            }
        }
        Ok(())
    }

    /// Ends the session politely (`NBD_CMD_DISC`) and closes the socket;
    /// later requests fail with [`NbdError::Broken`].
    pub fn disconnect(&mut self) {
        if !self.broken.get() {
            let _ = self.send(proto::NBD_CMD_DISC, 0, 0);
            self.broken.set(true);
        }
        self.stream.shutdown();
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(NbdError::OutOfRange {
                address: self.address.to_string(),
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn send(&mut self, command: u16, offset: u64, len: u32) -> Result<u64, NbdError> {
        if self.broken.get() {
            return Err(NbdError::Broken {
                address: self.address.to_string(),
            });
        }
        self.cookie = self.cookie.wrapping_add(1);
        let request = Request {
            flags: 0,
            command,
            cookie: self.cookie,
            offset,
            len,
        };
        self.write_all("send a request", &request.encode())?;
        Ok(self.cookie)
    }

    /// Reads the next reply unit for `cookie`; a chunk's payload lands in `self.payload`.
    fn next_reply(&mut self, cookie: u64) -> Result<Reply, NbdError> {
        let mut magic = [0u8; 4];
        self.read_exact("read a reply", &mut magic)?;
        match proto::parse_reply_magic(magic).map_err(|e| self.malformed(e))? {
            ReplyKind::Simple => {
                let mut rest = [0u8; proto::SIMPLE_REPLY_LEN];
                rest[..4].copy_from_slice(&magic);
                self.read_exact("read a reply", &mut rest[4..])?;
                let (errno, got) =
                    proto::parse_simple_reply(&rest).map_err(|e| self.malformed(e))?;
                self.check_cookie(cookie, got)?;
                if errno == 0 {
                    return Err(self.malformed(Malformed {
                        what: "reply",
                        detail: "a simple reply without error although structured replies were negotiated".into(),
                    }));
                }
                Ok(Reply::SimpleError(errno))
            }
            ReplyKind::Structured => {
                let mut header = [0u8; proto::CHUNK_HEADER_LEN];
                header[..4].copy_from_slice(&magic);
                self.read_exact("read a reply", &mut header[4..])?;
                let h = ChunkHeader::parse(&header).map_err(|e| self.malformed(e))?;
                self.check_cookie(cookie, h.cookie)?;
                let mut payload = std::mem::take(&mut self.payload);
                payload.resize(h.len as usize, 0);
                let read = self.read_exact("read a reply", &mut payload);
                self.payload = payload;
                read?;
                Ok(Reply::Chunk(h))
            }
        }
    }

    fn check_cookie(&mut self, want: u64, got: u64) -> Result<(), NbdError> {
        if want == got {
            Ok(())
        } else {
            Err(self.malformed(Malformed {
                what: "reply",
                detail: format!("cookie {got} answers no request (expected {want})"),
            }))
        }
    }

    /// The error for a protocol violation; the stream is out of step from now on.
    fn malformed(&self, source: Malformed) -> NbdError {
        self.broken.set(true);
        NbdError::Malformed {
            address: self.address.to_string(),
            source,
        }
    }

    fn read_exact(&mut self, op: &'static str, buf: &mut [u8]) -> Result<(), NbdError> {
        self.stream.read_exact(buf).map_err(|source| {
            self.broken.set(true);
            NbdError::Io {
                address: self.address.to_string(),
                op,
                source,
            }
        })
    }

    fn write_all(&mut self, op: &'static str, buf: &[u8]) -> Result<(), NbdError> {
        let r = self
            .stream
            .write_all(buf)
            .and_then(|()| self.stream.flush());
        r.map_err(|source| {
            self.broken.set(true);
            NbdError::Io {
                address: self.address.to_string(),
                op,
                source,
            }
        })
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        self.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            NbdAddress::parse("nbd://127.0.0.1:10811/disk%20a").unwrap(),
            NbdAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 10811,
                export: "disk a".into()
            }
        );
        assert_eq!(
            NbdAddress::parse("nbd://host").unwrap(),
            NbdAddress::Tcp {
                host: "host".into(),
                port: DEFAULT_PORT,
                export: String::new()
            }
        );
        let v6 = NbdAddress::parse("nbd://[::1]:99/x").unwrap();
        assert_eq!(v6.to_string(), "nbd://[::1]:99/x");
        assert_eq!(
            NbdAddress::parse("nbd+unix:///e?socket=/tmp/s%2Fq").unwrap(),
            NbdAddress::Unix {
                socket: "/tmp/s/q".into(),
                export: "e".into()
            }
        );
        for bad in [
            "http://x/",
            "nbd://:1/",
            "nbd://h:99999/",
            "nbd://[::1/",
            "nbd+unix:///e",
            "nbd+unix://host/e?socket=/s",
            "nbd://h/%zz",
        ] {
            assert!(
                matches!(NbdAddress::parse(bad), Err(NbdError::BadAddress { .. })),
                "{bad}"
            );
        }
    }
}
