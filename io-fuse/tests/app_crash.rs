//! An application killed in the middle of a transaction: SQLite's next reader rolls it back
//! (rollback journal) or ignores its frames (WAL); nothing of it reaches the sink and the
//! database is what the captured history says.
//!
//! The test re-runs its own binary as the application to kill, selected by an environment
//! variable, so no other program is needed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CHILD_DB: &str = "REPLITE_TEST_CRASH_DB";
const CHILD_MARK: &str = "REPLITE_TEST_CRASH_MARK";
const CHILD_MODE: &str = "REPLITE_TEST_CRASH_MODE";
const CHILD_ROWS: &str = "REPLITE_TEST_CRASH_ROWS";

/// In the child: start a large update that spills into the database (or WAL), say so, and wait
/// to be killed.
fn child_main(db: PathBuf, mark: PathBuf, mode: String, rows: u32) -> ! {
    let conn = rusqlite::Connection::open(&db).expect("child opens the database");
    conn.execute_batch("PRAGMA cache_size=4; PRAGMA cache_spill=4;").expect("pragmas");
    journal_mode(&conn, &mode);
    conn.execute_batch(&format!("BEGIN; UPDATE t SET v = randomblob(300) WHERE id <= {rows};"))
        .expect("uncommitted update");
    std::fs::write(&mark, b"ready").expect("mark");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `rows`: how many rows the killed transaction updates. `stale_journal`: first commit a
/// larger transaction that spills (a journal of many segments, which DELETE mode then keeps
/// for reuse, decision 0018), so that the killed transaction's hot journal is followed by
/// stale segments of that one.
fn killed_mid_transaction(mode: &str, test_name: &str, rows: u32, stale_journal: bool) {
    if let (Some(db), Some(mark), Some(mode), Some(rows)) = (
        std::env::var_os(CHILD_DB),
        std::env::var_os(CHILD_MARK),
        std::env::var(CHILD_MODE).ok(),
        std::env::var(CHILD_ROWS).ok().and_then(|r| r.parse().ok()),
    ) {
        child_main(db.into(), mark.into(), mode, rows);
    }
    let fx = Fixture::primary();
    let conn = fx.open("crash.db");
    journal_mode(&conn, mode);
    conn.execute_batch("PRAGMA page_size=512; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);").unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for _ in 0..200 {
        conn.execute("INSERT INTO t(v) VALUES (zeroblob(300))", []).unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    if stale_journal {
        conn.execute_batch(
            "PRAGMA cache_size=4; PRAGMA cache_spill=4; BEGIN; UPDATE t SET v = randomblob(300); \
             UPDATE t SET v = zeroblob(300); COMMIT;",
        )
        .unwrap();
    }
    drop(conn);
    let kept = stale_journal.then(|| {
        let meta = std::fs::metadata(fx.side_file("crash.db", "journal")).expect("the journal is kept");
        assert!(!fx.path("crash.db-journal").exists(), "and deleted for SQLite");
        (meta.ino(), meta.len())
    });
    let commits = fx.sink.commits();
    let mark = std::env::temp_dir().join(format!("replite-crash-mark-{}-{mode}", std::process::id()));
    let _ = std::fs::remove_file(&mark);

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, fx.path("crash.db"))
        .env(CHILD_MARK, &mark)
        .env(CHILD_MODE, mode)
        .env(CHILD_ROWS, rows.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the application");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mark.exists() {
        assert!(Instant::now() < deadline, "the application never reached its transaction");
        assert!(child.try_wait().expect("child status").is_none(), "the application exited early");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let _ = std::fs::remove_file(&mark);

    if let Some((ino, len)) = kept {
        let meta = std::fs::metadata(fx.side_file("crash.db", "journal")).expect("hot journal");
        assert_eq!((meta.ino(), meta.len()), (ino, len), "the killed transaction wrote inside the kept journal");
    }
    if mode != "WAL" {
        // The kill left a hot journal and a half-written database.
        assert!(fx.side_file("crash.db", "journal").exists());
        assert_ne!(fx.stored("crash.db"), fx.sink.copy_of("crash.db"), "the spill reached the file");
    }
    let reader = fx.open("crash.db");
    let zeroed: i64 = reader.query_row("SELECT count(*) FROM t WHERE v = zeroblob(300)", [], |r| r.get(0)).unwrap();
    assert_eq!(zeroed, 200, "the killed transaction is gone");
    integrity_ok(&reader);
    assert_eq!(fx.sink.commits(), commits, "nothing of the killed transaction was captured");
    if mode == "WAL" {
        reader.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    assert_same_pages(&fx.stored("crash.db"), &fx.sink.copy_of("crash.db"), 512, mode);
    // And the next transaction is captured as usual.
    reader.execute("UPDATE t SET v = zeroblob(10) WHERE id = 1", []).unwrap();
    assert_eq!(fx.sink.commits(), commits + 1);
}

#[test]
fn an_application_killed_mid_transaction_in_delete_mode_leaves_nothing_captured() {
    killed_mid_transaction(
        "DELETE",
        "an_application_killed_mid_transaction_in_delete_mode_leaves_nothing_captured",
        200,
        false,
    );
}

#[test]
fn an_application_killed_mid_transaction_over_a_kept_journal_leaves_nothing_captured() {
    killed_mid_transaction(
        "DELETE",
        "an_application_killed_mid_transaction_over_a_kept_journal_leaves_nothing_captured",
        50,
        true,
    );
}

#[test]
fn an_application_killed_mid_transaction_in_persist_mode_leaves_nothing_captured() {
    killed_mid_transaction(
        "PERSIST",
        "an_application_killed_mid_transaction_in_persist_mode_leaves_nothing_captured",
        200,
        false,
    );
}

#[test]
fn an_application_killed_mid_transaction_in_wal_mode_leaves_nothing_captured() {
    killed_mid_transaction(
        "WAL",
        "an_application_killed_mid_transaction_in_wal_mode_leaves_nothing_captured",
        200,
        false,
    );
}
