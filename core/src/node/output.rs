//! Outputs: things to do. Ordering contract: the caller carries outputs out in the order
//! `poll_output` returns them, per stream; a `PersistLtx` with `durable` set must be durable
//! (written and fsynced) before its `LtxDone` input is fed back, one without it only written
//! (readable, not necessarily durable) until a `FlushLtx` covering it reports `LtxFlushed`;
//! `AckCommit` of a [`crate::node::Durability::Requested`] commit and every `SyncDone` are
//! only ever emitted after the LTX files they cover were reported durable (and, in
//! synchronous mode, acknowledged by every other candidate).

use crate::node::input::{CommitId, DownstreamId, IoFailure, OpId, SpoolId, SyncId, UpstreamId};
use crate::stream::{DbName, Extensions};
use crate::types::{Checksum, Epoch, NodeId, Pos, TxId};

/// Why a commit was refused; the application sees a read-only error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// This node does not hold the lease safely.
    NotPrimary,
    /// Another commit is in flight.
    Busy,
    /// The asynchronous loss window is exceeded: a candidate lags too far.
    AsyncWindow,
    /// The pages do not form a valid transaction.
    Invalid,
    /// The LTX file could not be made durable.
    Disk,
    /// The LTX file could not be written: the disk is full.
    NoSpace,
    /// A replica's transaction (under a halt lock) was made on a position the database is no
    /// longer at.
    Moved,
    /// The primary did not commit what this replica sent it under a halt lock.
    PrimaryRefused,
}

/// Why a replica cannot write under a halt lock it took ([`Output::HaltHeld`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltRefusal {
    /// This node does not follow a primary (it is the primary, which writes without a lock,
    /// or it is recovering or waiting for one).
    NotAReplica,
    /// This replica is not at the lock's position: its commits would be made on another
    /// database than the primary's.
    NotAtLockPosition {
        /// Where this replica is.
        at: Pos,
    },
}

/// Whose pages an LTX file to persist ([`Output::PersistLtx`]) holds, and so whether the
/// database already has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LtxOrigin {
    /// A commit of this node's own as primary: the application wrote its pages through the
    /// mount, so only durability is asked for.
    OwnCommit,
    /// A file from the primary: persist it, then apply it.
    Upstream,
    /// A transaction this replica sent its primary under a halt lock, brought back by the
    /// stream: the application wrote its pages here already, so it is persisted, not applied.
    HaltEcho,
}

impl RefuseReason {
    /// The reason a disk failure gives.
    #[must_use]
    pub fn of_disk_failure(failure: IoFailure) -> RefuseReason {
        match failure {
            IoFailure::NoSpace => RefuseReason::NoSpace,
            IoFailure::Io | IoFailure::Mismatch => RefuseReason::Disk,
        }
    }
}

