//! The proxy's decisions over real HTTP on loopback: an application server and the proxy run
//! in the test, and the node's status is whatever the test publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::routing::any;
use tokio::sync::watch;

use super::*;
use crate::driver::{DbStatus, Peer};

/// The application: answers `<method> <path>` and counts the requests it saw.
async fn application() -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let app = Router::new().fallback(any(move |request: Request| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
            ([("set-cookie", "session=abc")], format!("{} {} host={host}", request.method(), request.uri().path()))
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr.to_string(), seen)
}

fn status(role: &str, txid: u64, primary: Option<&str>, lag_ms: Option<u64>) -> Status {
    Status {
        node_id: "00000000000000AA".into(),
        hostname: "node-a".into(),
        role: role.into(),
        epoch: Some(1),
        primary: primary.map(|hostname| Peer {
            node_id: "00000000000000BB".into(),
            hostname: hostname.into(),
            advertise_url: "http://127.0.0.1:9".into(),
        }),
        databases: vec![DbStatus {
            name: "app.db".into(),
            pos: format!("{txid:016x}/0000000000000000"),
            txid,
            lag_txids: None,
            lag_ms,
        }],
        in_sync: true,
        ..Status::default()
    }
}

fn settings(target: &str) -> Settings {
    Settings {
        target: target.to_owned(),
        db: "app.db".into(),
        passthrough: vec![PathPattern::new("/static/*")],
        always_forward: vec![PathPattern::new("/admin/*")],
        max_lag: Duration::from_secs(1),
        primary_redirect_timeout: Duration::from_millis(200),
        txid_wait: Duration::from_secs(5),
        target_patience: Duration::from_millis(300),
        forwarding: Forwarding::FlyReplay,
        read_header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(30),
        read_timeout: Duration::ZERO,
        write_timeout: Duration::ZERO,
        debug: false,
        node_id: "00000000000000AA".into(),
    }
}

/// Starts the proxy; its base URL.
async fn start(settings: Settings, status: watch::Receiver<Status>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(serve(listener, settings, status, std::future::pending()));
    url
}

fn txid_cookie_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__txid="))
        .map(str::to_owned)
}

#[tokio::test]
async fn a_write_on_the_primary_reaches_the_application_and_gets_the_txid_cookie() {
    let (target, seen) = application().await;
    let (_tx, rx) = watch::channel(status("primary", 0x2a, None, None));
    let proxy = start(settings(&target), rx).await;
    let client = reqwest::Client::new();

    let response = client.post(format!("{proxy}/rows?x=1")).header("host", "app.example").send().await.expect("post");
    assert_eq!(response.status(), 200);
    let cookie = txid_cookie_of(&response).expect("txid cookie");
    assert!(cookie.starts_with("__txid=000000000000002a; Path=/; Expires="), "{cookie}");
    assert!(cookie.ends_with("; HttpOnly"), "{cookie}");
    // The application's own cookie is kept beside it.
    assert!(response.headers().get_all("set-cookie").iter().any(|v| v == "session=abc"));
    assert_eq!(response.text().await.expect("body"), "POST /rows host=app.example");
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // Reads and passthrough writes carry no cookie.
    let read = client.get(format!("{proxy}/rows")).send().await.expect("get");
    assert!(txid_cookie_of(&read).is_none());
    let passthrough = client.post(format!("{proxy}/static/x")).send().await.expect("post");
    assert_eq!(passthrough.status(), 200);
    assert!(txid_cookie_of(&passthrough).is_none());
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_read_waits_until_the_node_reaches_the_cookie_s_txid() {
    let (target, seen) = application().await;
    let (tx, rx) = watch::channel(status("replica", 5, Some("node-b"), Some(0)));
    let proxy = start(settings(&target), rx).await;
    let client = reqwest::Client::new();

    // Already there: no wait.
    let response =
        client.get(format!("{proxy}/rows")).header("cookie", "__txid=0000000000000005").send().await.expect("get");
    assert_eq!(response.status(), 200);

    // Ahead: the read waits until the replica applies transaction 7.
    let started = Instant::now();
    let applier = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.send_replace(status("replica", 6, Some("node-b"), Some(0)));
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.send_replace(status("replica", 7, Some("node-b"), Some(0)));
        tx
    });
    let response =
        client.get(format!("{proxy}/rows")).header("cookie", "a=b; __txid=0000000000000007").send().await.expect("get");
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(waited >= Duration::from_millis(300), "answered after {waited:?}, before transaction 7 arrived");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    drop(applier.await);
}

