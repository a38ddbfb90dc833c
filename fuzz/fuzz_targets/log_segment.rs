#![no_main]
//! See `majordodo_fuzz_checks::log_segment` for the decoder and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| majordodo_fuzz_checks::log_segment(data));
