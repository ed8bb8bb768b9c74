//! The wire protocol: frames and messages (see `docs/protocol.md`).
//!
//! The codec is pure (bytes in, bytes out, no I/O), in the manner of
//! rustls: [`Codec::encode`] appends a frame to a buffer, [`Codec::decode`]
//! takes one off the front of a buffer. [`read_message`] and
//! [`write_message`] are thin async wrappers over a socket.

mod body;
mod codec;
mod compress;
mod error;
mod fuzz;
mod io;
pub mod message;
mod sniff;

pub(crate) use body::{compression_from_id, compression_id};
pub use body::{error_code_is_known, HELLO_MAGIC};
pub use codec::{frame_len, Codec, DEFAULT_MAX_FRAME, FLAG_COMPRESSED, FRAME_OVERHEAD};
pub use compress::DEFAULT_ZSTD_LEVEL;
pub use error::WireError;
pub use fuzz::fuzz_frame;
pub use io::{read_message, write_message};
pub use message::*;
pub use sniff::{looks_like_rha, sniff_foreign};