#[tokio::test]
async fn a_read_whose_txid_never_arrives_times_out_without_reaching_the_application() {
    let (target, seen) = application().await;
    let (_tx, rx) = watch::channel(status("replica", 5, Some("node-b"), Some(0)));
    let mut s = settings(&target);
    s.txid_wait = Duration::from_millis(200);
    let proxy = start(s, rx).await;
    let response = reqwest::Client::new()
        .get(format!("{proxy}/rows"))
        .header("cookie", "__txid=0000000000000100")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 504);
    assert_eq!(response.text().await.expect("body"), "Proxy timeout\n");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_write_on_a_replica_is_replayed_on_the_primary_with_fly_replay() {
    let (target, seen) = application().await;
    let (_tx, rx) = watch::channel(status("replica", 5, Some("node-b"), Some(0)));
    let proxy = start(settings(&target), rx).await;
    let client = reqwest::Client::new();
    for request in [client.post(format!("{proxy}/rows")), client.get(format!("{proxy}/admin/x"))] {
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["fly-replay"], "instance=node-b");
        assert_eq!(response.text().await.expect("body"), "");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0, "the replica's application must not see writes");
}

#[tokio::test]
async fn a_write_with_no_primary_known_fails_with_503() {
    let (target, seen) = application().await;
    let (_tx, rx) = watch::channel(status("waiting", 0, None, None));
    let proxy = start(settings(&target), rx).await;
    let started = Instant::now();
    let response = reqwest::Client::new().post(format!("{proxy}/rows")).send().await.expect("post");
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(200), "gave up before primary-redirect-timeout");
    assert_eq!(response.text().await.expect("body"), "Proxy error: no primary available\n");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_forwarded_write_that_reaches_a_replica_is_not_forwarded_again() {
    let (target, seen) = application().await;
    let (_tx, rx) = watch::channel(status("replica", 5, Some("node-b"), Some(0)));
    let mut s = settings(&target);
    s.forwarding = Forwarding::Forward;
    let proxy = start(s, rx).await;
    let response = reqwest::Client::new()
        .post(format!("{proxy}/rows"))
        .header(FORWARDED_BY, "00000000000000CC")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 503);
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn health_fails_only_while_the_lag_exceeds_max_lag() {
    let (target, _) = application().await;
    let (tx, rx) = watch::channel(status("replica", 5, Some("node-b"), Some(200)));
    let proxy = start(settings(&target), rx).await;
    let client = reqwest::Client::new();
    let ok = client.get(format!("{proxy}/litefs/health")).send().await.expect("get");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("body"), "OK\n");
    tx.send_replace(status("replica", 5, Some("node-b"), Some(1500)));
    let lagging = client.get(format!("{proxy}/litefs/health")).send().await.expect("get");
    assert_eq!(lagging.status(), 503);
    assert_eq!(lagging.text().await.expect("body"), "Replication lag exceeded\n");
}

#[tokio::test]
async fn an_application_that_is_not_listening_gets_a_502_after_the_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (_tx, rx) = watch::channel(status("primary", 1, None, None));
    let proxy = start(settings(&format!("127.0.0.1:{port}")), rx).await;
    let started = Instant::now();
    let response = reqwest::Client::new().get(format!("{proxy}/")).send().await.expect("get");
    assert_eq!(response.status(), 502);
    assert!(started.elapsed() >= Duration::from_millis(200), "no retries: {:?}", started.elapsed());
    let body = response.text().await.expect("body");
    assert!(body.starts_with("Proxy error: "), "{body}");
}

