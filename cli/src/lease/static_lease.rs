//! The static lease, as LiteFS's: one node is configured as the primary (`lease.candidate:
//! true`) and holds the lease forever with epoch 1; every other node follows it.

use replite_core::Epoch;

use crate::lease::{AcquireOutcome, LeaseError, LeaseRecord};

/// The epoch of the only term a static cluster has.
pub const STATIC_EPOCH: Epoch = Epoch(1);

/// A lease that never changes hands.
pub struct StaticLeaser {
    is_primary: bool,
    primary: LeaseRecord,
}

impl StaticLeaser {
    /// `primary` is the configured primary's record (this node's own when `is_primary`).
    #[must_use]
    pub fn new(is_primary: bool, primary: LeaseRecord) -> StaticLeaser {
        StaticLeaser { is_primary, primary }
    }

    /// The primary acquires at once and forever; others learn who the primary is.
    pub fn acquire(&mut self) -> AcquireOutcome {
        if self.is_primary {
            // A static lease never expires; the core treats a TTL this long as "held".
            AcquireOutcome::Acquired {
                epoch: STATIC_EPOCH,
                ttl: std::time::Duration::from_secs(365 * 24 * 3600),
                lease_id: STATIC_EPOCH.to_string(),
            }
        } else {
            AcquireOutcome::Held { holder: self.primary.clone(), epoch: STATIC_EPOCH }
        }
    }

    /// Always still held by the primary.
    pub fn renew(&mut self, epoch: Epoch) -> Result<bool, LeaseError> {
        if self.is_primary && epoch == STATIC_EPOCH { Ok(true) } else { Err(LeaseError::NotHeld { epoch }) }
    }

    /// The configured primary.
    #[must_use]
    pub fn observe(&self) -> Option<(LeaseRecord, Epoch)> {
        Some((self.primary.clone(), STATIC_EPOCH))
    }
}
