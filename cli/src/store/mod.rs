//! The daemon's durable store: LTX files, database files and the persisted epoch under
//! `data.dir`, in LiteFS's layout (see [`layout`] and `docs/decisions/store-layout.md`).
//!
//! It carries out the Node's storage outputs (`PersistLtx`, `ReplayLtx`, `RemoveLtx`,
//! `PersistEpoch`) and rebuilds `Recovery` at start. It is synchronous (`std::fs`): the tokio
//! driver calls it from `spawn_blocking`. It decides no policy: what to keep, replay or remove
//! is the Node's call; the store only refuses what would break a stated invariant (a malformed
//! LTX file is never stored, a file is never applied onto a database it does not start from).
//! Tests: beside the code for helpers, `cli/tests/store.rs` on real files.

mod apply;
pub(crate) mod commit_log;
mod dropped;
mod error;
pub(crate) mod flush;
mod fsutil;
pub mod layout;
mod recover;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use replite_core::ltx::{HEADER_SIZE, Header, TRAILER_SIZE, Trailer, VerifiedLtx};
use replite_core::node::Recovery;
use replite_core::stream::DbName;
use replite_core::{Checksum, Epoch, Pos, TxId};
use tracing::{debug, info, warn};

pub use commit_log::{CommitLog, LOG_SIZE as COMMIT_LOG_SIZE};
pub use error::StoreError;
pub use flush::{FlushFailed, SPARES_PER_DIR, SYNCFS_ABOVE_FILES, Spare, Unflushed, make_spares};
pub use fsutil::{TEMP_SUFFIX, write_atomic};
pub use recover::{UNREADABLE_CHECKSUM, database_checksum, recover};

/// Makes files taken with [`Store::take_unflushed`] durable (see `flush::flush`).
pub fn flush_files(files: &[Unflushed]) -> Result<(), StoreError> {
    if files.is_empty() {
        return Ok(());
    }
    flush::flush(files)
}

/// Makes files taken with [`Store::take_unflushed`] durable through `db`'s commit log when
/// [`Store::commit_log`] gave one and every file is small enough (one append, one
/// fdatasync), else as [`flush_files`] does. On failure the files come back, still waiting.
pub fn flush_files_logged(files: Vec<Unflushed>, log: Option<&Mutex<CommitLog>>) -> Result<(), Box<FlushFailed>> {
    if files.is_empty() {
        return Ok(());
    }
    let loggable = files.iter().all(|f| !f.failed && f.bytes.is_some());
    let mut files = files;
    let files = match log {
        Some(log) if loggable => {
            let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Taken out: the log keeps the files until its retirement, not their bytes.
            let bytes: Vec<Vec<u8>> = files.iter_mut().map(|f| f.bytes.take().unwrap_or_default()).collect();
            let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
            match log.append(files, &slices) {
                Ok(()) => return Ok(()),
                Err(failed) => {
                    warn!(error = %failed.error, "appending to the commit log failed: fsyncing the files instead");
                    // Given back, in order: should the fsyncs fail too, a retry can write
                    // the files again from them (`flush::flush`).
                    let mut files = failed.files;
                    for (file, bytes) in files.iter_mut().zip(bytes) {
                        file.bytes = Some(bytes);
                    }
                    files
                }
            }
        }
        _ => files,
    };
    flush::flush(&files).map_err(|e| FlushFailed::new(e, files))
}

/// A new file `<prefix>…{TEMP_SUFFIX}` in `dir` (created if missing), deleted when dropped and
/// by recovery if a crash leaves it.
fn temp_file_in(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile, StoreError> {
    fsutil::ensure_dir(dir)?;
    tempfile::Builder::new().prefix(prefix).suffix(TEMP_SUFFIX).tempfile_in(dir).map_err(StoreError::io("create", dir))
}

/// The store under one `data.dir`.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Each database file's checksum as the store last computed or applied it, so that an
    /// apply checks the real file without re-reading it whole. Missing: compute on demand.
    checksums: BTreeMap<DbName, Checksum>,
    /// LTX files written without an fsync, until a flush makes them durable.
    unflushed: flush::UnflushedFiles,
    /// Empty files ready to become LTX files.
    spares: flush::Spares,
    /// Each database's commit log, opened at its first use; `None` once it failed (its
    /// files are fsynced by themselves from then on).
    logs: BTreeMap<DbName, Option<Arc<Mutex<CommitLog>>>>,
}

