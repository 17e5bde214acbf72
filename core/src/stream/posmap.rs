//! The body of `POST /stream`: the replica's position for each database it has.
//! Layout: u32 entry count, then per entry a u32 name length, the name, u64 TXID and u64
//! post-apply checksum, all big-endian. Entries are written in name order.

use std::collections::BTreeMap;

use crate::stream::error::FrameError;
use crate::stream::frame::{Cursor, Need};
use crate::stream::name::DbName;
use crate::types::{Checksum, Pos, TxId};

/// Most databases a position map may name. A node serves a handful of databases; 4096 is far
/// above any deployment seen and caps the work a malicious request can cause.
pub const MAX_POS_MAP_ENTRIES: u32 = 4096;

/// A replica's positions, by database.
pub type PosMap = BTreeMap<DbName, Pos>;

/// Encodes a position map (in name order, as LiteFS does).
#[must_use]
pub fn encode_pos_map(map: &PosMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + map.len() * 24);
    out.extend_from_slice(&(map.len() as u32).to_be_bytes());
    for (name, pos) in map {
        out.extend_from_slice(&(name.as_str().len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&pos.txid.0.to_be_bytes());
        out.extend_from_slice(&pos.checksum.0.to_be_bytes());
    }
    out
}

/// Refuses a position map that declares more than [`MAX_POS_MAP_ENTRIES`] entries (the count
/// is the body's first field, so a reader can refuse it before buffering anything more).
pub fn check_entry_count(count: u32) -> Result<(), FrameError> {
    if count > MAX_POS_MAP_ENTRIES {
        return Err(FrameError::TooLong {
            what: "position map",
            len: u64::from(count),
            max: u64::from(MAX_POS_MAP_ENTRIES),
            offset: 0,
        });
    }
    Ok(())
}

/// Decodes a complete request body. Truncation, trailing bytes, duplicate names, invalid names
/// and more than [`MAX_POS_MAP_ENTRIES`] entries are errors.
pub fn decode_pos_map(buf: &[u8]) -> Result<PosMap, FrameError> {
    let mut c = Cursor::new(buf, 0);
    let truncated = |c: &Cursor<'_>| FrameError::Truncated { what: "position map", offset: c.offset() };
    let lift = |c: &Cursor<'_>, e: Need| match e {
        Need::More => truncated(c),
        Need::Bad(e) => e,
    };
    let count = c.u32().map_err(|e| lift(&c, e))?;
    check_entry_count(count)?;
    let mut map = PosMap::new();
    for _ in 0..count {
        let at = c.offset();
        let name = c.name().map_err(|e| lift(&c, e))?;
        let txid = c.u64().map_err(|e| lift(&c, e))?;
        let checksum = c.u64().map_err(|e| lift(&c, e))?;
        if map.contains_key(&name) {
            return Err(FrameError::DuplicateName { name: name.as_str().to_owned(), offset: at });
        }
        map.insert(name, Pos::new(TxId(txid), Checksum(checksum)));
    }
    if c.remaining() > 0 {
        return Err(FrameError::TrailingData { extra: c.remaining() as u64, offset: c.offset() });
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PosMap {
        let mut map = PosMap::new();
        map.insert(DbName::new("b.db").expect("valid"), Pos::new(TxId(2), Checksum(0x8000_0000_0000_00ff)));
        map.insert(DbName::new("a.db").expect("valid"), Pos::ZERO);
        map
    }

    #[test]
    fn position_maps_round_trip_in_name_order() {
        let buf = encode_pos_map(&sample());
        assert_eq!(&buf[..4], &[0, 0, 0, 2]);
        assert_eq!(&buf[4..12], &[0, 0, 0, 4, b'a', b'.', b'd', b'b']);
        assert_eq!(decode_pos_map(&buf), Ok(sample()));
        assert_eq!(decode_pos_map(&encode_pos_map(&PosMap::new())), Ok(PosMap::new()));
    }

    #[test]
    fn truncated_position_maps_are_errors_at_every_cut() {
        let buf = encode_pos_map(&sample());
        for cut in 0..buf.len() {
            assert!(
                matches!(decode_pos_map(&buf[..cut]), Err(FrameError::Truncated { offset, .. }) if offset <= cut as u64),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn duplicates_trailing_bytes_and_huge_counts_are_rejected() {
        let mut buf = encode_pos_map(&sample());
        buf.push(0);
        assert!(matches!(decode_pos_map(&buf), Err(FrameError::TrailingData { extra: 1, .. })));
        assert!(matches!(decode_pos_map(&[0xff, 0xff, 0xff, 0xff]), Err(FrameError::TooLong { .. })));
        let one = encode_pos_map(&[(DbName::new("x").expect("valid"), Pos::ZERO)].into_iter().collect());
        let mut twice = vec![0, 0, 0, 2];
        twice.extend_from_slice(&one[4..]);
        twice.extend_from_slice(&one[4..]);
        assert!(matches!(decode_pos_map(&twice), Err(FrameError::DuplicateName { offset: 25, .. })));
    }
}