#[tokio::test]
async fn an_application_that_starts_late_is_waited_for() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let (_tx, rx) = watch::channel(status("primary", 1, None, None));
    let mut s = settings(&addr.to_string());
    s.target_patience = Duration::from_secs(10);
    let proxy = start(s, rx).await;
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let app = Router::new().fallback(any(|| async { "late but here" }));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        axum::serve(listener, app).await
    });
    let response = reqwest::Client::new().get(format!("{proxy}/")).send().await.expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "late but here");
    late.abort();
}

#[test]
fn the_public_url_uses_the_advertised_host_unless_bound_to_one() {
    let any: std::net::SocketAddr = "0.0.0.0:8080".parse().expect("addr");
    assert_eq!(public_url(any, "http://node-a.internal:20202"), "http://node-a.internal:8080");
    let one: std::net::SocketAddr = "127.0.0.1:8081".parse().expect("addr");
    assert_eq!(public_url(one, "http://node-a.internal:20202"), "http://127.0.0.1:8081");
}

#[test]
fn auto_forwarding_is_fly_replay_only_on_fly() {
    assert_eq!(Forwarding::resolve(WriteForwarding::Auto, true), Forwarding::FlyReplay);
    assert_eq!(Forwarding::resolve(WriteForwarding::Auto, false), Forwarding::Forward);
    assert_eq!(Forwarding::resolve(WriteForwarding::Forward, true), Forwarding::Forward);
    assert_eq!(Forwarding::resolve(WriteForwarding::FlyReplay, false), Forwarding::FlyReplay);
}

#[tokio::test]
async fn large_bodies_stream_through_in_both_directions() {
    // The application answers with the size of what it received, then that many bytes back.
    let app = Router::new()
        .fallback(any(|body: axum::body::Bytes| async move {
            let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
            format!("{} {sum}\n{}", body.len(), "x".repeat(body.len()))
        }))
        .layer(axum::extract::DefaultBodyLimit::disable());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (_tx, rx) = watch::channel(status("primary", 3, None, None));
    let proxy = start(settings(&target), rx).await;

    let upload: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
    let sum: u64 = upload.iter().map(|b| u64::from(*b)).sum();
    let response = reqwest::Client::new().put(format!("{proxy}/blob")).body(upload.clone()).send().await.expect("put");
    assert_eq!(response.status(), 200);
    assert!(txid_cookie_of(&response).is_some(), "a PUT is a write");
    let body = response.bytes().await.expect("body");
    let (head, rest) = body.split_at(body.iter().position(|b| *b == b'\n').expect("newline") + 1);
    assert_eq!(std::str::from_utf8(head).expect("utf-8"), format!("{} {sum}\n", upload.len()));
    assert_eq!(rest.len(), upload.len());
}

