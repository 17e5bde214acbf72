//! Lease backends: who is primary, and the epoch (fencing token) of its term. Each backend
//! only talks to its store and reports what happened; when to acquire, renew or give up is
//! decided by the core `Node`.

mod backend;
mod consul;
mod etcd;
mod record;
mod static_lease;

use std::time::Duration;

use replite_core::Epoch;
use thiserror::Error;

pub use backend::Leaser;
pub use consul::ConsulLeaser;
pub use etcd::EtcdLeaser;
pub use record::LeaseRecord;
pub use static_lease::{STATIC_EPOCH, StaticLeaser};

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
        /// The store's own name for the lease, sent in a handoff frame: the Consul session
        /// (what a LiteFS target takes over), the etcd lease id in hex.
        lease_id: String,
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

#[cfg(test)]
mod tests {
    use super::*;
    use replite_core::NodeId;

    #[test]
    fn static_primary_holds_epoch_one_and_followers_see_it() {
        let primary =
            LeaseRecord { hostname: "p".into(), advertise_url: "http://p:20202".into(), node_id: Some(NodeId(1)) };
        let mut on_primary = StaticLeaser::new(true, primary.clone());
        assert!(matches!(on_primary.acquire(), AcquireOutcome::Acquired { epoch: STATIC_EPOCH, .. }));
        assert!(on_primary.renew(STATIC_EPOCH).expect("held"));
        let mut on_replica = StaticLeaser::new(false, primary.clone());
        assert_eq!(on_replica.acquire(), AcquireOutcome::Held { holder: primary.clone(), epoch: STATIC_EPOCH });
        assert!(on_replica.renew(STATIC_EPOCH).is_err());
        assert_eq!(on_replica.observe(), Some((primary, STATIC_EPOCH)));
    }
}
