//! A replica's writes under a halt lock it holds on its primary (LiteFS's
//! `litefs run -with-halt-lock-on`; decision 0022).
//!
//! The caller takes the lock over HTTP and tells the Node ([`Input::HoldHalt`]). From then on
//! a commit of that database on this replica is encoded on the lock's latest position, as
//! the primary encodes its own commits, and sent to the primary ([`Output::SendUnderHalt`]);
//! the commit is answered with the primary's verdict ([`Input::SentUnderHalt`]), and the next
//! one is made on top of it. The stream then brings each transaction back like any other
//! file: its pages are in the database already (the application wrote them through the
//! mount), so it is persisted, not applied ([`LtxOrigin::HaltEcho`]). The primary's side is
//! [`crate::node::RemoteCommit`].
//!
//! [`Input::HoldHalt`]: crate::node::Input::HoldHalt
//! [`Input::SentUnderHalt`]: crate::node::Input::SentUnderHalt

use crate::node::db::Db;
use crate::node::history::LtxEntry;
use crate::node::input::CommitId;
use crate::node::output::{HaltRefusal, LtxOrigin, Output, RefuseReason};
use crate::node::primary::{Transaction, encode_transaction};
use crate::node::time::Millis;
use crate::node::{Node, Role};
use crate::stream::DbName;
use crate::types::{Checksum, Pos, TxId};

/// A halt lock this replica holds on its primary for one database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HaltGrant {
    /// The lock's id at the primary.
    lock_id: i64,
    /// The position the next transaction is made on: the lock's, then each accepted one's.
    head: Pos,
}

/// A transaction this replica sent its primary under a halt lock, until the stream brings it
/// back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentTx {
    /// Its post-apply checksum: how the stream's file is known as this one.
    post: Checksum,
    /// The primary committed it, so the application's pages stay in the database file here:
    /// the file is ahead of this replica's history until the transaction comes back.
    accepted: bool,
}

/// A transaction sent to the primary under a halt lock, waiting for its answer.
#[derive(Debug, Clone)]
pub(crate) struct SentCommit {
    db: DbName,
    txid: TxId,
    post: Pos,
    /// The stream brought it back before the primary's answer: the primary committed it
    /// and this replica's history holds it.
    echoed: bool,
}

impl Db {
    /// Whether the database file may hold transactions sent under a halt lock that this
    /// history lacks: sent and not answered, or committed by the primary and not back yet.
    /// Until they come back, are refused, or a snapshot replaces the file, this node must not
    /// become primary: it would serve and stream pages its history does not have.
    pub(crate) fn ahead_of_history(&self) -> bool {
        !self.sent_under_halt.is_empty()
    }
}

impl Node {
    /// Whether a transaction of `name` sent under a halt lock waits for the primary's answer
    /// (SQLite's write lock is held meanwhile: no other commit of it can be made here).
    pub(crate) fn halt_commit_pending(&self, name: &DbName) -> bool {
        self.halt_commits.values().any(|sent| sent.db == *name)
    }

    /// Whether the file at the front of `name`'s inbox may be handled now. While a
    /// transaction sent under a halt lock waits for its answer, only that transaction coming
    /// back may: any other file would be applied under the application's pending commit
    /// (which SQLite's locks keep out on a real node), and a refusal would then roll the
    /// commit's pages back under it.
    pub(crate) fn inbox_front_may_go(&self, name: &DbName) -> bool {
        if !self.halt_commit_pending(name) {
            return true;
        }
        let Some((min, max, post)) =
            self.dbs.get(name).and_then(|db| db.inbox.front()).and_then(|f| f.range_and_post())
        else {
            // Nothing waiting, or a file verification will reject anyway.
            return true;
        };
        min == max && self.halt_commits.values().any(|s| s.db == *name && s.txid == max && s.post.checksum == post)
    }

    /// Whether commits of `name` on this node go to its primary under a halt lock.
    #[must_use]
    pub fn writes_under_halt(&self, name: &DbName) -> bool {
        matches!(self.role(), Role::Replica { .. }) && self.dbs.get(name).is_some_and(|db| db.halt.is_some())
    }

    pub(crate) fn on_hold_halt(&mut self, name: DbName, lock_id: i64, pos: Pos) {
        let at = self.pos(&name);
        let result = if !matches!(self.role(), Role::Replica { .. }) {
            Err(HaltRefusal::NotAReplica)
        } else if at != pos {
            Err(HaltRefusal::NotAtLockPosition { at })
        } else {
            self.dbs.entry(name.clone()).or_default().halt = Some(HaltGrant { lock_id, head: pos });
            Ok(())
        };
        self.emit(Output::HaltHeld { db: name, result });
    }

    pub(crate) fn on_release_halt(&mut self, name: &DbName) {
        if let Some(db) = self.dbs.get_mut(name) {
            db.halt = None;
        }
    }

