//! Go's server timeouts, as LiteFS's proxy has them (`read-header-timeout`, `idle-timeout`,
//! `read-timeout`, `write-timeout`): a connection waits up to the idle timeout for the first
//! byte of its next request, then up to the header timeout for the rest of its head (a new
//! connection has the header timeout from the start); from that first byte the whole request
//! may take the read timeout, and from its head's end the answer may take the write timeout.
//! Zero is no limit; a zero header or idle timeout falls back to the read timeout, as in Go.
//! A timeout closes the connection (a read or write fails with `TimedOut`).
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

/// Go's four server timeouts; zero means none (a zero header or idle timeout: the read one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// How long a request's head may take to arrive, from its first byte (or the connection's
    /// start).
    pub read_header: Duration,
    /// How long a connection may wait for the first byte of its next request.
    pub idle: Duration,
    /// How long a whole request (head and body) may take, from its first byte.
    pub read: Duration,
    /// How long writing an answer may take, from the end of its request's head.
    pub write: Duration,
}

impl ConnTimeouts {
    fn header_limit(self) -> Option<Duration> {
        nonzero(self.read_header).or(nonzero(self.read))
    }

    fn idle_limit(self) -> Option<Duration> {
        nonzero(self.idle).or(nonzero(self.read))
    }
}

