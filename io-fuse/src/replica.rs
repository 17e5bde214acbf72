//! Applying replicated transactions on a replica, under the locks SQLite readers honour.
//!
//! The kernel keeps the byte-range locks of the mount (see `file_system`), so the apply takes
//! SQLite's writer locks the way a SQLite writer would, through the mount: the PENDING byte
//! (no new reader may start) and then the whole SHARED range (every reader has finished).
//! It takes them as open-file-description locks, which conflict with SQLite's process-owned
//! locks even inside the same process. Only then does it write the pages to the data
//! directory and drop exactly the changed byte ranges from the kernel's page cache.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use fuser::INodeNo;
use replite_core::ltx::{self, PageFile};
use replite_core::types::{Checksum, Pgno, Pos};
use tracing::{debug, warn};

use crate::demoted_wal::WalGuard;
use crate::error::ApplyLtxError;
use crate::journal_node;
use crate::locks::{self, Kind, PENDING_BYTE, SHARED_FIRST, SHARED_SIZE};
use crate::mount::{DATABASE_HEADER_BYTES, Mount};
use crate::names::{NodeKind, classify, mount_name};
use crate::shared::{ROOT_INO, lock};
use crate::wal_node;

/// Read buffer for applying a stored LTX file: large reads keep a snapshot's apply from
/// being bound by syscalls, small enough not to matter for memory.
const LTX_READ_BUFFER_BYTES: usize = 1 << 20;

/// Contiguous page writes gathered into one write: a snapshot writes every page in order,
/// and one system call per 4 KiB page costs more than copying the bytes.
const WRITE_COMBINE_BYTES: usize = 1 << 20;

/// A database file that remembers which byte ranges were written, for cache invalidation,
/// and gathers contiguous writes (flushed before any read, size change or size query, and
/// by [`RecordingFile::flush`]).
pub(crate) struct RecordingFile {
    pub(crate) file: File,
    pub(crate) writes: Vec<(u64, u64)>,
    pub(crate) truncated_to: Option<u64>,
    pending: Vec<u8>,
    pending_at: u64,
}

impl RecordingFile {
    pub(crate) fn new(file: File) -> RecordingFile {
        RecordingFile { file, writes: Vec::new(), truncated_to: None, pending: Vec::new(), pending_at: 0 }
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all_at(&self.pending, self.pending_at)?;
            self.pending.clear();
        }
        Ok(())
    }
}

impl PageFile for RecordingFile {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.flush()?;
        let mut filled = 0;
        while filled < buf.len() {
            match FileExt::read_at(&self.file, &mut buf[filled..], offset + filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let follows = self.pending_at + self.pending.len() as u64 == offset;
        if !follows || self.pending.len() + buf.len() > WRITE_COMBINE_BYTES {
            self.flush()?;
        }
        if self.pending.is_empty() {
            self.pending_at = offset;
        }
        self.pending.extend_from_slice(buf);
        match self.writes.last_mut() {
            Some((start, len)) if *start + *len == offset => *len += buf.len() as u64,
            _ => self.writes.push((offset, buf.len() as u64)),
        }
        Ok(())
    }

    fn size(&mut self) -> io::Result<u64> {
        self.flush()?;
        Ok(self.file.metadata()?.len())
    }

    fn set_size(&mut self, size: u64) -> io::Result<()> {
        self.flush()?;
        if self.file.metadata()?.len() != size {
            self.file.set_len(size)?;
            self.truncated_to = Some(size);
        }
        Ok(())
    }
}

/// How [`Mount::apply_verified`] changes the database file.
pub(crate) enum Change<'a, R> {
    /// Apply an LTX file, read from `ltx`, to a database at `current`.
    Apply { ltx: R, current: Checksum },
    /// Replace the database by the file at `image`, a whole database at `pos`.
    Replace { image: &'a Path, pos: Pos },
}

impl Mount {
    /// Applies one LTX file to database `db`, whose current checksum is `current`, while no
    /// SQLite reader is inside a read transaction. The file is verified whole before anything
    /// is written. Returns the new position, which `<db>-pos` then shows.
    ///
    /// Its EXCLUSIVE lock also waits for a write transaction begun before a demotion to end
    /// (a SQLite writer holds SHARED as well as RESERVED): that transaction's journal holds
    /// pages from before this apply, and rolling it back afterwards would put them back over
    /// replicated ones. A hot journal left by such a transaction (refused at its commit
    /// point, or its application killed) is rolled back first, as the next SQLite reader
    /// would, and removed durably.
    ///
    /// The daemon calls this only after core decided the file applies (contiguous TXID,
    /// matching checksum); the codec checks the checksum chain again.
    pub fn apply_ltx(&self, db: &str, ltx_bytes: &[u8], current: Checksum) -> Result<Pos, ApplyLtxError> {
        self.check_may_apply(db)?;
        let verified = ltx::verify(ltx_bytes).map_err(|source| ApplyLtxError::Invalid { db: db.to_owned(), source })?;
        if verified.header().commit == 0 {
            return self.apply_drop(db, verified.header(), current);
        }
        self.apply_verified(db, Change::Apply { ltx: ltx_bytes, current }, Locking::Wait).map(waited)
    }

