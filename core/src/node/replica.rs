//! The replica's jobs: connect to the primary the lease store names (never one with an
//! epoch older than we have seen), verify every LTX file received, apply only a file that
//! extends our position (min TXID = ours + 1 and pre-apply checksum = ours) or a snapshot,
//! acknowledge durable positions, and reconnect with jittered backoff.

use crate::ltx::{HEADER_SIZE, Header, TRAILER_SIZE, Trailer, VerifiedLtx, verify};
use crate::node::config::MAX_INBOX_FILES;
use crate::node::history::LtxEntry;
use crate::node::input::{IoFailure, OpId, SpoolId, UpstreamId};
use crate::node::output::{Event, Output};
use crate::node::time::Millis;
use crate::node::timer::TimerKind;
use crate::node::{Node, Role};
use crate::stream::{DbName, Extensions, Frame, PosMap, StreamDecoder, StreamEvent, encode_frame, encode_pos_map};
use crate::types::{Epoch, NodeId, Pos, TxId};

/// The shortest wait before reconnecting after a replica failed to store or apply files from
/// the primary twice in a row; it doubles with every further failure.
pub(crate) const STORE_FAILURE_HOLD_OFF_MIN_MS: u64 = 1_000;
/// The longest such wait: long enough not to pull a large snapshot a few times a second from
/// a disk that is full, short enough to catch up within a minute of space being freed.
pub(crate) const STORE_FAILURE_HOLD_OFF_MAX_MS: u64 = 60_000;

/// Our stream to the primary.
#[derive(Debug)]
pub(crate) struct Upstream {
    conn: UpstreamId,
    peer: NodeId,
    epoch: Epoch,
    opened: bool,
    /// The primary sent its ready frame: everything we lacked at connect time has arrived.
    ready: bool,
    ext: Extensions,
    decoder: StreamDecoder,
    /// The LTX file being spooled as it arrives, if one is.
    spooling: Option<SpoolId>,
}

impl Upstream {
    /// The file being spooled as it arrives, if one is.
    pub(crate) fn spooling(&self) -> Option<SpoolId> {
        self.spooling
    }
}

impl Inbound {
    /// Whether this is the spool `spool` (false for `None`).
    pub(crate) fn is_spool(&self, spool: Option<SpoolId>) -> bool {
        matches!(self, Inbound::Spooled { spool: s, .. } if Some(*s) == spool)
    }
}

/// A received LTX file waiting its turn to be persisted.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Small enough to hold: in memory, verified when its turn comes.
    Inline(Vec<u8>),
    /// Spooled to disk as it arrived; `verified` once its `SpoolDone` said so. It is
    /// applied only after that, and the decision uses only what verification proved.
    Spooled {
        /// The spool.
        spool: SpoolId,
        /// The verified header and trailer.
        verified: Option<VerifiedLtx>,
    },
}

impl Inbound {
    /// The file's transaction range and post-apply checksum, as its header and trailer say
    /// (not verified, for an inline file); `None` if unreadable.
    pub(crate) fn range_and_post(&self) -> Option<(TxId, TxId, crate::types::Checksum)> {
        match self {
            Inbound::Inline(bytes) => {
                let header = bytes.get(..HEADER_SIZE).and_then(|h| <&[u8; HEADER_SIZE]>::try_from(h).ok())?;
                let header = Header::decode(header).ok()?;
                let at = bytes.len().checked_sub(TRAILER_SIZE)?;
                let trailer = <&[u8; TRAILER_SIZE]>::try_from(&bytes[at..]).ok()?;
                Some((header.min_txid, header.max_txid, Trailer::decode(trailer).post_apply_checksum))
            }
            Inbound::Spooled { verified: Some(v), .. } => {
                Some((v.header().min_txid, v.header().max_txid, v.trailer().post_apply_checksum))
            }
            Inbound::Spooled { verified: None, .. } => None,
        }
    }
}

/// An LTX file being made durable and applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Persist {
    pub(crate) op: OpId,
    pub(crate) entry: LtxEntry,
    /// Recovery replay of a file already on disk.
    pub(crate) replay: bool,
    /// The stream it came from, to acknowledge on.
    pub(crate) conn: Option<UpstreamId>,
    /// The persist request makes the file durable before it is applied (else a flush will,
    /// after the apply).
    pub(crate) durable: bool,
}

/// Where the bytes of a file about to be persisted are.
enum Source {
    Inline(Vec<u8>),
    Spool(SpoolId),
}

