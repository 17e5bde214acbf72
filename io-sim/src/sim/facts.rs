//! The simulator's configuration, the facts it reports to the invariant checker, and its
//! run statistics.

use replite_core::node::{Faults, SyncPolicy};
use replite_core::stream::DbName;
use replite_core::{Epoch, Pos, TxId};

/// Fault probabilities and rates.
#[derive(Debug, Clone)]
pub struct FaultMix {
    /// Per-message probability a stream message is lost and the connection reset.
    pub msg_drop: f64,
    /// Per-message probability a stream message vanishes without a reset (a middlebox bug).
    pub msg_vanish: f64,
    /// Per-message probability a stream message is delivered twice.
    pub msg_dup: f64,
    /// Per-message probability a stream message overtakes earlier ones.
    pub msg_reorder: f64,
    /// Per-response probability a lease answer is delayed by seconds (reordering answers).
    pub lease_slow: f64,
    /// Per-disk-op probability of EIO.
    pub disk_eio: f64,
    /// Per-disk-op probability of ENOSPC.
    pub disk_enospc: f64,
    /// Mean milliseconds between fault events (crash, restart, partition, heal, handoff).
    pub fault_every_ms: u64,
    /// Per-persist probability the node crashes while the write is in flight.
    pub crash_in_write: f64,
    /// Per-flush probability the node crashes while the flush is in flight (files written
    /// without an fsync are then at the crash's mercy).
    pub crash_in_flush: f64,
}

impl Default for FaultMix {
    fn default() -> FaultMix {
        FaultMix {
            msg_drop: 0.002,
            msg_vanish: 0.0005,
            msg_dup: 0.002,
            msg_reorder: 0.002,
            lease_slow: 0.01,
            disk_eio: 0.003,
            disk_enospc: 0.002,
            fault_every_ms: 1500,
            crash_in_write: 0.002,
            crash_in_flush: 0.01,
        }
    }
}

/// A simulation's shape.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// How many of them (the first ones) are candidates.
    pub candidates: usize,
    /// Synchronous replication.
    pub sync: Option<SyncPolicy>,
    /// Asynchronous loss window.
    pub async_window_ms: Option<u64>,
    /// Faults.
    pub faults: FaultMix,
    /// Deliberate bugs in every node.
    pub node_faults: Faults,
    /// Mean milliseconds between client commits.
    pub commit_every_ms: u64,
    /// Faults stop at this true time; afterwards the cluster must converge.
    pub faults_until_ms: u64,
    /// Clients stop committing at this true time.
    pub clients_until_ms: u64,
    /// The last node starts this late, with an empty disk (a new node joining), if set.
    pub late_join_ms: Option<u64>,
    /// Non-candidate replicas negotiate no replite extensions (no epoch frames, no
    /// acknowledgements), as when a replica or primary is plain LiteFS.
    pub plain_non_candidates: bool,
    /// How many databases the cluster replicates.
    pub databases: usize,
    /// Replicas take halt locks on their primary and write through them (LiteFS's
    /// `litefs run -with-halt-lock-on`; decision 0022).
    pub halt_locks: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            nodes: 3,
            candidates: 3,
            sync: None,
            async_window_ms: None,
            faults: FaultMix::default(),
            node_faults: Faults::default(),
            commit_every_ms: 40,
            faults_until_ms: 40_000,
            clients_until_ms: 50_000,
            late_join_ms: None,
            plain_non_candidates: false,
            databases: 2,
            halt_locks: false,
        }
    }
}