    /// [`Mount::apply_ltx`] if it need not wait: `Ok(None)`, with nothing written, when a
    /// SQLite connection holds a lock the apply needs (a reader inside a read transaction, a
    /// writer), another apply is running, or the database is a drop or has WAL connections
    /// from before a demotion. For a caller that must not block, which then applies the file
    /// with [`Mount::apply_ltx`] on a thread that may.
    pub fn try_apply_ltx(&self, db: &str, ltx_bytes: &[u8], current: Checksum) -> Result<Option<Pos>, ApplyLtxError> {
        self.check_may_apply(db)?;
        let verified = ltx::verify(ltx_bytes).map_err(|source| ApplyLtxError::Invalid { db: db.to_owned(), source })?;
        if verified.header().commit == 0 {
            return Ok(None);
        }
        self.apply_verified(db, Change::Apply { ltx: ltx_bytes, current }, Locking::IfFree)
    }

    /// [`Mount::apply_ltx`] for a stored LTX file the caller verified whole and made durable
    /// before (a file spooled from the primary): it is read page by page, never whole, and
    /// not verified a second time. The apply still checks every page and the post-apply
    /// checksum; a file that rotted on disk since leaves the database partly written and
    /// fails with a mismatch, which the durable LTX file repairs (replay or a new snapshot).
    pub fn apply_ltx_file(&self, db: &str, ltx_path: &Path, current: Checksum) -> Result<Pos, ApplyLtxError> {
        self.check_may_apply(db)?;
        let file = File::open(ltx_path).map_err(|source| ApplyLtxError::Lock {
            db: db.to_owned(),
            step: "open the LTX file",
            source,
        })?;
        // A drop (commit size zero) removes the database instead of writing pages.
        let mut raw = [0u8; ltx::HEADER_SIZE];
        let header = file.read_exact_at(&mut raw, 0).ok().and_then(|()| ltx::Header::decode(&raw).ok());
        if let Some(header) = header.filter(|h| h.commit == 0) {
            return self.apply_drop(db, &header, current);
        }
        let ltx = BufReader::with_capacity(LTX_READ_BUFFER_BYTES, file);
        self.apply_verified(db, Change::Apply { ltx, current }, Locking::Wait).map(waited)
    }

    /// Replaces database `db` with `image`, a whole database at `pos` (a snapshot's pages,
    /// written while its LTX file was verified; the caller made that file durable), under
    /// the same locks as [`Mount::apply_ltx`]: a rename in the data directory, then every
    /// descriptor the mount holds on the old file is moved to the new one and the kernel's
    /// cache of the database is dropped whole. Readers see the old database or the new one.
    /// The image is not fsynced: like an apply's pages, a crash may tear it, and recovery
    /// replays the durable snapshot over it. Returns `pos`.
    pub fn replace_database(&self, db: &str, image: &Path, pos: Pos) -> Result<Pos, ApplyLtxError> {
        self.check_may_apply(db)?;
        let change: Change<'_, io::Empty> = Change::Replace { image, pos };
        self.apply_verified(db, change, Locking::Wait).map(waited)
    }

