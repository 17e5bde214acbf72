//! replite-sim: a deterministic discrete-event simulator that drives real
//! `replite_core::node::Node`s. One seeded PRNG (in-tree, so seeds replay across dependency
//! bumps), virtual true time in milliseconds, a network of stream connections with latency,
//! loss, duplication, reordering and (one-way) partitions, a disk per node that loses
//! in-flight writes on crash or tears them, ENOSPC/EIO injection, an etcd-like lease store,
//! and per-node clocks with offset and drift inside the bound the lease safety margin
//! assumes. It must never read the real clock or global randomness. The invariant checks
//! live in `sim-tests`; this crate reports [`Fact`]s for them.

#![forbid(unsafe_code)]

mod disk;
mod lease_store;
mod sim;

pub use disk::Disk;
pub use lease_store::{LeaseReply, LeaseStore};
pub use sim::{Fact, FaultMix, Sim, SimConfig, Stats, Via};
