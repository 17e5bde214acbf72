//! The HTTP proxy in front of the application (`proxy.*`, LiteFS's): it gives clients
//! read-your-writes consistency on replicas and sends writes to the primary.
//!
//! - A write (any method but GET and HEAD, or a path in `always-forward`) on the primary goes
//!   to the application, and the answer carries a `__txid` cookie: the tracked database's
//!   TXID after it. On a replica the write goes to the primary, by forwarding it to the
//!   primary's proxy (replite's default) or, on Fly.io, with LiteFS's `fly-replay` header.
//! - A read that carries the cookie waits (up to 5 s) until this node has that TXID.
//! - `passthrough` paths go straight to the application; `GET /litefs/health` answers 503
//!   when this replica lags more than `max-lag`.

mod paths;
mod txid_cookie;
mod upstream;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use paths::PathPattern;

use crate::config::{ProxyConfig, WriteForwarding};
use crate::driver::Status;

/// Longest a read waits for this node to reach the TXID in its cookie (LiteFS's).
pub const TXID_WAIT: Duration = Duration::from_secs(5);

/// How long the `__txid` cookie lives in the client (LiteFS's).
pub const COOKIE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// How long a replica retries a refused connection to the primary's proxy.
const PRIMARY_CONNECT_PATIENCE: Duration = Duration::from_secs(1);

/// How long one connection attempt to the primary's proxy may go unanswered (a vanished
/// host): a forwarded write fails after this rather than hang.
const PRIMARY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The header a forwarded write carries: the forwarding node's id. A node that is not the
/// primary answers such a request with 503 instead of forwarding it again.
pub const FORWARDED_BY: &str = "replite-forwarded-by";

/// How a replica hands a write to the primary, once `auto` is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// Send it to the primary's proxy and relay the answer.
    Forward,
    /// Answer with `fly-replay: instance=<primary's hostname>` (Fly.io's edge replays it).
    FlyReplay,
}

impl Forwarding {
    /// `setting`, with `auto` read as `fly-replay` when `on_fly` (LiteFS's only way).
    #[must_use]
    pub fn resolve(setting: WriteForwarding, on_fly: bool) -> Forwarding {
        match setting {
            WriteForwarding::Forward => Forwarding::Forward,
            WriteForwarding::FlyReplay => Forwarding::FlyReplay,
            WriteForwarding::Auto if on_fly => Forwarding::FlyReplay,
            WriteForwarding::Auto => Forwarding::Forward,
        }
    }
}

/// What the proxy needs, from `proxy.*` and the daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The application's `host:port`.
    pub target: String,
    /// The database whose TXID the cookie carries.
    pub db: String,
    /// Paths sent straight to the application.
    pub passthrough: Vec<PathPattern>,
    /// Paths whose reads count as writes.
    pub always_forward: Vec<PathPattern>,
    /// Lag above which `/litefs/health` answers 503 (zero: never).
    pub max_lag: Duration,
    /// How long a write waits for a primary to be known.
    pub primary_redirect_timeout: Duration,
    /// How long a read waits for its cookie's TXID.
    pub txid_wait: Duration,
    /// How long a refused connection to the application is retried (it may be starting).
    pub target_patience: Duration,
    /// How writes on a replica reach the primary.
    pub forwarding: Forwarding,
    /// Longest a client may take to send a request's headers, from their first byte or the
    /// connection's start (`proxy.read-header-timeout`; zero: the read timeout).
    pub read_header_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request (`proxy.idle-timeout`;
    /// zero: the read timeout).
    pub idle_timeout: Duration,
    /// Longest a whole request may take to arrive (`proxy.read-timeout`; zero: no limit).
    pub read_timeout: Duration,
    /// Longest an answer may take to write, from its request's head (`proxy.write-timeout`;
    /// zero: no limit).
    pub write_timeout: Duration,
    /// Log every request at INFO instead of DEBUG.
    pub debug: bool,
    /// This node's id, for [`FORWARDED_BY`].
    pub node_id: String,
}

impl Settings {
    /// Settings from `proxy.*`; `on_fly` settles `write-forwarding: auto`.
    #[must_use]
    pub fn from_config(config: &ProxyConfig, node_id: String, on_fly: bool) -> Settings {
        Settings {
            target: config.target.clone(),
            db: config.db.clone(),
            passthrough: config.passthrough.iter().map(|p| PathPattern::new(p)).collect(),
            always_forward: config.always_forward.iter().map(|p| PathPattern::new(p)).collect(),
            max_lag: config.max_lag,
            primary_redirect_timeout: config.primary_redirect_timeout,
            txid_wait: TXID_WAIT,
            target_patience: upstream::TARGET_PATIENCE,
            forwarding: Forwarding::resolve(config.write_forwarding, on_fly),
            read_header_timeout: config.read_header_timeout,
            idle_timeout: config.idle_timeout,
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            debug: config.debug,
            node_id,
        }
    }
}