/// Counts of what happened in a run, to show the fault mix is real.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Node crashes (including clean shutdowns).
    pub crashes: u64,
    /// Partitions made (one-way, two-way, from the lease store).
    pub partitions: u64,
    /// Operator handoffs requested.
    pub handoffs: u64,
    /// Snapshots sent to replicas.
    pub snapshots: u64,
    /// Incremental LTX files sent to replicas.
    pub ltx_sent: u64,
    /// Replica resyncs (stream refused or failed).
    pub resyncs: u64,
    /// Injected EIO/ENOSPC failures.
    pub disk_errors: u64,
    /// In-flight writes torn by a crash.
    pub torn_writes: u64,
    /// Stream messages lost (connection reset), duplicated or reordered.
    pub net_faults: u64,
    /// Lease answers delayed by seconds.
    pub slow_lease_answers: u64,
    /// Commits refused.
    pub refused: u64,
    /// Nodes that joined late with an empty disk.
    pub late_joins: u64,
    /// Replicas a primary cut off for not acknowledging.
    pub cut_offs: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Shrinking commits issued (some are refused like any other).
    pub shrinks: u64,
    /// LTX files a replica spooled (over its inline limit) rather than held in memory.
    pub spooled: u64,
    /// Spools discarded before they were persisted (stream failed, file refused).
    pub spools_discarded: u64,
    /// Unflushed LTX files a crash lost or tore.
    pub volatile_files_lost: u64,
    /// Application fsyncs answered as durable.
    pub fsyncs_answered: u64,
    /// Times a replica's stream was held because its Node had too many files waiting.
    pub stream_pauses: u64,
    /// Halt locks a replica was granted writes under.
    pub halt_locks: u64,
    /// Transactions a replica sent its primary under a halt lock.
    pub halt_commits_sent: u64,
    /// Of those, committed by the primary.
    pub halt_commits_accepted: u64,
    /// Transactions that came back to the replica that sent them (stored, not applied).
    pub halt_echoes: u64,
}

/// How a node's position changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An incremental LTX file (primary commit or replica apply) or a recovery replay.
    Incremental,
    /// A snapshot.
    Snapshot,
    /// Start-up recovery.
    Recovery,
}

/// Things the invariant checker needs to know, reported as they happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A primary created a transaction.
    Committed {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
        /// Epoch it believed it wrote under.
        epoch: Epoch,
        /// Position before.
        pre: Pos,
        /// Position after.
        post: Pos,
        /// True time.
        at: u64,
    },
    /// A commit was acknowledged to the application.
    Acked {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
        /// Position.
        pos: Pos,
        /// True time.
        at: u64,
    },
    /// A synchronous commit was acknowledged without all acknowledgements.
    Degraded {
        /// Database.
        db: DbName,
        /// Transaction.
        txid: TxId,
    },
    /// A node became primary.
    BecamePrimary {
        /// Node index.
        node: usize,
        /// Epoch.
        epoch: Epoch,
        /// Its positions.
        positions: Vec<(DbName, Pos)>,
        /// True time.
        at: u64,
    },
    /// A primary completed a handoff: its target had acknowledged these positions.
    HandedOff {
        /// Node index.
        node: usize,
        /// The target's node index.
        to: usize,
        /// The handed term.
        epoch: Epoch,
        /// Its positions.
        positions: Vec<(DbName, Pos)>,
        /// True time at which the handed term expires in the store unless taken over (the old
        /// primary never renews it again).
        expires_by: u64,
    },
    /// A disk apply did not land where the LTX file said: the Node asked to apply a file
    /// that does not fit the database (a correct Node never does).
    ApplyMismatch {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
    },
    /// A node told the application that everything up to `pos` is durable (a
    /// [`replite_core::node::Durability::Requested`] commit acknowledged, or an fsync
    /// answered): a crash of that node must not lose it.
    Promised {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
        /// Position.
        pos: Pos,
    },
    /// A replica started writing a snapshot from its primary: once it is durable it replaces
    /// the node's history, whether or not the apply that follows survives a crash.
    SnapshotWritten {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
        /// The snapshot's position.
        pos: Pos,
    },
    /// An injected disk error failed a recovery replay: the node drops its history and waits
    /// for a snapshot (decision 0004), so what it promised is up to the rest of the cluster.
    ReplayFailed {
        /// Node index.
        node: usize,
    },
    /// A node crashed after its application wrote pages under a halt lock into `db`'s file
    /// since it started: the file may hold a transaction its history lacks (written before
    /// the commit point, or committed and not back yet), in which case recovery finds it
    /// matching no history and starts over from a snapshot, so what it promised is up to
    /// the rest of the cluster.
    HaltPagesAtCrash {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
    },
    /// A node (re)started; [`Fact::Recovered`] follows once it has replayed its history.
    Started {
        /// Node index.
        node: usize,
    },
    /// A node (re)started and finished replaying its history: its positions.
    Recovered {
        /// Node index.
        node: usize,
        /// Its positions.
        positions: Vec<(DbName, Pos)>,
    },
    /// A node's position changed.
    Moved {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
        /// Old position.
        from: Pos,
        /// New position.
        to: Pos,
        /// How.
        via: Via,
        /// For replica applies: the epoch of the primary that sent the data.
        source_epoch: Option<Epoch>,
    },
}
