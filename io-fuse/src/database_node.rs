//! `<db>`: the database file itself, read from the data directory.
//!
//! On the primary, writes reach the file only inside a transaction SQLite can roll back: while
//! a live rollback journal exists, or (WAL mode) while the WAL is open, when the writes are
//! checkpoints of already-captured commits. Anything else comes from a journal mode replite
//! cannot replicate (`journal_mode=OFF` or `MEMORY`) and is refused before it reaches the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use replite_core::types::{PageSize, Pgno};

use crate::error::CaptureError;
use crate::layout::database_path;

/// Offset of the big-endian u16 page size in SQLite's database header (1 means 65536).
const PAGE_SIZE_OFFSET: u64 = 16;

/// A database's backing file, opened to read pages at a commit point.
pub(crate) struct DbFile {
    db: String,
    path: PathBuf,
    file: File,
}

impl DbFile {
    pub(crate) fn open(data_dir: &Path, db: &str) -> Result<DbFile, CaptureError> {
        let path = database_path(data_dir, db);
        let file = File::open(&path).map_err(|e| CaptureError::io(&path, e))?;
        Ok(DbFile { db: db.to_owned(), path, file })
    }

    /// Reads page `pgno` whole; a short read means the file is shorter than SQLite said.
    pub(crate) fn read_page(&self, pgno: Pgno, page_size: PageSize, buf: &mut [u8]) -> Result<(), CaptureError> {
        self.file.read_exact_at(buf, pgno.offset(page_size)).map_err(|e| CaptureError::io(&self.path, e))
    }

    /// The file's size in whole pages.
    pub(crate) fn pages(&self, page_size: PageSize) -> Result<u32, CaptureError> {
        let size = self.file.metadata().map_err(|e| CaptureError::io(&self.path, e))?.len();
        let db = self.db.clone();
        if !size.is_multiple_of(u64::from(page_size.get())) {
            return Err(CaptureError::PartialPage { db, size, page_size: page_size.get() });
        }
        u32::try_from(size / u64::from(page_size.get())).map_err(|_| CaptureError::PartialPage {
            db,
            size,
            page_size: page_size.get(),
        })
    }

    /// The database size in pages after the last transaction: the header's in-header size
    /// when SQLite marked it valid (it always does since 3.7.0), else the file's size. SQLite
    /// shrinks the file only after the commit point, so the file may still be longer.
    pub(crate) fn commit_pages(&self, page_size: PageSize) -> Result<u32, CaptureError> {
        let mut header = [0u8; 100];
        match self.file.read_exact_at(&mut header, 0) {
            Ok(()) => {
                let field =
                    |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
                let (change_counter, size, valid_for) = (field(24), field(28), field(92));
                if size != 0 && valid_for == change_counter {
                    return Ok(size);
                }
                self.pages(page_size)
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => self.pages(page_size),
            Err(e) => Err(CaptureError::io(&self.path, e)),
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}

/// Offsets of the file format write and read versions in the database header: 1 is a
/// rollback journal, 2 is WAL.
const FORMAT_VERSIONS: std::ops::Range<u64> = 18..20;

/// On a replica, shows a WAL database to readers as a rollback-journal database: the file
/// holds every committed page (applies write it directly, there is never a WAL), so readers
/// need neither a WAL nor a WAL index, and the locks apply takes are the ones they honour.
/// Only the bytes readers see change; the stored file, and so its checksum, keeps the
/// primary's header.
pub(crate) fn present_as_rollback(offset: u64, buf: &mut [u8]) {
    for at in FORMAT_VERSIONS {
        if let Some(i) = at.checked_sub(offset).and_then(|i| usize::try_from(i).ok())
            && let Some(b) = buf.get_mut(i)
            && *b == 2
        {
            *b = 1;
        }
    }
}

/// The page size in the database header; `None` for an empty file.
pub(crate) fn read_page_size(file: &DbFile, db: &str) -> Result<Option<PageSize>, CaptureError> {
    let mut raw = [0u8; 2];
    match file.file().read_exact_at(&mut raw, PAGE_SIZE_OFFSET) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(CaptureError::io(&file.path, e)),
    }
    let size = match u16::from_be_bytes(raw) {
        1 => 65536,
        n => u32::from(n),
    };
    PageSize::new(size).map(Some).ok_or(CaptureError::InvalidPageSize { db: db.to_owned(), size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_readers_see_wal_databases_as_rollback_databases() {
        let mut header = vec![0u8; 100];
        header[18] = 2;
        header[19] = 2;
        present_as_rollback(0, &mut header);
        assert_eq!(&header[18..20], &[1, 1]);
        // A read that starts inside the field or ends before it.
        let mut tail = vec![2u8, 7];
        present_as_rollback(19, &mut tail);
        assert_eq!(tail, vec![1, 7]);
        let mut before = vec![2u8; 18];
        present_as_rollback(0, &mut before);
        assert!(before.iter().all(|&b| b == 2));
    }
}
