//! `Mount::set_role`: a replica promoted without remounting takes writes (from connections
//! it opened as a replica too), a demoted primary refuses them (from connections it opened as
//! primary too) and never lets a transaction caught in flight commit, and applies replicated
//! transactions again.

mod common;

use std::thread;

use common::*;
use replite_core::ltx::{SnapshotOptions, encode_database};
use replite_core::types::{Pos, TxId};
use replite_fuse::{ApplyLtxError, Role};

fn count(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count")
}

/// A primary's history in `mode`: a table and `rows` single-row transactions.
fn history(mode: &str, rows: i64) -> (Fixture, Vec<Vec<u8>>) {
    let fx = Fixture::primary();
    let conn = fx.open("h.db");
    journal_mode(&conn, mode);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
    for i in 0..rows {
        conn.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [100 + i]).unwrap();
    }
    drop(conn);
    let ltx = fx.sink.ltx_of("h.db");
    (fx, ltx)
}

/// A replica holding `ltx`, applied in order. Its sink starts from the replicated state, as
/// the daemon's history would when it promotes the node.
fn replica_with(ltx: &[Vec<u8>]) -> Fixture {
    let fx = Fixture::replica();
    let mut pos = Pos::default();
    for file in ltx {
        pos = fx.mount().apply_ltx("h.db", file, pos.checksum).expect("apply");
    }
    fx.sink.seed("h.db", fx.stored("h.db"), pos);
    fx
}

fn is_readonly(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly)
}

#[test]
fn a_promoted_replica_captures_writes_from_connections_it_opened_as_a_replica() {
    let (_primary, ltx) = history("DELETE", 3);
    let fx = replica_with(&ltx);
    assert_eq!(fx.mount().role(), Role::Replica);
    let conn = fx.open("h.db");
    let err = conn.execute("INSERT INTO t(v) VALUES (1)", []).expect_err("a replica refuses");
    assert!(is_readonly(&err), "{err:?}");

    fx.mount().set_role(Role::Primary);
    assert_eq!(fx.mount().role(), Role::Primary);
    conn.execute("INSERT INTO t(v) VALUES (1)", []).expect("the same connection writes once promoted");
    assert_eq!(fx.sink.commits(), 1, "the commit reached the sink");
    let copies = fx.sink.dbs.lock().unwrap();
    assert!(!copies["h.db"].ltx.is_empty());
    drop(copies);
    assert_eq!(count(&fx.open("h.db")), 4);
    integrity_ok(&conn);
}

#[test]
fn a_demoted_primary_refuses_new_write_transactions_as_sqlite_readonly() {
    let fx = Fixture::primary();
    let conn = fx.open("d.db");
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES (1);").unwrap();
    let (before, commits) = (fx.stored("d.db"), fx.sink.commits());

    fx.mount().set_role(Role::Replica);
    let err = conn.execute("INSERT INTO t(v) VALUES (2)", []).expect_err("a demoted primary refuses");
    assert!(is_readonly(&err), "{err:?}");
    assert_eq!(fx.stored("d.db"), before, "the database is untouched");
    assert_eq!(fx.sink.commits(), commits, "nothing reached the sink");
    assert!(!fx.path("d.db-journal").exists(), "no journal was created");
    // The last commit's journal is kept on disk for reuse (decision 0018), its header zeroed.
    let kept = std::fs::read(fx.side_file("d.db", "journal")).unwrap_or_default();
    assert!(kept.iter().take(28).all(|&b| b == 0), "no journal was started");
    // Reads go on, from the connection that tried and from new ones.
    assert_eq!(count(&conn), 1);
    assert_eq!(count(&fx.open("d.db")), 1);
    // Plain files behave as on a read-only filesystem.
    let err = std::fs::write(fx.path("new.db"), b"x").expect_err("no creation");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::remove_file(fx.path("d.db")).expect_err("no deletion");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(fx.sink.deletes.lock().unwrap().is_empty());
}

