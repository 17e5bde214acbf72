//! The replica's side of `POST /stream`: opens one HTTP/2 (prior knowledge) connection per
//! stream to the primary, sends the position map, and hands the daemon the response body as a
//! channel of bytes and the rest of the request body as a channel it writes acknowledgements
//! into. What to send and what the received bytes mean is the core `Node`'s business.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use replite_core::NodeId;
use replite_core::stream::{Extensions, HEADER_EXTENSIONS, HEADER_NODE_ID};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::debug;

use crate::http::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

/// How long opening a stream may take: TCP connect, the HTTP/2 handshake and the response
/// head. A primary answers the head before it sends any history, so even a busy one answers
/// in well under a second; 5 s lets the daemon move on (retry, look for another primary)
/// when a host is down or black-holed instead of waiting on the kernel's minutes-long SYN
/// retries.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Received chunks buffered before the connection stops reading (HTTP/2 flow control then
/// stops the primary). A chunk is one HTTP/2 DATA frame, at most [`MAX_FRAME_BYTES`] and
/// usually one stream chunk (64 KiB) from a replite primary, so this is a few MiB: enough to
/// keep a fast link busy while the daemon applies a file.
pub const INCOMING_CHANNEL_CAPACITY: usize = 64;

/// Largest HTTP/2 frame this end accepts (SETTINGS_MAX_FRAME_SIZE). The protocol's default,
/// 16 KiB, cuts every 64 KiB stream chunk of a snapshot into four DATA frames, and each frame
/// travels alone through the upstream task and the driver loop: four times the hand-offs
/// (decision 0010). 128 KiB takes a whole chunk, and what a primary writes at once, in one.
pub const MAX_FRAME_BYTES: u32 = 128 << 10;

/// Chunks the daemon may queue for the request body before `send` waits. Acknowledgements are
/// a few dozen bytes each and a replica sends one per LTX file, so this never fills unless the
/// connection is stuck, and then waiting is right.
pub const OUTGOING_CHANNEL_CAPACITY: usize = 64;

/// How much of a refusal's body is kept for the error message: enough for any reason a
/// primary gives, never an unbounded read of a misbehaving server's answer.
pub const ERROR_BODY_MAX_BYTES: usize = 1024;

/// An open stream to the primary.
#[derive(Debug)]
pub struct UpstreamConn {
    /// The extensions the primary agreed to (its `Replite-Extensions` answer; none if it sent
    /// no such header, as a LiteFS primary does).
    pub ext: Extensions,
    /// The response body (frames from the primary) in order, cut wherever the transport cut
    /// it. `None` after the primary ended the stream; an `Err` (then `None`) if it broke.
    pub incoming: mpsc::Receiver<Result<Bytes, StreamError>>,
    /// Appended to the request body (acknowledgement frames). Dropping it ends the request
    /// body; the response keeps flowing.
    pub outgoing: mpsc::Sender<Bytes>,
}

