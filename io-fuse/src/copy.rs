//! A consistent copy of a database as committed: what a SQLite reader would see at one
//! instant, for snapshots and backups.
//!
//! The copy never waits for a writer: in synchronous replication a commit held at its commit
//! point waits for replicas, and a replica may be waiting for this copy. It takes SQLite's
//! locks through the mount only where no writer holds them, and reads around a writer
//! otherwise (docs/decisions/fuse-copy-committed.md has the argument for each case):
//! - rollback journal, nobody holding PENDING or EXCLUSIVE: a reader's SHARED lock, then the
//!   database file (with a hot journal's originals laid over it, when a transaction died
//!   after writing pages: what SQLite's rollback would restore);
//! - rollback journal, a writer holding PENDING or EXCLUSIVE: every page of the file, then
//!   the live journal's originals (and the originals of pages SQLite wrote unjournaled, which
//!   the mount kept) over them: the state before that transaction. The end of a journal waits
//!   for such a copy, after the sink has answered;
//! - WAL: the checkpointer lock and read mark 1 on the WAL index (no checkpoint writes the
//!   database or truncates the WAL, no writer restarts it), then the database file with the
//!   WAL's frames up to the index's `mxFrame` laid over it. A commit frame held at its commit
//!   point is past `mxFrame`: SQLite publishes a commit in the index only after the write.
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
use crate::locks::{
    self, Kind, PENDING_BYTE, RESERVED_BYTE, SHARED_FIRST, SHARED_SIZE, WAL_CKPT_LOCK, WAL_READ_MARK_1,
};
use crate::mount::Mount;
use crate::names::{NodeKind, classify, mount_name};
use crate::shared::lock;
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
    /// Never waits for a writer on a primary, even one held at its commit point by the sink:
    /// it then shows the state before that commit (see the module docs). It waits only for a
    /// checkpoint in progress, and on a replica for an [`Mount::apply_ltx`] in progress.
    /// Writers may wait for it (SQLite's busy handler; the end of a rollback journal, after
    /// the sink's answer). The locks are released before the copy is fsynced and this
    /// returns. Memory stays at a page plus an offset per page a journal or the WAL holds.
    /// Call it from a thread that may block (`spawn_blocking`). A copy around a writer fails
    /// (`CopyError::Invalid`) when that writer's transaction wrote more unjournaled pages
    /// than the mount keeps originals for; a later copy succeeds.
    pub fn copy_committed(&self, db: &str, dest: &Path) -> Result<CommittedCopy, CopyError> {
        self.copy_image(db, dest, None).map(|(copy, _)| copy)
    }

    /// [`Mount::copy_committed`], handing the image to `sink` instead of writing it to a
    /// file where it can (decision 0010): under the same locks, a first pass over the image
    /// computes its checksum ([`CopySink::begin`], which may resolve the position it is at;
    /// skipped when the image is the primary's last commit, see [`CopySink::begin`]), and
    /// a second pass hands its pages over in order ([`CopySink::pages`]). The locks are
    /// held until the sink has taken the last page, so a sink that cannot keep up should
    /// put the rest aside rather than wait (writers wait for the copy). Around a writer (a
    /// rollback transaction holding PENDING or EXCLUSIVE) the image is only known once the
    /// file is copied: it is then written to `dest` as [`Mount::copy_committed`] does, and
    /// the result says so ([`CopiedTo::File`]); the sink is not called.
    pub fn stream_committed(
        &self,
        db: &str,
        dest: &Path,
        sink: &mut dyn CopySink,
    ) -> Result<(CommittedCopy, CopiedTo), CopyError> {
        self.copy_image(db, dest, Some(sink))
    }

    fn copy_image(
        &self,
        db: &str,
        dest: &Path,
        sink: Option<&mut dyn CopySink>,
    ) -> Result<(CommittedCopy, CopiedTo), CopyError> {
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
        // not starved by this one, then the SHARED range, then PENDING released. On a primary
        // only if nobody holds PENDING or EXCLUSIVE (a writer, perhaps held at its commit point
        // by the sink): the copy then reads around that writer's journal instead of waiting.
        // On a replica nothing holds a commit, and an apply writes without a journal: wait.
        let locker = match File::open(self.mountpoint.join(db)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CopyError::Missing { db: db.to_owned() }),
            Err(e) => return Err(lock_err("open through the mount")(e)),
        };
        let shared = if self.shared.writes(db) {
            let pending = locks::try_lock(&locker, Kind::Read, PENDING_BYTE, 1).map_err(lock_err("PENDING lock"))?;
            let shared = pending
                && locks::try_lock(&locker, Kind::Read, SHARED_FIRST, SHARED_SIZE).map_err(lock_err("SHARED lock"))?;
            if pending {
                locks::unlock(&locker, PENDING_BYTE, 1).map_err(lock_err("PENDING unlock"))?;
            }
            shared
        } else {
            locks::lock_wait(&locker, Kind::Read, PENDING_BYTE, 1).map_err(lock_err("PENDING lock"))?;
            locks::lock_wait(&locker, Kind::Read, SHARED_FIRST, SHARED_SIZE).map_err(lock_err("SHARED lock"))?;
            locks::unlock(&locker, PENDING_BYTE, 1).map_err(lock_err("PENDING unlock"))?;
            true
        };
        let locker = if shared {
            // Closing descriptors of the database is safe now: nobody holds EXCLUSIVE (see
            // `park_locker`).
            lock(&self.parked_lockers).remove(db);
            Some(locker)
        } else {
            self.park_locker(db, locker);
            None
        };

        let db_path = self.shared.database_path(db);
        let database = File::open(&db_path).map_err(io_err("open the database file", &db_path))?;
        let mut header = [0u8; HEADER_BYTES];
        let header_len = read_full_at(&database, &mut header, 0).map_err(io_err("read the header", &db_path))?;
        let header = &header[..header_len];

        let wal_path = self.shared.wal_path(db);
        let header_says_wal = header.get(WRITE_VERSION_OFFSET) == Some(&2);
        // A WAL that exists is read whatever the header says (SQLite opens it too). A primary
        // whose header says WAL may have a writer about to create one. On a replica the WAL
        // stays empty, but applies to a database read in WAL mode keep copies out with the WAL
        // index's locks, not EXCLUSIVE (`replica.rs`), so a copy takes those too.
        let wal_in_use = wal_path.exists() || header_says_wal;
        if !shared && !wal_in_use {
            return self.copy_around_writer(db, &database, dest).map(|copy| (copy, CopiedTo::File));
        }
        let wal_index = if wal_in_use { self.lock_wal_index(db, header_says_wal)? } else { None };
        // Read again under the WAL-index locks: a checkpoint may have rewritten page 1 since.
        let mut header = [0u8; HEADER_BYTES];
        let header_len = read_full_at(&database, &mut header, 0).map_err(io_err("read the header", &db_path))?;
        let header = &header[..header_len];

        let image = if wal_in_use {
            // The last frame SQLite published to readers; without an index, WAL recovery's
            // answer (nobody can be writing then: a writer needs the index).
            let max_frame = match &wal_index {
                Some(shm) => wal_node::read_index_max_frame(shm).map_err(lock_err("read the WAL index header"))?,
                None => None,
            };
            match File::open(&wal_path) {
                Ok(wal) => {
                    match wal_node::read_committed(&wal, max_frame).map_err(io_err("read the WAL", &wal_path))? {
                        Some(committed) => Image::Wal { wal, committed },
                        None => Image::File,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Image::File,
                Err(e) => return Err(io_err("open the WAL", &wal_path)(e)),
            }
        } else {
            let locker = locker.as_ref().expect("rollback mode without SHARED copies around the writer");
            self.hot_journal(db, locker)?
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

        let journal_path = self.shared.journal_path(db);
        let paths = [db_path.as_path(), journal_path.as_path(), wal_path.as_path()];
        let reader = ImageReader { db, image: &image, database: &database, paths, page_size, pages };
        let mut run = vec![0u8; page_size.bytes() * reader.run_pages()];
        let mut sum = DatabaseChecksum::new(page_size);
        let to = if let Some(sink) = sink {
            let sink_err =
                |step| move |source| CopyError::Io { db: db.to_owned(), step, path: dest.to_owned(), source };
            // With SHARED held on a primary in rollback mode, no writer holds EXCLUSIVE, so
            // every commit the sink accepted has ended its journal and none can write the
            // file: the image is the node's last commit, and the position needs no checksum.
            // In WAL mode commits go on meanwhile (one the sink accepted may not be in the
            // index yet): a first pass computes the checksum that names the position.
            let last_commit = shared && !wal_in_use && self.shared.writes(db);
            let announced = if last_commit {
                None
            } else {
                reader.each_run(&mut run, |first, bytes| {
                    toggle_pages(&mut sum, first, bytes, page_size);
                    Ok(())
                })?;
                Some(sum.value())
            };
            sink.begin(page_size, pages, announced).map_err(sink_err("start handing the copy on"))?;
            reader.each_run(&mut run, |first, bytes| {
                if last_commit {
                    toggle_pages(&mut sum, first, bytes, page_size);
                }
                sink.pages(first, bytes).map_err(sink_err("hand the copy on"))
            })?;
            CopiedTo::Sink
        } else {
            let out = OpenOptions::new().write(true).create(true).truncate(true).open(dest);
            let out = out.map_err(io_err("create the copy", dest))?;
            let mut at = 0u64;
            reader.each_run(&mut run, |first, bytes| {
                toggle_pages(&mut sum, first, bytes, page_size);
                out.write_all_at(bytes, at).map_err(io_err("write the copy", dest))?;
                at += bytes.len() as u64;
                Ok(())
            })?;
            // Everything is read: let writers go before the (slow) fsync.
            drop(wal_index);
            drop(locker);
            out.sync_all().map_err(io_err("fsync the copy", dest))?;
            CopiedTo::File
        };
        let source = match image {
            Image::File => "database",
            Image::RolledBack { .. } => "database and hot journal",
            Image::Wal { .. } => "database and WAL",
        };
        debug!(db, pages, checksum = %sum.value(), source, ?to, "copied committed database");
        Ok((CommittedCopy { page_size, pages, checksum: sum.value() }, to))
    }

    /// Takes the WAL-index checkpointer lock of `db` and read mark 1 (shared), on a descriptor
    /// of its `-shm` opened through the mount (and created there on a primary, so that a
    /// connection about to start using the WAL finds them taken). `None` when there is no
    /// `-shm` on a replica: no connection is using the WAL then, and none may write one.
    ///
    /// Not the writer lock: a writer held at its commit point holds it. The checkpointer lock
    /// keeps every checkpoint from writing the database file or truncating the WAL; the read
    /// mark keeps a writer from restarting the log over the frames being read (a restart needs
    /// read marks 1..5 exclusive, and gives up when it cannot have them). A writer appends
    /// frames meanwhile, past `mxFrame`, where the copy does not read.
    ///
    /// The index is created when missing on a primary and on a replica whose database is
    /// read in WAL mode (`header_says_wal`): the locks must exist before anyone reads.
    fn lock_wal_index(&self, db: &str, header_says_wal: bool) -> Result<Option<File>, CopyError> {
        let lock_err = |step| move |source| CopyError::Lock { db: db.to_owned(), step, source };
        let path = self.mountpoint.join(mount_name(NodeKind::Shm, db));
        let create = self.shared.writes(db) || header_says_wal;
        let shm = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path);
        let shm = match shm {
            Ok(shm) => shm,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(lock_err("open the WAL index through the mount")(e)),
        };
        locks::lock_wait(&shm, Kind::Write, WAL_CKPT_LOCK, 1).map_err(lock_err("WAL checkpoint lock"))?;
        locks::lock_wait(&shm, Kind::Read, WAL_READ_MARK_1, 1).map_err(lock_err("WAL read mark lock"))?;
        Ok(Some(shm))
    }

    /// Keeps `locker`, a descriptor of `db` opened through the mount, open until a later copy
    /// holds SHARED on `db` (or the mount goes away). Closing any descriptor of a file drops
    /// every POSIX lock the process holds on it: a SQLite writer in the same process as the
    /// mount (tests, or an application that embeds it) would silently lose its EXCLUSIVE
    /// lock, and the next copy would take SHARED while that writer still writes. While a copy
    /// holds SHARED nobody holds EXCLUSIVE, so closing then loses at most a writer's RESERVED
    /// or PENDING, which SQLite's in-process bookkeeping still enforces between its own
    /// connections. Separate application processes are never affected.
    fn park_locker(&self, db: &str, locker: File) {
        lock(&self.parked_lockers).entry(db.to_owned()).or_default().push(locker);
    }

    /// A copy in rollback mode on a primary while someone holds PENDING or EXCLUSIVE: a writer
    /// that may have written pages of its transaction into the file, and may be held at its
    /// commit point. Without waiting for it: every page of the file first, then the live
    /// journal's originals over them, which gives the state before that transaction
    /// (docs/decisions/fuse-copy-committed.md has the argument). No journal can end meanwhile
    /// (the journal gate, held here, makes the end of a journal wait for the copy, after
    /// the sink's answer), so only one transaction can write the file during the copy, and
    /// it journals each page's original before writing the page.
    fn copy_around_writer(&self, db: &str, database: &File, dest: &Path) -> Result<CommittedCopy, CopyError> {
        let io_err = |step, path: &Path| {
            let path = path.to_owned();
            move |source| CopyError::Io { db: db.to_owned(), step, path, source }
        };
        let gate = self.shared.journal_gate(db);
        let _no_journal_ends = gate.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let db_path = self.shared.database_path(db);
        // Read again now that no journal can end: the header read before may predate the
        // commit of a transaction whose journal has ended since.
        let mut header = [0u8; HEADER_BYTES];
        let header_len = read_full_at(database, &mut header, 0).map_err(io_err("read the header", &db_path))?;
        let header = &header[..header_len];
        let Some(page_size) = page_size_of(header) else { return Err(CopyError::Empty { db: db.to_owned() }) };
        let size = database.metadata().map_err(io_err("size the database file", &db_path))?.len();
        let file_pages = u32::try_from(size / u64::from(page_size.get())).unwrap_or(u32::MAX);

        let out = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dest);
        let out = out.map_err(io_err("create the copy", dest))?;
        let mut sum = DatabaseChecksum::new(page_size);
        let mut page = vec![0u8; page_size.bytes()];
        let mut writer = io::BufWriter::with_capacity(page_size.bytes().max(64 * 1024), &out);
        for pgno in 1..=file_pages {
            let n = read_full_at(database, &mut page, Pgno(pgno).offset(page_size))
                .map_err(io_err("read the database", &db_path))?;
            page[n..].fill(0);
            sum.toggle_page(Pgno(pgno), &page);
            writer.write_all(&page).map_err(io_err("write the copy", dest))?;
        }
        writer.flush().map_err(io_err("write the copy", dest))?;
        drop(writer);

        // Only now the journal: any page written before it was read had its original
        // journaled first.
        let journal_path = self.shared.journal_path(db);
        let journal = match File::open(&journal_path) {
            Ok(journal) => {
                let hot = journal_node::read_hot(&journal).map_err(io_err("read the journal", &journal_path))?;
                hot.map(|hot| (journal, hot))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("open the journal", &journal_path)(e)),
        };
        let pages = match &journal {
            Some((_, hot)) if hot.page_size != page_size => {
                let reason = format!("journal page size {} differs from the database header's", hot.page_size);
                return Err(CopyError::Invalid { db: db.to_owned(), step: "choose the page size", reason });
            }
            Some((_, hot)) => hot.orig_pages,
            // No live journal and none could end: nobody wrote the file during the copy.
            None => committed_pages(header, size, page_size),
        };
        if pages == 0 {
            return Err(CopyError::Empty { db: db.to_owned() });
        }
        let mut copied = vec![0u8; page_size.bytes()];
        let read_copied = |pgno: u32, copied: &mut [u8]| {
            out.read_exact_at(copied, Pgno(pgno).offset(page_size)).map_err(io_err("read the copy", dest))
        };
        // Pages past the size before the transaction leave the copy.
        for pgno in pages.saturating_add(1)..=file_pages {
            read_copied(pgno, &mut copied)?;
            sum.toggle_page(Pgno(pgno), &copied);
        }
        out.set_len(u64::from(pages) * u64::from(page_size.get())).map_err(io_err("size the copy", dest))?;
        // Pages the transaction wrote without a record (reused freelist leaves): the mount kept
        // their originals. None can be added meanwhile: its writer is held or writing pages
        // it journaled... or it is writing these, whose originals are kept before the write.
        let unjournaled = lock(&self.shared.unjournaled);
        let unjournaled = match (&journal, unjournaled.get(db)) {
            (Some(_), Some(u)) if u.incomplete => {
                let reason = "the writer's transaction wrote pages whose originals were not kept".to_owned();
                return Err(CopyError::Invalid { db: db.to_owned(), step: "read around a writer", reason });
            }
            (Some(_), u) => u,
            (None, _) => None,
        };
        // Originals replace what the file held; pages the file lacks are the originals or zeros.
        for pgno in 1..=pages {
            let mut original = match &journal {
                Some((journal, hot)) => {
                    hot.read_original(journal, pgno, &mut page).map_err(io_err("read the journal", &journal_path))?
                }
                None => false,
            };
            if !original && let Some(kept) = unjournaled.and_then(|u| u.original(pgno)) {
                let n = kept.len().min(page.len());
                page[..n].copy_from_slice(&kept[..n]);
                page[n..].fill(0);
                original = true;
            }
            if pgno <= file_pages {
                if !original {
                    continue;
                }
                read_copied(pgno, &mut copied)?;
                sum.toggle_page(Pgno(pgno), &copied);
            } else if !original {
                page.fill(0);
            }
            sum.toggle_page(Pgno(pgno), &page);
            out.write_all_at(&page, Pgno(pgno).offset(page_size)).map_err(io_err("write the copy", dest))?;
        }
        drop(_no_journal_ends);
        out.sync_all().map_err(io_err("fsync the copy", dest))?;
        debug!(db, pages, checksum = %sum.value(), source = "database and live journal", "copied committed database");
        Ok(CommittedCopy { page_size, pages, checksum: sum.value() })
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

/// Where [`Mount::stream_committed`] put the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopiedTo {
    /// Handed to the sink, page by page, under the locks.
    Sink,
    /// Written to the destination file (a copy around a writer).
    File,
}