/// Proof that a verified LTX file may be applied at our position: only
/// [`Node::check_contiguous`] makes one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Contiguous {
    verified: VerifiedLtx,
}

impl Upstream {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready
    }

    pub(crate) fn conn(&self) -> UpstreamId {
        self.conn
    }
}

impl Node {
    /// Abandons the stream, if one is open, with the files it delivered and this node has
    /// not applied yet. Files a stream that already closed left behind stay: they are
    /// applied before the next stream opens (see `on_upstream_closed`).
    pub(crate) fn drop_upstream(&mut self) {
        if let Some(up) = self.upstream.take() {
            self.emit(Output::CloseUpstream { conn: up.conn });
            self.clear_inboxes();
        }
        self.timers.stop(TimerKind::UpstreamIdle);
        // A new stream's pauses are judged afresh.
        self.paused_progress = None;
    }

    /// Forgets every received file not yet persisted, deleting the spooled ones.
    pub(crate) fn clear_inboxes(&mut self) {
        let mut spools = Vec::new();
        for db in self.dbs.values_mut() {
            for inbound in db.inbox.drain(..) {
                if let Inbound::Spooled { spool, .. } = inbound {
                    spools.push(spool);
                }
            }
        }
        for spool in spools {
            self.emit(Output::SpoolDiscard { spool });
        }
    }

    fn schedule_reconnect(&mut self, now: Millis) {
        let exp = self.backoff_attempt.min(16);
        let ceiling = self.cfg.reconnect_min_ms.saturating_mul(1 << exp).min(self.cfg.reconnect_max_ms);
        let delay = ceiling / 2 + self.rng.below(ceiling / 2 + 1);
        self.backoff_attempt = self.backoff_attempt.saturating_add(1);
        let delay = delay.max(self.store_failure_hold_off());
        self.timers.set(TimerKind::Reconnect, now + delay.max(1));
    }

    /// How long a reconnect waits at least after `store_failures` failures in a row:
    /// nothing after the first (it may have been passing), then from
    /// [`STORE_FAILURE_HOLD_OFF_MIN_MS`] doubling up to [`STORE_FAILURE_HOLD_OFF_MAX_MS`].
    /// The stream's own backoff starts over at every `Ready` frame, which a replica that
    /// keeps failing the same snapshot receives each time.
    fn store_failure_hold_off(&self) -> u64 {
        match self.store_failures {
            0 | 1 => 0,
            n => STORE_FAILURE_HOLD_OFF_MIN_MS.saturating_mul(1 << (n - 2).min(16)).min(STORE_FAILURE_HOLD_OFF_MAX_MS),
        }
    }

    /// A file from the primary could not be stored or applied: resync, waiting longer the
    /// more such failures came in a row.
    pub(crate) fn resync_after_store_failure(&mut self, now: Millis, reason: String) {
        self.store_failures = self.store_failures.saturating_add(1);
        let hold_off = self.store_failure_hold_off();
        let reason = if hold_off > 0 {
            format!(
                "{reason} ({} failures in a row: retrying in {} s at the earliest)",
                self.store_failures,
                hold_off / 1000
            )
        } else {
            reason
        };
        self.resync(now, reason);
    }

    /// Resync: drop the stream and come back after a backoff with our position.
    pub(crate) fn resync(&mut self, now: Millis, reason: String) {
        self.drop_upstream();
        self.clear_inboxes();
        self.event(Event::Resync { reason });
        self.schedule_reconnect(now);
    }

    pub(crate) fn maybe_connect(&mut self, now: Millis) {
        if self.upstream.is_some() || self.timers.get(TimerKind::Reconnect).is_some_and(|at| at > now) {
            return;
        }
        let Role::Replica { primary, epoch } = self.role() else { return };
        // The position map counts as an acknowledgement (it names what we hold durably):
        // connect once every applied file is durable (the flush in flight calls back here),
        // and once the files a closed stream left behind are applied (the last one calls
        // back here): the new stream starts where they end.
        if self.dbs.values().any(|db| db.unflushed() || !db.inbox.is_empty() || db.persist.is_some()) {
            return;
        }
        let conn = UpstreamId(self.next_op().0);
        let map: PosMap = self.dbs.iter().map(|(name, db)| (name.clone(), db.pos)).collect();
        let body = encode_pos_map(&map);
        self.upstream = Some(Upstream {
            conn,
            peer: primary,
            epoch,
            opened: false,
            ready: false,
            ext: Extensions::NONE,
            decoder: StreamDecoder::spooling(Extensions::NONE, self.cfg.ltx_inline_max_bytes),
            spooling: None,
        });
        self.emit(Output::Connect { conn, peer: primary, ext: Extensions::ALL, body });
        self.timers.set(TimerKind::UpstreamIdle, now + self.cfg.upstream_idle_ms);
    }

