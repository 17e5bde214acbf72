//! The application's side of every workload: rusqlite doing small write transactions, one
//! large transaction, and primary-key reads, on whatever directory it is given (a native
//! folder or a mount). Each loop stops at its count or its time limit, whichever comes
//! first, and reports what it really did; the caller checks the rows are there afterwards, so
//! a mount that drops writes cannot look fast.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rusqlite::{Connection, OpenFlags};

/// A journal mode with the synchronous setting used with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Journal {
    /// `DELETE` or `WAL`.
    pub mode: &'static str,
    /// `FULL` or `NORMAL`.
    pub sync: &'static str,
}

/// Rollback journal, fsync at every commit.
pub const DELETE_FULL: Journal = Journal { mode: "DELETE", sync: "FULL" };
/// WAL without an fsync per commit: the fastest durable-on-checkpoint setting.
pub const WAL_NORMAL: Journal = Journal { mode: "WAL", sync: "NORMAL" };
/// WAL with an fsync per commit.
pub const WAL_FULL: Journal = Journal { mode: "WAL", sync: "FULL" };

impl std::fmt::Display for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.mode, self.sync)
    }
}

/// Bytes in each small row: the shape of a typical OLTP insert.
pub const SMALL_ROW_BYTES: u64 = 100;
/// Bytes in each row of the large transaction and of the snapshot database.
pub const LARGE_ROW_BYTES: u64 = 1 << 20;
/// How long a connection waits on a lock another holds before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a timed loop did.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Operations completed (transactions, megabytes or reads).
    pub ops: u64,
    /// Wall time they took.
    pub elapsed: Duration,
}

impl Measured {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How long a database's first open may be refused as read-only. A node publishes its
/// primary status before its mount has switched to writable (the switch happens on the
/// driver's status thread), so the first open right after start-up can fail with
/// SQLITE_CANTOPEN or SQLITE_READONLY; waiting here keeps that race out of the figures (it is
/// reported in docs/BENCHMARKS.md).
const WRITABLE_GRACE: Duration = Duration::from_secs(2);

/// Opens (creating if needed) `path` read-write in `journal` with table `t`, retrying for up
/// to [`WRITABLE_GRACE`] while the mount refuses writes.
pub fn open(path: &Path, journal: Journal) -> anyhow::Result<Connection> {
    let start = Instant::now();
    let mut refusals = 0u32;
    loop {
        match try_open(path, journal) {
            Ok(conn) => {
                if refusals > 0 {
                    eprintln!("bench: {} refused writes {refusals} times in {:?}", path.display(), start.elapsed());
                }
                return Ok(conn);
            }
            Err(e) if start.elapsed() < WRITABLE_GRACE && refused_as_read_only(&e) => {
                refusals += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn refused_as_read_only(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<rusqlite::Error>())
        .any(|e| matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)))
}

fn try_open(path: &Path, journal: Journal) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn
        .query_row(&format!("PRAGMA journal_mode={}", journal.mode), [], |r| r.get(0))
        .with_context(|| format!("setting journal_mode={} on {}", journal.mode, path.display()))?;
    ensure!(
        mode.eq_ignore_ascii_case(journal.mode),
        "{}: journal_mode is {mode}, not {}",
        path.display(),
        journal.mode
    );
    conn.execute_batch(&format!(
        "PRAGMA synchronous={}; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
        journal.sync
    ))
    .with_context(|| format!("creating table t in {}", path.display()))?;
    Ok(conn)
}

/// Opens `path` read-only (a replica's mount refuses writes).
pub fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {} read-only", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Autocommit inserts of one small row each: up to `n`, or until `limit` has passed.
pub fn small_writes(conn: &Connection, n: u64, limit: Duration) -> anyhow::Result<Measured> {
    let mut stmt = conn.prepare(&format!("INSERT INTO t(v) VALUES (randomblob({SMALL_ROW_BYTES}))"))?;
    let start = Instant::now();
    let mut done = 0;
    while done < n && start.elapsed() < limit {
        stmt.execute([]).context("small write transaction")?;
        done += 1;
    }
    Ok(Measured { ops: done, elapsed: start.elapsed() })
}

/// One transaction inserting `mb` rows of 1 MiB (fewer if `limit` passes first); ops are MiB.
pub fn large_tx(conn: &Connection, mb: u64, limit: Duration) -> anyhow::Result<Measured> {
    let start = Instant::now();
    conn.execute_batch("BEGIN")?;
    let mut stmt = conn.prepare(&format!("INSERT INTO t(v) VALUES (randomblob({LARGE_ROW_BYTES}))"))?;
    let mut done = 0;
    while done < mb && start.elapsed() < limit {
        stmt.execute([]).context("inserting into the large transaction")?;
        done += 1;
    }
    drop(stmt);
    conn.execute_batch("COMMIT").context("committing the large transaction")?;
    Ok(Measured { ops: done, elapsed: start.elapsed() })
}

/// Inserts `rows` rows of `row_bytes` in transactions of at most `per_tx` rows.
pub fn fill(conn: &Connection, rows: u64, row_bytes: u64, per_tx: u64, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut stmt = conn.prepare(&format!("INSERT INTO t(v) VALUES (randomblob({row_bytes}))"))?;
    let mut done = 0;
    while done < rows {
        if start.elapsed() > limit {
            bail!("filling {rows} rows took longer than {limit:?} ({done} done)");
        }
        conn.execute_batch("BEGIN")?;
        let end = (done + per_tx).min(rows);
        while done < end {
            stmt.execute([]).context("filling the table")?;
            done += 1;
        }
        conn.execute_batch("COMMIT").context("committing a fill transaction")?;
    }
    Ok(())
}

/// The next row to read: a walk over `1..=rows` that jumps around the b-tree.
fn next_id(id: i64, rows: i64) -> i64 {
    (id * 7919) % rows + 1
}

fn read_one(stmt: &mut rusqlite::Statement<'_>, id: i64) -> anyhow::Result<()> {
    let len: i64 = stmt.query_row([id], |r| r.get(0)).with_context(|| format!("reading row {id}"))?;
    ensure!(len as u64 == SMALL_ROW_BYTES, "row {id} holds {len} bytes, not {SMALL_ROW_BYTES}");
    Ok(())
}

/// Autocommit primary-key reads (each its own read transaction) over `rows` small rows.
pub fn autocommit_reads(conn: &Connection, rows: u64, n: u64, limit: Duration) -> anyhow::Result<Measured> {
    let rows = i64::try_from(rows).context("row count")?;
    let mut stmt = conn.prepare("SELECT length(v) FROM t WHERE id = ?1")?;
    let start = Instant::now();
    let (mut id, mut done) = (1, 0);
    while done < n && start.elapsed() < limit {
        id = next_id(id, rows);
        read_one(&mut stmt, id)?;
        done += 1;
    }
    Ok(Measured { ops: done, elapsed: start.elapsed() })
}

/// Primary-key reads in read transactions of `batch` reads each.
pub fn batched_reads(conn: &Connection, rows: u64, n: u64, batch: u64, limit: Duration) -> anyhow::Result<Measured> {
    let rows = i64::try_from(rows).context("row count")?;
    let mut stmt = conn.prepare("SELECT length(v) FROM t WHERE id = ?1")?;
    let start = Instant::now();
    let (mut id, mut done) = (1, 0);
    while done < n && start.elapsed() < limit {
        conn.execute_batch("BEGIN")?;
        for _ in 0..batch.min(n - done) {
            id = next_id(id, rows);
            read_one(&mut stmt, id)?;
            done += 1;
        }
        conn.execute_batch("COMMIT")?;
    }
    Ok(Measured { ops: done, elapsed: start.elapsed() })
}

/// Rows in table `t`.
pub fn count_rows(conn: &Connection) -> anyhow::Result<u64> {
    let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).context("counting rows")?;
    Ok(n as u64)
}

