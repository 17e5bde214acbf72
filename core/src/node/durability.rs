//! Durability of LTX files written without an fsync (DESIGN invariant 4: exactly as durable
//! as the application asked, never less).
//!
//! A [`Durability::Deferred`] commit (WAL, or `synchronous=OFF`) and a file a replica in
//! asynchronous mode applies are written without an fsync; the position moves at once and
//! the files wait here for a flush. A flush (`FlushLtx`, answered by `LtxFlushed`) makes every
//! file of a database up to a TXID durable in one go, so a busy database pays one fsync round
//! for many commits. Flushes run one at a time per database and start as soon as files wait
//! (the next one covers whatever was written while the previous ran: group commit); the
//! [`TimerKind::Flush`] timer retries after a failure. What waits on durability:
//!
//! * an application's fsync ([`Input::Sync`], SQLite's WAL fsync): answered once every commit
//!   handed in before it is durable;
//! * a [`Durability::Requested`] commit written while earlier files were still unflushed,
//!   and every commit in synchronous mode: acknowledged only once durable here (and, in
//!   synchronous mode, on every other candidate);
//! * a replica's acknowledgement to its primary: it names only durable positions, so
//!   synchronous mode and the asynchronous window count only what survives a crash.
//!
//! [`Durability::Deferred`]: crate::node::Durability::Deferred
//! [`Durability::Requested`]: crate::node::Durability::Requested
//! [`Input::Sync`]: crate::node::Input::Sync

use crate::node::input::{IoFailure, OpId, SyncId};
use crate::node::output::{Event, Output, RefuseReason};
use crate::node::time::Millis;
use crate::node::timer::TimerKind;
use crate::node::{Node, Role};
use crate::stream::DbName;
use crate::types::{Pos, TxId};

impl Node {
    /// The application fsynced `name`: answer once everything committed so far is durable.
    pub(crate) fn on_sync(&mut self, now: Millis, sync: SyncId, name: DbName) {
        // What a replica sends under a halt lock is durable at the primary before its commit
        // returns.
        if self.writes_under_halt(&name) {
            self.emit(Output::SyncDone { sync, result: Ok(()) });
            return;
        }
        // As before deferred commits existed: a node that may not write refuses the fsync
        // that would complete a write transaction (SQLite then abandons it).
        if self.write_grant(now).is_none() && self.dbs.get(&name).is_none_or(|db| !db.unflushed()) {
            self.emit(Output::SyncDone { sync, result: Err(RefuseReason::NotPrimary) });
            return;
        }
        let Some(db) = self.dbs.get_mut(&name) else {
            self.emit(Output::SyncDone { sync, result: Ok(()) });
            return;
        };
        db.synced_since_commit = true;
        db.syncs_follow_commits = true;
        // A commit whose file is still being written was handed in before this fsync.
        let target = db.commit.as_ref().map_or(db.pos.txid, |c| c.entry().max.max(db.pos.txid));
        db.sync_waiters.push((sync, target));
        self.answer_syncs(&name);
        self.start_flush(now, &name);
    }

    /// Answers the fsyncs of `name` whose commits are all durable now.
    pub(crate) fn answer_syncs(&mut self, name: &DbName) {
        let Some(db) = self.dbs.get_mut(name) else { return };
        let (durable, pos, writing) = (db.durable_txid, db.pos.txid, db.commit.as_ref().is_some_and(|c| c.writing()));
        let mut done = Vec::new();
        db.sync_waiters.retain(|&(sync, target)| {
            // A commit that failed never reached its TXID: what is durable is all there is.
            let covered = durable >= target || (!writing && durable >= pos);
            if covered {
                done.push(sync);
            }
            !covered
        });
        for sync in done {
            self.emit(Output::SyncDone { sync, result: Ok(()) });
        }
    }

    /// Starts a flush of `name` through its position, unless one is in flight (its answer
    /// starts the next) or nothing waits.
    pub(crate) fn start_flush(&mut self, now: Millis, name: &DbName) {
        let op = self.next_op();
        let Some(db) = self.dbs.get_mut(name) else { return };
        if db.flushing.is_some() || !db.unflushed() {
            return;
        }
        let through = db.pos.txid;
        db.flushing = Some((op, through));
        self.ops.insert(op, name.clone());
        self.emit(Output::FlushLtx { db: name.clone(), op, through });
        // The safety net: a flush that fails is retried when this fires.
        if self.timers.get(TimerKind::Flush).is_none() {
            self.timers.set(TimerKind::Flush, now + self.cfg.flush_ms.max(1));
        }
    }

    /// Flushes `name` now if something waits for it (an application's fsync, a commit that
    /// must be durable before its acknowledgement), else within `flush_ms`: a flush running
    /// back to back with commits that nobody waits on only slows them (each fsync's journal
    /// commit holds up the next file's creation), while one per interval covers them all.
    pub(crate) fn schedule_flush(&mut self, now: Millis, name: &DbName) {
        let Some(db) = self.dbs.get(name) else { return };
        if !db.unflushed() {
            return;
        }
        let waited_on = db.syncs_follow_commits
            || !db.sync_waiters.is_empty()
            || db.commit.as_ref().is_some_and(|c| c.needs_durable() && db.durable_txid < c.entry().max)
            || db.rejoining();
        if waited_on {
            self.start_flush(now, name);
        } else if self.timers.get(TimerKind::Flush).is_none() {
            self.timers.set(TimerKind::Flush, now + self.cfg.flush_ms.max(1));
        }
    }

