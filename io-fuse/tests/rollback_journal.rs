//! Every rollback-journal mode × page sizes: after each transaction, the pages captured at the
//! commit point, encoded as LTX and applied to a separate copy, reproduce the real file.

mod common;

use common::*;
use replite_fuse::{Durability, JournalMode};

/// One transaction of the workload.
type Step<'a> = Box<dyn Fn(&rusqlite::Connection) + 'a>;

/// Runs a workload that creates, grows, rewrites, shrinks and vacuums a database, checking the
/// captured copy against the real file after every transaction.
fn run_workload(mode: &str, page_size: u32, synchronous: &str) {
    let fx = Fixture::primary();
    let db = "app.db";
    let conn = fx.open(db);
    conn.execute_batch(&format!("PRAGMA page_size={page_size}; PRAGMA synchronous={synchronous};")).expect("pragmas");
    assert_eq!(journal_mode(&conn, mode), mode.to_lowercase());
    // A tiny page cache makes SQLite spill mid-transaction: multi-segment journals.
    conn.execute_batch("PRAGMA cache_size=4; PRAGMA cache_spill=4;").expect("cache size");

    let blob =
        |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect() };
    let steps: Vec<(&str, Step)> = vec![
        ("create", Box::new(|c| c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap())),
        (
            "one row",
            Box::new(|c| {
                c.execute("INSERT INTO t(v) VALUES (?1)", [blob(10, 1)]).unwrap();
            }),
        ),
        (
            "many rows",
            Box::new(move |c| {
                c.execute_batch("BEGIN").unwrap();
                for i in 0..300u32 {
                    c.execute("INSERT INTO t(v) VALUES (?1)", [blob(200 + (i as usize % 7) * 50, i as u8)]).unwrap();
                }
                c.execute_batch("COMMIT").unwrap();
            }),
        ),
        (
            "rewrite",
            Box::new(|c| {
                c.execute("UPDATE t SET v = zeroblob(length(v)) WHERE id % 3 = 0", []).unwrap();
            }),
        ),
        (
            "big row",
            Box::new(move |c| {
                c.execute("INSERT INTO t(v) VALUES (?1)", [blob(300_000, 9)]).unwrap();
            }),
        ),
        ("index", Box::new(|c| c.execute_batch("CREATE INDEX t_v ON t(v)").unwrap())),
        (
            "delete most",
            Box::new(|c| {
                c.execute("DELETE FROM t WHERE id > 20", []).unwrap();
            }),
        ),
        ("vacuum", Box::new(|c| c.execute_batch("VACUUM").unwrap())),
        (
            "after vacuum",
            Box::new(move |c| {
                c.execute("INSERT INTO t(v) VALUES (?1)", [blob(5000, 3)]).unwrap();
            }),
        ),
    ];
    for (name, step) in steps {
        let before = fx.sink.commits();
        step(&conn);
        let what = format!("{mode}/{page_size}/{synchronous} after {name}");
        assert_eq!(fx.sink.commits(), before + 1, "{what}: one transaction, one captured commit");
        let real = fx.stored(db);
        let copy = fx.sink.copy_of(db);
        assert_same_pages(&real, &copy, page_size as usize, &what);
        assert_eq!(fx.sink.pos_of(db).checksum, checksum(&real, page_size), "{what}: position checksum");
        integrity_ok(&conn);
    }
    let copies = fx.sink.dbs.lock().unwrap();
    let copy = &copies[db];
    let expected = match mode {
        "DELETE" => JournalMode::Delete,
        "TRUNCATE" => JournalMode::Truncate,
        _ => JournalMode::Persist,
    };
    // The first commit switches the journal mode on a new database and may use DELETE.
    assert!(copy.modes[1..].iter().all(|&m| m == expected), "{mode}: commit modes {:?}", copy.modes);
    let durable = if synchronous == "OFF" { Durability::Deferred } else { Durability::Requested };
    assert!(copy.durabilities.iter().all(|&d| d == durable), "{mode}/{synchronous}: {:?}", copy.durabilities);
}

#[test]
fn delete_mode_commits_are_captured_exactly_at_each_page_size() {
    for page_size in [512, 4096, 65536] {
        run_workload("DELETE", page_size, "FULL");
    }
}

#[test]
fn truncate_mode_commits_are_captured_exactly_at_each_page_size() {
    for page_size in [512, 4096, 65536] {
        run_workload("TRUNCATE", page_size, "NORMAL");
    }
}

#[test]
fn persist_mode_commits_are_captured_exactly_at_each_page_size() {
    for page_size in [512, 4096, 65536] {
        run_workload("PERSIST", page_size, "FULL");
    }
}

#[test]
fn synchronous_off_commits_are_captured_and_not_marked_durable() {
    run_workload("DELETE", 4096, "OFF");
    run_workload("PERSIST", 1024, "OFF");
}

