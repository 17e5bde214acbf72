#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replite_core::stream::fuzz::stream_decode(data));
