//! Dropping a database, the way LiteFS does since it deprecated its drop-db frame: the
//! deletion is one more transaction in the database's history, an LTX file whose commit size
//! is zero (no pages, post-apply checksum [`Checksum::EMPTY`]). So it replicates, is
//! acknowledged, survives failover and reaches a replica that was offline exactly like any
//! commit, and a database created again under the same name continues the history from the
//! empty state (TXID after the drop, pre-apply checksum `EMPTY`).
//!
//! What is new here:
//! - the primary's input for an application's unlink ([`Node::on_drop`]);
//! - a dropped database needs no snapshot copy: a replica that lacks the drop and cannot
//!   get it from the retained files (or never had the database) receives a tiny snapshot of
//!   the empty state ([`tombstone_snapshot`]), as LiteFS sends a zero-page snapshot;
//! - a replica whose position map names a database the primary does not know at all is sent
//!   LiteFS's drop-db frame, and keeps the database, as LiteFS's replicas do
//!   ([`Node::on_drop_frame`]).
//!
//! See `docs/decisions/0009-dropping-databases.md`.

use crate::ltx::{Encoder, Header};
use crate::node::Node;
use crate::node::db::Db;
use crate::node::history::LtxEntry;
use crate::node::input::{CommitId, DownstreamId};
use crate::node::lease::WriteGrant;
use crate::node::output::{LtxOrigin, Output, RefuseReason};
use crate::node::primary::InflightCommit;
use crate::node::time::Millis;
use crate::stream::{DbName, Frame, encode_frame};
use crate::types::{Checksum, NodeId, PageSize, Pos, TxId};

impl Db {
    /// Whether the database's newest transaction deleted it (its file is gone; a commit
    /// under the same name creates it again).
    pub(crate) fn dropped(&self) -> bool {
        self.pos.txid != TxId::ZERO && self.pos.checksum == Checksum::EMPTY
    }
}

/// Page size written in a tombstone when the database's is unknown: the file has no pages,
/// and applying a drop never reads the database with it.
pub(crate) fn fallback_page_size() -> PageSize {
    PageSize::new(4096).expect("4096 is a valid SQLite page size")
}

/// The LTX file of a drop on top of `pos`: TXID `pos.txid + 1`, commit size zero, no pages,
/// post-apply checksum `EMPTY` (LiteFS's `DB.Drop`).
fn encode_tombstone(node_id: NodeId, pos: Pos, page_size: PageSize, timestamp_ms: i64) -> Option<Vec<u8>> {
    let txid = pos.txid.next();
    let mut header = Header::new(page_size, 0, txid, txid, pos.checksum);
    header.timestamp_ms = timestamp_ms;
    header.node_id = node_id;
    Encoder::new(Vec::new(), header).ok()?.finish(Checksum::EMPTY).ok().map(|(bytes, _)| bytes)
}

/// The primary's drop on top of `pos`. Needs the grant: no TXID is assigned without one.
fn encode_drop(
    node_id: NodeId,
    now: Millis,
    _grant: WriteGrant,
    pos: Pos,
    page_size: PageSize,
) -> Option<(LtxEntry, Vec<u8>)> {
    let bytes = encode_tombstone(node_id, pos, page_size, now.0 as i64)?;
    let txid = pos.txid.next();
    let entry = LtxEntry {
        min: txid,
        max: txid,
        pre: pos.checksum,
        post: Checksum::EMPTY,
        size: bytes.len() as u64,
        added_at: now,
    };
    Some((entry, bytes))
}

/// A snapshot of a dropped database at `pos` (`pos.checksum` is `EMPTY`): TXIDs 1 to
/// `pos.txid`, commit size zero, no pages. Sent instead of copying a database file that no
/// longer exists to a replica that lacks the drop and cannot get it from retained files.
pub(crate) fn tombstone_snapshot(node_id: NodeId, pos: Pos, page_size: PageSize, timestamp_ms: i64) -> Option<Vec<u8>> {
    debug_assert_eq!(pos.checksum, Checksum::EMPTY, "only a dropped database has an empty snapshot");
    let mut header = Header::new(page_size, 0, TxId(1), pos.txid, Checksum::ZERO);
    header.timestamp_ms = timestamp_ms;
    header.node_id = node_id;
    Encoder::new(Vec::new(), header).ok()?.finish(Checksum::EMPTY).ok().map(|(bytes, _)| bytes)
}

