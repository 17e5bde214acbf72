//! Dropping a database from the mount: on the primary when the application unlinks `<db>`
//! (after the sink has made the drop durable), on a replica when a replicated drop (an LTX
//! file with commit size zero) is applied. See `docs/decisions/0009-dropping-databases.md`.
//!
//! The database file goes with SQLite's side files (`-journal`, `-wal`, `-shm`), as LiteFS
//! removes them; the directory and its LTX history stay (a drop is part of the history).
//! Descriptors already open on the dropped database are not given POSIX's "the file lives on
//! until closed": reads through them fail (`EIO`) once the kernel's cached pages are dropped,
//! and writes fail (`EROFS`, see [`Shared::unlinked`]). A connection that could still read the
//! old database could start a write transaction after a database of the same name is created
//! again: its journal (created by name, so beside the new database) would hold the old
//! database's pages, and the next reader would roll them back over the new one.

use std::io;

use fuser::{INodeNo, Notifier};
use replite_core::ltx::Header;
use replite_core::types::{Checksum, Pos};
use tracing::{debug, info};

use crate::demoted_wal::WalGuard;
use crate::error::ApplyLtxError;
use crate::locks::{self, Kind, PENDING_BYTE, SHARED_FIRST, SHARED_SIZE};
use crate::mount::Mount;
use crate::names::{NodeKind, mount_name};
use crate::shared::{DbState, ROOT_INO, Shared, io_errno, lock};

/// The files of a database that a drop removes, database first.
const DROPPED_KINDS: [NodeKind; 4] = [NodeKind::Database, NodeKind::Journal, NodeKind::Wal, NodeKind::Shm];

