//! The data directory as the driver's [`Storage`]: LTX files and the epoch through the
//! [`Store`], databases through the FUSE mount when there is one (so replicated pages are
//! written under SQLite's locks and the kernel's caches are dropped for them), else straight
//! to the database files.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use replite_core::node::IoFailure;
use replite_core::stream::DbName;
use replite_core::{Checksum, Epoch, Pos, TxId};
use replite_fuse::Mount;
use tracing::error;

use crate::driver::storage::{AppliedNow, DatabaseImage, SnapshotImage, Storage, Streamed};
use crate::store::{Store, StoreError};

/// The store under `data.dir`, and the mount that serves its databases (if mounted).
pub struct DiskStorage {
    store: Mutex<Store>,
    mount: Option<Arc<Mount>>,
}

impl DiskStorage {
    /// Storage over `store`, applying replicated files through `mount` when given.
    #[must_use]
    pub fn new(store: Store, mount: Option<Arc<Mount>>) -> DiskStorage {
        DiskStorage { store: Mutex::new(store), mount }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock poisons it; the store's state is still on disk.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn logged<'a>(db: &'a DbName, what: &'static str) -> impl FnOnce(StoreError) -> IoFailure + 'a {
    move |e| {
        error!(%db, error = %e, "{what} failed");
        e.failure()
    }
}

impl Storage for DiskStorage {
    fn persist_ltx(&self, db: &DbName, min: TxId, max: TxId, bytes: &[u8], durable: bool) -> Result<Pos, IoFailure> {
        self.store().write_commit(db, min, max, bytes, durable).map_err(logged(db, "persisting an LTX file"))
    }

    fn persist_applied(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        bytes: &[u8],
        durable: bool,
    ) -> Result<Pos, IoFailure> {
        let mut store = self.store();
        store.write_replicated(db, min, max, bytes, durable).map_err(logged(db, "persisting an LTX file"))?;
        // The database file changed without the store: its idea of the checksum is stale.
        store.forget_checksum(db);
        let verified = replite_core::ltx::verify(bytes).map_err(|_| IoFailure::Mismatch)?;
        Ok(verified.post_apply_pos())
    }

    fn persist_and_apply(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        bytes: &[u8],
        base: Checksum,
        durable: bool,
    ) -> Result<Pos, IoFailure> {
        let mut store = self.store();
        store.write_replicated(db, min, max, bytes, durable).map_err(logged(db, "persisting an LTX file"))?;
        let Some(mount) = &self.mount else {
            return store.apply_ltx(db, min, max, base).map_err(logged(db, "applying an LTX file"));
        };
        // The mount writes the pages itself: the store's idea of the file's checksum is stale.
        store.forget_checksum(db);
        mount.apply_ltx(db.as_str(), bytes, base).map_err(|e| {
            error!(%db, %min, %max, error = %e, "applying an LTX file through the mount failed");
            IoFailure::Mismatch
        })
    }

    fn persist_and_apply_now(&self, db: &DbName, min: TxId, max: TxId, bytes: &[u8], base: Checksum) -> AppliedNow {
        let Some(mount) = &self.mount else {
            // The store's own apply fsyncs the database: not for a thread that must not wait.
            return match self.store().write_replicated(db, min, max, bytes, false) {
                Ok(()) => AppliedNow::Stored,
                Err(e) => AppliedNow::Done(Err(logged(db, "persisting an LTX file")(e))),
            };
        };
        {
            let mut store = self.store();
            if let Err(e) = store.write_replicated(db, min, max, bytes, false) {
                return AppliedNow::Done(Err(logged(db, "persisting an LTX file")(e)));
            }
            store.forget_checksum(db);
        }
        match mount.try_apply_ltx(db.as_str(), bytes, base) {
            Ok(Some(pos)) => AppliedNow::Done(Ok(pos)),
            Ok(None) => AppliedNow::Stored,
            Err(e) => {
                error!(%db, %min, %max, error = %e, "applying an LTX file through the mount failed");
                AppliedNow::Done(Err(IoFailure::Mismatch))
            }
        }
    }

    fn apply_stored(&self, db: &DbName, min: TxId, max: TxId, bytes: &[u8], base: Checksum) -> Result<Pos, IoFailure> {
        let Some(mount) = &self.mount else {
            return self.store().apply_ltx(db, min, max, base).map_err(logged(db, "applying an LTX file"));
        };
        self.store().forget_checksum(db);
        mount.apply_ltx(db.as_str(), bytes, base).map_err(|e| {
            error!(%db, %min, %max, error = %e, "applying an LTX file through the mount failed");
            IoFailure::Mismatch
        })
    }

    fn create_spool(&self, db: &DbName) -> io::Result<tempfile::NamedTempFile> {
        self.store().create_spool(db).map_err(io::Error::other)
    }

    fn create_image(&self, db: &DbName) -> io::Result<Option<tempfile::NamedTempFile>> {
        // Only the mount can replace a database under the readers' locks.
        if self.mount.is_none() {
            return Ok(None);
        }
        self.store().create_image(db).map(Some).map_err(io::Error::other)
    }

