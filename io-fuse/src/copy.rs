//! A consistent copy of a database as committed: what a SQLite reader would see at one
//! instant, for snapshots and backups.
//!
//! The copy takes SQLite's own locks through the mount, as a reader would, so no commit can
//! complete while it reads: a SHARED lock on the database (a rollback-journal writer needs
//! EXCLUSIVE to write the file, cache spills included) and, when the database has a WAL, the
//! WAL-index checkpointer and writer locks (no frame is appended, no checkpoint writes the
//! database, the log is not restarted). It waits for a writer that holds them, such as one
//! held at its commit point by the [`crate::CommitSink`]; it never makes anyone else wait on
//! it except writers, which SQLite retries through its busy handler.
//!
//! Under those locks the committed image is one of three:
//! - the database file (up to its committed size);
//! - the database file with a hot journal's originals laid over it, when a transaction died
//!   (crash, or refused at its commit point) after writing pages: what SQLite's rollback
//!   would restore, read without writing anything;
//! - the database file with the WAL's committed frames laid over it (the last copy of each
//!   page up to the last valid commit frame).
//!
//! Pages are read and written one at a time.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use replite_core::ltx::DatabaseChecksum;
use replite_core::types::{Checksum, PageSize, Pgno};
use tracing::debug;

use crate::error::CopyError;
use crate::journal_node::{self, HotJournal};
use crate::locks::{self, Kind, PENDING_BYTE, RESERVED_BYTE, SHARED_FIRST, SHARED_SIZE, WAL_CKPT_LOCK, WAL_WRITE_LOCK};
use crate::mount::Mount;
use crate::names::{NodeKind, classify, mount_name};
use crate::wal_node::{self, CommittedWal};

/// What [`Mount::copy_committed`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedCopy {
    /// The database's page size.
    pub page_size: PageSize,
    /// The database's size in pages (the copy is exactly this many pages long).
    pub pages: u32,
    /// The database checksum of the copy, as `replite_core::ltx` computes it (the lock page
    /// excluded): the checksum of the position the copy is at.
    pub checksum: Checksum,
}

/// Offset of the file format write version in the database header: 2 is WAL.
const WRITE_VERSION_OFFSET: usize = 18;
/// Bytes of SQLite's database header.
const HEADER_BYTES: usize = 100;

/// Where the committed image's pages come from.
enum Image {
    /// The database file as it is.
    File,
    /// A hot journal's originals over the database file.
    RolledBack { journal: File, hot: HotJournal },
    /// The WAL's committed frames over the database file.
    Wal { wal: File, committed: CommittedWal },
}

impl Mount {
    /// Writes to `dest` (a plain file outside the mount, created or truncated, then fsynced)
    /// exactly the image of database `db` a SQLite reader would see as committed at one
    /// instant: never a page of an uncommitted transaction, and in WAL mode the database file
    /// with the WAL's committed frames laid over it.
    ///
    /// Takes SQLite's locks through the mount as a reader does (see the module docs), so it
    /// waits for a writer in the middle of a commit, including one held at its commit point
    /// by the sink; writers wait for it in turn. The locks are released before the copy is
    /// fsynced and this returns. Works on a primary and on a replica (where it waits for an
    /// [`Mount::apply_ltx`] in progress). Memory stays at a page plus an offset per page a
    /// hot journal or the WAL holds. Call it from a thread that may block (`spawn_blocking`),
    /// and never make the [`crate::CommitSink`]'s answer wait for a copy: the copy waits for
    /// the commit.
    pub fn copy_committed(&self, db: &str, dest: &Path) -> Result<CommittedCopy, CopyError> {
        match classify(db) {
            Some((NodeKind::Database, name)) if name == db => {}
            _ => return Err(CopyError::InvalidName { db: db.to_owned() }),
        }
        let lock_err = |step| move |source| CopyError::Lock { db: db.to_owned(), step, source };
        let io_err = |step, path: &Path| {
            let path = path.to_owned();
            move |source| CopyError::Io { db: db.to_owned(), step, path, source }
        };

        // A reader's SHARED lock: PENDING first, so a writer waiting for readers to drain is
        // not starved by this one, then the SHARED range, then PENDING released.
        let locker = match File::open(self.mountpoint.join(db)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CopyError::Missing { db: db.to_owned() }),
            Err(e) => return Err(lock_err("open through the mount")(e)),
        };
        locks::lock_wait(&locker, Kind::Read, PENDING_BYTE, 1).map_err(lock_err("PENDING lock"))?;
        locks::lock_wait(&locker, Kind::Read, SHARED_FIRST, SHARED_SIZE).map_err(lock_err("SHARED lock"))?;
        locks::unlock(&locker, PENDING_BYTE, 1).map_err(lock_err("PENDING unlock"))?;

