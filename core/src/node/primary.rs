//! The primary's jobs: the commit path (TXID = last + 1, post-apply checksum from the
//! pre-apply checksum and the changed pages' old and new checksums, acknowledge only after
//! the LTX is durable and, in synchronous mode, acknowledged by every other candidate),
//! serving replicas (next LTX files or a snapshot, per database), and retention.

use crate::ltx::{DatabaseChecksum, Encoder, Header, page_checksum};
use crate::node::Node;
use crate::node::config::SyncPolicy;
use crate::node::db::Db;
use crate::node::history::LtxEntry;
use crate::node::input::{CommitId, DownstreamId, Durability, IoFailure, OpId, PageChange, RemoteCommit};
use crate::node::lease::WriteGrant;
use crate::node::output::{Event, LtxOrigin, Output, RefuseReason};
use crate::node::time::Millis;
use crate::node::timer::TimerKind;
use crate::stream::{DbName, Extensions, Frame, PosMap, StreamDecoder, StreamEvent, decode_pos_map, encode_frame};
use crate::types::{Checksum, NodeId, PageSize, Pgno, Pos, TxId};

use std::collections::BTreeMap;

/// Most bytes of acknowledgement frames buffered from one replica before it is cut off:
/// an ack frame is under 300 bytes, so this only trips on a misbehaving peer.
const MAX_DOWNSTREAM_BUFFER: usize = 64 * 1024;

/// A commit being written (and made durable, and replicated, when that is asked for).
#[derive(Debug)]
pub(crate) struct InflightCommit {
    commit: CommitId,
    /// The persist request, until it is done.
    op: Option<OpId>,
    entry: LtxEntry,
    /// The file must be durable here before the acknowledgement: the application asked
    /// ([`Durability::Requested`]), or synchronous mode promises that an acknowledged commit
    /// survives any failover, the old primary's restart included (decision 0004).
    needs_durable: bool,
    /// The persist request makes the file durable itself (else a flush will).
    durable_write: bool,
    /// Already acknowledged to the application (fault injection only).
    acked_early: bool,
    stall_reported: bool,
}

impl InflightCommit {
    /// A commit the application asked to be durable (a drop, say) whose LTX file `op` is
    /// being written, durably itself when `durable_write` (else a flush follows).
    pub(crate) fn durable(
        commit: CommitId,
        op: OpId,
        entry: LtxEntry,
        durable_write: bool,
        acked_early: bool,
    ) -> InflightCommit {
        InflightCommit {
            commit,
            op: Some(op),
            entry,
            needs_durable: true,
            durable_write,
            acked_early,
            stall_reported: false,
        }
    }

    pub(crate) fn op_is(&self, op: OpId) -> bool {
        self.op == Some(op)
    }

    /// The file it produces.
    pub(crate) fn entry(&self) -> LtxEntry {
        self.entry
    }

    /// Whether it must be durable here before it is acknowledged.
    pub(crate) fn needs_durable(&self) -> bool {
        self.needs_durable
    }

    /// Whether its file is still being written.
    pub(crate) fn writing(&self) -> bool {
        self.op.is_some()
    }
}

/// A replica streaming from us.
#[derive(Debug)]
pub(crate) struct Downstream {
    pub(crate) peer: NodeId,
    pub(crate) ext: Extensions,
    /// Where the replica will be, per database, once it has applied everything we sent.
    pub(crate) sent: PosMap,
    decoder: StreamDecoder,
    /// When the stream opened.
    opened_at: Millis,
    /// When the replica last acknowledged each database.
    acked_at: BTreeMap<DbName, Millis>,
    /// The databases it asked for (`/stream?filter=`); `None`: all.
    only: Option<std::collections::BTreeSet<DbName>>,
}

impl Downstream {
    /// Whether this stream carries database `name`.
    fn carries(&self, name: &DbName) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(name))
    }
}

/// A commit input's transaction (see [`crate::node::Input::Commit`]).
pub(crate) struct CommitTx {
    pub(crate) page_size: PageSize,
    pub(crate) pages: Vec<PageChange>,
    pub(crate) commit_pages: u32,
    pub(crate) removed: Vec<(Pgno, Checksum)>,
    pub(crate) durability: Durability,
    pub(crate) remote: Option<RemoteCommit>,
}

/// What a transaction changed: its pages with their old checksums, as a commit input
/// describes them.
#[derive(Clone, Copy)]
pub struct Transaction<'a> {
    /// The database's page size.
    pub page_size: PageSize,
    /// Changed pages, any order.
    pub pages: &'a [PageChange],
    /// Database size in pages after the transaction.
    pub commit_pages: u32,
    /// Pages beyond `commit_pages` the transaction removed, with their old checksums.
    pub removed: &'a [(Pgno, Checksum)],
}

