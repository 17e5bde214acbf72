//! Applying LTX files to a database file, checking the checksum chain on both sides.
//!
//! The database is reached through [`PageFile`], so this module does no I/O of its own: the
//! daemon hands it a real file, tests and the simulator an in-memory one.

use std::io::{self, Read};

use thiserror::Error;

use crate::ltx::checksum::DatabaseChecksum;
use crate::ltx::decoder::Decoder;
use crate::ltx::error::LtxError;
use crate::types::{Checksum, PageSize, Pgno, Pos};

/// Positioned access to a database file.
pub trait PageFile {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer only at end of file).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// The file's size in bytes.
    fn size(&mut self) -> io::Result<u64>;
    /// Truncates or extends the file to `size` bytes.
    fn set_size(&mut self, size: u64) -> io::Result<()>;
}

/// An in-memory database file.
impl PageFile for Vec<u8> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.checked_add(buf.len()).ok_or_else(|| io::Error::other("offset overflow"))?;
        if end > self.len() {
            self.resize(end, 0);
        }
        self[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn size(&mut self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn set_size(&mut self, size: u64) -> io::Result<()> {
        self.resize(usize::try_from(size).map_err(io::Error::other)?, 0);
        Ok(())
    }
}

/// Why an LTX file could not be applied.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The LTX file is malformed. If `database_modified`, pages were already written.
    #[error("{source}{}", if *.database_modified { " (the database was partly modified and must be restored)" } else { "" })]
    Ltx {
        /// The decoding error.
        #[source]
        source: LtxError,
        /// Whether any page had been written when it was found.
        database_modified: bool,
    },
    /// The database is not where the LTX file starts from. Nothing was written.
    #[error("pre-apply checksum mismatch: database is at {database}, LTX file expects {expected}")]
    PreApplyMismatch {
        /// The database's checksum.
        database: Checksum,
        /// The LTX header's pre-apply checksum.
        expected: Checksum,
    },
    /// The database's size is not a whole number of the LTX file's pages. Nothing was written.
    #[error("database size {size} is not a multiple of the LTX page size {page_size}")]
    PageSizeMismatch {
        /// Database size in bytes.
        size: u64,
        /// LTX page size.
        page_size: PageSize,
    },
    /// After applying, the database checksum is not the trailer's post-apply checksum.
    #[error(
        "post-apply checksum mismatch: database is now at {database}, LTX file says {expected} (the database must be restored)"
    )]
    PostApplyMismatch {
        /// What the database now sums to.
        database: Checksum,
        /// The trailer's post-apply checksum.
        expected: Checksum,
    },
    /// Reading or writing the database failed.
    #[error("database {op} failed at offset {offset}: {source}")]
    Io {
        /// "read", "write", "size" or "truncate".
        op: &'static str,
        /// Database offset.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Applies one LTX file to `db`, whose current checksum is `current` (ignored for a snapshot,
/// which replaces the whole database). Returns the new position.
///
/// A file whose pre-apply checksum does not match is refused before anything is written. A
/// file found corrupt half-way leaves the database partly written: callers that must never
/// see that run [`crate::ltx::verify`] over the file first (the daemon persists and verifies
/// every LTX before applying it).
pub fn apply<R: Read, F: PageFile + ?Sized>(db: &mut F, current: Checksum, ltx: R) -> Result<Pos, ApplyError> {
    let not_modified = |source| ApplyError::Ltx { source, database_modified: false };
    let mut decoder = Decoder::new(ltx).map_err(not_modified)?;
    let header = *decoder.header();
    let page_size = header.page_size;
    let old_size = db.size().map_err(|source| ApplyError::Io { op: "size", offset: 0, source })?;
    let snapshot = header.is_snapshot();
    if header.commit == 0 {
        return apply_drop(db, current, &header, decoder);
    }
    if !snapshot {
        if current != header.pre_apply_checksum {
            return Err(ApplyError::PreApplyMismatch { database: current, expected: header.pre_apply_checksum });
        }
        if old_size % u64::from(page_size.get()) != 0 {
            return Err(ApplyError::PageSizeMismatch { size: old_size, page_size });
        }
    }
    let old_pages = old_size / u64::from(page_size.get());
    let mut sum =
        if snapshot { DatabaseChecksum::new(page_size) } else { DatabaseChecksum::from_checksum(page_size, current) };

    let mut page = vec![0u8; page_size.bytes()];
    let mut old = vec![0u8; page_size.bytes()];
    let mut modified = false;
    loop {
        let next =
            decoder.next_page(&mut page).map_err(|source| ApplyError::Ltx { source, database_modified: modified })?;
        let Some(pgno) = next else { break };
        let offset = pgno.offset(page_size);
        if !snapshot && u64::from(pgno.0) <= old_pages {
            read_page(db, offset, &mut old)?;
            sum.toggle_page(pgno, &old);
        }
        sum.toggle_page(pgno, &page);
        db.write_at(offset, &page).map_err(|source| ApplyError::Io { op: "write", offset, source })?;
        modified = true;
    }

    let commit = u64::from(header.commit);
    if !snapshot {
        // Pages cut off by a shrinking transaction leave the checksum too.
        for pgno in (commit + 1)..=old_pages {
            let pgno = Pgno(u32::try_from(pgno).expect("old_pages came from a u32 page count range"));
            let offset = pgno.offset(page_size);
            read_page(db, offset, &mut old)?;
            sum.toggle_page(pgno, &old);
        }
    }
    let new_size = commit * u64::from(page_size.get());
    db.set_size(new_size).map_err(|source| ApplyError::Io { op: "truncate", offset: new_size, source })?;

    let trailer = decoder.trailer().expect("decoder verified the trailer before returning None");
    if sum.value() != trailer.post_apply_checksum {
        return Err(ApplyError::PostApplyMismatch { database: sum.value(), expected: trailer.post_apply_checksum });
    }
    Ok(Pos::new(header.max_txid, trailer.post_apply_checksum))
}

/// A file with commit size zero deletes the database (LiteFS's drop): the database becomes
/// empty whatever its page size was, so its pages are not read with the file's page size
/// (which, for a drop, need not be the database's).
fn apply_drop<R: Read, F: PageFile + ?Sized>(
    db: &mut F,
    current: Checksum,
    header: &crate::ltx::Header,
    mut decoder: Decoder<R>,
) -> Result<Pos, ApplyError> {
    if !header.is_snapshot() && current != header.pre_apply_checksum {
        return Err(ApplyError::PreApplyMismatch { database: current, expected: header.pre_apply_checksum });
    }
    let mut page = vec![0u8; header.page_size.bytes()];
    // The decoder refuses a page past the commit size, so this reads to the trailer and
    // checks the file's checksum.
    decoder.next_page(&mut page).map_err(|source| ApplyError::Ltx { source, database_modified: false })?;
    db.set_size(0).map_err(|source| ApplyError::Io { op: "truncate", offset: 0, source })?;
    let trailer = decoder.trailer().expect("decoder verified the trailer before returning None");
    Ok(Pos::new(header.max_txid, trailer.post_apply_checksum))
}

fn read_page<F: PageFile + ?Sized>(db: &mut F, offset: u64, buf: &mut [u8]) -> Result<(), ApplyError> {
    let n = db.read_at(offset, buf).map_err(|source| ApplyError::Io { op: "read", offset, source })?;
    // A page inside the file's size reads whole; a short read means the file changed under us.
    if n != buf.len() {
        return Err(ApplyError::Io { op: "read", offset, source: io::Error::from(io::ErrorKind::UnexpectedEof) });
    }
    Ok(())
}
