//! Go's server timeouts between requests, as LiteFS's proxy has them (`read-header-timeout`,
//! `idle-timeout`): a connection waits up to the idle timeout for the first byte of its next
//! request, then up to the header timeout for the rest of it; a new connection has the header
//! timeout from the start. No timeout runs while a request is being answered.
//!
//! hyper's own header-read timer starts as soon as a connection is ready for its next request,
//! so an idle keep-alive connection would be closed after the header timeout (10 s by
//! default) instead of the idle one (30 s). Here the connection's reads are watched
//! ([`TimedStream`]), and requests are counted from the moment the router gets one until its
//! response body is dropped ([`track_requests`]), so that a long response never counts as
//! idle. An HTTP/2 connection is watched the same way: a frame that begins no request (a
//! ping) counts as a request's first byte, so pings alone keep it open only for the header
//! timeout, where Go's HTTP/2 server waits the idle one.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The two timeouts; zero means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// How long a request's head may take to arrive, from its first byte (or the connection's
    /// start).
    pub read_header: Duration,
    /// How long a connection may wait for the first byte of its next request.
    pub idle: Duration,
}

/// One connection's requests, shared by its stream and its router.
#[derive(Debug, Clone)]
pub struct ConnActivity(Arc<Mutex<Activity>>);

#[derive(Debug)]
struct Activity {
    /// Requests the router holds, or whose response bodies are still being sent.
    in_flight: usize,
    /// When the connection last became idle.
    idle_since: Instant,
    /// When the next request's first byte arrived (the connection's start, for the first).
    head_since: Option<Instant>,
    /// The connection's reader, waiting with no deadline while requests were in flight: woken
    /// when the last one ends, so that its idle deadline starts.
    reader: Option<Waker>,
}