#[tokio::test]
async fn a_streamed_answer_reaches_the_client_chunk_by_chunk() {
    // Server-sent events and the like: the first chunk must not wait for the last.
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release = Arc::new(std::sync::Mutex::new(Some(release_rx)));
    let app = Router::new().fallback(any(move || {
        let release = release.lock().expect("lock").take();
        async move {
            let stream = futures_util::stream::unfold((0, release), |(i, release)| async move {
                match i {
                    0 => Some((Ok::<_, std::io::Error>("first\n"), (1, release))),
                    1 => {
                        if let Some(r) = release {
                            let _ = r.await;
                        }
                        Some((Ok("second\n"), (2, None)))
                    }
                    _ => None,
                }
            });
            axum::body::Body::from_stream(stream)
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (_tx, rx) = watch::channel(status("primary", 3, None, None));
    let proxy = start(settings(&target), rx).await;

    let mut response = reqwest::Client::new().get(format!("{proxy}/events")).send().await.expect("get");
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await.expect("first chunk in time");
    assert_eq!(first.expect("chunk").expect("some").as_ref(), b"first\n");
    release_tx.send(()).expect("release");
    let second = response.chunk().await.expect("chunk").expect("some");
    assert_eq!(second.as_ref(), b"second\n");
}

#[tokio::test]
async fn head_requests_are_reads_and_answer_without_a_body() {
    let (target, seen) = application().await;
    let (_tx, rx) = watch::channel(status("replica", 5, Some("node-b"), Some(0)));
    let proxy = start(settings(&target), rx).await;
    let response = reqwest::Client::new().head(format!("{proxy}/rows")).send().await.expect("head");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("fly-replay").is_none(), "HEAD is a read, served here");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off_after_read_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (target, seen) = application().await;
    let (_tx, rx) = watch::channel(status("primary", 1, None, None));
    let proxy = start(settings(&target), rx).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.trim_start_matches("http://")).await.expect("connect");
    conn.write_all(b"GET /rows HTTP/1.1\r\nHost: x\r\n").await.expect("half a request");
    let started = Instant::now();
    let mut rest = Vec::new();
    // The proxy closes the connection (hyper may first answer 408); either way it ends.
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection stayed open");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "closed after {waited:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

/// A stand-in for the primary's HTTP API: `/info` shows `proxy_url`.
async fn primary_api(proxy_url: Option<String>) -> String {
    let mut info = status("primary", 9, None, None);
    info.proxy_url = proxy_url;
    let api = Router::new().route("/info", axum::routing::get(move || async move { axum::Json(info) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, api).await });
    url
}

fn replica_following(api_url: &str) -> Status {
    let mut s = status("replica", 5, Some("node-b"), Some(0));
    if let Some(p) = s.primary.as_mut() {
        p.advertise_url = api_url.to_owned();
    }
    s
}

#[tokio::test]
async fn a_write_on_a_replica_is_forwarded_to_the_primary_s_proxy_and_its_answer_relayed() {
    let (primary_app, primary_seen) = application().await;
    let (_ptx, prx) = watch::channel(status("primary", 9, None, None));
    let primary_proxy = start(settings(&primary_app), prx).await;
    let api = primary_api(Some(primary_proxy.clone())).await;

    let (replica_app, replica_seen) = application().await;
    let (_rtx, rrx) = watch::channel(replica_following(&api));
    let mut s = settings(&replica_app);
    s.forwarding = Forwarding::Forward;
    let replica_proxy = start(s, rrx).await;

    let client = reqwest::Client::new();
    for _ in 0..2 {
        let response = client
            .post(format!("{replica_proxy}/rows"))
            .header("host", "app.example")
            .body("x=1")
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 200);
        let cookie = txid_cookie_of(&response).expect("the primary's cookie is relayed");
        assert!(cookie.starts_with("__txid=0000000000000009;"), "{cookie}");
        assert_eq!(response.text().await.expect("body"), "POST /rows host=app.example");
    }
    assert_eq!(primary_seen.load(Ordering::SeqCst), 2, "the primary's application handled both");
    assert_eq!(replica_seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_write_on_a_replica_whose_primary_runs_no_proxy_fails_with_the_reason() {
    let api = primary_api(None).await;
    let (replica_app, replica_seen) = application().await;
    let (_rtx, rrx) = watch::channel(replica_following(&api));
    let mut s = settings(&replica_app);
    s.forwarding = Forwarding::Forward;
    let replica_proxy = start(s, rrx).await;
    let response = reqwest::Client::new().post(format!("{replica_proxy}/rows")).send().await.expect("post");
    assert_eq!(response.status(), 502);
    let body = response.text().await.expect("body");
    assert!(body.contains("runs no proxy"), "{body}");
    assert_eq!(replica_seen.load(Ordering::SeqCst), 0);
}
