//! A full disk under a running daemon: the data directory is a small tmpfs, and SQLite writes
//! through the mount until it fills. The application gets "database or disk is full", the
//! database keeps every acknowledged row and passes `integrity_check`, and once space is
//! freed writes resume without a restart; a restart afterwards recovers the same position. A
//! replica whose disk is full waits longer and longer between tries, and catches up once
//! space is freed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::{Connection, ErrorCode};
use support::cluster::{Lease, Node};

/// A tmpfs mounted at `path` for this test, unmounted (lazily if busy) when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None` when not root (mounting needs it); running as root, a failed mount fails the test.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("data dir");
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Tmpfs { path: path.to_path_buf() });
        }
        // SAFETY: geteuid has no preconditions.
        assert_ne!(unsafe { libc::geteuid() }, 0, "running as root but could not mount a tmpfs at {}", path.display());
        eprintln!("SKIP: mounting a tmpfs needs root");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// `SQLITE_IOERR | (10 << 8)`.
const SQLITE_IOERR_DELETE: i32 = 2570;

fn rows(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count rows")
}

fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check")
}

fn full_disk(journal_mode: &str, synchronous: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(root.path(), "solo", &Lease::Static { primary_url: None });
    let Some(data) = Tmpfs::mount(&node.dir.join("data"), "8m") else { return };
    // Space to give back once the disk is full: as much as the rest holds, so that a restart
    // can fold a WAL that filled the disk into the database.
    std::fs::write(data.path.join("ballast"), vec![1u8; 4 << 20]).expect("ballast");
    node.start();
    node.wait_for("primary", |i| i["role"] == "primary");

    let conn = Connection::open(node.db_path("app.db")).expect("open");
    conn.pragma_update(None, "journal_mode", journal_mode).expect("journal_mode");
    conn.pragma_update(None, "synchronous", synchronous).expect("synchronous");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");

    // Write until the disk is full (bounded: 4 MiB holds far fewer than 2 000 rows of 16 KiB
    // once the database and its LTX files both hold them).
    let mut acknowledged = 0i64;
    let failure = loop {
        assert!(acknowledged < 2_000, "the disk never filled");
        match conn.execute("INSERT INTO t (v) VALUES (randomblob(16384))", []) {
            Ok(_) => acknowledged += 1,
            Err(e) => break e,
        }
    };
    assert!(acknowledged > 10, "filled too early: {failure:?}");
    let rusqlite::Error::SqliteFailure(code, _) = &failure else { panic!("not an SQLite error: {failure:?}") };
    // SQLite reports ENOSPC as SQLITE_FULL where the syscall is a write. A rollback journal's
    // commit point is an unlink, whose every failure SQLite reports as SQLITE_IOERR_DELETE:
    // the mount refuses a database write before the transaction's LTX file stops fitting.
    assert_eq!(code.code, ErrorCode::DiskFull, "a full disk is SQLITE_FULL: {failure:?}\n{}", node.log_text());
    assert_ne!(code.extended_code, SQLITE_IOERR_DELETE);
    let log = node.log_text();
    assert!(log.contains("No space left on device"), "the daemon's log says why:\n{log}");
    assert_eq!(rows(&conn), acknowledged, "every acknowledged row is there, the failed one is not");
    assert_eq!(integrity(&conn), "ok");

    // Space comes back: the next write succeeds without a restart.
    std::fs::remove_file(data.path.join("ballast")).expect("free space");
    conn.execute("INSERT INTO t (v) VALUES (randomblob(100))", []).expect("a write after space was freed");
    acknowledged += 1;
    assert_eq!(rows(&conn), acknowledged);
    drop(conn);
    restart_keeps_position_and_rows(&mut node, acknowledged);
}

/// Restarts `node`: it is primary again at the position it had, with `rows` rows in `t` and
/// a database that passes `integrity_check`.
fn restart_keeps_position_and_rows(node: &mut Node, rows_wanted: i64) {
    let before = node.pos("app.db").expect("position");
    node.stop();
    node.start();
    node.wait_for("primary again", |i| i["role"] == "primary");
    assert_eq!(node.pos("app.db").as_deref(), Some(before.as_str()), "the position survives a restart");
    let conn = Connection::open(node.db_path("app.db")).expect("reopen");
    assert_eq!(rows(&conn), rows_wanted);
    assert_eq!(integrity(&conn), "ok");
    drop(conn);
    node.stop();
}

#[test]
fn a_full_disk_in_delete_mode_is_sqlite_full_and_loses_nothing() {
    full_disk("DELETE", "FULL");
}

#[test]
fn a_full_disk_in_wal_mode_is_sqlite_full_and_loses_nothing() {
    full_disk("WAL", "NORMAL");
}

/// Bytes still free on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: `statvfs` is plain data, valid when zeroed.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable struct, both alive for the call.
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &raw mut stat) }, 0, "statvfs");
    stat.f_bavail * stat.f_frsize
}

