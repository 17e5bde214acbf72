//! End to end: real `replite mount` daemons on 127.0.0.1, each with its own FUSE mount, the
//! application played by rusqlite. Writes on the primary reach every replica with equal
//! positions; replicas refuse writes; restarted nodes catch up; with etcd, a killed primary's
//! lease passes to a replica, and the old primary comes back as a replica.

mod support;

use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use support::cluster::{Lease, Node, WAIT};

fn open(node: &Node, db: &str) -> Connection {
    let conn = support::cluster::open_on_primary(node, db);
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn
}

fn open_read_only(node: &Node, db: &str) -> Connection {
    let conn = Connection::open_with_flags(node.db_path(db), OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open read-only");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn
}

/// The table every test writes: `t (id, v TEXT)`.
fn create_table(conn: &Connection) {
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").expect("create table t");
}

/// `n` autocommit inserts of `"{label} {i}"`.
fn insert_rows(conn: &Connection, label: &str, n: usize) {
    for i in 0..n {
        conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("{label} {i}")]).expect("insert");
    }
}

fn count(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count")
}

fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check")
}

/// Waits until every replica reports the same position for `db` as `primary`; returns it.
/// Both are re-read on every poll: the primary's status is published just after it answers a
/// commit, so a position read right after a write may be one transaction old.
fn converge(primary: &Node, replicas: &[&Node], db: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let want = primary.pos(db);
        let all_there = want.as_ref().is_some_and(|w| replicas.iter().all(|r| r.pos(db).as_ref() == Some(w)));
        if all_there {
            return want.expect("checked above");
        }
        if Instant::now() > deadline {
            let seen: Vec<_> = replicas.iter().map(|r| (r.name.clone(), r.pos(db))).collect();
            panic!("{db}: replicas {seen:?} never reached the primary's {want:?}\n{}", primary.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three running nodes under `root` with a static lease: `a` primary (up first), `b` and `c`
/// its replicas.
fn static_cluster(root: &std::path::Path) -> (Node, Node, Node) {
    let mut a = Node::new(root, "a", &Lease::Static { primary_url: None });
    let replica = Lease::Static { primary_url: Some(a.url.clone()) };
    let mut b = Node::new(root, "b", &replica);
    let mut c = Node::new(root, "c", &replica);
    a.start();
    a.wait_for("primary", |i| i["role"] == "primary");
    b.start();
    c.start();
    (a, b, c)
}

/// Two running nodes under `root` with a static lease: `a` primary (up first), `b` its replica.
fn static_pair(root: &std::path::Path) -> (Node, Node) {
    let mut a = Node::new(root, "a", &Lease::Static { primary_url: None });
    let mut b = Node::new(root, "b", &Lease::Static { primary_url: Some(a.url.clone()) });
    a.start();
    a.wait_for("primary", |i| i["role"] == "primary");
    b.start();
    (a, b)
}

/// The daemon warns at start when its data directory is on ext4 without a journal, and only
/// then (whichever this machine has: the test checks the two agree).
#[test]
fn the_daemon_warns_about_a_data_directory_on_ext4_without_a_journal_and_only_then() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = Node::new(root.path(), "a", &Lease::Static { primary_url: None });
    a.start();
    a.wait_for("primary", |i| i["role"] == "primary");
    let kind = replite::fs_kind::of(&a.dir.join("data")).expect("the data directory's file system");
    let warned = a.log_text().contains("ext4 without a journal");
    assert_eq!(warned, kind.is_unjournaled_ext4(), "{kind}\n{}", a.log_text());
    a.stop();
}

#[test]
fn three_static_nodes_replicate_every_write_and_replicas_refuse_writes() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, mut c) = static_cluster(root.path());

    let conn = open(&a, "app.db");
    create_table(&conn);
    for i in 0..50 {
        conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i} {}", "x".repeat(i * 40))]).expect("insert");
    }
    let pos = converge(&a, &[&b, &c], "app.db");
    assert!(pos.starts_with("0000000000000033/"), "51 transactions: {pos}");

    // `/info` answers LiteFS's fields too (scripts written against LiteFS read them).
    // A static replica knows the primary by the hostname its own config gives it.
    for (node, primary, primary_hostname) in [(&a, true, "a"), (&b, false, "primary")] {
        let info = node.info().expect("info");
        assert_eq!(info["isPrimary"], primary, "{info}");
        assert_eq!(info["candidate"], primary, "only a is a candidate here: {info}");
        assert_eq!(info["path"], node.dir.join("data").display().to_string(), "{info}");
        assert_eq!(info["primary"]["hostname"], primary_hostname, "LiteFS names the primary on every node: {info}");
    }

    // The API: Prometheus text and LiteFS-style events.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let metrics =
        runtime.block_on(async { reqwest::get(format!("{}/metrics", b.url)).await?.text().await }).expect("metrics");
    assert!(metrics.contains("replite_db_txid{db=\"app.db\"} 51"), "{metrics}");
    // The primary's mount: 51 DELETE-mode transactions, each paying its journal sync once,
    // before its database write (decision 0017).
    let primary_metrics =
        runtime.block_on(async { reqwest::get(format!("{}/metrics", a.url)).await?.text().await }).expect("metrics");
    let counter = |file: &str, answer: &str| -> u64 {
        let key = format!("replite_sqlite_fsyncs_total{{file=\"{file}\",answer=\"{answer}\"}} ");
        let line =
            primary_metrics.lines().find(|l| l.starts_with(&key)).unwrap_or_else(|| panic!("{key}: {primary_metrics}"));
        line[key.len()..].trim().parse().expect("a count")
    };
    assert_eq!(counter("journal", "synced"), 51, "{primary_metrics}");
    assert!(counter("journal", "owed") >= 51, "{primary_metrics}");
    let first_event = runtime
        .block_on(async {
            let mut response = reqwest::get(format!("{}/events", a.url)).await?;
            response.chunk().await
        })
        .expect("events")
        .expect("a first line");
    let init: serde_json::Value = serde_json::from_slice(first_event.trim_ascii()).expect("JSON line");
    assert_eq!(init["type"], "init");
    assert_eq!(init["data"]["isPrimary"], true);

    for node in [&a, &b, &c] {
        let reader = open_read_only(node, "app.db");
        assert_eq!(count(&reader), 50, "{}", node.name);
        assert_eq!(integrity(&reader), "ok", "{}", node.name);
    }

    // A write on a replica is refused with a read-only error and changes nothing.
    let on_replica = open(&b, "app.db");
    let refused = on_replica.execute("INSERT INTO t (v) VALUES ('nope')", []);
    let err = refused.expect_err("a replica refuses writes");
    assert!(
        matches!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly)),
        "expected SQLITE_READONLY, got {err:?}"
    );
    drop(on_replica);
    assert_eq!(b.pos("app.db"), Some(pos.clone()));

    // A static lease cannot move: a handoff is refused up front instead of leaving the cluster
    // without a primary.
    let b_id = b.info().expect("info")["nodeId"].as_str().expect("id").to_owned();
    let handoff = support::cluster::replite(&["handoff", "--url", &a.url, "--to", &b_id]);
    let said = String::from_utf8_lossy(&handoff.stderr);
    assert!(!handoff.status.success() && said.contains("static lease"), "{said}");
    let promote = support::cluster::replite(&["promote", "--url", &b.url]);
    let said = String::from_utf8_lossy(&promote.stderr);
    assert!(!promote.status.success() && said.contains("static lease"), "{said}");
    assert_eq!(a.role().as_deref(), Some("primary"), "the primary stays");

    // A replica that was down catches up when it comes back.
    c.stop();
    insert_rows(&conn, "later", 20);
    c.start();
    converge(&a, &[&b, &c], "app.db");
    assert_eq!(count(&open_read_only(&c, "app.db")), 70);
    drop(conn);

    // `replite import` on the primary replicates like any transaction; `export` from a
    // replica gives the same rows back.
    let source = root.path().join("source.db");
    let src = Connection::open(&source).expect("source db");
    src.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('i1'), ('i2'), ('i3');",
    )
    .expect("fill source");
    drop(src);
    let replite = env!("CARGO_BIN_EXE_replite");
    let import = std::process::Command::new(replite)
        .args(["import", "-url", &a.url, "-name", "imported.db"])
        .arg(&source)
        .output()
        .expect("run import");
    assert!(import.status.success(), "import: {}", String::from_utf8_lossy(&import.stderr));
    converge(&a, &[&b, &c], "imported.db");
    let exported = root.path().join("exported.db");
    let export = std::process::Command::new(replite)
        .args(["export", "-url", &c.url, "-name", "imported.db"])
        .arg(&exported)
        .output()
        .expect("run export");
    assert!(export.status.success(), "export: {}", String::from_utf8_lossy(&export.stderr));
    let copy = Connection::open(&exported).expect("open export");
    assert_eq!(count(&copy), 3);
    assert_eq!(integrity(&copy), "ok");

    for node in [&mut a, &mut b, &mut c] {
        node.stop();
    }
}

