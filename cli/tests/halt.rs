//! LiteFS's halt lock on a replite primary, end to end: real daemons (a primary and a
//! replica), real FUSE, real SQLite. The test plays a LiteFS replica running
//! `litefs run -with-halt-lock-on`: it halts the primary's writers (`POST /halt`), makes a
//! transaction with SQLite on a copy of the database at the primary's position, sends its LTX
//! file (`POST /tx`) and lets go (`DELETE /halt`).

mod support;

use std::time::{Duration, Instant};

use replite_core::ltx::{Encoder, Header, checksum_database};
use replite_core::{Checksum, NodeId, PageSize, Pgno, Pos, TxId};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use support::cluster::{Lease, Node, WAIT};

/// The LiteFS replica the test plays.
const FOREIGN: NodeId = NodeId(0x0000_0000_0000_0f0f);

fn http(method: reqwest::Method, url: String, body: Vec<u8>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let response = reqwest::Client::new()
            .request(method, url)
            .header("Litefs-Id", format!("{:016X}", FOREIGN.0))
            .body(body)
            .timeout(WAIT)
            .send()
            .await
            .expect("request answered");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    })
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count")
}

fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check")
}

/// Waits until `node` reports `want` for `db`.
fn wait_for_pos(node: &Node, db: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    while node.pos(db).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{} never reached {want}: {:?}\n{}",
            node.name,
            node.pos(db),
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pos_string(pos: Pos) -> String {
    format!("{:016x}/{:016x}", pos.txid.0, pos.checksum.0)
}

/// What the replica does: on a copy of the database at `at` (the primary's file, complete
/// while its writers are halted and its WAL checkpointed), runs `sql` with SQLite and
/// encodes the pages that changed as the LTX file of transaction `at + 1`.
fn replica_transaction(primary: &Node, db: &str, at: Pos, sql: &str) -> (Vec<u8>, Pos) {
    let work = tempfile::tempdir().expect("tempdir");
    let before = std::fs::read(primary.dir.join("data/dbs").join(db).join("database")).expect("the primary's file");
    let copy = work.path().join(db);
    std::fs::write(&copy, &before).expect("copy");
    {
        let conn = Connection::open(&copy).expect("open the copy");
        conn.execute_batch(sql).expect("the replica's transaction");
        let _: (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap_or((0, 0, 0));
    }
    let after = std::fs::read(&copy).expect("the copy after");
    let page_size = PageSize::new(u32::from(u16::from_be_bytes([after[16], after[17]]))).expect("page size");
    let size = page_size.bytes();
    let commit = (after.len() / size) as u32;
    let mut header = Header::new(page_size, commit, TxId(at.txid.0 + 1), TxId(at.txid.0 + 1), at.checksum);
    header.node_id = FOREIGN;
    let mut encoder = Encoder::new(Vec::new(), header).expect("encoder");
    for (i, page) in after.chunks(size).enumerate() {
        if before.get(i * size..(i + 1) * size) != Some(page) {
            encoder.encode_page(Pgno(i as u32 + 1), page).expect("encode page");
        }
    }
    let post = checksum_database(after.as_slice(), page_size).expect("checksum");
    let (bytes, _) = encoder.finish(post).expect("finish");
    (bytes, Pos::new(TxId(at.txid.0 + 1), post))
}

fn parse_granted(body: &str) -> (i64, Pos) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let hex = |s: &Value| u64::from_str_radix(s.as_str().expect("a string"), 16).expect("16 hex digits");
    assert!(v["expires"].as_str().is_some_and(|s| s.contains('T')), "an RFC 3339 expiry: {body}");
    (
        v["id"].as_i64().expect("id"),
        Pos::new(TxId(hex(&v["pos"]["TXID"])), Checksum(hex(&v["pos"]["PostApplyChecksum"]))),
    )
}

fn open_writer(node: &Node, db: &str, busy: Duration) -> Connection {
    let conn = support::cluster::open_on_primary(node, db);
    conn.busy_timeout(busy).expect("busy timeout");
    conn
}

fn read_only(node: &Node, db: &str) -> Connection {
    let conn = Connection::open_with_flags(node.db_path(db), OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open read-only");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn
}

fn halt_lock_round(journal_mode: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = Node::new(root.path(), "a", &Lease::Static { primary_url: None });
    a.start();
    a.wait_for("primary", |i| i["role"] == "primary");
    let mut b = Node::new(root.path(), "b", &Lease::Static { primary_url: Some(a.url.clone()) });
    b.start();
    let db = "app.db";
    let local = open_writer(&a, db, Duration::from_secs(5));
    local
        .execute_batch(&format!(
            "PRAGMA journal_mode={journal_mode}; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO t (v) VALUES ('one'), ('two');"
        ))
        .expect("create");
    wait_for_pos(&b, db, &a.pos(db).expect("a position"));

    // A replica is no primary to halt.
    let (status, body) = http(reqwest::Method::POST, format!("{}/halt?name={db}&id=42", b.url), vec![]);
    assert_eq!(status, 409, "{body}");
    let (status, body) = http(reqwest::Method::POST, format!("{}/halt?name=missing.db&id=42", a.url), vec![]);
    assert_eq!(status, 404, "{body}");

    let (status, body) = http(reqwest::Method::POST, format!("{}/halt?name={db}&id=42", a.url), vec![]);
    assert_eq!(status, 200, "{body}");
    let (id, at) = parse_granted(&body);
    assert_eq!(id, 42);
    assert_eq!(Some(pos_string(at)), a.pos(db), "the lock carries the primary's position");
    let shown = a.info().expect("info")["haltLocks"].clone();
    assert_eq!(shown[0]["db"], db, "{shown}");
    assert_eq!(shown[0]["id"], 42, "{shown}");
    assert_eq!(shown[0]["with"], format!("{:016X}", FOREIGN.0), "{shown}");
    assert!(shown[0]["expiresInMs"].as_u64().is_some_and(|ms| ms <= 30_000), "{shown}");

    // Local writers wait (and give up after their busy timeout); readers go on.
    let impatient = open_writer(&a, db, Duration::from_millis(300));
    let err = impatient.execute("INSERT INTO t (v) VALUES ('local')", []).expect_err("writers are halted");
    assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy), "{err:?}");
    assert_eq!(count(&read_only(&a, db)), 2);

    let (ltx, post) = replica_transaction(&a, db, at, "INSERT INTO t (v) VALUES ('from the replica');");
    // Under another lock id, or broken, or not a transaction after the lock's position: refused.
    let (status, body) = http(reqwest::Method::POST, format!("{}/tx?name={db}&lockID=7", a.url), ltx.clone());
    assert_eq!(status, 409, "{body}");
    let mut corrupt = ltx.clone();
    let last = corrupt.len() - 20;
    corrupt[last] ^= 0xff;
    let (status, body) = http(reqwest::Method::POST, format!("{}/tx?name={db}&lockID=42", a.url), corrupt);
    assert_eq!(status, 400, "{body}");
    assert_eq!(a.pos(db), Some(pos_string(at)), "nothing was committed");

    let (status, body) = http(reqwest::Method::POST, format!("{}/tx?name={db}&lockID=42", a.url), ltx.clone());
    assert_eq!(status, 200, "{body}");
    wait_for_pos(&a, db, &pos_string(post));
    wait_for_pos(&b, db, &pos_string(post));
    for node in [&a, &b] {
        let reader = read_only(node, db);
        let v: String = reader.query_row("SELECT v FROM t WHERE id = 3", [], |r| r.get(0)).expect("the row");
        assert_eq!(v, "from the replica", "on {}", node.name);
        assert_eq!(integrity(&reader), "ok");
    }
    // The same file again no longer follows the database's position.
    let (status, body) = http(reqwest::Method::POST, format!("{}/tx?name={db}&lockID=42", a.url), ltx);
    assert_eq!(status, 409, "{body}");

    let (status, body) = http(reqwest::Method::DELETE, format!("{}/halt?name={db}&id=42", a.url), vec![]);
    assert_eq!(status, 200, "{body}");
    // The transaction was sent with the replica's id, by which LiteFS's replicas know it.
    let ltx_name = format!("{:016x}-{:016x}.ltx", post.txid.0, post.txid.0);
    let stored =
        std::fs::read(a.dir.join("data/dbs").join(db).join("ltx").join(&ltx_name)).expect("the stored LTX file");
    assert_eq!(&stored[72..80], &FOREIGN.0.to_be_bytes(), "node id in the header");

    // Writers on the primary go on from there.
    local.execute("INSERT INTO t (v) VALUES ('local again')", []).expect("writes resume");
    let want = a.pos(db).expect("position");
    wait_for_pos(&b, db, &want);
    let reader = read_only(&b, db);
    assert_eq!(count(&reader), 4);
    assert_eq!(integrity(&reader), "ok");
    drop(reader);
    drop((local, impatient));
    a.stop();
    b.stop();
}

