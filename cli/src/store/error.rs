//! What can go wrong in the store, and how each failure is reported to the Node.

use std::io;
use std::path::PathBuf;

use replite_core::ltx::{ApplyError, Header, LtxError, VerifiedLtx};
use replite_core::node::IoFailure;
use replite_core::stream::DbName;
use replite_core::{Checksum, TxId};
use thiserror::Error;

/// A store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The call ("write", "fsync", "rename", …).
        op: &'static str,
        /// The file or directory it was made on.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// LTX bytes handed to `persist_ltx` did not verify; nothing was stored.
    #[error("database {db}: LTX {min}-{max} is malformed: {source}")]
    InvalidLtx {
        /// The database.
        db: DbName,
        /// The range it was to be stored under.
        min: TxId,
        /// See `min`.
        max: TxId,
        /// Why it failed verification.
        #[source]
        source: LtxError,
    },
    /// The LTX header's range is not the one the file was to be stored (or found) under.
    #[error("database {db}: LTX stored as {min}-{max} holds {found_min}-{found_max}")]
    RangeMismatch {
        /// The database.
        db: DbName,
        /// The range named.
        min: TxId,
        /// See `min`.
        max: TxId,
        /// The range in the header.
        found_min: TxId,
        /// See `found_min`.
        found_max: TxId,
    },
    /// The primary's own commit is too short to be an LTX file (its header or trailer is
    /// missing): the encoder that made it is broken. Nothing was stored.
    #[error("database {db}: own LTX {min}-{max} is only {len} bytes")]
    ShortLtx {
        /// The database.
        db: DbName,
        /// The range it was to be stored under.
        min: TxId,
        /// See `min`.
        max: TxId,
        /// Its length.
        len: usize,
    },
    /// An LTX file whose flush failed could not be read back whole to write it again: what
    /// was in it may never reach the disk.
    #[error("{}: unflushed LTX file lost after a failed flush: {reason}", path.display())]
    LostUnflushed {
        /// The file.
        path: PathBuf,
        /// What reading it back found.
        reason: String,
    },
    /// The LTX file to apply is not on disk.
    #[error("database {db}: LTX {min}-{max} is not in the store")]
    MissingLtx {
        /// The database.
        db: DbName,
        /// The range asked for.
        min: TxId,
        /// See `min`.
        max: TxId,
    },
    /// The Node asked to apply onto `base`, but the database file is at `database`. Nothing
    /// was written.
    #[error("database {db}: asked to apply LTX {min}-{max} onto {base} but the file is at {database}")]
    BaseMismatch {
        /// The database.
        db: DbName,
        /// The LTX's range.
        min: TxId,
        /// See `min`.
        max: TxId,
        /// The checksum the Node expected.
        base: Checksum,
        /// The database file's checksum.
        database: Checksum,
    },
    /// Applying a stored LTX file failed.
    #[error("database {db}: applying LTX {min}-{max}: {source}")]
    Apply {
        /// The database.
        db: DbName,
        /// The LTX's range.
        min: TxId,
        /// See `min`.
        max: TxId,
        /// Why.
        #[source]
        source: ApplyError,
    },
    /// The persisted epoch file holds something other than 16 hex digits and a newline.
    #[error("epoch file {} is malformed: {contents:?}", path.display())]
    InvalidEpochFile {
        /// The file.
        path: PathBuf,
        /// What it holds (at most the first 64 bytes).
        contents: String,
    },
}

impl StoreError {
    /// Fails with [`StoreError::RangeMismatch`] unless `header` is of the range `min`-`max`
    /// that the file is stored (or to be stored) under.
    pub(crate) fn check_range(db: &DbName, min: TxId, max: TxId, header: &Header) -> Result<(), StoreError> {
        let (found_min, found_max) = (header.min_txid, header.max_txid);
        if (found_min, found_max) == (min, max) {
            return Ok(());
        }
        Err(StoreError::RangeMismatch { db: db.clone(), min, max, found_min, found_max })
    }

    /// Verifies a whole LTX file from outside and checks its range.
    pub(crate) fn verify_range(
        db: &DbName,
        min: TxId,
        max: TxId,
        source: impl std::io::Read,
    ) -> Result<VerifiedLtx, StoreError> {
        let verified = replite_core::ltx::verify(source).map_err(|source| StoreError::InvalidLtx {
            db: db.clone(),
            min,
            max,
            source,
        })?;
        StoreError::check_range(db, min, max, verified.header())?;
        Ok(verified)
    }
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }

    /// The failure as the Node sees it (`Input::LtxDone`).
    #[must_use]
    pub fn failure(&self) -> IoFailure {
        match self {
            StoreError::Io { source, .. } => io_failure(source),
            StoreError::Apply { source: ApplyError::Io { source, .. }, .. } => io_failure(source),
            StoreError::MissingLtx { .. } | StoreError::InvalidEpochFile { .. } => IoFailure::Io,
            // What the file holds is no longer what it was written with: like a bad apply.
            StoreError::LostUnflushed { .. } => IoFailure::Mismatch,
            StoreError::InvalidLtx { .. }
            | StoreError::ShortLtx { .. }
            | StoreError::RangeMismatch { .. }
            | StoreError::BaseMismatch { .. }
            | StoreError::Apply { .. } => IoFailure::Mismatch,
        }
    }
}

/// ENOSPC and EDQUOT are "no space"; everything else is a plain I/O failure.
fn io_failure(e: &io::Error) -> IoFailure {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => IoFailure::NoSpace,
        _ => IoFailure::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_map_to_no_space_and_other_errors_to_io() {
        let err = |errno| StoreError::Io { op: "write", path: "x".into(), source: io::Error::from_raw_os_error(errno) };
        // 28 = ENOSPC, 122 = EDQUOT, 5 = EIO on Linux.
        assert_eq!(err(28).failure(), IoFailure::NoSpace);
        assert_eq!(err(122).failure(), IoFailure::NoSpace);
        assert_eq!(err(5).failure(), IoFailure::Io);
    }
}
