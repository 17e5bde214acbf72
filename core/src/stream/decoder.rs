//! An incremental decoder for the primary-to-replica direction (and, with acknowledgements
//! negotiated, the replica-to-primary one): feed it bytes as they arrive, take out frames
//! and LTX payloads. A payload up to the decoder's inline limit comes out whole; a bigger one
//! (a snapshot, a huge transaction) comes out as it arrives, as begin / data / end events,
//! so that the caller can spool it to disk with memory bounded independently of its size.

use crate::stream::chunk::{Chunk, decode_chunk};
use crate::stream::error::FrameError;
use crate::stream::frame::{Extensions, Frame, decode_frame};
use crate::stream::name::DbName;

/// Largest LTX payload the decoder will buffer: 1 GiB. A spooling decoder
/// ([`StreamDecoder::spooling`], what a replica uses) passes bigger payloads on piece by
/// piece instead; for a buffering one the limit keeps a misbehaving peer from exhausting
/// memory. The decoder never allocates ahead of received bytes.
pub const MAX_LTX_PAYLOAD_BYTES: u64 = 1 << 30;

/// Largest LTX payload a spooling decoder passes on piece by piece: 1 TiB. It bounds disk
/// rather than memory; SQLite's own limit is far higher, but no database replite serves
/// comes near this, and a peer that sends without end is cut off rather than filling the disk.
pub const MAX_SPOOLED_LTX_BYTES: u64 = 1 << 40;

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A frame other than LTX.
    Frame(Frame),
    /// A complete LTX payload (the bytes of one LTX file) for a database. Not yet verified.
    Ltx {
        /// Database name from the LTX frame.
        name: DbName,
        /// The file's bytes.
        payload: Vec<u8>,
    },
    /// An LTX payload grew past the inline limit: its bytes so far, more follow as
    /// [`StreamEvent::LtxData`] until [`StreamEvent::LtxEnd`]. Not yet verified.
    LtxBegin {
        /// Database name from the LTX frame.
        name: DbName,
        /// The payload's first bytes.
        first: Vec<u8>,
    },
    /// More bytes of the payload begun by the last [`StreamEvent::LtxBegin`].
    LtxData(Vec<u8>),
    /// The payload begun by the last [`StreamEvent::LtxBegin`] is complete.
    LtxEnd {
        /// Its length in bytes.
        len: u64,
    },
}

#[derive(Debug)]
enum State {
    Frames,
    Payload { name: DbName, payload: Vec<u8>, started_at: u64 },
    Spooling { len: u64, started_at: u64 },
    Failed,
}

/// Buffers received bytes and yields [`StreamEvent`]s.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already decoded; dropped at the next `feed`, so that taking
    /// out many chunks of one fed buffer does not move the rest of it each time.
    done: usize,
    /// Stream offset of `buf[done]`.
    offset: u64,
    ext: Extensions,
    max_payload: u64,
    /// Payloads longer than this are passed on piece by piece; `None`: never (refused past
    /// `max_payload` instead).
    inline_max: Option<u64>,
    state: State,
    last_epoch: u64,
}

impl StreamDecoder {
    /// A decoder for a stream with these negotiated extensions.
    #[must_use]
    pub fn new(ext: Extensions) -> StreamDecoder {
        StreamDecoder::with_limit(ext, MAX_LTX_PAYLOAD_BYTES)
    }

    /// A decoder with a lower payload limit than [`MAX_LTX_PAYLOAD_BYTES`].
    #[must_use]
    pub fn with_limit(ext: Extensions, max_payload: u64) -> StreamDecoder {
        StreamDecoder {
            buf: Vec::new(),
            done: 0,
            offset: 0,
            ext,
            max_payload: max_payload.min(MAX_LTX_PAYLOAD_BYTES),
            inline_max: None,
            state: State::Frames,
            last_epoch: 0,
        }
    }