/// Builds the LTX file of a commit on top of `pos`. Needs the grant: no TXID is assigned
/// without one.
fn encode_commit(
    node_id: NodeId,
    now: Millis,
    _grant: WriteGrant,
    pos: Pos,
    tx: &Transaction<'_>,
) -> Option<(LtxEntry, Vec<u8>)> {
    encode_transaction(node_id, now, pos, tx)
}

/// Encodes transaction `tx` on top of `pos` as the LTX file of TXID `pos.txid + 1` (the first
/// one a snapshot, pre-apply checksum zero), made by `node_id` at `now`; the file's entry
/// carries its post-apply checksum. `None` if a page is not one page long, or is page 0 or
/// past the commit size, or a removed page is not past it.
///
/// A primary encodes its commits with it; a replica writing under a halt lock encodes what it
/// sends its primary the same way.
#[must_use]
pub fn encode_transaction(node_id: NodeId, now: Millis, pos: Pos, tx: &Transaction<'_>) -> Option<(LtxEntry, Vec<u8>)> {
    let Transaction { page_size, pages, commit_pages, removed } = *tx;
    let txid = pos.txid.next();
    // The first transaction is a snapshot: its pre-apply checksum is zero by LTX rule.
    let first = txid == TxId(1);
    let pre = if first { Checksum::ZERO } else { pos.checksum };
    let mut sorted: Vec<&PageChange> = pages.iter().collect();
    sorted.sort_by_key(|p| p.pgno);
    let mut sum = DatabaseChecksum::from_checksum(page_size, if first { Checksum::EMPTY } else { pre });
    for change in &sorted {
        if change.data.len() != page_size.bytes() || change.pgno.0 == 0 || change.pgno.0 > commit_pages {
            return None;
        }
        if let Some(old) = change.old {
            sum.toggle(change.pgno, old);
        }
        sum.toggle(change.pgno, page_checksum(change.pgno, &change.data));
    }
    for &(pgno, old) in removed {
        if pgno.0 <= commit_pages {
            return None;
        }
        sum.toggle(pgno, old);
    }
    let post = sum.value();
    let mut header = Header::new(page_size, commit_pages, txid, txid, pre);
    header.timestamp_ms = now.0 as i64;
    header.node_id = node_id;
    let mut encoder = Encoder::new(Vec::new(), header).ok()?;
    for change in &sorted {
        encoder.encode_page(change.pgno, &change.data).ok()?;
    }
    let (bytes, _) = encoder.finish(post).ok()?;
    let entry = LtxEntry { min: txid, max: txid, pre, post, size: bytes.len() as u64, added_at: now };
    Some((entry, bytes))
}

/// Live-database copies sent to one replica in a row, none of which it reached, before the
/// primary reports it: two can fail to an ordinary restart or network blip; a third in a row
/// is a transfer that keeps failing.
const SNAPSHOT_TRIES_WARN: u32 = 3;

/// The wait before a replica's third live copy in a row (after it failed two); it doubles
/// with each further failed copy, up to [`COPY_HOLD_OFF_MAX_MS`]. The second copy goes at
/// once: one failure is often an ordinary restart or a network blip.
const COPY_HOLD_OFF_FIRST_MS: u64 = 1_000;

/// The longest wait between copies a replica keeps failing: short enough that a replica whose
/// disk was freed is back within a minute.
const COPY_HOLD_OFF_MAX_MS: u64 = 60_000;

/// Live-database copies one replica was sent in a row without coming back at or past the
/// last one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyTries {
    /// Copies sent in a row.
    attempts: u32,
    /// The last copy's position.
    copy: Pos,
    /// When the last copy was sent.
    sent_at: Millis,
    /// The end of the hold-off last reported, so that each is reported once.
    reported_hold_off: Option<Millis>,
}

/// Replica-database pairs whose copies are counted: far more than a cluster has, so that
/// peers connecting under ever new ids cannot grow the table without bound.
const MAX_SNAPSHOT_TRIES_TRACKED: usize = 1024;

