//! Arbitrary bytes as a replication stream, a single frame and a position map: the decoders
//! never panic, agree however the bytes are split, and round-trip what they accept.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| replite_core::stream::fuzz::stream_decode(data));
