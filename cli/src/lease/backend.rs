//! One type for whichever backend the config names, so the driver holds a single leaser.

use replite_core::Epoch;

use crate::config::{Config, LeaseType};
use crate::lease::{AcquireOutcome, ConsulLeaser, EtcdLeaser, LeaseError, LeaseRecord, StaticLeaser};

/// The configured lease backend.
pub enum Leaser {
    /// `lease.type: static`.
    Static(StaticLeaser),
    /// `lease.type: etcd` (the network backends are boxed: their clients are large).
    Etcd(Box<EtcdLeaser>),
    /// `lease.type: consul`.
    Consul(Box<ConsulLeaser>),
}

impl Leaser {
    /// Connects the backend `config.lease` names. `me` is this node's record; for a static
    /// lease, `static_primary` is the primary's (this node's own when it is the candidate).
    pub async fn connect(config: &Config, me: LeaseRecord, static_primary: LeaseRecord) -> Result<Leaser, LeaseError> {
        Ok(match config.lease.kind {
            LeaseType::Static => Leaser::Static(StaticLeaser::new(config.lease.candidate, static_primary)),
            LeaseType::Etcd => Leaser::Etcd(Box::new(EtcdLeaser::connect(&config.lease.etcd, me).await?)),
            LeaseType::Consul => Leaser::Consul(Box::new(ConsulLeaser::connect(&config.lease.consul, me).await?)),
            LeaseType::Unset => {
                return Err(LeaseError::Store { op: "connect", message: "lease.type is not set".into() });
            }
        })
    }

    /// See the backends' `acquire`.
    pub async fn acquire(&mut self) -> Result<AcquireOutcome, LeaseError> {
        match self {
            Leaser::Static(l) => Ok(l.acquire()),
            Leaser::Etcd(l) => l.acquire().await,
            Leaser::Consul(l) => l.acquire().await,
        }
    }

    /// See the backends' `take_over`. A static lease has a fixed primary: taking it over is
    /// an ordinary (refused) acquire.
    pub async fn take_over(&mut self, from: Epoch) -> Result<AcquireOutcome, LeaseError> {
        match self {
            Leaser::Static(l) => Ok(l.acquire()),
            Leaser::Etcd(l) => l.take_over(from).await,
            Leaser::Consul(l) => l.take_over(from).await,
        }
    }

    /// See the backends' `hand_over`. A static lease is never handed over.
    pub fn hand_over(&mut self, epoch: Epoch) -> Result<(), LeaseError> {
        match self {
            Leaser::Static(_) => Ok(()),
            Leaser::Etcd(l) => l.hand_over(epoch),
            Leaser::Consul(l) => l.hand_over(epoch),
        }
    }

    /// See the backends' `renew`.
    pub async fn renew(&mut self, epoch: Epoch) -> Result<bool, LeaseError> {
        match self {
            Leaser::Static(l) => l.renew(epoch),
            Leaser::Etcd(l) => l.renew(epoch).await,
            Leaser::Consul(l) => l.renew(epoch).await,
        }
    }

    /// See the backends' `release`. A static lease is never released.
    pub async fn release(&mut self, epoch: Epoch) -> Result<(), LeaseError> {
        match self {
            Leaser::Static(_) => Ok(()),
            Leaser::Etcd(l) => l.release(epoch).await,
            Leaser::Consul(l) => l.release(epoch).await,
        }
    }

    /// See the backends' `observe`.
    pub async fn observe(&mut self) -> Result<Option<(LeaseRecord, Epoch)>, LeaseError> {
        match self {
            Leaser::Static(l) => Ok(l.observe()),
            Leaser::Etcd(l) => l.observe().await,
            Leaser::Consul(l) => l.observe().await,
        }
    }
}
