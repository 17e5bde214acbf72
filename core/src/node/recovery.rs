//! Start: each database's position comes from what is durable. The rule, in order:
//! 1. LTX files that failed verification (torn writes) are deleted.
//! 2. The usable history is the checksum chain the database's checksum is on (else the chain
//!    ending at the newest file); files on no such chain are deleted. Files written without
//!    an fsync may survive a crash with gaps between them; none of them was promised durable,
//!    so dropping those past a gap loses nothing anyone was told is durable.
//! 3. If the database checksum is the chain's last post-apply checksum, that is the position.
//! 4. If it is an earlier post-apply checksum on the chain (the database missed applies), the
//!    later files are replayed in order.
//! 5. If the chain starts with a snapshot, the whole chain is replayed (a snapshot replaces
//!    the database, whatever it held).
//! 6. Otherwise the database cannot be trusted: its history is dropped, its position is zero
//!    and the node waits for a snapshot from a primary (it will not take the lease meanwhile).

use crate::node::db::Db;
use crate::node::history::LtxEntry;
use crate::node::input::{DbRecovery, LtxFileInfo, Recovery};
use crate::node::output::{Event, Output};
use crate::node::time::Millis;
use crate::node::timer::TimerKind;
use crate::node::{Node, Persist};
use crate::stream::DbName;
use crate::types::{Checksum, Pos, TxId};

fn entry(f: &LtxFileInfo, now: Millis) -> LtxEntry {
    LtxEntry { min: f.min, max: f.max, pre: f.pre, post: f.post, size: f.size, added_at: now }
}

impl Node {
    pub(crate) fn on_start(&mut self, now: Millis, recovery: Recovery) {
        if self.started {
            return;
        }
        self.started = true;
        self.max_epoch = recovery.max_epoch;
        for (name, rec) in recovery.dbs {
            self.recover_db(now, name, rec);
        }
        let names: Vec<DbName> = self.dbs.keys().cloned().collect();
        for name in &names {
            self.continue_replay(now, name);
        }
        self.timers.set(TimerKind::LeasePoll, now);
        // Replicas trim their history too: they keep what a promotion would need.
        self.timers.set(TimerKind::Retention, now + self.cfg.heartbeat_ms.max(1));
    }

    fn recover_db(&mut self, now: Millis, name: DbName, rec: DbRecovery) {
        for (min, max) in rec.invalid_ltx {
            self.emit(Output::RemoveLtx { db: name.clone(), min, max });
        }
        let mut files = rec.ltx;
        files.sort_by_key(|f| (f.max, f.min));
        // Chains of files, newest first, each broken where a file does not continue the
        // next. Files written without an fsync can survive a crash out of order, so a gap
        // can sit anywhere after the last flush; everything before the flush is one chain.
        let mut segments: Vec<Vec<LtxFileInfo>> = Vec::new();
        for f in files.iter().rev() {
            match segments.last_mut() {
                Some(seg)
                    if seg
                        .last()
                        .is_some_and(|next| next.min != TxId(1) && f.max.next() == next.min && f.post == next.pre) =>
                {
                    seg.push(*f);
                }
                _ => segments.push(vec![*f]),
            }
        }
        // The chain the database is on wins (files past a gap were never durable, so never
        // promised); else the newest, as before deferred writes existed.
        // A missing file is the empty database: the state a drop leaves (post-apply `EMPTY`).
        let empty = rec.db_checksum == Checksum::ZERO || rec.db_checksum == Checksum::EMPTY;
        let db_sum = if empty { Checksum::EMPTY } else { rec.db_checksum };
        let chosen = segments.iter().position(|seg| seg.iter().any(|f| f.post == db_sum)).unwrap_or(0);
        let mut chain: Vec<LtxFileInfo> = Vec::new();
        for (i, seg) in segments.into_iter().enumerate() {
            if i == chosen {
                chain = seg;
            } else {
                for f in seg {
                    self.emit(Output::RemoveLtx { db: name.clone(), min: f.min, max: f.max });
                }
            }
        }
        chain.reverse();

        let mut db = Db::default();
        let rule = match (chain.first(), chain.last()) {
            (None, _) if empty => "empty",
            (None, _) => {
                db.needs_snapshot = true;
                "database without history: wait for a snapshot"
            }
            (Some(_), Some(last)) if last.post == db_sum => {
                for f in &chain {
                    let _ = db.history.push(entry(f, now));
                }
                db.pos = Pos::new(last.max, last.post);
                "database matches newest LTX"
            }
            (Some(first), _) => match chain.iter().position(|f| f.post == db_sum) {
                Some(i) => {
                    for f in &chain[..=i] {
                        let _ = db.history.push(entry(f, now));
                    }
                    db.pos = Pos::new(chain[i].max, chain[i].post);
                    db.replay.extend(chain[i + 1..].iter().copied());
                    "database behind LTX history: replaying"
                }
                None if first.min == TxId(1) => {
                    db.replay.extend(chain.iter().copied());
                    "history starts with a snapshot: replaying it all"
                }
                None => {
                    for f in &chain {
                        self.emit(Output::RemoveLtx { db: name.clone(), min: f.min, max: f.max });
                    }
                    db.needs_snapshot = true;
                    "database matches no LTX: dropping history, waiting for a snapshot"
                }
            },
        };
        // The store makes every file it found durable before it reports them (a kill -9
        // leaves written files in the page cache, not on the disk).
        db.durable_txid = db.pos.txid;
        db.rejoin_txid = rec.rejoin_txid;
        let pos = db.pos;
        self.dbs.insert(name.clone(), db);
        self.event(Event::Recovered { db: name, pos, rule });
    }

