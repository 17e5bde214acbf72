//! Replication lag on a primary + replica pair: for each of a run of small autocommit writes
//! on the primary, the time from the write returning to the application until the replica's
//! status shows that TXID applied. One commit at a time, so each figure is the latency of an
//! idle pipeline (capture, LTX, stream, persist and apply on the replica), not of a queue.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench::nodes::{BenchNode, catch_up, rows_on};
use crate::bench::workloads::{self, Journal};

/// Longest one commit may take to reach the replica before the run fails.
const ONE_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Lag percentiles over one run.
#[derive(Debug, Clone, Copy)]
pub struct Lag {
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
    /// Commits measured.
    pub commits: u64,
}

/// Measures `commits` commits (fewer if `limit` passes first) into database `db` in `journal`.
pub fn measure(
    primary: &BenchNode,
    replica: &BenchNode,
    db: &str,
    journal: Journal,
    commits: u64,
    limit: Duration,
) -> anyhow::Result<Lag> {
    let conn = workloads::open(&primary.mount.join(db), journal)?;
    catch_up(primary, replica, db)?;
    let base = primary.settled_txid(db);
    let mut insert = conn.prepare(&format!("INSERT INTO t(v) VALUES (randomblob({}))", workloads::SMALL_ROW_BYTES))?;
    let mut status = replica.status_receiver();
    let mut lags = Vec::with_capacity(usize::try_from(commits).unwrap_or(0).min(1 << 20));
    let start = Instant::now();
    let mut done = 0;
    while done < commits && start.elapsed() < limit {
        insert.execute([]).context("lag: write on the primary")?;
        let committed = Instant::now();
        let txid = base + done + 1;
        let reached = replica.handle().block_on(async {
            tokio::time::timeout(
                ONE_COMMIT_TIMEOUT,
                status.wait_for(|s| s.databases.iter().any(|d| d.name == db && d.txid >= txid)),
            )
            .await
        });
        match reached {
            Ok(Ok(_)) => lags.push(committed.elapsed()),
            Ok(Err(_)) => bail!("lag: replica {} stopped", replica.name),
            Err(_) => {
                bail!("lag: TXID {txid} of {db} did not reach replica {} within {ONE_COMMIT_TIMEOUT:?}", replica.name)
            }
        }
        done += 1;
    }
    drop(insert);
    primary.expect_txid(db, base + done)?;
    workloads::expect_rows(&conn, done, "lag, primary")?;
    catch_up(primary, replica, db)?;
    let on_replica = rows_on(replica, db)?;
    if on_replica != done {
        bail!("lag: replica holds {on_replica} rows of {db}, expected {done}");
    }
    Ok(percentiles(lags))
}

/// Nearest-rank percentiles of `lags` (empty gives zeros).
fn percentiles(mut lags: Vec<Duration>) -> Lag {
    lags.sort_unstable();
    let at = |p: usize| -> f64 {
        if lags.is_empty() {
            return 0.0;
        }
        let rank = (p * lags.len()).div_ceil(100).max(1);
        lags[rank - 1].as_secs_f64() * 1e3
    };
    Lag { p50_ms: at(50), p99_ms: at(99), max_ms: at(100), commits: lags.len() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let lags: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let lag = percentiles(lags);
        assert_eq!((lag.p50_ms, lag.p99_ms, lag.max_ms, lag.commits), (50.0, 99.0, 100.0, 100));
        let one = percentiles(vec![Duration::from_micros(250)]);
        assert_eq!((one.p50_ms, one.p99_ms), (0.25, 0.25));
    }
}