    /// The kept descriptor of `db` through the mount, opened again when the name now leads
    /// to another inode (a demotion retires the old one, a drop removes it).
    fn apply_locker<'a>(
        &self,
        lockers: &'a mut std::collections::HashMap<String, (u64, File)>,
        db: &str,
    ) -> io::Result<&'a File> {
        let current = self.shared.known_ino(db);
        if lockers.get(db).is_none_or(|(ino, _)| Some(*ino) != current) {
            // Closing the old one first: it held no locks between applies.
            lockers.remove(db);
            let file = OpenOptions::new().read(true).write(true).open(self.mountpoint.join(db))?;
            let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata()?);
            lockers.insert(db.to_owned(), (ino, file));
        }
        Ok(&lockers[db].1)
    }

    fn check_may_apply(&self, db: &str) -> Result<(), ApplyLtxError> {
        match classify(db) {
            Some((NodeKind::Database, name)) if name == db => {}
            _ => return Err(ApplyLtxError::InvalidName { db: db.to_owned() }),
        }
        // On a primary the database file is the applications' to write; pages written behind
        // their back would never be captured.
        if self.shared.writes(db) {
            return Err(ApplyLtxError::Primary { db: db.to_owned() });
        }
        Ok(())
    }

    /// Carries out `change` under the apply's locks; `Ok(None)` only with [`Locking::IfFree`],
    /// when one of them is held by someone else (nothing was written).
    pub(crate) fn apply_verified<R: Read>(
        &self,
        db: &str,
        change: Change<'_, R>,
        locking: Locking,
    ) -> Result<Option<Pos>, ApplyLtxError> {
        let mut lockers = match locking {
            Locking::Wait | Locking::UnderHalt => lock(&self.apply_lock),
            Locking::IfFree => match self.apply_lock.try_lock() {
                Ok(lockers) => lockers,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
            },
        };
        let lock_err = |step| move |source| ApplyLtxError::Lock { db: db.to_owned(), step, source };
        // WAL connections from before a demotion: their guard waits; rare enough to leave to
        // a caller that may.
        if locking == Locking::IfFree && !self.shared.retired_inos(db).is_empty() {
            return Ok(None);
        }

        let backing = self.shared.database_path(db);
        // Opened without O_CREAT (which locks the directory) and without making sure of the
        // directory (`mkdir` locks its parent) unless the database is new: every apply opens it.
        let (target, created) = match OpenOptions::new().read(true).write(true).open(&backing) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.shared.ensure_db_dir(db).map_err(lock_err("create the database directory"))?;
                (OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&backing), true)
            }
            opened => (opened, false),
        };
        let target = target.map_err(lock_err("open data file"))?;
        if created {
            // A database created here must replace the negative entries the kernel may hold.
            for name in [db.to_owned(), format!("{db}-pos")] {
                let _ = self.notifier.inval_entry(INodeNo(ROOT_INO), name.as_ref());
            }
        }

        let locker = self.apply_locker(&mut lockers, db).map_err(lock_err("open through the mount"))?;
        // A database whose page 1 says WAL is read in WAL mode: its connections hold SHARED on
        // the file for as long as they are open, so the apply keeps them out with the WAL
        // index's locks instead of EXCLUSIVE, and PENDING keeps rollback-mode readers from
        // starting (decision 0015).
        let wal_mode = reads_in_wal_mode(&target).map_err(lock_err("read the database header"))?;
        let wait = locking != Locking::IfFree;
        let taken = if wal_mode { HeldLocks::pending(locker, wait) } else { HeldLocks::exclusive(locker, wait) };
        let Some(_held) = taken.map_err(lock_err("EXCLUSIVE lock"))? else { return Ok(None) };

        // WAL connections: kept out by the WAL index's locks, and shown the result by a new
        // index header (`demoted_wal`). Those of a database read in WAL mode, and those opened
        // before a demotion on a database now read in rollback mode.
        let wal_guard = if wal_mode && locking == Locking::UnderHalt {
            Some(WalGuard::lock_index_under_halt(self, db)?)
        } else if wal_mode {
            match WalGuard::lock_index(self, db, wait)? {
                Some(guard) => Some(guard),
                None => return Ok(None),
            }
        } else {
            WalGuard::take(self, db)?
        };

        let mut file = RecordingFile::new(target);
        let applied = match self.roll_back_hot_journal(db, &mut file) {
            Ok(()) => self.fold_published_wal(db, wal_guard.as_ref(), &mut file).and_then(|()| match change {
                Change::Apply { ltx: ltx_source, current } => {
                    ltx::apply(&mut file, current, ltx_source).map_err(|source| {
                        warn!(db, error = %source, "apply failed");
                        ApplyLtxError::Apply { db: db.to_owned(), source }
                    })
                }
                Change::Replace { image, pos } => self.replace_file(db, &mut file, image).map(|()| pos),
            }),
            Err(e) => Err(e),
        };
        // A successful apply ended with a size change, which flushed; after a failure, what
        // was gathered is written too, so the file is what the invalidations below describe.
        let pending_at = file.pending_at;
        let applied = match (applied, file.flush()) {
            (Ok(_), Err(source)) => Err(ApplyLtxError::Apply {
                db: db.to_owned(),
                source: ltx::ApplyError::Io { op: "write", offset: pending_at, source },
            }),
            (applied, _) => applied,
        };
        if let (Some(guard), Ok(_)) = (&wal_guard, &applied) {
            let restarted = crate::demoted_wal::page_count(&file.file)
                .and_then(|pages| guard.restart(pages))
                .and_then(|()| self.after_wal_apply(db, wal_mode, &file.file));
            restarted.map_err(|source| ApplyLtxError::Lock {
                db: db.to_owned(),
                step: "restart the WAL index",
                source,
            })?;
        }
        // Even after a failure (pages may have been written): a new change counter for readers
        // (see `database_node::present_to_replica`), then the kernel's cache of what changed,
        // page 1's header always.
        self.shared.new_replica_version(db);
        let inos = self.shared.known_ino(db).into_iter().chain(self.shared.retired_inos(db));
        for ino in inos {
            let ino = INodeNo(ino);
            if let Err(e) = self.notifier.inval_inode(ino, 0, DATABASE_HEADER_BYTES) {
                debug!(db, error = %e, "page 1 invalidation");
            }
            for &(offset, len) in &file.writes {
                if let Err(e) = self.notifier.inval_inode(ino, offset as i64, len as i64) {
                    debug!(db, error = %e, "page cache invalidation");
                }
            }
            if let Some(size) = file.truncated_to {
                let _ = self.notifier.inval_inode(ino, size as i64, 0);
            } else if file.writes.is_empty() {
                let _ = self.notifier.inval_inode(ino, -1, 0);
            }
        }
        drop(wal_guard);
        drop(_held);
        let pos = applied?;
        self.set_position(db, pos);
        debug!(db, txid = %pos.txid, pages = file.writes.len(), "applied");
        Ok(Some(pos))
    }

    /// Under the WAL index's locks, after an apply: a WAL that still holds frames (a demoted
    /// primary's, just folded) or a database no longer read in WAL mode loses its WAL, after
    /// the database is fsynced, so that no later connection runs recovery over stale frames
    /// or opens the database in WAL mode. A database that left WAL mode with connections still
    /// open has its inode retired, as at a demotion, so that they cannot hold off the
    /// rollback-mode applies that follow.
    fn after_wal_apply(&self, db: &str, was_wal_mode: bool, file: &File) -> io::Result<()> {
        let now_wal_mode = reads_in_wal_mode(file)?;
        let wal_len = match std::fs::metadata(self.shared.wal_path(db)) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if was_wal_mode && !now_wal_mode && self.shared.open_count(db, false) > 0 {
            self.retire_wal_database(db);
        }
        if wal_len > 0 || !now_wal_mode || !self.shared.retired_inos(db).is_empty() {
            file.sync_all()?;
            self.remove_folded_wal(db)?;
        }
        Ok(())
    }

    /// Under the apply's locks: renames `image` over the database file, makes the rename
    /// durable, and points `file` and every handle open on the database at the new file.
    /// `file` then records the whole database as changed (the kernel drops its cache of it).
    fn replace_file(&self, db: &str, file: &mut RecordingFile, image: &Path) -> Result<(), ApplyLtxError> {
        let err = |step| move |source| ApplyLtxError::Replace { db: db.to_owned(), step, source };
        file.flush().map_err(err("write what the hot journal or WAL restored"))?;
        let backing = self.shared.database_path(db);
        std::fs::rename(image, &backing).map_err(err("rename"))?;
        // From here the database is the image: whatever fails below, the kernel's cache of
        // the old file is dropped (by the caller) and the position is not published.
        file.writes.clear();
        file.truncated_to = Some(0);
        let dir = backing.parent().expect("a database file sits in its database's directory");
        File::open(dir).and_then(|d| d.sync_all()).map_err(err("fsync the database directory"))?;
        file.file = OpenOptions::new().read(true).write(true).open(&backing).map_err(err("open the new file"))?;
        let moved = self.shared.reopen_database_handles(db).map_err(err("move open descriptors"))?;
        debug!(db, handles = moved, "replaced the database file with a snapshot's image");
        Ok(())
    }

    /// Under the WAL guard: writes the frames the WAL index publishes (transactions this
    /// node committed as primary, not yet checkpointed) into the database file, so that it
    /// is at the position the apply starts from. Nothing to do without a guard.
    pub(crate) fn fold_published_wal(
        &self,
        db: &str,
        guard: Option<&WalGuard>,
        file: &mut RecordingFile,
    ) -> Result<(), ApplyLtxError> {
        let err = |step| move |source| ApplyLtxError::HotJournal { db: db.to_owned(), step, source };
        let Some(guard) = guard else { return Ok(()) };
        let Some(max_frame) = guard.published_frames().map_err(err("read the WAL index"))?.filter(|&m| m > 0) else {
            return Ok(());
        };
        let wal = match File::open(self.shared.wal_path(db)) {
            Ok(wal) => wal,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err("open the WAL")(e)),
        };
        let Some(committed) = wal_node::read_committed(&wal, Some(max_frame)).map_err(err("read the WAL"))? else {
            return Ok(());
        };
        let mut page = vec![0u8; committed.page_size.bytes()];
        for (&pgno, &offset) in &committed.pages {
            wal.read_exact_at(&mut page, offset).map_err(err("read a WAL frame"))?;
            file.write_at(Pgno(pgno).offset(committed.page_size), &page).map_err(err("fold a WAL frame"))?;
        }
        file.set_size(u64::from(committed.commit) * u64::from(committed.page_size.get()))
            .map_err(err("truncate to the WAL's commit size"))?;
        debug!(db, frames = max_frame, pages = committed.pages.len(), "folded the WAL of a demoted primary");
        Ok(())
    }

    /// Under the EXCLUSIVE lock (nobody else holds SHARED, so nobody holds RESERVED, and a
    /// live journal is hot): restores a hot journal's originals into `file`, truncates it to the journal's
    /// original size, fsyncs it, then removes the journal and fsyncs its directory. The
    /// directory fsync must come before any replicated page is written: a journal that came
    /// back after a crash would be rolled back over them.
    fn roll_back_hot_journal(&self, db: &str, file: &mut RecordingFile) -> Result<(), ApplyLtxError> {
        let err = |step| move |source| ApplyLtxError::HotJournal { db: db.to_owned(), step, source };
        let path = self.shared.journal_path(db);
        let journal = match File::open(&path) {
            Ok(journal) => journal,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err("open")(e)),
        };
        let Some(hot) = journal_node::read_hot(&journal).map_err(err("read"))? else { return Ok(()) };
        warn!(db, pages = hot.originals.len(), "rolling back a hot journal before applying");
        let mut page = vec![0u8; hot.page_size.bytes()];
        for &pgno in hot.originals.keys() {
            hot.read_original(&journal, pgno, &mut page).map_err(err("read"))?;
            file.write_at(Pgno(pgno).offset(hot.page_size), &page).map_err(err("restore a page"))?;
        }
        file.set_size(u64::from(hot.orig_pages) * u64::from(hot.page_size.get())).map_err(err("truncate"))?;
        file.file.sync_all().map_err(err("fsync the database"))?;
        drop(journal);
        std::fs::remove_file(&path).map_err(err("remove"))?;
        let name = mount_name(NodeKind::Journal, db);
        lock(&self.shared.inodes).forget_name(&name);
        self.shared.dir_changed(db);
        self.shared.sync_dirs().map_err(err("fsync its directory"))?;
        let _ = self.notifier.inval_entry(INodeNo(ROOT_INO), name.as_ref());
        Ok(())
    }
}