#[test]
fn with_etcd_a_killed_primary_is_replaced_and_returns_as_a_replica() {
    let etcd = support::etcd::EtcdServer::start();
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, first) = etcd_cluster(root.path(), &etcd.endpoint);
    let conn = open(&nodes[first], "app.db");
    create_table(&conn);
    insert_rows(&conn, "before", 20);
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    converge(&nodes[first], &[&nodes[others[0]], &nodes[others[1]]], "app.db");
    drop(conn);

    let killed_at = Instant::now();
    nodes[first].kill();
    let second = wait_for_primary(&nodes, &others);
    let took = killed_at.elapsed();
    eprintln!("failover took {took:?}");
    // TTL 3 s plus the 500 ms safety margin, plus polling slack.
    assert!(took < Duration::from_secs(6), "failover took {took:?}");

    let conn = open(&nodes[second], "app.db");
    assert_eq!(count(&conn), 20, "every replicated transaction is on the new primary");
    insert_rows(&conn, "after", 10);
    drop(conn);

    nodes[first].start();
    nodes[first].wait_for("a replica again", |i| i["role"] == "replica" && i["inSync"] == true);
    let rest: Vec<&Node> = (0..3).filter(|&i| i != second).map(|i| &nodes[i]).collect();
    converge(&nodes[second], &rest, "app.db");
    for n in &nodes {
        let reader = open_read_only(n, "app.db");
        assert_eq!(count(&reader), 30, "{}", n.name);
        assert_eq!(integrity(&reader), "ok", "{}", n.name);
    }
    for n in &mut nodes {
        n.stop();
    }
}

/// Starts three etcd-leased nodes and waits for a primary; returns its index.
fn etcd_cluster(root: &std::path::Path, endpoint: &str) -> (Vec<Node>, usize) {
    let lease = Lease::Etcd { endpoint: endpoint.to_owned(), ttl: "3s" };
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::new(root, n, &lease)).collect();
    for n in &mut nodes {
        n.start();
    }
    let primary = wait_for_primary(&nodes, &[0, 1, 2]);
    (nodes, primary)
}