        let db_path = self.shared.database_path(db);
        let database = File::open(&db_path).map_err(io_err("open the database file", &db_path))?;
        let mut header = [0u8; HEADER_BYTES];
        let header_len = read_full_at(&database, &mut header, 0).map_err(io_err("read the header", &db_path))?;
        let header = &header[..header_len];

        let wal_path = self.shared.wal_path(db);
        let header_says_wal = header.get(WRITE_VERSION_OFFSET) == Some(&2);
        // A WAL that exists is read whatever the header says (SQLite opens it too). A primary
        // whose header says WAL may have a writer about to create one; a replica cannot.
        let wal_in_use = wal_path.exists() || (header_says_wal && self.shared.is_primary());
        let wal_index = if wal_in_use { self.lock_wal_index(db)? } else { None };

        let image = if wal_in_use {
            match File::open(&wal_path) {
                Ok(wal) => match wal_node::read_committed(&wal).map_err(io_err("read the WAL", &wal_path))? {
                    Some(committed) => Image::Wal { wal, committed },
                    None => Image::File,
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => Image::File,
                Err(e) => return Err(io_err("open the WAL", &wal_path)(e)),
            }
        } else {
            self.hot_journal(db, &locker)?
        };

        let header_page_size = page_size_of(header);
        let (page_size, pages) = match &image {
            Image::Wal { committed, .. } => (committed.page_size, committed.commit),
            Image::RolledBack { hot, .. } => (hot.page_size, hot.orig_pages),
            Image::File => {
                let Some(page_size) = header_page_size else { return Err(CopyError::Empty { db: db.to_owned() }) };
                let size = database.metadata().map_err(io_err("size the database file", &db_path))?.len();
                (page_size, committed_pages(header, size, page_size))
            }
        };
        if header_page_size.is_some_and(|p| p != page_size) {
            let reason = format!("page size {page_size} differs from the database header's");
            return Err(CopyError::Invalid { db: db.to_owned(), step: "choose the page size", reason });
        }
        if pages == 0 {
            return Err(CopyError::Empty { db: db.to_owned() });
        }

        let out = OpenOptions::new().write(true).create(true).truncate(true).open(dest);
        let out = out.map_err(io_err("create the copy", dest))?;
        let mut out = io::BufWriter::with_capacity(page_size.bytes().max(64 * 1024), out);
        let mut sum = DatabaseChecksum::new(page_size);
        let mut page = vec![0u8; page_size.bytes()];
        let journal_path = self.shared.journal_path(db);
        for pgno in 1..=pages {
            let from_overlay = match &image {
                Image::File => false,
                Image::RolledBack { journal, hot } => {
                    hot.read_original(journal, pgno, &mut page).map_err(io_err("read the journal", &journal_path))?
                }
                Image::Wal { wal, committed } => match committed.pages.get(&pgno) {
                    Some(&offset) => {
                        wal.read_exact_at(&mut page, offset).map_err(io_err("read the WAL", &wal_path))?;
                        true
                    }
                    None => false,
                },
            };
            if !from_overlay {
                // Past the end of the file SQLite reads zeros, and so does the copy.
                let offset = Pgno(pgno).offset(page_size);
                let n = read_full_at(&database, &mut page, offset).map_err(io_err("read the database", &db_path))?;
                page[n..].fill(0);
            }
            sum.toggle_page(Pgno(pgno), &page);
            out.write_all(&page).map_err(io_err("write the copy", dest))?;
        }
        let out = out.into_inner().map_err(|e| io_err("write the copy", dest)(e.into_error()))?;
        // Everything is read: let writers go before the (slow) fsync.
        drop(wal_index);
        drop(locker);
        out.sync_all().map_err(io_err("fsync the copy", dest))?;
        let source = match image {
            Image::File => "database",
            Image::RolledBack { .. } => "database and hot journal",
            Image::Wal { .. } => "database and WAL",
        };
        debug!(db, pages, checksum = %sum.value(), source, "copied committed database");
        Ok(CommittedCopy { page_size, pages, checksum: sum.value() })
    }