impl Shared {
    /// Removes `db`'s database file and side files from the data directory, forgets their
    /// names (a file created later under one gets a new inode) and what was tracked of the
    /// database's transactions.
    /// Returns how many files were removed and the inode the database file had, if the
    /// kernel knew one (its cached pages must go: see [`Shared::unlinked`]).
    pub(crate) fn remove_dropped_files(&self, db: &str) -> io::Result<(usize, Option<u64>)> {
        let mut removed = 0;
        let database_ino = self.known_ino(db);
        for kind in DROPPED_KINDS {
            let Some(path) = self.path(kind, db) else { continue };
            let name = mount_name(kind, db);
            if let (Some(ino), Ok(meta)) = (self.known_ino(&name), std::fs::metadata(&path)) {
                let mut attr = self.file_attr(ino, &meta);
                attr.nlink = 0;
                lock(&self.unlinked_attrs).insert(ino, attr);
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            lock(&self.inodes).forget_name(&name);
        }
        *lock(&self.db_state(db)) = DbState::default();
        lock(&self.unjournaled).remove(db);
        self.dir_changed(db);
        Ok((removed, database_ino))
    }

    /// The application unlinked `<db>` on the primary and the sink accepted the drop.
    pub(crate) fn drop_database(&self, db: &str) -> Result<(), fuser::Errno> {
        let (removed, database_ino) = self.remove_dropped_files(db).map_err(|e| io_errno(&e))?;
        info!(db, removed, "database dropped");
        // The kernel removes the entry of the name unlinked; the side files' entries are
        // cached too. Invalidating them waits for the directory lock this unlink holds, so it
        // runs on a thread of its own once this request has been answered (LiteFS does the
        // same from a goroutine).
        if let Some(notifier) = self.notifier.get().cloned() {
            let names: Vec<String> =
                DROPPED_KINDS[1..].iter().chain([&NodeKind::Pos]).map(|&kind| mount_name(kind, db)).collect();
            let spawned = std::thread::Builder::new().name("replite-drop-inval".into()).spawn(move || {
                for name in names {
                    let _ = notifier.inval_entry(INodeNo(ROOT_INO), name.as_ref());
                }
                if let Some(ino) = database_ino {
                    let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
                }
            });
            if let Err(e) = spawned {
                debug!(db, error = %e, "cannot start the thread that invalidates a dropped database's entries");
            }
        }
        Ok(())
    }

    /// The attributes of a file an application still has open under an inode its name no
    /// longer has: a dropped file as it was, or a database inode retired at a demotion
    /// (`demoted_wal`) as the file is now.
    pub(crate) fn stale_attr(&self, ino: u64, name: &str) -> Option<fuser::FileAttr> {
        if self.is_retired(ino) {
            let path = crate::names::classify(name).and_then(|(kind, db)| self.path(kind, db))?;
            return std::fs::metadata(path).ok().map(|meta| self.file_attr(ino, &meta));
        }
        lock(&self.unlinked_attrs).get(&ino).copied()
    }

    /// Whether the file `ino` that a handle on `kind` of `db` was opened on has since been
    /// unlinked (its name was forgotten, or now names another inode). Writes through such a
    /// handle would land in a file no database owns.
    pub(crate) fn unlinked(&self, ino: u64, kind: NodeKind, db: &str) -> bool {
        matches!(kind, NodeKind::Database | NodeKind::Journal | NodeKind::Wal)
            && lock(&self.inodes).by_name.get(&mount_name(kind, db)) != Some(&ino)
            && !self.is_retired(ino)
    }
}

impl Mount {
    /// Applies a replicated drop of `db` (verified; commit size zero) to a database at
    /// `current`: under SQLite's writer locks (no reader is inside a transaction), the files
    /// go and the kernel forgets their entries. Readers with the database open keep what they
    /// had; new opens find no database.
    pub(crate) fn apply_drop(&self, db: &str, header: &Header, current: Checksum) -> Result<Pos, ApplyLtxError> {
        if !header.is_snapshot() && header.pre_apply_checksum != current {
            let source = replite_core::ltx::ApplyError::PreApplyMismatch {
                database: current,
                expected: header.pre_apply_checksum,
            };
            return Err(ApplyLtxError::Apply { db: db.to_owned(), source });
        }
        let mut lockers = lock(&self.apply_lock);
        // The kept descriptor is on the file this drop removes.
        lockers.remove(db);
        let lock_err = |step| move |source| ApplyLtxError::Lock { db: db.to_owned(), step, source };
        let backing = self.shared.database_path(db);
        // Read in WAL mode: its connections hold SHARED while open, so the WAL index's locks
        // keep them out instead of EXCLUSIVE (as for an apply, `replica.rs`).
        let wal_mode = match std::fs::File::open(&backing) {
            Ok(file) => crate::replica::reads_in_wal_mode(&file).map_err(lock_err("read the database header"))?,
            Err(_) => false,
        };
        let locker = if backing.exists() {
            let locker = std::fs::OpenOptions::new().read(true).write(true).open(self.mountpoint.join(db));
            let locker = locker.map_err(lock_err("open through the mount"))?;
            locks::lock_wait(&locker, Kind::Write, PENDING_BYTE, 1).map_err(lock_err("PENDING lock"))?;
            if !wal_mode {
                locks::lock_wait(&locker, Kind::Write, SHARED_FIRST, SHARED_SIZE)
                    .map_err(lock_err("EXCLUSIVE lock"))?;
            }
            Some(locker)
        } else {
            None
        };
        let wal_guard = if wal_mode { WalGuard::lock_index(self, db, true)? } else { None };
        let (removed, database_ino) =
            self.shared.remove_dropped_files(db).map_err(lock_err("remove the database's files"))?;
        // WAL connections still open: a new index header makes them drop their caches and
        // read the file, which is gone.
        if let Some(guard) = &wal_guard {
            guard.restart(0).map_err(lock_err("restart the WAL index"))?;
        }
        self.shared.sync_dirs().map_err(lock_err("fsync the database directory"))?;
        invalidate_entries(&self.notifier, db);
        if let Some(ino) = database_ino {
            let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
        }
        drop(wal_guard);
        drop(locker);
        let pos = Pos::new(header.max_txid, Checksum::EMPTY);
        self.set_position(db, pos);
        info!(db, txid = %pos.txid, removed, "replicated drop applied");
        Ok(pos)
    }
}

/// Drops the kernel's entries for every name of `db`, the database's own included (on a
/// replica nothing unlinked it through the kernel).
fn invalidate_entries(notifier: &Notifier, db: &str) {
    for kind in DROPPED_KINDS.iter().chain([&NodeKind::Pos]) {
        let name = mount_name(*kind, db);
        if let Err(e) = notifier.inval_entry(INodeNo(ROOT_INO), name.as_ref()) {
            debug!(db, name, error = %e, "entry invalidation");
        }
    }
}
