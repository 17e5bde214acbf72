//! WAL mode × page sizes: every commit frame becomes one captured transaction whose pages,
//! applied to a separate copy, reproduce the database SQLite sees.

mod common;

use common::*;
use replite_fuse::{Durability, JournalMode};

fn checkpoint(conn: &rusqlite::Connection) {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).expect("checkpoint");
    assert_eq!(busy, 0, "checkpoint blocked");
}

fn run_workload(page_size: u32, synchronous: &str) {
    run_workload_on(Fixture::primary(), page_size, synchronous);
}

fn run_workload_on(fx: Fixture, page_size: u32, synchronous: &str) {
    let db = "wal.db";
    let conn = fx.open(db);
    conn.execute_batch(&format!(
        "PRAGMA page_size={page_size}; PRAGMA synchronous={synchronous}; PRAGMA cache_size=4;"
    ))
    .expect("pragmas");
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    assert_eq!(journal_mode(&conn, "WAL"), "wal");
    let start = fx.sink.commits();
    let blob =
        |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed)).collect() };
    for round in 0..12u8 {
        let before = fx.sink.commits();
        match round % 4 {
            0 => {
                conn.execute_batch("BEGIN").unwrap();
                for i in 0..100u32 {
                    conn.execute("INSERT INTO t(v) VALUES (?1)", [blob(100 + i as usize, round)]).unwrap();
                }
                conn.execute_batch("COMMIT").unwrap();
            }
            1 => {
                conn.execute("UPDATE t SET v = ?1 WHERE id % 5 = ?2", rusqlite::params![blob(64, round), round % 5])
                    .unwrap();
            }
            2 => {
                conn.execute("INSERT INTO t(v) VALUES (?1)", [blob(200_000, round)]).unwrap();
            }
            _ => {
                conn.execute("DELETE FROM t WHERE id % 7 = 0", []).unwrap();
            }
        }
        let what = format!("WAL/{page_size}/{synchronous} round {round}");
        assert_eq!(fx.sink.commits(), before + 1, "{what}: one transaction, one captured commit");
        // Compare only after a checkpoint: then the file holds what readers see. Skip some
        // rounds so several commits pile up in one WAL.
        if round % 3 == 2 {
            checkpoint(&conn);
            let real = fx.stored(db);
            assert_same_pages(&real, &fx.sink.copy_of(db), page_size as usize, &what);
            assert_eq!(fx.sink.pos_of(db).checksum, checksum(&real, page_size), "{what}: position");
            integrity_ok(&conn);
        }
    }
    conn.execute_batch("VACUUM").unwrap();
    checkpoint(&conn);
    assert_same_pages(&fx.stored(db), &fx.sink.copy_of(db), page_size as usize, "after VACUUM");
    let copies = fx.sink.dbs.lock().unwrap();
    let copy = &copies[db];
    assert!(copy.modes[start..].iter().all(|&m| m == JournalMode::Wal), "modes {:?}", copy.modes);
    assert!(copy.durabilities[start..].iter().all(|&d| d == Durability::Deferred));
    // Every WAL commit says where its frames were: whole frames after the 32-byte header.
    let frame = 24 + u64::from(page_size);
    for wal in &copy.wal[start..] {
        let wal = wal.expect("WAL commits carry their segment");
        assert!(wal.offset >= 32 && (wal.offset - 32) % frame == 0, "{wal:?}");
        assert!(wal.size > 0 && wal.size % frame == 0, "{wal:?}");
        assert!(wal.salt1 != 0 || wal.salt2 != 0, "{wal:?}");
    }
    assert!(copy.wal[..start].iter().all(Option::is_none), "rollback commits carry no WAL segment");
    if synchronous == "FULL" {
        assert!(fx.sink.syncs.load(std::sync::atomic::Ordering::SeqCst) >= 12, "FULL fsyncs the WAL at each commit");
    }
}

#[test]
fn wal_commits_are_captured_exactly_at_each_page_size() {
    for page_size in [512, 4096, 65536] {
        run_workload(page_size, "NORMAL");
    }
}

#[test]
fn wal_commits_are_captured_exactly_with_the_wal_index_passed_through() {
    run_workload_on(Fixture::with_passthrough(replite_fuse::Role::Primary, true), 4096, "NORMAL");
}

#[test]
fn wal_full_commits_are_followed_by_a_sync_of_the_sink() {
    run_workload(4096, "FULL");
}

#[test]
fn switching_from_wal_back_to_delete_keeps_the_copy_exact() {
    let fx = Fixture::primary();
    let conn = fx.open("sw.db");
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    journal_mode(&conn, "WAL");
    conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
    assert_eq!(journal_mode(&conn, "DELETE"), "delete");
    conn.execute("INSERT INTO t VALUES (3)", []).unwrap();
    assert_same_pages(&fx.stored("sw.db"), &fx.sink.copy_of("sw.db"), 4096, "back to DELETE");
    integrity_ok(&conn);
}