#[test]
fn switching_between_rollback_modes_keeps_the_copy_exact() {
    let fx = Fixture::primary();
    let conn = fx.open("s.db");
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    for (i, mode) in ["TRUNCATE", "PERSIST", "DELETE", "PERSIST", "TRUNCATE"].iter().enumerate() {
        journal_mode(&conn, mode);
        conn.execute("INSERT INTO t VALUES (?1)", [i as i64]).unwrap();
        conn.execute("UPDATE t SET x = x + 1", []).unwrap();
        assert_same_pages(&fx.stored("s.db"), &fx.sink.copy_of("s.db"), 4096, mode);
    }
}

#[test]
fn multi_segment_journals_from_cache_spills_are_captured_exactly() {
    // With a 4-page spill threshold SQLite syncs the journal and starts a new segment (a new
    // header at the next sector) every few pages of a large update.
    for mode in ["DELETE", "PERSIST"] {
        let fx = Fixture::primary();
        let conn = fx.open("spill.db");
        journal_mode(&conn, mode);
        conn.execute_batch(
            "PRAGMA page_size=512; PRAGMA cache_size=4; PRAGMA cache_spill=4; \
             CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..300 {
            conn.execute("INSERT INTO t(v) VALUES (zeroblob(?1))", [300 + i % 5]).unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
        let journal = fx.side_file("spill.db", "journal");
        let before = fx.sink.commits();
        conn.execute("UPDATE t SET v = randomblob(300)", []).unwrap();
        assert_eq!(fx.sink.commits(), before + 1);
        if mode == "PERSIST" {
            // The journal stays; its length shows it held many segments of records.
            let len = std::fs::metadata(&journal).unwrap().len();
            assert!(len > 100 * 512, "{mode}: journal of {len} bytes");
        }
        assert_same_pages(&fx.stored("spill.db"), &fx.sink.copy_of("spill.db"), 512, mode);
        integrity_ok(&conn);
    }
}

/// Decision 0017: SQLite's journal fsyncs (two per transaction with `synchronous=FULL`) are
/// answered at once and paid in one sync of the journal before the database file is written
/// (the one SQLite asks after truncating a TRUNCATE journal is paid in the next transaction's);
/// every commit still reaches the copy and is marked durable.
#[test]
fn journal_fsyncs_are_paid_once_per_transaction_before_the_database_is_written() {
    for mode in ["DELETE", "TRUNCATE", "PERSIST"] {
        let fx = Fixture::primary();
        let db = "owed.db";
        let conn = fx.open(db);
        journal_mode(&conn, mode);
        conn.execute_batch("PRAGMA synchronous=FULL; CREATE TABLE t(x)").unwrap();
        let before = fx.mount().sync_counts();
        for i in 0..20 {
            conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        }
        let after = fx.mount().sync_counts();
        assert_eq!(after.journal_synced - before.journal_synced, 20, "{mode}: one journal sync per transaction");
        // Two per transaction, and one more after each commit in TRUNCATE mode (the truncation).
        let asked = after.journal_owed - before.journal_owed;
        assert!(asked >= 40, "{mode}: {asked} fsyncs asked");
        assert_same_pages(&fx.stored(db), &fx.sink.copy_of(db), 4096, mode);
        integrity_ok(&conn);
    }
}

/// Decision 0018: in DELETE mode the journal SQLite deletes at a commit is kept on disk, its
/// header zeroed and its name gone from the mount, and the next transaction's journal is the
/// same file, stale tail and all; every commit is still captured exactly.
#[test]
fn a_deleted_journal_is_kept_hidden_and_reused_by_the_next_transaction() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::primary();
    let db = "kept.db";
    let conn = fx.open(db);
    conn.execute_batch("PRAGMA synchronous=FULL; CREATE TABLE t(x)").unwrap();
    let backing = fx.side_file(db, "journal");
    let ino = std::fs::metadata(&backing).expect("the journal is kept").ino();
    let listed =
        |fx: &Fixture| std::fs::read_dir(&fx.mnt).unwrap().any(|e| e.unwrap().file_name() == "kept.db-journal");
    // A large transaction, then small ones: each journal is shorter than the file it reuses.
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) \
         INSERT INTO t SELECT randomblob(1000) FROM n; UPDATE t SET x = randomblob(900);",
    )
    .unwrap();
    for i in 0..5 {
        conn.execute("UPDATE t SET x = randomblob(10) WHERE rowid = ?1", [i + 1]).unwrap();
        assert!(!fx.path("kept.db-journal").exists(), "the mount shows no journal between transactions");
        assert!(!listed(&fx), "nor lists one");
        let meta = std::fs::metadata(&backing).expect("kept");
        assert_eq!(meta.ino(), ino, "the same file every time");
        let header = std::fs::read(&backing).unwrap();
        assert!(header[..28].iter().all(|&b| b == 0), "its header zeroed");
        assert_same_pages(&fx.stored(db), &fx.sink.copy_of(db), 4096, "after a reused journal");
    }
    conn.execute_batch("BEGIN; UPDATE t SET x = randomblob(20); ROLLBACK;").unwrap();
    assert_same_pages(&fx.stored(db), &fx.sink.copy_of(db), 4096, "after a rollback through a reused journal");
    integrity_ok(&conn);
}
