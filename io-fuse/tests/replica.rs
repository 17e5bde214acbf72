//! Replicas: the mount is read-only for applications, and LTX files captured on a primary
//! mount, applied through `Mount::apply_ltx`, give readers whole transactions only.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use replite_core::types::{Checksum, Pos};

const ACCOUNTS: i64 = 16;
const TOTAL: i64 = 16_000;

/// Builds a primary history: accounts whose balances always sum to TOTAL and whose `ver`
/// column all equal the transaction's version, spread over many pages by padding.
fn primary_history(page_size: u32, transfers: i64) -> (Fixture, Vec<Vec<u8>>) {
    primary_history_in(page_size, transfers, "DELETE")
}

/// Applies everything before the last `transfers` files of `ltx` (journal mode switch, table
/// creation, filling: what readers need before they start); returns how many files that was
/// and the position reached.
fn apply_setup(replica: &Fixture, ltx: &[Vec<u8>], transfers: i64) -> (usize, Pos) {
    let setup = ltx.len() - transfers as usize;
    let mut pos = Pos::default();
    for file in &ltx[..setup] {
        pos = replica.mount().apply_ltx("bank.db", file, pos.checksum).expect("setup");
    }
    (setup, pos)
}

/// One read transaction over the transfer table, checked: every transfer whole, one version
/// of every row, `quick_check` passing, and no older than `last_ver`. Returns its version.
fn read_whole(conn: &mut rusqlite::Connection, last_ver: i64, who: &str) -> i64 {
    let tx = conn.transaction().unwrap();
    let (sum, min_ver, max_ver): (i64, i64, i64) = tx
        .query_row("SELECT sum(bal), min(ver), max(ver) FROM acct WHERE id < 1000", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let check: String = tx.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    tx.commit().unwrap();
    assert_eq!(sum, TOTAL, "{who}a reader saw half a transfer");
    assert_eq!(min_ver, max_ver, "{who}a reader saw two versions at once");
    assert_eq!(check, "ok");
    assert!(max_ver >= last_ver, "{who}a reader went back in time");
    max_ver
}

fn primary_history_in(page_size: u32, transfers: i64, mode: &str) -> (Fixture, Vec<Vec<u8>>) {
    let fx = Fixture::primary();
    let conn = fx.open("bank.db");
    conn.execute_batch(&format!("PRAGMA page_size={page_size}")).unwrap();
    journal_mode(&conn, mode);
    conn.execute_batch("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER, ver INTEGER, pad BLOB)").unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for id in 0..ACCOUNTS {
        conn.execute(
            "INSERT INTO acct VALUES (?1, ?2, 0, zeroblob(?3))",
            rusqlite::params![id, TOTAL / ACCOUNTS, page_size as i64 / 2],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    for v in 1..=transfers {
        let commits = fx.sink.commits();
        let from = v % ACCOUNTS;
        let to = (v * 7 + 3) % ACCOUNTS;
        conn.execute_batch("BEGIN").unwrap();
        conn.execute("UPDATE acct SET bal = bal - ?1 WHERE id = ?2", rusqlite::params![v % 50, from]).unwrap();
        conn.execute("UPDATE acct SET bal = bal + ?1 WHERE id = ?2", rusqlite::params![v % 50, to]).unwrap();
        conn.execute("UPDATE acct SET ver = ?1", [v]).unwrap();
        if v % 10 == 0 {
            // Grow and shrink the file too.
            conn.execute(
                "INSERT INTO acct VALUES (?1, 0, ?2, zeroblob(?3))",
                rusqlite::params![1000 + v, v, 3 * page_size as i64],
            )
            .unwrap();
        }
        if v % 10 == 5 {
            conn.execute("DELETE FROM acct WHERE id >= 1000", []).unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
        assert_eq!(fx.sink.commits(), commits + 1, "{mode}: transfer {v} is one captured commit");
        // In WAL mode the file lags behind the WAL until a checkpoint; the replica test compares
        // against the primary's checkpointed file at the end.
        if mode != "WAL" {
            assert_same_pages(
                &fx.stored("bank.db"),
                &fx.sink.copy_of("bank.db"),
                page_size as usize,
                &format!("primary tx {v}"),
            );
        }
    }
    if mode == "WAL" {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    let ltx = fx.sink.ltx_of("bank.db");
    (fx, ltx)
}

#[test]
fn writes_on_a_replica_fail_as_sqlite_readonly() {
    let (primary, ltx) = primary_history(4096, 3);
    let replica = Fixture::replica();
    let mut pos = Pos::default();
    for file in &ltx {
        pos = replica.mount().apply_ltx("bank.db", file, pos.checksum).expect("apply");
    }
    assert_eq!(pos, primary.sink.pos_of("bank.db"));
    let conn = replica.open("bank.db");
    let sum: i64 = conn.query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0)).unwrap();
    assert_eq!(sum, TOTAL);
    let err = conn.execute("UPDATE acct SET bal = 0", []).expect_err("replica is read-only");
    assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly), "{err:?}");
    // Plain file writes fail with EROFS too, and nothing is created.
    let err = std::fs::write(replica.path("other.db"), b"x").expect_err("no creation on a replica");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // A writable descriptor opens (the role may change while it is open), but writes fail.
    let before = replica.stored("bank.db");
    let file = std::fs::OpenOptions::new().write(true).open(replica.path("bank.db")).expect("writable open");
    let err = std::os::unix::fs::FileExt::write_all_at(&file, b"x", 0).expect_err("no write");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(replica.stored("bank.db"), before);
    // The position file shows what was applied.
    let text = std::fs::read_to_string(replica.path("bank.db-pos")).expect("pos file");
    assert_eq!(text, format!("{pos}\n"));
    assert_same_pages(&replica.stored("bank.db"), &primary.stored("bank.db"), 4096, "replica vs primary");
}

#[test]
fn replica_reaches_the_primary_checksum_after_every_transaction() {
    for page_size in [512, 4096, 65536] {
        let (primary, ltx) = primary_history(page_size, 25);
        let replica = Fixture::replica();
        let conn_checks = std::cell::Cell::new(0);
        let mut pos = Pos::default();
        for (i, file) in ltx.iter().enumerate() {
            pos = replica.mount().apply_ltx("bank.db", file, pos.checksum).expect("apply");
            assert_eq!(pos.checksum, checksum(&replica.stored("bank.db"), page_size), "tx {i}");
            conn_checks.set(conn_checks.get() + 1);
        }
        assert_eq!(pos, primary.sink.pos_of("bank.db"));
        assert_same_pages(&replica.stored("bank.db"), &primary.stored("bank.db"), page_size as usize, "final");
    }
}

#[test]
fn an_ltx_that_does_not_extend_the_position_is_rejected_and_changes_nothing() {
    let (_primary, ltx) = primary_history(4096, 3);
    let replica = Fixture::replica();
    let pos = replica.mount().apply_ltx("bank.db", &ltx[0], Checksum::ZERO).expect("snapshot");
    let before = replica.stored("bank.db");
    // Skipping a transaction: the pre-apply checksum does not match.
    let err = replica.mount().apply_ltx("bank.db", &ltx[2], pos.checksum).expect_err("gap");
    assert!(matches!(err, replite_fuse::ApplyLtxError::Apply { .. }), "{err}");
    assert_eq!(replica.stored("bank.db"), before);
    // A corrupt file is refused before anything is written.
    let mut corrupt = ltx[1].clone();
    let n = corrupt.len();
    corrupt[n / 2] ^= 0xff;
    let err = replica.mount().apply_ltx("bank.db", &corrupt, pos.checksum).expect_err("corrupt");
    assert!(matches!(err, replite_fuse::ApplyLtxError::Invalid { .. }), "{err}");
    assert_eq!(replica.stored("bank.db"), before);
}

/// `try_apply_ltx` never waits: while a reader is inside a read transaction it applies
/// nothing and says so; once the reader is done it applies as `apply_ltx` does.
#[test]
fn an_apply_that_must_not_wait_leaves_the_database_alone_while_a_reader_is_inside_a_transaction() {
    let transfers = 2;
    let (primary, ltx) = primary_history(4096, transfers);
    let replica = Fixture::replica();
    let (setup, mut pos) = apply_setup(&replica, &ltx, transfers);
    let mut reader = replica.open("bank.db");
    let before = replica.stored("bank.db");
    {
        let tx = reader.transaction().unwrap();
        let ver: i64 = tx.query_row("SELECT max(ver) FROM acct", [], |r| r.get(0)).unwrap();
        assert_eq!(ver, 0);
        let tried = replica.mount().try_apply_ltx("bank.db", &ltx[setup], pos.checksum).expect("no error");
        assert_eq!(tried, None, "applied under a reader's SHARED lock");
        assert_eq!(replica.stored("bank.db"), before, "something was written");
        let ver: i64 = tx.query_row("SELECT max(ver) FROM acct", [], |r| r.get(0)).unwrap();
        assert_eq!(ver, 0, "the reader's transaction changed under it");
        tx.commit().unwrap();
    }
    for (v, file) in (1..).zip(&ltx[setup..]) {
        pos = replica.mount().try_apply_ltx("bank.db", file, pos.checksum).expect("no error").expect("applied");
        let ver: i64 = reader.query_row("SELECT max(ver) FROM acct", [], |r| r.get(0)).unwrap();
        assert_eq!(ver, v);
    }
    assert_eq!(pos, primary.sink.pos_of("bank.db"));
    integrity_ok(&reader);
}

/// A WAL primary rewrites page 1 (and with it the change counter SQLite's rollback-mode
/// readers check their page cache against) only when a transaction changes page 1; most of
/// these transfers do not. A reader connection kept open across applies must still see each.
#[test]
fn a_long_lived_reader_of_a_wal_primary_replica_sees_every_applied_transaction() {
    for mode in ["WAL", "DELETE"] {
        let transfers = 12;
        let (primary, ltx) = primary_history_in(1024, transfers, mode);
        let replica = Fixture::replica();
        let (setup, mut pos) = apply_setup(&replica, &ltx, transfers);
        let reader = replica.open("bank.db");
        let seen = |reader: &rusqlite::Connection| -> (i64, i64, i64) {
            reader
                .query_row("SELECT sum(bal), min(ver), max(ver) FROM acct WHERE id < 1000", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap()
        };
        assert_eq!(seen(&reader), (TOTAL, 0, 0), "{mode}: before the transfers");
        for (v, file) in (1..).zip(&ltx[setup..]) {
            pos = replica.mount().apply_ltx("bank.db", file, pos.checksum).expect("apply");
            assert_eq!(seen(&reader), (TOTAL, v, v), "{mode}: the reader after transfer {v}");
        }
        integrity_ok(&reader);
        assert_eq!(pos, primary.sink.pos_of("bank.db"));
    }
}

#[test]
fn readers_during_apply_never_see_a_torn_transaction() {
    readers_see_whole_transactions(Fixture::replica(), "DELETE");
}

#[test]
fn readers_of_a_wal_primary_replica_never_see_a_torn_transaction() {
    readers_see_whole_transactions(Fixture::replica(), "WAL");
}

#[test]
fn readers_of_a_passthrough_replica_never_see_a_torn_transaction() {
    readers_see_whole_transactions(Fixture::with_passthrough(replite_fuse::Role::Replica, true), "DELETE");
}

#[test]
fn writes_on_a_passthrough_replica_fail_as_sqlite_readonly() {
    let (_primary, ltx) = primary_history(4096, 2);
    let replica = Fixture::with_passthrough(replite_fuse::Role::Replica, true);
    let mut pos = Pos::default();
    for file in &ltx {
        pos = replica.mount().apply_ltx("bank.db", file, pos.checksum).expect("apply");
    }
    let conn = replica.open("bank.db");
    let ver: i64 = conn.query_row("SELECT max(ver) FROM acct", [], |r| r.get(0)).unwrap();
    assert_eq!(ver, 2);
    let err = conn.execute("UPDATE acct SET bal = 0", []).expect_err("replica is read-only");
    assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly), "{err:?}");
}