impl ConnActivity {
    /// A connection accepted now.
    pub fn new() -> ConnActivity {
        let now = Instant::now();
        ConnActivity(Arc::new(Mutex::new(Activity {
            in_flight: 0,
            idle_since: now,
            head_since: Some(now),
            reader: None,
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Activity) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn bytes_arrived(&self) {
        self.with(|a| {
            if a.in_flight == 0 && a.head_since.is_none() {
                a.head_since = Some(Instant::now());
            }
        });
    }

    fn request_started(&self) -> RequestGuard {
        self.with(|a| a.in_flight += 1);
        RequestGuard(self.clone())
    }

    /// When the connection times out if nothing more arrives; `None` while a request is in
    /// flight or the timeout that applies is off.
    fn deadline(&self, timeouts: ConnTimeouts) -> Option<Instant> {
        self.with(|a| {
            let (since, limit) = match a.head_since {
                _ if a.in_flight > 0 => return None,
                Some(head) => (head, timeouts.read_header),
                None => (a.idle_since, timeouts.idle),
            };
            (!limit.is_zero()).then(|| since + limit)
        })
    }
}

impl Default for ConnActivity {
    fn default() -> Self {
        ConnActivity::new()
    }
}

/// Held from the router's receipt of a request until its response body is dropped.
#[derive(Debug)]
struct RequestGuard(ConnActivity);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let reader = self.0.with(|a| {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight > 0 {
                return None;
            }
            a.idle_since = Instant::now();
            a.head_since = None;
            a.reader.take()
        });
        if let Some(reader) = reader {
            reader.wake();
        }
    }
}

/// Router middleware (`axum::middleware::from_fn`) counting `activity`'s requests.
pub async fn track_requests(activity: ConnActivity, request: Request, next: Next) -> Response {
    let guard = activity.request_started();
    let response = next.run(request).await;
    response.map(|inner| Body::new(GuardedBody { inner, _guard: guard }))
}

/// A response body holding its request's [`RequestGuard`]: a streamed answer is not
/// idleness. Its length and end pass through unchanged (hyper sends `Content-Length` from
/// them).
struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's stream, closed (a `TimedOut` read error) when [`ConnActivity::deadline`]
/// passes with nothing read.
pub struct TimedStream<S> {
    inner: S,
    activity: ConnActivity,
    timeouts: ConnTimeouts,
    timer: Pin<Box<Sleep>>,
}

impl<S> TimedStream<S> {
    /// Watches `inner`'s reads for `activity` under `timeouts`.
    pub fn new(inner: S, activity: ConnActivity, timeouts: ConnTimeouts) -> TimedStream<S> {
        let far = Instant::now() + Duration::from_secs(86_400);
        TimedStream { inner, activity, timeouts, timer: Box::pin(tokio::time::sleep_until(far)) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.activity.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = self.activity.deadline(self.timeouts) else {
                    self.activity.with(|a| a.reader = Some(cx.waker().clone()));
                    return Poll::Pending;
                };
                if self.timer.deadline() != deadline {
                    self.timer.as_mut().reset(deadline);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle or header timeout")))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const HEADER: Duration = Duration::from_millis(300);
    const IDLE: Duration = Duration::from_millis(1200);
    const STREAMED_FOR: Duration = Duration::from_millis(2000);

    /// A server with both timeouts, answering `/` at once and `/slow` with a body streamed
    /// over [`STREAMED_FOR`]; its address.
    async fn server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let slow = || async {
            let chunks = futures_util::stream::unfold(0u32, |n| async move {
                if n == 4 {
                    return None;
                }
                tokio::time::sleep(STREAMED_FOR / 4).await;
                Some((Ok::<_, std::convert::Infallible>(Bytes::from_static(b"chunk ")), n + 1))
            });
            Body::from_stream(chunks)
        };
        let router =
            Router::new().route("/", axum::routing::get(|| async { "ok" })).route("/slow", axum::routing::get(slow));
        let timeouts = ConnTimeouts { read_header: HEADER, idle: IDLE };
        tokio::spawn(crate::http::serve_tcp(listener, router, std::future::pending(), Some(timeouts)));
        addr
    }

    /// Sends a GET of `path` and reads the answer up to the end of its body (`ends_with`).
    async fn get(conn: &mut TcpStream, path: &str, ends_with: &[u8]) -> Vec<u8> {
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await.expect("request");
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(ends_with) {
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                .await
                .expect("no answer within 10 s")
                .expect("read the answer");
            assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&answer));
        answer
    }

    /// How long until the server closes `conn` (bounded: 10 s).
    async fn closed_after(conn: &mut TcpStream) -> Duration {
        let since = StdInstant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("the connection was not closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "the server sent more instead of closing");
        since.elapsed()
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_waits_the_idle_timeout_not_the_header_one() {
        let mut conn = TcpStream::connect(server().await).await.expect("connect");
        get(&mut conn, "/", b"\r\n\r\nok").await;
        tokio::time::sleep(HEADER * 2).await;
        // Still open past the header timeout: another request is answered.
        get(&mut conn, "/", b"\r\n\r\nok").await;
        let waited = closed_after(&mut conn).await;
        assert!(waited >= IDLE - HEADER && waited < IDLE * 3, "closed after {waited:?}, idle timeout {IDLE:?}");
    }

    #[tokio::test]
    async fn a_request_begun_but_not_finished_gets_the_header_timeout() {
        let mut conn = TcpStream::connect(server().await).await.expect("connect");
        get(&mut conn, "/", b"\r\n\r\nok").await;
        conn.write_all(b"GET / HTTP/1.1\r\n").await.expect("half a head");
        let waited = closed_after(&mut conn).await;
        assert!(waited >= HEADER / 2 && waited < IDLE, "closed after {waited:?}, header timeout {HEADER:?}");
    }

    #[tokio::test]
    async fn a_new_connection_that_sends_nothing_gets_the_header_timeout() {
        let mut conn = TcpStream::connect(server().await).await.expect("connect");
        let waited = closed_after(&mut conn).await;
        assert!(waited >= HEADER / 2 && waited < IDLE, "closed after {waited:?}, header timeout {HEADER:?}");
    }

    #[tokio::test]
    async fn a_response_streamed_for_longer_than_the_idle_timeout_is_not_cut() {
        let mut conn = TcpStream::connect(server().await).await.expect("connect");
        let started = StdInstant::now();
        let answer = get(&mut conn, "/slow", b"chunk \r\n0\r\n\r\n").await;
        assert!(started.elapsed() >= STREAMED_FOR.min(IDLE), "the body was not streamed slowly");
        assert_eq!(String::from_utf8_lossy(&answer).matches("chunk ").count(), 4, "the whole body arrived");
        // And the connection is idle from the body's end on.
        let waited = closed_after(&mut conn).await;
        assert!(waited >= IDLE - HEADER, "closed after {waited:?}, idle timeout {IDLE:?}");
    }
}