/// Takes a consistent copy of a database as [`Mount::stream_committed`] reads it, under
/// SQLite's locks: whatever it does, writers wait while it does it.
pub trait CopySink {
    /// The image's page size, size in pages and database checksum (lock page excluded),
    /// before any page: an error stops the copy. The checksum is `None` when the image is
    /// the last commit the sink accepted (rollback journal mode on a primary, SHARED held),
    /// so no pass was spent on it; it is in the result once the pages are handed on.
    fn begin(&mut self, page_size: PageSize, pages: u32, checksum: Option<Checksum>) -> io::Result<()>;
    /// The next pages, from `first` on, whole and in order (the lock page included, as it
    /// is in the file); an error stops the copy.
    fn pages(&mut self, first: Pgno, bytes: &[u8]) -> io::Result<()>;
}

/// Pages read per system call where no overlay (WAL frame, journal original) replaces them:
/// one read per 4 KiB page costs more than copying the page.
const COPY_RUN_BYTES: usize = 1 << 20;

/// Reads the committed image of a database run by run: the database file's bytes with the
/// overlay's pages laid over them, zeros past the file's end.
struct ImageReader<'a> {
    db: &'a str,
    image: &'a Image,
    database: &'a File,
    /// The database file, journal and WAL, for errors.
    paths: [&'a Path; 3],
    page_size: PageSize,
    pages: u32,
}

