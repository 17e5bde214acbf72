//! The daemon's driver: owns one core `Node`, feeds it what happens (commits from the FUSE
//! layer, lease answers, stream bytes, timers) and carries out its outputs. It decides
//! nothing itself.

mod page_sums;

pub use page_sums::{CommitPages, PageSums};
