//! `Mount::copy_committed`: copies taken while SQLite writes are always one committed state,
//! never pages of an open transaction, and never wait for a commit held at its commit point.
//!
//! The sink applies every captured transaction to a separate copy and records the checksum
//! after each; a copy's checksum must be one of them.
//!
//! Threads run in `thread::scope`: if an assertion fails, the scope still joins them (a
//! writer left running against a mount that is going away would hang the test process).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::*;
use replite_core::types::{Checksum, PageSize, Pos};
use replite_fuse::{CommittedCopy, CopyError};

const DB: &str = "c.db";
const PAGE_SIZE: u32 = 4096;

/// A primary with table `t` in `mode` (page size 4096) and some rows.
fn primary_in(mode: &str) -> Fixture {
    let fx = Fixture::primary();
    let conn = fx.open(DB);
    conn.execute_batch(&format!("PRAGMA page_size={PAGE_SIZE}")).unwrap();
    journal_mode(&conn, mode);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); CREATE INDEX t_v ON t(v);").unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..50 {
        conn.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [200 + i * 20]).unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    fx
}

/// Checks a copy: its bytes sum to what it says, they are a committed state, and SQLite
/// opens them and finds them sound. Returns the checksum.
fn check_copy(fx: &Fixture, copy: &CommittedCopy, dest: &Path, what: &str) -> Checksum {
    let bytes = std::fs::read(dest).unwrap();
    assert_eq!(copy.page_size, PageSize::new(PAGE_SIZE).unwrap(), "{what}");
    assert_eq!(bytes.len() as u64, u64::from(copy.pages) * u64::from(PAGE_SIZE), "{what}: length");
    assert_eq!(checksum(&bytes, PAGE_SIZE), copy.checksum, "{what}: the checksum is the copy's");
    let history = fx.sink.checksums_of(DB);
    assert!(history.contains(&copy.checksum), "{what}: {} is no committed state", copy.checksum);
    // SQLite may create a WAL and index beside the copy; the copy itself is checked already.
    let conn = rusqlite::Connection::open(dest).unwrap();
    integrity_ok(&conn);
    copy.checksum
}

/// Collects what `Mount::stream_committed` hands on, checking the order it comes in. When
/// the copy announces no checksum (the last commit), it notes the position the sink had
/// accepted last at that moment, under the copy's locks.
struct CollectSink<'a> {
    commits: &'a RecordingSink,
    begun: Option<(PageSize, u32, Checksum)>,
    bytes: Vec<u8>,
}

impl replite_fuse::CopySink for CollectSink<'_> {
    fn begin(&mut self, page_size: PageSize, pages: u32, checksum: Option<Checksum>) -> std::io::Result<()> {
        assert!(self.begun.is_none(), "begun twice");
        let checksum = checksum.unwrap_or_else(|| self.commits.pos_of(DB).checksum);
        self.begun = Some((page_size, pages, checksum));
        Ok(())
    }

    fn pages(&mut self, first: replite_core::types::Pgno, bytes: &[u8]) -> std::io::Result<()> {
        let (page_size, _, _) = self.begun.expect("pages come after begin");
        assert_eq!(first.offset(page_size), self.bytes.len() as u64, "pages in order, none missing");
        assert_eq!(bytes.len() % page_size.bytes(), 0, "whole pages");
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
}

/// A copy by `Mount::stream_committed`: what the sink got (or the file, around a writer)
/// ends up at `dest`, and agrees with what `begin` announced (or, without a checksum, with
/// the last commit when it began).
fn streamed_copy(fx: &Fixture, dest: &Path) -> CommittedCopy {
    let mut sink = CollectSink { commits: &fx.sink, begun: None, bytes: Vec::new() };
    let (copy, to) = fx.mount().stream_committed(DB, dest, &mut sink).expect("streamed copy");
    match to {
        replite_fuse::CopiedTo::Sink => {
            assert_eq!(sink.begun, Some((copy.page_size, copy.pages, copy.checksum)), "begin announced the copy");
            assert_eq!(sink.bytes.len() as u64, u64::from(copy.pages) * u64::from(copy.page_size.get()));
            std::fs::write(dest, &sink.bytes).unwrap();
        }
        replite_fuse::CopiedTo::File => assert!(sink.begun.is_none() && sink.bytes.is_empty(), "the sink was not used"),
    }
    copy
}

