#![no_main]
//! See `majordodo_fuzz_checks::http_request` for the decoder and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| majordodo_fuzz_checks::http_request(data));