#[test]
fn a_litefs_replica_writes_through_a_halt_lock_on_a_rollback_journal_database() {
    halt_lock_round("DELETE");
}

#[test]
fn a_litefs_replica_writes_through_a_halt_lock_on_a_wal_database() {
    halt_lock_round("WAL");
}

/// A static primary alone, with an empty table `t` in `app.db`, and the connection that made it.
fn primary_with_table(root: &std::path::Path) -> (Node, Connection) {
    let mut a = Node::new(root, "a", &Lease::Static { primary_url: None });
    a.start();
    a.wait_for("primary", |i| i["role"] == "primary");
    let local = open_writer(&a, "app.db", Duration::from_secs(5));
    local.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);").expect("create");
    (a, local)
}

#[test]
fn a_halt_lock_is_renewed_by_asking_again_and_another_waits_for_its_release() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, local) = primary_with_table(root.path());
    let db = "app.db";
    let (status, body) = http(reqwest::Method::POST, format!("{}/halt?name={db}&id=1", a.url), vec![]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(reqwest::Method::POST, format!("{}/halt?name={db}&id=1", a.url), vec![]);
    assert_eq!(status, 200, "the holder asks again: {body}");
    let url = a.url.clone();
    let second = std::thread::spawn(move || http(reqwest::Method::POST, format!("{url}/halt?name={db}&id=2"), vec![]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!second.is_finished(), "a second lock waits for the first");
    let (status, _) = http(reqwest::Method::DELETE, format!("{}/halt?name={db}&id=1", a.url), vec![]);
    assert_eq!(status, 200);
    let (status, body) = second.join().expect("second request");
    assert_eq!(status, 200, "granted once the first let go: {body}");
    let (status, _) = http(reqwest::Method::DELETE, format!("{}/halt?name={db}&id=2", a.url), vec![]);
    assert_eq!(status, 200);
    local.execute("INSERT INTO t (v) VALUES ('x')", []).expect("writes resume");
    drop(local);
    a.stop();
}

/// `replite run -with-halt-lock-on DB -- CMD` on node `node`, CMD being `sh -c SCRIPT`.
fn replite_run(node: &Node, db: &str, script: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_replite"))
        .args(["run", "-url", &node.url, "-with-halt-lock-on"])
        .arg(node.db_path(db))
        .args(["--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start replite run")
}

fn finished(child: std::process::Child) -> std::process::Output {
    let output = child.wait_with_output().expect("replite run ends");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Every node holds exactly `want` in table `t` of `db`, and the database is whole.
fn assert_rows(nodes: &[&Node], db: &str, want: &[&str]) {
    for node in nodes {
        let reader = read_only(node, db);
        let rows: Vec<String> = reader
            .prepare("SELECT v FROM t ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("rows");
        assert_eq!(rows, want, "on {}", node.name);
        assert_eq!(integrity(&reader), "ok");
    }
}

/// A static primary `a` with a replica `b`, and table `t` in `app.db` in `journal_mode`, made
/// on `a` (one row, 'one') and replicated; the connection that made it (busy timeout 10 s).
fn pair_with_table(root: &std::path::Path, journal_mode: &str) -> (Node, Node, Connection) {
    let mut a = Node::new(root, "a", &Lease::Static { primary_url: None });
    a.start();
    a.wait_for("primary", |i| i["role"] == "primary");
    let mut b = Node::new(root, "b", &Lease::Static { primary_url: Some(a.url.clone()) });
    b.start();
    let local = open_writer(&a, "app.db", Duration::from_secs(10));
    local
        .execute_batch(&format!(
            "PRAGMA journal_mode={journal_mode}; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO t (v) VALUES ('one');"
        ))
        .expect("create");
    wait_for_pos(&b, "app.db", &a.pos("app.db").expect("a position"));
    (a, b, local)
}

fn replica_writes_under_replite_run(journal_mode: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, local) = pair_with_table(root.path(), journal_mode);
    let db = "app.db";
    let on_b = b.db_path(db).display().to_string();
    let sqlite = format!("sqlite3 -cmd '.timeout 5000' {on_b}");

    // Without the lock the replica's database is read-only.
    let plain = std::process::Command::new("sh")
        .args(["-c", &format!("{sqlite} \"INSERT INTO t (v) VALUES ('refused')\"")])
        .output()
        .expect("sqlite3");
    assert!(!plain.status.success(), "a replica refuses writes without a halt lock");

    // Two autocommit transactions and one explicit one, then the command waits for `go`.
    let go = root.path().join("go");
    let script = format!(
        "{sqlite} \"INSERT INTO t (v) VALUES ('b1'); INSERT INTO t (v) VALUES ('b2');
                    BEGIN; INSERT INTO t (v) VALUES ('b3'); UPDATE t SET v = 'ONE' WHERE id = 1; COMMIT;\" || exit 9
         i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
        go = go.display()
    );
    let run = replite_run(&b, db, &script);
    let deadline = Instant::now() + WAIT;
    while count(&read_only(&a, db)) < 4 {
        assert!(Instant::now() < deadline, "the replica's writes never reached the primary:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both nodes show the lock: the primary whom it halts for, the replica where it holds one.
    let on_a = a.info().expect("info")["haltLocks"].clone();
    let b_id = b.info().expect("info")["nodeId"].clone();
    assert_eq!(on_a[0]["with"], b_id, "{on_a}");
    let on_b = b.info().expect("info")["haltLocks"].clone();
    assert_eq!(on_b[0]["db"], db, "{on_b}");
    assert_eq!(on_b[0]["with"], a.url.as_str(), "{on_b}");
    // While the command holds the lock, the primary's own writers wait.
    let impatient = open_writer(&a, db, Duration::from_millis(300));
    let err =
        impatient.execute("INSERT INTO t (v) VALUES ('local')", []).expect_err("the primary's writers are halted");
    assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy), "{err:?}");
    std::fs::write(&go, b"").expect("go");
    let output = finished(run);
    assert!(output.status.success(), "replite run: {output:?}");

    // Both nodes hold the replica's transactions at one position; writes on the primary go on.
    let want = a.pos(db).expect("position");
    wait_for_pos(&b, db, &want);
    local.execute("INSERT INTO t (v) VALUES ('a2')", []).expect("the primary writes again");
    let want = a.pos(db).expect("position");
    wait_for_pos(&b, db, &want);
    assert_rows(&[&a, &b], db, &["ONE", "b1", "b2", "b3", "a2"]);
    let log = b.log_text();
    assert!(
        !log.contains("Resync") && !log.contains("mismatch"),
        "the replica took its own transactions back whole:\n{log}"
    );
    assert!(log.contains("halt lock released"), "{log}");
    for node in [&a, &b] {
        assert!(node.info().expect("info").get("haltLocks").is_none(), "{} shows no lock once let go", node.name);
    }

    // A command that fails: its exit code is replite run's, and the lock is let go.
    let output = finished(replite_run(&b, db, "exit 3"));
    assert_eq!(output.status.code(), Some(3));
    impatient.execute("INSERT INTO t (v) VALUES ('a3')", []).expect("the lock was let go");
    // On the primary no lock is needed: the command just writes.
    let on_a =
        format!("sqlite3 -cmd '.timeout 5000' {} \"INSERT INTO t (v) VALUES ('run on a')\"", a.db_path(db).display());
    let output = finished(replite_run(&a, db, &on_a));
    assert!(output.status.success(), "{output:?}");
    assert_eq!(count(&read_only(&a, db)), 7);
    drop((local, impatient));
    a.stop();
    b.stop();
}

#[test]
fn replite_run_with_a_halt_lock_writes_a_rollback_journal_database_from_a_replica() {
    replica_writes_under_replite_run("DELETE");
}

#[test]
fn replite_run_with_a_halt_lock_writes_a_wal_database_from_a_replica() {
    replica_writes_under_replite_run("WAL");
}

/// The id of the halt lock `primary` granted last, from its log.
/// A transaction under a halt lock whose file is larger than a replica keeps in memory comes
/// back spooled to disk: stored like a small one, not applied over the pages already there.
#[test]
fn a_large_transaction_under_a_halt_lock_comes_back_to_the_replica_whole() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, local) = pair_with_table(root.path(), "DELETE");
    let db = "app.db";
    // 3 MiB of incompressible rows in one transaction: its LTX file passes the 1 MiB spool limit.
    let script = format!(
        "sqlite3 -cmd '.timeout 5000' {} \"BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 48)
         INSERT INTO t (v) SELECT hex(randomblob(32768)) FROM n; COMMIT;\"",
        b.db_path(db).display()
    );
    let output = finished(replite_run(&b, db, &script));
    assert!(output.status.success(), "replite run: {output:?}");
    let want = a.pos(db).expect("position");
    wait_for_pos(&b, db, &want);
    for node in [&a, &b] {
        assert_eq!(count(&read_only(node, db)), 49, "on {}", node.name);
    }
    local.execute("INSERT INTO t (v) VALUES ('after')", []).expect("the primary writes again");
    let want = a.pos(db).expect("position");
    wait_for_pos(&b, db, &want);
    assert_eq!(integrity(&read_only(&b, db)), "ok");
    let log = b.log_text();
    assert!(
        !log.contains("Resync") && !log.contains("mismatch"),
        "the replica took its transaction back whole:\n{log}"
    );
    drop(local);
    a.stop();
    b.stop();
}

fn granted_id(primary: &Node) -> i64 {
    let log = primary.log_text();
    let line =
        log.lines().rev().find(|l| l.contains("halt lock granted")).unwrap_or_else(|| panic!("no grant:\n{log}"));
    let at = line.find("id=").expect("an id field") + 3;
    line[at..].split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok()).expect("a numeric id")
}