    /// Whether `persist` may make one file durable by itself: only when every earlier file
    /// of the database is durable and no flush is in flight (which would otherwise still be
    /// fsyncing an earlier file when this one is reported durable).
    pub(crate) fn may_persist_durably(&self, name: &DbName) -> bool {
        self.dbs.get(name).is_none_or(|db| !db.unflushed() && db.flushing.is_none())
    }

    /// A flush finished.
    pub(crate) fn on_ltx_flushed(&mut self, now: Millis, op: OpId, result: Result<(), IoFailure>) {
        let Some(name) = self.ops.remove(&op) else { return };
        let Some(db) = self.dbs.get_mut(&name) else { return };
        // A snapshot applied meanwhile replaced the files this flush covered.
        let Some((_, through)) = db.flushing.filter(|(o, _)| *o == op) else { return };
        db.flushing = None;
        match result {
            Ok(()) => {
                debug_assert!(through <= db.pos.txid, "flushed past the position");
                db.durable_txid = db.durable_txid.max(through);
                self.after_durable(now, &name);
            }
            Err(IoFailure::Mismatch) if matches!(self.role(), Role::Replica { .. } | Role::Waiting) => {
                // A received file is gone or changed before it was durable (the store read it
                // back to write it again and it no longer verifies): this replica's history
                // has a hole no flush can fill, and it would never reconnect (it waits for
                // everything applied to be durable). Its primary holds the data: start over
                // from a snapshot.
                self.event(Event::DiskFailed { db: name.clone(), failure: IoFailure::Mismatch });
                self.distrust_database(
                    now,
                    &name,
                    "a received file was lost before it was durable: waiting for a snapshot",
                );
                self.resync_after_store_failure(
                    now,
                    format!("{name}: a received LTX file was lost before it was durable"),
                );
            }
            Err(failure) => {
                // The files stay in the page cache; the timer retries. Fsyncs waiting now
                // are told it failed (SQLite reports the I/O error to the application).
                self.event(Event::DiskFailed { db: name.clone(), failure });
                let waiters = self.dbs.get_mut(&name).map(|db| std::mem::take(&mut db.sync_waiters));
                for (sync, _) in waiters.unwrap_or_default() {
                    self.emit(Output::SyncDone { sync, result: Err(RefuseReason::of_disk_failure(failure)) });
                }
                self.timers.set(TimerKind::Flush, now + self.cfg.flush_ms.max(1));
            }
        }
    }

    /// More of `name` is durable: answer what waited for it, acknowledge it upstream, and
    /// flush again if more waits.
    fn after_durable(&mut self, now: Millis, name: &DbName) {
        self.answer_syncs(name);
        self.try_finish_commit(name);
        self.clear_rejoin_if_back(name);
        if matches!(self.role(), Role::Replica { .. } | Role::Waiting) {
            if let Some(pos) = self.durable_pos(name) {
                let conn = self.upstream.as_ref().map(|u| u.conn());
                self.send_ack(conn, name, pos);
            }
            // A replica reconnects only once what it will report is durable (see `maybe_connect`).
            if self.dbs.values().all(|db| !db.unflushed()) {
                self.maybe_connect(now);
            }
        }
        self.schedule_flush(now, name);
        self.after_progress(now);
    }

    /// The position of the newest durable file of `name`, if it is retained.
    pub(crate) fn durable_pos(&self, name: &DbName) -> Option<Pos> {
        let db = self.dbs.get(name)?;
        if db.durable_txid == db.pos.txid {
            return Some(db.pos);
        }
        db.history.ending_at(db.durable_txid).map(|f| f.post_pos())
    }

    /// The flush timer: flush every database whose files wait (a failed flush is retried).
    pub(crate) fn on_flush_timer(&mut self, now: Millis) {
        let names: Vec<DbName> = self.dbs.iter().filter(|(_, db)| db.unflushed()).map(|(n, _)| n.clone()).collect();
        for name in &names {
            self.start_flush(now, name);
        }
    }

    /// On shutdown: flush what waits, so a clean stop leaves everything durable.
    pub(crate) fn flush_all_on_shutdown(&mut self) {
        let names: Vec<DbName> =
            self.dbs.iter().filter(|(_, db)| db.unflushed() && db.flushing.is_none()).map(|(n, _)| n.clone()).collect();
        for name in names {
            let op = self.next_op();
            if let Some(db) = self.dbs.get_mut(&name) {
                let through = db.pos.txid;
                db.flushing = Some((op, through));
                self.ops.insert(op, name.clone());
                self.emit(Output::FlushLtx { db: name, op, through });
            }
        }
    }

    /// A database's files were replaced (snapshot) or dropped: what it now holds is durable
    /// as of `txid`, and a flush in flight no longer means anything.
    pub(crate) fn reset_durability(&mut self, name: &DbName, txid: TxId) {
        if let Some(db) = self.dbs.get_mut(name) {
            db.durable_txid = txid;
            db.flushing = None;
        }
        self.answer_syncs(name);
    }
}
