//! The replication stream's HTTP transport: HTTP/2 cleartext (prior knowledge) `POST /stream`,
//! LiteFS-compatible (`docs/protocol.md`). The server hands accepted streams to the daemon as
//! events and the client hands it channels; both only move bytes, and every decision about
//! them belongs to the core `Node`. Unit tests sit beside the code; `cli/tests/stream_transport.rs`
//! runs both ends over loopback TCP and over turmoil's simulated network. The same server
//! loop serves the proxy, with Go's timeouts between requests (`conn_timeouts`).

pub mod conn_timeouts;
mod posmap_split;
pub mod stream_client;
pub mod stream_server;

use std::time::Duration;

pub use conn_timeouts::ConnTimeouts;
pub use posmap_split::{MAX_POS_MAP_BYTES, PosMapSplitter};
pub use stream_client::{CONNECT_TIMEOUT, ConnectError, StreamError, UpstreamConn, connect, connect_via, connect_with};
pub use stream_server::{
    DownstreamConn, FRAME_CHANNEL_CAPACITY, StreamServerEvent, serve, serve_tcp, serve_with, stream_routes,
};

/// Silence on a connection after which an HTTP/2 ping is sent. A primary sends a heartbeat at
/// least once a second, so 5 s of silence already means something is wrong.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a ping may go unanswered before the connection is declared dead and its streams
/// fail. With [`KEEPALIVE_INTERVAL`] a vanished peer is noticed within about 10 s, the order of
/// a lease's TTL (LiteFS's default is 10 s), while a live peer answers a ping in one round trip.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
