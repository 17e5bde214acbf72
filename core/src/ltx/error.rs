//! Errors of the LTX codec. Each says what is wrong and where: `offset` is the byte offset in
//! the file's logical (uncompressed) byte stream, which for the header and an uncompressed body
//! is also the offset in the file; `raw_offset` is the offset in the file as stored.

use std::io;

use thiserror::Error;

use crate::types::{Checksum, Pgno, TxId};

/// Something wrong with an LTX header, found by [`crate::ltx::Header::decode`] or
/// [`crate::ltx::Header::validate`]. Offsets are fixed: they are the field's offset in the header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// The file does not start with `LTX1`.
    #[error("not an LTX v1 file: magic {found:02x?} at offset 0, expected \"LTX1\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// Flags other than 0x1 (LZ4) are set.
    #[error("invalid flags 0x{flags:08x} at offset 4: only 0x00000001 (LZ4) is defined")]
    UnknownFlags {
        /// The flags field.
        flags: u32,
    },
    /// Page size is not a power of two in 512..=65536.
    #[error("invalid page size {size} at offset 8: must be a power of two from 512 to 65536")]
    InvalidPageSize {
        /// The page size field.
        size: u32,
    },
    /// Min or max TXID is zero.
    #[error("{which} transaction id at offset {offset} is zero")]
    ZeroTxId {
        /// "minimum" or "maximum".
        which: &'static str,
        /// Offset of the field.
        offset: u64,
    },
    /// Min TXID is above max TXID.
    #[error("transaction ids out of order at offset 16: min {min} > max {max}")]
    TxIdsOutOfOrder {
        /// Min TXID.
        min: TxId,
        /// Max TXID.
        max: TxId,
    },
    /// The WAL fields are inconsistent (negative, or a salt/size without an offset, ...).
    #[error(
        "invalid WAL fields at offset 48: {reason} (offset {wal_offset}, size {wal_size}, salts {salt1:08x} {salt2:08x})"
    )]
    InvalidWalFields {
        /// Which rule was broken.
        reason: &'static str,
        /// WAL offset field.
        wal_offset: i64,
        /// WAL size field.
        wal_size: i64,
        /// WAL salt 1.
        salt1: u32,
        /// WAL salt 2.
        salt2: u32,
    },
    /// A snapshot (min TXID 1) with a pre-apply checksum.
    #[error("snapshot (min TXID 1) has pre-apply checksum {checksum} at offset 40; it must be zero")]
    SnapshotWithPreApplyChecksum {
        /// The pre-apply checksum field.
        checksum: Checksum,
    },
    /// A non-snapshot file whose pre-apply checksum is zero or lacks bit 63.
    #[error("pre-apply checksum {checksum} at offset 40 is not a valid checksum (zero, or bit 63 clear)")]
    InvalidPreApplyChecksum {
        /// The pre-apply checksum field.
        checksum: Checksum,
    },
}

