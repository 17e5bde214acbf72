//! How a Node is configured. Durations are milliseconds on the caller's clock.

use std::collections::BTreeSet;

use thiserror::Error;

use crate::types::NodeId;

/// What a synchronous commit does when acknowledgements do not arrive in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Keep waiting: writes stall until every required replica acknowledges.
    Block,
    /// Acknowledge the commit anyway after the timeout, with a [`crate::node::Event::SyncDegraded`].
    Degrade,
}

/// Synchronous replication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// How long a commit waits for acknowledgements before the policy applies.
    pub timeout_ms: u64,
    /// What happens at the timeout.
    pub policy: SyncPolicy,
}

/// Deliberate bugs, for proving the simulator catches them. Never set outside tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// A replica applies incremental LTX files without checking TXID and pre-apply checksum.
    pub skip_pre_apply_check: bool,
    /// A primary accepts writes after its lease's safe deadline (until it learns of the loss).
    pub write_after_expiry: bool,
    /// A primary acknowledges commits before the LTX file is durable.
    pub ack_before_durable: bool,
    /// A node follows primaries with epochs older than ones it has seen, and a deposed
    /// primary keeps serving its streams.
    pub ignore_epochs: bool,
    /// A primary that completes a handoff releases the lease instead of handing the term
    /// over, so any candidate may win it (the race decision 0013 closed).
    pub release_on_handoff: bool,
}

/// Default [`Config::flush_ms`]: short next to any replication timeout or async window
/// (acknowledgements of a replica in asynchronous mode wait for it), long enough that a flush
/// covers many commits of a busy WAL database (one fsync round per 10 ms, whatever the rate).
pub const DEFAULT_FLUSH_MS: u64 = 10;

/// A Node's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub node_id: NodeId,
    /// Whether this node may become primary.
    pub candidate: bool,
    /// Every candidate node of the cluster (including this one if it is a candidate). Used by
    /// synchronous mode and the asynchronous loss window: see `docs/decisions/0004-sync-failover-rule.md`.
    pub candidates: BTreeSet<NodeId>,
    /// Lease time-to-live, as granted by the lease store.
    pub lease_ttl_ms: u64,
    /// Renew this long after the previous grant.
    pub lease_renew_ms: u64,
    /// Stop accepting writes this long before the lease expires by our clock. Must cover the
    /// clock drift between this node and the lease store over one TTL.
    pub lease_safety_margin_ms: u64,
    /// How often a non-primary polls the lease store.
    pub lease_poll_ms: u64,
    /// How often a primary sends heartbeats.
    pub heartbeat_ms: u64,
    /// A replica that hears nothing from its primary for this long reconnects.
    pub upstream_idle_ms: u64,
    /// A primary closes the stream of a replica (that negotiated acknowledgements) whose
    /// acknowledgements have trailed what it was sent for this long, so it reconnects and
    /// resyncs: the only way to notice a stream that silently lost a file.
    pub replica_ack_timeout_ms: u64,
    /// After handing its lease to another node, do not try to take it back for this long
    /// (LiteFS's `lease.demote-delay`): the target needs a moment to acquire what we released.
    pub demote_delay_ms: u64,
    /// Reconnect backoff bounds (doubling, with jitter in the upper half).
    pub reconnect_min_ms: u64,
    /// See `reconnect_min_ms`.
    pub reconnect_max_ms: u64,
    /// Synchronous replication, if on.
    pub sync: Option<SyncConfig>,
    /// Asynchronous loss window: refuse writes once a candidate lacks a commit older than this.
    pub async_window_ms: Option<u64>,
    /// Longest an LTX file written without an fsync (a deferred commit, or a file a replica
    /// in asynchronous mode applied) waits before it is made durable. It bounds what a
    /// power loss can take of commits SQLite did not ask to be durable, and how late a
    /// replica's acknowledgement trails its apply. See `docs/decisions/0008-commit-durability.md`.
    pub flush_ms: u64,
    /// Keep LTX files at least this long.
    pub retention_ms: u64,
    /// Drop the oldest LTX files once their total size exceeds this (never the newest file).
    pub retention_bytes: u64,
    /// A backup process copies LTX files off this node: retention keeps every file it has not
    /// yet reported with [`crate::node::Input::BackedUp`].
    pub backup: bool,
    /// LTX files received up to this size are held in memory; bigger ones (snapshots, huge
    /// transactions) are spooled to disk as they arrive ([`crate::node::Output::SpoolBegin`]),
    /// so a replica's memory does not grow with the database.
    pub ltx_inline_max_bytes: u64,
    /// A replica with this many received files of one database waiting to be applied asks
    /// for no more stream bytes ([`crate::node::Node::accepts_upstream_data`]) until applies
    /// catch up. Below [`MAX_INBOX_FILES`], past which it resyncs.
    pub inbox_pause_files: usize,
    /// Seed for backoff jitter.
    pub seed: u64,
    #[doc(hidden)]
    pub faults: Faults,
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The safety margin does not leave time to write.
    #[error(
        "lease safety margin {margin_ms}ms must be below the renew interval {renew_ms}ms, itself below the TTL {ttl_ms}ms"
    )]
    LeaseTimes {
        /// Safety margin.
        margin_ms: u64,
        /// Renew interval.
        renew_ms: u64,
        /// TTL.
        ttl_ms: u64,
    },
    /// A candidate node is missing from the candidate set.
    #[error("node {node} is a candidate but not listed in the candidate set")]
    NotInCandidates {
        /// This node.
        node: NodeId,
    },
    /// The stream pause would never come before the resync limit.
    #[error("inbox pause at {files} files must be between 1 and {max} (the resync limit)")]
    InboxPause {
        /// The pause threshold.
        files: usize,
        /// [`MAX_INBOX_FILES`].
        max: usize,
    },
    /// Reconnect backoff bounds are inverted or zero.
    #[error("reconnect backoff {min_ms}..{max_ms}ms is empty")]
    Backoff {
        /// Lower bound.
        min_ms: u64,
        /// Upper bound.
        max_ms: u64,
    },
}