/// Opening a stream failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The base URL is not an `http://host[:port]` URL.
    #[error("invalid primary URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection, handshake and response head within [`CONNECT_TIMEOUT`].
    #[error("opening a stream to {url} timed out after {timeout:?}")]
    Timeout {
        /// The stream URL.
        url: String,
        /// The limit that passed.
        timeout: Duration,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The stream URL.
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake with {url} failed: {source}")]
    Handshake {
        /// The stream URL.
        url: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The request failed before a response head arrived.
    #[error("stream request to {url} failed: {source}")]
    Request {
        /// The stream URL.
        url: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The primary answered with something other than 200.
    #[error("{url} refused the stream with {status}: {body}")]
    Status {
        /// The stream URL.
        url: String,
        /// The status it answered.
        status: StatusCode,
        /// The start of its body (at most [`ERROR_BODY_MAX_BYTES`], lossily decoded).
        body: String,
    },
    /// The primary's `Replite-Extensions` answer is not text.
    #[error("{url} answered an invalid {HEADER_EXTENSIONS} header")]
    InvalidExtensions {
        /// The stream URL.
        url: String,
    },
}

/// An open stream broke.
#[derive(Debug, Error)]
pub enum StreamError {
    /// Reading the response body failed: the connection was reset or lost, or the primary
    /// stopped answering keep-alive pings.
    #[error("stream from {url} broke: {source}")]
    Receive {
        /// The stream URL.
        url: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
}

/// Opens a stream to the primary at `base_url` (its advertise URL, such as
/// `http://127.0.0.1:20202`) over a new TCP connection, sending `me` as `Litefs-Id`, the
/// extensions `offered` (no header when none, as LiteFS sends), and `body` (the encoded
/// position map) as the start of the request body.
pub async fn connect(
    base_url: &str,
    me: NodeId,
    offered: Extensions,
    body: Vec<u8>,
) -> Result<UpstreamConn, ConnectError> {
    connect_via(base_url, me, offered, body, |addr| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        // Frames and acknowledgements are small and latency matters more than packet count.
        tcp.set_nodelay(true)?;
        Ok(tcp)
    })
    .await
}

/// [`connect`] over a connection the caller already opened (any transport, such as a
/// simulated network). [`CONNECT_TIMEOUT`] covers the handshake and the response head.
pub async fn connect_with<IO>(
    io: IO,
    base_url: &str,
    me: NodeId,
    offered: Extensions,
    body: Vec<u8>,
) -> Result<UpstreamConn, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    connect_via(base_url, me, offered, body, |_| std::future::ready(Ok(io))).await
}

/// [`connect`] with the caller's dialer: `dial` gets `host:port` from `base_url` and opens the
/// connection; [`CONNECT_TIMEOUT`] covers the dial too.
pub async fn connect_via<IO, F, Fut>(
    base_url: &str,
    me: NodeId,
    offered: Extensions,
    body: Vec<u8>,
    dial: F,
) -> Result<UpstreamConn, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = io::Result<IO>>,
{
    let target = Target::parse(base_url)?;
    let url = target.uri.to_string();
    let open = async {
        let io =
            dial(target.addr.clone()).await.map_err(|source| ConnectError::Connect { url: url.clone(), source })?;
        open_stream(io, &target, me, offered, body).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { url, timeout: CONNECT_TIMEOUT }),
    }
}

/// Where a stream request goes.
struct Target {
    /// `http://host:port/…/stream`.
    uri: Uri,
    /// `host:port` to dial.
    addr: String,
}

impl Target {
    fn parse(base_url: &str) -> Result<Target, ConnectError> {
        let invalid = |reason: &str| ConnectError::InvalidUrl { url: base_url.to_owned(), reason: reason.to_owned() };
        let base: Uri = base_url.parse().map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        if base.scheme_str() != Some("http") {
            return Err(invalid("the stream is HTTP/2 cleartext, so the scheme must be http"));
        }
        if base.query().is_some() {
            return Err(invalid("an advertise URL has no query"));
        }
        let authority = base.authority().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user information is not supported"));
        }
        let addr = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
        let uri = format!("http://{authority}{}/stream", base.path().trim_end_matches('/'));
        let uri = uri.parse().map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        Ok(Target { uri, addr })
    }
}

