//! Errors of the FUSE adapter.

use std::io;
use std::path::PathBuf;

use replite_core::ltx::{ApplyError, LtxError};
use thiserror::Error;

/// Why a transaction could not be captured at its commit point. The commit syscall fails with
/// `EIO` and SQLite rolls the transaction back.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// Reading a backing file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The backing file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The database header names a page size SQLite does not allow.
    #[error("database {db}: invalid page size {size} in its header")]
    InvalidPageSize {
        /// Database name.
        db: String,
        /// The header's value (after mapping 1 to 65536).
        size: u32,
    },
    /// The database file ends inside a page.
    #[error("database {db}: size {size} is not a multiple of its page size {page_size}")]
    PartialPage {
        /// Database name.
        db: String,
        /// File size in bytes.
        size: u64,
        /// Page size from the header.
        page_size: u32,
    },
    /// A WAL frame names page 0 or sits beyond the end of the file.
    #[error("{db}-wal: invalid frame at offset {offset}: {reason}")]
    InvalidWalFrame {
        /// Database name.
        db: String,
        /// Byte offset of the frame header.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

impl CaptureError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> CaptureError {
        CaptureError::Io { path: path.into(), source }
    }
}

/// Why mounting failed.
#[derive(Debug, Error)]
pub enum MountError {
    /// The data directory could not be created or read.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The FUSE session could not start.
    #[error("mounting at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Why an LTX file could not be applied to a replica's database.
#[derive(Debug, Error)]
pub enum ApplyLtxError {
    /// The file failed verification; nothing was written.
    #[error("LTX file for {db} failed verification: {source}")]
    Invalid {
        /// Database name.
        db: String,
        /// The decoder's error.
        #[source]
        source: LtxError,
    },
    /// The database name is not one the mount can hold.
    #[error("invalid database name {db:?}")]
    InvalidName {
        /// The name.
        db: String,
    },
    /// A drop (commit size zero) where only a transaction may be written (under a halt lock).
    #[error("not applying a drop of {db} under a halt lock")]
    Drop {
        /// Database name.
        db: String,
    },
    /// This node is the primary ([`crate::Mount::set_role`]): its database takes writes from
    /// applications only. Nothing was written.
    #[error("not applying LTX to {db}: this node is the primary")]
    Primary {
        /// Database name.
        db: String,
    },
    /// Opening the database or taking SQLite's locks failed.
    #[error("locking {db} for apply ({step}): {source}")]
    Lock {
        /// Database name.
        db: String,
        /// Which step failed.
        step: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Rolling back a hot journal before the apply failed (the database may hold part of the
    /// rollback; the journal is still there, so the next attempt or SQLite completes it).
    #[error("rolling back the hot journal of {db} before applying ({step}): {source}")]
    HotJournal {
        /// Database name.
        db: String,
        /// Which step failed.
        step: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Replacing the database file with a snapshot's image failed: nothing was replaced
    /// (`step` "rename") or the file was replaced and the mount's descriptors not all moved
    /// to it (later steps: the next apply or a restart mends it).
    #[error("replacing {db} with a snapshot's database ({step}): {source}")]
    Replace {
        /// Database name.
        db: String,
        /// Which step failed.
        step: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The codec refused or failed to apply the file.
    #[error("applying LTX to {db}: {source}")]
    Apply {
        /// Database name.
        db: String,
        /// The codec's error.
        #[source]
        source: ApplyError,
    },
}

/// Why [`crate::Mount::copy_committed`] could not copy a database. Each names the database
/// and the step that failed; `dest` may hold a partial copy.
#[derive(Debug, Error)]
pub enum CopyError {
    /// The database name is not one the mount can hold.
    #[error("invalid database name {db:?}")]
    InvalidName {
        /// The name.
        db: String,
    },
    /// There is no such database.
    #[error("copying {db}: no such database")]
    Missing {
        /// Database name.
        db: String,
    },
    /// The database has no committed page yet (an empty file, or a first transaction that
    /// never committed).
    #[error("copying {db}: the database is empty")]
    Empty {
        /// Database name.
        db: String,
    },
    /// Opening a file through the mount or taking one of SQLite's locks failed.
    #[error("copying {db} ({step}): {source}")]
    Lock {
        /// Database name.
        db: String,
        /// Which step failed.
        step: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading the database, its journal or WAL, or writing the copy failed.
    #[error("copying {db} ({step}) {path}: {source}")]
    Io {
        /// Database name.
        db: String,
        /// Which step failed.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The files disagree in a way SQLite would not accept (a WAL or hot journal whose page
    /// size is not the database's).
    #[error("copying {db} ({step}): {reason}")]
    Invalid {
        /// Database name.
        db: String,
        /// Which step found it.
        step: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Why [`crate::Mount::lock_writers`] (a halt lock's writer locks) failed.
#[derive(Debug, Error)]
pub enum HaltError {
    /// The database name is not one the mount can hold.
    #[error("invalid database name {db:?}")]
    InvalidName {
        /// The name.
        db: String,
    },
    /// The database does not exist here.
    #[error("no database {db:?} on this node")]
    NoDatabase {
        /// The name.
        db: String,
    },
    /// A lock stayed held by someone else until the deadline.
    #[error("{db} is busy: {lock} stayed held")]
    Busy {
        /// Database name.
        db: String,
        /// Which lock.
        lock: &'static str,
    },
    /// Opening or locking a file failed.
    #[error("halting writes to {db} ({step}): {source}")]
    Io {
        /// Database name.
        db: String,
        /// Which step failed.
        step: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}
