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

/// Offsets of the big-endian u32 file change counter and of the "version-valid-for" number,
/// which SQLite keeps equal to it (the in-header database size is trusted only then).
const CHANGE_COUNTER: u64 = 24;
const VERSION_VALID_FOR: u64 = 92;

/// What a replica's readers see of the database header: see [`present_to_replica`].
pub(crate) const PRESENTED_HEADER: std::ops::Range<u64> = CHANGE_COUNTER..VERSION_VALID_FOR + 4;

/// On a replica, shows readers the database with `version` as its change counter. Only the
/// bytes readers see change; the stored file, and so its checksum, keeps the primary's header.
///
/// The journal mode is shown as stored: a WAL primary's database is read in WAL mode on its
/// replicas too (applies write its pages into the file and restart the WAL index; decision
/// 0015). Until session 8 it was shown as a rollback database, and read at rollback-mode
/// speed (0.4 of WAL reads).
///
/// The change counter: a rollback-mode reader keeps its page cache between transactions while
/// bytes 24..40 of the file are unchanged (`sqlite3PagerSharedLock` compares them with the
/// copy it read last). A rollback-mode primary bumps the counter at every commit, but a
/// WAL-mode primary only when page 1 is among the frames it writes (`pagerWalFrames`), so
/// most of its transactions leave bytes 24..40 as they were and a replica reader would keep
/// serving stale cached pages. The mount gives each database a new `version` at every apply
/// (`Shared::replica_version`); "version-valid-for" shows the same number, so the in-header
/// size stays trusted (a replica's file is exactly that size: apply sets it).
pub(crate) fn present_to_replica(offset: u64, buf: &mut [u8], version: u32) {
    for field in [CHANGE_COUNTER, VERSION_VALID_FOR] {
        for (at, value) in (field..).zip(version.to_be_bytes()) {
            if let Some(b) = byte_at(offset, buf, at) {
                *b = value;
            }
        }
    }
}

/// The byte of `buf` (read at `offset`) that sits at file offset `at`, if the read covered it.
fn byte_at(offset: u64, buf: &mut [u8], at: u64) -> Option<&mut u8> {
    at.checked_sub(offset).and_then(|i| usize::try_from(i).ok()).and_then(|i| buf.get_mut(i))
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
    fn replica_readers_see_the_journal_mode_as_stored() {
        let mut header = vec![0u8; 100];
        header[18] = 2;
        header[19] = 2;
        present_to_replica(0, &mut header, 7);
        assert_eq!(&header[18..20], &[2, 2]);
    }

    #[test]
    fn replica_readers_see_the_mounts_version_as_the_change_counter() {
        let mut header = vec![0xeeu8; 4096];
        present_to_replica(0, &mut header, 0x0102_0304);
        assert_eq!(&header[24..28], &[1, 2, 3, 4]);
        assert_eq!(&header[92..96], &[1, 2, 3, 4]);
        assert!(header[28..92].iter().all(|&b| b == 0xee), "the size and freelist fields stay");
        // A read that covers only part of a field gets that part.
        let mut part = vec![0xeeu8; 4];
        present_to_replica(26, &mut part, 0x0102_0304);
        assert_eq!(part, vec![3, 4, 0xee, 0xee]);
        // Reads past the header are untouched.
        let mut page2 = vec![0xeeu8; 4096];
        present_to_replica(4096, &mut page2, 0x0102_0304);
        assert!(page2.iter().all(|&b| b == 0xee));
    }
}
