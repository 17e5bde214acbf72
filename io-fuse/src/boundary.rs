//! The narrow, synchronous boundary between the filesystem and whatever decides policy (the
//! daemon's driver around `core::Node`, or a test double).
//!
//! The filesystem calls [`CommitSink`] at each commit point while it holds the SQLite syscall
//! that marks it; the answer decides whether that syscall succeeds. The filesystem never
//! decides whether a write may happen, which TXID comes next, or how durable anything is.

use replite_core::types::{PageSize, Pgno};
use thiserror::Error;

/// How SQLite journals the database, as seen from the commit point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// Rollback journal, committed by deleting `<db>-journal`.
    Delete,
    /// Rollback journal, committed by truncating `<db>-journal` to zero bytes.
    Truncate,
    /// Rollback journal, committed by zeroing the journal header.
    Persist,
    /// Write-ahead log, committed by writing a frame whose commit field is non-zero.
    Wal,
}

/// Whether SQLite asked for this commit to be durable before the syscall returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// SQLite fsynced during the transaction (rollback journal with `synchronous` above OFF):
    /// the commit must be durable before [`CommitSink::commit`] returns.
    Requested,
    /// SQLite has not asked yet (WAL, where the fsync comes after the commit frame, or
    /// `synchronous=OFF`). For WAL, [`CommitSink::sync`] follows when SQLite fsyncs.
    Deferred,
}

/// One page of a captured transaction, with its contents after the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPage {
    /// Page number (never the lock page, never beyond the commit size).
    pub pgno: Pgno,
    /// The page's bytes after the transaction; exactly one page long.
    pub data: Vec<u8>,
}

/// A transaction captured at its commit point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedTx {
    /// Database name (the file's name in the mount).
    pub db: String,
    /// Page size of the database after the transaction.
    pub page_size: PageSize,
    /// Database size in pages after the transaction.
    pub commit: u32,
    /// Every page the transaction changed, in ascending page order. Pages past `commit` are
    /// never listed; the database shrinks to `commit` pages.
    pub pages: Vec<CapturedPage>,
    /// The journal mode the commit point revealed.
    pub mode: JournalMode,
    /// Whether SQLite asked for durability before the commit syscall returns.
    pub durability: Durability,
    /// Where the transaction sits in the WAL (WAL mode only), for the LTX header's WAL fields.
    pub wal: Option<WalSegment>,
}

/// The frames of a WAL transaction, as LiteFS records them in LTX headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalSegment {
    /// Byte offset of the transaction's first frame in the WAL.
    pub offset: u64,
    /// Bytes from the first frame to the end of the commit frame.
    pub size: u64,
    /// WAL header salt 1.
    pub salt1: u32,
    /// WAL header salt 2.
    pub salt2: u32,
}

/// Why the policy side refused a commit or a sync.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// This node may not write (it is a replica, or its lease is not safely held). SQLite sees
    /// `EROFS`.
    #[error("read-only: {reason}")]
    ReadOnly {
        /// Why, for logs.
        reason: String,
    },
    /// The commit could not be made durable. SQLite sees `EIO`.
    #[error("commit failed: {reason}")]
    Failed {
        /// Why, for logs.
        reason: String,
    },
    /// The disk is full. SQLite sees `ENOSPC`, which it reports as `SQLITE_FULL` where the
    /// syscall is a write (a WAL commit frame, a PERSIST journal's header).
    #[error("disk full: {reason}")]
    NoSpace {
        /// Why, for logs.
        reason: String,
    },
}

/// What the filesystem calls at commit points. Implementations block until the policy side
/// has answered; the filesystem holds the SQLite syscall meanwhile.
pub trait CommitSink: Send + Sync + 'static {
    /// A transaction reached its commit point. `Ok` lets the syscall succeed; a refusal makes
    /// it fail and the filesystem leaves the database as SQLite will roll it back.
    fn commit(&self, tx: &CapturedTx) -> Result<(), Refusal>;

    /// A write transaction on `db` is starting: SQLite is creating its rollback journal
    /// (DELETE), writing a fresh journal header (TRUNCATE, PERSIST; also after a creation, so
    /// this may be asked twice per transaction), or writing the first WAL frame of a
    /// transaction. A refusal fails that syscall before the database or WAL is touched:
    /// creating the journal fails with `EACCES`, which SQLite reports as `SQLITE_READONLY`;
    /// the other two fail with `EROFS`, which SQLite reports as `SQLITE_IOERR_WRITE`.
    fn may_write(&self, db: &str) -> Result<(), Refusal>;

    /// SQLite fsynced `db` (WAL mode): every commit handed in so far must be durable before
    /// this returns.
    ///
    /// A refusal here cannot be undone cleanly: the commit was already accepted, but SQLite
    /// abandons a WAL transaction whose fsync fails (it never publishes it in the WAL index).
    /// The policy side must treat a failed sync as a divergence of the local database from its
    /// history (halt writes and re-synchronise), never as a routine refusal.
    fn sync(&self, db: &str) -> Result<(), Refusal>;

    /// The application asks to delete database `db`. `Ok` lets the unlink happen.
    fn delete(&self, db: &str) -> Result<(), Refusal>;
}