/// The URL other nodes reach this proxy at: the listener's port on the host of this node's
/// advertise URL, unless the proxy was bound to a specific address.
#[must_use]
pub fn public_url(bound: std::net::SocketAddr, advertise_url: &str) -> String {
    let host = if bound.ip().is_unspecified() {
        advertise_url.parse::<axum::http::Uri>().ok().and_then(|u| u.host().map(str::to_owned))
    } else {
        None
    };
    match host {
        Some(host) => format!("http://{host}:{}", bound.port()),
        None => format!("http://{bound}"),
    }
}

/// The proxy's routes: every request goes to [`handle`].
pub fn routes(settings: Settings, status: watch::Receiver<Status>) -> Router {
    let proxy = Proxy {
        target_base: format!("http://{}", settings.target),
        to_target: upstream::client(settings.target_patience, upstream::TARGET_PATIENCE),
        to_primary: upstream::client(PRIMARY_CONNECT_PATIENCE, PRIMARY_CONNECT_TIMEOUT),
        settings,
        status,
        primary_proxy: Mutex::new(None),
    };
    Router::new().fallback(handle).with_state(Arc::new(proxy))
}

struct Proxy {
    settings: Settings,
    target_base: String,
    status: watch::Receiver<Status>,
    to_target: upstream::ProxyClient,
    to_primary: upstream::ProxyClient,
    /// The primary's advertise URL and its proxy's URL, as last asked.
    primary_proxy: Mutex<Option<(String, String)>>,
}

macro_rules! trace_request {
    ($proxy:expr, $($arg:tt)+) => {
        if $proxy.settings.debug { info!($($arg)+) } else { debug!($($arg)+) }
    };
}

async fn handle(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if paths::any_matches(&proxy.settings.passthrough, &path) {
        trace_request!(proxy, %method, %path, "proxy: passthrough, to the application");
        return proxy.to_target(request, false).await;
    }
    if method == Method::GET && path == "/litefs/health" {
        return proxy.health();
    }
    let read =
        (method == Method::GET || method == Method::HEAD) && !paths::any_matches(&proxy.settings.always_forward, &path);
    if read { proxy.serve_read(request).await } else { proxy.serve_write(request).await }
}

/// A plain-text answer, as Go's `http.Error` writes it.
fn plain(status: StatusCode, text: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{text}\n")).into_response()
}

