//! The daemon's driver: owns one core `Node`, feeds it what happens (commits from the FUSE
//! layer, lease answers, stream bytes, timers) and carries out its outputs. It decides
//! nothing itself.

mod bridge;
mod page_sums;

pub use bridge::{Answer, COMMIT_ANSWER_TIMEOUT, CommitBridge, FsRequest};
pub use page_sums::{CommitPages, PageSums};