impl Node {
    pub(crate) fn on_commit(&mut self, now: Millis, commit: CommitId, name: DbName, tx: CommitTx) {
        let CommitTx { page_size, pages, commit_pages, removed, durability, remote } = tx;
        if remote.is_none() && self.writes_under_halt(&name) {
            let tx = Transaction { page_size, pages: &pages, commit_pages, removed: &removed };
            return self.commit_under_halt(now, commit, name, &tx);
        }
        let refuse = |node: &mut Node, reason| node.emit(Output::RefuseCommit { commit, reason });
        let Some(grant) = self.write_grant(now) else { return refuse(self, RefuseReason::NotPrimary) };
        if self.halt_commit_pending(&name) {
            // A transaction sent under a halt lock before this node became primary still
            // waits for its answer (in SQLite it holds the write lock).
            return refuse(self, RefuseReason::Busy);
        }
        let db = self.dbs.entry(name.clone()).or_default();
        if db.needs_snapshot {
            return refuse(self, RefuseReason::NotPrimary);
        }
        if db.busy() {
            return refuse(self, RefuseReason::Busy);
        }
        if db.page_size.is_some_and(|p| p != page_size) {
            return refuse(self, RefuseReason::Invalid);
        }
        if self.async_window_exceeded(&name, now) {
            return refuse(self, RefuseReason::AsyncWindow);
        }
        let pos = self.pos(&name);
        if remote.is_some_and(|r| r.base != pos || pos.txid == TxId::ZERO) {
            return refuse(self, RefuseReason::Moved);
        }
        let tx = Transaction { page_size, pages: &pages, commit_pages, removed: &removed };
        let node_id = remote.and_then(|r| r.origin).unwrap_or(self.cfg.node_id);
        let Some((entry, bytes)) = encode_commit(node_id, now, grant, pos, &tx) else {
            return refuse(self, RefuseReason::Invalid);
        };
        if remote.is_some_and(|r| r.post != entry.post) {
            // The replica's file claims a position its pages do not reach from here.
            return refuse(self, RefuseReason::Invalid);
        }
        let needs_durable = durability == Durability::Requested || self.cfg.sync.is_some();
        // One fsync of this file makes the commit durable only if every earlier file already
        // is; otherwise it is written like a deferred one and a flush covers it with the rest.
        // In synchronous mode the file is streamed before it is durable here, so the local
        // fsync overlaps the replicas' round trip.
        let durable_write =
            durability == Durability::Requested && self.cfg.sync.is_none() && self.may_persist_durably(&name);
        let op = self.next_op();
        self.ops.insert(op, name.clone());
        self.emit(Output::PersistLtx {
            db: name.clone(),
            op,
            min: entry.min,
            max: entry.max,
            bytes,
            base: entry.pre,
            durable: durable_write,
            origin: LtxOrigin::OwnCommit,
        });
        let early = self.cfg.faults.ack_before_durable;
        if early {
            self.emit(Output::AckCommit { db: name.clone(), commit, pos: entry.post_pos() });
        }
        let db = self.dbs.entry(name).or_default();
        db.page_size = Some(page_size);
        // Two commits in a row without an fsync between them: the application does not fsync
        // after each commit (WAL/NORMAL); let the timer group the flushes.
        if !db.synced_since_commit {
            db.syncs_follow_commits = false;
        }
        db.synced_since_commit = false;
        db.commit = Some(InflightCommit {
            commit,
            op: Some(op),
            entry,
            needs_durable,
            durable_write,
            acked_early: early,
            stall_reported: false,
        });
    }

    /// The primary's own commit is durable (or failed).
    pub(crate) fn on_commit_persisted(&mut self, now: Millis, name: &DbName, result: Result<Pos, IoFailure>) {
        let Some(db) = self.dbs.get_mut(name) else { return };
        let Some(inflight) = db.commit.as_mut() else { return };
        inflight.op = None;
        let entry = inflight.entry;
        let commit = inflight.commit;
        let durable_write = inflight.durable_write;
        if result != Ok(entry.post_pos()) {
            let failure = result.err().unwrap_or(IoFailure::Mismatch);
            db.commit = None;
            self.event(Event::DiskFailed { db: name.clone(), failure });
            self.emit(Output::RefuseCommit { commit, reason: RefuseReason::of_disk_failure(failure) });
            self.answer_syncs_after_failure(name);
            return;
        }
        self.advance(now, name, entry);
        if let Some(db) = self.dbs.get_mut(name)
            && durable_write
        {
            debug_assert_eq!(db.durable_txid.next(), entry.min, "a durable write with earlier files unflushed");
            db.durable_txid = entry.max;
        }
        // One flush at a time covers whatever was written while the previous ran (group
        // commit); at once if this commit must be durable before its acknowledgement.
        self.schedule_flush(now, name);
        if !matches!(self.role(), crate::node::Role::Primary { .. }) {
            // We stepped down while the file was being written. It is durable here, but no
            // replica will get it from us and acknowledgements can no longer arrive: the
            // application is told the commit failed (a new primary may or may not have it).
            if let Some(db) = self.dbs.get_mut(name) {
                db.commit = None;
            }
            if !self.cfg.faults.ack_before_durable {
                self.emit(Output::RefuseCommit { commit, reason: RefuseReason::NotPrimary });
            }
            return;
        }
        if (self.cfg.async_window_ms.is_some() || self.cfg.sync.is_some())
            && let Some(db) = self.dbs.get_mut(name)
        {
            db.commit_times.insert(entry.max, now);
        }
        let conns: Vec<DownstreamId> = self.downstream.keys().copied().collect();
        for conn in conns {
            self.catch_up_db(now, conn, name);
        }
        if let Some(sync) = &self.cfg.sync {
            // One timer serves every database: keep the earliest deadline.
            if self.timers.get(TimerKind::SyncTimeout).is_none() {
                self.timers.set(TimerKind::SyncTimeout, now + sync.timeout_ms);
            }
        }
        self.try_finish_commit(name);
        // After the acknowledgement: retiring a file is not the application's wait.
        self.trim_history(now, name, true);
    }