/// Fails unless table `t` holds exactly `want` rows.
pub fn expect_rows(conn: &Connection, want: u64, what: &str) -> anyhow::Result<()> {
    let got = count_rows(conn)?;
    ensure!(got == want, "{what}: table t holds {got} rows, expected {want}");
    Ok(())
}

/// Fails unless the newest row holds `bytes` bytes: the large rows' pages are really there.
pub fn expect_last_row_bytes(conn: &Connection, bytes: u64, what: &str) -> anyhow::Result<()> {
    let len: i64 = conn
        .query_row("SELECT length(v) FROM t ORDER BY id DESC LIMIT 1", [], |r| r.get(0))
        .with_context(|| format!("{what}: reading the last row"))?;
    ensure!(len as u64 == bytes, "{what}: the last row holds {len} bytes, expected {bytes}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_stop_at_their_count_and_rows_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(&dir.path().join("a.db"), WAL_NORMAL).expect("open");
        let m = small_writes(&conn, 25, Duration::from_secs(60)).expect("writes");
        assert_eq!(m.ops, 25);
        expect_rows(&conn, 25, "native").expect("25 rows");
        assert!(expect_rows(&conn, 24, "native").is_err());
        let reads = batched_reads(&conn, 25, 101, 10, Duration::from_secs(60)).expect("reads");
        assert_eq!(reads.ops, 101);
        let reads = autocommit_reads(&conn, 25, 30, Duration::from_secs(60)).expect("reads");
        assert_eq!(reads.ops, 30);
    }

    #[test]
    fn loops_stop_at_their_time_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(&dir.path().join("a.db"), WAL_NORMAL).expect("open");
        let m = small_writes(&conn, u64::MAX, Duration::from_millis(50)).expect("writes");
        assert!(m.ops > 0 && m.elapsed < Duration::from_secs(5));
        expect_rows(&conn, m.ops, "native").expect("every write counted");
    }
}
