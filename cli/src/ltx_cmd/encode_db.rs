//! `ltx encode-db`: a SQLite database file as one snapshot LTX file. The output is written to
//! a temporary file, synced and renamed, so a failure never leaves a half-written LTX behind.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use replite_core::TxId;
use replite_core::ltx::{self, SnapshotOptions};

pub fn run(db: &Path, out: &Path, compress: bool) -> anyhow::Result<()> {
    let file = File::open(db).with_context(|| format!("open {}", db.display()))?;
    let size = file.metadata().with_context(|| format!("stat {}", db.display()))?.len();
    let timestamp_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let options = SnapshotOptions { max_txid: TxId(1), timestamp_ms, compress };

    let tmp = out.with_extension("ltx.tmp");
    let writer = BufWriter::new(File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?);
    let result = ltx::encode_database(BufReader::new(file), size, writer, options)
        .with_context(|| format!("encode {}", db.display()))
        .and_then(|(writer, _, _)| {
            let file = writer.into_inner().map_err(|e| e.into_error()).context("flush output")?;
            file.sync_all().context("sync output")?;
            Ok(())
        })
        .and_then(|()| fs::rename(&tmp, out).with_context(|| format!("rename to {}", out.display())));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
