//! `replite bench`: the same workloads, in one process run, on a native directory, a
//! single-node replite mount and a primary + replica pair on 127.0.0.1 (all in-process
//! daemons), plus replication lag and snapshot catch-up on the pair; prints a table of
//! absolute figures and ratios to native (docs/BENCHMARKS.md records runs). Throughput
//! workloads alternate native, single node and pair for several rounds and report the median,
//! so a burst of load on a shared machine hits every side rather than one.

mod lag;
mod mixed;
mod nodes;
mod report;
mod snapshot;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::runtime::Handle;

use nodes::{BenchNode, catch_up, rows_on};
use report::{Column, Report, Row};
use workloads::{DELETE_FULL, Journal, WAL_FULL, WAL_NORMAL};

/// `replite bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Folder to work in: a fresh folder is made inside it and removed afterwards (the
    /// native directory, data directories and mounts share its disk) [default: the system
    /// temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Small sizes and one round: finishes in well under a minute (checks the harness; the
    /// figures mean little).
    #[arg(long)]
    quick: bool,
    /// Run only these workloads (repeat the flag or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WORKLOAD")]
    only: Vec<Workload>,
    /// Size of the large transaction, MiB [default: 100; with --quick: 4].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=65536))]
    large_mb: Option<u64>,
    /// Size of the database the snapshot catch-up carries, MiB [default: 256; with --quick: 8].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=65536))]
    snapshot_mb: Option<u64>,
    /// Commits whose replication lag is measured, per journal mode [default: 500; with --quick: 50].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    lag_commits: Option<u64>,
    /// Rounds of each throughput workload; the median is reported [default: 3; with --quick: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=99))]
    rounds: Option<u32>,
    /// LTX history each node keeps, MiB (`data.retention-size`) [default: the daemon's, 64].
    /// A small value measures nodes in steady state, retiring a file per commit as a
    /// long-running node does; the default measures a newly created database's first commits.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=65536))]
    retention_mb: Option<u64>,
    /// Also write the table as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

/// The workloads `--only` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Small write transactions in DELETE/FULL, WAL/NORMAL and WAL/FULL.
    Write,
    /// One large transaction in DELETE/FULL and WAL/FULL.
    Large,
    /// Autocommit and batched primary-key reads.
    Read,
    /// Replication lag on the pair.
    Lag,
    /// Snapshot catch-up of a new replica.
    Snapshot,
    /// A speedtest1-like mix of inserts, scans, index builds, updates, deletes and VACUUM.
    Mixed,
    /// Small write transactions on a second pair in synchronous replication (every commit
    /// durable on the replica before it returns).
    Sync,
}

/// Upper bound on one run of a small-write workload.
const WRITE_LIMIT: Duration = Duration::from_secs(20);
/// Upper bound on one large transaction.
const LARGE_LIMIT: Duration = Duration::from_secs(300);
/// Upper bound on one run of a read workload, and on filling its table.
const READ_LIMIT: Duration = Duration::from_secs(10);
/// Upper bound on one lag run.
const LAG_LIMIT: Duration = Duration::from_secs(120);
/// Upper bound on one run of the mixed workload.
const MIXED_LIMIT: Duration = Duration::from_secs(300);
/// Reads per read transaction in the batched read workload.
const READ_BATCH: u64 = 100;
/// Longest the runtime may take to wind down its background tasks at exit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);

/// How much each workload does.
#[derive(Debug, Clone)]
struct Sizes {
    rounds: u32,
    /// Transactions per run of each small-write workload.
    writes: [(Journal, u64); 3],
    large_mib: u64,
    /// Rows in the read workloads' table.
    read_rows: u64,
    autocommit_reads: u64,
    batched_reads: u64,
    lag_commits: u64,
    snapshot_mib: u64,
    /// Rows per table in the mixed workload.
    mixed_rows: u64,
    /// Bytes of LTX history the throughput and lag nodes keep (`None`: the default).
    retention_bytes: Option<u64>,
}