fn dest_in(dir: &TempDir, name: &str) -> PathBuf {
    dir.0.join(name)
}

/// A writer doing many small transactions while another thread copies in a loop.
fn copies_during_writes(mode: &str) {
    let fx = primary_in(mode);
    let done = AtomicBool::new(false);
    let dir = TempDir::new("copies");
    let (copies, seen) = thread::scope(|s| {
        s.spawn(|| {
            // Stops the copier even if this thread fails.
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _done = Done(&done);
            let conn = fx.open(DB);
            // Checkpoints now and then, so WAL copies see the database file change too.
            conn.execute_batch("PRAGMA wal_autocheckpoint=20").unwrap();
            for i in 0..300i64 {
                match i % 10 {
                    3 => conn.execute("UPDATE t SET v = randomblob(300) WHERE id % 7 = ?1", [i % 7]).map(|_| ()),
                    7 => conn.execute("DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 3)", []).map(|_| ()),
                    _ => conn.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [100 + (i * 37) % 3000]).map(|_| ()),
                }
                .unwrap();
            }
        });
        let mut copies = 0;
        let mut seen = std::collections::BTreeSet::new();
        while !done.load(Ordering::SeqCst) || copies < 6 {
            let dest = dest_in(&dir, &format!("copy-{}", copies % 2));
            // Every other copy is streamed to a sink and written out afterwards.
            let copy = if copies % 2 == 0 {
                fx.mount().copy_committed(DB, &dest).expect("copy")
            } else {
                streamed_copy(&fx, &dest)
            };
            seen.insert(check_copy(&fx, &copy, &dest, &format!("{mode} copy {copies}")));
            copies += 1;
        }
        (copies, seen)
    });
    eprintln!("{mode}: {copies} copies, {} distinct states", seen.len());
    // The last copy is the final state.
    let dest = dest_in(&dir, "final");
    let copy = fx.mount().copy_committed(DB, &dest).expect("final copy");
    assert_eq!(copy.checksum, fx.sink.pos_of(DB).checksum);
    if mode == "WAL" {
        // The WAL still holds commits the database file does not: the copy is not the file.
        let conn = fx.open(DB);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    assert_same_pages(&std::fs::read(&dest).unwrap(), &fx.stored(DB), PAGE_SIZE as usize, "final copy vs file");
}

#[test]
fn copies_taken_during_rollback_journal_writes_are_committed_states() {
    copies_during_writes("DELETE");
}

#[test]
fn copies_taken_during_wal_writes_are_committed_states() {
    copies_during_writes("WAL");
}

/// A copy started while a commit is held at its commit point (in synchronous replication,
/// waiting for the replica that needs this copy) returns without waiting for it, with the
/// state before that commit; the commit then completes.
fn copy_does_not_wait_for_a_held_commit(mode: &str) {
    let fx = primary_in(mode);
    let before = fx.sink.pos_of(DB).checksum;
    let dir = TempDir::new("held");
    let dest = dest_in(&dir, "copy");
    let copy = thread::scope(|s| {
        let held = fx.sink.gate.hold();
        let writer = s.spawn(|| {
            let conn = fx.open(DB);
            // Enough pages that the rollback writer has written many into the file and
            // journaled their originals.
            conn.execute_batch(
                "BEGIN; UPDATE t SET v = randomblob(1000) WHERE id % 2 = 0; INSERT INTO t(v) VALUES (randomblob(9000)); \
                 COMMIT;",
            )
        });
        held.wait_arrivals(1);
        if mode != "WAL" {
            assert_ne!(checksum(&fx.stored(DB), PAGE_SIZE), before, "the held commit's pages are in the file");
        }
        // On this thread, with the commit still held: a copy that waited would never return.
        let copy = fx.mount().copy_committed(DB, &dest);
        drop(held);
        writer.join().expect("writer").expect("the held commit completes");
        copy.expect("copy")
    });
    assert_eq!(check_copy(&fx, &copy, &dest, mode), before, "{mode}: the copy shows the state before the commit");
    assert_ne!(fx.sink.pos_of(DB).checksum, before, "{mode}: the commit went through afterwards");
    let copy = fx.mount().copy_committed(DB, &dest).expect("copy after the commit");
    assert_eq!(check_copy(&fx, &copy, &dest, mode), fx.sink.pos_of(DB).checksum, "{mode}: after the commit");
}

