//! The primary's side of `POST /stream`: accepts a replica's request, reads its position map,
//! and hands the stream to the daemon as events; the daemon (the core `Node`) decides what to
//! send and writes frames into the response through a bounded channel. This module only moves
//! bytes: it checks what it must to find the map's end and to name the peer, nothing more.

use std::fmt::Debug;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::Listener;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use replite_core::NodeId;
use replite_core::node::DownstreamId;
use replite_core::stream::{DbName, Extensions, HEADER_EXTENSIONS, HEADER_NODE_ID};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::http::conn_timeouts::{self, ConnActivity, ConnTimeouts, TimedStream};
use crate::http::posmap_split::PosMapSplitter;
use crate::http::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

/// Writes the daemon may queue for one replica before `send` waits. A write is a frame or an
/// LTX chunk (at most 64 KiB by the protocol's u16 length), so a slow replica costs at most a
/// few MiB here and pushes back on the daemon instead of growing without bound.
pub const FRAME_CHANNEL_CAPACITY: usize = 64;

/// How long a replica may take to send its whole position map. A replica writes the map at
/// once (at most ~1.1 MiB); a request that dribbles it for longer holds a task for nothing.
pub const POS_MAP_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`serve`] waits, after its shutdown signal, for open connections to finish before
/// it drops them. Replication streams end only when the daemon drops their senders (after
/// sending an end frame), which it does promptly on shutdown; 5 s covers that without letting
/// a stuck peer delay the exit.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Stream ids are unique in the process, so two routers can never hand the Node the same id.
static NEXT_DOWNSTREAM_ID: AtomicU64 = AtomicU64::new(1);

/// A replica's stream, just accepted.
#[derive(Debug)]
pub struct DownstreamConn {
    /// Unique per accepted stream; every later event about it carries this id.
    pub id: DownstreamId,
    /// The replica, from its `Litefs-Id` header.
    pub peer: NodeId,
    /// The extensions the replica offered (`Replite-Extensions`; none if it sent no header, as
    /// a LiteFS replica does). The response already told it the subset this version knows.
    pub ext: Extensions,
    /// The position map: exactly the bytes it occupied at the start of the request body, not
    /// yet validated (the core decodes it).
    pub body: Vec<u8>,
    /// The response body. Frames are sent in order with backpressure; dropping every sender
    /// ends the response cleanly.
    pub frames: mpsc::Sender<Bytes>,
    /// The databases asked for with `?filter=a.db,b.db` (LiteFS's parameter); `None`: all.
    pub only: Option<std::collections::BTreeSet<DbName>>,
}

/// The query parameters of `POST /stream`; others are ignored, as LiteFS does.
#[derive(Debug, serde::Deserialize)]
struct StreamQuery {
    /// Comma-separated database names.
    filter: Option<String>,
}

/// Parses `filter`: comma-separated database names, each a valid name; empty entries are
/// skipped (`a.db,` is `a.db`), and an empty filter means every database, as in LiteFS.
fn parse_filter(filter: Option<&str>) -> Result<Option<std::collections::BTreeSet<DbName>>, String> {
    let Some(text) = filter.filter(|t| !t.trim().is_empty()) else { return Ok(None) };
    let mut names = std::collections::BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        names.insert(DbName::new(part).map_err(|e| format!("filter: {e}"))?);
    }
    Ok(Some(names))
}

/// What happened on the replication streams a router serves.
#[derive(Debug)]
pub enum StreamServerEvent {
    /// A replica opened a stream.
    Opened(DownstreamConn),
    /// Request-body bytes after the position map (acknowledgement frames), in order, cut
    /// wherever the transport cut them.
    Data {
        /// The stream.
        id: DownstreamId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The stream is over: the request body failed, or ended although `ack` was negotiated
    /// (the replica promised to keep it open), or the response was dropped (the replica reset
    /// the stream or the connection died, or the daemon ended it). Sent exactly once per
    /// [`StreamServerEvent::Opened`], after all of its `Data`.
    Closed {
        /// The stream.
        id: DownstreamId,
    },
}

/// The router serving `POST /stream`; merge the daemon's other routes into it. Events go to
/// `events`; if its receiver is gone, new streams are refused with 503.
pub fn stream_routes(events: mpsc::UnboundedSender<StreamServerEvent>) -> Router {
    Router::new().route("/stream", post(open_stream)).with_state(events)
}

/// Serves `router` on `listener` (HTTP/1.1, and HTTP/2 with prior knowledge as replicas use)
/// until `shutdown` completes, then lets open connections finish for up to [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tcp(listener, router, shutdown, None).await
}

/// [`serve`], with Go's timeouts between requests (`None`: hyper's 30 s header-read timeout,
/// which also closes an idle keep-alive connection).
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    timeouts: Option<ConnTimeouts>,
) -> std::io::Result<()> {
    // Frames are small and latency-bound: without TCP_NODELAY a DATA frame can wait ~40 ms
    // for the replica's delayed ACK (measured: docs/BENCHMARKS.md, lag).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
        }
    });
    serve_configured(listener, router, shutdown, timeouts).await
}

