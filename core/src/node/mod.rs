//! The sans-IO Node: one replite node's whole decision logic for one database. It is driven
//! like quinn-proto's `Connection`: feed it [`Input`]s with the caller's `now`
//! ([`Node::handle`]), carry out the [`Output`]s it queues ([`Node::poll_output`]), and call
//! `handle(now, Input::Timeout)` when [`Node::poll_timeout`]'s deadline passes.
//!
//! One node replicates any number of databases: one lease and one stream per peer carry them
//! all, and each database keeps its own position, history and in-flight work (`db`).
//!
//! Files by job: `lease` (acquire, renew, safe-write deadline, step-down, handoff), `primary`
//! (commit path, serving replicas, acknowledgements, retention), `replica` (following a
//! primary, applying LTX files, backoff), `recovery` (start from durable state), `drop`
//! (deleting a database as a transaction of its own).

mod config;
mod db;
mod drop;
mod durability;
mod halt;
mod history;
mod input;
mod lease;
mod output;
mod primary;
mod recovery;
mod replica;
mod rng;
mod time;
mod timer;

use std::collections::{BTreeMap, VecDeque};

pub use config::{
    Config, ConfigError, DEFAULT_FLUSH_MS, DEFAULT_INBOX_PAUSE_FILES, DEFAULT_LTX_INLINE_MAX_BYTES, Faults,
    MAX_INBOX_FILES, SyncConfig, SyncPolicy,
};
pub use history::{History, LtxEntry};
pub use input::{
    CommitId, DbRecovery, DownstreamId, Durability, Input, IoFailure, LtxFileInfo, OpId, PageChange, Recovery,
    RemoteCommit, SpoolId, SyncId, UpstreamId,
};
pub use output::{Event, HaltRefusal, LtxOrigin, Output, RefuseReason};
pub use primary::{Transaction, encode_transaction};
pub use rng::SplitMix64;
pub use time::Millis;
pub use timer::{TimerKind, Timers};

use crate::stream::DbName;
use crate::types::{Epoch, NodeId, Pos};
use db::Db;
use lease::LeaseState;
use primary::Downstream;
use replica::{Persist, Upstream};

/// How far a replica trails its primary on one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// Transactions behind.
    pub txids: u64,
    /// Milliseconds behind, by the primary's clock.
    pub ms: u64,
}

/// What a node is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not started, or shut down.
    Stopped,
    /// Replaying its own LTX history after a start.
    Recovering,
    /// Holds the lease.
    Primary {
        /// Lease epoch.
        epoch: Epoch,
    },
    /// Follows a primary.
    Replica {
        /// The primary.
        primary: NodeId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// Knows no primary (a candidate tries to become one; a non-candidate waits).
    Waiting,
}

/// The replite node state machine. See the module documentation.
#[derive(Debug)]
pub struct Node {
    cfg: Config,
    rng: SplitMix64,
    timers: Timers,
    out: VecDeque<Output>,
    next_id: u64,
    started: bool,
    stopped: bool,
    dbs: BTreeMap<DbName, Db>,
    /// Which database each disk request belongs to.
    ops: BTreeMap<OpId, DbName>,
    /// Highest lease epoch this node has seen anywhere. Never decreases.
    max_epoch: Epoch,
    lease: LeaseState,
    /// A handoff frame told us to take over the lease; until its deadline a request that did
    /// not get it is repeated at once rather than at the next poll.
    takeover: Option<lease::Takeover>,
    /// The lease store's name for the lease we hold (see [`Input::LeaseAcquired`]).
    lease_id: String,
    /// After handing the lease off, this node does not try to take it back before this time.
    acquire_not_before: Millis,
    /// A handoff waiting for its target to catch up (writes are paused meanwhile).
    handoff: Option<lease::PendingHandoff>,
    known_primary: Option<(NodeId, Epoch)>,
    lease_ops: BTreeMap<OpId, lease::LeaseOp>,
    /// When the acquire request of the lease we hold was sent.
    lease_acquire_sent_at: Millis,
    downstream: BTreeMap<DownstreamId, Downstream>,
    /// Latest durable position each replica acknowledged on our lineage, per database.
    acked: BTreeMap<(NodeId, DbName), Pos>,
    /// Per replica and database: live-database copies sent in a row without the replica
    /// coming back at or past the last one.
    snapshot_tries: BTreeMap<(NodeId, DbName), primary::CopyTries>,
    upstream: Option<Upstream>,
    /// The primary's wall clock from its last heartbeat (ms since the Unix epoch).
    primary_clock_ms: Option<i64>,
    backoff_attempt: u32,
    /// Files from the primary this replica failed to store or apply in a row (a full disk,
    /// say): from the second, its reconnects wait longer and longer, so that it does not
    /// fetch the same large file again every few hundred milliseconds.
    store_failures: u32,
    /// The replica's applied TXIDs (summed over databases) when its idle timer last found the
    /// stream paused: a pause is excused only while applies progress.
    paused_progress: Option<u64>,
    /// Commits sent to the primary under a halt lock, waiting for its answer (`halt`).
    halt_commits: BTreeMap<CommitId, halt::SentCommit>,
}

