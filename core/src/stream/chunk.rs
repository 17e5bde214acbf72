//! LTX payloads on the stream: a sequence of chunks, each a u16 big-endian length and that
//! many bytes, ended by a zero length. The sender need not know the payload size up front.

use crate::stream::error::FrameError;
use crate::stream::frame::{Cursor, Need};

/// Largest chunk: the u16 length field's maximum (LiteFS cuts at the same size).
pub const MAX_CHUNK_SIZE: usize = u16::MAX as usize;

/// One decoded chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Payload bytes.
    Data(&'a [u8]),
    /// The zero-length terminator: the payload is complete.
    End,
}

/// Appends `payload` as chunks of at most [`MAX_CHUNK_SIZE`] bytes, then the terminator.
pub fn encode_chunks(payload: &[u8], out: &mut Vec<u8>) {
    for chunk in payload.chunks(MAX_CHUNK_SIZE) {
        // chunks() never yields more than MAX_CHUNK_SIZE bytes, so the cast is exact.
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// Decodes one chunk from the start of `buf` (at stream offset `offset`). `Ok(None)` means
/// more bytes are needed. No chunk can be malformed on its own (every u16 is a valid
/// length); the `Result` is for symmetry with the other decoders.
pub fn decode_chunk(buf: &[u8], offset: u64) -> Result<Option<(Chunk<'_>, usize)>, FrameError> {
    let mut c = Cursor::new(buf, offset);
    let len = match c.u16() {
        Ok(len) => usize::from(len),
        Err(Need::More) => return Ok(None),
        Err(Need::Bad(e)) => return Err(e),
    };
    if len == 0 {
        return Ok(Some((Chunk::End, 2)));
    }
    let chunk = match c.bytes(len) {
        Ok(data) => Chunk::Data(data),
        Err(Need::More) => return Ok(None),
        Err(Need::Bad(e)) => return Err(e),
    };
    Ok(Some((chunk, c.consumed())))
}

/// Appends what a primary sends for one LTX file: an LTX frame, the file as chunks, and an
/// HWM frame naming `hwm` (as LiteFS does after each file).
pub fn encode_ltx_message(name: &crate::stream::DbName, file: &[u8], hwm: crate::types::TxId, out: &mut Vec<u8>) {
    use crate::stream::frame::{Frame, encode_frame};
    encode_frame(&Frame::Ltx { size: 0, name: name.clone() }, out);
    encode_chunks(file, out);
    encode_frame(&Frame::Hwm { txid: hwm, name: name.clone() }, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut buf: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            match decode_chunk(buf, offset) {
                Ok(Some((Chunk::Data(d), n))) => {
                    out.extend_from_slice(d);
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Ok(Some((Chunk::End, n))) => {
                    assert_eq!(n, buf.len());
                    return out;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn payloads_of_every_boundary_size_round_trip() {
        for len in [0, 1, MAX_CHUNK_SIZE - 1, MAX_CHUNK_SIZE, MAX_CHUNK_SIZE + 1, 3 * MAX_CHUNK_SIZE] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = Vec::new();
            encode_chunks(&payload, &mut buf);
            assert_eq!(decode_all(&buf), payload, "len {len}");
        }
    }

    #[test]
    fn an_empty_payload_is_just_the_terminator() {
        let mut buf = Vec::new();
        encode_chunks(&[], &mut buf);
        assert_eq!(buf, [0, 0]);
    }

    #[test]
    fn a_cut_chunk_asks_for_more_bytes() {
        assert_eq!(decode_chunk(&[0], 0), Ok(None));
        assert_eq!(decode_chunk(&[0, 3, 1, 2], 0), Ok(None));
        assert_eq!(decode_chunk(&[0, 2, 1, 2, 9], 0), Ok(Some((Chunk::Data(&[1, 2]), 4))));
    }
}
