//! Per-database state. A node replicates any number of databases over one lease and one
//! stream per peer; everything that follows a database's own history lives here.

use std::collections::{BTreeMap, VecDeque};

use crate::node::history::History;
use crate::node::input::{LtxFileInfo, OpId, SyncId};
use crate::node::primary::InflightCommit;
use crate::node::replica::{Inbound, Persist};
use crate::node::time::Millis;
use crate::types::{PageSize, Pos, TxId};

/// One database's replication state.
#[derive(Debug, Default)]
pub(crate) struct Db {
    /// Durable and applied position.
    pub(crate) pos: Pos,
    /// Page size, once known (first commit, first file applied, or recovery).
    pub(crate) page_size: Option<PageSize>,
    /// Retained LTX files.
    pub(crate) history: History,
    /// The primary's commit in flight.
    pub(crate) commit: Option<InflightCommit>,
    /// Commit times of transactions some candidate still lacks.
    pub(crate) commit_times: BTreeMap<TxId, Millis>,
    /// Received LTX files waiting for the one being persisted, in stream order.
    pub(crate) inbox: VecDeque<Inbound>,
    /// The file being persisted or replayed.
    pub(crate) persist: Option<Persist>,
    /// Files recovery still has to replay.
    pub(crate) replay: VecDeque<LtxFileInfo>,
    /// Recovery could not establish a trustworthy position: wait for a snapshot.
    pub(crate) needs_snapshot: bool,
    /// The primary's newest TXID for this database, from its HWM frames (replicas).
    pub(crate) primary_txid: TxId,
    /// Header timestamp (primary wall clock, ms) of the last file applied.
    pub(crate) applied_ts_ms: i64,
    /// Header timestamp of the file being persisted.
    pub(crate) pending_ts_ms: i64,
    /// Highest TXID the backup process has stored.
    pub(crate) backed_up: TxId,
    /// Every LTX file of the retained history up to this TXID is durable; the files after it
    /// (up to `pos`) were written without an fsync and wait for a flush.
    pub(crate) durable_txid: TxId,
    /// The flush in flight, and the TXID it covers.
    pub(crate) flushing: Option<(OpId, TxId)>,
    /// A snapshot moved this replica back from this TXID (its history had diverged, or the
    /// primary replays a history that starts at TXID 1): until it is back there it holds
    /// less than it did, so it writes what it receives durably (a crash must not throw it
    /// further back) and does not take the lease (it may lack acknowledged transactions).
    pub(crate) rejoin_txid: TxId,
    /// The application fsyncs after its commits (WAL with `synchronous=FULL`): seen an fsync
    /// since the commit before the last one. Then a deferred commit's flush starts at once,
    /// so it overlaps SQLite's own fsync of the WAL instead of following it.
    pub(crate) syncs_follow_commits: bool,
    /// An fsync arrived since the last commit.
    pub(crate) synced_since_commit: bool,
    /// Application fsyncs waiting for the files up to a TXID to be durable.
    pub(crate) sync_waiters: Vec<(SyncId, TxId)>,
    /// A halt lock this replica holds on its primary for this database (`halt`).
    pub(crate) halt: Option<super::halt::HaltGrant>,
    /// Transactions this replica sent its primary under a halt lock that the stream has not
    /// brought back yet. Kept past the lock's release: the last ones may come back after it.
    pub(crate) sent_under_halt: BTreeMap<TxId, super::halt::SentTx>,
}

impl Db {
    /// Whether start-up replay is still running.
    pub(crate) fn replaying(&self) -> bool {
        !self.replay.is_empty() || self.persist.is_some_and(|p| p.replay)
    }

    /// Whether files written without an fsync wait for a flush.
    pub(crate) fn unflushed(&self) -> bool {
        self.durable_txid < self.pos.txid
    }

    /// Whether a snapshot moved this replica back and it has not caught up yet.
    pub(crate) fn rejoining(&self) -> bool {
        self.durable_txid < self.rejoin_txid
    }

    /// Whether a disk operation or commit is in flight.
    pub(crate) fn busy(&self) -> bool {
        self.commit.is_some() || self.persist.is_some()
    }
}
