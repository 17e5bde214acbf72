//! Bodies of the stream-codec fuzz target, kept in the library so `cargo test` replays the
//! committed corpus through exactly the code the fuzzer runs (`core/tests/stream_fuzz_corpus.rs`).
//! Each function panics only if an invariant of the codec breaks.

use crate::stream::{
    Extensions, FrameError, StreamDecoder, decode_frame, decode_pos_map, encode_frame, encode_pos_map,
};

/// Payload limit for fuzzing: small, so inputs cannot make one run slow.
const FUZZ_PAYLOAD_MAX: u64 = 1 << 20;

/// Decodes arbitrary bytes as a stream, a single frame and a position map; must never panic.
/// The first byte picks the negotiated extensions and the size of the pieces fed in.
pub fn stream_decode(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else { return };
    let ext = Extensions { epoch: control & 1 != 0, ack: control & 2 != 0 };
    let piece = usize::from(control >> 2) + 1;

    // Fed in pieces, the decoder must yield what it yields fed whole, and stay poisoned
    // after an error.
    let whole = run_decoder(ext, &[rest]);
    let pieces: Vec<&[u8]> = rest.chunks(piece).collect();
    assert_eq!(run_decoder(ext, &pieces), whole, "decoding depends on how the bytes were split");

    // A frame decodes to a value that re-encodes to exactly the bytes it came from.
    if let Ok(Some((frame, used))) = decode_frame(rest, 0, ext) {
        let mut again = Vec::new();
        encode_frame(&frame, &mut again);
        assert_eq!(again.as_slice(), &rest[..used], "frame {frame:?} does not re-encode to its bytes");
    }

    // A position map that decodes survives a round trip (entries may arrive in any order;
    // LiteFS sorts when writing but not when reading, so neither do we).
    if let Ok(map) = decode_pos_map(rest) {
        assert_eq!(decode_pos_map(&encode_pos_map(&map)), Ok(map), "position map does not round-trip");
    }
}

fn run_decoder(ext: Extensions, pieces: &[&[u8]]) -> (Vec<crate::stream::StreamEvent>, Option<FrameError>) {
    let mut decoder = StreamDecoder::with_limit(ext, FUZZ_PAYLOAD_MAX);
    let mut events = Vec::new();
    for piece in pieces {
        decoder.feed(piece);
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(decoder.next_event(), Err(FrameError::Poisoned), "decoder continued after {e}");
                    return (events, Some(e));
                }
            }
        }
    }
    (events, None)
}