/// Handshakes, sends the request, and waits for the response head.
async fn open_stream<IO>(
    io: IO,
    target: &Target,
    me: NodeId,
    offered: Extensions,
    body: Vec<u8>,
) -> Result<UpstreamConn, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let url = target.uri.to_string();
    let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Pings detect a primary that vanished without a FIN (partition, dead host): without
        // them a silent connection would look like an idle one forever.
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .max_frame_size(MAX_FRAME_BYTES)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { url: url.clone(), source })?;
    let conn_url = url.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(url = conn_url, %error, "stream connection ended with an error");
        }
    });

    let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_CHANNEL_CAPACITY);
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(target.uri.clone())
        .header(HEADER_NODE_ID, me.to_string())
        .body(RequestBody { first: Some(Bytes::from(body)), rest: outgoing_rx })
        .expect("method, URI and node id header are valid");
    if offered != Extensions::NONE {
        let value = HeaderValue::from_str(&offered.to_header_value()).expect("extension names are ASCII tokens");
        request.headers_mut().insert(HEADER_EXTENSIONS, value);
    }
    let response =
        sender.send_request(request).await.map_err(|source| ConnectError::Request { url: url.clone(), source })?;

    let (head, mut body) = response.into_parts();
    if head.status != StatusCode::OK {
        let body = read_error_body(&mut body).await;
        return Err(ConnectError::Status { url, status: head.status, body });
    }
    let ext = match head.headers.get(HEADER_EXTENSIONS) {
        None => Extensions::NONE,
        Some(value) => match value.to_str() {
            Ok(text) => Extensions::from_header_value(text),
            Err(_) => return Err(ConnectError::InvalidExtensions { url }),
        },
    };
    let (incoming_tx, incoming) = mpsc::channel(INCOMING_CHANNEL_CAPACITY);
    tokio::spawn(async move {
        // Holding the sender keeps hyper from shutting the connection down under the stream.
        let _sender = sender;
        pump_response(body, incoming_tx, url).await;
    });
    Ok(UpstreamConn { ext, incoming, outgoing })
}

/// The start of a refusal's body, for the error message.
async fn read_error_body(body: &mut Incoming) -> String {
    let mut kept = Vec::new();
    while kept.len() < ERROR_BODY_MAX_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    kept.extend_from_slice(&data[..data.len().min(ERROR_BODY_MAX_BYTES - kept.len())]);
                }
            }
            // The status is the error; a body cut short only shortens the message.
            Some(Err(_)) | None => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Moves the response body into the daemon's channel, waiting while it is full.
async fn pump_response(mut body: Incoming, incoming: mpsc::Sender<Result<Bytes, StreamError>>, url: String) {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // The daemon dropped `incoming`: dropping the body resets the stream.
            () = incoming.closed() => return,
        };
        let item = match frame {
            None => return,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => Ok(bytes),
                Err(_) => continue, // trailers carry nothing on this stream
            },
            Some(Err(source)) => Err(StreamError::Receive { url: url.clone(), source }),
        };
        let failed = item.is_err();
        // A send error means the daemon dropped `incoming`: dropping the body resets the stream.
        if incoming.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// The request body: the position map, then whatever the daemon sends until it drops the
/// sender.
struct RequestBody {
    first: Option<Bytes>,
    rest: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        self.rest.poll_recv(cx).map(|next| next.map(|bytes| Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<(String, String), String> {
        Target::parse(url).map(|t| (t.uri.to_string(), t.addr)).map_err(|e| e.to_string())
    }

    #[test]
    fn advertise_urls_become_a_stream_uri_and_a_dial_address() {
        let ok = |uri: &str, addr: &str| Ok((uri.to_owned(), addr.to_owned()));
        assert_eq!(target("http://127.0.0.1:20202"), ok("http://127.0.0.1:20202/stream", "127.0.0.1:20202"));
        assert_eq!(target("http://primary:20202/"), ok("http://primary:20202/stream", "primary:20202"));
        assert_eq!(target("http://primary"), ok("http://primary/stream", "primary:80"));
        assert_eq!(target("http://[::1]:9/litefs"), ok("http://[::1]:9/litefs/stream", "[::1]:9"));
    }

    #[test]
    fn urls_that_cannot_carry_a_cleartext_stream_are_refused() {
        for bad in ["https://primary:20202", "primary:20202", "http://u:p@primary:1", "http://p:1/?x=1", "", "http://"]
        {
            assert!(
                matches!(Target::parse(bad), Err(ConnectError::InvalidUrl { ref url, .. }) if url == bad),
                "{bad:?} accepted"
            );
        }
    }
}