fn readers_see_whole_transactions(replica: Fixture, mode: &str) {
    let transfers = 60;
    let (primary, ltx) = primary_history_in(1024, transfers, mode);
    let replica = Arc::new(replica);
    // Everything before the transfers (journal mode switch, table creation, filling) is
    // applied before the readers start: they need a filled table.
    let (setup, mut pos) = apply_setup(&replica, &ltx, transfers);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (replica, stop, reads) = (Arc::clone(&replica), Arc::clone(&stop), Arc::clone(&reads));
            std::thread::spawn(move || {
                let mut last_ver = -1i64;
                let mut conn = replica.open("bank.db");
                conn.busy_timeout(Duration::from_secs(30)).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    last_ver = read_whole(&mut conn, last_ver, "");
                    reads.fetch_add(1, Ordering::SeqCst);
                    // POSIX locks do not queue writers ahead of readers: readers that start a
                    // new transaction the instant they end one can hold off the apply's PENDING
                    // lock for long stretches (SQLite's own writers have the same exposure).
                    // A short pause keeps this test quick; docs/decisions/fuse-locks-and-caching.md.
                    std::thread::sleep(Duration::from_micros(200));
                }
                last_ver
            })
        })
        .collect();
    for file in &ltx[setup..] {
        pos = replica.mount().apply_ltx("bank.db", file, pos.checksum).expect("apply");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Let readers see the final state.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        let last = reader.join().expect("reader thread");
        assert_eq!(last, transfers, "every reader ends at the last transaction");
    }
    assert!(reads.load(Ordering::SeqCst) > 10, "readers ran during the applies");
    assert_eq!(pos, primary.sink.pos_of("bank.db"));
    // The stored file is the primary's, header included (a WAL primary's says WAL)...
    assert_same_pages(&replica.stored("bank.db"), &primary.stored("bank.db"), 1024, "replica vs primary");
    let wal_header = if mode == "WAL" { 2 } else { 1 };
    assert_eq!(replica.stored("bank.db")[18], wal_header);
    // ...and readers read it in the primary's journal mode.
    let conn = replica.open("bank.db");
    let seen: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(seen, if mode == "WAL" { "wal" } else { "delete" });
}

