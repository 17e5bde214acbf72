//! replite-core: the sans-IO heart of replite.
//!
//! It holds the LTX codec (the file format LiteFS replicates with), replication positions and
//! checksums, the replication stream's frames, and the `Node` state machine that decides
//! everything about leases, commits and replication. It must never do I/O of its own: no files, sockets,
//! threads, clock reads or global randomness. Callers pass readers and writers, `now`, and
//! seeds. Unit tests sit beside the code; interop tests against LiteFS-written fixtures are in
//! `tests/`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[doc(hidden)]
pub mod fuzzing;
pub mod ltx;
pub mod node;
pub mod stream;
pub mod types;

pub use types::{Checksum, Epoch, NodeId, PageSize, ParseError, Pgno, Pos, TxId};
