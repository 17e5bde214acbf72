//! The 100-byte LTX v1 header and the 16-byte trailer, big-endian, as superfly/ltx v0.3 lays
//! them out.

use crate::ltx::error::HeaderError;
use crate::types::{Checksum, NodeId, PageSize, Pgno, Pos, TxId};

/// Size of the header in bytes.
pub const HEADER_SIZE: usize = 100;
/// Size of a page header (the page number) in bytes.
pub const PAGE_HEADER_SIZE: usize = 4;
/// Size of the trailer in bytes.
pub const TRAILER_SIZE: usize = 16;
/// The magic at the start of every LTX v1 file.
pub const MAGIC: &[u8; 4] = b"LTX1";
/// The format version this codec reads and writes.
pub const VERSION: u32 = 1;

/// Header flag: the page section is one LZ4 frame.
pub const FLAG_COMPRESS_LZ4: u32 = 0x1;
/// Every flag this version defines.
pub const FLAG_MASK: u32 = FLAG_COMPRESS_LZ4;

/// The header of an LTX file. Only [`Header::decode`] and [`Header::validate`] vouch for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Flags (0x1: LZ4-compressed page section).
    pub flags: u32,
    /// Database page size.
    pub page_size: PageSize,
    /// Database size in pages after the transaction(s); zero for a deleted database.
    pub commit: u32,
    /// First transaction in the file.
    pub min_txid: TxId,
    /// Last transaction in the file.
    pub max_txid: TxId,
    /// Milliseconds since the Unix epoch when the file was written.
    pub timestamp_ms: i64,
    /// Database checksum before the file applies; zero for snapshots.
    pub pre_apply_checksum: Checksum,
    /// Offset in the original WAL, zero for rollback-journal transactions.
    pub wal_offset: i64,
    /// Size of the original WAL segment, zero for rollback-journal transactions.
    pub wal_size: i64,
    /// WAL header salt 1, zero when not from a WAL.
    pub wal_salt1: u32,
    /// WAL header salt 2, zero when not from a WAL.
    pub wal_salt2: u32,
    /// Node that wrote the file, zero when unset.
    pub node_id: NodeId,
}

impl Header {
    /// A header for transactions `min..=max` with every optional field zero.
    #[must_use]
    pub fn new(
        page_size: PageSize,
        commit: u32,
        min_txid: TxId,
        max_txid: TxId,
        pre_apply_checksum: Checksum,
    ) -> Header {
        Header {
            flags: 0,
            page_size,
            commit,
            min_txid,
            max_txid,
            timestamp_ms: 0,
            pre_apply_checksum,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: NodeId(0),
        }
    }