/// Applies `file` on another thread and waits for it (bounded): a wait on a connection that
/// never closes must fail the test, not hang it.
fn apply_bounded(replica: &Arc<Fixture>, db: &'static str, file: &[u8], base: Checksum) -> Pos {
    let (replica, file) = (Arc::clone(replica), file.to_vec());
    let apply = std::thread::spawn(move || replica.mount().apply_ltx(db, &file, base));
    wait_until("the apply to finish", || apply.is_finished());
    apply.join().expect("apply thread").expect("apply")
}

/// ROADMAP step 1: connections opened in WAL mode on the primary and kept open through its
/// demotion hold SQLite's SHARED lock on the database the whole time and read through their
/// WAL index. Applies must neither wait for them to close nor hide from them: each of their
/// read transactions sees one whole applied transaction, newer ones as they come, beside a
/// reader opened after the demotion (also in WAL mode, on another inode) that must not see a
/// torn one either.
#[test]
fn wal_readers_kept_open_through_a_demotion_see_every_later_apply_whole() {
    let transfers = 40;
    let (primary, ltx) = primary_history_in(1024, transfers, "WAL");
    let replica = Arc::new(Fixture::replica());
    let (setup, mut pos) = apply_setup(&replica, &ltx, transfers);
    replica.mount().set_role(replite_fuse::Role::Primary);
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let demoted = Arc::new(AtomicBool::new(false));
    let reader = |wal: bool| {
        let (replica, stop, opened, demoted) =
            (Arc::clone(&replica), Arc::clone(&stop), Arc::clone(&opened), Arc::clone(&demoted));
        std::thread::spawn(move || {
            if !wal {
                wait_until("the demotion", || demoted.load(Ordering::SeqCst));
            }
            let mut conn = replica.open("bank.db");
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, "wal", "a WAL database is read in WAL mode on a replica too");
            opened.fetch_add(1, Ordering::SeqCst);
            let mut last_ver = -1i64;
            let mut versions = 0;
            while !stop.load(Ordering::SeqCst) {
                let max_ver = read_whole(&mut conn, last_ver, &format!("wal={wal}: "));
                if max_ver > last_ver {
                    versions += 1;
                }
                last_ver = max_ver;
                // See `readers_see_whole_transactions` on POSIX locks and this pause.
                std::thread::sleep(Duration::from_micros(200));
            }
            (last_ver, versions)
        })
    };
    let wal_readers: Vec<_> = (0..2).map(|_| reader(true)).collect();
    wait_until("the WAL readers to open", || opened.load(Ordering::SeqCst) == 2);
    replica.mount().set_role(replite_fuse::Role::Replica);
    demoted.store(true, Ordering::SeqCst);
    let rollback_reader = reader(false);
    wait_until("the rollback reader to open", || opened.load(Ordering::SeqCst) == 3);
    for file in &ltx[setup..] {
        pos = apply_bounded(&replica, "bank.db", file, pos.checksum);
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    for (i, r) in wal_readers.into_iter().chain([rollback_reader]).enumerate() {
        let (last, versions) = r.join().expect("reader thread");
        assert_eq!(last, transfers, "reader {i} ends at the last transaction");
        assert!(versions > 1, "reader {i} saw applies as they came");
    }
    assert_eq!(pos, primary.sink.pos_of("bank.db"));
    assert_same_pages(&replica.stored("bank.db"), &primary.stored("bank.db"), 1024, "replica vs primary");
}