fn wait_for_primary(nodes: &[Node], among: &[usize]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(&i) = among.iter().find(|&&i| nodes[i].role().as_deref() == Some("primary")) {
            return i;
        }
        assert!(Instant::now() < deadline, "no primary among {among:?} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn handoff_under_load_moves_the_primary_quickly_and_loses_no_acknowledged_write() {
    let etcd = support::etcd::EtcdServer::start();
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, first) = etcd_cluster(root.path(), &etcd.endpoint);
    let conn = open(&nodes[first], "app.db");
    create_table(&conn);
    drop(conn);
    let target = (first + 1) % 3;
    let rest: Vec<&Node> = (0..3).filter(|&i| i != first).map(|i| &nodes[i]).collect();
    converge(&nodes[first], &rest, "app.db");
    let target_id = nodes[target].info().expect("target info")["nodeId"].as_str().expect("id").to_owned();

    // A writer on the primary, switching to whichever node is primary when refused.
    let mounts: Vec<std::path::PathBuf> = nodes.iter().map(|n| n.db_path("app.db")).collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Writes acknowledged by the first primary, and by any other: the test waits on counts,
    // not on time, so a loaded machine only makes it slower.
    let acked = std::sync::Arc::new([std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0)]);
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            let mut at = first;
            let mut conn = Connection::open(&mounts[at]).expect("open");
            let deadline = Instant::now() + WAIT;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline && i < 100_000 {
                match conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("w{i}")]) {
                    Ok(_) => {
                        ok.push(i);
                        acked[usize::from(at != first)].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(e) => {
                        support::cluster::assert_refused_commit(&e);
                        failed.push(i);
                        // Find the new primary (bounded), then write there.
                        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
                        let found = (0..200).find_map(|_| {
                            let p = (0..3).find(|&n| {
                                runtime.block_on(replite::api::get_info(&urls[n])).is_ok_and(|s| s.role == "primary")
                            });
                            if p.is_none() {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            p
                        });
                        at = found.expect("a new primary appears");
                        conn = Connection::open(&mounts[at]).expect("open the new primary");
                    }
                }
                i += 1;
            }
            (ok, failed, at)
        })
    };
    let wait_for_writes = |side: usize, count: u64| {
        let deadline = Instant::now() + WAIT;
        while acked[side].load(std::sync::atomic::Ordering::SeqCst) < count {
            assert!(Instant::now() < deadline, "the writer made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for_writes(0, 20);
    let asked = Instant::now();
    let handoff = support::cluster::replite(&["handoff", "--url", &nodes[first].url, "--to", &target_id]);
    assert!(handoff.status.success(), "handoff: {}", String::from_utf8_lossy(&handoff.stderr));
    let deadline = Instant::now() + WAIT;
    while nodes[target].role().as_deref() != Some("primary") {
        assert!(
            Instant::now() < deadline,
            "target never became primary\n--- old primary ---\n{}\n--- target ---\n{}",
            nodes[first].log_text(),
            nodes[target].log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = asked.elapsed();
    wait_for_writes(1, 10);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed, at) = writer.join().expect("writer");
    assert_eq!(at, target, "the writer ended up on the new primary");
    assert!(took < Duration::from_secs(1), "handoff took {took:?}");
    assert!(failed.len() <= 2, "only in-flight commits may fail: {failed:?}");

    let conn = open(&nodes[target], "app.db");
    let rows: std::collections::BTreeSet<String> = conn
        .prepare("SELECT v FROM t")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    for i in &ok {
        assert!(rows.contains(&format!("w{i}")), "acknowledged write w{i} missing after handoff");
    }
    for i in &failed {
        assert!(!rows.contains(&format!("w{i}")), "refused write w{i} must not be applied");
    }
    let others: Vec<&Node> = (0..3).filter(|&i| i != target).map(|i| &nodes[i]).collect();
    converge(&nodes[target], &others, "app.db");
    drop(conn);
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn a_returning_primary_with_history_the_cluster_never_saw_is_resynced_from_a_snapshot() {
    let etcd = support::etcd::EtcdServer::start();
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, first) = etcd_cluster(root.path(), &etcd.endpoint);
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let conn = open(&nodes[first], "app.db");
    create_table(&conn);
    insert_rows(&conn, "shared", 5);
    converge(&nodes[first], &[&nodes[others[0]], &nodes[others[1]]], "app.db");

    // The replicas go down; the primary commits what no one else will ever see, then dies.
    for &i in &others {
        nodes[i].stop();
    }
    insert_rows(&conn, "lost", 5);
    drop(conn);
    nodes[first].kill();
    for &i in &others {
        nodes[i].start();
    }

    let second = wait_for_primary(&nodes, &others);
    let conn = open(&nodes[second], "app.db");
    insert_rows(&conn, "new", 8);
    drop(conn);

    nodes[first].start();
    nodes[first].wait_for("a replica in sync", |i| i["role"] == "replica" && i["inSync"] == true);
    let rest: Vec<&Node> = (0..3).filter(|&i| i != second).map(|i| &nodes[i]).collect();
    converge(&nodes[second], &rest, "app.db");
    let reader = open_read_only(&nodes[first], "app.db");
    assert_eq!(count(&reader), 13, "5 shared + 8 new, and none of the lost rows");
    let lost: i64 = reader.query_row("SELECT count(*) FROM t WHERE v LIKE 'lost%'", [], |r| r.get(0)).expect("query");
    assert_eq!(lost, 0);
    assert_eq!(integrity(&reader), "ok");
    drop(reader);
    let log = nodes[first].log_text();
    assert!(log.contains("SnapshotReplaced"), "the returning node says its history was replaced:\n{log}");
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn in_synchronous_mode_every_acknowledged_write_survives_repeated_kills_of_the_primary() {
    let etcd = support::etcd::EtcdServer::start();
    let root = tempfile::tempdir().expect("tempdir");
    let lease = Lease::Etcd { endpoint: etcd.endpoint.clone(), ttl: "3s" };
    let ids = [0xA1u64, 0xB2, 0xC3];
    let sync = support::cluster::sync_yaml(&ids);
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .zip(ids)
        .map(|(n, id)| Node::new_with(root.path(), n, &lease, Some(id), &sync))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let mut primary = wait_for_primary(&nodes, &[0, 1, 2]);
    let conn = open(&nodes[primary], "app.db");
    if let Err(e) = conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)") {
        panic!("create: {e}\n{}", nodes[primary].log_text());
    }
    drop(conn);

    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..3 {
        // A writer commits until its node dies under it; every commit that returned is acknowledged.
        let path = nodes[primary].db_path("app.db");
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = progress.clone();
        let writer = std::thread::spawn(move || {
            let mut done = Vec::new();
            let conn = match Connection::open(&path) {
                Ok(c) => c,
                Err(e) => return (done, Some(e.to_string())),
            };
            let _ = conn.busy_timeout(Duration::from_secs(2));
            for i in 0..2_000 {
                let v = format!("r{round}-{i}");
                match conn.execute("INSERT INTO t (v) VALUES (?1)", [&v]) {
                    Ok(_) => {
                        done.push(v);
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(e) => return (done, Some(e.to_string())),
                }
            }
            (done, None)
        });
        // Kill the primary mid-load, once the writer is well under way.
        let deadline = Instant::now() + WAIT;
        while progress.load(std::sync::atomic::Ordering::SeqCst) < 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        nodes[primary].kill();
        let (done, error) = writer.join().expect("writer");
        assert!(
            !done.is_empty(),
            "round {round}: the writer committed nothing ({error:?})\n{}",
            nodes[primary].log_text()
        );
        acknowledged.extend(done);

        let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
        let next = wait_for_primary(&nodes, &others);
        // The killed candidate must come back before the new primary can acknowledge commits.
        nodes[primary].start();
        let reader = open_read_only(&nodes[next], "app.db");
        let rows: std::collections::BTreeSet<String> = reader
            .prepare("SELECT v FROM t")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect();
        for v in &acknowledged {
            assert!(rows.contains(v), "round {round}: acknowledged {v} is missing on the new primary");
        }
        nodes[primary].wait_for("back as a replica", |i| i["role"] == "replica" && i["inSync"] == true);
        primary = next;
    }
    for n in &mut nodes {
        n.stop();
    }
}

/// A static primary that keeps LTX files only briefly, so its history soon no longer starts
/// at TXID 1 and a new replica needs a copy of the live database.
fn short_retention_primary(root: &std::path::Path) -> Node {
    let mut a = Node::new(root, "a", &Lease::Static { primary_url: None });
    a.edit_config(|text| text.replacen("data:\n", "data:\n  retention: 1ms\n", 1));
    a.start();
    a.wait_for("primary", |i| i["role"] == "primary");
    a
}

#[test]
fn a_replica_joining_after_retention_dropped_the_history_gets_a_snapshot_of_the_live_database() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = short_retention_primary(root.path());
    let conn = open(&a, "app.db");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    for _ in 0..40 {
        conn.execute("INSERT INTO t (v) VALUES (randomblob(20000))", []).expect("insert");
    }
    let ltx_dir = a.dir.join("data/dbs/app.db/ltx");
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_dir(&ltx_dir)
        .expect("ltx dir")
        .all(|e| !e.expect("entry").file_name().to_string_lossy().starts_with("0000000000000001-"))
    {
        assert!(Instant::now() < deadline, "retention never dropped the first file");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut b = Node::new(root.path(), "b", &Lease::Static { primary_url: Some(a.url.clone()) });
    b.start();
    converge(&a, &[&b], "app.db");
    let reader = open_read_only(&b, "app.db");
    assert_eq!(count(&reader), 40);
    assert_eq!(integrity(&reader), "ok");
    drop(reader);
    assert!(a.log_text().contains("snapshot sent"), "the primary copied its live database:\n{}", a.log_text());
    // The replica keeps following after the snapshot.
    conn.execute("INSERT INTO t (v) VALUES (randomblob(10))", []).expect("insert");
    converge(&a, &[&b], "app.db");
    drop(conn);
    a.stop();
    b.stop();
}

#[test]
fn a_wal_mode_primary_replicates_and_a_long_lived_replica_reader_sees_every_commit() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b) = static_pair(root.path());
    let conn = open(&a, "wal.db");
    conn.pragma_update(None, "journal_mode", "wal").expect("wal");
    create_table(&conn);
    converge(&a, &[&b], "wal.db");
    // One reader connection on the replica for the whole test: its cache must follow applies.
    let reader = open(&b, "wal.db");
    for round in 1..=5 {
        for i in 0..10 {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("{round}-{i}")]).expect("insert");
        }
        converge(&a, &[&b], "wal.db");
        assert_eq!(count(&reader), round * 10, "round {round}\n{}", b.log_text());
    }
    assert_eq!(integrity(&reader), "ok");
    drop(reader);
    drop(conn);
    a.stop();
    b.stop();
}