/// TRUNCATE and PERSIST keep their journal between transactions and WAL writes frames: no
/// errno at those syscalls makes SQLite say SQLITE_READONLY, so the error is an I/O error. What
/// matters is that it is an error and that nothing changed.
fn demoted_primary_refuses(mode: &str) {
    let fx = Fixture::primary();
    let conn = fx.open("m.db");
    journal_mode(&conn, mode);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES (1);").unwrap();
    let before = (fx.stored("m.db"), std::fs::read(fx.side_file("m.db", "wal")).unwrap_or_default());
    let commits = fx.sink.commits();

    fx.mount().set_role(Role::Replica);
    let err = conn.execute("INSERT INTO t(v) VALUES (2)", []).expect_err("a demoted primary refuses");
    eprintln!("{mode}: {err:?}");
    let after = (fx.stored("m.db"), std::fs::read(fx.side_file("m.db", "wal")).unwrap_or_default());
    if mode == "WAL" {
        // The demotion folded the committed WAL into the database file (`demoted_wal`): the
        // file is the committed state, and no frame of the refused write is anywhere.
        assert_same_pages(&after.0, &fx.sink.copy_of("m.db"), 4096, "the folded database is the committed state");
        assert!(after.1.is_empty(), "{mode}: the WAL was folded and removed");
    } else {
        assert!(before == after, "{mode}: database and WAL untouched");
    }
    assert_eq!(fx.sink.commits(), commits, "{mode}: nothing reached the sink");
    assert_eq!(count(&conn), 1, "{mode}");
    integrity_ok(&conn);
}

#[test]
fn a_demoted_primary_refuses_writes_in_truncate_mode() {
    demoted_primary_refuses("TRUNCATE");
}

#[test]
fn a_demoted_primary_refuses_writes_in_persist_mode() {
    demoted_primary_refuses("PERSIST");
}

#[test]
fn a_demoted_primary_refuses_writes_in_wal_mode() {
    demoted_primary_refuses("WAL");
}

