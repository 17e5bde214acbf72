//! The proxy's HTTP/1.1 client: to the application (which may still be starting, so a
//! refused connection is retried for a while, as LiteFS does) and to the primary's proxy.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName};
use axum::http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// Longest a connection attempt is retried while it is refused (LiteFS's dial timeout).
pub const TARGET_PATIENCE: Duration = Duration::from_secs(30);

/// Pause between attempts at a refused connection.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A pooled client; its connector retries refused connections for `patience`.
pub type ProxyClient = Client<PatientConnector, Body>;

/// A client whose connections are retried while refused for up to `patience`; one attempt
/// that gets no answer at all (a vanished host) gives up after `connect_timeout`.
#[must_use]
pub fn client(patience: Duration, connect_timeout: Duration) -> ProxyClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new()).build(PatientConnector { inner: http, patience })
}

/// `HttpConnector`, retrying a refused connection until its patience runs out.
#[derive(Clone)]
pub struct PatientConnector {
    inner: HttpConnector,
    patience: Duration,
}

impl tower_service::Service<Uri> for PatientConnector {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut inner = self.inner.clone();
        let deadline = Instant::now() + self.patience;
        Box::pin(async move {
            loop {
                match inner.call(uri.clone()).await {
                    Err(e) if is_refused(&e) && Instant::now() + RETRY_PAUSE < deadline => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    other => return other,
                }
            }
        })
    }
}

fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Headers that describe one connection, not the message (RFC 9110, 7.6.1): never passed on.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names. `Upgrade`
/// goes too: the proxy does not carry upgraded connections (WebSockets), as LiteFS's does not.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named).chain(std::iter::once(&header::UPGRADE)) {
        headers.remove(name);
    }
}

/// `request` re-addressed to `base` (`http://host:port`), keeping its path, query, method,
/// body and end-to-end headers. The client's `Host` is kept (an HTTP/2 request's authority
/// becomes one), so the application sees the name the client used.
pub fn readdress(request: Request<Body>, base: &str) -> Result<Request<Body>, axum::http::Error> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{base}{path}").parse()?;
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = authority.as_str().parse()
    {
        parts.headers.insert(header::HOST, value);
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Sends `request` and turns the answer into one the proxy can return.
pub async fn send(
    client: &ProxyClient,
    request: Request<Body>,
) -> Result<Response<Body>, hyper_util::client::legacy::Error> {
    let response = client.request(request).await?;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn connection_scoped_headers_are_dropped_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "cookie"]);
    }

    #[test]
    fn a_request_is_readdressed_with_its_path_query_and_host() {
        let request = Request::builder()
            .method("POST")
            .uri("/rows?x=1")
            .header(header::HOST, "app.example")
            .body(Body::empty())
            .expect("request");
        let out = readdress(request, "http://127.0.0.1:8081").expect("readdressed");
        assert_eq!(out.uri(), "http://127.0.0.1:8081/rows?x=1");
        assert_eq!(out.headers()[header::HOST], "app.example");
        assert_eq!(out.method(), "POST");

        // HTTP/2 requests carry the host in the URI instead.
        let request = Request::builder()
            .uri("http://app.example/a")
            .version(Version::HTTP_2)
            .body(Body::empty())
            .expect("request");
        let out = readdress(request, "http://127.0.0.1:8081").expect("readdressed");
        assert_eq!(out.uri(), "http://127.0.0.1:8081/a");
        assert_eq!(out.headers()[header::HOST], "app.example");
        assert_eq!(out.version(), Version::HTTP_11);
    }
}