impl ImageReader<'_> {
    fn run_pages(&self) -> usize {
        (COPY_RUN_BYTES / self.page_size.bytes()).max(1)
    }

    /// Calls `each` with the image's pages in order, up to `run.len()` bytes at a time.
    fn each_run(
        &self,
        run: &mut [u8],
        mut each: impl FnMut(Pgno, &[u8]) -> Result<(), CopyError>,
    ) -> Result<(), CopyError> {
        let io_err = |step, path: &Path| {
            let path = path.to_owned();
            move |source| CopyError::Io { db: self.db.to_owned(), step, path, source }
        };
        let page_bytes = self.page_size.bytes();
        let per_run = u32::try_from(run.len() / page_bytes).expect("a run is at most COPY_RUN_BYTES");
        let mut first = 1u32;
        while first <= self.pages {
            let count = per_run.min(self.pages - first + 1);
            let bytes = &mut run[..count as usize * page_bytes];
            // Past the end of the file SQLite reads zeros, and so does the copy.
            let offset = Pgno(first).offset(self.page_size);
            let n = read_full_at(self.database, bytes, offset).map_err(io_err("read the database", self.paths[0]))?;
            bytes[n..].fill(0);
            for (i, page) in bytes.chunks_exact_mut(page_bytes).enumerate() {
                let pgno = first + i as u32;
                match self.image {
                    Image::File => {}
                    Image::RolledBack { journal, hot } => {
                        hot.read_original(journal, pgno, page).map_err(io_err("read the journal", self.paths[1]))?;
                    }
                    Image::Wal { wal, committed } => {
                        if let Some(&at) = committed.pages.get(&pgno) {
                            wal.read_exact_at(page, at).map_err(io_err("read the WAL", self.paths[2]))?;
                        }
                    }
                }
            }
            each(Pgno(first), bytes)?;
            first += count;
        }
        Ok(())
    }
}

/// Adds pages `first..` in `bytes` to a database checksum.
fn toggle_pages(sum: &mut DatabaseChecksum, first: Pgno, bytes: &[u8], page_size: PageSize) {
    for (i, page) in bytes.chunks_exact(page_size.bytes()).enumerate() {
        sum.toggle_page(Pgno(first.0 + i as u32), page);
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
