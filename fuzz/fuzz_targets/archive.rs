#![no_main]
//! See `majordodo_fuzz_checks::archive` for the decoder and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| majordodo_fuzz_checks::archive(data));
