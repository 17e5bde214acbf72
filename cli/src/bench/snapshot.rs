//! Snapshot catch-up: a fresh primary holding one database of the asked size, then a
//! replica started from an empty data directory; the figure is the database's size over the
//! time from starting the replica to its status being in sync at the primary's position
//! (same TXID and checksum, so the bytes are the primary's). The time includes the replica's
//! start-up (mount, connect), as a new node joining a cluster would see it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Handle;

use crate::bench::nodes::{BenchNode, rows_on};
use crate::bench::workloads::{self, DELETE_FULL, LARGE_ROW_BYTES};

/// The database the snapshot carries.
const DB: &str = "snapshot.db";
/// Rows (of 1 MiB) per transaction while building the database: large enough that building
/// is quick, small enough that no one LTX file dominates memory.
const BUILD_ROWS_PER_TX: u64 = 16;
/// Longest building the database may take (1 GiB through a mount on a slow shared disk).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest the replica may take to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

/// What one catch-up took.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// The database's size, MiB.
    pub mib: f64,
    /// Seconds from starting the replica to in sync.
    pub seconds: f64,
    /// Building the database on the primary, MiB/s (for context).
    pub build_mib_per_s: f64,
}

impl Snapshot {
    /// Catch-up throughput, MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.mib / self.seconds.max(1e-9)
    }
}

/// Builds a `size_mib` MiB database on a new primary under `root`, then times a new replica.
pub fn measure(handle: &Handle, root: &Path, size_mib: u64) -> anyhow::Result<Snapshot> {
    let primary = BenchNode::start_primary(handle, root, "snapshot-primary", None)?;
    let build = Instant::now();
    let conn = workloads::open(&primary.mount.join(DB), DELETE_FULL)?;
    workloads::fill(&conn, size_mib, LARGE_ROW_BYTES, BUILD_ROWS_PER_TX, BUILD_TIMEOUT)?;
    workloads::expect_rows(&conn, size_mib, "snapshot database")?;
    workloads::expect_last_row_bytes(&conn, LARGE_ROW_BYTES, "snapshot database")?;
    drop(conn);
    let bytes = std::fs::metadata(primary.mount.join(DB)).context("sizing the snapshot database")?.len();
    let build_s = build.elapsed().as_secs_f64();
    primary.settled_txid(DB);
    let want = primary.db(DB).map(|d| d.pos).context("the primary has no position for the snapshot database")?;

    let start = Instant::now();
    let replica = BenchNode::start_replica(handle, root, "snapshot-replica", &primary.url, None)?;
    replica.wait_until(&format!("in sync at {want}"), CATCH_UP_TIMEOUT, |s| {
        s.in_sync && s.databases.iter().any(|d| d.name == DB && d.pos == want)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let rows = rows_on(&replica, DB)?;
    if rows != size_mib {
        bail!("snapshot: the replica holds {rows} rows, expected {size_mib}");
    }
    replica.stop();
    primary.stop();
    let mib = bytes as f64 / (1u64 << 20) as f64;
    Ok(Snapshot { mib, seconds, build_mib_per_s: mib / build_s.max(1e-9) })
}
