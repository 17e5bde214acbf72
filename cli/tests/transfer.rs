//! `/export` and `/import` (and `replite export` / `replite import`) over a plain directory
//! standing in for the mount: SQLite's backup API works the same there, so these check the
//! HTTP side, the name and role rules, the validation of uploads and the CLI, without FUSE.
//! What the mount adds (capture as one transaction, replication) is covered by the cluster
//! tests.

use std::path::{Path, PathBuf};
use std::process::Output;

use replite::api::transfer::{Imported, routes};
use replite::driver::{Peer, Status};
use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

/// A node's status with the given role and primary.
fn status(role: &str, primary: Option<Peer>) -> Status {
    Status {
        node_id: "00000000000000AA".into(),
        hostname: "node-a".into(),
        role: role.into(),
        epoch: Some(1),
        primary,
        in_sync: true,
        ..Status::default()
    }
}

fn primary() -> Status {
    status("primary", None)
}

/// The API over `dir`, on a free loopback port; serving stops when the guard drops.
struct Server {
    url: String,
    _stop: oneshot::Sender<()>,
    _status: watch::Sender<Status>,
}

async fn serve(dir: &Path, status: Status) -> Server {
    let (status_tx, status_rx) = watch::channel(status);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    let (stop, stopped) = oneshot::channel::<()>();
    let router = routes(dir.to_path_buf(), status_rx);
    tokio::spawn(replite::http::serve(listener, router, async move {
        let _ = stopped.await;
    }));
    Server { url, _stop: stop, _status: status_tx }
}

/// A database of `rows` rows (with page-spanning values) at `path`, in `journal_mode`.
fn create_db(path: &Path, rows: i64, journal_mode: &str, page_size: u32) {
    let conn = Connection::open(path).expect("create database");
    conn.pragma_update(None, "page_size", page_size).expect("page size");
    conn.query_row(&format!("PRAGMA journal_mode = {journal_mode}"), [], |_| Ok(())).expect("journal mode");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)").expect("create table");
    let mut insert = conn.prepare("INSERT INTO t (id, v) VALUES (?1, ?2)").expect("prepare insert");
    for id in 0..rows {
        insert.execute(rusqlite::params![id, format!("row {id} ").repeat(50)]).expect("insert");
    }
}

fn rows(path: &Path) -> Vec<(i64, String)> {
    let conn = Connection::open(path).expect("open database");
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").expect("prepare select");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("select").collect::<Result<_, _>>().expect("rows")
}

fn pragma(path: &Path, name: &str) -> String {
    let conn = Connection::open(path).expect("open database");
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, rusqlite::types::Value>(0))
        .map(|v| match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        })
        .expect("pragma")
}

async fn export_to(url: &str, name: &str, out: &Path) -> Result<u64, replite::api::ApiError> {
    let mut file = tokio::fs::File::create(out).await.expect("create the export file");
    replite::api::export_database(url, name, &mut file, |_, _| {}).await
}

async fn import_from(url: &str, name: &str, file: &Path) -> Result<Imported, replite::api::ApiError> {
    let bytes = tokio::fs::read(file).await.expect("read the file to import");
    let len = bytes.len() as u64;
    replite::api::import_database(url, name, std::io::Cursor::new(bytes), len, |_, _| {}).await
}

/// The answer's status code and body for a raw request.
async fn raw(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.expect("the server answers");
    let code = response.status().as_u16();
    (code, response.text().await.expect("a text body"))
}

fn status_code(result: Result<impl std::fmt::Debug, replite::api::ApiError>) -> (u16, String) {
    match result {
        Err(replite::api::ApiError::Status { status, body, .. }) => (status, body),
        other => panic!("expected an error status, got {other:?}"),
    }
}

struct Dirs {
    _tmp: tempfile::TempDir,
    mount: PathBuf,
    local: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let mount = tmp.path().join("mount");
    let local = tmp.path().join("local");
    std::fs::create_dir_all(&mount).expect("mount directory");
    std::fs::create_dir_all(&local).expect("local directory");
    Dirs { mount, local, _tmp: tmp }
}

