//! The primary's jobs: the commit path (TXID = last + 1, post-apply checksum from the
//! pre-apply checksum and the changed pages' old and new checksums, acknowledge only after
//! the LTX is durable and, in synchronous mode, acknowledged by every other candidate),
//! serving replicas (next LTX files or a snapshot), and retention.

use crate::ltx::{DatabaseChecksum, Encoder, Header, page_checksum};
use crate::node::Node;
use crate::node::config::SyncPolicy;
use crate::node::history::LtxEntry;
use crate::node::input::{CommitId, DownstreamId, IoFailure, OpId, PageChange};
use crate::node::lease::WriteGrant;
use crate::node::output::{Event, Output, RefuseReason};
use crate::node::time::Millis;
use crate::node::timer::TimerKind;
use crate::stream::{Extensions, Frame, StreamDecoder, StreamEvent, decode_pos_map, encode_frame};
use crate::types::{Checksum, NodeId, Pgno, Pos, TxId};

/// Most bytes of acknowledgement frames buffered from one replica before it is cut off:
/// an ack frame is under 300 bytes, so this only trips on a misbehaving peer.
const MAX_DOWNSTREAM_BUFFER: usize = 64 * 1024;

/// A commit being made durable (and replicated, in synchronous mode).
#[derive(Debug)]
pub(crate) struct InflightCommit {
    commit: CommitId,
    /// The persist request, until it is done.
    op: Option<OpId>,
    entry: LtxEntry,
    /// Already acknowledged to the application (fault injection only).
    acked_early: bool,
    stall_reported: bool,
}

/// A replica streaming from us.
#[derive(Debug)]
pub(crate) struct Downstream {
    pub(crate) peer: NodeId,
    pub(crate) ext: Extensions,
    /// Where the replica will be once it has applied everything we sent.
    sent: Pos,
    decoder: StreamDecoder,
}

impl Node {
    pub(crate) fn on_commit(
        &mut self,
        now: Millis,
        commit: CommitId,
        pages: Vec<PageChange>,
        commit_pages: u32,
        removed: Vec<(Pgno, Checksum)>,
    ) {
        let Some(grant) = self.write_grant(now) else {
            self.emit(Output::RefuseCommit { commit, reason: RefuseReason::NotPrimary });
            return;
        };
        if self.commit.is_some() || self.persist.is_some() {
            self.emit(Output::RefuseCommit { commit, reason: RefuseReason::Busy });
            return;
        }
        if self.async_window_exceeded(now) {
            self.emit(Output::RefuseCommit { commit, reason: RefuseReason::AsyncWindow });
            return;
        }
        match self.encode_commit(now, grant, &pages, commit_pages, &removed) {
            Some((entry, bytes)) => {
                let op = self.next_op();
                self.emit(Output::PersistLtx { op, min: entry.min, max: entry.max, bytes, base: entry.pre });
                let mut inflight =
                    InflightCommit { commit, op: Some(op), entry, acked_early: false, stall_reported: false };
                if self.cfg.faults.ack_before_durable {
                    inflight.acked_early = true;
                    self.emit(Output::AckCommit { commit, pos: entry.post_pos() });
                }
                self.commit = Some(inflight);
            }
            None => self.emit(Output::RefuseCommit { commit, reason: RefuseReason::Invalid }),
        }
    }

    /// Builds the LTX file of a commit. Needs the grant: no TXID is assigned without one.
    fn encode_commit(
        &self,
        now: Millis,
        grant: WriteGrant,
        pages: &[PageChange],
        commit_pages: u32,
        removed: &[(Pgno, Checksum)],
    ) -> Option<(LtxEntry, Vec<u8>)> {
        let _ = grant;
        let page_size = self.cfg.page_size;
        let txid = self.pos.txid.next();
        // The first transaction is a snapshot: its pre-apply checksum is zero by LTX rule.
        let pre = if txid == TxId(1) { Checksum::ZERO } else { self.pos.checksum };
        let mut sorted: Vec<&PageChange> = pages.iter().collect();
        sorted.sort_by_key(|p| p.pgno);
        let mut sum = DatabaseChecksum::from_checksum(page_size, if txid == TxId(1) { Checksum::EMPTY } else { pre });
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
        header.node_id = self.cfg.node_id;
        let mut encoder = Encoder::new(Vec::new(), header).ok()?;
        for change in &sorted {
            encoder.encode_page(change.pgno, &change.data).ok()?;
        }
        let (bytes, _) = encoder.finish(post).ok()?;
        let entry = LtxEntry { min: txid, max: txid, pre, post, size: bytes.len() as u64, added_at: now };
        Some((entry, bytes))
    }