fn nonzero(limit: Duration) -> Option<Duration> {
    (!limit.is_zero()).then_some(limit)
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
    /// When the router got the latest request: its answer's write timeout runs from here
    /// until the next one.
    answer_since: Option<Instant>,
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
            answer_since: None,
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
        self.with(|a| {
            a.in_flight += 1;
            a.answer_since = Some(Instant::now());
        });
        RequestGuard(self.clone())
    }

    /// When a read still pending times out: the whole request's limit while one is in
    /// flight, else its head's, else the idle one; `None` where no limit applies.
    fn read_deadline(&self, timeouts: ConnTimeouts) -> Option<Instant> {
        self.with(|a| {
            if a.in_flight > 0 {
                return a.head_since.zip(nonzero(timeouts.read)).map(|(since, limit)| since + limit);
            }
            match a.head_since {
                Some(head) => timeouts.header_limit().map(|limit| head + limit),
                None => timeouts.idle_limit().map(|limit| a.idle_since + limit),
            }
        })
    }

    /// When a write times out: the latest request's head plus the write timeout, until the
    /// next request's head is read (hyper may drop a short body before writing it).
    fn write_deadline(&self, timeouts: ConnTimeouts) -> Option<Instant> {
        self.with(|a| a.answer_since.zip(nonzero(timeouts.write)).map(|(since, limit)| since + limit))
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

/// A connection's stream: a read fails with `TimedOut` when [`ConnActivity`]'s read deadline
/// passes with nothing read, a write when its write deadline has passed.
pub struct TimedStream<S> {
    inner: S,
    activity: ConnActivity,
    timeouts: ConnTimeouts,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
}

impl<S> TimedStream<S> {
    /// Watches `inner`'s reads for `activity` under `timeouts`.
    pub fn new(inner: S, activity: ConnActivity, timeouts: ConnTimeouts) -> TimedStream<S> {
        let far = Instant::now() + Duration::from_secs(86_400);
        let (read_timer, write_timer) =
            (Box::pin(tokio::time::sleep_until(far)), Box::pin(tokio::time::sleep_until(far)));
        TimedStream { inner, activity, timeouts, read_timer, write_timer }
    }

    /// Writes with `write` unless the answer's write timeout has passed; a write still
    /// pending fails when it passes.
    fn write_in_time<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        let deadline = self.activity.write_deadline(self.timeouts);
        let timed_out = || Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write timeout")));
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return timed_out();
        }
        let written = write(Pin::new(&mut self.inner), cx);
        let Some(deadline) = deadline.filter(|_| written.is_pending()) else { return written };
        if self.write_timer.deadline() != deadline {
            self.write_timer.as_mut().reset(deadline);
        }
        match self.write_timer.as_mut().poll(cx) {
            Poll::Ready(()) => timed_out(),
            Poll::Pending => Poll::Pending,
        }
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
                let Some(deadline) = self.activity.read_deadline(self.timeouts) else {
                    self.activity.with(|a| a.reader = Some(cx.waker().clone()));
                    return Poll::Pending;
                };
                if self.read_timer.deadline() != deadline {
                    self.read_timer.as_mut().reset(deadline);
                }
                match self.read_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle, header or read timeout")))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_in_time(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_in_time(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
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
    const IDLE: Duration = Duration::from_millis(3000);
    const STREAMED_FOR: Duration = Duration::from_millis(4000);

    /// A server with header and idle timeouts only (see [`server_with`]).
    async fn server() -> String {
        server_with(ConnTimeouts { read_header: HEADER, idle: IDLE, read: Duration::ZERO, write: Duration::ZERO }).await
    }

    /// A server under `timeouts`, answering `GET /` at once, `GET /slow` with a body streamed
    /// over [`STREAMED_FOR`], `GET /late` after [`STREAMED_FOR`], and `POST /` once it has
    /// read the request's body; its address.
    async fn server_with(timeouts: ConnTimeouts) -> String {
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
        let late = || async {
            tokio::time::sleep(STREAMED_FOR).await;
            "late"
        };
        let router = Router::new()
            .route(
                "/",
                axum::routing::get(|| async { "ok" }).post(|body: Bytes| async move { format!("{}", body.len()) }),
            )
            .route("/slow", axum::routing::get(slow))
            .route("/late", axum::routing::get(late));
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

    /// How long until the server closes `conn` (bounded: 10 s), which it must do without
    /// sending anything first.
    async fn closed_after(conn: &mut TcpStream) -> Duration {
        let (waited, sent) = ended_after(conn).await;
        assert!(sent.is_empty(), "the server sent {:?} before closing", String::from_utf8_lossy(&sent));
        waited
    }

    /// How long until the server ends `conn` (bounded: 10 s), and what it sent meanwhile.
    async fn ended_after(conn: &mut TcpStream) -> (Duration, Vec<u8>) {
        let since = StdInstant::now();
        let mut sent = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut sent))
            .await
            .expect("the connection was not closed")
            .ok();
        (since.elapsed(), sent)
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

    #[tokio::test]
    async fn a_request_body_slower_than_the_read_timeout_closes_the_connection() {
        let read = Duration::from_millis(600);
        let timeouts = ConnTimeouts { read_header: HEADER, idle: IDLE, read, write: Duration::ZERO };
        let mut conn = TcpStream::connect(server_with(timeouts).await).await.expect("connect");
        conn.write_all(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nten bytes.").await.expect("head");
        // The router may still answer that the body failed (as Go's handler would see an
        // error); the connection ends either way, and the body never counts as read.
        let (waited, sent) = ended_after(&mut conn).await;
        assert!(waited >= read / 2 && waited < IDLE, "ended after {waited:?}, read timeout {read:?}");
        assert!(!String::from_utf8_lossy(&sent).contains("200 OK"), "{:?}", String::from_utf8_lossy(&sent));
    }

    #[tokio::test]
    async fn an_answer_later_than_the_write_timeout_is_not_sent() {
        let write = Duration::from_millis(400);
        let timeouts = ConnTimeouts { read_header: HEADER, idle: IDLE, read: Duration::ZERO, write };
        let mut conn = TcpStream::connect(server_with(timeouts).await).await.expect("connect");
        // In time: answered.
        get(&mut conn, "/", b"\r\n\r\nok").await;
        conn.write_all(b"GET /late HTTP/1.1\r\nHost: test\r\n\r\n").await.expect("request");
        let waited = closed_after(&mut conn).await;
        assert!(waited >= STREAMED_FOR / 2, "closed after {waited:?}, before the answer was due");
    }
}