impl Store {
    /// Opens the store at `data_dir` (creating it if needed) and recovers what it holds.
    pub fn open(data_dir: &Path) -> Result<(Store, Recovery), StoreError> {
        fsutil::ensure_dir(&layout::dbs_dir(data_dir))?;
        let recovery = recover(data_dir)?;
        let checksums = recovery
            .dbs
            .iter()
            .filter(|(_, r)| r.db_checksum != UNREADABLE_CHECKSUM)
            .map(|(name, r)| (name.clone(), r.db_checksum))
            .collect();
        Ok((
            Store {
                dir: data_dir.to_path_buf(),
                checksums,
                unflushed: flush::UnflushedFiles::default(),
                spares: flush::Spares::default(),
                logs: BTreeMap::new(),
            },
            recovery,
        ))
    }

    /// `data.dir`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a database file lives.
    #[must_use]
    pub fn database_path(&self, db: &DbName) -> PathBuf {
        layout::database_path(&self.dir, db)
    }

    /// Where an LTX file lives.
    #[must_use]
    pub fn ltx_path(&self, db: &DbName, min: TxId, max: TxId) -> PathBuf {
        layout::ltx_path(&self.dir, db, min, max)
    }

    /// Something other than the store wrote the database file (the FUSE layer on a primary):
    /// its checksum is recomputed before the next apply.
    pub fn forget_checksum(&mut self, db: &DbName) {
        self.checksums.remove(db);
    }

    /// Makes `bytes` durable as `dbs/<db>/ltx/<min>-<max>.ltx`: verified in full first (a
    /// malformed file is never stored), then written to a temp file, fsynced, renamed, and the
    /// directory fsynced. When this returns `Ok` the file survives a crash.
    pub fn persist_ltx(&mut self, db: &DbName, min: TxId, max: TxId, bytes: &[u8]) -> Result<VerifiedLtx, StoreError> {
        let verified = StoreError::verify_range(db, min, max, bytes)?;
        fsutil::ensure_dir(&layout::ltx_dir(&self.dir, db))?;
        fsutil::write_atomic(&self.ltx_path(db, min, max), bytes)?;
        debug!(db = %db, %min, %max, size = bytes.len(), "persisted LTX file");
        Ok(verified)
    }

    /// `db`'s commit log, opened (or created) at the first call; `None` if that failed, and
    /// from then on.
    pub fn commit_log(&mut self, db: &DbName) -> Option<Arc<Mutex<CommitLog>>> {
        if let Some(log) = self.logs.get(db) {
            return log.clone();
        }
        let dir = layout::db_dir(&self.dir, db);
        let log = match fsutil::ensure_dir(&dir).and_then(|()| CommitLog::open(&dir)) {
            Ok(log) => Some(Arc::new(Mutex::new(log))),
            Err(e) => {
                warn!(db = %db, error = %e, "no commit log: LTX files are fsynced one by one");
                None
            }
        };
        self.logs.insert(db.clone(), log.clone());
        log
    }

