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

    // A spooling decoder yields the same payloads, some of them in pieces, and the same
    // frames; it fails where the buffering one does (it only takes payloads past the
    // buffering limit, which it accepts).
    let spooled = run_spooling_decoder(ext, &pieces);
    if whole.1.is_none() {
        assert_eq!(spooled, whole, "spooling changed what the stream decodes to");
    }

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

/// Runs a decoder that passes payloads over 64 bytes on in pieces, and joins the pieces
/// back, so the result compares with [`run_decoder`]'s.
fn run_spooling_decoder(ext: Extensions, pieces: &[&[u8]]) -> (Vec<crate::stream::StreamEvent>, Option<FrameError>) {
    use crate::stream::StreamEvent;
    let mut decoder = StreamDecoder::spooling(ext, 64);
    let mut events = Vec::new();
    let mut open: Option<(crate::stream::DbName, Vec<u8>)> = None;
    for piece in pieces {
        decoder.feed(piece);
        loop {
            match decoder.next_event() {
                Ok(Some(StreamEvent::LtxBegin { name, first })) => {
                    assert!(first.len() > 64, "a payload within the limit was passed on in pieces");
                    assert!(open.replace((name, first)).is_none(), "a payload began inside another");
                }
                Ok(Some(StreamEvent::LtxData(data))) => open.as_mut().expect("data inside a payload").1.extend(data),
                Ok(Some(StreamEvent::LtxEnd { len })) => {
                    let (name, payload) = open.take().expect("an end after a beginning");
                    assert_eq!(len, payload.len() as u64);
                    events.push(StreamEvent::Ltx { name, payload });
                }
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
