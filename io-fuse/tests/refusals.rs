//! What SQLite sees when the policy side refuses a commit, and when the application uses a
//! journal mode replite cannot replicate: an error, and nothing partial left behind.

mod common;

use std::sync::atomic::Ordering;

use common::*;

fn count(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count")
}

fn refused_commit_rolls_back(mode: &str) {
    let fx = Fixture::primary();
    let conn = fx.open("r.db");
    journal_mode(&conn, mode);
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    let commits = fx.sink.commits();
    fx.sink.refuse_commit.store(true, Ordering::SeqCst);
    let err = conn
        .execute_batch("BEGIN; INSERT INTO t VALUES (2); INSERT INTO t SELECT x + 10 FROM t; COMMIT;")
        .expect_err("a refused commit must fail");
    eprintln!("{mode}: refused commit surfaced as {err:?}");
    let _ = conn.execute_batch("ROLLBACK");
    fx.sink.refuse_commit.store(false, Ordering::SeqCst);
    assert_eq!(fx.sink.commits(), commits, "{mode}: nothing reached the sink");
    // The next reader rolls the transaction back; the database is as before.
    let reader = fx.open("r.db");
    assert_eq!(count(&reader), 1, "{mode}: the refused rows are gone");
    integrity_ok(&reader);
    let page_size = 4096;
    if mode != "WAL" {
        assert_same_pages(&fx.stored("r.db"), &fx.sink.copy_of("r.db"), page_size, mode);
    }
    // And writing works again, captured as usual.
    reader.execute("INSERT INTO t VALUES (3)", []).unwrap();
    assert_eq!(fx.sink.commits(), commits + 1);
    if mode == "WAL" {
        reader.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    assert_same_pages(&fx.stored("r.db"), &fx.sink.copy_of("r.db"), page_size, mode);
}

#[test]
fn refused_write_in_delete_mode_is_sqlite_readonly_before_anything_is_written() {
    let fx = Fixture::primary();
    let conn = fx.open("ro.db");
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    let before = fx.stored("ro.db");
    fx.sink.refuse.store(true, Ordering::SeqCst);
    let err = conn.execute("INSERT INTO t VALUES (2)", []).expect_err("refused");
    assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly), "{err:?}");
    assert_eq!(fx.stored("ro.db"), before);
    fx.sink.refuse.store(false, Ordering::SeqCst);
    conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
    assert_eq!(count(&conn), 2);
}

/// A refusal at the commit point itself (the policy changed mid-transaction): SQLite sees an
/// I/O error on the syscall that marks the commit, and the journal rolls the database back.
fn refused_at_commit_point(mode: &str) {
    refused_commit_rolls_back(mode);
}

#[test]
fn refused_delete_mode_commit_fails_and_leaves_the_database_unchanged() {
    refused_at_commit_point("DELETE");
}

#[test]
fn refused_truncate_mode_commit_fails_and_leaves_the_database_unchanged() {
    refused_commit_rolls_back("TRUNCATE");
}

#[test]
fn refused_persist_mode_commit_fails_and_leaves_the_database_unchanged() {
    refused_commit_rolls_back("PERSIST");
}

#[test]
fn refused_wal_commit_fails_and_leaves_the_database_unchanged() {
    refused_commit_rolls_back("WAL");
}

fn unsupported_mode_is_refused(setup: &str) {
    let fx = Fixture::primary();
    let conn = fx.open("u.db");
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    let before = fx.stored("u.db");
    let commits = fx.sink.commits();
    conn.execute_batch(setup).unwrap();
    let err = conn.execute("INSERT INTO t VALUES (2)", []).expect_err("unsupported mode must fail");
    eprintln!("{setup}: {err:?}");
    assert_eq!(fx.sink.commits(), commits, "{setup}: nothing captured");
    drop(conn);
    assert_eq!(fx.stored("u.db"), before, "{setup}: the database file is untouched");
    let reader = fx.open("u.db");
    assert_eq!(count(&reader), 1);
}

#[test]
fn journal_mode_off_is_refused() {
    unsupported_mode_is_refused("PRAGMA journal_mode=OFF;");
}

#[test]
fn journal_mode_memory_is_refused() {
    unsupported_mode_is_refused("PRAGMA journal_mode=MEMORY;");
}

#[test]
fn wal_with_exclusive_locking_is_refused() {
    let fx = Fixture::primary();
    let conn = fx.open("x.db");
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    let commits = fx.sink.commits();
    conn.execute_batch("PRAGMA locking_mode=EXCLUSIVE;").unwrap();
    journal_mode(&conn, "WAL");
    let err = conn.execute("INSERT INTO t VALUES (2)", []).expect_err("WAL without shared memory must fail");
    eprintln!("exclusive WAL: {err:?}");
    // Switching to WAL is itself a rollback transaction and may be captured; no WAL commit is.
    let copies = fx.sink.dbs.lock().unwrap();
    assert!(copies["x.db"].modes[commits..].iter().all(|&m| m != replite_fuse::JournalMode::Wal));
}

#[test]
fn deleting_a_database_asks_the_sink_first() {
    let fx = Fixture::primary();
    let conn = fx.open("d.db");
    conn.execute_batch("CREATE TABLE t(x);").unwrap();
    drop(conn);
    fx.sink.refuse.store(true, Ordering::SeqCst);
    let err = std::fs::remove_file(fx.path("d.db")).expect_err("refused deletion");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(replite_fuse::database_path(&fx.data, "d.db").exists());
    fx.sink.refuse.store(false, Ordering::SeqCst);
    std::fs::remove_file(fx.path("d.db")).expect("deletion");
    assert!(!replite_fuse::database_path(&fx.data, "d.db").exists());
    assert_eq!(*fx.sink.deletes.lock().unwrap(), vec!["d.db".to_owned()]);
}

/// Refused before anything is written: the database file never changes, even before any
/// reader rolls back.
fn refused_up_front(mode: &str) {
    let fx = Fixture::primary();
    let conn = fx.open("early.db");
    journal_mode(&conn, mode);
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    if mode == "WAL" {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    let db_before = fx.stored("early.db");
    let wal_before = std::fs::read(fx.side_file("early.db", "wal")).unwrap_or_default();
    let commits = fx.sink.commits();
    fx.sink.refuse.store(true, Ordering::SeqCst);
    let err = conn.execute("INSERT INTO t VALUES (2)", []).expect_err("refused");
    eprintln!("{mode}: {err:?}");
    assert_eq!(fx.stored("early.db"), db_before, "{mode}: database untouched");
    if mode == "WAL" {
        let wal_after = std::fs::read(fx.side_file("early.db", "wal")).unwrap_or_default();
        // The WAL was empty; past its new header it may only hold the zeros the mount fills
        // ahead of the writer (`wal_ahead`).
        assert!(wal_before.is_empty(), "{mode}: the checkpoint emptied the WAL");
        assert!(wal_after.iter().skip(32).all(|&b| b == 0), "{mode}: no frame reached the WAL");
    }
    assert_eq!(fx.sink.commits(), commits);
    fx.sink.refuse.store(false, Ordering::SeqCst);
    conn.execute("INSERT INTO t VALUES (3)", []).unwrap();
    assert_eq!(count(&conn), 2);
}

#[test]
fn refused_write_in_truncate_mode_fails_before_the_database_is_touched() {
    refused_up_front("TRUNCATE");
}

#[test]
fn refused_write_in_persist_mode_fails_before_the_database_is_touched() {
    refused_up_front("PERSIST");
}

#[test]
fn refused_write_in_wal_mode_fails_before_the_wal_is_touched() {
    refused_up_front("WAL");
}