/// [`serve`] over any listener (a simulated network in tests).
pub async fn serve_with<L>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Debug,
{
    serve_configured(listener, router, shutdown, None).await
}

async fn serve_configured<L>(
    mut listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    timeouts: Option<ConnTimeouts>,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Debug,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    if timeouts.is_some() {
        // `TimedStream` keeps them instead.
        builder.http1().header_read_timeout(None);
    }
    // Pings find replicas that vanished without a FIN (a partition, a dead host) even while
    // the daemon has nothing to send, so their streams close instead of lingering.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            (io, addr) = listener.accept() => {
                let accepted = Accepted { builder: &builder, graceful: &graceful, connections: &mut connections };
                match timeouts {
                    Some(timeouts) => {
                        let activity = ConnActivity::new();
                        let tracker = activity.clone();
                        let router = router.clone().layer(axum::middleware::from_fn(move |request, next| {
                            conn_timeouts::track_requests(tracker.clone(), request, next)
                        }));
                        accepted.serve(TimedStream::new(io, activity, timeouts), router, addr);
                    }
                    None => accepted.serve(io, router.clone(), addr),
                }
            }
            // Reap finished connections so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        warn!(open = connections.len(), grace = ?SHUTDOWN_GRACE, "HTTP connections still open after shutdown; dropping them");
    }
    connections.shutdown().await;
    Ok(())
}

/// What serving an accepted connection needs from the accept loop.
struct Accepted<'a> {
    builder: &'a auto::Builder<TokioExecutor>,
    graceful: &'a GracefulShutdown,
    connections: &'a mut JoinSet<()>,
}

impl Accepted<'_> {
    fn serve<I>(self, io: I, router: Router, peer: impl Debug + Send + 'static)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(router);
        let conn = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let conn = self.graceful.watch(conn);
        self.connections.spawn(async move {
            if let Err(error) = conn.await {
                debug!(?peer, %error, "HTTP connection ended with an error");
            }
        });
    }
}

/// A request refused before a stream was opened: 4xx/5xx with a one-line reason.
fn refuse(status: StatusCode, reason: String) -> Response {
    debug!(%status, %reason, "refused a stream request");
    (status, reason).into_response()
}

/// Parses `Litefs-Id`: 16 hex digits (LiteFS writes uppercase; either case is accepted).
fn parse_node_id(headers: &HeaderMap) -> Result<NodeId, String> {
    let value = headers.get(HEADER_NODE_ID).ok_or_else(|| format!("missing {HEADER_NODE_ID} header"))?;
    let text = value.to_str().map_err(|_| format!("{HEADER_NODE_ID} header is not ASCII"))?;
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{HEADER_NODE_ID} header {text:?} is not 16 hex digits"));
    }
    u64::from_str_radix(text, 16).map(NodeId).map_err(|e| format!("{HEADER_NODE_ID} header {text:?}: {e}"))
}

/// Parses `Replite-Extensions` (all occurrences, as HTTP joins repeated headers with commas);
/// `None` when the replica sent none, which is how a LiteFS replica is recognised.
fn parse_extensions(headers: &HeaderMap) -> Result<Option<Extensions>, String> {
    let mut offered: Option<Extensions> = None;
    for value in headers.get_all(HEADER_EXTENSIONS) {
        let text = value.to_str().map_err(|_| format!("{HEADER_EXTENSIONS} header is not ASCII"))?;
        let ext = Extensions::from_header_value(text);
        let so_far = offered.unwrap_or(Extensions::NONE);
        offered = Some(Extensions { epoch: so_far.epoch || ext.epoch, ack: so_far.ack || ext.ack });
    }
    Ok(offered)
}

/// Reads the request body up to the end of the position map. Returns the map and the bytes
/// of the chunk that completed it which follow it.
async fn read_pos_map(body: &mut Body) -> Result<(Vec<u8>, Bytes), Response> {
    let mut splitter = PosMapSplitter::new();
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("request body failed in the position map: {error}"),
                ));
            }
        };
        let Ok(mut chunk) = frame.into_data() else { continue }; // trailers carry nothing here
        match splitter.push(&chunk) {
            Ok(None) => {}
            Ok(Some(used)) => {
                let rest = chunk.split_off(used);
                let map = splitter.finish().expect("the splitter said the map is complete");
                return Ok((map, rest));
            }
            Err(error) => return Err(refuse(StatusCode::BAD_REQUEST, error.to_string())),
        }
    }
    splitter.finish().map(|map| (map, Bytes::new())).map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))
}

