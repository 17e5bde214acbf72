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

use crate::node::history::LtxEntry;
use crate::node::input::CommitId;
use crate::node::output::{HaltRefusal, LtxOrigin, Output, RefuseReason};
use crate::node::primary::{Transaction, encode_transaction};
use crate::node::time::Millis;
use crate::node::{Node, Role};
use crate::stream::DbName;
use crate::types::{Pos, TxId};

/// A halt lock this replica holds on its primary for one database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HaltGrant {
    /// The lock's id at the primary.
    lock_id: i64,
    /// The position the next transaction is made on: the lock's, then each accepted one's.
    head: Pos,
}

/// A transaction sent to the primary under a halt lock, waiting for its answer.
#[derive(Debug, Clone)]
pub(crate) struct SentCommit {
    db: DbName,
    txid: TxId,
    post: Pos,
}

impl Node {
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
        if self.halt_commits.values().any(|sent| sent.db == name) {
            return refuse(self, RefuseReason::Busy);
        }
        let Some((entry, bytes)) = encode_transaction(self.cfg.node_id, now, grant.head, tx) else {
            return refuse(self, RefuseReason::Invalid);
        };
        // Recorded before it is sent: the stream may bring it back before the answer.
        if let Some(db) = self.dbs.get_mut(&name) {
            db.sent_under_halt.insert(entry.max, entry.post);
        }
        self.halt_commits.insert(commit, SentCommit { db: name.clone(), txid: entry.max, post: entry.post_pos() });
        self.emit(Output::SendUnderHalt { commit, db: name, lock_id: grant.lock_id, bytes });
    }

    pub(crate) fn on_sent_under_halt(&mut self, commit: CommitId, accepted: bool) {
        let Some(sent) = self.halt_commits.remove(&commit) else { return };
        let Some(db) = self.dbs.get_mut(&sent.db) else { return };
        if accepted {
            if let Some(grant) = db.halt.as_mut() {
                grant.head = sent.post;
            }
            self.emit(Output::AckCommit { db: sent.db, commit, pos: sent.post });
        } else {
            // It never comes back.
            db.sent_under_halt.remove(&sent.txid);
            self.emit(Output::RefuseCommit { commit, reason: RefuseReason::PrimaryRefused });
        }
    }

    /// Whose pages the file `entry` of `name`, arriving from the primary, holds: one this
    /// replica sent under a halt lock comes back as an echo (and is forgotten); what was sent
    /// before the file (before its end, for a snapshot) can no longer come back.
    pub(crate) fn origin_of_upstream_file(&mut self, name: &DbName, entry: &LtxEntry) -> LtxOrigin {
        let Some(db) = self.dbs.get_mut(name) else { return LtxOrigin::Upstream };
        if db.sent_under_halt.is_empty() {
            return LtxOrigin::Upstream;
        }
        let overtaken = if entry.min == TxId(1) { entry.max } else { TxId(entry.min.0.saturating_sub(1)) };
        db.sent_under_halt.retain(|&txid, _| txid > overtaken);
        let echo = entry.min == entry.max && db.sent_under_halt.get(&entry.max) == Some(&entry.post);
        if echo {
            db.sent_under_halt.remove(&entry.max);
            LtxOrigin::HaltEcho
        } else {
            LtxOrigin::Upstream
        }
    }
}