/// A replica applies small files on its driver's loop only when no SQLite connection is in
/// the way; a reader inside a read transaction sends the apply to a thread that waits for it.
/// The reader keeps its snapshot, the replica keeps answering, and it catches up after.
#[test]
fn a_replica_reader_inside_a_transaction_holds_applies_back_until_it_ends() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b) = static_pair(root.path());
    let conn = open(&a, "held.db");
    create_table(&conn);
    insert_rows(&conn, "before", 5);
    let before = converge(&a, &[&b], "held.db");
    let reader = open_read_only(&b, "held.db");
    reader.execute_batch("BEGIN").expect("begin");
    assert_eq!(count(&reader), 5);
    insert_rows(&conn, "during", 20);
    // The files arrive but wait for the reader: the replica stays where it was.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.pos("held.db").as_deref(), Some(before.as_str()), "applied under a reader\n{}", b.log_text());
    assert_eq!(count(&reader), 5, "the reader's snapshot changed");
    reader.execute_batch("COMMIT").expect("commit");
    converge(&a, &[&b], "held.db");
    assert_eq!(count(&reader), 25);
    assert_eq!(integrity(&reader), "ok");
    drop(reader);
    drop(conn);
    a.stop();
    b.stop();
}

#[test]
fn a_primary_killed_mid_snapshot_comes_back_and_the_replica_finishes_catching_up() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = short_retention_primary(root.path());
    let conn = open(&a, "big.db");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    // About 96 MiB of incompressible rows: a snapshot that takes a while to send.
    for _ in 0..24 {
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
             INSERT INTO t (v) SELECT randomblob(4096) FROM n",
        )
        .expect("insert 1000 rows");
    }
    drop(conn);
    let mut b = Node::new(root.path(), "b", &Lease::Static { primary_url: Some(a.url.clone()) });
    b.start();
    // Freeze b as soon as it connects, so the snapshot stalls mid-way (the primary's send
    // blocks once the stream's buffers are full), then kill the primary while it is sending.
    let deadline = Instant::now() + WAIT;
    while !a.log_text().contains("replica connected") {
        assert!(Instant::now() < deadline, "b never connected\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(2));
    }
    b.signal(libc::SIGSTOP);
    a.wait_for("sending a snapshot", |i| i["snapshots"].as_array().is_some_and(|s| !s.is_empty()));
    a.kill();
    b.signal(libc::SIGCONT);
    assert!(b.pos("big.db").is_none_or(|p| p.starts_with("0000000000000000/")), "b has nothing yet");
    a.start();
    a.wait_for("primary again", |i| i["role"] == "primary");
    converge(&a, &[&b], "big.db");
    let reader = open_read_only(&b, "big.db");
    assert_eq!(count(&reader), 24_000);
    assert_eq!(integrity(&reader), "ok");
    drop(reader);
    a.stop();
    b.stop();
}

