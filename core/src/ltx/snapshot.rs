//! Snapshots: encoding a whole SQLite database file as one LTX file (TXIDs 1..=max).

use std::io::{Read, Write};

use thiserror::Error;

use crate::ltx::checksum::read_full;
use crate::ltx::encoder::Encoder;
use crate::ltx::error::LtxError;
use crate::ltx::header::{FLAG_COMPRESS_LZ4, Header, Trailer};
use crate::types::{Checksum, PageSize, Pgno, TxId};

/// The 16 bytes every SQLite database starts with.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Size of the SQLite database header.
pub const SQLITE_HEADER_SIZE: usize = 100;

/// What a SQLite database header says about the file's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteHeader {
    /// Page size (offset 16).
    pub page_size: PageSize,
    /// Database size in pages (offset 28), when SQLite marks it valid.
    pub page_count: Option<u32>,
}

/// Why a database could not be read as SQLite, or encoded.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The file is empty.
    #[error("database is empty")]
    Empty,
    /// The file does not start with a SQLite header.
    #[error("not a SQLite database: bad header magic")]
    NotSqlite,
    /// The page size field is not valid.
    #[error("SQLite header has invalid page size {0} at offset 16")]
    InvalidPageSize(u32),
    /// The file is shorter than the header says.
    #[error("database is {size} bytes, shorter than its {pages} pages of {page_size} bytes")]
    Short {
        /// File size.
        size: u64,
        /// Pages the header declares.
        pages: u32,
        /// Page size.
        page_size: PageSize,
    },
    /// Reading the database failed.
    #[error("reading page {pgno} of the database: {source}")]
    Read {
        /// The page being read.
        pgno: u32,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding failed.
    #[error(transparent)]
    Ltx(#[from] LtxError),
}

impl SqliteHeader {
    /// Parses the first 100 bytes of a SQLite database.
    pub fn parse(bytes: &[u8]) -> Result<SqliteHeader, SnapshotError> {
        if bytes.is_empty() {
            return Err(SnapshotError::Empty);
        }
        if bytes.len() < SQLITE_HEADER_SIZE || &bytes[..16] != SQLITE_MAGIC {
            return Err(SnapshotError::NotSqlite);
        }
        let raw = u32::from(u16::from_be_bytes([bytes[16], bytes[17]]));
        let size = if raw == 1 { 65536 } else { raw };
        let page_size = PageSize::new(size).ok_or(SnapshotError::InvalidPageSize(size))?;
        let be32 = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        // SQLite trusts the in-header size only when the change counter matches
        // version-valid-for; otherwise the file size decides.
        let count = be32(28);
        let page_count = (count != 0 && be32(24) == be32(92)).then_some(count);
        Ok(SqliteHeader { page_size, page_count })
    }

    /// The database's size in pages, given the file's size in bytes.
    #[must_use]
    pub fn pages(&self, file_size: u64) -> u32 {
        self.page_count
            .unwrap_or_else(|| u32::try_from(file_size / u64::from(self.page_size.get())).unwrap_or(u32::MAX))
    }
}

/// Options for [`encode_database`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// The TXID the snapshot brings the database to (the header's max TXID).
    pub max_txid: TxId,
    /// Milliseconds since the Unix epoch to stamp the file with.
    pub timestamp_ms: i64,
    /// LZ4-compress the page section.
    pub compress: bool,
}

/// Encodes a SQLite database of `file_size` bytes, read from `db`, as a snapshot LTX file.
pub fn encode_database<R: Read, W: Write>(
    mut db: R,
    file_size: u64,
    out: W,
    options: SnapshotOptions,
) -> Result<(W, Header, Trailer), SnapshotError> {
    let mut first = [0u8; SQLITE_HEADER_SIZE];
    let got = read_full(&mut db, &mut first).map_err(|source| SnapshotError::Read { pgno: 1, source })?;
    let sqlite = SqliteHeader::parse(&first[..got])?;
    let page_size = sqlite.page_size;
    let pages = sqlite.pages(file_size);
    if u64::from(pages) * u64::from(page_size.get()) > file_size {
        return Err(SnapshotError::Short { size: file_size, pages, page_size });
    }

    let mut header = Header::new(page_size, pages, TxId(1), options.max_txid, Checksum::ZERO);
    header.timestamp_ms = options.timestamp_ms;
    if options.compress {
        header.flags |= FLAG_COMPRESS_LZ4;
    }
    let mut encoder = Encoder::new(out, header)?;
    let mut page = vec![0u8; page_size.bytes()];
    page[..SQLITE_HEADER_SIZE].copy_from_slice(&first);
    let lock = page_size.lock_pgno();
    for pgno in 1..=pages {
        let start = if pgno == 1 { SQLITE_HEADER_SIZE } else { 0 };
        let got = read_full(&mut db, &mut page[start..]).map_err(|source| SnapshotError::Read { pgno, source })?;
        if got != page.len() - start {
            return Err(SnapshotError::Short { size: file_size, pages, page_size });
        }
        if Pgno(pgno) != lock {
            encoder.encode_page(Pgno(pgno), &page)?;
        }
    }
    let checksum = encoder.snapshot_checksum();
    let (out, trailer) = encoder.finish(checksum)?;
    Ok((out, header, trailer))
}

/// Whether LZ4 shrinks `sample` to at most [`COMPRESSIBLE_RATIO`] of its size: a writer
/// deciding whether to compress a whole file (LZ4 in LTX v1 is all or nothing per file)
/// from a sample of it. Random or already-compressed pages do not shrink, and compressing
/// them only costs CPU on both ends.
#[must_use]
pub fn compresses_well(sample: &[u8]) -> bool {
    if sample.is_empty() {
        return false;
    }
    let compressed = lz4_flex::block::compress(sample).len() as u64;
    compressed * COMPRESSIBLE_RATIO.1 <= sample.len() as u64 * COMPRESSIBLE_RATIO.0
}

/// The largest compressed/original ratio (numerator, denominator) at which compressing is
/// worth it: 7/8. Below that saving, the extra pass costs more than the bytes it saves on a
/// local network.
pub const COMPRESSIBLE_RATIO: (u64, u64) = (7, 8);

#[cfg(test)]
mod compress_tests {
    use super::compresses_well;

    #[test]
    fn repetitive_pages_are_worth_compressing_and_random_ones_are_not() {
        let text: Vec<u8> = b"INSERT INTO t VALUES ('hello world');".iter().copied().cycle().take(1 << 16).collect();
        assert!(compresses_well(&text));
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let random: Vec<u8> = (0..1 << 16)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert!(!compresses_well(&random));
        assert!(!compresses_well(&[]));
    }
}