#[test]
fn a_copy_during_a_rollback_commit_held_at_its_commit_point_returns_the_state_before_it() {
    copy_does_not_wait_for_a_held_commit("DELETE");
    copy_does_not_wait_for_a_held_commit("PERSIST");
    copy_does_not_wait_for_a_held_commit("TRUNCATE");
}

#[test]
fn a_copy_during_a_wal_commit_held_at_its_commit_point_returns_the_state_before_it() {
    copy_does_not_wait_for_a_held_commit("WAL");
}

/// A large transaction that spills its cache is open (rollback: its pages are in the
/// database file; WAL: its frames are in the WAL) when the copy starts: the copy does not wait
/// for it and shows the state before it; it then rolls back.
fn copy_during_a_spilled_transaction(mode: &str) {
    let fx = primary_in(mode);
    let before = fx.sink.pos_of(DB).checksum;
    let conn = fx.open(DB);
    let rows_before = rows_of(&conn);
    conn.execute_batch("PRAGMA cache_size=4; PRAGMA cache_spill=4; BEGIN; UPDATE t SET v = randomblob(2000);").unwrap();
    if mode == "WAL" {
        assert!(std::fs::metadata(fx.side_file(DB, "wal")).unwrap().len() > 32, "the update spilled frames");
    } else {
        assert_ne!(checksum(&fx.stored(DB), PAGE_SIZE), before, "the update spilled into the database file");
    }
    let dir = TempDir::new("spill");
    let dest = dest_in(&dir, "copy");
    // On this thread, with the transaction open: a copy that waited would never return.
    let copy = fx.mount().copy_committed(DB, &dest);
    conn.execute_batch("ROLLBACK").unwrap();
    let copy = copy.expect("copy");
    assert_eq!(check_copy(&fx, &copy, &dest, mode), before, "{mode}: the copy shows the state before");
    // With nobody writing, the rolled-back transaction's frames are still in the WAL, past
    // the last commit: a copy now must ignore them. In rollback mode SQLite neither journals
    // a free page it reuses nor restores it at the rollback, so the file may now differ from
    // `before` in such a page (about one run in 80, with these random rows), which the mount
    // records as a commit of its own: the copy shows the latest committed state, whose rows
    // are `before`'s.
    let copy = fx.mount().copy_committed(DB, &dest).expect("copy after the rollback");
    let latest = fx.sink.pos_of(DB).checksum;
    assert_eq!(check_copy(&fx, &copy, &dest, mode), latest, "{mode}: after the rollback");
    if mode == "WAL" {
        assert_eq!(latest, before, "{mode}: a rolled-back WAL transaction commits nothing");
    }
    assert_eq!(rows_of(&rusqlite::Connection::open(&dest).unwrap()), rows_before, "{mode}: the rows before");
}

