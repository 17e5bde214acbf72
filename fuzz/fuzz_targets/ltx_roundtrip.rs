//! Arbitrary page sets through the encoder and back through the decoder, unchanged.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replite_core::fuzzing::ltx_roundtrip(data));