#[tokio::test]
async fn export_returns_a_consistent_copy_with_the_same_rows() {
    let d = dirs();
    create_db(&d.mount.join("app.db"), 300, "wal", 4096);
    let server = serve(&d.mount, status("replica", None)).await;
    let out = d.local.join("copy.db");
    let bytes = export_to(&server.url, "app.db", &out).await.expect("export");
    assert_eq!(bytes, std::fs::metadata(&out).expect("exported file").len());
    assert_eq!(rows(&out), rows(&d.mount.join("app.db")));
    assert_eq!(pragma(&out, "integrity_check"), "ok");
}

#[tokio::test]
async fn export_of_an_unknown_database_is_404_and_bad_names_are_400() {
    let d = dirs();
    let server = serve(&d.mount, primary()).await;
    let (code, body) = status_code(export_to(&server.url, "missing.db", &d.local.join("x.db")).await);
    assert_eq!(code, 404);
    assert!(body.contains("\"missing.db\" does not exist"), "{body}");

    let client = reqwest::Client::new();
    for query in ["name=..", "name=a%2Fb", "name=", "name=app.db-wal", "name=.primary", "other=x"] {
        let (code, body) = raw(client.get(format!("{}/export?{query}", server.url))).await;
        assert_eq!(code, 400, "{query}: {body}");
    }
    let long = "x".repeat(256);
    let (code, _) = raw(client.get(format!("{}/export?name={long}", server.url))).await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn import_on_a_replica_is_refused_with_409_naming_the_primary() {
    let d = dirs();
    let source = d.local.join("src.db");
    create_db(&source, 10, "delete", 4096);
    let leader = Peer {
        node_id: "00000000000000BB".into(),
        hostname: "node-b".into(),
        advertise_url: "http://node-b:20202".into(),
    };
    let server = serve(&d.mount, status("replica", Some(leader))).await;
    let (code, body) = status_code(import_from(&server.url, "app.db", &source).await);
    assert_eq!(code, 409);
    assert_eq!(body, "this node is replica, not the primary: import on the primary, node-b (http://node-b:20202)");
    assert!(!d.mount.join("app.db").exists(), "a refused import must not create the database");

    // A large upload refused before it is read: the client still gets the answer.
    let large = d.local.join("large.db");
    let conn = Connection::open(&large).expect("create a large database");
    conn.execute_batch("CREATE TABLE b (x BLOB); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 32) INSERT INTO b SELECT zeroblob(1 << 20) FROM n;")
        .expect("fill it");
    drop(conn);
    let (code, _) = status_code(import_from(&server.url, "app.db", &large).await);
    assert_eq!(code, 409);

    let orphan = serve(&d.mount, status("waiting", None)).await;
    let (code, body) = status_code(import_from(&orphan.url, "app.db", &source).await);
    assert_eq!(code, 409);
    assert!(body.contains("no primary is known"), "{body}");
}

#[tokio::test]
async fn import_of_garbage_is_400_and_leaves_the_database_unchanged() {
    let d = dirs();
    let target = d.mount.join("app.db");
    create_db(&target, 20, "delete", 4096);
    let before = std::fs::read(&target).expect("read the database");
    let server = serve(&d.mount, primary()).await;

    let garbage = d.local.join("garbage");
    std::fs::write(&garbage, b"this is not a database, just some text\n".repeat(200)).expect("write garbage");
    let (code, body) = status_code(import_from(&server.url, "app.db", &garbage).await);
    assert_eq!(code, 400);
    assert!(body.contains("not a SQLite database"), "{body}");

    let empty = d.local.join("empty");
    std::fs::write(&empty, b"").expect("write an empty file");
    let (code, body) = status_code(import_from(&server.url, "app.db", &empty).await);
    assert_eq!(code, 400);
    assert!(body.contains("empty"), "{body}");

    // A real header over damaged pages: only the integrity check can tell.
    let damaged = d.local.join("damaged.db");
    create_db(&damaged, 200, "delete", 4096);
    let mut bytes = std::fs::read(&damaged).expect("read");
    for b in &mut bytes[4096 + 8..4096 + 200] {
        *b = 0xA5;
    }
    std::fs::write(&damaged, &bytes).expect("damage the database");
    let (code, body) = status_code(import_from(&server.url, "app.db", &damaged).await);
    assert_eq!(code, 400);
    assert!(body.starts_with("the upload fails SQLite's integrity check: Tree 2 page 2"), "{body}");
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");

    assert_eq!(std::fs::read(&target).expect("read the database"), before);
}

#[tokio::test]
async fn import_then_export_round_trips_and_reports_the_position() {
    let d = dirs();
    let server = serve(&d.mount, primary()).await;
    let source = d.local.join("src.db");
    create_db(&source, 500, "wal", 4096);

    let imported = import_from(&server.url, "new.db", &source).await.expect("import a new database");
    assert_eq!(imported.name, "new.db");
    assert_eq!(imported.bytes, std::fs::metadata(&source).expect("source").len());
    assert_eq!(imported.position, None, "a plain directory has no -pos file");
    // The upload was in WAL mode; the new database is not switched to it.
    assert_eq!(pragma(&d.mount.join("new.db"), "journal_mode"), "delete");

    let out = d.local.join("out.db");
    export_to(&server.url, "new.db", &out).await.expect("export");
    assert_eq!(rows(&out), rows(&source));
    assert_eq!(pragma(&out, "integrity_check"), "ok");

    // Replacing an existing WAL-mode database with 1 KiB pages by one with 4 KiB pages: its
    // page size and journal mode stay, its contents are replaced.
    let target = d.mount.join("app.db");
    create_db(&target, 3, "wal", 1024);
    let pos = "0000000000000007/8000000000001234";
    std::fs::write(d.mount.join("app.db-pos"), format!("{pos}\n")).expect("write app.db-pos");
    let imported = import_from(&server.url, "app.db", &source).await.expect("replace a database");
    assert_eq!(imported.position.as_deref(), Some(pos));
    assert_eq!(rows(&target), rows(&source));
    assert_eq!(pragma(&target, "page_size"), "1024");
    assert_eq!(pragma(&target, "journal_mode"), "wal");
    assert_eq!(pragma(&target, "integrity_check"), "ok");
}

async fn replite(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_replite")).args(args).output().await.expect("run replite")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn cli_import_and_export_work_end_to_end_with_go_style_flags() {
    let d = dirs();
    let server = serve(&d.mount, primary()).await;
    let source = d.local.join("src.db");
    create_db(&source, 200, "delete", 4096);
    let source_arg = source.to_str().expect("utf-8 path");

    let out = replite(&["import", "-url", &server.url, "-name", "app.db", source_arg]).await;
    assert!(out.status.success(), "import failed: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("Import of database \"app.db\""), "{}", text(&out.stdout));
    assert_eq!(rows(&d.mount.join("app.db")), rows(&source));

    // Export over an existing file with a stale journal beside it: both are replaced.
    let target = d.local.join("exported.db");
    create_db(&target, 1, "delete", 4096);
    let stale = d.local.join("exported.db-journal");
    std::fs::write(&stale, b"stale").expect("write a stale journal");
    let target_arg = target.to_str().expect("utf-8 path");
    let out = replite(&["export", "--url", &server.url, "--name", "app.db", target_arg]).await;
    assert!(out.status.success(), "export failed: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("Export of database \"app.db\""), "{}", text(&out.stdout));
    assert!(!stale.exists(), "the stale journal must be removed");
    assert_eq!(rows(&target), rows(&source));
    let leftovers: Vec<_> = std::fs::read_dir(&d.local)
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let out = replite(&["export", "-url", &server.url, "-name", "missing.db", target_arg]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
    assert_eq!(rows(&target), rows(&source), "a failed export leaves the file alone");
}

#[tokio::test]
async fn an_upload_declared_larger_than_the_limit_is_refused_with_413_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = dirs();
    let server = serve(&d.mount, primary()).await;
    let addr = server.url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let too_large = replite::api::transfer::MAX_IMPORT_BYTES + 1;
    let request = format!("POST /import?name=app.db HTTP/1.1\r\nHost: x\r\nContent-Length: {too_large}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("send the request head");
    let mut head = vec![0; 64];
    let n = conn.read(&mut head).await.expect("read the answer");
    assert!(head[..n].starts_with(b"HTTP/1.1 413"), "{}", text(&head[..n]));
    assert!(!d.mount.join("app.db").exists());
}
