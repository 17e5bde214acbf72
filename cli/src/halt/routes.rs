//! The halt lock's HTTP paths, as LiteFS's replicas call them on their primary:
//! `POST /halt?name=&id=` (answers LiteFS's `HaltLock` JSON), `DELETE /halt?name=&id=`, and
//! `POST /tx?name=&lockID=` with an LTX file as the body; and replite's own, which
//! `replite run -with-halt-lock-on` calls on its node: `POST /local-halt?name=` (a line of
//! JSON, then the lock is held while the connection stays open) and
//! `DELETE /local-halt?name=&id=`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing;
use replite_core::NodeId;
use replite_core::stream::HEADER_NODE_ID;
use replite_fuse::HaltError;
use serde::Deserialize;

use super::replica::{LocalHalt, ReplicaHalts};
use super::{Granted, HaltLockError, HaltLocks};

/// The largest transaction a replica may send under a halt lock (held in memory while it is
/// committed).
const MAX_TX_BYTES: usize = 1 << 30;

#[derive(Clone)]
struct Halt {
    locks: Arc<HaltLocks>,
    local: Arc<ReplicaHalts>,
    me: NodeId,
}

/// The halt lock's routes: `locks` as a primary, `local` as a replica; `me` is this node's
/// id (a node never halts itself).
pub fn routes(locks: Arc<HaltLocks>, local: Arc<ReplicaHalts>, me: NodeId) -> Router {
    Router::new()
        .route("/halt", routing::post(acquire).delete(release))
        .route("/tx", routing::post(commit).layer(DefaultBodyLimit::max(MAX_TX_BYTES)))
        .route("/local-halt", routing::post(acquire_local).delete(release_local))
        .with_state(Halt { locks, local, me })
}

#[derive(Deserialize)]
struct LocalQuery {
    name: String,
    id: Option<String>,
}