    /// The primary's own commit is durable (or failed).
    pub(crate) fn on_commit_persisted(&mut self, now: Millis, result: Result<Pos, IoFailure>) {
        let Some(inflight) = self.commit.as_mut() else { return };
        inflight.op = None;
        let entry = inflight.entry;
        match result {
            Ok(pos) if pos == entry.post_pos() => {}
            Ok(_) | Err(_) => {
                let failure = result.err().unwrap_or(IoFailure::Mismatch);
                let commit = inflight.commit;
                self.commit = None;
                self.event(Event::DiskFailed { failure });
                self.emit(Output::RefuseCommit { commit, reason: RefuseReason::Disk });
                return;
            }
        }
        self.advance(now, entry);
        if self.cfg.async_window_ms.is_some() || self.cfg.sync.is_some() {
            self.commit_times.insert(entry.max, now);
        }
        let conns: Vec<DownstreamId> = self.downstream.keys().copied().collect();
        for conn in conns {
            self.catch_up(conn);
        }
        if self.cfg.sync.is_some() {
            if let Some(sync) = &self.cfg.sync {
                self.timers.set(TimerKind::SyncTimeout, now + sync.timeout_ms);
            }
            self.try_finish_sync_commit(now);
        } else {
            self.finish_commit();
        }
    }

    /// Records a durable LTX file as our new position.
    pub(crate) fn advance(&mut self, now: Millis, entry: LtxEntry) {
        debug_assert!(entry.min == TxId(1) || entry.pre == self.pos.checksum, "checksum chain broken");
        let mut entry = entry;
        entry.added_at = now;
        let dropped = self.history.push(entry);
        for f in dropped {
            self.emit(Output::RemoveLtx { min: f.min, max: f.max });
        }
        self.pos = entry.post_pos();
    }

    fn finish_commit(&mut self) {
        if let Some(inflight) = self.commit.take()
            && !inflight.acked_early
        {
            self.emit(Output::AckCommit { commit: inflight.commit, pos: inflight.entry.post_pos() });
        }
    }

    /// Candidates other than us that have not acknowledged `txid` on our lineage.
    fn missing_acks(&self, txid: TxId) -> usize {
        self.cfg
            .candidates
            .iter()
            .filter(|&&c| c != self.cfg.node_id)
            .filter(|c| self.acked.get(c).is_none_or(|p| p.txid < txid))
            .count()
    }

    fn try_finish_sync_commit(&mut self, _now: Millis) {
        let Some(inflight) = &self.commit else { return };
        if inflight.op.is_some() {
            return;
        }
        if self.missing_acks(inflight.entry.max) == 0 {
            self.timers.stop(TimerKind::SyncTimeout);
            self.finish_commit();
        }
    }

    pub(crate) fn on_sync_timeout(&mut self, now: Millis) {
        let Some(sync) = self.cfg.sync.clone() else { return };
        let Some(inflight) = self.commit.as_mut() else { return };
        if inflight.op.is_some() {
            return;
        }
        let txid = inflight.entry.max;
        match sync.policy {
            SyncPolicy::Degrade => {
                self.event(Event::SyncDegraded { txid });
                self.finish_commit();
            }
            SyncPolicy::Block => {
                if !inflight.stall_reported {
                    inflight.stall_reported = true;
                    self.event(Event::SyncStalled { txid });
                }
                self.timers.set(TimerKind::SyncTimeout, now + sync.timeout_ms);
            }
        }
    }

    pub(crate) fn fail_pending_commit_on_step_down(&mut self) {
        // A commit still waiting is not acknowledged: its LTX may or may not survive.
        if let Some(inflight) = &self.commit
            && inflight.op.is_none()
        {
            let commit = inflight.commit;
            let early = inflight.acked_early;
            self.commit = None;
            self.timers.stop(TimerKind::SyncTimeout);
            if !early {
                self.emit(Output::RefuseCommit { commit, reason: RefuseReason::NotPrimary });
            }
        }
    }

    /// Whether a candidate lacks a commit older than the asynchronous loss window.
    fn async_window_exceeded(&self, now: Millis) -> bool {
        let Some(window) = self.cfg.async_window_ms else { return false };
        let oldest_missing = self.commit_times.iter().find(|(txid, _)| self.missing_acks(**txid) > 0);
        oldest_missing.is_some_and(|(_, at)| now.since(*at) > window)
    }

    fn trim_commit_times(&mut self) {
        while let Some((&txid, _)) = self.commit_times.first_key_value() {
            if self.missing_acks(txid) == 0 {
                self.commit_times.pop_first();
            } else {
                break;
            }
        }
    }

