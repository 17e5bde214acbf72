//! What the driver needs from durable storage, so the Node's storage outputs are carried out
//! the same way whichever store sits behind them (the data directory and the mount in
//! production, memory in the driver's own tests).

use std::io;
use std::path::PathBuf;

use replite_core::node::IoFailure;
use replite_core::stream::DbName;
use replite_core::{Checksum, Epoch, Pos, TxId};

/// A copy of a database's committed contents in a temporary file (deleted when dropped).
#[derive(Debug)]
pub struct DatabaseImage {
    /// The file.
    pub file: tempfile::NamedTempFile,
    /// Its database checksum.
    pub checksum: Checksum,
}

impl DatabaseImage {
    /// Where the image is.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.file.path().to_path_buf()
    }
}

/// Where [`Storage::stream_committed`] put the database.
#[derive(Debug)]
pub enum Streamed {
    /// Handed to the sink.
    Sink,
    /// Copied to a file instead.
    File(DatabaseImage),
}

/// The database a snapshot LTX file holds, written while the spooled file was verified
/// (`driver::spool`), and the position it is at: the apply replaces the database file with
/// it instead of writing every page again (decision 0010).
#[derive(Debug)]
pub struct SnapshotImage {
    /// The database file: a temporary file beside the database, not fsynced (the LTX file
    /// is the durable record; recovery replays it over a database a crash tore).
    pub file: tempfile::NamedTempFile,
    /// The snapshot's position: its max TXID and post-apply checksum.
    pub pos: Pos,
}

/// What [`Storage::persist_and_apply_now`] got done.
#[derive(Debug)]
pub enum AppliedNow {
    /// Stored and applied (or failed): the position after it.
    Done(Result<Pos, IoFailure>),
    /// Stored; the apply would have had to wait for a SQLite connection's lock.
    Stored,
}

/// Durable storage of LTX files, the databases they apply to, and the highest epoch seen.
pub trait Storage: Send + Sync + 'static {
    /// A primary's own commit: writes the LTX file (with `durable`, also fsynced) and returns
    /// the position after it. The database already holds the pages. A file written without
    /// `durable` waits for [`Storage::flush_ltx`]; a torn one is dropped at recovery.
    fn persist_ltx(&self, db: &DbName, min: TxId, max: TxId, bytes: &[u8], durable: bool) -> Result<Pos, IoFailure>;
    /// A replicated file: writes it (with `durable`, fsynced first), then applies it to the
    /// database at `base` where readers see it whole or not at all.
    fn persist_and_apply(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        bytes: &[u8],
        base: Checksum,
        durable: bool,
    ) -> Result<Pos, IoFailure>;
    /// [`Storage::persist_and_apply`] for a caller that must not wait for SQLite's readers
    /// (the driver's loop): the file is written without an fsync, then applied only if that
    /// needs no wait. [`AppliedNow::Stored`] leaves the apply to [`Storage::apply_stored`] on
    /// a thread that may wait. The default does both at once.
    fn persist_and_apply_now(&self, db: &DbName, min: TxId, max: TxId, bytes: &[u8], base: Checksum) -> AppliedNow {
        AppliedNow::Done(self.persist_and_apply(db, min, max, bytes, base, false))
    }
    /// A replicated file whose pages the database already holds (a transaction this replica
    /// wrote under a halt lock, back from its primary): stored as
    /// [`Storage::persist_and_apply`] stores it, not applied.
    fn persist_applied(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        bytes: &[u8],
        durable: bool,
    ) -> Result<Pos, IoFailure> {
        self.persist_ltx(db, min, max, bytes, durable)
    }
    /// Applies a file [`Storage::persist_and_apply_now`] stored but could not apply.
    fn apply_stored(&self, db: &DbName, min: TxId, max: TxId, bytes: &[u8], base: Checksum) -> Result<Pos, IoFailure> {
        self.persist_and_apply(db, min, max, bytes, base, false)
    }
    /// A temporary file to spool an LTX file of `db` into as it arrives (deleted if dropped).
    fn create_spool(&self, db: &DbName) -> io::Result<tempfile::NamedTempFile>;
    /// A temporary file beside `db`'s database that a snapshot's database can be written to
    /// while it is spooled, then given to [`Storage::persist_spooled_and_apply`]; `None` if
    /// this storage applies snapshots page by page only.
    fn create_image(&self, _db: &DbName) -> io::Result<Option<tempfile::NamedTempFile>> {
        Ok(None)
    }
    /// Like `persist_and_apply`, for a file spooled into `spool`, verified whole and fsynced:
    /// the spool becomes the stored file (not copied) and is applied from disk, or, for a
    /// snapshot whose database was built while it was spooled (`image`), the database file
    /// is replaced by that image.
    fn persist_spooled_and_apply(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        spool: tempfile::NamedTempFile,
        image: Option<SnapshotImage>,
        base: Checksum,
    ) -> Result<Pos, IoFailure>;
    /// [`Storage::persist_applied`] for a file spooled into `spool` (verified whole, leading
    /// to `post`, fsynced): the spool becomes the stored file, nothing is applied.
    fn persist_spooled_applied(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        spool: tempfile::NamedTempFile,
        post: Pos,
    ) -> Result<Pos, IoFailure> {
        let bytes = std::fs::read(spool.path()).map_err(|_| IoFailure::Io)?;
        self.persist_applied(db, min, max, &bytes, true)?;
        Ok(post)
    }
    /// Makes every LTX file of `db` written without `durable`, up to `through`, durable.
    fn flush_ltx(&self, db: &DbName, through: TxId) -> Result<(), IoFailure>;
    /// Prepares what makes the next writes of `db` cheaper (spare files), off the commit path.
    fn refill_spares(&self, _db: &DbName) {}
    /// Whether `db` has used up half of its spare files, so a refill is due.
    fn spares_low(&self, _db: &DbName) -> bool {
        false
    }
    /// Applies a file already stored (recovery replay).
    fn replay_ltx(&self, db: &DbName, min: TxId, max: TxId, base: Checksum) -> Result<Pos, IoFailure>;
    /// Reads a stored LTX file, to send it to a replica.
    fn read_ltx(&self, db: &DbName, min: TxId, max: TxId) -> io::Result<Vec<u8>>;
    /// Copies what is committed in `db` right now, for a snapshot.
    fn copy_committed(&self, db: &DbName) -> io::Result<DatabaseImage>;
    /// Hands what is committed in `db` right now to `sink` (`replite_fuse::CopySink`: the
    /// checksum first, then the pages, under the readers' locks), or, where it cannot,
    /// copies it to a file as [`Storage::copy_committed`] does.
    fn stream_committed(&self, db: &DbName, _sink: &mut dyn replite_fuse::CopySink) -> io::Result<Streamed> {
        self.copy_committed(db).map(Streamed::File)
    }
    /// A temporary file for the part of a snapshot a slow replica could not take while the
    /// database was locked (deleted when dropped).
    fn spill_file(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new()
    }
    /// Deletes an LTX file retention no longer needs.
    fn remove_ltx(&self, db: &DbName, min: TxId, max: TxId) -> Result<(), IoFailure>;
    /// Records the highest lease epoch seen.
    fn persist_epoch(&self, epoch: Epoch) -> Result<(), IoFailure>;
    /// Records the TXID a replica moved back by a snapshot must reach (zero: none).
    fn persist_rejoin(&self, db: &DbName, txid: TxId) -> Result<(), IoFailure>;
}