    pub(crate) fn on_upstream_opened(&mut self, now: Millis, conn: UpstreamId, ext: Extensions) {
        let Some(up) = self.upstream.as_mut().filter(|u| u.conn == conn) else { return };
        up.opened = true;
        up.ext = ext.intersect(Extensions::ALL);
        up.decoder = StreamDecoder::spooling(up.ext, self.cfg.ltx_inline_max_bytes);
        self.timers.set(TimerKind::UpstreamIdle, now + self.cfg.upstream_idle_ms);
    }

    pub(crate) fn on_upstream_closed(&mut self, now: Millis, conn: UpstreamId) {
        let Some(up) = self.upstream.take_if(|u| u.conn == conn) else { return };
        self.upstream_gone(now, up);
    }

    /// The stream `up` is over (closed, or ended by its primary). The files received whole
    /// are the primary's history, verified as they are applied: apply them. Dropping them (as
    /// before) made a failover lose what this node already held, and a reconnect fetch it
    /// again. Only a file still arriving is lost.
    fn upstream_gone(&mut self, now: Millis, up: Upstream) {
        if let Some(spool) = up.spooling {
            for db in self.dbs.values_mut() {
                db.inbox.retain(|inbound| !matches!(inbound, Inbound::Spooled { spool: s, .. } if *s == spool));
            }
            self.emit(Output::SpoolDiscard { spool });
        }
        self.timers.stop(TimerKind::UpstreamIdle);
        self.schedule_reconnect(now);
    }

    pub(crate) fn on_upstream_idle(&mut self, now: Millis) {
        if self.upstream.is_none() {
            return;
        }
        let progress = self.dbs.values().map(|db| db.pos.txid.0).fold(0u64, u64::wrapping_add);
        let applying = self.dbs.values().any(|db| db.persist.is_some());
        if !self.accepts_upstream_data() && (applying || self.paused_progress != Some(progress)) {
            // The silence is ours: the stream is paused while files wait to be applied, and
            // one is being applied or applies moved on since the last look. A pause with
            // neither is a stall, which a resync ends.
            self.paused_progress = Some(progress);
            self.timers.set(TimerKind::UpstreamIdle, now + self.cfg.upstream_idle_ms);
            return;
        }
        self.paused_progress = None;
        let reason = if self.accepts_upstream_data() { "primary silent" } else { "paused without progress" };
        self.resync(now, reason.into());
    }

