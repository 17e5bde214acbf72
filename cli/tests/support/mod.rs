//! Shared helpers for the cli crate's integration tests.
#![allow(dead_code)]

pub mod cluster;
pub mod consul;
pub mod etcd;
pub mod handoff;
pub mod netns;
