//! A halt lock's side in a primary's mount (LiteFS's `/halt` and `/tx`): SQLite's writer locks
//! on a database held for a writer on another node, and that writer's transactions written
//! into the database under them.
//!
//! The locks are SQLite's own, taken through the mount as open-file-description locks (see
//! `locks`): RESERVED on the database file, and in WAL mode the WAL index's writer lock too.
//! Local SQLite writers then find the database busy and wait in their busy handler, as they
//! do for any other writer; readers go on. A transaction from the remote writer is written
//! like a replica's apply: EXCLUSIVE (or the WAL index's other locks) while its pages go in,
//! the kernel's cache of them dropped, WAL readers sent to the database file by a new index
//! header. The WAL must be empty first (the caller checkpoints it before taking the writer
//! lock), so that no frame hides a page the apply writes.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use replite_core::ltx;
use replite_core::types::{Checksum, Pos};

use crate::error::{ApplyLtxError, HaltError};
use crate::locks::{self, Kind, RESERVED_BYTE};
use crate::mount::Mount;
use crate::names::{NodeKind, classify, mount_name};
use crate::replica::{Change, Locking, reads_in_wal_mode};

/// How often a lock someone else holds is tried again while waiting for it.
const RETRY_EVERY: Duration = Duration::from_millis(2);

/// The WAL index's writer lock (`WAL_WRITE_LOCK`): the first lock byte after the header.
const WAL_WRITER_BYTE: i64 = 120;

/// SQLite's writer locks on one database, held for a remote writer until dropped.
#[derive(Debug)]
pub struct WriterLocks {
    db: String,
    /// The database through the mount: RESERVED lasts while it is open.
    _database: File,
    /// The WAL index through the mount, holding the writer's lock (WAL mode only).
    wal_index: Option<File>,
}

impl WriterLocks {
    /// The database these locks are on.
    #[must_use]
    pub fn db(&self) -> &str {
        &self.db
    }

    /// Whether the WAL writer's lock is held too.
    #[must_use]
    pub fn holds_wal_writer(&self) -> bool {
        self.wal_index.is_some()
    }

    /// Lets go of the WAL writer's lock (RESERVED stays).
    pub fn release_wal_writer(&mut self) {
        self.wal_index = None;
    }
}

impl Mount {
    /// Takes SQLite's RESERVED lock on `db` through the mount, waiting until `deadline` for
    /// a writer that holds it to finish. `db` must exist.
    pub fn lock_writers(&self, db: &str, deadline: Instant) -> Result<WriterLocks, HaltError> {
        check_name(db)?;
        if !self.shared.database_path(db).exists() {
            return Err(HaltError::NoDatabase { db: db.to_owned() });
        }
        let path = self.mountpoint.join(db);
        let database = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err(db, "open"))?;
        lock_until(&database, RESERVED_BYTE, deadline, db, "RESERVED")?;
        Ok(WriterLocks { db: db.to_owned(), _database: database, wal_index: None })
    }

    /// Adds the WAL index's writer lock to `locks`, waiting until `deadline` for a writer or
    /// checkpoint that holds it.
    pub fn lock_wal_writer(&self, locks: &mut WriterLocks, deadline: Instant) -> Result<(), HaltError> {
        if locks.wal_index.is_some() {
            return Ok(());
        }
        let db = locks.db.clone();
        let path = self.mountpoint.join(mount_name(NodeKind::Shm, &db));
        let index = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&db, "open the WAL index"))?;
        lock_until(&index, WAL_WRITER_BYTE, deadline, &db, "the WAL writer's lock")?;
        locks.wal_index = Some(index);
        Ok(())
    }

    /// Whether `db` is a WAL database (page 1 says so).
    pub fn is_wal_database(&self, db: &str) -> Result<bool, HaltError> {
        check_name(db)?;
        let file = File::open(self.shared.database_path(db)).map_err(io_err(db, "open the data file"))?;
        reads_in_wal_mode(&file).map_err(io_err(db, "read the database header"))
    }

    /// Whether `db`'s WAL holds frames (its file is not empty).
    pub fn wal_has_frames(&self, db: &str) -> Result<bool, HaltError> {
        check_name(db)?;
        match std::fs::metadata(self.shared.wal_path(db)) {
            Ok(meta) => Ok(meta.len() > 0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(db, "stat the WAL")(e)),
        }
    }

    /// On a replica holding a halt lock on `db` at its primary: lets its applications write
    /// `db` as on a primary (`true`; their commits go to the [`crate::CommitSink`], which sends
    /// them on), or no longer (`false`). Replicated files are not applied to it meanwhile.
    /// What the kernel cached of page 1 was shown for the other way (a replica's readers see
    /// the mount's change counter) and is dropped.
    pub fn set_writable_under_halt(&self, db: &str, writable: bool) {
        self.shared.set_writable_on_replica(db, writable);
        self.shared.new_replica_version(db);
        if let Some(ino) = self.shared.known_ino(db)
            && let Err(e) = self.notifier.inval_inode(fuser::INodeNo(ino), 0, crate::mount::DATABASE_HEADER_BYTES)
        {
            tracing::debug!(db, error = %e, "page 1 invalidation");
        }
    }

    /// The path of `db` in the mount, for a connection that checkpoints it.
    #[must_use]
    pub fn database_in_mount(&self, db: &str) -> PathBuf {
        self.mountpoint.join(db)
    }

    /// Writes a remote writer's transaction, an LTX file on top of `current`, into the
    /// database under the writer locks `locks` holds. The file is verified whole first; the
    /// pages go in while no reader is inside a read transaction. Returns the new position.
    ///
    /// The caller made the transaction durable (and replicated it) first: a crash before or
    /// during this write leaves a database that recovery brings to that position.
    pub fn apply_under_halt(
        &self,
        locks: &WriterLocks,
        ltx_bytes: &[u8],
        current: Checksum,
    ) -> Result<Pos, ApplyLtxError> {
        let db = locks.db.as_str();
        let verified = ltx::verify(ltx_bytes).map_err(|source| ApplyLtxError::Invalid { db: db.to_owned(), source })?;
        if verified.header().commit == 0 {
            return Err(ApplyLtxError::Drop { db: db.to_owned() });
        }
        // A copy that finds the database's writer lock held reads around the writer with its
        // journal (`copy`); this write has none, so copies wait for it or it for them.
        let gate = self.shared.journal_gate(db);
        let _no_copy_reads = gate.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let applied = self.apply_verified(db, Change::Apply { ltx: ltx_bytes, current }, Locking::UnderHalt)?;
        Ok(crate::replica::waited(applied))
    }
}

fn check_name(db: &str) -> Result<(), HaltError> {
    match classify(db) {
        Some((NodeKind::Database, name)) if name == db => Ok(()),
        _ => Err(HaltError::InvalidName { db: db.to_owned() }),
    }
}

fn io_err<'a>(db: &'a str, step: &'static str) -> impl FnOnce(io::Error) -> HaltError + 'a {
    move |source| HaltError::Io { db: db.to_owned(), step, source }
}

/// An exclusive lock on `byte`, tried until `deadline` (a blocking wait could not give up).
fn lock_until(file: &File, byte: i64, deadline: Instant, db: &str, what: &'static str) -> Result<(), HaltError> {
    loop {
        if locks::try_lock(file, Kind::Write, byte, 1).map_err(io_err(db, what))? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HaltError::Busy { db: db.to_owned(), lock: what });
        }
        std::thread::sleep(RETRY_EVERY);
    }
}
