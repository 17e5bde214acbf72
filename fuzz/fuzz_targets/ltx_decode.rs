//! Arbitrary bytes as an LTX file: the decoder, verifier and apply must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replite_core::fuzzing::ltx_decode(data));
