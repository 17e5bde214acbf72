//! A test double of Consul's HTTP API, as documented at developer.hashicorp.com/consul/api-docs
//! (sessions: create, renew, destroy; KV: get, put, acquire, release; catalog register). No
//! real Consul server can be installed on the test machines, so lease tests run against this.
//! It follows the documented semantics: session TTLs of 10s to 24h (the minimum can be lowered
//! per test, said where it is), the "delete" and "release" behaviours on invalidation, lock
//! delay after an invalidated session, LockIndex and a global, only-growing ModifyIndex. It
//! expires a session exactly at its TTL, where real Consul may wait up to twice as long.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

struct Session {
    ttl: Duration,
    lock_delay: Duration,
    behavior: String,
    renewed: Instant,
}

struct Entry {
    value: Vec<u8>,
    session: Option<String>,
    create_index: u64,
    modify_index: u64,
    lock_index: u64,
}

#[derive(Default)]
struct Store {
    index: u64,
    next_session: u64,
    sessions: BTreeMap<String, Session>,
    kv: BTreeMap<String, Entry>,
    lock_delay_until: BTreeMap<String, Instant>,
}

struct Fake {
    store: Mutex<Store>,
    min_ttl: Duration,
}

impl Store {
    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// Sets a key's value at a new index, creating the key if needed.
    fn write(&mut self, key: String, value: &[u8]) -> &mut Entry {
        let index = self.bump();
        let entry = self.kv.entry(key).or_insert(Entry {
            value: Vec::new(),
            session: None,
            create_index: index,
            modify_index: index,
            lock_index: 0,
        });
        entry.value = value.to_vec();
        entry.modify_index = index;
        entry
    }

    /// Invalidates sessions whose TTL ran out, as Consul's leader does.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<String> =
            self.sessions.iter().filter(|(_, s)| now >= s.renewed + s.ttl).map(|(id, _)| id.clone()).collect();
        for id in expired {
            self.invalidate(&id, now);
        }
    }

    fn invalidate(&mut self, id: &str, now: Instant) {
        let Some(session) = self.sessions.remove(id) else { return };
        let held: Vec<String> =
            self.kv.iter().filter(|(_, e)| e.session.as_deref() == Some(id)).map(|(k, _)| k.clone()).collect();
        for key in held {
            self.lock_delay_until.insert(key.clone(), now + session.lock_delay);
            if session.behavior == "delete" {
                self.kv.remove(&key);
            } else {
                let index = self.bump();
                if let Some(e) = self.kv.get_mut(&key) {
                    e.session = None;
                    e.modify_index = index;
                }
            }
        }
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    s.strip_suffix('s')?.parse().ok().map(Duration::from_secs)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateSession {
    #[serde(default)]
    behavior: Option<String>,
    #[serde(default)]
    lock_delay: Option<String>,
    #[serde(rename = "TTL", default)]
    ttl: Option<String>,
}

async fn create_session(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<CreateSession>(&body) else {
        return (StatusCode::BAD_REQUEST, "Request decode failed").into_response();
    };
    let ttl = match req.ttl.as_deref().map(parse_duration) {
        Some(Some(ttl)) if ttl >= fake.min_ttl && ttl <= Duration::from_secs(86_400) => ttl,
        _ => return (StatusCode::BAD_REQUEST, "Invalid Session TTL").into_response(),
    };
    let lock_delay = req.lock_delay.as_deref().and_then(parse_duration).unwrap_or(Duration::from_secs(15));
    let mut store = fake.store.lock().expect("fake consul lock");
    store.next_session += 1;
    let id = format!("00000000-0000-0000-0000-{:012x}", store.next_session);
    let behavior = req.behavior.unwrap_or_else(|| "release".into());
    store.sessions.insert(id.clone(), Session { ttl, lock_delay, behavior, renewed: Instant::now() });
    store.bump();
    axum::Json(json!({ "ID": id })).into_response()
}

async fn renew_session(State(fake): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    let now = Instant::now();
    let mut store = fake.store.lock().expect("fake consul lock");
    store.expire(now);
    match store.sessions.get_mut(&id) {
        Some(s) => {
            s.renewed = now;
            axum::Json(json!([{ "ID": id, "TTL": format!("{}s", s.ttl.as_secs()) }])).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("Session id '{id}' not found")).into_response(),
    }
}

async fn destroy_session(State(fake): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    let now = Instant::now();
    let mut store = fake.store.lock().expect("fake consul lock");
    store.invalidate(&id, now);
    "true".into_response()
}

async fn get_key(State(fake): State<Arc<Fake>>, Path(key): Path<String>) -> Response {
    let mut store = fake.store.lock().expect("fake consul lock");
    store.expire(Instant::now());
    match store.kv.get(&key) {
        Some(e) => axum::Json(json!([{
            "Key": key,
            "Value": base64::engine::general_purpose::STANDARD.encode(&e.value),
            "Session": e.session,
            "Flags": 0,
            "LockIndex": e.lock_index,
            "CreateIndex": e.create_index,
            "ModifyIndex": e.modify_index,
        }]))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize)]
struct PutQuery {
    acquire: Option<String>,
    release: Option<String>,
}

async fn put_key(
    State(fake): State<Arc<Fake>>,
    Path(key): Path<String>,
    Query(q): Query<PutQuery>,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    let mut store = fake.store.lock().expect("fake consul lock");
    store.expire(now);
    if let Some(id) = q.acquire {
        if !store.sessions.contains_key(&id) {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("invalid session \"{id}\"")).into_response();
        }
        let held_by_other = store.kv.get(&key).is_some_and(|e| e.session.as_ref().is_some_and(|s| *s != id));
        let delayed = store.lock_delay_until.get(&key).is_some_and(|until| now < *until);
        if held_by_other || delayed {
            return "false".into_response();
        }
        let entry = store.write(key, &body);
        if entry.session.as_deref() != Some(id.as_str()) {
            entry.lock_index += 1;
        }
        entry.session = Some(id);
        return "true".into_response();
    }
    if let Some(id) = q.release {
        let index = store.bump();
        return match store.kv.get_mut(&key) {
            Some(e) if e.session.as_deref() == Some(id.as_str()) => {
                e.session = None;
                e.modify_index = index;
                "true".into_response()
            }
            _ => "false".into_response(),
        };
    }
    store.write(key, &body);
    "true".into_response()
}

pub struct FakeConsul {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl FakeConsul {
    /// Starts the double on loopback; `min_ttl` is Consul's 10s unless a test lowers it.
    pub async fn start(min_ttl: Duration) -> FakeConsul {
        let fake = Arc::new(Fake { store: Mutex::new(Store::default()), min_ttl });
        let app = Router::new()
            .route("/v1/session/create", put(create_session))
            .route("/v1/session/renew/{id}", put(renew_session))
            .route("/v1/session/destroy/{id}", put(destroy_session))
            .route("/v1/kv/{*key}", get(get_key).put(put_key))
            .route("/v1/catalog/register", put(|| async { "true" }))
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake consul serves");
        });
        FakeConsul { url, task }
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.task.abort();
    }
}