    /// Whether the file is a snapshot: it starts at TXID 1 and holds every page.
    #[must_use]
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == TxId(1)
    }

    /// Whether the page section is LZ4-compressed.
    #[must_use]
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESS_LZ4 != 0
    }

    /// The lock page for this page size.
    #[must_use]
    pub fn lock_pgno(&self) -> Pgno {
        self.page_size.lock_pgno()
    }

    /// The position the database must be at for this file to apply.
    #[must_use]
    pub fn pre_apply_pos(&self) -> Pos {
        Pos::new(TxId(self.min_txid.0 - 1), self.pre_apply_checksum)
    }

    /// Checks every rule a header must follow; all constructors of trusted headers call it.
    pub fn validate(&self) -> Result<(), HeaderError> {
        if self.flags & !FLAG_MASK != 0 {
            return Err(HeaderError::UnknownFlags { flags: self.flags });
        }
        if self.min_txid == TxId::ZERO {
            return Err(HeaderError::ZeroTxId { which: "minimum", offset: 16 });
        }
        if self.max_txid == TxId::ZERO {
            return Err(HeaderError::ZeroTxId { which: "maximum", offset: 24 });
        }
        if self.min_txid > self.max_txid {
            return Err(HeaderError::TxIdsOutOfOrder { min: self.min_txid, max: self.max_txid });
        }
        self.validate_wal_fields()?;
        if self.is_snapshot() {
            if self.pre_apply_checksum != Checksum::ZERO {
                return Err(HeaderError::SnapshotWithPreApplyChecksum { checksum: self.pre_apply_checksum });
            }
        } else if !self.pre_apply_checksum.has_flag() {
            return Err(HeaderError::InvalidPreApplyChecksum { checksum: self.pre_apply_checksum });
        }
        Ok(())
    }

    fn validate_wal_fields(&self) -> Result<(), HeaderError> {
        let reason = if self.wal_offset < 0 {
            Some("WAL offset is negative")
        } else if self.wal_size < 0 {
            Some("WAL size is negative")
        } else if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            Some("WAL salt without WAL offset")
        } else if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_size == 0 {
            Some("WAL salt without WAL size")
        } else if self.wal_offset != 0 && self.wal_size == 0 {
            Some("WAL offset without WAL size")
        } else if self.wal_offset == 0 && self.wal_size != 0 {
            Some("WAL size without WAL offset")
        } else {
            None
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(HeaderError::InvalidWalFields {
                reason,
                wal_offset: self.wal_offset,
                wal_size: self.wal_size,
                salt1: self.wal_salt1,
                salt2: self.wal_salt2,
            }),
        }
    }

    /// The header's 100 bytes. Reserved bytes are zero.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.get().to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.0.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.0.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.0.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.0.to_be_bytes());
        b
    }

    /// Parses and validates a header. Reserved bytes are ignored, as the reference reader does.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header, HeaderError> {
        let (raw, page_size) = RawHeader::parse(b)?;
        let header = raw.with_page_size(page_size);
        header.validate()?;
        Ok(header)
    }

    /// Parses a header without validating anything but the magic and page size, for tools that
    /// print what a broken file says before reporting why it is broken.
    pub fn decode_unvalidated(b: &[u8; HEADER_SIZE]) -> Result<RawHeader, HeaderError> {
        RawHeader::parse(b).map(|(raw, _)| raw).or_else(|e| match e {
            HeaderError::InvalidPageSize { .. } => Ok(RawHeader::read(b)),
            other => Err(other),
        })
    }
}

/// Header fields as stored, before validation (the page size may be invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    /// Flags field.
    pub flags: u32,
    /// Page size field, unvalidated.
    pub page_size: u32,
    /// Commit field.
    pub commit: u32,
    /// Min TXID field.
    pub min_txid: TxId,
    /// Max TXID field.
    pub max_txid: TxId,
    /// Timestamp field.
    pub timestamp_ms: i64,
    /// Pre-apply checksum field.
    pub pre_apply_checksum: Checksum,
    /// WAL offset field.
    pub wal_offset: i64,
    /// WAL size field.
    pub wal_size: i64,
    /// WAL salt 1 field.
    pub wal_salt1: u32,
    /// WAL salt 2 field.
    pub wal_salt2: u32,
    /// Node id field.
    pub node_id: NodeId,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl RawHeader {
    fn read(b: &[u8; HEADER_SIZE]) -> RawHeader {
        RawHeader {
            flags: be_u32(b, 4),
            page_size: be_u32(b, 8),
            commit: be_u32(b, 12),
            min_txid: TxId(be_u64(b, 16)),
            max_txid: TxId(be_u64(b, 24)),
            timestamp_ms: be_u64(b, 32) as i64,
            pre_apply_checksum: Checksum(be_u64(b, 40)),
            wal_offset: be_u64(b, 48) as i64,
            wal_size: be_u64(b, 56) as i64,
            wal_salt1: be_u32(b, 64),
            wal_salt2: be_u32(b, 68),
            node_id: NodeId(be_u64(b, 72)),
        }
    }

    fn parse(b: &[u8; HEADER_SIZE]) -> Result<(RawHeader, PageSize), HeaderError> {
        if &b[0..4] != MAGIC {
            return Err(HeaderError::BadMagic { found: [b[0], b[1], b[2], b[3]] });
        }
        let raw = RawHeader::read(b);
        let page_size = PageSize::new(raw.page_size).ok_or(HeaderError::InvalidPageSize { size: raw.page_size })?;
        Ok((raw, page_size))
    }

    fn with_page_size(self, page_size: PageSize) -> Header {
        Header {
            flags: self.flags,
            page_size,
            commit: self.commit,
            min_txid: self.min_txid,
            max_txid: self.max_txid,
            timestamp_ms: self.timestamp_ms,
            pre_apply_checksum: self.pre_apply_checksum,
            wal_offset: self.wal_offset,
            wal_size: self.wal_size,
            wal_salt1: self.wal_salt1,
            wal_salt2: self.wal_salt2,
            node_id: self.node_id,
        }
    }
}