    /// Records a durable LTX file as a database's new position.
    pub(crate) fn advance(&mut self, now: Millis, name: &DbName, entry: LtxEntry) {
        let Some(db) = self.dbs.get_mut(name) else { return };
        debug_assert!(entry.min == TxId(1) || entry.pre == db.pos.checksum, "checksum chain broken");
        let mut entry = entry;
        entry.added_at = now;
        let dropped = db.history.push(entry);
        db.pos = entry.post_pos();
        for f in dropped {
            self.emit(Output::RemoveLtx { db: name.clone(), min: f.min, max: f.max });
        }
    }

    fn finish_commit(&mut self, name: &DbName) {
        let Some(db) = self.dbs.get_mut(name) else { return };
        if let Some(inflight) = db.commit.take()
            && !inflight.acked_early
        {
            self.emit(Output::AckCommit { db: name.clone(), commit: inflight.commit, pos: inflight.entry.post_pos() });
        }
    }

    /// After a commit or an acknowledgement: a pending handoff may now complete.
    pub(crate) fn after_progress(&mut self, now: Millis) {
        if self.handoff.is_some() {
            self.try_finish_handoff(now);
        }
    }

    /// Candidates other than us that have not acknowledged `txid` of `name` on our lineage.
    fn missing_acks(&self, name: &DbName, txid: TxId) -> usize {
        self.cfg
            .candidates
            .iter()
            .filter(|&&c| c != self.cfg.node_id)
            .filter(|&&c| self.acked.get(&(c, name.clone())).is_none_or(|p| p.txid < txid))
            .count()
    }

    /// Whether the commit in flight on `name` is durable here, if it must be.
    fn locally_durable(&self, name: &DbName) -> bool {
        let Some(db) = self.dbs.get(name) else { return false };
        db.commit.as_ref().is_some_and(|c| !c.needs_durable || db.durable_txid >= c.entry.max)
    }

    /// Acknowledges the commit in flight on `name` once it is written, durable here if it
    /// must be, and in synchronous mode acknowledged by every other candidate.
    pub(crate) fn try_finish_commit(&mut self, name: &DbName) {
        let Some(inflight) = self.dbs.get(name).and_then(|db| db.commit.as_ref()) else { return };
        if inflight.op.is_some() || !self.locally_durable(name) {
            return;
        }
        if self.cfg.sync.is_some() && self.missing_acks(name, inflight.entry.max) > 0 {
            return;
        }
        self.finish_commit(name);
        if self.cfg.sync.is_some() && self.dbs.values().all(|db| db.commit.is_none()) {
            self.timers.stop(TimerKind::SyncTimeout);
        }
    }

    /// A commit failed before its TXID was reached: fsyncs that waited for it wait only for
    /// what is durable.
    fn answer_syncs_after_failure(&mut self, name: &DbName) {
        let Some(db) = self.dbs.get_mut(name) else { return };
        let pos = db.pos.txid;
        for waiter in &mut db.sync_waiters {
            waiter.1 = waiter.1.min(pos);
        }
        self.answer_syncs(name);
    }

