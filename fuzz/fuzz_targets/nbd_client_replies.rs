//! Fuzz the NBD client's reply decoders (`rha_transport::qemu_bitmap::proto`):
//! arbitrary bytes are decoded as a greeting, option replies, structured
//! chunks (read data, holes, block status, errors) and simple replies.
//! Decoding must never panic, read chunks must lie inside their request, and
//! what decodes must re-encode to the same bytes where an encoder exists.
//!
//! The body is `rha_transport::qemu_bitmap::proto::fuzz_replies`, so `cargo
//! test -p rha-transport --test qemu_bitmap` compiles it and runs it on the
//! seeds in `fuzz/corpus/nbd_client_replies/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rha_transport::qemu_bitmap::proto::fuzz_replies(data);
});