/// The position a dropped database has: its drop's TXID and the empty database's checksum.
fn is_dropped_pos(pos: &str) -> bool {
    pos.ends_with("/8000000000000000")
}

/// Readers on a replica, in another process than its daemon, in WAL mode, in tight read
/// transactions while the primary moves money between accounts: every read sees a whole
/// transfer (the sum never changes) and versions never go back.
#[test]
fn wal_readers_on_a_replica_in_another_process_never_see_half_a_transfer() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b) = static_pair(root.path());
    let conn = open(&a, "bank.db");
    conn.pragma_update(None, "journal_mode", "wal").expect("wal");
    conn.execute_batch(
        "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER, ver INTEGER, pad BLOB);
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 15)
         INSERT INTO acct SELECT i, 1000, 0, randomblob(3000) FROM n;",
    )
    .expect("accounts");
    converge(&a, &[&b], "bank.db");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, stop) = (b.db_path("bank.db"), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut conn = Connection::open(path).expect("open on the replica");
                conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
                let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
                assert_eq!(mode, "wal");
                let (mut reads, mut last) = (0u32, 0i64);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let tx = conn.transaction().expect("read transaction");
                    let (sum, lo, hi): (i64, i64, i64) = tx
                        .query_row("SELECT sum(bal), min(ver), max(ver) FROM acct", [], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .expect("read");
                    tx.commit().expect("end read");
                    assert_eq!(sum, 16_000, "half a transfer");
                    assert_eq!(lo, hi, "two versions at once");
                    assert!(hi >= last, "went back from {last} to {hi}");
                    last = hi;
                    reads += 1;
                }
                (reads, last)
            })
        })
        .collect();
    for v in 1..=60i64 {
        let (from, to) = (v % 16, (v * 7 + 3) % 16);
        conn.execute_batch(&format!(
            "BEGIN; UPDATE acct SET bal = bal - 10 WHERE id = {from}; UPDATE acct SET bal = bal + 10 WHERE id = {to};
             UPDATE acct SET ver = {v}; COMMIT;"
        ))
        .expect("transfer");
    }
    converge(&a, &[&b], "bank.db");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for reader in readers {
        let (reads, last) = reader.join().expect("reader");
        assert!(reads > 10, "the reader hardly ran: {reads}");
        assert_eq!(last, 60, "the reader ends at the last transfer");
    }
    drop(conn);
    a.stop();
    b.stop();
}

/// A WAL database is read in WAL mode on a replica, whose connections hold SHARED on the file
/// for as long as they are open: a drop must not wait for them (another process here, so the
/// daemon's locks and the reader's really meet), and the open reader can no longer read it.
#[test]
fn a_wal_database_dropped_with_a_connection_open_on_a_replica_goes_without_waiting_for_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b) = static_pair(root.path());
    let conn = open(&a, "walgone.db");
    conn.pragma_update(None, "journal_mode", "wal").expect("wal");
    create_table(&conn);
    insert_rows(&conn, "row", 5);
    drop(conn);
    converge(&a, &[&b], "walgone.db");
    let reader = open(&b, "walgone.db");
    let mode: String = reader.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("journal_mode");
    assert_eq!(mode, "wal", "a WAL database is read in WAL mode on a replica");
    assert_eq!(count(&reader), 5);
    std::fs::remove_file(a.db_path("walgone.db")).expect("the primary drops the database");
    let dropped = converge(&a, &[&b], "walgone.db");
    assert!(is_dropped_pos(&dropped), "{dropped}");
    assert!(!b.db_path("walgone.db").exists());
    assert!(reader.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).is_err(), "read a dropped database");
    drop(reader);
    a.stop();
    b.stop();
}

/// Reads `/events` of the node at `url` on a thread of its own until `limit` has passed: each
/// JSON line comes through the channel, the `init` line first.
fn watch_events(url: &str, limit: Duration) -> std::sync::mpsc::Receiver<serde_json::Value> {
    let (lines, rx) = std::sync::mpsc::channel();
    let url = format!("{url}/events");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let mut response = match reqwest::get(&url).await {
                Ok(response) => response,
                Err(e) => panic!("GET {url}: {e:?}"),
            };
            let deadline = tokio::time::Instant::now() + limit;
            let mut pending = Vec::new();
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let event = serde_json::from_slice(line.trim_ascii()).expect("a JSON line");
                    if lines.send(event).is_err() {
                        return;
                    }
                }
            }
        });
    });
    rx
}

