//! The HTTP API beside the replication stream (LiteFS's paths): `GET /info` (status as
//! JSON), `GET /events` (newline-delimited JSON events), `GET /metrics` (Prometheus text),
//! `POST /handoff?nodeID=` (on the primary: hand the lease to that replica), `POST /promote`
//! (make this node primary), and in [`transfer`] `GET /export?name=` and `POST /import?name=`
//! (copy a database out of the mount, or replace one in it). Handlers only read the driver's
//! published status or pass an operator request to the Node; they decide nothing.

mod client;
mod metrics;
pub mod transfer;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use replite_core::NodeId;
use replite_core::node::Input;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::driver::{EventLog, EventReader, Status};

/// Where `/metrics` reads how the mount answered SQLite's fsyncs (decision 0017).
pub type SyncCountsSource = std::sync::Arc<dyn Fn() -> replite_fuse::SyncCounts + Send + Sync>;

/// Where `/info` reads the halt locks held now (decision 0022).
pub type HaltLocksSource = std::sync::Arc<dyn Fn() -> Vec<crate::driver::HaltLockStatus> + Send + Sync>;

pub use client::{ApiError, export_database, get_info, import_database, post};

#[derive(Clone)]
struct Api {
    status: watch::Receiver<Status>,
    events: EventLog,
    operator: mpsc::UnboundedSender<Input>,
    me: NodeId,
    /// Whether the lease can move between nodes (not `static`): a handoff needs that.
    lease_moves: bool,
    sync_counts: Option<SyncCountsSource>,
    facts: NodeFacts,
}

/// What `/info` shows beside the driver's status: LiteFS's fields (`isPrimary`, `candidate`,
/// `path`, and on the primary itself `primary.hostname`, so scripts written against LiteFS's
/// `/info` read the same answers) and replite's `proxyUrl`.
#[derive(Clone, Default)]
pub struct NodeFacts {
    /// This node's advertise URL.
    pub advertise_url: String,
    /// Its data directory.
    pub data_dir: String,
    /// Whether it may become primary.
    pub candidate: bool,
    /// Where its proxy listens, if it runs one.
    pub proxy_url: Option<String>,
    /// The halt locks it holds, if it serves them.
    pub halt_locks: Option<HaltLocksSource>,
}

/// The API's routes. `lease_moves` is false for a static lease, whose primary is fixed;
/// `sync_counts`, when given, adds the mount's fsync answers to `/metrics`; `facts` complete
/// `/info`.
pub fn routes(
    status: watch::Receiver<Status>,
    events: EventLog,
    operator: mpsc::UnboundedSender<Input>,
    me: NodeId,
    lease_moves: bool,
    sync_counts: Option<SyncCountsSource>,
    facts: NodeFacts,
) -> Router {
    Router::new()
        .route("/info", routing::get(info))
        .route("/events", routing::get(events_stream))
        .route("/metrics", routing::get(metrics_text))
        .route("/handoff", routing::post(handoff))
        .route("/promote", routing::post(promote))
        .with_state(Api { status, events, operator, me, lease_moves, sync_counts, facts })
}

async fn info(State(api): State<Api>) -> Response {
    let mut status = api.status.borrow().clone();
    let facts = &api.facts;
    status.proxy_url.clone_from(&facts.proxy_url);
    status.candidate = facts.candidate;
    status.path.clone_from(&facts.data_dir);
    status.is_primary = status.role == "primary";
    if let Some(source) = &facts.halt_locks {
        status.halt_locks = source();
    }
    if status.is_primary && status.primary.is_none() {
        // LiteFS names the primary on the primary too.
        status.primary = Some(crate::driver::Peer {
            node_id: status.node_id.clone(),
            hostname: status.hostname.clone(),
            advertise_url: facts.advertise_url.clone(),
        });
    }
    axum::Json(status).into_response()
}

async fn metrics_text(State(api): State<Api>) -> Response {
    let status = api.status.borrow().clone();
    let counts = api.sync_counts.as_ref().map(|source| source());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render(&status, counts)).into_response()
}

async fn events_stream(State(api): State<Api>) -> Response {
    let EventReader { init, events: mut rx, mut closed } = api.events.subscribe();
    let (tx, body_rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(init + "\n")).await.is_err() {
            return;
        }
        loop {
            let received = tokio::select! {
                received = rx.recv() => received,
                // The node stops: the stream ends (a closed sender counts as stopped too).
                _ = closed.wait_for(|&stopped| stopped) => return,
            };
            match received {
                Ok(line) => {
                    if tx.send(Ok(line + "\n")).await.is_err() {
                        return;
                    }
                }
                // A reader that fell too far behind misses events; it keeps the rest.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(body_rx);
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}

#[derive(Deserialize)]
struct HandoffQuery {
    #[serde(rename = "nodeID")]
    node_id: String,
}

async fn handoff(State(api): State<Api>, query: Result<Query<HandoffQuery>, QueryRejection>) -> Response {
    let Ok(Query(query)) = query else {
        return (StatusCode::BAD_REQUEST, "nodeID is required\n").into_response();
    };
    let Ok(to) = u64::from_str_radix(&query.node_id, 16).map(NodeId) else {
        return (StatusCode::BAD_REQUEST, format!("nodeID {:?} is not 16 hex digits\n", query.node_id)).into_response();
    };
    if !api.lease_moves {
        // The primary would step down and nobody else could take the lease: an outage.
        return (StatusCode::CONFLICT, "a static lease cannot be handed off: its primary is fixed by configuration\n")
            .into_response();
    }
    if api.status.borrow().role != "primary" {
        return (StatusCode::CONFLICT, "this node is not the primary\n").into_response();
    }
    if to == api.me {
        return (StatusCode::BAD_REQUEST, "cannot hand off to the primary itself\n").into_response();
    }
    match api.operator.send(Input::Handoff { to }) {
        Ok(()) => (StatusCode::OK, "handoff requested\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

async fn promote(State(api): State<Api>) -> Response {
    if api.status.borrow().role == "primary" {
        return (StatusCode::OK, "already primary\n").into_response();
    }
    if !api.lease_moves {
        return (StatusCode::CONFLICT, "a static lease cannot move: its primary is fixed by configuration\n")
            .into_response();
    }
    match api.operator.send(Input::Promote) {
        Ok(()) => (StatusCode::OK, "promotion requested\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}