/// The demoted primary's own WAL still holds transactions it committed (no checkpoint yet):
/// the first apply folds them into the database file under the WAL connection's feet, and the
/// connection, still open, then reads the replicated transactions on top of its own.
#[test]
fn a_demoted_primary_whose_wal_holds_commits_applies_on_top_of_them_for_its_open_connection() {
    let demoted = Arc::new(Fixture::primary());
    let conn = demoted.open("w.db");
    journal_mode(&conn, "WAL");
    conn.execute_batch("PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);").unwrap();
    for i in 0..5 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("mine {i}")]).unwrap();
    }
    assert!(demoted.side_file("w.db", "wal").metadata().unwrap().len() > 0, "commits wait in the WAL");
    let mine = demoted.sink.ltx_of("w.db");

    // The next primary: everything the demoted one committed, then its own transactions.
    let next = Fixture::replica();
    let mut pos = Pos::default();
    for file in &mine {
        pos = next.mount().apply_ltx("w.db", file, pos.checksum).expect("catch up");
    }
    assert_eq!(pos, demoted.sink.pos_of("w.db"));
    next.sink.seed("w.db", next.stored("w.db"), pos);
    next.mount().set_role(replite_fuse::Role::Primary);
    let writer = next.open("w.db");
    for i in 0..3 {
        writer.execute("INSERT INTO t(v) VALUES (?1)", [format!("theirs {i}")]).unwrap();
    }
    drop(writer);
    let theirs = next.sink.ltx_of("w.db");

    demoted.mount().set_role(replite_fuse::Role::Replica);
    for file in &theirs {
        pos = apply_bounded(&demoted, "w.db", file, pos.checksum);
    }
    assert_eq!(pos, next.sink.pos_of("w.db"));
    // A connection opened now reads in WAL mode (the primary's), the folded WAL gone.
    assert_eq!(demoted.side_file("w.db", "wal").metadata().map(|m| m.len()).unwrap_or(0), 0, "frames left in the WAL");
    let fresh = demoted.open("w.db");
    let mode: String = fresh.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let count: i64 = fresh.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 8);
    drop(fresh);
    let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 8, "the open WAL connection sees its own commits and the replicated ones");
    integrity_ok(&conn);
    drop(conn);
    let fresh = demoted.open("w.db");
    let count: i64 = fresh.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 8);
    integrity_ok(&fresh);
}

