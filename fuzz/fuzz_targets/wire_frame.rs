//! Fuzz the wire frame decoder: arbitrary bytes are decoded as a stream of
//! frames (the `Codec` decode loop), and every message that comes out must
//! re-encode, with and without compression, to a frame that decodes to the
//! same message. Decoding must never panic, never consume a refused or
//! incomplete frame, and give the same result byte by byte as all at once.
//! The input is also decoded with its length field and CRC repaired, so
//! that mutations reach the message parser past the checksum.
//!
//! The body is `rha_transport::wire::fuzz_frame`, so `cargo test -p
//! rha-transport` compiles it and runs it on the seeds in
//! `fuzz/corpus/wire_frame/` (`tests/wire_props.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rha_transport::wire::fuzz_frame(data);
});
