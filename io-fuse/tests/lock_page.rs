//! A database that grows past 1 GiB, where SQLite's lock page lives (the page holding byte
//! 0x40000000, which SQLite never writes and LTX never carries), then has pages on both sides
//! of it rewritten, then shrinks back below it: after each transaction the copy fed only by
//! captured commits equals the real file, and the position's checksum (which leaves the lock
//! page out) matches the file's.

mod common;

use common::*;

/// Page size: the largest, so the 1 GiB database has the fewest pages to move.
const PAGE_SIZE: u32 = 65536;
/// The lock page's number at this page size.
const LOCK_PAGE: u64 = (1 << 30) / PAGE_SIZE as u64 + 1;
const MIB: i64 = 1 << 20;

fn pages(conn: &rusqlite::Connection) -> u64 {
    conn.query_row("PRAGMA page_count", [], |r| r.get(0)).expect("page_count")
}

#[test]
fn a_database_crossing_the_lock_page_is_captured_exactly_as_it_grows_changes_and_shrinks() {
    let fx = Fixture::primary();
    let db = "big.db";
    let conn = fx.open(db);
    conn.execute_batch(&format!(
        "PRAGMA page_size={PAGE_SIZE}; PRAGMA auto_vacuum=INCREMENTAL; PRAGMA synchronous=OFF; \
         PRAGMA cache_size=-65536;"
    ))
    .expect("pragmas");
    assert_eq!(journal_mode(&conn, "DELETE"), "delete");

    let started = std::time::Instant::now();
    let check = |what: &str| {
        eprintln!("{:?}: checking {what}", started.elapsed());
        let real = fx.stored(db);
        assert_same_pages(&real, &fx.sink.copy_of(db), PAGE_SIZE as usize, what);
        assert_eq!(fx.sink.pos_of(db).checksum, checksum(&real, PAGE_SIZE), "{what}: position checksum");
    };
    let insert = |rows: i64| {
        conn.execute_batch("BEGIN").expect("begin");
        let mut stmt = conn.prepare("INSERT INTO t(v) VALUES (zeroblob(?1))").expect("prepare");
        for _ in 0..rows {
            stmt.execute([MIB]).expect("insert 1 MiB");
        }
        drop(stmt);
        conn.execute_batch("COMMIT").expect("commit");
    };

    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)").expect("create");
    let before = fx.sink.commits();
    insert(900);
    assert!(pages(&conn) < LOCK_PAGE, "below the lock page so far: {} pages", pages(&conn));
    check("900 MiB, below the lock page");

    insert(300);
    let grown = pages(&conn);
    assert!(grown > LOCK_PAGE + 1000, "past the lock page: {grown} pages");
    check("1.2 GiB, across the lock page");

    // Rows whose overflow chains run across the lock page: each 1 MiB row takes 17 pages.
    let first = (LOCK_PAGE / 17) as i64 - 30;
    conn.execute(
        "UPDATE t SET v = randomblob(?1) WHERE id BETWEEN ?2 AND ?3",
        rusqlite::params![MIB, first, first + 60],
    )
    .expect("rewrite rows around the lock page");
    check("pages on both sides of the lock page rewritten");

    conn.execute_batch("BEGIN; DELETE FROM t WHERE id > 700;").expect("delete");
    // Each step of `incremental_vacuum` frees one page: run it to the end.
    let mut vacuum = conn.prepare("PRAGMA incremental_vacuum").expect("prepare");
    let freed = vacuum.query_map([], |_| Ok(())).expect("vacuum").count();
    drop(vacuum);
    conn.execute_batch("COMMIT").expect("commit the shrink");
    assert!(freed > 0, "incremental_vacuum freed pages");
    let shrunk = pages(&conn);
    assert!(shrunk < LOCK_PAGE, "back below the lock page: {shrunk} pages");
    check("shrunk back below the lock page");
    integrity_ok(&conn);

    assert_eq!(fx.sink.commits() - before, 4, "one captured commit per transaction");
}