/// Every row of `t`, in order.
fn rows_of(conn: &rusqlite::Connection) -> Vec<(i64, Vec<u8>)> {
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

#[test]
fn a_copy_during_a_spilled_rollback_transaction_shows_the_state_before_it() {
    copy_during_a_spilled_transaction("DELETE");
}

#[test]
fn a_copy_during_a_spilled_wal_transaction_shows_the_state_before_it() {
    copy_during_a_spilled_transaction("WAL");
}

/// A spilled transaction refused at its commit point leaves a hot journal and its pages in
/// the database file, with no lock held; the copy shows what SQLite's rollback will restore.
#[test]
fn a_copy_over_a_hot_journal_shows_the_state_rollback_restores() {
    for mode in ["DELETE", "PERSIST"] {
        let fx = primary_in(mode);
        let before = fx.sink.copy_of(DB);
        let conn = fx.open(DB);
        conn.execute_batch("PRAGMA cache_size=4; PRAGMA cache_spill=4;").unwrap();
        fx.sink.refuse_commit.store(true, Ordering::SeqCst);
        conn.execute_batch("BEGIN; UPDATE t SET v = randomblob(2000); INSERT INTO t(v) SELECT v FROM t;").unwrap();
        conn.execute_batch("COMMIT").expect_err("the commit point is refused");
        let _ = conn.execute_batch("ROLLBACK");
        fx.sink.refuse_commit.store(false, Ordering::SeqCst);
        let journal = std::fs::read(fx.side_file(DB, "journal")).unwrap();
        assert_eq!(journal[..8], [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7], "{mode}: the journal is hot");
        assert_ne!(fx.stored(DB), before, "{mode}: the database file holds uncommitted pages");

        let dir = TempDir::new("hot");
        let dest = dest_in(&dir, "copy");
        let copy = fx.mount().copy_committed(DB, &dest).expect("copy");
        check_copy(&fx, &copy, &dest, mode);
        assert_same_pages(&std::fs::read(&dest).unwrap(), &before, PAGE_SIZE as usize, mode);
        // SQLite's rollback (the next reader) restores exactly that.
        integrity_ok(&fx.open(DB));
        assert_same_pages(&fx.stored(DB), &before, PAGE_SIZE as usize, mode);
    }
}

#[test]
fn copies_on_a_replica_are_applied_states_even_during_applies() {
    let primary = primary_in("WAL");
    let conn = primary.open(DB);
    for i in 0..40 {
        conn.execute("UPDATE t SET v = randomblob(?1) WHERE id % 5 = ?2", [300 + i, i % 5]).unwrap();
    }
    // The states the replica passes through are the primary's, one per transaction.
    let states = primary.sink.checksums_of(DB);
    let ltx = primary.sink.ltx_of(DB);
    let replica = Fixture::replica();
    let setup = 3;
    let mut pos = Pos::default();
    for file in &ltx[..setup] {
        pos = replica.mount().apply_ltx(DB, file, pos.checksum).expect("apply");
    }
    let done = AtomicBool::new(false);
    let copies = thread::scope(|s| {
        let copier = s.spawn(|| {
            let dir = TempDir::new("replica-copies");
            let dest = dest_in(&dir, "copy");
            let mut copies = 0;
            while !done.load(Ordering::SeqCst) || copies < 3 {
                let copy = replica.mount().copy_committed(DB, &dest).expect("copy on a replica");
                assert_eq!(checksum(&std::fs::read(&dest).unwrap(), PAGE_SIZE), copy.checksum);
                assert!(states.contains(&copy.checksum), "copy {copies} is no applied state");
                copies += 1;
            }
            copies
        });
        for file in &ltx[setup..] {
            let applied = replica.mount().apply_ltx(DB, file, pos.checksum);
            if applied.is_err() {
                done.store(true, Ordering::SeqCst);
            }
            pos = applied.expect("apply");
        }
        done.store(true, Ordering::SeqCst);
        copier.join().expect("copier")
    });
    assert!(copies >= 3);
    let dir = TempDir::new("replica-final");
    let dest = dest_in(&dir, "copy");
    let copy = replica.mount().copy_committed(DB, &dest).expect("copy");
    assert_eq!(copy.checksum, pos.checksum);
    // The replica's file is the primary's, WAL header bytes included.
    assert_eq!(std::fs::read(&dest).unwrap(), replica.stored(DB));
}

#[test]
fn copy_errors_name_the_database() {
    let fx = Fixture::primary();
    let dir = TempDir::new("errors");
    let err = fx.mount().copy_committed("nope.db", &dest_in(&dir, "x")).expect_err("no such database");
    assert!(matches!(err, CopyError::Missing { ref db } if db == "nope.db"), "{err}");
    let err = fx.mount().copy_committed("a/b", &dest_in(&dir, "x")).expect_err("not a name");
    assert!(matches!(err, CopyError::InvalidName { .. }), "{err}");
    std::fs::write(fx.path("empty.db"), b"").unwrap();
    let err = fx.mount().copy_committed("empty.db", &dest_in(&dir, "x")).expect_err("empty");
    assert!(matches!(err, CopyError::Empty { .. }), "{err}");
    fx.open("full.db").execute_batch("CREATE TABLE t(x)").unwrap();
    let err = fx.mount().copy_committed("full.db", Path::new("/nonexistent/dir/x")).expect_err("bad dest");
    assert!(matches!(err, CopyError::Io { step: "create the copy", .. }), "{err}");
    assert!(err.to_string().contains("full.db"), "{err}");
}