/// The `POST /stream` handler.
async fn open_stream(
    State(events): State<mpsc::UnboundedSender<StreamServerEvent>>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    mut body: Body,
) -> Response {
    let only = match parse_filter(query.filter.as_deref()) {
        Ok(only) => only,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let peer = match parse_node_id(&headers) {
        Ok(peer) => peer,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let offered = match parse_extensions(&headers) {
        Ok(offered) => offered,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let (map, rest) = match tokio::time::timeout(POS_MAP_READ_TIMEOUT, read_pos_map(&mut body)).await {
        Ok(Ok(read)) => read,
        Ok(Err(refused)) => return refused,
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!("position map not received within {POS_MAP_READ_TIMEOUT:?}"),
            );
        }
    };

    let ext = offered.unwrap_or(Extensions::NONE);
    let id = DownstreamId(NEXT_DOWNSTREAM_ID.fetch_add(1, Ordering::Relaxed));
    let (frames, frames_rx) = mpsc::channel(FRAME_CHANNEL_CAPACITY);
    let conn = DownstreamConn { id, peer, ext, body: map, frames, only };
    if events.send(StreamServerEvent::Opened(conn)).is_err() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down".to_owned());
    }
    debug!(conn = id.0, %peer, ?ext, "replica stream opened");
    // From here on a Closed event is owed: the reader task is its only sender, and nothing
    // below awaits before the task exists.
    let (gone_tx, gone_rx) = oneshot::channel();
    let ack = ext.ack;
    tokio::spawn(read_rest(id, body, rest, ack, gone_rx, events));

    let mut response = Response::new(Body::new(FrameBody { frames: frames_rx, _gone: gone_tx }));
    if let Some(offered) = offered {
        let agreed = offered.intersect(Extensions::ALL).to_header_value();
        let value = HeaderValue::from_str(&agreed).expect("extension names are ASCII tokens");
        response.headers_mut().insert(HEADER_EXTENSIONS, value);
    }
    response
}

/// Forwards the request body after the position map as `Data` events, then sends the one
/// `Closed` event once the stream is over.
async fn read_rest(
    id: DownstreamId,
    mut body: Body,
    first: Bytes,
    ack: bool,
    mut response_gone: oneshot::Receiver<()>,
    events: mpsc::UnboundedSender<StreamServerEvent>,
) {
    // A send error below means the daemon is gone; nobody is left to tell, so stop quietly.
    let data = |bytes: Bytes| StreamServerEvent::Data { id, bytes: bytes.to_vec() };
    if !first.is_empty() && events.send(data(first)).is_err() {
        return;
    }
    let mut body_open = true;
    while body_open {
        tokio::select! {
            _ = &mut response_gone => break,
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    if let Ok(bytes) = frame.into_data()
                        && !bytes.is_empty()
                        && events.send(data(bytes)).is_err()
                    {
                        return;
                    }
                }
                Some(Err(error)) => {
                    debug!(conn = id.0, %error, "replica's request body failed");
                    break;
                }
                // A LiteFS replica ends its body right after the map and keeps reading; only a
                // replica that negotiated `ack` has promised to keep it open.
                None if ack => {
                    debug!(conn = id.0, "replica ended its request body");
                    break;
                }
                None => body_open = false,
            },
        }
    }
    if !body_open {
        let _ = response_gone.await;
    }
    debug!(conn = id.0, "replica stream closed");
    let _ = events.send(StreamServerEvent::Closed { id });
}

/// The response body: frames from the daemon's channel. Dropping it (the response finished,
/// the stream was reset, or the connection died) tells the reader task the stream is over.
struct FrameBody {
    frames: mpsc::Receiver<Bytes>,
    _gone: oneshot::Sender<()>,
}

impl hyper::body::Body for FrameBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.frames.poll_recv(cx).map(|next| next.map(|bytes| Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("test header"));
        }
        map
    }

    #[test]
    fn node_ids_are_sixteen_hex_digits_in_either_case() {
        assert_eq!(parse_node_id(&headers(&[(HEADER_NODE_ID, "00000000000000AB")])), Ok(NodeId(0xab)));
        assert_eq!(parse_node_id(&headers(&[(HEADER_NODE_ID, "00000000000000ab")])), Ok(NodeId(0xab)));
        for bad in ["", "AB", "+000000000000000A", "0x0000000000000A", "00000000000000AG", "00000000000000000A"] {
            assert!(parse_node_id(&headers(&[(HEADER_NODE_ID, bad)])).is_err(), "{bad:?} accepted");
        }
        assert!(parse_node_id(&HeaderMap::new()).is_err());
    }

    #[test]
    fn extensions_header_absent_differs_from_empty() {
        assert_eq!(parse_extensions(&HeaderMap::new()), Ok(None));
        assert_eq!(parse_extensions(&headers(&[(HEADER_EXTENSIONS, "")])), Ok(Some(Extensions::NONE)));
        assert_eq!(
            parse_extensions(&headers(&[(HEADER_EXTENSIONS, "epoch"), (HEADER_EXTENSIONS, "ack, zstd")])),
            Ok(Some(Extensions::ALL))
        );
    }
}
