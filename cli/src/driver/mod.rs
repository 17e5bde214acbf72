//! The daemon's driver: owns one core `Node`, feeds it what happens (commits from the FUSE
//! layer, lease answers, stream bytes, timers) and carries out its outputs. It decides
//! nothing itself.

mod bridge;
mod clock;
mod disk_storage;
mod downstream;
mod node_config;
mod page_sums;
mod recent_ltx;
mod run;
mod spool;
mod status;
mod storage;
mod upstream;

pub use bridge::{Answer, COMMIT_ANSWER_TIMEOUT, CommitBridge, DirectLane, FsRequest, WriteGate};
pub use clock::Clock;
pub use disk_storage::DiskStorage;
pub use node_config::{NodeConfigError, node_config};
pub use page_sums::{CommitPages, PageSums};
pub use run::{Driver, LoadPageSums, Network};
pub use status::{
    DbStatus, EventLog, EventReader, HaltLockStatus, Peer, ReplicaStatus, SnapshotProgress, Status, Surface,
};
pub use storage::{DatabaseImage, SnapshotImage, Storage, Streamed};
