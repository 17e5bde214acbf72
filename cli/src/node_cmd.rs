//! Commands that talk to a running node's HTTP API: `status`, `promote`, `handoff`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use replite::driver::Status;

/// Where the node's API is.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's API URL.
    #[arg(long, default_value = "http://127.0.0.1:20202")]
    pub(crate) url: String,
}

/// `replite status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// `replite handoff`.
#[derive(Debug, clap::Args)]
pub struct HandoffArgs {
    /// The primary's API URL.
    #[arg(long, default_value = "http://127.0.0.1:20202")]
    url: String,
    /// The replica that should become primary (its node id, 16 hex digits).
    #[arg(long = "to")]
    to: String,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = replite::api::get_info(&args.node.url).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &status)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&status).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn promote(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/promote", args.url.trim_end_matches('/'));
    replite::api::post(&url).await.context("promote")?;
    println!("promotion requested");
    Ok(ExitCode::SUCCESS)
}

pub async fn handoff(args: HandoffArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/handoff?nodeID={}", args.url.trim_end_matches('/'), args.to);
    replite::api::post(&url).await.context("handoff")?;
    println!("handoff requested");
    Ok(ExitCode::SUCCESS)
}

/// The status as aligned tables: the node, its databases, and (on a primary) its replicas.
pub fn render(status: &Status) -> String {
    let mut tw = tabwriter::TabWriter::new(Vec::new()).padding(2);
    let primary = match &status.primary {
        _ if status.role == "primary" => "this node".to_owned(),
        Some(p) => format!("{} ({}, {})", p.node_id, p.hostname, p.advertise_url),
        None => "-".to_owned(),
    };
    let epoch = status.epoch.map_or_else(|| "-".to_owned(), |e| e.to_string());
    let _ = writeln!(tw, "node\t{} ({})", status.node_id, status.hostname);
    let _ = writeln!(tw, "role\t{}{}", status.role, if status.in_sync { "" } else { " (catching up)" });
    let _ = writeln!(tw, "epoch\t{epoch}");
    let _ = writeln!(tw, "primary\t{primary}");
    if let Some(proxy) = &status.proxy_url {
        let _ = writeln!(tw, "proxy\t{proxy}");
    }
    let _ = writeln!(tw);
    let _ = writeln!(tw, "DATABASE\tTXID\tPOSITION\tLAG (TX)\tLAG (MS)");
    for db in &status.databases {
        let lag = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let _ = writeln!(tw, "{}\t{}\t{}\t{}\t{}", db.name, db.txid, db.pos, lag(db.lag_txids), lag(db.lag_ms));
    }
    if !status.replicas.is_empty() {
        let _ = writeln!(tw);
        let _ = writeln!(tw, "REPLICA\tDATABASE\tACKNOWLEDGED\tBEHIND (TX)");
        for r in &status.replicas {
            let pos = r.pos.clone().unwrap_or_else(|| "-".to_owned());
            let behind = r.behind_txids.map_or_else(|| "-".to_owned(), |v| v.to_string());
            let _ = writeln!(tw, "{}\t{}\t{}\t{}", r.node_id, r.db, pos, behind);
        }
    }
    if !status.halt_locks.is_empty() {
        let _ = writeln!(tw);
        let _ = writeln!(tw, "HALT LOCK\tID\tWITH\tEXPIRES IN");
        for h in &status.halt_locks {
            let expires = h.expires_in_ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
            let _ = writeln!(tw, "{}\t{}\t{}\t{}", h.db, h.id, h.with, expires);
        }
    }
    if !status.snapshots.is_empty() {
        let _ = writeln!(tw);
        let _ = writeln!(tw, "SNAPSHOT\tSENT\tOF");
        for s in &status.snapshots {
            let _ = writeln!(tw, "{}\t{}\t{}", s.db, s.sent_bytes, s.total_bytes);
        }
    }
    let bytes = tw.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use replite::driver::{DbStatus, ReplicaStatus};

    #[test]
    fn status_of_a_primary_with_one_replica_renders_as_tables() {
        let status = Status {
            node_id: "00000000000000AA".into(),
            hostname: "node-a".into(),
            role: "primary".into(),
            in_sync: true,
            epoch: Some(7),
            primary: None,
            databases: vec![DbStatus {
                name: "app.db".into(),
                pos: "0000000000000003/8000000000001234".into(),
                txid: 3,
                lag_txids: None,
                lag_ms: None,
            }],
            replicas: vec![ReplicaStatus {
                node_id: "00000000000000BB".into(),
                db: "app.db".into(),
                pos: Some("0000000000000002/8000000000000077".into()),
                behind_txids: Some(1),
            }],
            snapshots: vec![replite::driver::SnapshotProgress {
                db: "app.db".into(),
                sent_bytes: 1 << 20,
                total_bytes: 4 << 20,
            }],
            proxy_url: Some("http://10.0.0.7:8080".into()),
            ..replite::driver::Status::default()
        };
        insta::assert_snapshot!(render(&status));
    }

    #[test]
    fn a_halt_lock_shows_as_a_table_of_its_own() {
        let status = Status {
            node_id: "00000000000000AA".into(),
            role: "primary".into(),
            halt_locks: vec![replite::driver::HaltLockStatus {
                db: "app.db".into(),
                id: 42,
                with: "00000000000000BB".into(),
                expires_in_ms: Some(21_500),
            }],
            ..Status::default()
        };
        let text = render(&status);
        let table: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("HALT LOCK"))
            .take(2)
            .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect())
            .collect();
        assert_eq!(
            table,
            [vec!["HALT LOCK", "ID", "WITH", "EXPIRES IN"], vec!["app.db", "42", "00000000000000BB", "21.5 s"]]
        );
    }
}