fn refused_transaction_on_a_replica(journal_mode: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, local) = pair_with_table(root.path(), journal_mode);
    let db = "app.db";
    let sqlite = format!("sqlite3 -cmd '.timeout 5000' {}", b.db_path(db).display());
    let cut = root.path().join("cut");
    let script = format!(
        "{sqlite} \"INSERT INTO t (v) VALUES ('b1')\" || exit 8
         i=0; while [ ! -e {cut} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
         {sqlite} \"BEGIN; INSERT INTO t (v) VALUES ('b2'); INSERT INTO t (v) SELECT v FROM t; COMMIT;\" || exit 9",
        cut = cut.display()
    );
    let run = replite_run(&b, db, &script);
    let deadline = Instant::now() + WAIT;
    while count(&read_only(&a, db)) < 2 {
        assert!(Instant::now() < deadline, "b1 never reached the primary:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The primary lets go of the lock behind the replica's back (as when it expires).
    let id = granted_id(&a);
    let (status, body) = http(reqwest::Method::DELETE, format!("{}/halt?name={db}&id={id}", a.url), vec![]);
    assert_eq!(status, 200, "{body}");
    std::fs::write(&cut, b"").expect("cut");
    let output = finished(run);
    assert_eq!(output.status.code(), Some(9), "the refused transaction failed the command: {output:?}");

    // Nothing of it anywhere; both nodes at one position, whole.
    local.execute("INSERT INTO t (v) VALUES ('a2')", []).expect("the primary writes");
    let want = a.pos(db).expect("position");
    wait_for_pos(&b, db, &want);
    assert_rows(&[&a, &b], db, &["one", "b1", "a2"]);
    drop(local);
    a.stop();
    b.stop();
}

#[test]
fn a_transaction_the_primary_refuses_fails_on_the_replica_and_leaves_nothing_rollback_journal() {
    refused_transaction_on_a_replica("DELETE");
}

#[test]
fn a_transaction_the_primary_refuses_fails_on_the_replica_and_leaves_nothing_wal() {
    refused_transaction_on_a_replica("WAL");
}

/// Halt locks taken over and over from a replica while the primary's own application writes
/// without pause: its writers wait out each lock and go on, nothing is lost or refused on
/// either side, and both nodes end with the same rows at one position.
fn halt_locks_interleave_with_a_busy_primary_writer(journal_mode: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, local) = pair_with_table(root.path(), journal_mode);
    drop(local);
    let db = "app.db";
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (std::sync::Arc::clone(&stop), a.db_path(db));
        std::thread::spawn(move || {
            let conn = Connection::open(path).expect("open on the primary");
            conn.busy_timeout(Duration::from_secs(20)).expect("busy timeout");
            let mut written = 0u32;
            // Bounded: stops when told, or after 5 000 rows whatever happens.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && written < 5_000 {
                conn.execute("INSERT INTO t (v) VALUES ('a')", []).expect("the primary's writer waits, never fails");
                written += 1;
            }
            written
        })
    };
    let sqlite = format!("sqlite3 -cmd '.timeout 5000' {}", b.db_path(db).display());
    for round in 0..5 {
        let script = format!(
            "{sqlite} \"INSERT INTO t (v) VALUES ('b{round}'); BEGIN; INSERT INTO t (v) VALUES ('b{round}'); COMMIT;\" || exit 9"
        );
        let output = finished(replite_run(&b, db, &script));
        assert!(output.status.success(), "round {round}: {output:?}\n{}", b.log_text());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(written > 0);
    eprintln!("the primary wrote {written} rows meanwhile");
    let want = a.pos(db).expect("position");
    wait_for_pos(&b, db, &want);
    for node in [&a, &b] {
        let reader = read_only(node, db);
        let (from_a, from_b): (u32, u32) = reader
            .query_row("SELECT sum(v = 'a'), sum(v LIKE 'b%') FROM t", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("counts");
        assert_eq!((from_a, from_b), (written, 10), "on {}", node.name);
        assert_eq!(integrity(&reader), "ok");
    }
    let log = b.log_text();
    assert!(!log.contains("Resync") && !log.contains("mismatch"), "{log}");
    a.stop();
    b.stop();
}

#[test]
fn halt_locks_from_a_replica_interleave_with_a_busy_primary_writer_wal() {
    halt_locks_interleave_with_a_busy_primary_writer("WAL");
}

#[test]
fn halt_locks_from_a_replica_interleave_with_a_busy_primary_writer_rollback_journal() {
    halt_locks_interleave_with_a_busy_primary_writer("DELETE");
}

/// A halt lock nobody renews lets go by itself after LiteFS's 30 s: the primary's writers
/// go on, and a transaction sent under it afterwards is refused.
#[test]
fn a_halt_lock_that_is_not_renewed_expires_after_30_seconds() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, local) = primary_with_table(root.path());
    let db = "app.db";
    let (status, body) = http(reqwest::Method::POST, format!("{}/halt?name={db}&id=5", a.url), vec![]);
    assert_eq!(status, 200, "{body}");
    let (_, at) = parse_granted(&body);
    let taken = Instant::now();
    let (ltx, _) = replica_transaction(&a, db, at, "INSERT INTO t (v) VALUES ('late');");
    let writer = open_writer(&a, db, Duration::from_secs(45));
    writer.execute("INSERT INTO t (v) VALUES ('local')", []).expect("the writer waits out the lock");
    let waited = taken.elapsed();
    assert!(waited >= Duration::from_secs(29), "the lock held for {waited:?}");
    assert!(waited < Duration::from_secs(40), "the lock held for {waited:?}");
    let (status, body) = http(reqwest::Method::POST, format!("{}/tx?name={db}&lockID=5", a.url), ltx);
    assert_eq!(status, 409, "{body}");
    assert!(a.log_text().contains("halt lock expired"), "{}", a.log_text());
    assert_eq!(count(&read_only(&a, db)), 1);
    drop((local, writer));
    a.stop();
}