/// Decision 0017: a WAL/FULL commit's fsync is answered once the sink made the commit durable,
/// without syncing the WAL file; the WAL is synced for a new header and before a checkpoint
/// writes the database, and the checkpoint still moves every commit into the database.
#[test]
fn wal_fsyncs_are_answered_from_the_history_and_the_wal_is_synced_before_a_checkpoint() {
    let fx = Fixture::primary();
    let db = "answered.db";
    let conn = fx.open(db);
    journal_mode(&conn, "WAL");
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x)").unwrap();
    let created = fx.mount().sync_counts();
    assert!(created.wal_synced >= 1, "the new WAL header was synced: {created:?}");

    let sink_syncs = fx.sink.syncs.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..20 {
        conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    let committed = fx.mount().sync_counts();
    assert_eq!(committed.wal_synced, created.wal_synced, "no commit synced the WAL file");
    assert_eq!(
        committed.wal_from_history,
        created.wal_from_history + 20,
        "each commit's fsync was answered from history"
    );
    assert!(
        fx.sink.syncs.load(std::sync::atomic::Ordering::SeqCst) >= sink_syncs + 20,
        "each one after a sync of the sink"
    );

    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(0)).unwrap();
    assert_eq!(busy, 0, "checkpoint blocked");
    let checkpointed = fx.mount().sync_counts();
    assert_eq!(checkpointed.wal_synced, committed.wal_synced + 1, "one WAL sync before the database was written");
    assert_same_pages(&fx.stored(db), &fx.sink.copy_of(db), 4096, "after the checkpoint");
    integrity_ok(&conn);
}

/// The WAL as the kernel shows it through the mount equals the file in the data directory.
fn assert_wal_as_stored(fx: &Fixture, db: &str, what: &str) {
    let shown = std::fs::read(fx.path(&format!("{db}-wal"))).expect("the WAL through the mount");
    let stored = std::fs::read(fx.side_file(db, "wal")).expect("the stored WAL");
    assert_eq!(shown.len(), stored.len(), "{what}: WAL sizes");
    if let Some(at) = shown.iter().zip(&stored).position(|(a, b)| a != b) {
        panic!("{what}: the kernel's WAL differs from the stored one at byte {at}");
    }
}

/// `wal_ahead`: the kernel's cache of the WAL is filled ahead of the writer, so frames are
/// read back from the cache; what it holds is always the stored file, through commits,
/// checkpoints that restart the WAL over its old frames, rollbacks and a truncation.
#[test]
fn the_wal_is_cached_ahead_of_the_writer_and_always_matches_the_stored_file() {
    let fx = Fixture::primary();
    let db = "ahead.db";
    let conn = fx.open(db);
    journal_mode(&conn, "WAL");
    conn.execute_batch(
        "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=40; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
    )
    .unwrap();
    for round in 0..300u32 {
        if round % 37 == 5 {
            conn.execute_batch("BEGIN; INSERT INTO t(v) VALUES (randomblob(3000)); ROLLBACK;").unwrap();
        }
        conn.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [100 + round * 7 % 5000]).unwrap();
        if round % 50 == 49 {
            assert_wal_as_stored(&fx, db, &format!("round {round}"));
        }
    }
    // The kernel serves the part past the frames from its cache: a change made behind its
    // back there stays unseen through the mount (without the fill, each read would reach the
    // daemon, which reads the stored file).
    let wal_path = fx.side_file(db, "wal");
    let stored = std::fs::read(&wal_path).unwrap();
    let tail = stored.len() - 4096;
    assert!(stored[tail..].iter().all(|&b| b == 0), "the WAL ends in zeros filled ahead of the writer");
    {
        use std::os::unix::fs::FileExt;
        let behind = std::fs::OpenOptions::new().write(true).open(&wal_path).unwrap();
        behind.write_all_at(b"behind the kernel", tail as u64).unwrap();
        let shown = std::fs::read(fx.path(&format!("{db}-wal"))).unwrap();
        assert!(shown[tail..].iter().all(|&b| b == 0), "the tail was read from the kernel's cache");
        behind.write_all_at(&[0u8; 17], tail as u64).unwrap();
    }
    checkpoint(&conn);
    assert_wal_as_stored(&fx, db, "after a truncating checkpoint");
    assert_same_pages(&fx.stored(db), &fx.sink.copy_of(db), 4096, "after the checkpoint");
    conn.execute("INSERT INTO t(v) VALUES (randomblob(10))", []).unwrap();
    assert_wal_as_stored(&fx, db, "after the first commit of a truncated WAL");
    integrity_ok(&conn);
    drop(conn);
    // SQLite recovers a WAL that ends in zeros: a new connection sees every row.
    let conn = fx.open(db);
    let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 301);
    integrity_ok(&conn);
}

/// A refused commit's frame header is erased in the stored WAL; the kernel's cache must not
/// keep it, even where the header lies in a cache page before the refused write's own (frame
/// 339 of a 4 KiB-page WAL ends exactly at a cache page boundary).
#[test]
fn a_refused_commit_frame_is_erased_from_the_kernels_cache_too() {
    use std::sync::atomic::Ordering;
    let fx = Fixture::primary();
    let db = "erased.db";
    let conn = fx.open(db);
    journal_mode(&conn, "WAL");
    conn.execute_batch(
        "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER);
         INSERT INTO t VALUES (1, 0);",
    )
    .unwrap();
    checkpoint(&conn);
    // One frame per commit: the table's only page.
    for v in 1..=339 {
        conn.execute("UPDATE t SET v = ?1", [v]).unwrap();
    }
    let frame = 32 + 339 * (24 + 4096);
    assert_eq!((frame + 24) % 4096, 0);
    assert_eq!(std::fs::read(fx.side_file(db, "wal")).unwrap()[frame..frame + 24], [0u8; 24], "frame 339 is unwritten");
    fx.sink.refuse_commit.store(true, Ordering::SeqCst);
    conn.execute("UPDATE t SET v = -1", []).expect_err("a refused commit fails");
    fx.sink.refuse_commit.store(false, Ordering::SeqCst);
    assert_wal_as_stored(&fx, db, "after the refused commit");
    let v: i64 = conn.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(v, 339, "the refused update is not seen");
}