impl From<Header> for RawHeader {
    fn from(h: Header) -> RawHeader {
        RawHeader {
            flags: h.flags,
            page_size: h.page_size.get(),
            commit: h.commit,
            min_txid: h.min_txid,
            max_txid: h.max_txid,
            timestamp_ms: h.timestamp_ms,
            pre_apply_checksum: h.pre_apply_checksum,
            wal_offset: h.wal_offset,
            wal_size: h.wal_size,
            wal_salt1: h.wal_salt1,
            wal_salt2: h.wal_salt2,
            node_id: h.node_id,
        }
    }
}

/// The trailer: the database checksum after the file applies, and the file's own checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Database checksum after applying the file.
    pub post_apply_checksum: Checksum,
    /// CRC-64/GO-ISO (bit 63 set) of every logical byte before this field.
    pub file_checksum: Checksum,
}

impl Trailer {
    /// The trailer's 16 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(&self.post_apply_checksum.0.to_be_bytes());
        b[8..16].copy_from_slice(&self.file_checksum.0.to_be_bytes());
        b
    }

    /// Reads the trailer's fields; the decoder checks them against the file.
    #[must_use]
    pub fn decode(b: &[u8; TRAILER_SIZE]) -> Trailer {
        Trailer { post_apply_checksum: Checksum(be_u64(b, 0)), file_checksum: Checksum(be_u64(b, 8)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_header() -> Header {
        Header::new(PageSize::new(4096).expect("valid"), 2, TxId(1), TxId(1), Checksum::ZERO)
    }

    #[test]
    fn header_round_trips_through_its_bytes() {
        let mut h = snapshot_header();
        h.flags = FLAG_COMPRESS_LZ4;
        h.timestamp_ms = 1_795_411_769_332;
        h.wal_offset = 32;
        h.wal_size = 4152;
        h.wal_salt1 = 0xdead_beef;
        h.wal_salt2 = 7;
        h.node_id = NodeId(42);
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn header_with_unknown_flag_is_rejected() {
        let mut b = snapshot_header().encode();
        b[7] = 0x2;
        assert_eq!(Header::decode(&b), Err(HeaderError::UnknownFlags { flags: 2 }));
    }

    #[test]
    fn non_snapshot_without_pre_apply_checksum_is_rejected() {
        let mut h = snapshot_header();
        h.min_txid = TxId(2);
        h.max_txid = TxId(2);
        assert_eq!(h.validate(), Err(HeaderError::InvalidPreApplyChecksum { checksum: Checksum::ZERO }));
        h.pre_apply_checksum = Checksum(1);
        assert!(h.validate().is_err(), "bit 63 must be set");
        h.pre_apply_checksum = Checksum(Checksum::FLAG | 1);
        assert_eq!(h.validate(), Ok(()));
    }

    #[test]
    fn wal_salt_without_offset_is_rejected() {
        let mut h = snapshot_header();
        h.wal_salt1 = 1;
        assert!(matches!(
            h.validate(),
            Err(HeaderError::InvalidWalFields { reason: "WAL salt without WAL offset", .. })
        ));
    }

    #[test]
    fn bad_magic_and_page_size_are_named() {
        let mut b = snapshot_header().encode();
        b[8..12].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(Header::decode(&b), Err(HeaderError::InvalidPageSize { size: 1000 }));
        b[0] = b'X';
        assert!(matches!(Header::decode(&b), Err(HeaderError::BadMagic { .. })));
    }
}
