//! `ltx list`: one row per file with its header and trailer fields.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use replite_core::ltx::{self, VerifiedLtx};
use tabwriter::TabWriter;

use crate::timefmt::rfc3339_ms;

pub fn run(paths: &[impl AsRef<Path>], tsv: bool) -> anyhow::Result<ExitCode> {
    let mut out: Box<dyn Write> = if tsv {
        Box::new(std::io::stdout().lock())
    } else {
        // The reference tool's layout: Go's tabwriter with padding 2, spaces.
        Box::new(TabWriter::new(std::io::stdout().lock()).padding(2).minwidth(0))
    };
    writeln!(out, "min_txid\tmax_txid\tcommit\tpages\tpreapply\tpostapply\ttimestamp\twal_offset\twal_size\twal_salt")?;
    let mut failed = false;
    for path in paths {
        let path = path.as_ref();
        match verify_file(path) {
            Ok(v) => writeln!(out, "{}", row(&v))?,
            Err(e) => {
                failed = true;
                eprintln!("{}: {e:#}", path.display());
            }
        }
    }
    out.flush().context("write table")?;
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn verify_file(path: &Path) -> anyhow::Result<VerifiedLtx> {
    Ok(ltx::verify(BufReader::new(File::open(path)?))?)
}

fn row(v: &VerifiedLtx) -> String {
    let h = v.header();
    let timestamp = if h.timestamp_ms == 0 { String::new() } else { rfc3339_ms(h.timestamp_ms) };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:08x} {:08x}",
        h.min_txid,
        h.max_txid,
        h.commit,
        v.page_count(),
        h.pre_apply_checksum,
        v.trailer().post_apply_checksum,
        timestamp,
        h.wal_offset,
        h.wal_size,
        h.wal_salt1,
        h.wal_salt2
    )
}