    /// Before `db`'s history is replaced (a snapshot): no record of the old one may be
    /// restored after a crash.
    fn discard_commit_log(&mut self, db: &DbName) -> Result<(), StoreError> {
        if let Some(Some(log)) = self.logs.get(db) {
            log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).discard()?;
        }
        Ok(())
    }

    /// Writes a file at its final name. With `durable`, a small file is made durable by an
    /// append to the database's commit log, a larger one (or any, without a log) by one
    /// fdatasync (no rename, no directory fsync: see [`flush::write_new`]); without it
    /// waits for [`Store::take_unflushed`]. A file already at that name (left by an older
    /// history) is replaced atomically instead.
    fn write_ltx(&mut self, db: &DbName, min: TxId, max: TxId, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
        let ltx_dir = layout::ltx_dir(&self.dir, db);
        // A spare file lives in the directory, so the directory exists.
        let spare = self.spares.take(&ltx_dir);
        if spare.is_none() {
            fsutil::ensure_dir(&ltx_dir)?;
        }
        let path = self.ltx_path(db, min, max);
        self.unflushed.forget(db, max);
        let small = bytes.len() <= commit_log::RECORD_MAX;
        let log = if durable && small { self.commit_log(db) } else { None };
        // Through the log, the file itself is written like a deferred one.
        let fsync_file = durable && log.is_none();
        let file = if let Some(spare) = spare {
            flush::write_into_spare(spare, &path, bytes, fsync_file)?
        } else {
            match flush::write_new(&path, bytes, fsync_file) {
                Ok(file) => file,
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                    fsutil::write_atomic(&path, bytes)?;
                    None
                }
                Err(e) => return Err(e),
            }
        };
        if let Some(file) = file {
            let kept = small.then(|| bytes.to_vec());
            let waiting = Unflushed { max, path, file, failed: false, bytes: kept };
            if durable {
                flush_files_logged(vec![waiting], log.as_deref()).map_err(|failed| failed.error)?;
            } else {
                self.unflushed.push(db, waiting);
            }
        }
        debug!(db = %db, %min, %max, size = bytes.len(), durable, "wrote LTX file");
        Ok(())
    }

    /// A primary's own commit, which core has just encoded: written without verifying it
    /// again (nothing outside the process touched it), durably or not (see
    /// [`Store::write_ltx`]). Checks only that the header names the range. Returns the
    /// position after it; the store stops trusting its cached checksum of the database.
    pub fn write_commit(
        &mut self,
        db: &DbName,
        min: TxId,
        max: TxId,
        bytes: &[u8],
        durable: bool,
    ) -> Result<Pos, StoreError> {
        let short = || StoreError::ShortLtx { db: db.clone(), min, max, len: bytes.len() };
        let head = bytes.get(..HEADER_SIZE).and_then(|b| <&[u8; HEADER_SIZE]>::try_from(b).ok()).ok_or_else(short)?;
        let tail = bytes.len().checked_sub(TRAILER_SIZE).filter(|&at| at >= HEADER_SIZE).ok_or_else(short)?;
        let tail = <&[u8; TRAILER_SIZE]>::try_from(&bytes[tail..]).map_err(|_| short())?;
        let header = Header::decode(head).map_err(|_| short())?;
        StoreError::check_range(db, min, max, &header)?;
        self.write_ltx(db, min, max, bytes, durable)?;
        self.forget_checksum(db);
        Ok(Pos::new(max, Trailer::decode(tail).post_apply_checksum))
    }

    /// A replicated file: verified in full (it came from outside), then written durably
    /// (synchronous replication: through the commit log, as a primary's own durable commit)
    /// or not. A snapshot is always written durably and atomically, and replaces every other
    /// LTX file of the database (see [`Store::persist_replicated`]).
    pub fn write_replicated(
        &mut self,
        db: &DbName,
        min: TxId,
        max: TxId,
        bytes: &[u8],
        durable: bool,
    ) -> Result<(), StoreError> {
        if min == TxId(1) {
            return self.persist_replicated(db, min, max, bytes);
        }
        StoreError::verify_range(db, min, max, bytes)?;
        self.write_ltx(db, min, max, bytes, durable)
    }

    /// Takes the files of `db` written without an fsync, up to `through`, for
    /// [`flush_files`] outside the store's lock (so commits need not wait for the flush).
    pub fn take_unflushed(&mut self, db: &DbName, through: TxId) -> Vec<Unflushed> {
        self.unflushed.take(db, through)
    }

    /// Puts back files whose flush failed.
    pub fn put_back_unflushed(&mut self, db: &DbName, files: Vec<Unflushed>) {
        self.unflushed.put_back(db, files);
    }

    /// Names for the spare files `db`'s LTX directory lacks (see [`Store::add_spares`]).
    pub fn spares_wanted(&mut self, db: &DbName) -> Vec<PathBuf> {
        let dir = layout::ltx_dir(&self.dir, db);
        if !dir.is_dir() {
            return Vec::new();
        }
        self.spares.wanted(&dir)
    }

    /// Adds spare files made (outside the store's lock) for `asked` names from
    /// [`Store::spares_wanted`].
    pub fn add_spares(&mut self, db: &DbName, files: Vec<Spare>, asked: usize) {
        self.spares.add(&layout::ltx_dir(&self.dir, db), files, asked);
    }

    /// Whether `db`'s LTX directory is down to half its spares (nothing is being made).
    pub fn spares_low(&self, db: &DbName) -> bool {
        self.spares.count(&layout::ltx_dir(&self.dir, db)) < SPARES_PER_DIR / 2
    }

    /// Takes every file waiting for a flush (clean shutdown).
    pub fn take_all_unflushed(&mut self) -> Vec<Unflushed> {
        self.unflushed.take_all()
    }

    /// Carries out `Output::PersistLtx`: persist, then apply onto the database at `base`. A
    /// snapshot (min 1) replaces all other LTX files of the database, removed once it is
    /// durable and before it is applied (a crash in between replays the snapshot).
    pub fn persist_and_apply(
        &mut self,
        db: &DbName,
        min: TxId,
        max: TxId,
        bytes: &[u8],
        base: Checksum,
    ) -> Result<Pos, StoreError> {
        self.persist_replicated(db, min, max, bytes)?;
        self.apply_ltx(db, min, max, base)
    }

    /// The persist half of [`Store::persist_and_apply`], for a caller that applies the file
    /// itself (the FUSE mount on a replica): a snapshot also removes every other LTX file.
    pub fn persist_replicated(&mut self, db: &DbName, min: TxId, max: TxId, bytes: &[u8]) -> Result<(), StoreError> {
        let verified = self.persist_ltx(db, min, max, bytes)?;
        self.unflushed.forget(db, max);
        if verified.header().is_snapshot() {
            self.discard_commit_log(db)?;
            self.unflushed.forget_all(db);
            self.remove_all_ltx_except(db, min, max)?;
        }
        Ok(())
    }

    /// A new spool for an LTX file of `db` arriving from the primary: a temporary file in the
    /// database's LTX directory (so that [`Store::persist_spooled`] is a rename), named with
    /// [`TEMP_SUFFIX`] so that recovery deletes it if a crash leaves it behind. Deleted when
    /// dropped.
    pub fn create_spool(&self, db: &DbName) -> Result<tempfile::NamedTempFile, StoreError> {
        temp_file_in(&layout::ltx_dir(&self.dir, db), ".spool-")
    }

    /// A temporary file beside `db`'s database for the database a snapshot holds, written
    /// while the snapshot is spooled (`driver::spool`) and renamed over the database file by
    /// the apply. Named with [`TEMP_SUFFIX`], so recovery deletes it if a crash leaves it
    /// behind; deleted when dropped.
    pub fn create_image(&self, db: &DbName) -> Result<tempfile::NamedTempFile, StoreError> {
        temp_file_in(&layout::db_dir(&self.dir, db), ".image-")
    }

    /// Makes a spooled LTX file (verified whole and fsynced while it was written, see
    /// `driver::spool`) the stored file `dbs/<db>/ltx/<min>-<max>.ltx`: a rename and a
    /// directory fsync, the bytes are not written again. A snapshot also removes every other
    /// LTX file of the database, as [`Store::persist_replicated`] does.
    pub fn persist_spooled(
        &mut self,
        db: &DbName,
        min: TxId,
        max: TxId,
        spool: tempfile::NamedTempFile,
    ) -> Result<PathBuf, StoreError> {
        let path = self.ltx_path(db, min, max);
        let from = spool.path().to_path_buf();
        spool.persist(&path).map_err(|e| StoreError::io("rename", &from)(e.error))?;
        fsutil::sync_dir(&layout::ltx_dir(&self.dir, db))?;
        debug!(db = %db, %min, %max, "persisted spooled LTX file");
        if min == TxId(1) {
            self.discard_commit_log(db)?;
            self.unflushed.forget_all(db);
            self.remove_all_ltx_except(db, min, max)?;
        }
        Ok(path)
    }

    /// Carries out a primary's `Output::PersistLtx` for its own commit, durably: see
    /// [`Store::write_commit`].
    pub fn persist_commit(&mut self, db: &DbName, min: TxId, max: TxId, bytes: &[u8]) -> Result<Pos, StoreError> {
        self.write_commit(db, min, max, bytes, true)
    }

    /// Carries out `Output::RemoveLtx`. Removing a file that is not there succeeds. The
    /// directory is not fsynced: a removal lost in a crash leaves a file the Node removes again.
    pub fn remove_ltx(&mut self, db: &DbName, min: TxId, max: TxId) -> Result<(), StoreError> {
        let path = self.ltx_path(db, min, max);
        self.unflushed.forget(db, max);
        let len = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("stat", &path)(e)),
        };
        match self.spares.recycle(&layout::ltx_dir(&self.dir, db), &path, len) {
            Ok(true) => {
                debug!(db = %db, %min, %max, "retired LTX file kept as a spare");
                return Ok(());
            }
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Deleting it is what was asked; recycling was only a saving.
            Err(e) => debug!(db = %db, %min, %max, error = %e, "recycling a retired LTX file failed"),
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                debug!(db = %db, %min, %max, "removed LTX file");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", &path)(e)),
        }
    }

    /// Carries out `Output::PersistRejoin`: `dbs/<db>/rejoin` holds the TXID (replaced
    /// atomically), or is removed for zero (a removal lost in a crash only keeps the node
    /// from taking the lease until it catches up again).
    pub fn persist_rejoin(&mut self, db: &DbName, txid: TxId) -> Result<(), StoreError> {
        let path = layout::db_dir(&self.dir, db).join(layout::REJOIN_FILE);
        if txid == TxId::ZERO {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", &path)(e)),
                _ => Ok(()),
            };
        }
        fsutil::ensure_dir(&layout::db_dir(&self.dir, db))?;
        fsutil::write_atomic(&path, recover::format_epoch(Epoch(txid.0)).as_bytes())?;
        debug!(db = %db, %txid, "persisted rejoin TXID");
        Ok(())
    }

    /// Carries out `Output::PersistEpoch`: `<data.dir>/epoch` is replaced atomically.
    pub fn persist_epoch(&mut self, epoch: Epoch) -> Result<(), StoreError> {
        fsutil::write_atomic(&layout::epoch_path(&self.dir), recover::format_epoch(epoch).as_bytes())?;
        debug!(%epoch, "persisted epoch");
        Ok(())
    }

    /// Removes every LTX file of `db` but `min-max`, then fsyncs the directory: after a
    /// snapshot, a stale newer file that came back after a crash would hide the snapshot.
    fn remove_all_ltx_except(&mut self, db: &DbName, min: TxId, max: TxId) -> Result<(), StoreError> {
        let dir = layout::ltx_dir(&self.dir, db);
        let keep = replite_core::types::format_ltx_filename(min, max);
        let mut removed = 0usize;
        for entry in fs::read_dir(&dir).map_err(StoreError::io("read_dir", &dir))? {
            let entry = entry.map_err(StoreError::io("read_dir", &dir))?;
            let name = entry.file_name();
            let Some(Ok((old_min, old_max))) = name.to_str().map(replite_core::types::parse_ltx_filename) else {
                continue;
            };
            if name.to_str() != Some(keep.as_str()) {
                self.remove_ltx(db, old_min, old_max)?;
                removed += 1;
            }
        }
        if removed > 0 {
            fsutil::sync_dir(&dir)?;
            info!(db = %db, snapshot_max = %max, removed, "snapshot replaced older LTX files");
        }
        Ok(())
    }
}