/// Takes a halt lock on the primary for this replica's applications; answers one line of
/// JSON (`{"id":…,"pos":"…"}`, or `{"primary":true}` on the primary, where none is needed),
/// then holds the lock while the connection stays open (a newline each second tells when it
/// closed).
///
/// The taking runs in a task of its own: a client that goes away meanwhile drops this
/// handler, and the lock, once taken, must still be let go (the task finds the answer's
/// channel closed).
async fn acquire_local(State(h): State<Halt>, query: Result<Query<LocalQuery>, QueryRejection>) -> Response {
    let Ok(Query(q)) = query else { return bad_request("name is required".into()) };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (verdict_tx, verdict) = tokio::sync::oneshot::channel();
    tokio::spawn(hold_local(Arc::clone(&h.local), q.name, tx, verdict_tx));
    match verdict.await {
        Ok(Ok(())) => {
            let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
            (StatusCode::OK, [("content-type", "application/x-ndjson")], body).into_response()
        }
        Ok(Err(e)) => error_response(&e),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// Takes the lock, says how it went on `verdict`, writes the answer's first line on `body`,
/// then keeps it (heartbeats on `body`) until the holder's connection is gone or the lock is.
async fn hold_local(
    local: Arc<ReplicaHalts>,
    db: String,
    body: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    verdict: tokio::sync::oneshot::Sender<Result<(), HaltLockError>>,
) {
    let (line, id) = match local.acquire(&db).await {
        Ok(LocalHalt::Primary) => (serde_json::json!({ "primary": true }), None),
        Ok(LocalHalt::Held { id, pos }) => (serde_json::json!({ "id": id, "pos": pos.to_string() }), Some(id)),
        Err(e) => {
            let _ = verdict.send(Err(e));
            return;
        }
    };
    let answered = verdict.send(Ok(())).is_ok() && body.send(Ok(Bytes::from(format!("{line}\n")))).await.is_ok();
    let Some(id) = id else { return };
    if answered {
        while body.send(Ok(Bytes::from_static(b"\n"))).await.is_ok() && local.holds(&db, id).await {
            tokio::time::sleep(super::replica::HEARTBEAT_EVERY).await;
        }
    }
    local.release(&db, Some(id)).await;
}

async fn release_local(State(h): State<Halt>, query: Result<Query<LocalQuery>, QueryRejection>) -> Response {
    let Ok(Query(q)) = query else { return bad_request("name is required".into()) };
    let id = match q.id.as_deref() {
        Some(raw) => match parse_id(raw) {
            Some(id) => Some(id),
            None => return invalid_id(raw),
        },
        None => None,
    };
    h.local.release(&q.name, id).await;
    StatusCode::OK.into_response()
}

#[derive(Deserialize)]
struct HaltQuery {
    name: String,
    id: String,
}

#[derive(Deserialize)]
struct TxQuery {
    name: String,
    #[serde(rename = "lockID")]
    lock_id: String,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message + "\n").into_response()
}

/// LiteFS's lock ids are signed 64-bit decimals, never zero.
fn parse_id(id: &str) -> Option<i64> {
    id.parse::<i64>().ok().filter(|&id| id != 0)
}

fn invalid_id(id: &str) -> Response {
    bad_request(format!("invalid id: {id:?}"))
}

/// The asking node's id, from LiteFS's node id header.
fn node_id_of(headers: &HeaderMap) -> Option<NodeId> {
    headers.get(HEADER_NODE_ID).and_then(|v| v.to_str().ok()).and_then(|v| u64::from_str_radix(v, 16).ok()).map(NodeId)
}

/// A request from this very node: refused, as LiteFS does.
fn from_myself(headers: &HeaderMap, me: NodeId) -> bool {
    node_id_of(headers) == Some(me)
}

async fn acquire(
    State(h): State<Halt>,
    headers: HeaderMap,
    query: Result<Query<HaltQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else { return bad_request("name and id are required".into()) };
    let Some(id) = parse_id(&q.id) else { return invalid_id(&q.id) };
    if from_myself(&headers, h.me) {
        return bad_request("cannot remotely halt self".into());
    }
    let holder = node_id_of(&headers);
    let locks = Arc::clone(&h.locks);
    match tokio::task::spawn_blocking(move || locks.acquire(&q.name, id, holder)).await {
        Ok(Ok(granted)) => {
            (StatusCode::OK, [("content-type", "application/json")], granted_json(&granted)).into_response()
        }
        Ok(Err(e)) => error_response(&e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn release(State(h): State<Halt>, query: Result<Query<HaltQuery>, QueryRejection>) -> Response {
    let Ok(Query(q)) = query else { return bad_request("name and id are required".into()) };
    let Some(id) = parse_id(&q.id) else { return invalid_id(&q.id) };
    let locks = Arc::clone(&h.locks);
    match tokio::task::spawn_blocking(move || locks.release(&q.name, id)).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn commit(
    State(h): State<Halt>,
    headers: HeaderMap,
    query: Result<Query<TxQuery>, QueryRejection>,
    body: Bytes,
) -> Response {
    let Ok(Query(q)) = query else { return bad_request("name and lockID are required".into()) };
    let Some(id) = parse_id(&q.lock_id) else { return invalid_id(&q.lock_id) };
    if from_myself(&headers, h.me) {
        return bad_request("cannot send a transaction to self".into());
    }
    let locks = Arc::clone(&h.locks);
    match tokio::task::spawn_blocking(move || locks.commit(&q.name, id, &body)).await {
        Ok(Ok(_)) => StatusCode::OK.into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn error_response(e: &HaltLockError) -> Response {
    let status = match e {
        HaltLockError::NotPrimary | HaltLockError::NotHeld { .. } | HaltLockError::Refused(_) => StatusCode::CONFLICT,
        HaltLockError::Invalid(_) | HaltLockError::Mount(HaltError::InvalidName { .. }) => StatusCode::BAD_REQUEST,
        HaltLockError::Mount(HaltError::NoDatabase { .. }) => StatusCode::NOT_FOUND,
        HaltLockError::Mount(HaltError::Busy { .. }) | HaltLockError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        HaltLockError::Mount(HaltError::Io { .. }) | HaltLockError::Write { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e}\n")).into_response()
}

/// LiteFS's `HaltLock` as Go's JSON encoding writes it: `ltx.Pos` has no field tags, its
/// TXID and checksum encode as 16 hex digits, the expiry as RFC 3339 with nanoseconds.
fn granted_json(g: &Granted) -> String {
    let expires = jiff::Timestamp::try_from(g.expires).map(|t| t.to_string()).unwrap_or_default();
    serde_json::json!({
        "id": g.id,
        "pos": {
            "TXID": format!("{:016x}", g.pos.txid.0),
            "PostApplyChecksum": format!("{:016x}", g.pos.checksum.0),
        },
        "expires": expires,
    })
    .to_string()
}