/// The `tx` events of `db` from `events` up to and including the first with `commit` 0 (a
/// drop), as (txID, postApplyChecksum, pageSize, commit).
fn tx_events_through_drop(
    events: &std::sync::mpsc::Receiver<serde_json::Value>,
    db: &str,
) -> Vec<(String, String, u64, u64)> {
    let mut seen = Vec::new();
    loop {
        let event = events.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no drop event; saw {seen:?}"));
        if event["type"] != "tx" || event["db"] != db {
            continue;
        }
        let data = &event["data"];
        let text = |key: &str| data[key].as_str().unwrap_or_else(|| panic!("{key} in {event}")).to_owned();
        let number = |key: &str| data[key].as_u64().unwrap_or_else(|| panic!("{key} in {event}"));
        seen.push((text("txID"), text("postApplyChecksum"), number("pageSize"), number("commit")));
        if number("commit") == 0 {
            return seen;
        }
    }
}

/// LiteFS's `/events` on both sides: every transaction as a `tx` event with its size in
/// pages, and a drop as one more transaction with `commit` 0, on the primary and the replica.
#[test]
fn events_show_every_transaction_and_the_drop_on_the_primary_and_the_replica() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b) = static_pair(root.path());
    b.wait_for("the replica's API", |i| i["role"] == "replica");
    let watchers = [watch_events(&a.url, WAIT), watch_events(&b.url, WAIT)];
    for events in &watchers {
        let init = events.recv_timeout(WAIT).expect("the init line");
        assert_eq!(init["type"], "init", "{init}");
    }
    let conn = open(&a, "ev.db");
    create_table(&conn);
    insert_rows(&conn, "row", 3);
    drop(conn);
    converge(&a, &[&b], "ev.db");
    std::fs::remove_file(a.db_path("ev.db")).expect("the primary drops the database");
    let dropped = converge(&a, &[&b], "ev.db");
    let (drop_txid, drop_checksum) = dropped.split_once('/').expect("txid/checksum");

    let on_primary = tx_events_through_drop(&watchers[0], "ev.db");
    let on_replica = tx_events_through_drop(&watchers[1], "ev.db");
    assert_eq!(on_primary.len(), 5, "four transactions and the drop: {on_primary:?}");
    for (i, (txid, _, page_size, commit)) in on_primary.iter().enumerate() {
        assert_eq!(txid, &format!("{:016x}", i + 1), "{on_primary:?}");
        assert_eq!(*page_size, 4096, "{on_primary:?}");
        assert_eq!(*commit > 0, i < 4, "only the drop leaves no pages: {on_primary:?}");
    }
    let last = on_primary.last().expect("the drop");
    assert_eq!((last.0.as_str(), last.1.as_str()), (drop_txid, drop_checksum), "{on_primary:?}");
    assert_eq!(on_replica, on_primary, "the replica reports the same transactions");
    // The readers are still connected: a stopping node ends their streams instead of
    // waiting out its HTTP server's grace period for them.
    a.stop();
    b.stop();
    for node in [&a, &b] {
        let log = node.log_text();
        assert!(!log.contains("HTTP connections still open after shutdown"), "{}: {log}", node.name);
    }
}

#[test]
fn a_database_unlinked_on_the_primary_disappears_from_every_replica_and_can_be_created_again() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b, mut c) = static_cluster(root.path());

    let conn = open(&a, "gone.db");
    create_table(&conn);
    insert_rows(&conn, "first", 10);
    drop(conn);
    let before = converge(&a, &[&b, &c], "gone.db");
    for node in [&b, &c] {
        assert!(node.db_path("gone.db-pos").exists(), "{}", node.name);
    }

    // c is down while the database is dropped.
    c.stop();
    std::fs::remove_file(a.db_path("gone.db")).expect("the primary drops the database");
    let dropped = converge(&a, &[&b], "gone.db");
    assert!(is_dropped_pos(&dropped), "{dropped}");
    assert!(dropped > before, "{dropped} after {before}");
    for node in [&a, &b] {
        for name in ["gone.db", "gone.db-pos", "gone.db-journal"] {
            assert!(!node.db_path(name).exists(), "{}: {name} is still there", node.name);
        }
    }

    // c comes back and learns of the drop from the primary's history.
    c.start();
    converge(&a, &[&b, &c], "gone.db");
    assert!(!c.db_path("gone.db").exists(), "the returning replica still has the dropped database");
    assert!(!c.db_path("gone.db-pos").exists());

    // The same name again, with other contents: it replicates like any new database.
    let conn = open(&a, "gone.db");
    create_table(&conn);
    insert_rows(&conn, "second", 3);
    drop(conn);
    let again = converge(&a, &[&b, &c], "gone.db");
    assert!(!is_dropped_pos(&again) && again > dropped, "{again}");
    for node in [&a, &b, &c] {
        let reader = open_read_only(node, "gone.db");
        assert_eq!(count(&reader), 3, "{}", node.name);
        let first: String = reader.query_row("SELECT v FROM t ORDER BY id LIMIT 1", [], |r| r.get(0)).expect("row");
        assert_eq!(first, "second 0", "{}", node.name);
        assert_eq!(integrity(&reader), "ok", "{}", node.name);
        let shown = std::fs::read_to_string(node.db_path("gone.db-pos")).expect("-pos");
        assert_eq!(shown.trim(), again, "{}", node.name);
    }

    for node in [&mut a, &mut b, &mut c] {
        node.stop();
    }
}

