//! A mixed workload in the manner of SQLite's `speedtest1`: unindexed, ordered and unordered
//! inserts, range and `LIKE` scans, index creation, indexed lookups, range and per-row updates,
//! deletes, a join, `ALTER TABLE`, a refill by `INSERT ... SELECT` and `VACUUM`, each phase in
//! one transaction as speedtest1 runs them. The data comes from a fixed-seed generator, so every
//! side builds byte-for-byte the same tables and the caller can compare their digests: a mount
//! that loses or mangles a write cannot look fast.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::{Connection, params};

use crate::bench::workloads::Measured;

/// A digest of every table the workload leaves: equal digests mean equal contents.
pub type Digest = String;

/// A linear congruential generator (Knuth's MMIX constants): deterministic, seedless, enough
/// to spread keys over the b-trees.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n.max(1)) as i64
    }
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

/// `n` in English words, as speedtest1 fills its text columns (variable length, shared
/// prefixes, good `LIKE` material).
fn number_name(mut n: u64) -> String {
    let mut words: Vec<&str> = Vec::new();
    for (scale, name) in [(1_000_000_000, "billion"), (1_000_000, "million"), (1_000, "thousand")] {
        if n >= scale {
            words.push(ONES[((n / scale) % 20) as usize]);
            words.push(name);
            n %= scale;
        }
    }
    if n >= 100 {
        words.push(ONES[(n / 100) as usize]);
        words.push("hundred");
        n %= 100;
    }
    if n >= 20 {
        words.push(TENS[(n / 10) as usize]);
        n %= 10;
    }
    if n > 0 || words.is_empty() {
        words.push(ONES[n as usize]);
    }
    words.join(" ")
}

/// Runs the workload at `size` (rows per table) on a fresh database, failing once `limit` has
/// passed; returns the time it took and the digest of what it left. `ops` is 1: one run.
pub fn run(conn: &Connection, size: u64, limit: Duration) -> anyhow::Result<(Measured, Digest)> {
    let start = Instant::now();
    let mut phases = Phases { conn, start, limit, rng: Lcg(size) };
    let n = i64::try_from(size).context("size")?;
    let span = n.max(1);

    phases.tx("unindexed inserts", |c, rng| {
        c.execute_batch("CREATE TABLE t1(a INTEGER, b INTEGER, c TEXT)")?;
        let mut ins = c.prepare("INSERT INTO t1 VALUES(?1, ?2, ?3)")?;
        for i in 1..=n {
            let b = rng.below(size * 4);
            ins.execute(params![i, b, number_name(b as u64)])?;
        }
        Ok(())
    })?;
    phases.tx("ordered inserts with a primary key", |c, rng| {
        c.execute_batch("CREATE TABLE t2(a INTEGER PRIMARY KEY, b INTEGER, c TEXT)")?;
        let mut ins = c.prepare("INSERT INTO t2 VALUES(?1, ?2, ?3)")?;
        for i in 1..=n {
            let b = rng.below(size * 4);
            ins.execute(params![i, b, number_name(b as u64)])?;
        }
        Ok(())
    })?;
    phases.tx("unordered inserts with indexes", |c, rng| {
        c.execute_batch(
            "CREATE TABLE t3(a INTEGER, b INTEGER, c TEXT); CREATE INDEX t3a ON t3(a); CREATE INDEX t3c ON t3(c)",
        )?;
        let mut ins = c.prepare("INSERT INTO t3 VALUES(?1, ?2, ?3)")?;
        for _ in 1..=n {
            let a = rng.below(size * 8);
            ins.execute(params![a, a / 3, number_name(a as u64)])?;
        }
        Ok(())
    })?;
    phases.tx("range scans without an index", |c, rng| {
        let mut q = c.prepare("SELECT count(*), avg(b) FROM t1 WHERE b BETWEEN ?1 AND ?2")?;
        for _ in 0..(n / 400).max(5) {
            let lo = rng.below(size * 4);
            q.query_row(params![lo, lo + span / 10], |_| Ok(()))?;
        }
        Ok(())
    })?;
    phases.tx("LIKE scans", |c, rng| {
        let mut q = c.prepare("SELECT count(*) FROM t1 WHERE c LIKE ?1")?;
        for _ in 0..(n / 400).max(5) {
            let pattern = format!("%{}%", number_name(rng.below(1000) as u64));
            q.query_row(params![pattern], |_| Ok(()))?;
        }
        Ok(())
    })?;
    phases.tx("index creation", |c, _| {
        c.execute_batch("CREATE INDEX t1b ON t1(b); CREATE INDEX t1c ON t1(c)")?;
        Ok(())
    })?;
    phases.tx("indexed range lookups", |c, rng| {
        let mut q = c.prepare("SELECT count(*), avg(b) FROM t1 WHERE b BETWEEN ?1 AND ?2")?;
        for _ in 0..n / 5 {
            let lo = rng.below(size * 4);
            q.query_row(params![lo, lo + 100], |_| Ok(()))?;
        }
        Ok(())
    })?;
    phases.tx("range updates", |c, rng| {
        let mut up = c.prepare("UPDATE t2 SET b = b * 2 WHERE a BETWEEN ?1 AND ?2")?;
        for _ in 0..n / 50 {
            let lo = rng.below(size);
            up.execute(params![lo, lo + 10])?;
        }
        Ok(())
    })?;
    phases.tx("per-row updates", |c, rng| {
        let mut up = c.prepare("UPDATE t2 SET c = ?2 WHERE a = ?1")?;
        for _ in 0..n / 2 {
            let a = rng.below(size) + 1;
            up.execute(params![a, number_name(rng.below(size * 100) as u64)])?;
        }
        Ok(())
    })?;
    phases.tx("deletes", |c, rng| {
        let mut del = c.prepare("DELETE FROM t3 WHERE a BETWEEN ?1 AND ?2")?;
        for _ in 0..n / 50 {
            let lo = rng.below(size * 8);
            del.execute(params![lo, lo + 20])?;
        }
        Ok(())
    })?;
    phases.tx("joins", |c, rng| {
        let mut q =
            c.prepare("SELECT count(*), sum(t2.b) FROM t1 JOIN t2 ON t1.a = t2.a WHERE t1.b BETWEEN ?1 AND ?2")?;
        for _ in 0..n / 100 {
            let lo = rng.below(size * 4);
            q.query_row(params![lo, lo + 200], |_| Ok(()))?;
        }
        Ok(())
    })?;
    phases.tx("alter table and a full update", |c, _| {
        c.execute_batch("ALTER TABLE t2 ADD COLUMN d INTEGER; UPDATE t2 SET d = b + length(c)")?;
        Ok(())
    })?;
    phases.tx("delete half and refill by INSERT ... SELECT", |c, _| {
        c.execute_batch(
            "DELETE FROM t1 WHERE a % 2 = 0; INSERT INTO t1 SELECT a + 1000000000, b, c FROM t3 WHERE a % 3 = 0",
        )?;
        Ok(())
    })?;
    phases.step("VACUUM", |c| c.execute_batch("VACUUM").context("VACUUM"))?;
    let digest = digest(conn)?;
    Ok((Measured { ops: 1, elapsed: start.elapsed() }, digest))
}

