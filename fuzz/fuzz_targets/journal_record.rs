//! Fuzz the journal record decoder: arbitrary bytes must never panic, and a
//! record that decodes must re-encode to exactly the bytes it came from.
//!
//! The same body runs as a unit test (`journal::record::fuzz_one`) so it is
//! known to compile and to hold for the seeds in `fuzz/corpus/journal_record/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rha_core::journal::{decode_record, encode_record};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((record, used))) = decode_record(data) {
        let mut out = Vec::new();
        encode_record(&record, &mut out);
        assert_eq!(&out[..], &data[..used]);
    }
});
