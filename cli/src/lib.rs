//! replite's daemon-side library: configuration, lease backends, the durable store, the
//! replication stream's HTTP transport, and the tokio driver that owns a core `Node` and
//! carries out its outputs. The `replite` binary is a thin command-line front over it. Unit
//! tests sit beside the code; tests that start real processes (etcd, several daemons) are in
//! `cli/tests/`.

pub mod api;
pub mod config;
pub mod daemon;
pub mod db_file;
pub mod driver;
pub mod fd_limit;
pub mod fs_kind;
pub mod halt;
pub mod http;
pub mod lease;
pub mod proxy;
pub mod store;
pub mod timefmt;
