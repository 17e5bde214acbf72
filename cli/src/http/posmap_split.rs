//! Finds where the position map ends in a `POST /stream` request body that arrives in chunks.
//! With the `ack` extension the body stays open after the map (acknowledgements follow), so
//! the server cannot wait for the body to end: it must know the map's length from its own
//! length fields. This only measures; `replite_core::stream::decode_pos_map` validates.

use replite_core::stream::{FrameError, MAX_DB_NAME_LEN, MAX_POS_MAP_ENTRIES, check_entry_count};

/// Bytes of one entry after its name: u64 TXID and u64 checksum.
const POS_BYTES: usize = 16;
/// Bytes of a u32 length or count field.
const LEN_BYTES: usize = 4;

/// Largest position map that can pass the limits below: the splitter never buffers more, so a
/// request cannot make the server hold more than this (about 1.1 MiB) before it is refused.
pub const MAX_POS_MAP_BYTES: usize =
    LEN_BYTES + MAX_POS_MAP_ENTRIES as usize * (LEN_BYTES + MAX_DB_NAME_LEN + POS_BYTES);

/// The field the splitter is waiting to complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// The u32 entry count.
    Count,
    /// An entry's u32 name length.
    NameLen,
    /// An entry's name (of this length) and its position.
    NameAndPos(usize),
    /// The map is complete.
    Done,
}

impl Field {
    fn len(self) -> usize {
        match self {
            Field::Count | Field::NameLen => LEN_BYTES,
            Field::NameAndPos(name_len) => name_len + POS_BYTES,
            Field::Done => 0,
        }
    }
}

/// Accumulates the position map from body chunks, refusing over-limit counts and names as
/// soon as their length field is complete, before buffering what they announce.
#[derive(Debug)]
pub struct PosMapSplitter {
    /// The map's bytes so far (never more than the map: later bytes stay with the caller).
    buf: Vec<u8>,
    /// What the bytes from `field_start` on will be.
    field: Field,
    /// Offset in `buf` where `field` starts.
    field_start: usize,
    /// Entries whose name length is not yet read.
    entries_left: u32,
}

impl Default for PosMapSplitter {
    fn default() -> Self {
        PosMapSplitter::new()
    }
}

impl PosMapSplitter {
    /// A splitter at the start of a request body.
    #[must_use]
    pub fn new() -> PosMapSplitter {
        PosMapSplitter { buf: Vec::new(), field: Field::Count, field_start: 0, entries_left: 0 }
    }

    /// Takes the next body chunk. Returns `Ok(Some(n))` once the map is complete, where `n` is
    /// how many bytes of `chunk` belonged to it (the rest follow the map); `Ok(None)` while
    /// more is needed. Must not be called again after it returned `Some` or an error.
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<Option<usize>, FrameError> {
        debug_assert!(self.field != Field::Done, "push after the position map was complete");
        let chunk_len = chunk.len();
        loop {
            if self.field == Field::Done {
                return Ok(Some(chunk_len - chunk.len()));
            }
            let have = self.buf.len() - self.field_start;
            let take = (self.field.len() - have).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() - self.field_start < self.field.len() {
                return Ok(None);
            }
            self.complete_field()?;
        }
    }

    /// Moves past the field that just became complete.
    fn complete_field(&mut self) -> Result<(), FrameError> {
        let at = self.field_start;
        let field = &self.buf[at..];
        self.field = match self.field {
            Field::Count => {
                let count = read_u32(field);
                check_entry_count(count)?;
                self.entries_left = count;
                self.next_entry()
            }
            Field::NameLen => {
                let name_len = read_u32(field);
                if name_len as usize > MAX_DB_NAME_LEN {
                    return Err(FrameError::TooLong {
                        what: "database name",
                        len: u64::from(name_len),
                        max: MAX_DB_NAME_LEN as u64,
                        offset: at as u64,
                    });
                }
                Field::NameAndPos(name_len as usize)
            }
            Field::NameAndPos(_) => self.next_entry(),
            Field::Done => Field::Done,
        };
        self.field_start = self.buf.len();
        debug_assert!(self.buf.len() <= MAX_POS_MAP_BYTES, "limits bound the map's size");
        Ok(())
    }

    fn next_entry(&mut self) -> Field {
        if self.entries_left == 0 {
            return Field::Done;
        }
        self.entries_left -= 1;
        Field::NameLen
    }

    /// The body ended: the complete map's bytes, or where it was cut off.
    pub fn finish(self) -> Result<Vec<u8>, FrameError> {
        if self.field == Field::Done {
            Ok(self.buf)
        } else {
            Err(FrameError::Truncated { what: "position map", offset: self.buf.len() as u64 })
        }
    }