/// A transaction that spilled pages into the database (rollback) or frames into the WAL
/// while the node was primary, and tries to commit after the demotion.
fn transaction_in_flight_never_commits(mode: &str) {
    let fx = Fixture::primary();
    let conn = fx.open("f.db");
    journal_mode(&conn, mode);
    conn.execute_batch(
        "PRAGMA page_size=1024; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); \
         PRAGMA cache_size=4; PRAGMA cache_spill=4;",
    )
    .unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for _ in 0..100 {
        conn.execute("INSERT INTO t(v) VALUES (zeroblob(500))", []).unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    let committed = fx.sink.copy_of("f.db");
    let commits = fx.sink.commits();

    conn.execute_batch("BEGIN; UPDATE t SET v = randomblob(500);").unwrap();
    if mode != "WAL" {
        assert_ne!(fx.stored("f.db"), committed, "{mode}: the open transaction spilled into the database");
    }
    fx.mount().set_role(Role::Replica);
    let err = conn.execute_batch("COMMIT").expect_err("the commit point is refused");
    eprintln!("{mode}: {err:?}");
    let _ = conn.execute_batch("ROLLBACK");
    assert_eq!(fx.sink.commits(), commits, "{mode}: nothing reached the sink");
    // SQLite rolls the transaction back (the mount lets it), and readers see the last commit.
    let reader = fx.open("f.db");
    let zeroed: i64 = reader.query_row("SELECT count(*) FROM t WHERE v = zeroblob(500)", [], |r| r.get(0)).unwrap();
    assert_eq!(zeroed, 100, "{mode}: the refused update is gone");
    integrity_ok(&reader);
    if mode != "WAL" {
        assert!(!journal_is_hot(&fx, "f.db"), "{mode}: SQLite finished its rollback");
        assert_same_pages(&fx.stored("f.db"), &committed, 1024, mode);
    }
}

/// Whether the journal still holds a live header (SQLite has not finished rolling back).
fn journal_is_hot(fx: &Fixture, db: &str) -> bool {
    std::fs::read(fx.side_file(db, "journal")).is_ok_and(|j| j.len() >= 8 && j[..8] != [0u8; 8])
}

#[test]
fn a_delete_mode_transaction_in_flight_when_the_primary_is_demoted_never_commits() {
    transaction_in_flight_never_commits("DELETE");
}

#[test]
fn a_persist_mode_transaction_in_flight_when_the_primary_is_demoted_never_commits() {
    transaction_in_flight_never_commits("PERSIST");
}

#[test]
fn a_wal_transaction_in_flight_when_the_primary_is_demoted_never_commits() {
    transaction_in_flight_never_commits("WAL");
}

#[test]
fn apply_ltx_works_again_after_switching_back_to_replica() {
    let (upstream, ltx) = history("DELETE", 6);
    let fx = replica_with(&ltx[..4]);
    fx.mount().set_role(Role::Primary);
    let err = fx.mount().apply_ltx("h.db", &ltx[4], Pos::default().checksum).expect_err("not on a primary");
    assert!(matches!(err, ApplyLtxError::Primary { .. }), "{err}");
    // Diverge while primary, as a deposed primary does.
    let conn = fx.open("h.db");
    conn.execute("DELETE FROM t", []).unwrap();
    assert_eq!(fx.sink.commits(), 1);

    fx.mount().set_role(Role::Replica);
    // Resynchronise from a snapshot of the upstream's database, then follow it again.
    let upstream_db = upstream.stored("h.db");
    let options = SnapshotOptions { max_txid: TxId(ltx.len() as u64), timestamp_ms: 0, compress: false };
    let (snapshot, _, _) =
        encode_database(&upstream_db[..], upstream_db.len() as u64, Vec::new(), options).expect("snapshot");
    let pos = fx.mount().apply_ltx("h.db", &snapshot, Pos::default().checksum).expect("snapshot applies");
    assert_eq!(pos, upstream.sink.pos_of("h.db"));
    assert_eq!(count(&conn), 6, "the connection opened as primary reads the replicated state");
    // The upstream commits again; the replica follows incrementally.
    upstream.open("h.db").execute("INSERT INTO t(v) VALUES (7)", []).unwrap();
    let next = upstream.sink.ltx_of("h.db").pop().expect("captured");
    let pos = fx.mount().apply_ltx("h.db", &next, pos.checksum).expect("incremental apply");
    assert_eq!(pos, upstream.sink.pos_of("h.db"));
    assert_eq!(count(&conn), 7);
    assert_same_pages(&fx.stored("h.db"), &upstream.stored("h.db"), 4096, "replica vs upstream");
    integrity_ok(&conn);
}

#[test]
fn page_one_and_the_primary_file_follow_the_role() {
    let (_primary, ltx) = history("WAL", 2);
    let fx = replica_with(&ltx);
    fx.mount().set_primary(Some("node-a".into()));
    // Page 1 as read through the mount: the journal mode as stored, and on a replica the
    // mount's own change counter (`database_node::present_to_replica`).
    let counter = |fx: &Fixture| -> ([u8; 4], [u8; 4]) {
        use std::io::Read;
        let mut header = [0u8; 100];
        std::fs::File::open(fx.path("h.db")).unwrap().read_exact(&mut header).unwrap();
        let stored = fx.stored("h.db");
        (header[24..28].try_into().unwrap(), stored[24..28].try_into().unwrap())
    };
    let reader = fx.open("h.db");
    let seen: String = reader.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(seen, "wal", "a replica shows a WAL database in WAL mode");
    drop(reader);
    let (shown, stored) = counter(&fx);
    assert_ne!(shown, stored, "a replica shows its own change counter");
    assert_eq!(std::fs::read_to_string(fx.path(".primary")).unwrap(), "node-a\n");

    fx.mount().set_role(Role::Primary);
    assert!(!fx.path(".primary").exists(), "a primary has no .primary");
    let (shown, stored) = counter(&fx);
    assert_eq!(shown, stored, "the kernel's cached page 1 was dropped at promotion");
    let writer = fx.open("h.db");
    let seen: String = writer.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(seen, "wal");
    writer.execute("INSERT INTO t(v) VALUES (1)", []).unwrap();
    assert_eq!(fx.sink.commits(), 1);
    // The last connection checkpoints and removes the WAL.
    drop(writer);
    assert!(!fx.side_file("h.db", "wal").exists());

    fx.mount().set_role(Role::Replica);
    assert_eq!(std::fs::read_to_string(fx.path(".primary")).unwrap(), "node-a\n");
    let (shown, stored) = counter(&fx);
    assert_ne!(shown, stored, "the kernel's cached page 1 was dropped at demotion");
    let reader = fx.open("h.db");
    let seen: String = reader.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(seen, "wal");
    assert_eq!(count(&reader), 3);
}

/// A transaction refused at its commit point by the demotion leaves a hot journal and its
/// pages in the database file. The apply must roll it back first: applied over it, the next
/// SQLite reader would roll the journal back over the replicated pages.
#[test]
fn apply_ltx_on_a_demoted_primary_rolls_back_its_hot_journal_first() {
    let (upstream, ltx) = history("DELETE", 80);
    let fx = Fixture::primary();
    let conn = fx.open("h.db");
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for _ in 0..30 {
        conn.execute("INSERT INTO t(v) VALUES (randomblob(500))", []).unwrap();
    }
    conn.execute_batch("COMMIT; PRAGMA cache_size=4; PRAGMA cache_spill=4;").unwrap();
    conn.execute_batch("BEGIN; UPDATE t SET v = randomblob(600);").unwrap();
    fx.mount().set_role(Role::Replica);
    conn.execute_batch("COMMIT").expect_err("refused at the commit point");
    let _ = conn.execute_batch("ROLLBACK");
    assert!(journal_is_hot(&fx, "h.db"), "the refused transaction left a hot journal");
    assert_ne!(fx.stored("h.db"), fx.sink.copy_of("h.db"), "and its pages in the database file");

    let upstream_db = upstream.stored("h.db");
    let options = SnapshotOptions { max_txid: TxId(ltx.len() as u64), timestamp_ms: 0, compress: false };
    let (snapshot, _, _) =
        encode_database(&upstream_db[..], upstream_db.len() as u64, Vec::new(), options).expect("snapshot");
    let pos = fx.mount().apply_ltx("h.db", &snapshot, fx.sink.pos_of("h.db").checksum).expect("apply");
    assert_eq!(pos, upstream.sink.pos_of("h.db"));
    assert!(!fx.side_file("h.db", "journal").exists(), "the hot journal is gone");
    assert!(!fx.path("h.db-journal").exists(), "and the kernel forgot it");
    let reader = fx.open("h.db");
    assert_eq!(count(&reader), 80);
    integrity_ok(&reader);
    assert_same_pages(&fx.stored("h.db"), &upstream_db, 4096, "nothing rolled back over the apply");
}

/// A write transaction begun while primary and still open (RESERVED held, its journal
/// written, the database file untouched) when the node is demoted: the apply waits for it to end.
#[test]
fn apply_ltx_waits_for_a_write_transaction_begun_before_the_demotion() {
    let (upstream, ltx) = history("DELETE", 6);
    let fx = replica_with(&ltx[..ltx.len() - 1]);
    let pos = fx.sink.pos_of("h.db");
    fx.mount().set_role(Role::Primary);
    let conn = fx.open("h.db");
    conn.execute_batch("BEGIN; INSERT INTO t(v) VALUES (1);").unwrap();
    assert!(fx.side_file("h.db", "journal").exists(), "the transaction has its journal");
    fx.mount().set_role(Role::Replica);
    let applied = thread::scope(|s| {
        let apply = s.spawn(|| fx.mount().apply_ltx("h.db", ltx.last().unwrap(), pos.checksum));
        let locked = fx.path("h.db");
        let waited = std::panic::catch_unwind(|| {
            wait_until("the apply to wait for the transaction", || blocked_ofd_waiters(&locked) > 0)
        });
        let finished_early = apply.is_finished();
        conn.execute_batch("ROLLBACK").unwrap();
        assert!(waited.is_ok() && !finished_early, "the apply did not wait for the open transaction");
        apply.join().expect("apply thread")
    });
    assert_eq!(applied.expect("apply"), upstream.sink.pos_of("h.db"));
    assert_eq!(fx.sink.commits(), 0, "the open transaction never reached the sink");
    assert_eq!(count(&fx.open("h.db")), 6);
    assert_same_pages(&fx.stored("h.db"), &upstream.stored("h.db"), 4096, "replica vs upstream");
}
