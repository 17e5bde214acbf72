//! Start: the position comes from what is durable. The rule, in order:
//! 1. LTX files that failed verification (torn writes) are deleted.
//! 2. The usable history is the longest checksum chain ending at the newest file; older
//!    files that do not chain onto it are deleted.
//! 3. If the database checksum is the chain's last post-apply checksum, that is the position.
//! 4. If it is an earlier post-apply checksum on the chain (the database missed applies), the
//!    later files are replayed in order. An empty database replays from a leading snapshot.
//! 5. Otherwise the database cannot be trusted: history is dropped, the position is zero and
//!    the node waits for a snapshot from a primary (it will not take the lease meanwhile).

use crate::node::history::LtxEntry;
use crate::node::input::{LtxFileInfo, Recovery};
use crate::node::output::{Event, Output};
use crate::node::time::Millis;
use crate::node::timer::TimerKind;
use crate::node::{Node, Persist};
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
        for (min, max) in recovery.invalid_ltx {
            self.emit(Output::RemoveLtx { min, max });
        }
        let mut files = recovery.ltx;
        files.sort_by_key(|f| (f.max, f.min));
        // Longest chain ending at the newest file.
        let mut chain: Vec<LtxFileInfo> = Vec::new();
        for f in files.iter().rev() {
            match chain.last() {
                None => chain.push(*f),
                Some(next) if next.min != TxId(1) && f.max.next() == next.min && f.post == next.pre => chain.push(*f),
                Some(_) => self.emit(Output::RemoveLtx { min: f.min, max: f.max }),
            }
        }
        chain.reverse();
        let db = recovery.db_checksum;
        let last_pos = chain.last().map(|f| Pos::new(f.max, f.post));
        let rule;
        if chain.is_empty() {
            // No history: only an empty database is trustworthy.
            if db == Checksum::ZERO || db == Checksum::EMPTY {
                rule = "empty";
            } else {
                rule = "database without history: wait for a snapshot";
                self.needs_snapshot = true;
            }
        } else if last_pos.is_some_and(|p| p.checksum == db) {
            rule = "database matches newest LTX";
            for f in &chain {
                let _ = self.history.push(entry(f, now));
            }
            self.pos = last_pos.unwrap_or(Pos::ZERO);
        } else if let Some(i) = chain.iter().position(|f| f.post == db) {
            rule = "database behind LTX history: replaying";
            for f in &chain[..=i] {
                let _ = self.history.push(entry(f, now));
            }
            self.pos = Pos::new(chain[i].max, chain[i].post);
            self.replay.extend(chain[i + 1..].iter().copied());
        } else if (db == Checksum::ZERO || db == Checksum::EMPTY) && chain[0].min == TxId(1) {
            rule = "empty database: replaying from snapshot";
            self.replay.extend(chain.iter().copied());
        } else {
            rule = "database matches no LTX: dropping history, waiting for a snapshot";
            for f in &chain {
                self.emit(Output::RemoveLtx { min: f.min, max: f.max });
            }
            self.needs_snapshot = true;
        }
        let pos = self.pos;
        self.event(Event::Recovered { pos, rule });
        self.continue_replay(now);
    }

    pub(crate) fn continue_replay(&mut self, now: Millis) {
        if let Some(f) = self.replay.pop_front() {
            let op = self.next_op();
            let e = entry(&f, now);
            let base = self.pos.checksum;
            if e.min == TxId(1) {
                self.history.clear();
            }
            let _ = self.history.push(e);
            self.persist = Some(Persist { op, entry: e, replay: true, conn: None });
            self.emit(Output::ReplayLtx { op, min: f.min, max: f.max, base });
            return;
        }
        self.timers.set(TimerKind::LeasePoll, now);
    }

    pub(crate) fn recovery_failed(&mut self, now: Millis) {
        self.replay.clear();
        for f in self.history.clear() {
            self.emit(Output::RemoveLtx { min: f.min, max: f.max });
        }
        self.pos = Pos::ZERO;
        self.needs_snapshot = true;
        self.event(Event::Recovered { pos: Pos::ZERO, rule: "replay failed: waiting for a snapshot" });
        self.timers.set(TimerKind::LeasePoll, now);
    }
}