impl Sizes {
    fn of(args: &BenchArgs) -> Sizes {
        let base = if args.quick {
            Sizes {
                rounds: 1,
                writes: [(DELETE_FULL, 30), (WAL_NORMAL, 300), (WAL_FULL, 50)],
                large_mib: 4,
                read_rows: 1_000,
                autocommit_reads: 2_000,
                batched_reads: 10_000,
                lag_commits: 50,
                snapshot_mib: 8,
                mixed_rows: 1_000,
                retention_bytes: None,
            }
        } else {
            Sizes {
                rounds: 3,
                writes: [(DELETE_FULL, 300), (WAL_NORMAL, 3_000), (WAL_FULL, 500)],
                large_mib: 100,
                read_rows: 10_000,
                autocommit_reads: 20_000,
                batched_reads: 200_000,
                lag_commits: 500,
                snapshot_mib: 256,
                mixed_rows: 10_000,
                retention_bytes: None,
            }
        };
        Sizes {
            rounds: args.rounds.unwrap_or(base.rounds),
            large_mib: args.large_mb.unwrap_or(base.large_mib),
            lag_commits: args.lag_commits.unwrap_or(base.lag_commits),
            snapshot_mib: args.snapshot_mb.unwrap_or(base.snapshot_mib),
            retention_bytes: args.retention_mb.map(|mib| mib << 20),
            ..base
        }
    }
}

/// One place a workload runs: its directory, and the node behind it (none natively).
#[derive(Clone, Copy)]
struct Side<'a> {
    column: Column,
    dir: &'a Path,
    node: Option<&'a BenchNode>,
    /// On the pair's primary: the replica that must end up with the same rows.
    replica: Option<&'a BenchNode>,
}

