//! The data directory is LiteFS's: `dbs/<name>/{database,journal,wal,shm}`, with everything
//! else under it (the daemon's `ltx/`, its epoch file) left alone.

mod common;

use common::*;

fn listing(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(&fx.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn databases_and_their_side_files_live_in_litefs_layout() {
    let fx = Fixture::primary();
    // The daemon's own files, which the mount must neither show nor touch.
    std::fs::write(fx.data.join("epoch"), b"000000000000002a\n").unwrap();
    let ltx_dir = fx.data.join("dbs/app.db/ltx");
    std::fs::create_dir_all(&ltx_dir).unwrap();
    std::fs::write(ltx_dir.join("0000000000000001-0000000000000001.ltx"), b"not ours").unwrap();
    assert_eq!(listing(&fx), vec![".lag"], "a database directory without a database is not listed");

    let conn = fx.open("app.db");
    conn.execute_batch("PRAGMA journal_mode=PERSIST; CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    assert_eq!(replite_fuse::database_path(&fx.data, "app.db"), fx.data.join("dbs/app.db/database"));
    assert_eq!(entries(&fx.data.join("dbs/app.db")), vec!["database", "journal", "ltx"]);
    assert_eq!(entries(&fx.data), vec!["dbs", "epoch"], "nothing flat in the data directory");
    assert_eq!(listing(&fx), vec![".lag", "app.db", "app.db-journal", "app.db-pos"]);

    let wal = fx.open("wal.db");
    journal_mode(&wal, "WAL");
    wal.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    assert_eq!(entries(&fx.data.join("dbs/wal.db")), vec!["database", "shm", "wal"]);
    assert_eq!(
        listing(&fx),
        vec![".lag", "app.db", "app.db-journal", "app.db-pos", "wal.db", "wal.db-pos", "wal.db-shm", "wal.db-wal"]
    );
    drop(wal);
    // The last connection checkpoints and removes the WAL and its index.
    assert_eq!(entries(&fx.data.join("dbs/wal.db")), vec!["database"]);

    // Deleting a database through the mount removes its files, not the daemon's.
    drop(conn);
    std::fs::remove_file(fx.path("app.db-journal")).unwrap();
    std::fs::remove_file(fx.path("app.db")).unwrap();
    assert_eq!(entries(&fx.data.join("dbs/app.db")), vec!["ltx"]);
    assert_eq!(std::fs::read(ltx_dir.join("0000000000000001-0000000000000001.ltx")).unwrap(), b"not ours");
    assert_eq!(std::fs::read(fx.data.join("epoch")).unwrap(), b"000000000000002a\n");
    assert_eq!(listing(&fx), vec![".lag", "wal.db", "wal.db-pos"]);
}

#[test]
fn a_litefs_data_directory_is_served_as_it_is() {
    let root = TempDir::new("litefs-dir");
    let native = root.0.join("native.db");
    let conn = rusqlite::Connection::open(&native).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (42);").unwrap();
    drop(conn);
    let fx = Fixture::primary();
    let stored = replite_fuse::database_path(&fx.data, "old.db");
    std::fs::create_dir_all(stored.parent().unwrap()).unwrap();
    std::fs::copy(&native, &stored).unwrap();
    let conn = fx.open("old.db");
    let x: i64 = conn.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(x, 42);
    conn.execute("INSERT INTO t VALUES (43)", []).unwrap();
    assert_eq!(fx.sink.commits(), 1, "the write is captured");
}

#[test]
fn side_files_are_not_created_for_a_database_that_does_not_exist() {
    let fx = Fixture::primary();
    let err = std::fs::write(fx.path("ghost.db-journal"), b"x").expect_err("no database directory");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    assert!(!fx.data.join("dbs/ghost.db").exists());
}
