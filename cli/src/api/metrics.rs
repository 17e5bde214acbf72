//! `/metrics`: the node's status as Prometheus gauges, encoded by `prometheus-client`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::driver::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabel {
    db: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FsyncLabel {
    file: &'static str,
    answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    db: String,
    replica: String,
}

/// The text exposition of `status`, and of how the mount answered SQLite's fsyncs.
pub fn render(status: &Status, sync_counts: Option<replite_fuse::SyncCounts>) -> String {
    let mut registry = Registry::with_prefix("replite");
    let primary = Gauge::<i64>::default();
    primary.set(i64::from(status.role == "primary"));
    registry.register("primary", "1 if this node holds the lease", primary);
    let epoch = Gauge::<i64>::default();
    epoch.set(status.epoch.map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)));
    registry.register("epoch", "Epoch of the primary's term this node is in", epoch);

    let txid = Family::<DbLabel, Gauge<i64>>::default();
    let lag_txids = Family::<DbLabel, Gauge<i64>>::default();
    let lag_ms = Family::<DbLabel, Gauge<i64>>::default();
    for db in &status.databases {
        let label = DbLabel { db: db.name.clone() };
        txid.get_or_create(&label).set(clamp(db.txid));
        if let Some(l) = db.lag_txids {
            lag_txids.get_or_create(&label).set(clamp(l));
        }
        if let Some(l) = db.lag_ms {
            lag_ms.get_or_create(&label).set(clamp(l));
        }
    }
    registry.register("db_txid", "Last applied transaction of each database", txid);
    registry.register("db_lag_txids", "Transactions a replica is behind its primary", lag_txids);
    registry.register("db_lag_ms", "Milliseconds a replica is behind its primary", lag_ms);

    let behind = Family::<ReplicaLabel, Gauge<i64>>::default();
    for r in &status.replicas {
        if let Some(b) = r.behind_txids {
            behind.get_or_create(&ReplicaLabel { db: r.db.clone(), replica: r.node_id.clone() }).set(clamp(b));
        }
    }
    registry.register("replica_behind_txids", "Transactions each replica has not acknowledged", behind);

    if let Some(c) = sync_counts {
        let fsyncs = Family::<FsyncLabel, Counter>::default();
        for (file, answer, n) in [
            ("wal", "synced", c.wal_synced),
            ("wal", "from_history", c.wal_from_history),
            ("journal", "synced", c.journal_synced),
            ("journal", "owed", c.journal_owed),
        ] {
            fsyncs.get_or_create(&FsyncLabel { file, answer }).inc_by(n);
        }
        registry.register(
            "sqlite_fsyncs",
            "SQLite's fsyncs of journals and WALs: carried out, answered from the LTX history, or owed until the database is written",
            fsyncs,
        );
    }

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