    pub(crate) fn on_upstream_data(&mut self, now: Millis, conn: UpstreamId, bytes: &[u8]) {
        let Some(up) = self.upstream.as_mut().filter(|u| u.conn == conn && u.opened) else { return };
        up.decoder.feed(bytes);
        self.timers.set(TimerKind::UpstreamIdle, now + self.cfg.upstream_idle_ms);
        let mut touched: Vec<DbName> = Vec::new();
        loop {
            let Some(up) = self.upstream.as_mut().filter(|u| u.conn == conn) else { return };
            let (peer, epoch) = (up.peer, up.epoch);
            match up.decoder.next_event() {
                Ok(None) => break,
                Err(e) => return self.resync(now, format!("stream from {peer}: {e}")),
                Ok(Some(StreamEvent::Ltx { name, payload })) => {
                    let db = self.dbs.entry(name.clone()).or_default();
                    if db.inbox.len() >= MAX_INBOX_FILES {
                        return self.resync(now, format!("{name}: too many LTX files buffered"));
                    }
                    db.inbox.push_back(Inbound::Inline(payload));
                    touched.push(name);
                }
                Ok(Some(StreamEvent::LtxBegin { name, first })) => {
                    let spool = SpoolId(self.next_op().0);
                    let db = self.dbs.entry(name.clone()).or_default();
                    if db.inbox.len() >= MAX_INBOX_FILES {
                        return self.resync(now, format!("{name}: too many LTX files buffered"));
                    }
                    // Queued now, so that files after it still wait for it.
                    db.inbox.push_back(Inbound::Spooled { spool, verified: None });
                    if let Some(up) = self.upstream.as_mut() {
                        up.spooling = Some(spool);
                    }
                    self.emit(Output::SpoolBegin { spool, db: name });
                    self.emit(Output::SpoolWrite { spool, bytes: first });
                }
                Ok(Some(StreamEvent::LtxData(bytes))) => {
                    if let Some(spool) = self.upstream.as_ref().and_then(|u| u.spooling) {
                        self.emit(Output::SpoolWrite { spool, bytes });
                    }
                }
                Ok(Some(StreamEvent::LtxEnd { .. })) => {
                    if let Some(spool) = self.upstream.as_mut().and_then(|u| u.spooling.take()) {
                        self.emit(Output::SpoolEnd { spool });
                    }
                }
                Ok(Some(StreamEvent::Frame(frame))) => match frame {
                    Frame::Epoch { epoch: theirs, node_id } => {
                        // A primary known only by address (a static lease, or a lease value
                        // LiteFS wrote, names no id: peer 0) is identified by this frame.
                        let other_node = node_id != peer && peer != NodeId(0);
                        let stale = theirs < self.max_epoch || theirs < epoch || other_node;
                        if stale && !self.cfg.faults.ignore_epochs {
                            return self.resync(now, format!("primary {peer} epoch {theirs} is stale"));
                        }
                        self.max_epoch = self.max_epoch.max(theirs);
                    }
                    Frame::Handoff { .. } => self.take_over(now, epoch),
                    Frame::End => {
                        // The primary ended its term's stream (it stepped down, or cut us off
                        // as silent): what it sent whole stays, as after a close.
                        if let Some(up) = self.upstream.take() {
                            self.emit(Output::CloseUpstream { conn: up.conn });
                            self.upstream_gone(now, up);
                        }
                        break;
                    }
                    Frame::Ready => {
                        self.backoff_attempt = 0;
                        if let Some(up) = self.upstream.as_mut() {
                            up.ready = true;
                        }
                    }
                    Frame::Heartbeat { timestamp_ms } => self.primary_clock_ms = Some(timestamp_ms),
                    Frame::DropDb { name } => self.on_drop_frame(now, &name),
                    Frame::Hwm { txid, name } => {
                        let db = self.dbs.entry(name).or_default();
                        db.primary_txid = db.primary_txid.max(txid);
                    }
                    _ => {}
                },
            }
        }
        touched.dedup();
        for name in touched {
            self.process_inbox(now, &name);
        }
        let names: Vec<DbName> = self.dbs.keys().cloned().collect();
        for name in &names {
            self.clear_rejoin_if_back(name);
        }
    }

    /// Checks that a verified file extends our position in its database (or is a snapshot).
    fn check_contiguous(&self, pos: Pos, verified: VerifiedLtx) -> Result<Contiguous, String> {
        let header = verified.header();
        if header.is_snapshot() || self.cfg.faults.skip_pre_apply_check {
            return Ok(Contiguous { verified });
        }
        if header.min_txid != pos.txid.next() {
            return Err(format!("LTX starts at {} but we are at {pos}", header.min_txid));
        }
        if header.pre_apply_checksum != pos.checksum {
            return Err(format!("LTX pre-apply checksum {} but we are at {pos}", header.pre_apply_checksum));
        }
        Ok(Contiguous { verified })
    }

    /// A spool was verified (or failed): the file may now take its turn.
    pub(crate) fn on_spool_done(&mut self, now: Millis, spool: SpoolId, result: Result<VerifiedLtx, String>) {
        let found = self.dbs.iter_mut().find_map(|(name, db)| {
            db.inbox.iter_mut().find_map(|inbound| match inbound {
                Inbound::Spooled { spool: s, verified } if *s == spool => Some((name.clone(), verified)),
                _ => None,
            })
        });
        let Some((name, slot)) = found else {
            // Discarded meanwhile (the stream failed): make sure it is gone.
            self.emit(Output::SpoolDiscard { spool });
            return;
        };
        match result {
            Ok(verified) => {
                *slot = Some(verified);
                self.process_inbox(now, &name);
            }
            // Spooling fails on the disk (full, failing) or on a file that does not verify.
            Err(reason) => self.resync_after_store_failure(now, format!("{name}: invalid LTX: {reason}")),
        }
    }

