//! When SQLite's fsyncs must reach the disk (decision 0017).
//!
//! **Rollback journals.** SQLite fsyncs its journal (twice with `synchronous=FULL`, and the
//! directory after creating it) so that the journal is durable before the database file is
//! changed: that is all a rollback after a power loss needs. The mount owes those syncs until
//! the first write to the database file after them and pays them there, in one `fdatasync`
//! of the journal and one of the directories whose entries changed (which costs little right
//! after: the journal's sync committed the file system's journal). Until then SQLite has
//! changed nothing a rollback would have to undo. The commit itself is made durable by its
//! LTX file, as before.
//!
//! **WAL.**
//! A WAL fsync asks that every commit in the WAL survive a power loss. On a primary that is
//! already the LTX history's job: the fsync is answered only once every commit handed in is
//! durable there (`CommitSink::sync`), and after a crash the WAL fold keeps the WAL's longest
//! prefix that ends at a durable position and the Node replays the LTX files past it. So the
//! WAL file itself needs syncing only where SQLite relies on the order of its own writes:
//!
//! * **Before a checkpoint writes the database.** The checkpoint copies frames into the
//!   database file; if the database reached the disk with later pages than the WAL's surviving
//!   prefix, neither the database alone nor database plus prefix would be a state SQLite ever
//!   committed, and the fold would find nothing durable. So the first database write after a
//!   fsync answered from the history syncs the WAL first (SQLite asks for the same sync at the
//!   start of every checkpoint; this is that sync, moved to where it matters).
//! * **After SQLite rewrote the WAL header** (a restart: new salts, frames about to overwrite
//!   the old log), the next fsync is carried out, as SQLite orders a new header before the
//!   frames that follow it. The fold would cope without it (it checks salts and checksums); it
//!   is one sync per restart.
//!
//! A kill -9 of the daemon loses nothing either way: the page cache keeps the WAL's writes.

use std::sync::atomic::{AtomicU64, Ordering};

/// How the mount has answered SQLite's fsyncs of journals and WALs since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// WAL files synced: at fsyncs after a new header, and before checkpoints.
    pub wal_synced: u64,
    /// WAL fsyncs answered once the LTX history held every commit, without syncing the WAL.
    pub wal_from_history: u64,
    /// Rollback journals synced, before a write to their database.
    pub journal_synced: u64,
    /// Journal fsyncs answered at once, the sync owed until the database is written.
    pub journal_owed: u64,
}

/// [`SyncCounts`], kept by every FUSE thread.
#[derive(Debug, Default)]
pub(crate) struct SyncCounters {
    wal_synced: AtomicU64,
    wal_from_history: AtomicU64,
    journal_synced: AtomicU64,
    journal_owed: AtomicU64,
}

impl SyncCounters {
    pub(crate) fn wal(&self, synced: bool) {
        let counter = if synced { &self.wal_synced } else { &self.wal_from_history };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn journal(&self, synced: bool) {
        let counter = if synced { &self.journal_synced } else { &self.journal_owed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> SyncCounts {
        SyncCounts {
            wal_synced: self.wal_synced.load(Ordering::Relaxed),
            wal_from_history: self.wal_from_history.load(Ordering::Relaxed),
            journal_synced: self.journal_synced.load(Ordering::Relaxed),
            journal_owed: self.journal_owed.load(Ordering::Relaxed),
        }
    }
}

/// What a database's WAL has been through since it was last synced for real.
#[derive(Debug, Default)]
pub(crate) struct WalSync {
    /// SQLite wrote the WAL header.
    header_written: bool,
    /// A WAL fsync was answered from the LTX history alone.
    answered_from_history: bool,
}

impl WalSync {
    /// A write reached the WAL at `offset`.
    pub(crate) fn wal_written(&mut self, offset: u64) {
        if offset < crate::wal_node::WAL_HEADER_SIZE {
            self.header_written = true;
        }
    }

    /// SQLite fsynced the WAL and every commit in it is durable in the LTX history: whether
    /// the WAL file must be synced too. When not, the fsync counts as answered from history.
    pub(crate) fn fsync_needs_wal_sync(&mut self) -> bool {
        if self.header_written {
            return true;
        }
        self.answered_from_history = true;
        false
    }

    /// Whether the WAL must be synced before a write to the database file (a checkpoint).
    pub(crate) fn database_write_needs_wal_sync(&self) -> bool {
        self.answered_from_history
    }

    /// The WAL file was synced, truncated or deleted: nothing of it is owed any more.
    pub(crate) fn settled(&mut self) {
        *self = WalSync::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_answered_from_history_until_a_checkpoint_writes_the_database() {
        let mut wal = WalSync::default();
        wal.wal_written(32);
        assert!(!wal.database_write_needs_wal_sync(), "nothing was promised yet");
        assert!(!wal.fsync_needs_wal_sync());
        wal.wal_written(32 + 4120);
        assert!(!wal.fsync_needs_wal_sync());
        assert!(wal.database_write_needs_wal_sync());
        wal.settled();
        assert!(!wal.database_write_needs_wal_sync(), "the sync before the checkpoint covered it");
    }

    #[test]
    fn a_new_header_is_synced_at_the_next_fsync() {
        let mut wal = WalSync::default();
        wal.wal_written(0);
        assert!(wal.fsync_needs_wal_sync());
        assert!(!wal.database_write_needs_wal_sync(), "a real sync answers nothing from history");
        wal.settled();
        wal.wal_written(32);
        assert!(!wal.fsync_needs_wal_sync());
    }
}