struct Pair {
    primary: BenchNode,
    replica: BenchNode,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let sizes = Sizes::of(&args);
    let wanted = |w: Workload| args.only.is_empty() || args.only.contains(&w);
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix("replite-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("making a work folder in {}", parent.display()))?;
    let root = work.path();
    if replite::fs_kind::of(root).is_ok_and(|kind| kind.is_unjournaled_ext4()) {
        eprintln!(
            "bench: warning: {} is on ext4 without a journal, where creating files gets slow after many \
             deletions (for native SQLite and replite alike); figures from a journaling file system \
             (--dir) are the ones to compare",
            parent.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let handle = runtime.handle().clone();

    let mut report = Report { notes: context_notes(&sizes, root), rows: Vec::new() };
    let native = root.join("native");
    std::fs::create_dir_all(&native)?;

    let throughput =
        wanted(Workload::Write) || wanted(Workload::Large) || wanted(Workload::Read) || wanted(Workload::Mixed);
    let single =
        if throughput { Some(BenchNode::start_primary(&handle, root, "single", sizes.retention_bytes)?) } else { None };
    let pair = if throughput || wanted(Workload::Lag) {
        Some(start_pair(&handle, root, sizes.retention_bytes)?)
    } else {
        None
    };

    let mut sides = vec![Side { column: Column::Native, dir: &native, node: None, replica: None }];
    if let Some(single) = &single {
        sides.push(Side { column: Column::Single, dir: &single.mount, node: Some(single), replica: None });
    }
    if let Some(pair) = &pair {
        sides.push(Side {
            column: Column::Primary,
            dir: &pair.primary.mount,
            node: Some(&pair.primary),
            replica: Some(&pair.replica),
        });
    }

    if wanted(Workload::Write) {
        for (journal, n) in sizes.writes {
            let target = match journal {
                DELETE_FULL => "≥ 0.70",
                WAL_NORMAL => "≥ 0.25",
                _ => "≥ 0.60",
            };
            let mut row = Row::new(format!("write tx, {journal}"), "tx/s", target);
            for_rounds(&mut row, &sides, sizes.rounds, |side, round| write_run(side, journal, n, round))?;
            report.rows.push(row);
        }
    }
    if wanted(Workload::Large) {
        for journal in [DELETE_FULL, WAL_FULL] {
            let mut row = Row::new(format!("large tx ({} MiB), {journal}", sizes.large_mib), "MiB/s", "≥ 0.60");
            for_rounds(&mut row, &sides, sizes.rounds, |side, round| large_run(side, journal, sizes.large_mib, round))?;
            report.rows.push(row);
        }
    }
    if wanted(Workload::Read) {
        for journal in [DELETE_FULL, WAL_NORMAL] {
            report.rows.extend(read_rows(&sides, pair.as_ref(), journal, &sizes)?);
        }
    }
    if wanted(Workload::Mixed) {
        for journal in [DELETE_FULL, WAL_NORMAL] {
            let workload = format!("mixed, speedtest1-like ({} rows), {journal}", sizes.mixed_rows);
            // Runs per second, so that the ratio reads like the others: ≥ 0.67 is at most 1.5× native time.
            let mut row = Row::new(workload, "runs/s", "≥ 0.67");
            let mut native_digest = None;
            for_rounds(&mut row, &sides, sizes.rounds, |side, round| {
                mixed_run(side, journal, sizes.mixed_rows, round, &mut native_digest)
            })?;
            report.rows.push(row);
        }
    }
    if wanted(Workload::Lag)
        && let Some(pair) = &pair
    {
        for journal in [DELETE_FULL, WAL_NORMAL] {
            let db = format!("lag-{}.db", journal.mode.to_lowercase());
            let lag = lag::measure(&pair.primary, &pair.replica, &db, journal, sizes.lag_commits, LAG_LIMIT)?;
            eprintln!(
                "bench: lag, {journal}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} commits",
                lag.p50_ms, lag.p99_ms, lag.max_ms, lag.commits
            );
            for (name, value, target) in [("p50", lag.p50_ms, "≤ 0.3"), ("p99", lag.p99_ms, "≤ 1")] {
                let mut row = Row::new(format!("lag {name}, {journal}"), "ms", target);
                row.set(Column::Replica, value);
                report.rows.push(row);
            }
        }
    }
    if let Some(pair) = pair {
        pair.replica.stop();
        pair.primary.stop();
    }
    if wanted(Workload::Sync) {
        let pair = start_sync_pair(&handle, root)?;
        report.notes.push(
            "synchronous rows: a second pair whose primary returns a commit only once the replica has it \
             durably (replication.sync.candidates names both); its figures are in the pair: primary column"
                .into(),
        );
        // A native folder of its own: the write workloads name their databases by mode and round.
        let native_sync = root.join("native-sync");
        std::fs::create_dir_all(&native_sync)?;
        let sync_sides = [
            Side { column: Column::Native, dir: &native_sync, node: None, replica: None },
            Side {
                column: Column::Primary,
                dir: &pair.primary.mount,
                node: Some(&pair.primary),
                replica: Some(&pair.replica),
            },
        ];
        for (journal, n) in sizes.writes {
            let mut row = Row::new(format!("write tx, {journal}, synchronous"), "tx/s", "-");
            for_rounds(&mut row, &sync_sides, sizes.rounds, |side, round| write_run(side, journal, n, round))?;
            report.rows.push(row);
        }
        pair.replica.stop();
        pair.primary.stop();
    }
    if let Some(single) = single {
        single.stop();
    }

    if wanted(Workload::Snapshot) {
        let snap = snapshot::measure(&handle, root, sizes.snapshot_mib)?;
        eprintln!(
            "bench: snapshot catch-up: {:.1} MiB in {:.2} s ({:.0} MiB/s); building it on the primary ran at {:.0} MiB/s",
            snap.mib,
            snap.seconds,
            snap.mib_per_s(),
            snap.build_mib_per_s
        );
        let mut row = Row::new(format!("snapshot catch-up ({} MiB)", sizes.snapshot_mib), "MiB/s", "≥ 500 MB/s");
        row.set(Column::Replica, snap.mib_per_s());
        report.rows.push(row);
        report.notes.push(format!(
            "snapshot: {:.1} MiB database, replica in sync {:.2} s after it was started",
            snap.mib, snap.seconds
        ));
    }
    report.notes.push(format!("load average at the end: {}", load_average()));

    print!("{}", report.text());
    if let Some(path) = &args.markdown {
        std::fs::write(path, report.markdown()).with_context(|| format!("writing {}", path.display()))?;
    }
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    drop(work);
    Ok(ExitCode::SUCCESS)
}

fn start_pair(handle: &Handle, root: &Path, retention: Option<u64>) -> anyhow::Result<Pair> {
    let primary = BenchNode::start_primary(handle, root, "primary", retention)?;
    let replica = BenchNode::start_replica(handle, root, "replica", &primary.url, retention)?;
    replica.wait_until("in sync", nodes::CATCH_UP_TIMEOUT, |s| s.in_sync)?;
    Ok(Pair { primary, replica })
}

/// A pair in synchronous replication: the primary's commits return once the replica has
/// them durably (`replication.sync.candidates` names both).
fn start_sync_pair(handle: &Handle, root: &Path) -> anyhow::Result<Pair> {
    const PRIMARY_ID: u64 = 0x5E_0001;
    const REPLICA_ID: u64 = 0x5E_0002;
    let primary = BenchNode::start_sync_primary(handle, root, "sync-primary", &[PRIMARY_ID, REPLICA_ID])?;
    let replica = BenchNode::start_sync_replica(handle, root, "sync-replica", &primary.url, &[REPLICA_ID, PRIMARY_ID])?;
    replica.wait_until("in sync", nodes::CATCH_UP_TIMEOUT, |s| s.in_sync)?;
    Ok(Pair { primary, replica })
}

/// Runs `run` on every side for `rounds` rounds (sides alternating within each round) and
/// sets each side's median.
fn for_rounds(
    row: &mut Row,
    sides: &[Side<'_>],
    rounds: u32,
    mut run: impl FnMut(&Side<'_>, u32) -> anyhow::Result<f64>,
) -> anyhow::Result<()> {
    let mut figures: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for round in 1..=rounds {
        for (side, out) in sides.iter().zip(&mut figures) {
            let value = run(side, round).with_context(|| format!("{}, {}", row.workload, side.column.label()))?;
            eprintln!("bench: {}, round {round}, {}: {value:.1} {}", row.workload, side.column.label(), row.unit);
            out.push(value);
        }
    }
    for (side, values) in sides.iter().zip(figures) {
        row.set(side.column, median(values));
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Checks a write workload left exactly `rows` rows and (on a node) `txs` transactions, and
/// on the pair that the replica has the same database.
fn verify_writes(
    side: &Side<'_>,
    conn: &rusqlite::Connection,
    db: &str,
    rows: u64,
    txid: Option<u64>,
) -> anyhow::Result<()> {
    workloads::expect_rows(conn, rows, side.column.label())?;
    if let (Some(node), Some(txid)) = (side.node, txid) {
        node.expect_txid(db, txid)?;
        if let Some(replica) = side.replica {
            catch_up(node, replica, db)?;
            let on_replica = rows_on(replica, db)?;
            ensure!(on_replica == rows, "{db}: replica holds {on_replica} rows, expected {rows}");
        }
    }
    Ok(())
}

fn write_run(side: &Side<'_>, journal: Journal, n: u64, round: u32) -> anyhow::Result<f64> {
    let db = format!("write-{}-{}-{round}.db", journal.mode, journal.sync).to_lowercase();
    let conn = workloads::open(&side.dir.join(&db), journal)?;
    let before = side.node.map(|node| node.settled_txid(&db));
    let done = workloads::small_writes(&conn, n, WRITE_LIMIT)?;
    verify_writes(side, &conn, &db, done.ops, before.map(|b| b + done.ops))?;
    Ok(done.rate())
}

fn large_run(side: &Side<'_>, journal: Journal, mib: u64, round: u32) -> anyhow::Result<f64> {
    let db = format!("large-{}-{round}.db", journal.mode).to_lowercase();
    let conn = workloads::open(&side.dir.join(&db), journal)?;
    let before = side.node.map(|node| node.settled_txid(&db));
    let done = workloads::large_tx(&conn, mib, LARGE_LIMIT)?;
    workloads::expect_last_row_bytes(&conn, workloads::LARGE_ROW_BYTES, side.column.label())?;
    verify_writes(side, &conn, &db, done.ops, before.map(|b| b + 1))?;
    Ok(done.rate())
}

/// One run of the mixed workload on a fresh database; every side must leave the digest the
/// native run left (and the pair's replica the same as its primary).
fn mixed_run(
    side: &Side<'_>,
    journal: Journal,
    rows: u64,
    round: u32,
    native_digest: &mut Option<mixed::Digest>,
) -> anyhow::Result<f64> {
    let db = format!("mixed-{}-{round}.db", journal.mode).to_lowercase();
    let conn = workloads::open(&side.dir.join(&db), journal)?;
    let (done, digest) = mixed::run(&conn, rows, MIXED_LIMIT)?;
    match native_digest {
        None => *native_digest = Some(digest.clone()),
        Some(want) => {
            ensure!(*want == digest, "{}: mixed workload left {digest}, native left {want}", side.column.label())
        }
    }
    if let (Some(node), Some(replica)) = (side.node, side.replica) {
        catch_up(node, replica, &db)?;
        let on_replica = mixed::digest(&workloads::open_read_only(&replica.mount.join(&db))?)?;
        ensure!(on_replica == digest, "{db}: replica left {on_replica}, primary {digest}");
    }
    Ok(done.rate())
}

/// Autocommit and batched reads of one table per side (the replica reads the primary's).
fn read_rows(sides: &[Side<'_>], pair: Option<&Pair>, journal: Journal, sizes: &Sizes) -> anyhow::Result<[Row; 2]> {
    let db = format!("read-{}.db", journal.mode.to_lowercase());
    for side in sides {
        let conn = workloads::open(&side.dir.join(&db), journal)?;
        let before = side.node.map(|node| node.settled_txid(&db));
        workloads::fill(&conn, sizes.read_rows, workloads::SMALL_ROW_BYTES, sizes.read_rows, READ_LIMIT)?;
        verify_writes(side, &conn, &db, sizes.read_rows, before.map(|b| b + 1))?;
    }
    let mut read_sides = sides.to_vec();
    if let Some(pair) = pair {
        read_sides.push(Side { column: Column::Replica, dir: &pair.replica.mount, node: None, replica: None });
    }
    let open = |side: &Side<'_>| {
        let path = side.dir.join(&db);
        if side.column == Column::Replica { workloads::open_read_only(&path) } else { workloads::open(&path, journal) }
    };
    let mut autocommit = Row::new(format!("autocommit read, {}", journal.mode), "reads/s", "≥ 0.60");
    for_rounds(&mut autocommit, &read_sides, sizes.rounds, |side, _| {
        let done = workloads::autocommit_reads(&open(side)?, sizes.read_rows, sizes.autocommit_reads, READ_LIMIT)?;
        Ok(done.rate())
    })?;
    let mut batched = Row::new(format!("batched read ({READ_BATCH}/tx), {}", journal.mode), "reads/s", "");
    for_rounds(&mut batched, &read_sides, sizes.rounds, |side, _| {
        let done =
            workloads::batched_reads(&open(side)?, sizes.read_rows, sizes.batched_reads, READ_BATCH, READ_LIMIT)?;
        Ok(done.rate())
    })?;
    Ok([autocommit, batched])
}

/// Lines describing the run: command, date, machine, sizes.
fn context_notes(sizes: &Sizes, root: &Path) -> Vec<String> {
    let command: Vec<String> = std::env::args().collect();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(str::trim)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    vec![
        format!("command: {}", command.join(" ")),
        format!("date: {}", jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC")),
        format!(
            "machine: {cores} cores ({cpu}), Linux {}, work folder {} ({})",
            kernel.trim(),
            root.display(),
            replite::fs_kind::of(root).map_or_else(|e| format!("file system unknown: {e}"), |kind| kind.to_string())
        ),
        format!("load average at the start: {}", load_average()),
        format!(
            "sizes: {} round(s) (median); writes {}/{}/{} tx; large tx {} MiB; {} rows read {} times autocommit, {} times in batches of {READ_BATCH}; lag over {} commits; snapshot {} MiB; mixed {} rows per table",
            sizes.rounds,
            sizes.writes[0].1,
            sizes.writes[1].1,
            sizes.writes[2].1,
            sizes.large_mib,
            sizes.read_rows,
            sizes.autocommit_reads,
            sizes.batched_reads,
            sizes.lag_commits,
            sizes.snapshot_mib,
            sizes.mixed_rows
        ),
        match sizes.retention_bytes {
            Some(bytes) => format!("LTX history kept per database: {} MiB (--retention-mb)", bytes >> 20),
            None => {
                "LTX history kept per database: the default (64 MiB; runs this short never retire a file)".to_owned()
            }
        },
        "ratios are to native; lag is from a commit returning on the primary to the replica's status showing it"
            .to_owned(),
    ]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
