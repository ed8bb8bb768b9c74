//! Fuzz the NBD server's pure side: arbitrary bytes are fed, as a client
//! would send them, through the client-flag, option and request decoders
//! and the option negotiation (no sockets). Nothing may panic; decoded
//! options and requests must re-encode to the same bytes; the replies the
//! negotiation writes must decode; an accepted request must lie inside its
//! export, aligned and within the payload limit.
//!
//! The body is `rha_transport::nbd::fuzz_server_input`, so `cargo test -p
//! rha-transport` compiles it and runs it on the seeds in
//! `fuzz/corpus/nbd_server/` (`tests/nbd_props.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rha_transport::nbd::fuzz_server_input(data);
});