    pub(crate) fn on_sync_timeout(&mut self, now: Millis) {
        let Some(sync) = self.cfg.sync.clone() else { return };
        let names: Vec<DbName> = self.dbs.keys().cloned().collect();
        let mut waiting = false;
        for name in names {
            let durable_here = self.locally_durable(&name);
            let Some(inflight) = self.dbs.get_mut(&name).and_then(|db| db.commit.as_mut()) else { continue };
            if inflight.op.is_some() {
                continue;
            }
            if !durable_here {
                // Degrading gives up the replicas, never this node's own durability.
                waiting = true;
                continue;
            }
            let txid = inflight.entry.max;
            match sync.policy {
                SyncPolicy::Degrade => {
                    self.event(Event::SyncDegraded { db: name.clone(), txid });
                    self.finish_commit(&name);
                }
                SyncPolicy::Block => {
                    waiting = true;
                    if !inflight.stall_reported {
                        inflight.stall_reported = true;
                        self.event(Event::SyncStalled { db: name.clone(), txid });
                    }
                }
            }
        }
        if waiting {
            self.timers.set(TimerKind::SyncTimeout, now + sync.timeout_ms);
        }
    }

    /// On step-down, commits still waiting are not acknowledged: their LTX may or may not
    /// survive. (A commit whose LTX is still being written is answered when the write ends.)
    pub(crate) fn fail_pending_commit_on_step_down(&mut self) {
        let mut refused = Vec::new();
        for db in self.dbs.values_mut() {
            if let Some(inflight) = &db.commit
                && inflight.op.is_none()
            {
                if !inflight.acked_early {
                    refused.push(inflight.commit);
                }
                db.commit = None;
            }
        }
        self.timers.stop(TimerKind::SyncTimeout);
        for commit in refused {
            self.emit(Output::RefuseCommit { commit, reason: RefuseReason::NotPrimary });
        }
    }

    /// Whether a candidate lacks a commit of `name` older than the asynchronous loss window.
    pub(crate) fn async_window_exceeded(&self, name: &DbName, now: Millis) -> bool {
        let Some(window) = self.cfg.async_window_ms else { return false };
        let Some(db) = self.dbs.get(name) else { return false };
        let oldest_missing = db.commit_times.iter().find(|(txid, _)| self.missing_acks(name, **txid) > 0);
        oldest_missing.is_some_and(|(_, at)| now.since(*at) > window)
    }

    fn trim_commit_times(&mut self, name: &DbName) {
        loop {
            let Some(db) = self.dbs.get(name) else { return };
            let Some((&txid, _)) = db.commit_times.first_key_value() else { return };
            if self.missing_acks(name, txid) > 0 {
                return;
            }
            if let Some(db) = self.dbs.get_mut(name) {
                db.commit_times.pop_first();
            }
        }
    }

    pub(crate) fn on_downstream_opened(
        &mut self,
        now: Millis,
        conn: DownstreamId,
        peer: NodeId,
        offered: Extensions,
        body: &[u8],
        only: Option<std::collections::BTreeSet<DbName>>,
    ) {
        // With the ignore-epochs fault a deposed primary keeps serving: the bug epochs prevent.
        let deposed_serves = self.cfg.faults.ignore_epochs && self.dbs.values().any(|db| !db.history.is_empty());
        let serving = matches!(self.role(), crate::node::Role::Primary { .. }) || deposed_serves;
        let map = decode_pos_map(body);
        let (true, Ok(mut sent)) = (serving && peer != self.cfg.node_id, map) else {
            self.emit(Output::CloseDownstream { conn });
            return;
        };
        // Databases outside a filter are none of this stream's business, whatever the map says.
        if let Some(only) = &only {
            sent.retain(|name, _| only.contains(name));
        }
        let ext = offered.intersect(Extensions::ALL);
        let decoder = StreamDecoder::new(ext);
        for (name, pos) in &sent {
            self.copy_reached(peer, name, *pos);
        }
        let durable: Vec<(DbName, Pos)> =
            if ext.ack { sent.iter().map(|(n, p)| (n.clone(), *p)).collect() } else { Vec::new() };
        self.downstream
            .insert(conn, Downstream { peer, ext, sent, decoder, opened_at: now, acked_at: BTreeMap::new(), only });
        // A replica's position map states what it holds durably: it counts as an
        // acknowledgement (an ack lost with a broken stream must not stall sync commits).
        for (name, pos) in durable {
            self.record_ack(peer, &name, pos);
        }
        let mut bytes = Vec::new();
        if ext.epoch {
            encode_frame(&Frame::Epoch { epoch: self.max_epoch, node_id: self.cfg.node_id }, &mut bytes);
            self.emit(Output::SendDownstream { conn, bytes: std::mem::take(&mut bytes) });
        }
        self.send_drop_frames(conn);
        let names: Vec<DbName> = self.dbs.keys().cloned().collect();
        for name in &names {
            self.catch_up_db(now, conn, name);
        }
        encode_frame(&Frame::Ready, &mut bytes);
        encode_frame(&Frame::Heartbeat { timestamp_ms: 0 }, &mut bytes);
        self.emit(Output::SendDownstream { conn, bytes });
    }

