//! Fuzz target: parse arbitrary bytes as a fixed-VHD footer. Parsing must
//! never panic, and a footer that parses must re-encode to the same bytes.
//!
//! The same body runs as a unit test in `rha-core/src/volume/vhd/footer.rs`
//! (`fuzz_target_body`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rha_core::volume::vhd::Footer;

fuzz_target!(|data: &[u8]| {
    if let Ok(footer) = Footer::parse(data) {
        assert_eq!(
            &footer.to_bytes()[..],
            data,
            "a parsed footer must re-encode to the bytes it came from"
        );
    }
});
