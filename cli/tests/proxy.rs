//! End to end: the HTTP proxy (`proxy:`) in front of an application, on a static primary `a`
//! and its replica `b`. Each node's application is an axum server run by the test, reading and
//! writing `app.db` through its own node's mount, so the answer's body says whose application
//! handled a request (`"a 3"`, `"b static"`, or `"b cannot write: …"` when a write was routed to
//! the replica's application by mistake).

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use reqwest::Method;
use reqwest::header::{COOKIE, SET_COOKIE};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use support::cluster::{Lease, Node, WAIT, free_port};

/// The database the proxy tracks and the applications use.
const DB: &str = "app.db";

/// The longest a read may wait for its cookie's TXID before the proxy gives up (LiteFS's 5 s).
const TXID_WAIT: Duration = Duration::from_secs(5);

/// One request the application received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    /// `"POST /rows"` and the like.
    route: &'static str,
    /// The `replite-forwarded-by` header, if any.
    forwarded_by: Option<String>,
}

/// The application on one node: its name (the first word of every answer), its node's copy of
/// the database, and what it was asked.
struct App {
    name: String,
    db: PathBuf,
    calls: Mutex<Vec<Call>>,
}

impl App {
    fn record(&self, route: &'static str, headers: &HeaderMap) {
        let forwarded_by =
            headers.get("replite-forwarded-by").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(Call { route, forwarded_by });
    }

    fn calls(&self, route: &str) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).iter().filter(|c| c.route == route).cloned().collect()
    }
}

fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
}

fn open_read_only(db: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// The row count of `node`'s copy of the database, read through its mount.
fn count_on(node: &Node) -> i64 {
    open_read_only(&node.db_path(DB)).and_then(|c| count(&c)).expect("count through the mount")
}

/// `POST /rows`: one insert, answered with the new count.
async fn post_rows(State(app): State<Arc<App>>, headers: HeaderMap) -> (StatusCode, String) {
    app.record("POST /rows", &headers);
    let db = app.db.clone();
    let written = tokio::task::spawn_blocking(move || {
        let conn = Connection::open(&db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute("INSERT INTO t (x) VALUES (1)", [])?;
        count(&conn)
    })
    .await
    .expect("the insert task does not panic");
    match written {
        Ok(n) => (StatusCode::OK, format!("{} {n}", app.name)),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{} cannot write: {e}", app.name)),
    }
}

/// `GET /rows`: the count this node's copy has.
async fn get_rows(State(app): State<Arc<App>>, headers: HeaderMap) -> (StatusCode, String) {
    app.record("GET /rows", &headers);
    let db = app.db.clone();
    let read = tokio::task::spawn_blocking(move || open_read_only(&db).and_then(|c| count(&c)))
        .await
        .expect("the count task does not panic");
    match read {
        Ok(n) => (StatusCode::OK, format!("{} {n}", app.name)),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{} cannot read: {e}", app.name)),
    }
}

async fn post_static(State(app): State<Arc<App>>, headers: HeaderMap) -> String {
    app.record("POST /static/x", &headers);
    format!("{} static", app.name)
}

async fn get_admin(State(app): State<Arc<App>>, headers: HeaderMap) -> String {
    app.record("GET /admin/x", &headers);
    format!("{} admin", app.name)
}

/// Starts the application of node `name` (whose mount will be `root/name/mnt`, as
/// `Node::new_with` lays it out) on `runtime`; it and the port it listens on.
fn serve_app(runtime: &tokio::runtime::Runtime, root: &Path, name: &str) -> (Arc<App>, u16) {
    let app =
        Arc::new(App { name: name.to_owned(), db: root.join(name).join("mnt").join(DB), calls: Mutex::default() });
    let router = Router::new()
        .route("/rows", get(get_rows).post(post_rows))
        .route("/static/x", post(post_static))
        .route("/admin/x", get(get_admin))
        .with_state(Arc::clone(&app));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind the application");
    let port = listener.local_addr().expect("the application's address").port();
    runtime.spawn(async move { axum::serve(listener, router).await });
    (app, port)
}

/// The `proxy:` section of a node whose proxy listens on `port` in front of the application on
/// `app_port`.
fn proxy_yaml(port: u16, app_port: u16, write_forwarding: Option<&str>) -> String {
    let forwarding = write_forwarding.map(|w| format!("  write-forwarding: {w}\n")).unwrap_or_default();
    format!(
        "proxy:\n  addr: \"127.0.0.1:{port}\"\n  target: \"127.0.0.1:{app_port}\"\n  db: \"{DB}\"\n  \
         passthrough: [\"/static/*\"]\n  always-forward: [\"/admin/*\"]\n  primary-redirect-timeout: 5s\n  \
         max-lag: 10s\n{forwarding}"
    )
}

/// What a proxy answered, and how long it took.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
    took: Duration,
}

impl Reply {
    /// The `__txid` cookie's value and the whole `Set-Cookie` line, if the answer sets it.
    fn txid_cookie(&self) -> Option<(u64, String)> {
        let line = self
            .headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .find(|v| v.starts_with("__txid="))?;
        let value = line["__txid=".len()..].split(';').next().unwrap_or_default();
        assert!(
            value.len() == 16 && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "the __txid cookie is 16 lowercase hex digits: {line}"
        );
        let txid = u64::from_str_radix(value, 16).expect("checked to be hex");
        Some((txid, line))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} after {:?}, headers {:?}", self.status, self.body, self.took, self.headers)
    }
}