    /// Sends a replica what it lacks of one database: the next LTX files, or a snapshot when
    /// it is new, ahead of us, diverged, or behind our retained history. A live copy it has
    /// kept failing waits out its hold-off (see [`Event::SnapshotHeldOff`]).
    fn catch_up_db(&mut self, now: Millis, conn: DownstreamId, name: &DbName) {
        let Some(d) = self.downstream.get(&conn) else { return };
        if !d.carries(name) {
            return;
        }
        let (peer, replica_at) = (d.peer, d.sent.get(name).copied().unwrap_or(Pos::ZERO));
        let copy_not_before = self.copy_not_before(peer, name, replica_at);
        let Some(db) = self.dbs.get(name) else { return };
        let Some(d) = self.downstream.get_mut(&conn) else { return };
        let mut out = Vec::new();
        let mut sent = replica_at;
        let mut live_copy_sent = false;
        let mut history_snapshot_sent = false;
        let mut held_until = None;
        while sent != db.pos && db.pos.txid != TxId::ZERO {
            match (next_file(db, sent), db.history.first().copied()) {
                (Some(f), _) => {
                    out.push(Output::StreamLtx { conn, db: name.clone(), min: f.min, max: f.max });
                    sent = f.post_pos();
                }
                // A retained history that starts at TXID 1 starts with a snapshot file: send
                // it and the files after it rather than copying the live database (a copy
                // waits for a commit in flight, which in synchronous mode waits for this very
                // replica).
                (None, Some(first)) if first.min == TxId(1) && !history_snapshot_sent => {
                    out.push(Output::StreamLtx { conn, db: name.clone(), min: first.min, max: first.max });
                    sent = first.post_pos();
                    history_snapshot_sent = true;
                }
                // No file to copy: the snapshot of a dropped database is an empty one.
                (None, _) if db.dropped() => {
                    let page_size = db.page_size.unwrap_or_else(crate::node::drop::fallback_page_size);
                    let ts = db.history.last().map_or(0, |f| f.added_at.0 as i64);
                    let Some(file) = crate::node::drop::tombstone_snapshot(self.cfg.node_id, db.pos, page_size, ts)
                    else {
                        break;
                    };
                    let mut bytes = Vec::new();
                    crate::stream::encode_ltx_message(name, &file, db.pos.txid, &mut bytes);
                    out.push(Output::SendDownstream { conn, bytes });
                    sent = db.pos;
                }
                (None, _) => {
                    if let Some(at) = copy_not_before.filter(|&at| at > now) {
                        // Only what was sent so far counts as sent: the copy goes later.
                        held_until = Some(at);
                        break;
                    }
                    out.push(Output::StreamSnapshot { conn, db: name.clone(), pos: db.pos });
                    sent = db.pos;
                    live_copy_sent = true;
                }
            }
        }
        d.sent.insert(name.clone(), sent);
        self.out.extend(out);
        match held_until {
            Some(at) => self.hold_off_copy(now, peer, name, at),
            None if live_copy_sent => self.count_snapshot_tries(now, peer, name, replica_at, sent),
            None => {}
        }
    }

    /// When the next live copy of `name` may go to `peer`, now at `replica_at`: `None` unless
    /// it came back short of the last two copies or more it was sent in a row.
    fn copy_not_before(&self, peer: NodeId, name: &DbName, replica_at: Pos) -> Option<Millis> {
        let tries = self.snapshot_tries.get(&(peer, name.clone()))?;
        if replica_at.txid >= tries.copy.txid || tries.attempts < 2 {
            return None;
        }
        let doublings = (tries.attempts - 2).min(16);
        Some(tries.sent_at + (COPY_HOLD_OFF_FIRST_MS << doublings).min(COPY_HOLD_OFF_MAX_MS))
    }

    /// A copy for `peer` waits until `at`: reported once per wait, and a timer sends it then
    /// if no commit has meanwhile.
    fn hold_off_copy(&mut self, now: Millis, peer: NodeId, name: &DbName, at: Millis) {
        if let Some(tries) = self.snapshot_tries.get_mut(&(peer, name.clone()))
            && tries.reported_hold_off != Some(at)
        {
            tries.reported_hold_off = Some(at);
            let failed = tries.attempts;
            self.event(Event::SnapshotHeldOff { peer, db: name.clone(), failed, wait_ms: at.0.saturating_sub(now.0) });
        }
        if self.timers.get(TimerKind::CopyHoldOff).is_none_or(|t| t > at) {
            self.timers.set(TimerKind::CopyHoldOff, at);
        }
    }

