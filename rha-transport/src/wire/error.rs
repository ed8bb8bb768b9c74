//! What can go wrong while framing, checking, compressing or parsing messages.

/// An error of the wire codec.
///
/// The variants are grouped by who is at fault: the peer (it sent bytes that
/// are not a valid frame or message), this side (it tried to send something
/// the protocol cannot carry), or the connection itself (I/O). Every error
/// of the first group means the byte stream can no longer be trusted: the
/// connection must be closed and nothing in the offending frame applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    // ── the peer sent something wrong ──────────────────────────────────
    /// A frame announces a payload larger than this side accepts.
    #[error(
        "the peer sent a frame of {len} payload bytes, above the {max}-byte limit \
         (a corrupt stream, a peer with a larger limit, or not an rha peer at all)"
    )]
    Oversized {
        /// Payload bytes announced (for a compressed frame: the uncompressed size).
        len: u64,
        /// The limit ([`crate::wire::Codec::max_frame`]).
        max: usize,
    },
    /// The frame's CRC32 does not match its contents.
    #[error(
        "frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): \
         the data was corrupted in transit; the connection is closed and will be re-established"
    )]
    Checksum {
        /// The CRC the frame carries.
        stored: u32,
        /// The CRC of the bytes received.
        computed: u32,
    },
    /// The frame's message type is not one this build knows.
    #[error(
        "unknown message type {0} (a newer peer that did not negotiate this \
         protocol version correctly, or a corrupt stream)"
    )]
    UnknownType(u8),
    /// The frame's flags byte has bits set that this build does not know, or
    /// marks as compressed a message that is never compressed.
    #[error("invalid frame flags {flags:#04x} on a {message} message")]
    BadFlags {
        /// The flags byte.
        flags: u8,
        /// The message type's name.
        message: &'static str,
    },
    /// A frame passed its checksum but its payload is not a valid message.
    #[error("malformed {message} message from the peer: {detail}")]
    Malformed {
        /// The message type's name (or `"frame"` for the frame header).
        message: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A compressed payload could not be decompressed.
    #[error("cannot decompress a frame from the peer: {0}")]
    Decompress(String),
    /// The peer closed the connection in the middle of a frame.
    #[error(
        "the peer closed the connection in the middle of a frame \
         (a crash, a network cut, or a peer that gave up)"
    )]
    UnexpectedEof,

    // ── this side tried to send something the protocol cannot carry ────
    /// A message to send is larger than the frame limit.
    #[error(
        "cannot send a {message} message of {len} bytes: the frame limit is {max} bytes \
         (a bug in the sender: it must split the data into smaller messages)"
    )]
    TooLarge {
        /// The message type's name.
        message: &'static str,
        /// The message's encoded size in bytes (uncompressed).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The compressor failed.
    #[error("cannot compress a frame: {0}")]
    Compress(String),

    // ── the connection ─────────────────────────────────────────────────
    /// Reading or writing the connection failed.
    #[error("connection I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// Whether the peer is at fault (it sent bytes that are not a valid
    /// frame or message), as opposed to this side or the connection.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            WireError::Oversized { .. }
                | WireError::Checksum { .. }
                | WireError::UnknownType(_)
                | WireError::BadFlags { .. }
                | WireError::Malformed { .. }
                | WireError::Decompress(_)
                | WireError::UnexpectedEof
        )
    }

    pub(crate) fn malformed(message: &'static str, detail: impl Into<String>) -> Self {
        WireError::Malformed {
            message,
            detail: detail.into(),
        }
    }
}