/// Anything that can go wrong encoding or decoding an LTX file.
#[derive(Debug, Error)]
pub enum LtxError {
    /// The underlying reader or writer failed.
    #[error("I/O error at offset {offset}: {source}")]
    Io {
        /// Logical offset reached when it failed.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file ended before the structure it was reading was complete.
    #[error("file truncated: {what} at offset {offset} needs {needed} bytes, only {got} present")]
    Truncated {
        /// What was being read ("header", "page 3", "trailer").
        what: String,
        /// Logical offset where it starts.
        offset: u64,
        /// How many bytes it needs.
        needed: usize,
        /// How many were there.
        got: usize,
    },
    /// The file ended inside the LZ4 frame that holds the page section.
    #[error("file truncated inside the LZ4 page section at file offset {raw_offset}")]
    TruncatedCompressed {
        /// Offset in the stored file where the frame's current block started.
        raw_offset: u64,
    },
    /// The header is invalid.
    #[error("invalid header: {0}")]
    Header(#[from] HeaderError),
    /// The LZ4 frame holding the page section is corrupt.
    #[error("corrupt LZ4 page section at file offset {raw_offset}: {detail}")]
    Lz4 {
        /// Offset in the stored (compressed) file where the bad block or frame part starts.
        raw_offset: u64,
        /// What the LZ4 decoder found wrong.
        detail: String,
    },
    /// The LZ4 frame holds bytes after the end-of-pages marker.
    #[error("LZ4 page section has data after the end-of-pages marker at offset {offset}")]
    TrailingCompressedData {
        /// Logical offset of the end-of-pages marker's end.
        offset: u64,
    },
    /// Bytes follow the trailer.
    #[error("{extra} unexpected byte(s) after the trailer at file offset {raw_offset}")]
    TrailingData {
        /// Offset in the stored file where the extra bytes start.
        raw_offset: u64,
        /// How many extra bytes were seen (at least one; reading stops early).
        extra: usize,
    },
    /// A page number that breaks the ordering rules.
    #[error("page {pgno} at offset {offset} is out of order: {reason}")]
    PageOrder {
        /// The page number.
        pgno: Pgno,
        /// Logical offset of its page header.
        offset: u64,
        /// Which rule.
        reason: String,
    },
    /// A page beyond the database size the header declares.
    #[error("page {pgno} at offset {offset} is beyond the commit size of {commit} pages")]
    PageBeyondCommit {
        /// The page number.
        pgno: Pgno,
        /// Logical offset of its page header.
        offset: u64,
        /// The header's commit field.
        commit: u32,
    },
    /// The lock page (holding SQLite's PENDING_BYTE) appears in the file.
    #[error("page {pgno} at offset {offset} is the lock page and may not be stored")]
    LockPage {
        /// The page number.
        pgno: Pgno,
        /// Logical offset of its page header.
        offset: u64,
    },
    /// A page buffer of the wrong size was passed.
    #[error("page buffer is {got} bytes, the file's page size is {expected}")]
    PageBufferSize {
        /// The page size.
        expected: usize,
        /// The buffer size.
        got: usize,
    },
    /// A snapshot that does not contain every page up to its commit size.
    #[error("snapshot ends after page {last} at offset {offset} but its commit size is {commit} pages")]
    IncompleteSnapshot {
        /// The last page present (0 for none).
        last: u32,
        /// Logical offset of the end-of-pages marker.
        offset: u64,
        /// The header's commit field.
        commit: u32,
    },
    /// The trailer's post-apply checksum is zero or lacks bit 63.
    #[error("post-apply checksum {checksum} at offset {offset} is not a valid checksum")]
    InvalidPostApplyChecksum {
        /// The value.
        checksum: Checksum,
        /// Logical offset of the trailer.
        offset: u64,
    },
    /// The file checksum in the trailer does not match the bytes.
    #[error("file checksum mismatch at offset {offset}: trailer says {stored}, contents give {computed}")]
    FileChecksumMismatch {
        /// The trailer's value.
        stored: Checksum,
        /// The checksum of the bytes read.
        computed: Checksum,
        /// Logical offset of the file checksum field.
        offset: u64,
    },
    /// A snapshot whose pages do not add up to its post-apply checksum.
    #[error("post-apply checksum mismatch: trailer says {stored}, pages give {computed}")]
    PostApplyChecksumMismatch {
        /// The trailer's value.
        stored: Checksum,
        /// What the pages give.
        computed: Checksum,
    },
    /// A deletion file (commit 0) whose post-apply checksum is not the empty checksum.
    #[error("post-apply checksum {checksum} of a zero-length database must be {}", Checksum::EMPTY)]
    DeletionChecksum {
        /// The post-apply checksum given.
        checksum: Checksum,
    },
    /// The caller's page visitor ([`crate::ltx::verify_visiting`]) failed on a page.
    #[error("handing page {pgno} on failed: {source}")]
    Visit {
        /// The page being handed on.
        pgno: Pgno,
        /// The visitor's error.
        #[source]
        source: io::Error,
    },
    /// The encoder or decoder was used out of order (a programming error in the caller).
    #[error("LTX {role} misuse: {reason}")]
    Misuse {
        /// "encoder" or "decoder".
        role: &'static str,
        /// What was done wrong.
        reason: &'static str,
    },
}

impl LtxError {
    pub(crate) fn io(offset: u64, source: io::Error) -> LtxError {
        LtxError::Io { offset, source }
    }
}