impl Node {
    /// A node that has not started; feed it [`Input::Start`] first.
    pub fn new(cfg: Config) -> Result<Node, ConfigError> {
        cfg.validate()?;
        Ok(Node {
            rng: SplitMix64::new(cfg.seed),
            cfg,
            timers: Timers::default(),
            out: VecDeque::new(),
            next_id: 1,
            started: false,
            stopped: false,
            dbs: BTreeMap::new(),
            ops: BTreeMap::new(),
            max_epoch: Epoch(0),
            lease: LeaseState::None,
            handoff: None,
            acquire_not_before: Millis(0),
            takeover: None,
            lease_id: String::new(),
            known_primary: None,
            lease_ops: BTreeMap::new(),
            lease_acquire_sent_at: Millis(0),
            downstream: BTreeMap::new(),
            acked: BTreeMap::new(),
            snapshot_tries: BTreeMap::new(),
            upstream: None,
            primary_clock_ms: None,
            backoff_attempt: 0,
            store_failures: 0,
            paused_progress: None,
            halt_commits: BTreeMap::new(),
        })
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Millis, input: Input) {
        if self.stopped {
            return;
        }
        let epoch_before = self.max_epoch;
        let starting = matches!(input, Input::Start(_));
        match input {
            Input::Start(recovery) => self.on_start(now, recovery),
            _ if !self.started => {}
            Input::Timeout => {
                for kind in self.timers.expire(now) {
                    self.on_timer(now, kind);
                }
            }
            Input::LeaseAcquired { op, epoch, lease_id } => self.on_lease_acquired(now, op, epoch, lease_id),
            Input::LeaseHeld { op, holder, epoch } => {
                self.lease_ops.remove(&op);
                self.on_observation(now, Some((holder, epoch)));
                self.retry_takeover(now, Some((holder, epoch)));
            }
            Input::LeaseRenewed { op } => self.on_lease_renewed(now, op),
            Input::LeaseLost { op } => self.on_lease_lost(now, op),
            Input::LeaseRequestFailed { op } => self.on_lease_failed(now, op),
            Input::LeaseObserved { op, holder } => {
                let sent_at = self.lease_ops.remove(&op).map(|r| r.sent_at);
                // An answer to a question asked before we took the lease says nothing about
                // our lease: without this a slow "no holder" would depose a healthy primary.
                let stale = matches!(self.lease, LeaseState::Held { .. })
                    && sent_at.is_none_or(|s| s < self.lease_acquire_sent_at);
                if !stale {
                    self.on_observation(now, holder);
                    self.retry_takeover(now, holder);
                }
            }
            Input::Commit { commit, db, page_size, pages, commit_pages, removed, durability, remote } => {
                let tx = primary::CommitTx { page_size, pages, commit_pages, removed, durability, remote };
                self.on_commit(now, commit, db, tx);
            }
            Input::DropDb { commit, db } => self.on_drop(now, commit, db),
            Input::HoldHalt { db, lock_id, pos } => self.on_hold_halt(db, lock_id, pos),
            Input::ReleaseHalt { db } => self.on_release_halt(&db),
            Input::SentUnderHalt { commit, accepted } => self.on_sent_under_halt(now, commit, accepted),
            Input::Sync { sync, db } => self.on_sync(now, sync, db),
            Input::LtxFlushed { op, result } => self.on_ltx_flushed(now, op, result),
            Input::LtxDone { op, result } => self.on_ltx_done(now, op, result),
            Input::SpoolDone { spool, result } => self.on_spool_done(now, spool, result),
            Input::UpstreamOpened { conn, ext } => self.on_upstream_opened(now, conn, ext),
            Input::UpstreamData { conn, bytes } => self.on_upstream_data(now, conn, &bytes),
            Input::UpstreamClosed { conn } => self.on_upstream_closed(now, conn),
            Input::DownstreamOpened { conn, peer, ext, body, only } => {
                self.on_downstream_opened(now, conn, peer, ext, &body, only);
            }
            Input::DownstreamData { conn, bytes } => self.on_downstream_data(now, conn, &bytes),
            Input::DownstreamClosed { conn } => {
                self.downstream.remove(&conn);
                if self.handoff.is_some_and(|h| h.conn == conn) {
                    self.abandon_handoff("target disconnected");
                }
            }
            Input::BackedUp { db, txid } => {
                let db = self.dbs.entry(db).or_default();
                db.backed_up = db.backed_up.max(txid);
            }
            Input::Handoff { to } => self.on_handoff(now, to),
            Input::Promote => self.on_promote(now),
            Input::Shutdown => self.on_shutdown(now),
        }
        debug_assert!(self.max_epoch >= epoch_before, "epoch went back");
        if self.max_epoch > epoch_before && !starting {
            self.emit(Output::PersistEpoch { epoch: self.max_epoch });
        }
        #[cfg(debug_assertions)]
        for (name, db) in &self.dbs {
            debug_assert!(
                db.history.last().is_none_or(|f| f.post_pos() == db.pos) || db.replaying(),
                "{name}: position {} is not the end of the retained history",
                db.pos
            );
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest timer deadline, with what it is for.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Millis, TimerKind)> {
        if self.stopped { None } else { self.timers.next() }
    }

    /// A database's position (what is durable and applied); zero for an unknown database.
    #[must_use]
    pub fn pos(&self, db: &DbName) -> Pos {
        self.dbs.get(db).map_or(Pos::ZERO, |d| d.pos)
    }

    /// Every database this node knows, with its position.
    pub fn positions(&self) -> impl Iterator<Item = (&DbName, Pos)> {
        self.dbs.iter().map(|(name, db)| (name, db.pos))
    }

    /// How far this replica trails its primary on `db`: transactions behind the primary's
    /// newest (from HWM frames), and milliseconds between the last applied file's timestamp
    /// and the primary's last heartbeat (zero when caught up). `None` on a primary or for an
    /// unknown database.
    #[must_use]
    pub fn lag(&self, db: &DbName) -> Option<Lag> {
        if matches!(self.role(), Role::Primary { .. }) {
            return None;
        }
        let d = self.dbs.get(db)?;
        let txids = d.primary_txid.0.saturating_sub(d.pos.txid.0);
        let ms = match (txids, self.primary_clock_ms) {
            (0, _) | (_, None) => 0,
            (_, Some(clock)) => u64::try_from(clock.saturating_sub(d.applied_ts_ms)).unwrap_or(0),
        };
        Some(Lag { txids, ms })
    }

    /// Whether a handoff is waiting for its target to catch up (writes are paused: a new
    /// transaction should wait for the outcome rather than fail at once).
    #[must_use]
    pub fn handing_off(&self) -> bool {
        self.handoff.is_some()
    }

    /// Whether the driver should hand this node more stream bytes now. False while some
    /// database has [`Config::inbox_pause_files`] received files waiting to be applied: the
    /// driver then stops reading the stream, and the transport's flow control holds the
    /// primary back, instead of the replica buffering until it must resync.
    ///
    /// A file still arriving (spooled as its bytes come) does not count: it needs the very
    /// bytes a pause would hold back.
    #[must_use]
    pub fn accepts_upstream_data(&self) -> bool {
        let arriving = self.upstream.as_ref().and_then(replica::Upstream::spooling);
        self.dbs.values().all(|db| {
            let waiting = db.inbox.iter().filter(|f| !f.is_spool(arriving)).count();
            waiting < self.cfg.inbox_pause_files
        })
    }

    /// Whether this replica's stream to its primary has delivered everything the replica
    /// lacked when it connected (the primary's ready frame arrived; LiteFS waits for the same).
    #[must_use]
    pub fn upstream_ready(&self) -> bool {
        self.upstream.as_ref().is_some_and(replica::Upstream::is_ready)
    }

    /// The replicas connected to this primary, each with the position it last acknowledged
    /// per database (replicas that did not negotiate acknowledgements report their position
    /// only when they connect).
    pub fn replicas(&self) -> impl Iterator<Item = (NodeId, &DbName, Option<Pos>)> {
        let peers: std::collections::BTreeSet<NodeId> = self.downstream.values().map(|d| d.peer).collect();
        self.dbs.keys().flat_map(move |name| {
            let acked = &self.acked;
            peers.clone().into_iter().map(move |peer| (peer, name, acked.get(&(peer, name.clone())).copied()))
        })
    }

    /// The highest epoch this node has seen.
    #[must_use]
    pub fn max_epoch(&self) -> Epoch {
        self.max_epoch
    }

    /// A database's retained LTX history index.
    #[must_use]
    pub fn history(&self, db: &DbName) -> Option<&History> {
        self.dbs.get(db).map(|d| &d.history)
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// The current role.
    #[must_use]
    pub fn role(&self) -> Role {
        if self.stopped || !self.started {
            return Role::Stopped;
        }
        if self.dbs.values().any(Db::replaying) {
            return Role::Recovering;
        }
        if let LeaseState::Held { epoch, .. } = self.lease {
            return Role::Primary { epoch };
        }
        match self.known_primary {
            Some((primary, epoch)) if primary != self.cfg.node_id => Role::Replica { primary, epoch },
            _ => Role::Waiting,
        }
    }

    /// The epoch under which this node would accept a commit at `now`, if any. This is the
    /// same check the commit path makes.
    #[must_use]
    pub fn accepting_writes(&self, now: Millis) -> Option<Epoch> {
        self.write_grant(now).map(|g| g.epoch())
    }

    /// Until when (exclusive) writes stay accepted if nothing but time changes: the end of the
    /// lease's safe period, or `None` if writes are not accepted at `now`. A driver can answer
    /// "may this node write?" from it without a step; any input may shorten it.
    #[must_use]
    pub fn accepting_writes_until(&self, now: Millis) -> Option<Millis> {
        self.write_grant(now)?;
        self.write_grant_deadline()
    }

    fn next_op(&mut self) -> OpId {
        self.next_id += 1;
        OpId(self.next_id)
    }

    fn emit(&mut self, output: Output) {
        self.out.push_back(output);
    }

    fn event(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    fn on_timer(&mut self, now: Millis, kind: TimerKind) {
        match kind {
            TimerKind::LeasePoll => self.on_lease_poll(now),
            TimerKind::LeaseRenew => self.on_renew_timer(now),
            TimerKind::WriteDeadline => {}
            TimerKind::LeaseExpiry => self.on_lease_expiry(now),
            TimerKind::Heartbeat => self.on_heartbeat_timer(now),
            TimerKind::UpstreamIdle => self.on_upstream_idle(now),
            TimerKind::Reconnect => self.maybe_connect(now),
            TimerKind::SyncTimeout => self.on_sync_timeout(now),
            TimerKind::Retention => self.on_retention_timer(now),
            TimerKind::Handoff => self.abandon_handoff("target did not catch up in time"),
            TimerKind::Flush => self.on_flush_timer(now),
            TimerKind::CopyHoldOff => self.on_copy_hold_off_timer(now),
        }
    }
}

#[cfg(test)]
mod spool_tests;
#[cfg(test)]
mod tests;