/// `replite run` killed while it holds a halt lock: its node notices the connection gone and
/// lets go, so the primary's writers go on within seconds, not after the lock's 30 s.
#[test]
fn a_halt_lock_is_let_go_when_replite_run_dies() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, local) = pair_with_table(root.path(), "DELETE");
    drop(local);
    let db = "app.db";
    // The command outlives the test's patience; `replite run` itself is killed.
    let mut run = replite_run(&b, db, "sleep 8");
    let deadline = Instant::now() + WAIT;
    while !a.log_text().contains("halt lock granted") {
        assert!(Instant::now() < deadline, "no halt lock:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    run.kill().expect("kill replite run");
    let _ = run.wait();
    let killed = Instant::now();
    let writer = open_writer(&a, db, Duration::from_secs(25));
    writer.execute("INSERT INTO t (v) VALUES ('after')", []).expect("the lock was let go");
    assert!(killed.elapsed() < Duration::from_secs(10), "let go after {:?}", killed.elapsed());
    assert!(b.log_text().contains("halt lock released"), "{}", b.log_text());
    let want = a.pos(db).expect("position");
    wait_for_pos(&b, db, &want);
    drop(writer);
    a.stop();
    b.stop();
}

/// `replite run` killed while its node is still taking the lock (the replica is behind the
/// lock's position, held back by a reader): the node finishes taking it, finds nobody
/// waiting, and lets go, instead of leaving the primary halted until the lock expires.
#[test]
fn a_halt_lock_is_let_go_when_replite_run_dies_while_taking_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, local) = pair_with_table(root.path(), "DELETE");
    let db = "app.db";
    // A read transaction on the replica keeps the next apply out.
    let reader = read_only(&b, db);
    reader.execute_batch("BEGIN; SELECT count(*) FROM t;").expect("read transaction");
    local.execute("INSERT INTO t (v) VALUES ('ahead')", []).expect("a commit the replica cannot apply yet");
    drop(local);
    let mut run = replite_run(&b, db, "sleep 8");
    let deadline = Instant::now() + WAIT;
    while !a.log_text().contains("halt lock granted") {
        assert!(Instant::now() < deadline, "no halt lock:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!b.log_text().contains("this replica writes the database"), "still taking it:\n{}", b.log_text());
    run.kill().expect("kill replite run");
    let _ = run.wait();
    reader.execute_batch("COMMIT;").expect("end the read transaction");
    let released = Instant::now();
    let writer = open_writer(&a, db, Duration::from_secs(25));
    writer.execute("INSERT INTO t (v) VALUES ('after')", []).expect("the lock was let go");
    assert!(released.elapsed() < Duration::from_secs(10), "let go after {:?}", released.elapsed());
    let want = a.pos(db).expect("position");
    wait_for_pos(&b, db, &want);
    drop((reader, writer));
    a.stop();
    b.stop();
}