/// Runs phases in order, each bounded by what is left of the overall limit.
struct Phases<'a> {
    conn: &'a Connection,
    start: Instant,
    limit: Duration,
    rng: Lcg,
}

impl Phases<'_> {
    fn step(&mut self, what: &str, body: impl FnOnce(&Connection) -> anyhow::Result<()>) -> anyhow::Result<()> {
        if self.start.elapsed() > self.limit {
            bail!("the mixed workload took longer than {:?} (stopped before {what})", self.limit);
        }
        body(self.conn).with_context(|| format!("mixed workload: {what}"))
    }

    /// One phase in one transaction.
    fn tx(
        &mut self,
        what: &str,
        body: impl FnOnce(&Connection, &mut Lcg) -> rusqlite::Result<()>,
    ) -> anyhow::Result<()> {
        let rng = &mut self.rng;
        let (conn, start, limit) = (self.conn, self.start, self.limit);
        if start.elapsed() > limit {
            bail!("the mixed workload took longer than {limit:?} (stopped before {what})");
        }
        let run = || -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN")?;
            body(conn, rng)?;
            conn.execute_batch("COMMIT")
        };
        run().with_context(|| format!("mixed workload: {what}"))
    }
}

/// Row counts and sums of every table: equal on every side that ran the same workload.
pub fn digest(conn: &Connection) -> anyhow::Result<Digest> {
    conn.query_row(
        "SELECT (SELECT count(*) FROM t1), (SELECT total(b) + total(length(c)) FROM t1),
                (SELECT count(*) FROM t2), (SELECT total(b) + total(d) + total(length(c)) FROM t2),
                (SELECT count(*) FROM t3), (SELECT total(a) + total(length(c)) FROM t3)",
        [],
        |r| {
            Ok(format!(
                "t1 {} rows {}, t2 {} rows {}, t3 {} rows {}",
                r.get::<_, i64>(0)?,
                r.get::<_, f64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, f64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, f64>(5)?
            ))
        },
    )
    .context("computing the mixed workload's digest")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workloads::{self, DELETE_FULL, WAL_NORMAL};

    #[test]
    fn number_names_read_as_english() {
        assert_eq!(number_name(0), "zero");
        assert_eq!(number_name(19), "nineteen");
        assert_eq!(number_name(40), "forty");
        assert_eq!(number_name(1234), "one thousand two hundred thirty four");
        assert_eq!(number_name(7_000_005), "seven million five");
    }

    #[test]
    fn the_same_size_gives_the_same_digest_in_any_journal_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = workloads::open(&dir.path().join("a.db"), DELETE_FULL).expect("open");
        let b = workloads::open(&dir.path().join("b.db"), WAL_NORMAL).expect("open");
        let (run_a, digest_a) = run(&a, 500, Duration::from_secs(60)).expect("run a");
        let (_, digest_b) = run(&b, 500, Duration::from_secs(60)).expect("run b");
        assert_eq!(run_a.ops, 1);
        assert_eq!(digest_a, digest_b);
        assert!(digest_a.starts_with("t1 "), "{digest_a}");
        let c = workloads::open(&dir.path().join("c.db"), DELETE_FULL).expect("open");
        let (_, digest_c) = run(&c, 400, Duration::from_secs(60)).expect("run c");
        assert_ne!(digest_a, digest_c, "another size leaves other tables");
    }

    #[test]
    fn the_run_stops_at_its_time_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = workloads::open(&dir.path().join("a.db"), DELETE_FULL).expect("open");
        let err = run(&conn, 500, Duration::ZERO).expect_err("no time at all");
        assert!(format!("{err:#}").contains("took longer than"), "{err:#}");
    }
}
