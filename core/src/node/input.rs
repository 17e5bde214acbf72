//! Inputs: things that happened. Each carries plain data; results of requested I/O carry the
//! id of the [`crate::node::Output`] that asked for them.

use std::collections::{BTreeMap, BTreeSet};

use crate::ltx::VerifiedLtx;
use crate::stream::{DbName, Extensions};
use crate::types::{Checksum, Epoch, NodeId, PageSize, Pgno, Pos, TxId};

/// Id of a request whose result comes back as an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// Id of a commit the application is waiting on (chosen by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitId(pub u64);

/// Id of an application's fsync waiting for durability (chosen by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncId(pub u64);

/// Whether the application asked for a commit to be durable before it is acknowledged
/// (DESIGN invariant 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// SQLite fsynced during the transaction (rollback journal with `synchronous` above OFF):
    /// the commit is acknowledged only once its LTX file, and every earlier one, is durable.
    Requested,
    /// SQLite has not asked (WAL, whose fsync comes after the commit, or `synchronous=OFF`):
    /// the LTX file is written without an fsync and the commit acknowledged at once; it is
    /// made durable before the application's next [`Input::Sync`] is answered and within
    /// [`crate::node::Config::flush_ms`] in any case.
    Deferred,
}

/// A stream this node opened to its primary (chosen by the Node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpstreamId(pub u64);

/// A stream a replica opened to this node (chosen by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DownstreamId(pub u64);

/// An LTX file being spooled to disk as it arrives (chosen by the Node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolId(pub u64);

/// One changed page of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageChange {
    /// The page.
    pub pgno: Pgno,
    /// Checksum of the page before the transaction; `None` if the page did not exist.
    pub old: Option<Checksum>,
    /// The page's new contents (exactly one page).
    pub data: Vec<u8>,
}

/// A transaction a replica made under a halt lock (LiteFS's `/tx`), committed by the primary
/// as its own: only if the database is still where the replica made it and the pages lead
/// where the replica's file says, so that the replica ends at the primary's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteCommit {
    /// The replica, if its file names it: its id goes in the LTX header, by which the replica
    /// knows the file when the stream brings it back.
    pub origin: Option<NodeId>,
    /// The position it was made on.
    pub base: Pos,
    /// The post-apply checksum its file states.
    pub post: Checksum,
}

/// What is durable on disk at start, as the caller found it: one entry per database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Each database's files.
    pub dbs: BTreeMap<DbName, DbRecovery>,
    /// The highest lease epoch persisted by [`crate::node::Output::PersistEpoch`] (zero if none).
    pub max_epoch: Epoch,
}

/// What is durable for one database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbRecovery {
    /// Every LTX file that verified, in any order.
    pub ltx: Vec<LtxFileInfo>,
    /// LTX files that failed verification (torn writes): removed by rule.
    pub invalid_ltx: Vec<(TxId, TxId)>,
    /// The database file's checksum (`Checksum::ZERO` if the file is empty or missing).
    pub db_checksum: Checksum,
    /// The last [`crate::node::Output::PersistRejoin`] of this database (zero if none).
    pub rejoin_txid: TxId,
}

/// A verified LTX file found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LtxFileInfo {
    /// First transaction.
    pub min: TxId,
    /// Last transaction.
    pub max: TxId,
    /// Pre-apply checksum (zero for a snapshot).
    pub pre: Checksum,
    /// Post-apply checksum.
    pub post: Checksum,
    /// Size in bytes.
    pub size: u64,
}