    pub(crate) fn on_downstream_opened(
        &mut self,
        _now: Millis,
        conn: DownstreamId,
        peer: NodeId,
        offered: Extensions,
        body: &[u8],
    ) {
        // With the ignore-epochs fault a deposed primary keeps serving: the bug epochs prevent.
        let deposed_serves = self.cfg.faults.ignore_epochs && !self.history.is_empty();
        let serving = matches!(self.role(), crate::node::Role::Primary { .. }) || deposed_serves;
        let map = decode_pos_map(body);
        let (true, Ok(map)) = (serving && peer != self.cfg.node_id, map) else {
            self.emit(Output::CloseDownstream { conn });
            return;
        };
        let ext = offered.intersect(Extensions::ALL);
        let sent = map.get(&self.cfg.db).copied().unwrap_or(Pos::ZERO);
        self.downstream.insert(conn, Downstream { peer, ext, sent, decoder: StreamDecoder::new(ext) });
        let mut bytes = Vec::new();
        if ext.epoch {
            encode_frame(&Frame::Epoch { epoch: self.max_epoch, node_id: self.cfg.node_id }, &mut bytes);
            self.emit(Output::SendDownstream { conn, bytes: std::mem::take(&mut bytes) });
        }
        self.catch_up(conn);
        encode_frame(&Frame::Ready, &mut bytes);
        encode_frame(&Frame::Heartbeat { timestamp_ms: 0 }, &mut bytes);
        self.emit(Output::SendDownstream { conn, bytes });
    }

    /// Sends a replica what it lacks: the next LTX files, or a snapshot when it is new,
    /// ahead of us, diverged, or behind our retained history.
    fn catch_up(&mut self, conn: DownstreamId) {
        loop {
            let Some(d) = self.downstream.get(&conn) else { return };
            let sent = d.sent;
            if sent == self.pos || self.pos.txid == TxId::ZERO {
                return;
            }
            let next = self.history.starting_at(sent.txid.next()).copied();
            let incremental = sent.txid != TxId::ZERO
                && sent.txid < self.pos.txid
                && next.is_some_and(|f| f.pre == sent.checksum && f.min != TxId(1));
            match (incremental, next) {
                (true, Some(f)) => {
                    self.emit(Output::StreamLtx { conn, min: f.min, max: f.max });
                    if let Some(d) = self.downstream.get_mut(&conn) {
                        d.sent = f.post_pos();
                    }
                }
                _ => {
                    let pos = self.pos;
                    self.emit(Output::StreamSnapshot { conn, pos });
                    if let Some(d) = self.downstream.get_mut(&conn) {
                        d.sent = pos;
                    }
                    return;
                }
            }
        }
    }

    pub(crate) fn on_downstream_data(&mut self, now: Millis, conn: DownstreamId, bytes: &[u8]) {
        let Some(d) = self.downstream.get_mut(&conn) else { return };
        d.decoder.feed(bytes);
        let mut acks = Vec::new();
        let mut bad = d.decoder.buffered() > MAX_DOWNSTREAM_BUFFER;
        while !bad {
            match d.decoder.next_event() {
                Ok(Some(StreamEvent::Frame(Frame::Ack { pos, name }))) if name == self.cfg.db => acks.push(pos),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => bad = true,
            }
        }
        let peer = d.peer;
        if bad {
            self.downstream.remove(&conn);
            self.emit(Output::CloseDownstream { conn });
            return;
        }
        for pos in acks {
            // Only acknowledgements of positions on our own lineage count.
            if (self.history.contains(pos) || pos == self.pos)
                && self.acked.get(&peer).is_none_or(|p| p.txid <= pos.txid)
            {
                self.acked.insert(peer, pos);
            }
        }
        self.trim_commit_times();
        if self.cfg.sync.is_some() {
            self.try_finish_sync_commit(now);
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
        self.timers.set(TimerKind::Heartbeat, now + self.cfg.heartbeat_ms);
    }

    /// Drops the oldest LTX files past the age or size limit, never the newest file and never
    /// one a candidate still lacks while the async window or sync mode counts on it.
    pub(crate) fn on_retention_timer(&mut self, now: Millis) {
        while let (Some(first), Some(last)) = (self.history.first().copied(), self.history.last().copied()) {
            if first.max == last.max {
                break;
            }
            let too_old = now.since(first.added_at) > self.cfg.retention_ms;
            let too_big = self.history.bytes() > self.cfg.retention_bytes;
            let still_needed = self.commit_times.first_key_value().is_some_and(|(t, _)| *t <= first.max);
            if !(too_old || too_big) || still_needed {
                break;
            }
            self.history.pop_first();
            self.emit(Output::RemoveLtx { min: first.min, max: first.max });
        }
        self.timers.set(TimerKind::Retention, now + self.cfg.heartbeat_ms.max(1));
    }
}

impl InflightCommit {
    pub(crate) fn op_is(&self, op: OpId) -> bool {
        self.op == Some(op)
    }
}