impl Node {
    /// The application unlinked database `name` on this node. Answered like a commit
    /// (`AckCommit` once the drop is durable, and acknowledged in synchronous mode, else
    /// `RefuseCommit`).
    pub(crate) fn on_drop(&mut self, now: Millis, commit: CommitId, name: DbName) {
        let refuse = |node: &mut Node, reason| node.emit(Output::RefuseCommit { commit, reason });
        let Some(grant) = self.write_grant(now) else { return refuse(self, RefuseReason::NotPrimary) };
        let pos = self.pos(&name);
        let Some(db) = self.dbs.get(&name) else {
            // Never committed (SQLite created the file and it was removed before any
            // transaction): nothing to replicate.
            return self.emit(Output::AckCommit { db: name, commit, pos });
        };
        if db.needs_snapshot {
            return refuse(self, RefuseReason::NotPrimary);
        }
        if db.busy() {
            return refuse(self, RefuseReason::Busy);
        }
        if pos == Pos::ZERO || db.dropped() {
            return self.emit(Output::AckCommit { db: name, commit, pos });
        }
        if self.async_window_exceeded(&name, now) {
            return refuse(self, RefuseReason::AsyncWindow);
        }
        // A file without pages: its page size only has to be valid.
        let page_size = db.page_size.unwrap_or_else(fallback_page_size);
        let Some((entry, bytes)) = encode_drop(self.cfg.node_id, now, grant, pos, page_size) else {
            return refuse(self, RefuseReason::Invalid);
        };
        let op = self.next_op();
        self.ops.insert(op, name.clone());
        // A drop is always asked to be durable, as a rollback-journal commit is (see `on_commit`).
        let durable_write = self.cfg.sync.is_none() && self.may_persist_durably(&name);
        let (min, max, base) = (entry.min, entry.max, entry.pre);
        self.emit(Output::PersistLtx {
            db: name.clone(),
            op,
            min,
            max,
            bytes,
            base,
            durable: durable_write,
            origin: LtxOrigin::OwnCommit,
        });
        let early = self.cfg.faults.ack_before_durable;
        if early {
            self.emit(Output::AckCommit { db: name.clone(), commit, pos: entry.post_pos() });
        }
        if let Some(db) = self.dbs.get_mut(&name) {
            // A database created again under this name may choose another page size.
            db.page_size = None;
            db.commit = Some(InflightCommit::durable(commit, op, entry, durable_write, early));
        }
    }

    /// On a new replica stream: LiteFS's drop-db frame for each database the replica's
    /// position map names and this primary does not know at all (LiteFS's server does the
    /// same). A database this primary dropped is not one of them: it is known, and the
    /// replica gets its drop as an LTX file.
    pub(crate) fn send_drop_frames(&mut self, conn: DownstreamId) {
        let Some(d) = self.downstream.get_mut(&conn) else { return };
        let unknown: Vec<DbName> = d.sent.keys().filter(|name| !self.dbs.contains_key(*name)).cloned().collect();
        let mut bytes = Vec::new();
        for name in unknown {
            d.sent.remove(&name);
            encode_frame(&Frame::DropDb { name }, &mut bytes);
        }
        if !bytes.is_empty() {
            self.emit(Output::SendDownstream { conn, bytes });
        }
    }

    /// The primary's drop-db frame: it does not know database `name` at all (it never had
    /// it; a database it dropped reaches us as a drop file instead). Like LiteFS's replicas,
    /// this one keeps the database: dropping it here would invent a position no primary ever
    /// committed (the simulator's history check caught exactly that), and if the primary
    /// creates the name later, the replica's copy is replaced by a snapshot anyway (its
    /// position does not continue the primary's history).
    pub(crate) fn on_drop_frame(&mut self, _now: Millis, _name: &DbName) {}
}