/// `Mount::replace_database` (a snapshot's database built while it was spooled, decision
/// 0010): the file is swapped by a rename, and what was open on the old one follows: a
/// connection kept open and a plain descriptor both read the new database afterwards.
#[test]
fn a_replaced_database_is_what_connections_and_descriptors_opened_before_read_next() {
    use std::os::unix::fs::FileExt;
    let page_size = 4096;
    let transfers = 6;
    let (primary, ltx) = primary_history(page_size, transfers);
    let replica = Fixture::replica();
    apply_setup(&replica, &ltx, transfers);
    let reader = replica.open("bank.db");
    let seen = |reader: &rusqlite::Connection| -> (i64, i64) {
        reader
            .query_row("SELECT sum(bal), max(ver) FROM acct WHERE id < 1000", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
    };
    assert_eq!(seen(&reader), (TOTAL, 0));
    // A page (past page 1, whose header replicas present their own way) the transfers changed.
    let (old, new) = (replica.stored("bank.db"), primary.stored("bank.db"));
    let ps = page_size as usize;
    let changed = (1..old.len().min(new.len()) / ps)
        .find(|&i| old[i * ps..(i + 1) * ps] != new[i * ps..(i + 1) * ps])
        .expect("the transfers changed a page past the first");
    let at = (changed * ps) as u64;
    let descriptor = std::fs::File::open(replica.path("bank.db")).expect("open through the mount");
    let mut page = vec![0u8; ps];
    descriptor.read_exact_at(&mut page, at).expect("read the page");
    assert!(page == old[changed * ps..(changed + 1) * ps], "the page before");

    // The primary's final database, written beside the replica's as the spool thread would.
    let image = replica.data.join("dbs").join("bank.db").join(".image-test.tmp");
    std::fs::write(&image, primary.stored("bank.db")).expect("write the image");
    let want = primary.sink.pos_of("bank.db");
    assert_eq!(replica.mount().replace_database("bank.db", &image, want).expect("replace"), want);

    assert!(!path_exists(&image), "the image was renamed into place");
    assert_eq!(replica.stored("bank.db"), primary.stored("bank.db"));
    assert_eq!(std::fs::read_to_string(replica.path("bank.db-pos")).expect("pos file"), format!("{want}\n"));
    assert_eq!(seen(&reader), (TOTAL, transfers), "the connection kept open reads the new database");
    integrity_ok(&reader);
    // Through the kernel's cache, which the replacement dropped: the descriptor's reads
    // reach the new file.
    descriptor.read_exact_at(&mut page, at).expect("read the page");
    assert!(page == new[changed * ps..(changed + 1) * ps], "the page after");
    let fresh = replica.open("bank.db");
    assert_eq!(seen(&fresh), (TOTAL, transfers));
    // On a primary the database is the applications': nothing is replaced.
    let err = primary.mount().replace_database("bank.db", &image, want).expect_err("primary");
    assert!(matches!(err, replite_fuse::ApplyLtxError::Primary { .. }), "{err}");
}

/// A primary that moves its database from rollback mode to WAL and back: a replica
/// connection kept open throughout follows it into WAL mode and keeps reading after it
/// leaves (its inode is retired, as at a demotion), and no apply waits for it to close.
/// Connections opened at each stage read in the primary's mode, read-only ones included.
#[test]
fn a_replica_follows_its_primary_in_and_out_of_wal_mode_with_connections_open() {
    let primary = Fixture::primary();
    let conn = primary.open("m.db");
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
    let mut stages = Vec::new();
    for (stage, mode) in ["delete", "wal", "delete", "wal"].into_iter().enumerate() {
        journal_mode(&conn, mode);
        for i in 0..3 {
            conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("{stage}-{i}")]).unwrap();
        }
        stages.push((mode, primary.sink.ltx_of("m.db").len()));
    }
    drop(conn);
    let ltx = primary.sink.ltx_of("m.db");

    let replica = Arc::new(Fixture::replica());
    let mut pos = Pos::default();
    let mut applied = 0;
    let mut kept: Option<rusqlite::Connection> = None;
    for (stage, (mode, upto)) in stages.into_iter().enumerate() {
        for file in &ltx[applied..upto] {
            pos = apply_bounded(&replica, "m.db", file, pos.checksum);
        }
        applied = upto;
        let rows = 3 * (stage as i64 + 1);
        let fresh = replica.open("m.db");
        let seen: String = fresh.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(seen, mode, "a connection opened at stage {stage}");
        let count: i64 = fresh.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(count, rows, "stage {stage}, fresh connection");
        let read_only =
            rusqlite::Connection::open_with_flags(replica.path("m.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let count: i64 = read_only.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(count, rows, "stage {stage}, read-only connection");
        drop(read_only);
        drop(fresh);
        let kept = kept.get_or_insert_with(|| replica.open("m.db"));
        let count: i64 = kept.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(count, rows, "stage {stage}, the connection kept open");
    }
    assert_eq!(pos, primary.sink.pos_of("m.db"));
    integrity_ok(kept.as_ref().expect("kept"));
}

/// A WAL reader inside a read transaction on a replica: an apply that must not wait leaves
/// the database alone; one that may wait does so until the transaction ends.
#[test]
fn a_wal_reader_inside_a_transaction_on_a_replica_holds_applies_back_until_it_ends() {
    let transfers = 2;
    let (primary, ltx) = primary_history_in(4096, transfers, "WAL");
    let replica = Arc::new(Fixture::replica());
    let (setup, mut pos) = apply_setup(&replica, &ltx, transfers);
    let mut reader = replica.open("bank.db");
    let mode: String = reader.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let before = replica.stored("bank.db");
    let tx = reader.transaction().unwrap();
    let ver: i64 = tx.query_row("SELECT max(ver) FROM acct", [], |r| r.get(0)).unwrap();
    assert_eq!(ver, 0);
    let tried = replica.mount().try_apply_ltx("bank.db", &ltx[setup], pos.checksum).expect("no error");
    assert_eq!(tried, None, "applied under a WAL reader's read mark");
    assert_eq!(replica.stored("bank.db"), before, "something was written");
    let (waiting, file) = (Arc::clone(&replica), ltx[setup].clone());
    let base = pos.checksum;
    let apply = std::thread::spawn(move || waiting.mount().apply_ltx("bank.db", &file, base));
    std::thread::sleep(Duration::from_millis(200));
    if apply.is_finished() {
        panic!("the apply did not wait for the read transaction: {:?}", apply.join());
    }
    let ver: i64 = tx.query_row("SELECT max(ver) FROM acct", [], |r| r.get(0)).unwrap();
    assert_eq!(ver, 0, "the reader's transaction changed under it");
    tx.commit().unwrap();
    pos = apply.join().expect("apply thread").expect("applied once the reader was done");
    let ver: i64 = reader.query_row("SELECT max(ver) FROM acct", [], |r| r.get(0)).unwrap();
    assert_eq!(ver, 1);
    pos = replica.mount().try_apply_ltx("bank.db", &ltx[setup + 1], pos.checksum).expect("no error").expect("applied");
    let ver: i64 = reader.query_row("SELECT max(ver) FROM acct", [], |r| r.get(0)).unwrap();
    assert_eq!(ver, 2);
    assert_eq!(pos, primary.sink.pos_of("bank.db"));
    integrity_ok(&reader);
}
