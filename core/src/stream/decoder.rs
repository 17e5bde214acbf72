//! An incremental decoder for the primary-to-replica direction (and, with acknowledgements
//! negotiated, the replica-to-primary one): feed it bytes as they arrive, take out frames
//! and whole LTX payloads.

use crate::stream::chunk::{Chunk, decode_chunk};
use crate::stream::error::FrameError;
use crate::stream::frame::{Extensions, Frame, decode_frame};
use crate::stream::name::DbName;

/// Largest LTX payload the decoder will buffer: 1 GiB. A snapshot of a bigger database must
/// be streamed to disk by the daemon instead of buffered; the limit keeps a misbehaving peer
/// from exhausting memory. The decoder never allocates ahead of received bytes.
pub const MAX_LTX_PAYLOAD_BYTES: u64 = 1 << 30;

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
}

#[derive(Debug)]
enum State {
    Frames,
    Payload { name: DbName, payload: Vec<u8>, started_at: u64 },
    Failed,
}

/// Buffers received bytes and yields [`StreamEvent`]s.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    offset: u64,
    ext: Extensions,
    max_payload: u64,
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
            offset: 0,
            ext,
            max_payload: max_payload.min(MAX_LTX_PAYLOAD_BYTES),
            state: State::Frames,
            last_epoch: 0,
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded (a partial frame or chunk).
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
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
                    let Some((frame, n)) = decode_frame(&self.buf, self.offset, self.ext)? else {
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
                    let Some((chunk, n)) = decode_chunk(&self.buf, self.offset)? else {
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
