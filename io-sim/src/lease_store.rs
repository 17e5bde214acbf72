//! An etcd-like lease store: linearizable (every request applies at one instant of true
//! time, in arrival order), TTL leases, and the store revision as the lease epoch.

use replite_core::{Epoch, NodeId};

/// The store's state.
#[derive(Debug, Clone, Default)]
pub struct LeaseStore {
    revision: u64,
    holder: Option<(NodeId, Epoch, u64)>,
    /// Every grant made: (epoch, holder, true time).
    pub grants: Vec<(Epoch, NodeId, u64)>,
}

/// A request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseReply {
    /// Acquired under this epoch.
    Acquired(Epoch),
    /// Held by another.
    Held(NodeId, Epoch),
    /// Renewed.
    Renewed,
    /// Not ours any more.
    Lost,
    /// Current holder.
    Observed(Option<(NodeId, Epoch)>),
}

impl LeaseStore {
    fn live(&self, now: u64) -> Option<(NodeId, Epoch)> {
        self.holder.filter(|h| now < h.2).map(|h| (h.0, h.1))
    }

    /// The current holder at true time `now`.
    #[must_use]
    pub fn holder(&self, now: u64) -> Option<(NodeId, Epoch)> {
        self.live(now)
    }

    /// When the term `epoch` expires unless renewed, if it is the live one at true time `now`.
    #[must_use]
    pub fn expiry_of(&self, now: u64, epoch: Epoch) -> Option<u64> {
        self.holder.filter(|h| now < h.2 && h.1 == epoch).map(|h| h.2)
    }

    /// Try to take the lease.
    pub fn acquire(&mut self, now: u64, node: NodeId, ttl_ms: u64) -> LeaseReply {
        match self.live(now) {
            Some((holder, epoch)) => LeaseReply::Held(holder, epoch),
            None => {
                self.revision += 1;
                let epoch = Epoch(self.revision);
                self.holder = Some((node, epoch, now + ttl_ms));
                self.grants.push((epoch, node, now));
                LeaseReply::Acquired(epoch)
            }
        }
    }

    /// Take over the lease its holder handed us under `from`: replaces that term with a new
    /// one of ours while it is live; a free lease is acquired as usual.
    pub fn take_over(&mut self, now: u64, node: NodeId, from: Epoch, ttl_ms: u64) -> LeaseReply {
        match self.live(now) {
            Some((_, epoch)) if epoch == from => {
                self.holder = None;
                self.acquire(now, node, ttl_ms)
            }
            _ => self.acquire(now, node, ttl_ms),
        }
    }

    /// Extend a held lease.
    pub fn renew(&mut self, now: u64, node: NodeId, epoch: Epoch, ttl_ms: u64) -> LeaseReply {
        match self.live(now) {
            Some((h, e)) if h == node && e == epoch => {
                self.holder = Some((node, epoch, now + ttl_ms));
                LeaseReply::Renewed
            }
            _ => LeaseReply::Lost,
        }
    }

    /// Give the lease up.
    pub fn release(&mut self, now: u64, node: NodeId, epoch: Epoch) {
        if self.live(now) == Some((node, epoch)) {
            self.holder = None;
            self.revision += 1;
        }
    }

    /// Who holds it.
    #[must_use]
    pub fn observe(&self, now: u64) -> LeaseReply {
        LeaseReply::Observed(self.live(now))
    }
}