    pub(crate) fn process_inbox(&mut self, now: Millis, name: &DbName) {
        if !self.inbox_front_may_go(name) {
            return;
        }
        let Some(db) = self.dbs.get_mut(name) else { return };
        if db.busy() || matches!(db.inbox.front(), Some(Inbound::Spooled { verified: None, .. })) {
            return;
        }
        let Some(inbound) = db.inbox.pop_front() else {
            // The last file a closed stream left is applied: the next stream may open.
            if self.upstream.is_none() {
                self.maybe_connect(now);
            }
            return;
        };
        let pos = db.pos;
        let (verified, payload) = match inbound {
            Inbound::Inline(payload) => match verify(payload.as_slice()) {
                Ok(v) => (v, Source::Inline(payload)),
                Err(e) => return self.resync(now, format!("{name}: invalid LTX: {e}")),
            },
            Inbound::Spooled { spool, verified: Some(v) } => (v, Source::Spool(spool)),
            Inbound::Spooled { verified: None, .. } => unreachable!("checked above: the front file is verified"),
        };
        let proof = match self.check_contiguous(pos, verified) {
            Ok(p) => p,
            Err(reason) => {
                if let Source::Spool(spool) = payload {
                    self.emit(Output::SpoolDiscard { spool });
                }
                return self.resync(now, format!("{name}: {reason}"));
            }
        };
        let h = proof.verified.header();
        let entry = LtxEntry {
            min: h.min_txid,
            max: h.max_txid,
            pre: h.pre_apply_checksum,
            post: proof.verified.trailer().post_apply_checksum,
            size: proof.verified.size(),
            added_at: now,
        };
        let Some(origin) = self.origin_of_upstream_file(name, &entry) else {
            if let Source::Spool(spool) = payload {
                self.emit(Output::SpoolDiscard { spool });
            }
            self.distrust_database(
                now,
                name,
                "a transaction written here under a halt lock was lost with its primary: waiting for a snapshot",
            );
            return self.resync(
                now,
                format!("{name}: a transaction written here under a halt lock was lost with its primary"),
            );
        };
        // A drop's page size is not the database's (it has none left): a database created
        // again may choose another.
        let page_size = (h.commit != 0).then_some(h.page_size);
        let timestamp_ms = h.timestamp_ms;
        // With the pre-apply check skipped (fault injection) the node trusts the file's own
        // claim about where it applies.
        let base = if self.cfg.faults.skip_pre_apply_check { entry.pre } else { pos.checksum };
        if entry.min == TxId(1) && entry.max < pos.txid {
            // Once this snapshot is durable our history is gone: until we are back at our
            // position we may lack transactions we acknowledged. Recorded before the write,
            // so a crash in between cannot forget it.
            let rejoin = self.dbs.get(name).map_or(TxId::ZERO, |db| db.rejoin_txid).max(pos.txid);
            if let Some(db) = self.dbs.get_mut(name) {
                db.rejoin_txid = rejoin;
            }
            self.emit(Output::PersistRejoin { db: name.clone(), txid: rejoin });
        }
        // In synchronous mode the primary waits for our acknowledgement, which needs the file
        // durable: fsync it before the apply, as one step (also while rejoining: a crash must
        // not throw us back further). Otherwise apply it at once and let a flush make it (and
        // whatever arrives meanwhile) durable in the background; the acknowledgement follows
        // the flush. A snapshot replaces every other file, so it is always written durably.
        let rejoining = self.dbs.get(name).is_some_and(super::db::Db::rejoining);
        let durable =
            entry.min == TxId(1) || ((self.cfg.sync.is_some() || rejoining) && self.may_persist_durably(name));
        let op = self.next_op();
        let conn = self.upstream.as_ref().map(|u| u.conn);
        self.ops.insert(op, name.clone());
        if let Some(db) = self.dbs.get_mut(name) {
            db.persist = Some(Persist { op, entry, replay: false, conn, durable });
            db.page_size = page_size;
            db.pending_ts_ms = timestamp_ms;
        }
        let (db, min, max) = (name.clone(), entry.min, entry.max);
        match payload {
            Source::Inline(bytes) => self.emit(Output::PersistLtx { db, op, min, max, bytes, base, durable, origin }),
            // A spooled file is always stored durably (fsynced spool, renamed); `durable` above
            // stays what the inline rule says, so earlier unflushed files still get their flush.
            Source::Spool(spool) => self.emit(Output::PersistSpooledLtx { db, op, spool, min, max, base, origin }),
        }
    }