/// What the Node wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Try to acquire the lease; answer with `LeaseAcquired` / `LeaseHeld` / `LeaseRequestFailed`.
    AcquireLease {
        /// Request id.
        op: OpId,
    },
    /// Renew the lease held under `epoch`; answer with `LeaseRenewed` / `LeaseLost` / `LeaseRequestFailed`.
    RenewLease {
        /// Request id.
        op: OpId,
        /// The epoch held.
        epoch: Epoch,
    },
    /// Release the lease held under `epoch` (no answer): it is free at once.
    ReleaseLease {
        /// The epoch held.
        epoch: Epoch,
    },
    /// Stop renewing the lease held under `epoch` *without* releasing it (no answer): a
    /// handoff target takes it over with [`Output::TakeOverLease`], so the lease is never
    /// free for another candidate to win. If the target does not, it expires by itself.
    HandOverLease {
        /// The epoch held.
        epoch: Epoch,
    },
    /// Take over the lease its holder handed us under `epoch`: succeed only while the lease
    /// is still that term (or free), giving us a new, larger epoch. Answer as for
    /// [`Output::AcquireLease`].
    TakeOverLease {
        /// Request id.
        op: OpId,
        /// The handed-over term's epoch.
        epoch: Epoch,
    },
    /// Ask who holds the lease; answer with `LeaseObserved` / `LeaseRequestFailed`.
    ObserveLease {
        /// Request id.
        op: OpId,
    },
    /// Make this LTX file durable, then apply it to the database whose checksum is `base`
    /// (a snapshot replaces the database and all older LTX files). Answer with `LtxDone`.
    /// On a primary, the file records a commit whose pages the application already wrote
    /// through the mount: the database is already at the file's post-apply position, so
    /// "apply" is a no-op there and only durability is asked for.
    PersistLtx {
        /// The database.
        db: DbName,
        /// Request id.
        op: OpId,
        /// The file's transaction range.
        min: TxId,
        /// See `min`.
        max: TxId,
        /// The file.
        bytes: Vec<u8>,
        /// The database checksum the file applies to.
        base: Checksum,
        /// Make the file durable before answering. Only ever set when every earlier file of
        /// the database is already durable and no flush is in flight, so one fsync of this
        /// file suffices. Unset: write it (so it can be read and streamed) and answer; a
        /// later `FlushLtx` makes it durable.
        durable: bool,
        /// Whose pages it holds: whether it is still to be applied.
        origin: LtxOrigin,
    },
    /// Make every LTX file of `db` written so far, up to `through`, durable (files written
    /// with `durable` unset). Answer with `LtxFlushed`.
    FlushLtx {
        /// The database.
        db: DbName,
        /// Request id.
        op: OpId,
        /// The highest TXID covered.
        through: TxId,
    },
    /// Answer an application's fsync ([`crate::node::Input::Sync`]).
    SyncDone {
        /// The fsync.
        sync: SyncId,
        /// `Ok` once everything committed before it is durable; otherwise why not.
        result: Result<(), RefuseReason>,
    },
    /// Start spooling an LTX file for `db` that is too big to hold in memory: create a
    /// temporary file. `SpoolWrite`s follow in order, then `SpoolEnd` or `SpoolDiscard`.
    SpoolBegin {
        /// The spool.
        spool: SpoolId,
        /// The database.
        db: DbName,
    },
    /// Append these bytes of the file to the spool.
    SpoolWrite {
        /// The spool.
        spool: SpoolId,
        /// The next bytes.
        bytes: Vec<u8>,
    },
    /// The file is complete: verify it whole with [`crate::ltx::verify`] (as it is written,
    /// or after), make it durable, and answer with `SpoolDone`. Until a
    /// `PersistSpooledLtx` or `SpoolDiscard` names it, the spool is kept.
    SpoolEnd {
        /// The spool.
        spool: SpoolId,
    },
    /// Delete the spool (the stream failed, or the file will not be applied). A spool that
    /// is still being written or verified is abandoned; its `SpoolDone` may still come.
    SpoolDiscard {
        /// The spool.
        spool: SpoolId,
    },
    /// Like `PersistLtx`, for a file spooled and verified (`SpoolDone`): the spool becomes the
    /// stored LTX file and is applied from disk. Answer with `LtxDone`.
    PersistSpooledLtx {
        /// The database.
        db: DbName,
        /// Request id.
        op: OpId,
        /// The spool holding the file.
        spool: SpoolId,
        /// The file's transaction range.
        min: TxId,
        /// See `min`.
        max: TxId,
        /// The database checksum the file applies to.
        base: Checksum,
        /// Whose pages it holds: whether it is still to be applied.
        origin: LtxOrigin,
    },
    /// Apply an LTX file already on disk (recovery replay). Answer with `LtxDone`.
    ReplayLtx {
        /// The database.
        db: DbName,
        /// Request id.
        op: OpId,
        /// The file's transaction range.
        min: TxId,
        /// See `min`.
        max: TxId,
        /// The database checksum it applies to.
        base: Checksum,
    },
    /// Record the highest lease epoch seen, so that after a restart the node still refuses
    /// older primaries. Emitted after the outputs of the input that raised it; losing the
    /// last one in a crash only makes the node relearn it.
    PersistEpoch {
        /// The epoch.
        epoch: Epoch,
    },
    /// Record, durably, that this replica's `db` was moved back from `txid` by a snapshot
    /// and must not be used to take the lease until it is back there (zero: caught up,
    /// forget it). Carried out before the outputs after it, like `PersistEpoch`; the answer
    /// comes back in [`crate::node::DbRecovery::rejoin_txid`] after a restart.
    PersistRejoin {
        /// The database.
        db: DbName,
        /// The TXID to reach; zero clears the record.
        txid: TxId,
    },
    /// Delete an LTX file.
    RemoveLtx {
        /// The database.
        db: DbName,
        /// Range of the file.
        min: TxId,
        /// See `min`.
        max: TxId,
    },
    /// Tell the application its commit is durable.
    AckCommit {
        /// The database.
        db: DbName,
        /// The commit.
        commit: CommitId,
        /// The position it produced.
        pos: Pos,
    },
    /// Tell the application its commit failed (read-only error).
    RefuseCommit {
        /// The commit.
        commit: CommitId,
        /// Why.
        reason: RefuseReason,
    },
    /// Open a stream to the primary with this request body; answer with `UpstreamOpened`
    /// or `UpstreamClosed`.
    Connect {
        /// The stream id.
        conn: UpstreamId,
        /// The primary.
        peer: NodeId,
        /// Extensions offered.
        ext: Extensions,
        /// The position-map body.
        body: Vec<u8>,
    },
    /// Send bytes to the primary (acknowledgements).
    SendUpstream {
        /// The stream.
        conn: UpstreamId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Close the stream to the primary.
    CloseUpstream {
        /// The stream.
        conn: UpstreamId,
    },
    /// Send these encoded frames to a replica.
    SendDownstream {
        /// The stream.
        conn: DownstreamId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Send the LTX file `min..=max` from disk to a replica as an LTX frame, chunks and an
    /// HWM frame (see [`crate::stream::encode_ltx_message`]).
    StreamLtx {
        /// The stream.
        conn: DownstreamId,
        /// The database.
        db: DbName,
        /// The file's range.
        min: TxId,
        /// See `min`.
        max: TxId,
    },
    /// Encode the database (which is at `pos`) as a snapshot and send it like `StreamLtx`.
    StreamSnapshot {
        /// The stream.
        conn: DownstreamId,
        /// The database.
        db: DbName,
        /// The database's position.
        pos: Pos,
    },
    /// Ask the primary to hand its lease to `to` (LiteFS: `POST /handoff?nodeID=` on the
    /// primary, which feeds it [`crate::node::Input::Handoff`]). No answer: the handoff frame
    /// or a refusal event on the primary is the outcome.
    RequestHandoff {
        /// The primary.
        primary: NodeId,
        /// The node that should become primary (this one).
        to: NodeId,
    },
    /// Close a replica's stream (after an end frame, already sent).
    CloseDownstream {
        /// The stream.
        conn: DownstreamId,
    },
    /// Answer to [`crate::node::Input::HoldHalt`].
    HaltHeld {
        /// The database.
        db: DbName,
        /// Whether this replica now writes `db` under the lock.
        result: Result<(), HaltRefusal>,
    },
    /// Send a transaction made under the halt lock `lock_id` to the primary (LiteFS's
    /// `POST /tx`); answer with [`crate::node::Input::SentUnderHalt`]. The commit is answered
    /// (`AckCommit` or `RefuseCommit`) once the primary has.
    SendUnderHalt {
        /// The commit, to echo in the answer.
        commit: CommitId,
        /// The database.
        db: DbName,
        /// The lock's id at the primary.
        lock_id: i64,
        /// The transaction's LTX file, made on the lock's latest position.
        bytes: Vec<u8>,
    },
    /// Something worth logging, counting or showing.
    Event(Event),
}

/// Notable happenings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This node became primary.
    BecamePrimary {
        /// Lease epoch.
        epoch: Epoch,
    },
    /// This node stopped being primary.
    SteppedDown {
        /// Lease epoch held.
        epoch: Epoch,
        /// Why.
        reason: &'static str,
    },
    /// Now following this primary.
    Following {
        /// The primary.
        primary: NodeId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// A stream from the primary was refused or failed; the node will resync.
    Resync {
        /// Why.
        reason: String,
    },
    /// Recovery found the database and LTX history disagreeing, and applied a rule.
    Recovered {
        /// The database.
        db: DbName,
        /// The position recovered to.
        pos: Pos,
        /// Which rule applied.
        rule: &'static str,
    },
    /// A snapshot from the primary replaced this replica's database, which was at `was`: its
    /// history had diverged from the primary's, or fallen behind what the primary retains.
    SnapshotReplaced {
        /// The database.
        db: DbName,
        /// Where it was.
        was: Pos,
        /// Where the snapshot brought it.
        now: Pos,
    },
    /// A synchronous commit was acknowledged without all required acknowledgements.
    SyncDegraded {
        /// The database.
        db: DbName,
        /// The transaction.
        txid: TxId,
    },
    /// A synchronous commit is blocked waiting for acknowledgements.
    SyncStalled {
        /// The database.
        db: DbName,
        /// The transaction.
        txid: TxId,
    },
    /// A replica needs a copy of the live database again although it was sent one before and
    /// never reached it: the transfer keeps failing (too slow, a disk full on the replica, a
    /// file it cannot verify). Each copy reads and sends the whole database: from the second
    /// failed copy in a row the next one is held off (see [`Event::SnapshotHeldOff`]).
    SnapshotRepeated {
        /// The replica.
        peer: NodeId,
        /// The database.
        db: DbName,
        /// Copies sent in a row without the replica reaching one.
        attempts: u32,
    },
    /// A replica that failed the last copies of a live database it was sent came back for
    /// another: it gets it only after a wait that doubles with each failed copy (1 s after the
    /// second, up to a minute), whatever its own reconnect backoff is. Its stream stays open
    /// meanwhile (heartbeats, other databases).
    SnapshotHeldOff {
        /// The replica.
        peer: NodeId,
        /// The database.
        db: DbName,
        /// Copies it failed in a row.
        failed: u32,
        /// How long until the next copy may go.
        wait_ms: u64,
    },
    /// A replica stopped acknowledging what it was sent; its stream was closed.
    ReplicaCutOff {
        /// The replica.
        peer: NodeId,
    },
    /// A promotion request could not be honoured.
    PromoteRefused {
        /// Why.
        reason: &'static str,
    },
    /// A handoff request could not be honoured.
    HandoffRefused {
        /// The requested target.
        to: NodeId,
        /// Why.
        reason: &'static str,
    },
    /// A disk operation failed.
    DiskFailed {
        /// The database.
        db: DbName,
        /// What failed.
        failure: super::input::IoFailure,
    },
}