    fn persist_spooled_and_apply(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        spool: tempfile::NamedTempFile,
        image: Option<SnapshotImage>,
        base: Checksum,
    ) -> Result<Pos, IoFailure> {
        let mut store = self.store();
        let path = store.persist_spooled(db, min, max, spool).map_err(logged(db, "persisting a spooled LTX file"))?;
        let Some(mount) = &self.mount else {
            return store.apply_ltx(db, min, max, base).map_err(logged(db, "applying an LTX file"));
        };
        store.forget_checksum(db);
        if let Some(SnapshotImage { file, pos }) = image {
            // The snapshot's database was written while it was spooled: renamed into place.
            let replaced = mount.replace_database(db.as_str(), file.path(), pos).map_err(|e| {
                error!(%db, %min, %max, error = %e, "replacing the database with a snapshot's image failed");
                IoFailure::Mismatch
            });
            if replaced.is_ok() {
                // Renamed away: nothing left at the temporary name to delete.
                let _ = file.into_temp_path().keep();
            }
            return replaced;
        }
        // Applied from the stored file, page by page: a snapshot is never held in memory.
        mount.apply_ltx_file(db.as_str(), &path, base).map_err(|e| {
            error!(%db, %min, %max, error = %e, "applying a spooled LTX file through the mount failed");
            IoFailure::Mismatch
        })
    }

    fn persist_spooled_applied(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        spool: tempfile::NamedTempFile,
        post: Pos,
    ) -> Result<Pos, IoFailure> {
        let mut store = self.store();
        store.persist_spooled(db, min, max, spool).map_err(logged(db, "persisting a spooled LTX file"))?;
        // The database file changed without the store: its idea of the checksum is stale.
        store.forget_checksum(db);
        Ok(post)
    }

    fn flush_ltx(&self, db: &DbName, through: TxId) -> Result<(), IoFailure> {
        // Taken under the lock, fsynced outside it: a commit's write need not wait.
        let (files, log) = {
            let mut store = self.store();
            let files = store.take_unflushed(db, through);
            let log = if files.is_empty() { None } else { store.commit_log(db) };
            (files, log)
        };
        match crate::store::flush_files_logged(files, log.as_deref()) {
            Ok(()) => Ok(()),
            Err(failed) => {
                let (e, files) = (failed.error, failed.files);
                error!(%db, %through, error = %e, "flushing LTX files failed");
                let failure = e.failure();
                self.store().put_back_unflushed(db, files);
                Err(failure)
            }
        }
    }

    fn refill_spares(&self, db: &DbName) {
        let wanted = self.store().spares_wanted(db);
        if !wanted.is_empty() {
            // Created outside the lock: commits keep writing meanwhile.
            let asked = wanted.len();
            let made = crate::store::make_spares(wanted);
            self.store().add_spares(db, made, asked);
        }
    }

    fn spares_low(&self, db: &DbName) -> bool {
        self.store().spares_low(db)
    }

    fn replay_ltx(&self, db: &DbName, min: TxId, max: TxId, base: Checksum) -> Result<Pos, IoFailure> {
        self.store().apply_ltx(db, min, max, base).map_err(logged(db, "replaying an LTX file"))
    }

    fn read_ltx(&self, db: &DbName, min: TxId, max: TxId) -> io::Result<Vec<u8>> {
        let path = self.store().ltx_path(db, min, max);
        let bytes = std::fs::read(&path)?;
        // Retention may recycle the file as a spare while it is read (renamed, then written
        // over by a later commit): what was read must still be this range, whole.
        crate::store::StoreError::verify_range(db, min, max, bytes.as_slice())
            .map_err(|e| io::Error::other(format!("{} changed while being read: {e}", path.display())))?;
        Ok(bytes)
    }

    fn copy_committed(&self, db: &DbName) -> io::Result<DatabaseImage> {
        let file = self.spill_file()?;
        let checksum = match &self.mount {
            Some(mount) => mount.copy_committed(db.as_str(), file.path()).map_err(io::Error::other)?.checksum,
            None => {
                // No mount: nothing writes the file but the store, so a plain copy is committed.
                let source = self.store().database_path(db);
                std::fs::copy(&source, file.path())?;
                crate::store::database_checksum(file.path(), db, None).map_err(io::Error::other)?
            }
        };
        Ok(DatabaseImage { file, checksum })
    }

    fn stream_committed(&self, db: &DbName, sink: &mut dyn replite_fuse::CopySink) -> io::Result<Streamed> {
        let Some(mount) = &self.mount else { return self.copy_committed(db).map(Streamed::File) };
        // Written only when the copy has to go around a writer (`CopiedTo::File`).
        let file = self.spill_file()?;
        let (copy, to) = mount.stream_committed(db.as_str(), file.path(), sink).map_err(io::Error::other)?;
        Ok(match to {
            replite_fuse::CopiedTo::Sink => Streamed::Sink,
            replite_fuse::CopiedTo::File => Streamed::File(DatabaseImage { file, checksum: copy.checksum }),
        })
    }

    fn spill_file(&self) -> io::Result<tempfile::NamedTempFile> {
        let dir = self.store().dir().to_path_buf();
        tempfile::Builder::new().prefix(".snapshot-").tempfile_in(&dir)
    }

    fn remove_ltx(&self, db: &DbName, min: TxId, max: TxId) -> Result<(), IoFailure> {
        self.store().remove_ltx(db, min, max).map_err(|e| e.failure())
    }

    fn persist_rejoin(&self, db: &DbName, txid: TxId) -> Result<(), IoFailure> {
        self.store().persist_rejoin(db, txid).map_err(|e| e.failure())
    }

    fn persist_epoch(&self, epoch: Epoch) -> Result<(), IoFailure> {
        self.store().persist_epoch(epoch).map_err(|e| e.failure())
    }
}