    /// A decoder that yields payloads up to `inline_max` bytes whole and longer ones piece by
    /// piece (up to [`MAX_SPOOLED_LTX_BYTES`]): its memory never exceeds `inline_max` plus
    /// what was fed and not yet taken out, whatever the payload's size.
    #[must_use]
    pub fn spooling(ext: Extensions, inline_max: u64) -> StreamDecoder {
        StreamDecoder {
            max_payload: MAX_SPOOLED_LTX_BYTES,
            inline_max: Some(inline_max.min(MAX_LTX_PAYLOAD_BYTES)),
            ..StreamDecoder::new(ext)
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.drain(..self.done);
        self.done = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded (a partial frame or chunk).
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.done
    }

    fn consume(&mut self, n: usize) {
        self.done += n;
        self.offset += n as u64;
    }

    /// The next complete event, `Ok(None)` if more bytes are needed. After an error the
    /// stream is unusable and every later call returns [`FrameError::Poisoned`].
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, FrameError> {
        let result = self.next_inner();
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn next_inner(&mut self) -> Result<Option<StreamEvent>, FrameError> {
        loop {
            match &mut self.state {
                State::Failed => return Err(FrameError::Poisoned),
                State::Frames => {
                    let Some((frame, n)) = decode_frame(&self.buf[self.done..], self.offset, self.ext)? else {
                        return Ok(None);
                    };
                    let at = self.offset;
                    self.consume(n);
                    match frame {
                        Frame::Ltx { name, .. } => {
                            self.state = State::Payload { name, payload: Vec::new(), started_at: self.offset };
                        }
                        Frame::Epoch { epoch, .. } if epoch.0 < self.last_epoch => {
                            return Err(FrameError::EpochWentBack {
                                epoch: epoch.0,
                                previous: self.last_epoch,
                                offset: at,
                            });
                        }
                        Frame::Epoch { epoch, node_id } => {
                            self.last_epoch = epoch.0;
                            return Ok(Some(StreamEvent::Frame(Frame::Epoch { epoch, node_id })));
                        }
                        other => return Ok(Some(StreamEvent::Frame(other))),
                    }
                }
                State::Payload { payload, started_at, .. } => {
                    let Some((chunk, n)) = decode_chunk(&self.buf[self.done..], self.offset)? else {
                        return Ok(None);
                    };
                    match chunk {
                        Chunk::Data(data) => {
                            let len = payload.len() as u64 + data.len() as u64;
                            if len > self.max_payload {
                                return Err(FrameError::TooLong {
                                    what: "LTX payload",
                                    len,
                                    max: self.max_payload,
                                    offset: *started_at,
                                });
                            }
                            if self.inline_max.is_some_and(|max| len > max) {
                                // Too big to hold: hand over what we have and pass the rest on.
                                let mut first = std::mem::take(payload);
                                first.extend_from_slice(data);
                                let started_at = *started_at;
                                let State::Payload { name, .. } =
                                    std::mem::replace(&mut self.state, State::Spooling { len, started_at })
                                else {
                                    unreachable!("state matched Payload above");
                                };
                                self.consume(n);
                                return Ok(Some(StreamEvent::LtxBegin { name, first }));
                            }
                            payload.extend_from_slice(data);
                            self.consume(n);
                        }
                        Chunk::End => {
                            self.consume(n);
                            let State::Payload { name, payload, .. } =
                                std::mem::replace(&mut self.state, State::Frames)
                            else {
                                unreachable!("state matched Payload above");
                            };
                            return Ok(Some(StreamEvent::Ltx { name, payload }));
                        }
                    }
                }
                State::Spooling { len, started_at } => {
                    let Some((chunk, n)) = decode_chunk(&self.buf[self.done..], self.offset)? else {
                        return Ok(None);
                    };
                    let event = match chunk {
                        Chunk::Data(data) => {
                            let total = *len + data.len() as u64;
                            if total > self.max_payload {
                                return Err(FrameError::TooLong {
                                    what: "LTX payload",
                                    len: total,
                                    max: self.max_payload,
                                    offset: *started_at,
                                });
                            }
                            *len = total;
                            StreamEvent::LtxData(data.to_vec())
                        }
                        Chunk::End => {
                            let event = StreamEvent::LtxEnd { len: *len };
                            self.state = State::Frames;
                            event
                        }
                    };
                    self.consume(n);
                    return Ok(Some(event));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::chunk::encode_chunks;
    use crate::stream::frame::encode_frame;
    use crate::types::{Epoch, NodeId, TxId};

    fn name() -> DbName {
        DbName::new("db").expect("valid")
    }

    fn sample_stream() -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&Frame::Epoch { epoch: Epoch(3), node_id: NodeId(1) }, &mut out);
        encode_frame(&Frame::Ltx { size: 0, name: name() }, &mut out);
        encode_chunks(&vec![7u8; 70_000], &mut out);
        encode_frame(&Frame::Hwm { txid: TxId(4), name: name() }, &mut out);
        encode_frame(&Frame::Ready, &mut out);
        out
    }

    fn drain(d: &mut StreamDecoder) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        while let Some(e) = d.next_event().expect("valid stream") {
            out.push(e);
        }
        out
    }

    #[test]
    fn a_stream_fed_byte_by_byte_decodes_like_one_fed_whole() {
        let bytes = sample_stream();
        let mut whole = StreamDecoder::new(Extensions::ALL);
        whole.feed(&bytes);
        let expected = drain(&mut whole);
        assert_eq!(expected.len(), 4);
        assert!(matches!(&expected[1], StreamEvent::Ltx { payload, .. } if payload.len() == 70_000));
        let mut pieces = StreamDecoder::new(Extensions::ALL);
        let mut got = Vec::new();
        for piece in bytes.chunks(997) {
            pieces.feed(piece);
            got.extend(drain(&mut pieces));
        }
        assert_eq!(got, expected);
        assert_eq!(pieces.buffered(), 0);
    }

    #[test]
    fn payload_over_the_limit_is_refused_and_poisons_the_decoder() {
        let mut d = StreamDecoder::with_limit(Extensions::ALL, 1000);
        d.feed(&sample_stream());
        assert!(matches!(d.next_event(), Ok(Some(StreamEvent::Frame(Frame::Epoch { .. })))));
        assert!(matches!(d.next_event(), Err(FrameError::TooLong { what: "LTX payload", .. })));
        assert_eq!(d.next_event(), Err(FrameError::Poisoned));
    }

    #[test]
    fn a_payload_past_the_inline_limit_comes_out_in_pieces_that_add_up_to_it() {
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut bytes = Vec::new();
        encode_frame(&Frame::Ltx { size: 0, name: name() }, &mut bytes);
        encode_chunks(&payload, &mut bytes);
        encode_frame(&Frame::Ready, &mut bytes);
        let mut d = StreamDecoder::spooling(Extensions::ALL, 100_000);
        let mut got = Vec::new();
        let mut events = Vec::new();
        for piece in bytes.chunks(4096) {
            d.feed(piece);
            // Never more than the inline limit plus one fed piece held at once.
            assert!(d.buffered() <= 100_000 + 4096 + 65_537);
            events.extend(drain(&mut d));
        }
        let mut ended = false;
        for e in &events {
            match e {
                StreamEvent::LtxBegin { first, .. } => {
                    assert!(got.is_empty());
                    assert!(first.len() as u64 > 100_000);
                    got.extend_from_slice(first);
                }
                StreamEvent::LtxData(data) => got.extend_from_slice(data),
                StreamEvent::LtxEnd { len } => {
                    assert_eq!(*len, 300_000);
                    ended = true;
                }
                StreamEvent::Frame(Frame::Ready) => assert!(ended, "ready before the payload ended"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(ended);
        assert_eq!(got, payload);
    }

    #[test]
    fn a_payload_within_the_inline_limit_of_a_spooling_decoder_comes_out_whole() {
        let mut d = StreamDecoder::spooling(Extensions::ALL, 100_000);
        d.feed(&sample_stream());
        let events = drain(&mut d);
        assert!(matches!(&events[1], StreamEvent::Ltx { payload, .. } if payload.len() == 70_000));
    }

    #[test]
    fn an_epoch_lower_than_one_seen_on_the_stream_is_an_error() {
        let mut bytes = Vec::new();
        encode_frame(&Frame::Epoch { epoch: Epoch(5), node_id: NodeId(1) }, &mut bytes);
        encode_frame(&Frame::Epoch { epoch: Epoch(4), node_id: NodeId(1) }, &mut bytes);
        let mut d = StreamDecoder::new(Extensions::ALL);
        d.feed(&bytes);
        assert!(d.next_event().is_ok());
        assert_eq!(d.next_event(), Err(FrameError::EpochWentBack { epoch: 4, previous: 5, offset: 20 }));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz pass; the fuzz target does the thorough job.
        let mut state = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut bytes = sample_stream();
            for _ in 0..4 {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let i = (state >> 33) as usize % bytes.len();
                bytes[i] = (state >> 17) as u8;
            }
            let mut d = StreamDecoder::with_limit(Extensions::ALL, 100_000);
            d.feed(&bytes);
            for _ in 0..16 {
                if !matches!(d.next_event(), Ok(Some(_))) {
                    break;
                }
            }
        }
    }
}