/// Why an I/O request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFailure {
    /// EIO or similar.
    Io,
    /// ENOSPC.
    NoSpace,
    /// The applied result was not what the LTX file promised.
    Mismatch,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The process started; what its disk holds.
    Start(Recovery),
    /// A timer may have expired (`poll_timeout` said so); the Node checks them all.
    Timeout,
    /// An acquire request succeeded: the lease is ours under `epoch`.
    LeaseAcquired {
        /// The request.
        op: OpId,
        /// The lease's epoch.
        epoch: Epoch,
        /// The lease store's own name for the lease (a Consul session id, an etcd lease id),
        /// sent as is in a handoff frame: a LiteFS target takes over the session it names.
        lease_id: String,
    },
    /// An acquire request found the lease held by someone else.
    LeaseHeld {
        /// The request.
        op: OpId,
        /// The holder.
        holder: NodeId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// A renew request succeeded: the lease runs for another TTL from when it was sent.
    LeaseRenewed {
        /// The request.
        op: OpId,
    },
    /// A renew request found the lease no longer ours.
    LeaseLost {
        /// The request.
        op: OpId,
    },
    /// A lease request got no answer (timeout, store unreachable). Outcome unknown.
    LeaseRequestFailed {
        /// The request.
        op: OpId,
    },
    /// An observe request's answer.
    LeaseObserved {
        /// The request.
        op: OpId,
        /// The holder and epoch, if the lease is held.
        holder: Option<(NodeId, Epoch)>,
    },
    /// The application reached a commit point (primary only).
    Commit {
        /// Its id, echoed in the answer.
        commit: CommitId,
        /// The database.
        db: DbName,
        /// Its page size (must match earlier transactions).
        page_size: PageSize,
        /// Changed pages, any order.
        pages: Vec<PageChange>,
        /// Database size in pages after the commit.
        commit_pages: u32,
        /// Pages beyond `commit_pages` that the transaction removed, with their old checksums.
        removed: Vec<(Pgno, Checksum)>,
        /// Whether the application asked for durability before the acknowledgement.
        durability: Durability,
        /// Set when a replica made the transaction under a halt lock (LiteFS's `/tx`).
        remote: Option<RemoteCommit>,
    },
    /// The application fsynced `db` (SQLite's WAL fsync): answer with
    /// [`crate::node::Output::SyncDone`] once every commit handed in so far is durable.
    Sync {
        /// Its id, echoed in the answer.
        sync: SyncId,
        /// The database.
        db: DbName,
    },
    /// A flush request finished.
    LtxFlushed {
        /// The request.
        op: OpId,
        /// Whether every file it covered is now durable.
        result: Result<(), IoFailure>,
    },
    /// The application deleted database `db` on this node (primary only). Answered like a
    /// commit, with `AckCommit` (the drop is durable; only then may the file go) or
    /// `RefuseCommit`. The drop is a transaction of its own: an LTX file with commit size zero.
    DropDb {
        /// Its id, echoed in the answer.
        commit: CommitId,
        /// The database.
        db: DbName,
    },
    /// This replica took a halt lock on `db` at its primary (LiteFS's `/halt`, by the caller)
    /// whose position is `pos`: from now on its applications' commits on `db` go to the
    /// primary ([`crate::node::Output::SendUnderHalt`]) instead of being refused. Answered with
    /// [`crate::node::Output::HaltHeld`]; refused unless this node is a replica at `pos`.
    HoldHalt {
        /// The database.
        db: DbName,
        /// The lock's id at the primary.
        lock_id: i64,
        /// The primary's position when it granted the lock.
        pos: Pos,
    },
    /// The halt lock on `db` is gone (let go, expired, or this node's role changed).
    ReleaseHalt {
        /// The database.
        db: DbName,
    },
    /// The primary's answer to [`crate::node::Output::SendUnderHalt`]: whether it committed
    /// the transaction.
    SentUnderHalt {
        /// The commit it was sent for.
        commit: CommitId,
        /// Committed by the primary (durable there, and streamed back here).
        accepted: bool,
    },
    /// A persist or replay request finished.
    LtxDone {
        /// The request.
        op: OpId,
        /// The database position after it, or why it failed.
        result: Result<Pos, IoFailure>,
    },
    /// A spool ended by [`crate::node::Output::SpoolEnd`] was verified in full (with
    /// [`crate::ltx::verify`]) and made durable, or why not.
    SpoolDone {
        /// The spool.
        spool: SpoolId,
        /// What verification proved, or what went wrong (bad LTX, disk error).
        result: Result<VerifiedLtx, String>,
    },
    /// Our stream to the primary is open.
    UpstreamOpened {
        /// The stream.
        conn: UpstreamId,
        /// Extensions the primary agreed to.
        ext: Extensions,
    },
    /// Bytes from the primary.
    UpstreamData {
        /// The stream.
        conn: UpstreamId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Our stream to the primary failed or closed (or never opened).
    UpstreamClosed {
        /// The stream.
        conn: UpstreamId,
    },
    /// A replica opened a stream to us.
    DownstreamOpened {
        /// The stream.
        conn: DownstreamId,
        /// The replica's node id.
        peer: NodeId,
        /// Extensions it offered.
        ext: Extensions,
        /// The request body (position map).
        body: Vec<u8>,
        /// The databases it asked for (LiteFS's `/stream?filter=`); `None`: all of them.
        only: Option<BTreeSet<DbName>>,
    },
    /// Bytes from a replica (acknowledgements).
    DownstreamData {
        /// The stream.
        conn: DownstreamId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A replica's stream closed.
    DownstreamClosed {
        /// The stream.
        conn: DownstreamId,
    },
    /// The backup process has stored every LTX file of `db` up to `txid`.
    BackedUp {
        /// The database.
        db: DbName,
        /// Highest TXID stored.
        txid: TxId,
    },
    /// Operator: hand the lease to this replica.
    Handoff {
        /// The target.
        to: NodeId,
    },
    /// Operator: make this node primary (asks the current primary to hand off; takes the
    /// lease if it is free).
    Promote,
    /// Clean shutdown: release the lease, close streams.
    Shutdown,
}