/// Received files buffered per database, waiting to be applied, past which a replica gives
/// up on its stream and resyncs rather than buffer without bound (a safety net: the pause at
/// [`Config::inbox_pause_files`] comes first).
pub const MAX_INBOX_FILES: usize = 256;

/// Default [`Config::inbox_pause_files`]: a quarter of [`MAX_INBOX_FILES`], because one
/// network read can hold dozens of small files.
pub const DEFAULT_INBOX_PAUSE_FILES: usize = 64;

/// Default [`Config::ltx_inline_max_bytes`]: 1 MiB. A one-commit LTX file (the common case)
/// is far smaller and stays off the disk until it is persisted; with at most 256 files waiting
/// per database, inline payloads stay under 256 MiB even when the disk falls behind.
pub const DEFAULT_LTX_INLINE_MAX_BYTES: u64 = 1 << 20;

impl Config {
    /// A configuration with LiteFS-like defaults (10 s TTL, 1 s heartbeats).
    #[must_use]
    pub fn new(node_id: NodeId) -> Config {
        Config {
            node_id,
            candidate: true,
            candidates: [node_id].into_iter().collect(),
            lease_ttl_ms: 10_000,
            lease_renew_ms: 3_000,
            lease_safety_margin_ms: 1_000,
            lease_poll_ms: 1_000,
            heartbeat_ms: 1_000,
            upstream_idle_ms: 5_000,
            replica_ack_timeout_ms: 30_000,
            demote_delay_ms: 10_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
            sync: None,
            async_window_ms: None,
            flush_ms: DEFAULT_FLUSH_MS,
            retention_ms: 600_000,
            retention_bytes: 64 << 20,
            backup: false,
            ltx_inline_max_bytes: DEFAULT_LTX_INLINE_MAX_BYTES,
            inbox_pause_files: DEFAULT_INBOX_PAUSE_FILES,
            seed: 0,
            faults: Faults::default(),
        }
    }

    /// Checks the rules between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.lease_safety_margin_ms < self.lease_renew_ms && self.lease_renew_ms < self.lease_ttl_ms) {
            return Err(ConfigError::LeaseTimes {
                margin_ms: self.lease_safety_margin_ms,
                renew_ms: self.lease_renew_ms,
                ttl_ms: self.lease_ttl_ms,
            });
        }
        if self.candidate && !self.candidates.contains(&self.node_id) {
            return Err(ConfigError::NotInCandidates { node: self.node_id });
        }
        if self.inbox_pause_files == 0 || self.inbox_pause_files >= MAX_INBOX_FILES {
            return Err(ConfigError::InboxPause { files: self.inbox_pause_files, max: MAX_INBOX_FILES });
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(ConfigError::Backoff { min_ms: self.reconnect_min_ms, max_ms: self.reconnect_max_ms });
        }
        Ok(())
    }
}