    /// Takes the WAL-index checkpointer and writer locks of `db`, on a descriptor of its
    /// `-shm` opened through the mount (and created there on a primary, so that a connection
    /// about to start using the WAL finds them taken). `None` when there is no `-shm` on a
    /// replica: no connection is using the WAL then, and none may write one.
    ///
    /// The checkpointer lock comes first: a checkpointer holding it may wait (in SQLite's
    /// busy handler) for the writer lock, never the other way round.
    fn lock_wal_index(&self, db: &str) -> Result<Option<File>, CopyError> {
        let lock_err = |step| move |source| CopyError::Lock { db: db.to_owned(), step, source };
        let path = self.mountpoint.join(mount_name(NodeKind::Shm, db));
        let shm = OpenOptions::new().read(true).write(true).create(self.shared.is_primary()).open(path);
        let shm = match shm {
            Ok(shm) => shm,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(lock_err("open the WAL index through the mount")(e)),
        };
        locks::lock_wait(&shm, Kind::Write, WAL_CKPT_LOCK, 1).map_err(lock_err("WAL checkpoint lock"))?;
        locks::lock_wait(&shm, Kind::Write, WAL_WRITE_LOCK, 1).map_err(lock_err("WAL write lock"))?;
        Ok(Some(shm))
    }

    /// The image under a SHARED lock in rollback-journal mode: the file, unless a hot
    /// journal says it holds pages of a transaction that never committed. A live journal
    /// whose writer still holds RESERVED is not hot: that writer cannot have written the
    /// database (it would hold EXCLUSIVE, and this copy could not hold SHARED).
    fn hot_journal(&self, db: &str, locker: &File) -> Result<Image, CopyError> {
        let path = self.shared.journal_path(db);
        let journal = match File::open(&path) {
            Ok(journal) => journal,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Image::File),
            Err(e) => return Err(CopyError::Io { db: db.to_owned(), step: "open the journal", path, source: e }),
        };
        let reserved = locks::is_locked(locker, RESERVED_BYTE, 1).map_err(|source| CopyError::Lock {
            db: db.to_owned(),
            step: "test the RESERVED lock",
            source,
        })?;
        if reserved {
            return Ok(Image::File);
        }
        match journal_node::read_hot(&journal) {
            Ok(Some(hot)) => Ok(Image::RolledBack { journal, hot }),
            Ok(None) => Ok(Image::File),
            Err(source) => Err(CopyError::Io { db: db.to_owned(), step: "read the journal", path, source }),
        }
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The page size in a database header, if it has a valid one.
fn page_size_of(header: &[u8]) -> Option<PageSize> {
    let raw = u16::from_be_bytes([*header.get(16)?, *header.get(17)?]);
    PageSize::new(if raw == 1 { 65536 } else { u32::from(raw) })
}

/// The committed size in pages of a database file of `size` bytes: the in-header size when
/// SQLite marked it valid (the change counter matches version-valid-for), else the whole pages
/// of the file, as SQLite itself decides (`lockBtree`).
fn committed_pages(header: &[u8], size: u64, page_size: PageSize) -> u32 {
    let field = |at: usize| header.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    match (field(24), field(28), field(92)) {
        (Some(change_counter), Some(pages), Some(valid_for)) if pages != 0 && valid_for == change_counter => pages,
        _ => u32::try_from(size / u64::from(page_size.get())).unwrap_or(u32::MAX),
    }
}