    /// A commit of `name` on this replica, which holds a halt lock on it: encoded on the
    /// lock's latest position and sent to the primary.
    pub(crate) fn commit_under_halt(&mut self, now: Millis, commit: CommitId, name: DbName, tx: &Transaction<'_>) {
        let refuse = |node: &mut Node, reason| node.emit(Output::RefuseCommit { commit, reason });
        let Some(db) = self.dbs.get(&name) else { return refuse(self, RefuseReason::NotPrimary) };
        let Some(grant) = db.halt else { return refuse(self, RefuseReason::NotPrimary) };
        if db.page_size.is_some_and(|p| p != tx.page_size) {
            return refuse(self, RefuseReason::Invalid);
        }
        // SQLite commits one transaction at a time; the next is made on this one's answer.
        // Nor while this node is asking for the lease: it must not become primary with a
        // transaction of the old one's still unanswered (its pages would be in the file).
        if self.halt_commit_pending(&name) || self.acquiring() {
            return refuse(self, RefuseReason::Busy);
        }
        let Some((entry, bytes)) = encode_transaction(self.cfg.node_id, now, grant.head, tx) else {
            return refuse(self, RefuseReason::Invalid);
        };
        // Recorded before it is sent: the stream may bring it back before the answer.
        if let Some(db) = self.dbs.get_mut(&name) {
            db.sent_under_halt.insert(entry.max, SentTx { post: entry.post, accepted: false });
        }
        let sent = SentCommit { db: name.clone(), txid: entry.max, post: entry.post_pos(), echoed: false };
        self.halt_commits.insert(commit, sent);
        self.emit(Output::SendUnderHalt { commit, db: name, lock_id: grant.lock_id, bytes });
    }

    pub(crate) fn on_sent_under_halt(&mut self, now: Millis, commit: CommitId, accepted: bool) {
        let Some(sent) = self.halt_commits.remove(&commit) else { return };
        if accepted {
            if let Some(db) = self.dbs.get_mut(&sent.db) {
                if let Some(grant) = db.halt.as_mut() {
                    grant.head = sent.post;
                }
                if let Some(tx) = db.sent_under_halt.get_mut(&sent.txid) {
                    tx.accepted = true;
                }
            }
            let name = sent.db.clone();
            self.emit(Output::AckCommit { db: sent.db, commit, pos: sent.post });
            // Files held back while it waited may go now.
            self.process_inbox(now, &name);
            return;
        }
        if let Some(db) = self.dbs.get_mut(&sent.db) {
            // It never comes back.
            db.sent_under_halt.remove(&sent.txid);
        }
        self.emit(Output::RefuseCommit { commit, reason: RefuseReason::PrimaryRefused });
        if sent.echoed {
            // The primary did commit it (its file came back and is in this history), but its
            // answer was lost: SQLite now rolls its pages back out of the database file,
            // which then no longer matches the history. Start over from the primary's copy.
            let name = sent.db;
            self.distrust_database(now, &name, "a transaction committed under a halt lock was rolled back here");
            self.resync(now, format!("{name}: a transaction committed under a halt lock was rolled back here"));
        } else {
            self.process_inbox(now, &sent.db);
        }
    }

    /// Whose pages the file `entry` of `name`, arriving from the primary, holds: one this
    /// replica sent under a halt lock comes back as an echo (remembered until it is stored:
    /// a failed write brings it again). What was sent before it, or up to the end of any
    /// other file, can no longer come back and is forgotten. `None` when the file takes the place of
    /// a transaction the primary had committed for this replica (it was lost with that
    /// primary): the database file holds that transaction's pages, which no history here
    /// will, and applying the file over them could leave some behind unnoticed.
    pub(crate) fn origin_of_upstream_file(&mut self, name: &DbName, entry: &LtxEntry) -> Option<LtxOrigin> {
        let Some(db) = self.dbs.get_mut(name) else { return Some(LtxOrigin::Upstream) };
        if db.sent_under_halt.is_empty() {
            return Some(LtxOrigin::Upstream);
        }
        if entry.min == TxId(1) {
            // A snapshot replaces the whole file, the pages written here with the rest: what
            // comes after it, this replica's transactions too, must be applied.
            db.sent_under_halt.clear();
            return Some(LtxOrigin::Upstream);
        }
        let echo = entry.min == entry.max && db.sent_under_halt.get(&entry.max).is_some_and(|tx| tx.post == entry.post);
        let lost = !echo && db.sent_under_halt.range(..=entry.max).any(|(_, tx)| tx.accepted);
        let last_kept = if echo { entry.min.0.saturating_sub(1) } else { entry.max.0 };
        db.sent_under_halt.retain(|&txid, _| txid.0 > last_kept);
        if lost {
            return None;
        }
        if !echo {
            return Some(LtxOrigin::Upstream);
        }
        // Back before the primary's answer: the commit still waits for it (in synchronous mode
        // the primary answers only once the other candidates hold it too).
        if let Some(sent) = self.halt_commits.values_mut().find(|s| s.db == *name && s.txid == entry.max) {
            sent.echoed = true;
        }
        Some(LtxOrigin::HaltEcho)
    }
}