#[test]
fn a_wal_connection_kept_open_through_a_handoff_sees_the_new_primarys_writes() {
    let etcd = support::etcd::EtcdServer::start();
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, first) = etcd_cluster(root.path(), &etcd.endpoint);
    let old = open(&nodes[first], "wal.db");
    old.pragma_update(None, "journal_mode", "wal").expect("wal");
    create_table(&old);
    insert_rows(&old, "before", 10);
    let target = (first + 1) % 3;
    let rest: Vec<&Node> = (0..3).filter(|&i| i != first).map(|i| &nodes[i]).collect();
    converge(&nodes[first], &rest, "wal.db");
    let target_id = nodes[target].info().expect("target info")["nodeId"].as_str().expect("id").to_owned();

    // `old` stays open (idle) while its node is demoted.
    let handoff = support::cluster::replite(&["handoff", "--url", &nodes[first].url, "--to", &target_id]);
    assert!(handoff.status.success(), "handoff: {}", String::from_utf8_lossy(&handoff.stderr));
    nodes[target].wait_for("the target to be primary", |i| i["role"] == "primary");
    nodes[first].wait_for("the old primary to follow", |i| i["role"] == "replica");

    let writer = open(&nodes[target], "wal.db");
    insert_rows(&writer, "after", 5);
    drop(writer);
    let others: Vec<&Node> = (0..3).filter(|&i| i != target).map(|i| &nodes[i]).collect();
    converge(&nodes[target], &others, "wal.db");
    assert_eq!(count(&old), 15, "the connection opened on the old primary sees the new primary's writes");
    assert_eq!(integrity(&old), "ok");
    drop(old);
    assert_eq!(count(&open_read_only(&nodes[first], "wal.db")), 15);
    for n in &mut nodes {
        n.stop();
    }
}

/// Inserts `rows` rows of 4 KiB random bytes in one transaction (incompressible pages).
fn insert_random_pages(conn: &rusqlite::Connection, rows: u32) {
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO t (v) SELECT randomblob(4096) FROM n",
        [rows],
    )
    .expect("insert rows");
}