    /// A held-off copy may be due: every stream catches up again (a stream with nothing to
    /// send sends nothing; a copy still held off re-arms the timer).
    pub(crate) fn on_copy_hold_off_timer(&mut self, now: Millis) {
        let conns: Vec<DownstreamId> = self.downstream.keys().copied().collect();
        let names: Vec<DbName> = self.dbs.keys().cloned().collect();
        for conn in conns {
            for name in &names {
                self.catch_up_db(now, conn, name);
            }
        }
    }

    /// Counts live-database copies a replica needed in a row (it came back short of the last
    /// one), and says so once it reaches [`SNAPSHOT_TRIES_WARN`]. Called when a copy is sent;
    /// the count ends when the replica states a position at or past the copy
    /// ([`Node::copy_reached`]).
    fn count_snapshot_tries(&mut self, now: Millis, peer: NodeId, name: &DbName, replica_at: Pos, copy: Pos) {
        let key = (peer, name.clone());
        let failed_before = self.snapshot_tries.get(&key).filter(|t| replica_at.txid < t.copy.txid);
        let attempts = failed_before.map_or(1, |t| t.attempts.saturating_add(1));
        if self.snapshot_tries.len() >= MAX_SNAPSHOT_TRIES_TRACKED && !self.snapshot_tries.contains_key(&key) {
            // Only a report (and a hold-off) is lost by forgetting one.
            self.snapshot_tries.pop_first();
        }
        self.snapshot_tries.insert(key, CopyTries { attempts, copy, sent_at: now, reported_hold_off: None });
        if attempts >= SNAPSHOT_TRIES_WARN {
            self.event(Event::SnapshotRepeated { peer, db: name.clone(), attempts });
        }
    }

    /// `peer` stated it holds `name` at `pos` (its stream's position map, an acknowledgement):
    /// a copy it reached no longer counts against it.
    fn copy_reached(&mut self, peer: NodeId, name: &DbName, pos: Pos) {
        let key = (peer, name.clone());
        if self.snapshot_tries.get(&key).is_some_and(|t| pos.txid >= t.copy.txid) {
            self.snapshot_tries.remove(&key);
        }
    }

    pub(crate) fn on_downstream_data(&mut self, now: Millis, conn: DownstreamId, bytes: &[u8]) {
        let Some(d) = self.downstream.get_mut(&conn) else { return };
        d.decoder.feed(bytes);
        let mut acks = Vec::new();
        let mut bad = d.decoder.buffered() > MAX_DOWNSTREAM_BUFFER;
        while !bad {
            match d.decoder.next_event() {
                Ok(Some(StreamEvent::Frame(Frame::Ack { pos, name }))) => acks.push((name, pos)),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => bad = true,
            }
        }
        let peer = d.peer;
        for (name, _) in &acks {
            d.acked_at.insert(name.clone(), now);
        }
        if bad {
            self.downstream.remove(&conn);
            self.emit(Output::CloseDownstream { conn });
            return;
        }
        for (name, pos) in acks {
            self.record_ack(peer, &name, pos);
        }
        self.after_progress(now);
    }

    /// Records that `peer` holds `pos` of `name` durably, if it is on our lineage.
    fn record_ack(&mut self, peer: NodeId, name: &DbName, pos: Pos) {
        self.copy_reached(peer, name, pos);
        let Some(db) = self.dbs.get(name) else { return };
        // Only acknowledgements of positions on our own lineage count.
        let on_lineage = pos != Pos::ZERO && (db.history.contains(pos) || pos == db.pos);
        let key = (peer, name.clone());
        if on_lineage && self.acked.get(&key).is_none_or(|p| p.txid <= pos.txid) {
            self.acked.insert(key, pos);
        }
        self.trim_commit_times(name);
        if self.cfg.sync.is_some() {
            self.try_finish_commit(name);
        }
    }

    pub(crate) fn close_all_downstream(&mut self) {
        let mut end = Vec::new();
        encode_frame(&Frame::End, &mut end);
        for conn in std::mem::take(&mut self.downstream).into_keys() {
            self.emit(Output::SendDownstream { conn, bytes: end.clone() });
            self.emit(Output::CloseDownstream { conn });
        }
    }

    pub(crate) fn on_heartbeat_timer(&mut self, now: Millis) {
        if !matches!(self.role(), crate::node::Role::Primary { .. }) {
            return;
        }
        let mut bytes = Vec::new();
        encode_frame(&Frame::Heartbeat { timestamp_ms: now.0 as i64 }, &mut bytes);
        let conns: Vec<DownstreamId> = self.downstream.keys().copied().collect();
        for conn in conns {
            self.emit(Output::SendDownstream { conn, bytes: bytes.clone() });
        }
        self.cut_off_silent_replicas(now);
        self.timers.set(TimerKind::Heartbeat, now + self.cfg.heartbeat_ms);
    }

