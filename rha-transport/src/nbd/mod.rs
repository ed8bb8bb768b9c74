//! An NBD server front-end for protected volumes: a virtual machine (QEMU)
//! or a Linux host (`nbd-client`) writes to its disk through rha, the way
//! DRBD sits under a filesystem, and every write is journalled before the
//! client sees it acknowledged.
//!
//! ```text
//!  QEMU guest / nbd-client / qemu-img          rha process
//!  ───────────────────────────────────         ───────────────────────────────────────
//!        │ TCP (or TLS after STARTTLS)          server.rs: accept loop, one task per client
//!        ├── handshake: fixed newstyle ───────► negotiate.rs (pure): LIST, INFO, GO, EXPORT_NAME,
//!        │                                       STRUCTURED_REPLY, META_CONTEXT (none), STARTTLS
//!        ├── READ / WRITE / FLUSH / TRIM ─────► proto.rs (pure): decode + check_request
//!        │   WRITE_ZEROES / CACHE / DISC                │
//!        │                                              ▼ blocking pool, several in flight
//!        │                                      NbdExport.volume = TrackedVolume
//!        │                                        write_at:     journal append ─► disk
//!        │                                        write_zeroes: journal zero   ─► disk
//!        │                                        flush:        journal sync   ─► disk sync
//!        ◄── reply (simple or structured) ──── only after the volume call returned
//! ```
//!
//! - [`proto`]: every constant of the protocol, and encoders/decoders with
//!   no I/O (fuzzed by `fuzz/fuzz_targets/nbd_server.rs`).
//! - [`negotiate`]: the option haggling as a pure state machine.
//! - [`NbdServer`]: the tokio server; [`NbdExport`] names a volume.
//!
//! # What the server promises
//! - A write, trim or write-zeroes is acknowledged only after the
//!   [`Volume`](rha_core::volume::Volume) call returned; for a
//!   `TrackedVolume` that is after the journal append, so an acknowledged
//!   write is always replicated. `FUA` flushes (journal, then disk) before
//!   the reply; `FLUSH` makes every completed write durable.
//! - TRIM is a write of zeros through the journal: reads return zeros
//!   afterwards, on the master and on the replica alike.
//! - Requests must be aligned to 512 bytes (announced as the minimum block
//!   size) and carry at most 32 MiB; a request out of range, unaligned,
//!   empty or too large gets an NBD error (`EINVAL`, `ENOSPC` for writes
//!   past the end, `EOVERFLOW`), and a refused write's payload is read and
//!   discarded in 64 KiB pieces. A bad magic number closes the connection
//!   with the reason in the log. Nothing a client sends can panic the server.
//! - Memory per connection is bounded by [`MAX_IN_FLIGHT_BYTES`] of payload.
//! - `NBD_FLAG_CAN_MULTI_CONN` is set: all connections share one volume
//!   object, and a flush on one covers the writes of all.
//! - With TLS configured the server requires it (`NBD_OPT_STARTTLS` before
//!   anything else, mutual TLS 1.3 with the certificates `rha cert` makes).

mod fuzz;
pub mod negotiate;
pub mod proto;
mod server;

pub use fuzz::{fuzz_server_input, FuzzOutcome};

pub use negotiate::{ExportInfo, ExportLookup, Negotiation, Next, TlsMode};
pub use server::{
    check_export_name, NbdError, NbdExport, NbdHandle, NbdServer, NbdServerBuilder,
    MAX_IN_FLIGHT_BYTES,
};

/// The IANA port of NBD.
pub const DEFAULT_NBD_PORT: u16 = 10809;

/// The URL a QEMU client opens for `export` at `addr` (`nbd://host:port/export`).
pub fn nbd_url(addr: &std::net::SocketAddr, export: &str) -> String {
    format!("nbd://{addr}/{export}")
}