    /// Bytes of the map received so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing has been received yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use replite_core::stream::{DbName, PosMap, decode_pos_map, encode_pos_map};
    use replite_core::{Checksum, Pos, TxId};

    use super::*;

    fn map_of(n: u32) -> PosMap {
        (0..n)
            .map(|i| {
                let name = DbName::new(&format!("db{i:04}.sqlite")).expect("valid name");
                (name, Pos::new(TxId(u64::from(i) + 1), Checksum(0x8000_0000_0000_0000 | u64::from(i))))
            })
            .collect()
    }

    /// Feeds `body` in chunks of `step` bytes; returns the map and the bytes after it.
    fn split(body: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), FrameError> {
        let mut s = PosMapSplitter::new();
        for (i, chunk) in body.chunks(step).enumerate() {
            if let Some(used) = s.push(chunk)? {
                let mut rest = chunk[used..].to_vec();
                rest.extend(body.chunks(step).skip(i + 1).flatten());
                return Ok((s.finish()?, rest));
            }
        }
        Ok((s.finish()?, Vec::new()))
    }

    #[test]
    fn a_whole_map_in_one_chunk_is_found_exactly() {
        let body = encode_pos_map(&map_of(3));
        assert_eq!(split(&body, body.len()), Ok((body.clone(), Vec::new())));
        assert_eq!(decode_pos_map(&body), Ok(map_of(3)));
    }

    #[test]
    fn an_empty_map_is_four_bytes() {
        assert_eq!(split(&[0, 0, 0, 0, 9], 5), Ok((vec![0, 0, 0, 0], vec![9])));
    }

    #[test]
    fn a_map_split_across_many_chunks_is_reassembled_at_every_chunk_size() {
        let body = encode_pos_map(&map_of(5));
        for step in 1..=body.len() {
            assert_eq!(split(&body, step), Ok((body.clone(), Vec::new())), "chunks of {step}");
        }
    }

    #[test]
    fn bytes_after_the_map_are_left_for_the_caller() {
        let map = encode_pos_map(&map_of(2));
        let acks = b"ack frames follow".to_vec();
        let body = [map.clone(), acks.clone()].concat();
        for step in 1..=body.len() {
            assert_eq!(split(&body, step), Ok((map.clone(), acks.clone())), "chunks of {step}");
        }
    }

    #[test]
    fn too_many_entries_are_refused_from_the_count_alone() {
        let mut s = PosMapSplitter::new();
        let count = (MAX_POS_MAP_ENTRIES + 1).to_be_bytes();
        assert!(matches!(s.push(&count), Err(FrameError::TooLong { what: "position map", offset: 0, .. })));
        let mut s = PosMapSplitter::new();
        assert_eq!(s.push(&MAX_POS_MAP_ENTRIES.to_be_bytes()), Ok(None));
    }

    #[test]
    fn an_oversized_name_is_refused_before_its_bytes_arrive() {
        let mut s = PosMapSplitter::new();
        assert_eq!(s.push(&[0, 0, 0, 1]), Ok(None));
        let len = (MAX_DB_NAME_LEN as u32 + 1).to_be_bytes();
        assert_eq!(
            s.push(&len),
            Err(FrameError::TooLong {
                what: "database name",
                len: MAX_DB_NAME_LEN as u64 + 1,
                max: MAX_DB_NAME_LEN as u64,
                offset: 4,
            })
        );
    }

    #[test]
    fn a_body_that_ends_inside_the_map_is_truncated_at_every_cut() {
        let body = encode_pos_map(&map_of(2));
        for cut in 0..body.len() {
            let mut s = PosMapSplitter::new();
            assert_eq!(s.push(&body[..cut]), Ok(None), "cut {cut}");
            assert_eq!(s.len(), cut);
            assert_eq!(s.finish(), Err(FrameError::Truncated { what: "position map", offset: cut as u64 }));
        }
    }

    #[test]
    fn the_largest_allowed_map_fits_the_buffer_bound() {
        let name = "n".repeat(MAX_DB_NAME_LEN);
        let mut body = MAX_POS_MAP_ENTRIES.to_be_bytes().to_vec();
        for _ in 0..MAX_POS_MAP_ENTRIES {
            body.extend_from_slice(&(MAX_DB_NAME_LEN as u32).to_be_bytes());
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(&[0; POS_BYTES]);
        }
        assert_eq!(body.len(), MAX_POS_MAP_BYTES);
        assert_eq!(split(&body, 16 * 1024).map(|(m, rest)| (m.len(), rest.len())), Ok((MAX_POS_MAP_BYTES, 0)));
    }
}