    pub(crate) fn on_ltx_done(&mut self, now: Millis, op: OpId, result: Result<Pos, IoFailure>) {
        let Some(name) = self.ops.remove(&op) else { return };
        let Some(db) = self.dbs.get_mut(&name) else { return };
        if db.commit.as_ref().is_some_and(|c| c.op_is(op)) {
            self.on_commit_persisted(now, &name, result);
            self.after_progress(now);
            self.process_inbox(now, &name);
            return;
        }
        let Some(p) = db.persist.filter(|p| p.op == op) else { return };
        db.persist = None;
        match result {
            Ok(pos) if pos == p.entry.post_pos() => {
                let was = db.pos;
                if p.entry.min == TxId(1) && p.entry.max < db.pos.txid {
                    // A snapshot moved a diverged replica back: its later history is gone.
                    db.history.clear();
                }
                if p.entry.min == TxId(1) && !p.replay && was != Pos::ZERO {
                    self.event(Event::SnapshotReplaced { db: name.clone(), was, now: pos });
                }
                if !p.replay {
                    self.store_failures = 0;
                }
                let Some(db) = self.dbs.get_mut(&name) else { return };
                if p.replay {
                    // Recovery found the file on disk, and the store made it durable at start.
                    db.pos = pos;
                    db.durable_txid = pos.txid;
                } else {
                    db.needs_snapshot = false;
                    db.applied_ts_ms = db.pending_ts_ms;
                    // What was sent under a halt lock up to here is settled (back, or replaced;
                    // all of it by a snapshot, which replaced the file).
                    if p.entry.min == TxId(1) {
                        db.sent_under_halt.clear();
                    } else {
                        db.sent_under_halt.retain(|&txid, _| txid > p.entry.max);
                    }
                    self.advance(now, &name, p.entry);
                    if p.entry.min == TxId(1) {
                        self.reset_durability(&name, p.entry.max);
                    } else if p.durable
                        && let Some(db) = self.dbs.get_mut(&name)
                    {
                        db.durable_txid = p.entry.max;
                    }
                    if p.durable {
                        self.send_ack(p.conn, &name, pos);
                    }
                    self.clear_rejoin_if_back(&name);
                    self.schedule_flush(now, &name);
                }
            }
            Ok(_) | Err(_) => {
                let failure = result.err().unwrap_or(IoFailure::Mismatch);
                self.event(Event::DiskFailed { db: name.clone(), failure });
                if p.replay {
                    self.recovery_failed(now, &name);
                } else {
                    if failure == IoFailure::Mismatch {
                        // The file verified and continued our position, yet the database did
                        // not end where it promised: the database is not what its history
                        // says. Applying more files cannot mend it; a snapshot can.
                        self.distrust_database(now, &name, "apply mismatch: waiting for a snapshot");
                    }
                    self.resync_after_store_failure(
                        now,
                        format!("{name}: persisting {}-{} failed", p.entry.min, p.entry.max),
                    );
                }
                return;
            }
        }
        if p.replay {
            self.continue_replay(now, &name);
        } else {
            self.trim_history(now, &name, true);
            self.process_inbox(now, &name);
        }
    }

    /// A replica moved back by a snapshot is back where it was, or holds durably everything
    /// its primary had when it connected (the primary holds every acknowledged transaction,
    /// and what we had past its lineage was never acknowledged): forget the record.
    pub(crate) fn clear_rejoin_if_back(&mut self, name: &DbName) {
        let ready = self.upstream_ready();
        let Some(db) = self.dbs.get_mut(name) else { return };
        // Until the snapshot that moves us back is written, our old position proves nothing.
        let snapshot_pending = db.persist.is_some_and(|p| p.entry.min == TxId(1) && !p.replay);
        let caught_up = ready && db.inbox.is_empty() && db.persist.is_none() && !db.unflushed();
        if db.rejoin_txid != TxId::ZERO && !snapshot_pending && (db.durable_txid >= db.rejoin_txid || caught_up) {
            db.rejoin_txid = TxId::ZERO;
            self.emit(Output::PersistRejoin { db: name.clone(), txid: TxId::ZERO });
        }
    }

    pub(crate) fn send_ack(&mut self, conn: Option<UpstreamId>, name: &DbName, pos: Pos) {
        let Some(up) = self.upstream.as_ref().filter(|u| Some(u.conn) == conn && u.ext.ack) else { return };
        let mut bytes = Vec::new();
        encode_frame(&Frame::Ack { pos, name: name.clone() }, &mut bytes);
        let conn = up.conn;
        self.emit(Output::SendUpstream { conn, bytes });
    }
}