/// Waits until retention removed the primary's first LTX file of `db`: a new replica then
/// needs a snapshot.
fn wait_until_history_no_longer_starts_at_1(primary: &Node, db: &str) {
    let ltx_dir = primary.dir.join("data/dbs").join(db).join("ltx");
    let deadline = Instant::now() + WAIT;
    while std::fs::read_dir(&ltx_dir)
        .expect("ltx dir")
        .any(|e| e.expect("entry").file_name().to_string_lossy().starts_with("0000000000000001-"))
    {
        assert!(Instant::now() < deadline, "retention never dropped the first file");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Names in a replica's LTX directory, with sizes (but the spare files the store keeps ready).
fn ltx_files(node: &Node, db: &str) -> Vec<(String, u64)> {
    let dir = node.dir.join("data/dbs").join(db).join("ltx");
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .expect("ltx dir")
        .map(|e| e.expect("entry"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().expect("stat").len()))
        .filter(|(name, _)| !name.starts_with(".spare-"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_snapshot_and_a_transaction_far_past_the_replicas_in_memory_limit_are_spooled_and_applied() {
    // The replica holds at most 1 MiB of an LTX file in memory (core's default inline limit);
    // these are 16+ MiB of incompressible pages each.
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = short_retention_primary(root.path());
    let conn = open(&a, "big.db");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    insert_random_pages(&conn, 4_200);
    conn.execute("INSERT INTO t (v) VALUES (randomblob(10))", []).expect("insert");
    wait_until_history_no_longer_starts_at_1(&a, "big.db");
    let mut b = Node::new(root.path(), "b", &Lease::Static { primary_url: Some(a.url.clone()) });
    b.start();
    converge(&a, &[&b], "big.db");
    let reader = open_read_only(&b, "big.db");
    assert_eq!(count(&reader), 4_201);
    assert_eq!(integrity(&reader), "ok");
    drop(reader);
    let files = ltx_files(&b, "big.db");
    assert!(files.iter().all(|(name, _)| !name.ends_with(".tmp")), "a spool was left behind: {files:?}");
    assert!(
        files.iter().any(|(name, size)| name.starts_with("0000000000000001-") && *size > 16 << 20),
        "the replica stores the snapshot it received as its LTX history: {files:?}"
    );

    // A single transaction as big, to a replica that is caught up: an incremental file spooled.
    insert_random_pages(&conn, 4_200);
    converge(&a, &[&b], "big.db");
    let reader = open_read_only(&b, "big.db");
    assert_eq!(count(&reader), 8_401);
    assert_eq!(integrity(&reader), "ok");
    drop(reader);
    drop(conn);
    a.stop();
    b.stop();
    // The replica restarts from what it stored: its database matches its position.
    b.start();
    b.wait_for("back and recovered", |i| i["role"] == "replica");
    let reader = open_read_only(&b, "big.db");
    assert_eq!(count(&reader), 8_401);
    drop(reader);
    b.stop();
}

#[test]
fn a_replica_killed_while_spooling_a_snapshot_restarts_clean_and_catches_up() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = short_retention_primary(root.path());
    let conn = open(&a, "big.db");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    insert_random_pages(&conn, 8_000);
    conn.execute("INSERT INTO t (v) VALUES (randomblob(10))", []).expect("insert");
    drop(conn);
    wait_until_history_no_longer_starts_at_1(&a, "big.db");
    let mut b = Node::new(root.path(), "b", &Lease::Static { primary_url: Some(a.url.clone()) });
    b.start();
    // As soon as b has begun spooling, freeze the primary (the snapshot stops mid-way) and
    // kill b: a partial spool is on its disk.
    let spool_dir = b.dir.join("data/dbs/big.db/ltx");
    let deadline = Instant::now() + WAIT;
    let spooling = || {
        std::fs::read_dir(&spool_dir)
            .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with(".spool-")))
            .unwrap_or(false)
    };
    while !spooling() {
        assert!(Instant::now() < deadline, "b never began spooling\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(1));
    }
    a.signal(libc::SIGSTOP);
    b.kill();
    a.signal(libc::SIGCONT);
    assert!(spooling(), "the kill left the partial spool for recovery to find");
    b.start();
    converge(&a, &[&b], "big.db");
    let files = ltx_files(&b, "big.db");
    assert!(files.iter().all(|(name, _)| !name.ends_with(".tmp")), "recovery removed the partial spool: {files:?}");
    let reader = open_read_only(&b, "big.db");
    assert_eq!(count(&reader), 8_001);
    assert_eq!(integrity(&reader), "ok");
    drop(reader);
    a.stop();
    b.stop();
}

/// A replica that joins thousands of commits behind is sent the history file by file, faster
/// than it applies it: it must pause reading (flow control holds the primary back), not
/// overflow its buffer and resynchronise, reconnect and overflow again.
#[test]
fn a_replica_joining_thousands_of_commits_behind_catches_up_without_resyncing() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = Node::new(&root.path().join("x"), "a", &Lease::Static { primary_url: None });
    a.start();
    a.wait_for("primary", |i| i["role"] == "primary");
    let conn = open(&a, "behind.db");
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL").expect("WAL");
    create_table(&conn);
    insert_rows(&conn, "row", 3000);

    let mut b = Node::new(&root.path().join("x"), "b", &Lease::Static { primary_url: Some(a.url.clone()) });
    b.start();
    let pos = converge(&a, &[&b], "behind.db");
    let log = b.log_text();
    assert!(!log.contains("too many LTX files buffered"), "the replica resynced:\n{log}");
    assert!(!log.contains("Resync"), "the replica resynced:\n{log}");
    assert!(pos.starts_with("0000000000000bba/"), "3002 commits: {pos}");
    assert_eq!(count(&open_read_only(&b, "behind.db")), 3000);
}

#[test]
fn with_consul_a_handoff_passes_the_session_and_loses_nothing() {
    // The Consul double (no Consul server can be installed here) runs on its own runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let consul = runtime.block_on(support::consul::FakeConsul::start(Duration::from_secs(10)));
    let root = tempfile::tempdir().expect("tempdir");
    let lease = Lease::Consul { url: consul.url.clone() };
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::new(root.path(), n, &lease)).collect();
    for n in &mut nodes {
        n.start();
    }
    let first = wait_for_primary(&nodes, &[0, 1, 2]);
    let conn = open(&nodes[first], "app.db");
    create_table(&conn);
    insert_rows(&conn, "before", 50);
    drop(conn);
    let target = (first + 1) % 3;
    let rest: Vec<&Node> = (0..3).filter(|&i| i != first).map(|i| &nodes[i]).collect();
    converge(&nodes[first], &rest, "app.db");
    let target_id = nodes[target].info().expect("target info")["nodeId"].as_str().expect("id").to_owned();

    let asked = Instant::now();
    let handoff = support::cluster::replite(&["handoff", "--url", &nodes[first].url, "--to", &target_id]);
    assert!(handoff.status.success(), "handoff: {}", String::from_utf8_lossy(&handoff.stderr));
    while nodes[target].role().as_deref() != Some("primary") {
        assert!(asked.elapsed() < WAIT, "target never became primary\n{}", nodes[target].log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = asked.elapsed();
    // Consul's lock delay would hold a released key for a second: a handoff never frees it.
    assert!(took < Duration::from_secs(1), "handoff took {took:?}");
    assert!(nodes[target].log_text().contains("took the consul lease over"), "{}", nodes[target].log_text());
    assert!(!nodes[first].log_text().contains("released consul lease"), "{}", nodes[first].log_text());

    let conn = open(&nodes[target], "app.db");
    insert_rows(&conn, "after", 10);
    assert_eq!(count(&conn), 60);
    let others: Vec<&Node> = (0..3).filter(|&i| i != target).map(|i| &nodes[i]).collect();
    converge(&nodes[target], &others, "app.db");
    drop(conn);
    for n in &mut nodes {
        n.stop();
    }
    drop(consul);
}

/// A replica that keeps dropping its stream before a copy of the live database lands (as a
/// LiteFS replica whose disk is full does) gets the first two at once, then waits: the third
/// is sent only after the primary's hold-off, which it reports.
#[test]
fn a_replica_that_keeps_failing_copies_is_held_off_by_the_primary() {
    use replite_core::stream::{DbName, Extensions, PosMap, encode_pos_map};
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = short_retention_primary(root.path());
    let conn = open(&a, "app.db");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    for _ in 0..20 {
        conn.execute("INSERT INTO t (v) VALUES (randomblob(20000))", []).expect("insert");
    }
    wait_until_history_no_longer_starts_at_1(&a, "app.db");
    let copies_sent = |a: &Node| a.log_text().matches("snapshot sent").count();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let map: PosMap = [(DbName::new("app.db").expect("valid"), replite_core::Pos::ZERO)].into_iter().collect();
    let foreign = replite_core::NodeId(0x00F0_0000_0000_0001);
    for attempt in 1..=3 {
        // A LiteFS replica offers no extensions; it drops the stream once the copy is sent.
        let stream = runtime
            .block_on(replite::http::connect(&a.url, foreign, Extensions::NONE, encode_pos_map(&map)))
            .expect("stream opens");
        let deadline = Instant::now() + WAIT;
        while copies_sent(&a) < attempt {
            assert!(Instant::now() < deadline, "copy {attempt} never sent:\n{}", a.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(stream);
    }
    let log = a.log_text();
    let held = log.find("SnapshotHeldOff").unwrap_or_else(|| panic!("the third copy was not held off:\n{log}"));
    assert!(log[held..].contains("failed: 2, wait_ms:"), "{log}");
    // Sent only after the hold-off was decided: two copies before that line, the third after.
    assert_eq!(log[..held].matches("snapshot sent").count(), 2, "{log}");
    assert_eq!(log[held..].matches("snapshot sent").count(), 1, "{log}");
    drop(conn);
    a.stop();
}
