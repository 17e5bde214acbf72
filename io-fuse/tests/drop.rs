//! Dropping a database: an unlink of `<db>` on the primary (asked of the sink first) removes
//! it with its side files and `-pos`; on a replica the unlink stays refused and a replicated
//! drop (an LTX file with commit size zero) removes it under SQLite's locks. Connections
//! already open can neither read nor write it any more.

mod common;

use common::*;
use replite_core::types::{Checksum, Pos};

fn rows(conn: &rusqlite::Connection) -> Vec<String> {
    let mut stmt = conn.prepare("SELECT v FROM t ORDER BY rowid").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

fn listing(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(&fx.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// Writes `values` to a new table in `db` through `fx`, one transaction each.
fn write(fx: &Fixture, db: &str, mode: &str, values: &[&str]) {
    let conn = fx.open(db);
    journal_mode(&conn, mode);
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t(v TEXT)").unwrap();
    for v in values {
        conn.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
    }
}

#[test]
fn unlinking_a_database_on_the_primary_removes_it_with_its_side_files_after_the_sink_agreed() {
    for mode in ["DELETE", "WAL"] {
        let fx = Fixture::primary();
        write(&fx, "d.db", mode, &["a", "b"]);
        let before = fx.sink.pos_of("d.db");
        // An application still holding a connection (idle, no transaction).
        let open = fx.open("d.db");
        assert_eq!(rows(&open), ["a", "b"]);
        if mode == "DELETE" {
            std::fs::remove_file(fx.path("d.db")).expect("the primary drops the database");
            assert!(!path_exists(&fx.path("d.db")), "{mode}");
            assert!(!path_exists(&fx.path("d.db-pos")), "{mode}: -pos outlived its database");
            assert_eq!(listing(&fx), [".lag"], "{mode}");
            // The open connection can neither read on nor write (its journal would belong to
            // no database, or later to a new one of the same name).
            // (The kernel's cached pages are dropped just after the unlink returns.)
            wait_until("the dropped database to be unreadable", || {
                open.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).is_err()
            });
            assert!(open.execute("INSERT INTO t VALUES ('lost')", []).is_err());
        } else {
            // A WAL connection holds the WAL and its index open; they go with the database.
            drop(open);
            std::fs::remove_file(fx.path("d.db")).expect("the primary drops the database");
            assert_eq!(listing(&fx), [".lag"], "{mode}");
        }
        assert_eq!(*fx.sink.deletes.lock().unwrap(), ["d.db".to_owned()], "{mode}");
        let dir = fx.data.join("dbs/d.db");
        for file in ["database", "journal", "wal", "shm"] {
            assert!(!dir.join(file).exists(), "{mode}: {file} outlived the drop");
        }
        assert_eq!(fx.sink.pos_of("d.db"), Pos::new(before.txid.next(), Checksum::EMPTY), "{mode}");

        // The same name again: a new, empty database whose commits the sink sees as usual.
        write(&fx, "d.db", mode, &["new"]);
        assert_eq!(rows(&fx.open("d.db")), ["new"], "{mode}");
        let after = fx.sink.pos_of("d.db");
        assert!(after.txid > before.txid.next() && after.checksum != Checksum::EMPTY, "{mode}: {after}");
    }
}

#[test]
fn a_replicated_drop_removes_the_database_from_a_replica_and_a_new_one_follows() {
    for mode in ["DELETE", "WAL"] {
        replicated_drop(mode);
    }
}

/// A drop applied on a replica while a connection has the database open (in WAL mode it holds
/// SHARED for as long as it is open: the drop must not wait for it to close).
fn replicated_drop(mode: &str) {
    let primary = Fixture::primary();
    write(&primary, "d.db", mode, &["a", "b"]);
    std::fs::remove_file(primary.path("d.db")).expect("drop");
    write(&primary, "d.db", mode, &["again"]);
    let files = primary.sink.ltx_of("d.db");
    let drop_at = files
        .iter()
        .position(|f| replite_core::ltx::verify(f.as_slice()).expect("valid").header().commit == 0)
        .expect("the drop is recorded");

    let replica = std::sync::Arc::new(Fixture::replica());
    let mut pos = Pos::default();
    let mut reader = None;
    for (i, file) in files.iter().enumerate() {
        if i == drop_at {
            let conn = replica.open("d.db");
            assert_eq!(rows(&conn), ["a", "b"]);
            let seen: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
            assert_eq!(seen, mode.to_lowercase());
            reader = Some(conn);
            // A replica refuses the application's unlink.
            let err = std::fs::remove_file(replica.path("d.db")).expect_err("read-only");
            assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        }
        // Bounded: a drop that waits for the open connection must fail the test, not hang it.
        let (applying, bytes, base) = (std::sync::Arc::clone(&replica), file.clone(), pos.checksum);
        let apply = std::thread::spawn(move || applying.mount().apply_ltx("d.db", &bytes, base));
        wait_until(&format!("{mode}: file {i} to apply"), || apply.is_finished());
        pos = apply.join().expect("apply thread").expect("applies");
        if i == drop_at {
            assert_eq!(pos.checksum, Checksum::EMPTY);
            assert!(!path_exists(&replica.path("d.db")), "the dropped database is still visible");
            assert!(!path_exists(&replica.path("d.db-pos")), "-pos outlived its database");
            assert!(!replica.data.join("dbs/d.db/database").exists());
            // A reader that had it open can no longer read it.
            let reader = reader.as_ref().expect("opened");
            assert!(reader.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).is_err());
        }
    }
    assert_eq!(pos, primary.sink.pos_of("d.db"));
    assert_eq!(rows(&replica.open("d.db")), ["again"]);
    assert_eq!(
        std::fs::read_to_string(replica.path("d.db-pos")).unwrap().trim(),
        format!("{}/{}", pos.txid, pos.checksum)
    );
}
