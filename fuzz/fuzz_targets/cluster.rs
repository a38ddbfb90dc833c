#![no_main]
//! See `majordodo_fuzz_checks::cluster` for the decoders and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| majordodo_fuzz_checks::cluster(data));