/// SQLite's writer locks taken on a kept descriptor (PENDING, then the SHARED range, which
/// waits for every reader), released when dropped: closing the descriptor is no longer what
/// ends them.
struct HeldLocks<'a>(&'a File);

impl<'a> HeldLocks<'a> {
    /// SQLite's EXCLUSIVE: PENDING, then the whole SHARED range; no connection is inside a
    /// read transaction. Without `wait`, `None` (holding nothing) if anyone is in the way.
    fn exclusive(locker: &'a File, wait: bool) -> io::Result<Option<HeldLocks<'a>>> {
        let Some(held) = HeldLocks::pending(locker, wait)? else { return Ok(None) };
        if !take(locker, SHARED_FIRST, SHARED_SIZE, wait)? {
            // Dropping `held` releases PENDING (and the unheld range, harmlessly).
            return Ok(None);
        }
        Ok(Some(held))
    }

    /// PENDING alone: no new SHARED lock (no rollback-mode read transaction begins).
    fn pending(locker: &'a File, wait: bool) -> io::Result<Option<HeldLocks<'a>>> {
        Ok(take(locker, PENDING_BYTE, 1, wait)?.then_some(HeldLocks(locker)))
    }
}

/// A write lock on `len` bytes at `start`, waiting for it or not.
fn take(locker: &File, start: i64, len: i64, wait: bool) -> io::Result<bool> {
    if wait {
        locks::lock_wait(locker, Kind::Write, start, len).map(|()| true)
    } else {
        locks::try_lock(locker, Kind::Write, start, len)
    }
}

/// Whether SQLite opens this database in WAL mode: page 1's read version (byte 19) is 2.
/// A file too short to say is not.
pub(crate) fn reads_in_wal_mode(file: &File) -> io::Result<bool> {
    let mut version = [0u8; 1];
    match file.read_exact_at(&mut version, 19) {
        Ok(()) => Ok(version[0] == 2),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether an apply waits for the locks it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Locking {
    Wait,
    IfFree,
    /// Waits, on a primary whose writer locks a halt lock holds (`halt`).
    UnderHalt,
}

/// The position of an apply that waited for its locks, which always has one.
pub(crate) fn waited(pos: Option<Pos>) -> Pos {
    pos.expect("an apply that waits for its locks always applies")
}

impl Drop for HeldLocks<'_> {
    fn drop(&mut self) {
        for (start, len) in [(SHARED_FIRST, SHARED_SIZE), (PENDING_BYTE, 1)] {
            if let Err(e) = locks::unlock(self.0, start, len) {
                warn!(error = %e, "releasing an apply's lock failed");
            }
        }
    }
}