/// The test's tokio runtime (which also runs both applications) and its HTTP client.
struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        let client = reqwest::Client::builder()
            .no_proxy()
            // A replica restarts on the same proxy port: no pooled connection to the old process.
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(WAIT)
            .build()
            .expect("HTTP client");
        Http { runtime, client }
    }

    /// `method url`, with the cookie `__txid=<txid>` if given.
    fn send(&self, method: Method, url: &str, txid: Option<u64>) -> Reply {
        let mut request = self.client.request(method.clone(), url);
        if let Some(txid) = txid {
            request = request.header(COOKIE, format!("__txid={txid:016x}"));
        }
        let started = Instant::now();
        let (status, headers, body) = self
            .runtime
            .block_on(async {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                Ok::<_, reqwest::Error>((status, headers, response.text().await?))
            })
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        Reply { status, headers, body, took: started.elapsed() }
    }

    /// `node`'s `/info` as the daemon wrote it (`Node::info` goes through the API client's typed
    /// status, which may not carry every field).
    fn raw_info(&self, node: &Node) -> Value {
        let url = format!("{}/info", node.url);
        self.runtime
            .block_on(async { self.client.get(&url).send().await?.json::<Value>().await })
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// Waits (bounded) until the proxy at `proxy_url` answers its health check.
    fn wait_healthy(&self, node: &Node, proxy_url: &str) {
        let url = format!("{proxy_url}/litefs/health");
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = self.runtime.block_on(async {
                let response = self.client.get(&url).send().await?;
                let status = response.status().as_u16();
                Ok::<_, reqwest::Error>((status, response.text().await?))
            });
            match answer {
                Ok((200, _)) => return,
                _ if Instant::now() > deadline => {
                    panic!("{}: {url} not healthy within {WAIT:?}: {answer:?}\n{}", node.name, node.log_text())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The TXID `/info` reports for the database.
fn txid(info: &Value) -> Option<u64> {
    info["databases"].as_array()?.iter().find(|d| d["name"] == DB)?["txid"].as_u64()
}

fn txid_on(node: &Node) -> u64 {
    node.info()
        .as_ref()
        .and_then(txid)
        .unwrap_or_else(|| panic!("{}: no TXID for {DB}\n{}", node.name, node.log_text()))
}

/// Waits until `replica` is in sync and has the primary's TXID; returns it.
fn wait_in_sync(primary: &Node, replica: &Node) -> u64 {
    let want = txid_on(primary);
    replica.wait_for("in sync with the primary", |i| i["inSync"] == true && txid(i) == Some(want));
    want
}

#[test]
fn a_replicas_proxy_forwards_writes_to_the_primary_and_holds_reads_until_the_cookies_txid_arrives() {
    let root = tempfile::tempdir().expect("tempdir");
    let http = Http::new();
    let (a_app, a_app_port) = serve_app(&http.runtime, root.path(), "a");
    let (b_app, b_app_port) = serve_app(&http.runtime, root.path(), "b");
    let (a_proxy_port, b_proxy_port) = (free_port(), free_port());
    let a_proxy = format!("http://127.0.0.1:{a_proxy_port}");
    let b_proxy = format!("http://127.0.0.1:{b_proxy_port}");

    let mut a = Node::new_with(
        root.path(),
        "a",
        &Lease::Static { primary_url: None },
        None,
        &proxy_yaml(a_proxy_port, a_app_port, None),
    );
    let mut b = Node::new_with(
        root.path(),
        "b",
        &Lease::Static { primary_url: Some(a.url.clone()) },
        None,
        &proxy_yaml(b_proxy_port, b_app_port, Some("forward")),
    );
    assert_eq!(a.db_path(DB), a_app.db, "the application uses its node's mount");
    assert_eq!(b.db_path(DB), b_app.db, "the application uses its node's mount");

    a.start();
    a.wait_for("primary", |i| i["role"] == "primary");
    let conn = support::cluster::open_on_primary(&a, DB);
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn.execute_batch("CREATE TABLE t (x)").expect("create table t");
    b.start();
    let created = wait_in_sync(&a, &b);
    http.wait_healthy(&a, &a_proxy);
    http.wait_healthy(&b, &b_proxy);
    let b_id = b.info().expect("b's /info")["nodeId"].as_str().expect("b's node id").to_owned();

    // The primary advertises its proxy, which is how the replica finds where to forward.
    let info = http.raw_info(&a);
    assert_eq!(info["proxyUrl"], a_proxy.as_str(), "the primary's /info: {info}");

    for proxy in [&a_proxy, &b_proxy] {
        let health = http.send(Method::GET, &format!("{proxy}/litefs/health"), None);
        assert_eq!((health.status, health.body.as_str()), (200, "OK\n"), "{proxy}: {health:?}");
    }

    // A write sent to the replica is handled by the primary's application, and the primary's
    // TXID after it comes back in the cookie.
    let write = http.send(Method::POST, &format!("{b_proxy}/rows"), None);
    assert_eq!((write.status, write.body.as_str()), (200, "a 1"), "{write:?}\n{}", b.log_text());
    let (written, cookie) = write.txid_cookie().unwrap_or_else(|| panic!("a write sets the __txid cookie: {write:?}"));
    assert_eq!(written, created + 1, "the cookie names the insert's transaction: {cookie}");
    assert!(cookie.contains("Path=/") && cookie.contains("HttpOnly") && cookie.contains("Expires="), "{cookie}");
    a.wait_for("at the cookie's TXID", |i| txid(i) == Some(written));
    assert!(b_app.calls("POST /rows").is_empty(), "the replica's application wrote nothing");
    let forwarded = a_app.calls("POST /rows");
    assert_eq!(
        forwarded,
        vec![Call { route: "POST /rows", forwarded_by: Some(b_id.clone()) }],
        "the primary's application got the write once, marked as forwarded by b"
    );

    // Read your writes: with the cookie, the replica's application sees the row.
    let read = http.send(Method::GET, &format!("{b_proxy}/rows"), Some(written));
    assert_eq!((read.status, read.body.as_str()), (200, "b 1"), "{read:?}");

    // A cookie one transaction ahead holds the read until that transaction arrives.
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        conn.execute("INSERT INTO t (x) VALUES (2)", []).expect("insert on the primary's mount");
        conn
    });
    let held = http.send(Method::GET, &format!("{b_proxy}/rows"), Some(written + 1));
    let conn = later.join().expect("the inserting thread");
    assert_eq!((held.status, held.body.as_str()), (200, "b 2"), "{held:?}\n{}", b.log_text());
    assert!(held.took >= Duration::from_millis(250), "the read waited for the insert: {held:?}");
    assert!(held.took < TXID_WAIT, "the read went on once the insert arrived: {held:?}");

    // A cookie far ahead: the proxy gives up after its wait and never asks the application.
    let reads_before = b_app.calls("GET /rows").len();
    let too_far = http.send(Method::GET, &format!("{b_proxy}/rows"), Some(written + 1 + 1000));
    assert_eq!(too_far.status, 504, "{too_far:?}");
    assert!(too_far.body.contains("Proxy timeout"), "{too_far:?}");
    assert!(
        too_far.took >= TXID_WAIT - Duration::from_millis(500) && too_far.took < TXID_WAIT * 2,
        "about {TXID_WAIT:?}: {too_far:?}"
    );
    assert_eq!(b_app.calls("GET /rows").len(), reads_before, "the application was not asked");

    // Without a cookie, a read goes to the local application at once.
    let plain = http.send(Method::GET, &format!("{b_proxy}/rows"), None);
    assert_eq!((plain.status, plain.body.as_str()), (200, "b 2"), "{plain:?}");

    // Passthrough: any method, straight to the local application, no cookie.
    let passed = http.send(Method::POST, &format!("{b_proxy}/static/x"), None);
    assert_eq!((passed.status, passed.body.as_str()), (200, "b static"), "{passed:?}");
    assert!(passed.headers.get(SET_COOKIE).is_none(), "passthrough sets no cookie: {passed:?}");
    assert!(a_app.calls("POST /static/x").is_empty(), "passthrough is not forwarded");

    // Always-forward: a GET handled as a write, by the primary's application.
    let admin = http.send(Method::GET, &format!("{b_proxy}/admin/x"), None);
    assert_eq!((admin.status, admin.body.as_str()), (200, "a admin"), "{admin:?}\n{}", b.log_text());
    let (admin_txid, _) = admin.txid_cookie().unwrap_or_else(|| panic!("a write sets the __txid cookie: {admin:?}"));
    assert_eq!(admin_txid, written + 1, "the primary's TXID after the second insert");
    assert!(b_app.calls("GET /admin/x").is_empty(), "the replica's application was not asked");

    // With `write-forwarding: fly-replay` the replica sends the client to the primary's
    // hostname instead, and nobody's application sees the write.
    b.stop();
    b.edit_config(|text| {
        assert!(text.contains("write-forwarding: forward"), "{text}");
        text.replace("write-forwarding: forward", "write-forwarding: fly-replay")
    });
    b.start();
    let before = wait_in_sync(&a, &b);
    http.wait_healthy(&b, &b_proxy);
    let (a_writes, b_writes) = (a_app.calls("POST /rows").len(), b_app.calls("POST /rows").len());
    let rows_before = count_on(&a);
    let replay = http.send(Method::POST, &format!("{b_proxy}/rows"), None);
    assert_eq!((replay.status, replay.body.as_str()), (200, ""), "{replay:?}\n{}", b.log_text());
    assert_eq!(replay.header("fly-replay").as_deref(), Some("instance=primary"), "{replay:?}");
    assert_eq!(a_app.calls("POST /rows").len(), a_writes, "the primary's application was not asked");
    assert_eq!(b_app.calls("POST /rows").len(), b_writes, "the replica's application was not asked");
    assert_eq!(count_on(&a), rows_before, "no row was written");
    assert_eq!(txid_on(&a), before, "no transaction on the primary");

    drop(conn);
    b.stop();
    a.stop();
}