/// The case SQLite's own writes do not catch: an UPDATE overwrites pages in place (no new
/// space for the database) and its journal fits, but the LTX file the commit needs beside it
/// would not. Without the mount's check the commit point, an unlink, fails and SQLite says
/// "disk I/O error" (SQLITE_IOERR_DELETE); with it, a database write is refused first and
/// SQLite says "database or disk is full". Nothing is lost either way.
#[test]
fn an_update_whose_ltx_file_would_not_fit_is_sqlite_full_in_delete_mode() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(root.path(), "solo", &Lease::Static { primary_url: None });
    let Some(data) = Tmpfs::mount(&node.dir.join("data"), "8m") else { return };
    node.start();
    node.wait_for("primary", |i| i["role"] == "primary");
    let conn = Connection::open(node.db_path("app.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "DELETE").expect("journal_mode");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    conn.execute_batch("BEGIN").expect("begin");
    for _ in 0..48 {
        conn.execute("INSERT INTO t (v) VALUES (randomblob(16384))", []).expect("insert");
    }
    conn.execute_batch("COMMIT").expect("commit");
    let before: Vec<u8> = conn.query_row("SELECT v FROM t WHERE id = 7", [], |r| r.get(0)).expect("row 7");
    // Leave room for the UPDATE's journal (about 0.8 MiB) but not for its LTX file as well.
    let leave = 1_200 << 10;
    let free = free_bytes(&data.path);
    assert!(free > leave + (1 << 20), "the tmpfs is fuller than planned: {free} bytes free");
    std::fs::write(data.path.join("ballast"), vec![1u8; usize::try_from(free - leave).expect("size")])
        .expect("ballast");

    let failure = conn.execute("UPDATE t SET v = randomblob(16384)", []).expect_err("the LTX file cannot fit");
    let rusqlite::Error::SqliteFailure(code, _) = &failure else { panic!("not an SQLite error: {failure:?}") };
    assert_eq!(code.code, ErrorCode::DiskFull, "{failure:?}\n{}", node.log_text());
    assert!(node.log_text().contains("No space left on device"), "the daemon's log says why");
    let after: Vec<u8> = conn.query_row("SELECT v FROM t WHERE id = 7", [], |r| r.get(0)).expect("row 7");
    assert_eq!(after, before, "the refused UPDATE was rolled back");
    assert_eq!(integrity(&conn), "ok");

    std::fs::remove_file(data.path.join("ballast")).expect("free space");
    conn.execute("UPDATE t SET v = randomblob(16384)", []).expect("the UPDATE once there is room");
    drop(conn);
    restart_keeps_position_and_rows(&mut node, 48);
}

#[test]
fn a_replica_whose_disk_fills_catches_up_once_space_is_freed() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut primary = Node::new(root.path(), "primary", &Lease::Static { primary_url: None });
    let mut replica = Node::new(root.path(), "replica", &Lease::Static { primary_url: Some(primary.url.clone()) });
    let Some(data) = Tmpfs::mount(&replica.dir.join("data"), "8m") else { return };
    std::fs::write(data.path.join("ballast"), vec![1u8; 5 << 20]).expect("ballast");
    primary.start();
    primary.wait_for("primary", |i| i["role"] == "primary");
    replica.start();
    replica.wait_for("a replica", |i| i["role"] == "replica");

    // About 4 MiB of rows: more than the 3 MiB the replica has left, less than it has once
    // the ballast goes.
    let conn = Connection::open(primary.db_path("app.db")).expect("open");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    for _ in 0..128 {
        conn.execute("INSERT INTO t (v) VALUES (randomblob(16384))", []).expect("the primary's disk has room");
    }
    let want = primary.pos("app.db").expect("primary position");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !replica.log_text().contains("No space left on device") {
        assert!(std::time::Instant::now() < deadline, "the replica never ran out of space:\n{}", replica.log_text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_ne!(replica.pos("app.db").as_deref(), Some(want.as_str()), "the replica cannot hold it all yet");
    // While the disk stays full, the replica asks for the files again less and less often:
    // about five tries in four seconds (after 0, 0.1, 1, 2 and 4 s), not one every ~100 ms.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let log = replica.log_text();
    let failed_tries = log.lines().filter(|l| l.contains("Resync") && l.contains("persisting")).count();
    assert!((2..=6).contains(&failed_tries), "{failed_tries} failed tries in about 4 s:\n{log}");
    assert!(log.contains("failures in a row"), "the log does not say why it waits:\n{log}");

    std::fs::remove_file(data.path.join("ballast")).expect("free space");
    replica.wait_for("caught up", |i| {
        i["databases"]
            .as_array()
            .is_some_and(|dbs| dbs.iter().any(|d| d["name"] == "app.db" && d["pos"] == want.as_str()))
    });
    let on_replica = Connection::open(replica.db_path("app.db")).expect("open on the replica");
    assert_eq!(rows(&on_replica), 128);
    assert_eq!(integrity(&on_replica), "ok");
    drop(on_replica);
    drop(conn);
    replica.stop();
    primary.stop();
}
