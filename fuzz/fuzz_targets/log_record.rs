#![no_main]
//! See `majordodo_fuzz_checks::log_record` for the decoder and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| majordodo_fuzz_checks::log_record(data));
