//! replite-fuse: the FUSE adapter between SQLite and replite's core.
//!
//! Applications open databases in the mount as ordinary files. On the primary, this crate
//! finds SQLite's commit points (the invalidation of a rollback journal, the completion of a
//! WAL commit frame), reads back exactly the pages the transaction changed, and hands them to
//! a [`CommitSink`] while it holds the syscall that marks the commit; the sink's answer decides
//! whether that syscall succeeds. On a replica no write transaction may start or commit, and
//! [`Mount::apply_ltx`] writes incoming transactions under the locks SQLite readers honour.
//! [`Mount::set_role`] switches between the two without remounting, and
//! [`Mount::copy_committed`] writes a consistent copy of a database as committed (for
//! snapshots and backups) on either.
//!
//! This crate must never decide policy: whether a node may write, which TXID comes next, how
//! durable a commit must be, or whether an LTX file belongs at this position are the core's
//! answers, reached through [`CommitSink`] and the daemon. It only translates kernel requests
//! into captured transactions and carries out applies it is told to do.
//!
//! The data directory has LiteFS's layout (`dbs/<name>/database` and its `journal`, `wal`
//! and `shm` beside it; see [`database_path`]), shared with the daemon's store.
//!
//! Unit tests sit beside the code. `tests/` mounts real FUSE filesystems (root and
//! `/dev/fuse` needed) and drives them with SQLite through rusqlite: `rollback_journal.rs` and
//! `wal.rs` check, after every transaction, that the captured pages encoded as LTX and
//! applied to a separate copy reproduce the real file; `refusals.rs` the refusal paths and
//! unsupported journal modes; `replica.rs` read-only replicas and readers during apply;
//! `copy_committed.rs` copies taken while SQLite writes; `role_switch.rs` promotion and demotion with connections open; `layout.rs` the data
//! directory; `app_crash.rs` an application killed mid-transaction; `status_files.rs` and `unmount.rs`
//! the rest. `benches/sqlite.rs` compares native SQLite with the mount
//! (docs/BENCHMARKS.md); the design choices are in docs/decisions/fuse-*.md.

#![warn(missing_docs)]

mod boundary;
mod copy;
mod database_node;
mod demoted_wal;
mod direct;
mod dropped;
mod error;
mod file_system;
mod halt;
mod hot_journal;
mod journal_node;
mod kept_journal;
mod layout;
mod locks;
mod ltx_room;
mod mount;
mod names;
mod owed_syncs;
mod replica;
mod shared;
mod unjournaled;
mod virtual_node;
mod wal_ahead;
mod wal_fold;
mod wal_node;

pub use boundary::{CapturedPage, CapturedTx, CommitSink, Durability, JournalMode, Refusal, WalSegment};
pub use copy::{CommittedCopy, CopiedTo, CopySink};
pub use direct::{DIRECT_ALIGN, DirectReader, DirectWriter};
pub use error::{ApplyLtxError, CaptureError, CopyError, HaltError, MountError};
pub use halt::WriterLocks;
pub use hot_journal::roll_back_hot_journal;
pub use layout::database_path;
pub use mount::{Mount, MountOptions, Role};
pub use names::{LAG_FILENAME, PRIMARY_FILENAME};
pub use owed_syncs::SyncCounts;
pub use wal_fold::{FoldedWal, fold_wal};
