//! SQLite natively vs. through a replite mount, in one run, on the same disk.
//!
//! `cargo bench -p replite-fuse --bench sqlite` (root, /dev/fuse). Options through the
//! environment: `BENCH_SCALE` multiplies iteration counts (default 1), `BENCH_DIR` is where
//! the native directory, data directory and mount point go (default the system temp dir),
//! `BENCH_PASSTHROUGH=1` mounts with FUSE passthrough (WAL index, replica databases),
//! `BENCH_ROUNDS` is how many alternating native/replite rounds to take the median of
//! (default 5), `BENCH_ONLY` keeps workloads whose name contains it (`write WAL/FULL`, `large DELETE`,
//! `read DELETE`, `read replica`).
//! The sink accepts every commit without persisting it: the figures measure the filesystem
//! path (commit capture included), not the daemon's durability work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replite_fuse::{CapturedTx, CommitSink, Mount, MountOptions, Refusal, Role};

struct AcceptAll;

impl CommitSink for AcceptAll {
    fn commit(&self, tx: &CapturedTx) -> Result<(), Refusal> {
        std::hint::black_box(tx.pages.len());
        Ok(())
    }
    fn may_write(&self, _db: &str) -> Result<(), Refusal> {
        Ok(())
    }
    fn sync(&self, _db: &str) -> Result<(), Refusal> {
        Ok(())
    }
    fn delete(&self, _db: &str) -> Result<(), Refusal> {
        Ok(())
    }
}

struct Mounted {
    mount: Option<Mount>,
    dir: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        drop(self.mount.take());
    }
}

fn mount(root: &Path, tag: &str, role: Role) -> Mounted {
    let data = root.join(format!("{tag}-data"));
    let mnt = root.join(format!("{tag}-mnt"));
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let passthrough = std::env::var("BENCH_PASSTHROUGH").is_ok_and(|v| v == "1");
    let options = MountOptions { role, passthrough, ..MountOptions::default() };
    let mount = Mount::new(&data, &mnt, Arc::new(AcceptAll), &options).expect("mount");
    Mounted { mount: Some(mount), dir: mnt }
}

fn open(dir: &Path, journal: &str, sync: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("bench.db")).expect("open");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy");
    let mode: String = conn.query_row(&format!("PRAGMA journal_mode={journal}"), [], |r| r.get(0)).expect("mode");
    assert_eq!(mode, journal.to_lowercase());
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);"
    ))
    .expect("setup");
    conn
}

/// Small autocommit write transactions per second.
fn writes(dir: &Path, journal: &str, sync: &str, n: usize) -> f64 {
    let conn = open(dir, journal, sync);
    let mut stmt = conn.prepare("INSERT INTO t(v) VALUES (randomblob(100))").expect("prepare");
    let start = Instant::now();
    for _ in 0..n {
        stmt.execute([]).expect("insert");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// One transaction writing `mb` megabytes of new rows; returns MB/s.
fn large_tx(dir: &Path, journal: &str, mb: usize) -> f64 {
    let conn = open(dir, journal, "FULL");
    let start = Instant::now();
    conn.execute_batch("BEGIN").expect("begin");
    for _ in 0..mb {
        conn.execute("INSERT INTO t(v) VALUES (randomblob(1048576))", []).expect("insert");
    }
    conn.execute_batch("COMMIT").expect("commit");
    mb as f64 / start.elapsed().as_secs_f64()
}

fn fill(dir: &Path, rows: i64) {
    let conn = open(dir, "DELETE", "OFF");
    conn.execute_batch("BEGIN").expect("begin");
    for _ in 0..rows {
        conn.execute("INSERT INTO t(v) VALUES (randomblob(100))", []).expect("insert");
    }
    conn.execute_batch("COMMIT").expect("commit");
}

/// Autocommit primary-key reads per second.
fn reads(dir: &Path, rows: i64, n: usize, read_only: bool) -> f64 {
    let flags = if read_only {
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = rusqlite::Connection::open_with_flags(dir.join("bench.db"), flags).expect("open");
    let mut stmt = conn.prepare("SELECT length(v) FROM t WHERE id = ?1").expect("prepare");
    let mut id = 1i64;
    let start = Instant::now();
    for _ in 0..n {
        id = (id * 7919) % rows + 1;
        let len: i64 = stmt.query_row([id], |r| r.get(0)).expect("read");
        std::hint::black_box(len);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn reset(dir: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("bench.db{suffix}")));
    }
}

/// Median of several alternating rounds, so a burst of load on a shared machine hits both
/// sides rather than one.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let scale: usize = std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let root = std::env::var_os("BENCH_DIR")
        .map_or_else(std::env::temp_dir, PathBuf::from)
        .join(format!("replite-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("bench dir");
    let native = root.join("native");
    std::fs::create_dir_all(&native).expect("native dir");
    let primary = mount(&root, "primary", Role::Primary);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || name.contains(&only);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let passthrough = std::env::var("BENCH_PASSTHROUGH").is_ok_and(|v| v == "1");
    println!("rounds {rounds}, scale {scale}, passthrough {passthrough}, load average at start: {}", load.trim());
    println!("| workload | native ops/s | replite ops/s | ratio |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, a: Vec<f64>, b: Vec<f64>| {
        let (a, b) = (median(a), median(b));
        println!("| {name} | {a:.0} | {b:.0} | {:.2} |", b / a);
    };

    for (journal, sync, n) in [("DELETE", "FULL", 200), ("WAL", "NORMAL", 2000), ("WAL", "FULL", 300)] {
        let name = format!("write {journal}/{sync}");
        if !wanted(&name) {
            continue;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (dir, out) in [(&native, &mut a), (&primary.dir, &mut b)] {
                reset(dir);
                out.push(writes(dir, journal, sync, n * scale));
            }
        }
        row(&format!("small write tx, {journal}/{sync}"), a, b);
    }

    for journal in ["DELETE", "WAL"] {
        let name = format!("large {journal}");
        if !wanted(&name) {
            continue;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds.min(3) {
            for (dir, out) in [(&native, &mut a), (&primary.dir, &mut b)] {
                reset(dir);
                out.push(large_tx(dir, journal, 100 * scale));
            }
        }
        row(&format!("one {} MB transaction, {journal}/FULL (MB/s)", 100 * scale), a, b);
    }

    let rows = 10_000;
    let n = 10_000 * scale;
    for journal in ["DELETE", "WAL"] {
        if !wanted(&format!("read {journal}")) {
            continue;
        }
        for dir in [&native, &primary.dir] {
            reset(dir);
            fill(dir, rows);
            open(dir, journal, "NORMAL");
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            a.push(reads(&native, rows, n, false));
            b.push(reads(&primary.dir, rows, n, false));
        }
        row(&format!("autocommit PK read, {journal}, primary"), a, b);
    }

    if wanted("read replica") {
        // A replica serves reads of a rollback-journal database read-only.
        reset(&native);
        fill(&native, rows);
        let replica_data = root.join("replica-data");
        let stored = replite_fuse::database_path(&replica_data, "bench.db");
        std::fs::create_dir_all(stored.parent().expect("a database sits in its own directory")).expect("replica data");
        std::fs::copy(native.join("bench.db"), stored).expect("copy");
        let replica = mount(&root, "replica", Role::Replica);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            a.push(reads(&native, rows, n, true));
            b.push(reads(&replica.dir, rows, n, true));
        }
        row("autocommit PK read, DELETE, replica", a, b);
    }

    drop(primary);
    let _ = std::fs::remove_dir_all(&root);
}