    /// Closes streams whose replica has not acknowledged what it was sent for
    /// `replica_ack_timeout_ms`: it reconnects with its real position and resyncs.
    fn cut_off_silent_replicas(&mut self, now: Millis) {
        let mut cut = Vec::new();
        for (&conn, d) in &self.downstream {
            if !d.ext.ack {
                continue;
            }
            // Per database: acknowledgements flowing for one must not hide one lost for another.
            let stalled = d.sent.iter().any(|(name, pos)| {
                let behind =
                    *pos != Pos::ZERO && self.acked.get(&(d.peer, name.clone())).is_none_or(|a| a.txid < pos.txid);
                let last = d.acked_at.get(name).copied().unwrap_or(d.opened_at);
                behind && now.since(last) > self.cfg.replica_ack_timeout_ms
            });
            if stalled {
                cut.push((conn, d.peer));
            }
        }
        for (conn, peer) in cut {
            self.downstream.remove(&conn);
            let mut end = Vec::new();
            encode_frame(&Frame::End, &mut end);
            self.emit(Output::SendDownstream { conn, bytes: end });
            self.emit(Output::CloseDownstream { conn });
            self.event(Event::ReplicaCutOff { peer });
        }
    }

    /// Drops each database's oldest LTX files past the age or size limit, never its newest
    /// file nor its newest durable one, never one a candidate still lacks while the async window or sync mode counts on
    /// it, never one sent to a connected replica and not yet acknowledged, and never one the
    /// backup has not stored.
    pub(crate) fn on_retention_timer(&mut self, now: Millis) {
        let names: Vec<DbName> = self.dbs.keys().cloned().collect();
        for name in &names {
            self.trim_history(now, name, false);
        }
        self.timers.set(TimerKind::Retention, now + self.cfg.heartbeat_ms.max(1));
    }

    /// Retention for one database (see [`Node::on_retention_timer`]). With `size_only`, after
    /// every commit and every applied file: past the size limit each one then retires about
    /// one file, instead of the timer retiring a heartbeat's worth in one step (thousands of
    /// files at a few thousand commits a second, which held every commit back while they
    /// were removed). Age and drops are left to the timer.
    pub(crate) fn trim_history(&mut self, now: Millis, name: &DbName, size_only: bool) {
        // Files sent to a connected replica but not yet acknowledged may still be queued in
        // the daemon's stream writer: keep everything above the lowest such acknowledgement.
        let mut hold: Option<TxId> = None;
        for d in self.downstream.values().filter(|d| d.ext.ack) {
            if let Some(sent) = d.sent.get(name) {
                let acked = self.acked.get(&(d.peer, name.clone())).map_or(TxId::ZERO, |p| p.txid);
                if acked < sent.txid {
                    hold = Some(hold.map_or(acked, |h| h.min(acked)));
                }
            }
        }
        let Some(db) = self.dbs.get_mut(name) else { return };
        let mut removed = Vec::new();
        while let (Some(first), Some(last)) = (db.history.first().copied(), db.history.last().copied()) {
            if first.max == last.max {
                break;
            }
            let too_old = now.since(first.added_at) > self.cfg.retention_ms;
            let too_big = db.history.bytes() > self.cfg.retention_bytes;
            // The newest durable file must stay until a newer one is durable: files after it
            // were written without an fsync, and a crash may take them all.
            let newest_durable = first.max >= db.durable_txid;
            let still_needed = db.commit_times.first_key_value().is_some_and(|(t, _)| *t <= first.max)
                || newest_durable
                || (self.cfg.backup && first.max > db.backed_up)
                || hold.is_some_and(|h| first.max > h);
            // Files before a drop describe a database that no longer exists: a replica
            // that lacks the drop gets an empty snapshot instead.
            let superseded = db.dropped();
            let due = if size_only { too_big } else { too_old || too_big || superseded };
            if !due || still_needed {
                break;
            }
            db.history.pop_first();
            removed.push(Output::RemoveLtx { db: name.clone(), min: first.min, max: first.max });
        }
        self.out.extend(removed);
    }
}

/// The retained file that extends `sent`, if there is one (else a snapshot is needed).
fn next_file(db: &Db, sent: Pos) -> Option<LtxEntry> {
    if sent.txid == TxId::ZERO || sent.txid >= db.pos.txid {
        return None;
    }
    db.history.starting_at(sent.txid.next()).copied().filter(|f| f.pre == sent.checksum && f.min != TxId(1))
}