    pub(crate) fn continue_replay(&mut self, now: Millis, name: &DbName) {
        let op = self.next_op();
        let Some(db) = self.dbs.get_mut(name) else { return };
        if db.persist.is_some() {
            return;
        }
        let Some(f) = db.replay.pop_front() else {
            // This database is done; once every database is, follow the primary we know of.
            if !self.dbs.values().any(Db::replaying) {
                self.maybe_connect(now);
            }
            return;
        };
        let e = entry(&f, now);
        let base = if e.min == TxId(1) { Checksum::ZERO } else { db.pos.checksum };
        if e.min == TxId(1) {
            db.history.clear();
        }
        let _ = db.history.push(e);
        db.persist = Some(Persist { op, entry: e, replay: true, conn: None, durable: true });
        self.ops.insert(op, name.clone());
        self.emit(Output::ReplayLtx { db: name.clone(), op, min: f.min, max: f.max, base });
    }

    pub(crate) fn recovery_failed(&mut self, now: Millis, name: &DbName) {
        self.distrust_database(now, name, "replay failed: waiting for a snapshot");
    }

    /// The database file cannot be trusted to match its history: drop the history, go to
    /// position zero and wait for a snapshot (no lease meanwhile).
    pub(crate) fn distrust_database(&mut self, now: Millis, name: &DbName, rule: &'static str) {
        let Some(db) = self.dbs.get_mut(name) else { return };
        db.replay.clear();
        // A file being written now would land on the history just dropped: its answer is
        // not waited for (a replica whose halt-lock transaction was rolled back while its
        // echo was being stored, say).
        if let Some(stale) = db.persist.take() {
            self.ops.remove(&stale.op);
        }
        let Some(db) = self.dbs.get_mut(name) else { return };
        // Until it is back at its position it holds less than it may have acknowledged (in
        // synchronous mode): it must not lead meanwhile, crash or not, as after a snapshot
        // that moves it back. Recorded before its files go.
        if db.pos.txid > db.rejoin_txid {
            db.rejoin_txid = db.pos.txid;
            let txid = db.rejoin_txid;
            self.emit(Output::PersistRejoin { db: name.clone(), txid });
        }
        let Some(db) = self.dbs.get_mut(name) else { return };
        let dropped = db.history.clear();
        db.pos = Pos::ZERO;
        db.needs_snapshot = true;
        db.durable_txid = TxId::ZERO;
        db.flushing = None;
        for f in dropped {
            self.emit(Output::RemoveLtx { db: name.clone(), min: f.min, max: f.max });
        }
        self.event(Event::Recovered { db: name.clone(), pos: Pos::ZERO, rule });
        self.timers.set(TimerKind::LeasePoll, now);
    }
}