impl Proxy {
    fn health(&self) -> Response {
        let lag = Duration::from_millis(self.status.borrow().max_lag_ms());
        if !self.settings.max_lag.is_zero() && lag > self.settings.max_lag {
            debug!(?lag, max = ?self.settings.max_lag, "proxy: health check failed, replication lag too high");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "Replication lag exceeded");
        }
        (StatusCode::OK, "OK\n").into_response()
    }

    /// The tracked database's TXID here, if it exists.
    fn txid(status: &Status, db: &str) -> Option<u64> {
        status.databases.iter().find(|d| d.name == db).map(|d| d.txid)
    }

    async fn serve_read(&self, request: Request) -> Response {
        let Some(wanted) = txid_cookie::from_request(request.headers()) else {
            trace_request!(self, method = %request.method(), path = %request.uri().path(), "proxy: no client txid, to the application");
            return self.to_target(request, false).await;
        };
        let db = self.settings.db.as_str();
        if Self::txid(&self.status.borrow(), db).is_none() {
            trace_request!(self, %db, "proxy: no such database yet, to the application");
            return self.to_target(request, false).await;
        }
        let mut status = self.status.clone();
        let reached = tokio::time::timeout(
            self.settings.txid_wait,
            status.wait_for(|s| Self::txid(s, db).is_some_and(|have| have >= wanted)),
        )
        .await
        .map(|waited| waited.map(drop));
        match reached {
            Ok(Ok(_)) => {
                trace_request!(self, %db, wanted = %format_args!("{wanted:016x}"), "proxy: database caught up, to the application");
                self.to_target(request, false).await
            }
            Ok(Err(_)) => plain(StatusCode::SERVICE_UNAVAILABLE, "Proxy error: the node is shutting down"),
            Err(_) => {
                let have = Self::txid(&self.status.borrow(), db).unwrap_or(0);
                debug!(%db, have = %format_args!("{have:016x}"), wanted = %format_args!("{wanted:016x}"), "proxy: read timed out waiting for the client's txid");
                plain(StatusCode::GATEWAY_TIMEOUT, "Proxy timeout")
            }
        }
    }

    async fn serve_write(&self, request: Request) -> Response {
        let forwarded_by = request.headers().get(FORWARDED_BY).cloned();
        let mut status = self.status.clone();
        let known = tokio::time::timeout(
            self.settings.primary_redirect_timeout,
            status.wait_for(|s| s.role == "primary" || s.primary.is_some()),
        )
        .await
        .map(|waited| waited.map(|s| s.clone()));
        let status = match known {
            Ok(Ok(s)) => s,
            _ => return plain(StatusCode::SERVICE_UNAVAILABLE, "Proxy error: no primary available"),
        };
        if status.role == "primary" {
            trace_request!(self, method = %request.method(), path = %request.uri().path(), "proxy: node is primary, to the application");
            return self.to_target(request, true).await;
        }
        let Some(primary) = status.primary else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "Proxy error: no primary available");
        };
        if let Some(from) = forwarded_by {
            // Forwarded to a node that was primary a moment ago: never a second hop.
            debug!(from = ?from, "proxy: a forwarded write reached a node that is not the primary");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "Proxy error: this node is no longer the primary");
        }
        match self.settings.forwarding {
            Forwarding::FlyReplay => {
                trace_request!(self, primary = %primary.hostname, "proxy: node is a replica, replaying on the primary with fly-replay");
                let mut response = StatusCode::OK.into_response();
                match HeaderValue::from_str(&format!("instance={}", primary.hostname)) {
                    Ok(value) => {
                        response.headers_mut().insert("fly-replay", value);
                        response
                    }
                    Err(_) => {
                        plain(StatusCode::BAD_GATEWAY, "Proxy error: the primary's hostname is not a header value")
                    }
                }
            }
            Forwarding::Forward => self.forward_to_primary(request, &primary.advertise_url).await,
        }
    }

    /// Sends a write to the primary's proxy and relays its answer (cookie included).
    async fn forward_to_primary(&self, request: Request, advertise_url: &str) -> Response {
        let proxy_url = match self.primary_proxy_url(advertise_url).await {
            Ok(url) => url,
            Err(message) => return plain(StatusCode::BAD_GATEWAY, &format!("Proxy error: {message}")),
        };
        trace_request!(self, method = %request.method(), path = %request.uri().path(), primary = %proxy_url, "proxy: node is a replica, forwarding to the primary");
        let mut outgoing = match upstream::readdress(request, &proxy_url) {
            Ok(r) => r,
            Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("Proxy error: {e}")),
        };
        if let Ok(me) = HeaderValue::from_str(&self.settings.node_id) {
            outgoing.headers_mut().insert(FORWARDED_BY, me);
        }
        match upstream::send(&self.to_primary, outgoing).await {
            Ok(response) => response,
            Err(e) => {
                // The primary may have changed: ask again next time.
                *self.primary_proxy.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                warn!(primary = %proxy_url, error = %error_chain(&e), "proxy: forwarding a write to the primary failed");
                plain(StatusCode::BAD_GATEWAY, &format!("Proxy error: forwarding to the primary: {}", error_chain(&e)))
            }
        }
    }

    /// The primary's proxy URL, from its `/info` (asked once per primary).
    async fn primary_proxy_url(&self, advertise_url: &str) -> Result<String, String> {
        if let Some((asked, url)) = &*self.primary_proxy.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
            && asked == advertise_url
        {
            return Ok(url.clone());
        }
        let info = crate::api::get_info(advertise_url)
            .await
            .map_err(|e| format!("asking the primary at {advertise_url} for its proxy: {e}"))?;
        let url = info.proxy_url.ok_or_else(|| format!("the primary at {advertise_url} runs no proxy"))?;
        *self.primary_proxy.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((advertise_url.to_owned(), url.clone()));
        Ok(url)
    }

    /// Sends `request` to the application; `track` adds the `__txid` cookie to the answer.
    async fn to_target(&self, request: Request, track: bool) -> Response {
        let outgoing = match upstream::readdress(request, &self.target_base) {
            Ok(r) => r,
            Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("Proxy error: {e}")),
        };
        let mut response = match upstream::send(&self.to_target, outgoing).await {
            Ok(response) => response,
            Err(e) => {
                warn!(target = %self.settings.target, error = %error_chain(&e), "proxy: the application did not answer");
                return plain(StatusCode::BAD_GATEWAY, &format!("Proxy error: {}", error_chain(&e)));
            }
        };
        // The application answered after its commit returned, and a commit returns only
        // once its position is published: the status already has it.
        if track && let Some(txid) = Self::txid(&self.status.borrow(), &self.settings.db) {
            let cookie = txid_cookie::set_cookie(txid, jiff::Timestamp::now(), COOKIE_EXPIRY);
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        response
    }
}

/// An error and its causes, one line (hyper's errors say little at the top).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Serves the proxy on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    status: watch::Receiver<Status>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeouts = crate::http::ConnTimeouts {
        read_header: settings.read_header_timeout,
        idle: settings.idle_timeout,
        read: settings.read_timeout,
        write: settings.write_timeout,
    };
    crate::http::serve_tcp(listener, routes(settings, status), shutdown, Some(timeouts)).await
}

#[cfg(test)]
mod tests;
