//! Lease backends: who is primary, and the epoch (fencing token) of its term. Each backend
//! only talks to its store and reports what happened; when to acquire, renew or give up is
//! decided by the core `Node`.

mod consul;
mod etcd;
mod record;

use std::time::Duration;

use replite_core::Epoch;
use thiserror::Error;

pub use consul::ConsulLeaser;
pub use etcd::EtcdLeaser;
pub use record::LeaseRecord;

/// What an attempt to take the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// This node now holds the lease for a term with this epoch, for `ttl` from when the
    /// request was sent (the caller counts from its send time, never from the reply).
    Acquired {
        /// The term's fencing token.
        epoch: Epoch,
        /// The lease's time to live as the store granted it.
        ttl: Duration,
    },
    /// Another node holds it.
    Held {
        /// Who.
        holder: LeaseRecord,
        /// Their term's epoch.
        epoch: Epoch,
    },
}

/// Why a lease request failed. A failed request says nothing about who holds the lease.
#[derive(Debug, Error)]
pub enum LeaseError {
    /// The store could not be reached or refused the request.
    #[error("lease store request failed ({op}): {message}")]
    Store {
        /// The request ("grant", "acquire", "renew", ...).
        op: &'static str,
        /// What the store or the client said.
        message: String,
    },
    /// The store holds a value this node cannot read.
    #[error("lease key {key} holds an unreadable value: {message}")]
    BadRecord {
        /// The key.
        key: String,
        /// Why it could not be parsed.
        message: String,
    },
    /// The request refers to a term this backend does not hold.
    #[error("no lease is held for epoch {epoch}")]
    NotHeld {
        /// The epoch asked about.
        epoch: Epoch,
    },
}
